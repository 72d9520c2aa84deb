"""Log-likelihood of data under a diffusion model through the probability-flow ODE.

The ODE in sigma. With the unscaled state x_hat = x / s(t) and sigma = sigma(t) as the variable, every
formulation's probability-flow ODE (EDM paper, Eq. 4) becomes Eq. 1 with sigma(t) = t, s(t) = 1:

    d x_hat / d sigma = (x_hat - D(x_hat; sigma)) / sigma = -sigma grad log p(x_hat; sigma),

where p(.; sigma) = p_data * N(0, sigma^2 I) is the noisy marginal and D the denoiser (for the ideal D,
Tweedie: D(x; sigma) = x + sigma^2 grad log p(x; sigma)). The formulation only fixes the noise range
[sigma_min, sigma_max] it was trained and sampled on.

Instantaneous change of variables (Chen et al. 2018; Song et al. 2021, "Score-Based Generative Modeling
through SDEs", Appendix D.2): along a solution of dx_hat/dsigma = f(x_hat, sigma),

    d log p(x_hat(sigma); sigma) / d sigma = -div f = -(d - tr(dD/dx_hat)) / sigma,

with d the number of dimensions. Integrating from the data end sigma_0 to sigma_max gives

    log p(x; sigma_0) = log p(x_hat(sigma_max); sigma_max) + integral_{sigma_0}^{sigma_max} (d - tr J_D) / sigma dsigma,

x_hat(sigma_0) = x. In u = ln sigma both right-hand sides are smooth and bounded,

    d x_hat / du = x_hat - D(x_hat; e^u),        d Delta / du = d - tr J_D(x_hat; e^u),

so the augmented state (x_hat, Delta) is integrated with a fixed-step classical Runge-Kutta (RK4, 4 evaluations
per step, error O(h^4)) or Heun (2 per step, O(h^2)) scheme on a uniform grid in ln sigma.

Prior at sigma_max. p(.; sigma_max) is not known; the usual choice, used by default, is N(0, sigma_max^2 I).
For data of mean mu and per-dimension variance v, p(.; sigma_max) is close to N(mu, (sigma_max^2 + v) I); the
pointwise error of the Gaussian prior at x_hat = sigma_max z is about (mu . x_hat) / sigma_max^2 +
v (|x_hat|^2 / sigma_max^2 - d) / (2 sigma_max^2), i.e. |mu| |z| / sigma_max + v (|z|^2 - d) / (2 sigma_max^2) nats
(at sigma_max = 80 and unit-scale data: about 1e-2 |mu| |z| + 1e-4 nats; in expectation it is the KL
divergence KL(p(.; sigma_max) || N(0, sigma_max^2 I)) ~ (|mu|^2 + d v^2 / (2 sigma_max^2)) / (2 sigma_max^2)).
A caller that knows p(.; sigma_max) may pass it as ``prior_log_prob``.

The data end. The computed number is log p(x; sigma_0), the model density of the data convolved with
N(0, sigma_0^2 I); by the heat equation d p / d sigma = sigma Laplacian(p) it differs from log p_data(x) by

    log p(x; sigma_0) - log p(x; 0) = sigma_0^2 / 2 (Laplacian log p + |grad log p|^2) + O(sigma_0^4),

i.e. O(d sigma_0^2 / s^2) for data of local scale s. With ``zero_noise_correction=True`` this term is
subtracted, using sigma_0^2 Laplacian log p = tr J_D - d and sigma_0^2 |grad log p|^2 = |D - x|^2 / sigma_0^2 at
sigma_0 (both known from the first stage of the integration), which leaves an O(sigma_0^4) error for an exact
denoiser; a trained denoiser's error at sigma_0 enters it amplified by 1 / sigma_0^2, so it is off by default.

Trace. tr J_D is either exact (d vector-Jacobian products with the basis vectors e_i, for small d) or the
Hutchinson estimate (Hutchinson 1989; Grathwohl et al. 2019, "FFJORD", Eq. 7)

    tr J_D ~= (1/K) sum_k eps_k^T J_D eps_k,   E[eps eps^T] = I  (Rademacher or standard normal eps),

with eps_k^T J_D from one reverse-mode pass each (the forward pass is shared). The K probes are drawn once per
sample and kept for the whole trajectory, so the estimated right-hand side is a smooth function of u and the
integral is an unbiased estimate of its discretisation (the trajectory x_hat itself does not depend on the
probes). Rademacher probes have the smaller variance, 2 sum_{i != j} J_ij^2 per probe (zero in one dimension).

Units: nats in the unscaled data space the model was trained on; bits per dimension are
-log p / (d ln 2) (no dequantisation term: the data are treated as continuous).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Literal

import torch

from diffscale.denoiser import Denoiser
from diffscale.devices import draw_devices, standard_normal
from diffscale.formulations.base import Formulation

__all__ = [
    "PROBE_KINDS",
    "SOLVERS",
    "LikelihoodResult",
    "PriorLogProb",
    "ProbeKind",
    "SolverName",
    "basis_probes",
    "bits_per_dim",
    "gaussian_prior_log_prob",
    "hutchinson_probes",
    "log_likelihood",
    "number_of_evaluations",
]

ProbeKind = Literal["rademacher", "gaussian"]
SolverName = Literal["rk4", "heun"]
PROBE_KINDS: tuple[str, ...] = ("rademacher", "gaussian")
SOLVERS: tuple[str, ...] = ("rk4", "heun")
_STAGES = {"rk4": 4, "heun": 2}

PriorLogProb = Callable[[torch.Tensor, float], torch.Tensor]
"""log p(x_hat; sigma_max) of the prior: (x_hat of shape (B, ...), sigma_max) -> shape (B,)."""


def gaussian_prior_log_prob(x_hat: torch.Tensor, sigma_max: float) -> torch.Tensor:
    """log N(x_hat; 0, sigma_max^2 I) = -d/2 ln(2 pi sigma_max^2) - |x_hat|^2 / (2 sigma_max^2), shape (B,)."""
    flat = x_hat.flatten(1)
    dims = flat.shape[1]
    return -0.5 * dims * math.log(2.0 * math.pi * sigma_max**2) - flat.square().sum(1) / (2.0 * sigma_max**2)


def bits_per_dim(log_likelihood: torch.Tensor | float, dims: int) -> torch.Tensor | float:
    """Bits per dimension -log p / (d ln 2) of a log-likelihood in nats."""
    return -log_likelihood / (dims * math.log(2.0))


def number_of_evaluations(steps: int, solver: SolverName = "rk4") -> int:
    """Denoiser evaluations per sample of :func:`log_likelihood` (each with one backward pass per probe)."""
    return _STAGES[solver] * steps


def hutchinson_probes(
    num_probes: int,
    shape: torch.Size | tuple[int, ...],
    *,
    kind: ProbeKind = "rademacher",
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """K probes eps_k with E[eps eps^T] = I, shape (K, *shape): Rademacher (+-1) or standard normal."""
    if kind not in PROBE_KINDS:
        raise ValueError(f"probe kind = {kind!r}: allowed: {', '.join(PROBE_KINDS)}")
    if num_probes < 1:
        raise ValueError(f"num_probes = {num_probes}: must be >= 1")
    source, target = draw_devices(generator, device)  # drawn on the generator's device, then moved
    size = (num_probes, *shape)
    if kind == "gaussian":
        return standard_normal(size, generator, dtype=dtype, device=target)
    bits = torch.randint(0, 2, size, generator=generator, device=source)
    return (2 * bits - 1).to(device=target, dtype=dtype)


def basis_probes(
    shape: torch.Size | tuple[int, ...], *, dtype: torch.dtype = torch.float64, device: torch.device | str | None = None
) -> torch.Tensor:
    """The d basis vectors e_i for every sample, shape (d, *shape): sum_i e_i^T J e_i = tr J exactly."""
    batch, dims = shape[0], math.prod(shape[1:])
    eye = torch.eye(dims, dtype=dtype, device=device)
    return eye[:, None, :].expand(dims, batch, dims).reshape(dims, *shape)


@dataclass(frozen=True)
class LikelihoodResult:
    """Per-sample results of :func:`log_likelihood` (tensors of shape (B,) in nats unless said otherwise).

    Attributes:
        log_likelihood: log p(x; sigma_0) = prior_log_prob + delta_log_prob (plus zero_noise_correction
            when it was requested, then an estimate of log p(x; 0)).
        prior_log_prob: log p(x_hat(sigma_max); sigma_max) under the prior.
        delta_log_prob: integral_{sigma_0}^{sigma_max} (d - tr J_D) / sigma dsigma along the trajectory.
        zero_noise_correction: the O(sigma_0^2) term added to reach sigma = 0, or None.
        latent: x_hat(sigma_max), shape of the data.
        sigma_start: sigma_0, where the trajectory starts at the data.
        sigma_end: sigma_max, where the prior is evaluated.
        dims: d, values per sample.
        evaluations: denoiser evaluations per sample.
    """

    log_likelihood: torch.Tensor
    prior_log_prob: torch.Tensor
    delta_log_prob: torch.Tensor
    zero_noise_correction: torch.Tensor | None
    latent: torch.Tensor
    sigma_start: float
    sigma_end: float
    dims: int
    evaluations: int

    @property
    def bits_per_dim(self) -> torch.Tensor:
        """-log_likelihood / (d ln 2), shape (B,)."""
        return bits_per_dim(self.log_likelihood, self.dims)


class _AugmentedField:
    """The right-hand side in u = ln sigma: (x_hat - D(x_hat; sigma), d - tr J_D(x_hat; sigma)).

    ``probes`` (K, B, ...) are the Hutchinson probes, weighted by 1/K; None means the exact trace, with the basis
    vectors e_i made one at a time (memory of one probe, d backward passes).
    """

    def __init__(self, denoiser: Denoiser, probes: torch.Tensor | None, cond: dict[str, Any]) -> None:
        self.denoiser = denoiser
        self.probes = probes
        self.cond = cond

    def _probes(self, like: torch.Tensor) -> Iterator[torch.Tensor]:
        if self.probes is not None:
            yield from self.probes
            return
        for index in range(like[0].numel()):
            basis = torch.zeros_like(like).flatten(1)
            basis[:, index] = 1.0
            yield basis.reshape(like.shape)

    def __call__(self, x_hat: torch.Tensor, log_sigma: float) -> tuple[torch.Tensor, torch.Tensor]:
        batch, dims = x_hat.shape[0], x_hat[0].numel()
        count = dims if self.probes is None else self.probes.shape[0]
        sigma = torch.full((batch,), math.exp(log_sigma), dtype=x_hat.dtype, device=x_hat.device)
        with torch.enable_grad():
            x_in = x_hat.detach().requires_grad_(True)
            denoised = self.denoiser(x_in, sigma, **self.cond).to(x_hat.dtype)
            trace = torch.zeros(batch, dtype=x_hat.dtype, device=x_hat.device)
            if denoised.requires_grad:  # a D that ignores x has tr J = 0
                for index, probe in enumerate(self._probes(x_hat)):
                    (vjp,) = torch.autograd.grad(denoised, x_in, grad_outputs=probe, retain_graph=index < count - 1)
                    trace = trace + (vjp * probe).flatten(1).sum(1)
        if self.probes is not None:
            trace = trace / count
        return x_hat - denoised.detach(), dims - trace.detach()


def _check_range(sigma_start: float, sigma_end: float, steps: int) -> None:
    if not (math.isfinite(sigma_start) and math.isfinite(sigma_end) and 0 < sigma_start < sigma_end):
        raise ValueError(
            f"need 0 < sigma_start < sigma_end < inf, got sigma_start = {sigma_start}, sigma_end = {sigma_end}"
        )
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps = {steps!r}: must be an integer >= 1")


def log_likelihood(
    denoiser: Denoiser,
    x: torch.Tensor,
    formulation: Formulation,
    *,
    steps: int = 64,
    solver: SolverName = "rk4",
    num_probes: int = 1,
    probe: ProbeKind = "rademacher",
    exact_trace: bool = False,
    sigma_start: float | None = None,
    sigma_end: float | None = None,
    prior_log_prob: PriorLogProb | None = None,
    zero_noise_correction: bool = False,
    generator: torch.Generator | None = None,
    **cond: Any,
) -> LikelihoodResult:
    """log p(x; sigma_0) of data ``x`` under the probability-flow ODE of ``denoiser`` (see the module docstring).

    Args:
        denoiser: D(x_hat, sigma, **cond) for unscaled x_hat of shape (B, ...) and sigma of shape (B,);
            differentiable in x_hat (a trained network or e.g. :meth:`GaussianMixture.ideal_denoiser`).
        x: data in the unscaled space the model was trained on, shape (B, ...); the computation runs in its
            dtype (float64 recommended; a float32 network is evaluated in its own dtype by the denoiser).
        formulation: gives the default range sigma_0 = ``formulation.sigma_min`` (the smallest noise level the
            model was trained and sampled at) and sigma_max = ``formulation.sigma_max``.
        steps: steps of the fixed-step solver on a uniform grid in ln sigma. On the exact mixture denoisers over
            EDM's range (benchmarks/likelihood_accuracy.py) rk4 errs by mean / max 4e-4 / 6e-3 nats at 32 steps,
            2e-5 / 3e-4 at 64 and 2e-6 / 2e-5 at 128; heun needs 4 times the evaluations or more for the same error.
        solver: "rk4" (4 evaluations per step, error O(h^4); the default) or "heun" (2, O(h^2)).
        num_probes: Hutchinson probes K per sample (ignored with ``exact_trace``).
        probe: "rademacher" (default, smaller variance) or "gaussian".
        exact_trace: compute tr J_D exactly with d vector-Jacobian products (small d only).
        sigma_start: sigma_0, overriding the formulation's sigma_min.
        sigma_end: sigma_max, overriding the formulation's.
        prior_log_prob: log p(x_hat; sigma_max) (default: :func:`gaussian_prior_log_prob`, N(0, sigma_max^2 I)).
        zero_noise_correction: add the O(sigma_0^2) heat-equation term to estimate log p(x; 0).
        generator: random source of the probes (on ``x``'s device).
        **cond: conditioning passed to the denoiser unchanged.

    Returns:
        A :class:`LikelihoodResult`; its tensors are detached, in ``x``'s dtype and on its device.
    """
    sigma_0 = float(formulation.sigma_min if sigma_start is None else sigma_start)
    sigma_max = float(formulation.sigma_max if sigma_end is None else sigma_end)
    _check_range(sigma_0, sigma_max, steps)
    if solver not in _STAGES:
        raise ValueError(f"solver = {solver!r}: allowed: {', '.join(SOLVERS)}")
    if x.ndim < 2 or x.shape[0] < 1:
        raise ValueError(f"x: expected shape (batch, ...) with batch >= 1, got {tuple(x.shape)}")
    if not x.is_floating_point():
        raise ValueError(f"x: expected a floating-point tensor, got {x.dtype}")
    x = x.detach()
    dims = x[0].numel()
    probes = None
    if not exact_trace:
        probes = hutchinson_probes(num_probes, x.shape, kind=probe, generator=generator, dtype=x.dtype, device=x.device)
    field = _AugmentedField(denoiser, probes, cond)

    u, u_end = math.log(sigma_0), math.log(sigma_max)
    h = (u_end - u) / steps
    x_hat = x.clone()
    delta = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
    first_stage: tuple[torch.Tensor, torch.Tensor] | None = None
    for index in range(steps):
        u_i = u + index * h
        k1 = field(x_hat, u_i)
        if first_stage is None:
            first_stage = k1
        if solver == "heun":
            k2 = field(x_hat + h * k1[0], u_i + h)
            x_hat = x_hat + 0.5 * h * (k1[0] + k2[0])
            delta = delta + 0.5 * h * (k1[1] + k2[1])
            continue
        k2 = field(x_hat + 0.5 * h * k1[0], u_i + 0.5 * h)
        k3 = field(x_hat + 0.5 * h * k2[0], u_i + 0.5 * h)
        k4 = field(x_hat + h * k3[0], u_i + h)
        x_hat = x_hat + h / 6.0 * (k1[0] + 2.0 * k2[0] + 2.0 * k3[0] + k4[0])
        delta = delta + h / 6.0 * (k1[1] + 2.0 * k2[1] + 2.0 * k3[1] + k4[1])

    prior = (prior_log_prob or gaussian_prior_log_prob)(x_hat, sigma_max).to(x.dtype)
    total = prior + delta
    correction = None
    if zero_noise_correction:
        assert first_stage is not None
        drift, divergence = first_stage
        correction = 0.5 * (divergence - drift.flatten(1).square().sum(1) / sigma_0**2)
        total = total + correction
    return LikelihoodResult(
        log_likelihood=total,
        prior_log_prob=prior,
        delta_log_prob=delta,
        zero_noise_correction=correction,
        latent=x_hat,
        sigma_start=sigma_0,
        sigma_end=sigma_max,
        dims=dims,
        evaluations=number_of_evaluations(steps, solver),
    )
