"""A small convolutional classifier of 28 x 28 grey images, and the features it gives for image metrics.

Fréchet distance, KID and precision/recall compare distributions of *features*: the penultimate layer of a
classifier trained on the data (Heusel et al. 2017 use Inception-v3's pool layer for natural images; for
Fashion-MNIST a classifier trained on Fashion-MNIST itself sees the differences that matter). The package ships
one, trained once by ``benchmarks/train_fashion_mnist_classifier.py`` (fixed seed) and stored as safetensors:

    x in [-1, 1]^{1x28x28} -> [conv3x3 -> BN -> ReLU] x 2 (16 ch) -> maxpool 2
                          -> [conv3x3 -> BN -> ReLU] x 2 (32 ch) -> maxpool 2
                          -> conv3x3 -> BN -> ReLU (64 ch) -> global mean pool
                          -> linear 64 -> 128 -> ReLU            = the features phi(x) in R^128
                          -> linear 128 -> 10                    = the class logits

:func:`load_fashion_mnist_classifier` reads the shipped weights with safetensors only and checks their sha256.
Images enter as ``uint8`` (0 = black, 255 = white), shape ``(N, 28, 28)`` or ``(N, 1, 28, 28)``, as the
Fashion-MNIST files store them; :func:`images_to_unit_range` maps them to [-1, 1].
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from diffscale.training.checkpoint import read_safetensors
from diffscale.validation import ConfigError

__all__ = [
    "FASHION_MNIST_CLASSIFIER",
    "FASHION_MNIST_CLASSIFIER_SHA256",
    "FEATURE_DIM",
    "SmallImageClassifier",
    "as_uint8_images",
    "classifier_features",
    "images_to_unit_range",
    "load_fashion_mnist_classifier",
]

FASHION_MNIST_CLASSIFIER = Path(__file__).with_name("weights") / "fashion_mnist_classifier.safetensors"
"""The shipped weights of :class:`SmallImageClassifier` trained on the Fashion-MNIST training images."""

FASHION_MNIST_CLASSIFIER_SHA256 = "af5f919b896cd859b7b0bb71cb30e6cda16dc5d283ce2363fe7caff9db54cb47"
"""The sha256 of :data:`FASHION_MNIST_CLASSIFIER`, checked before the file is parsed."""

FEATURE_DIM = 128
"""Dimension of the penultimate-layer features."""


def _conv_block(channels_in: int, channels_out: int) -> list[nn.Module]:
    return [
        nn.Conv2d(channels_in, channels_out, 3, padding=1, bias=False),
        nn.BatchNorm2d(channels_out),
        nn.ReLU(inplace=True),
    ]


class SmallImageClassifier(nn.Module):
    """The classifier above: ``forward(x)`` gives logits, :meth:`features` the penultimate layer phi(x).

    Args:
        channels: input channels (1 for grey images).
        num_classes: number of classes.
    """

    def __init__(self, channels: int = 1, num_classes: int = 10) -> None:
        super().__init__()
        self.body = nn.Sequential(
            *_conv_block(channels, 16),
            *_conv_block(16, 16),
            nn.MaxPool2d(2),
            *_conv_block(16, 32),
            *_conv_block(32, 32),
            nn.MaxPool2d(2),
            *_conv_block(32, 64),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(64, FEATURE_DIM),
            nn.ReLU(inplace=True),
        )
        self.head = nn.Linear(FEATURE_DIM, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """phi(x): the penultimate layer, shape (N, 128), for x in [-1, 1] of shape (N, C, 28, 28)."""
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits, shape (N, num_classes)."""
        return self.head(self.body(x))


def as_uint8_images(images: Any, name: str = "images") -> torch.Tensor:
    """``images`` as a uint8 tensor of shape (N, C, H, W); (N, H, W) gains C = 1.

    Raises:
        ConfigError: not uint8 (floats are ambiguous between [0, 1], [-1, 1] and [0, 255]: convert them first),
            a wrong number of dimensions, or no images.
    """
    if isinstance(images, np.ndarray):
        images = torch.from_numpy(np.array(images, copy=True))  # a private, writable copy
    if not isinstance(images, torch.Tensor):
        raise ConfigError(f"{name}: expected a uint8 array or tensor, got {type(images).__name__}")
    if images.dtype != torch.uint8:
        raise ConfigError(
            f"{name}: expected uint8 pixels 0..255, got {images.dtype} (map floats in [-1, 1] with "
            "((x + 1) * 127.5).round().clamp(0, 255).to(torch.uint8))"
        )
    if images.ndim == 3:
        images = images[:, None]
    if images.ndim != 4:
        raise ConfigError(f"{name}: expected shape (N, H, W) or (N, C, H, W), got {tuple(images.shape)}")
    if images.shape[0] == 0:
        raise ConfigError(f"{name}: no images")
    return images


def images_to_unit_range(images: torch.Tensor) -> torch.Tensor:
    """uint8 pixels p in 0..255 -> x = p / 127.5 - 1 in [-1, 1] (float32)."""
    return images.to(torch.float32) / 127.5 - 1.0


def load_fashion_mnist_classifier(
    path: str | Path = FASHION_MNIST_CLASSIFIER, expected_sha256: str | None = FASHION_MNIST_CLASSIFIER_SHA256
) -> SmallImageClassifier:
    """The shipped Fashion-MNIST classifier in evaluation mode (CPU), its file's sha256 checked first.

    Args:
        path: a safetensors file of :class:`SmallImageClassifier` weights (the shipped one by default).
        expected_sha256: the file's sha256, or None to skip the check (for weights you trained yourself).
    """
    state = read_safetensors(path, expected_sha256=expected_sha256)
    model = SmallImageClassifier()
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ConfigError(
            f"'{path}': not weights of the small image classifier (missing {sorted(missing)[:3]}, "
            f"unexpected {sorted(unexpected)[:3]})"
        )
    return model.eval().requires_grad_(False)


@torch.no_grad()
def classifier_features(
    model: SmallImageClassifier, images: Any, *, batch_size: int = 1000, name: str = "images"
) -> tuple[torch.Tensor, torch.Tensor]:
    """(features phi(x) of shape (N, 128) float64, logits of shape (N, num_classes)) of uint8 ``images``."""
    pixels = as_uint8_images(images, name)
    if tuple(pixels.shape[1:]) != (1, 28, 28):
        raise ConfigError(
            f"{name}: the Fashion-MNIST classifier takes 1 x 28 x 28 images, got {tuple(pixels.shape[1:])}"
        )
    device = next(model.parameters()).device
    features, logits = [], []
    for start in range(0, pixels.shape[0], batch_size):
        x = images_to_unit_range(pixels[start : start + batch_size]).to(device)
        phi = model.features(x)
        features.append(phi.to(torch.float64).cpu())
        logits.append(model.head(phi).cpu())
    return torch.cat(features), torch.cat(logits)
