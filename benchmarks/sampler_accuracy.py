"""Sampler accuracy against a converged ODE solution, on the exact Gaussian-mixture denoiser.

For each formulation (VE, VP, EDM, iDDPM) and deterministic solver (Euler, Heun), this runs
``diffscale.sample`` at about 5, 10, 18, 35 and 64 denoiser evaluations (NFE; Euler: NFE = N,
Heun: NFE = 2N - 1, the largest not exceeding the target) and prints the mean absolute error of the
final samples x_N against the converged solution x_hat(0) of d x_hat / d sigma = (x_hat - D) / sigma
(:func:`diffscale.evaluation.reference.reference_ode_solution`, scipy DOP853, independent of the code
under test), together with the observed order p = ln(e_k / e_{k+1}) / ln(NFE_{k+1} / NFE_k).
The ideal denoiser has no network error, so what remains is the solver's own discretisation error on
each formulation's time grid. Prints only; never asserts (run: ``python benchmarks/sampler_accuracy.py``).
"""

from __future__ import annotations

import argparse
import math
import time

import torch

import diffscale
from diffscale.data import GaussianMixture, ring_2d, two_gaussians_1d
from diffscale.evaluation.reference import reference_ode_solution

TARGET_NFE = (5, 10, 18, 35, 64)
FORMULATIONS = ("VE", "VP", "EDM", "iDDPM")
SOLVERS = ("euler", "heun")


def steps_for(nfe: int, solver: str) -> int:
    """The number of steps N whose NFE is ``nfe`` or the largest below it (at least one step)."""
    return max(nfe if solver == "euler" else (nfe + 1) // 2, 1)


def observed_order(errors: list[float], evaluations: list[int]) -> list[float]:
    """p_k = ln(e_{k-1} / e_k) / ln(NFE_k / NFE_{k-1}); NaN for the first entry."""
    orders = [math.nan]
    for k in range(1, len(errors)):
        if errors[k] > 0 and errors[k - 1] > 0 and evaluations[k] != evaluations[k - 1]:
            orders.append(math.log(errors[k - 1] / errors[k]) / math.log(evaluations[k] / evaluations[k - 1]))
        else:
            orders.append(math.nan)
    return orders


def run(mixture: GaussianMixture, samples: int, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    noise = torch.randn(samples, mixture.dims, generator=generator, dtype=torch.float64)
    header = f"{'formulation':<11} {'solver':<6} {'steps':>5} {'NFE':>4} {'mean |x - x_ref|':>17} {'order':>6}"
    print(header)
    print("-" * len(header))
    for name in FORMULATIONS:
        f = diffscale.formulation(name)
        sigma_max = float(f.sigma(f.time_steps(1)[0]))
        start = time.perf_counter()
        reference = reference_ode_solution(mixture.ideal_denoiser, noise, sigma_max)
        reference_seconds = time.perf_counter() - start
        for solver in SOLVERS:
            errors, evaluations, steps_used = [], [], []
            for target in TARGET_NFE:
                steps = steps_for(target, solver)
                x = diffscale.sample(mixture.ideal_denoiser, noise, f, steps=steps, solver=solver)
                errors.append(float((x - reference).abs().mean()))
                evaluations.append(diffscale.number_of_evaluations(steps, solver))
                steps_used.append(steps)
            for steps, nfe, error, order in zip(
                steps_used, evaluations, errors, observed_order(errors, evaluations), strict=True
            ):
                order_text = "" if math.isnan(order) else f"{order:6.2f}"
                print(f"{name:<11} {solver:<6} {steps:>5} {nfe:>4} {error:>17.3e} {order_text:>6}")
        print(f"{'':<11} (sigma_max = {sigma_max:.4g}; reference solve {reference_seconds:.1f} s)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mixture", choices=("1d", "ring", "both"), default="both", help="toy mixture (default both)")
    parser.add_argument("--samples", type=int, default=4096, help="number of noise draws (default 4096)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the noise (default 0)")
    args = parser.parse_args()
    torch.set_num_threads(1)  # small tensors: intra-op threads only add contention on a shared CPU
    mixtures = {"1d": [("two_gaussians_1d", two_gaussians_1d())], "ring": [("ring_2d", ring_2d())]}
    mixtures["both"] = mixtures["1d"] + mixtures["ring"]
    start = time.perf_counter()
    for label, mixture in mixtures[args.mixture]:
        print(f"\n{label}: {args.samples} samples, float64, deterministic (s_churn = 0)\n")
        run(mixture, args.samples, args.seed)
    print(f"\ntotal {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
