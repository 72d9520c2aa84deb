"""Configuration sections that are one of several models, chosen by a tag key (``type``, ``arch``, ``kind``).

A :class:`TaggedSection` maps tag values (matched case-insensitively) to pydantic models. It picks the model
for a raw mapping, validates the mapping against it with one-line errors, and gives the pydantic
annotation (a discriminated union) under which the validated section is stored in the configuration.
Adding an alternative (a new formulation, a new network architecture, a new data kind) is one more entry
in ``members``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Union

from pydantic import BaseModel, Discriminator, Tag

from diffscale.validation import ConfigError, validate

__all__ = ["TaggedSection"]


@dataclass(frozen=True)
class TaggedSection:
    """A section whose model is selected by the value of ``key`` (case-insensitive).

    Attributes:
        name: the section's name in the configuration, e.g. ``"diffusion"``.
        key: the tag key inside the section, e.g. ``"type"``.
        members: canonical tag value -> model, in the order the allowed values are listed.
        default: the tag used when the section does not give ``key``.
        kind_of_thing: what a tag names, for messages ("formulation", "architecture", ...).
    """

    name: str
    key: str
    members: Mapping[str, type[BaseModel]]
    default: str
    kind_of_thing: str

    def canonical_tag(self, value: Any) -> str | None:
        """The canonical spelling of the tag ``value`` ("edm" -> "EDM"), or None when it is unknown."""
        if isinstance(value, str):
            for tag in self.members:
                if tag.lower() == value.lower():
                    return tag
        return None

    def unknown_tag_message(self, value: Any) -> str:
        """``diffusion.type = 'foo': unknown formulation; allowed: VE, VP, EDM, iDDPM``."""
        allowed = ", ".join(self.members)
        return f"{self.name}.{self.key} = {value!r}: unknown {self.kind_of_thing}; allowed: {allowed}"

    def model_for(self, data: Mapping[str, Any]) -> type[BaseModel]:
        """The model selected by ``data[key]`` (the default when absent); ConfigError when unknown."""
        tag = self.canonical_tag(data.get(self.key, self.default))
        if tag is None:
            raise ConfigError(self.unknown_tag_message(data.get(self.key)))
        return self.members[tag]

    def validate(self, data: Any) -> BaseModel:
        """Validate a raw section (a mapping, or an already validated member) into its model."""
        if isinstance(data, tuple(self.members.values())):
            return data
        if not isinstance(data, Mapping):
            raise ConfigError(f"{self.name} = {data!r}: must be a mapping of keys (e.g. {self.key}: {self.default})")
        model = self.model_for(data)
        canonical = {**data, self.key: self.canonical_tag(data.get(self.key, self.default))}
        return validate(model, canonical, prefix=self.name)

    def _tag_of(self, value: Any) -> str | None:
        raw = value.get(self.key, self.default) if isinstance(value, Mapping) else getattr(value, self.key, None)
        return self.canonical_tag(raw)

    def annotation(self) -> Any:
        """The pydantic annotation of the section: a union of the members discriminated on ``key``."""
        tagged = tuple(Annotated[model, Tag(tag)] for tag, model in self.members.items())
        if len(tagged) == 1:
            return next(iter(self.members.values()))
        return Annotated[Union[tagged], Discriminator(self._tag_of)]  # noqa: UP007 (a runtime-built union)
