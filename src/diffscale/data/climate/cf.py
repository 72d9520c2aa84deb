"""CF metadata (standard_name, units, long_name) of the canonical variables, for files diffscale writes.

Standard names from the CF standard name table; units those of ERA5 (which the canonical variables keep).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["CF_ATTRIBUTES", "cf_attributes"]

CF_ATTRIBUTES: dict[str, dict[str, str]] = {
    "t2m": {"standard_name": "air_temperature", "units": "K", "long_name": "2 metre temperature"},
    "tp": {
        "standard_name": "lwe_thickness_of_precipitation_amount",
        "units": "m",
        "long_name": "total precipitation",
    },
    "u10": {"standard_name": "eastward_wind", "units": "m s-1", "long_name": "10 metre U wind component"},
    "v10": {"standard_name": "northward_wind", "units": "m s-1", "long_name": "10 metre V wind component"},
    "msl": {"standard_name": "air_pressure_at_mean_sea_level", "units": "Pa", "long_name": "mean sea level pressure"},
    "orography": {"standard_name": "surface_altitude", "units": "m", "long_name": "orography"},
    "lsm": {"standard_name": "land_area_fraction", "units": "1", "long_name": "land-sea mask"},
}


def cf_attributes(name: str, source: Mapping[str, Any] | None = None) -> dict[str, str]:
    """CF attributes of variable ``name``: the source file's units when it has them (nothing converts units, so
    the values are in those), else the table's; standard_name and long_name from the table when the units agree
    with it, else from the source (units at least; '1' if none)."""
    source = source or {}
    if name in CF_ATTRIBUTES and str(source.get("units", CF_ATTRIBUTES[name]["units"])) == CF_ATTRIBUTES[name]["units"]:
        return dict(CF_ATTRIBUTES[name])
    attributes = {"units": str(source.get("units", "1")), "long_name": str(source.get("long_name", name))}
    if "standard_name" in source:
        attributes["standard_name"] = str(source["standard_name"])
    return attributes
