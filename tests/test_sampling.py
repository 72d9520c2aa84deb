"""Samplers against closed forms: the exact probability-flow solution of a Gaussian, a scipy-converged ODE
solution for a Gaussian mixture (with its exact denoiser), and the churn formula's statistics."""

from __future__ import annotations

import math

import pytest
import torch

import diffscale
from diffscale.data import GaussianMixture, two_gaussians_1d
from tests.conftest import FORMULATION_NAMES, probability_flow_reference, wasserstein1_1d

MIXTURE = two_gaussians_1d()


def noise(n: int = 2000, dims: int = 1, dtype: torch.dtype = torch.float64, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, dims, generator=torch.Generator().manual_seed(seed), dtype=dtype)


class CountingDenoiser:
    """Wraps a denoiser and records how often, and at which sigma, it is called."""

    def __init__(self, denoiser) -> None:
        self.denoiser = denoiser
        self.sigmas: list[float] = []
        self.inputs: list[torch.Tensor] = []

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, **cond) -> torch.Tensor:
        assert sigma.ndim == 1 and sigma.shape[0] == x.shape[0]
        self.sigmas.append(float(sigma[0]))
        self.inputs.append(x.clone())
        return self.denoiser(x, sigma, **cond)


# -- exact solutions --------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", FORMULATION_NAMES)
def test_gaussian_data_follows_the_exact_ode_solution(name: str) -> None:
    """For y ~ N(mu, s^2) the ODE solution in x_hat = x / s(t) is x_hat(sigma) = mu + (x_hat_0 - mu)
    sqrt(s^2 + sigma^2) / sqrt(s^2 + sigma_0^2): its end point is mu + (x_hat_0 - mu) s / sqrt(s^2 + sigma_0^2)."""
    mu, s = 0.4, 0.3
    gaussian = GaussianMixture(means=[[mu]], stds=[s])
    f = diffscale.formulation(name)
    z = noise(256)
    sigma_0 = f.sigma_max
    exact = mu + (sigma_0 * z - mu) * s / math.sqrt(s * s + sigma_0**2)
    result = diffscale.sample(gaussian.ideal_denoiser, z, f, steps=256, solver="heun")
    # VE's last Euler step, from t = sigma_min^2 to 0 in t = sigma^2, only goes half-way to D: a floor of
    # about sigma_min^2 / (2 s^2) |x - mu| that more steps do not remove.
    tolerance = 5e-3 if name == "VE" else 5e-4
    assert (result - exact).abs().max() < tolerance


ORDERS = {"euler": (0.8, 1.35), "heun": (1.7, 2.8)}


@pytest.mark.parametrize("solver", ["euler", "heun"])
@pytest.mark.parametrize("name", FORMULATION_NAMES)
def test_path_error_falls_at_the_solver_order(name: str, solver: str) -> None:
    """Mean |x_N - x_ref| against a converged scipy solution; error ratio between N and 2N steps is 2^order.

    VE's geometric grid in t = sigma^2 from sigma = 100 reaches the asymptotic regime later: it is
    measured from 32 steps on."""
    f = diffscale.formulation(name)
    step_counts = (32, 64, 128) if name == "VE" else (16, 32, 64)
    z = noise(1000)
    reference = probability_flow_reference(MIXTURE, z, f.sigma_max)
    errors = [
        float((diffscale.sample(MIXTURE.ideal_denoiser, z, f, steps=n, solver=solver) - reference).abs().mean())
        for n in step_counts
    ]
    low, high = ORDERS[solver]
    orders = [math.log2(errors[k] / errors[k + 1]) for k in range(2)]
    assert all(low <= order <= high for order in orders), (errors, orders)
    assert errors[-1] < (0.05 if solver == "euler" else 5e-3)


@pytest.mark.parametrize("name", FORMULATION_NAMES)
def test_deterministic_sampler_converges_to_the_exact_distribution(name: str) -> None:
    f = diffscale.formulation(name)
    samples = diffscale.sample(MIXTURE.ideal_denoiser, noise(20_000), f, steps=128, solver="heun")
    assert wasserstein1_1d(samples, MIXTURE) < 0.02


def test_two_dimensional_ring_is_reproduced() -> None:
    ring = diffscale.data.ring_2d(modes=6, radius=1.0, std=0.08)
    samples = diffscale.sample(ring.ideal_denoiser, noise(6000, dims=2), diffscale.formulation("EDM"), steps=40)
    radius = samples.norm(dim=1)
    assert abs(float(radius.mean()) - 1.0) < 0.02
    angles = torch.atan2(samples[:, 1], samples[:, 0])
    mode = torch.round(angles / (2 * math.pi / 6)).long() % 6
    weights = torch.bincount(mode, minlength=6).double() / len(mode)
    assert torch.all((weights - 1 / 6).abs() < 0.03)


# -- stochastic sampling (churn) ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", FORMULATION_NAMES)
def test_churned_sampler_reproduces_mode_weights_and_variances(name: str) -> None:
    mixture = GaussianMixture(means=[[-1.0], [1.5]], stds=[0.3, 0.2], weights=[0.3, 0.7])
    f = diffscale.formulation(name)
    samples = diffscale.sample(
        mixture.ideal_denoiser,
        noise(20_000),
        f,
        steps=64,
        solver="heun",
        s_churn=40.0,
        s_min=0.05,
        s_max=50.0,
        s_noise=1.003,
        generator=torch.Generator().manual_seed(7),
    ).ravel()
    left, right = samples[samples < 0.25], samples[samples >= 0.25]
    assert abs(len(left) / len(samples) - 0.3) < 0.015
    assert abs(float(left.mean()) + 1.0) < 0.03 and abs(float(right.mean()) - 1.5) < 0.03
    assert abs(float(left.std()) - 0.3) < 0.03 and abs(float(right.std()) - 0.2) < 0.03


@pytest.mark.parametrize("name", FORMULATION_NAMES)
def test_churn_raises_the_noise_level_as_algorithm_2(name: str) -> None:
    """The first evaluation sees sigma_hat = round_sigma(sigma_0 (1 + gamma)) and a state y + sigma_hat n whose
    added noise has standard deviation sqrt(sigma_hat^2 - sigma_0^2) S_noise (here y = 0)."""
    f = diffscale.formulation(name)
    steps, s_churn, s_noise = 4, 1.0, 1.5
    counter = CountingDenoiser(lambda x, sigma: torch.zeros_like(x))
    churn_noise = torch.Generator().manual_seed(99)  # independent of the starting noise
    diffscale.sample(
        counter, noise(100_000), f, steps=steps, solver="euler", s_churn=s_churn, s_noise=s_noise, generator=churn_noise
    )
    sigma_0 = f.sigma_max
    gamma = min(s_churn / steps, math.sqrt(2) - 1)
    sigma_hat = float(f.round_sigma(torch.tensor(sigma_0 * (1 + gamma), dtype=torch.float64)))
    assert counter.sigmas[0] == pytest.approx(sigma_hat, rel=1e-9)
    expected_std = math.sqrt(sigma_0**2 + (sigma_hat**2 - sigma_0**2) * s_noise**2)
    assert float(counter.inputs[0].std()) == pytest.approx(expected_std, rel=0.01)


def test_gamma_is_capped_and_the_window_respected() -> None:
    f = diffscale.formulation("EDM")
    counter = CountingDenoiser(lambda x, sigma: torch.zeros_like(x))
    diffscale.sample(counter, noise(8), f, steps=5, solver="euler", s_churn=100.0, s_min=0.01, s_max=10.0)
    grid = f.sigma(f.time_steps(5)).tolist()
    for sigma_i, seen in zip(grid[:-1], counter.sigmas, strict=True):
        factor = math.sqrt(2) if 0.01 <= sigma_i <= 10.0 else 1.0
        assert seen == pytest.approx(sigma_i * factor, rel=1e-9)


def test_churn_outside_its_window_is_deterministic() -> None:
    f = diffscale.formulation("EDM")
    z = noise(64)
    plain = diffscale.sample(MIXTURE.ideal_denoiser, z, f, steps=10)
    windowed = diffscale.sample(MIXTURE.ideal_denoiser, z, f, steps=10, s_churn=30.0, s_min=500.0, s_max=600.0)
    torch.testing.assert_close(plain, windowed, rtol=0, atol=0)


def test_stochastic_sampling_is_reproducible_with_a_generator() -> None:
    f = diffscale.formulation("VP")
    kwargs = {"steps": 10, "s_churn": 20.0}
    a = diffscale.sample(MIXTURE.ideal_denoiser, noise(64), f, generator=torch.Generator().manual_seed(3), **kwargs)
    b = diffscale.sample(MIXTURE.ideal_denoiser, noise(64), f, generator=torch.Generator().manual_seed(3), **kwargs)
    c = diffscale.sample(MIXTURE.ideal_denoiser, noise(64), f, generator=torch.Generator().manual_seed(4), **kwargs)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert not torch.equal(a, c)


# -- bookkeeping -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("solver", "steps", "nfe"), [("euler", 1, 1), ("euler", 18, 18), ("heun", 1, 1), ("heun", 18, 35)]
)
@pytest.mark.parametrize("s_churn", [0.0, 10.0])
def test_number_of_evaluations(solver: str, steps: int, nfe: int, s_churn: float) -> None:
    counter = CountingDenoiser(MIXTURE.ideal_denoiser)
    diffscale.sample(counter, noise(4), diffscale.formulation("EDM"), steps=steps, solver=solver, s_churn=s_churn)
    assert len(counter.sigmas) == nfe == diffscale.number_of_evaluations(steps, solver)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name", FORMULATION_NAMES)
def test_sampler_computes_in_the_dtype_of_the_noise(name: str, dtype: torch.dtype) -> None:
    seen: list[torch.dtype] = []

    def denoiser(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        seen.extend([x.dtype, sigma.dtype])
        return MIXTURE.ideal_denoiser(x, sigma)

    out = diffscale.sample(denoiser, noise(16, dtype=dtype), diffscale.formulation(name), steps=6, s_churn=5.0)
    assert out.dtype == dtype and set(seen) == {dtype} and torch.isfinite(out).all()


def test_callback_sees_every_step_down_to_sigma_zero() -> None:
    steps: list[diffscale.sampling.SamplerStep] = []
    out = diffscale.sample(
        MIXTURE.ideal_denoiser, noise(8), diffscale.formulation("VP"), steps=7, callback=steps.append
    )
    assert [s.index for s in steps] == list(range(7))
    sigmas = [float(s.sigma) for s in steps]
    assert sigmas == sorted(sigmas, reverse=True) and sigmas[-1] == 0.0
    torch.testing.assert_close(steps[-1].x, out)


def test_conditioning_reaches_the_denoiser() -> None:
    received: list[torch.Tensor] = []

    def denoiser(x: torch.Tensor, sigma: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        received.append(labels)
        return torch.zeros_like(x)

    labels = torch.ones(3, 2)
    diffscale.sample(denoiser, noise(3), diffscale.formulation("EDM"), steps=2, cond={"labels": labels})
    assert len(received) == 3 and all(r is labels for r in received)


@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [
        (
            {"solver": "rk4"},
            r"^solver = 'rk4': must be 'euler', 'heun', 'dpmpp_2m', 'dpmpp_3m', 'dpmpp_2m_sde', 'dpmpp_3m_sde' "
            r"or 'ancestral'$",
        ),
        ({"steps": 0}, r"^steps = 0: must be greater than or equal to 1$"),
        ({"steps": 2.5}, r"^steps = 2\.5: "),
        ({"s_churn": -1.0}, r"^s_churn = -1\.0: must be greater than or equal to 0$"),
        ({"s_noise": 0.0}, r"^s_noise = 0\.0: must be greater than 0$"),
        ({"s_min": 2.0, "s_max": 1.0}, r"s_min = 2\.0 must not exceed s_max = 1\.0"),
    ],
)
def test_bad_settings_raise_one_line_value_errors(kwargs: dict, pattern: str) -> None:
    with pytest.raises(ValueError, match=pattern):
        diffscale.sample(MIXTURE.ideal_denoiser, noise(2), diffscale.formulation("EDM"), **kwargs)


def test_bad_noise_and_denoiser_output_are_reported() -> None:
    f = diffscale.formulation("EDM")
    with pytest.raises(ValueError, match="not a floating-point dtype"):
        diffscale.sample(MIXTURE.ideal_denoiser, torch.zeros(2, 1, dtype=torch.long), f)
    with pytest.raises(ValueError, match=r"denoiser returned shape \(2,\), expected \(2, 1\)"):
        diffscale.sample(lambda x, sigma: x[:, 0], noise(2), f, steps=2)


@pytest.mark.parametrize(
    ("name", "kwargs"),
    [
        ("EDM", {"solver": "heun", "s_churn": 20.0}),
        ("VP", {"solver": "euler", "s_churn": 20.0}),
        ("EDM", {"solver": "dpmpp_2m_sde"}),
        ("iDDPM", {"solver": "ancestral"}),
    ],
)
def test_one_generator_per_sample_makes_each_sample_independent_of_its_batch(name: str, kwargs: dict) -> None:
    """With a list of generators, sample k's churn/SDE noise comes from generator k alone: sampling rows 1 and 3
    on their own gives what they get in a batch of four."""

    def generators(seeds: list[int]) -> list[torch.Generator]:
        return [torch.Generator().manual_seed(seed) for seed in seeds]

    f = diffscale.formulation(name)
    z = noise(4)
    batch = diffscale.sample(MIXTURE.ideal_denoiser, z, f, steps=12, generator=generators([0, 1, 2, 3]), **kwargs)
    alone = diffscale.sample(MIXTURE.ideal_denoiser, z[[1, 3]], f, steps=12, generator=generators([1, 3]), **kwargs)
    torch.testing.assert_close(alone, batch[[1, 3]], rtol=0, atol=1e-12)
    shared = diffscale.sample(MIXTURE.ideal_denoiser, z, f, steps=12, generator=generators([1])[0], **kwargs)
    assert not torch.allclose(shared[1], batch[1])  # one shared generator draws other numbers for row 1


def test_generator_arguments_are_checked() -> None:
    f = diffscale.formulation("EDM")
    z = noise(3)
    one = torch.Generator().manual_seed(0)
    cases = [
        ([one, one], "2 generators for a batch of 3 samples"),
        ([one, one, 7], r"generator\[2\]: expected a torch.Generator or a BlendedGenerator, got int"),
        ("seed", "expected a torch.Generator or a sequence of them, got str"),
        (5, "expected a torch.Generator or a sequence of them, got int"),
    ]
    for generator, message in cases:
        with pytest.raises(ValueError, match=message):
            diffscale.sample(MIXTURE.ideal_denoiser, z, f, steps=4, s_churn=10.0, generator=generator)
