"""Recurrent convolution and the recurrent residual unit of R2U-Net (Alom et al. 2018)."""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from .layers import LayerArg, conv_unit, convolution, norm_act, register_block

__all__ = ["RecurrentConv", "RecurrentResidualUnit"]


class RecurrentConv(nn.Module):
    """A recurrent convolutional layer with one convolution shared across time steps.

    With recurrence ``t`` the layer applies its convolution ``t + 1`` times::

        h_0 = A_0(conv(x));   h_k = A_k(conv(x + h_{k-1})),  k = 1..t;   output h_t

    where ``A_k`` is normalisation -> dropout -> activation. This is exactly the count of the
    reference implementation (LeeJunHyun/Image_Segmentation ``Recurrent_block``: 3 convolutions for
    ``t=2``). The convolution weights are always shared over the steps, as in the paper.

    Args:
        spatial_dims: 2 or 3.
        channels: input and output channels.
        recurrence: ``t``, the number of recurrent steps after the feed-forward one. Defaults to 2.
        kernel_size: kernel size. Defaults to 3.
        act: activation. Defaults to ``"relu"``.
        norm: normalisation. Defaults to ``"batch"``.
        dropout: dropout probability. Defaults to ``None``.
        bias: convolution bias. Defaults to ``True``.
        shared_norm: reuse one normalisation at every step (the reference implementation). Batch norm's
            running statistics then average over inputs of different distributions (``x`` and
            ``x + h``), so eval-mode outputs drift from train-mode ones; ``False`` (default) gives each
            step its own normalisation while the convolution stays shared.

    Examples::

        >>> layer = RecurrentConv(2, 16, recurrence=2)
        >>> layer(torch.randn(1, 16, 8, 8)).shape
        torch.Size([1, 16, 8, 8])
    """

    def __init__(
        self,
        spatial_dims: int,
        channels: int,
        recurrence: int = 2,
        kernel_size: int = 3,
        act: LayerArg = "relu",
        norm: LayerArg = "batch",
        dropout: float | None = None,
        bias: bool = True,
        shared_norm: bool = False,
    ) -> None:
        super().__init__()
        if recurrence < 0:
            raise ValueError(f"recurrence t must be >= 0 (got {recurrence}); t=2 is the paper's setting.")
        self.recurrence = recurrence
        self.conv = convolution(spatial_dims, channels, channels, kernel_size=kernel_size, bias=bias, conv_only=True)
        if shared_norm:
            shared = norm_act(spatial_dims, channels, act, norm, dropout)
            steps = [shared] * (recurrence + 1)
        else:
            steps = [norm_act(spatial_dims, channels, act, norm, dropout) for _ in range(recurrence + 1)]
        self.steps = nn.ModuleList(steps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h: Optional[torch.Tensor] = None
        for step in self.steps:
            h = step(self.conv(x if h is None else x + h))
        assert h is not None  # recurrence >= 0 gives at least one step
        return h


@register_block("recurrent_residual")
class RecurrentResidualUnit(nn.Module):
    """RRCNN unit: a 1x1 convolution to ``out_channels``, then ``num_layers`` recurrent convolutions
    with a residual connection around them (R2U-Net, Fig. 4(d)).

    Args:
        spatial_dims: 2 or 3.
        in_channels: input channels.
        out_channels: output channels.
        stride: stride of the 1x1 input convolution. Defaults to 1.
        kernel_size: kernel size of the recurrent convolutions. Defaults to 3.
        act: activation. Defaults to ``"relu"``.
        norm: normalisation. Defaults to ``"batch"``.
        dropout: dropout probability. Defaults to ``None``.
        bias: convolution bias. Defaults to ``True``.
        is_stem: unused; accepted so that every block has the same signature.
        recurrence: ``t`` of each recurrent convolution (``t + 1`` applications). Defaults to 2.
        shared_norm: see ``RecurrentConv``. Defaults to ``False``.
        num_layers: recurrent convolutions in the unit. Defaults to 2 (the paper's).

    Examples::

        >>> unit = RecurrentResidualUnit(3, 1, 16, recurrence=2)
        >>> unit(torch.randn(1, 1, 8, 8, 8)).shape
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
        recurrence: int = 2,
        shared_norm: bool = False,
        num_layers: int = 2,
    ) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.project = conv_unit(spatial_dims, in_channels, out_channels, 1, stride, None, None, None, True)
        self.body = nn.Sequential(
            *[
                RecurrentConv(spatial_dims, out_channels, recurrence, kernel_size, act, norm, dropout, bias, shared_norm)
                for _ in range(num_layers)
            ]
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.project(x)
        return x + self.body(x)
