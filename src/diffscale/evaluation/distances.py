"""Distances between samples and reference distributions (Wasserstein-1, exact up to quadrature).

In one dimension the Wasserstein-1 distance between distributions with cumulative distribution functions
F and G is the area between them (Vallender 1973),

    W1(F, G) = integral over x of |F(x) - G(x)| dx.

:func:`wasserstein1_to_cdf` compares the empirical cdf F_n of a sample with a reference cdf F given in
closed form (e.g. a Gaussian mixture's); :func:`wasserstein1` compares two samples exactly.
:func:`sliced_wasserstein1` averages the 1-D distance over random projections theta on the unit
sphere, SW1(P, Q) = E_theta[W1(theta^T P, theta^T Q)], for D-dimensional samples (e.g. the 2-D ring).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

__all__ = ["CDF", "component_weights", "gaussian_cdf", "sliced_wasserstein1", "wasserstein1", "wasserstein1_to_cdf"]

CDF = Callable[[torch.Tensor], Any]
"""A cumulative distribution function: float64 tensor of points in, values of the same shape out."""


def _as_1d(samples: Any, name: str) -> np.ndarray:
    """A finite 1-D float64 array from a tensor/array of shape (n,) or (n, 1)."""
    if isinstance(samples, torch.Tensor):
        samples = samples.detach().cpu().to(torch.float64).numpy()
    array = np.asarray(samples, dtype=np.float64)
    if array.ndim == 2 and array.shape[1] == 1:
        array = array[:, 0]
    if array.ndim != 1:
        raise ValueError(f"{name}: expected 1-D samples of shape (n,) or (n, 1), got shape {array.shape}")
    if array.size == 0:
        raise ValueError(f"{name}: no samples")
    if not np.isfinite(array).all():
        raise ValueError(f"{name}: samples must be finite")
    return array


def _as_2d(samples: Any, name: str) -> np.ndarray:
    """A finite (n, D) float64 array; 1-D input is read as (n, 1)."""
    if isinstance(samples, torch.Tensor):
        samples = samples.detach().cpu().to(torch.float64).numpy()
    array = np.asarray(samples, dtype=np.float64)
    if array.ndim == 1:
        array = array[:, None]
    if array.ndim != 2:
        raise ValueError(f"{name}: expected samples of shape (n, D), got shape {array.shape}")
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise ValueError(f"{name}: no samples (shape {array.shape})")
    if not np.isfinite(array).all():
        raise ValueError(f"{name}: samples must be finite")
    return array


def _evaluate_cdf(cdf: CDF, points: np.ndarray) -> np.ndarray:
    values = cdf(torch.from_numpy(points))
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().to(torch.float64).numpy()
    values = np.asarray(values, dtype=np.float64).reshape(points.shape)
    if not np.isfinite(values).all():
        raise ValueError("cdf returned non-finite values")
    return values


def wasserstein1_to_cdf(
    samples: Any,
    cdf: CDF,
    *,
    grid_points: int = 20_001,
    tail: float = 1e-12,
    max_widenings: int = 60,
) -> float:
    """W1(F_n, F) = integral |F_n(x) - F(x)| dx between the empirical cdf of ``samples`` and ``cdf``.

    The integral runs over an interval [a, b] that contains every sample and is widened until
    F(a) <= ``tail`` and 1 - F(b) <= ``tail``. The nodes are a uniform grid of ``grid_points`` on [a, b]
    merged with the samples themselves, so F_n is constant on every sub-interval and the only error is
    the trapezoidal rule's for the smooth F (O(h^2)) plus the tail mass outside [a, b].

    Args:
        samples: shape (n,) or (n, 1), tensor or array.
        cdf: F, called with a float64 tensor of points; returns values of the same shape (tensor or array).
        grid_points: uniform nodes on [a, b] (at least 2).
        tail: probability allowed outside [a, b] on each side.
        max_widenings: how often the interval may be doubled before giving up.

    Raises:
        ValueError: for empty, non-finite or multi-dimensional samples, or a cdf whose tails never reach
            ``tail`` (not a distribution function).
    """
    values = np.sort(_as_1d(samples, "samples"))
    if grid_points < 2:
        raise ValueError(f"grid_points = {grid_points}: must be >= 2")
    low, high = float(values[0]), float(values[-1])
    half_width = max(high - low, 1.0)
    for _ in range(max_widenings):
        edges = _evaluate_cdf(cdf, np.array([low, high]))
        if edges[0] <= tail and 1.0 - edges[1] <= tail:
            break
        if edges[0] > tail:
            low -= half_width
        if 1.0 - edges[1] > tail:
            high += half_width
        half_width *= 2.0
    else:
        raise ValueError(f"cdf does not reach {tail} / 1 - {tail} in its tails: not a distribution function?")
    nodes = np.union1d(np.linspace(low, high, grid_points), values)
    reference = _evaluate_cdf(cdf, nodes)
    # F_n on [nodes[j], nodes[j+1]) = #(samples <= nodes[j]) / n.
    empirical = np.searchsorted(values, nodes[:-1], side="right") / values.size
    widths = np.diff(nodes)
    area = 0.5 * widths * (np.abs(empirical - reference[:-1]) + np.abs(empirical - reference[1:]))
    return float(area.sum())


def wasserstein1(samples_a: Any, samples_b: Any) -> float:
    """W1 between the empirical distributions of two 1-D samples, exactly: the integral of |F_a - F_b|.

    Both cdfs are step functions, so the integral is a finite sum over the merged, sorted sample values.
    """
    a = np.sort(_as_1d(samples_a, "samples_a"))
    b = np.sort(_as_1d(samples_b, "samples_b"))
    return float(_wasserstein1_sorted(a[:, None], b[:, None])[0])


def _wasserstein1_sorted(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """W1 between sorted samples a (n, P) and b (m, P), column by column, as integral_0^1 |Q_a(u) - Q_b(u)| du.

    The quantile functions Q_a(u) = a[floor(u n)] and Q_b(u) = b[floor(u m)] are constant between the
    merged breakpoints {i / n} and {j / m}, so the integral is an exact finite sum.
    """
    n, m = a.shape[0], b.shape[0]
    breaks = np.union1d(np.arange(n + 1) / n, np.arange(m + 1) / m)
    middle = 0.5 * (breaks[:-1] + breaks[1:])
    index_a = np.minimum((middle * n).astype(np.int64), n - 1)
    index_b = np.minimum((middle * m).astype(np.int64), m - 1)
    return np.abs(a[index_a] - b[index_b]).T @ np.diff(breaks)


def sliced_wasserstein1(
    samples: Any,
    reference: Any,
    *,
    projections: int = 256,
    seed: int = 0,
) -> float:
    """Sliced Wasserstein-1: the mean over ``projections`` random unit vectors theta of W1(theta^T x, theta^T y).

    For D = 1 it is the exact W1 of :func:`wasserstein1`. The directions are drawn uniformly on the unit
    sphere from ``seed``, so repeated calls on the same data agree. SW1 is a metric, is invariant to a
    common translation and rotation of both samples, and scales linearly under a common scaling.

    Args:
        samples: shape (n, D).
        reference: shape (m, D), the same D.
        projections: number of directions theta (at least 1).
        seed: seed of the directions.
    """
    x = _as_2d(samples, "samples")
    y = _as_2d(reference, "reference")
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"samples have D = {x.shape[1]} but reference has D = {y.shape[1]}")
    if projections < 1:
        raise ValueError(f"projections = {projections}: must be >= 1")
    dims = x.shape[1]
    if dims == 1:
        return float(_wasserstein1_sorted(np.sort(x, axis=0), np.sort(y, axis=0))[0])
    rng = np.random.default_rng(seed)
    directions = rng.standard_normal((projections, dims))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    projected_x = np.sort(x @ directions.T, axis=0)
    projected_y = np.sort(y @ directions.T, axis=0)
    return float(_wasserstein1_sorted(projected_x, projected_y).mean())


def component_weights(samples: torch.Tensor, means: torch.Tensor, stds: torch.Tensor | None = None) -> torch.Tensor:
    """Fraction of ``samples`` assigned to each mixture component k, shape (K,).

    A sample is assigned to the component of largest log-likelihood -|x - mu_k|^2 / (2 s_k^2) - D ln s_k
    (with equal weights and stds: the nearest mean mu_k). Compared with the mixture weights w_k this
    checks that a sampler puts the right mass in each mode.

    Args:
        samples: shape (n, D).
        means: mu_k, shape (K, D).
        stds: s_k, shape (K, D); equal if omitted.
    """
    x = torch.as_tensor(samples, dtype=torch.float64)
    if x.ndim == 1:
        x = x[:, None]
    mu = torch.as_tensor(means, dtype=torch.float64)
    if x.ndim != 2 or x.shape[0] == 0 or mu.ndim != 2 or mu.shape[1] != x.shape[1]:
        raise ValueError(f"expected samples (n, D) and means (K, D); got {tuple(x.shape)} and {tuple(mu.shape)}")
    s = torch.ones_like(mu) if stds is None else torch.as_tensor(stds, dtype=torch.float64).expand_as(mu)
    score = -0.5 * ((x[:, None, :] - mu[None]) / s[None]).square().sum(-1) - s.log().sum(-1)[None]
    counts = torch.bincount(score.argmax(dim=1), minlength=mu.shape[0]).to(torch.float64)
    return counts / x.shape[0]


def gaussian_cdf(mean: float = 0.0, std: float = 1.0) -> CDF:
    """The cdf of N(mean, std^2), Phi((x - mean) / std), as a :data:`CDF` (for tests and references)."""
    if not std > 0:
        raise ValueError(f"std = {std}: must be > 0")

    def cdf(x: torch.Tensor) -> torch.Tensor:
        return 0.5 * (1.0 + torch.erf((x - mean) / (std * math.sqrt(2.0))))

    return cdf
