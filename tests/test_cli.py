"""The ``diffscale`` command: train -> sample round trips, and bad input that exits with status 2, one line on
stderr and nothing written."""

from __future__ import annotations

import json
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import safetensors.torch
import torch
import yaml

from diffscale import __version__
from diffscale.cli.main import build_parser, main
from diffscale.training.checkpoint import SIDECAR_NAME
from tests.conftest import run_cli, snapshot

TINY_YAML = """\
diffusion:
  type: "EDM"
  sigma_data: 1.0
  sigma_min: 0.002
  sigma_max: 80.0
  rho: 7.0
  p_mean: -1.2
  p_std: 1.2
sampling:
  steps: 6
  sampler: "heun"
  s_churn: 40.0
  s_min: 0.05
  s_max: 50.0
  s_noise: 1.003
model:
  width: 16
  depth: 1
  embedding_dim: 8
training:
  steps: 20
  batch_size: 64
  device: cpu
  log_every: 10
"""


def assert_bad_input(argv: list[str], capsys: pytest.CaptureFixture[str], expected: list[str], root: Path) -> str:
    before = snapshot(root)
    capsys.readouterr()
    assert run_cli(argv) == 2
    err = capsys.readouterr().err
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("diffscale: error: ")
    assert "Traceback" not in err
    for part in expected:
        assert part in lines[0], (part, lines[0])
    assert snapshot(root) == before, "bad input must leave nothing on disk"
    return lines[0]


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(TINY_YAML)
    return path


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cli")
    config = root / "tiny.yaml"
    config.write_text(TINY_YAML)
    assert main(["train", str(config), "--out", str(root / "run"), "--no-progress"]) == 0
    return root / "run"


# -- train ----------------------------------------------------------------------------------------------------
def test_train_writes_a_run(trained: Path) -> None:
    names = snapshot(trained)
    assert {"config.yaml", "metrics.jsonl", SIDECAR_NAME} <= set(names)
    assert any(name.startswith("ema-") and name.endswith(".safetensors") for name in names)


def test_train_applies_overrides(tmp_path: Path, config_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "vp"
    argv = ["train", str(config_file), "--out", str(out), "--no-progress"]
    argv += ["--set", "diffusion.type=vp", "--set", "training.steps=3", "--set", "sampling.s_churn=0"]
    assert main(argv) == 0
    assert "training VP" in capsys.readouterr().out
    resolved = (out / "config.yaml").read_text()
    assert "type: VP" in resolved and "steps: 3" in resolved and "beta_d" in resolved


def test_train_resumes_a_run(tmp_path: Path, config_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    base = ["train", str(config_file), "--no-progress", "--set", "training.tensorboard=false"]
    assert main([*base, "--out", str(out), "--set", "training.steps=3"]) == 0
    capsys.readouterr()
    assert main([*base, "--resume", str(out), "--set", "training.steps=5"]) == 0
    printed = capsys.readouterr().out
    assert "resuming from step 3" in printed and "training.steps: 3 -> 5" in printed and "trained 5 steps" in printed
    sidecar = json.loads((out / SIDECAR_NAME).read_text())
    assert sidecar["step"] == 5 and sidecar["config"]["training"]["steps"] == 5
    other = tmp_path / "elsewhere"
    assert_bad_input(
        [*base, "--resume", str(out), "--out", str(other)], capsys, ["different run directories"], tmp_path
    )


def test_train_device_flag_overrides_the_configuration(
    tmp_path: Path, config_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--device is applied after --set (as --threads is): a file asking for CUDA trains on the CPU with --device cpu,
    and the run records the device it trained on."""
    out = tmp_path / "run"
    argv = ["train", str(config_file), "--out", str(out), "--no-progress", "--set", "training.steps=2"]
    assert main([*argv, "--set", "training.device=cuda:7", "--device", "cpu"]) == 0
    assert yaml.safe_load((out / "config.yaml").read_text())["training"]["device"] == "cpu"
    for bad, message in (("tpu", "--device = 'tpu': not a device"), ("cuda:99", "--device = 'cuda:99':")):
        assert_bad_input([*argv, "--out", str(tmp_path / "other"), "--device", bad], capsys, [message], tmp_path)


def test_train_stops_after_non_finite_steps(tmp_path: Path, config_file: Path, capsys) -> None:
    """A learning rate of 1e30 sends the weights to ~1e30 in one Adam step; every later loss overflows, those
    steps are skipped, and the third in a row stops the run with one line and the step-1 checkpoint intact."""
    out = tmp_path / "run"
    argv = ["train", str(config_file), "--out", str(out), "--no-progress", "--set", "training.learning_rate=1e30"]
    argv += ["--set", "training.warmup_steps=0", "--set", "training.grad_clip=null", "--set", "training.steps=50"]
    argv += ["--set", "training.max_nonfinite_steps=3", "--set", "training.checkpoint_every=1"]
    assert run_cli(argv) == 1
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and "training stopped at step 4: 3 non-finite steps in a row" in err[0]
    assert json.loads((out / SIDECAR_NAME).read_text())["step"] == 1
    assert sorted(path.name for path in out.glob("weights-*")) == ["weights-00000001.safetensors"]


def test_train_defaults_to_output_dir_of_the_config(
    tmp_path: Path, config_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["train", str(config_file), "--set", "training.steps=2", "--no-progress"]) == 0
    assert (tmp_path / "runs" / "tiny" / SIDECAR_NAME).is_file()


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["diffusion.type=foo"], ["diffusion.type = 'foo'", "unknown formulation", "VE, VP, EDM, iDDPM"]),
        (["sampling.sampler=rk4"], ["sampling.sampler = 'rk4'", "'euler'", "'heun'"]),
        (["training.stepz=3"], ["training.stepz", "unknown key 'stepz'", "steps"]),
        (["training.steps=many"], ["training.steps = 'many'", "integer"]),
        (["diffusion.sigma_min=90"], ["sigma_min = 90", "sigma_max = 80"]),
        (["diffusion.sigma_data=0"], ["diffusion.sigma_data = 0", "greater than 0"]),
        (["diffusion.sigma_data=-1"], ["diffusion.sigma_data = -1", "greater than 0"]),
        (["sampling.steps=0"], ["sampling.steps = 0", "greater than or equal to 1"]),
        (["sampling.s_churn=-2"], ["sampling.s_churn = -2", "greater than or equal to 0"]),
        (["sampling.s_min=60"], ["s_min = 60", "s_max = 50"]),
        (["sampling.s_noise=0"], ["sampling.s_noise = 0", "greater than 0"]),
        (["training.device=tpu9"], ["training.device = 'tpu9'", "allowed: auto, cpu, cuda"]),
        (["data.preset=custom", "data.means=[0, 1]", "data.stds=[1]"], ["data.stds", "2 entries"]),
    ],
)
def test_train_bad_config_values(
    tmp_path: Path, config_file: Path, capsys: pytest.CaptureFixture[str], overrides: list[str], expected: list[str]
) -> None:
    argv = ["train", str(config_file), "--out", str(tmp_path / "out"), "--no-progress"]
    for override in overrides:
        argv += ["--set", override]
    assert_bad_input(argv, capsys, expected, tmp_path)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (TINY_YAML + "optimiser:\n  lr: 1\n", ["unknown key 'optimiser'", "allowed keys", "diffusion"]),
        (TINY_YAML.replace("  rho: 7.0", "  rho: 7.0\n  gamma: 1"), ["diffusion", "unknown key 'gamma'", "p_std"]),
        (TINY_YAML.replace("width: 16", "width: wide"), ["model.width = 'wide'", "integer"]),
        (TINY_YAML.replace("steps: 20", "steps: [20"), ["YAML syntax error at line"]),
        ("- a\n- b\n", ["top level must be a mapping", "list"]),
    ],
)
def test_train_bad_config_files(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, expected: list[str]
) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    assert_bad_input(["train", str(path), "--out", str(tmp_path / "out")], capsys, expected, tmp_path)


def test_train_missing_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["train", str(tmp_path / "nope.yaml"), "--out", str(tmp_path / "out")]
    assert_bad_input(argv, capsys, ["config file", "nope.yaml", "not found"], tmp_path)


def test_train_refuses_to_resume_a_changed_architecture(trained: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = trained.parent / "tiny.yaml"
    argv = ["train", str(config), "--resume", str(trained), "--set", "model.width=8", "--no-progress"]
    assert_bad_input(argv, capsys, ["changed incompatibly", "model.width: 16 -> 8", str(trained)], trained.parent)


# -- sample ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("suffix", [".npy", ".csv", ".safetensors"])
def test_sample_writes_each_format(
    trained: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], suffix: str
) -> None:
    out = tmp_path / "nested" / f"samples{suffix}"
    argv = ["sample", str(trained), "--num", "37", "--out", str(out), "--batch-size", "16", "--no-progress"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "NFE: 11" in printed and str(out) in printed  # Heun with 6 steps: 2 * 6 - 1
    if suffix == ".npy":
        samples = np.load(out, allow_pickle=False)
    elif suffix == ".csv":
        samples = np.loadtxt(out, delimiter=",", skiprows=1, ndmin=2)
        assert out.read_text().splitlines()[0] == "x0"
    else:
        samples = safetensors.torch.load_file(out)["samples"].numpy()
    assert samples.shape == (37, 1)
    assert np.isfinite(samples).all()


def test_sample_flags_override_the_run_settings(trained: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "s.npy"
    argv = ["sample", str(trained), "--num", "8", "--out", str(out), "--no-progress"]
    argv += ["--sampler", "euler", "--steps", "4", "--s-churn", "0", "--weights", "raw", "--seed", "5"]
    assert main(argv) == 0
    assert "NFE: 4 per sample (euler, 4 steps, native schedule, raw weights" in capsys.readouterr().out


def test_sample_is_reproducible_with_a_seed(trained: Path, tmp_path: Path) -> None:
    for name in ("a.npy", "b.npy"):
        argv = ["sample", str(trained), "--num", "20", "--out", str(tmp_path / name), "--seed", "7", "--no-progress"]
        assert main(argv) == 0
    assert np.array_equal(np.load(tmp_path / "a.npy"), np.load(tmp_path / "b.npy"))


def test_sample_plot(trained: Path, tmp_path: Path) -> None:
    argv = ["sample", str(trained), "--num", "50", "--out", str(tmp_path / "s.npy"), "--plot", str(tmp_path / "s.png")]
    assert main([*argv, "--no-progress"]) == 0
    assert (tmp_path / "s.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        (["--out", "OUT/s.txt"], ["--out", "s.txt", "'.txt'", "allowed: .npy, .csv, .safetensors"]),
        (["--sampler", "rk4"], ["--sampler = 'rk4'", "'euler'", "'heun'"]),
        (["--steps", "0"], ["--steps = 0", "greater than or equal to 1"]),
        (["--steps", "two"], ["argument --steps", "'two'"]),
        (["--s-min", "60", "--s-max", "1"], ["s_min = 60", "s_max = 1"]),
        (["--s-churn", "-1"], ["--s-churn = -1", "greater than or equal to 0"]),
        (["--s-noise", "0"], ["--s-noise = 0", "greater than 0"]),
        (["--num", "0"], ["argument --num", "must be an integer >= 1, got 0"]),
        (["--weights", "best"], ["--weights = 'best'", "allowed: ema, raw"]),
        (["--device", "foo"], ["--device = 'foo'", "allowed: auto, cpu, cuda"]),
        (["--plot", "OUT/p.gif"], ["--plot", "'.gif'", "allowed: .png, .pdf, .svg"]),
        (["--bogus"], ["unrecognized arguments: --bogus"]),
    ],
)
def test_sample_bad_input(
    trained: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], flags: list[str], expected: list[str]
) -> None:
    flags = [flag.replace("OUT", str(tmp_path)) for flag in flags]
    argv = ["sample", str(trained), "--num", "5", "--out", str(tmp_path / "s.npy"), "--no-progress"]
    assert_bad_input([*argv, *flags], capsys, expected, tmp_path)
    assert not (tmp_path / "s.npy").exists()


def test_sample_missing_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["sample", str(tmp_path / "nowhere"), "--num", "5", "--out", str(tmp_path / "s.npy")]
    assert_bad_input(argv, capsys, ["run directory", "nowhere", "not found"], tmp_path)


def test_sample_corrupt_checkpoint(trained: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    copy = tmp_path / "copy"
    copy.mkdir()
    for path in trained.iterdir():
        if path.is_file():
            (copy / path.name).write_bytes(path.read_bytes())
    ema = next(copy.glob("ema-*.safetensors"))
    ema.write_bytes(ema.read_bytes()[:-10])
    argv = ["sample", str(copy), "--num", "5", "--out", str(tmp_path / "s.npy")]
    assert_bad_input(argv, capsys, [ema.name, "corrupt"], tmp_path)


def test_sample_refuses_a_pickle(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "model.pt").write_bytes(b"\x80\x04K\x01.")
    argv = ["sample", str(tmp_path / "model.pt"), "--num", "5", "--out", str(tmp_path / "s.npy")]
    assert_bad_input(argv, capsys, ["model.pt", "never loaded"], tmp_path)


# -- demo, help, version, internal errors ---------------------------------------------------------------------
def test_demo_calls_run_demo_lazily(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    calls = []
    fake = types.ModuleType("diffscale.demo")
    fake.run_demo = lambda out_dir, *, train_steps, progress, downscaling: calls.append(
        (out_dir, train_steps, progress, downscaling)
    )
    monkeypatch.setitem(sys.modules, "diffscale.demo", fake)
    assert main(["demo", "--out", str(tmp_path / "d"), "--train-steps", "7", "--no-progress"]) == 0
    assert main(["demo"]) == 0
    assert main(["demo", "--no-downscaling"]) == 0
    assert calls == [
        (tmp_path / "d", 7, False, True),
        (Path("demo_output"), 2000, True, True),
        (Path("demo_output"), 2000, True, False),
    ]


def test_demo_missing_module_is_one_line(monkeypatch: pytest.MonkeyPatch, capsys, tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "diffscale.demo", None)  # makes the import fail
    assert_bad_input(["demo", "--out", str(tmp_path / "d")], capsys, ["demo is not available"], tmp_path)


@pytest.mark.parametrize("command", ["train", "sample", "demo", "init-config"])
def test_help_explains_every_option(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert run_cli([command, "--help"]) == 0
    text = capsys.readouterr().out
    subparsers = next(action for action in build_parser()._actions if action.dest == "command")
    for action in subparsers.choices[command]._actions:
        for option in action.option_strings:
            assert option in text
        assert action.help, f"{command} {action.dest} has no help"


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert run_cli(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"diffscale {__version__}"


def test_internal_errors_keep_their_traceback(
    config_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import diffscale.runs as run_module

    def broken(*args, **kwargs):
        raise RuntimeError("a bug")

    monkeypatch.setattr(run_module, "train", broken)
    with pytest.raises(RuntimeError, match="a bug"):
        main(["train", str(config_file), "--out", str(tmp_path / "out"), "--no-progress"])


def test_python_dash_m_reports_bad_input_in_one_line(tmp_path: Path, config_file: Path) -> None:
    command = [sys.executable, "-m", "diffscale", "train", str(config_file), "--set", "diffusion.type=foo"]
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        "diffscale: error: diffusion.type = 'foo': unknown formulation; allowed: VE, VP, EDM, iDDPM"
    ]
    assert result.stdout == ""
    assert snapshot(tmp_path) == ["tiny.yaml"]


def test_sample_writes_its_settings_beside_the_samples(
    trained: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The NFE and sampler settings are reported before sampling and kept with the output."""
    out = tmp_path / "s.safetensors"
    args = ["sample", str(trained), "--num", "6", "--out", str(out), "--sampler", "dpmpp_2m", "--s-churn", "0"]
    assert main([*args, "--steps", "7", "--schedule", "tuned", "--no-progress"]) == 0
    assert capsys.readouterr().out.startswith("NFE: 7 per sample (dpmpp_2m, 7 steps, tuned schedule")
    sidecar = json.loads((tmp_path / "s.safetensors.json").read_text())
    assert sidecar["nfe_per_sample"] == 7 and sidecar["sampler"]["schedule"] == "tuned" and sidecar["shape"] == [6, 1]
    with safetensors.safe_open(str(out), "pt") as handle:  # type: ignore[attr-defined]
        assert json.loads(handle.metadata()["nfe_per_sample"]) == 7


# -- outputs: one rule for every command ------------------------------------------------------------------------
def _blocked(tmp_path: Path) -> Path:
    """A file where the commands' output folders would have to be."""
    blocker = tmp_path / "afile"
    blocker.write_text("not a folder")
    return blocker


OUTPUT_CASES = {
    "train --out": lambda run, config, blocked: ["train", str(config), "--out", str(blocked / "run")],
    "sample --out": lambda run, config, blocked: ["sample", str(run), "--num", "5", "--out", str(blocked / "s.npy")],
    "sample --plot": lambda run, config, blocked: [
        "sample",
        str(run),
        "--num",
        "5",
        "--out",
        str(blocked.parent / "s.npy"),
        "--plot",
        str(blocked / "p.png"),
    ],
    "likelihood --out": lambda run, config, blocked: [
        "likelihood",
        str(run),
        "--data",
        "mixture:5",
        "--out",
        str(blocked / "ll.json"),
    ],
    "demo --out": lambda run, config, blocked: ["demo", "--out", str(blocked / "demo"), "--train-steps", "1"],
    "evaluate --out": lambda run, config, blocked: [
        "evaluate",
        str(blocked.parent / "e.nc"),
        "--truth",
        str(blocked.parent / "t.nc"),
        "--out",
        str(blocked / "r"),
    ],
    "downscale --out": lambda run, config, blocked: [
        "downscale",
        str(run),
        "--input",
        str(blocked.parent / "c.nc"),
        "--out",
        str(blocked / "e.nc"),
    ],
    "coarsen --out": lambda run, config, blocked: [
        "coarsen",
        str(run),
        "--input",
        str(blocked.parent / "f.nc"),
        "--out",
        str(blocked / "c.nc"),
    ],
    "example-data --out": lambda run, config, blocked: ["example-data", "--out", str(blocked / "data")],
    "init-config --output": lambda run, config, blocked: [
        "init-config",
        "--fine",
        str(blocked.parent / "f.nc"),
        "--variables",
        "t2m",
        "--factor",
        "4",
        "--output",
        str(blocked / "my.yaml"),
    ],
}


@pytest.mark.parametrize("case", OUTPUT_CASES)
def test_an_output_that_cannot_be_created_is_refused_before_any_work(
    case: str, trained: Path, config_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    blocked = _blocked(tmp_path)
    argv = OUTPUT_CASES[case](trained, config_file, blocked)
    assert_bad_input(argv, capsys, [str(blocked), "is a file"], tmp_path)


@pytest.mark.skipif(not Path("/proc/self/mounts").is_file(), reason="no Linux mount table")
@pytest.mark.parametrize(("pseudo", "kind"), [("/proc", "proc"), ("/sys", "sysfs")])
@pytest.mark.parametrize("case", OUTPUT_CASES)
def test_an_output_on_a_pseudo_file_system_is_refused_before_any_work(
    case: str, pseudo: str, kind: str, trained: Path, config_file: Path, tmp_path: Path, capsys
) -> None:
    """/proc and /sys accept the permission check (root may write there) but hold no files: refused up front."""
    argv = OUTPUT_CASES[case](trained, config_file, Path(pseudo) / "diffscale")
    assert_bad_input(argv, capsys, [f"'{pseudo}' is on the kernel's {kind} file system"], tmp_path)


def test_missing_output_folders_are_created_and_all_outputs_written(trained: Path, tmp_path: Path) -> None:
    out, plot = tmp_path / "new" / "deeper" / "s.npy", tmp_path / "other" / "p.png"
    assert main(["sample", str(trained), "--num", "20", "--out", str(out), "--plot", str(plot), "--no-progress"]) == 0
    assert out.is_file() and plot.is_file() and out.with_name("s.npy.json").is_file()
    ll = tmp_path / "more" / "ll.json"
    assert (
        main(["likelihood", str(trained), "--data", "mixture:5", "--steps", "2", "--out", str(ll), "--no-progress"])
        == 0
    )
    assert ll.is_file()


def test_a_plot_that_fails_leaves_no_samples(trained: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import diffscale.evaluation.sample_plots as plots

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("the plot failed")

    monkeypatch.setattr(plots, "samples_figure", broken)
    out = tmp_path / "s.npy"
    with pytest.raises(RuntimeError, match="the plot failed"):
        main(["sample", str(trained), "--num", "5", "--out", str(out), "--plot", str(tmp_path / "p.png")])
    assert sorted(path.name for path in tmp_path.iterdir()) == []


# -- threads ---------------------------------------------------------------------------------------------------
def test_threads_flag_sets_the_training_key_and_fixes_sampling_threads(
    tmp_path: Path, config_file: Path, trained: Path
) -> None:
    out = tmp_path / "run"
    argv = ["train", str(config_file), "--out", str(out), "--no-progress", "--set", "training.steps=2"]
    assert main([*argv, "--threads", "1"]) == 0
    assert "threads: 1" in (out / "config.yaml").read_text()
    before = torch.get_num_threads()
    sampled = {}
    for count in ("1", "2"):
        path = tmp_path / f"s{count}.npy"
        argv = ["sample", str(trained), "--num", "16", "--out", str(path), "--threads", count, "--no-progress"]
        assert main(argv) == 0
        assert torch.get_num_threads() == before  # restored afterwards
        sampled[count] = np.load(path)
    np.testing.assert_allclose(sampled["1"], sampled["2"], rtol=0, atol=1e-5)  # the count changes rounding only


@pytest.mark.parametrize("value", ["0", "many", "-1"])
def test_bad_threads_flag_is_refused_in_one_line(
    value: str, trained: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["sample", str(trained), "--num", "4", "--out", str(tmp_path / "s.npy"), "--threads", value]
    capsys.readouterr()
    with pytest.raises(SystemExit) as raised:
        main(argv)
    assert raised.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert "--threads" in err[-1] and "Traceback" not in "".join(err)
    assert not (tmp_path / "s.npy").exists()
