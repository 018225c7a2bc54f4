"""Output heads: a 1x1 convolution with optional deep-supervision heads, or the paper's multi-scale fusion."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .attention import interp_mode_for
from .layers import convolution

__all__ = ["OutputHead", "MultiScaleFusionHead", "HEADS", "conv1x1"]

HEADS = ("plain", "multiscale")


def conv1x1(spatial_dims: int, in_channels: int, out_channels: int) -> nn.Module:
    return convolution(spatial_dims, in_channels, out_channels, kernel_size=1, bias=True, conv_only=True)


class OutputHead(nn.Module):
    """A 1x1 convolution on the top decoder level plus ``deep_supr_num`` 1x1 heads on the next levels.

    ``forward(feats, deep)`` takes the decoder outputs ordered from the top (full resolution) down and
    returns ``[main]`` or, with ``deep=True``, ``[main, ds_1, ..., ds_n]`` where ``ds_k`` is the head of
    level ``k`` interpolated to the main output's size (as MONAI's ``DynUNet`` does).

    Args:
        spatial_dims: 2 or 3.
        in_channels: channels of each decoder level, top first.
        out_channels: classes.
        deep_supr_num: deep-supervision heads. Defaults to 0.
        interp_mode: interpolation of the deep-supervision outputs. Defaults to ``"linear"``.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: Sequence[int],
        out_channels: int,
        deep_supr_num: int = 0,
        interp_mode: str = "linear",
    ) -> None:
        super().__init__()
        self.head = conv1x1(spatial_dims, in_channels[0], out_channels)
        self.deep_heads = nn.ModuleList([conv1x1(spatial_dims, in_channels[k], out_channels) for k in range(1, deep_supr_num + 1)])
        self.interp_mode = interp_mode_for(interp_mode, spatial_dims)

    def forward(self, feats: list[torch.Tensor], deep: bool) -> list[torch.Tensor]:
        out = self.head(feats[0])
        outs = [out]
        if deep:
            size = list(out.shape[2:])
            for k, head in enumerate(self.deep_heads):
                outs.append(F.interpolate(head(feats[k + 1]), size=size, mode=self.interp_mode, align_corners=False))
        return outs


class MultiScaleFusionHead(nn.Module):
    """The 3D Attention U-Net's output (ozan-oktay/Attention-Gated-Networks ``unet_CT_multi_att_dsv_3D``):
    a 1x1 head on every decoder level, each interpolated to full size, concatenated and fused by a 1x1
    convolution. The per-level outputs double as deep-supervision outputs (no extra parameters).

    Args:
        spatial_dims: 2 or 3.
        in_channels: channels of each decoder level, top first.
        out_channels: classes.
        deep_supr_num: how many per-level outputs (from level 1 down) ``forward(..., deep=True)`` appends.
        interp_mode: interpolation of the per-level outputs. Defaults to ``"linear"``.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: Sequence[int],
        out_channels: int,
        deep_supr_num: int = 0,
        interp_mode: str = "linear",
    ) -> None:
        super().__init__()
        self.heads = nn.ModuleList([conv1x1(spatial_dims, c, out_channels) for c in in_channels])
        self.fuse = conv1x1(spatial_dims, out_channels * len(in_channels), out_channels)
        self.deep_supr_num = deep_supr_num
        self.interp_mode = interp_mode_for(interp_mode, spatial_dims)

    def forward(self, feats: list[torch.Tensor], deep: bool) -> list[torch.Tensor]:
        size = list(feats[0].shape[2:])
        levels: list[torch.Tensor] = []
        for k, head in enumerate(self.heads):
            y = head(feats[k])
            if k > 0:
                y = F.interpolate(y, size=size, mode=self.interp_mode, align_corners=False)
            levels.append(y)
        outs = [self.fuse(torch.cat(levels, dim=1))]
        if deep:
            outs.extend(levels[1 : self.deep_supr_num + 1])
        return outs
