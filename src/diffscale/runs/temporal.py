"""The temporal scores in an evaluation: each variable's :func:`~diffscale.evaluation.temporal.temporal_report`
in scores.json, its entries as Dataset variables, and its figure.

>>> scores = diffscale.evaluate("ensemble.nc", truth="era5_t2m.nc")
>>> scores["autocorrelation"].sel(variable="t2m")            # (lag,), the members' mean; autocorrelation_truth
>>> scores["daily_max_crps"].sel(variable="t2m", prediction="ensemble")
>>> scores["spell_length"].sel(variable="t2m", prediction="ensemble"), scores["spell_length_truth"]

The document gets ``temporal`` per variable, or, when the times do not form a series (one time, or times off a
regular grid), a top-level ``temporal_note`` saying why there are none.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from matplotlib.figure import Figure

from diffscale.evaluation.temporal import DAILY_STATISTICS, temporal_report, time_positions
from diffscale.evaluation.temporal_plots import temporal_figure

if TYPE_CHECKING:
    from diffscale.runs.evaluation import EvaluationInputs

__all__ = [
    "SERIES_MEMBERS",
    "SPELL_KINDS",
    "SeriesAtPoint",
    "add_temporal_scores",
    "temporal_dataset_variables",
    "temporal_inputs_figure",
    "temporal_lines",
    "write_temporal_figures",
]

SPELL_KINDS = {"above_p90": "spell", "wet": "wet_spell", "dry": "dry_spell"}
"""The spells of the report -> the prefix of their Dataset variables."""
SERIES_MEMBERS = 3
"""Members whose series the figure draws."""
_PREDICTIONS = ("ensemble", "bilinear")


def add_temporal_scores(inputs: EvaluationInputs, document: dict[str, Any]) -> None:
    """Put each variable's temporal report into ``document["variables"][name]["temporal"]``, or a
    ``temporal_note`` into ``document`` when the evaluated times are not a series."""
    try:
        time_positions(inputs.times)
    except ValueError as error:
        document["temporal_note"] = f"no temporal scores: {error}"
        return
    for name in inputs.variables:
        document["variables"][name]["temporal"] = _variable_report(inputs, name)


def _number(value: Any) -> float:
    return math.nan if value is None else float(value)


def temporal_dataset_variables(document: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """(data, coordinates, attributes) of the temporal scores in ``document`` for the scores Dataset.

    ``autocorrelation`` (variable, lag) the members' mean, ``autocorrelation_truth`` (variable, lag),
    ``autocorrelation_member`` (variable, member, lag); coordinate ``lag`` (steps) with ``lag_hours``. Per daily
    statistic s (max, min, mean, sum): ``daily_s_crps`` and ``daily_s_bias`` (variable, prediction), NaN where not
    computed (sums: precipitation only). Per spell kind (``spell`` above the truth's 90th percentile, ``wet_spell``
    and ``dry_spell`` for precipitation): ``<kind>_length`` in hours and ``<kind>_count`` per cell (variable,
    prediction) and the truth's ``<kind>_length_truth``, ``<kind>_count_truth``. Attributes ``temporal_step_hours``,
    ``temporal_whole_days`` and ``temporal_notes``. All empty when the document has no temporal scores (its
    ``temporal_note`` says why).
    """
    scores = document["variables"]
    names = list(scores)
    reports = [scores[name].get("temporal") for name in names]
    if not any(reports):
        return {}, {}, {}
    first = next(report for report in reports if report)
    lags = len(first["lag_hours"])
    members = int(document["members"])
    empty: dict[str, Any] = {}

    def acf(report: dict[str, Any] | None, key: str) -> list[float]:
        values = (report or empty).get("autocorrelation", {}).get(key)
        return [_number(value) for value in values] if values is not None else [math.nan] * lags

    data: dict[str, Any] = {
        "autocorrelation": (("variable", "lag"), [acf(report, "ensemble") for report in reports]),
        "autocorrelation_truth": (("variable", "lag"), [acf(report, "truth") for report in reports]),
        "autocorrelation_member": (
            ("variable", "member", "lag"),
            [
                [[_number(v) for v in row] for row in report["autocorrelation"]["members"]]
                if report
                else [[math.nan] * lags] * members
                for report in reports
            ],
        ),
    }
    for statistic in (*DAILY_STATISTICS, "sum"):
        for score in ("crps", "bias"):
            data[f"daily_{statistic}_{score}"] = (
                ("variable", "prediction"),
                [
                    [
                        _number(
                            (report or empty)
                            .get("daily", {})
                            .get("statistics", {})
                            .get(statistic, {})
                            .get(prediction, {})
                            .get(score)
                        )
                        for prediction in _PREDICTIONS
                    ]
                    for report in reports
                ],
            )
    for kind, prefix in SPELL_KINDS.items():
        spells = [((report or empty).get("spells") or {}).get(kind) or {} for report in reports]
        for key, label in (("mean_length_hours", "length"), ("count", "count")):
            data[f"{prefix}_{label}"] = (
                ("variable", "prediction"),
                [[_number(item.get(prediction, {}).get(key)) for prediction in _PREDICTIONS] for item in spells],
            )
            data[f"{prefix}_{label}_truth"] = (
                ("variable",),
                [_number(item.get("truth", {}).get(key)) for item in spells],
            )
    coordinates = {
        "lag": np.arange(1, lags + 1),
        "lag_hours": ("lag", np.asarray(first["lag_hours"], dtype=float), {"units": "h"}),
        "member": np.arange(members),
    }
    notes = sorted(
        {
            f"{name}: {note}"
            for name, report in zip(names, reports, strict=True)
            for note in (report or empty).get("notes", [])
        }
    )
    attributes = {
        "temporal_step_hours": float(first["step_hours"]),
        "temporal_whole_days": int(first["daily"]["whole_days"]),
        "temporal_notes": "; ".join(notes),
    }
    return data, coordinates, attributes


def _format(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return f"{value:.{digits}g}"


def temporal_lines(name: str, units: str, document: dict[str, Any]) -> list[str]:
    """The printed lines of variable ``name``'s temporal scores (none when there are none)."""
    report = document["variables"][name].get("temporal")
    if not report:
        return []
    acf = report["autocorrelation"]
    lags = report["lag_hours"]
    shown = sorted({0, len(lags) // 4, len(lags) // 2, len(lags) - 1})
    pairs = ", ".join(f"{_format(lags[i])} h {_format(acf['ensemble'][i])}/{_format(acf['truth'][i])}" for i in shown)
    lines = [f"{name} residual autocorrelation (members' mean/truth, step {_format(report['step_hours'])} h): {pairs}"]
    daily = report["daily"]
    unit = f" [{units}]" if units else ""
    if daily["statistics"]:
        parts = []
        for statistic, item in daily["statistics"].items():
            parts.append(
                f"{statistic} CRPS {_format(item['ensemble']['crps'])} (bilinear {_format(item['bilinear']['crps'])})"
                f" bias {_format(item['ensemble']['bias'])}"
            )
        days = f"{daily['whole_days']} whole day{'s' if daily['whole_days'] != 1 else ''}"
        lines.append(f"{name} daily{unit} over {days}: " + "; ".join(parts))
    else:
        lines.append(f"{name} daily aggregates skipped: {daily.get('note', 'no whole day')}")
    for kind, spells in report["spells"].items():
        if kind not in SPELL_KINDS:
            continue
        label = {"above_p90": "spells above the truth's 90th percentile", "wet": "wet spells", "dry": "dry spells"}
        ensemble, truth, bilinear = spells["ensemble"], spells["truth"], spells["bilinear"]
        lines.append(
            f"{name} {label[kind]}: mean length {_format(ensemble['mean_length_hours'])} h, "
            f"{_format(ensemble['count'])} per cell (truth {_format(truth['mean_length_hours'])} h, "
            f"{_format(truth['count'])}; bilinear {_format(bilinear['mean_length_hours'])} h)"
        )
    lines += [f"{name} temporal note: {note}" for note in report.get("notes", []) if note != daily.get("note")]
    return lines


def _series_point(inputs: EvaluationInputs) -> tuple[int, int]:
    return inputs.latitude.size // 2, inputs.longitude.size // 2


@dataclass
class SeriesAtPoint:
    """What the temporal figure draws of each variable at the grid's centre (``row``, ``column``): every time
    (``times``), the truth's series ``truth[v]`` (T,) and the first members' ``members[v]`` (k, T)."""

    row: int
    column: int
    times: np.ndarray
    truth: dict[str, np.ndarray]
    members: dict[str, np.ndarray]

    @classmethod
    def of(cls, inputs: EvaluationInputs, members: int = SERIES_MEMBERS) -> SeriesAtPoint:
        """The series of ``inputs`` (all their times), copied (a view would keep all of ``inputs`` alive)."""
        row, column = _series_point(inputs)
        return cls(
            row,
            column,
            inputs.times,
            {name: inputs.truth[name][:, row, column].copy() for name in inputs.variables},
            {name: inputs.ensemble[name][:members, :, row, column].copy() for name in inputs.variables},
        )


def _variable_report(inputs: EvaluationInputs, name: str) -> dict[str, Any]:
    """:func:`~diffscale.evaluation.temporal.temporal_report` of variable ``name`` of the evaluation's inputs."""
    return temporal_report(
        name,
        inputs.ensemble[name],
        inputs.truth[name],
        inputs.baseline[name],
        inputs.latitude,
        inputs.times,
        inputs.units[name],
    )


def temporal_inputs_figure(inputs: EvaluationInputs, name: str, members: int = SERIES_MEMBERS) -> Figure:
    """The temporal figure of variable ``name`` (:func:`~diffscale.evaluation.temporal_plots.temporal_figure`):
    the residual autocorrelations, and the series of ``members`` members and the truth at the grid's centre."""
    report = _variable_report(inputs, name)
    return _figure(inputs, name, report, SeriesAtPoint.of(inputs, members))


def _figure(inputs: EvaluationInputs, name: str, report: dict[str, Any], series: SeriesAtPoint) -> Figure:
    step, positions = time_positions(series.times)
    hours = positions * step / 3600.0
    return temporal_figure(
        lag_hours=report["lag_hours"],
        truth_autocorrelation=report["autocorrelation"]["truth"],
        member_autocorrelation=report["autocorrelation"]["members"],
        hours=hours,
        truth_series=series.truth[name],
        member_series=series.members[name],
        variable=name,
        units=inputs.units[name],
        point=f"{inputs.latitude[series.row]:.3g}°N {inputs.longitude[series.column]:.4g}°E",
    )


def write_temporal_figures(
    directory: Path, inputs: EvaluationInputs, document: dict[str, Any], series: SeriesAtPoint | None = None
) -> list[str]:
    """Write ``<name>_temporal.png`` for each variable with temporal scores (the series at the grid's centre:
    ``series``, default those of ``inputs``); the names written."""
    written = []
    drawn = series if series is not None else SeriesAtPoint.of(inputs)
    for name in inputs.variables:
        report = document["variables"][name].get("temporal")
        if report:
            _figure(inputs, name, report, drawn).savefig(directory / f"{name}_temporal.png", dpi=100)
            written.append(f"{name}_temporal.png")
    return written
