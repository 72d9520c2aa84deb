"""diffscale.data.climate.relations: ordered pairs (tasmin <= tasmax) and derived variables (10 m wind speed)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from diffscale.data.climate.relations import (
    derived_fields,
    derived_variables,
    order_violations,
    ordered_pairs,
    sort_ordered_pairs,
    wind_speed,
)


def test_wind_speed_is_the_norm_of_the_components() -> None:
    assert wind_speed(3.0, 4.0) == pytest.approx(5.0)
    u = torch.tensor([[3.0, -6.0], [0.0, 1e30]], dtype=torch.float64)
    v = torch.tensor([[-4.0, 8.0], [-2.0, 1e30]], dtype=torch.float64)
    torch.testing.assert_close(wind_speed(u, v), torch.tensor([[5.0, 10.0], [2.0, 1e30 * 2**0.5]], dtype=torch.float64))


def test_derived_variables_need_every_source_and_are_not_repeated() -> None:
    assert [item.name for item in derived_variables(["t2m", "u10", "v10"])] == ["ws10"]
    assert derived_variables(["t2m", "u10"]) == []
    assert derived_variables(["u10", "v10", "ws10"]) == []  # already there: not derived again
    rng = np.random.default_rng(0)
    members = {"u10": rng.normal(size=(3, 2, 4, 5)), "v10": rng.normal(size=(3, 2, 4, 5))}
    speed = derived_fields(members)["ws10"]
    np.testing.assert_allclose(speed, np.sqrt(members["u10"] ** 2 + members["v10"] ** 2))
    # each member's speed, not the speed of the mean wind (which is smaller: |mean V| <= mean |V|)
    assert np.all(np.hypot(members["u10"].mean(0), members["v10"].mean(0)) <= speed.mean(0) + 1e-12)


def test_ordered_pairs_are_those_present() -> None:
    assert ordered_pairs(["tasmax", "tp", "tasmin"]) == [("tasmin", "tasmax")]
    assert ordered_pairs(["tasmax", "tp"]) == []


def test_order_violations_are_the_weighted_share_of_broken_points() -> None:
    low = np.array([[0.0, 2.0, 1.0], [5.0, 0.0, 0.0]])
    high = np.array([[1.0, 1.0, 1.0], [4.0, 1.0, 1.0]])  # broken at (0, 1) and (1, 0); equal is not broken
    assert order_violations(low, high) == pytest.approx(2 / 6)
    weights = np.array([[1.0], [3.0]])  # rows weighted 1 and 3: (1 + 3) / (3 + 9)
    assert order_violations(low, high, weights) == pytest.approx(4 / 12)


def test_sorting_a_pair_restores_the_order_and_keeps_the_pair_s_values() -> None:
    rng = np.random.default_rng(1)
    variables = ["tasmax", "tp", "tasmin"]  # any channel order
    fields = torch.tensor(rng.normal(size=(2, 3, 3, 4, 5)))  # (M, T, C, H, W)
    fields[:, :, 0] += 1.0  # tasmax mostly above tasmin, broken at some points
    broken = fields[:, :, 2] > fields[:, :, 0]
    assert broken.any() and not broken.all()
    out = sort_ordered_pairs(fields, variables, dim=2)
    assert torch.all(out[:, :, 2] <= out[:, :, 0])
    assert torch.equal(out[:, :, 1], fields[:, :, 1])  # tp untouched
    kept = ~broken
    assert torch.equal(out[:, :, 0][kept], fields[:, :, 0][kept]) and torch.equal(
        out[:, :, 2][kept], fields[:, :, 2][kept]
    )
    assert torch.equal(out[:, :, 0][broken], fields[:, :, 2][broken])  # swapped where broken
    assert torch.equal(out[:, :, 2][broken], fields[:, :, 0][broken])
    assert torch.equal(sort_ordered_pairs(fields[:, :, :2], variables[:2], dim=2), fields[:, :, :2])  # no pair
