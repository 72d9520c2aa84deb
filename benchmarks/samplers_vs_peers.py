"""diffscale's samplers against k-diffusion's and diffusers' on closed-form Gaussian mixtures, at equal NFE.

Every sampler gets the same exact denoiser D(x_hat; sigma) of a Gaussian mixture
(:meth:`diffscale.data.GaussianMixture.ideal_denoiser`: no network error, only the solver's error remains), the
same standard normal noise n (x_hat_0 = sigma_max n) and the same noise range, sigma in [0.002, 80] of the EDM
formulation. Peers step through the Karras grid (EDM paper Eq. 5, rho = 7), which is also diffscale's
``schedule="native"`` for EDM; diffscale's solvers additionally run on its other schedules (see
:mod:`diffscale.sampling.schedules`). For target NFE in {5, 10, 20, 35} each sampler runs the largest number of
steps N whose NFE does not exceed the target; the NFE printed is counted (calls of the denoiser).

Figures per run:

* path error: mean |x_N - x_ref| over samples and dimensions, x_ref the converged probability-flow solution
  from the same noise (:func:`diffscale.evaluation.reference.reference_ode_solution`, scipy DOP853);
* distance to the exact mixture: W1 to its cdf (1-D, :func:`~diffscale.evaluation.distances.wasserstein1_to_cdf`)
  or sliced W1 (64 directions) to an exact sample four times as large (2-D,
  :func:`~diffscale.evaluation.distances.sliced_wasserstein1`); the line ``reference ODE`` gives the floor that
  the finite sample itself sets.

Mixtures: ``two_gaussians_1d`` (the one the ``tuned`` schedule was fitted on), ``ring_2d``, ``skewed_1d`` and
``held_out_2d`` (not used in any fit; see :mod:`diffscale.sampling.schedules` for how the schedule was chosen).

A summary line per NFE names diffscale's best solver, the best peer, and the ratio of their path errors (the
aim: a ratio of 0.5 or less). For transparency the peers that accept a sigma grid also run on diffscale's
``tuned`` grid (rows marked ``tuned``, second summary line): that separates what the schedule gains from what
the solvers gain. Non-finite results print as inf (diffusers' UniPC with ``solver_type="bh1"`` returns NaN on
its final step to sigma = 0). Prints only; never asserts, never times anything but the whole run.

Run: ``python benchmarks/samplers_vs_peers.py`` (30 to 60 s on 2 shared CPU cores; ``--quick``: a few seconds).
Peers: ``pip install -e .[bench]`` and ``pip install --no-deps k-diffusion==0.1.1.post1`` (see pyproject.toml).
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # `benchmarks.peers` when run as a script

import diffscale
from benchmarks.peers import CountingDenoiser, PeerSampler, Unavailable, karras_sigmas
from benchmarks.peers.diffusers_samplers import diffusers_samplers
from benchmarks.peers.k_diffusion_samplers import k_diffusion_samplers
from diffscale.data import GaussianMixture, ring_2d, two_gaussians_1d
from diffscale.evaluation import single_thread
from diffscale.evaluation.distances import sliced_wasserstein1, wasserstein1_to_cdf
from diffscale.evaluation.reference import reference_ode_solution
from diffscale.sampling import SCHEDULES, SOLVERS
from diffscale.sampling.schedules import tuned_sigmas

TARGET_NFE = (5, 10, 20, 35)
STOCHASTIC = ("ancestral",)
"""Solvers that draw noise (besides the *_sde ones): no path to compare with the ODE solution."""
DETERMINISTIC = tuple(s for s in SOLVERS if not s.endswith("_sde") and s not in STOCHASTIC)
SIGMA_MIN, SIGMA_MAX, RHO = 0.002, 80.0, 7.0
SLICES = 64
"""Random directions of the sliced W1 (2-D mixtures), against an exact sample four times as large."""


def skewed_1d() -> GaussianMixture:
    """A 1-D check mixture (not used in the fits): unequal weights, widths (0.08 to 0.5) and gaps."""
    return GaussianMixture(means=[[-2.0], [0.3], [1.2]], stds=[0.5, 0.08, 0.2], weights=[0.3, 0.5, 0.2])


def held_out_2d() -> GaussianMixture:
    """A held-out mixture, added after TUNED_SCALE was fixed and never used in a fit: five anisotropic 2-D
    components of unequal weight (stds 0.08 to 0.4)."""
    return GaussianMixture(
        means=[[-1.5, 0.5], [0.0, 0.0], [0.8, 1.2], [1.6, -0.9], [-0.4, -1.6]],
        stds=[[0.3, 0.12], [0.15, 0.15], [0.08, 0.25], [0.2, 0.1], [0.12, 0.4]],
        weights=[0.25, 0.3, 0.15, 0.2, 0.1],
    )


MIXTURES: dict[str, Callable[[], GaussianMixture]] = {
    "two_gaussians_1d": two_gaussians_1d,
    "ring_2d": ring_2d,
    "skewed_1d": skewed_1d,
    "held_out_2d": held_out_2d,
}


@dataclass(frozen=True)
class Row:
    """One sampler at one target NFE."""

    library: str
    sampler: str
    schedule: str
    steps: int
    nfe: int
    path_error: float
    distance: float


class Problem:
    """A mixture, its noise, the converged ODE solution from that noise and the distance to the exact law."""

    def __init__(self, mixture: GaussianMixture, samples: int, seed: int) -> None:
        self.mixture = mixture
        generator = torch.Generator().manual_seed(seed)
        self.noise = torch.randn(samples, mixture.dims, generator=generator, dtype=torch.float64)
        self.reference = reference_ode_solution(mixture.ideal_denoiser, self.noise, SIGMA_MAX)
        self.exact_sample = (
            None
            if mixture.dims == 1
            else mixture.sample(4 * samples, torch.Generator().manual_seed(seed + 1), dtype=torch.float64)
        )

    def path_error(self, x: torch.Tensor) -> float:
        """mean |x - x_ref|; inf for a non-finite result."""
        x = x.to(torch.float64)
        return float((x - self.reference).abs().mean()) if torch.isfinite(x).all() else math.inf

    def distance(self, x: torch.Tensor) -> float:
        """W1 to the mixture's cdf (1-D) or sliced W1 to an exact sample (otherwise)."""
        x = x.to(torch.float64)
        if not torch.isfinite(x).all():
            return math.inf
        if self.mixture.dims == 1:
            return wasserstein1_to_cdf(x, self.mixture.cdf)
        return sliced_wasserstein1(x, self.exact_sample, projections=SLICES)


def diffscale_steps(target: int, solver: str) -> int:
    """The largest N with NFE(N) <= target (Heun: 2N - 1, the others N)."""
    return max((target + 1) // 2 if solver == "heun" else target, 1)


def peer_steps(target: int, peer: PeerSampler) -> int:
    steps = 1
    while peer.evaluations(steps + 1) <= target:
        steps += 1
    return steps


def run_diffscale(problem: Problem, target: int, schedules: list[str]) -> list[Row]:
    formulation = diffscale.formulation("EDM")
    rows = []
    for schedule in schedules:
        for solver in DETERMINISTIC:
            steps = diffscale_steps(target, solver)
            model = CountingDenoiser(problem.mixture.ideal_denoiser)
            x = diffscale.sample(model, problem.noise, formulation, steps=steps, solver=solver, schedule=schedule)
            rows.append(
                Row("diffscale", solver, schedule, steps, model.calls, problem.path_error(x), problem.distance(x))
            )
    return rows


def run_peers(
    problem: Problem, target: int, peers: list[PeerSampler], grid: Callable[[int], torch.Tensor], label: str
) -> list[Row]:
    """Each peer at the largest N whose NFE <= target, on ``grid`` (peers that build their own steps: "own")."""
    rows = []
    for peer in peers:
        steps = peer_steps(target, peer)
        model = CountingDenoiser(problem.mixture.ideal_denoiser)
        x = peer.run(model, problem.noise, grid(steps))
        schedule = label if peer.accepts_grid else "own"
        rows.append(
            Row(peer.library, peer.name, schedule, steps, model.calls, problem.path_error(x), problem.distance(x))
        )
    return rows


def tuned_grid(steps: int) -> torch.Tensor:
    """diffscale's ``tuned`` sigma grid for EDM, then 0 (for running the peers on it)."""
    f = diffscale.formulation("EDM")
    return torch.cat([tuned_sigmas(f.sigma_min, f.sigma_max, steps), torch.zeros(1, dtype=torch.float64)])


def print_table(title: str, rows: list[Row]) -> None:
    header = f"{'library':<11} {'sampler':<36} {'schedule':<14} {'N':>3} {'NFE':>4} {'path error':>11} {'distance':>10}"
    print(f"\n{title}\n{header}\n{'-' * len(header)}")
    for row in rows:
        print(
            f"{row.library:<11} {row.sampler:<36} {row.schedule:<14} {row.steps:>3} {row.nfe:>4} "
            f"{row.path_error:>11.3e} {row.distance:>10.3e}"
        )


def summary(target: int, rows: list[Row], extra: list[Row]) -> list[str]:
    """The aim's line (best diffscale vs best peer on the Karras grid) and the same against peers on our grid."""
    ours = min((r for r in rows if r.library == "diffscale" and r.nfe <= target), key=lambda r: r.path_error)
    lines = []
    for label, theirs in (("", [r for r in rows if r.library != "diffscale"]), ("  [peers on tuned grid]", extra)):
        theirs = [r for r in theirs if r.nfe <= target and math.isfinite(r.path_error)]
        if not theirs:
            lines.append(f"NFE {target:>2}:{label} no peer ran")
            continue
        best = min(theirs, key=lambda r: r.path_error)
        ratio = ours.path_error / best.path_error
        verdict = ("aim reached" if ratio <= 0.5 else "aim NOT reached") if not label else "for reference"
        lines.append(
            f"NFE {target:>2}:{label} best diffscale {ours.sampler} [{ours.schedule}] {ours.path_error:.3e} | "
            f"best peer {best.library} {best.sampler} [{best.schedule}] {best.path_error:.3e} | "
            f"ratio {ratio:.3f} ({verdict})"
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help="512 samples, two mixtures (default 2048 samples, four mixtures)"
    )
    parser.add_argument("--samples", type=int, default=None, help="number of noise draws")
    parser.add_argument("--seed", type=int, default=0, help="seed of the noise (default 0)")
    parser.add_argument("--mixture", nargs="*", choices=tuple(MIXTURES), default=None, help="mixtures to run")
    parser.add_argument("--nfe", type=int, nargs="*", default=list(TARGET_NFE), help="target NFEs")
    parser.add_argument("--schedules", nargs="*", choices=SCHEDULES, default=list(SCHEDULES), help="diffscale grids")
    parser.add_argument(
        "--no-peers-on-tuned", action="store_true", help="skip the peers' runs on diffscale's tuned grid"
    )
    args = parser.parse_args()
    samples = args.samples or (512 if args.quick else 2048)
    names = args.mixture or (["two_gaussians_1d", "ring_2d"] if args.quick else list(MIXTURES))
    start = time.perf_counter()
    peers: list[PeerSampler | Unavailable] = []
    for load in (k_diffusion_samplers, diffusers_samplers):
        loaded, how = load()
        print(f"{loaded[0].library}: {how}")
        peers.extend(loaded)
    runnable = [p for p in peers if isinstance(p, PeerSampler)]
    for peer in peers:
        if isinstance(peer, Unavailable):
            print(f"  cannot run {peer.library} {peer.name}: {peer.reason}")

    def grid(steps: int) -> torch.Tensor:
        return karras_sigmas(steps, SIGMA_MIN, SIGMA_MAX, RHO)

    with single_thread():
        for name in names:
            problem = Problem(MIXTURES[name](), samples, args.seed)
            floor = problem.distance(problem.reference)
            print(f"\n=== {name}: {samples} samples, float64 (diffusers: float32), sigma in [{SIGMA_MIN}, {SIGMA_MAX}]")
            print(f"reference ODE: path error 0, distance {floor:.3e} (sampling floor of the distance)")
            lines = []
            for target in args.nfe:
                rows = run_diffscale(problem, target, args.schedules)
                rows += run_peers(problem, target, runnable, grid, f"karras rho={RHO:g}")
                extra = [] if args.no_peers_on_tuned else run_peers(problem, target, runnable, tuned_grid, "tuned")
                print_table(f"{name}, target NFE {target}", rows + [r for r in extra if r.schedule == "tuned"])
                lines.extend(summary(target, rows, extra))
            print(f"\nsummary, {name}:")
            for line in lines:
                print("  " + line)
    print(f"\ntotal {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
