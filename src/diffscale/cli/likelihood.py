"""The ``diffscale likelihood`` command's work: read data, evaluate a run's probability-flow log-likelihood
in batches (:func:`diffscale.evaluation.likelihood.log_likelihood`), summarise and write the results.

It belongs to the bottom layer (config, cli): it joins a loaded run and data files to the evaluation layer.
"""

from __future__ import annotations

import io
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import safetensors
import safetensors.torch
import torch
from tqdm.auto import tqdm

from diffscale.cli.runs import LoadedRun
from diffscale.cli.samples_io import SAMPLE_FORMATS, SAMPLES_KEY
from diffscale.data.fields import GaussianRandomField
from diffscale.data.mixtures import GaussianMixture
from diffscale.evaluation.likelihood import (
    SOLVERS,
    LikelihoodResult,
    ProbeKind,
    SolverName,
    bits_per_dim,
    log_likelihood,
    number_of_evaluations,
)
from diffscale.evaluation.threads import single_thread
from diffscale.training.checkpoint import atomic_write_bytes
from diffscale.validation import ConfigError

__all__ = [
    "DataSpec",
    "LikelihoodReport",
    "LikelihoodSettings",
    "check_json_path",
    "evaluate_run",
    "load_data",
    "mean_and_stderr",
    "parse_data_spec",
    "read_samples",
    "write_results",
]

_MIXTURE_SPEC = re.compile(r"^mixture:(\d+)$")


@dataclass(frozen=True)
class DataSpec:
    """What ``--data`` names: a samples file, or ``count`` fresh draws of the run's own mixture."""

    text: str
    path: Path | None = None
    count: int | None = None


def parse_data_spec(text: str) -> DataSpec:
    """``mixture:N`` (N >= 1) or a ``.npy``/``.csv``/``.safetensors`` file; ConfigError otherwise."""
    if text.startswith("mixture:"):
        match = _MIXTURE_SPEC.match(text)
        if match is None or int(match.group(1)) < 1:
            raise ConfigError(f"--data = {text!r}: expected mixture:N with an integer N >= 1")
        return DataSpec(text=text, count=int(match.group(1)))
    path = Path(text)
    if path.suffix.lower() not in SAMPLE_FORMATS:
        raise ConfigError(
            f"--data = '{path}': unknown data file type {path.suffix or '(none)'!r}; "
            f"allowed: {', '.join(SAMPLE_FORMATS)} or mixture:N"
        )
    if not path.is_file():
        raise ConfigError(f"--data = '{path}': file not found")
    return DataSpec(text=text, path=path)


def _read_csv(path: Path) -> np.ndarray:
    text = path.read_text(encoding="utf-8")
    lines = text.splitlines()
    first = lines[0] if lines else ""
    try:
        [float(value) for value in first.split(",")]
        skip = 0
    except ValueError:
        skip = 1  # a header such as "x0,x1" (as written by 'diffscale sample')
    return np.loadtxt(io.StringIO(text), delimiter=",", skiprows=skip, ndmin=2, dtype=np.float64)


def _read_safetensors(path: Path) -> np.ndarray:
    tensors = safetensors.torch.load_file(str(path))
    if SAMPLES_KEY in tensors:
        return tensors[SAMPLES_KEY].to(torch.float64).numpy()
    if len(tensors) == 1:
        return next(iter(tensors.values())).to(torch.float64).numpy()
    raise ValueError(f"holds tensors {sorted(tensors)} but none called {SAMPLES_KEY!r}")


def read_samples(path: str | Path, option: str = "--data") -> torch.Tensor:
    """Samples of shape (N, ...) as float64 from a ``.npy``, ``.csv`` (optional header line) or ``.safetensors``
    file (tensor ``samples``, or its only tensor); 1-D arrays are read as (N, 1). ConfigError for unreadable files.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    try:
        if suffix == ".npy":
            array = np.load(path, allow_pickle=False)
        elif suffix == ".csv":
            array = _read_csv(path)
        elif suffix == ".safetensors":
            array = _read_safetensors(path)
        else:
            raise ValueError(f"unknown file type {suffix!r}; allowed: {', '.join(SAMPLE_FORMATS)}")
        array = np.asarray(array, dtype=np.float64)
    except (OSError, ValueError, safetensors.SafetensorError) as error:
        raise ConfigError(f"{option} = '{path}': cannot read samples: {error}") from None
    if array.ndim == 1:
        array = array[:, None]
    if array.ndim < 2 or array.shape[0] == 0:
        raise ConfigError(f"{option} = '{path}': expected samples of shape (N, D) with N >= 1, got {array.shape}")
    if not np.isfinite(array).all():
        raise ConfigError(f"{option} = '{path}': samples must be finite")
    return torch.from_numpy(np.ascontiguousarray(array))


def load_data(
    spec: DataSpec, source: GaussianMixture | GaussianRandomField, shape: tuple[int, ...], seed: int
) -> torch.Tensor:
    """The data ``spec`` names, float64 on the CPU, checked against the run's sample shape ((D,) or (C, H, W))."""
    if spec.count is not None:
        return source.sample(spec.count, torch.Generator().manual_seed(seed), dtype=torch.float64)
    assert spec.path is not None
    data = read_samples(spec.path)
    if tuple(data.shape[1:]) != tuple(shape):
        raise ConfigError(
            f"--data = '{spec.path}': samples have shape {tuple(data.shape)}; the run models data of shape "
            f"(N, {', '.join(map(str, shape))})"
        )
    return data


def check_json_path(path: str | Path, option: str = "--out") -> Path:
    """``path`` if it ends in ``.json`` and is not a directory; ConfigError otherwise."""
    path = Path(path)
    if path.suffix.lower() != ".json":
        raise ConfigError(f"{option} = '{path}': results are written as JSON; give a file name ending in .json")
    if path.is_dir():
        raise ConfigError(f"{option} = '{path}': is a directory; give a file name")
    return path


def mean_and_stderr(values: torch.Tensor) -> tuple[float, float]:
    """Sample mean and its standard error std / sqrt(N) (0 for a single value)."""
    values = values.to(torch.float64).reshape(-1)
    count = values.numel()
    std = float(values.std(unbiased=True)) if count > 1 else 0.0
    return float(values.mean()), std / math.sqrt(count)


@dataclass(frozen=True)
class LikelihoodSettings:
    """The ODE and trace-estimator settings of one evaluation (see :func:`log_likelihood`)."""

    steps: int = 64
    solver: SolverName = "rk4"
    num_probes: int = 1
    probe: ProbeKind = "rademacher"
    exact_trace: bool = False
    sigma_start: float | None = None
    sigma_end: float | None = None
    zero_noise_correction: bool = False

    def check(self, run: LoadedRun) -> tuple[float, float]:
        """(sigma_0, sigma_max) for ``run``; ConfigError for settings that cannot run."""
        if self.solver not in SOLVERS:
            raise ConfigError(f"--solver = {self.solver!r}: allowed: {', '.join(SOLVERS)}")
        sigma_0 = run.formulation.sigma_min if self.sigma_start is None else self.sigma_start
        sigma_max = run.formulation.sigma_max if self.sigma_end is None else self.sigma_end
        if not (math.isfinite(sigma_0) and math.isfinite(sigma_max) and 0 < sigma_0 < sigma_max):
            raise ConfigError(
                f"--sigma-start = {sigma_0:g}, --sigma-end = {sigma_max:g}: need 0 < sigma-start < sigma-end < inf"
            )
        return float(sigma_0), float(sigma_max)

    def describe(self) -> str:
        """One line: solver, steps, evaluations per sample and trace estimator."""
        trace = "exact trace" if self.exact_trace else f"Hutchinson trace, {self.num_probes} {self.probe} probe(s)"
        nfe = number_of_evaluations(self.steps, self.solver)
        return f"{self.solver}, {self.steps} steps in ln sigma ({nfe} evaluations per sample), {trace}"


@dataclass(frozen=True)
class LikelihoodReport:
    """Per-sample results of a run on some data, with the exact values when the data law is known."""

    log_likelihood: torch.Tensor
    dims: int
    sigma_start: float
    sigma_end: float
    evaluations: int
    exact_log_likelihood: torch.Tensor | None
    exact_log_likelihood_at_sigma_start: torch.Tensor | None

    def summary(self) -> dict[str, Any]:
        """Means and standard errors (nats and bits per dimension) as plain JSON-ready values."""
        mean, stderr = mean_and_stderr(self.log_likelihood)
        result: dict[str, Any] = {
            "num_samples": int(self.log_likelihood.numel()),
            "dims": self.dims,
            "sigma_start": self.sigma_start,
            "sigma_end": self.sigma_end,
            "evaluations_per_sample": self.evaluations,
            "log_likelihood": {"mean": mean, "stderr": stderr},
            "bits_per_dim": {"mean": bits_per_dim(mean, self.dims), "stderr": stderr / (self.dims * math.log(2.0))},
            "exact": None,
        }
        if self.exact_log_likelihood is not None and self.exact_log_likelihood_at_sigma_start is not None:
            exact_mean, exact_stderr = mean_and_stderr(self.exact_log_likelihood)
            noisy_mean, noisy_stderr = mean_and_stderr(self.exact_log_likelihood_at_sigma_start)
            gap_mean, gap_stderr = mean_and_stderr(self.log_likelihood - self.exact_log_likelihood)
            result["exact"] = {
                "log_likelihood": {"mean": exact_mean, "stderr": exact_stderr},
                "bits_per_dim": {
                    "mean": bits_per_dim(exact_mean, self.dims),
                    "stderr": exact_stderr / (self.dims * math.log(2.0)),
                },
                "log_likelihood_at_sigma_start": {"mean": noisy_mean, "stderr": noisy_stderr},
                "model_minus_exact": {"mean": gap_mean, "stderr": gap_stderr},
            }
        return result


def evaluate_run(
    run: LoadedRun,
    data: torch.Tensor,
    settings: LikelihoodSettings,
    *,
    batch_size: int = 1000,
    seed: int = 0,
    progress: bool = False,
) -> LikelihoodReport:
    """Log-likelihood (nats) of every row of ``data`` under ``run``, in batches; probes drawn from ``seed``.

    The ODE state is float64 on the run's device (the network runs in its own dtype). The exact values are
    those of the run's data distribution (a mixture or a Gaussian field): log p_data(x) and log p(x; sigma_0),
    the noisy density the ODE estimates.
    """
    sigma_0, sigma_max = settings.check(run)
    if batch_size < 1:
        raise ConfigError(f"--batch-size = {batch_size}: must be >= 1")
    generator = torch.Generator(run.device).manual_seed(seed)
    chunks: list[torch.Tensor] = []
    result: LikelihoodResult | None = None
    with single_thread(), tqdm(total=data.shape[0], desc="likelihood", unit="sample", disable=not progress) as bar:
        for start in range(0, data.shape[0], batch_size):
            batch = data[start : start + batch_size].to(run.device, torch.float64)
            result = log_likelihood(
                run.denoiser,
                batch,
                run.formulation,
                steps=settings.steps,
                solver=settings.solver,
                num_probes=settings.num_probes,
                probe=settings.probe,
                exact_trace=settings.exact_trace,
                sigma_start=sigma_0,
                sigma_end=sigma_max,
                zero_noise_correction=settings.zero_noise_correction,
                generator=generator,
            )
            chunks.append(result.log_likelihood.cpu())
            bar.update(batch.shape[0])
    assert result is not None
    exact = exact_noisy = None
    if isinstance(run.data, GaussianMixture | GaussianRandomField):  # known densities
        exact = run.data.log_prob(data, 0.0)
        exact_noisy = run.data.log_prob(data, sigma_0)
    return LikelihoodReport(
        log_likelihood=torch.cat(chunks),
        dims=result.dims,
        sigma_start=sigma_0,
        sigma_end=sigma_max,
        evaluations=result.evaluations,
        exact_log_likelihood=exact,
        exact_log_likelihood_at_sigma_start=exact_noisy,
    )


def write_results(path: Path, document: dict[str, Any]) -> Path:
    """Write ``document`` as indented JSON, atomically; create parent folders."""
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, (json.dumps(document, indent=2) + "\n").encode("utf-8"))
    return path
