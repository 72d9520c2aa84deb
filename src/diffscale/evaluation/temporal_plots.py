"""The figure of the temporal scores: autocorrelation functions of the residuals (truth against the members) and
a few members' series at one grid point against the truth's.

Like the other report figures (:mod:`diffscale.evaluation.climate_report`), it is built on matplotlib's Agg canvas
without pyplot: :func:`temporal_figure` returns the Figure (for notebooks), :func:`plot_temporal` writes it as a PNG.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

__all__ = ["plot_temporal", "temporal_figure"]

TRUTH_COLOR = "black"
ENSEMBLE_COLOR = "#e8833a"
MEMBER_COLORS = ("#1f4e79", "#4f9a4f", "#b03a2e", "#7d3c98", "#b7950b")


def temporal_figure(
    lag_hours: Any,
    truth_autocorrelation: Any,
    member_autocorrelation: Any,
    hours: Any,
    truth_series: Any,
    member_series: Any,
    variable: str,
    units: str = "",
    point: str = "",
) -> Figure:
    """Left: rho_k against the lag in hours of the truth's residual (black) and of each member's (thin) with their
    mean (thick), and rho = 0. Right: the series at one grid point (``point`` names it) of the truth and of the
    members in ``member_series`` (N, T), against ``hours`` since the first time (T,).

    ``member_autocorrelation`` is (M, K); ``truth_autocorrelation`` and ``lag_hours`` are (K,).
    """
    lags = np.asarray(lag_hours, dtype=float)
    members_acf = np.atleast_2d(np.asarray(member_autocorrelation, dtype=float))
    series = np.atleast_2d(np.asarray(member_series, dtype=float))
    figure = Figure(layout="constrained", figsize=(11.0, 4.2))
    FigureCanvasAgg(figure)
    acf_axis, series_axis = figure.subplots(1, 2, width_ratios=(1.0, 1.6))
    for index, row in enumerate(members_acf):
        acf_axis.plot(lags, row, color=ENSEMBLE_COLOR, alpha=0.35, lw=0.8, label="members" if index == 0 else None)
    with np.errstate(invalid="ignore"):
        acf_axis.plot(lags, np.nanmean(members_acf, axis=0), color=ENSEMBLE_COLOR, lw=2.2, label="member mean")
    acf_axis.plot(lags, np.asarray(truth_autocorrelation, dtype=float), color=TRUTH_COLOR, lw=2.2, label="truth")
    acf_axis.axhline(0.0, color="grey", lw=0.8, ls=":")
    acf_axis.set_xlabel("lag [h]")
    acf_axis.set_ylabel("autocorrelation of the residual")
    acf_axis.set_title(f"{variable}: residual x - bilinear(coarse)")
    acf_axis.legend(frameon=False)
    time_axis = np.asarray(hours, dtype=float)
    for index, row in enumerate(series):
        color = MEMBER_COLORS[index % len(MEMBER_COLORS)]
        series_axis.plot(time_axis, row, color=color, lw=1.0, alpha=0.85, label=f"member {index}")
    series_axis.plot(time_axis, np.asarray(truth_series, dtype=float), color=TRUTH_COLOR, lw=1.8, label="truth")
    series_axis.set_xlabel("hours since the first time")
    series_axis.set_ylabel(f"{variable} [{units}]" if units else variable)
    series_axis.set_title(f"series at {point}" if point else "series at one point")
    series_axis.legend(frameon=False, ncol=2, fontsize="small")
    return figure


def plot_temporal(path: Path, **arguments: Any) -> None:
    """Write :func:`temporal_figure` (same keyword arguments) as a PNG at ``path``."""
    temporal_figure(**arguments).savefig(path, dpi=100)
