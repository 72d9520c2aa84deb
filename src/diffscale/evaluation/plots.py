"""Figures of the diffusion process: exact forward densities p_t(x) against reverse-process histograms.

The figure has one row per formulation and one column per noise level sigma. Each panel draws the exact
density of the scaled state x = s(t) (y + sigma(t) n) at that time,

    p_t(x) = p(x / s(t); sigma(t)) / s(t),

as a curve (the forward process, which carries the data density into a normal one as sigma grows) and
a histogram of the sampler's states at the same time (the learned reverse process, which should follow
the curve back to the data). The plotting functions only draw: the caller computes grids, densities
and samples (see :mod:`diffscale.demo`). Figures are rendered by matplotlib's Agg canvas directly,
without pyplot, so the user's backend and global figure state are untouched.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import MaxNLocator

__all__ = ["DensityPanel", "ProcessRow", "forward_reverse_figure", "plot_forward_reverse"]

FORWARD_COLOR = "#1f4e79"
REVERSE_COLOR = "#e8833a"
FORWARD_LABEL = "forward process: exact density p_t(x) of x = s(t) (y + σ(t) n)"


@dataclass(frozen=True)
class DensityPanel:
    """One panel: the state at time t with noise level sigma = sigma(t).

    Attributes:
        sigma: noise level sigma(t).
        t: time t of the formulation.
        grid: points x at which ``density`` is given, shape (G,).
        density: exact forward density p_t(x) on ``grid``, shape (G,).
        samples: reverse-process states x at the same t, shape (n,); empty to draw the curve alone.
        note: optional short text for the panel's upper right corner (e.g. a score).
    """

    sigma: float
    t: float
    grid: np.ndarray
    density: np.ndarray
    samples: np.ndarray
    note: str = ""


@dataclass(frozen=True)
class ProcessRow:
    """One row of the figure: a label (the formulation) and its panels, ordered by increasing sigma."""

    label: str
    panels: Sequence[DensityPanel]


def _format_sigma(sigma: float) -> str:
    if sigma == 0:
        return "0"
    if sigma >= 10:
        return f"{sigma:.0f}"
    if sigma >= 1:
        return f"{sigma:.2g}" if sigma < 9.95 else f"{sigma:.0f}"
    return f"{sigma:.2g}"


def _draw_panel(axis: Axes, panel: DensityPanel, bins: int) -> None:
    grid = np.asarray(panel.grid, dtype=float)
    density = np.asarray(panel.density, dtype=float)
    samples = np.asarray(panel.samples, dtype=float).reshape(-1)
    tallest = float(density.max())
    if samples.size:
        heights, _, _ = axis.hist(
            samples,
            bins=bins,
            range=(grid[0], grid[-1]),
            density=True,
            color=REVERSE_COLOR,
            alpha=0.55,
            linewidth=0,
        )
        tallest = max(tallest, min(float(heights.max()), 2.0 * tallest))  # show a poor fit, within reason
    axis.plot(grid, density, color=FORWARD_COLOR, linewidth=1.4)
    axis.set_xlim(grid[0], grid[-1])
    headroom = 1.5 if panel.note else 1.18  # keep the corner texts above the curve
    axis.set_ylim(0, headroom * max(tallest, 1e-12))
    axis.set_yticks([])
    axis.tick_params(axis="x", labelsize=7, length=2, pad=1)
    axis.xaxis.set_major_locator(MaxNLocator(nbins=3, symmetric=True))
    axis.text(
        0.03,
        0.96,
        f"σ={_format_sigma(panel.sigma)}\nt={panel.t:.3g}",
        transform=axis.transAxes,
        fontsize=7,
        va="top",
        ha="left",
        color="0.25",
    )
    if panel.note:
        axis.text(0.97, 0.96, panel.note, transform=axis.transAxes, fontsize=7, va="top", ha="right", color="0.1")
    for side in ("top", "right", "left"):
        axis.spines[side].set_visible(False)


def forward_reverse_figure(
    rows: Sequence[ProcessRow],
    *,
    title: str | None = None,
    column_titles: Sequence[str] | None = None,
    bins: int = 60,
) -> Figure:
    """The forward/reverse figure (rows: formulations, columns: noise levels): in each panel the exact density of
    the forward process at that noise level and a histogram of the sampler's states there. The x axes are the
    value x of the (noised) data, the y axes its probability density (one scale per panel).

    Args:
        rows: one :class:`ProcessRow` per formulation; every row has the same number of panels.
        title: figure title.
        column_titles: one header per column (e.g. the target noise levels); panel texts give exact values.
        bins: histogram bins per panel.
    """
    if not rows:
        raise ValueError("rows: need at least one row")
    columns = len(rows[0].panels)
    if columns == 0 or any(len(row.panels) != columns for row in rows):
        raise ValueError("rows: every row needs the same, non-zero number of panels")
    if column_titles is not None and len(column_titles) != columns:
        raise ValueError(f"column_titles: expected {columns} titles, got {len(column_titles)}")
    figure = Figure(figsize=(1.9 * columns + 0.9, 1.55 * len(rows) + 1.3))
    FigureCanvasAgg(figure)
    axes = figure.subplots(len(rows), columns, squeeze=False)
    for r, row in enumerate(rows):
        for c, panel in enumerate(row.panels):
            _draw_panel(axes[r, c], panel, bins)
        axes[r, 0].set_ylabel(row.label, fontsize=10, fontweight="bold", rotation=90, labelpad=6)
    for c in range(columns):
        axes[-1, c].set_xlabel("x", fontsize=8, labelpad=1)
    if column_titles is not None:
        for c, text in enumerate(column_titles):
            axes[0, c].set_title(text, fontsize=9)
    handles = [
        Line2D([], [], color=FORWARD_COLOR, linewidth=1.4, label=FORWARD_LABEL),
        Patch(color=REVERSE_COLOR, alpha=0.55, label="learned reverse process: sampler states x_i at the same t"),
    ]
    figure.legend(handles=handles, loc="lower center", ncol=2, fontsize=8, frameon=False, bbox_to_anchor=(0.5, 0.0))
    if title:
        figure.suptitle(title, fontsize=11)
    figure.supylabel("probability density of x (one scale per panel)", fontsize=9)
    figure.tight_layout(rect=(0.015, 0.05, 1, 1), h_pad=0.6, w_pad=0.4)
    return figure


def plot_forward_reverse(
    rows: Sequence[ProcessRow],
    path: Path,
    *,
    title: str | None = None,
    column_titles: Sequence[str] | None = None,
    bins: int = 60,
    dpi: int = 130,
) -> Path:
    """Draw :func:`forward_reverse_figure` and save it as PNG at ``path`` (its folder must exist)."""
    figure = forward_reverse_figure(rows, title=title, column_titles=column_titles, bins=bins)
    path = Path(path)
    figure.savefig(path, dpi=dpi)
    return path
