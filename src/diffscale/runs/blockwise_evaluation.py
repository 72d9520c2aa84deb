"""Scoring a long record block by block over time: the scores of ``diffscale evaluate`` in memory that does not
grow with the number of times.

:func:`evaluate_sources` reads the opened inputs (:func:`~diffscale.runs.evaluation.open_inputs`) a block of
times at a time (:func:`block_times`: about :data:`EVALUATION_BLOCK_BYTES` of ensemble values) and merges each
block into the running sums of every score (:class:`~diffscale.evaluation.blockwise.VariableScores`) and of the
temporal scores (:class:`~diffscale.evaluation.blockwise_temporal.TemporalScores`, whose spells take a second pass
over the blocks); the joint scores are time-weighted means of the blocks' (a block of t of the T times counts
t / T): the seam's neighbouring differences, the ordered pairs' violations and excess, and the energy score,
whose scales (the truth's area-weighted standard deviations) come from a first pass over the blocks. The result
is that of :func:`~diffscale.runs.evaluation.evaluate_inputs` on the whole record, to float rounding.

What is kept between blocks and grows with the record: the time index, the tails of the percentile errors (1 %
of the samples at either end, at each cell), the truth's upper tenth at each cell (the temporal scores' spells)
and, for two members or more, three float64 numbers per case for the spread-error relation (its bins of equal
area are cut in the order of every case's variance).

The figures draw the first time (maps), the series at the grid's centre (every time) and, for the
quantile-quantile plot, the times of :func:`figure_times`: every time of a record whose values fit in
:data:`FIGURE_SAMPLE_BYTES`, else as many times spread evenly over it.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import numpy as np

from diffscale.data.climate.grid import is_global_longitude
from diffscale.evaluation.blockwise import VariableScores
from diffscale.evaluation.blockwise_temporal import TemporalScores
from diffscale.evaluation.multivariate import (
    energy_scores,
    neighbour_differences,
    order_report,
    seam_report_of_differences,
)
from diffscale.evaluation.scores import area_mean
from diffscale.runs.evaluation import (
    Evaluation,
    EvaluationInputs,
    EvaluationSources,
    check_seed,
    evaluate_inputs,
    evaluation_document,
)
from diffscale.runs.temporal import SeriesAtPoint

__all__ = ["EVALUATION_BLOCK_BYTES", "FIGURE_SAMPLE_BYTES", "block_times", "evaluate_sources", "figure_times"]

EVALUATION_BLOCK_BYTES = 2**20
"""The ensemble values (float64, every variable) read at once, at least one time: a block's scores cost a few
times its size, so memory stays a few MiB above what one time needs (a time of a global 0.25 degree grid is
8 MiB a member, one time per block)."""
FIGURE_SAMPLE_BYTES = 8 * 2**20
"""The values (float64: the members, the truth, the coarse field and the baseline of every variable) of the times
the figures draw."""


def block_times(sources: EvaluationSources) -> int:
    """Times per block: about :data:`EVALUATION_BLOCK_BYTES` of the ensemble's values, at least 1."""
    per_time = 8 * sources.members * len(sources.variables) * sources.latitude.size * sources.longitude.size
    return max(1, EVALUATION_BLOCK_BYTES // per_time)


def _blocks(sources: EvaluationSources, size: int) -> Iterator[EvaluationInputs]:
    for start in range(0, sources.times.size, size):
        yield sources.read(start, start + size)


def figure_times(total: int, per_time_bytes: int) -> np.ndarray:
    """The indices of the times the figures draw (maps: the first; quantile-quantile plot: all of them): every
    time, or as many times spread evenly over the record, first and last included, as fit in
    :data:`FIGURE_SAMPLE_BYTES`."""
    count = min(total, max(1, FIGURE_SAMPLE_BYTES // max(1, per_time_bytes)))
    return np.unique(np.rint(np.linspace(0, total - 1, count)).astype(np.int64))


def evaluate_sources(
    sources: EvaluationSources,
    seed: int = 0,
    temporal: bool = True,
    figures: bool = False,
    whole_record: bool = False,
) -> Evaluation:
    """The scores of :func:`~diffscale.runs.evaluation.evaluate_inputs` of the opened ``sources``, block by block
    over time (or, with ``whole_record``, every time read at once: that function). The :class:`Evaluation`'s
    ``inputs`` are the first block's, or with ``figures`` the times of :func:`figure_times` (and its ``series``
    the temporal figure's series at every time)."""
    check_seed(seed)
    if whole_record:
        return evaluate_inputs(sources.read(), seed, temporal=temporal)
    size = block_times(sources)
    total = sources.times.size
    scores = {
        name: VariableScores(
            name,
            sources.members,
            total,
            sources.latitude,
            sources.longitude,
            sources.factor,
            units=sources.units[name],
            seed=int(seed),
        )
        for name in sources.variables
    }
    modelled = sources.modelled
    scales = _truth_scales(sources, size) if len(modelled) > 1 else None
    periodic = is_global_longitude(sources.longitude)
    differences: dict[str, dict[str, np.ndarray]] = {}
    energy: dict[str, Any] | None = None
    pairs: list[dict[str, Any]] = []
    first: EvaluationInputs | None = None
    series, temporal_note = _temporal_scores(sources) if temporal else ({}, None)
    per_time = 8 * (sources.members + 3) * len(sources.variables) * sources.latitude.size * sources.longitude.size
    drawn = figure_times(total, per_time) if figures else np.zeros(0, dtype=np.int64)
    samples: list[EvaluationInputs] = []
    points: list[SeriesAtPoint] = []
    for start, block in zip(range(0, total, size), _blocks(sources, size), strict=True):
        first = first if first is not None else block
        share = block.times.size / total
        if figures:
            local = drawn[(drawn >= start) & (drawn < start + block.times.size)] - start
            samples.append(_times_of(block, local))
            points.append(SeriesAtPoint.of(block))
        for name in sources.variables:
            scores[name].add(block.ensemble[name], block.truth[name], block.baseline[name])
            if name in series:
                series[name].add(block.ensemble[name], block.truth[name], block.baseline[name])
            if periodic:
                fields = {
                    "ensemble": block.ensemble[name],
                    "truth": block.truth[name],
                    "bilinear": block.baseline[name],
                }
                for label, values in fields.items():
                    part = share * neighbour_differences(values, sources.latitude)
                    differences.setdefault(name, {})[label] = differences.get(name, {}).get(label, 0.0) + part
        if scales is not None:
            energy = _merged(
                energy,
                energy_scores(block.ensemble, block.truth, block.baseline, sources.latitude, modelled, scales),
                share,
            )
        block_pairs = order_report(
            {name: block.ensemble[name] for name in modelled}, block.truth, block.baseline, sources.latitude
        )
        pairs = [
            _merged(previous, item, share)
            for previous, item in zip(pairs or [None] * len(block_pairs), block_pairs, strict=True)
        ]
    if series:  # the second pass of the spells, above the truth's 90th percentile the first pass found
        for block in _blocks(sources, size):
            for name, temporal_scores in series.items():
                temporal_scores.add_spells(block.ensemble[name], block.truth[name], block.baseline[name])
    evaluations = [scores[name].result() for name in sources.variables]
    document = evaluation_document(sources, evaluations, seed)
    for name, temporal_scores in series.items():
        document["variables"][name]["temporal"] = temporal_scores.result()
    if temporal_note is not None:
        document["temporal_note"] = temporal_note
    if periodic:
        for name in sources.variables:
            document["variables"][name]["seam"] = seam_report_of_differences(differences[name])
    if energy is not None:
        document["joint"] = {"energy_score": energy}
    if pairs:
        document["ordered_pairs"] = pairs
    assert first is not None
    if not figures:
        return Evaluation(first, evaluations, document)
    return Evaluation(_joined(samples), evaluations, document, _joined_series(points))


def _times_of(inputs: EvaluationInputs, index: np.ndarray) -> EvaluationInputs:
    """``inputs`` at the times ``index`` of their own."""
    return replace(
        inputs,
        ensemble={name: values[:, index] for name, values in inputs.ensemble.items()},
        truth={name: values[index] for name, values in inputs.truth.items()},
        coarse={name: values[index] for name, values in inputs.coarse.items()},
        baseline={name: values[index] for name, values in inputs.baseline.items()},
        times=inputs.times[index],
    )


def _joined(parts: list[EvaluationInputs]) -> EvaluationInputs:
    """The inputs of consecutive blocks as one (their times one after the other)."""
    parts = [part for part in parts if part.times.size] or parts[:1]

    def joined(field: str, axis: int) -> dict[str, np.ndarray]:
        return {
            name: np.concatenate([getattr(part, field)[name] for part in parts], axis=axis)
            for name in getattr(parts[0], field)
        }

    return replace(
        parts[0],
        ensemble=joined("ensemble", 1),
        truth=joined("truth", 0),
        coarse=joined("coarse", 0),
        baseline=joined("baseline", 0),
        times=np.concatenate([part.times for part in parts]),
    )


def _joined_series(parts: list[SeriesAtPoint]) -> SeriesAtPoint:
    """The series of consecutive blocks as one."""
    return SeriesAtPoint(
        parts[0].row,
        parts[0].column,
        np.concatenate([part.times for part in parts]),
        {name: np.concatenate([part.truth[name] for part in parts]) for name in parts[0].truth},
        {name: np.concatenate([part.members[name] for part in parts], axis=1) for name in parts[0].members},
    )


def _temporal_scores(sources: EvaluationSources) -> tuple[dict[str, TemporalScores], str | None]:
    """The temporal scores of every variable, or none and the note of
    :func:`~diffscale.runs.temporal.add_temporal_scores` when the times are not a series."""
    try:
        return {
            name: TemporalScores(name, sources.times, sources.latitude, sources.units[name])
            for name in sources.variables
        }, None
    except ValueError as error:
        return {}, f"no temporal scores: {error}"


def _merged(total: dict[str, Any] | None, block: dict[str, Any], share: float) -> dict[str, Any]:
    """``total`` plus ``share`` times each number of ``block`` (its other entries as they are)."""
    merged = dict(block) if total is None else dict(total)
    for key, value in block.items():
        if isinstance(value, float | int | np.floating) and not isinstance(value, bool) and key not in ("low", "high"):
            merged[key] = share * float(value) + (0.0 if total is None else float(total[key]))
    return merged


def _truth_scales(sources: EvaluationSources, size: int) -> dict[str, float]:
    """:func:`~diffscale.evaluation.multivariate.truth_scales` of the whole record: its two passes (the
    area-weighted mean, then the mean squared deviation from it) each over the blocks."""
    names = sources.modelled
    total = sources.times.size
    mean = dict.fromkeys(names, 0.0)
    for block in _blocks(sources, size):
        for name in names:
            mean[name] += float(area_mean(block.truth[name], sources.latitude).sum()) / total
    squared = dict.fromkeys(names, 0.0)
    for block in _blocks(sources, size):
        for name in names:
            squared[name] += float(area_mean((block.truth[name] - mean[name]) ** 2, sources.latitude).sum()) / total
    return {name: math.sqrt(squared[name]) if squared[name] > 0 else 1.0 for name in names}
