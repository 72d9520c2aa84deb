"""The shipped Fashion-MNIST classifier: read with safetensors only, its sha256 checked, small, and accurate on
the Fashion-MNIST test images (when Debian's dataset-fashion-mnist is installed)."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch

from diffscale.evaluation.image_classifier import (
    FASHION_MNIST_CLASSIFIER,
    FASHION_MNIST_CLASSIFIER_SHA256,
    FEATURE_DIM,
    SmallImageClassifier,
    as_uint8_images,
    classifier_features,
    images_to_unit_range,
    load_fashion_mnist_classifier,
)
from diffscale.training.checkpoint import CheckpointError
from diffscale.validation import ConfigError
from tests.conftest import NEEDS_FASHION_MNIST, fashion_mnist


def test_shipped_weights_are_small_and_match_their_hash():
    data = FASHION_MNIST_CLASSIFIER.read_bytes()
    assert len(data) < 1_000_000
    assert hashlib.sha256(data).hexdigest() == FASHION_MNIST_CLASSIFIER_SHA256
    model = load_fashion_mnist_classifier()
    assert not model.training
    assert sum(p.numel() for p in model.parameters()) < 100_000


def test_a_changed_byte_or_a_pickle_is_refused(tmp_path):
    data = bytearray(FASHION_MNIST_CLASSIFIER.read_bytes())
    data[-1] ^= 0xFF
    damaged = tmp_path / "damaged.safetensors"
    damaged.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="sha256"):
        load_fashion_mnist_classifier(damaged)
    pickled = tmp_path / "weights.pt"
    pickled.write_bytes(b"\x80\x04K\x01.")
    with pytest.raises(CheckpointError, match="never"):
        load_fashion_mnist_classifier(pickled, expected_sha256=None)


def test_weights_of_another_network_are_refused(tmp_path):
    from diffscale.training.checkpoint import write_safetensors

    path = tmp_path / "other.safetensors"
    write_safetensors(path, {"weight": torch.zeros(3)})
    with pytest.raises(ConfigError, match="not weights of the small image classifier"):
        load_fashion_mnist_classifier(path, expected_sha256=None)


def test_pixels_must_be_uint8_images():
    assert as_uint8_images(np.zeros((2, 28, 28), np.uint8)).shape == (2, 1, 28, 28)
    with pytest.raises(ConfigError, match="expected uint8 pixels"):
        as_uint8_images(np.zeros((2, 28, 28), np.float32))
    with pytest.raises(ConfigError, match="expected shape"):
        as_uint8_images(np.zeros((28, 28), np.uint8)[None, None, None])
    with pytest.raises(ConfigError, match="takes 1 x 28 x 28"):
        classifier_features(SmallImageClassifier().eval(), np.zeros((2, 32, 32), np.uint8))
    assert torch.equal(images_to_unit_range(torch.tensor([0, 255], dtype=torch.uint8)), torch.tensor([-1.0, 1.0]))


@NEEDS_FASHION_MNIST
def test_the_classifier_is_accurate_on_the_test_images():
    images, labels = fashion_mnist("test")
    model = load_fashion_mnist_classifier()
    features, logits = classifier_features(model, images[:2000])
    assert features.shape == (2000, FEATURE_DIM) and features.dtype == torch.float64
    assert bool((features >= 0).all())  # after a ReLU
    accuracy = float((logits.argmax(1).numpy() == labels[:2000]).mean())
    assert accuracy > 0.88
