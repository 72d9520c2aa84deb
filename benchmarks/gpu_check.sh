#!/bin/bash
# The GPU checks, in one go, on a machine with a CUDA build of PyTorch and diffscale's dependencies installed
# (run from the repository root, with ../shared/data beside it for the ERA5 parts):
#   1. tests/test_cuda.py (CUDA against the CPU and closed forms), then the whole suite with CUDA visible;
#   2. benchmarks/network_speed.py at 32 x 32 and 64 x 64 (float32 against bf16);
#   3. benchmarks/era5_uk.py (trains and scores the three ERA5 models; about 2.5 minutes on an H200).
# Logs go to $OUT (default: gpu_check_logs/). Each step has a time limit; the script never stops at a failure.
set -u
export PYTHONUNBUFFERED=1
OUT=${OUT:-gpu_check_logs}
mkdir -p "$OUT"
start=$(date +%s)
elapsed() { echo "== $1: rc $2, $(( $(date +%s) - start )) s so far"; }

python3 -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.__version__, torch.cuda.get_device_name(0))" || exit 1
timeout 300 python3 -m pytest -q -p no:cacheprovider -rfE tests/test_cuda.py > "$OUT/test_cuda.log" 2>&1
elapsed "tests/test_cuda.py" $?; tail -3 "$OUT/test_cuda.log"
parallel=$(python3 -c "import importlib.util as u; print('-n 8' if u.find_spec('xdist') else '')")
# shellcheck disable=SC2086  # $parallel is empty or two words
timeout 900 python3 -m pytest -q -p no:cacheprovider -rfE $parallel > "$OUT/suite.log" 2>&1
elapsed "whole suite" $?; tail -3 "$OUT/suite.log"
for size in 32 64; do
  timeout 300 python3 benchmarks/network_speed.py --presets ddpmpp adm --modes float32 bf16 --resolution "$size" \
    --batch 64 --steps 10 --evals 10 --warmup 2 --loss-steps 0 > "$OUT/speed_$size.log" 2>&1
  elapsed "network speed $size x $size" $?; grep -E "^(ddpmpp|adm) " "$OUT/speed_$size.log"
done
timeout 900 python3 benchmarks/era5_uk.py --runs "$OUT/era5_runs" --json "$OUT/era5.json" > "$OUT/era5.log" 2>&1
elapsed "ERA5 benchmark" $?; grep -E "^(bilinear|MSE|CorrDiff|diffusion|targets)|training:" "$OUT/era5.log"
