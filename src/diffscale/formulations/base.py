"""The common interface of a diffusion formulation (Karras et al. 2022, "Elucidating the Design Space
of Diffusion-Based Generative Models", arXiv 2206.00364, Table 1).

A formulation fixes, for the noisy state ``x = s(t) (y + sigma(t) n)``:

* the noise schedule sigma(t), its inverse sigma^-1 and derivative sigma'(t);
* the scale s(t) and its derivative s'(t);
* the time discretisation t_0 > t_1 > ... > t_{N-1} > t_N = 0 used by the samplers;
* the preconditioning (c_skip, c_out, c_in, c_noise) of D(x; sigma) = c_skip x + c_out F(c_in x; c_noise);
* the training noise law p_train(sigma) and the loss weight lambda(sigma).

Everything else (the loss, the denoiser, every sampler) reads these from the formulation, so the maths
of each formulation is written once, in its class.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar

import torch
from pydantic import model_validator

from diffscale.devices import draw_devices
from diffscale.validation import StrictModel, validate

__all__ = ["Formulation", "FormulationParams", "Preconditioning", "SigmaIsTime", "TensorLike", "as_tensor"]

TensorLike = torch.Tensor | float
Preconditioning = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


def as_tensor(value: TensorLike, like: torch.Tensor | None = None) -> torch.Tensor:
    """A tensor from a tensor or a number; numbers become float64 (or ``like``'s dtype and device)."""
    if isinstance(value, torch.Tensor):
        return value if value.is_floating_point() else value.to(torch.get_default_dtype())
    if like is not None:
        return torch.as_tensor(value, dtype=like.dtype, device=like.device)
    return torch.as_tensor(value, dtype=torch.float64)


class FormulationParams(StrictModel):
    """Parameters of one formulation; subclasses declare ``type`` and their own fields."""

    type: str

    @model_validator(mode="before")
    @classmethod
    def _canonical_type(cls, data: Any) -> Any:
        """Accept the formulation name in any case ("edm", "EDM", "Edm")."""
        expected = cls.model_fields["type"].default
        name = data.get("type") if isinstance(data, dict) else None
        if isinstance(name, str) and name.lower() == str(expected).lower():
            data = {**data, "type": expected}
        return data


class RangeParams(FormulationParams):
    """Parameters with a noise range sigma_min < sigma_max."""

    sigma_min: float
    sigma_max: float

    @model_validator(mode="after")
    def _ordered_range(self) -> RangeParams:
        if not self.sigma_min < self.sigma_max:
            raise ValueError(f"sigma_min = {self.sigma_min!r} must be smaller than sigma_max = {self.sigma_max!r}")
        return self


class Formulation(ABC):
    """One diffusion formulation: sigma(t), s(t), time steps, preconditioning and training law.

    All methods take tensors (or Python numbers) and return tensors of the input's dtype and device;
    numbers are treated as float64.
    """

    name: ClassVar[str]
    Params: ClassVar[type[FormulationParams]]

    def __init__(self, params: FormulationParams | None = None, **kwargs: Any) -> None:
        if params is None:
            params = validate(self.Params, {"type": self.Params.model_fields["type"].default, **kwargs})
        elif kwargs:
            raise TypeError("pass either a parameter model or keyword parameters, not both")
        elif not isinstance(params, self.Params):
            raise TypeError(f"{type(self).__name__} expects {self.Params.__name__}, got {type(params)!r}")
        self.params = params

    def __repr__(self) -> str:
        fields = ", ".join(f"{key}={value!r}" for key, value in self.params.model_dump().items() if key != "type")
        return f"{type(self).__name__}({fields})"

    # -- noise schedule and scale --------------------------------------------------------------------
    @abstractmethod
    def sigma(self, t: TensorLike) -> torch.Tensor:
        """Noise level sigma(t)."""

    @abstractmethod
    def sigma_inv(self, sigma: TensorLike) -> torch.Tensor:
        """Inverse schedule t = sigma^-1(sigma)."""

    @abstractmethod
    def sigma_deriv(self, t: TensorLike) -> torch.Tensor:
        """Derivative sigma'(t) = d sigma / dt."""

    def scale(self, t: TensorLike) -> torch.Tensor:
        """Scale s(t) of the noisy state x = s(t) (y + sigma(t) n); 1 unless overridden."""
        return torch.ones_like(as_tensor(t))

    def scale_deriv(self, t: TensorLike) -> torch.Tensor:
        """Derivative s'(t); 0 unless overridden."""
        return torch.zeros_like(as_tensor(t))

    @property
    def learned_variance(self) -> bool:
        """Whether the network also emits the variance interpolation v (iDDPM only; False unless overridden)."""
        return False

    def variance_transition(self, sigma: TensorLike) -> tuple[torch.Tensor, torch.Tensor, float]:
        """For formulations that learn the variance: (sigma', log beta_tilde used where sigma' = 0, w).

        sigma' is the next, less noisy level of the discrete chain after sigma, and w the weight of the
        per-step bound L_t in the training loss (w L_t estimates lambda L_vlb).
        """
        raise NotImplementedError(f"{type(self).__name__} does not learn the variance")

    # -- sampling ---------------------------------------------------------------------------------------
    @property
    @abstractmethod
    def sigma_min(self) -> float:
        """Smallest noise level of the formulation's own discretisation, sigma(t_{N-1})."""

    @property
    @abstractmethod
    def sigma_max(self) -> float:
        """Largest noise level of the formulation's own discretisation, sigma(t_0)."""

    def time_steps(
        self,
        num_steps: int,
        *,
        dtype: torch.dtype = torch.float64,
        device: torch.device | str | None = None,
    ) -> torch.Tensor:
        """Time steps t_0 > t_1 > ... > t_{N-1}, then t_N = 0: ``num_steps + 1`` values."""
        if isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < 1:
            raise ValueError(f"num_steps = {num_steps!r}: must be an integer >= 1")
        # i / (N - 1) for i = 0..N-1; a single step starts at t_0.
        fraction = torch.arange(num_steps, dtype=torch.float64) / max(num_steps - 1, 1)
        steps = self._time_steps(fraction)
        steps = torch.cat([steps, torch.zeros(1, dtype=torch.float64)])
        return steps.to(dtype=dtype, device=device)

    @abstractmethod
    def _time_steps(self, fraction: torch.Tensor) -> torch.Tensor:
        """t_i for fraction = i / (N - 1) in [0, 1] (float64)."""

    def round_sigma(self, sigma: TensorLike) -> torch.Tensor:
        """Snap sigma to a noise level the model supports (identity unless overridden)."""
        return as_tensor(sigma)

    # -- preconditioning and training ----------------------------------------------------------------------
    @abstractmethod
    def preconditioning(self, sigma: TensorLike) -> Preconditioning:
        """(c_skip, c_out, c_in, c_noise) at noise level sigma (EDM paper, Eq. 7)."""

    @abstractmethod
    def loss_weight(self, sigma: TensorLike) -> torch.Tensor:
        """Loss weight lambda(sigma) of E[lambda(sigma) |D(y + sigma n; sigma) - y|^2] (Eq. 8)."""

    @abstractmethod
    def sample_sigma(
        self,
        n: int,
        generator: torch.Generator | None = None,
        *,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ) -> torch.Tensor:
        """``n`` training noise levels sigma ~ p_train."""


class SigmaIsTime:
    """Mixin for formulations with sigma(t) = t (EDM, iDDPM): sigma^-1(sigma) = sigma, sigma'(t) = 1."""

    def sigma(self, t: TensorLike) -> torch.Tensor:
        return as_tensor(t).clone()

    def sigma_inv(self, sigma: TensorLike) -> torch.Tensor:
        return as_tensor(sigma).clone()

    def sigma_deriv(self, t: TensorLike) -> torch.Tensor:
        return torch.ones_like(as_tensor(t))


def uniform(
    n: int, generator: torch.Generator | None, dtype: torch.dtype, device: torch.device | str | None
) -> torch.Tensor:
    """U(0, 1) draws by ``generator`` on its own device, returned on ``device`` (default: the generator's)."""
    source, target = draw_devices(generator, device)
    return torch.rand(n, generator=generator, dtype=dtype, device=source).to(target)


def normal(
    n: int, generator: torch.Generator | None, dtype: torch.dtype, device: torch.device | str | None
) -> torch.Tensor:
    """N(0, 1) draws by ``generator`` on its own device, returned on ``device`` (default: the generator's)."""
    source, target = draw_devices(generator, device)
    return torch.randn(n, generator=generator, dtype=dtype, device=source).to(target)
