"""Training metrics: the loss per decade of sigma and :class:`MetricsLog`, which aggregates step records into one
JSON line (and TensorBoard scalars) per logging window, and can continue a window across a resume."""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import IO, Any

import torch

from diffscale.training.loop import StepRecord

__all__ = ["LOG10_SIGMA_RANGE", "MetricsLog", "loss_by_sigma_decade"]

LOG10_SIGMA_RANGE = (-3, 3)
"""Decades of sigma in the per-noise-level loss: [1e-3, 1e-2), ..., [1e2, 1e3); values outside go to the ends."""


def _decade_label(decade: int) -> str:
    return f"[1e{decade:+03d},1e{decade + 1:+03d})"


def loss_by_sigma_decade(per_sample: torch.Tensor, sigma: torch.Tensor) -> dict[str, float]:
    """Mean per-sample loss in each decade of sigma (bins of log10 sigma, outer bins open-ended).

    Keys are ``"[1e-01,1e+00)"``-style labels, in increasing sigma; empty bins are left out.
    """
    low, high = LOG10_SIGMA_RANGE
    decade = sigma.detach().double().log10().floor().clamp(low, high - 1).long().cpu()
    losses = per_sample.detach().double().cpu()
    result = {}
    for value in range(low, high):
        mask = decade == value
        if mask.any():
            result[_decade_label(value)] = float(losses[mask].mean())
    return result


def _sigma_bucket_sums(per_sample: torch.Tensor, sigma: torch.Tensor) -> dict[str, tuple[float, int]]:
    """Per decade of sigma: (sum of the per-sample losses, count)."""
    low, high = LOG10_SIGMA_RANGE
    decade = sigma.detach().double().log10().floor().clamp(low, high - 1).long().cpu()
    losses = per_sample.detach().double().cpu()
    sums = {}
    for value in range(low, high):
        mask = decade == value
        if mask.any():
            sums[_decade_label(value)] = (float(losses[mask].sum()), int(mask.sum()))
    return sums


@dataclass
class MetricsLog:
    """Aggregates :class:`StepRecord` s and writes one JSON line every ``every`` steps (and at ``last_step``).

    Each line holds ``step``, ``loss`` (mean over the window's finite steps; null if none), ``learning_rate``,
    ``grad_norm`` (mean over the window, before clipping), ``loss_by_sigma`` (see :func:`loss_by_sigma_decade`;
    absent for objectives without noise levels), ``samples`` (per-sample losses in the window), ``ema_beta``
    (the EMA decay of the step), ``skipped_steps`` (non-finite steps in the window), ``samples_per_second`` and
    ``seconds`` since the start. With ``tensorboard`` (a SummaryWriter) the scalars go there too. The window is
    kept as running sums, so :meth:`state_dict` (stored in checkpoints) lets a resumed run write the same lines.
    """

    stream: IO[str] | None
    every: int
    last_step: int
    tensorboard: Any = None
    started: float = field(default_factory=time.perf_counter)
    seconds_before: float = 0.0
    _window: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._window = self._window or self._empty()
        self._window_started = time.perf_counter()
        self.last_line: dict[str, Any] | None = None
        """The last line written (None before the first)."""
        self.last_window_steps = 0
        """The steps that line averaged."""

    @staticmethod
    def _empty() -> dict[str, Any]:
        return {"steps": 0, "finite_steps": 0, "loss": 0.0, "grad_norm": 0.0, "samples": 0, "skipped": 0, "sigma": {}}

    def __call__(self, record: StepRecord) -> None:
        window = self._window
        window["steps"] += 1
        window["samples"] += int(record.per_sample.numel())
        window["learning_rate"] = record.learning_rate
        window["ema_beta"] = record.ema_beta
        window["step"] = record.step
        if record.skipped:
            window["skipped"] += 1
        else:
            window["finite_steps"] += 1
            window["loss"] += record.loss
            window["grad_norm"] += record.grad_norm
            if record.sigma is not None:
                for label, (total, count) in _sigma_bucket_sums(record.per_sample, record.sigma).items():
                    old_total, old_count = window["sigma"].get(label, (0.0, 0))
                    window["sigma"][label] = (old_total + total, old_count + count)
        if record.step % self.every == 0 or record.step >= self.last_step:
            self.flush()

    def flush(self) -> None:
        """Write the pending window (if any) as one line."""
        window = self._window
        if not window["steps"]:
            return
        now = time.perf_counter()
        finite = window["finite_steps"]
        line = {
            "step": window["step"],
            "loss": window["loss"] / finite if finite else None,  # None (null): every step was skipped
            "learning_rate": window["learning_rate"],
            "grad_norm": window["grad_norm"] / finite if finite else None,
            "loss_by_sigma": {
                label: total / count for label, (total, count) in sorted(window["sigma"].items(), key=_bucket_order)
            },
            "samples": window["samples"],
            "ema_beta": window["ema_beta"],
            "skipped_steps": window["skipped"],
            "samples_per_second": round(window["samples"] / max(now - self._window_started, 1e-9), 1),
            "seconds": round(self.seconds_before + now - self.started, 3),
        }
        if not line["loss_by_sigma"]:
            del line["loss_by_sigma"]
        self.last_line, self.last_window_steps = line, window["steps"]
        self._window = self._empty()
        self._window_started = now
        if self.stream is not None:
            self.stream.write(json.dumps(line) + "\n")
            self.stream.flush()
        if self.tensorboard is not None:
            step = line["step"]
            for key in ("loss", "learning_rate", "grad_norm", "ema_beta", "skipped_steps", "samples_per_second"):
                if line[key] is not None:
                    self.tensorboard.add_scalar(f"train/{key}", line[key], step)
            for label, value in line.get("loss_by_sigma", {}).items():
                self.tensorboard.add_scalar(f"loss_by_sigma/{label}", value, step)
            self.tensorboard.flush()

    def state_dict(self) -> dict[str, Any]:
        """The pending window, the elapsed time and the time spent in the window (JSON-able)."""
        window = dict(self._window)
        window["sigma"] = {label: list(pair) for label, pair in window["sigma"].items()}
        now = time.perf_counter()
        return {
            "window": window,
            "seconds": self.seconds_before + now - self.started,
            "window_seconds": now - self._window_started,
        }

    def load_state_dict(self, state: Mapping[str, Any] | None) -> None:
        """Continue the window of :meth:`state_dict`'s output."""
        if not state:
            return
        window = {**self._empty(), **dict(state["window"])}
        window["sigma"] = {label: (float(pair[0]), int(pair[1])) for label, pair in window["sigma"].items()}
        self._window = window
        self.seconds_before = float(state.get("seconds", 0.0))
        # the window's samples were drawn in its seconds before the checkpoint: the rate counts them, not the pause
        self._window_started = time.perf_counter() - float(state.get("window_seconds", 0.0))


def _bucket_order(item: tuple[str, Any]) -> float:
    """Sort ``[1e-01,1e+00)`` labels by their lower edge."""
    return float(item[0][1:].split(",")[0])
