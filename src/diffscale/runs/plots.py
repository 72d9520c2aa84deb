"""The figures of ``diffscale evaluate`` as functions returning matplotlib figures, for notebooks.

>>> from diffscale.runs import plots
>>> scores = diffscale.evaluate(ensemble, truth)
>>> plots.rank_histogram(scores, variable="t2m")         # from the scores Dataset
>>> plots.spread_error(scores, variable="t2m"); plots.spectra(scores, variable="t2m")
>>> plots.maps(ensemble, truth, variable="t2m", time="2019-03-27T12:00")   # from the fields themselves
>>> plots.quantiles(ensemble, truth, variable="t2m")
>>> plots.temporal(ensemble, truth, variable="t2m")      # autocorrelations and series at a point

Each returns a :class:`matplotlib.figure.Figure` of one variable (no pyplot state is touched; a notebook shows it,
``.savefig`` writes it). ``variable`` may be left out when the scores or the ensemble hold one variable; with
several, leaving it out raises a one-line :class:`~diffscale.validation.ConfigError` naming them and ``variable=``,
as does any bad input (an unknown variable or time).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import xarray as xr
from matplotlib.figure import Figure

from diffscale.data.climate.calendars import calendar_of, date_keys, is_cftime, parse_time_bound, time_text
from diffscale.evaluation.climate_report import (
    Spectrum,
    maps_figure,
    qq_figure,
    rank_histogram_figure,
    spectra_figure,
    spread_error_figure,
)
from diffscale.runs.evaluation import FLATNESS_KEYS, EnsembleSource, FieldsSource, load_inputs
from diffscale.runs.temporal import SERIES_MEMBERS, temporal_inputs_figure
from diffscale.validation import ConfigError

__all__ = ["maps", "quantiles", "rank_histogram", "spectra", "spread_error", "temporal"]


def _one_of(names: list[str], held: str) -> str:
    """The only name of ``names``; a ConfigError naming them and ``variable=`` when there are several."""
    if len(names) != 1:
        raise ConfigError(
            f"variable: {held} hold {len(names)} variables ({', '.join(names)}) and a figure shows one; "
            f"pass variable={names[0]!r} (or another of them)"
        )
    return names[0]


def _variable(scores: xr.Dataset, variable: str | None) -> xr.Dataset:
    names = [str(name) for name in scores["variable"].values]
    if variable is None:
        variable = _one_of(names, "the scores")
    if variable not in names:
        raise ConfigError(f"variable {variable!r}: not among the scored variables ({', '.join(names)})")
    return scores.sel(variable=variable)


def _value(data: xr.DataArray) -> float | None:
    value = float(data)
    return value if math.isfinite(value) else None


def rank_histogram(scores: xr.Dataset, variable: str | None = None) -> Figure:
    """The rank histogram of ``variable`` (may be left out when the scores hold one) with its flatness figures."""
    selected = _variable(scores, variable)
    flatness = {key: _value(selected[f"rank_{key}"]) for key in FLATNESS_KEYS if f"rank_{key}" in selected}
    usable = flatness if flatness.get("p_value") is not None or flatness.get("reliability_index") is not None else None
    return rank_histogram_figure(selected["rank_histogram"].values, str(selected["variable"].values), usable)


def spread_error(scores: xr.Dataset, variable: str | None = None) -> Figure:
    """The binned spread-error relation of ``variable`` (needs an ensemble of two members or more)."""
    selected = _variable(scores, variable)
    spread = selected["spread_error_spread"].values
    kept = np.isfinite(spread)
    if not kept.any():
        raise ConfigError(f"variable {str(selected['variable'].values)!r}: no spread-error relation (one member?)")
    binned = {
        "spread": spread[kept],
        "rmse": selected["spread_error_rmse"].values[kept],
        "counts": selected["spread_error_counts"].values[kept].astype(int).tolist(),
        "bins": int(kept.sum()),
        "members": int(scores.attrs["members"]),
        "sorted_by": scores.attrs.get("spread_error_sorted_by", ""),
        "mean_abs_log_ratio": _value(selected["spread_error_mean_abs_log_ratio"]),
        "log_slope": _value(selected["spread_error_log_slope"]),
    }
    return spread_error_figure(binned, str(selected["variable"].values), str(selected["units"].values))


def spectra(scores: xr.Dataset, variable: str | None = None) -> Figure:
    """The radially averaged power spectra of the truth, the members, the ensemble mean and the baseline."""
    selected = _variable(scores, variable)
    wavenumber = selected["wavenumber"].values
    curves = {
        str(label): Spectrum(wavenumber, selected["power"].sel(spectrum=label).values)
        for label in selected["spectrum"].values
    }
    name, units = str(selected["variable"].values), str(selected["units"].values)
    return spectra_figure(curves, float(selected["k_nyquist_coarse"]), name, units)


def _time_index(times: np.ndarray, time: Any) -> int:
    if isinstance(time, int | np.integer) and not isinstance(time, bool):
        if not -times.size <= time < times.size:
            raise ConfigError(f"time = {time}: the evaluated times are 0 .. {times.size - 1}")
        return int(time) % times.size
    if is_cftime(times):  # a date of the times' own calendar: ISO text or a cftime date
        wanted = parse_time_bound(time, calendar_of(times), "time")
        found = np.flatnonzero(date_keys(times) == date_keys(np.array([wanted], dtype=object))[0])
    else:
        found = np.flatnonzero(times == np.datetime64(time, "s"))
    if not found.size:
        raise ConfigError(
            f"time = {time!r}: not among the evaluated times ({time_text(times[0])} .. {time_text(times[-1])})"
        )
    return int(found[0])


def maps(
    ensemble: EnsembleSource,
    truth: FieldsSource,
    variable: str | None = None,
    time: Any = 0,
    coarse: FieldsSource | None = None,
) -> Figure:
    """Maps of one time (an index into the evaluated times, or a date-time): the truth, the coarse input, the
    bilinear baseline, the ensemble mean, the spread and three members."""
    inputs = load_inputs(ensemble, truth, coarse, [variable] if variable is not None else None)
    name = _one_of(list(inputs.variables), "the ensemble and truth") if variable is None else variable
    index = _time_index(inputs.times, time)
    members = inputs.ensemble[name][:, index]
    return maps_figure(
        variable=name,
        units=inputs.units[name],
        latitude=inputs.latitude,
        longitude=inputs.longitude,
        truth=inputs.truth[name][index],
        ensemble_mean=members.mean(axis=0),
        spread=members.std(axis=0, ddof=1) if members.shape[0] > 1 else np.zeros_like(members[0]),
        members=members[:3],
        coarse=inputs.coarse[name][index],
        coarse_latitude=inputs.coarse_latitude,
        coarse_longitude=inputs.coarse_longitude,
        bilinear=inputs.baseline[name][index],
        title=f"{name} at {time_text(inputs.times[index])}",
    )


def quantiles(
    ensemble: EnsembleSource, truth: FieldsSource, variable: str | None = None, coarse: FieldsSource | None = None
) -> Figure:
    """Quantile-quantile plot of the members and the bilinear baseline against the truth (area-weighted)."""
    inputs = load_inputs(ensemble, truth, coarse, [variable] if variable is not None else None)
    name = _one_of(list(inputs.variables), "the ensemble and truth") if variable is None else variable
    predictions = {"ensemble members": inputs.ensemble[name], "bilinear": inputs.baseline[name]}
    return qq_figure(inputs.truth[name], predictions, inputs.latitude, name, inputs.units[name])


def temporal(
    ensemble: EnsembleSource,
    truth: FieldsSource,
    variable: str | None = None,
    coarse: FieldsSource | None = None,
    members: int = SERIES_MEMBERS,
) -> Figure:
    """The autocorrelation of the residual (field minus the bilinear baseline) of each member and of the truth
    against the lag, and the series of ``members`` members and the truth at the grid's centre."""
    inputs = load_inputs(ensemble, truth, coarse, [variable] if variable is not None else None)
    name = _one_of(list(inputs.variables), "the ensemble and truth") if variable is None else variable
    try:
        return temporal_inputs_figure(inputs, name, members)
    except ValueError as error:
        raise ConfigError(f"variable {name!r}: no temporal figure: {error}") from None
