"""A trained run as a Python object: what ``diffscale.load_run(run_dir)`` returns.

>>> run = diffscale.load_run("runs/mixture_1d_edm")              # EMA weights, CUDA when available
>>> x = run.sample(1000, steps=40, seed=0)                        # (1000, *run.data_shape)
>>> report = run.likelihood(x[:100])                              # log p by the probability-flow ODE
>>> climate = diffscale.load_run("runs/era5_uk", device="cpu")
>>> ensemble = climate.downscale("coarse.nc", members=32, seed=0) # an xarray.Dataset, as `diffscale downscale` writes

Every kind of run loads the same way: a toy run (``data.kind`` mixture or gaussian_fields) is a :class:`Run`; a
climate run (``data.kind: climate``) is a :class:`ClimateRun`, diffusion or regression (``training.objective``).
Bad input raises :class:`~diffscale.validation.ConfigError` with one line naming the problem.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import safetensors.torch
import torch
from torch import nn

from diffscale.config import Config
from diffscale.config.climate import ClimateData
from diffscale.config.schema import stored_config
from diffscale.data.climate import ConditioningBuilder
from diffscale.data.climate.extrapolation import InputRange
from diffscale.denoiser import PreconditionedDenoiser
from diffscale.devices import check_device
from diffscale.formulations import Formulation
from diffscale.pretrained import resolve_run
from diffscale.runs.building import DataDistribution, build_distribution, build_model_for, is_climate, is_regression
from diffscale.runs.recalibration import Recalibration, load_recalibration
from diffscale.runs.stats import STATS_NAME, input_range_of, load_stats
from diffscale.sampling import SamplerSettings
from diffscale.threads import Threads
from diffscale.training.checkpoint import (
    EMA,
    SIDECAR_NAME,
    WEIGHTS,
    Checkpoint,
    is_sidecar_name,
    load_checkpoint,
    load_weights,
    read_safetensors,
)
from diffscale.validation import ConfigError, option_name

if TYPE_CHECKING:
    import xarray as xr

    from diffscale.runs.downscaling import CoarseInput, DownscalingJob
    from diffscale.runs.likelihood import LikelihoodReport

__all__ = [
    "EMA_VARIANTS_DIR",
    "ClimateRun",
    "RegressionFn",
    "Run",
    "WeightsChoice",
    "load_climate_run",
    "load_run",
]

WeightsChoice = str
"""``ema`` (the EMA weights, post-hoc ones once ``diffscale ema`` wrote them), ``raw``, or the name of a variant in
the run's ``ema_variants/`` folder (written by ``diffscale ema RUN --name NAME``)."""
EMA_VARIANTS_DIR = "ema_variants"
"""The folder of a run directory holding named post-hoc EMA variants (``<name>.safetensors``)."""
PICKLE_SUFFIXES = (".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".bin")
"""Suffixes of files that other frameworks save by pickling (never loaded)."""
RegressionFn = Any
"""R: conditioning (B, K, H, W) -> the normalised fine field predicted by a regression run (B, C, H, W)."""


@dataclass
class Run:
    """A trained run: its configuration and model (EMA weights by default), on ``device``, ready to use.

    Attributes:
        run_dir: the run directory.
        config: the configuration stored with the checkpoint.
        step: the checkpoint's training step.
        weights: ``ema`` or ``raw``.
        model: the network with its preconditioning: a :class:`~diffscale.PreconditionedDenoiser` D(x; sigma),
            or for a regression run the deterministic model mu(c).
        device: where the model lives.
        weights_sha256: the sha256 of the weights file (recorded in downscaled ensembles).
    """

    run_dir: Path
    config: Config
    step: int
    weights: WeightsChoice
    model: nn.Module
    device: torch.device
    weights_sha256: str
    _data: DataDistribution | None = field(default=None, repr=False)

    # -- what the run is -----------------------------------------------------------------------------------------
    @property
    def kind(self) -> str:
        """``mixture``, ``gaussian_fields``, ``climate`` (a diffusion model of climate fields) or ``regression``."""
        if is_regression(self.config):
            return "regression"
        return str(self.config.data.kind)

    @property
    def formulation(self) -> Formulation:
        """The run's formulation (its ``diffusion:`` section)."""
        if isinstance(self.model, PreconditionedDenoiser):
            return self.model.formulation
        return self.config.formulation()

    @property
    def denoiser(self) -> PreconditionedDenoiser:
        """D(x; sigma, **cond) = c_skip x + c_out F(c_in x; c_noise, cond) (ConfigError for a regression run)."""
        if not isinstance(self.model, PreconditionedDenoiser):
            raise ConfigError(f"'{self.run_dir}' is a regression run (deterministic): it has no denoiser; use .model")
        return self.model

    @property
    def data(self) -> DataDistribution:
        """The distribution the run was trained on (a Gaussian mixture or a Gaussian random field)."""
        if self._data is None:
            self._data = build_distribution(self.config)
        return self._data

    @property
    def mixture(self) -> DataDistribution:
        """The data distribution (name kept from when every run modelled a mixture)."""
        return self.data

    @property
    def data_shape(self) -> tuple[int, ...]:
        """Shape of one sample: (D,) for vectors, (C, H, W) for fields."""
        return self.config.data_shape()

    def sampler_settings(self, settings: SamplerSettings | None = None, **overrides: Any) -> SamplerSettings:
        """The run's ``sampling:`` section, or ``settings``, with ``overrides`` (``steps``, ``sampler``, ``s_churn``,
        ``s_min``, ``s_max``, ``s_noise``, ``schedule``; None keeps a key), validated like the configuration."""
        from diffscale.runs.sampling import sampler_settings

        return sampler_settings(self.config.sampling, settings, **overrides)

    # -- using it ----------------------------------------------------------------------------------------------
    def check_sampling(self) -> None:
        """ConfigError when the run cannot draw unconditional samples (a climate run needs coarse input)."""

    def check_likelihood(self) -> None:
        """ConfigError when the run has no unconditional likelihood (a climate run, a class-conditional run)."""
        if getattr(self.config.model, "label_dim", 0):
            raise ConfigError(
                f"'{self.run_dir}' is class-conditional: its likelihood would be conditional on the labels, which is "
                "not offered; likelihood takes mixture and Gaussian-field runs"
            )

    def sample(
        self,
        num: int,
        *,
        settings: SamplerSettings | None = None,
        steps: int | None = None,
        sampler: str | None = None,
        s_churn: float | None = None,
        s_min: float | None = None,
        s_max: float | None = None,
        s_noise: float | None = None,
        schedule: str | None = None,
        seed: int = 0,
        batch_size: int = 10_000,
        progress: bool = False,
        threads: Threads = "auto",
        labels: torch.Tensor | None = None,
        guidance: float = 1.0,
    ) -> torch.Tensor:
        """``num`` samples (float32, CPU; shape (num, *data_shape)) drawn with the run's sampler settings, or
        ``settings``, with any of the given keys overridden; the noise comes from one CPU generator seeded with
        ``seed`` (the same samples on CPU and GPU, to rounding). ``threads``: torch's CPU threads while sampling
        (``auto`` re-chooses them from the load of other processes, see :mod:`diffscale.threads`).

        A class-conditional run (``data.kind: images``) draws sample i of class ``labels[i]`` (``num`` class
        indices) with classifier-free guidance weight ``guidance`` (0: unconditional, 1: conditional, > 1:
        guided; w != 1 needs a run trained with ``model.label_dropout`` > 0). :meth:`sample_images` draws
        labelled grids of images."""
        from diffscale.runs.sampling import sample_run

        self.check_sampling()
        chosen = self.sampler_settings(
            settings,
            steps=steps,
            sampler=sampler,
            s_churn=s_churn,
            s_min=s_min,
            s_max=s_max,
            s_noise=s_noise,
            schedule=schedule,
        )
        return sample_run(
            self,
            num,
            chosen,
            seed=seed,
            batch_size=batch_size,
            progress=progress,
            threads=threads,
            labels=labels,
            guidance=guidance,
        )

    def sample_images(self, classes: Any = None, per_class: int = 8, guidance: Any = (1.0,), **options: Any) -> Any:
        """Images of ``classes`` (default: all), ``per_class`` each, for every guidance weight, as uint8 with their
        labels: an :class:`~diffscale.runs.images.ImageSamples` (``.figure()``, ``.save(path)``); ``options``:
        sampler settings, ``seed``, ``batch_size``, ``progress``, ``threads`` (see
        :func:`diffscale.runs.images.sample_images`)."""
        from diffscale.runs.images import sample_images

        return sample_images(self, classes, per_class, guidance, **options)

    def likelihood(self, data: torch.Tensor | int | str | Path, **options: Any) -> LikelihoodReport:
        """log p of ``data`` under the run by the probability-flow ODE (:func:`diffscale.runs.likelihood.likelihood`
        has the options: steps, solver, num_probes, probe, exact_trace, sigma_start, sigma_end,
        zero_noise_correction, seed, batch_size, progress). ``data``: samples (N, *data_shape), a samples file, or
        an integer N for N fresh draws of the run's own distribution."""
        from diffscale.runs.likelihood import likelihood

        self.check_likelihood()
        return likelihood(self, data, **options)


@dataclass
class ClimateRun(Run):
    """A trained climate run: a diffusion model of fine fields given coarse ones, or (``training.objective:
    regression``) the deterministic regression model mu(c). It samples only given coarse fields: :meth:`downscale`.

    Attributes (beside :class:`Run`'s):
        stats: the per-variable transform statistics saved with the run (``data_stats.json``).
        grid: the training grid (spacing, extent) saved with the run.
        input_range: the per-cell range of the training inputs, which downscaling measures its input against
            (:mod:`~diffscale.data.climate.extrapolation`); None for a run saved before it was recorded.
        recalibration: the spread recalibration fitted on held-out ensembles (:mod:`diffscale.runs.recalibration`,
            ``recalibration.json``), which downscaling applies; None when the run has none.
    """

    stats: dict[str, Any] = field(default_factory=dict)
    grid: dict[str, Any] = field(default_factory=dict)
    input_range: InputRange | None = None
    recalibration: Recalibration | None = None

    @property
    def deterministic(self) -> bool:
        """A regression run: one prediction, no ensemble."""
        return is_regression(self.config)

    @property
    def section(self) -> ClimateData:
        """The run's ``data:`` section."""
        return self.config.data

    @property
    def variables(self) -> list[str]:
        """The modelled variables, in channel order."""
        return list(self.section.variables)

    @property
    def data_shape(self) -> tuple[int, ...]:
        """Shape of one generated field: (C, H, W) of the training patch, else of the training grid."""
        return self.section.sample_shape() or (len(self.section.variables), self.grid["height"], self.grid["width"])

    @property
    def data(self) -> DataDistribution:
        raise ConfigError(
            f"'{self.run_dir}' is a climate run: its data are the files of data.paths "
            "(diffscale.data.climate.ClimateDataset(run.section, split, run.stats) reads them)"
        )

    def builder(self) -> ConditioningBuilder:
        """The conditioning builder of the run (its statistics; reads the static files)."""
        return ConditioningBuilder.from_section(self.section, self.stats)

    def regression_predictor(self) -> RegressionFn:
        """R(c): the normalised fine field T(y) this regression run predicts from the conditioning c.

        The regression model learnt the target of its own ``data.target``: T(y) itself (``fine``), or the residual
        over the upsampled coarse field U(T(x)) (``residual``), which is the first C channels of c.
        """
        if not self.deterministic:
            raise ConfigError(f"'{self.run_dir}' is not a regression run")
        channels = len(self.section.variables)
        target = self.section.target
        if target not in ("fine", "residual"):
            raise ConfigError(
                f"'{self.run_dir}': a regression run with data.target = {target!r} cannot serve as a base"
            )
        model, device = self.model, self.device

        def predict(cond_fields: torch.Tensor) -> torch.Tensor:
            cond_fields = cond_fields.to(device)
            prediction = model(cond_fields)
            return prediction + cond_fields[:, :channels] if target == "residual" else prediction

        return predict

    def base_run(self) -> ClimateRun | None:
        """The regression run whose prediction is the base of a CorrDiff run (``data.target:
        regression_residual``), on this run's device; None for other targets."""
        if self.section.target != "regression_residual":
            return None
        return load_climate_run(self.section.regression_run, device=str(self.device), key="data.regression_run")

    # -- sampling needs coarse fields ----------------------------------------------------------------------------
    def check_sampling(self) -> None:
        """Refused: a climate run generates fine fields given coarse ones (:meth:`downscale`)."""
        raise ConfigError(
            f"'{self.run_dir}' is a climate run: it samples fine fields given coarse ones; downscale coarse input "
            "instead (run.downscale(coarse) in Python, 'diffscale downscale RUN --input COARSE' on the command line)"
        )

    def check_likelihood(self) -> None:
        """Refused: the likelihood of a climate run would be conditional on coarse fields, which is not offered."""
        raise ConfigError(
            f"'{self.run_dir}' is a climate run: its likelihood would be conditional on coarse fields, which is not "
            "offered; likelihood takes mixture and Gaussian-field runs"
        )

    def coarsen(self, fine: CoarseInput, start: Any = None, end: Any = None) -> xr.Dataset:
        """The coarse input the run expects for fine fields on its grid (a Dataset, file or files): the run's crop
        (``data.crop``) and trimming (``data.remainder``; ``keep`` trims here), then the area-weighted block mean by
        the coarsening factor, as training built it from its fine fields; times between ``start`` and ``end``
        (inclusive), in the fine fields' calendar and time encoding (units, calendar), never converted. What the crop
        and the trimming remove is logged (WARNING, one line each)."""
        from diffscale.data.climate.calendars import time_encoding
        from diffscale.data.climate.grid import coarsen, grid_spacing
        from diffscale.data.climate.splits import log_grid_changes, model_grid
        from diffscale.runs.downscaling import coarse_fields

        fields, source = coarse_fields(fine, self.section.variables, start, end, what="fine")
        for axis in ("latitude", "longitude"):
            spacing, trained = (
                grid_spacing(fields[axis].values, f"{axis} of the fine fields"),
                self.grid[f"{axis}_spacing"],
            )
            if not np.isclose(abs(spacing), abs(trained), rtol=1e-4):
                raise ConfigError(
                    f"{option_name('fine')}: its {axis} spacing {abs(spacing):g} deg is not the training grid's "
                    f"{abs(trained):g} deg (give fine fields; coarse ones go to downscale)"
                )
        section = self.section
        if section.remainder == "keep":  # a model of windows: the fine fields still need whole blocks here
            section = section.model_copy(update={"remainder": "trim"})
        grid, trim = model_grid(fields, section)
        log_grid_changes(fields, section, trim, "coarsen")
        coarse = coarsen(grid, section.coarsen_factor)
        attributes = {
            "title": "coarse input",
            "source": f"{source}, coarsened {self.section.coarsen_factor}x by diffscale",
        }
        coarse = coarse.assign_attrs(attributes)
        encoding = time_encoding(fields["time"]) if "time" in fields.coords else None
        if encoding is not None and "time" in coarse.coords:  # the fine fields' time units and calendar, kept
            coarse["time"].encoding.update({"units": encoding.units, "calendar": encoding.calendar})
        return coarse

    def prepare_downscaling(self, coarse: CoarseInput, **options: Any) -> DownscalingJob:
        """Check everything and build the conditioning of ``coarse`` (nothing is sampled or written yet); see
        :class:`diffscale.runs.downscaling.DownscalingJob` for the options."""
        from diffscale.runs.downscaling import DownscalingJob

        return DownscalingJob.prepare(self, coarse, **options)

    def downscale(
        self,
        coarse: CoarseInput,
        members: int | None = None,
        *,
        out: str | Path | None = None,
        overwrite: bool = False,
        resume: bool = False,
        progress: bool = False,
        **options: Any,
    ) -> xr.Dataset:
        """An ensemble of fine fields for the coarse fields ``coarse`` (an ``xarray.Dataset``, a file, or a list of
        files), equal to what ``diffscale downscale`` writes: dims (member, time, latitude, longitude), physical
        units, CF attributes.

        Args:
            coarse: the coarse input (any layout :func:`diffscale.data.climate.harmonise` reads).
            members: ensemble size (default 16; 1 for a regression run).
            out: write the ensemble there (``.nc`` netCDF or ``.zarr`` store) block by block and return it opened
                lazily (dask-backed): use it for inputs whose ensemble does not fit in memory. Without ``out`` the
                ensemble is built in memory (refused, before any work, when it would take more than half the
                available memory).
            overwrite: replace an existing ``out`` (and any resumable state an interrupted run left for it).
            resume: continue an interrupted run into ``out`` from the blocks it wrote, bitwise as if it had not been
                interrupted (refused with one line when the run, input, seed or settings differ); without it, such a
                state is refused unless ``overwrite``. See :meth:`~diffscale.runs.downscaling.DownscalingJob.write`.
            progress: show a progress bar.
            **options: sampler settings (``steps``, ``sampler``, ``s_churn``, ``s_min``, ``s_max``, ``s_noise``,
                ``schedule`` or ``settings``), ``seed``, ``start``/``end`` (times to keep, inclusive: ISO text
                naming dates of the input's calendar, or dates), ``patch`` (H, W) and ``overlap``,
                ``member_batch``, ``batch_size``, ``threads`` (torch's CPU threads: ``auto``, the default,
                re-chooses from the load of other processes; a count fixes them), ``sort_ordered_pairs`` (tasmin
                <= tasmax at every point), ``recalibrate`` (apply the run's recalibration, when it has one; default
                True), ``regrid`` (a coarse input off the run's coarse lattice is regridded onto its coarse cells:
                ``conservative``, the default, or ``bilinear``; ``none`` refuses it), ``bias_adjust`` (``qm`` or
                ``qdm``) with ``bias_reference`` (START, END) (map the input, on the run's coarse lattice, onto the
                run's training coarse climatology first: :func:`diffscale.runs.bias_adjust`), ``time_correlation``
                (hours: each member a time series, its noise blended between calendar anchors every that many
                hours; 0, the default, samples every time independently): see
                :class:`~diffscale.runs.downscaling.DownscalingJob`.
        """
        job = self.prepare_downscaling(coarse, members=members, **options)
        return job.run(out=out, overwrite=overwrite, resume=resume, progress=progress)


def _weights_sha256(checkpoint: Checkpoint, part: str, state: dict[str, torch.Tensor]) -> str:
    """The sha256 of the weights file: recorded in the sidecar, else computed from the tensors."""
    recorded = (checkpoint.sidecar.get("files") or {}).get(part, {}).get("sha256")
    if isinstance(recorded, str) and recorded:
        return recorded
    tensors = {name: value.contiguous() for name, value in state.items()}
    return hashlib.sha256(safetensors.torch.save(tensors)).hexdigest()


def load_run(
    run_dir: str | Path, *, weights: WeightsChoice = "ema", device: str = "auto", key: str = "run directory"
) -> Run:
    """Load a run directory written by ``diffscale train`` (or :func:`diffscale.runs.train`).

    Args:
        run_dir: the run directory, or the name of a shipped pretrained model (``diffscale models``).
        weights: ``ema`` (the EMA-averaged weights, default), ``raw``, or the name of a post-hoc EMA variant of the
            run (``ema_variants/<name>.safetensors``).
        device: ``auto`` (CUDA when available), ``cpu``, ``cuda`` or ``cuda:N``.
        key: how messages name ``run_dir``.

    Returns:
        A :class:`ClimateRun` for climate runs, else a :class:`Run`.

    Raises:
        ConfigError: a missing run, a missing or corrupt checkpoint (CheckpointError), weights that do not fit the
            configured model, or a bad device.
    """
    torch_device = check_device(device, option_name("device"))
    run_dir = resolve_run(run_dir, key)
    source = run_dir
    if not run_dir.is_dir():
        if not is_sidecar_name(run_dir.name):
            pickled = "; pickled .pt/.pkl files are never loaded" if run_dir.suffix in PICKLE_SUFFIXES else ""
            raise ConfigError(
                f"{key} '{run_dir}' is not a directory (give the run directory written by 'diffscale train', or one "
                f"of its checkpoint sidecars){pickled}"
            )
        run_dir = run_dir.parent  # a checkpoint sidecar: that checkpoint of its run
    variant = None
    if weights not in ("ema", "raw"):
        variant = run_dir / EMA_VARIANTS_DIR / f"{weights}.safetensors"
        if "/" in str(weights) or not variant.is_file():
            folder = run_dir / EMA_VARIANTS_DIR
            names = sorted(path.stem for path in folder.glob("*.safetensors")) if folder.is_dir() else []
            raise ConfigError(f"{option_name('weights')} = {weights!r}: allowed: {', '.join(['ema', 'raw', *names])}")
    part = EMA if weights == "ema" else WEIGHTS
    checkpoint = load_checkpoint(source, parts=(part,) if variant is None else ())
    where = f"'{checkpoint.directory / SIDECAR_NAME}'"
    config = stored_config(checkpoint.config, where)
    if is_climate(config):  # file names stored relative (a shipped run's bundled statics) are the run's own files
        config = config.model_copy(update={"data": config.data.with_absolute_paths(run_dir)})
    if variant is not None:
        state = read_safetensors(variant)
        where = f"'{variant}'"
        sha256 = hashlib.sha256(variant.read_bytes()).hexdigest()
    else:
        state = checkpoint.ema_weights if weights == "ema" else checkpoint.weights
        if not state:
            raise ConfigError(f"{where}: holds no {weights} weights")
        sha256 = _weights_sha256(checkpoint, part, state)
    model = build_model_for(config)
    load_weights(model, state, where)
    model = model.to(torch_device).eval().requires_grad_(False)
    loaded: dict[str, Any] = {
        "run_dir": run_dir,
        "config": config,
        "step": checkpoint.step,
        "weights": weights,
        "model": model,
        "device": torch_device,
        "weights_sha256": sha256,
    }
    if not is_climate(config):
        return Run(**loaded)
    saved = load_stats(run_dir)
    if saved is None:
        raise ConfigError(f"{key} '{run_dir}' has no {STATS_NAME} (was it trained by this version of diffscale?)")
    return ClimateRun(
        **loaded,
        stats=saved["transforms"],
        grid=saved["grid"],
        input_range=input_range_of(saved),
        recalibration=load_recalibration(run_dir),
    )


def load_climate_run(
    run_dir: str | Path, *, weights: WeightsChoice = "ema", device: str = "auto", key: str = "run directory"
) -> ClimateRun:
    """:func:`load_run` for a run that must be a climate run (ConfigError naming ``key`` otherwise)."""
    run = load_run(run_dir, weights=weights, device=device, key=key)
    if not isinstance(run, ClimateRun):
        raise ConfigError(f"{key} '{run_dir}' is not a climate run (its data.kind is {run.config.data.kind!r})")
    return run
