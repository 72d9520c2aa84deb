"""Grid handling for U-Nets: circular padding along longitude and padding any grid to a multiple of the
total downsampling factor 2^(levels-1), with the crop that undoes it.

A U-Net with L levels halves the grid L-1 times, so its input height and width must be multiples of
m = 2^(L-1). :class:`GridPadding` pads an H x W grid to H' x W' (the next multiples of m) and crops the
output back to H x W. With ``periodic_longitude`` the x axis (W) is a circle: it is never padded here (a
pad would break the periodicity), so W itself must be a multiple of m.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch.nn import functional

__all__ = ["GridPadding", "PadMode", "circular_pad_longitude"]

PadMode = Literal["reflect", "replicate", "zeros", "none"]
_TORCH_MODES = {"reflect": "reflect", "replicate": "replicate", "zeros": "constant"}


def circular_pad_longitude(x: torch.Tensor, pad: int) -> torch.Tensor:
    """x (..., H, W) padded by ``pad`` columns on each side of the x axis, wrapping around (periodic W)."""
    if pad == 0:
        return x
    return functional.pad(x, (pad, pad, 0, 0), mode="circular")


def _multiples_around(size: int, multiple: int) -> str:
    below = (size // multiple) * multiple
    above = below + multiple
    return f"{below} or {above}" if below >= multiple else f"{above}"


class GridPadding:
    """Pads (B, C, H, W) grids to multiples of ``multiple`` = 2^(levels-1) and crops outputs back.

    Args:
        multiple: m, the total downsampling factor of the U-Net.
        mode: how to fill the added rows and columns ("reflect", "replicate", "zeros"), or "none" to refuse
            grids that are not multiples of m.
        periodic_longitude: the W axis is periodic; it is not padded, so W must be a multiple of m.
    """

    def __init__(self, multiple: int, mode: PadMode = "reflect", periodic_longitude: bool = False) -> None:
        if multiple < 1:
            raise ValueError(f"multiple = {multiple}: must be >= 1")
        if mode not in (*_TORCH_MODES, "none"):
            raise ValueError(f"pad_mode = {mode!r}: must be one of {[*_TORCH_MODES, 'none']}")
        self.multiple, self.mode, self.periodic_longitude = multiple, mode, periodic_longitude

    def check(self, height: int, width: int) -> None:
        """Raise a ValueError that says which sizes work when an H x W grid cannot be used."""
        m = self.multiple
        if height < m or width < m:
            raise ValueError(
                f"grid {height} x {width} is too small for a U-Net that downsamples by {m}: "
                f"height and width must be at least {m}"
            )
        if self.periodic_longitude and width % m:
            raise ValueError(
                f"grid {height} x {width}: with periodic_longitude the width (longitude) is not padded and must be "
                f"a multiple of {m}, e.g. {_multiples_around(width, m)}"
            )
        if self.mode == "none" and (height % m or width % m):
            raise ValueError(
                f"grid {height} x {width} with pad_mode='none': height and width must be multiples of {m}, "
                f"e.g. {_multiples_around(height, m)} x {_multiples_around(width, m)}; or choose a pad_mode"
            )

    def padding(self, height: int, width: int) -> tuple[int, int, int, int]:
        """(left, right, top, bottom) rows/columns added to an H x W grid: the two sides differ by at most one."""
        self.check(height, width)
        m = self.multiple
        extra_h, extra_w = -height % m, -width % m
        return (extra_w // 2, extra_w - extra_w // 2, extra_h // 2, extra_h - extra_h // 2)

    def pad(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int, int, int]]:
        """x padded to multiples of m, and the padding to pass to :meth:`crop`."""
        padding = self.padding(x.shape[-2], x.shape[-1])
        if any(padding):
            x = functional.pad(x, padding, mode=_TORCH_MODES[self.mode])
        return x, padding

    @staticmethod
    def crop(x: torch.Tensor, padding: tuple[int, int, int, int]) -> torch.Tensor:
        """Undo :meth:`pad` on an output of the padded grid's size."""
        left, right, top, bottom = padding
        if not any(padding):
            return x
        return x[..., top : x.shape[-2] - bottom, left : x.shape[-1] - right]
