"""Tests of the U-Net building blocks (diffscale.networks.layers) and grid padding (networks.padding)."""

from __future__ import annotations

import math

import pytest
import torch
from torch.nn import functional

from diffscale.networks.layers import (
    Conv2d,
    GroupNorm,
    Init,
    Linear,
    SelfAttention2d,
    UNetBlock,
    attention_heads,
    group_count,
)
from diffscale.networks.padding import GridPadding, circular_pad_longitude


def _periodic_reference(layer: Conv2d, x: torch.Tensor, factor: float) -> torch.Tensor:
    """The layer on a W-periodic x: apply the zero-padded layer to three copies of x side by side and
    keep the middle copy, where no zero padding reaches."""
    width = x.shape[-1]
    tiled = layer(torch.cat([x, x, x], dim=-1))
    out_width = int(width * factor)
    return tiled[..., out_width : 2 * out_width]


@pytest.mark.parametrize("taps", [(1, 1), (1, 3, 3, 1)])
@pytest.mark.parametrize("mode", ["up", "down", "none"])
def test_periodic_conv_equals_circular_convolution(taps: tuple[int, ...], mode: str) -> None:
    kwargs = {"up": mode == "up", "down": mode == "down", "resample_filter": taps}
    periodic = Conv2d(3, 5, kernel=3, periodic=True, **kwargs)
    plain = Conv2d(3, 5, kernel=3, periodic=False, **kwargs)
    plain.load_state_dict(periodic.state_dict())
    x = torch.randn(2, 3, 6, 8)
    factor = {"up": 2.0, "down": 0.5, "none": 1.0}[mode]
    expected = _periodic_reference(plain, x, factor)
    torch.testing.assert_close(periodic(x), expected)
    # The non-periodic layer has the usual output size and zero-padded borders.
    assert plain(x).shape == (2, 5, int(6 * factor), int(8 * factor))


def test_box_filter_resampling_is_average_pool_and_nearest_repeat() -> None:
    x = torch.randn(1, 2, 4, 6)
    down = Conv2d(2, 2, kernel=0, down=True, resample_filter=(1, 1))
    up = Conv2d(2, 2, kernel=0, up=True, resample_filter=(1, 1))
    torch.testing.assert_close(down(x), x.reshape(1, 2, 2, 2, 3, 2).mean(dim=(3, 5)))
    torch.testing.assert_close(up(x), x.repeat_interleave(2, dim=-2).repeat_interleave(2, dim=-1))
    assert not list(down.parameters())


def test_smooth_filter_preserves_constants() -> None:
    """The normalised FIR filter f f^T / (sum f)^2 keeps a constant field constant (away from the border)."""
    x = torch.full((1, 1, 8, 8), 3.0)
    down = Conv2d(1, 1, kernel=0, down=True, resample_filter=(1, 3, 3, 1), periodic=True)
    up = Conv2d(1, 1, kernel=0, up=True, resample_filter=(1, 3, 3, 1), periodic=True)
    torch.testing.assert_close(down(x)[..., 1:-1, :], torch.full((1, 1, 2, 4), 3.0))
    torch.testing.assert_close(up(x)[..., 2:-2, :], torch.full((1, 1, 12, 16), 3.0))


def test_conv_rejects_bad_options() -> None:
    with pytest.raises(ValueError, match="in_channels == out_channels"):
        Conv2d(2, 3, kernel=0, down=True)
    with pytest.raises(ValueError, match="odd"):
        Conv2d(2, 3, kernel=2)
    with pytest.raises(ValueError, match="both"):
        Conv2d(2, 2, kernel=3, up=True, down=True)


def test_init_modes_scale_weights() -> None:
    torch.manual_seed(0)
    layer = Linear(400, 600, init=Init("xavier_uniform"))
    bound = math.sqrt(6 / 1000)
    assert layer.weight.abs().max() <= bound
    assert float(layer.weight.detach().std()) == pytest.approx(bound / math.sqrt(3), rel=0.05)
    assert torch.count_nonzero(layer.bias) == 0
    zero = Conv2d(4, 4, kernel=3, init=Init(weight=0.0))
    assert torch.count_nonzero(zero.weight) == 0


@pytest.mark.parametrize(("channels", "groups"), [(128, 32), (8, 2), (14, 2), (3, 1), (576, 32)])
def test_group_count_divides_channels(channels: int, groups: int) -> None:
    assert group_count(channels) == groups
    norm = GroupNorm(channels)
    x = torch.randn(2, channels, 3, 3)
    torch.testing.assert_close(norm(x), functional.group_norm(x, groups, eps=1e-5))


def test_attention_matches_explicit_softmax() -> None:
    torch.manual_seed(1)
    attention = SelfAttention2d(8, num_heads=2, eps=1e-5, periodic=False, init=Init(), init_zero=Init())
    x = torch.randn(2, 8, 3, 5)
    qkv = attention.qkv(attention.norm(x)).reshape(2, 3, 2, 4, 15)
    q, k, v = qkv.unbind(1)  # (B, heads, d, N)
    weights = torch.softmax(torch.einsum("bhdq,bhdk->bhqk", q, k) / math.sqrt(4), dim=-1)
    a = torch.einsum("bhqk,bhdk->bhdq", weights, v).reshape(2, 8, 3, 5)
    torch.testing.assert_close(attention(x), attention.proj(a))
    with pytest.raises(ValueError, match="heads"):
        SelfAttention2d(6, num_heads=4, eps=1e-5, periodic=False, init=Init(), init_zero=Init())


@pytest.mark.parametrize("adaptive_scale", [True, False])
@pytest.mark.parametrize(("up", "down", "size"), [(False, False, 8), (True, False, 16), (False, True, 4)])
def test_unet_block_shapes(adaptive_scale: bool, up: bool, down: bool, size: int) -> None:
    block = UNetBlock(8, 12, 16, up=up, down=down, attention=True, channels_per_head=4, adaptive_scale=adaptive_scale)
    assert block.attention is not None and block.attention.num_heads == 3
    out = block(torch.randn(2, 8, 8, 8), torch.randn(2, 16))
    assert out.shape == (2, 12, size, size)


def test_grid_padding_round_trip_and_messages() -> None:
    grid = GridPadding(8, "reflect")
    x = torch.randn(1, 2, 33, 49)
    padded, padding = grid.pad(x)
    assert padded.shape == (1, 2, 40, 56)
    assert padding == (3, 4, 3, 4)
    torch.testing.assert_close(grid.crop(padded, padding), x)
    with pytest.raises(ValueError, match=r"grid 5 x 40 is too small .* at least 8"):
        grid.check(5, 40)
    with pytest.raises(ValueError, match=r"multiples of 8, e\.g\. 32 or 40 x 48 or 56"):
        GridPadding(8, "none").check(33, 49)
    with pytest.raises(ValueError, match=r"width \(longitude\) .* multiple of 8, e\.g\. 48 or 56"):
        GridPadding(8, "zeros", periodic_longitude=True).check(33, 49)
    periodic = GridPadding(8, "zeros", periodic_longitude=True)
    assert periodic.padding(33, 48) == (0, 0, 3, 4)
    with pytest.raises(ValueError, match="pad_mode"):
        GridPadding(8, "wrap")  # type: ignore[arg-type]


def test_circular_pad_longitude_wraps_columns() -> None:
    x = torch.arange(12.0).reshape(1, 1, 2, 6)
    padded = circular_pad_longitude(x, 2)
    torch.testing.assert_close(padded[..., :2], x[..., -2:])
    torch.testing.assert_close(padded[..., -2:], x[..., :2])
    assert circular_pad_longitude(x, 0) is x


@pytest.mark.parametrize(("channels", "per_head", "heads"), [(384, 64, 6), (64, 10, 4), (8, 64, 1), (576, 64, 9)])
def test_attention_heads_divide_the_channels(channels: int, per_head: int, heads: int) -> None:
    assert attention_heads(channels, per_head) == heads


def test_block_compiles_without_graph_breaks() -> None:
    """No custom autograd or data-dependent Python: torch.compile captures a whole block (fullgraph)."""
    block = UNetBlock(
        8, 8, 16, down=True, attention=True, channels_per_head=4, resample_filter=(1, 3, 3, 1), periodic=True
    )
    compiled = torch.compile(block, backend="eager", fullgraph=True)
    x, emb = torch.randn(2, 8, 8, 8), torch.randn(2, 16)
    torch.testing.assert_close(compiled(x, emb), block(x, emb))
