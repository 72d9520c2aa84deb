"""``diffscale evaluate-images`` and :func:`diffscale.runs.image_evaluation.evaluate_images` on a tiny run of
28 x 28 images: drawn per class and guidance weight, or read from a samples .npz file; table, figure, errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from diffscale.config import config_from_dict
from diffscale.data.images import write_idx
from diffscale.runs import load_run, prepare_training, train
from diffscale.runs.image_evaluation import evaluate_images, read_image_samples
from diffscale.validation import ConfigError
from tests.conftest import run_cli


def _stripes(count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``count`` 28 x 28 images of three classes: class c is a bright band of rows at 8c + 4, with noise."""
    rng = np.random.default_rng(seed)
    labels = (np.arange(count) % 3).astype(np.uint8)
    images = rng.integers(0, 40, (count, 28, 28)).astype(np.uint8)
    for index, label in enumerate(labels):
        images[index, 8 * label + 2 : 8 * label + 7] = 230
    return images, labels


@pytest.fixture(scope="module")
def image_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("evaluate_images")
    data = root / "data"
    data.mkdir()
    for prefix, seed in (("train", 0), ("t10k", 1)):
        images, labels = _stripes(30, seed)
        write_idx(data / f"{prefix}-images-idx3-ubyte.gz", images)
        write_idx(data / f"{prefix}-labels-idx1-ubyte.gz", labels)
    config = config_from_dict(
        {
            "diffusion": {"type": "EDM", "sigma_data": 0.5},
            "sampling": {"steps": 2},
            "model": {
                "arch": "ddpmpp",
                "model_channels": 8,
                "channel_mult": [1, 2],
                "num_blocks": 1,
                "attn_resolutions": [],
                "dropout": 0.0,
                "label_dropout": 0.2,
            },
            "data": {
                "kind": "images",
                "path": str(data),
                "height": 28,
                "width": 28,
                "pad_to": 32,
                "num_classes": 3,
                "class_names": ["top", "middle", "bottom"],
            },
            "training": {
                "steps": 2,
                "batch_size": 4,
                "log_every": 1,
                "tensorboard": False,
                "precision": "fp32",
                "threads": 1,
                "device": "cpu",
            },
            "output": {"dir": str(root / "run")},
        }
    )
    train(prepare_training(config, root / "run"), progress=False)
    return root / "run"


def test_evaluate_images_draws_per_class_and_weight(image_run: Path) -> None:
    run = load_run(image_run, device="cpu")
    report = evaluate_images(run, "0,2", per_class=4, guidance=(2, 0), kid_subsets=3, steps=2, sampler="euler")
    assert [s.guidance for s in report.scores] == [0.0, 2.0]
    assert all(s.count == 8 and sorted(s.class_accuracy) == [0, 2] for s in report.scores)
    assert all(s.reference_count == 20 for s in report.scores)  # the test images of classes 0 and 2
    assert report.class_names == ("top", "middle", "bottom")
    assert report.lines()[-2].split()[0] == "top" and report.lines()[-1].split()[0] == "bottom"


def test_the_command_scores_drawn_images_and_a_samples_file(
    image_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    sweep = tmp_path / "sweep.png"
    argv = ["evaluate-images", str(image_run), "--per-class", "4", "--guidance", "0,1", "--steps", "2",
            "--kid-subsets", "3", "--plot", str(sweep), "--device", "cpu", "--no-progress"]  # fmt: skip
    assert run_cli(argv) == 0
    out = capsys.readouterr().out
    assert "guidance  images        FD" in out and f"wrote the guidance sweep to {tmp_path / 'sweep.png'}" in out
    assert (tmp_path / "sweep.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    run = load_run(image_run, device="cpu")
    run.sample_images(classes="0-2", per_class=4, guidance=(1, 3), steps=2, seed=1).save(tmp_path / "s.npz")
    drawn = read_image_samples(tmp_path / "s.npz")
    assert drawn.images.shape == (24, 1, 28, 28) and drawn.guidance.tolist() == [1.0] * 12 + [3.0] * 12
    argv = ["evaluate-images", str(image_run), "--samples", str(tmp_path / "s.npz"), "--kid-subsets", "3",
            "--device", "cpu"]  # fmt: skip
    assert run_cli(argv) == 0
    rows = [line.split() for line in capsys.readouterr().out.splitlines()]
    assert [row[:2] for row in rows if row and row[0] in ("1", "3")] == [["1", "12"], ["3", "12"]]


def test_bad_input_fails_with_one_line(image_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    argv = ["evaluate-images", str(image_run), "--samples", str(tmp_path / "missing.npz"), "--device", "cpu"]
    assert run_cli(argv) == 2
    assert (
        capsys.readouterr().err.strip() == f"diffscale: error: --samples '{tmp_path / 'missing.npz'}': file not found"
    )
    assert run_cli(["evaluate-images", str(image_run), "--plot", str(tmp_path / "sweep.txt"), "--device", "cpu"]) == 2
    error = capsys.readouterr().err
    assert error.startswith("diffscale: error: --plot") and error.count("\n") == 1
    np.savez(tmp_path / "unlabelled.npz", images=np.zeros((4, 28, 28), np.uint8))
    with pytest.raises(ConfigError, match="holds no labels"):
        read_image_samples(tmp_path / "unlabelled.npz")
