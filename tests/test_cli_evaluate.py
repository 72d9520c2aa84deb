"""``diffscale evaluate``: a round trip on synthetic files (scores checked against independent numpy
computations), the --coarse path, real ERA5 data, and bad input that exits with status 2, one line on stderr
and nothing written."""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from diffscale.cli.evaluate import add_parser, run
from diffscale.validation import ConfigError
from tests.conftest import run_cli, snapshot

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
FACTOR = 4
LATITUDE = 50.0 + 0.25 * np.arange(16)
LONGITUDE = -4.0 + 0.25 * np.arange(24)  # crosses 0: the truth file stores it as 356 .. 359.75, 0 .. 1.75
TIMES = pd.date_range("2020-01-01", periods=6, freq="6h").values
MEMBERS = 5


def evaluate(argv: list[str]) -> int:
    """``diffscale evaluate ARGV``: through the real ``diffscale`` command once it has the subcommand, else
    through a parser built with :func:`add_parser` and main's convention (ConfigError: one line, status 2)."""
    from diffscale.cli.main import build_parser

    commands = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    if "evaluate" in commands.choices:
        return run_cli(["evaluate", *argv])
    parser = argparse.ArgumentParser(prog="diffscale")
    add_parser(parser.add_subparsers(dest="command"))
    try:
        return run(parser.parse_args(["evaluate", *argv]))
    except ConfigError as error:
        import sys

        sys.stderr.write(f"diffscale: error: {' '.join(str(error).split())}\n")
        return 2


def _truth_field(rng: np.random.Generator, latitude: np.ndarray, longitude: np.ndarray, times: int) -> np.ndarray:
    """Smooth large scales plus small-scale noise, in K."""
    lat, lon = np.meshgrid(latitude, longitude, indexing="ij")
    phase = rng.uniform(0, 2 * np.pi, size=(times, 1, 1))
    return (
        280.0
        + 3.0 * np.sin(np.deg2rad(20 * lat) + phase) * np.cos(np.deg2rad(15 * lon))
        + rng.normal(scale=0.5, size=(times, *lat.shape))
    )


def _write_truth(
    path: Path,
    values: np.ndarray,
    latitude: np.ndarray,
    longitude: np.ndarray,
    times: np.ndarray,
    name: str = "2m_temperature",
    units: str | None = "K",
) -> None:
    """A truth file as a provider might write it: latitude descending, longitude in 0..360, another name."""
    attributes = {"units": units} if units is not None else {}
    dataset = xr.Dataset(
        {name: (("time", "latitude", "longitude"), values[:, ::-1].astype(np.float32), attributes)},
        coords={"time": times, "latitude": latitude[::-1], "longitude": longitude % 360.0},
    )
    dataset.to_netcdf(path)


def _write_ensemble(
    path: Path, members: np.ndarray, times: np.ndarray, attrs: dict | None = None, units: str = "K"
) -> None:
    variable = {"units": units, "standard_name": "air_temperature", "long_name": "2 m temperature"}
    xr.Dataset(
        {"t2m": (("member", "time", "latitude", "longitude"), members.astype(np.float32), variable)},
        coords={
            "member": ("member", np.arange(members.shape[0]), {"standard_name": "realization"}),
            "time": times,
            "latitude": ("latitude", LATITUDE, {"units": "degrees_north"}),
            "longitude": ("longitude", LONGITUDE, {"units": "degrees_east"}),
        },
        attrs={"coarsening_factor": FACTOR} if attrs is None else attrs,
    ).to_netcdf(path)


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path | np.ndarray]:
    root = tmp_path_factory.mktemp("evaluate_inputs")
    rng = np.random.default_rng(0)
    # the truth covers a larger domain and more times than the ensemble
    big_lat = 49.0 + 0.25 * np.arange(28)
    big_lon = -6.0 + 0.25 * np.arange(40)
    all_times = pd.date_range("2019-12-31", periods=16, freq="6h").values
    big = _truth_field(rng, big_lat, big_lon, all_times.size)
    _write_truth(root / "truth.nc", big, big_lat, big_lon, all_times)
    i0, j0 = 4, 8  # LATITUDE[0] = big_lat[4], LONGITUDE[0] = big_lon[8]
    t0 = int(np.nonzero(all_times == TIMES[0])[0][0])
    truth = big[t0 : t0 + TIMES.size, i0 : i0 + 16, j0 : j0 + 24].astype(np.float32).astype(np.float64)
    ensemble_times = np.concatenate([TIMES, [np.datetime64("2021-06-01T00")]])  # the last one is not in the truth
    members = truth[None] + rng.normal(scale=0.6, size=(MEMBERS, *truth.shape))
    members = np.concatenate([members, 280.0 + rng.normal(size=(MEMBERS, 1, 16, 24))], axis=1)
    members = members.astype(np.float32).astype(np.float64)
    _write_ensemble(root / "ensemble.nc", members, ensemble_times)
    return {
        "root": root,
        "truth": root / "truth.nc",
        "ensemble": root / "ensemble.nc",
        "truth_values": truth,
        "members": members[:, : TIMES.size],
    }


def _bilinear_reference(coarse: np.ndarray, factor: int) -> np.ndarray:
    """Separable linear interpolation at fine positions (i + 1/2)/f - 1/2 of the coarse index, constant beyond
    the outer coarse centres (np.interp clamps): torch's align_corners=False, computed independently."""

    def along(values: np.ndarray, axis: int) -> np.ndarray:
        n = values.shape[axis]
        positions = (np.arange(n * factor) + 0.5) / factor - 0.5
        return np.apply_along_axis(lambda row: np.interp(positions, np.arange(n), row), axis, values)

    return along(along(coarse, -2), -1)


def _cos_mean(values: np.ndarray) -> float:
    weights = np.cos(np.deg2rad(LATITUDE))[:, None]
    return float((values * weights).sum(axis=(-2, -1)).mean() / (weights.sum() * values.shape[-1]))


def test_round_trip_writes_the_report_with_independently_checked_scores(
    files: dict, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "report"
    assert evaluate([str(files["ensemble"]), "--truth", str(files["truth"]), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "RMSE [K]" in printed and "spread-skill ratio" in printed and "bilinear" in printed
    assert "rank histogram: chi-square p = " in printed and "spread-error (" in printed
    kinds = ("maps", "spectra", "rank_histogram", "qq", "spread_error", "temporal")
    assert sorted(path.name for path in out.iterdir()) == sorted(
        ["scores.json"] + [f"t2m_{kind}.png" for kind in kinds]
    )
    document = json.loads((out / "scores.json").read_text())
    assert document["members"] == MEMBERS and document["coarsening_factor"] == FACTOR
    assert document["times"]["count"] == TIMES.size and document["times"]["ensemble_times_without_truth"] == 1
    scores = document["variables"]["t2m"]
    assert scores["units"] == "K"
    truth, members = files["truth_values"], files["members"]
    mean = members.mean(axis=0)
    ensemble = scores["ensemble"]
    assert ensemble["rmse"] == pytest.approx(math.sqrt(_cos_mean((mean - truth) ** 2)), rel=1e-6)
    assert ensemble["bias"] == pytest.approx(_cos_mean(mean - truth), abs=1e-6)
    pairwise = np.abs(members[:, None] - members[None]).sum(axis=(0, 1)) / (MEMBERS * (MEMBERS - 1))
    crps = np.abs(members - truth).mean(axis=0) - 0.5 * pairwise
    assert ensemble["crps"] == pytest.approx(_cos_mean(crps), rel=1e-6)
    spread = math.sqrt(_cos_mean(members.var(axis=0, ddof=1)))
    assert ensemble["spread_skill_ratio"] == pytest.approx(math.sqrt(1.2) * spread / ensemble["rmse"], rel=1e-6)
    assert sum(ensemble["rank_histogram"]["counts"]) == truth.size
    # the bilinear baseline: the truth's cos-weighted 4 x 4 block means, upsampled
    weights = np.cos(np.deg2rad(LATITUDE)).reshape(4, 4)
    blocks = truth.reshape(TIMES.size, 4, 4, 6, 4)
    coarse = np.einsum("tiajb,ia->tij", blocks, weights) / (4 * weights.sum(axis=1))[:, None]
    baseline = _bilinear_reference(coarse, FACTOR)
    assert scores["bilinear"]["rmse"] == pytest.approx(math.sqrt(_cos_mean((baseline - truth) ** 2)), rel=1e-6)
    assert scores["bilinear"]["crps"] == pytest.approx(_cos_mean(np.abs(baseline - truth)), rel=1e-6)
    assert scores["bilinear"]["spectral_ratio"]["mean_ratio"] < 0.5 < ensemble["spectral_ratio"]["mean_ratio"]


def test_a_coarse_file_gives_the_same_baseline_as_the_coarsened_truth(files: dict, tmp_path: Path) -> None:
    truth = files["truth_values"]
    weights = np.cos(np.deg2rad(LATITUDE)).reshape(4, 4)
    coarse = np.einsum("tiajb,ia->tij", truth.reshape(TIMES.size, 4, 4, 6, 4), weights)
    coarse /= (4 * weights.sum(axis=1))[:, None]
    coarse_lat, coarse_lon = LATITUDE.reshape(4, 4).mean(axis=1), LONGITUDE.reshape(6, 4).mean(axis=1)
    _write_truth(tmp_path / "coarse.nc", coarse, coarse_lat, coarse_lon, TIMES, name="t2m")
    ensemble = tmp_path / "ensemble.nc"
    _write_ensemble(ensemble, files["members"], TIMES, attrs={})  # no coarsening_factor: inferred from the file
    argv = [str(ensemble), "--truth", str(files["truth"]), "--no-figures"]
    assert evaluate([*argv, "--coarse", str(tmp_path / "coarse.nc"), "--out", str(tmp_path / "a")]) == 0
    assert evaluate([*argv, "--coarsening-factor", "4", "--out", str(tmp_path / "b")]) == 0
    from_file = json.loads((tmp_path / "a" / "scores.json").read_text())["variables"]["t2m"]["bilinear"]
    from_truth = json.loads((tmp_path / "b" / "scores.json").read_text())["variables"]["t2m"]["bilinear"]
    assert from_file["rmse"] == pytest.approx(from_truth["rmse"], rel=1e-5)
    assert from_file["spectral_ratio"]["mean_ratio"] == pytest.approx(
        from_truth["spectral_ratio"]["mean_ratio"], rel=1e-4
    )


def test_a_truth_and_a_coarse_input_in_other_units_are_converted(files: dict, tmp_path: Path) -> None:
    truth = files["truth_values"]
    weights = np.cos(np.deg2rad(LATITUDE)).reshape(4, 4)
    coarse = np.einsum("tiajb,ia->tij", truth.reshape(TIMES.size, 4, 4, 6, 4), weights)
    coarse /= (4 * weights.sum(axis=1))[:, None]
    coarse_lat, coarse_lon = LATITUDE.reshape(4, 4).mean(axis=1), LONGITUDE.reshape(6, 4).mean(axis=1)
    _write_truth(tmp_path / "coarse_k.nc", coarse, coarse_lat, coarse_lon, TIMES, name="t2m")
    _write_truth(tmp_path / "coarse_c.nc", coarse - 273.15, coarse_lat, coarse_lon, TIMES, name="t2m", units="degC")
    _write_truth(tmp_path / "truth_c.nc", truth - 273.15, LATITUDE, LONGITUDE, TIMES, units="degC")
    in_kelvin = diffscale_evaluate(files["ensemble"], files["truth"], tmp_path / "coarse_k.nc")
    in_celsius = diffscale_evaluate(files["ensemble"], tmp_path / "truth_c.nc", tmp_path / "coarse_c.nc")
    assert str(in_celsius["units"].sel(variable="t2m").values) == "K"  # scored in the ensemble's units
    for key in ("rmse", "mae", "bias", "crps"):
        # the files hold float32: degC values are rounded at 1e-6 K, not the K values' 3e-5 K
        np.testing.assert_allclose(in_celsius[key].values, in_kelvin[key].values, rtol=1e-4, atol=2e-5)


def diffscale_evaluate(*args: object, **kwargs: object) -> xr.Dataset:
    import diffscale

    return diffscale.evaluate(*args, **kwargs)


def _shifted_truth(files: dict, path: Path) -> list[str]:
    _write_truth(path, files["truth_values"], LATITUDE + 0.125, LONGITUDE, TIMES)
    return ["--truth", str(path)]


def _nan_truth(files: dict, path: Path) -> list[str]:
    values = files["truth_values"].copy()
    values[2, 3, 4] = np.nan
    _write_truth(path, values, LATITUDE, LONGITUDE, TIMES)
    return ["--truth", str(path)]


def _later_truth(files: dict, path: Path) -> list[str]:
    _write_truth(path, files["truth_values"], LATITUDE, LONGITUDE, TIMES + np.timedelta64(365, "D"))
    return ["--truth", str(path)]


def _pascal_truth(files: dict, path: Path) -> list[str]:
    _write_truth(path, files["truth_values"], LATITUDE, LONGITUDE, TIMES, units="Pa")
    return ["--truth", str(path)]


def _truth_without_units(files: dict, path: Path) -> list[str]:
    _write_truth(path, files["truth_values"], LATITUDE, LONGITUDE, TIMES, units=None)
    return ["--truth", str(path)]


def _other_variable(files: dict, path: Path) -> list[str]:
    _write_truth(path, files["truth_values"], LATITUDE, LONGITUDE, TIMES, name="msl")
    return ["--truth", str(path)]


def _coarse_off_grid(files: dict, path: Path) -> list[str]:
    coarse = files["truth_values"][:, ::4, ::4]
    _write_truth(path, coarse, LATITUDE[::4], LONGITUDE[::4], TIMES, name="t2m")  # corners, not block centres
    return ["--truth", str(files["truth"]), "--coarse", str(path)]


BAD_INPUTS: dict[str, tuple[Callable[[dict, Path], list[str]], str]] = {
    "grid": (_shifted_truth, "does not line up with the grid: no latitude"),
    "nan": (_nan_truth, "holds 1 NaN or infinite values (first at time 2020-01-01T12:00:00)"),
    "times": (_later_truth, "no time in common with the ensemble"),
    "units": (_pascal_truth, "'t2m' is in 'Pa', expected 'K': no unambiguous conversion (pressure and temperature"),
    "no units": (_truth_without_units, "variable 't2m': the input has no units attribute, expected 'K'"),
    "variable": (_other_variable, "variable 't2m' not in"),
    "coarse": (_coarse_off_grid, "coarse input"),
    "missing file": (lambda files, path: ["--truth", str(path)], "truth file"),
    "unknown variable": (lambda files, _: ["--truth", str(files["truth"]), "--variable", "u10"], "no variable 'u10'"),
    "negative seed": (lambda files, _: ["--truth", str(files["truth"]), "--seed", "-1"], "--seed = -1"),
}


@pytest.mark.parametrize("case", BAD_INPUTS)
def test_bad_input_exits_2_with_one_line_and_writes_nothing(
    case: str, files: dict, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    make, message = BAD_INPUTS[case]
    extra = make(files, tmp_path / "input.nc")
    ensemble = tmp_path / "ensemble.nc"
    _write_ensemble(ensemble, files["members"], TIMES)
    before = snapshot(tmp_path)
    capsys.readouterr()
    assert evaluate([str(ensemble), *extra, "--out", str(tmp_path / "report")]) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("diffscale: error: ") and message in lines[0], captured.err
    assert snapshot(tmp_path) == before


def test_no_coarsening_factor_is_a_clear_error(files: dict, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ensemble = tmp_path / "ensemble.nc"
    _write_ensemble(ensemble, files["members"], TIMES, attrs={})
    assert evaluate([str(ensemble), "--truth", str(files["truth"]), "--out", str(tmp_path / "r")]) == 2
    assert "no coarsening_factor attribute" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


@pytest.mark.skipif(not (DATA / "era5_t2m_uk_2019-03.nc").exists(), reason="shared ERA5 data not available")
def test_real_era5_truth_with_a_noisy_ensemble(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    truth = xr.open_dataset(DATA / "era5_t2m_uk_2019-03.nc")["t2m"].isel(time=slice(0, 8))
    truth = truth.sortby("latitude").isel(latitude=slice(0, 32), longitude=slice(0, 48))
    rng = np.random.default_rng(1)
    members = truth.values[None] + rng.normal(scale=0.5, size=(4, *truth.shape))
    ensemble = xr.Dataset(
        {"t2m": (("member", "time", "latitude", "longitude"), members.astype(np.float32), {"units": "K"})},
        coords={
            "member": np.arange(4),
            "time": truth.time.values,
            "latitude": truth.latitude.values,
            "longitude": truth.longitude.values,
        },
        attrs={"coarsening_factor": 4},
    )
    ensemble.to_netcdf(tmp_path / "ensemble.nc")
    out = tmp_path / "report"
    argv = [str(tmp_path / "ensemble.nc"), "--truth", str(DATA / "era5_t2m_uk_2019-03.nc"), "--out", str(out)]
    assert evaluate([*argv, "--no-figures"]) == 0
    assert [path.name for path in out.iterdir()] == ["scores.json"]
    scores = json.loads((out / "scores.json").read_text())["variables"]["t2m"]
    # members = truth + N(0, 0.5^2): the ensemble mean's RMSE is 0.5 / sqrt(4) = 0.25 K
    assert scores["ensemble"]["rmse"] == pytest.approx(0.25, rel=0.05)
    assert 0.05 < scores["bilinear"]["rmse"] < 2.0  # 4x coarsening of hourly UK 2 m temperature
    assert scores["bilinear"]["spectral_ratio"]["mean_ratio"] < 0.5


def test_the_python_api_gives_the_command_s_scores_and_figures(files: dict, tmp_path: Path) -> None:
    from matplotlib.figure import Figure

    import diffscale
    from diffscale.runs import plots

    out = tmp_path / "report"
    assert evaluate([str(files["ensemble"]), "--truth", str(files["truth"]), "--out", str(out), "--no-figures"]) == 0
    written = json.loads((out / "scores.json").read_text())["variables"]["t2m"]["ensemble"]
    scores = diffscale.evaluate(files["ensemble"], truth=files["truth"])
    t2m = scores.sel(variable="t2m")
    flatness, binned = written["rank_flatness"], written["spread_error"]
    assert float(t2m["rank_p_value"]) == flatness["p_value"]
    assert float(t2m["rank_reliability_index"]) == flatness["reliability_index"]
    assert t2m["spread_error_rmse"].values[: binned["bins"]].tolist() == binned["rmse"]
    assert t2m["spread_error_spread"].values[: binned["bins"]].tolist() == binned["spread"]
    assert float(t2m["spread_error_log_slope"]) == binned["log_slope"]
    figures = [
        plots.rank_histogram(scores),
        plots.spread_error(scores, "t2m"),
        plots.spectra(scores),
        plots.maps(files["ensemble"], files["truth"], time=1),
        plots.maps(files["ensemble"], files["truth"], "t2m", time=str(TIMES[2])),
        plots.quantiles(files["ensemble"], files["truth"]),
    ]
    assert all(isinstance(figure, Figure) and figure.axes for figure in figures)
    with pytest.raises(ConfigError, match="not among the scored variables"):
        plots.spectra(scores, "u10")
    with pytest.raises(ConfigError, match="not among the evaluated times"):
        plots.maps(files["ensemble"], files["truth"], time="1999-01-01")


# -- several variables -------------------------------------------------------------------------------------------
def _multivariable_files(root: Path) -> dict[str, Any]:
    """An ensemble and truth of u10, v10 [m s-1], tasmin and tasmax [degC] (the truth in another variable order,
    tasmin <= tasmax everywhere); members are truth + noise, so tasmin > tasmax where the two are close."""
    rng = np.random.default_rng(5)
    shape = (TIMES.size, LATITUDE.size, LONGITUDE.size)
    truth = {
        "u10": 3.0 + 2.0 * rng.normal(size=shape),
        "v10": -1.0 + 2.0 * rng.normal(size=shape),
        "tasmin": 5.0 + 3.0 * rng.normal(size=shape),
    }
    truth["tasmax"] = truth["tasmin"] + rng.uniform(0.2, 6.0, size=shape)
    truth = {name: values.astype(np.float32).astype(np.float64) for name, values in truth.items()}
    members = {name: values + rng.normal(scale=0.8, size=(MEMBERS, *shape)) for name, values in truth.items()}
    members = {name: values.astype(np.float32).astype(np.float64) for name, values in members.items()}
    units = {"u10": "m s-1", "v10": "m s-1", "tasmin": "degC", "tasmax": "degC"}
    coords = {"time": TIMES, "latitude": LATITUDE, "longitude": LONGITUDE}
    xr.Dataset(
        {name: (("member", "time", "latitude", "longitude"), members[name], {"units": units[name]}) for name in units},
        coords={"member": np.arange(MEMBERS), **coords},
        attrs={"coarsening_factor": FACTOR},
    ).to_netcdf(root / "multi_ensemble.nc")
    order = ["tasmax", "v10", "tasmin", "u10"]  # matched by name, not by position
    truth_units = {**units, "u10": "m s**-1", "v10": "m s**-1"}  # ERA5's spelling of the same units
    xr.Dataset(
        {name: (("time", "latitude", "longitude"), truth[name], {"units": truth_units[name]}) for name in order},
        coords=coords,
    ).to_netcdf(root / "multi_truth.nc")
    return {"truth": truth, "members": members, "units": units}


def _block_mean(values: np.ndarray) -> np.ndarray:
    weights = np.cos(np.deg2rad(LATITUDE)).reshape(4, 4)
    blocks = values.reshape(TIMES.size, 4, 4, 6, 4)
    return np.einsum("tiajb,ia->tij", blocks, weights) / (4 * weights.sum(axis=1))[:, None]


def test_several_variables_derived_wind_speed_energy_score_and_order(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    made = _multivariable_files(tmp_path)
    truth, members = made["truth"], made["members"]
    out = tmp_path / "report"
    ensemble_path, truth_path = tmp_path / "multi_ensemble.nc", tmp_path / "multi_truth.nc"
    assert evaluate([str(ensemble_path), "--truth", str(truth_path), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    document = json.loads((out / "scores.json").read_text())
    assert list(document["variables"]) == ["u10", "v10", "tasmin", "tasmax", "ws10"]
    assert (out / "ws10_maps.png").exists() and (out / "ws10_rank_histogram.png").exists()
    # wind speed: each member's speed from its components; the baseline's from the upsampled components
    ws10 = document["variables"]["ws10"]
    assert ws10["derived_from"] == ["u10", "v10"] and ws10["units"] == "m s-1"
    speed_members = np.hypot(members["u10"], members["v10"])
    speed_truth = np.hypot(truth["u10"], truth["v10"])
    rmse = math.sqrt(_cos_mean((speed_members.mean(axis=0) - speed_truth) ** 2))
    assert ws10["ensemble"]["rmse"] == pytest.approx(rmse, rel=1e-6)
    baseline = np.hypot(
        _bilinear_reference(_block_mean(truth["u10"]), FACTOR), _bilinear_reference(_block_mean(truth["v10"]), FACTOR)
    )
    assert ws10["bilinear"]["rmse"] == pytest.approx(math.sqrt(_cos_mean((baseline - speed_truth) ** 2)), rel=1e-6)
    # the energy score over the four modelled variables (not the derived speed), each scaled by the truth's std
    joint = document["joint"]["energy_score"]
    names = ["u10", "v10", "tasmin", "tasmax"]
    assert joint["variables"] == names
    scales = {name: math.sqrt(_cos_mean((truth[name] - _cos_mean(truth[name])) ** 2)) for name in names}
    assert joint["scales"] == pytest.approx(scales)
    z = np.stack([members[name] / scales[name] for name in names], axis=2)  # (M, T, V, H, W)
    y = np.stack([truth[name] / scales[name] for name in names], axis=1)
    skill = np.linalg.norm(z - y[None], axis=2).mean(axis=0)
    pairwise = np.linalg.norm(z[:, None] - z[None], axis=3).sum(axis=(0, 1)) / (2 * MEMBERS * (MEMBERS - 1))
    assert joint["ensemble"] == pytest.approx(_cos_mean(skill - pairwise), rel=1e-6)
    # order: the share of (member, time, point) with tasmin > tasmax, area-weighted; the truth never breaks it
    (pair,) = document["ordered_pairs"]
    weights = np.cos(np.deg2rad(LATITUDE))[:, None]
    broken = (members["tasmin"] > members["tasmax"]) * weights
    assert pair["ensemble"] == pytest.approx(broken.sum() / (weights.sum() * MEMBERS * TIMES.size * 24), rel=1e-9)
    assert pair["truth"] == 0.0 and 0.0 < pair["ensemble"] < 0.5
    assert "joint (u10, v10, tasmin, tasmax): energy score" in printed and "tasmin <= tasmax broken at" in printed
    assert "ws10 (derived from u10, v10)" in printed and "seam" not in printed  # not a global grid
    # the scores Dataset holds the same
    import diffscale

    scores = diffscale.evaluate(ensemble_path, truth=truth_path)
    assert float(scores["energy_score"].sel(prediction="ensemble")) == joint["ensemble"]
    assert float(scores["order_violation"].sel(pair="tasmin<=tasmax", prediction="ensemble")) == pair["ensemble"]
    assert str(scores["derived_from"].sel(variable="ws10").values) == "u10,v10"
    assert scores.attrs["energy_score_variables"] == "u10,v10,tasmin,tasmax"
    # the derived variable by name: scored from its sources, and drawn like any other
    speed = diffscale.evaluate(ensemble_path, truth=truth_path, variables=["ws10"])
    assert list(speed["variable"].values) == ["u10", "v10", "ws10"] and "order_violation" not in speed
    assert float(speed["rmse"].sel(variable="ws10", prediction="ensemble")) == ws10["ensemble"]["rmse"]
    from diffscale.runs import plots

    assert plots.maps(ensemble_path, truth_path, "ws10", time=0).axes
    # several variables: a figure shows the one named by variable=; leaving it out says so in one line
    calls = {
        "the scores": [
            lambda **kw: plots.rank_histogram(scores, **kw),
            lambda **kw: plots.spread_error(scores, **kw),
            lambda **kw: plots.spectra(scores, **kw),
        ],
        "the ensemble and truth": [
            lambda **kw: plots.maps(ensemble_path, truth_path, time=0, **kw),
            lambda **kw: plots.quantiles(ensemble_path, truth_path, **kw),
        ],
    }
    for held, draws in calls.items():
        for draw in draws:
            with pytest.raises(ConfigError) as caught:
                draw()
            assert str(caught.value) == (
                f"variable: {held} hold 5 variables (u10, v10, tasmin, tasmax, ws10) and a figure shows one; "
                "pass variable='u10' (or another of them)"
            )
            figure = draw(variable="tasmax")
            titles = [figure.get_suptitle(), *(axis.get_title() for axis in figure.axes)]
            assert figure.axes and any("tasmax" in title for title in titles), titles


def test_a_global_grid_reports_its_seam(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import diffscale

    latitude = np.linspace(-70.0, 70.0, 8)
    longitude = 15.0 * np.arange(24)  # 0 .. 345: global
    rng = np.random.default_rng(6)
    lon = np.deg2rad(longitude)
    truth = 280.0 + 5.0 * np.sin(lon + rng.uniform(0, 6, size=(TIMES.size, 1, 1))) + np.zeros((1, 8, 1))
    members = truth + rng.normal(scale=0.1, size=(MEMBERS, *truth.shape))
    coords = {"time": TIMES, "latitude": latitude, "longitude": longitude}
    ensembles = {}
    for label, drift in (("smooth", 0.0), ("seam", 2.0)):
        values = members + np.linspace(0.0, drift, 24)  # a drift west to east: a jump at the seam
        ensembles[label] = xr.Dataset(
            {"t2m": (("member", "time", "latitude", "longitude"), values, {"units": "K"})},
            coords={"member": np.arange(MEMBERS), **coords},
            attrs={"coarsening_factor": 4},
        )
    truth_ds = xr.Dataset({"t2m": (("time", "latitude", "longitude"), truth, {"units": "K"})}, coords=coords)
    smooth = diffscale.evaluate(ensembles["smooth"], truth_ds)
    seam = diffscale.evaluate(ensembles["seam"], truth_ds)
    assert 0.9 <= float(smooth["seam_ratio"].sel(variable="t2m")) <= 1.1
    assert float(seam["seam_ratio"].sel(variable="t2m")) > 1.5 and float(seam["seam_excess"].sel(variable="t2m")) > 1.5
    assert 0.9 <= float(smooth["seam_excess"].sel(variable="t2m")) <= 1.1
    # the baseline upsamples across the seam too (periodic): its seam is like the truth's
    assert float(smooth["seam_difference"].sel(variable="t2m", prediction="bilinear")) == pytest.approx(
        float(smooth["seam_difference_truth"].sel(variable="t2m")), rel=0.5
    )
    ensembles["seam"].to_netcdf(tmp_path / "ensemble.nc")
    truth_ds.to_netcdf(tmp_path / "truth.nc")
    argv = [str(tmp_path / "ensemble.nc"), "--truth", str(tmp_path / "truth.nc"), "--no-figures"]
    assert evaluate([*argv, "--out", str(tmp_path / "report")]) == 0
    assert "seam at the longitude wrap: truth " in capsys.readouterr().out
