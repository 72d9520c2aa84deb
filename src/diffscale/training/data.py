"""Training batches read ahead by worker processes, while the batch order stays a pure function of (seed, step).

A source that can split a batch into its random indices and their values (:class:`IndexedSource`, e.g. a
:class:`~diffscale.data.climate.ClimateDataset`: times and windows, then the fields read from the files) is
drawn from in the training process, from the one training generator, exactly as an in-process source would be:
step k's indices, then step k's objective draws (noise levels, noise), then step k + 1's, ... Worker processes
only read and assemble the samples of given indices, so their own random state plays no part and the batches
are bitwise those read in-process, whatever the number of workers.

To read ahead, the draws of later steps are made early (:class:`BatchPipeline` keeps them in order with the
generator state before each). The draws of a step depend only on the generator and on shapes, so drawing early
changes no value; a checkpoint stores the generator state before the first step not yet trained, so a resumed
run draws exactly what the uninterrupted one did. Under torchrun every rank draws the whole global batch and its
workers read only that rank's rows.

Worker processes start with ``spawn`` by default (netCDF/HDF5 handles and the threads of torch or dask are not
safe to inherit through ``fork``; each worker opens its files itself), run one torch thread each, stay alive
between steps (persistent), read ``prefetch_factor`` batches ahead each, and return pinned batches when training
on CUDA. A batch that cannot be read (a damaged file, NaN values) stops training with the reader's one-line
:class:`~diffscale.validation.ConfigError`; a worker that dies or a batch that takes longer than ``data_timeout``
raises :class:`DataLoadingError`; the last checkpoint is left as it was, and the run resumes from it.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from diffscale.data.batch import Batch
from diffscale.training.settings import TrainingSettings
from diffscale.validation import ConfigError

__all__ = ["BatchPipeline", "BatchReader", "DataLoadingError", "IndexedSource", "StepDraws", "is_indexed"]


class DataLoadingError(RuntimeError):
    """A data loading worker died, or no batch arrived within ``training.data_timeout`` seconds."""


@runtime_checkable
class BatchReader(Protocol):
    """Reads rows ``start:stop`` of a drawn global batch (picklable: each worker process holds a copy)."""

    def read(self, drawn: Any, start: int, stop: int) -> Batch: ...


@runtime_checkable
class IndexedSource(Protocol):
    """A data source drawn in two steps: ``draw(batch_size, generator)`` makes every random draw of a global batch
    (a picklable object, e.g. time and window indices) and ``batch_reader().read(drawn, start, stop)`` reads the
    rows of it. ``sample_shape`` is the shape of one target (what the objective's draws need before reading)."""

    @property
    def sample_shape(self) -> tuple[int, ...]: ...

    def draw(self, batch_size: int, generator: torch.Generator) -> Any: ...

    def batch_reader(self) -> BatchReader: ...


def is_indexed(source: Any) -> bool:
    """Whether ``source`` is an :class:`IndexedSource` (else a plain ``source(batch_size, generator)``)."""
    return all(callable(getattr(source, name, None)) for name in ("draw", "batch_reader")) and hasattr(
        source, "sample_shape"
    )


@dataclass
class StepDraws:
    """Every random draw of one optimiser step, in the order they were made: the data (a source's drawn indices,
    or the global batch of a plain source), then the objective's (``objective`` for a split objective, else one
    seed per micro-batch of every rank); ``generator_state`` is the training generator before them."""

    serial: int
    data: Any
    objective: Mapping[str, torch.Tensor] | None
    seeds: torch.Tensor | None
    generator_state: torch.Tensor


@dataclass(frozen=True)
class _ReadFailure:
    """What a worker returns instead of a batch it could not read (the main process raises it as one line)."""

    message: str


class _RowsOfDrawnBatches(Dataset):
    """A worker's view: item (serial, drawn) -> (serial, this rank's rows of the batch, or a _ReadFailure)."""

    def __init__(self, reader: BatchReader, start: int, stop: int) -> None:
        self.reader = reader
        self.start = start
        self.stop = stop

    def __getitem__(self, item: tuple[int, Any]) -> tuple[int, Batch | _ReadFailure]:
        serial, drawn = item
        try:
            return serial, self.reader.read(drawn, self.start, self.stop)
        except ConfigError as error:
            return serial, _ReadFailure(str(error))


class _Draws(Sampler):
    """An endless stream of drawn steps, pulled by the DataLoader as far ahead as its workers read."""

    def __init__(self, draw: Callable[[], tuple[int, Any]]) -> None:
        self.draw = draw

    def __iter__(self) -> Any:
        while True:
            yield self.draw()


def _worker_init(worker_id: int) -> None:
    """One torch thread per worker: the workers and the training process share the cores."""
    del worker_id
    torch.set_num_threads(1)


def _as_is(item: Any) -> Any:
    return item


class BatchPipeline:
    """Steps drawn in the training process, their rows ``rows`` read by ``settings.num_workers`` processes.

    Args:
        source: the indexed source.
        rows: [start, stop) of the global batch this process trains on.
        draw_step: makes the next step's draws (from the training generator).
        settings: ``num_workers``, ``prefetch_factor``, ``worker_start_method``, ``data_timeout``.
        device: the training device (batches are pinned for CUDA).
    """

    def __init__(
        self,
        source: IndexedSource,
        rows: tuple[int, int],
        draw_step: Callable[[], StepDraws],
        settings: TrainingSettings,
        device: torch.device,
    ) -> None:
        if settings.num_workers < 1:
            raise ValueError("a BatchPipeline needs at least one worker")
        self.source = source
        self.settings = settings
        self._draw_step = draw_step
        self.pending: deque[StepDraws] = deque()
        self._loader = DataLoader(
            _RowsOfDrawnBatches(source.batch_reader(), *rows),
            batch_size=None,
            sampler=_Draws(self._draw),
            num_workers=settings.num_workers,
            prefetch_factor=settings.prefetch_factor,
            persistent_workers=True,
            pin_memory=device.type == "cuda",
            timeout=settings.data_timeout,
            worker_init_fn=_worker_init,
            multiprocessing_context=settings.worker_start_method,
            collate_fn=_as_is,
        )
        self._iterator: Any = None

    def _draw(self) -> tuple[int, Any]:
        draws = self._draw_step()
        self.pending.append(draws)
        return draws.serial, draws.data

    def next(self) -> tuple[StepDraws, Batch]:
        """The next step's draws and this process's rows of its batch (in the order drawn)."""
        if self._iterator is None:
            self._iterator = iter(self._loader)
        try:
            serial, batch = next(self._iterator)
        except (RuntimeError, ConnectionError, EOFError) as error:
            raise data_loading_error(error, self.settings) from None
        draws = self.pending.popleft()
        if draws.serial != serial:
            raise RuntimeError(f"batch {serial} arrived for step draws {draws.serial}")
        if isinstance(batch, _ReadFailure):
            raise ConfigError(batch.message)
        return draws, batch

    def boundary_state(self) -> torch.Tensor | None:
        """The generator state before the oldest step drawn but not yet handed out (None: nothing drawn ahead)."""
        return self.pending[0].generator_state if self.pending else None

    def close(self) -> None:
        """Stop the workers (what they read ahead is dropped)."""
        iterator, self._iterator = self._iterator, None
        if iterator is not None:
            iterator._shutdown_workers()
        self.pending.clear()


def is_worker_failure(error: BaseException) -> bool:
    """Whether ``error`` is torch's report of a dead worker or of a DataLoader timeout, or a broken connection to
    a worker that died while handing over a batch."""
    if isinstance(error, ConnectionError | EOFError):
        return True
    text = str(error)
    return (
        isinstance(error, RuntimeError)
        and not isinstance(error, DataLoadingError)
        and ("DataLoader worker" in text or "DataLoader timed out" in text)
    )


def data_loading_error(error: BaseException, settings: TrainingSettings) -> BaseException:
    """A worker's death or a timeout as one :class:`DataLoadingError` line (other errors unchanged)."""
    if not is_worker_failure(error):
        return error
    if isinstance(error, ConnectionError | EOFError):
        first = f"a DataLoader worker exited while handing over a batch ({type(error).__name__}: {error})"
    else:
        first = str(error).strip().splitlines()[0].rstrip(". ")
    return DataLoadingError(
        f"data loading stopped: {first} (training.num_workers = {settings.num_workers}, training.data_timeout = "
        f"{settings.data_timeout:g} s); the last checkpoint is intact: resume the run"
    )
