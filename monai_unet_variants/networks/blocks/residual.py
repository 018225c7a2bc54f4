"""Pre-activation residual unit (He et al. 2016) as used by ResUNet (Zhang, Liu, Wang 2018)."""

from __future__ import annotations

import torch
from torch import nn

from .layers import LayerArg, conv_unit, norm_act, register_block

__all__ = ["PreActResidualUnit"]


@register_block("preact_residual")
class PreActResidualUnit(nn.Module):
    """(norm -> act -> conv) x 2 plus a shortcut; the first convolution carries the stride.

    The shortcut is the identity when shape is kept, otherwise a 1x1 convolution + normalisation
    (a "projection shortcut"), which the ResUNet paper's parameter count leaves out.

    Args:
        spatial_dims: 2 or 3.
        in_channels: input channels.
        out_channels: output channels.
        stride: stride of the first convolution and of the shortcut. Defaults to 1.
        kernel_size: kernel size. Defaults to 3.
        act: activation. Defaults to ``"relu"``.
        norm: normalisation. Defaults to ``"batch"``.
        dropout: dropout probability after each normalisation. Defaults to ``None``.
        bias: convolution bias. Defaults to ``True``.
        is_stem: the network's first unit: it sees the raw input, so its first convolution is not
            pre-activated (conv -> norm -> act -> conv, as in the ResUNet paper's Fig. 1). Defaults to ``False``.

    Examples::

        >>> unit = PreActResidualUnit(2, 64, 128, stride=2)
        >>> unit(torch.randn(1, 64, 32, 32)).shape
        torch.Size([1, 128, 16, 16])
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
    ) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.pre = nn.Identity() if is_stem else norm_act(spatial_dims, in_channels, act, norm, dropout)
        self.conv1 = conv_unit(spatial_dims, in_channels, out_channels, kernel_size, stride, act, norm, dropout, bias)
        self.conv2 = conv_unit(spatial_dims, out_channels, out_channels, kernel_size, 1, None, None, None, bias)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = conv_unit(spatial_dims, in_channels, out_channels, 1, stride, None, norm, None, bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(self.conv1(self.pre(x))) + self.shortcut(x)
