"""Validation shared by every layer: strict pydantic models and one-line error messages.

Every user-facing parameter set (a formulation's parameters, the sampler settings, the sections of a
YAML configuration) is a :class:`StrictModel`. Validating one either returns the model or raises
:class:`ConfigError`, a :class:`ValueError` whose message is a single line that names the key, the bad
value and what is allowed, e.g.::

    diffusion.sigma_data = -1.0: must be greater than 0
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator, Mapping
from typing import Any, TypeVar

import pydantic
from pydantic import BaseModel, ConfigDict, model_validator

__all__ = [
    "ConfigError",
    "StrictModel",
    "command_line_names",
    "format_validation_error",
    "option_name",
    "option_setting",
    "validate",
]

ModelT = TypeVar("ModelT", bound=BaseModel)


class ConfigError(ValueError):
    """Bad user input: a one-line message naming the key, the bad value and what is allowed."""


class StrictModel(BaseModel):
    """A frozen pydantic model that refuses unknown keys and names the allowed ones."""

    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)

    @model_validator(mode="before")
    @classmethod
    def _refuse_unknown_keys(cls, data: Any) -> Any:
        if isinstance(data, Mapping):
            allowed = set(cls.model_fields)
            for field in cls.model_fields.values():
                if field.alias:
                    allowed.add(field.alias)
            unknown = [str(key) for key in data if key not in allowed]
            if unknown:
                names = ", ".join(repr(key) for key in unknown)
                raise ValueError(f"unknown key {names}; allowed keys: {', '.join(cls.model_fields)}")
        return data


_MESSAGE_REWRITES = (
    ("Input should be ", "must be "),
    ("Value error, ", ""),
    ("Assertion failed, ", ""),
)


def _one_error(error: Mapping[str, Any], prefix: str) -> str:
    location = ".".join(str(part) for part in (prefix, *error["loc"]) if part != "")
    message = str(error["msg"])
    for old, new in _MESSAGE_REWRITES:
        message = message.replace(old, new)
    if error["type"] in {"value_error", "assertion_error"} or "input" not in error:
        return f"{location}: {message}" if location else message
    return f"{location} = {error['input']!r}: {message}"


def format_validation_error(error: pydantic.ValidationError, prefix: str = "") -> str:
    """All errors of ``error`` on one line, each as ``key = value: what is allowed``."""
    return "; ".join(_one_error(item, prefix) for item in error.errors(include_url=False))


def validate(model: type[ModelT], data: Mapping[str, Any] | None, prefix: str = "") -> ModelT:
    """Validate ``data`` against ``model``; raise :class:`ConfigError` with a one-line message."""
    try:
        return model.model_validate(dict(data or {}))
    except pydantic.ValidationError as error:
        raise ConfigError(format_validation_error(error, prefix)) from None


# -- naming a parameter in a message -------------------------------------------------------------------------
_COMMAND_LINE: contextvars.ContextVar[Mapping[str, str] | None] = contextvars.ContextVar(
    "diffscale_command_line_names", default=None
)


@contextlib.contextmanager
def command_line_names(aliases: Mapping[str, str] | None = None) -> Iterator[None]:
    """Inside the block, :func:`option_name` names parameters as the command line spells them (``--member-batch``;
    ``aliases`` maps a Python parameter to another flag, e.g. ``{"coarse": "input"}``). The ``diffscale`` command
    runs its handlers in it, so one message serves the Python API and the command."""
    token = _COMMAND_LINE.set(dict(aliases or {}))
    try:
        yield
    finally:
        _COMMAND_LINE.reset(token)


def option_name(parameter: str) -> str:
    """``parameter`` as the user spelled it: ``member_batch`` in Python, ``--member-batch`` on the command line."""
    aliases = _COMMAND_LINE.get()
    if aliases is None:
        return parameter
    return "--" + aliases.get(parameter, parameter).replace("_", "-")


def option_setting(parameter: str, value: Any) -> str:
    """How the user sets ``parameter`` to ``value``: ``overwrite=True`` in Python, ``--overwrite`` on the command
    line (a flag), ``--seed 3`` otherwise."""
    if _COMMAND_LINE.get() is None:
        return f"{parameter}={value!r}"
    flag = option_name(parameter)
    return flag if value is True else f"{flag} {value}"
