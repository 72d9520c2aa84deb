"""One-line messages for bad input."""

from __future__ import annotations

import pytest
from pydantic import Field

from diffscale.validation import ConfigError, StrictModel, validate


class Inner(StrictModel):
    rate: float = Field(1.0, gt=0)


class Outer(StrictModel):
    name: str = "x"
    inner: Inner = Inner()


def test_unknown_keys_name_the_allowed_ones() -> None:
    with pytest.raises(ConfigError, match=r"^section\.inner: unknown key 'speed'; allowed keys: rate$"):
        validate(Outer, {"inner": {"speed": 2}}, prefix="section")


def test_bad_values_name_key_value_and_rule_on_one_line() -> None:
    with pytest.raises(ConfigError) as info:
        validate(Outer, {"name": 3, "inner": {"rate": -2}})
    message = str(info.value)
    assert "\n" not in message
    assert "name = 3: must be a valid string" in message
    assert "inner.rate = -2: must be greater than 0" in message
    assert isinstance(info.value, ValueError)


def test_valid_input_passes_and_models_are_frozen() -> None:
    model = validate(Outer, {"inner": {"rate": 0.5}})
    assert model.inner.rate == 0.5
    with pytest.raises(ValueError):
        model.name = "y"  # type: ignore[misc]
