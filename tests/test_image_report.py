"""Scores of generated images against reference images: real test images score as the data, damaged ones
worse; rows per guidance weight; the printed table and the sweep's figure."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from diffscale.evaluation.image_classifier import load_fashion_mnist_classifier
from diffscale.evaluation.image_metrics import frechet_distance
from diffscale.evaluation.image_report import image_reference, score_images
from diffscale.runs.image_evaluation import evaluate_image_samples
from diffscale.validation import ConfigError
from tests.conftest import NEEDS_FASHION_MNIST, fashion_mnist

pytestmark = NEEDS_FASHION_MNIST


@pytest.fixture(scope="module")
def data():
    images, labels = fashion_mnist("test")
    classifier = load_fashion_mnist_classifier()
    reference = image_reference(images[:3000], labels[:3000], classifier=classifier)
    return images, labels, classifier, reference


def test_held_out_test_images_score_as_the_data_and_noisy_ones_worse(data):
    images, labels, classifier, reference = data
    held_out, held_labels = images[3000:3600], labels[3000:3600]
    clean = score_images(held_out, held_labels, reference, classifier=classifier, kid_subsets=20, kid_subset_size=500)
    rng = np.random.default_rng(0)
    noisy_images = np.clip(held_out + rng.normal(0, 60, held_out.shape), 0, 255).astype(np.uint8)
    noisy = score_images(noisy_images, held_labels, reference, classifier=classifier, kid_subsets=20)
    assert clean.count == 600 and clean.reference_count == 3000
    assert abs(clean.kid.mean) < 4 * clean.kid.standard_error + 1e-4  # same distribution: KID ~ 0
    assert noisy.kid.mean > clean.kid.mean + 10 * noisy.kid.standard_error
    assert noisy.frechet_distance > 5 * clean.frechet_distance
    assert clean.precision > 0.6 and clean.recall > 0.6
    assert noisy.precision < clean.precision
    assert clean.accuracy > 0.85 and noisy.accuracy < clean.accuracy
    assert sorted(clean.class_accuracy) == list(range(10))


def test_the_reference_is_restricted_to_the_classes_asked_for(data):
    images, labels, classifier, reference = data
    trousers = images[3000:][labels[3000:] == 1][:100]
    scores = score_images(trousers, np.ones(100, np.int64), reference, classifier=classifier, kid_subsets=5)
    assert scores.reference_count == int((labels[:3000] == 1).sum())
    assert list(scores.class_accuracy) == [1] and scores.class_accuracy[1] == scores.accuracy > 0.9
    with pytest.raises(ConfigError, match="no image of class"):
        reference.of_classes([1, 11])


def test_one_row_per_guidance_weight_with_a_table_and_a_figure(data, tmp_path):
    images, labels, classifier, reference = data
    generated, asked = images[3000:3400], labels[3000:3400]
    weights = np.repeat([2.0, 0.0], 200)
    report = evaluate_image_samples(
        generated, asked, reference, guidance=weights, classifier=classifier, kid_subsets=5, class_names=None
    )
    assert [s.guidance for s in report.scores] == [0.0, 2.0]
    assert [s.count for s in report.scores] == [200, 200]
    lines = report.lines()
    assert lines[0].split()[:3] == ["guidance", "images", "FD"]
    assert lines[1].split()[0] == "0" and lines[2].split()[0] == "2"
    assert len(lines) == 3 + 1 + 1 + 10  # header, two rows, the per-class header lines, ten classes
    path = report.save_figure(tmp_path / "sweep.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ConfigError, match="guidance weights for"):
        evaluate_image_samples(generated, asked, reference, guidance=weights[:10], classifier=classifier)


def test_a_second_feature_space_adds_its_fd_and_kid(data):
    """An extra extractor (Inception in practice; here the mean and spread of the pixels) gives FD and KID in its
    own features, against the reference rows of the classes asked for."""
    images, labels, classifier, _ = data

    def pixel_moments(pixels):
        values = pixels.double().flatten(1)
        return torch.stack([values.mean(1), values.std(1)], dim=1)

    reference = image_reference(
        images[:3000], labels[:3000], classifier=classifier, extra=pixel_moments, extra_name="pixels"
    )
    asked = labels[3000:3300] % 2 == 0
    generated, generated_labels = images[3000:3300][asked], labels[3000:3300][asked]
    scores = score_images(generated, generated_labels, reference, classifier=classifier, extra=pixel_moments)
    keep = np.isin(labels[:3000], [0, 2, 4, 6, 8])
    expected = frechet_distance(pixel_moments(torch.from_numpy(generated)), reference.extra[torch.from_numpy(keep)])
    assert scores.extra_name == "pixels" and scores.extra_frechet_distance == pytest.approx(expected, rel=1e-12)
    assert scores.extra_kid is not None and scores.extra_kid.subset_size == int(asked.sum())
    assert (
        "FD pixels"
        in evaluate_image_samples(
            generated, generated_labels, reference, classifier=classifier, extra=pixel_moments, kid_subsets=3
        ).lines()[0]
    )
