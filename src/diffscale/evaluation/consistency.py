"""Checks of a downscaled ensemble that need no fine truth: whether its members average back to the coarse input
they were given, and whether their small scales carry the variance of the training period's fine fields.

Coarse consistency. Member m at time t, averaged over each f x f block with the area weights of the coarse
input's own construction (:func:`~diffscale.evaluation.climate_report.coarsen_block_mean`: X_IJ = sum w_i x_ij /
(f sum w_i), w_i = cos(phi_i)), is compared with the coarse input C_tIJ it was conditioned on:

    d_mtIJ = X^m_tIJ - C_tIJ,   bias = sum W_I d_mtIJ / sum W_I,   RMSE = sqrt(sum W_I d_mtIJ^2 / sum W_I),

the sums over members, times and coarse cells, W_I = cos(Phi_I) at the coarse row's centre latitude Phi_I. A
model that reproduces the coarse field exactly in the mean of every block gives 0 for both; a constant offset
delta of every member gives bias = RMSE = delta. The RMSE per member (over times and cells) is reported too.

Spectrum against the training climatology. P_members(k) is the mean radially averaged power spectrum of the
members (:func:`~diffscale.evaluation.spectra.latlon_power_spectrum`) and P_clim(k) that of the run's training
fine fields; their ratio above the coarse grid's Nyquist wavenumber k_c = 1 / (2 f min(dx, dy)) says whether
the generated small scales are as energetic as the training period's (1) or smoothed (< 1) or noisy (> 1). A
climatology on another grid (another domain size or spacing) is interpolated linearly in (log k, log P) onto the
members' wavenumbers inside its own range; shells outside it are left out.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import FormatStrFormatter, LogLocator, NullFormatter

from diffscale.evaluation.climate_report import _new_figure, _save, coarsen_block_mean
from diffscale.evaluation.spectra import spectral_ratio

__all__ = [
    "CoarseConsistencySums",
    "climatology_on_wavenumbers",
    "coarse_consistency",
    "plot_spectrum_ratio",
    "spectrum_against_climatology",
    "spectrum_ratio_figure",
]


def coarse_consistency(members: np.ndarray, coarse: np.ndarray, latitude: np.ndarray, factor: int) -> dict[str, Any]:
    """Bias and RMSE of the members' block means (M, T, H, W) against the coarse input (T, H/f, W/f), area-weighted
    (module docstring); also the RMSE per member and the largest |difference|."""
    members = np.asarray(members, dtype=np.float64)
    coarse = np.asarray(coarse, dtype=np.float64)
    latitude = np.asarray(latitude, dtype=np.float64)
    block_means = coarsen_block_mean(members, latitude, factor)
    if block_means.shape[1:] != coarse.shape:
        raise ValueError(
            f"the members' block means have shape {block_means.shape[1:]}, the coarse input {coarse.shape}"
        )
    difference = block_means - coarse[None]
    coarse_latitude = latitude.reshape(-1, factor).mean(axis=1)
    weights = np.cos(np.deg2rad(coarse_latitude))[:, None] * np.ones(coarse.shape[-1])
    weights = weights / weights.sum()
    per_member_bias = (difference * weights).sum(axis=(2, 3)).mean(axis=1)
    per_member_mse = (difference**2 * weights).sum(axis=(2, 3)).mean(axis=1)
    return {
        "bias": float(per_member_bias.mean()),
        "rmse": float(math.sqrt(per_member_mse.mean())),
        "rmse_per_member": np.sqrt(per_member_mse).tolist(),
        "max_abs_difference": float(np.abs(difference).max()),
    }


class CoarseConsistencySums:
    """:func:`coarse_consistency` of a record read block by block over time: per member the sums over times of
    sum_IJ W_I d_mtIJ / sum W_I and of sum_IJ W_I d_mtIJ^2 / sum W_I, the count of times and the largest |d|, so
    that memory holds one block and M numbers whatever the record's length. :meth:`result` is
    :func:`coarse_consistency` of every time at once (to rounding)."""

    def __init__(self, latitude: np.ndarray, factor: int) -> None:
        self.latitude = np.asarray(latitude, dtype=np.float64)
        self.factor = factor
        self.bias_sums: np.ndarray | None = None
        self.square_sums: np.ndarray | None = None
        self.times = 0
        self.max_abs_difference = 0.0

    def add(self, members: np.ndarray, coarse: np.ndarray) -> None:
        """Count a block: the members (M, t, H, W) and the coarse input (t, H/f, W/f) at its t times."""
        members = np.asarray(members, dtype=np.float64)
        coarse = np.asarray(coarse, dtype=np.float64)
        block_means = coarsen_block_mean(members, self.latitude, self.factor)
        if block_means.shape[1:] != coarse.shape:
            raise ValueError(
                f"the members' block means have shape {block_means.shape[1:]}, the coarse input {coarse.shape}"
            )
        difference = block_means - coarse[None]
        coarse_latitude = self.latitude.reshape(-1, self.factor).mean(axis=1)
        weights = np.cos(np.deg2rad(coarse_latitude))[:, None] * np.ones(coarse.shape[-1])
        weights = weights / weights.sum()
        bias = (difference * weights).sum(axis=(2, 3)).sum(axis=1)
        square = (difference**2 * weights).sum(axis=(2, 3)).sum(axis=1)
        self.bias_sums = bias if self.bias_sums is None else self.bias_sums + bias
        self.square_sums = square if self.square_sums is None else self.square_sums + square
        self.times += coarse.shape[0]
        self.max_abs_difference = max(self.max_abs_difference, float(np.abs(difference).max()))

    def result(self) -> dict[str, Any]:
        """The entries of :func:`coarse_consistency` over every block added."""
        if self.bias_sums is None or self.square_sums is None:
            raise ValueError("no block was added")
        per_member_bias = self.bias_sums / self.times
        per_member_mse = self.square_sums / self.times
        return {
            "bias": float(per_member_bias.mean()),
            "rmse": float(math.sqrt(per_member_mse.mean())),
            "rmse_per_member": np.sqrt(per_member_mse).tolist(),
            "max_abs_difference": self.max_abs_difference,
        }


def climatology_on_wavenumbers(
    wavenumber: np.ndarray, climatology_wavenumber: np.ndarray, climatology_power: np.ndarray
) -> np.ndarray:
    """P_clim at ``wavenumber``: exact where the shells coincide (the same grid), else linear in (log k, log P)
    inside the climatology's range; NaN outside it."""
    wavenumber = np.asarray(wavenumber, dtype=np.float64)
    known_k = np.asarray(climatology_wavenumber, dtype=np.float64)
    known_power = np.asarray(climatology_power, dtype=np.float64)
    if known_k.shape == wavenumber.shape and np.allclose(known_k, wavenumber, rtol=1e-9, atol=0.0):
        return known_power.copy()
    inside = (wavenumber >= known_k.min() * (1 - 1e-9)) & (wavenumber <= known_k.max() * (1 + 1e-9))
    result = np.full(wavenumber.shape, np.nan)
    positive = known_power > 0
    result[inside] = np.exp(
        np.interp(np.log(wavenumber[inside]), np.log(known_k[positive]), np.log(known_power[positive]))
    )
    return result


def spectrum_against_climatology(
    wavenumber: np.ndarray,
    members_power: np.ndarray,
    climatology_wavenumber: np.ndarray,
    climatology_power: np.ndarray,
    k_min: float,
) -> dict[str, Any]:
    """The members' spectrum over the climatology's on the members' shells: per shell (``ratio``, NaN where the
    climatology does not reach) and summarised above ``k_min`` (:func:`~diffscale.evaluation.spectra.spectral_ratio`
    on the shells the climatology covers)."""
    reference = climatology_on_wavenumbers(wavenumber, climatology_wavenumber, climatology_power)
    covered = np.isfinite(reference) & (reference > 0)
    ratio = np.full(reference.shape, np.nan)
    ratio[covered] = np.asarray(members_power)[covered] / reference[covered]
    summary = spectral_ratio(
        np.asarray(wavenumber)[covered], np.asarray(members_power)[covered], reference[covered], k_min
    )
    return {
        "wavenumber_per_km": np.asarray(wavenumber).tolist(),
        "members": np.asarray(members_power).tolist(),
        "climatology": reference.tolist(),
        "ratio": ratio.tolist(),
        "k_nyquist_coarse_per_km": float(k_min),
        **summary,
    }


def spectrum_ratio_figure(spectrum: Mapping[str, Any], variable: str) -> Figure:
    """P_members / P_clim against k (log-log) with the coarse Nyquist wavenumber and the ratio 1 marked."""
    figure = _new_figure(figsize=(6.5, 4.5))
    axis = figure.subplots()
    wavenumber = np.asarray(spectrum["wavenumber_per_km"], dtype=np.float64)
    ratio = np.asarray([math.nan if value is None else value for value in spectrum["ratio"]], dtype=np.float64)
    axis.loglog(wavenumber, ratio, "-o", color="tab:blue", markersize=3, label="ensemble members / training fine")
    axis.axhline(1.0, color="black", linewidth=1)
    axis.axvline(spectrum["k_nyquist_coarse_per_km"], color="grey", linewidth=1, label="coarse Nyquist wavenumber")
    axis.xaxis.set_major_locator(LogLocator(base=10.0, subs=(1.0, 2.0, 5.0)))
    axis.xaxis.set_major_formatter(FormatStrFormatter("%g"))
    axis.xaxis.set_minor_formatter(NullFormatter())
    finite = ratio[np.isfinite(ratio) & (ratio > 0)]
    if finite.size:  # at least 0.5 .. 2, so that the ticks of a ratio near 1 are labelled
        axis.set_ylim(min(0.5, float(finite.min()) / 1.1), max(2.0, float(finite.max()) * 1.1))
    axis.yaxis.set_major_formatter(FormatStrFormatter("%g"))
    axis.yaxis.set_minor_formatter(FormatStrFormatter("%g"))
    axis.set_xlabel("wavenumber [1/km]")
    axis.set_ylabel("power spectral density ratio")
    axis.set_title(f"{variable}: spectrum of the members over the training period's fine fields")
    axis.legend()
    return figure


def plot_spectrum_ratio(path: Path, spectrum: Mapping[str, Any], variable: str) -> None:
    """Write :func:`spectrum_ratio_figure` as a PNG at ``path``."""
    _save(spectrum_ratio_figure(spectrum, variable), path)
