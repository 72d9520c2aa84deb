"""Checkpoints: safetensors files plus a JSON sidecar; nothing is ever pickled or unpickled.

A checkpoint in directory ``D`` is

* ``D/checkpoint.json`` (the sidecar of the latest checkpoint, written last: it is the commit point) with
  ``format``, ``format_version``, ``step``, ``diffscale_version``, the resolved configuration, the optimizer's
  scalar hyper-parameters, the trainer's counters and gradient-scaler state (``trainer``), the data source's
  position (``data_position``), where the RNG states are (``rng``) and, for every tensor file, its name, size
  and sha256;
* ``D/checkpoint-<step>.json``: the same sidecar under the step's name, kept for each of the last K
  checkpoints (so an earlier one can be resumed when the latest is damaged);
* ``D/weights-<step>.safetensors``: the trained module's ``state_dict``;
* ``D/ema-<step>.safetensors``: the EMA module's ``state_dict``;
* ``D/training_state-<step>.safetensors``: the optimizer's state tensors, keyed
  ``optimizer.state.<parameter name>.<state key>`` (e.g. ``optimizer.state.network.input.weight.exp_avg``),
  the training generator's state ``generator.state`` (the uint8 tensor of ``Generator.get_state()``) and the
  global RNG states of every process, ``rng.cpu.rank<r>`` and ``rng.cuda.rank<r>`` (dropout and the like), and
  with post-hoc EMA the power-function profiles' accumulators ``posthoc_ema.<k>.<parameter name>``.

Every file is written atomically (temporary file in the same directory, flush, fsync, ``os.replace``, fsync
of the directory); the tensor files carry the step in their names, so a crash while writing leaves the
previous checkpoint intact; files of checkpoints beyond the last K are removed after the sidecar is replaced.
Loading checks each file's size and sha256 before parsing it and reads safetensors only. Everything an
exact resume needs (step, weights, EMA, Adam moments and hyper-parameters, generator state) is stored, and
``format_version`` lets later versions read older checkpoints.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import safetensors
import safetensors.torch
import torch
from torch import nn

from diffscale.files import TEMPORARY_FILE, atomic_write_bytes, fsync_directory
from diffscale.training.step_speed import match_optimizer_state, optimizer_implementation
from diffscale.validation import ConfigError

if TYPE_CHECKING:
    from diffscale.training.loop import Trainer

__all__ = [
    "ALL_PARTS",
    "EMA",
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "SIDECAR_NAME",
    "TRAINED_EMA",
    "TRAINING_STATE",
    "WEIGHTS",
    "Checkpoint",
    "CheckpointError",
    "atomic_write_bytes",
    "has_checkpoint",
    "is_sidecar_name",
    "list_checkpoints",
    "load_checkpoint",
    "load_weights",
    "read_safetensors",
    "replace_ema_weights",
    "restore_trainer",
    "save_checkpoint",
    "save_trainer_checkpoint",
    "write_safetensors",
]

FORMAT_NAME = "diffscale-checkpoint"
FORMAT_VERSION = 1
SIDECAR_NAME = "checkpoint.json"
WEIGHTS, EMA, TRAINING_STATE = "weights", "ema", "training_state"
ALL_PARTS: tuple[str, ...] = (WEIGHTS, EMA, TRAINING_STATE)
SAFETENSORS_SUFFIX = ".safetensors"
GENERATOR_KEY = "generator.state"
OPTIMIZER_STATE_PREFIX = "optimizer.state."
OPTIMIZER_GROUP_PREFIX = "optimizer.param_groups."
_PART_FILE = re.compile(rf"^({'|'.join(ALL_PARTS)})-(\d+)\.safetensors$")
_STEP_SIDECAR = re.compile(r"^checkpoint-(\d+)\.json$")
_POSTHOC_FILE = re.compile(r"^ema_posthoc-(\d+)-[0-9a-f]{8}\.safetensors$")
TRAINED_EMA = "trained_ema"
"""Sidecar ``files`` entry of the trainer's own EMA once post-hoc EMA weights replaced ``ema`` (what a resume reads)."""
RNG_PREFIX = "rng."


class CheckpointError(ConfigError):
    """A checkpoint that cannot be loaded (missing, truncated, corrupt, not safetensors): one line, naming the file."""


# -- safetensors files ---------------------------------------------------------------------------------------
def _cpu_tensors(tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Detached, contiguous CPU copies that own their memory (safetensors refuses shared storage)."""
    return {key: value.detach().to("cpu", copy=True).contiguous() for key, value in tensors.items()}


def write_safetensors(
    path: str | Path,
    tensors: Mapping[str, torch.Tensor],
    *,
    sync_directory: bool = True,
    metadata: Mapping[str, str] | None = None,
) -> tuple[str, int]:
    """Write ``tensors`` atomically as a safetensors file (with the string ``metadata`` in its header); return its
    (sha256 hex digest, size in bytes)."""
    data = safetensors.torch.save(_cpu_tensors(tensors), metadata=dict(metadata) if metadata else None)
    atomic_write_bytes(path, data, sync_directory=sync_directory)
    return hashlib.sha256(data).hexdigest(), len(data)


def _looks_like_safetensors(data: bytes) -> bool:
    """The safetensors layout: an 8-byte little-endian header length, then a JSON header ``{...}``."""
    if len(data) < 10:
        return False
    header_length = int.from_bytes(data[:8], "little")
    return 8 + header_length <= len(data) and data[8:9] == b"{"


def read_safetensors(
    path: str | Path, expected_sha256: str | None = None, expected_size: int | None = None
) -> dict[str, torch.Tensor]:
    """Read a safetensors file (CPU tensors), checking its size and sha256 when given.

    Refuses anything that is not a safetensors file (by name and by content) without interpreting it:
    pickled ``.pt``/``.pkl`` files are never loaded.
    """
    path = Path(path)
    if path.suffix != SAFETENSORS_SUFFIX:
        raise CheckpointError(
            f"'{path}': refusing to load a {path.suffix or 'suffix-less'} file; only {SAFETENSORS_SUFFIX} "
            "files are loaded (pickled .pt/.pkl files never are)"
        )
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise CheckpointError(f"'{path}': checkpoint file missing") from None
    except OSError as error:
        raise CheckpointError(f"'{path}': cannot be read ({error.strerror})") from None
    if expected_size is not None and len(data) != expected_size:
        raise CheckpointError(
            f"'{path}': {len(data)} bytes, expected {expected_size} (truncated or corrupt checkpoint file)"
        )
    if expected_sha256 is not None:
        digest = hashlib.sha256(data).hexdigest()
        if digest != expected_sha256:
            raise CheckpointError(
                f"'{path}': sha256 {digest[:16]}... does not match the recorded {expected_sha256[:16]}... "
                "(corrupt checkpoint file)"
            )
    if not _looks_like_safetensors(data):
        raise CheckpointError(f"'{path}': not a safetensors file")
    try:
        return safetensors.torch.load(data)
    except safetensors.SafetensorError as error:
        raise CheckpointError(f"'{path}': unreadable safetensors file ({error})") from None


# -- optimizer state <-> flat tensors + JSON -----------------------------------------------------------------
def _parameter_names(optimizer: torch.optim.Optimizer, model: nn.Module) -> list[str]:
    """The name of each optimizer parameter, in the order of ``optimizer.state_dict()``'s indices."""
    names = {id(parameter): name for name, parameter in model.named_parameters()}
    ordered = []
    for group in optimizer.param_groups:
        for parameter in group["params"]:
            if id(parameter) not in names:
                raise ValueError("the optimizer holds a parameter that is not in the model")
            ordered.append(names[id(parameter)])
    return ordered


def _json_value(value: Any, where: str) -> Any:
    """A JSON-able copy of an optimizer hyper-parameter (tuples become lists)."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, list | tuple):
        return [_json_value(item, where) for item in value]
    raise TypeError(f"{where}: cannot store a {type(value).__name__} in a checkpoint sidecar")


def flatten_optimizer(optimizer: torch.optim.Optimizer, model: nn.Module) -> tuple[dict[str, torch.Tensor], dict]:
    """The optimizer's state as (tensors keyed by parameter name, JSON-able metadata)."""
    names = _parameter_names(optimizer, model)
    state_dict = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalar_state: dict[str, dict[str, Any]] = {}
    for index, values in state_dict["state"].items():
        for key, value in values.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{OPTIMIZER_STATE_PREFIX}{names[index]}.{key}"] = value
            else:
                scalar_state.setdefault(names[index], {})[key] = _json_value(value, f"optimizer state {key}")
    groups = []
    for group_index, group in enumerate(state_dict["param_groups"]):
        entry: dict[str, Any] = {"params": [names[index] for index in group["params"]]}
        for key, value in group.items():
            if key == "params":
                continue
            if isinstance(value, torch.Tensor):
                tensors[f"{OPTIMIZER_GROUP_PREFIX}{group_index}.{key}"] = value
            else:
                entry[key] = _json_value(value, f"optimizer hyper-parameter {key}")
        groups.append(entry)
    meta = {"class": type(optimizer).__name__, "param_groups": groups, "scalar_state": scalar_state}
    return tensors, meta


def _tuples(value: Any) -> Any:
    """JSON lists back to the tuples torch's optimizers use for hyper-parameters such as ``betas``."""
    return tuple(_tuples(item) for item in value) if isinstance(value, list) else value


def unflatten_optimizer(
    tensors: Mapping[str, torch.Tensor], meta: Mapping[str, Any], names: list[str]
) -> dict[str, Any]:
    """An ``optimizer.state_dict()`` rebuilt from :func:`flatten_optimizer`'s output for parameters ``names``."""
    index_of = {name: index for index, name in enumerate(names)}
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        if key.startswith(OPTIMIZER_STATE_PREFIX):
            name, state_key = key[len(OPTIMIZER_STATE_PREFIX) :].rsplit(".", 1)
            if name not in index_of:
                raise CheckpointError(f"optimizer state for unknown parameter {name!r}")
            state.setdefault(index_of[name], {})[state_key] = value
    for name, values in meta.get("scalar_state", {}).items():
        state.setdefault(index_of[name], {}).update(values)
    groups = []
    for group_index, group in enumerate(meta["param_groups"]):
        entry = {key: _tuples(value) for key, value in group.items() if key != "params"}
        prefix = f"{OPTIMIZER_GROUP_PREFIX}{group_index}."
        entry.update({key[len(prefix) :]: value for key, value in tensors.items() if key.startswith(prefix)})
        missing = [name for name in group["params"] if name not in index_of]
        if missing:
            raise CheckpointError(f"optimizer parameters {missing} are not in the model")
        entry["params"] = [index_of[name] for name in group["params"]]
        groups.append(entry)
    return {"state": state, "param_groups": groups}


# -- saving ---------------------------------------------------------------------------------------------------
def has_checkpoint(directory: str | Path) -> bool:
    """Whether ``directory`` holds a checkpoint sidecar."""
    return (Path(directory) / SIDECAR_NAME).is_file()


def save_checkpoint(
    directory: str | Path,
    *,
    step: int,
    config: Mapping[str, Any],
    model: nn.Module,
    ema_model: nn.Module | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    generator: torch.Generator | None = None,
    extra_tensors: Mapping[str, torch.Tensor] | None = None,
    metadata: Mapping[str, Any] | None = None,
    keep: int = 1,
) -> Path:
    """Write a checkpoint of step ``step`` into ``directory`` (created if needed); return the sidecar's path.

    ``config`` and ``metadata`` (extra sidecar entries, e.g. ``trainer``, ``data_position``) must be JSON-able;
    encode non-finite floats first (e.g. as the strings "inf", "nan") if the sidecar should stay strict JSON.
    ``extra_tensors`` (e.g. RNG states) join the training state file. Of the checkpoints at steps <= ``step``
    the last ``keep`` are kept; any at later steps (left by an abandoned run that was resumed) are removed.
    """
    if keep < 1:
        raise ValueError(f"keep = {keep}: must be >= 1")
    from diffscale import __version__

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    parts: dict[str, dict[str, torch.Tensor]] = {WEIGHTS: model.state_dict()}
    if ema_model is not None:
        parts[EMA] = ema_model.state_dict()
    optimizer_meta = None
    training_state: dict[str, torch.Tensor] = {}
    if optimizer is not None:
        optimizer_tensors, optimizer_meta = flatten_optimizer(optimizer, model)
        training_state.update(optimizer_tensors)
    if generator is not None:
        training_state[GENERATOR_KEY] = generator.get_state()
    training_state.update(extra_tensors or {})
    if training_state or optimizer is not None:
        parts[TRAINING_STATE] = training_state

    files = {}
    for part, tensors in parts.items():
        name = f"{part}-{step:08d}{SAFETENSORS_SUFFIX}"
        digest, size = write_safetensors(directory / name, tensors, sync_directory=False)
        files[part] = {"path": name, "sha256": digest, "bytes": size}
    fsync_directory(directory)  # every tensor file is durable before a sidecar names it
    sidecar = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "diffscale_version": __version__,
        "step": step,
        "created_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "files": files,
        "optimizer": optimizer_meta,
        "generator": None if generator is None else {"device": str(generator.device)},
        "rng": {
            "generator": None if generator is None else GENERATOR_KEY,
            "global": sorted(key for key in training_state if key.startswith(RNG_PREFIX)),
        },
        **dict(metadata or {}),
        "config": dict(config),
    }
    text = (json.dumps(sidecar, indent=2) + "\n").encode("utf-8")
    atomic_write_bytes(directory / step_sidecar_name(step), text, sync_directory=False)
    sidecar_path = directory / SIDECAR_NAME
    atomic_write_bytes(sidecar_path, text)
    _prune(directory, step, keep)
    return sidecar_path


def step_sidecar_name(step: int) -> str:
    """``checkpoint-<step>.json``: the name under which a checkpoint's sidecar is kept."""
    return f"checkpoint-{step:08d}.json"


def _file_step(name: str) -> int | None:
    """The step in the name of a file this module writes (None for any other file)."""
    match = _PART_FILE.match(name) or _STEP_SIDECAR.match(name)
    if match:
        return int(match.group(match.lastindex or 1))
    match = _POSTHOC_FILE.match(name)
    return int(match.group(1)) if match else None


def _prune(directory: Path, step: int, keep: int) -> None:
    """Delete the files of checkpoints other than the last ``keep`` at steps <= ``step``, and temporary files
    that a killed writer left (only names this module writes; the latest sidecar is never touched)."""
    steps = sorted({found for path in directory.iterdir() if (found := _file_step(path.name)) is not None})
    kept = set([found for found in steps if found <= step][-keep:])
    for path in directory.iterdir():
        found = _file_step(path.name)
        if found is not None and found not in kept:
            path.unlink(missing_ok=True)
        temporary = TEMPORARY_FILE.match(path.name)
        if temporary and int(temporary.group(2)) != os.getpid():
            name = temporary.group(1)
            if name == SIDECAR_NAME or _file_step(name) is not None:  # left by a writer that was killed
                path.unlink(missing_ok=True)


def list_checkpoints(directory: str | Path) -> list[tuple[int, Path]]:
    """(step, sidecar path) of every kept checkpoint in ``directory``, newest first."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = []
    for path in directory.iterdir():
        match = _STEP_SIDECAR.match(path.name)
        if match:
            found.append((int(match.group(1)), path))
    return sorted(found, reverse=True)


# -- loading --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Checkpoint:
    """A loaded checkpoint: tensors on the CPU plus the sidecar's metadata."""

    directory: Path
    step: int
    config: dict[str, Any]
    diffscale_version: str
    format_version: int
    weights: dict[str, torch.Tensor] = field(default_factory=dict)
    ema_weights: dict[str, torch.Tensor] = field(default_factory=dict)
    training_state: dict[str, torch.Tensor] = field(default_factory=dict)
    optimizer_meta: dict[str, Any] | None = None
    trainer_state: dict[str, Any] = field(default_factory=dict)
    """The trainer's counters and gradient-scaler state (sidecar ``trainer``)."""
    data_position: Any = None
    """The data source's ``state_dict()`` when it has one (sidecar ``data_position``)."""
    sidecar: dict[str, Any] = field(default_factory=dict)
    """The whole sidecar (entries added by callers through ``metadata`` included)."""

    @property
    def generator_state(self) -> torch.Tensor | None:
        """The training generator's state (uint8 tensor), if it was saved and loaded."""
        return self.training_state.get(GENERATOR_KEY)

    def optimizer_state_dict(self, optimizer: torch.optim.Optimizer, model: nn.Module) -> dict[str, Any]:
        """The saved optimizer state as a ``state_dict`` for ``optimizer`` over ``model``'s parameters."""
        if self.optimizer_meta is None:
            raise CheckpointError(f"'{self.directory / SIDECAR_NAME}': holds no optimizer state")
        saved_class = self.optimizer_meta.get("class")
        if saved_class != type(optimizer).__name__:
            raise CheckpointError(f"checkpoint optimizer is {saved_class}, not {type(optimizer).__name__}")
        return unflatten_optimizer(self.training_state, self.optimizer_meta, _parameter_names(optimizer, model))


def _read_sidecar(path: Path) -> dict[str, Any]:
    try:
        sidecar = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as error:
        raise CheckpointError(f"'{path}': cannot be read ({error})") from None
    except json.JSONDecodeError as error:
        raise CheckpointError(f"'{path}': not valid JSON ({error.msg} at line {error.lineno}); corrupt?") from None
    if not isinstance(sidecar, dict) or sidecar.get("format") != FORMAT_NAME:
        raise CheckpointError(f"'{path}': not a diffscale checkpoint sidecar")
    version = sidecar.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise CheckpointError(
            f"'{path}': format_version {version!r} is not supported by this diffscale (reads up to {FORMAT_VERSION})"
        )
    for key in ("step", "files", "config"):
        if key not in sidecar:
            raise CheckpointError(f"'{path}': sidecar lacks {key!r}")
    step = sidecar["step"]
    if not isinstance(step, int) or isinstance(step, bool) or step < 0:
        raise CheckpointError(f"'{path}': step {step!r} is not a non-negative integer; corrupt?")
    files = sidecar["files"]
    if not isinstance(files, dict) or not all(isinstance(entry, dict) for entry in files.values()):
        raise CheckpointError(f"'{path}': 'files' must map each part to {{path, sha256, bytes}}; corrupt?")
    for key, kinds in (("config", (dict,)), ("optimizer", (dict, type(None))), ("trainer", (dict, type(None)))):
        if not isinstance(sidecar.get(key), kinds):
            raise CheckpointError(f"'{path}': {key!r} is a {type(sidecar.get(key)).__name__}, not a mapping; corrupt?")
    return sidecar


def is_sidecar_name(name: str) -> bool:
    """Whether ``name`` is a checkpoint sidecar's file name (``checkpoint.json`` or ``checkpoint-<step>.json``)."""
    return name == SIDECAR_NAME or _STEP_SIDECAR.match(name) is not None


def _sidecar_path(path: Path) -> Path:
    """The sidecar of a run directory, or ``path`` itself when it is a sidecar; refuse anything else."""
    if path.is_dir():
        sidecar = path / SIDECAR_NAME
        if not sidecar.is_file():
            raise CheckpointError(f"'{path}': no checkpoint here ({SIDECAR_NAME} not found)")
        return sidecar
    if not path.exists():
        raise CheckpointError(f"'{path}': no such run directory or checkpoint")
    if not is_sidecar_name(path.name):
        raise CheckpointError(
            f"'{path}': not a diffscale checkpoint; pass a run directory (or its {SIDECAR_NAME}); "
            "pickled .pt/.pkl files are never loaded"
        )
    return path


def load_checkpoint(path: str | Path, parts: Iterable[str] = ALL_PARTS) -> Checkpoint:
    """Load the latest checkpoint in run directory ``path`` (or the one of a sidecar), reading only ``parts``.

    Every file read is checked against the size and sha256 recorded in the sidecar; any problem raises
    :class:`CheckpointError` naming the file and, when the latest checkpoint of a run directory is damaged,
    the most recent earlier checkpoint that is intact (whose sidecar path can be loaded or resumed instead).
    """
    parts = tuple(parts)
    try:
        return _load_sidecar(Path(path), parts)
    except CheckpointError as error:
        directory = Path(path)
        if not (directory.is_dir() and (directory / SIDECAR_NAME).is_file()):
            raise
        failed_step = _recorded_step(directory / SIDECAR_NAME)
        for step, sidecar in list_checkpoints(directory):
            if failed_step is not None and step >= failed_step:
                continue
            try:
                _load_sidecar(sidecar, ALL_PARTS)
            except CheckpointError:
                continue
            raise CheckpointError(
                f"{error}; the previous checkpoint (step {step}) is intact: load or resume it with '{sidecar}' "
                f"(e.g. diffscale train CONFIG --resume {sidecar})"
            ) from None
        raise


def _recorded_step(sidecar: Path) -> int | None:
    """The step a sidecar records, or None when it cannot be read."""
    try:
        return int(json.loads(sidecar.read_text(encoding="utf-8"))["step"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _load_sidecar(path: Path, parts: tuple[str, ...]) -> Checkpoint:
    """Load the checkpoint of one sidecar (or of a run directory's latest), without looking for others."""
    sidecar_path = _sidecar_path(Path(path))
    directory = sidecar_path.parent
    sidecar = _read_sidecar(sidecar_path)
    loaded: dict[str, dict[str, torch.Tensor]] = {}
    for part in parts:
        if part not in ALL_PARTS:
            raise ValueError(f"unknown checkpoint part {part!r}; allowed: {', '.join(ALL_PARTS)}")
        entry = sidecar["files"].get(part)
        if entry is None:
            if part == WEIGHTS:
                raise CheckpointError(f"'{sidecar_path}': records no {part} file")
            continue
        name = str(entry.get("path", ""))
        if Path(name).name != name or name in ("", ".", ".."):
            raise CheckpointError(f"'{sidecar_path}': file name {name!r} must be a plain name in the run directory")
        loaded[part] = read_safetensors(directory / name, entry.get("sha256"), entry.get("bytes"))
    return Checkpoint(
        directory=directory,
        step=int(sidecar["step"]),
        config=sidecar["config"],
        diffscale_version=str(sidecar.get("diffscale_version", "unknown")),
        format_version=int(sidecar["format_version"]),
        weights=loaded.get(WEIGHTS, {}),
        ema_weights=loaded.get(EMA, {}),
        training_state=loaded.get(TRAINING_STATE, {}),
        optimizer_meta=sidecar.get("optimizer"),
        trainer_state=dict(sidecar.get("trainer") or {}),
        data_position=sidecar.get("data_position"),
        sidecar=sidecar,
    )


# -- trainers -------------------------------------------------------------------------------------------------
def _global_rng_states(trainer: Trainer) -> dict[str, torch.Tensor]:
    """Every process's global torch RNG states (CPU, and the CUDA device's), gathered to all ranks."""
    from diffscale.training.distributed import all_gather_rows

    context = trainer.distributed
    states = {"cpu": torch.get_rng_state()}
    if trainer.device.type == "cuda":
        states["cuda"] = torch.cuda.get_rng_state(trainer.device)
    result = {}
    for kind, state in states.items():
        # gathered as rows of a (world_size, n) uint8 tensor (on the device for NCCL)
        rows = all_gather_rows(state.to(trainer.device)[None], context).cpu()
        for rank in range(context.world_size):
            result[f"{RNG_PREFIX}{kind}.rank{rank}"] = rows[rank].clone()
    return result


def save_trainer_checkpoint(
    directory: str | Path,
    trainer: Trainer,
    config: Mapping[str, Any],
    *,
    keep: int = 1,
    metadata: Mapping[str, Any] | None = None,
) -> Path | None:
    """Checkpoint everything of ``trainer`` that an exact resume needs; only rank 0 writes (others: None).

    With several processes every rank must call this (the RNG states are gathered). ``metadata`` adds
    JSON-able sidecar entries (e.g. the metrics window of a run).
    """
    extra_tensors = _global_rng_states(trainer)
    if not trainer.distributed.is_main:
        return None
    if trainer.posthoc_ema is not None:
        extra_tensors.update(trainer.posthoc_ema.state_tensors())
    state_dict = getattr(trainer.source, "state_dict", None)
    metadata = {
        **dict(metadata or {}),
        "trainer": trainer.counters(),
        "data_position": state_dict() if callable(state_dict) else None,
    }
    return save_checkpoint(
        directory,
        step=trainer.step,
        config=config,
        model=trainer.denoiser,
        ema_model=trainer.ema_denoiser,
        optimizer=trainer.optimizer,
        generator=trainer.checkpoint_generator(),
        extra_tensors=extra_tensors,
        metadata=metadata,
        keep=keep,
    )


def replace_ema_weights(path: str | Path, state: Mapping[str, torch.Tensor], record: Mapping[str, Any]) -> Path:
    """Make ``state`` the EMA weights of a checkpoint (a run directory's latest, or a sidecar's), e.g. post-hoc EMA
    weights; return the checkpoint's sidecar path.

    The weights go to ``ema_posthoc-<step>-<sha256 prefix>.safetensors``; the sidecar's ``files.ema`` then names it,
    ``files.trained_ema`` keeps the trainer's own EMA (which a resume restores, so it stays exact) and ``posthoc_ema``
    holds ``record``. Both the step's sidecar and, when it is that step's, the run's latest are rewritten atomically
    after the weights are durable; a post-hoc file the sidecar named before is removed afterwards.
    """
    sidecar_path = _sidecar_path(Path(path))
    directory = sidecar_path.parent
    sidecar = _read_sidecar(sidecar_path)
    step = int(sidecar["step"])
    files = dict(sidecar["files"])
    previous = files.get(EMA, {}).get("path") if TRAINED_EMA in files else None
    if TRAINED_EMA not in files and EMA in files:
        files[TRAINED_EMA] = files[EMA]
    data = safetensors.torch.save(_cpu_tensors(state))
    digest = hashlib.sha256(data).hexdigest()
    name = f"ema_posthoc-{step:08d}-{digest[:8]}{SAFETENSORS_SUFFIX}"
    atomic_write_bytes(directory / name, data)
    files[EMA] = {"path": name, "sha256": digest, "bytes": len(data)}
    text = (json.dumps({**sidecar, "files": files, "posthoc_ema": dict(record)}, indent=2) + "\n").encode("utf-8")
    atomic_write_bytes(directory / step_sidecar_name(step), text)
    latest = directory / SIDECAR_NAME
    if latest.is_file() and _recorded_step(latest) == step:
        atomic_write_bytes(latest, text)
    if previous and previous != name and _POSTHOC_FILE.match(previous):
        (directory / previous).unlink(missing_ok=True)
    return directory / step_sidecar_name(step) if sidecar_path.name != SIDECAR_NAME else sidecar_path


def load_weights(module: nn.Module, state: Mapping[str, torch.Tensor], where: str) -> None:
    """``module.load_state_dict(state)``, with a mismatch (another architecture) as one CheckpointError line."""
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    mismatched = [key for key in own if key in state and tuple(own[key].shape) != tuple(state[key].shape)]
    if missing or unexpected or mismatched:
        details = []
        if missing:
            details.append(f"{len(missing)} missing (e.g. {missing[0]!r})")
        if unexpected:
            details.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]!r})")
        if mismatched:
            key = mismatched[0]
            details.append(
                f"{len(mismatched)} of another shape (e.g. {key!r}: {tuple(state[key].shape)} in the checkpoint, "
                f"{tuple(own[key].shape)} in the model)"
            )
        raise CheckpointError(
            f"{where}: the checkpoint's weights do not fit this model (another architecture?): {'; '.join(details)}"
        )
    module.load_state_dict(state)


def restore_trainer(trainer: Trainer, checkpoint: Checkpoint) -> None:
    """Put ``checkpoint``'s step, weights, EMA weights, optimizer state, counters, data position and RNG
    states into ``trainer``."""
    where = f"'{checkpoint.directory / SIDECAR_NAME}'"
    load_weights(trainer.denoiser, checkpoint.weights, where)
    trained = (checkpoint.sidecar.get("files") or {}).get(TRAINED_EMA)
    if trained is not None:  # post-hoc EMA weights replaced "ema": the trainer's own average continues
        trained_ema = read_safetensors(
            checkpoint.directory / trained["path"], trained.get("sha256"), trained.get("bytes")
        )
        load_weights(trainer.ema_denoiser, trained_ema, where)
    elif checkpoint.ema_weights:
        load_weights(trainer.ema_denoiser, checkpoint.ema_weights, where)
    if trainer.posthoc_ema is not None:
        trainer.posthoc_ema.load_state_tensors(checkpoint.training_state, where)
    if checkpoint.optimizer_meta is not None:
        trainer.optimizer.load_state_dict(checkpoint.optimizer_state_dict(trainer.optimizer, trainer.denoiser))
        implementation = optimizer_implementation(trainer.device)
        for group in trainer.optimizer.param_groups:  # a resumed configuration may change it (lr is set per step)
            group["weight_decay"] = trainer.settings.weight_decay
            group.update({"foreach": None, "fused": None, **implementation})  # this device's, not the saver's
        match_optimizer_state(trainer.optimizer)
    if checkpoint.generator_state is not None:
        saved_device = str((checkpoint.sidecar.get("generator") or {}).get("device", trainer.generator.device.type))
        if torch.device(saved_device).type != trainer.generator.device.type:
            raise CheckpointError(
                f"{where}: trained with its generator on {saved_device}, resumed on {trainer.generator.device}; "
                f"resume on the same kind of device (training.device: {torch.device(saved_device).type})"
            )
        trainer.close_data(rewind=False)  # batches drawn ahead from the old state are dropped
        trainer.generator.set_state(checkpoint.generator_state)
    trainer.step = checkpoint.step
    trainer.load_counters(checkpoint.trainer_state)
    load_position = getattr(trainer.source, "load_state_dict", None)
    if checkpoint.data_position is not None and callable(load_position):
        load_position(checkpoint.data_position)
    rank = trainer.distributed.rank
    cpu_state = checkpoint.training_state.get(f"{RNG_PREFIX}cpu.rank{rank}")
    if cpu_state is not None:
        torch.set_rng_state(cpu_state)
    else:  # e.g. more processes than when it was saved: a seed of its own for this rank and step
        torch.manual_seed(trainer.settings.seed + rank + 1_000_003 * checkpoint.step)
    cuda_state = checkpoint.training_state.get(f"{RNG_PREFIX}cuda.rank{rank}")
    if cuda_state is not None and trainer.device.type == "cuda":
        torch.cuda.set_rng_state(cuda_state, trainer.device)
