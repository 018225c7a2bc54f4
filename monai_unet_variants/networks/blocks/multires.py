"""MultiRes block and ResPath of MultiResUNet (Ibtehaz & Rahman 2020)."""

from __future__ import annotations

import torch
from monai.networks.layers.utils import get_act_layer
from torch import nn

from .layers import LayerArg, conv_unit, make_norm, register_block

__all__ = ["MultiResBlock", "ResPath", "multires_widths"]


def multires_widths(width: int, alpha: float = 1.67) -> tuple[int, int, int]:
    """Filters of the three chained convolutions: ``int(W/6), int(W/3), int(W/2)`` with ``W = alpha * width``,
    computed with the Keras original's factors (0.167, 0.333, 0.5) so that counts match it exactly."""
    w = alpha * width
    return int(w * 0.167), int(w * 0.333), int(w * 0.5)


@register_block("multires")
class MultiResBlock(nn.Module):
    """Three chained ``kernel_size`` convolutions (approximating 3x3, 5x5 and 7x7 receptive fields) with
    ``W/6, W/3, W/2`` filters, concatenated, normalised and added to a 1x1 shortcut; then act and norm.

    Output channels are the sum of the three widths (``multires_widths``), e.g. 51 for width 32.

    Args:
        spatial_dims: 2 or 3.
        in_channels: input channels.
        out_channels: the block's nominal width ``U`` (actual output channels: see above).
        stride: stride of the first convolution and of the shortcut. Defaults to 1.
        kernel_size: kernel size of the chained convolutions. Defaults to 3.
        act: activation. Defaults to ``"relu"``.
        norm: normalisation. Defaults to ``"batch"``.
        dropout: dropout probability. Defaults to ``None``.
        bias: bias of the convolutions (the Keras original has none). Defaults to ``True``.
        is_stem: unused; accepted so that every block has the same signature.
        alpha: width multiplier ``alpha``. Defaults to 1.67.
        norm_scale: give the normalisations after convolutions a learnable scale; ``False`` reproduces
            Keras' ``BatchNormalization(scale=False)`` of the original. Defaults to ``True``.

    Examples::

        >>> block = MultiResBlock(2, 3, 32)
        >>> block(torch.randn(1, 3, 16, 16)).shape
        torch.Size([1, 51, 16, 16])
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        stride: int = 1,
        kernel_size: int = 3,
        act: LayerArg = "relu",
        norm: LayerArg = "batch",
        dropout: float | None = None,
        bias: bool = True,
        is_stem: bool = False,
        alpha: float = 1.67,
        norm_scale: bool = True,
    ) -> None:
        super().__init__()
        widths = multires_widths(out_channels, alpha)
        if min(widths) < 1:
            raise ValueError(f"MultiResBlock width {out_channels} with alpha={alpha} gives empty convolutions {widths}: use width >= 4.")
        self.in_channels = in_channels
        self.out_channels = sum(widths)
        self.shortcut = conv_unit(spatial_dims, in_channels, self.out_channels, 1, stride, None, norm, None, bias, norm_scale)
        convs = []
        prev = in_channels
        for i, w in enumerate(widths):
            convs.append(conv_unit(spatial_dims, prev, w, kernel_size, stride if i == 0 else 1, act, norm, dropout, bias, norm_scale))
            prev = w
        self.convs = nn.ModuleList(convs)
        self.norm_in = make_norm(spatial_dims, self.out_channels, norm)
        self.act = get_act_layer(act) if act is not None else nn.Identity()
        self.norm_out = make_norm(spatial_dims, self.out_channels, norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = []
        h = x
        for conv in self.convs:
            h = conv(h)
            feats.append(h)
        y = self.norm_in(torch.cat(feats, dim=1))
        return self.norm_out(self.act(y + self.shortcut(x)))


class ResPath(nn.Module):
    """A chain of ``length`` residual units (``kernel_size`` conv + 1x1 shortcut, add, act, norm) that
    brings encoder features closer to the decoder's before concatenation.

    Args:
        spatial_dims: 2 or 3.
        in_channels: input channels.
        out_channels: channels of every unit.
        length: number of units (MultiResUNet: 4, 3, 2, 1 from the top skip down).
        kernel_size: kernel size. Defaults to 3.
        act: activation. Defaults to ``"relu"``.
        norm: normalisation. Defaults to ``"batch"``.
        bias: convolution bias. Defaults to ``True``.
        norm_scale: see ``MultiResBlock``. Defaults to ``True``.

    Examples::

        >>> path = ResPath(2, 51, 32, length=4)
        >>> path(torch.randn(1, 51, 16, 16)).shape
        torch.Size([1, 32, 16, 16])
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        length: int,
        kernel_size: int = 3,
        act: LayerArg = "relu",
        norm: LayerArg = "batch",
        bias: bool = True,
        norm_scale: bool = True,
    ) -> None:
        super().__init__()
        if length < 1:
            raise ValueError(f"ResPath length must be >= 1 (got {length}).")
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.units = nn.Sequential(
            *[
                _ResPathUnit(spatial_dims, in_channels if i == 0 else out_channels, out_channels, kernel_size, act, norm, bias, norm_scale)
                for i in range(length)
            ]
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.units(x)


class _ResPathUnit(nn.Module):
    """One ResPath unit: act(conv(x) + shortcut(x)) followed by a normalisation."""

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        act: LayerArg,
        norm: LayerArg,
        bias: bool,
        norm_scale: bool,
    ) -> None:
        super().__init__()
        self.conv = conv_unit(spatial_dims, in_channels, out_channels, kernel_size, 1, act, norm, None, bias, norm_scale)
        self.shortcut = conv_unit(spatial_dims, in_channels, out_channels, 1, 1, None, norm, None, bias, norm_scale)
        self.act = get_act_layer(act) if act is not None else nn.Identity()
        self.norm = make_norm(spatial_dims, out_channels, norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.act(self.conv(x) + self.shortcut(x)))
