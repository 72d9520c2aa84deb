"""The input side shared by the U-Nets: checks shapes, concatenates conditioning fields, drops labels
during training, pads the grid to the U-Net's multiple and crops the output back.

Call convention of every grid network F (the denoiser calls ``F(c_in x, c_noise, **cond)``)::

    F(x, c_noise, *, cond_fields=None, class_labels=None, augment_labels=None) -> (B, out_channels, H, W)

* ``x`` (B, C, H, W): the noisy state, already multiplied by c_in;
* ``c_noise`` (B,) (or one value for the whole batch): the noise conditioning, never sigma itself;
* ``cond_fields`` (B, cond_channels, H, W): spatial conditioning, unscaled, concatenated to x as channels;
* ``class_labels`` (B, label_dim): one-hot classes or continuous scalars (season, hour); all-zero labels
  mean "unconditional", which is what label dropout and classifier-free guidance use;
* ``augment_labels`` (B, augment_dim): augmentation parameters (None: no augmentation).
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch
from torch import nn

from diffscale.networks.padding import GridPadding, PadMode

__all__ = ["GridUNet", "count_parameters", "drop_labels"]


def count_parameters(module: nn.Module) -> int:
    """Number of trainable scalars of ``module`` (works on the meta device)."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def drop_labels(labels: torch.Tensor, probability: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Labels with each sample's row zeroed with the given probability (label dropout, Ho & Salimans 2022)."""
    if probability <= 0:
        return labels
    keep = torch.rand(labels.shape[0], 1, device=labels.device, generator=generator) >= probability
    return labels * keep.to(labels.dtype)


def _shape(tensor: torch.Tensor | None) -> tuple[int, ...] | None:
    return None if tensor is None else tuple(tensor.shape)


class GridUNet(nn.Module, ABC):
    """Base of the grid U-Nets: the call convention, input checks, conditioning and grid padding.

    Subclasses build ``embedding(c_noise, class_labels, augment_labels) -> emb`` and
    ``backbone(h, emb) -> out`` on the padded grid of ``in_channels + cond_channels`` input channels.

    Args:
        in_channels: channels C of the noisy state x.
        out_channels: channels of F's output; None gives C, or 2 C with ``learned_variance``.
        cond_channels: channels of the spatial conditioning fields concatenated to x (0: none).
        label_dim: width of the class-label vector (0: unconditional).
        augment_dim: width of the augmentation-label vector (0: none).
        label_dropout: probability of zeroing a sample's labels in training mode (for guidance).
        learned_variance: emit 2 C channels, F's mean part then the iDDPM variance interpolation v.
        levels: number of resolutions of the U-Net; grids are padded to multiples of 2^(levels-1).
        pad_mode: how grids are padded ("reflect", "replicate", "zeros"), "none" refuses other sizes.
        periodic_longitude: the W axis is periodic (global grids): convolutions pad circularly along it, so
            F(roll(x, r)) = roll(F(x), r) for rolls r along W by multiples of 2^(levels-1) (W itself must be
            such a multiple); other rolls move the stride-2 sampling grids and commute only approximately.
    """

    def __init__(
        self,
        *,
        in_channels: int,
        out_channels: int | None,
        cond_channels: int,
        label_dim: int,
        augment_dim: int,
        label_dropout: float,
        learned_variance: bool,
        levels: int,
        pad_mode: PadMode,
        periodic_longitude: bool,
    ) -> None:
        super().__init__()
        for name, value in (("in_channels", in_channels), ("levels", levels)):
            if value < 1:
                raise ValueError(f"{name} = {value}: must be >= 1")
        for name, value in (("cond_channels", cond_channels), ("label_dim", label_dim), ("augment_dim", augment_dim)):
            if value < 0:
                raise ValueError(f"{name} = {value}: must be >= 0")
        if not 0.0 <= label_dropout < 1.0:
            raise ValueError(f"label_dropout = {label_dropout}: must be in [0, 1)")
        if out_channels is None:
            out_channels = 2 * in_channels if learned_variance else in_channels
        elif learned_variance and out_channels != 2 * in_channels:
            raise ValueError(
                f"learned_variance needs out_channels = 2 * in_channels = {2 * in_channels}, got {out_channels}"
            )
        self.in_channels, self.out_channels, self.cond_channels = in_channels, out_channels, cond_channels
        self.label_dim, self.augment_dim, self.label_dropout = label_dim, augment_dim, label_dropout
        self.learned_variance, self.levels, self.periodic_longitude = learned_variance, levels, periodic_longitude
        self.grid = GridPadding(2 ** (levels - 1), pad_mode, periodic_longitude)

    @abstractmethod
    def embedding(
        self, c_noise: torch.Tensor, class_labels: torch.Tensor | None, augment_labels: torch.Tensor | None
    ) -> torch.Tensor:
        """The conditioning vector emb (B, emb_channels) from c_noise and the labels."""

    @abstractmethod
    def backbone(self, h: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        """The U-Net on the padded input h (B, in_channels + cond_channels, H', W')."""

    def _check(
        self,
        x: torch.Tensor,
        c_noise: torch.Tensor,
        cond_fields: torch.Tensor | None,
        class_labels: torch.Tensor | None,
        augment_labels: torch.Tensor | None,
    ) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"x: expected shape (batch, {self.in_channels}, height, width), got {_shape(x)}")
        batch, _, height, width = x.shape
        if c_noise.numel() not in (1, batch):
            raise ValueError(f"c_noise: expected shape ({batch},), got {_shape(c_noise)}")
        if self.cond_channels:
            expected = (batch, self.cond_channels, height, width)
            if cond_fields is None or tuple(cond_fields.shape) != expected:
                raise ValueError(f"cond_fields: expected shape {expected}, got {_shape(cond_fields)}")
        elif cond_fields is not None:
            raise ValueError(f"cond_fields of shape {_shape(cond_fields)} given, but cond_channels=0")
        for name, labels, width_ in (
            ("class_labels", class_labels, self.label_dim),
            ("augment_labels", augment_labels, self.augment_dim),
        ):
            if labels is None:
                if name == "class_labels" and self.label_dim:
                    raise ValueError(
                        f"class_labels: expected shape ({batch}, {self.label_dim}), got None "
                        "(pass zeros for the unconditional model)"
                    )
                continue
            if not width_:
                raise ValueError(f"{name} of shape {_shape(labels)} given to a network built with {name[:-7]}_dim=0")
            if tuple(labels.shape) != (batch, width_):
                raise ValueError(f"{name}: expected shape ({batch}, {width_}), got {_shape(labels)}")
        self.grid.check(height, width)
        return c_noise.reshape(-1).expand(batch)

    def forward(
        self,
        x: torch.Tensor,
        c_noise: torch.Tensor,
        *,
        cond_fields: torch.Tensor | None = None,
        class_labels: torch.Tensor | None = None,
        augment_labels: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """F(x, c_noise; cond) of shape (B, out_channels, H, W) for any H x W the padding accepts."""
        c_noise = self._check(x, c_noise, cond_fields, class_labels, augment_labels)
        if class_labels is not None and self.training:
            class_labels = drop_labels(class_labels, self.label_dropout)
        h = x if cond_fields is None else torch.cat([x, cond_fields.to(x.dtype)], dim=1)
        h, padding = self.grid.pad(h)
        out = self.backbone(h, self.embedding(c_noise, class_labels, augment_labels))
        return self.grid.crop(out, padding)

    def extra_repr(self) -> str:
        return (
            f"in_channels={self.in_channels}, out_channels={self.out_channels}, cond_channels={self.cond_channels}, "
            f"label_dim={self.label_dim}, augment_dim={self.augment_dim}, levels={self.levels}, "
            f"pad_mode={self.grid.mode!r}, periodic_longitude={self.periodic_longitude}"
        )
