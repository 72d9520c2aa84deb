"""diffscale.evaluation.multivariate: the energy score of a joint ensemble (against a direct double sum), the
order report of tasmin <= tasmax, and the seam of a global grid (present or absent by construction)."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from diffscale.evaluation.multivariate import (
    energy_score,
    energy_scores,
    neighbour_differences,
    order_report,
    seam_difference,
    seam_report,
    truth_scales,
)
from diffscale.evaluation.scores import fair_crps

LATITUDE = np.array([-60.0, -20.0, 10.0, 50.0])


def _cos_mean(values: np.ndarray) -> float:
    """Area-weighted mean over (..., H, W) with weights cos(latitude), then over the leading axes."""
    weights = np.cos(np.deg2rad(LATITUDE))[:, None]
    return float((values * weights).sum(axis=(-2, -1)).mean() / (weights.sum() * values.shape[-1]))


def _direct_energy_score(members: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Fair energy score at each point by the double sum: members (M, T, V, H, W), truth (T, V, H, W)."""
    count = members.shape[0]
    skill = np.mean([np.linalg.norm(member - truth, axis=1) for member in members], axis=0)
    pairs = sum(np.linalg.norm(a - b, axis=1) for a, b in itertools.product(members, members))
    return skill - pairs / (2 * count * (count - 1))


def test_energy_score_is_the_fair_double_sum_and_the_crps_for_one_variable() -> None:
    rng = np.random.default_rng(0)
    members = rng.normal(size=(5, 2, 3, 4, 6))
    truth = rng.normal(size=(2, 3, 4, 6))
    assert energy_score(members, truth, LATITUDE) == pytest.approx(_cos_mean(_direct_energy_score(members, truth)))
    one = energy_score(members[:, :, :1], truth[:, :1], LATITUDE)
    assert one == pytest.approx(_cos_mean(fair_crps(members[:, :, 0], truth[:, 0])))
    # a single member (a deterministic forecast): the Euclidean error
    single = energy_score(members[:1], truth, LATITUDE)
    assert single == pytest.approx(_cos_mean(np.linalg.norm(members[0] - truth, axis=1)))


def test_energy_scores_scale_each_variable_by_the_truth_s_std() -> None:
    rng = np.random.default_rng(1)
    truth = {"t2m": 280.0 + 20.0 * rng.normal(size=(3, 4, 6)), "msl": 1e5 + 1e3 * rng.normal(size=(3, 4, 6))}
    ensemble = {name: values + 0.1 * rng.normal(size=(4, 3, 4, 6)) * values.std() for name, values in truth.items()}
    baseline = {name: values + 0.2 * values.std() for name, values in truth.items()}
    result = energy_scores(ensemble, truth, baseline, LATITUDE, ["t2m", "msl"])
    scales = truth_scales(truth, LATITUDE)
    for name, values in truth.items():
        mean = _cos_mean(values)
        assert scales[name] == pytest.approx(math.sqrt(_cos_mean((values - mean) ** 2)))
    assert result["scales"] == scales
    z_members = np.stack([ensemble[name] / scales[name] for name in ("t2m", "msl")], axis=2)
    z_truth = np.stack([truth[name] / scales[name] for name in ("t2m", "msl")], axis=1)
    assert result["ensemble"] == pytest.approx(_cos_mean(_direct_energy_score(z_members, z_truth)))
    z_baseline = np.stack([baseline[name] / scales[name] for name in ("t2m", "msl")], axis=1)
    assert result["bilinear"] == pytest.approx(_cos_mean(np.linalg.norm(z_baseline - z_truth, axis=1)))
    # the same in other units: the scaled score does not change (msl in hPa, t2m in degC)
    other = energy_scores(
        {"t2m": ensemble["t2m"] - 273.15, "msl": ensemble["msl"] / 100},
        {"t2m": truth["t2m"] - 273.15, "msl": truth["msl"] / 100},
        {"t2m": baseline["t2m"] - 273.15, "msl": baseline["msl"] / 100},
        LATITUDE,
        ["t2m", "msl"],
    )
    assert other["ensemble"] == pytest.approx(result["ensemble"], rel=1e-9)


def test_order_report_counts_broken_member_points_with_area_weights() -> None:
    rng = np.random.default_rng(2)
    truth_min = rng.normal(size=(2, 4, 6))
    truth = {"tasmin": truth_min, "tasmax": truth_min + 3.0}
    ensemble = {"tasmin": truth["tasmin"] + np.zeros((3, 1, 1, 1)), "tasmax": truth["tasmax"] + np.zeros((3, 1, 1, 1))}
    ensemble["tasmin"][1, 0, 2, :] += 4.0  # member 1, time 0, row 2 (latitude 10): broken by 1 degree
    report = order_report(ensemble, truth, truth, LATITUDE)
    weights = np.cos(np.deg2rad(LATITUDE))
    expected = weights[2] * 6 / (3 * 2 * 6 * weights.sum())  # one row of one member at one time
    assert report == [
        {
            "low": "tasmin",
            "high": "tasmax",
            "ensemble": pytest.approx(expected),
            "truth": 0.0,
            "bilinear": 0.0,
            "ensemble_mean_excess": pytest.approx(1.0 * expected),
        }
    ]
    assert order_report({"tasmin": ensemble["tasmin"]}, truth, truth, LATITUDE) == []


def _global_truth(times: int = 3) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Smooth fields on a global 8 x 24 grid (15 deg): truth (T, H, W), latitude, longitude 0 .. 345."""
    latitude = np.linspace(-70.0, 70.0, 8)
    longitude = 15.0 * np.arange(24)
    lon = np.deg2rad(longitude)[None, None]
    phase = np.arange(times)[:, None, None]
    truth = np.cos(np.deg2rad(latitude))[None, :, None] * (np.sin(lon + phase) + 0.3 * np.cos(2 * lon)) * 5.0
    return truth, latitude, longitude


def test_seam_difference_is_the_wrap_around_pair_of_columns() -> None:
    truth, latitude, _ = _global_truth()
    seam, interior = seam_difference(truth, latitude)
    weights = np.cos(np.deg2rad(latitude))
    direct_seam = (np.abs(truth[..., -1] - truth[..., 0]) * weights).sum(axis=-1).mean() / weights.sum()
    direct_interior = (np.abs(np.diff(truth, axis=-1)).mean(axis=-1) * weights).sum(axis=-1).mean() / weights.sum()
    assert seam == pytest.approx(direct_seam) and interior == pytest.approx(direct_interior)
    # a smooth periodic field: the seam is like any other pair of neighbouring columns
    assert seam == pytest.approx(interior, rel=0.5)
    # any other pair: the one before column 5 of the array, as the wrap-around pair of the rolled field
    between = seam_difference(truth, latitude, column=5)[0]
    direct_between = (np.abs(truth[..., 5] - truth[..., 4]) * weights).sum(axis=-1).mean() / weights.sum()
    assert between == pytest.approx(direct_between)


def test_seam_report_finds_a_seam_where_there_is_one_and_none_where_there_is_none() -> None:
    truth, latitude, _ = _global_truth()
    rng = np.random.default_rng(3)
    members = truth[None] + 0.05 * rng.normal(size=(8, *truth.shape))
    without = seam_report(members, truth, truth, latitude)
    assert 0.9 <= without["ratio"] <= 1.1  # no seam: within 10 % of the truth's
    # a model that does not wrap: each member drifts by 3 units from west to east, so 0 and 345 deg disagree
    ramp = np.linspace(0.0, 3.0, truth.shape[-1])
    with_seam = seam_report(members + ramp, truth, truth, latitude)
    assert with_seam["ratio"] > 2.0
    assert with_seam["ensemble_interior"] == pytest.approx(without["ensemble_interior"], rel=0.2)  # only the seam
    assert with_seam["truth"] == without["truth"] and with_seam["bilinear"] == without["truth"]
    assert 0.9 <= without["excess"] <= 1.1 and with_seam["excess"] > 2.0


def test_an_ensemble_noisier_everywhere_has_a_ratio_above_one_but_no_seam_excess() -> None:
    # a truth whose small scales are alike at every longitude (random phases), as over many rows and times
    rng = np.random.default_rng(4)
    latitude = np.linspace(-70.0, 70.0, 8)
    lon = np.deg2rad(15.0 * np.arange(24))
    phases = rng.uniform(0, 2 * np.pi, size=(40, 8, 1, 3))
    truth = sum(np.sin((k + 1) * lon + phases[..., k]) / (k + 1) for k in range(3))  # (40, 8, 24)
    noisy = truth[None] + 0.5 * rng.normal(size=(16, *truth.shape))  # small scales far stronger than the truth's
    report = seam_report(noisy, truth, truth, latitude)
    assert report["ratio"] > 1.5 and report["nearby_ratio"] > 1.5  # the same at the seam and beside it
    assert report["excess"] == pytest.approx(report["ratio"] / report["nearby_ratio"])
    assert 0.85 <= report["excess"] <= 1.15
    # the nearby pairs: the 4 on either side of the seam, averaged
    differences = neighbour_differences(noisy, latitude)
    assert report["ensemble_nearby"] == pytest.approx(differences[[20, 21, 22, 23, 1, 2, 3, 4]].mean())
