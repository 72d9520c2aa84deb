"""Formulations against Table 1 of the EDM paper, evaluated independently (math/numpy, finite differences,
identities that hold by construction of each formulation)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats

import diffscale
from diffscale.data import GaussianMixture
from tests.conftest import FORMULATION_NAMES

T_VALUES = torch.tensor([0.003, 0.01, 0.1, 0.37, 0.8, 1.0], dtype=torch.float64)


def times_for(f: diffscale.Formulation) -> torch.Tensor:
    """Interior times of the formulation's own range."""
    t_hi, t_lo = f.sigma_inv(f.sigma_max), f.sigma_inv(f.sigma_min)
    return t_lo + (t_hi - t_lo) * torch.linspace(0.05, 0.95, 7, dtype=torch.float64)


# -- construction and validation ------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["edm", "EDM", "Edm", "ve", "VP", "iddpm", "IDDPM", "iDDPM"])
def test_names_are_case_insensitive(name: str) -> None:
    f = diffscale.formulation(name)
    assert type(f).name.lower() == name.lower()


def test_unknown_formulation_names_the_allowed_ones() -> None:
    with pytest.raises(ValueError, match=r"type = 'ddim': unknown formulation; allowed: VE, VP, EDM, iDDPM"):
        diffscale.formulation("ddim")


@pytest.mark.parametrize(
    ("name", "params", "pattern"),
    [
        ("EDM", {"sigma_data": -1.0}, r"^sigma_data = -1\.0: must be greater than 0$"),
        ("EDM", {"sigma_data": 0.0}, r"sigma_data = 0\.0"),
        ("EDM", {"sigma_min": 80.0, "sigma_max": 0.002}, r"sigma_min = 80\.0 must be smaller than sigma_max = 0\.002"),
        ("VE", {"sigma_min": 5.0, "sigma_max": 5.0}, r"sigma_min = 5\.0 must be smaller"),
        ("EDM", {"rho": "seven"}, r"^rho = 'seven': "),
        ("EDM", {"beta_d": 1.0}, r"unknown key 'beta_d'; allowed keys: type, sigma_min, sigma_max, sigma_data, rho"),
        ("VP", {"epsilon_s": 1.5}, r"^epsilon_s = 1\.5: must be less than 1$"),
        ("iDDPM", {"j_0": 1000}, r"j_0 = 1000 must be at most M - 1 = 999"),
    ],
)
def test_bad_parameters_raise_one_line_value_errors(name: str, params: dict, pattern: str) -> None:
    with pytest.raises(ValueError, match=pattern) as info:
        diffscale.formulation(name, **params)
    assert "\n" not in str(info.value)


def test_defaults_are_those_of_table_1() -> None:
    edm = diffscale.formulation("EDM").params
    assert (edm.sigma_data, edm.sigma_min, edm.sigma_max, edm.rho, edm.p_mean, edm.p_std) == (
        0.5,
        0.002,
        80.0,
        7.0,
        -1.2,
        1.2,
    )
    vp = diffscale.formulation("VP").params
    assert (vp.beta_d, vp.beta_min, vp.epsilon_s, vp.epsilon_t, vp.M) == (19.9, 0.1, 1e-3, 1e-5, 1000)
    ve = diffscale.formulation("VE").params
    assert (ve.sigma_min, ve.sigma_max) == (0.02, 100.0)
    iddpm = diffscale.formulation("iDDPM").params
    assert (iddpm.M, iddpm.C_1, iddpm.C_2, iddpm.j_0) == (1000, 0.001, 0.008, 8)


# -- sigma(t), s(t), inverses and derivatives --------------------------------------------------------------


def test_vp_schedule_matches_closed_form() -> None:
    f = diffscale.formulation("VP")
    for t in T_VALUES.tolist():
        exponent = 19.9 * t * t / 2 + 0.1 * t
        assert float(f.sigma(t)) == pytest.approx(math.sqrt(math.exp(exponent) - 1), rel=1e-12)
        assert float(f.scale(t)) == pytest.approx(1 / math.sqrt(math.exp(exponent)), rel=1e-12)


def test_ve_and_edm_and_iddpm_schedules_match_closed_form() -> None:
    ve, edm, iddpm = (diffscale.formulation(n) for n in ("VE", "EDM", "iDDPM"))
    torch.testing.assert_close(ve.sigma(T_VALUES), T_VALUES.sqrt())
    torch.testing.assert_close(edm.sigma(T_VALUES), T_VALUES)
    torch.testing.assert_close(iddpm.sigma(T_VALUES), T_VALUES)
    for f in (ve, edm, iddpm):
        torch.testing.assert_close(f.scale(T_VALUES), torch.ones_like(T_VALUES))
        torch.testing.assert_close(f.scale_deriv(T_VALUES), torch.zeros_like(T_VALUES))


@pytest.mark.parametrize("name", FORMULATION_NAMES)
def test_inverse_round_trips(name: str) -> None:
    f = diffscale.formulation(name)
    t = times_for(f)
    torch.testing.assert_close(f.sigma_inv(f.sigma(t)), t, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name", FORMULATION_NAMES)
def test_derivatives_match_central_differences(name: str) -> None:
    f = diffscale.formulation(name)
    t = times_for(f)
    h = 1e-6 * t
    sigma_fd = (f.sigma(t + h) - f.sigma(t - h)) / (2 * h)
    scale_fd = (f.scale(t + h) - f.scale(t - h)) / (2 * h)
    torch.testing.assert_close(f.sigma_deriv(t), sigma_fd, rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(f.scale_deriv(t), scale_fd, rtol=1e-6, atol=1e-9)


def test_vp_preserves_variance() -> None:
    """s(t)^2 (1 + sigma(t)^2) = 1: unit-variance data keeps unit variance."""
    f = diffscale.formulation("VP")
    torch.testing.assert_close(f.scale(T_VALUES) ** 2 * (1 + f.sigma(T_VALUES) ** 2), torch.ones_like(T_VALUES))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name", FORMULATION_NAMES)
def test_methods_keep_dtype(name: str, dtype: torch.dtype) -> None:
    f = diffscale.formulation(name)
    sigma = torch.tensor([0.1, 1.0, 10.0], dtype=dtype)
    assert f.sigma(sigma).dtype == dtype
    assert f.sigma_inv(sigma).dtype == dtype
    assert all(c.dtype == dtype for c in f.preconditioning(sigma))
    assert f.loss_weight(sigma).dtype == dtype
    assert f.round_sigma(sigma).dtype == dtype
    assert f.sample_sigma(5, dtype=dtype).dtype == dtype


# -- time discretisation ---------------------------------------------------------------------------------


def test_edm_time_steps_match_eq_5() -> None:
    f = diffscale.formulation("EDM")
    steps = f.time_steps(18)
    expected = [(80 ** (1 / 7) + i / 17 * (0.002 ** (1 / 7) - 80 ** (1 / 7))) ** 7 for i in range(18)] + [0.0]
    np.testing.assert_allclose(steps.numpy(), expected, rtol=1e-12)


def test_ve_time_steps_are_geometric_in_sigma_squared() -> None:
    f = diffscale.formulation("VE")
    steps = f.time_steps(10)
    expected = [100.0**2 * (0.02**2 / 100.0**2) ** (i / 9) for i in range(10)] + [0.0]
    np.testing.assert_allclose(steps.numpy(), expected, rtol=1e-12)
    np.testing.assert_allclose(f.sigma(steps[:-1]).numpy(), np.geomspace(100.0, 0.02, 10), rtol=1e-12)


def test_vp_time_steps_are_linear() -> None:
    steps = diffscale.formulation("VP").time_steps(5)
    np.testing.assert_allclose(steps.numpy(), [1.0, 0.75025, 0.5005, 0.25075, 0.001, 0.0], rtol=1e-12)


def iddpm_table_numpy(M: int = 1000, C_1: float = 0.001, C_2: float = 0.008) -> np.ndarray:
    """u_j written out again with numpy, vectorised over alpha_bar."""
    alpha_bar = np.sin(np.pi * np.arange(M + 1) / (2 * M * (C_2 + 1))) ** 2
    ratio = np.maximum(np.divide(alpha_bar[:-1], alpha_bar[1:]), C_1)
    u = np.zeros(M + 1)
    for j in range(M, 0, -1):
        u[j - 1] = np.sqrt((u[j] ** 2 + 1) / ratio[j - 1] - 1)
    return u


def test_iddpm_table_and_time_steps() -> None:
    f = diffscale.formulation("iDDPM")
    u = iddpm_table_numpy()
    np.testing.assert_allclose(f.table.numpy(), u, rtol=1e-12)
    assert np.all(np.diff(u) < 0) and u[-1] == 0.0
    # The familiar iDDPM range: sigma_max = u_{j_0} close to 80, sigma_min = u_{M-1} close to 0.006.
    assert f.sigma_max == pytest.approx(u[8]) and 70 < f.sigma_max < 90
    assert f.sigma_min == pytest.approx(u[999]) and 0.004 < f.sigma_min < 0.008
    steps = f.time_steps(7)
    indices = [math.floor(8 + (999 - 8) * i / 6 + 0.5) for i in range(7)]
    np.testing.assert_allclose(steps.numpy(), [*u[indices], 0.0], rtol=1e-12)


@pytest.mark.parametrize("name", FORMULATION_NAMES)
@pytest.mark.parametrize("num_steps", [1, 2, 18, 64])
def test_time_steps_shape_order_and_range(name: str, num_steps: int) -> None:
    f = diffscale.formulation(name)
    steps = f.time_steps(num_steps, dtype=torch.float32)
    assert steps.shape == (num_steps + 1,) and steps.dtype == torch.float32
    assert steps[-1] == 0
    assert torch.all(steps[:-1] > 0)
    assert torch.all(steps[:-1] - steps[1:] >= 0)
    assert float(f.sigma(steps[0].double())) == pytest.approx(f.sigma_max, rel=1e-5)
    if num_steps > 1:
        assert float(f.sigma(steps[-2].double())) == pytest.approx(f.sigma_min, rel=1e-5)


@pytest.mark.parametrize("bad", [0, -3, 2.5, True])
def test_time_steps_refuse_bad_counts(bad: object) -> None:
    with pytest.raises(ValueError, match="num_steps"):
        diffscale.formulation("EDM").time_steps(bad)  # type: ignore[arg-type]


# -- round_sigma ----------------------------------------------------------------------------------------


def test_round_sigma_is_identity_except_iddpm() -> None:
    sigma = torch.tensor([0.0031, 0.5, 17.3], dtype=torch.float64)
    for name in ("VE", "VP", "EDM"):
        torch.testing.assert_close(diffscale.formulation(name).round_sigma(sigma), sigma)


def test_iddpm_round_sigma_snaps_to_nearest_table_entry() -> None:
    f = diffscale.formulation("iDDPM")
    u = torch.from_numpy(iddpm_table_numpy())
    sigma = torch.cat([torch.rand(500, dtype=torch.float64) * 90, u[:50], torch.tensor([0.0, 1e-9, 1e4])])
    brute = (sigma[:, None] - u[None, :]).abs().argmin(dim=1)
    torch.testing.assert_close(f.round_sigma(sigma), u[brute])
    torch.testing.assert_close(f.round_sigma(f.round_sigma(sigma)), f.round_sigma(sigma))
    _, _, _, c_noise = f.preconditioning(sigma)
    torch.testing.assert_close(c_noise, (999 - brute).double())


# -- preconditioning and loss weight ---------------------------------------------------------------------


SIGMAS = torch.tensor([0.002, 0.05, 0.3, 1.0, 4.0, 80.0], dtype=torch.float64)


def test_edm_preconditioning_matches_closed_form() -> None:
    f = diffscale.formulation("EDM", sigma_data=0.7)
    c_skip, c_out, c_in, c_noise = f.preconditioning(SIGMAS)
    for k, s in enumerate(SIGMAS.tolist()):
        assert float(c_skip[k]) == pytest.approx(0.49 / (s * s + 0.49), rel=1e-12)
        assert float(c_out[k]) == pytest.approx(s * 0.7 / math.sqrt(s * s + 0.49), rel=1e-12)
        assert float(c_in[k]) == pytest.approx(1 / math.sqrt(s * s + 0.49), rel=1e-12)
        assert float(c_noise[k]) == pytest.approx(math.log(s) / 4, rel=1e-12)


def test_edm_skip_is_the_ideal_denoiser_of_gaussian_data() -> None:
    """For y ~ N(0, sigma_data^2), D*(x; sigma) = c_skip(sigma) x: F then only has to model the rest."""
    f = diffscale.formulation("EDM", sigma_data=0.7)
    gaussian = GaussianMixture(means=[[0.0]], stds=[0.7])
    x = torch.linspace(-3, 3, 11, dtype=torch.float64)[:, None]
    for sigma in SIGMAS.tolist():
        c_skip = f.preconditioning(torch.tensor(sigma, dtype=torch.float64))[0]
        torch.testing.assert_close(c_skip * x, gaussian.ideal_denoiser(x, sigma))


def test_edm_network_input_and_target_have_unit_variance() -> None:
    """c_in^2 (sigma_data^2 + sigma^2) = 1 and c_out^2 = Var of the effective target (EDM App. B.6)."""
    sd = 0.7
    f = diffscale.formulation("EDM", sigma_data=sd)
    c_skip, c_out, c_in, _ = f.preconditioning(SIGMAS)
    torch.testing.assert_close(c_in**2 * (sd**2 + SIGMAS**2), torch.ones_like(SIGMAS))
    # target F = (y - c_skip (y + sigma n)) / c_out has variance ((1 - c_skip)^2 sd^2 + c_skip^2 sigma^2) / c_out^2
    target_variance = ((1 - c_skip) ** 2 * sd**2 + c_skip**2 * SIGMAS**2) / c_out**2
    torch.testing.assert_close(target_variance, torch.ones_like(SIGMAS))


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("VE", lambda s: (1.0, s, 1.0, math.log(s / 2))),
        ("VP", lambda s: (1.0, -s, 1 / math.sqrt(s * s + 1), None)),
        ("iDDPM", lambda s: (1.0, -s, 1 / math.sqrt(s * s + 1), None)),
    ],
)
def test_other_preconditionings_match_table_1(name: str, expected) -> None:
    f = diffscale.formulation(name)
    c_skip, c_out, c_in, c_noise = f.preconditioning(SIGMAS)
    for k, s in enumerate(SIGMAS.tolist()):
        e_skip, e_out, e_in, e_noise = expected(s)
        assert float(c_skip[k]) == pytest.approx(e_skip)
        assert float(c_out[k]) == pytest.approx(e_out, rel=1e-12)
        assert float(c_in[k]) == pytest.approx(e_in, rel=1e-12)
        if e_noise is not None:
            assert float(c_noise[k]) == pytest.approx(e_noise, rel=1e-12)


def test_vp_c_noise_is_scaled_time() -> None:
    f = diffscale.formulation("VP")
    t = torch.tensor([1e-3, 0.25, 0.5, 1.0], dtype=torch.float64)
    _, _, _, c_noise = f.preconditioning(f.sigma(t))
    torch.testing.assert_close(c_noise, 999 * t)


@pytest.mark.parametrize("name", FORMULATION_NAMES)
def test_loss_weight_equalises_output_scale(name: str) -> None:
    """lambda(sigma) c_out(sigma)^2 = 1 for every formulation of Table 1 (EDM paper, Eq. 8 and App. B.6)."""
    f = diffscale.formulation(name, **({"sigma_data": 0.3} if name == "EDM" else {}))
    _, c_out, _, _ = f.preconditioning(SIGMAS)
    torch.testing.assert_close(f.loss_weight(SIGMAS) * c_out**2, torch.ones_like(SIGMAS))


def test_edm_loss_weight_closed_form() -> None:
    f = diffscale.formulation("EDM", sigma_data=0.5)
    for s in SIGMAS.tolist():
        assert float(f.loss_weight(s)) == pytest.approx((s * s + 0.25) / (s * 0.5) ** 2, rel=1e-12)


# -- training noise law ----------------------------------------------------------------------------------

N_DRAWS = 200_000


def test_edm_training_sigma_is_log_normal() -> None:
    f = diffscale.formulation("EDM", p_mean=-0.4, p_std=0.8)
    log_sigma = f.sample_sigma(N_DRAWS, torch.Generator().manual_seed(1), dtype=torch.float64).log().numpy()
    assert stats.kstest(log_sigma, stats.norm(loc=-0.4, scale=0.8).cdf).pvalue > 1e-3


def test_ve_training_sigma_is_log_uniform() -> None:
    f = diffscale.formulation("VE")
    log_sigma = f.sample_sigma(N_DRAWS, torch.Generator().manual_seed(2), dtype=torch.float64).log().numpy()
    low, high = math.log(0.02), math.log(100.0)
    assert log_sigma.min() >= low and log_sigma.max() <= high
    assert stats.kstest(log_sigma, stats.uniform(loc=low, scale=high - low).cdf).pvalue > 1e-3


def test_vp_training_time_is_uniform() -> None:
    f = diffscale.formulation("VP")
    sigma = f.sample_sigma(N_DRAWS, torch.Generator().manual_seed(3), dtype=torch.float64)
    t = f.sigma_inv(sigma).numpy()
    assert t.min() >= 1e-5 - 1e-12 and t.max() <= 1.0 + 1e-12
    assert stats.kstest(t, stats.uniform(loc=1e-5, scale=1 - 1e-5).cdf).pvalue > 1e-3


def test_iddpm_training_sigma_is_uniform_over_the_table() -> None:
    f = diffscale.formulation("iDDPM")
    sigma = f.sample_sigma(N_DRAWS, torch.Generator().manual_seed(4), dtype=torch.float64)
    index = 999 - f.preconditioning(sigma)[3].long()
    assert torch.all(f.round_sigma(sigma) == sigma) and torch.all(sigma > 0)
    counts = torch.bincount(index, minlength=1000).numpy()
    assert counts.shape == (1000,)  # never index M (sigma = 0)
    assert stats.chisquare(counts).pvalue > 1e-3


@pytest.mark.parametrize("name", FORMULATION_NAMES)
def test_sample_sigma_is_reproducible(name: str) -> None:
    f = diffscale.formulation(name)
    a = f.sample_sigma(64, torch.Generator().manual_seed(5))
    b = f.sample_sigma(64, torch.Generator().manual_seed(5))
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert a.shape == (64,) and torch.all(a > 0)
