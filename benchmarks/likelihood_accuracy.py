"""Accuracy of the probability-flow log-likelihood (diffscale.evaluation.likelihood) on Gaussian mixtures, whose
denoiser and noisy densities are exact, so only the method's own errors remain.

Prints four tables:
  1. ODE error against steps (rk4, heun): |log-likelihood - log p(x; sigma_0)| with the exact prior at sigma_max;
  2. every formulation over its own sigma range: ODE error, the gap log p(x; sigma_0) - log p(x; 0), the
     zero-noise-corrected error and the Gaussian prior's error;
  3. Hutchinson probes against the exact trace: bias (with its standard error) and per-sample spread;
  4. the error of the prior N(0, sigma_max^2 I) at sigma_max = 80 for mixtures with mean offsets.

    python benchmarks/likelihood_accuracy.py
"""

from __future__ import annotations

import math
import time

import torch

import diffscale
from diffscale.data import GaussianMixture, ring_2d, two_gaussians_1d
from diffscale.evaluation import single_thread
from diffscale.evaluation.likelihood import gaussian_prior_log_prob, log_likelihood

MIXTURES = {"1d two Gaussians": two_gaussians_1d(), "2d ring (8 modes)": ring_2d()}


def data(mixture: GaussianMixture, n: int, seed: int = 0) -> torch.Tensor:
    return mixture.sample(n, torch.Generator().manual_seed(seed), dtype=torch.float64)


def exact_prior(mixture: GaussianMixture):
    return lambda x_hat, sigma_max: mixture.log_prob(x_hat, sigma_max)


def steps_table(n: int = 500) -> None:
    print("\n1. ODE error vs steps, EDM range [0.002, 80], exact trace, exact prior: mean / max |error| (nats)")
    print(f"{'mixture':<20}{'solver':<7}{'steps':>6}{'NFE':>6}{'mean':>11}{'max':>11}{'seconds':>9}")
    edm = diffscale.formulation("EDM")
    for label, mixture in MIXTURES.items():
        x = data(mixture, n)
        exact = mixture.log_prob(x, edm.sigma_min)
        for solver in ("rk4", "heun"):
            for steps in (8, 16, 32, 64, 128):
                start = time.perf_counter()
                result = log_likelihood(
                    mixture.ideal_denoiser,
                    x,
                    edm,
                    steps=steps,
                    solver=solver,
                    exact_trace=True,
                    prior_log_prob=exact_prior(mixture),
                )
                seconds = time.perf_counter() - start
                error = (result.log_likelihood - exact).abs()
                print(
                    f"{label:<20}{solver:<7}{steps:>6}{result.evaluations:>6}{float(error.mean()):>11.2e}"
                    f"{float(error.max()):>11.2e}{seconds:>9.2f}"
                )


def formulations_table(n: int = 500, steps: int = 64) -> None:
    print(f"\n2. Formulations over their own sigma range, rk4 {steps} steps, exact trace; mean |error| (nats)")
    header = f"{'mixture':<20}{'formulation':<8}{'sigma_0':>9}{'sigma_max':>10}{'ODE':>10}"
    print(header + f"{'blur gap':>10}{'corrected':>11}{'N(0,s^2)':>10}")
    print("   ODE: vs log p(x; sigma_0), exact prior; blur gap: |log p(x; sigma_0) - log p(x; 0)|;")
    print("   corrected: zero-noise-corrected vs log p(x; 0); N(0,s^2): with the Gaussian prior vs log p(x; sigma_0)")
    for label, mixture in MIXTURES.items():
        x = data(mixture, n)
        for name in ("VE", "VP", "EDM", "iDDPM"):
            f = diffscale.formulation(name)
            exact_noisy, exact_clean = mixture.log_prob(x, f.sigma_min), mixture.log_prob(x, 0.0)
            common = {"steps": steps, "exact_trace": True}
            ode = log_likelihood(mixture.ideal_denoiser, x, f, prior_log_prob=exact_prior(mixture), **common)
            corrected = log_likelihood(
                mixture.ideal_denoiser, x, f, prior_log_prob=exact_prior(mixture), zero_noise_correction=True, **common
            )
            gaussian = log_likelihood(mixture.ideal_denoiser, x, f, **common)
            print(
                f"{label:<20}{name:<8}{f.sigma_min:>9.4f}{f.sigma_max:>10.2f}"
                f"{float((ode.log_likelihood - exact_noisy).abs().mean()):>10.1e}"
                f"{float((exact_noisy - exact_clean).abs().mean()):>10.1e}"
                f"{float((corrected.log_likelihood - exact_clean).abs().mean()):>11.1e}"
                f"{float((gaussian.log_likelihood - exact_noisy).abs().mean()):>10.1e}"
            )


def probes_table(points: int = 20, copies: int = 100, steps: int = 32) -> None:
    print(f"\n3. Hutchinson vs exact trace, 2d ring, EDM, rk4 {steps} steps; {points} points x {copies} probe draws")
    print(f"{'probe':<12}{'K':>4}{'bias':>11}{'+- SE':>10}{'spread/sample':>15}{'spread/dataset(1000)':>22}")
    mixture = ring_2d()
    edm = diffscale.formulation("EDM")
    x = data(mixture, points)
    exact = log_likelihood(mixture.ideal_denoiser, x, edm, steps=steps, exact_trace=True).log_likelihood
    repeated = x.repeat_interleave(copies, dim=0)
    for kind in ("rademacher", "gaussian"):
        for probes in (1, 4, 16):
            generator = torch.Generator().manual_seed(probes)
            estimate = log_likelihood(
                mixture.ideal_denoiser, repeated, edm, steps=steps, num_probes=probes, probe=kind, generator=generator
            ).log_likelihood.reshape(points, copies)
            error = estimate - exact[:, None]
            spread = float(error.std(dim=1).pow(2).mean().sqrt())
            bias, stderr = float(error.mean()), float(error.std()) / math.sqrt(error.numel())
            print(f"{kind:<12}{probes:>4}{bias:>11.2e}{stderr:>10.1e}{spread:>15.3f}{spread / math.sqrt(1000):>22.4f}")


def prior_table(sigma_max: float = 80.0, n: int = 200_000) -> None:
    print(
        f"\n4. Prior N(0, sigma_max^2 I) at sigma_max = {sigma_max:g}: log p(z; sigma_max) - log N(z; 0, sigma_max^2)"
    )
    print(f"{'mixture':<36}{'mean (KL)':>11}{'estimate':>11}{'max |.|':>10}")
    for offset in (0.0, 1.0, 3.0):
        mixture = GaussianMixture(means=[[offset - 1.0], [offset + 1.0]], stds=[0.25, 0.25])
        z = data(mixture, n, seed=1)
        z = z + sigma_max * torch.randn(z.shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
        gap = mixture.log_prob(z, sigma_max) - gaussian_prior_log_prob(z, sigma_max)
        mean, variance = float(mixture.mean), mixture.std**2
        estimate = (mean**2 + variance**2 / (2 * sigma_max**2)) / (2 * sigma_max**2)
        label = f"1d two Gaussians, mean {offset:g}"
        print(f"{label:<36}{float(gap.mean()):>11.1e}{estimate:>11.1e}{float(gap.abs().max()):>10.1e}")


def main() -> None:
    with single_thread():
        steps_table()
        formulations_table()
        probes_table()
        prior_table()


if __name__ == "__main__":
    main()
