"""The demo's downscaling part: a held-out UK day downscaled by the shipped model ``era5-uk-t2m``.

The coarse input is bundled with the model (``example_coarse.nc``: ERA5 2 m temperature of 28 March 2019, a test
day the model never trained on, coarsened 4x to 1 deg by the run's own block mean), as is the fine truth
(``example_truth.nc``, 0.25 deg). The model draws ``members`` fine fields for one time of that day; the figure
shows the coarse input, four members, the truth and the ensemble spread (the standard deviation over members,
sqrt(sum_m (y_m - mean)^2 / (M - 1))), and the ensemble mean's RMSE against the truth (area-weighted) is printed.

Run it with ``diffscale demo`` (after the 1-D part) or :func:`run_downscaling_demo`.
"""

from __future__ import annotations

import io
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from diffscale.files import check_output, write_together
from diffscale.threads import single_thread
from diffscale.validation import ConfigError, option_name

__all__ = ["DEMO_MODEL", "DownscalingDemo", "run_downscaling_demo"]

DEMO_MODEL = "era5-uk-t2m"
FIGURE_NAME = "demo_downscaling.png"
SHOWN_MEMBERS = 4


@dataclass(frozen=True)
class DownscalingDemo:
    """What :func:`run_downscaling_demo` produced."""

    figure: Path
    time: str
    members: int
    rmse_ensemble_mean: float
    mean_spread: float
    seconds: float


def _area_rmse(error: np.ndarray, latitude: np.ndarray) -> float:
    weights = np.broadcast_to(np.cos(np.deg2rad(latitude))[:, None], error.shape)
    return float(np.sqrt(np.sum(weights * error**2) / np.sum(weights)))


def run_downscaling_demo(
    out_dir: str | Path, *, hour: int = 12, members: int = SHOWN_MEMBERS, seed: int = 0, progress: bool = True
) -> DownscalingDemo:
    """Downscale hour ``hour`` (UTC) of the bundled held-out UK day with ``members`` members of the shipped model
    and write ``demo_downscaling.png`` into ``out_dir``; the scores and seconds taken."""
    import xarray as xr

    from diffscale.pretrained import pretrained_model
    from diffscale.runs.run import load_climate_run

    if isinstance(members, bool) or not isinstance(members, int) or members < SHOWN_MEMBERS:
        raise ConfigError(f"{option_name('members')} = {members!r}: must be an integer >= {SHOWN_MEMBERS}")
    if isinstance(hour, bool) or not isinstance(hour, int) or not 0 <= hour <= 23:
        raise ConfigError(f"{option_name('hour')} = {hour!r}: must be an integer hour 0-23")
    out = check_output(Path(out_dir), option_name("out"), directory=True)
    start = time.perf_counter()
    model = pretrained_model(DEMO_MODEL)
    with single_thread():
        run = load_climate_run(model.directory, device="cpu")
        with xr.open_dataset(model.directory / "example_coarse.nc") as coarse_file:
            coarse = coarse_file.isel(time=[hour]).load()
        ensemble = run.downscale(coarse, members=members, seed=seed, progress=False)
    with xr.open_dataset(model.directory / "example_truth.nc") as truth_file:
        truth = truth_file["t2m"].isel(time=hour).sel(latitude=ensemble.latitude, longitude=ensemble.longitude).load()
    fields = ensemble["t2m"].isel(time=0).values  # (member, latitude, longitude)
    latitude = ensemble.latitude.values
    spread = fields.std(axis=0, ddof=1)
    rmse = _area_rmse(fields.mean(axis=0) - truth.values, latitude)
    stamp = str(np.datetime_as_string(coarse.time.values[0], unit="m")).replace("T", " ")
    figure = _figure(coarse["t2m"].isel(time=0), ensemble, truth, spread, stamp, rmse)
    image = io.BytesIO()
    figure.savefig(image, format="png", dpi=110)
    path = out / FIGURE_NAME
    write_together({path: image.getvalue()})  # creates the folder
    seconds = time.perf_counter() - start
    if progress:
        print(
            f"downscaled {stamp} UTC (a held-out day) with the shipped model {DEMO_MODEL}: {members} members, "
            f"ensemble-mean RMSE {rmse:.2f} K, mean spread {float(spread.mean()):.2f} K; wrote {path} in "
            f"{seconds:.0f} s"
        )
    return DownscalingDemo(path, stamp, members, rmse, float(spread.mean()), seconds)


def _extent(latitude: np.ndarray, longitude: np.ndarray) -> tuple[float, float, float, float]:
    """imshow extent of cell-centred points: half a spacing beyond the first and last centres."""
    dy, dx = abs(float(latitude[1] - latitude[0])), abs(float(longitude[1] - longitude[0]))
    return (
        float(longitude.min()) - dx / 2,
        float(longitude.max()) + dx / 2,
        float(latitude.min()) - dy / 2,
        float(latitude.max()) + dy / 2,
    )


def _figure(coarse, ensemble, truth, spread: np.ndarray, stamp: str, rmse: float):  # type: ignore[no-untyped-def]
    """coarse | four members | truth | spread, one colour scale for the temperatures."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    def ascending(values: np.ndarray, latitude: np.ndarray) -> np.ndarray:
        return values[::-1] if latitude[0] > latitude[-1] else values

    fine_lat, fine_lon = ensemble.latitude.values, ensemble.longitude.values
    coarse_lat, coarse_lon = coarse.latitude.values, coarse.longitude.values
    members = ensemble["t2m"].isel(time=0).values[:SHOWN_MEMBERS]
    temperatures = [ascending(coarse.values, coarse_lat)] + [ascending(m, fine_lat) for m in members]
    temperatures.append(ascending(truth.values, fine_lat))
    low = min(float(np.nanmin(field)) for field in temperatures)
    high = max(float(np.nanmax(field)) for field in temperatures)
    titles = ["coarse input (1°)"] + [f"member {i + 1}" for i in range(SHOWN_MEMBERS)] + ["truth (0.25°)"]
    extents = [_extent(coarse_lat, coarse_lon)] + [_extent(fine_lat, fine_lon)] * (SHOWN_MEMBERS + 1)

    figure = Figure(figsize=(17.0, 2.9), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(1, len(titles) + 1)
    for axis, field, title, extent in zip(axes[:-1], temperatures, titles, extents, strict=True):
        mappable = axis.imshow(field, origin="lower", extent=extent, vmin=low, vmax=high, cmap="RdYlBu_r")
        axis.set_title(title, fontsize=10)
        axis.set_xlabel("longitude [°]", fontsize=8)
        axis.tick_params(labelsize=7)
    axes[0].set_ylabel("latitude [°]", fontsize=8)
    figure.colorbar(mappable, ax=list(axes[:-1]), shrink=0.85, pad=0.01, label="t2m [K]")
    spread_map = axes[-1].imshow(
        ascending(spread, fine_lat), origin="lower", extent=extents[1], cmap="viridis", vmin=0.0
    )
    axes[-1].set_title(f"spread ({ensemble.sizes['member']} members)", fontsize=10)
    axes[-1].set_xlabel("longitude [°]", fontsize=8)
    axes[-1].tick_params(labelsize=7)
    figure.colorbar(spread_map, ax=axes[-1], shrink=0.85, pad=0.01, label="std [K]")
    figure.suptitle(
        f"Shipped model {DEMO_MODEL}: ERA5 2 m temperature {stamp} UTC, a held-out day, downscaled 4x "
        f"(ensemble-mean RMSE {rmse:.2f} K)",
        fontsize=11,
    )
    return figure
