"""Image metrics on features against closed forms: Fréchet distance of Gaussians, the unbiased MMD's expectation
under the cubic kernel, manifold precision/recall on point sets whose k-NN balls are known, class accuracy."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from diffscale.evaluation.image_metrics import (
    class_accuracy,
    frechet_distance,
    frechet_distance_of_gaussians,
    gaussian_fit,
    kernel_distance,
    knn_radii,
    polynomial_kernel,
    precision_recall,
    unbiased_mmd2,
)
from diffscale.validation import ConfigError


def test_frechet_distance_of_commuting_gaussians_is_the_closed_form():
    """Diagonal covariances: FD = |mu_1 - mu_2|^2 + sum_i (sqrt(a_i) - sqrt(b_i))^2."""
    a, b = torch.tensor([1.0, 4.0, 0.25]), torch.tensor([9.0, 1.0, 0.0])
    mu_1, mu_2 = torch.tensor([0.0, 1.0, 2.0]), torch.tensor([1.0, -1.0, 2.0])
    expected = float((mu_1 - mu_2).square().sum() + (a.sqrt() - b.sqrt()).square().sum())
    assert frechet_distance_of_gaussians(mu_1, torch.diag(a), mu_2, torch.diag(b)) == pytest.approx(expected, rel=1e-12)


def test_frechet_distance_of_non_commuting_2x2_gaussians_is_the_closed_form():
    """For 2 x 2 matrices tr sqrt(S_1 S_2) = sqrt(tr(S_1 S_2) + 2 sqrt(det S_1 det S_2)) (the eigenvalues of
    S_1 S_2 are those of the PSD matrix S_1^{1/2} S_2 S_1^{1/2})."""
    s_1 = torch.tensor([[2.0, 0.9], [0.9, 1.0]], dtype=torch.float64)
    s_2 = torch.tensor([[0.5, -0.3], [-0.3, 3.0]], dtype=torch.float64)
    mu_1, mu_2 = torch.tensor([0.3, -0.2], dtype=torch.float64), torch.tensor([-1.0, 0.5], dtype=torch.float64)
    cross = math.sqrt(float(torch.trace(s_1 @ s_2)) + 2 * math.sqrt(float(torch.det(s_1) * torch.det(s_2))))
    expected = float((mu_1 - mu_2).square().sum() + torch.trace(s_1) + torch.trace(s_2)) - 2 * cross
    assert frechet_distance_of_gaussians(mu_1, s_1, mu_2, s_2) == pytest.approx(expected, rel=1e-12)
    # symmetric in its two arguments
    assert frechet_distance_of_gaussians(mu_2, s_2, mu_1, s_1) == pytest.approx(expected, rel=1e-12)


def test_frechet_distance_of_a_set_with_itself_is_zero_even_when_its_covariance_is_singular():
    generator = torch.Generator().manual_seed(0)
    full = (
        torch.randn(500, 8, generator=generator, dtype=torch.float64) @ torch.randn(8, 8, generator=generator).double()
    )
    assert frechet_distance(full, full) < 1e-9
    singular = torch.randn(5, 64, generator=generator, dtype=torch.float64)  # rank 4 < 64
    assert frechet_distance(singular, singular) < 1e-9
    assert frechet_distance(singular, singular + 1.0) == pytest.approx(64.0, rel=1e-9)  # a shift by 1 in 64 axes


def test_frechet_distance_of_samples_approaches_that_of_their_gaussians():
    generator = torch.Generator().manual_seed(1)
    n, d = 200_000, 3
    root_2 = torch.tensor([[1.0, 0.0, 0.0], [0.5, 1.5, 0.0], [0.0, -0.4, 0.7]], dtype=torch.float64)
    x = torch.randn(n, d, generator=generator, dtype=torch.float64)
    y = torch.randn(n, d, generator=generator, dtype=torch.float64) @ root_2.T + torch.tensor(
        [0.5, 0.0, -0.5], dtype=torch.float64
    )
    expected = frechet_distance_of_gaussians(
        torch.zeros(d), torch.eye(d), torch.tensor([0.5, 0.0, -0.5]), root_2 @ root_2.T
    )
    assert frechet_distance(x, y) == pytest.approx(expected, rel=0.02)
    fit = gaussian_fit(y)
    assert torch.allclose(fit.covariance, root_2 @ root_2.T, atol=0.02)


def test_unbiased_mmd_matches_its_definition_term_by_term():
    generator = torch.Generator().manual_seed(2)
    x = torch.randn(5, 3, generator=generator, dtype=torch.float64)
    y = torch.randn(4, 3, generator=generator, dtype=torch.float64) + 0.3

    def k(a, b):
        return (float(a @ b) / 3 + 1) ** 3

    within_x = sum(k(x[i], x[j]) for i in range(5) for j in range(5) if i != j) / 20
    within_y = sum(k(y[i], y[j]) for i in range(4) for j in range(4) if i != j) / 12
    across = sum(k(x[i], y[j]) for i in range(5) for j in range(4)) / 20
    assert unbiased_mmd2(x, y) == pytest.approx(within_x + within_y - 2 * across, rel=1e-12)
    assert polynomial_kernel(x, y).shape == (5, 4)


def test_unbiased_mmd_of_point_masses_is_exact():
    """All rows equal a (resp. b): MMD_u^2 = k(a, a) + k(b, b) - 2 k(a, b) with k(a, b) = (a.b / d + 1)^3."""
    a, b = torch.tensor([1.0, 2.0]), torch.tensor([-0.5, 0.5])
    expected = (5 / 2 + 1) ** 3 + (0.5 / 2 + 1) ** 3 - 2 * (0.5 / 2 + 1) ** 3
    assert unbiased_mmd2(a.expand(6, 2), b.expand(3, 2)) == pytest.approx(expected, rel=1e-12)


def _mmd_replications(shift: float, replications: int, size: int) -> np.ndarray:
    generator = torch.Generator().manual_seed(3)
    values = []
    for _ in range(replications):
        x = torch.randn(size, 1, generator=generator, dtype=torch.float64)
        y = torch.randn(size, 1, generator=generator, dtype=torch.float64) + shift
        values.append(unbiased_mmd2(x, y))
    return np.asarray(values)


def test_unbiased_mmd_has_expectation_zero_for_one_distribution():
    """Independent replications with only 4 rows per set: the unbiased estimate averages to 0 (within 4 standard
    errors), where the biased V-statistic would average 2 (E k(x, x) - E k(x, x')) / m = 2 (28 - 4) / 4 = 12."""
    values = _mmd_replications(0.0, replications=3000, size=4)
    standard_error = values.std(ddof=1) / math.sqrt(values.size)
    assert abs(values.mean()) < 4 * standard_error
    assert standard_error < 0.5  # so a bias of the V-statistic's size would fail


def test_unbiased_mmd_has_the_closed_form_expectation_for_a_shift():
    """In 1-D, k(x, y) = sum_j C(3, j) x^j y^j, so MMD^2 = sum_{j=1..3} C(3, j) (E X^j - E Y^j)^2; for
    X ~ N(0, 1), Y ~ N(s, 1): E Y = s, E Y^2 = s^2 + 1, E Y^3 = s^3 + 3 s."""
    s = 0.5
    expected = 3 * s**2 + 3 * (s**2 + 1 - 1) ** 2 + (s**3 + 3 * s) ** 2
    values = _mmd_replications(s, replications=1500, size=8)
    standard_error = values.std(ddof=1) / math.sqrt(values.size)
    assert abs(values.mean() - expected) < 4 * standard_error
    assert standard_error < expected / 8  # so an estimate of 0 would fail


def test_kernel_distance_reports_the_mean_and_standard_error_of_its_subsets():
    generator = torch.Generator().manual_seed(4)
    x = torch.randn(300, 4, generator=generator, dtype=torch.float64)
    y = torch.randn(200, 4, generator=generator, dtype=torch.float64) + 1.0
    kid = kernel_distance(x, y, subsets=20, subset_size=500, generator=torch.Generator().manual_seed(5))
    assert kid.subset_size == 200 and kid.subsets == 20 and len(kid.estimates) == 20
    values = np.asarray(kid.estimates)
    assert kid.mean == pytest.approx(values.mean(), rel=1e-12)
    assert kid.standard_error == pytest.approx(values.std(ddof=1) / math.sqrt(20), rel=1e-12)
    again = kernel_distance(x, y, subsets=20, subset_size=500, generator=torch.Generator().manual_seed(5))
    assert again.estimates == kid.estimates
    # the whole sets as one subset: the plain unbiased estimate
    whole = kernel_distance(x[:200], y, subsets=1, subset_size=200)
    assert whole.mean == pytest.approx(unbiased_mmd2(x[:200], y), rel=1e-12)
    assert math.isnan(whole.standard_error)


REFERENCE = torch.arange(10, dtype=torch.float64)[:, None]  # 0, 1, ..., 9: every 1-NN radius is 1


def test_knn_radii_of_a_lattice():
    assert torch.equal(knn_radii(REFERENCE, k=1), torch.ones(10, dtype=torch.float64))
    assert torch.equal(knn_radii(REFERENCE, k=2), torch.tensor([2.0] + [1.0] * 8 + [2.0], dtype=torch.float64))


def test_precision_and_recall_of_constructed_point_sets():
    """Generated 0.5, 3.25, 3.45, 3.6 (1-NN radii 2.75, 0.2, 0.15, 0.15): all lie within 1 of a reference point
    (precision 1); their balls cover the reference points 0..3 only (recall 0.4). Adding 12.5 (3.5 from the
    nearest reference point; its radius 8.9 reaches 4..9) gives precision 4/5 and recall 1."""
    generated = torch.tensor([0.5, 3.25, 3.45, 3.6], dtype=torch.float64)[:, None]
    scores = precision_recall(REFERENCE, generated, k=1)
    assert (scores.precision, scores.recall, scores.k) == (1.0, 0.4, 1)
    with_outlier = torch.cat([generated, torch.tensor([[12.5]], dtype=torch.float64)])
    scores = precision_recall(REFERENCE, with_outlier, k=1, chunk=3)
    assert (scores.precision, scores.recall) == (0.8, 1.0)
    same = precision_recall(REFERENCE, REFERENCE.clone(), k=3)
    assert (same.precision, same.recall) == (1.0, 1.0)


def test_class_accuracy_per_requested_class():
    requested = [0, 0, 0, 0, 3, 3, 7, 7]
    predicted = [0, 0, 1, 0, 3, 2, 7, 7]
    overall, per_class = class_accuracy(predicted, requested)
    assert overall == pytest.approx(6 / 8)
    assert per_class == {0: 0.75, 3: 0.5, 7: 1.0}
    with pytest.raises(ConfigError, match="no image was asked for class 5"):
        class_accuracy(predicted, requested, classes=[0, 5])


def test_bad_features_fail_with_one_line():
    with pytest.raises(ConfigError, match="must be finite"):
        frechet_distance(torch.tensor([[0.0], [math.nan]]), torch.zeros(3, 1))
    with pytest.raises(ConfigError, match="must agree"):
        kernel_distance(torch.zeros(4, 2), torch.zeros(4, 3))
    with pytest.raises(ConfigError, match="more than k rows"):
        precision_recall(torch.zeros(3, 2), torch.zeros(5, 2), k=3)
