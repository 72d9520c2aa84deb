"""The training loop: minimise an objective (default: the formulation's weighted denoising loss) with Adam or
AdamW, learning-rate warm-up and decay, gradient accumulation, clipping, mixed precision, a weight EMA, skipped
non-finite steps, and data parallelism over torchrun processes.

One optimiser step k at learning rate eta_k (see :meth:`Trainer.learning_rate`):

1. draw the global batch y_1..y_B (and the objective's random inputs, e.g. sigma_b and n_b) from the one
   training generator, identically on every process; a source that draws indices apart from reading them
   (:mod:`diffscale.training.data`) has only the indices drawn here, and its rows read by worker processes
   (``training.num_workers``), ahead of time;
2. this process takes (reads) rows [r B / W, (r + 1) B / W) and splits them into A micro-batches; for each it adds
   the gradient of sum_b L_b / (B / W) (DDP averages over the W processes, so the result is grad (1/B) sum_b L_b);
3. clip ||g|| to ``grad_clip``; if the loss or the gradient is not finite, skip the update (counted), else take
   the optimiser step, re-normalise force-normalised weights (EDM2 layers: rows of norm sqrt(fan-in)), update the
   EMA theta_ema <- beta theta_ema + (1 - beta) theta and the post-hoc EMA's power-function profiles
   (:mod:`diffscale.training.posthoc_ema`).
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from diffscale.data.batch import Batch, as_batch
from diffscale.devices import check_device
from diffscale.loss import DenoisingLoss, LossTerms, Objective, SplitObjective
from diffscale.networks.mp_layers import renormalize_weights
from diffscale.threads import thread_policy
from diffscale.training.data import BatchPipeline, StepDraws, data_loading_error, is_indexed
from diffscale.training.distributed import DistributedContext, all_gather_rows
from diffscale.training.ema import ExponentialMovingAverage
from diffscale.training.posthoc_ema import PowerEMA
from diffscale.training.precision import MixedPrecision
from diffscale.training.settings import TrainingSettings
from diffscale.training.step_speed import (
    build_optimizer,
    compile_model,
    match_optimizer_state,
    optimizer_implementation,
    use_channels_last,
)
from diffscale.validation import ConfigError

__all__ = [
    "BatchSource",
    "NonFiniteTrainingError",
    "StepRecord",
    "Trainer",
    "build_optimizer",
    "compile_model",
    "match_optimizer_state",
    "optimizer_implementation",
    "use_channels_last",
]

BatchSource = Callable[[int, torch.Generator], "torch.Tensor | Batch"]
"""``source(batch_size, generator)`` returns clean training samples y, or a :class:`Batch` (y and conditioning).
A source may also have ``state_dict()``/``load_state_dict(state)`` (a JSON-able data position), which
checkpoints then store. A source that is also an :class:`~diffscale.training.data.IndexedSource` (draws apart
from reads) is read by ``training.num_workers`` worker processes, each rank reading only its rows."""


class NonFiniteTrainingError(RuntimeError):
    """Training stopped after ``training.max_nonfinite_steps`` non-finite steps in a row."""


@dataclass(frozen=True)
class StepRecord:
    """Scalars of one optimiser step (over the global batch, on every process).

    ``loss`` is the batch mean (nan when not finite), ``per_sample``/``sigma`` the B per-sample losses and noise
    levels (``sigma`` None for an objective without noise levels), ``skipped`` whether the update was dropped.
    """

    step: int
    loss: float
    learning_rate: float
    grad_norm: float
    per_sample: torch.Tensor
    sigma: torch.Tensor | None
    skipped: bool = False
    ema_beta: float = 0.0
    samples: int = 0
    data_seconds: float = 0.0
    """Seconds the step waited for its batch (drawing and reading it, or waiting for the workers)."""
    step_seconds: float = 0.0
    """Seconds of the whole step, the wait for data included."""


class _Dispatch(nn.Module):
    """Routes DDP's forward to a method of the wrapped model (so that ``denoise_with_variance`` is synchronised)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, *args: Any, _method: str = "forward", **kwargs: Any) -> Any:
        return getattr(self.model, _method)(*args, **kwargs)


class _ModelView:
    """What the objective calls: ``view(x, sigma, **cond)`` and ``view.denoise_with_variance(...)`` through DDP."""

    def __init__(self, ddp: nn.Module, model: nn.Module) -> None:
        self._ddp = ddp
        self.formulation = getattr(model, "formulation", None)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._ddp(*args, **kwargs)

    def denoise_with_variance(self, *args: Any, **kwargs: Any) -> Any:
        return self._ddp(*args, _method="denoise_with_variance", **kwargs)


class Trainer:
    """Trains ``model`` (e.g. a :class:`~diffscale.denoiser.PreconditionedDenoiser`) on batches from ``source``.

    ``objective(model, target, generator, **cond) -> LossTerms`` defaults to ``DenoisingLoss(model.formulation)``.
    The generator that draws data and noise is seeded from ``settings.seed``; the network should be initialised
    by the caller (under the same seed) before it is handed over. With ``distributed`` (torchrun processes) the
    model is wrapped in DistributedDataParallel and each process trains on its rows of the global batch.
    """

    def __init__(
        self,
        model: nn.Module,
        source: BatchSource,
        settings: TrainingSettings,
        objective: Objective | None = None,
        *,
        distributed: DistributedContext | None = None,
    ) -> None:
        self.settings = settings
        self.distributed = distributed if distributed is not None else DistributedContext()
        shards = self.distributed.world_size * settings.grad_accumulation
        if settings.batch_size % shards:
            raise ConfigError(
                f"training.batch_size = {settings.batch_size} must be divisible by the number of processes "
                f"({self.distributed.world_size}) times training.grad_accumulation ({settings.grad_accumulation})"
            )
        self.device = check_device(settings.device, "training.device")
        self.precision = MixedPrecision(settings.precision, self.device)
        self.channels_last = use_channels_last(settings.channels_last, self.device, self.precision.precision)
        memory_format = torch.channels_last if self.channels_last else torch.preserve_format
        self.denoiser = model.to(self.device, memory_format=memory_format).train()
        self.source = source
        if objective is None:
            formulation = getattr(model, "formulation", None)
            if formulation is None:
                raise TypeError("without an objective the model must have a formulation (a PreconditionedDenoiser)")
            objective = DenoisingLoss(formulation)
        self.objective = objective
        self.optimizer = build_optimizer(self.denoiser.parameters(), settings, self.device)
        self.ema = ExponentialMovingAverage(self.denoiser, settings.ema_halflife, settings.ema_rampup)
        self.posthoc_ema = PowerEMA(self.denoiser, settings.posthoc_ema_stds) if settings.posthoc_ema_stds else None
        """The power-function EMA profiles of post-hoc EMA (``training.posthoc_ema_stds``), or None."""
        self.forced_weight_norm = any(callable(getattr(m, "normalize_weight_", None)) for m in model.modules())
        """Whether the model has force-normalised layers (EDM2), whose stored weights are re-normalised per step."""
        if settings.compile:
            compile_model(self.denoiser)
        self.generator = torch.Generator(self.device).manual_seed(settings.seed)
        self._pipeline: BatchPipeline | None = None
        self._serial = 0
        self.step = 0
        self.samples_seen = 0  # training samples of every step so far (the EMA ramp-up's clock)
        self.skipped_steps = 0
        self.nonfinite_in_a_row = 0
        self._model_view: Any = self.denoiser
        self._ddp: nn.Module | None = None
        if self.distributed.enabled:
            from torch.nn.parallel import DistributedDataParallel

            device_ids = [self.device.index] if self.device.type == "cuda" else None
            self._ddp = DistributedDataParallel(_Dispatch(self.denoiser), device_ids=device_ids)
            self._model_view = _ModelView(self._ddp, self.denoiser)

    @property
    def model(self) -> nn.Module:
        """The trained model (the same object as ``denoiser``)."""
        return self.denoiser

    @property
    def loss(self) -> Objective:
        """The objective (name kept from when it was always the denoising loss)."""
        return self.objective

    @property
    def ema_denoiser(self) -> nn.Module:
        """The EMA copy of the model (what sampling should use)."""
        return self.ema.model

    def learning_rate(self, step: int) -> float:
        """eta(k) for step k = 0, 1, ...: linear warm-up to ``learning_rate`` over W steps, then ``lr_decay``:

        none: 1; cosine: (1 + cos(pi p)) / 2 with p = (k - W) / (steps - W); inverse_sqrt: sqrt(max(W, 1) /
        max(k + 1, W, 1)) (the Transformer schedule's tail).
        """
        settings = self.settings
        warmup = settings.warmup_steps
        factor = min(1.0, (step + 1) / warmup) if warmup else 1.0
        if settings.lr_decay == "cosine" and step >= warmup:
            progress = min(1.0, (step - warmup) / max(1, settings.steps - warmup))
            factor *= 0.5 * (1.0 + math.cos(math.pi * progress))
        elif settings.lr_decay == "inverse_sqrt":
            reference = max(warmup, 1)
            factor *= math.sqrt(reference / max(step + 1, reference))
        return settings.learning_rate * factor

    # -- one step ---------------------------------------------------------------------------------------------
    def draw_step(self) -> StepDraws:
        """Every draw of the next step from the training generator, in order: the global batch (a plain source) or
        its indices (an indexed source), then the objective's random inputs for the whole batch (split
        objectives) or one seed per micro-batch of every rank. Every rank draws the same, so the generator stays
        in step; the draws depend only on the generator and the batch's shape."""
        settings = self.settings
        state = self.generator.get_state()
        source = self.source
        if is_indexed(source):
            data = source.draw(settings.batch_size, self.generator)  # type: ignore[attr-defined]
            shape = (settings.batch_size, *source.sample_shape)  # type: ignore[attr-defined]
            like = torch.zeros((), dtype=torch.float32, device=self.device).expand(shape)
        else:
            data = as_batch(source(settings.batch_size, self.generator)).to(self.device)
            like = data.target
        if len(data) != settings.batch_size:
            raise ValueError(f"the data source returned {len(data)} samples, expected {settings.batch_size}")
        objective, seeds = None, None
        if isinstance(self.objective, SplitObjective):
            objective = self.objective.draw(like, self.generator)
        else:
            shards = self.distributed.world_size * settings.grad_accumulation
            seeds = torch.randint(0, 2**62, (shards,), generator=self.generator, device=self.device).cpu()
        self._serial += 1
        return StepDraws(self._serial, data, objective, seeds, state)

    def _next_batch(self) -> tuple[StepDraws, Batch]:
        """The next step's draws and this rank's rows of its batch, on the training device."""
        settings = self.settings
        start, stop = self.distributed.rows(settings.batch_size)
        source = self.source
        if self._pipeline is not None and self._pipeline.source is not source:
            self.close_data()  # the source was replaced: what was drawn for the old one is undone
        if not is_indexed(source):
            draws = self.draw_step()
            return draws, draws.data.slice(start, stop)
        if settings.num_workers == 0:
            draws = self.draw_step()
            batch = source.batch_reader().read(draws.data, start, stop)  # type: ignore[attr-defined]
        else:
            if self._pipeline is None:
                self._pipeline = BatchPipeline(
                    source,  # type: ignore[arg-type]
                    (start, stop),
                    self.draw_step,
                    settings,
                    self.device,
                )
            draws, batch = self._pipeline.next()
        if len(batch) != stop - start:
            raise ValueError(f"the data source read {len(batch)} samples, expected rows {start}:{stop}")
        return draws, batch.to_device(self.device, non_blocking=True)

    def checkpoint_generator(self) -> torch.Generator:
        """The training generator as it stood before the first step not yet trained (what a checkpoint stores:
        data loading workers may have drawn later steps already)."""
        state = self._pipeline.boundary_state() if self._pipeline is not None else None
        if state is None:
            return self.generator
        generator = torch.Generator(self.device)
        generator.set_state(state)
        return generator

    def close_data(self, *, rewind: bool = True) -> None:
        """Stop the data loading workers; with ``rewind`` the generator goes back to the state before the steps
        they had drawn ahead (so the next step draws what it would have drawn)."""
        pipeline, self._pipeline = self._pipeline, None
        if pipeline is None:
            return
        state = pipeline.boundary_state()
        pipeline.close()
        if rewind and state is not None:
            self.generator.set_state(state)

    def _micro_batch_terms(self, batch: Batch, draws: StepDraws, index: int) -> LossTerms:
        """The objective on micro-batch ``index`` of this rank's rows ``batch``."""
        settings = self.settings
        start, stop = self.distributed.rows(settings.batch_size)
        size = (stop - start) // settings.grad_accumulation
        part = batch.slice(index * size, (index + 1) * size)
        first = start + index * size  # in the global batch
        if draws.objective is not None:
            rows = {name: value[first : first + size] for name, value in draws.objective.items()}
            return self.objective.evaluate(self._model_view, part.target, rows, **part.cond)  # type: ignore[attr-defined]
        assert draws.seeds is not None
        shard = self.distributed.rank * settings.grad_accumulation + index
        generator = torch.Generator(self.device).manual_seed(int(draws.seeds[shard]))
        return self.objective(self._model_view, part.target, generator, **part.cond)

    def train_step(self) -> StepRecord:
        """One optimiser step on one global batch; raises NonFiniteTrainingError after too many skipped steps."""
        settings = self.settings
        started = time.perf_counter()
        draws, batch = self._next_batch()
        data_seconds = time.perf_counter() - started
        learning_rate = self.learning_rate(self.step)
        for group in self.optimizer.param_groups:
            group["lr"] = learning_rate
        self.optimizer.zero_grad(set_to_none=True)
        rows = self.distributed.rows(settings.batch_size)
        local_rows = rows[1] - rows[0]
        per_sample_parts, sigma_parts = [], []
        for index in range(settings.grad_accumulation):
            last = index == settings.grad_accumulation - 1
            sync = contextlib.nullcontext() if self._ddp is None or last else self._ddp.no_sync()
            with sync:
                with self.precision.autocast():
                    terms = self._micro_batch_terms(batch, draws, index)
                self.precision.backward(terms.per_sample.float().sum() / local_rows)
            per_sample_parts.append(terms.per_sample.detach().float())
            if terms.sigma is not None:
                sigma_parts.append(terms.sigma.detach().float())
        per_sample = all_gather_rows(torch.cat(per_sample_parts), self.distributed)
        sigma = all_gather_rows(torch.cat(sigma_parts), self.distributed) if sigma_parts else None
        loss = float(per_sample.mean())
        self.precision.unscale(self.optimizer)
        max_norm = settings.grad_clip if settings.grad_clip is not None else math.inf
        grad_norm = float(torch.nn.utils.clip_grad_norm_(self.denoiser.parameters(), max_norm))
        finite = math.isfinite(loss) and math.isfinite(grad_norm)
        self.precision.step(self.optimizer, take=finite)
        self.step += 1
        self.samples_seen += settings.batch_size
        ema_beta = 1.0
        if finite:
            if self.forced_weight_norm:
                renormalize_weights(self.denoiser)
            ema_beta = self.ema.decay(self.samples_seen, settings.batch_size)
            self.ema.update(self.denoiser, self.samples_seen, settings.batch_size)
            if self.posthoc_ema is not None:
                self.posthoc_ema.update(self.denoiser, self.step)
            self.nonfinite_in_a_row = 0
        else:
            self.skipped_steps += 1
            self.nonfinite_in_a_row += 1
            if self.nonfinite_in_a_row >= settings.max_nonfinite_steps:
                raise NonFiniteTrainingError(
                    f"training stopped at step {self.step}: {self.nonfinite_in_a_row} non-finite steps in a row "
                    f"(loss {loss}, gradient norm {grad_norm}; training.max_nonfinite_steps = "
                    f"{settings.max_nonfinite_steps}); the last checkpoint was left intact"
                )
        return StepRecord(
            step=self.step,
            loss=loss,
            learning_rate=learning_rate,
            grad_norm=grad_norm,
            per_sample=per_sample.cpu(),
            sigma=None if sigma is None else sigma.cpu(),
            skipped=not finite,
            ema_beta=ema_beta,
            samples=settings.batch_size,
            data_seconds=data_seconds,
            step_seconds=time.perf_counter() - started,
        )

    # -- state beyond the tensors ------------------------------------------------------------------------------
    def counters(self) -> dict[str, Any]:
        """JSON-able state that an exact resume needs besides the tensors (checkpoint sidecar ``trainer``)."""
        return {
            "samples_seen": self.samples_seen,
            "skipped_steps": self.skipped_steps,
            "nonfinite_in_a_row": self.nonfinite_in_a_row,
            "grad_scaler": self.precision.state_dict(),
            "world_size": self.distributed.world_size,
        }

    def load_counters(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`counters`' output (after :attr:`step`: checkpoints without ``samples_seen`` count
        ``step`` batches of the current size)."""
        self.samples_seen = int(state.get("samples_seen", self.step * self.settings.batch_size))
        self.skipped_steps = int(state.get("skipped_steps", 0))
        self.nonfinite_in_a_row = int(state.get("nonfinite_in_a_row", 0))
        self.precision.load_state_dict(state.get("grad_scaler"))

    # -- the loop ---------------------------------------------------------------------------------------------
    def run(
        self,
        steps: int | None = None,
        *,
        progress: bool = True,
        callback: Callable[[StepRecord], None] | None = None,
        description: str = "training",
    ) -> None:
        """Train until ``steps`` (default: settings.steps) optimiser steps have been taken in total.

        The progress bar (rank 0 only) shows the step, the loss, samples/s and the ETA. torch's CPU threads follow
        ``settings.threads`` (see :func:`~diffscale.threads.thread_policy`: ``auto`` re-chooses every few seconds
        from the load of other processes) and are restored afterwards.
        """
        target = self.settings.steps if steps is None else steps
        show = progress and self.distributed.is_main
        waited = [0.0, 0.0]  # seconds waiting for data, seconds of steps, since the bar was last updated
        with (
            thread_policy(self.settings.threads) as threads,
            tqdm(total=target, initial=self.step, desc=description, unit="step", disable=not show) as bar,
        ):
            while self.step < target:
                threads.tick()
                try:
                    record = self.train_step()
                except RuntimeError as error:  # a data loading worker may die during any step
                    raise data_loading_error(error, self.settings) from None
                waited[0] += record.data_seconds
                waited[1] += record.step_seconds
                if callback is not None:
                    callback(record)
                if show and (record.step % self.settings.log_every == 0 or record.step == target):
                    rate = bar.format_dict.get("rate")
                    postfix = {"loss": f"{record.loss:.4f}"}
                    if rate:
                        postfix["samples/s"] = f"{rate * self.settings.batch_size:.0f}"
                    if waited[1] > 0:
                        postfix["data wait"] = f"{waited[0] / waited[1]:.0%}"
                    waited[:] = [0.0, 0.0]
                    bar.set_postfix(postfix)
                bar.update(1)
