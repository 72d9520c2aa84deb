"""Post-hoc EMA (Karras et al. 2024, "Analyzing and Improving the Training Dynamics of Diffusion Models", Section 3
and Appendix C): power-function EMA profiles tracked during training, snapshots of them saved every few steps, and
the least-squares reconstruction of the EMA of any other width from those snapshots after training.

Power-function EMA. At step t (t = 1, 2, ...) with exponent gamma the average theta_hat_gamma(t) =
sum_tau w_tau theta_tau has weights w_tau proportional to tau^gamma over tau <= t; it is kept by the update
(Eq. 4 of the paper)

    theta_hat(t) = beta_gamma(t) theta_hat(t - 1) + (1 - beta_gamma(t)) theta(t),
    beta_gamma(t) = (1 - 1/t)^(gamma + 1),

whose weights are w_tau = (1 - beta(tau)) (tau / t)^(gamma + 1) ~ (gamma + 1) tau^gamma / t^(gamma + 1): the profile
p(tau) = (gamma + 1) tau^gamma / t^(gamma + 1) on [0, t]. Its width relative to its length, sigma_rel, is

    sigma_rel = sqrt((gamma + 1) / ((gamma + 2)^2 (gamma + 3)))     (Eq. 3)

(sigma_rel 0.05 <-> gamma = 16.97, 0.10 <-> gamma = 6.94); :func:`gamma_from_std` inverts it (the largest real root of
sigma_rel^2 (gamma + 2)^2 (gamma + 3) = gamma + 1).

Reconstruction (Appendix C.3). Snapshots i = 1..K are profiles p_i (their step t_i and exponent gamma_i); the
requested profile p_r (t_r, gamma_r) is approximated by sum_i x_i p_i, x minimising the L2 distance
int (p_r - sum_i x_i p_i)^2 dtau, i.e. A x = b with A_ij = <p_i, p_j>, b_i = <p_i, p_r> and, for two power profiles,

    <p_a, p_b> = (gamma_a + 1)(gamma_b + 1) min(t_a, t_b)^(gamma_a + gamma_b + 1)
                 / ((gamma_a + gamma_b + 1) t_a^(gamma_a + 1) t_b^(gamma_b + 1)).

The reconstructed weights are then theta_r = sum_i x_i theta_hat_i. Times are in optimiser steps (the profiles are
invariant to the unit of time).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import safetensors
import torch
from torch import nn

from diffscale.training.checkpoint import CheckpointError, read_safetensors, write_safetensors

__all__ = [
    "SNAPSHOT_DIR",
    "STATE_PREFIX",
    "PowerEMA",
    "Snapshot",
    "gamma_from_std",
    "list_snapshots",
    "power_profile_inner",
    "reconstruction_coefficients",
    "std_from_gamma",
]

SNAPSHOT_DIR = "posthoc_ema"
"""The folder of a run directory holding the snapshots (``snapshot-<step>.safetensors``)."""
STATE_PREFIX = "posthoc_ema."
"""Prefix of the profiles' accumulators in a checkpoint's training state (``posthoc_ema.<k>.<name>``)."""
_SNAPSHOT_FILE = re.compile(r"^snapshot-(\d+)\.safetensors$")


def std_from_gamma(gamma: float) -> float:
    """sigma_rel = sqrt((gamma + 1) / ((gamma + 2)^2 (gamma + 3))) of the power profile with exponent gamma."""
    if not gamma > -1:
        raise ValueError(f"gamma = {gamma}: must be > -1")
    return math.sqrt((gamma + 1) / ((gamma + 2) ** 2 * (gamma + 3)))


def gamma_from_std(std: float) -> float:
    """The exponent gamma >= 0 of the power profile of relative width ``std``, which must lie in (0, 1/sqrt(12))
    (gamma = 0, the uniform average, has width 1/sqrt(12) = 0.2887; the width falls to 0 as gamma grows).

    Solves std^2 (gamma^3 + 7 gamma^2 + 16 gamma + 12) - gamma - 1 = 0 and returns its largest real root.
    """
    if not 0 < std < 1 / math.sqrt(12):
        raise ValueError(f"std = {std}: the relative width of a power-function EMA must be in (0, {1 / 12**0.5:.4f})")
    s2 = std * std
    roots = np.roots([s2, 7 * s2, 16 * s2 - 1, 12 * s2 - 1])
    real = roots[np.abs(roots.imag) < 1e-9].real
    return float(real.max())


def power_profile_inner(t_a: float, gamma_a: float, t_b: float, gamma_b: float) -> float:
    """<p_a, p_b> = int p_a p_b dtau of the power profiles p(tau) = (gamma + 1) tau^gamma / t^(gamma + 1) on [0, t],
    computed in logarithms (exponents of ~20 overflow no float)."""
    t_min = min(t_a, t_b)
    total = gamma_a + gamma_b + 1
    log_value = (
        math.log(gamma_a + 1)
        + math.log(gamma_b + 1)
        - math.log(total)
        + total * math.log(t_min)
        - (gamma_a + 1) * math.log(t_a)
        - (gamma_b + 1) * math.log(t_b)
    )
    return math.exp(log_value)


def reconstruction_coefficients(
    snapshots: Sequence[tuple[float, float]], target: tuple[float, float], rcond: float = 1e-12
) -> np.ndarray:
    """x minimising int (p_target - sum_i x_i p_i)^2 dtau over the snapshots' profiles ``(t_i, gamma_i)``: the
    least-squares solution of A x = b (A_ij = <p_i, p_j>, b_i = <p_i, p_target>); sum_i x_i is close to 1."""
    if not snapshots:
        raise ValueError("no snapshots to reconstruct from")
    gram = np.array([[power_profile_inner(*a, *b) for b in snapshots] for a in snapshots], dtype=np.float64)
    rhs = np.array([power_profile_inner(*a, *target) for a in snapshots], dtype=np.float64)
    solution, *_ = np.linalg.lstsq(gram, rhs, rcond=rcond)
    return solution


class PowerEMA:
    """Power-function EMA profiles of a module's parameters (one accumulator per profile), updated after each step.

    Args:
        model: the trained module (parameters are averaged; buffers are not: snapshots take the model's).
        stds: the profiles' relative widths sigma_rel (gamma = :func:`gamma_from_std`).
    """

    def __init__(self, model: nn.Module, stds: Sequence[float]) -> None:
        if not stds:
            raise ValueError("PowerEMA needs at least one std")
        self.stds = [float(std) for std in stds]
        self.gammas = [gamma_from_std(std) for std in self.stds]
        self.accumulators: list[dict[str, torch.Tensor]] = [
            {name: value.detach().clone() for name, value in model.named_parameters()} for _ in self.stds
        ]

    @staticmethod
    def beta(step: int, gamma: float) -> float:
        """beta_gamma(t) = (1 - 1/t)^(gamma + 1) (0 at t = 1: the first average is the first iterate)."""
        if step < 1:
            raise ValueError(f"step = {step}: must be >= 1")
        return (1.0 - 1.0 / step) ** (gamma + 1.0)

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        """theta_hat <- beta(t) theta_hat + (1 - beta(t)) theta for every profile, t = ``step`` (the steps so far)."""
        parameters = dict(model.named_parameters())
        for gamma, accumulator in zip(self.gammas, self.accumulators, strict=True):
            weight = 1.0 - self.beta(step, gamma)
            for name, average in accumulator.items():
                average.lerp_(parameters[name].detach(), weight)

    # -- checkpoint state ---------------------------------------------------------------------------------------------
    def state_tensors(self) -> dict[str, torch.Tensor]:
        """The accumulators as ``posthoc_ema.<k>.<name>`` (what a checkpoint's training state stores)."""
        return {
            f"{STATE_PREFIX}{index}.{name}": value
            for index, accumulator in enumerate(self.accumulators)
            for name, value in accumulator.items()
        }

    def load_state_tensors(self, tensors: Mapping[str, torch.Tensor], where: str) -> None:
        """Restore :meth:`state_tensors`' output; CheckpointError when a profile's tensors are missing."""
        for index, accumulator in enumerate(self.accumulators):
            for name, average in accumulator.items():
                key = f"{STATE_PREFIX}{index}.{name}"
                if key not in tensors:
                    raise CheckpointError(
                        f"{where}: holds no post-hoc EMA accumulator {key!r} (trained without training.posthoc_ema, "
                        "or with other stds); resume with the configuration it was trained with"
                    )
                average.copy_(tensors[key])

    # -- snapshots ----------------------------------------------------------------------------------------------------
    def save_snapshot(self, run_dir: str | Path, step: int, model: nn.Module) -> Path:
        """Write ``<run_dir>/posthoc_ema/snapshot-<step>.safetensors`` atomically: for each profile k the whole
        state_dict of the model with the parameters replaced by profile k's averages, keyed ``<k>.<name>``; the
        header's metadata records the step, stds and gammas."""
        directory = Path(run_dir) / SNAPSHOT_DIR
        directory.mkdir(parents=True, exist_ok=True)
        state = model.state_dict()
        tensors: dict[str, torch.Tensor] = {}
        for index, accumulator in enumerate(self.accumulators):
            for name, value in state.items():
                tensors[f"{index}.{name}"] = accumulator.get(name, value)
        path = directory / f"snapshot-{step:08d}.safetensors"
        metadata = {
            "step": str(step),
            "stds": json.dumps(self.stds),
            "gammas": json.dumps(self.gammas),
            "parameters": json.dumps(sorted(self.accumulators[0])),
        }
        write_safetensors(path, tensors, metadata=metadata)
        return path


@dataclass(frozen=True)
class Snapshot:
    """One profile of one snapshot file: its step t, exponent gamma (and sigma_rel), the file, its key prefix and the
    names of the averaged entries (the parameters; the rest, buffers, are the model's at that step)."""

    step: int
    gamma: float
    std: float
    path: Path
    index: int
    parameters: frozenset[str]

    def load(self) -> dict[str, torch.Tensor]:
        """The averaged state_dict of this profile (CPU tensors)."""
        prefix = f"{self.index}."
        return {
            key[len(prefix) :]: value for key, value in read_safetensors(self.path).items() if key.startswith(prefix)
        }


def list_snapshots(run_dir: str | Path, up_to: int | None = None) -> list[Snapshot]:
    """Every profile of every snapshot of ``run_dir`` (steps <= ``up_to`` when given), by step; CheckpointError
    for a snapshot whose header cannot be read."""
    directory = Path(run_dir) / SNAPSHOT_DIR
    found: list[Snapshot] = []
    if not directory.is_dir():
        return found
    for path in sorted(directory.iterdir()):
        match = _SNAPSHOT_FILE.match(path.name)
        if not match or (up_to is not None and int(match.group(1)) > up_to):
            continue
        try:
            with safetensors.safe_open(str(path), framework="pt") as handle:
                metadata = handle.metadata() or {}
            step = int(metadata["step"])
            stds, gammas = json.loads(metadata["stds"]), json.loads(metadata["gammas"])
            parameters = frozenset(json.loads(metadata["parameters"]))
        except (OSError, KeyError, ValueError, safetensors.SafetensorError) as error:
            raise CheckpointError(f"'{path}': not a readable post-hoc EMA snapshot ({error})") from None
        for index, (std, gamma) in enumerate(zip(stds, gammas, strict=True)):
            found.append(Snapshot(step, float(gamma), float(std), path, index, parameters))
    return found
