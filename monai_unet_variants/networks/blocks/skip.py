"""Skip paths: what happens to encoder features on their way to the decoder."""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from .attention import AdditiveAttentionGate
from .layers import LayerArg, conv_unit

__all__ = ["SkipPath"]


class SkipPath(nn.Module):
    """Encoder features -> optional transform (e.g. a ``ResPath``) -> optional attention gates.

    With ``num_gates > 1`` several gates run in parallel and a 1x1 conv + norm + act combines their
    outputs (ozan-oktay/Attention-Gated-Networks ``MultiAttentionBlock``); grid-mode gates always end
    in that combination, as in the authors' code, also with one gate.

    ``forward(skip, coarse, up)`` receives the encoder features, the coarser decoder features (grid
    gating signal) and the up-sampled decoder features (same-resolution gating signal) and returns
    the features to concatenate and the attention coefficients (``None`` without gates).

    Args:
        spatial_dims: 2 or 3.
        skip_channels: channels of the encoder features.
        coarse_channels: channels of the coarser decoder features.
        up_channels: channels of the up-sampled decoder features.
        transform: a module applied first (needs an ``out_channels`` attribute), or ``None``.
        attention: ``None``, ``"grid"`` or ``"same"``.
        num_gates: parallel gates. Defaults to 1.
        inter_ratio: intermediate channels of a gate as a fraction of the skip channels. Defaults to 0.5.
        subsample: the level's stride (grid gates' ``theta`` kernel and stride). Defaults to 2.
        project_gating: pass the gating signal through a 1x1 conv + norm + act first (the paper's
            ``UnetGridGatingSignal3`` on the bottleneck). Defaults to ``False``.
        act: activation. Defaults to ``"relu"``.
        norm: normalisation. Defaults to ``"batch"``.
        bias: convolution bias. Defaults to ``True``.
        interp_mode: resampling inside the gates. Defaults to ``"linear"``.
    """

    def __init__(
        self,
        spatial_dims: int,
        skip_channels: int,
        coarse_channels: int,
        up_channels: int,
        transform: Optional[nn.Module] = None,
        attention: Optional[str] = None,
        num_gates: int = 1,
        inter_ratio: float = 0.5,
        subsample: int = 2,
        project_gating: bool = False,
        act: LayerArg = "relu",
        norm: LayerArg = "batch",
        bias: bool = True,
        interp_mode: str = "linear",
    ) -> None:
        super().__init__()
        self.transform = transform if transform is not None else nn.Identity()
        channels = transform.out_channels if transform is not None else skip_channels
        self.out_channels = channels
        self.use_up = attention == "same"
        self.has_gates = attention is not None
        gating_channels = up_channels if self.use_up else coarse_channels
        self.project: nn.Module = nn.Identity()
        if attention is not None and project_gating:
            self.project = conv_unit(spatial_dims, gating_channels, gating_channels, 1, 1, act, norm, None, bias)
        inter = max(1, int(channels * inter_ratio))
        self.gates = nn.ModuleList(
            [
                AdditiveAttentionGate(spatial_dims, channels, gating_channels, inter, attention, subsample, act, norm, bias, interp_mode)
                for _ in range(num_gates if attention is not None else 0)
            ]
        )
        self.combine: nn.Module = nn.Identity()
        if attention == "grid" or (attention is not None and num_gates > 1):
            self.combine = conv_unit(spatial_dims, channels * num_gates, channels, 1, 1, act, norm, None, bias)

    def forward(
        self, skip: torch.Tensor, coarse: torch.Tensor, up: torch.Tensor
    ) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        x = self.transform(skip)
        if not self.has_gates:
            return x, None
        g = self.project(up if self.use_up else coarse)
        gated: list[torch.Tensor] = []
        maps: list[torch.Tensor] = []
        for gate in self.gates:
            y, a = gate(x, g)
            gated.append(y)
            maps.append(a)
        return self.combine(torch.cat(gated, dim=1)), torch.cat(maps, dim=1)
