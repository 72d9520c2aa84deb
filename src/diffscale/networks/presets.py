"""Named network presets (``ddpmpp``, ``ncsnpp``, ``adm``, ``edm2``) as validated parameter models, and
:func:`build_network`, which builds one and logs a one-line summary with its parameter count.

The defaults are the published configurations (Karras et al. 2022, Appendix F): DDPM++ and NCSN++ for
CIFAR-10 at 32 x 32 (Song et al. 2021), ADM for ImageNet-64 (Dhariwal & Nichol 2021); ``edm2`` is the
magnitude-preserving U-Net of Karras et al. 2024 (configuration G), with that paper's balances. Every option can be
overridden, e.g. ``build_network("ddpmpp", in_channels=1, cond_channels=4, model_channels=64)``.
"""

from __future__ import annotations

import logging
from typing import Annotated, Any, Literal

from pydantic import Field

from diffscale.networks.dhariwal_unet import DhariwalUNet
from diffscale.networks.edm2_unet import EDM2UNet
from diffscale.networks.song_unet import SongUNet
from diffscale.networks.unet_base import GridUNet, count_parameters
from diffscale.validation import StrictModel, validate

__all__ = [
    "PRESETS",
    "ADMParams",
    "DDPMppParams",
    "EDM2Params",
    "NCSNppParams",
    "NetworkParams",
    "build_network",
    "describe_network",
    "network_from_params",
]

logger = logging.getLogger(__name__)

PadModeField = Literal["reflect", "replicate", "zeros", "none"]


class _GridNetworkParams(StrictModel):
    """Options shared by every grid U-Net: data channels, conditioning and grid handling."""

    in_channels: int = Field(1, ge=1, description="channels C of the data (the noisy state x)")
    out_channels: int | None = Field(None, ge=1, description="output channels; null: C, or 2C with learned_variance")
    cond_channels: int = Field(0, ge=0, description="channels of spatial conditioning fields concatenated to x")
    label_dim: int = Field(0, ge=0, description="width of class-label vectors (one-hot or scalars); 0: none")
    augment_dim: int = Field(0, ge=0, description="width of augmentation-label vectors; 0: none")
    label_dropout: float = Field(0.0, ge=0.0, lt=1.0, description="probability of dropping labels in training (CFG)")
    learned_variance: bool = Field(False, description="emit 2C channels: F then the iDDPM variance interpolation")
    img_resolution: int = Field(32, ge=1, description="reference resolution that places the attention layers")
    model_channels: int = Field(128, ge=1, description="base channel count m")
    channel_mult: tuple[int, ...] = Field((2, 2, 2), min_length=1, description="channels per level: m * mult")
    channel_mult_emb: int = Field(4, ge=1, description="embedding width: m * channel_mult_emb")
    num_blocks: int = Field(4, ge=1, description="residual blocks per encoder level (decoder: one more)")
    attn_resolutions: tuple[int, ...] = Field((16,), description="resolutions (of img_resolution) with attention")
    dropout: float = Field(0.10, ge=0.0, lt=1.0, description="dropout probability inside the residual blocks")
    pad_mode: PadModeField = Field("reflect", description="padding of grids to multiples of 2^(levels-1); none: refuse")
    periodic_longitude: bool = Field(False, description="periodic x axis: convolutions pad circularly along W")

    def build(self, **overrides: Any) -> GridUNet:
        """The network, with ``overrides`` (e.g. ``in_channels`` and ``cond_channels`` from the data) replacing
        fields; the result is validated again and the one-line summary logged."""
        params = validate(type(self), {**self.model_dump(), **overrides}, prefix="model") if overrides else self
        return network_from_params(params)  # type: ignore[arg-type]


class DDPMppParams(_GridNetworkParams):
    """DDPM++ (Song et al. 2021; EDM Appendix F.2): positional embedding, standard encoder, filter [1, 1]."""

    arch: Literal["ddpmpp"] = Field("ddpmpp", description="network architecture")
    embedding_type: Literal["positional", "fourier"] = Field("positional", description="embedding of c_noise")
    channel_mult_noise: int = Field(1, ge=1, description="c_noise embedding width: m * channel_mult_noise")
    encoder_type: Literal["standard", "skip", "residual"] = Field("standard", description="encoder variant")
    decoder_type: Literal["standard", "skip"] = Field("standard", description="decoder variant")
    resample_filter: tuple[float, ...] = Field((1, 1), min_length=1, description="1-D taps of the resampling filter")
    fourier_scale: float = Field(16.0, gt=0.0, description="std of the Fourier embedding's frequencies")


class NCSNppParams(DDPMppParams):
    """NCSN++ (Song et al. 2021; EDM Appendix F.2): Fourier embedding, residual encoder, filter [1, 3, 3, 1]."""

    arch: Literal["ncsnpp"] = Field("ncsnpp", description="network architecture")  # type: ignore[assignment]
    embedding_type: Literal["positional", "fourier"] = Field("fourier", description="embedding of c_noise")
    channel_mult_noise: int = Field(2, ge=1, description="c_noise embedding width: m * channel_mult_noise")
    encoder_type: Literal["standard", "skip", "residual"] = Field("residual", description="encoder variant")
    resample_filter: tuple[float, ...] = Field(
        (1, 3, 3, 1), min_length=1, description="1-D taps of the resampling filter"
    )


class ADMParams(_GridNetworkParams):
    """ADM (Dhariwal & Nichol 2021; EDM Appendix F.3): scale-shift blocks, 64 channels per attention head."""

    arch: Literal["adm"] = Field("adm", description="network architecture")
    img_resolution: int = Field(64, ge=1, description="reference resolution that places the attention layers")
    model_channels: int = Field(192, ge=1, description="base channel count m")
    channel_mult: tuple[int, ...] = Field((1, 2, 3, 4), min_length=1, description="channels per level: m * mult")
    num_blocks: int = Field(3, ge=1, description="residual blocks per encoder level (decoder: one more)")
    attn_resolutions: tuple[int, ...] = Field((32, 16, 8), description="resolutions (of img_resolution) with attention")
    channels_per_head: int = Field(64, ge=1, description="channels per attention head")


class EDM2Params(_GridNetworkParams):
    """EDM2 (Karras et al. 2024, configuration G): magnitude-preserving layers, forced weight normalisation, no
    biases, pixel normalisation, MP-Fourier embedding and a learned output gain; no dropout by default."""

    arch: Literal["edm2"] = Field("edm2", description="network architecture")
    channel_mult: tuple[int, ...] = Field((1, 2, 2), min_length=1, description="channels per level: m * mult")
    num_blocks: int = Field(3, ge=1, description="residual blocks per encoder level (decoder: one more)")
    attn_resolutions: tuple[int, ...] = Field((16, 8), description="resolutions (of img_resolution) with attention")
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="dropout probability inside the residual blocks")
    channel_mult_noise: int = Field(1, ge=1, description="Fourier features of c_noise: m * channel_mult_noise")
    channels_per_head: int = Field(64, ge=1, description="channels per attention head")
    label_balance: float = Field(0.5, ge=0.0, le=1.0, description="t of mp_sum(noise embedding, label embedding)")
    concat_balance: float = Field(0.5, ge=0.0, le=1.0, description="t of mp_cat(decoder input, encoder skip)")
    res_balance: float = Field(0.3, ge=0.0, le=1.0, description="t of mp_sum(block input, residual branch)")
    attn_balance: float = Field(0.3, ge=0.0, le=1.0, description="t of mp_sum(block output, attention)")
    clip_act: float | None = Field(256.0, gt=0.0, description="clip activations to +-clip_act after blocks (null: off)")
    fourier_bandwidth: float = Field(1.0, gt=0.0, description="std of the MP-Fourier features' frequencies")


NetworkParams = Annotated[DDPMppParams | NCSNppParams | ADMParams | EDM2Params, Field(discriminator="arch")]
PRESETS: dict[str, type[_GridNetworkParams]] = {
    "ddpmpp": DDPMppParams,
    "ncsnpp": NCSNppParams,
    "adm": ADMParams,
    "edm2": EDM2Params,
}


def describe_network(network: GridUNet, name: str | None = None) -> str:
    """One line: architecture, parameter count, channels, conditioning and levels."""
    return (
        f"{name or type(network).__name__}: {count_parameters(network) / 1e6:.2f} M parameters, "
        f"{network.in_channels} -> {network.out_channels} channels, cond_channels={network.cond_channels}, "
        f"label_dim={network.label_dim}, augment_dim={network.augment_dim}, {network.levels} levels "
        f"(grids padded to multiples of {network.grid.multiple}, pad_mode={network.grid.mode!r}, "
        f"periodic_longitude={network.periodic_longitude})"
    )


def network_from_params(params: DDPMppParams | NCSNppParams | ADMParams | EDM2Params) -> GridUNet:
    """Build the network described by a validated parameter model and log its one-line summary."""
    options: dict[str, Any] = params.model_dump(exclude={"arch"})
    network: GridUNet
    if isinstance(params, ADMParams):
        network = DhariwalUNet(**options)
    elif isinstance(params, EDM2Params):
        network = EDM2UNet(**options)
    else:
        network = SongUNet(**options)
    logger.info(describe_network(network, params.arch))
    return network


def build_network(arch: str, **options: Any) -> GridUNet:
    """Build the preset ``arch`` ("ddpmpp", "ncsnpp", "adm" or "edm2", any case) with ``options`` overriding its
    defaults; raises :class:`~diffscale.validation.ConfigError` naming a bad key and what is allowed."""
    name = str(arch).lower()
    if name not in PRESETS:
        raise ValueError(f"arch = {arch!r}: must be one of {list(PRESETS)}")
    return network_from_params(validate(PRESETS[name], {"arch": name, **options}, prefix="model"))
