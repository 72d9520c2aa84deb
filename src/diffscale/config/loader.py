"""Reading a configuration: a YAML file, then ``--set key=value`` overrides, then validation.

>>> config = load_config("configs/mixture_1d_edm.yaml", overrides=["training.steps=100", "diffusion.type=VP"])

Overrides use dotted keys (``training.steps=100``; nested ones such as ``data.channels.latlon=false``) and
YAML values (``100`` is an int, ``1e-3`` a float, ``[0.5, 0.5]`` a list, ``null`` None). Changing a section's
tag (``diffusion.type``, ``model.arch``, ``data.kind``) starts that section afresh from the new alternative's
defaults: the file's keys for the old alternative are dropped, the other overrides of the section still apply.
Every failure is a :class:`~diffscale.validation.ConfigError` with a one-line message.
"""

from __future__ import annotations

import copy
import typing
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel

from diffscale.config.schema import SECTIONS, TAGGED_SECTIONS, Config, config_from_dict
from diffscale.validation import ConfigError

__all__ = ["apply_overrides", "load_config", "parse_override", "read_yaml_mapping"]


def read_yaml_mapping(path: str | Path) -> dict[str, Any]:
    """The top-level mapping of a YAML file (an empty file gives ``{}``); ConfigError on any problem."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"config file '{path}' not found")
    if not path.is_file():
        raise ConfigError(f"config file '{path}' is not a file")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(f"config file '{path}' cannot be read: {error}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise ConfigError(f"config file '{path}': {_describe_yaml_error(error)}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"config file '{path}': the top level must be a mapping of sections ({', '.join(SECTIONS)}), "
            f"got a {type(data).__name__}"
        )
    return data


def _describe_yaml_error(error: yaml.YAMLError) -> str:
    """One line: the problem and where it is (YAML's own messages span several lines)."""
    mark = getattr(error, "problem_mark", None)
    problem = getattr(error, "problem", None) or str(error)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    return " ".join(f"YAML syntax error{where}: {problem}".split())


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"training.steps=100"`` -> (["training", "steps"], 100); the value is parsed as YAML."""
    key, separator, raw_value = text.partition("=")
    key = key.strip()
    if not separator or not key:
        raise ConfigError(f"--set {text!r}: expected KEY=VALUE, e.g. training.steps=100")
    path = key.split(".")
    if any(not part for part in path):
        raise ConfigError(f"--set {text!r}: {key!r} is not a dotted key like training.steps")
    try:
        value = yaml.safe_load(raw_value) if raw_value.strip() else None
    except yaml.YAMLError as error:
        raise ConfigError(
            f"--set {key}={raw_value}: the value is not valid YAML ({_describe_yaml_error(error)})"
        ) from None
    return path, value


def _is_tag_override(path: list[str]) -> bool:
    return len(path) == 2 and path[0] in TAGGED_SECTIONS and path[1] == TAGGED_SECTIONS[path[0]].key


def _section_model(name: str, section: Any) -> type[BaseModel] | None:
    """The model that validates section ``name`` given its raw data (None if the tag is unknown)."""
    if name in TAGGED_SECTIONS:
        if not isinstance(section, Mapping):
            return None
        tagged = TAGGED_SECTIONS[name]
        tag = tagged.canonical_tag(section.get(tagged.key, tagged.default))
        return tagged.members[tag] if tag is not None else None
    annotation = Config.model_fields[name].annotation
    return annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None


def _nested_model(annotation: Any) -> type[BaseModel] | None:
    """The configuration model of a field annotated ``Model`` or ``Model | None`` (None for a plain value)."""
    for candidate in (annotation, *typing.get_args(annotation)):
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            return candidate
    return None


def _check_override_path(path: list[str], data: Mapping[str, Any]) -> None:
    """Refuse an override whose dotted key names no configuration key (nested keys such as
    ``data.channels.latlon`` are followed through the section's sub-models)."""
    dotted = ".".join(path)
    section = path[0]
    if section not in SECTIONS:
        raise ConfigError(f"--set {dotted}: unknown section {section!r}; allowed: {', '.join(SECTIONS)}")
    model = _section_model(section, data.get(section, {}))
    if model is None:  # an unknown tag: validation reports it with the allowed values
        return
    for depth in range(1, len(path)):
        where, key = ".".join(path[:depth]), path[depth]
        if model is None:
            raise ConfigError(f"--set {dotted}: {where} has no sub-keys")
        if key not in model.model_fields:
            raise ConfigError(
                f"--set {dotted}: unknown key {key!r} in {where}; allowed keys: {', '.join(model.model_fields)}"
            )
        model = _nested_model(model.model_fields[key].annotation)


def apply_overrides(data: Mapping[str, Any], overrides: Iterable[str]) -> dict[str, Any]:
    """A copy of raw configuration ``data`` with ``KEY=VALUE`` overrides applied (not yet validated)."""
    result = copy.deepcopy(dict(data))
    parsed = [parse_override(text) for text in overrides]
    # Tags first, so that "diffusion.type=VP diffusion.beta_d=10" works in either order.
    ordered = [item for item in parsed if _is_tag_override(item[0])] + [
        item for item in parsed if not _is_tag_override(item[0])
    ]
    for path, value in ordered:
        _check_override_path(path, result)
        if len(path) == 1:
            result[path[0]] = value
            continue
        section_name = path[0]
        section = result.get(section_name)
        if section is None:
            section = {}
        elif not isinstance(section, Mapping):
            raise ConfigError(f"--set {'.'.join(path)}: {section_name} = {section!r} is not a mapping")
        section = dict(section)
        if _is_tag_override(path):
            tagged = TAGGED_SECTIONS[section_name]
            old = tagged.canonical_tag(section.get(tagged.key, tagged.default))
            if tagged.canonical_tag(value) != old:
                section = {}  # a different alternative: start from its defaults
        _set_nested(section, path[1:], value, ".".join(path))
        result[section_name] = section
    return result


def _set_nested(mapping: dict[str, Any], keys: list[str], value: Any, dotted: str) -> None:
    """``mapping[k1][k2]...[kn] = value``, creating (or copying) the intermediate mappings."""
    node = mapping
    for depth, key in enumerate(keys[:-1]):
        child = node.get(key)
        if child is None:
            child = {}
        elif not isinstance(child, Mapping):
            where = ".".join(dotted.split(".")[: depth + 2])
            raise ConfigError(f"--set {dotted}: {where} = {child!r} is not a mapping")
        node[key] = child = dict(child)
        node = child
    node[keys[-1]] = value


def load_config(path: str | Path, overrides: Iterable[str] = ()) -> Config:
    """Read, override and validate a configuration file; ConfigError with a one-line message on failure."""
    return config_from_dict(apply_overrides(read_yaml_mapping(path), overrides))
