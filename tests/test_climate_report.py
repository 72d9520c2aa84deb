"""The bilinear baseline (block mean, upsampling), weighted quantiles, evaluate_variable, figures and JSON."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from diffscale.data.climate.grid import block_centres as coarse_coordinates
from diffscale.evaluation.calibration import rank_histogram_flatness, spread_error_bins
from diffscale.evaluation.climate_report import (
    Spectrum,
    coarsen_block_mean,
    evaluate_variable,
    maps_figure,
    plot_maps,
    plot_qq,
    plot_rank_histogram,
    plot_spectra,
    plot_spread_error,
    qq_figure,
    rank_histogram_figure,
    spectra_figure,
    spread_error_figure,
    upsample_bilinear,
    weighted_quantiles,
    write_scores_json,
)

LATITUDE = 50.0 + 0.25 * np.arange(16)
LONGITUDE = -4.0 + 0.25 * np.arange(24)
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def test_block_mean_is_the_cos_latitude_weighted_mean_of_each_block() -> None:
    rng = np.random.default_rng(0)
    fields = rng.normal(size=(3, 16, 24))
    coarse = coarsen_block_mean(fields, LATITUDE, 4)
    assert coarse.shape == (3, 4, 6)
    weights = np.cos(np.deg2rad(LATITUDE))
    for i in range(4):
        for j in range(6):
            block = fields[:, 4 * i : 4 * i + 4, 4 * j : 4 * j + 4]
            w = weights[4 * i : 4 * i + 4, None]
            assert coarse[:, i, j] == pytest.approx((block * w).sum(axis=(1, 2)) / (4 * w.sum()))
    with pytest.raises(ValueError, match="not divisible"):
        coarsen_block_mean(fields[:, :15], LATITUDE[:15], 4)
    assert coarse_coordinates(LATITUDE, 4) == pytest.approx(50.375 + np.arange(4))


def test_bilinear_upsampling_keeps_constants_and_linear_fields_inside_the_outer_half_blocks() -> None:
    factor = 4
    assert upsample_bilinear(np.full((2, 4, 6), 3.5), factor) == pytest.approx(np.full((2, 16, 24), 3.5))
    # a field linear in the fine index: its block means are the values at the block centres
    rows, columns = np.meshgrid(np.arange(16.0), np.arange(24.0), indexing="ij")
    fine = 0.3 * rows - 0.7 * columns
    coarse = fine.reshape(4, 4, 6, 4).mean(axis=(1, 3))
    upsampled = upsample_bilinear(coarse, factor)
    inner = slice(factor // 2, -(factor // 2))
    assert upsampled[inner, inner] == pytest.approx(fine[inner, inner], abs=1e-12)


def test_weighted_quantiles_count_each_point_by_its_area() -> None:
    latitude = np.array([0.0, 60.0])  # weights 1 and 1/2
    values = np.array([[0.0, 0.0], [1.0, 1.0]])[None]  # row 0 holds 2/3 of the area
    assert weighted_quantiles(values, latitude, [0.3, 0.6])[0] == 0.0
    assert weighted_quantiles(values, latitude, [0.9])[0] == 1.0
    rng = np.random.default_rng(1)
    sample = rng.normal(size=(200, 2, 50))
    equal = weighted_quantiles(sample, np.array([10.0, -10.0]), [0.05, 0.5, 0.95])
    assert equal == pytest.approx(np.quantile(sample, [0.05, 0.5, 0.95]), abs=0.01)


def _smooth_fields(rng: np.random.Generator, times: int) -> np.ndarray:
    """Fields with large- and small-scale structure (random phases), so that the coarse grid misses some."""
    rows, columns = np.meshgrid(np.arange(16), np.arange(24), indexing="ij")
    out = np.zeros((times, 16, 24))
    for cycles_y, cycles_x, amplitude in [(1, 1, 3.0), (2, 3, 1.0), (6, 9, 0.5), (7, 10, 0.4)]:
        phase = rng.uniform(0, 2 * np.pi, size=(times, 1, 1))
        out += amplitude * np.cos(2 * np.pi * (cycles_y * rows / 16 + cycles_x * columns / 24) + phase)
    return 280.0 + out


def test_evaluate_variable_scores_a_perfect_ensemble_and_the_smooth_baseline() -> None:
    rng = np.random.default_rng(2)
    truth = _smooth_fields(rng, 6)
    baseline = upsample_bilinear(coarsen_block_mean(truth, LATITUDE, 4), 4)
    ensemble = np.stack([truth, truth, truth])
    result = evaluate_variable("t2m", ensemble, truth, baseline, LATITUDE, LONGITUDE, factor=4, units="K")
    ensemble_scores, bilinear = result.scores["ensemble"], result.scores["bilinear"]
    assert ensemble_scores["rmse"] == 0.0 and ensemble_scores["crps"] == 0.0 and ensemble_scores["spread"] == 0.0
    assert ensemble_scores["spectral_ratio"]["mean_ratio"] == pytest.approx(1.0)
    assert ensemble_scores["spectral_ratio"]["shells"] > 0
    # the bilinear field lacks the small scales: much less power above the coarse Nyquist wavenumber
    assert bilinear["spectral_ratio"]["mean_ratio"] < 0.3
    assert bilinear["rmse"] > 0.1 and bilinear["crps"] == bilinear["mae"]
    assert set(result.spectra) == {"truth", "ensemble members", "ensemble mean", "bilinear"}
    assert result.k_nyquist_coarse == result.scores["spectra"]["k_nyquist_coarse_per_km"]
    assert len(result.scores["spectra"]["truth"]) == len(result.scores["spectra"]["wavenumber_per_km"])
    # every member equals the truth: ties broken at random, so the ranks are uniform; no spread, no error
    assert ensemble_scores["rank_flatness"]["p_value"] > 1e-4
    assert ensemble_scores["spread_error"]["sorted_by"].startswith("variance of all members")  # M = 3 < 4
    assert ensemble_scores["spread_error"]["rmse"] == [0.0] * 10


@pytest.mark.parametrize("members", [1, 5])
def test_evaluate_variable_adds_the_calibration_figures_as_json(members: int, tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    truth = _smooth_fields(rng, 5)
    ensemble = truth + rng.normal(size=(members, *truth.shape))
    baseline = upsample_bilinear(coarsen_block_mean(truth, LATITUDE, 4), 4)
    result = evaluate_variable("t2m", ensemble, truth, baseline, LATITUDE, LONGITUDE, 4, spread_error_bin_count=4)
    scores = result.scores["ensemble"]
    assert scores["rank_flatness"] == rank_histogram_flatness(ensemble, truth, LATITUDE)
    if members == 1:
        assert scores["spread_error"] is None
    else:
        assert scores["spread_error"] == spread_error_bins(ensemble, truth, LATITUDE, bins=4)
    assert "rank_flatness" not in result.scores["bilinear"] and "spread_error" not in result.scores["bilinear"]
    write_scores_json(tmp_path / "scores.json", result.scores)
    assert json.loads((tmp_path / "scores.json").read_text())["ensemble"]["rank_flatness"]["dof"] == members


def test_scores_json_writes_nan_as_null(tmp_path: Path) -> None:
    path = tmp_path / "scores.json"
    write_scores_json(path, {"ssr": math.nan, "values": np.array([1.0, np.inf]), "count": np.int64(3)})
    assert json.loads(path.read_text()) == {"ssr": None, "values": [1.0, None], "count": 3}


def _is_png(path: Path) -> bool:
    return path.read_bytes()[:8] == PNG_SIGNATURE and path.stat().st_size > 5_000


def test_every_figure_is_written_as_a_png(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    truth = _smooth_fields(rng, 4)
    members = truth[None] + rng.normal(size=(3, 4, 16, 24))
    coarse = coarsen_block_mean(truth, LATITUDE, 4)
    baseline = upsample_bilinear(coarse, 4)
    plot_maps(
        tmp_path / "maps.png",
        variable="t2m",
        units="K",
        latitude=LATITUDE,
        longitude=LONGITUDE,
        truth=truth[0],
        ensemble_mean=members[:, 0].mean(axis=0),
        spread=members[:, 0].std(axis=0, ddof=1),
        members=members[:, 0],
        coarse=coarse[0],
        coarse_latitude=coarse_coordinates(LATITUDE, 4),
        coarse_longitude=coarse_coordinates(LONGITUDE, 4),
        bilinear=baseline[0],
        title="t2m",
    )
    k = np.array([0.01, 0.02, 0.03])
    spectra = {"truth": Spectrum(k, np.array([3.0, 2.0, 1.0])), "bilinear": Spectrum(k, np.array([3.0, 1.0, 0.1]))}
    plot_spectra(tmp_path / "spectra.png", spectra, 0.015, "t2m", "K")
    plot_rank_histogram(tmp_path / "ranks.png", [0.3, 0.2, 0.2, 0.3], "t2m")
    plot_qq(tmp_path / "qq.png", truth, {"members": members, "bilinear": baseline}, LATITUDE, "t2m", "K")
    for name in ("maps", "spectra", "ranks", "qq"):
        assert _is_png(tmp_path / f"{name}.png"), name


def test_calibration_figures_carry_their_numbers_and_leave_pyplot_alone(tmp_path: Path) -> None:
    import matplotlib.pyplot as plt
    from matplotlib.figure import Figure

    before = plt.get_fignums()
    rng = np.random.default_rng(5)
    truth = rng.normal(size=(6, 16, 24))
    members = 0.5 * rng.normal(size=(8, 6, 16, 24))  # under-dispersed
    flatness = rank_histogram_flatness(members, truth, LATITUDE)
    spread_error = spread_error_bins(members, truth, LATITUDE)
    figure = rank_histogram_figure(np.full(9, 1 / 9), "t2m", flatness)
    assert isinstance(figure, Figure)
    title = figure.axes[0].get_title()
    assert "chi-square p" in title and f"{flatness['reliability_index']:.3g}" in title
    figure = spread_error_figure(spread_error, "t2m", "K")
    axis = figure.axes[0]
    assert axis.get_xlabel().endswith("[K]") and axis.get_ylabel().endswith("[K]")
    assert "sorted by the variance of members 1, 3" in axis.get_title()
    points = next(line for line in axis.get_lines() if line.get_marker() == "o")
    assert points.get_xdata() == pytest.approx(spread_error["spread"])
    assert points.get_ydata() == pytest.approx(spread_error["rmse"])
    assert sorted(text.get_text() for text in axis.texts if text.get_text().isdigit()) == sorted(
        str(count) for count in spread_error["counts"]
    )
    # the numbers as read back from JSON (NaN as null) draw too
    round_trip = json.loads(json.dumps({**flatness, "design_effect": None, "p_value_time_clustered": None}))
    plot_rank_histogram(tmp_path / "ranks.png", [0.3, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.0], "t2m", round_trip)
    plot_spread_error(tmp_path / "spread_error.png", {**spread_error, "log_slope": None}, "t2m", "K")
    assert _is_png(tmp_path / "ranks.png") and _is_png(tmp_path / "spread_error.png")
    k = np.array([0.01, 0.02])
    figures = [
        spectra_figure({"truth": Spectrum(k, np.array([2.0, 1.0]))}, 0.015, "t2m", "K"),
        qq_figure(truth, {"members": members}, LATITUDE, "t2m", "K"),
        maps_figure(
            variable="t2m",
            units="K",
            latitude=LATITUDE,
            longitude=LONGITUDE,
            truth=truth[0],
            ensemble_mean=members[:, 0].mean(axis=0),
            spread=members[:, 0].std(axis=0, ddof=1),
            members=members[:, 0],
            coarse=coarsen_block_mean(truth[0], LATITUDE, 4),
            coarse_latitude=coarse_coordinates(LATITUDE, 4),
            coarse_longitude=coarse_coordinates(LONGITUDE, 4),
        ),
    ]
    assert all(isinstance(item, Figure) for item in figures)
    assert plt.get_fignums() == before
