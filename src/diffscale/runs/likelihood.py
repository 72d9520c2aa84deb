"""The log-likelihood of data under a loaded run: the probability-flow ODE integrated in batches
(:func:`diffscale.evaluation.likelihood.log_likelihood`), summarised as means and standard errors, with the exact
values alongside when the run's data law is known (a Gaussian mixture or a Gaussian random field).

>>> report = run.likelihood(2000, steps=64)              # 2000 fresh draws of the run's own distribution
>>> report.summary()["log_likelihood"]                   # {'mean': ..., 'stderr': ...} in nats per sample
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from tqdm.auto import tqdm

from diffscale.data.fields import GaussianRandomField
from diffscale.data.mixtures import GaussianMixture
from diffscale.data.samples_io import read_samples
from diffscale.evaluation.likelihood import (
    PROBE_KINDS,
    SOLVERS,
    LikelihoodResult,
    ProbeKind,
    SolverName,
    bits_per_dim,
    log_likelihood,
    number_of_evaluations,
)
from diffscale.evaluation.threads import single_thread
from diffscale.validation import ConfigError, option_name

if TYPE_CHECKING:
    from diffscale.runs.run import Run

__all__ = [
    "LikelihoodReport",
    "LikelihoodSettings",
    "evaluate_run",
    "likelihood",
    "likelihood_data",
    "mean_and_stderr",
]


def likelihood_data(run: Run, data: torch.Tensor | int | str | Path, seed: int = 0) -> torch.Tensor:
    """The data to evaluate, float64 on the CPU, checked against the run's sample shape ((D,) or (C, H, W)):
    ``data`` itself (samples (N, ...)), the samples of a ``.npy``/``.csv``/``.safetensors`` file, or for an integer
    N that many fresh draws of the run's own distribution (seeded by ``seed``)."""
    shape = tuple(run.data_shape)
    where = f"{option_name('data')} = "
    if isinstance(data, bool):
        raise ConfigError(f"{where}{data!r}: expected samples, a samples file or a number of draws")
    if isinstance(data, int):
        if data < 1:
            raise ConfigError(f"{where}{data}: the number of draws must be >= 1")
        return run.data.sample(data, torch.Generator().manual_seed(seed), dtype=torch.float64)
    if isinstance(data, str | Path):
        path = Path(data)
        if not path.is_file():
            raise ConfigError(f"{where}'{path}': file not found")
        samples = read_samples(path, option_name("data"))
        label = f"'{path}'"
    else:
        samples = torch.as_tensor(data).detach().to("cpu", torch.float64)
        if samples.ndim == len(shape):  # one sample
            samples = samples[None]
        if not torch.isfinite(samples).all():
            raise ConfigError(f"{where}a tensor with non-finite values: samples must be finite")
        label = "the given tensor"
    if tuple(samples.shape[1:]) != shape:
        raise ConfigError(
            f"{where}{label}: samples have shape {tuple(samples.shape)}; the run models data of shape "
            f"(N, {', '.join(map(str, shape))})"
        )
    return samples


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

    def check(self, run: Run) -> tuple[float, float]:
        """(sigma_0, sigma_max) for ``run``; ConfigError for settings that cannot run."""
        if self.solver not in SOLVERS:
            raise ConfigError(f"{option_name('solver')} = {self.solver!r}: allowed: {', '.join(SOLVERS)}")
        if self.probe not in PROBE_KINDS:
            raise ConfigError(f"{option_name('probe')} = {self.probe!r}: allowed: {', '.join(PROBE_KINDS)}")
        for name in ("steps", "num_probes"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{option_name(name)} = {value!r}: must be an integer >= 1")
        sigma_0 = run.formulation.sigma_min if self.sigma_start is None else self.sigma_start
        sigma_max = run.formulation.sigma_max if self.sigma_end is None else self.sigma_end
        if not (math.isfinite(sigma_0) and math.isfinite(sigma_max) and 0 < sigma_0 < sigma_max):
            start, end = option_name("sigma_start"), option_name("sigma_end")
            raise ConfigError(f"{start} = {sigma_0:g}, {end} = {sigma_max:g}: need 0 < {start} < {end} < inf")
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
    run: Run,
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
        raise ConfigError(f"{option_name('batch_size')} = {batch_size}: must be >= 1")
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


def likelihood(
    run: Run,
    data: torch.Tensor | int | str | Path,
    *,
    steps: int = 64,
    solver: SolverName = "rk4",
    num_probes: int = 1,
    probe: ProbeKind = "rademacher",
    exact_trace: bool = False,
    sigma_start: float | None = None,
    sigma_end: float | None = None,
    zero_noise_correction: bool = False,
    seed: int = 0,
    batch_size: int = 1000,
    progress: bool = False,
) -> LikelihoodReport:
    """log p(x; sigma_start) of every sample of ``data`` under ``run`` (see :func:`likelihood_data` for ``data``
    and :class:`LikelihoodSettings` for the ODE and trace-estimator options); probes and fresh draws from ``seed``.
    """
    run.check_likelihood()
    settings = LikelihoodSettings(
        steps=steps,
        solver=solver,
        num_probes=num_probes,
        probe=probe,
        exact_trace=exact_trace,
        sigma_start=sigma_start,
        sigma_end=sigma_end,
        zero_noise_correction=zero_noise_correction,
    )
    settings.check(run)  # before reading or drawing any data
    samples = likelihood_data(run, data, seed)
    return evaluate_run(run, samples, settings, batch_size=batch_size, seed=seed, progress=progress)
