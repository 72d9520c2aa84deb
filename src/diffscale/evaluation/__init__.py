"""Evaluation: distances to reference distributions, a converged ODE reference, and figures.

>>> from diffscale.data import two_gaussians_1d
>>> from diffscale.evaluation import wasserstein1_to_cdf
>>> mixture = two_gaussians_1d()
>>> wasserstein1_to_cdf(mixture.sample(100_000), mixture.cdf) < 0.02
True
"""

from diffscale.evaluation.distances import (
    component_weights,
    gaussian_cdf,
    sliced_wasserstein1,
    wasserstein1,
    wasserstein1_to_cdf,
)
from diffscale.evaluation.plots import DensityPanel, ProcessRow, plot_forward_reverse
from diffscale.evaluation.reference import reference_ode_solution
from diffscale.threads import single_thread

__all__ = [
    "DensityPanel",
    "ProcessRow",
    "component_weights",
    "gaussian_cdf",
    "plot_forward_reverse",
    "reference_ode_solution",
    "single_thread",
    "sliced_wasserstein1",
    "wasserstein1",
    "wasserstein1_to_cdf",
]
