"""Networks F(x, c_noise, **cond): they see c_noise, never sigma or the formulation.

* :class:`MLP` for vector data;
* grid U-Nets (:class:`GridUNet`): :class:`SongUNet` (DDPM++, NCSN++), :class:`DhariwalUNet` (ADM) and the
  magnitude-preserving :class:`EDM2UNet` (EDM2, layers in :mod:`diffscale.networks.mp_layers`), with the named
  presets of :data:`PRESETS` (:class:`DDPMppParams`, :class:`NCSNppParams`, :class:`ADMParams`,
  :class:`EDM2Params`) and :func:`build_network`;
* iDDPM learned variance: :func:`split_learned_variance`, :class:`MeanOutput`.
"""

from diffscale.networks.dhariwal_unet import DhariwalUNet
from diffscale.networks.edm2_unet import EDM2UNet
from diffscale.networks.embeddings import FourierEmbedding, PositionalEmbedding
from diffscale.networks.learned_variance import MeanOutput, split_learned_variance
from diffscale.networks.mlp import MLP
from diffscale.networks.mp_layers import renormalize_weights
from diffscale.networks.presets import (
    PRESETS,
    ADMParams,
    DDPMppParams,
    EDM2Params,
    NCSNppParams,
    NetworkParams,
    build_network,
    describe_network,
    network_from_params,
)
from diffscale.networks.song_unet import SongUNet
from diffscale.networks.unet_base import GridUNet, count_parameters

__all__ = [
    "MLP",
    "PRESETS",
    "ADMParams",
    "DDPMppParams",
    "DhariwalUNet",
    "EDM2Params",
    "EDM2UNet",
    "FourierEmbedding",
    "GridUNet",
    "MeanOutput",
    "NCSNppParams",
    "NetworkParams",
    "PositionalEmbedding",
    "SongUNet",
    "build_network",
    "count_parameters",
    "describe_network",
    "network_from_params",
    "renormalize_weights",
    "split_learned_variance",
]
