"""Evaluation report of a downscaled ensemble: the bilinear baseline, the scores of both, spectra, figures, JSON.

:func:`evaluate_variable` scores one variable of an ensemble (M, T, H, W) and of the bilinear baseline
(T, H, W) against the truth (T, H, W) (:mod:`diffscale.evaluation.scores`) and compares their radially averaged
power spectra with the truth's above the coarse grid's Nyquist wavenumber (:mod:`diffscale.evaluation.spectra`).
The figures (matplotlib Agg, PNG, one function each) are maps of one time, the spectra, the rank histogram and
a quantile-quantile plot; :func:`write_scores_json` writes the scores with NaN as null.

The baseline is the coarse field upsampled bilinearly (torch ``interpolate``, ``align_corners=False``: the fine
cell centres of a block sit symmetrically about the coarse centre, the geometry of a block mean). Without a
coarse file the coarse field is the truth's area-weighted block mean (:func:`coarsen_block_mean`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from diffscale.evaluation.scores import area_weights, deterministic_scores, ensemble_scores
from diffscale.evaluation.spectra import coarse_nyquist_wavenumber, latlon_power_spectrum, spectral_ratio

__all__ = [
    "Spectrum",
    "VariableEvaluation",
    "coarsen_block_mean",
    "evaluate_variable",
    "plot_maps",
    "plot_qq",
    "plot_rank_histogram",
    "plot_spectra",
    "upsample_bilinear",
    "weighted_quantiles",
    "write_scores_json",
]

QQ_LEVELS = np.concatenate([[0.001, 0.005], np.linspace(0.01, 0.99, 99), [0.995, 0.999]])


# -- the bilinear baseline -------------------------------------------------------------------------------------
def coarsen_block_mean(fields: Any, latitude: Any, factor: int) -> np.ndarray:
    """Area-weighted block mean of ``fields`` (..., H, W) over ``factor`` x ``factor`` blocks: (..., H/f, W/f).

    X_IJ = sum_{i in I, j in J} w_i x_ij / (f sum_{i in I} w_i), w_i = cos(phi_i) (float64 numpy, through
    :func:`diffscale.data.climate.grid.coarsen`). Raises ConfigError when f does not divide H and W.
    """
    from diffscale.data.climate.grid import coarsen

    values = torch.tensor(np.asarray(fields, dtype=np.float64))
    return coarsen(values, factor, torch.tensor(np.asarray(latitude, dtype=np.float64))).numpy()


def upsample_bilinear(coarse: Any, factor: int, periodic_longitude: bool = False) -> np.ndarray:
    """Bilinear upsampling of ``coarse`` (..., h, w) by ``factor``: (..., h f, w f), float64.

    :func:`diffscale.data.climate.grid.upsample` (torch ``interpolate``, ``align_corners=False``): fine point
    (i + 1/2)/f - 1/2 in coarse index units, constant beyond the outermost coarse centres, except across the
    seam of a global longitude axis when ``periodic_longitude``.
    """
    from diffscale.data.climate.grid import upsample

    values = torch.tensor(np.asarray(coarse, dtype=np.float64))
    return upsample(values, factor, mode="bilinear", periodic_longitude=periodic_longitude).numpy()


# -- scores of one variable ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Spectrum:
    """A radially averaged power spectrum: wavenumbers [1/km] and power [(units)^2 km^2]."""

    wavenumber: np.ndarray
    power: np.ndarray


@dataclass
class VariableEvaluation:
    """Scores and spectra of one variable: ``scores`` is JSON-ready (``ensemble``, ``bilinear``, ``spectra``)."""

    name: str
    units: str
    members: int
    k_nyquist_coarse: float
    scores: dict[str, Any]
    spectra: dict[str, Spectrum] = field(default_factory=dict)


def evaluate_variable(
    name: str,
    ensemble: np.ndarray,
    truth: np.ndarray,
    baseline: np.ndarray,
    latitude: np.ndarray,
    longitude: np.ndarray,
    factor: int,
    units: str = "",
    seed: int = 0,
) -> VariableEvaluation:
    """Scores of ``ensemble`` (M, T, H, W) and of the bilinear ``baseline`` (T, H, W) against ``truth`` (T, H, W).

    Both get RMSE, MAE, bias, CRPS and the percentile errors; the ensemble also spread, SSR and the rank
    histogram. Spectra: the truth, the members (the mean of their spectra), the ensemble mean and the baseline;
    ``spectral_ratio`` compares each with the truth on the shells above 1 / (2 ``factor`` min(dx, dy)).
    """
    ensemble_result = ensemble_scores(ensemble, truth, latitude, seed=seed)
    baseline_result = deterministic_scores(baseline, truth, latitude)
    members = ensemble.shape[0]
    spectra = {
        "truth": latlon_power_spectrum(truth, latitude, longitude),
        "ensemble members": latlon_power_spectrum(ensemble.reshape(-1, *truth.shape[1:]), latitude, longitude),
        "ensemble mean": latlon_power_spectrum(ensemble.mean(axis=0), latitude, longitude),
        "bilinear": latlon_power_spectrum(baseline, latitude, longitude),
    }
    k_nyquist = coarse_nyquist_wavenumber(latitude, longitude, factor)
    k, truth_power = spectra["truth"]
    ensemble_result["spectral_ratio"] = spectral_ratio(k, spectra["ensemble members"][1], truth_power, k_nyquist)
    ensemble_result["ensemble_mean"]["spectral_ratio"] = spectral_ratio(
        k, spectra["ensemble mean"][1], truth_power, k_nyquist
    )
    baseline_result["spectral_ratio"] = spectral_ratio(k, spectra["bilinear"][1], truth_power, k_nyquist)
    scores = {
        "units": units,
        "ensemble": ensemble_result,
        "bilinear": baseline_result,
        "spectra": {
            "k_nyquist_coarse_per_km": k_nyquist,
            "wavenumber_per_km": k.tolist(),
            **{label: power.tolist() for label, (_, power) in spectra.items()},
        },
    }
    return VariableEvaluation(
        name=name,
        units=units,
        members=members,
        k_nyquist_coarse=k_nyquist,
        scores=scores,
        spectra={label: Spectrum(wavenumber, power) for label, (wavenumber, power) in spectra.items()},
    )


def _json_ready(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(key): _json_ready(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_ready(item) for item in value]
    if isinstance(value, np.ndarray):
        return _json_ready(value.tolist())
    if isinstance(value, np.generic):
        return _json_ready(value.item())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_scores_json(path: Path, document: Mapping[str, Any]) -> None:
    """Write ``document`` as indented JSON; NaN and infinite numbers become null (valid JSON)."""
    Path(path).write_text(json.dumps(_json_ready(document), indent=2, allow_nan=False) + "\n")


def weighted_quantiles(values: Any, latitude: Any, levels: Sequence[float]) -> np.ndarray:
    """Area-weighted quantiles of ``values`` (..., H, W) pooled over every leading axis, at ``levels`` in [0, 1].

    The empirical distribution gives each point the weight cos(phi_i); the quantile at level q is interpolated
    in the cumulative weight at the mid-points of the sorted values.
    """
    array = np.asarray(values, dtype=np.float64)
    weights = np.broadcast_to(area_weights(latitude)[:, None], array.shape[-2:])
    weights = np.broadcast_to(weights, array.shape).ravel()
    order = np.argsort(array.ravel(), kind="stable")
    sorted_values = array.ravel()[order]
    cumulative = np.cumsum(weights[order])
    mid = (cumulative - 0.5 * weights[order]) / cumulative[-1]
    return np.interp(np.asarray(levels, dtype=np.float64), mid, sorted_values)


# -- figures -----------------------------------------------------------------------------------------------------
def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _label(variable: str, units: str) -> str:
    return f"{variable} [{units}]" if units else variable


def plot_maps(
    path: Path,
    *,
    variable: str,
    units: str,
    latitude: np.ndarray,
    longitude: np.ndarray,
    truth: np.ndarray,
    ensemble_mean: np.ndarray,
    spread: np.ndarray,
    members: np.ndarray,
    coarse: np.ndarray,
    coarse_latitude: np.ndarray,
    coarse_longitude: np.ndarray,
    bilinear: np.ndarray | None = None,
    title: str = "",
) -> None:
    """Maps (H, W) of one time: truth, coarse input (on its own grid), ensemble mean, spread, bilinear baseline and
    up to three members (``members`` (k, H, W)); one colour scale for the fields, another for the spread."""
    plt = _pyplot()
    panels: list[tuple[str, np.ndarray, np.ndarray, np.ndarray]] = [
        ("truth", truth, latitude, longitude),
        ("coarse input", coarse, coarse_latitude, coarse_longitude),
        ("ensemble mean", ensemble_mean, latitude, longitude),
    ]
    if bilinear is not None:
        panels.append(("bilinear baseline", bilinear, latitude, longitude))
    panels += [(f"member {index + 1}", member, latitude, longitude) for index, member in enumerate(members[:3])]
    shown = np.concatenate([np.ravel(panel[1]) for panel in panels])
    vmin, vmax = float(shown.min()), float(shown.max())
    columns = 4
    rows = math.ceil((len(panels) + 1) / columns)
    figure, axes = plt.subplots(rows, columns, figsize=(4.0 * columns, 3.3 * rows), squeeze=False, layout="constrained")
    for axis, (name, values, lat, lon) in zip(axes.flat, panels, strict=False):
        mesh = axis.pcolormesh(lon, lat, values, shading="nearest", cmap="viridis", vmin=vmin, vmax=vmax)
        axis.set_title(name)
        figure.colorbar(mesh, ax=axis, label=_label(variable, units))
    spread_axis = axes.flat[len(panels)]
    mesh = spread_axis.pcolormesh(longitude, latitude, spread, shading="nearest", cmap="magma")
    spread_axis.set_title("ensemble spread (std. dev.)")
    figure.colorbar(mesh, ax=spread_axis, label=_label(f"spread of {variable}", units))
    for axis in axes.flat[: len(panels) + 1]:
        axis.set_xlabel("longitude [degrees east]")
        axis.set_ylabel("latitude [degrees north]")
        axis.set_aspect(1.0 / max(math.cos(math.radians(float(np.mean(latitude)))), 0.1))
    for axis in axes.flat[len(panels) + 1 :]:
        axis.set_visible(False)
    if title:
        figure.suptitle(title)
    figure.savefig(path, dpi=100)
    plt.close(figure)


def plot_spectra(
    path: Path, spectra: Mapping[str, Spectrum], k_nyquist_coarse: float, variable: str, units: str
) -> None:
    """Radially averaged power spectra (log-log) with the coarse grid's Nyquist wavenumber marked."""
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(6.5, 4.5), layout="constrained")
    styles = {"truth": ("black", "-"), "bilinear": ("tab:red", "--"), "ensemble mean": ("tab:green", ":")}
    for label, spectrum in spectra.items():
        color, style = styles.get(label, ("tab:blue", "-"))
        axis.loglog(spectrum.wavenumber, spectrum.power, style, color=color, label=label)
    axis.axvline(k_nyquist_coarse, color="grey", linewidth=1, label="coarse Nyquist wavenumber")
    axis.xaxis.set_minor_formatter(plt.NullFormatter())
    axis.set_xlabel("wavenumber [1/km]")
    power_units = f"({units})$^2$ km$^2$" if units else "km$^2$"
    axis.set_ylabel(f"power spectral density [{power_units}]")
    axis.set_title(f"{variable}: radially averaged power spectra")
    axis.legend()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def plot_rank_histogram(path: Path, frequency: Sequence[float], variable: str) -> None:
    """Bar chart of the area-weighted rank frequencies 0..M, with the flat level 1 / (M + 1) of calibration."""
    plt = _pyplot()
    values = np.asarray(frequency, dtype=np.float64)
    figure, axis = plt.subplots(figsize=(6.0, 4.0), layout="constrained")
    axis.bar(np.arange(values.size), values, color="tab:blue", label="observed")
    axis.axhline(1.0 / values.size, color="black", linestyle="--", label="calibrated (1 / (M + 1))")
    axis.set_xlabel(f"rank of the truth among the {values.size - 1} members")
    axis.set_ylabel("relative frequency (area-weighted)")
    axis.set_title(f"{variable}: rank histogram")
    axis.legend()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def plot_qq(
    path: Path,
    truth: np.ndarray,
    predictions: Mapping[str, np.ndarray],
    latitude: np.ndarray,
    variable: str,
    units: str,
) -> None:
    """Quantile-quantile plot: area-weighted quantiles (0.1 % to 99.9 %) of each prediction against the truth's."""
    plt = _pyplot()
    reference = weighted_quantiles(truth, latitude, QQ_LEVELS)
    figure, axis = plt.subplots(figsize=(5.0, 5.0), layout="constrained")
    for label, values in predictions.items():
        axis.plot(reference, weighted_quantiles(values, latitude, QQ_LEVELS), ".", markersize=4, label=label)
    axis.plot(reference[[0, -1]], reference[[0, -1]], color="black", linewidth=1, label="1:1")
    axis.set_xlabel(f"truth quantile, {_label(variable, units)}")
    axis.set_ylabel(f"predicted quantile, {_label(variable, units)}")
    axis.set_title(f"{variable}: quantile-quantile")
    axis.legend()
    figure.savefig(path, dpi=100)
    plt.close(figure)
