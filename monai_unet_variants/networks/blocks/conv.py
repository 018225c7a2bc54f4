"""The plain U-Net unit: a stack of convolution + normalisation + activation layers."""

from __future__ import annotations

from torch import nn

from .layers import LayerArg, conv_unit, register_block

__all__ = ["ConvStack"]


@register_block("conv")
class ConvStack(nn.Sequential):
    """``num_convs`` x (conv -> norm -> dropout -> act); the first convolution carries the stride.

    This is the "double convolution" of Ronneberger et al. 2015 (``num_convs=2``).

    Args:
        spatial_dims: 2 or 3.
        in_channels: input channels.
        out_channels: output channels of every convolution.
        stride: stride of the first convolution (1 keeps the size). Defaults to 1.
        kernel_size: convolution kernel size. Defaults to 3.
        act: activation name or ``(name, args)``. Defaults to ``"relu"``.
        norm: normalisation name or ``(name, args)``. Defaults to ``"batch"``.
        dropout: dropout probability after each normalisation. Defaults to ``None``.
        bias: convolution bias. Defaults to ``True``.
        is_stem: unused; accepted so that every block has the same signature.
        num_convs: number of convolutions. Defaults to 2.

    Examples::

        >>> block = ConvStack(3, 1, 16)
        >>> block(torch.randn(1, 1, 8, 8, 8)).shape
        torch.Size([1, 16, 8, 8, 8])
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
        num_convs: int = 2,
    ) -> None:
        layers = []
        for i in range(num_convs):
            layers.append(
                conv_unit(
                    spatial_dims,
                    in_channels if i == 0 else out_channels,
                    out_channels,
                    kernel_size=kernel_size,
                    stride=stride if i == 0 else 1,
                    act=act,
                    norm=norm,
                    dropout=dropout,
                    bias=bias,
                )
            )
        super().__init__(*layers)
        self.in_channels = in_channels
        self.out_channels = out_channels
