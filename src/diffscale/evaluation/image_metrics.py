"""Distances between sets of image features: Fréchet distance, KID, manifold precision/recall, class accuracy.

Every metric here takes *features*, arrays of shape (n, d) (one row per image), so any feature extractor serves:
the shipped Fashion-MNIST classifier (:mod:`diffscale.evaluation.image_classifier`) or Inception-v3
(:mod:`diffscale.evaluation.inception`).

Fréchet distance (Heusel et al. 2017, "FID" when the features are Inception's). Fit Gaussians N(mu_1, S_1) and
N(mu_2, S_2) to the two feature sets; the squared 2-Wasserstein distance between them is (Dowson & Landau 1982)

    FD = |mu_1 - mu_2|^2 + tr(S_1 + S_2 - 2 (S_1^{1/2} S_2 S_1^{1/2})^{1/2}).

tr (S_1 S_2)^{1/2} equals tr (S_1^{1/2} S_2 S_1^{1/2})^{1/2}, and the latter is the square root of a symmetric
positive semi-definite matrix: both roots are taken by symmetric eigen-decomposition (eigenvalues clipped at 0),
so a singular covariance (fewer images than features) never produces complex numbers.

Kernel Inception distance (Bińkowski et al. 2018). With the cubic polynomial kernel k(x, y) = (x.y / d + 1)^3, the
unbiased estimate of the squared maximum mean discrepancy between samples x_1..x_m and y_1..y_n is

    MMD_u^2 = 1/(m(m-1)) sum_{i!=j} k(x_i, x_j) + 1/(n(n-1)) sum_{i!=j} k(y_i, y_j) - 2/(mn) sum_{i,j} k(x_i, y_j),

whose expectation is MMD^2 = E k(x, x') + E k(y, y') - 2 E k(x, y) exactly (0 when both samples come from one
distribution; it can be negative). KID averages it over random subsets of both sets and reports the mean and its
standard error (standard deviation of the subset estimates / sqrt(number of subsets); the subsets overlap when
they are large compared with the sets, and then this understates the error).

Precision and recall (Kynkäänniemi et al. 2019). The k-NN radius r_k(a) of a point a of a set A is its distance
to its k-th nearest neighbour in A (itself excluded); the manifold of A is the union of the balls B(a, r_k(a)).
Precision is the fraction of generated features inside the manifold of the reference set, recall the fraction of
reference features inside the manifold of the generated set.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from diffscale.validation import ConfigError

__all__ = [
    "GaussianFit",
    "KernelDistance",
    "PrecisionRecall",
    "class_accuracy",
    "frechet_distance",
    "frechet_distance_of_gaussians",
    "gaussian_fit",
    "kernel_distance",
    "knn_radii",
    "polynomial_kernel",
    "precision_recall",
    "unbiased_mmd2",
]


def _features(values: Any, name: str) -> torch.Tensor:
    """A finite float64 CPU tensor of shape (n, d) with n >= 1."""
    if isinstance(values, np.ndarray):
        values = torch.from_numpy(np.asarray(values, dtype=np.float64))
    if not isinstance(values, torch.Tensor):
        raise ConfigError(f"{name}: expected an array of features of shape (n, d), got {type(values).__name__}")
    values = values.detach().to("cpu", torch.float64)
    if values.ndim != 2 or values.shape[0] == 0 or values.shape[1] == 0:
        raise ConfigError(f"{name}: expected features of shape (n, d) with n, d >= 1, got {tuple(values.shape)}")
    if not bool(torch.isfinite(values).all()):
        raise ConfigError(f"{name}: features must be finite")
    return values


def _same_dimension(a: torch.Tensor, b: torch.Tensor, names: tuple[str, str]) -> None:
    if a.shape[1] != b.shape[1]:
        raise ConfigError(f"{names[0]} has {a.shape[1]} features per row, {names[1]} {b.shape[1]}: they must agree")


@dataclass(frozen=True)
class GaussianFit:
    """Mean mu (d,) and covariance S (d, d) (unbiased, divisor n - 1) of a feature set of n rows."""

    mean: torch.Tensor
    covariance: torch.Tensor
    count: int


def gaussian_fit(features: Any, name: str = "features") -> GaussianFit:
    """mu = mean of the rows, S = sum (x_i - mu)(x_i - mu)^T / (n - 1) (needs n >= 2)."""
    x = _features(features, name)
    if x.shape[0] < 2:
        raise ConfigError(f"{name}: a covariance needs at least 2 rows, got {x.shape[0]}")
    mean = x.mean(0)
    centred = x - mean
    return GaussianFit(mean, centred.T @ centred / (x.shape[0] - 1), x.shape[0])


def _psd_eigenvalues(eigenvalues: torch.Tensor) -> torch.Tensor:
    """Eigenvalues of a symmetric PSD matrix with rounding noise removed: those below d * eps * max |lambda|
    (negative ones included) are 0, so that the square root of a singular matrix does not grow sqrt(eps) terms."""
    tolerance = eigenvalues.shape[0] * torch.finfo(eigenvalues.dtype).eps * eigenvalues.abs().max().clamp_min(1e-300)
    return torch.where(eigenvalues > tolerance, eigenvalues, torch.zeros_like(eigenvalues))


def _psd_sqrt(matrix: torch.Tensor) -> torch.Tensor:
    """The symmetric square root V diag(sqrt(lambda)) V^T of a symmetric PSD matrix (noise eigenvalues 0)."""
    eigenvalues, vectors = torch.linalg.eigh((matrix + matrix.T) / 2)
    return (vectors * _psd_eigenvalues(eigenvalues).sqrt()) @ vectors.T


def frechet_distance_of_gaussians(mean_1: Any, covariance_1: Any, mean_2: Any, covariance_2: Any) -> float:
    """|mu_1 - mu_2|^2 + tr S_1 + tr S_2 - 2 tr (S_1^{1/2} S_2 S_1^{1/2})^{1/2} (the squared W2 distance)."""
    mu_1 = torch.as_tensor(mean_1, dtype=torch.float64).reshape(-1)
    mu_2 = torch.as_tensor(mean_2, dtype=torch.float64).reshape(-1)
    s_1 = torch.as_tensor(covariance_1, dtype=torch.float64)
    s_2 = torch.as_tensor(covariance_2, dtype=torch.float64)
    d = mu_1.shape[0]
    if mu_2.shape[0] != d or s_1.shape != (d, d) or s_2.shape != (d, d):
        raise ConfigError(
            f"Fréchet distance: means of sizes {mu_1.shape[0]}, {mu_2.shape[0]} and covariances of shapes "
            f"{tuple(s_1.shape)}, {tuple(s_2.shape)} do not agree"
        )
    root_1 = _psd_sqrt(s_1)
    product = root_1 @ s_2 @ root_1
    cross_trace = _psd_eigenvalues(torch.linalg.eigvalsh((product + product.T) / 2)).sqrt().sum()
    distance = (mu_1 - mu_2).square().sum() + torch.trace(s_1) + torch.trace(s_2) - 2 * cross_trace
    return max(float(distance), 0.0)


def frechet_distance(features_1: Any, features_2: Any) -> float:
    """FD between Gaussian fits of two feature sets of shape (n_1, d) and (n_2, d)."""
    fit_1 = gaussian_fit(features_1, "first feature set")
    fit_2 = gaussian_fit(features_2, "second feature set")
    if fit_1.mean.shape != fit_2.mean.shape:
        raise ConfigError(
            f"first feature set has {fit_1.mean.shape[0]} features per row, second {fit_2.mean.shape[0]}: "
            "they must agree"
        )
    return frechet_distance_of_gaussians(fit_1.mean, fit_1.covariance, fit_2.mean, fit_2.covariance)


def polynomial_kernel(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """K_ij = (x_i . y_j / d + 1)^3 for x of shape (m, d) and y of shape (n, d)."""
    return (x @ y.T / x.shape[1] + 1.0) ** 3


def unbiased_mmd2(x: Any, y: Any) -> float:
    """MMD_u^2 of the module docstring between feature sets x (m, d) and y (n, d), m, n >= 2."""
    x = _features(x, "first feature set")
    y = _features(y, "second feature set")
    _same_dimension(x, y, ("first feature set", "second feature set"))
    m, n = x.shape[0], y.shape[0]
    if m < 2 or n < 2:
        raise ConfigError(f"the unbiased MMD needs at least 2 rows in each set, got {m} and {n}")
    k_xx = polynomial_kernel(x, x)
    k_yy = polynomial_kernel(y, y)
    k_xy = polynomial_kernel(x, y)
    within_x = (k_xx.sum() - k_xx.diagonal().sum()) / (m * (m - 1))
    within_y = (k_yy.sum() - k_yy.diagonal().sum()) / (n * (n - 1))
    return float(within_x + within_y - 2 * k_xy.mean())


@dataclass(frozen=True)
class KernelDistance:
    """KID: the mean of the unbiased MMD^2 over ``subsets`` random subsets of ``subset_size`` rows, its standard
    error, and the subset estimates themselves."""

    mean: float
    standard_error: float
    subsets: int
    subset_size: int
    estimates: tuple[float, ...]


def kernel_distance(
    features_1: Any,
    features_2: Any,
    *,
    subsets: int = 100,
    subset_size: int = 1000,
    generator: torch.Generator | None = None,
) -> KernelDistance:
    """KID between two feature sets: MMD_u^2 on ``subsets`` pairs of random subsets, drawn without replacement
    within each subset, of min(``subset_size``, n_1, n_2) rows each.

    Args:
        features_1, features_2: arrays of shape (n_1, d) and (n_2, d).
        subsets: number of subset pairs (>= 1; the standard error needs >= 2).
        subset_size: rows per subset (>= 2); capped at the smaller set.
        generator: the random source of the subsets (seed it for a reproducible figure).
    """
    x = _features(features_1, "first feature set")
    y = _features(features_2, "second feature set")
    _same_dimension(x, y, ("first feature set", "second feature set"))
    if subsets < 1:
        raise ConfigError(f"KID subsets = {subsets}: must be at least 1")
    size = min(subset_size, x.shape[0], y.shape[0])
    if size < 2:
        raise ConfigError(f"KID subset size {size}: needs at least 2 rows in each feature set and subset_size >= 2")
    estimates = []
    for _ in range(subsets):
        pick_x = torch.randperm(x.shape[0], generator=generator)[:size]
        pick_y = torch.randperm(y.shape[0], generator=generator)[:size]
        estimates.append(unbiased_mmd2(x[pick_x], y[pick_y]))
    values = np.asarray(estimates)
    error = float(values.std(ddof=1) / math.sqrt(subsets)) if subsets > 1 else math.nan
    return KernelDistance(float(values.mean()), error, subsets, size, tuple(estimates))


def _pairwise_distances(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Euclidean distances |a_i - b_j| (float64; through |a|^2 + |b|^2 - 2 a.b for large sets)."""
    return torch.cdist(a, b)


def knn_radii(features: Any, k: int = 3, *, chunk: int = 1024, name: str = "features") -> torch.Tensor:
    """r_k(a_i): the distance from each row to its k-th nearest other row (shape (n,); needs n > k)."""
    a = _features(features, name)
    if k < 1 or a.shape[0] <= k:
        raise ConfigError(f"{name}: the k-NN radius with k = {k} needs k >= 1 and more than k rows, got {a.shape[0]}")
    radii = []
    for start in range(0, a.shape[0], chunk):
        distances = _pairwise_distances(a[start : start + chunk], a)
        # the k+1 smallest include the point itself (distance 0); duplicates of a point count as neighbours
        radii.append(distances.topk(k + 1, dim=1, largest=False).values[:, k])
    return torch.cat(radii)


def _coverage(points: torch.Tensor, centres: torch.Tensor, radii: torch.Tensor, chunk: int) -> float:
    """Fraction of ``points`` inside the union of the balls B(centre_j, radius_j)."""
    inside = 0
    for start in range(0, points.shape[0], chunk):
        distances = _pairwise_distances(points[start : start + chunk], centres)
        inside += int((distances <= radii[None, :]).any(dim=1).sum())
    return inside / points.shape[0]


@dataclass(frozen=True)
class PrecisionRecall:
    """Manifold precision (generated inside the reference's manifold) and recall (reference inside the
    generated manifold), with the k of the k-NN radii."""

    precision: float
    recall: float
    k: int


def precision_recall(reference: Any, generated: Any, *, k: int = 3, chunk: int = 1024) -> PrecisionRecall:
    """Kynkäänniemi et al.'s precision and recall of ``generated`` features against ``reference`` features."""
    ref = _features(reference, "reference features")
    gen = _features(generated, "generated features")
    _same_dimension(ref, gen, ("reference features", "generated features"))
    precision = _coverage(gen, ref, knn_radii(ref, k, chunk=chunk, name="reference features"), chunk)
    recall = _coverage(ref, gen, knn_radii(gen, k, chunk=chunk, name="generated features"), chunk)
    return PrecisionRecall(precision, recall, k)


def class_accuracy(
    predicted: Any, requested: Any, classes: Sequence[int] | None = None
) -> tuple[float, dict[int, float]]:
    """(overall accuracy, {class: accuracy}) of predicted labels against the requested (conditioning) labels.

    The accuracy of class c is the fraction of the images asked for c that the classifier labels c; the overall
    one is the fraction of all images labelled as asked. ``classes`` (default: those requested) lists the classes
    to report; a listed class with no image is an error.
    """
    predicted = torch.as_tensor(np.asarray(predicted)).reshape(-1).long()
    requested = torch.as_tensor(np.asarray(requested)).reshape(-1).long()
    if predicted.shape != requested.shape or predicted.numel() == 0:
        raise ConfigError(
            f"class accuracy: {predicted.numel()} predicted and {requested.numel()} requested labels (need the same "
            "number, at least one)"
        )
    wanted = sorted({int(c) for c in requested.tolist()}) if classes is None else [int(c) for c in classes]
    per_class = {}
    for c in wanted:
        asked = requested == c
        if not bool(asked.any()):
            raise ConfigError(f"class accuracy: no image was asked for class {c}")
        per_class[c] = float((predicted[asked] == c).double().mean())
    return float((predicted == requested).double().mean()), per_class
