"""Tests of the shipped pretrained models: name resolution, cards and checksums, the bundled example, the held-out
scores their cards record (reproduced on ../shared/data), and the demo's downscaling part."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

import diffscale
from diffscale.pretrained import (
    CARD_JSON,
    CARD_MARKDOWN,
    MODELS_DIR,
    pretrained_model,
    pretrained_models,
    resolve_run,
    writable_run,
)
from diffscale.pretrained.packing import pack_run, sha256_of
from diffscale.threads import single_thread
from diffscale.validation import ConfigError
from tests.conftest import run_cli

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
UK = "era5-uk-t2m"
MAX_BYTES = 10 * 1024 * 1024
MODELS = sorted(pretrained_models())


def test_the_uk_model_is_shipped() -> None:
    assert UK in MODELS
    assert pretrained_model(UK).directory == MODELS_DIR / UK


@pytest.mark.parametrize("name", MODELS)
def test_files_match_their_card_and_fit_the_size_limit(name: str) -> None:
    model = pretrained_model(name)
    card = model.card
    shipped = {path.name for path in model.directory.iterdir() if path.is_file()}
    assert shipped - {CARD_JSON, CARD_MARKDOWN} == set(card["files"])
    for file_name, entry in card["files"].items():
        path = model.directory / file_name
        assert path.stat().st_size == entry["bytes"], file_name
        assert sha256_of(path) == entry["sha256"], file_name
    assert model.size_bytes <= MAX_BYTES
    markdown = model.card_path.read_text(encoding="utf-8")
    for entry in card["files"].values():
        assert entry["sha256"] in markdown
    assert card["training"]["command"].startswith("diffscale train configs/")
    assert card["limits"] and card["calendar"] and card["factor"] == model.factor


@pytest.mark.parametrize("name", MODELS)
def test_loads_by_name_with_its_bundled_statics(name: str) -> None:
    run = diffscale.load_run(name, device="cpu")
    model = pretrained_model(name)
    assert run.run_dir == model.directory
    assert run.variables == model.variables
    ema = [entry for file_name, entry in model.card["files"].items() if file_name.startswith("ema-")]
    assert [entry["sha256"] for entry in ema] == [run.weights_sha256]
    for path in run.section.static_paths:
        assert Path(path).parent == model.directory and Path(path).is_file()


def test_an_existing_path_wins_over_a_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / UK).mkdir()
    assert resolve_run(UK) == Path(UK)
    assert resolve_run(str(tmp_path)) == tmp_path


def test_an_unknown_name_lists_the_known_ones(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError) as caught:
        resolve_run("era5-mars")
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith("run directory 'era5-mars' not found: neither a path nor a pretrained model")
    assert ", ".join(MODELS) in message
    with pytest.raises(ConfigError, match="known pretrained models: " + ", ".join(MODELS)):
        diffscale.load_run("era5-mars", device="cpu")


def test_the_commands_take_a_name(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run_cli(["models"]) == 0
    listing = capsys.readouterr().out
    for name in MODELS:
        model = pretrained_model(name)
        assert name in listing and str(model.card_path) in listing and f"{model.factor}x" in listing
    coarse = tmp_path / "coarse.nc"
    assert run_cli(["coarsen", UK, "--input", str(MODELS_DIR / UK / "example_truth.nc"), "--out", str(coarse)]) == 0
    with xr.open_dataset(coarse) as written:
        assert dict(written.sizes) == {"time": 24, "latitude": 8, "longitude": 12}


def test_a_command_with_an_unknown_name_fails_in_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    assert run_cli(["downscale", "era5-mars", "--input", "coarse.nc", "--out", "ensemble.nc"]) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1
    assert "'era5-mars' not found" in error and UK in error


def test_writing_into_a_shipped_model_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="shipped pretrained model, read-only: copy its folder"):
        writable_run(UK)
    with pytest.raises(ConfigError, match="read-only"):
        diffscale.runs.compute_climatology(UK)
    assert writable_run(tmp_path) == tmp_path


def test_the_bundled_example_is_a_held_out_day_on_the_models_lattice() -> None:
    run = diffscale.load_run(UK, device="cpu")
    with xr.open_dataset(MODELS_DIR / UK / "example_coarse.nc") as coarse:
        assert coarse["t2m"].shape == (24, 8, 12)
        assert coarse["t2m"].attrs["units"] == "K"
        times = coarse.time.values
        assert np.isfinite(coarse["t2m"].values).all()
    first, last = (np.datetime64(value) for value in run.section.test_period[0])
    assert (times >= first).all() and (times < last + np.timedelta64(1, "D")).all()
    with xr.open_dataset(MODELS_DIR / UK / "example_truth.nc") as truth:
        assert truth["t2m"].shape == (24, 33, 49)
        # the coarse input is the truth's area-weighted 4 x 4 block mean (the south row and west column trimmed)
        recoarsened = run.coarsen(truth).load()
    with xr.open_dataset(MODELS_DIR / UK / "example_coarse.nc") as coarse:
        np.testing.assert_allclose(recoarsened["t2m"].values, coarse["t2m"].values, rtol=0, atol=1e-4)


def test_a_packed_run_downscales_like_its_source(tmp_path: Path) -> None:
    """Packing the shipped run again (its EMA weights, statistics and bundled statics) changes no output."""
    packed = tmp_path / "packed"
    pack_run(MODELS_DIR / UK, packed)
    assert sorted(path.name for path in packed.iterdir()) == sorted(
        name for name in pretrained_model(UK).card["files"] if not name.startswith("example_")
    )
    with xr.open_dataset(MODELS_DIR / UK / "example_coarse.nc") as coarse_file:
        coarse = coarse_file.isel(time=[6]).load()
    with single_thread():
        original = diffscale.load_run(UK, device="cpu").downscale(coarse, members=2, seed=3, progress=False)
        again = diffscale.load_run(packed, device="cpu").downscale(coarse, members=2, seed=3, progress=False)
    np.testing.assert_array_equal(original["t2m"].values, again["t2m"].values)
    assert np.isfinite(original["t2m"].values).all()


@pytest.mark.parametrize("name", MODELS)
def test_reproduces_the_cards_held_out_check(name: str) -> None:
    from diffscale.pretrained.scoring import held_out_scores

    card = pretrained_model(name).card
    truth = DATA / card["data"]["file"]
    if not truth.is_file():
        pytest.skip(f"{truth} not found (the real data live in ../shared/data)")
    check = card["scores"]["reproducible_check"]
    with single_thread():
        scores = held_out_scores(name, truth, check["times"], members=check["members"], seed=check["seed"])
    assert set(scores) == set(check["scores"])
    for variable, expected in check["scores"].items():
        for key, value in expected.items():
            assert math.isfinite(scores[variable][key])
            assert scores[variable][key] == pytest.approx(value, rel=1e-4, abs=1e-6), (variable, key)


def test_the_cards_scores_beat_bilinear_on_the_held_out_times() -> None:
    full = pretrained_model(UK).card["scores"]["held_out"]
    t2m = full["scores"]["t2m"]
    assert t2m["rmse"] < t2m["bilinear_rmse"] and t2m["crps"] < t2m["bilinear_mae"]
    assert full["members"] >= 8 and len(full["times"]) >= 20


def test_the_demo_downscales_a_held_out_uk_day(tmp_path: Path) -> None:
    from diffscale.demo_downscaling import run_downscaling_demo

    result = run_downscaling_demo(tmp_path / "out", hour=12, members=4, seed=0, progress=False)
    assert result.figure == tmp_path / "out" / "demo_downscaling.png"
    assert result.figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and result.figure.stat().st_size > 20_000
    assert result.time == "2019-03-28 12:00"
    assert 0 < result.rmse_ensemble_mean < 2.0 and result.mean_spread > 0
    with pytest.raises(ConfigError, match="members"):
        run_downscaling_demo(tmp_path / "other", members=3, progress=False)
    assert not (tmp_path / "other").exists()


def test_cards_are_strict_json() -> None:
    for name in MODELS:
        card = json.loads((MODELS_DIR / name / CARD_JSON).read_text(encoding="utf-8"), parse_constant=_refuse)
        assert card["name"] == name


def _refuse(value: str) -> None:
    raise ValueError(f"non-finite number {value} in a card")


def test_the_wheel_declares_every_shipped_file() -> None:
    """pyproject's package data globs (relative to src/diffscale) match every file of every shipped model."""
    import fnmatch

    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    pyproject = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text(encoding="utf-8"))
    globs = pyproject["tool"]["setuptools"]["package-data"]["diffscale"]
    package = MODELS_DIR.parents[1]
    for name in MODELS:
        for path in (MODELS_DIR / name).iterdir():
            relative = path.relative_to(package).as_posix()
            assert any(fnmatch.fnmatchcase(relative, pattern) for pattern in globs), relative
