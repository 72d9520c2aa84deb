"""Figures of samples over the exact density of a Gaussian mixture (matplotlib, Agg canvas, no pyplot)."""

from __future__ import annotations

import io
from pathlib import Path

import torch

from diffscale.data.mixtures import GaussianMixture
from diffscale.training.checkpoint import atomic_write_bytes
from diffscale.validation import ConfigError

__all__ = ["PLOT_FORMATS", "check_plot_path", "plot_samples"]

PLOT_FORMATS: tuple[str, ...] = (".png", ".pdf", ".svg")


def check_plot_path(path: str | Path, option: str = "--plot") -> Path:
    """``path`` if its extension is a figure format; ConfigError otherwise."""
    path = Path(path)
    if path.suffix.lower() not in PLOT_FORMATS:
        raise ConfigError(
            f"{option} = '{path}': unknown figure type {path.suffix or '(none)'!r}; allowed: {', '.join(PLOT_FORMATS)}"
        )
    return path


def _limits(mixture: GaussianMixture) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-dimension plot range: the mixture's components +-4 std, padded by a quarter of the span.

    The range follows the exact density, not the samples, so a few stray samples cannot squash the plot;
    how many fall outside is written in the legend.
    """
    low = (mixture.means - 4 * mixture.stds).min(dim=0).values
    high = (mixture.means + 4 * mixture.stds).max(dim=0).values
    pad = 0.25 * (high - low)
    return low - pad, high + pad


def _outside(samples: torch.Tensor, low: torch.Tensor, high: torch.Tensor) -> int:
    """Number of samples (rows) outside the plotted box, non-finite ones included."""
    inside = ((samples >= low) & (samples <= high)).all(dim=1)
    return int((~inside).sum())


def plot_samples(path: str | Path, samples: torch.Tensor, mixture: GaussianMixture, title: str = "") -> Path:
    """Histogram (1-D) or scatter (2-D) of ``samples`` over the exact density of ``mixture``; written atomically."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    path = check_plot_path(path)
    samples = samples.detach().cpu().double()
    if samples.ndim != 2 or samples.shape[1] not in (1, 2):
        raise ValueError(f"can only plot 1-D or 2-D samples, got shape {tuple(samples.shape)}")
    figure = Figure(figsize=(6.0, 4.5) if samples.shape[1] == 1 else (5.5, 5.0), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    low, high = _limits(mixture)
    outside = _outside(samples, low, high)
    label = f"samples (n={samples.shape[0]}" + (f", {outside} outside the plot)" if outside else ")")
    if samples.shape[1] == 1:
        grid = torch.linspace(float(low[0]), float(high[0]), 600, dtype=torch.float64)
        density = mixture.log_prob(grid[:, None]).exp()
        bins = 120
        bin_width = (float(high[0]) - float(low[0])) / bins
        # Weighted by 1 / (n * bin width): a density of all n samples, so samples outside do not inflate it.
        axes.hist(
            samples[:, 0].numpy(),
            bins=bins,
            range=(float(low[0]), float(high[0])),
            weights=torch.full((samples.shape[0],), 1.0 / (samples.shape[0] * bin_width)).numpy(),
            alpha=0.6,
            label=label,
        )
        axes.plot(grid.numpy(), density.numpy(), color="black", linewidth=1.5, label="exact density")
        axes.set_xlabel("x")
        axes.set_ylabel("density")
        axes.legend()
    else:
        xs = torch.linspace(float(low[0]), float(high[0]), 200, dtype=torch.float64)
        ys = torch.linspace(float(low[1]), float(high[1]), 200, dtype=torch.float64)
        grid_x, grid_y = torch.meshgrid(xs, ys, indexing="xy")
        points = torch.stack([grid_x.reshape(-1), grid_y.reshape(-1)], dim=1)
        density = mixture.log_prob(points).exp().reshape(grid_x.shape)
        axes.contourf(grid_x.numpy(), grid_y.numpy(), density.numpy(), levels=20, cmap="Blues")
        axes.scatter(
            samples[:, 0].numpy(),
            samples[:, 1].numpy(),
            s=2,
            color="tab:red",
            alpha=0.5,
            label=label,
        )
        axes.set_xlim(float(low[0]), float(high[0]))
        axes.set_ylim(float(low[1]), float(high[1]))
        axes.set_aspect("equal")
        axes.set_xlabel("x0")
        axes.set_ylabel("x1")
        axes.legend(loc="upper right")
    if title:
        axes.set_title(title)
    buffer = io.BytesIO()
    figure.savefig(buffer, format=path.suffix.lower().lstrip("."), dpi=120)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, buffer.getvalue())
    return path
