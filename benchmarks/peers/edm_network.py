"""NVlabs/edm's DDPM++ network (``training/networks.py``) loaded from a checkout of that repository, for
measurements side by side with diffscale's in one process. Nothing of it is copied here: the benchmark imports it
from the directory given (``git clone https://github.com/NVlabs/edm``; CC BY-NC-SA 4.0, for measurement only).

edm's modules are decorated with ``torch_utils.persistence.persistent_class``, which pickles source code with a
network; where the checkout's ``torch_utils`` cannot be imported (it needs ``dnnlib``'s extra dependencies), an
identity decorator stands in for it, which changes nothing a forward or backward pass computes.
"""

from __future__ import annotations

import importlib.util
import sys
import types
from pathlib import Path
from typing import Any

import torch

__all__ = ["CIFAR_DDPMPP", "edm_networks", "edm_training_step"]

CIFAR_DDPMPP: dict[str, Any] = {
    "model_type": "SongUNet",
    "embedding_type": "positional",
    "encoder_type": "standard",
    "decoder_type": "standard",
    "channel_mult_noise": 1,
    "resample_filter": [1, 1],
    "model_channels": 128,
    "channel_mult": [2, 2, 2],
    "num_blocks": 4,
    "attn_resolutions": [16],
    "augment_dim": 9,
    "dropout": 0.13,
}
"""edm's ``train.py --arch=ddpmpp`` network options for CIFAR-10 (with augmentation labels: 55.7 M parameters)."""


def edm_networks(checkout: str | Path) -> types.ModuleType:
    """edm's ``training.networks`` module from ``checkout``; FileNotFoundError when it is not there."""
    path = Path(checkout) / "training" / "networks.py"
    if not path.is_file():
        raise FileNotFoundError(f"no NVlabs/edm checkout at '{checkout}' (training/networks.py not found)")
    if "torch_utils.persistence" not in sys.modules:
        sys.path.insert(0, str(Path(checkout)))
        try:
            importlib.import_module("torch_utils.persistence")
        except ImportError:
            package, persistence = types.ModuleType("torch_utils"), types.ModuleType("torch_utils.persistence")
            persistence.persistent_class = lambda cls: cls  # type: ignore[attr-defined]
            package.persistence = persistence  # type: ignore[attr-defined]
            sys.modules.update({"torch_utils": package, "torch_utils.persistence": persistence})
    spec = importlib.util.spec_from_file_location("edm_training_networks", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def edm_training_step(
    network: torch.nn.Module, optimizer: torch.optim.Optimizer, images: torch.Tensor, sigma_data: float = 0.5
) -> None:
    """One optimiser step as edm's training loop takes it for its EDM loss: sigma = exp(1.2 n - 1.2), lambda(sigma)
    = (sigma^2 + sigma_data^2) / (sigma sigma_data)^2, loss sum_b lambda |D(y + sigma n) - y|^2 / B, backward, the
    gradients' non-finite values zeroed, Adam step (written here from the paper's equations)."""
    batch = images.shape[0]
    sigma = (torch.randn(batch, 1, 1, 1, device=images.device) * 1.2 - 1.2).exp()
    weight = (sigma**2 + sigma_data**2) / (sigma * sigma_data) ** 2
    noisy = images + torch.randn_like(images) * sigma
    optimizer.zero_grad(set_to_none=True)
    denoised = network(noisy, sigma, None)
    (weight * (denoised - images).square()).sum().div(batch).backward()
    for parameter in network.parameters():
        if parameter.grad is not None:
            torch.nan_to_num(parameter.grad, nan=0, posinf=1e5, neginf=-1e5, out=parameter.grad)
    optimizer.step()
