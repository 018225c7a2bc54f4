"""Dense blocks of the Fully Dense U-Net (FD-UNet, Guan et al. 2019)."""

from __future__ import annotations

import torch
from torch import nn

from .layers import LayerArg, conv_unit, register_block

__all__ = ["FullyDenseBlock", "FullyDenseUnit"]


class FullyDenseBlock(nn.Module):
    """``num_layers`` densely connected layers, each a 1x1 bottleneck convolution to
    ``bottleneck * growth_rate`` channels then a ``kernel_size`` convolution to ``growth_rate``
    channels; every layer's output is concatenated to its input.

    Output channels: ``in_channels + num_layers * growth_rate``.

    Args:
        spatial_dims: 2 or 3.
        in_channels: input channels.
        growth_rate: ``k``, channels added by each layer.
        num_layers: layers in the block. Defaults to 4.
        bottleneck: width of each 1x1 bottleneck in multiples of ``k``. Defaults to 4.
        kernel_size: kernel size of the feature convolution. Defaults to 3.
        act: activation. Defaults to ``"relu"``.
        norm: normalisation. Defaults to ``"batch"``.
        dropout: dropout probability. Defaults to ``None``.
        bias: convolution bias. Defaults to ``True``.

    Examples::

        >>> block = FullyDenseBlock(2, 32, growth_rate=8)
        >>> block(torch.randn(1, 32, 16, 16)).shape
        torch.Size([1, 64, 16, 16])
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        growth_rate: int,
        num_layers: int = 4,
        bottleneck: int = 4,
        kernel_size: int = 3,
        act: LayerArg = "relu",
        norm: LayerArg = "batch",
        dropout: float | None = None,
        bias: bool = True,
    ) -> None:
        super().__init__()
        layers = []
        for i in range(num_layers):
            width = in_channels + i * growth_rate
            layers.append(
                nn.Sequential(
                    conv_unit(spatial_dims, width, bottleneck * growth_rate, 1, 1, act, norm, dropout, bias),
                    conv_unit(spatial_dims, bottleneck * growth_rate, growth_rate, kernel_size, 1, act, norm, dropout, bias),
                )
            )
        self.layers = nn.ModuleList(layers)
        self.in_channels = in_channels
        self.out_channels = in_channels + num_layers * growth_rate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = torch.cat([x, layer(x)], dim=1)
        return x


@register_block("fully_dense")
class FullyDenseUnit(nn.Module):
    """One FD-UNet level: a compression convolution to ``out_channels - num_layers * k`` channels
    followed by a ``FullyDenseBlock`` that grows it back to ``out_channels``.

    With the default ``growth_rate=None`` the growth rate is ``k = out_channels / (2 * num_layers)``
    (``f/8`` for four layers, the paper's choice), so the dense block receives ``f/2`` channels and
    returns ``f``. The compression is a 1x1 convolution, except in the network's stem
    (``is_stem=True``) where it is a ``kernel_size`` convolution on the raw input.

    Args:
        spatial_dims: 2 or 3.
        in_channels: input channels.
        out_channels: output channels ``f``.
        stride: stride of the compression convolution. Defaults to 1.
        kernel_size: kernel size. Defaults to 3.
        act: activation. Defaults to ``"relu"``.
        norm: normalisation. Defaults to ``"batch"``.
        dropout: dropout probability. Defaults to ``None``.
        bias: convolution bias. Defaults to ``True``.
        is_stem: use a ``kernel_size`` compression on the raw input. Defaults to ``False``.
        num_layers: dense layers. Defaults to 4.
        growth_rate: fixed ``k`` for every level, or ``None`` for ``f / (2 * num_layers)``. Defaults to ``None``.
        bottleneck: bottleneck width in multiples of ``k``. Defaults to 4.

    Examples::

        >>> unit = FullyDenseUnit(3, 1, 32, is_stem=True)
        >>> unit(torch.randn(1, 1, 8, 8, 8)).shape
        torch.Size([1, 32, 8, 8, 8])
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
        num_layers: int = 4,
        growth_rate: int | None = None,
        bottleneck: int = 4,
    ) -> None:
        super().__init__()
        k = growth_rate if growth_rate is not None else out_channels // (2 * num_layers)
        base = out_channels - num_layers * k
        if k < 1 or base < 1:
            raise ValueError(
                f"FullyDenseUnit cannot reach {out_channels} channels with {num_layers} layers of growth rate {k}: "
                f"use widths of at least {2 * num_layers} (multiples of {2 * num_layers} keep k = f/{2 * num_layers}) "
                "or a smaller growth_rate."
            )
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.compress = conv_unit(
            spatial_dims, in_channels, base, kernel_size if is_stem else 1, stride, act, norm, dropout, bias
        )
        self.dense = FullyDenseBlock(spatial_dims, base, k, num_layers, bottleneck, kernel_size, act, norm, dropout, bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dense(self.compress(x))
