"""Validation shared by every layer: strict pydantic models and one-line error messages.

Every user-facing parameter set (a formulation's parameters, the sampler settings, the sections of a
YAML configuration) is a :class:`StrictModel`. Validating one either returns the model or raises
:class:`ConfigError`, a :class:`ValueError` whose message is a single line that names the key, the bad
value and what is allowed, e.g.::

    diffusion.sigma_data = -1.0: must be greater than 0
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeVar

import pydantic
from pydantic import BaseModel, ConfigDict, model_validator

__all__ = ["ConfigError", "StrictModel", "format_validation_error", "validate"]

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
