"""Evaluation report of a downscaled ensemble: the bilinear baseline, the scores of both, spectra, figures, JSON.

:func:`evaluate_variable` scores one variable of an ensemble (M, T, H, W) and of the bilinear baseline
(T, H, W) against the truth (T, H, W) (:mod:`diffscale.evaluation.scores`) and compares their radially averaged
power spectra with the truth's above the coarse grid's Nyquist wavenumber (:mod:`diffscale.evaluation.spectra`).
The ensemble's calibration is scored too (:mod:`diffscale.evaluation.calibration`): the rank histogram's flatness
and the binned spread-error relation. The figures are maps of one time, the spectra, the rank histogram (with its
flatness figures), the spread-error relation and a quantile-quantile plot, each as a ``*_figure`` function that
returns a matplotlib Figure and a ``plot_*`` function that writes it as a PNG; :func:`write_scores_json` writes
the scores with NaN as null.

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
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FormatStrFormatter, LogLocator, NullFormatter

from diffscale.evaluation.calibration import DEFAULT_SPREAD_ERROR_BINS, rank_histogram_flatness, spread_error_bins
from diffscale.evaluation.scores import area_weights, deterministic_scores, ensemble_scores
from diffscale.evaluation.spectra import coarse_nyquist_wavenumber, latlon_power_spectrum, spectral_ratio

__all__ = [
    "Spectrum",
    "VariableEvaluation",
    "coarsen_block_mean",
    "evaluate_variable",
    "maps_figure",
    "plot_maps",
    "plot_qq",
    "plot_rank_histogram",
    "plot_spectra",
    "plot_spread_error",
    "qq_figure",
    "rank_histogram_figure",
    "spectra_figure",
    "spread_error_figure",
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
    spread_error_bin_count: int = DEFAULT_SPREAD_ERROR_BINS,
) -> VariableEvaluation:
    """Scores of ``ensemble`` (M, T, H, W) and of the bilinear ``baseline`` (T, H, W) against ``truth`` (T, H, W).

    Both get RMSE, MAE, bias, CRPS and the percentile errors; the ensemble also spread, SSR, the rank histogram,
    ``rank_flatness`` (:func:`~diffscale.evaluation.calibration.rank_histogram_flatness`, same ``seed``) and
    ``spread_error`` (:func:`~diffscale.evaluation.calibration.spread_error_bins` with
    ``spread_error_bin_count`` bins, sorted by a held-out half of the members for M >= 4, by all members for
    M = 2 or 3; None for a single member). Spectra: the truth, the members (the mean of their spectra), the
    ensemble mean and the baseline; ``spectral_ratio`` compares each with the truth on the shells above
    1 / (2 ``factor`` min(dx, dy)).
    """
    ensemble_result = ensemble_scores(ensemble, truth, latitude, seed=seed)
    ensemble_result["rank_flatness"] = rank_histogram_flatness(ensemble, truth, latitude, seed=seed)
    ensemble_result["spread_error"] = (
        spread_error_bins(
            ensemble,
            truth,
            latitude,
            bins=spread_error_bin_count,
            sort_by="held_out" if ensemble.shape[0] >= 4 else "ensemble",
        )
        if ensemble.shape[0] >= 2
        else None
    )
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
# Each figure has a ``*_figure(...) -> Figure`` function (for notebooks: display it, save it, change it) and a
# ``plot_*(path, ...)`` function that writes it as a PNG. Figures are built on matplotlib's Agg canvas without
# pyplot, so neither the backend nor pyplot's list of open figures changes.
def _new_figure(**options: Any) -> Figure:
    figure = Figure(layout="constrained", **options)
    FigureCanvasAgg(figure)
    return figure


def _save(figure: Figure, path: Path) -> None:
    figure.savefig(path, dpi=100)


def _label(variable: str, units: str) -> str:
    return f"{variable} [{units}]" if units else variable


def maps_figure(
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
) -> Figure:
    """Maps (H, W) of one time: truth, coarse input (on its own grid), ensemble mean, spread, bilinear baseline and
    up to three members (``members`` (k, H, W)); one colour scale for the fields, another for the spread."""
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
    figure = _new_figure(figsize=(4.0 * columns, 3.3 * rows))
    axes = figure.subplots(rows, columns, squeeze=False)
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
    return figure


def plot_maps(path: Path, **fields: Any) -> None:
    """Write :func:`maps_figure` (same keyword arguments) as a PNG at ``path``."""
    _save(maps_figure(**fields), path)


def _squared_units(units: str) -> str:
    """``units`` squared for an axis label: K -> K$^2$, m s**-1 -> (m s**-1)$^2$, none -> 1."""
    if not units or units == "1":
        return "1"
    return f"{units}$^2$" if units.replace("_", "").isalnum() else f"({units})$^2$"


def spectra_figure(spectra: Mapping[str, Spectrum], k_nyquist_coarse: float, variable: str, units: str) -> Figure:
    """Radially averaged power spectra (log-log) with the coarse grid's Nyquist wavenumber marked."""
    figure = _new_figure(figsize=(6.5, 4.5))
    axis = figure.subplots()
    styles = {"truth": ("black", "-"), "bilinear": ("tab:red", "--"), "ensemble mean": ("tab:green", ":")}
    for label, spectrum in spectra.items():
        color, style = styles.get(label, ("tab:blue", "-"))
        axis.loglog(spectrum.wavenumber, spectrum.power, style, color=color, label=label)
    axis.axvline(k_nyquist_coarse, color="grey", linewidth=1, label="coarse Nyquist wavenumber")
    # a few hundred km of domain span less than a decade of wavenumbers: label 1, 2 and 5 of every decade
    axis.xaxis.set_major_locator(LogLocator(base=10.0, subs=(1.0, 2.0, 5.0)))
    axis.xaxis.set_major_formatter(FormatStrFormatter("%g"))
    axis.xaxis.set_minor_formatter(NullFormatter())
    axis.set_xlabel("wavenumber [1/km]")
    axis.set_ylabel(f"power spectral density [{_squared_units(units)} km$^2$]")
    axis.set_title(f"{variable}: radially averaged power spectra")
    axis.legend()
    return figure


def plot_spectra(
    path: Path, spectra: Mapping[str, Spectrum], k_nyquist_coarse: float, variable: str, units: str
) -> None:
    """Write :func:`spectra_figure` as a PNG at ``path``."""
    _save(spectra_figure(spectra, k_nyquist_coarse, variable, units), path)


def _finite(value: Any) -> bool:
    return value is not None and math.isfinite(value)


def _number(value: Any, digits: int = 3) -> str:
    return f"{value:.{digits}g}" if _finite(value) else "-"


def _flatness_lines(flatness: Mapping[str, Any]) -> str:
    """Two lines of the flatness figures (NaN or None, as read back from JSON, written as '-')."""
    return (
        f"chi-square p = {_number(flatness['p_value'], 2)} "
        f"(times as clusters: {_number(flatness.get('p_value_time_clustered'), 2)}); "
        f"reliability index {_number(flatness['reliability_index'])} "
        f"(calibrated: {_number(flatness['reliability_index_calibrated'])})\n"
        f"truth outside the ensemble: {_number(100 * flatness['outside_fraction'])} % "
        f"(calibrated: {_number(100 * flatness['outside_fraction_calibrated'])} %)"
    )


def rank_histogram_figure(
    frequency: Sequence[float], variable: str, flatness: Mapping[str, Any] | None = None
) -> Figure:
    """Bar chart of the area-weighted rank frequencies 0..M, with the flat level p = 1 / (M + 1) of calibration.

    With ``flatness`` (:func:`~diffscale.evaluation.calibration.rank_histogram_flatness`) its p-values, reliability
    index and share outside the ensemble are written in the title, and the band p +- 2 sqrt(p (1 - p) / n') that
    a calibrated ensemble's frequencies keep to from sampling noise (n' its time-clustered effective number of
    cases, or the independent one for a single time) is shaded.
    """
    values = np.asarray(frequency, dtype=np.float64)
    level = 1.0 / values.size
    figure = _new_figure(figsize=(6.5, 4.5) if flatness else (6.0, 4.0))
    axis = figure.subplots()
    axis.bar(np.arange(values.size), values, color="tab:blue", label="observed")
    axis.axhline(level, color="black", linestyle="--", label="calibrated (1 / (M + 1))")
    title = f"{variable}: rank histogram"
    if flatness:
        cases = flatness.get("effective_cases_time_clustered")
        cases = cases if _finite(cases) else flatness["effective_cases"]
        half_width = 2.0 * math.sqrt(level * (1.0 - level) / cases)
        axis.axhspan(level - half_width, level + half_width, color="grey", alpha=0.25, label="calibrated +- 2 s.d.")
        title = f"{title}\n{_flatness_lines(flatness)}"
    axis.set_xlabel(f"rank of the truth among the {values.size - 1} members")
    axis.set_ylabel("relative frequency (area-weighted)")
    axis.set_title(title, fontsize="medium" if flatness else None)
    axis.legend()
    return figure


def plot_rank_histogram(
    path: Path, frequency: Sequence[float], variable: str, flatness: Mapping[str, Any] | None = None
) -> None:
    """Write :func:`rank_histogram_figure` as a PNG at ``path``."""
    _save(rank_histogram_figure(frequency, variable, flatness), path)


def spread_error_figure(spread_error: Mapping[str, Any], variable: str, units: str = "") -> Figure:
    """The binned spread-error relation (:func:`~diffscale.evaluation.calibration.spread_error_bins`): RMSE of
    the ensemble mean against the spread sqrt((M + 1) / M) s of each bin, each bin's number of cases beside its
    point; a calibrated ensemble lies on the diagonal, an under-dispersed one above it, an over-dispersed one
    below. The title gives the sorting and the mean |ln(spread / RMSE)| and log-log slope over the bins."""
    spread = np.asarray(spread_error["spread"], dtype=np.float64)
    rmse = np.asarray(spread_error["rmse"], dtype=np.float64)
    figure = _new_figure(figsize=(5.5, 5.5))
    axis = figure.subplots()
    top = 1.05 * float(np.nanmax(np.concatenate([spread, rmse, [0.0]])))
    top = top if top > 0 else 1.0
    axis.plot([0.0, top], [0.0, top], color="black", linewidth=1, label="calibrated (RMSE = spread)")
    axis.plot(spread, rmse, "o", color="tab:blue", label=f"{spread_error['bins']} bins of equal area")
    for x, y, count in zip(spread, rmse, spread_error["counts"], strict=True):
        axis.annotate(f"{count}", (x, y), textcoords="offset points", xytext=(4, -10), fontsize="x-small")
    axis.text(0.05, 0.93, "under-dispersed", transform=axis.transAxes, color="grey")
    axis.text(0.95, 0.05, "over-dispersed", transform=axis.transAxes, color="grey", ha="right")
    axis.set_xlim(0.0, top)
    axis.set_ylim(0.0, top)
    axis.set_aspect("equal")
    members = spread_error["members"]
    axis.set_xlabel(f"spread sqrt(({members} + 1) / {members}) x member std. dev., {_label(variable, units)}")
    axis.set_ylabel(f"RMSE of the ensemble mean, {_label(variable, units)}")
    summary = (
        f"mean |ln(spread / RMSE)| = {_number(spread_error['mean_abs_log_ratio'])}, "
        f"log-log slope = {_number(spread_error['log_slope'])}"
    )
    axis.set_title(f"{variable}: spread-error\nsorted by the {spread_error['sorted_by']}\n{summary}", fontsize="small")
    axis.legend(loc="lower right", bbox_to_anchor=(1.0, 0.1))
    return figure


def plot_spread_error(path: Path, spread_error: Mapping[str, Any], variable: str, units: str = "") -> None:
    """Write :func:`spread_error_figure` as a PNG at ``path``."""
    _save(spread_error_figure(spread_error, variable, units), path)


def qq_figure(
    truth: np.ndarray,
    predictions: Mapping[str, np.ndarray],
    latitude: np.ndarray,
    variable: str,
    units: str,
) -> Figure:
    """Quantile-quantile plot: area-weighted quantiles (0.1 % to 99.9 %) of each prediction against the truth's."""
    reference = weighted_quantiles(truth, latitude, QQ_LEVELS)
    figure = _new_figure(figsize=(5.0, 5.0))
    axis = figure.subplots()
    for label, values in predictions.items():
        axis.plot(reference, weighted_quantiles(values, latitude, QQ_LEVELS), ".", markersize=4, label=label)
    axis.plot(reference[[0, -1]], reference[[0, -1]], color="black", linewidth=1, label="1:1")
    axis.set_xlabel(f"truth quantile, {_label(variable, units)}")
    axis.set_ylabel(f"predicted quantile, {_label(variable, units)}")
    axis.set_title(f"{variable}: quantile-quantile")
    axis.legend()
    return figure


def plot_qq(
    path: Path,
    truth: np.ndarray,
    predictions: Mapping[str, np.ndarray],
    latitude: np.ndarray,
    variable: str,
    units: str,
) -> None:
    """Write :func:`qq_figure` as a PNG at ``path``."""
    _save(qq_figure(truth, predictions, latitude, variable, units), path)
