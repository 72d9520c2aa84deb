"""A first configuration for downscaling your own data, every data-dependent value measured on the data.

:func:`initial_config` reads the fine files once through the training pipeline itself and returns the
configuration (validated) with a YAML comment on each measured value saying how it was found:

* the grid: the whole grid of the files, with ``remainder: trim`` (the rows and columns the factor does not divide
  are dropped, ceil(r / 2) south and west, floor(r / 2) north and east; the line says which);
* the statics: time-invariant files beside the fine files (or given) that hold orography or a land-sea mask
  and cover the grid (every file looked at and why it was not used is listed);
* the transforms: ``log1p(x / c)`` for precipitation with c = 1 mm (or 1 mm/day for a rate) in the variable's
  units, standardisation for the rest;
* the periods: blocked splits of the record's days (:func:`blocked_periods`);
* sigma_data: the standard deviation of the training target r = T(y) - U(T(x)) over every training field and
  cell, read by the training dataset (:class:`~diffscale.data.climate.ClimateDataset`) with the statistics that
  training fits (:func:`target_std`), and the noise levels from it (:func:`noise_levels`);
* the steps and batch: from the time a few training steps take here (:func:`~diffscale.runs.prepare_training`,
  the trainer's own steps) and a time budget.

>>> draft = initial_config(["data/era5_uk.nc"], ["t2m"], 4, budget_minutes=15)
>>> draft.write("my.yaml")          # then: diffscale train my.yaml
"""

from __future__ import annotations

import datetime as dt
import itertools
import math
import tempfile
import textwrap
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from diffscale.config import Config, load_config
from diffscale.data.climate import ClimateDataset
from diffscale.data.climate.calendars import date_fields
from diffscale.data.climate.conditioning import load_statics, statics_on_grid
from diffscale.data.climate.grid import trim_to_factor
from diffscale.data.climate.io import DATA_SUFFIXES, canonical_variable, expand_paths, open_fields
from diffscale.data.climate.series import FieldSeries
from diffscale.data.climate.statistics import stats_time_indices
from diffscale.data.climate.transforms import Moments
from diffscale.evaluation.temporal import DAY_SECONDS, is_precipitation, wet_threshold
from diffscale.files import atomic_write_bytes, check_output
from diffscale.validation import ConfigError

__all__ = [
    "InitialConfig",
    "blocked_periods",
    "check_config_output",
    "initial_config",
    "noise_levels",
    "precipitation_scale",
    "target_std",
]

STATIC_NAMES = ("orography", "lsm")
"""The static fields looked for beside the fine files (canonical names)."""
MAX_STATIC_CANDIDATES = 64
"""Files beside the fine files opened to look for statics (the rest are listed as not looked at)."""
TEST_FRACTION, VALIDATION_FRACTION = 0.2, 0.1
"""The last ceil(0.2 D) days of a D-day record are the test block, the ceil(0.1 D) before them validation."""
MAX_STATS_TIMES = 2000
"""Training splits longer than this fit their statistics (and sigma_data) on this many evenly spaced times."""
BUDGET_MARGIN = 0.9
"""The share of the budget left after preparation that steps are planned for (the rest: checkpoints, logs and
sample figures)."""
BATCH_SIZE = 16
TIMED_STEPS = 3
"""Training steps timed after one untimed warm-up step."""

RECIPE: dict[str, dict[str, Any]] = {
    "diffusion": {"type": "EDM", "rho": 7.0, "p_std": 1.2},
    "sampling": {"steps": 8, "sampler": "dpmpp_2m", "s_churn": 0.0},
    "model": {
        "arch": "ddpmpp",
        "model_channels": 24,
        "channel_mult": [1, 2, 2],
        "num_blocks": 1,
        "attn_resolutions": [],
        "dropout": 0.2,
    },
    "training": {
        "learning_rate": 0.002,
        "warmup_steps": 50,
        "lr_decay": "cosine",
        "ema_halflife": 2000,
        "ema_rampup": 0.1,
        "log_every": 50,
        "checkpoint_every": 100,
        "sample_every": 200,
    },
}
"""What does not depend on the data: the values of the shipped ERA5 UK recipe (configs/era5_uk.yaml)."""


# -- the rules, each a closed form ----------------------------------------------------------------------------
def noise_levels(sigma_data: float) -> dict[str, float]:
    """The EDM noise levels for a target of standard deviation sigma_data: those of a unit-variance target
    scaled by sigma_data, sigma_min = 0.002 sigma_data, sigma_max = 10 sigma_data, and the training law
    ln(sigma) ~ N(P_mean, P_std^2) with P_mean = -0.6 + ln(sigma_data) (EDM's P_mean = -1.2 is for images of
    sigma_data = 0.5, i.e. -0.5 + ln(sigma_data); a residual needs a little more weight at its smaller noise
    levels, hence -0.6)."""
    if not sigma_data > 0:
        raise ValueError(f"sigma_data = {sigma_data}: must be positive")
    return {
        "sigma_data": sigma_data,
        "sigma_min": 0.002 * sigma_data,
        "sigma_max": 10.0 * sigma_data,
        "p_mean": -0.6 + math.log(sigma_data),
    }


def blocked_periods(days: Sequence[str]) -> dict[str, list[str]]:
    """Blocked splits of a record whose distinct days (ISO ``YYYY-MM-DD``, ascending) are ``days``.

    With D days: the test block is the last ceil(0.2 D) days, the validation block the ceil(0.1 D) days before
    it, one day between validation and training is left out (so that no training field is an hour away from a
    validation one), and training is every day before that. 31 days of March give train 1-19, validation
    21-24, test 25-31. Returns ``{"train_period": [first, last], ...}`` (inclusive).

    Raises:
        ConfigError: fewer than 5 days (no room for three blocks and a gap).
    """
    count = len(days)
    if count < 5:
        raise ConfigError(
            f"the record spans {count} day(s): blocked train/validation/test periods need at least 5 days "
            "(give more files, or write the periods by hand)"
        )
    test = math.ceil(TEST_FRACTION * count)
    validation = math.ceil(VALIDATION_FRACTION * count)
    train_end = count - test - validation - 1  # index of the gap day
    return {
        "train_period": [days[0], days[train_end - 1]],
        "validation_period": [days[train_end + 1], days[count - test - 1]],
        "test_period": [days[count - test], days[-1]],
    }


def precipitation_scale(units: str | None, variable: str) -> float:
    """c of ``log1p(x / c)`` for precipitation in ``units``: 1 mm for an accumulation (m -> 0.001, mm -> 1),
    1 mm/day for a rate (kg m-2 s-1 -> 1 / 86400), so the transform bends where rain becomes measurable."""
    if not units:
        raise ConfigError(
            f"precipitation '{variable}' has no units attribute: set it in the files (m, mm, kg m-2 s-1, ...)"
        )
    try:
        scale, _ = wet_threshold(units, DAY_SECONDS)
    except ValueError as error:
        raise ConfigError(f"precipitation '{variable}': {error}") from None
    return float(f"{scale:.6g}")


def _day_strings(times: np.ndarray) -> np.ndarray:
    """The day of each of ``times`` (datetime64 or cftime) as an ISO date of its calendar (``YYYY-MM-DD``, which
    sorts as the dates do)."""
    fields = date_fields(times)
    return np.array([f"{y:04d}-{m:02d}-{d:02d}" for y, m, d in zip(fields.year, fields.month, fields.day, strict=True)])


def _step_hours(times: np.ndarray) -> float:
    """The median spacing of ``times`` in hours."""
    if times.size < 2:
        return math.inf
    steps = [(later - earlier) for earlier, later in itertools.pairwise(times)]
    seconds = [s / np.timedelta64(1, "s") if isinstance(s, np.timedelta64) else s.total_seconds() for s in steps]
    return float(np.median(seconds)) / 3600.0


def target_std(dataset: ClimateDataset, chunk: int = 32) -> tuple[float, int]:
    """(sigma_data, values): the standard deviation sqrt(M2 / n) of the training target ``dataset.fields(t).target``
    (r = T(y) - U(T(x)) of every variable and cell, normalised with the dataset's statistics) over the times the
    statistics are fitted on (every training time, or ``data.stats_times`` evenly spaced ones), read ``chunk``
    times at a time and merged in float64 (:class:`~diffscale.data.climate.transforms.Moments`); n the values."""
    chosen = stats_time_indices(len(dataset), dataset.section.stats_times)
    moments = Moments()
    for start in range(0, chosen.size, chunk):
        target = dataset.fields(chosen[start : start + chunk].tolist()).target
        moments = moments.merge(Moments.of(target.numpy()))
    return math.sqrt(moments.variance), moments.count


# -- statics --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Statics:
    paths: list[str]
    variables: list[str]
    notes: list[str]


def _find_statics(
    fine: list[Path], given: Sequence[str] | None, latitude: np.ndarray, longitude: np.ndarray
) -> _Statics:
    """The first file that holds orography or a land-sea mask without a time axis (or with one time) and covers the
    grid: of those ``given`` (ConfigError when none does), else of those beside the fine files (none: no statics);
    what was looked at and why it was not used, in notes."""
    if given is not None:
        candidates = expand_paths(list(given))
    else:
        fine_set = {path.resolve() for path in fine}
        folders = dict.fromkeys(path.resolve().parent for path in fine)
        candidates = sorted(
            path
            for folder in folders
            for path in folder.iterdir()
            if path.resolve() not in fine_set and not path.name.startswith(".")
        )
    notes: list[str] = []
    others = [path for path in candidates if path.suffix.lower() not in DATA_SUFFIXES]
    if others:
        notes.append(f"{len(others)} file(s) not netCDF, Zarr or GRIB ({', '.join(p.name for p in others[:3])}...)")
        candidates = [path for path in candidates if path.suffix.lower() in DATA_SUFFIXES]
    if len(candidates) > MAX_STATIC_CANDIDATES:
        notes.append(f"{len(candidates) - MAX_STATIC_CANDIDATES} further files not looked at")
        candidates = candidates[:MAX_STATIC_CANDIDATES]
    for path in candidates:
        try:
            ds = open_fields(path)
        except ConfigError as error:
            notes.append(f"{path.name}: not read ({error})")
            continue
        names = [name for name in STATIC_NAMES if name in {canonical_variable(str(v)) for v in ds.data_vars}]
        if not names:
            notes.append(f"{path.name}: holds no orography or land-sea mask")
            continue
        if ds.sizes.get("time", 1) > 1:
            notes.append(f"{path.name}: has {ds.sizes['time']} times (statics have one)")
            continue
        try:
            statics_on_grid(load_statics([str(path)], names), names, latitude, longitude)
        except ConfigError as error:
            notes.append(f"{path.name}: not usable on the grid ({error})")
            continue
        notes.append(f"{path.name}: {', '.join(names)} cover the grid (used)")
        return _Statics([str(path)], names, notes)
    if given is not None:
        raise ConfigError(f"--statics: no file gives orography or a land-sea mask on the grid ({'; '.join(notes)})")
    return _Statics([], [], notes)


# -- the configuration ----------------------------------------------------------------------------------------
@dataclass
class InitialConfig:
    """A drafted configuration: ``values`` (section -> key -> value, what :func:`load_config` reads) and
    ``notes`` (section -> key -> how the value was measured, written as a comment above it)."""

    values: dict[str, dict[str, Any]]
    notes: dict[str, dict[str, str]] = field(default_factory=dict)
    header: list[str] = field(default_factory=list)

    @property
    def config(self) -> Config:
        """The configuration, validated."""
        return Config.model_validate(self.values)

    def to_yaml(self) -> str:
        """The YAML text: each measured value under a comment that says how it was measured."""
        lines = [f"# {line}" if line else "#" for line in self.header]
        for section, keys in self.values.items():
            lines.append(f"{section}:")
            for key, value in keys.items():
                note = self.notes.get(section, {}).get(key)
                if note:
                    lines.extend(f"  # {line}" for line in textwrap.wrap(note, 114))
                lines.append(f"  {key}: {_flow(value)}")
        return "\n".join(lines) + "\n"

    def write(self, path: str | Path, *, overwrite: bool = False) -> Path:
        """Write :meth:`to_yaml` to ``path`` atomically (refusing an existing file unless ``overwrite``) and
        check that it loads."""
        path = check_config_output(path, overwrite=overwrite)
        atomic_write_bytes(path, self.to_yaml().encode("utf-8"))
        load_config(path)
        return path


def check_config_output(path: str | Path, *, overwrite: bool = False) -> Path:
    """``path`` as a Path, after checking that a configuration can be written there (ConfigError for an existing
    file without ``overwrite``): call it before measuring, so that a bad output is refused at once."""
    path = check_output(path, "--output")
    if path.exists() and not overwrite:
        raise ConfigError(f"--output = '{path}': exists; pass --overwrite to replace it")
    return path


def _flow(value: Any) -> str:
    """A value in YAML flow style on one line (``[1, 2]``, ``{t2m: standardize}``, ``null``)."""
    text = yaml.safe_dump(value, default_flow_style=True, width=10_000, sort_keys=False).strip()
    return text.removesuffix("...").strip()


def _round(value: float, digits: int = 3) -> float:
    """``value`` to ``digits`` significant digits."""
    return float(f"{value:.{digits}g}")


def initial_config(
    fine: Sequence[str | Path],
    variables: Sequence[str],
    factor: int,
    *,
    budget_minutes: float = 15.0,
    statics: Sequence[str] | None = None,
    device: str = "auto",
) -> InitialConfig:
    """Draft a downscaling configuration for the fine files ``fine`` (paths or glob patterns, written into the
    configuration as given), the ``variables`` to model and the coarsening ``factor``, measuring every
    data-dependent value on the data (module docstring); ``budget_minutes`` of training on this machine
    (``device``) set the steps; ``statics`` names the static files instead of looking beside the fine ones. The
    grid is the files' whole grid (add ``data.crop`` to the written file for a window of it).

    Raises:
        ConfigError: the files (unreadable, a variable missing, too short a record, precipitation without
            units) or a budget too small for the warm-up steps.
    """
    if not budget_minutes > 0:
        raise ConfigError(f"--budget-minutes = {budget_minutes}: must be positive")
    paths = [str(path) for path in fine]
    names = [canonical_variable(name) for name in variables]
    series = FieldSeries(paths, names)
    notes: dict[str, dict[str, str]] = {"diffusion": {}, "data": {}, "training": {}}
    data: dict[str, Any] = {
        "kind": "climate",
        "paths": paths,
        "variables": names,
        "coarsen_factor": factor,
        "remainder": "trim",
    }
    # the grid and its trimming, as training will cut it
    kept, trim = trim_to_factor(open_fields(paths[0], names), factor)
    latitude, longitude = kept["latitude"].values, kept["longitude"].values
    notes["data"]["remainder"] = (
        f"Grid: the whole grid of the files, latitude {latitude.min():g} .. {latitude.max():g}, longitude "
        f"{longitude.min():g} .. {longitude.max():g}; {trim.describe()}."
    )
    found = _find_statics([Path(p) for p in expand_paths(paths)], statics, latitude, longitude)
    data["static_paths"], data["static_variables"] = found.paths, found.variables
    notes["data"]["static_paths"] = "Statics: " + ("; ".join(found.notes) or "no other file found") + "."
    step = _step_hours(series.times)
    day_of_time = _day_strings(series.times)
    days = list(dict.fromkeys(day_of_time.tolist()))
    data["channels"] = {"latlon": True, "hour": step < 24.0, "day_of_year": len(days) >= 365}
    notes["data"]["channels"] = (
        f"The fields are {step:g} h apart over {len(days)} days: the hour-of-day channel "
        f"{'on (sub-daily data)' if step < 24 else 'off (daily or coarser data)'}, the day-of-year channel "
        f"{'on (a year or more)' if len(days) >= 365 else 'off (less than a year: no seasonal cycle to learn)'}."
    )
    transforms: dict[str, Any] = {}
    why = []
    for name in names:
        units = series.units.get(name)
        if is_precipitation(name):
            scale = precipitation_scale(units, name)
            transforms[name] = {"name": "log1p", "scale": scale}
            why.append(f"{name} is precipitation in {units}: log1p(x / {scale:g}), c = 1 mm (or 1 mm/day)")
        else:
            transforms[name] = "standardize"
            why.append(f"{name} [{units}]: standardised")
    data["transforms"] = transforms
    notes["data"]["transforms"] = "Transforms: " + "; ".join(why) + "."
    data["target"] = "residual"
    periods = blocked_periods(days)
    data.update(periods)
    test_days, validation_days = math.ceil(TEST_FRACTION * len(days)), math.ceil(VALIDATION_FRACTION * len(days))
    notes["data"]["train_period"] = (
        f"Periods: blocks of the record's {len(days)} days ({days[0]} .. {days[-1]}): test the last "
        f"ceil({TEST_FRACTION} x {len(days)}) = {test_days} days, validation the ceil({VALIDATION_FRACTION} x "
        f"{len(days)}) = {validation_days} days before them, one day left out between training and validation, "
        "training the rest (never tune on the test period)."
    )
    first, last = periods["train_period"]
    train_times = int(np.count_nonzero((day_of_time >= first) & (day_of_time <= last)))
    if train_times > MAX_STATS_TIMES:
        data["stats_times"] = MAX_STATS_TIMES
        notes["data"]["stats_times"] = (
            f"{train_times} training fields: the statistics and sigma_data are fitted on {MAX_STATS_TIMES} evenly "
            "spaced ones."
        )
    batch = min(BATCH_SIZE, train_times)
    values: dict[str, dict[str, Any]] = {
        "diffusion": {**RECIPE["diffusion"], "sigma_data": 1.0},
        "sampling": dict(RECIPE["sampling"]),
        "model": dict(RECIPE["model"]),
        "data": data,
        "training": {"steps": TIMED_STEPS + 1, "batch_size": batch, **RECIPE["training"], "device": device},
    }
    draft = InitialConfig(values, notes)
    sigma_data, count, prepare_seconds, step_seconds, measured_on = _measure(draft.config)
    levels = noise_levels(sigma_data)
    values["diffusion"] = {
        "type": "EDM",
        "sigma_data": _round(sigma_data),
        "sigma_min": _round(levels["sigma_min"]),
        "sigma_max": _round(levels["sigma_max"]),
        "rho": RECIPE["diffusion"]["rho"],
        "p_mean": _round(levels["p_mean"]),
        "p_std": RECIPE["diffusion"]["p_std"],
    }
    notes["diffusion"]["sigma_data"] = (
        f"sigma_data = {sigma_data:.4f}: the standard deviation of the training target r = T(y) - U(T(x)) (the "
        "normalised fine field minus the upsampled normalised coarse one), measured by the training dataset "
        f"over {count:,} values (every cell of "
        + ("every training field" if "stats_times" not in data else f"{MAX_STATS_TIMES} evenly spaced training fields")
        + "), with the statistics training fits."
    )
    notes["diffusion"]["sigma_min"] = (
        f"The noise levels of a unit-variance target scaled by sigma_data: sigma_min = 0.002 sigma_data = "
        f"{levels['sigma_min']:.3g}, sigma_max = 10 sigma_data = {levels['sigma_max']:.3g} (far above the target's "
        "spread, so sampling starts from noise alone), and training draws ln(sigma) ~ N(p_mean, p_std^2) with "
        f"p_mean = -0.6 + ln(sigma_data) = {levels['p_mean']:.3g} (a median noise level of 0.55 sigma_data)."
    )
    usable = BUDGET_MARGIN * (60.0 * budget_minutes - prepare_seconds)
    steps = int(usable // step_seconds)
    minimum = RECIPE["training"]["warmup_steps"]
    if steps < minimum:
        raise ConfigError(
            f"--budget-minutes = {budget_minutes:g}: leaves room for {max(steps, 0)} steps of "
            f"{step_seconds:.2f} s here (preparation {prepare_seconds:.0f} s); give at least "
            f"{math.ceil((prepare_seconds + minimum * step_seconds / BUDGET_MARGIN) / 60)} minutes"
        )
    values["training"]["steps"] = steps
    epochs = steps * batch / train_times
    notes["training"]["steps"] = (
        f"Budget {budget_minutes:g} min on this machine ({measured_on}): preparing the run (statistics, input "
        f"ranges, coarse climatology) took {prepare_seconds:.1f} s and a training step {step_seconds:.3f} s "
        f"(the mean of {TIMED_STEPS} after a warm-up step), so {BUDGET_MARGIN:g} x ({60 * budget_minutes:g} - "
        f"{prepare_seconds:.1f}) s / {step_seconds:.3f} s = {steps} steps ({epochs:.1f} passes over the "
        f"{train_times} training fields); the rest is left for checkpoints, logs and sample figures."
    )
    notes["training"]["batch_size"] = f"{batch} fields per step (the UK recipe's {BATCH_SIZE}" + (
        f", capped by the {train_times} training fields)." if batch < BATCH_SIZE else ")."
    )
    draft.header = [
        f"Written by `diffscale init-config` on {dt.date.today().isoformat()} for {', '.join(paths)}",
        f"(variables {', '.join(names)}, coarsening factor {factor}). Every value that depends on the data was",
        "measured on it; the comment above each says how. The network, sampler and optimiser settings are those",
        "of the shipped ERA5 UK recipe (configs/era5_uk.yaml). Train with: diffscale train THIS_FILE",
    ]
    draft.config  # noqa: B018  (validates the final values)
    return draft


def _measure(config: Config) -> tuple[float, int, float, float, str]:
    """Prepare a run of ``config`` exactly as ``diffscale train`` does (nothing written), measure sigma_data on
    its training dataset and time its steps: (sigma_data, values, preparation seconds, seconds per step, device)."""
    from diffscale.runs.training import prepare_training

    with tempfile.TemporaryDirectory(prefix="diffscale-init-config-") as directory:
        started = time.perf_counter()
        plan = prepare_training(config, Path(directory) / "run")
        prepare_seconds = time.perf_counter() - started
        sigma_data, count = target_std(plan.data)
        records = []
        try:
            plan.trainer.run(progress=False, callback=records.append)
        finally:
            plan.trainer.close_data()
    timed = [record.step_seconds for record in records[1:]]
    return sigma_data, count, prepare_seconds, float(np.mean(timed)), str(plan.trainer.device)
