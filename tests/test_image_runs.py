"""Tests of class-conditional image runs: every sampler and formulation with labels and classifier-free guidance (a
tiny U-Net), a training run on a few images, labelled grids and .npz samples (Python and ``diffscale sample``)."""

from __future__ import annotations

import gzip
import json
import re
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

import diffscale
from diffscale.config import config_from_dict
from diffscale.data.images import load_image_dataset
from diffscale.denoiser import PreconditionedDenoiser
from diffscale.guidance import ClassifierFreeGuidance, drop_conditioning
from diffscale.networks.presets import build_network
from diffscale.runs import load_run, prepare_training, train
from diffscale.runs.images import parse_classes, parse_guidance
from diffscale.sampling.settings import SOLVERS
from diffscale.validation import ConfigError
from tests.conftest import run_cli

FORMULATIONS = [
    ("VE", {}),
    ("VP", {}),
    ("EDM", {"sigma_data": 0.5}),
    ("iDDPM", {}),
    ("iDDPM", {"learned_variance": True}),
]


def _denoiser(name: str, params: dict) -> PreconditionedDenoiser:
    formulation = diffscale.formulation(name, **params)
    torch.manual_seed(0)
    network = build_network(
        "ddpmpp",
        in_channels=1,
        label_dim=3,
        model_channels=8,
        channel_mult=(1, 2),
        num_blocks=1,
        attn_resolutions=(),
        dropout=0.0,
        label_dropout=0.1,
        learned_variance=formulation.learned_variance,
    ).eval()
    with torch.no_grad():  # a random network whose labels matter (the label embedding starts from zero otherwise)
        for parameter in network.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.1)
    return PreconditionedDenoiser(network, formulation)


class HandGuided:
    """D_w written out: two separate calls, no shortcut, the conditional variance (for ancestral sampling)."""

    def __init__(self, denoiser: PreconditionedDenoiser, weight: float) -> None:
        self.denoiser, self.weight = denoiser, weight

    def denoise_with_variance(
        self, x: torch.Tensor, sigma: torch.Tensor, **cond: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        d_cond, variance = self.denoiser.denoise_with_variance(x, sigma, **cond)
        d_uncond, _ = self.denoiser.denoise_with_variance(x, sigma, **drop_conditioning(cond, ["class_labels"]))
        return d_uncond + self.weight * (d_cond - d_uncond), variance

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, **cond: torch.Tensor) -> torch.Tensor:
        return self.denoise_with_variance(x, sigma, **cond)[0]


@pytest.mark.parametrize("solver", SOLVERS)
@pytest.mark.parametrize(("name", "params"), FORMULATIONS, ids=[f"{n}{'-lv' if p.get('learned_variance') else ''}"
                                                                for n, p in FORMULATIONS])  # fmt: skip
def test_every_sampler_and_formulation_takes_labels_and_guidance(solver: str, name: str, params: dict) -> None:
    denoiser = _denoiser(name, params)
    labels = torch.nn.functional.one_hot(torch.tensor([0, 2]), 3).float()
    noise = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    options = {"steps": 3, "solver": solver, "cond": {"class_labels": labels}}

    def draw(model: object, cond: dict | None = None) -> torch.Tensor:
        settings = {**options, "cond": cond} if cond is not None else options
        return diffscale.sample(model, noise, denoiser.formulation, generator=torch.Generator().manual_seed(2),
                                **settings)  # fmt: skip

    guided = draw(ClassifierFreeGuidance(denoiser, 2.0))
    assert guided.shape == noise.shape and torch.isfinite(guided).all()
    torch.testing.assert_close(guided, draw(HandGuided(denoiser, 2.0)), atol=1e-4, rtol=1e-4)
    # w = 1 is the conditional model, w = 0 the unconditional one (labels zeroed): both differ from w = 2.
    conditional = draw(ClassifierFreeGuidance(denoiser, 1.0))
    torch.testing.assert_close(conditional, draw(denoiser), atol=0, rtol=0)
    unconditional = draw(denoiser, {"class_labels": torch.zeros_like(labels)})
    if not denoiser.formulation.learned_variance:  # (learned variance: the guided variance is the conditional's)
        torch.testing.assert_close(draw(ClassifierFreeGuidance(denoiser, 0.0)), unconditional, atol=0, rtol=0)
    assert not torch.allclose(guided, conditional, atol=1e-4) and not torch.allclose(conditional, unconditional)


# -- a run on a few images ------------------------------------------------------------------------------------
def _idx(shape: tuple[int, ...], values: np.ndarray) -> bytes:
    return gzip.compress(bytes([0, 0, 8, len(shape)]) + struct.pack(f">{len(shape)}I", *shape) + values.tobytes())


def _few_images(folder: Path) -> Path:
    """Twelve 6 x 6 images of three classes (class c: a bright column at 2c), as gzipped IDX files."""
    images = np.zeros((12, 6, 6), dtype=np.uint8)
    labels = np.arange(12, dtype=np.uint8) % 3
    for index, label in enumerate(labels):
        images[index, :, 2 * label] = 255
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "train-images-idx3-ubyte.gz").write_bytes(_idx(images.shape, images))
    (folder / "train-labels-idx1-ubyte.gz").write_bytes(_idx(labels.shape, labels))
    return folder


def _config(data: Path, out: Path, label_dropout: float = 0.2) -> dict:
    return {
        "diffusion": {"type": "EDM", "sigma_data": 0.5},
        "sampling": {"steps": 3},
        "model": {"arch": "ddpmpp", "model_channels": 8, "channel_mult": [1, 2], "num_blocks": 1,
                  "attn_resolutions": [], "dropout": 0.0, "label_dropout": label_dropout},
        "data": {"kind": "images", "path": str(data), "height": 6, "width": 6, "pad_to": 8, "num_classes": 3,
                 "class_names": ["left", "middle", "right"], "horizontal_flip": True},
        "training": {"steps": 3, "batch_size": 8, "log_every": 1, "tensorboard": False, "sample_every": 3,
                     "precision": "fp32", "threads": 1, "device": "cpu"},
        "output": {"dir": str(out)},
    }  # fmt: skip


@pytest.fixture(scope="module")
def image_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("image_run")
    config = config_from_dict(_config(_few_images(root / "data"), root / "run"))
    summary = train(prepare_training(config, root / "run"), progress=False)
    assert summary.steps == 3 and summary.final_loss is not None and np.isfinite(summary.final_loss)
    return root / "run"


def test_training_on_a_few_images(image_run: Path) -> None:
    assert (image_run / "samples" / "step-00000003.png").is_file()
    lines = [json.loads(line) for line in (image_run / "metrics.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines] == [1, 2, 3]
    run = load_run(image_run, device="cpu")
    assert run.config.resolved_model().label_dim == 3 and run.data_shape == (1, 8, 8)


def test_sample_images_per_class_and_guidance(image_run: Path, tmp_path: Path) -> None:
    run = load_run(image_run, device="cpu")
    drawn = run.sample_images("middle,0", per_class=2, guidance=[0, 1, 3], steps=2, seed=5)
    assert drawn.images.shape == (12, 1, 6, 6) and drawn.images.dtype == np.uint8
    assert drawn.labels.tolist() == [1, 1, 0, 0] * 3
    assert drawn.guidance.tolist() == [0.0] * 4 + [1.0] * 4 + [3.0] * 4
    # The same noise for every weight: guidance 1 is the conditional sample of the same seed.
    conditional = run.sample(4, steps=2, seed=5, labels=torch.tensor([1, 1, 0, 0]))
    expected = ((conditional[:, :, 1:7, 1:7].clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).numpy()
    np.testing.assert_array_equal(drawn.images[4:8], expected)
    written = drawn.save(tmp_path / "s.npz", tmp_path / "grid.png")
    assert sorted(path.name for path in written) == ["grid.png", "s.npz"]
    assert (tmp_path / "grid.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    back = load_image_dataset(tmp_path / "s.npz")
    np.testing.assert_array_equal(back.images, drawn.images)
    assert back.labels.tolist() == drawn.labels.tolist() and back.class_names == ("left", "middle", "right")
    with np.load(tmp_path / "s.npz", allow_pickle=False) as archive:
        assert archive["images"].shape == (12, 6, 6) and json.loads(str(archive["metadata"]))["seed"] == 5


def test_sample_command_writes_grid_and_npz(image_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    argv = ["sample", str(image_run), "--classes", "0-2", "--per-class", "2", "--guidance", "0,1,2", "--steps", "2",
            "--sampler", "euler", "--grid", str(tmp_path / "g.png"), "--out", str(tmp_path / "g.npz"),
            "--device", "cpu", "--no-progress"]  # fmt: skip
    assert run_cli(argv) == 0
    assert "drew 18 images (3 classes x 2 x guidance 0, 1, 2)" in capsys.readouterr().out
    with np.load(tmp_path / "g.npz", allow_pickle=False) as archive:
        assert archive["labels"].tolist() == [0, 0, 1, 1, 2, 2] * 3


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--classes", "7"], r"--classes: class 7 outside 0..2"),
        (["--classes", "shoe"], r"--classes: unknown class 'shoe'; the classes: left, middle, right"),
        (["--classes", "0", "--guidance", "1,x"], r"--guidance = '1,x': expected numbers"),
        (["--classes", "0", "--num", "3"], r"--num: an image run draws --per-class images"),
        (["--classes", "0"], r"give --grid FIGURE and/or --out FILE.npz"),
        (
            ["--num", "3", "--out", "x.npy"],
            r"is class-conditional \(3 classes\): give the classes to draw \(--classes\)",
        ),
    ],
)
def test_sample_command_errors(
    image_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str], message: str
) -> None:
    extra = [item.replace("x.npy", str(tmp_path / "x.npy")) for item in extra]
    needs_output = "--out" not in extra and "give --grid" not in message
    argv = ["sample", str(image_run), *extra, *(["--grid", str(tmp_path / "g.png")] if needs_output else [])]
    assert run_cli([*argv, "--device", "cpu", "--no-progress"]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1
    assert re.search(message, error), error
    assert not (tmp_path / "g.png").exists()


def test_guidance_needs_label_dropout(tmp_path: Path) -> None:
    config = config_from_dict(_config(_few_images(tmp_path / "data"), tmp_path / "run", label_dropout=0.0))
    config = config.model_copy(update={"training": config.training.model_copy(update={"steps": 1, "sample_every": 0})})
    train(prepare_training(config, tmp_path / "run"), progress=False)
    run = load_run(tmp_path / "run", device="cpu")
    with pytest.raises(ConfigError, match=r"guidance = 2: .* trained without label dropout"):
        run.sample_images([0], per_class=1, guidance=[1, 2], steps=2)
    assert run.sample_images([0], per_class=1, guidance=1, steps=2).images.shape == (1, 1, 6, 6)


def test_parsers() -> None:
    names = ("T-shirt/top", "Trouser", "Bag")
    assert parse_classes("0-2", names) == [0, 1, 2]
    assert parse_classes("bag, 0", names) == [2, 0]
    assert parse_classes(None, names) == [0, 1, 2]
    assert parse_guidance("0,1,2.5") == [0.0, 1.0, 2.5] and parse_guidance(4) == [4.0]
    with pytest.raises(ConfigError, match="range 2-0 runs backwards"):
        parse_classes("2-0", names)
    with pytest.raises(ConfigError, match="finite numbers >= 0"):
        parse_guidance([-1.0])


def test_likelihood_of_a_class_conditional_run_is_refused(image_run: Path) -> None:
    with pytest.raises(ConfigError, match="is class-conditional: its likelihood would be conditional on the labels"):
        load_run(image_run, device="cpu").likelihood(torch.zeros(2, 1, 8, 8))
