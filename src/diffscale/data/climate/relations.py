"""Relations between climate variables: pairs with a known order and variables derived from others.

* Ordered pairs (:data:`ORDERED_PAIRS`): (low, high) with low <= high at every point, e.g. the daily minimum and
  maximum 2 m temperature (``tasmin`` <= ``tasmax``). A generated ensemble can break the order where the two are
  close (a member's tasmin drawn above its tasmax); :func:`order_violations` measures how often, and
  :func:`sort_ordered_pairs` restores it.
* Derived variables (:data:`DERIVED_VARIABLES`): e.g. the 10 m wind speed ``ws10`` = sqrt(u10^2 + v10^2) from the
  wind components; :func:`derived_fields` computes each one whose sources are present, from the values given
  (an ensemble's speed from its members' components, never from the mean components).

This is the one place where these relations are defined; evaluation and downscaling read them from here.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

__all__ = [
    "DERIVED_VARIABLES",
    "ORDERED_PAIRS",
    "DerivedVariable",
    "derived_fields",
    "derived_variables",
    "order_violations",
    "ordered_pairs",
    "sort_ordered_pairs",
    "wind_speed",
]

ORDERED_PAIRS: tuple[tuple[str, str], ...] = (("tasmin", "tasmax"),)
"""(low, high): variables whose values satisfy low <= high at every point and time (canonical names)."""


def wind_speed(u: Any, v: Any) -> Any:
    """|V| = sqrt(u^2 + v^2) (numpy arrays or torch tensors, any shape), computed as ``hypot`` (no overflow)."""
    if isinstance(u, torch.Tensor):
        return torch.hypot(u, v)
    return np.hypot(np.asarray(u, dtype=np.float64), np.asarray(v, dtype=np.float64))


@dataclass(frozen=True)
class DerivedVariable:
    """A variable computed pointwise from others: ``function(*sources)``, in the units of the first source."""

    name: str
    sources: tuple[str, ...]
    function: Callable[..., Any]
    long_name: str
    standard_name: str


DERIVED_VARIABLES: dict[str, DerivedVariable] = {
    "ws10": DerivedVariable("ws10", ("u10", "v10"), wind_speed, "10 metre wind speed", "wind_speed"),
}
"""Derived variables by name: ``ws10`` = sqrt(u10^2 + v10^2)."""


def ordered_pairs(variables: Sequence[str]) -> list[tuple[str, str]]:
    """The pairs of :data:`ORDERED_PAIRS` whose both members are among ``variables``."""
    present = set(variables)
    return [(low, high) for low, high in ORDERED_PAIRS if low in present and high in present]


def derived_variables(variables: Sequence[str]) -> list[DerivedVariable]:
    """The derived variables whose sources are all among ``variables`` and which are not themselves there."""
    present = set(variables)
    return [item for name, item in DERIVED_VARIABLES.items() if name not in present and set(item.sources) <= present]


def derived_fields(fields: Mapping[str, Any]) -> dict[str, Any]:
    """``{name: function(sources)}`` for every derived variable whose sources are keys of ``fields`` (values of
    one shape: e.g. each member's components give that member's speed)."""
    return {
        item.name: item.function(*(fields[source] for source in item.sources))
        for item in derived_variables(list(fields))
    }


def order_violations(low: Any, high: Any, weights: Any | None = None) -> float:
    """The (weighted) fraction of points where ``low`` > ``high`` (arrays of one shape; ``weights`` broadcasts to
    it, e.g. cos(latitude) of the rows as (H, 1)): sum w 1[low > high] / sum w."""
    low = np.asarray(low, dtype=np.float64)
    high = np.asarray(high, dtype=np.float64)
    broken = (low > high).astype(np.float64)
    if weights is None:
        return float(broken.mean())
    w = np.broadcast_to(np.asarray(weights, dtype=np.float64), broken.shape)
    return float((broken * w).sum() / w.sum())


def sort_ordered_pairs(fields: torch.Tensor, variables: Sequence[str], dim: int = -3) -> torch.Tensor:
    """``fields`` (..., C, H, W along ``dim``) with each ordered pair sorted pointwise: low <- min(low, high),
    high <- max(low, high). Points already in order are untouched (bitwise); elsewhere the two values swap, so
    the pair's set of values, their mean and their spread |high - low| are kept. The marginal distribution of
    each is changed only where the order was broken (there the lower tail of ``high`` moves up and the upper
    tail of ``low`` down)."""
    pairs = ordered_pairs(variables)
    if not pairs:
        return fields
    names = list(variables)
    out = fields.clone()
    for low_name, high_name in pairs:
        low = fields.select(dim, names.index(low_name))
        high = fields.select(dim, names.index(high_name))
        out.select(dim, names.index(low_name)).copy_(torch.minimum(low, high))
        out.select(dim, names.index(high_name)).copy_(torch.maximum(low, high))
    return out
