"""A Markdown reference of every configuration key: section, key, default and description.

>>> print(config_reference())   # the table of every key (the docs' configuration reference)
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from diffscale.config.schema import TAGGED_SECTIONS, Config

__all__ = ["config_reference", "reference_rows"]


def _default(model: type[BaseModel], name: str) -> Any:
    field = model.model_fields[name]
    if field.default is not PydanticUndefined:
        return field.default
    if field.default_factory is not None:
        return field.default_factory()
    return None


def _format(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, float) and value == float("inf"):
        return ".inf"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_format(item) for item in value) + "]"
    return str(value)


def reference_rows() -> list[tuple[str, str, str, str]]:
    """(section, key, default, description) for every key; tagged sections list each alternative."""
    rows = []
    for section, field in Config.model_fields.items():
        if section in TAGGED_SECTIONS:
            tagged = TAGGED_SECTIONS[section]
            alternatives = [(f"{section} ({tagged.key}: {tag})", model) for tag, model in tagged.members.items()]
        else:
            alternatives = [(section, field.annotation)]
        for title, model in alternatives:
            for name, key_field in model.model_fields.items():
                rows.append((title, name, _format(_default(model, name)), key_field.description or ""))
    return rows


def config_reference() -> str:
    """The reference as a Markdown table."""
    lines = ["| section | key | default | description |", "|---|---|---|---|"]
    lines += [f"| {section} | `{key}` | `{default}` | {text} |" for section, key, default, text in reference_rows()]
    return "\n".join(lines)
