"""The training input range and the per-time extrapolation measure (diffscale.data.climate.extrapolation), against
values computed by hand: block means, per-cell minima and maxima, area-weighted shares and distances."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from diffscale.data.climate.extrapolation import (
    EXTRAPOLATION_SUFFIXES,
    InputRange,
    block_view,
    extrapolation_variables,
    extrapolation_warning,
    fit_input_range,
)
from diffscale.validation import ConfigError

FACTOR = 2
LATITUDE = np.array([0.0, 0.0, 60.0, 60.0])  # two coarse rows: weights cos 0 = 1 and cos 60 = 1/2
LONGITUDE = np.array([10.0, 10.25, 10.5, 10.75, 11.0, 11.25])
TIMES = np.arange("2020-01-01T00", "2020-01-01T05", dtype="datetime64[h]")


def upsampled_like(coarse: np.ndarray) -> torch.Tensor:
    """A fine (T, C, 2h, 2w) field whose 2 x 2 blocks average to ``coarse`` (T, C, h, w) but vary inside."""
    fine = np.repeat(np.repeat(coarse, FACTOR, axis=-2), FACTOR, axis=-1)
    wiggle = np.tile(np.array([[0.3, -0.3], [-0.1, 0.1]]), (coarse.shape[-2], coarse.shape[-1]))
    return torch.tensor(fine + wiggle)


def fitted(coarse: np.ndarray, chunk: int = 64) -> InputRange:
    cond = upsampled_like(coarse)
    extra = torch.zeros(cond.shape[0], 2, *cond.shape[-2:])  # statics and the like follow the variables
    return fit_input_range(
        lambda indices: torch.cat([cond[indices], extra[indices]], dim=1),
        cond.shape[0],
        ["t2m"],
        FACTOR,
        LATITUDE,
        LONGITUDE,
        chunk=chunk,
    )


def test_block_view_is_the_mean_of_each_block() -> None:
    fields = torch.arange(2 * 1 * 4 * 6, dtype=torch.float32).reshape(2, 1, 4, 6)
    view = block_view(fields, 2)
    assert view.shape == (2, 1, 2, 3) and view.dtype == torch.float64
    assert view[1, 0, 1, 2].item() == fields[1, 0, 2:4, 4:6].double().mean().item()
    with pytest.raises(ValueError, match="not a multiple"):
        block_view(torch.zeros(1, 1, 5, 6), 2)


def test_the_range_is_the_per_cell_minimum_and_maximum_over_times_in_any_chunking() -> None:
    coarse = np.random.default_rng(0).normal(size=(7, 1, 2, 3))
    whole, chunked = fitted(coarse), fitted(coarse, chunk=2)
    np.testing.assert_allclose(whole.minimum, coarse.min(axis=0), atol=1e-12)
    np.testing.assert_allclose(whole.maximum, coarse.max(axis=0), atol=1e-12)
    assert np.array_equal(whole.minimum, chunked.minimum) and np.array_equal(whole.maximum, chunked.maximum)
    assert whole.times == 7 and whole.variables == ("t2m",)


def test_training_inputs_are_in_range_and_a_shift_beyond_every_cell_is_measured_exactly() -> None:
    coarse = np.random.default_rng(1).normal(size=(6, 1, 2, 3))
    record = fitted(coarse)
    inside = record.measure(upsampled_like(coarse), LATITUDE, LONGITUDE)["t2m"]
    assert inside["comparison"] == "per cell"
    assert np.all(inside["outside_fraction"] == 0) and np.all(inside["excess"] == 0)
    # every cell shifted delta above its own maximum: all the area outside, excess delta
    delta = 0.7
    shifted = np.broadcast_to(coarse.max(axis=0) + delta, (5, 1, 2, 3))
    measured = record.measure(upsampled_like(shifted), LATITUDE, LONGITUDE)["t2m"]
    np.testing.assert_allclose(measured["outside_fraction"], 1.0)
    np.testing.assert_allclose(measured["excess"], delta, rtol=1e-12)
    # only the southern coarse row (latitude 0, weight 1; the other row weighs 1/2) below its minimum by 2 delta
    low = np.broadcast_to(coarse.mean(axis=0), (5, 1, 2, 3)).copy()
    low[:, :, 0] = coarse.min(axis=0)[:, 0] - 2 * delta
    measured = record.measure(upsampled_like(low), LATITUDE, LONGITUDE)["t2m"]
    np.testing.assert_allclose(measured["outside_fraction"], 1.0 / 1.5)
    np.testing.assert_allclose(measured["excess"], 2 * delta / 1.5, rtol=1e-12)


def test_float32_rounding_of_an_input_in_range_is_not_flagged() -> None:
    coarse = np.random.default_rng(2).normal(size=(4, 1, 2, 3))
    record = fitted(coarse)
    rounded = upsampled_like(coarse).float()  # what a file written in float32 gives back
    measured = record.measure(rounded, LATITUDE, LONGITUDE)["t2m"]
    assert np.all(measured["outside_fraction"] == 0)


def test_another_grid_is_compared_with_the_domain_wide_range() -> None:
    coarse = np.zeros((3, 1, 2, 3))
    coarse[:, 0, 0, 0] = [1.0, 2.0, 3.0]  # the widest cell: the domain-wide range is [0, 3]
    record = fitted(coarse)
    values = np.full((2, 1, 2, 3), 2.5)
    values[1, 0, 1, :] = 4.0  # the second time: its northern row 1 beyond the domain's maximum
    measured = record.measure(upsampled_like(values), LATITUDE, LONGITUDE + 5.0)["t2m"]
    assert measured["comparison"] == "domain-wide"
    np.testing.assert_allclose(measured["outside_fraction"], [0.0, 0.5 / 1.5])
    np.testing.assert_allclose(measured["excess"], [0.0, 1.0 * 0.5 / 1.5], rtol=1e-12)
    # on the training grid, 2.5 lies outside every cell's own range but the first
    same = record.measure(upsampled_like(values), LATITUDE, LONGITUDE)["t2m"]
    assert same["outside_fraction"][0] == pytest.approx(1 - 1 / 3 / 1.5)


def test_the_record_round_trips_through_json_values_and_refuses_damage() -> None:
    record = fitted(np.random.default_rng(3).normal(size=(5, 1, 2, 3)))
    back = InputRange.from_dict(record.to_dict())
    assert np.array_equal(back.minimum, record.minimum) and np.array_equal(back.maximum, record.maximum)
    assert back.variables == record.variables and back.factor == FACTOR and back.times == 5
    damaged = record.to_dict()
    damaged["minimum"] = damaged["minimum"][0][:1]
    with pytest.raises(ConfigError, match="do not fit"):
        InputRange.from_dict(damaged)
    with pytest.raises(ConfigError, match="unreadable"):
        InputRange.from_dict({"variables": ["t2m"]})


def test_ensemble_variables_and_the_warning() -> None:
    coarse = np.random.default_rng(4).normal(size=(5, 1, 2, 3))
    record = fitted(coarse)
    shifted = coarse + 8.0  # far beyond any cell's range
    measured = record.measure(upsampled_like(shifted), LATITUDE, LONGITUDE)
    variables = extrapolation_variables(measured)
    assert set(variables) == {f"t2m{suffix}" for suffix in EXTRAPOLATION_SUFFIXES}
    fraction, attributes = variables["t2m_outside_training_range"]
    assert fraction.dtype == np.float32 and np.all(fraction == 1)
    assert attributes["units"] == "1" and "per cell" in attributes["comment"]
    line = extrapolation_warning(measured, TIMES)
    assert line is not None and "\n" not in line and "t2m at 5 of 5 times" in line
    inside = record.measure(upsampled_like(coarse), LATITUDE, LONGITUDE)
    assert extrapolation_warning(inside, TIMES) is None
