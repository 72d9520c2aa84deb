"""diffusers' multistep schedulers (DPMSolverMultistepScheduler, UniPCMultistepScheduler) on a diffscale denoiser.

diffusers works in the variance-preserving form x_vp = alpha_t y + sigma_t n with alpha_t = 1 / sqrt(1 + sigma^2),
sigma_t = sigma alpha_t (sigma the EDM noise level; EDM paper Table 1, VP column), and asks the model for
an x_0 prediction (``prediction_type="sample"``), which is D(x_hat; sigma) at x_hat = x_vp / alpha_t. Its
noise levels come from a discrete training table (alphas_cumprod); here the table is built to span
sigma in [0.002, 80] (log-uniform, 1000 entries) and, after ``set_timesteps`` with ``use_karras_sigmas=True``,
``scheduler.sigmas`` is replaced by the exact grid of the benchmark (stored in float32, as diffusers does), so
the peer steps through the same sigma_i as everyone else. The schedulers' own defaults are kept otherwise
(``lower_order_final=True``: lower order on the last steps when N < 15; ``final_sigmas_type="zero"``).
diffusers computes its updates in float32.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from benchmarks.peers.common import CountingDenoiser, PeerSampler, Unavailable

__all__ = ["diffusers_samplers", "vp_training_betas"]

TRAIN_STEPS = 1000


def vp_training_betas(sigma_min: float = 0.002, sigma_max: float = 80.0, count: int = TRAIN_STEPS) -> np.ndarray:
    """beta_k with alphas_cumprod_k = 1 / (1 + sigma_k^2), sigma_k log-uniform from sigma_min to sigma_max."""
    sigmas = np.exp(np.linspace(math.log(sigma_min), math.log(sigma_max), count))
    alphas_cumprod = 1.0 / (1.0 + sigmas**2)
    ratios = alphas_cumprod / np.concatenate([[1.0], alphas_cumprod[:-1]])
    return 1.0 - ratios


def _driver(scheduler_class: type, **config: object):
    def run(model: CountingDenoiser, noise: torch.Tensor, sigmas: torch.Tensor) -> torch.Tensor:
        steps = len(sigmas) - 1
        scheduler = scheduler_class(
            num_train_timesteps=TRAIN_STEPS,
            trained_betas=vp_training_betas(),
            prediction_type="sample",
            use_karras_sigmas=True,
            final_sigmas_type="zero",
            **config,
        )
        scheduler.set_timesteps(steps)
        if len(scheduler.sigmas) != steps + 1:
            raise RuntimeError(f"diffusers made {len(scheduler.sigmas)} sigmas for {steps} steps")
        scheduler.sigmas = sigmas.to(torch.float32).clone()
        if hasattr(scheduler, "set_begin_index"):
            scheduler.set_begin_index(0)
        sigma_0 = float(sigmas[0])
        sample = noise * (sigma_0 / math.sqrt(1.0 + sigma_0**2))
        for i, timestep in enumerate(scheduler.timesteps):
            sigma = float(scheduler.sigmas[i])
            alpha = 1.0 / math.sqrt(1.0 + sigma**2)
            denoised = model(sample.to(noise.dtype) / alpha, torch.full((noise.shape[0],), sigma, dtype=noise.dtype))
            sample = scheduler.step(denoised, timestep, sample).prev_sample
        return sample.to(noise.dtype)  # sigma_N = 0: alpha = 1, x_vp = x_hat

    return run


def diffusers_samplers() -> tuple[list[PeerSampler | Unavailable], str]:
    """DPM-Solver++ (2M, 3M) and UniPC (orders 2 and 3, bh1 and bh2), or one Unavailable entry, and a note."""
    library = "diffusers"
    try:
        import diffusers
        from diffusers import DPMSolverMultistepScheduler, UniPCMultistepScheduler
    except Exception as error:
        return [Unavailable(library, "all schedulers", f"{type(error).__name__}: {error}")], "not loaded"

    samplers: list[PeerSampler | Unavailable] = []
    for order in (2, 3):
        samplers.append(
            PeerSampler(
                library,
                f"DPMSolverMultistep++ order {order}",
                lambda n: n,
                _driver(DPMSolverMultistepScheduler, solver_order=order, algorithm_type="dpmsolver++"),
            )
        )
    for order in (2, 3):
        for variant in ("bh1", "bh2"):
            samplers.append(
                PeerSampler(
                    library,
                    f"UniPCMultistep order {order} {variant}",
                    lambda n: n,
                    _driver(UniPCMultistepScheduler, solver_order=order, solver_type=variant),
                )
            )
    return samplers, f"diffusers {diffusers.__version__}"
