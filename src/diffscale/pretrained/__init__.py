"""Pretrained runs shipped with the package, usable by name wherever a run directory is taken.

>>> import diffscale
>>> from diffscale.pretrained import pretrained_models
>>> sorted(pretrained_models())                                   # ['era5-uk-t2m', ...]
>>> run = diffscale.load_run("era5-uk-t2m", device="cpu")         # the shipped run directory
>>> ensemble = run.downscale("coarse.nc", members=16, seed=0)

Each model is a run directory reduced to what sampling needs (the checkpoint sidecar, the EMA weights as
safetensors, ``data_stats.json``, ``config.yaml``, the static fields on its grid, the coarse climatology) plus its
model card: ``card.md`` for people and ``card.json`` for programs (data, periods, training command and commit,
held-out scores beside bilinear interpolation, the sha256 of every shipped file, limits).

:func:`resolve_run` is the one place where a run argument (a path or a model name) becomes a directory: every
command and :func:`diffscale.load_run` go through it. An existing path always wins over a name.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from diffscale.validation import ConfigError

__all__ = [
    "CARD_JSON",
    "CARD_MARKDOWN",
    "MODELS_DIR",
    "PretrainedModel",
    "pretrained_model",
    "pretrained_models",
    "resolve_run",
    "writable_run",
]

MODELS_DIR = Path(__file__).parent / "models"
"""The folder of the shipped runs, one sub-folder per model name."""
CARD_JSON = "card.json"
CARD_MARKDOWN = "card.md"


@dataclass(frozen=True)
class PretrainedModel:
    """One shipped run.

    Attributes:
        name: the name commands take in place of a run directory (e.g. ``era5-uk-t2m``).
        directory: the run directory inside the installed package.
        card: the machine-readable model card (``card.json``).
    """

    name: str
    directory: Path
    card: dict[str, Any]

    @property
    def variables(self) -> list[str]:
        """The downscaled variables."""
        return list(self.card["variables"])

    @property
    def factor(self) -> int:
        """Fine cells per coarse cell along each axis."""
        return int(self.card["factor"])

    @property
    def grid(self) -> str:
        """The fine grid in words: rows x columns, spacing and extent."""
        return str(self.card["grid"]["summary"])

    @property
    def card_path(self) -> Path:
        """The Markdown model card."""
        return self.directory / CARD_MARKDOWN

    @property
    def size_bytes(self) -> int:
        """Bytes of every file of the shipped run (card and example included)."""
        return sum(path.stat().st_size for path in self.directory.iterdir() if path.is_file())


def _read_card(directory: Path) -> dict[str, Any]:
    path = directory / CARD_JSON
    try:
        card = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise ConfigError(f"pretrained model card '{path}' cannot be read ({error}); reinstall diffscale") from None
    if not isinstance(card, dict) or card.get("name") != directory.name:
        raise ConfigError(f"pretrained model card '{path}' does not name its folder {directory.name!r}; reinstall")
    return card


@cache
def _models(root: Path) -> dict[str, PretrainedModel]:
    if not root.is_dir():
        return {}
    folders = sorted(path for path in root.iterdir() if (path / CARD_JSON).is_file())
    return {path.name: PretrainedModel(path.name, path, _read_card(path)) for path in folders}


def pretrained_models() -> dict[str, PretrainedModel]:
    """The shipped models by name (sorted)."""
    return dict(_models(MODELS_DIR))


def _known_names() -> str:
    names = ", ".join(pretrained_models()) or "none installed"
    return f"known pretrained models: {names} ('diffscale models' lists them)"


def pretrained_model(name: str) -> PretrainedModel:
    """The shipped model ``name``; ConfigError listing the known names otherwise."""
    models = pretrained_models()
    if name not in models:
        raise ConfigError(f"{name!r} is not a pretrained model; {_known_names()}")
    return models[name]


def resolve_run(run: str | os.PathLike[str], key: str = "run directory") -> Path:
    """The run directory a command's RUN argument means: the path itself when it exists, else the shipped model
    of that name, else ConfigError (one line naming the argument and listing the known model names).

    A checkpoint sidecar path (``runs/x/checkpoint-00000500.json``) is a path like any other.
    """
    path = Path(run)
    if path.exists():
        return path
    models = pretrained_models()
    if str(run) in models:
        return models[str(run)].directory
    raise ConfigError(f"{key} '{run}' not found: neither a path nor a pretrained model; {_known_names()}")


def writable_run(run: str | os.PathLike[str], key: str = "run directory") -> Path:
    """:func:`resolve_run` for a command that writes into the run (recalibration, coarse climatology): a shipped
    model is refused (ConfigError), since writing would change the installed package and its card's checksums."""
    path = resolve_run(run, key)
    if path.resolve().parent == MODELS_DIR.resolve():
        raise ConfigError(
            f"{key} '{run}' is a shipped pretrained model, read-only: copy its folder ({path}) and use the copy"
        )
    return path
