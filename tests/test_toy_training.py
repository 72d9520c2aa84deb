"""Every formulation's trained MLP reproduces the 1-D two-Gaussian mixture within a stated distance.

Each formulation trains the demo's MLP (:func:`diffscale.demo.train_toy_denoiser`, 1000 Adam steps of 512
samples, about 10 s of one CPU core each) on 0.5 N(-1, 0.25^2) + 0.5 N(1, 0.25^2), samples it with the
demo's sampler (deterministic Heun, 40 steps) from 2000 stratified normal quantiles, and compares with the
exact mixture. With stratified noise the Wasserstein-1 distance has no Monte-Carlo floor (about 1e-4), so
it measures the network's and the solver's error alone.

Reference values (W1 to the exact mixture):

============  ==============  ========================  ==========
formulation   exact denoiser  trained, seeds 0 and 1    threshold
============  ==============  ========================  ==========
VE            0.028           0.110, 0.097              0.20
VP            0.0025          0.038, 0.047              0.10
EDM           0.0042          0.019, 0.022              0.06
iDDPM         0.0020          0.028, 0.036              0.08
============  ==============  ========================  ==========

For scale: a single Gaussian with the mixture's standard deviation is at W1 = 0.37, and shifting both
modes by 0.1 costs W1 = 0.1. VE's exact-denoiser value is its solver error: its time grid
t_i = sigma_max^2 (sigma_min^2 / sigma_max^2)^(i/(N-1)) needs more than 40 steps. The mode weights
(fraction of samples nearest each component) must be within 0.03 of 0.5 (trained: within 0.014).
"""

from __future__ import annotations

import time

import pytest

import diffscale
from diffscale.data import two_gaussians_1d
from diffscale.demo import DEMO_SAMPLER, stratified_normal_noise, train_toy_denoiser
from diffscale.evaluation import single_thread
from diffscale.evaluation.distances import component_weights, wasserstein1_to_cdf

TRAIN_STEPS = 1000
W1_THRESHOLD = {"VE": 0.20, "VP": 0.10, "EDM": 0.06, "iDDPM": 0.08}
W1_EXACT_DENOISER = {"VE": 0.028, "VP": 0.0025, "EDM": 0.0042, "iDDPM": 0.0020}
MODE_WEIGHT_TOLERANCE = 0.03


@pytest.mark.slow
@pytest.mark.parametrize("name", ["VE", "VP", "EDM", "iDDPM"])
def test_trained_mlp_reproduces_the_mixture(name: str) -> None:
    mixture = two_gaussians_1d()
    start = time.perf_counter()
    model = train_toy_denoiser(name, mixture, steps=TRAIN_STEPS, seed=0)
    noise = stratified_normal_noise(2000)
    settings = DEMO_SAMPLER.model_dump()
    with single_thread():
        samples = diffscale.sample(model.denoiser, noise, model.formulation, **settings)
        exact = diffscale.sample(mixture.ideal_denoiser, noise, model.formulation, **settings)
    seconds = time.perf_counter() - start

    w1 = wasserstein1_to_cdf(samples, mixture.cdf)
    w1_exact = wasserstein1_to_cdf(exact, mixture.cdf)
    weights = component_weights(samples, mixture.means, mixture.stds)
    print(f"{name}: W1 trained {w1:.4f}, exact denoiser {w1_exact:.4f}, weights {weights.tolist()}, {seconds:.1f} s")

    assert w1_exact == pytest.approx(W1_EXACT_DENOISER[name], abs=1e-3)  # the sampler itself is unchanged
    assert w1 < W1_THRESHOLD[name], f"{name}: W1 = {w1:.4f} >= {W1_THRESHOLD[name]} (exact denoiser: {w1_exact:.4f})"
    assert (weights - 0.5).abs().max() < MODE_WEIGHT_TOLERANCE, f"{name}: mode weights {weights.tolist()}"
