"""diffscale.data.climate.transforms: per-variable standardisation, log1p and sqrt, fitted on training data."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from diffscale.data.climate.transforms import Transforms, fit_stats
from diffscale.validation import ConfigError


def test_fit_gives_the_mean_and_std_of_the_transformed_values() -> None:
    rng = np.random.default_rng(1)
    t2m = rng.normal(280.0, 5.0, size=(10, 4, 6))
    tp = rng.exponential(0.002, size=(10, 4, 6))
    stats = fit_stats({"t2m": t2m, "tp": tp, "u10": torch.tensor(t2m)}, {"tp": "log1p", "u10": "sqrt"})
    assert stats["t2m"] == {
        "transform": "standardize",
        "mean": pytest.approx(t2m.mean()),
        "std": pytest.approx(t2m.std()),
    }
    assert stats["tp"]["mean"] == pytest.approx(np.log1p(tp).mean())
    assert stats["tp"]["std"] == pytest.approx(np.log1p(tp).std())
    assert stats["u10"]["mean"] == pytest.approx(np.sqrt(t2m).mean())
    assert json.loads(json.dumps(stats)) == stats  # JSON-able as it is


@pytest.mark.parametrize("transform", ["standardize", "log1p", "sqrt"])
def test_round_trip_is_exact_to_float_precision(transform: str) -> None:
    rng = np.random.default_rng(2)
    values = rng.gamma(0.5, 3.0, size=(5, 3, 8, 8))
    transforms = Transforms.fit({"x": values}, {"x": transform})
    x = torch.tensor(values, dtype=torch.float32)
    z = transforms.forward(x, "x")
    assert z.dtype == torch.float32
    torch.testing.assert_close(transforms.inverse(z, "x"), x, rtol=2e-6, atol=1e-6)
    x64 = torch.tensor(values)
    torch.testing.assert_close(transforms.inverse(transforms.forward(x64, "x"), "x"), x64, rtol=1e-12, atol=1e-12)


def test_forward_is_the_closed_form() -> None:
    transforms = Transforms({"tp": {"transform": "log1p", "mean": 0.5, "std": 2.0}})
    x = torch.tensor([0.0, 1.0, np.e - 1.0], dtype=torch.float64)
    torch.testing.assert_close(transforms.forward(x, "tp"), (torch.log1p(x) - 0.5) / 2.0)
    sqrt = Transforms({"tp": {"transform": "sqrt", "mean": 1.0, "std": 0.5}})
    torch.testing.assert_close(sqrt.forward(torch.tensor([4.0]), "tp"), torch.tensor([2.0]))


def test_inverses_clip_to_the_physical_range() -> None:
    for transform in ("log1p", "sqrt"):
        transforms = Transforms({"tp": {"transform": transform, "mean": 0.0, "std": 1.0}})
        assert transforms.inverse(torch.tensor([-3.0]), "tp").item() == 0.0
        assert transforms.forward(torch.tensor([-1e-9]), "tp").item() == 0.0  # tiny negative accumulations


def test_channels_follow_the_variable_order() -> None:
    transforms = Transforms(
        {
            "a": {"transform": "standardize", "mean": 1.0, "std": 2.0},
            "b": {"transform": "standardize", "mean": -1.0, "std": 4.0},
        }
    )
    x = torch.ones(2, 2, 3, 3)
    z = transforms.forward_channels(x, ["a", "b"])
    torch.testing.assert_close(z[:, 0], torch.zeros(2, 3, 3))
    torch.testing.assert_close(z[:, 1], torch.full((2, 3, 3), 0.5))
    torch.testing.assert_close(transforms.inverse_channels(z, ["a", "b"]), x)


def test_constant_field_gets_unit_std_and_bad_input_is_refused() -> None:
    assert fit_stats({"lsm": np.zeros((3, 3))})["lsm"]["std"] == 1.0
    with pytest.raises(ConfigError, match="'t2m' has NaN"):
        fit_stats({"t2m": np.array([1.0, np.nan])})
    with pytest.raises(ConfigError, match="transform for 'tp' = 'log'"):
        fit_stats({"tp": np.ones(3)}, {"tp": "log"})
    with pytest.raises(ConfigError, match="statistics of 't2m'"):
        Transforms({"t2m": {"transform": "standardize", "mean": 0.0, "std": 0.0}})
    with pytest.raises(ConfigError, match="no statistics for 'tp'; the statistics cover: t2m"):
        Transforms({"t2m": {"transform": "standardize", "mean": 0.0, "std": 1.0}}).forward(torch.ones(1), "tp")


def test_units_recorded_in_the_statistics_are_kept() -> None:
    stats = {"t2m": {"transform": "standardize", "mean": 280.0, "std": 5.0, "units": "K"}}
    stats["tp"] = {"transform": "log1p", "mean": 0.001, "std": 0.002}
    transforms = Transforms(stats)
    assert transforms.units("t2m") == "K" and transforms.units("tp") is None
    assert transforms.to_dict() == stats
    assert Transforms({"tp": {**stats["tp"], "units": None}}).to_dict() == {"tp": stats["tp"]}


@pytest.mark.parametrize("transform", ["log1p", "sqrt"])
def test_a_scale_divides_the_field_before_the_transform(transform: str) -> None:
    # tp in metres with c = 0.001 m: the statistics and the maps are those of the field in millimetres
    rng = np.random.default_rng(3)
    metres = rng.exponential(0.002, size=(6, 4, 5))
    in_metres = Transforms.fit({"tp": metres}, {"tp": {"name": transform, "scale": 0.001}})
    in_millimetres = Transforms.fit({"tp": 1000.0 * metres}, {"tp": transform})
    g = np.log1p if transform == "log1p" else np.sqrt
    assert in_metres.stats["tp"]["mean"] == pytest.approx(g(1000.0 * metres).mean())
    assert in_metres.stats["tp"]["scale"] == 0.001 and "scale" not in in_millimetres.stats["tp"]
    x = torch.tensor(metres)
    z = in_metres.forward(x, "tp")
    torch.testing.assert_close(z, in_millimetres.forward(1000.0 * x, "tp"))
    torch.testing.assert_close(in_metres.inverse(z, "tp"), x, rtol=1e-12, atol=1e-15)
    assert Transforms(in_metres.to_dict()).stats == in_metres.stats  # the scale is saved with the run


def test_log1p_of_metres_is_nearly_the_identity_without_a_scale() -> None:
    # why the scale matters: hourly ERA5 precipitation is below 0.05 m, where log(1 + x) = x (1 - x / 2 + ...)
    x = torch.tensor([1e-5, 1e-3, 0.05], dtype=torch.float64)
    plain = Transforms({"tp": {"transform": "log1p", "mean": 0.0, "std": 1.0}}).forward(x, "tp")
    assert torch.all((plain / x - 1).abs() <= x / 2 + 1e-12)
    scaled = Transforms({"tp": {"transform": "log1p", "mean": 0.0, "std": 1.0, "scale": 0.001}}).forward(x, "tp")
    torch.testing.assert_close(scaled, torch.log1p(x / 0.001))


def test_a_bad_scale_is_refused() -> None:
    for scale in (0.0, -1.0, float("nan"), "big"):
        with pytest.raises(ConfigError, match="the scale must be a finite number > 0"):
            fit_stats({"tp": np.ones(3)}, {"tp": {"name": "log1p", "scale": scale}})
    with pytest.raises(ConfigError, match="the scale must be a finite number > 0"):
        Transforms({"tp": {"transform": "log1p", "mean": 0.0, "std": 1.0, "scale": -2.0}})
