"""Figures of samples against the exact data distribution (matplotlib, Agg canvas, no pyplot): for a Gaussian
mixture a histogram (1-D) or scatter (2-D) over the exact density; for Gaussian random fields a few generated
fields next to fresh draws of the true field, and the radially averaged power spectra (log-log)."""

from __future__ import annotations

import io
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from diffscale.data.fields import GaussianRandomField, radial_power_spectrum, spectrum_log_error
from diffscale.data.mixtures import GaussianMixture
from diffscale.files import atomic_write_bytes, check_output
from diffscale.validation import ConfigError, option_name

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = [
    "PLOT_FORMATS",
    "check_plot_path",
    "check_plottable",
    "fields_figure",
    "figure_bytes",
    "plot_fields",
    "plot_samples",
    "samples_figure",
]

PLOT_FORMATS: tuple[str, ...] = (".png", ".pdf", ".svg")


def check_plot_path(path: str | Path, option: str | None = None) -> Path:
    """``path`` if its extension is a figure format and it can be written (:func:`diffscale.files.check_output`);
    ConfigError naming ``option`` (default: the ``plot`` argument) otherwise."""
    return check_output(path, option or option_name("plot"), suffixes=tuple(PLOT_FORMATS), kind="figure")


def check_plottable(data: GaussianMixture | GaussianRandomField, option: str | None = None) -> None:
    """ConfigError unless samples of ``data`` can be drawn: fields, or mixtures of 1 or 2 dimensions."""
    option = option or option_name("plot")
    if isinstance(data, GaussianMixture) and data.dims > 2:
        raise ConfigError(f"{option}: the data has {data.dims} dimensions; plots show 1-D or 2-D data only")


def figure_bytes(figure: Figure, path: str | Path) -> bytes:
    """``figure`` rendered in the format of ``path``'s extension (.png, .pdf or .svg)."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format=Path(path).suffix.lower().lstrip("."), dpi=120)
    return buffer.getvalue()


def _save(figure: Figure, path: Path) -> Path:
    """Render ``figure`` in the format of ``path``'s extension and write it atomically (creating parents)."""
    data = figure_bytes(figure, path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, data)
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


def plot_samples(
    path: str | Path, samples: torch.Tensor, mixture: GaussianMixture | GaussianRandomField, title: str = ""
) -> Path:
    """Write :func:`samples_figure` atomically in the format of ``path``'s extension."""
    path = check_plot_path(path)
    return _save(samples_figure(samples, mixture, title), path)


def samples_figure(samples: torch.Tensor, mixture: GaussianMixture | GaussianRandomField, title: str = "") -> Figure:
    """Histogram (1-D) or scatter (2-D) of ``samples`` over the exact density of ``mixture``, or for a
    :class:`GaussianRandomField` the figure of :func:`fields_figure`. The 1-D legend sits in a band above the
    densities, so it covers no peak."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if isinstance(mixture, GaussianRandomField):
        return fields_figure(samples, mixture, title=title)
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
        heights, _, _ = axes.hist(
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
        axes.set_ylim(0.0, 1.3 * max(float(density.max()), float(heights.max())))
        axes.legend(loc="upper center", ncol=2, fontsize="small", frameon=False)
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
    return figure


def plot_fields(
    path: str | Path,
    samples: torch.Tensor,
    field: GaussianRandomField,
    title: str = "",
    *,
    shown: int = 4,
    seed: int = 12345,
) -> Path:
    """Write :func:`fields_figure` atomically in the format of ``path``'s extension."""
    path = check_plot_path(path)
    return _save(fields_figure(samples, field, title, shown=shown, seed=seed), path)


def fields_figure(
    samples: torch.Tensor,
    field: GaussianRandomField,
    title: str = "",
    *,
    shown: int = 4,
    seed: int = 12345,
) -> Figure:
    """Generated fields against the true Gaussian random field; written atomically.

    Left: the first channel of ``shown`` generated samples (top row) and of as many fresh draws of
    ``field`` (bottom row, seeded by ``seed``), on one colour scale of +-3 std. Right: the radially
    averaged power spectrum of all samples against the exact one (log-log, k > 0), and that of as many
    true draws, which shows how far an estimate from that many fields scatters; the legend gives the RMS
    of ln(estimate / exact) over the shells (see :func:`~diffscale.data.fields.spectrum_log_error`).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import FormatStrFormatter, NullFormatter

    samples = samples.detach().cpu().double()
    if samples.ndim != 4 or tuple(samples.shape[1:]) != field.shape:
        shape = ", ".join(map(str, field.shape))
        raise ValueError(f"expected samples of shape (N, {shape}), got {tuple(samples.shape)}")
    count = samples.shape[0]
    shown = min(shown, count)
    truth = field.sample(count, torch.Generator().manual_seed(seed), dtype=torch.float64)
    k, exact = field.power_spectrum()
    _, generated = radial_power_spectrum(samples)
    _, reference = radial_power_spectrum(truth)
    error, reference_error = spectrum_log_error(generated, exact), spectrum_log_error(reference, exact)

    aspect = field.width / field.height
    figure = Figure(figsize=(2.1 * aspect * shown + 5.2, 5.0), layout="constrained")
    FigureCanvasAgg(figure)
    grid = figure.add_gridspec(2, shown + 1, width_ratios=[aspect] * shown + [2.4 * aspect])
    limit = 3.0 * field.std
    image = None
    for row, (fields, name) in enumerate(((samples, "generated"), (truth, "true field"))):
        for column in range(shown):
            axes = figure.add_subplot(grid[row, column])
            image = axes.imshow(
                fields[column, 0].numpy(), cmap="RdBu_r", vmin=-limit, vmax=limit, interpolation="nearest"
            )
            axes.set_xticks([])
            axes.set_yticks([])
            if column == 0:
                axes.set_ylabel(name, fontsize=11)
    if image is not None:
        colorbar_axes = figure.axes[: 2 * shown]
        figure.colorbar(image, ax=colorbar_axes, location="bottom", shrink=0.6, aspect=40, label="value")
    axes = figure.add_subplot(grid[:, shown])
    positive = k > 0
    axes.loglog(k[positive].numpy(), exact[positive].numpy(), color="black", linewidth=2.0, label="exact P(k)")
    axes.loglog(
        k[positive].numpy(),
        reference[positive].numpy(),
        color="0.55",
        linestyle="--",
        linewidth=1.2,
        label=f"{count} true draws (error {reference_error:.3f})",
    )
    axes.loglog(
        k[positive].numpy(),
        generated[positive].numpy(),
        color="tab:red",
        marker="o",
        markersize=3.5,
        linewidth=1.2,
        label=f"{count} samples (error {error:.3f})",
    )
    axes.axvline(1.0 / field.length_scale, color="0.75", linewidth=1.0, linestyle=":", zorder=0)
    axes.annotate(
        " k = 1/l", (1.0 / field.length_scale, 1.0), xycoords=("data", "axes fraction"), va="top", color="0.4"
    )
    ticks = [tick for tick in (0.1, 0.2, 0.3, 0.5, 1.0, 2.0, 3.0, 5.0) if k[1] <= tick <= k[-1]]
    axes.set_xticks(ticks)
    axes.xaxis.set_major_formatter(FormatStrFormatter("%g"))
    axes.xaxis.set_minor_formatter(NullFormatter())
    axes.set_xlabel("wavenumber |k| (radians per grid point)")
    axes.set_ylabel("radially averaged power")
    axes.set_title("power spectrum (error: RMS of ln ratio)", fontsize=10)
    axes.grid(True, which="both", alpha=0.25)
    axes.legend(fontsize=9, loc="lower left")
    heading = f"{field.height} x {field.width} Gaussian random fields (l = {field.length_scale:g}, "
    heading += f"slope {field.spectral_slope:g}, std {field.std:g})"
    figure.suptitle(f"{title}\n{heading}" if title else heading, fontsize=11)
    return figure
