"""The demo: one small model per formulation on the 1-D two-Gaussian mixture, sampled and scored.

For each formulation (VE, VP, EDM, iDDPM) an MLP denoiser D(x; sigma) is trained on
y ~ 0.5 N(-1, 0.25^2) + 0.5 N(1, 0.25^2) with the formulation's own noise law and loss weight, then
sampled with one formulation-independent deterministic sampler (Heun, N = 40 steps, NFE = 79,
S_churn = 0) from the same noise. The noise is stratified, n_i = Phi^-1((i + 1/2) / n): in 1-D the
probability-flow ODE is a monotone map, so its images are the quantiles of the sampled distribution and
the Wasserstein-1 distance has no Monte-Carlo floor (about 1e-4 here instead of about 1e-2 for random
noise); what it measures is the sampler's and the network's error alone. The demo writes to ``out_dir``:

* ``demo.png``: per formulation, the exact density of the forward process at several noise levels,
  p_t(x) = p(x / s(t); sigma(t)) / s(t) with x = s(t) (y + sigma(t) n), against histograms of the
  learned reverse process (the sampler's states x_i at the same t_i, from its callback);
* ``demo_table.md`` and ``demo_results.json``: the Wasserstein-1 distance between the samples and the
  exact mixture, for the trained model and for the exact denoiser D(x; sigma) = E[y | x] with the same
  sampler and noise (which isolates the solver's error from the network's), with NFE and training time;
* ``demo_downscaling.png``: a held-out UK day downscaled by the shipped model ``era5-uk-t2m``
  (:mod:`diffscale.demo_downscaling`; its scores and seconds go into ``demo_results.json`` too).

Run it with ``diffscale demo`` or :func:`run_demo`.
"""

from __future__ import annotations

import io
import json
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from diffscale.data.mixtures import GaussianMixture, two_gaussians_1d
from diffscale.demo_downscaling import DownscalingDemo, run_downscaling_demo
from diffscale.denoiser import PreconditionedDenoiser
from diffscale.evaluation.distances import component_weights, wasserstein1_to_cdf
from diffscale.evaluation.plots import DensityPanel, ProcessRow, forward_reverse_figure
from diffscale.files import check_output, write_together
from diffscale.formulations import Formulation, formulation
from diffscale.networks.mlp import MLP
from diffscale.sampling import SamplerSettings, SamplerStep, number_of_evaluations, sample
from diffscale.threads import single_thread
from diffscale.training import Trainer, TrainingSettings
from diffscale.validation import ConfigError, option_name

__all__ = [
    "DEMO_SAMPLER",
    "FORMULATION_NAMES",
    "PANEL_SIGMAS",
    "DemoResult",
    "DemoRow",
    "ToyModel",
    "format_table",
    "make_formulation",
    "run_demo",
    "single_thread",
    "stratified_normal_noise",
    "train_toy_denoiser",
]

FORMULATION_NAMES: tuple[str, ...] = ("VE", "VP", "EDM", "iDDPM")
DEMO_SAMPLER = SamplerSettings(steps=40, solver="heun")
"""Heun, N = 40 (NFE 79), deterministic: small solver error for every formulation's own time grid."""
PANEL_SIGMAS: tuple[float, ...] = (0.0, 0.25, 0.6, 1.5, 5.0, math.inf)
"""Target noise levels of the figure's columns; each panel uses the nearest sigma(t_i) of the sampler's
grid (0: the samples, inf: the starting noise at sigma(t_0))."""
NUM_SAMPLES = 5_000
FIGURE_DPI = 130
"""Number of samples per formulation, drawn from stratified noise (see :func:`stratified_normal_noise`)."""


@dataclass(frozen=True)
class ToyModel:
    """A trained toy denoiser: the EMA weights wrapped in the formulation's preconditioning."""

    formulation: Formulation
    denoiser: nn.Module
    train_seconds: float
    train_steps: int


@dataclass(frozen=True)
class DemoRow:
    """Scores of one formulation. W1 is the Wasserstein-1 distance to the exact mixture (lower is better)."""

    formulation: str
    w1_trained: float
    w1_ideal: float
    mode_weights: tuple[float, ...]
    nfe: int
    train_seconds: float
    sample_seconds: float


@dataclass(frozen=True)
class DemoResult:
    """What :func:`run_demo` produced: one row per formulation and the files written."""

    rows: tuple[DemoRow, ...]
    figure: Path
    table: Path
    results: Path
    seconds: float
    downscaling: DownscalingDemo | None = None


def stratified_normal_noise(n: int, *, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """The quantiles Phi^-1((i + 1/2) / n), i = 0..n-1, of N(0, 1), shape (n, 1): noise without sampling error."""
    if n < 1:
        raise ValueError(f"n = {n}: must be >= 1")
    u = (torch.arange(n, dtype=torch.float64) + 0.5) / n
    return (math.sqrt(2.0) * torch.erfinv(2.0 * u - 1.0)).to(dtype)[:, None]


def make_formulation(name: str, mixture: GaussianMixture) -> Formulation:
    """The formulation ``name`` with its defaults; EDM gets sigma_data = the mixture's standard deviation."""
    if name.lower() == "edm":
        return formulation(name, sigma_data=mixture.std)
    return formulation(name)


def train_toy_denoiser(
    name: str,
    mixture: GaussianMixture,
    *,
    steps: int = 2000,
    seed: int = 0,
    batch_size: int = 512,
    progress: bool = False,
) -> ToyModel:
    """Train an MLP denoiser for formulation ``name`` on samples of ``mixture``.

    D(x; sigma) = c_skip x + c_out F(c_in x; c_noise) with F = :class:`~diffscale.networks.MLP` (width 128,
    depth 3), minimising E[lambda(sigma) |D(y + sigma n; sigma) - y|^2] with the formulation's sigma law
    (Adam, default :class:`~diffscale.training.TrainingSettings` apart from ``steps``, ``batch_size``
    and ``seed``). Returns the EMA denoiser in eval mode.
    """
    f = make_formulation(name, mixture)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        network = MLP(mixture.dims)
    settings = TrainingSettings(steps=steps, batch_size=batch_size, seed=seed, device="cpu")
    trainer = Trainer(PreconditionedDenoiser(network, f), lambda n, g: mixture.sample(n, g), settings)
    start = time.perf_counter()
    with single_thread():
        trainer.run(progress=progress, description=f"training {f.name:<5}")
    seconds = time.perf_counter() - start
    return ToyModel(formulation=f, denoiser=trainer.ema_denoiser.eval(), train_seconds=seconds, train_steps=steps)


class _StateRecorder:
    """Sampler callback that keeps the states x_i (at t_i) for the wanted step indices i."""

    def __init__(self, indices: Sequence[int], initial: torch.Tensor) -> None:
        self.wanted = set(indices)
        self.states: dict[int, torch.Tensor] = {0: initial.clone()}

    def __call__(self, step: SamplerStep) -> None:
        if step.index + 1 in self.wanted:
            self.states[step.index + 1] = step.x.clone()


def _panel_indices(sigmas: Sequence[float], targets: Sequence[float]) -> list[int]:
    """For each target, the index of the nearest sigma (in log space; 0 -> last, inf -> first)."""
    positive = np.array([s for s in sigmas if s > 0])
    indices = []
    for target in targets:
        if target == 0:
            indices.append(len(sigmas) - 1)
        elif math.isinf(target):
            indices.append(0)
        else:
            indices.append(int(np.argmin(np.abs(np.log(positive) - math.log(target)))))
    return indices


def _forward_panel(
    mixture: GaussianMixture, f: Formulation, t: torch.Tensor, states: torch.Tensor, grid_points: int = 400
) -> DensityPanel:
    """Exact p_t(x) = p(x / s(t); sigma(t)) / s(t) next to the reverse-process states at the same t."""
    sigma, scale = float(f.sigma(t)), float(f.scale(t))
    spread = scale * math.sqrt(float(mixture.stds.max()) ** 2 + float(mixture.means.abs().max()) ** 2 + sigma**2)
    half_width = 3.6 * spread
    grid = torch.linspace(-half_width, half_width, grid_points, dtype=torch.float64)
    density = mixture.log_prob((grid / scale)[:, None], sigma).exp() / scale
    return DensityPanel(
        sigma=sigma, t=float(t), grid=grid.numpy(), density=density.numpy(), samples=states[:, 0].double().numpy()
    )


def format_table(rows: Sequence[DemoRow], *, sampler: SamplerSettings = DEMO_SAMPLER, train_steps: int) -> str:
    """A Markdown table of the demo's scores."""
    lines = [
        f"Wasserstein-1 distance to the exact mixture 0.5 N(-1, 0.25^2) + 0.5 N(1, 0.25^2) "
        f"({NUM_SAMPLES} samples from stratified noise, {sampler.solver.capitalize()} {sampler.steps} steps, "
        f"deterministic; MLP trained {train_steps} steps)",
        "",
        "| formulation | W1 trained | W1 exact denoiser | mode weights (exact 0.50/0.50) | NFE | training s |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        weights = "/".join(f"{w:.3f}" for w in row.mode_weights)
        lines.append(
            f"| {row.formulation} | {row.w1_trained:.4f} | {row.w1_ideal:.4f} | {weights} | {row.nfe} "
            f"| {row.train_seconds:.1f} |"
        )
    return "\n".join(lines) + "\n"


def run_demo(
    out_dir: Path, *, train_steps: int = 2000, progress: bool = True, seed: int = 0, downscaling: bool = True
) -> DemoResult:
    """Train, sample and score one toy model per formulation; write the figure and the table into ``out_dir``;
    then (``downscaling``) downscale a held-out UK day with the shipped model (``demo_downscaling.png``).

    Args:
        out_dir: output folder (created if missing); receives ``demo.png``, ``demo_table.md``,
            ``demo_results.json`` and ``demo_downscaling.png``.
        train_steps: optimiser steps per formulation (2000: about 20 s of one CPU core each).
        progress: show progress bars (overall and per training run). The table is always printed.
        downscaling: also run :func:`~diffscale.demo_downscaling.run_downscaling_demo`.

    Raises:
        ValueError: (a :class:`~diffscale.validation.ConfigError`) for ``train_steps`` < 1; nothing is written.
        seed: seed of the network initialisation and the training data (the sampling noise is stratified).
    """
    if isinstance(train_steps, bool) or not isinstance(train_steps, int) or train_steps < 1:
        raise ConfigError(f"train_steps = {train_steps!r}: must be an integer >= 1")
    out_dir = check_output(out_dir, option_name("out"), directory=True)  # before any work
    start = time.perf_counter()
    mixture = two_gaussians_1d()
    noise = stratified_normal_noise(NUM_SAMPLES)
    sampler = DEMO_SAMPLER.model_dump()
    nfe = number_of_evaluations(DEMO_SAMPLER.steps, DEMO_SAMPLER.solver)

    rows: list[DemoRow] = []
    figure_rows: list[ProcessRow] = []
    overall = tqdm(FORMULATION_NAMES, desc="demo", unit="formulation", disable=not progress)
    for name in overall:
        overall.set_postfix_str(name)
        model = train_toy_denoiser(name, mixture, steps=train_steps, seed=seed, progress=progress)
        f = model.formulation
        t_steps = f.time_steps(DEMO_SAMPLER.steps)
        indices = _panel_indices([float(s) for s in f.sigma(t_steps)], PANEL_SIGMAS)
        recorder = _StateRecorder(indices, initial=noise * (f.sigma(t_steps[0]) * f.scale(t_steps[0])))
        sample_start = time.perf_counter()
        with single_thread():
            samples = sample(model.denoiser, noise, f, **sampler, callback=recorder)
            sample_seconds = time.perf_counter() - sample_start
            ideal = sample(mixture.ideal_denoiser, noise, f, **sampler)
        rows.append(
            DemoRow(
                formulation=f.name,
                w1_trained=wasserstein1_to_cdf(samples, mixture.cdf),
                w1_ideal=wasserstein1_to_cdf(ideal, mixture.cdf),
                mode_weights=tuple(float(w) for w in component_weights(samples, mixture.means, mixture.stds)),
                nfe=nfe,
                train_seconds=model.train_seconds,
                sample_seconds=sample_seconds,
            )
        )
        panels = [_forward_panel(mixture, f, t_steps[i], recorder.states[i]) for i in indices]
        panels[0] = replace(panels[0], note=f"W1 {rows[-1].w1_trained:.3f}\n(exact D: {rows[-1].w1_ideal:.3f})")
        figure_rows.append(ProcessRow(label=f.name, panels=panels))
    overall.close()

    figure = forward_reverse_figure(
        figure_rows,
        title=(
            "Forward process (exact density) and learned reverse process (histograms) on a two-Gaussian mixture\n"
            f"{DEMO_SAMPLER.solver.capitalize()} sampler, {DEMO_SAMPLER.steps} steps, NFE {nfe}; "
            f"MLP trained {train_steps} steps per formulation"
        ),
        column_titles=[_column_title(s) for s in PANEL_SIGMAS],
    )
    table = format_table(rows, train_steps=train_steps)
    downscaled = run_downscaling_demo(out_dir, progress=progress) if downscaling else None
    figure_path, table_path, results_path = (
        out_dir / "demo.png",
        out_dir / "demo_table.md",
        out_dir / "demo_results.json",
    )
    seconds = time.perf_counter() - start
    results = {
        "mixture": repr(mixture),
        "sampler": {key: _json_safe(value) for key, value in sampler.items()} | {"nfe": nfe},
        "num_samples": NUM_SAMPLES,
        "train_steps": train_steps,
        "seed": seed,
        "seconds": seconds,
        "rows": [asdict(row) for row in rows],
    }
    if downscaled is not None:
        results["downscaling"] = asdict(downscaled) | {"figure": str(downscaled.figure)}
    image = io.BytesIO()
    figure.savefig(image, format="png", dpi=FIGURE_DPI)
    write_together(
        {
            figure_path: image.getvalue(),
            table_path: table.encode("utf-8"),
            results_path: (json.dumps(results, indent=2, allow_nan=False) + "\n").encode("utf-8"),
        }
    )
    print(table)
    if progress:
        print(f"wrote {figure_path}, {table_path}, {results_path} in {seconds:.0f} s")
    return DemoResult(
        rows=tuple(rows),
        figure=figure_path,
        table=table_path,
        results=results_path,
        seconds=seconds,
        downscaling=downscaled,
    )


def _column_title(sigma: float) -> str:
    if sigma == 0:
        return "σ = 0 (samples)"
    if math.isinf(sigma):
        return "σ = σ_max (noise)"
    return f"σ ≈ {sigma:g}"


def _json_safe(value: object) -> object:
    """Non-finite floats (s_max = inf) as strings, so the file is strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value
