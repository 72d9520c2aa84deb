"""Temporal scores on real data, and what they cost: the UK test week of ERA5 hourly 2 m temperature.

The truth is ERA5 t2m over the UK, 25-31 March 2019 (168 hours), cropped to 32 x 48 cells at 0.25 deg; the
baseline the bilinear upsampling of its 4x area-weighted block means. Two ensembles of ``--members`` members are
built from the truth's own residual r = y - U(y_c) (no model is trained), each with the truth's distribution of
residuals at every cell but different time structure:

    coherent     each member's residual is the truth's, shifted in time by a whole number of days (1..6, circular):
                 series with the truth's persistence and daily cycle, not aligned with the truth's weather;
    independent  each member's residual at every hour is the truth's at a random hour of the same cell's week:
                 the same values at each cell, drawn independently per hour (what sampling every (time, member)
                 independently does to a residual that has no temporal structure in its conditioning).

Both are scored by :func:`diffscale.evaluation.temporal.temporal_report` (residual autocorrelation up to 24 h,
daily max/min/mean over the 7 whole days, spells above the truth's 90th percentile), and the time of each call, of
its parts and of the other scores of ``diffscale evaluate`` on the same arrays is printed (best of ``--repeats``).

    python benchmarks/temporal_scores.py
    python benchmarks/temporal_scores.py --members 20 --repeats 3

Needs ../shared/data (see its README).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import xarray as xr

from diffscale.evaluation.climate_report import coarsen_block_mean, evaluate_variable, upsample_bilinear
from diffscale.evaluation.temporal import (
    daily_aggregates,
    lag_autocorrelation,
    spell_statistics,
    temporal_report,
    time_positions,
    whole_days,
)

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "era5_t2m_uk_2019-03.nc"
FACTOR = 4


def _best(function, repeats: int) -> tuple[float, object]:
    best, result = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        result = function()
        best = min(best, time.perf_counter() - start)
    return best, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--members", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if not DATA.exists():
        raise SystemExit(f"{DATA} is missing (see ../shared/data/README.md)")
    field = xr.open_dataset(DATA)["t2m"].sel(time=slice("2019-03-25", "2019-03-31")).sortby("latitude")
    field = field.isel(latitude=slice(0, 32), longitude=slice(0, 48))
    truth = np.asarray(field.values, dtype=np.float64)
    latitude = np.asarray(field.latitude.values, dtype=np.float64)
    times = np.asarray(field.time.values)
    baseline = upsample_bilinear(coarsen_block_mean(truth, latitude, FACTOR), FACTOR)
    residual = truth - baseline
    rng = np.random.default_rng(args.seed)
    steps = truth.shape[0]
    shifts = rng.integers(1, 7, size=args.members) * 24
    coherent = baseline + np.stack([np.roll(residual, int(shift), axis=0) for shift in shifts])
    hours = rng.integers(0, steps, size=(args.members, steps, *truth.shape[1:]))
    independent = baseline + np.take_along_axis(residual[None], hours, axis=1)
    print(
        f"ERA5 t2m UK {str(times[0])[:13]} .. {str(times[-1])[:13]}: {steps} hours, {truth.shape[1]} x "
        f"{truth.shape[2]} cells, {args.members} members, baseline bilinear from {FACTOR}x block means"
    )
    step, positions = time_positions(times)
    days = whole_days(times, step)
    for label, members in (("coherent", coherent), ("independent", independent)):
        seconds, report = _best(
            lambda members=members: temporal_report("t2m", members, truth, baseline, latitude, times, "K"),
            args.repeats,
        )
        acf = report["autocorrelation"]
        daily = report["daily"]["statistics"]
        spells = report["spells"]["above_p90"]
        print(f"\n{label}: temporal_report {seconds:.2f} s")
        print(
            "  residual autocorrelation at 1, 3, 6, 12, 24 h, members' mean (truth): "
            + ", ".join(f"{acf['ensemble'][k - 1]:.3f} ({acf['truth'][k - 1]:.3f})" for k in (1, 3, 6, 12, 24))
        )
        for statistic in ("max", "min", "mean"):
            item = daily[statistic]
            print(
                f"  daily {statistic:<4} over {report['daily']['whole_days']} days: fair CRPS "
                f"{item['ensemble']['crps']:.3f} K, bias {item['ensemble']['bias']:+.3f} K "
                f"(bilinear CRPS {item['bilinear']['crps']:.3f} K, bias {item['bilinear']['bias']:+.3f} K)"
            )
        print(
            f"  spells above the truth's 90th percentile: mean length {spells['ensemble']['mean_length_hours']:.2f} h, "
            f"{spells['ensemble']['count']:.2f} per cell (truth {spells['truth']['mean_length_hours']:.2f} h, "
            f"{spells['truth']['count']:.2f}; bilinear {spells['bilinear']['mean_length_hours']:.2f} h)"
        )
    members_residual = independent - baseline
    parts = {
        "lag_autocorrelation (members, 24 lags)": lambda: lag_autocorrelation(
            members_residual, positions, latitude, 24
        ),
        "daily_aggregates (members, max/min/mean)": lambda: daily_aggregates(independent, days),
        "spell_statistics (members)": lambda: spell_statistics(
            independent > np.percentile(truth, 90, axis=0), positions, latitude, 1.0
        ),
    }
    print("\nparts, on the independent ensemble:")
    for name, function in parts.items():
        print(f"  {name}: {_best(function, args.repeats)[0]:.2f} s")
    longitude = np.asarray(field.longitude.values, dtype=np.float64)
    seconds, _ = _best(
        lambda: evaluate_variable("t2m", independent, truth, baseline, latitude, longitude, FACTOR, "K"), args.repeats
    )
    print(f"  for comparison, the other scores of evaluate (evaluate_variable): {seconds:.2f} s")
    print(f"ensemble array: {independent.nbytes / 2**20:.0f} MiB (float64)")


if __name__ == "__main__":
    main()
