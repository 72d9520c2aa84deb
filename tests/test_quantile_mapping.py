"""Quantile mapping and quantile delta mapping (diffscale.data.climate.quantile_mapping) against closed forms: a
linear bias is undone exactly, a shifted (scaled) future keeps its shift (ratio) on the observed climatology, QM of
the climatology itself is the identity, and multiplicative adjustment keeps amounts >= 0 and zeros at zero."""

from __future__ import annotations

import numpy as np
import pytest

from diffscale.data.climate.quantile_mapping import (
    cdf_at,
    empirical_quantiles,
    quantile_at,
    quantile_delta_mapping,
    quantile_levels,
    quantile_mapping,
)

LEVELS = quantile_levels(51)


def temperatures(rng: np.random.Generator, times: int = 600) -> np.ndarray:
    """(T, 3, 4) skewed, cell-dependent temperatures in K."""
    centre = rng.uniform(270, 290, size=(3, 4))
    return centre + rng.gamma(2.0, 1.5, size=(times, 3, 4)) - 3.0


def precipitation(rng: np.random.Generator, times: int = 800, dry: float = 0.4) -> np.ndarray:
    """(T, 2, 3) amounts: zero with probability ``dry``, gamma-distributed otherwise."""
    wet = rng.random((times, 2, 3)) >= dry
    return np.where(wet, rng.gamma(0.7, 4.0, size=(times, 2, 3)), 0.0)


def biased(observed: np.ndarray, shift: float = 2.0, scale: float = 1.3) -> np.ndarray:
    """The observed values with ``scale`` times their deviations about each cell's mean, shifted by ``shift``."""
    mean = observed.mean(axis=0)
    return mean + scale * (observed - mean) + shift


def test_the_quantiles_are_the_type_7_sample_quantiles_with_minimum_and_maximum() -> None:
    values = np.array([[3.0], [1.0], [2.0], [10.0]])
    quantiles = empirical_quantiles(values, quantile_levels(3))
    np.testing.assert_array_equal(quantiles[:, 0], [1.0, 2.5, 10.0])  # x_(1), (x_(2) + x_(3)) / 2, x_(4)


def test_the_cdf_inverts_the_quantile_function_and_takes_the_middle_of_a_flat_part() -> None:
    levels = quantile_levels(5)  # 0, 0.25, 0.5, 0.75, 1
    quantiles = np.array([0.0, 0.0, 0.0, 0.25, 1.0])[:, None]
    x = np.array([-1.0, 0.0, 0.125, 0.25, 0.5, 1.0, 3.0])[:, None]
    expected = [0.0, 0.25, 0.625, 0.75, 0.75 + 0.25 / 3, 1.0, 1.0]  # 0 is reached on [0, 0.5]: its middle
    np.testing.assert_allclose(cdf_at(x, quantiles, levels)[:, 0], expected, rtol=0, atol=1e-15)
    tau = np.linspace(0, 1, 41)[:, None]
    increasing = np.array([-2.0, -1.0, 0.5, 0.6, 4.0])[:, None]
    np.testing.assert_allclose(cdf_at(quantile_at(tau, increasing, levels), increasing, levels), tau, atol=1e-12)


def test_qm_undoes_a_shift_and_a_scaling_of_the_variability_in_every_cell() -> None:
    """x_m = mean + 1.3 (x_o - mean) + 2 is increasing in x_o, so Q_m = mean + 1.3 (Q_o - mean) + 2 at every level
    and Q_o(F_m(x_m)) = x_o exactly (the map is linear between the knots)."""
    observed = temperatures(np.random.default_rng(0))
    model = biased(observed)
    adjusted = quantile_mapping(
        model, empirical_quantiles(model, LEVELS), empirical_quantiles(observed, LEVELS), LEVELS
    )
    np.testing.assert_allclose(adjusted, observed, rtol=0, atol=1e-9)
    assert np.abs(adjusted.mean(axis=0) - observed.mean(axis=0)).max() < 0.1
    assert np.abs(adjusted.std(axis=0) / observed.std(axis=0) - 1).max() < 0.05


def test_qm_of_the_climatology_itself_is_the_identity() -> None:
    observed = temperatures(np.random.default_rng(1))
    quantiles = empirical_quantiles(observed, LEVELS)
    np.testing.assert_allclose(quantile_mapping(observed, quantiles, quantiles, LEVELS), observed, atol=1e-9)
    # any value mapped between a distribution and itself, inside its range or beyond (a correction of 0 carried on)
    other = temperatures(np.random.default_rng(11), times=300)
    assert np.abs(quantile_mapping(other, quantiles, quantiles, LEVELS) - other).max() < 1e-9


def test_qm_carries_the_correction_of_the_nearest_end_beyond_the_reference_range() -> None:
    observed = temperatures(np.random.default_rng(2))
    model = observed + 1.0
    model_q, observed_q = empirical_quantiles(model, LEVELS), empirical_quantiles(observed, LEVELS)
    outside = np.stack([model_q[-1] + 5.0, model_q[0] - 5.0])
    np.testing.assert_allclose(quantile_mapping(outside, model_q, observed_q, LEVELS), outside - 1.0, atol=1e-9)
    scaled = quantile_mapping(2 * model_q[-1:], 2 * model_q, 3 * model_q, LEVELS, kind="multiplicative")
    np.testing.assert_allclose(scaled, 3 * model_q[-1:], rtol=1e-12)  # x Q_o(1) / Q_m(1) at x = Q_m(1)


@pytest.mark.parametrize("delta", [-1.5, 3.0])
def test_additive_qdm_keeps_a_shift_of_the_future_on_the_observed_climatology(delta: float) -> None:
    """Future = reference + delta (time by time): tau = F_p(x) is the reference's rank, Q_m(tau) = x - delta, so the
    adjusted future is Q_o(tau) + delta = the observed value at that rank + delta."""
    observed = temperatures(np.random.default_rng(3))
    reference = biased(observed)
    future = reference + delta
    adjusted = quantile_delta_mapping(
        future,
        empirical_quantiles(future, LEVELS),
        empirical_quantiles(reference, LEVELS),
        empirical_quantiles(observed, LEVELS),
        LEVELS,
    )
    np.testing.assert_allclose(adjusted, observed + delta, rtol=0, atol=1e-9)
    np.testing.assert_allclose(
        empirical_quantiles(adjusted, LEVELS), empirical_quantiles(observed, LEVELS) + delta, rtol=0, atol=1e-9
    )


def test_additive_qdm_keeps_the_model_change_of_every_quantile() -> None:
    """A future whose upper half warms more than its lower half: Q_adj(p) - Q_o(p) = Q_p(p) - Q_m(p) at every p."""
    rng = np.random.default_rng(4)
    observed = temperatures(rng)
    reference = biased(observed, shift=-1.0, scale=0.8)
    future = temperatures(rng) + 2.0
    future = future + 0.5 * (future - np.median(future, axis=0))
    future_q, reference_q, observed_q = (empirical_quantiles(v, LEVELS) for v in (future, reference, observed))
    adjusted = quantile_delta_mapping(future, future_q, reference_q, observed_q, LEVELS)
    np.testing.assert_allclose(
        empirical_quantiles(adjusted, LEVELS) - observed_q, future_q - reference_q, rtol=0, atol=0.05
    )


def test_multiplicative_qdm_keeps_a_ratio_and_zeros_and_never_goes_negative() -> None:
    """Future = 1.25 x reference with reference = 1.4 x observed: adjusted = 1.25 x observed, zeros stay zero."""
    observed = precipitation(np.random.default_rng(5))
    reference = 1.4 * observed
    future = 1.25 * reference
    adjusted = quantile_delta_mapping(
        future,
        empirical_quantiles(future, LEVELS),
        empirical_quantiles(reference, LEVELS),
        empirical_quantiles(observed, LEVELS),
        LEVELS,
        kind="multiplicative",
    )
    np.testing.assert_allclose(adjusted, 1.25 * observed, rtol=1e-9, atol=1e-12)
    assert (adjusted[future == 0] == 0).all() and adjusted.min() >= 0


def test_multiplicative_adjustment_of_a_wetter_future_than_a_dry_reference_stays_non_negative() -> None:
    """A reference dry at ranks where the future is wet (Q_m(tau) = 0 < x: the ratio is undefined, the change is
    added), negative inputs of an accumulated field: every output >= 0, every zero stays zero."""
    rng = np.random.default_rng(6)
    observed = precipitation(rng, dry=0.3)
    reference = precipitation(rng, dry=0.8)
    future = precipitation(rng, dry=0.2) - 1e-9 * (rng.random((800, 2, 3)) < 0.05)
    future_q, reference_q, observed_q = (empirical_quantiles(v, LEVELS) for v in (future, reference, observed))
    for adjusted in (
        quantile_delta_mapping(future, future_q, reference_q, observed_q, LEVELS, kind="multiplicative"),
        quantile_mapping(future, reference_q, observed_q, LEVELS, kind="multiplicative"),
    ):
        assert np.isfinite(adjusted).all() and adjusted.min() >= 0
        assert (adjusted[future <= 0] == 0).all()
        assert (adjusted[future > 0] > 0).mean() > 0.9


def test_an_unknown_kind_is_refused() -> None:
    with pytest.raises(ValueError, match="allowed: additive, multiplicative"):
        quantile_mapping(np.zeros((2, 1)), np.zeros((51, 1)), np.zeros((51, 1)), LEVELS, kind="ratio")
