"""``diffscale likelihood``'s arguments and output: the ``--data`` specification (a samples file or
``mixture:N``) and the JSON results file. The evaluation itself is :mod:`diffscale.runs.likelihood`."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from diffscale.data.samples_io import SAMPLE_FORMATS
from diffscale.files import atomic_write_bytes, check_output
from diffscale.validation import ConfigError

__all__ = ["DataSpec", "check_json_path", "parse_data_spec", "write_results"]

_MIXTURE_SPEC = re.compile(r"^mixture:(\d+)$")


@dataclass(frozen=True)
class DataSpec:
    """What ``--data`` names: a samples file, or ``count`` fresh draws of the run's own mixture."""

    text: str
    path: Path | None = None
    count: int | None = None


def parse_data_spec(text: str) -> DataSpec:
    """``mixture:N`` (N >= 1) or a ``.npy``/``.csv``/``.safetensors`` file; ConfigError otherwise."""
    if text.startswith("mixture:"):
        match = _MIXTURE_SPEC.match(text)
        if match is None or int(match.group(1)) < 1:
            raise ConfigError(f"--data = {text!r}: expected mixture:N with an integer N >= 1")
        return DataSpec(text=text, count=int(match.group(1)))
    path = Path(text)
    if path.suffix.lower() not in SAMPLE_FORMATS:
        raise ConfigError(
            f"--data = '{path}': unknown data file type {path.suffix or '(none)'!r}; "
            f"allowed: {', '.join(SAMPLE_FORMATS)} or mixture:N"
        )
    if not path.is_file():
        raise ConfigError(f"--data = '{path}': file not found")
    return DataSpec(text=text, path=path)


def check_json_path(path: str | Path, option: str = "--out") -> Path:
    """``path`` if it ends in ``.json`` and can be written (:func:`diffscale.files.check_output`); ConfigError
    otherwise."""
    path = Path(path)
    if path.suffix.lower() != ".json":
        raise ConfigError(f"{option} = '{path}': results are written as JSON; give a file name ending in .json")
    return check_output(path, option)


def write_results(path: Path, document: dict[str, Any]) -> Path:
    """Write ``document`` as indented JSON, atomically; create parent folders."""
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, (json.dumps(document, indent=2) + "\n").encode("utf-8"))
    return path
