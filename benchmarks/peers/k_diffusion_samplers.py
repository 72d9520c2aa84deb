"""k-diffusion's samplers (Crowson, github.com/crowsonkb/k-diffusion) on a diffscale denoiser.

k-diffusion works in the EDM view already: ``model(x_hat, sigma)`` returns D(x_hat; sigma), the samplers take
x_hat_0 = sigma_0 n and a sigma grid ending in 0. Its package ``__init__`` imports its training stack
(torchvision, clip, kornia, scikit-image, wandb, ...), which the benchmark does not need: when that import fails
(here: it does, with ``pip install --no-deps k-diffusion``), only ``k_diffusion/sampling.py`` is loaded from the
installed package, under a stub package whose ``utils`` provides the one helper it uses (``append_dims``).
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types
from pathlib import Path

import torch

from benchmarks.peers.common import CountingDenoiser, PeerSampler, Unavailable

__all__ = ["k_diffusion_samplers", "load_sampling_module"]


def _append_dims(x: torch.Tensor, target_dims: int) -> torch.Tensor:
    """x with trailing singleton dimensions up to ``target_dims`` (what k_diffusion.utils.append_dims does)."""
    return x[(...,) + (None,) * (target_dims - x.ndim)]


def load_sampling_module() -> tuple[types.ModuleType, str]:
    """(k_diffusion.sampling, how it was loaded); raises ImportError when k-diffusion is not installed."""
    try:
        return importlib.import_module("k_diffusion.sampling"), "full package import"
    except ImportError as error:
        spec = importlib.util.find_spec("k_diffusion")
        if spec is None or not spec.submodule_search_locations:
            raise ImportError("k-diffusion is not installed (pip install k-diffusion --no-deps)") from error
        failure = f"{type(error).__name__}: {error}"
    for name in [key for key in sys.modules if key == "k_diffusion" or key.startswith("k_diffusion.")]:
        del sys.modules[name]  # drop the half-imported package
    location = Path(next(iter(spec.submodule_search_locations)))
    package = types.ModuleType("k_diffusion")
    package.__path__ = [str(location)]
    utils = types.ModuleType("k_diffusion.utils")
    utils.append_dims = _append_dims  # type: ignore[attr-defined]
    package.utils = utils  # type: ignore[attr-defined]
    sys.modules["k_diffusion"], sys.modules["k_diffusion.utils"] = package, utils
    module_spec = importlib.util.spec_from_file_location("k_diffusion.sampling", location / "sampling.py")
    assert module_spec is not None and module_spec.loader is not None
    module = importlib.util.module_from_spec(module_spec)
    sys.modules["k_diffusion.sampling"] = module
    module_spec.loader.exec_module(module)
    return module, f"sampling.py alone (package import failed: {failure})"


def _single_plus_pairs(steps: int) -> int:
    """NFE of a two-stage method whose last step (to sigma = 0) is an Euler step: 2N - 1."""
    return 2 * steps - 1


def k_diffusion_samplers() -> tuple[list[PeerSampler | Unavailable], str]:
    """The deterministic k-diffusion samplers, or one Unavailable entry, and a note on how they were loaded."""
    library = "k-diffusion"
    try:
        kd, how = load_sampling_module()
    except Exception as error:  # any failure of an optional peer is reported, not raised
        return [Unavailable(library, "all samplers", f"{type(error).__name__}: {error}")], "not loaded"

    def fixed(function_name: str, **kwargs: object):
        function = getattr(kd, function_name)

        def run(model: CountingDenoiser, noise: torch.Tensor, sigmas: torch.Tensor) -> torch.Tensor:
            return function(model, noise * sigmas[0], sigmas, disable=True, **kwargs)

        return run

    def dpm_fast(model: CountingDenoiser, noise: torch.Tensor, sigmas: torch.Tensor) -> torch.Tensor:
        # DPM-Solver-fast builds its own steps, uniform in log-SNR between sigma_min and sigma_max; N = NFE.
        steps = len(sigmas) - 1
        positive = sigmas[sigmas > 0]
        return kd.sample_dpm_fast(
            model, noise * sigmas[0], float(positive.min()), float(sigmas[0]), steps, disable=True
        )

    samplers: list[PeerSampler | Unavailable] = [
        PeerSampler(library, "euler", lambda n: n, fixed("sample_euler")),
        PeerSampler(library, "heun", _single_plus_pairs, fixed("sample_heun")),
        PeerSampler(library, "dpm_2", _single_plus_pairs, fixed("sample_dpm_2")),
        PeerSampler(library, "lms (order 4)", lambda n: n, fixed("sample_lms")),
        PeerSampler(
            library, "dpmpp_2s (2s_ancestral, eta=0)", _single_plus_pairs, fixed("sample_dpmpp_2s_ancestral", eta=0.0)
        ),
        PeerSampler(library, "dpmpp_2m", lambda n: n, fixed("sample_dpmpp_2m")),
        PeerSampler(library, "dpmpp_3m (3m_sde, eta=0)", lambda n: n, fixed("sample_dpmpp_3m_sde", eta=0.0)),
        PeerSampler(library, "dpm_fast (own log-SNR steps)", lambda n: n, dpm_fast, accepts_grid=False),
    ]
    return samplers, how
