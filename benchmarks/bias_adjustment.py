"""Bias adjustment (QM, QDM) of coarse ERA5 fields given a known bias, in sample and on held-out days.

    python benchmarks/bias_adjustment.py            # needs ../shared/data; a few seconds

UK t2m (ERA5, March 2019, hourly, the 32 x 48 crop of configs/era5_uk.yaml coarsened 4x to 8 x 12): a "model" is the
truth 2 K warmer with 1.3 x its variability about each cell's mean. Printed per cell (worst cell, and the mean over
cells): the error of the time mean and the ratio of standard deviations against the truth,

* in sample: the climatology (51 quantiles per cell) and the model's reference distribution both over 1-31 March,
  the whole month adjusted (QM undoes a linear bias exactly);
* held out: climatology and reference over 1-15 March, the biased 16-31 March adjusted by QM and by QDM (which keeps
  the model's change between the halves: here 1.3 x the truth's, so it keeps 1.3 x the warming of the second half).

Quebec precipitation (ERA5-Land daily tp, 1970, 30 x 30 at 0.1 deg coarsened 5x to 6 x 6; months of 28-31 days pool
their season's 90 days): a model with 1.4 x the amounts, adjusted by multiplicative QM over the year, and a future
1.2 x the model adjusted by multiplicative QDM: the wet-time mean ratio to the truth (1 and 1.2 are exact) and the
share of zeros kept.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import xarray as xr

from diffscale.data.climate.climatology import calendar_months, fit_coarse_climatology, month_pools
from diffscale.data.climate.grid import coarsen
from diffscale.data.climate.quantile_mapping import (
    empirical_quantiles,
    quantile_delta_mapping,
    quantile_levels,
    quantile_mapping,
)

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
LEVELS = quantile_levels(51)


def report(name: str, adjusted: np.ndarray, truth: np.ndarray) -> None:
    error = adjusted.mean(axis=0) - truth.mean(axis=0)
    ratio = adjusted.std(axis=0) / truth.std(axis=0)
    print(
        f"  {name:<34} mean error worst {np.abs(error).max():6.3f} K, mean {error.mean():+6.3f} K;  "
        f"std ratio worst {ratio.flat[np.argmax(np.abs(ratio - 1))]:.3f}, mean {ratio.mean():.3f}"
    )


def uk() -> None:
    fine = xr.open_dataset(DATA / "era5_t2m_uk_2019-03.nc")[["t2m"]].sortby("latitude")
    fine = fine.isel(latitude=slice(1, 33), longitude=slice(0, 48)).load()
    truth = coarsen(fine, 4)["t2m"].values.astype(np.float64)
    times = fine["time"].values
    mean = truth.mean(axis=0)
    model = mean + 1.3 * (truth - mean) + 2.0
    start = time.perf_counter()
    climatology = fit_coarse_climatology(
        lambda indices: truth[np.asarray(indices)][:, None], times, ["t2m"], np.zeros(8), np.zeros(12), {"t2m": "K"}
    )
    seconds = time.perf_counter() - start
    print(f"UK t2m, {times.size} hourly coarse fields 8 x 12: climatology fitted in {seconds:.3f} s")
    march = climatology.quantiles["t2m"][2].astype(np.float64)
    report("biased input (in sample)", model, truth)
    start = time.perf_counter()
    adjusted = quantile_mapping(model, empirical_quantiles(model, LEVELS), march, LEVELS)
    report(f"QM, in sample ({time.perf_counter() - start:.3f} s)", adjusted, truth)
    first, second = slice(0, 360), slice(360, None)  # 1-15 March, 16-31 March
    observed_q = empirical_quantiles(truth[first], LEVELS)
    reference_q = empirical_quantiles(model[first], LEVELS)
    change = np.mean(truth[second]) - np.mean(truth[first])
    print(f"  held out: truth 16-31 March minus 1-15 March, mean over cells {change:+.2f} K")
    report("biased input (16-31 March)", model[second], truth[second])
    report("QM, held out", quantile_mapping(model[second], reference_q, observed_q, LEVELS), truth[second])
    projected_q = empirical_quantiles(model[second], LEVELS)
    qdm = quantile_delta_mapping(model[second], projected_q, reference_q, observed_q, LEVELS)
    report("QDM, held out", qdm, truth[second])


def quebec() -> None:
    fine = xr.open_dataset(DATA / "era5land_quebec_1970_daily.nc")[["tp"]].sortby("latitude").load()
    truth = np.maximum(coarsen(fine, 5)["tp"].values.astype(np.float64), 0.0)  # (365, 6, 6) mm/d
    pools = month_pools(calendar_months(fine["time"].values), 50)
    print(f"Quebec tp, 365 daily coarse fields 6 x 6 (pools: {sorted({label for _, label in pools})})")
    model, future_truth = 1.4 * truth, 1.2 * truth
    future = 1.2 * model
    qm, qdm = np.empty_like(truth), np.empty_like(truth)
    months = calendar_months(fine["time"].values)
    for month in range(1, 13):
        here, pool = months == month, pools[month - 1][0]
        observed_q = empirical_quantiles(truth[pool], LEVELS)
        reference_q = empirical_quantiles(model[pool], LEVELS)
        projected_q = empirical_quantiles(future[pool], LEVELS)
        qm[here] = quantile_mapping(model[here], reference_q, observed_q, LEVELS, "multiplicative")
        qdm[here] = quantile_delta_mapping(future[here], projected_q, reference_q, observed_q, LEVELS, "multiplicative")
    wet = truth > 0
    for name, adjusted, target in (("QM of 1.4 x", qm, truth), ("QDM of 1.2 x 1.4 x", qdm, future_truth)):
        ratio = adjusted[wet].mean() / target[wet].mean()
        print(
            f"  {name:<20} wet mean / truth {ratio:.6f}, max |error| {np.abs(adjusted - target).max():.2e} mm/d, "
            f"zeros kept {np.mean(adjusted[~wet] == 0):.0%} of {int((~wet).sum())}, min {adjusted.min():.2f}"
        )


if __name__ == "__main__":
    uk()
    quebec()
