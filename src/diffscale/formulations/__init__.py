"""Diffusion formulations: VE, VP, EDM and iDDPM (Karras et al. 2022, Table 1).

>>> f = formulation("EDM", sigma_data=0.5)
>>> f.time_steps(18).shape
torch.Size([19])
"""

from __future__ import annotations

from typing import Any

from diffscale.formulations.base import Formulation, FormulationParams, Preconditioning
from diffscale.formulations.edm import EDM, EDMParams
from diffscale.formulations.iddpm import IDDPM, IDDPMParams
from diffscale.formulations.ve import VE, VEParams
from diffscale.formulations.vp import VP, VPParams
from diffscale.validation import ConfigError

__all__ = [
    "EDM",
    "FORMULATIONS",
    "IDDPM",
    "VE",
    "VP",
    "EDMParams",
    "Formulation",
    "FormulationParams",
    "IDDPMParams",
    "Preconditioning",
    "VEParams",
    "VPParams",
    "formulation",
    "formulation_class",
    "from_params",
]

FORMULATIONS: dict[str, type[Formulation]] = {cls.name: cls for cls in (VE, VP, EDM, IDDPM)}


def formulation_class(name: str) -> type[Formulation]:
    """The formulation class called ``name`` ("VE", "VP", "EDM" or "iDDPM", any case)."""
    if isinstance(name, str):
        for key, cls in FORMULATIONS.items():
            if key.lower() == name.lower():
                return cls
    raise ConfigError(f"type = {name!r}: unknown formulation; allowed: {', '.join(FORMULATIONS)}")


def formulation(name: str, **params: Any) -> Formulation:
    """Build a formulation by name with its own parameters, validated.

    Raises :class:`ValueError` (a :class:`~diffscale.validation.ConfigError`) with a one-line message for
    an unknown name, an unknown parameter or a value out of range.
    """
    return formulation_class(name)(**params)


def from_params(params: FormulationParams) -> Formulation:
    """Build a formulation from an already validated parameter model (e.g. a config's ``diffusion:``)."""
    return formulation_class(params.type)(params)
