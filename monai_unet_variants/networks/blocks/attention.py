"""Additive attention gates (Oktay et al. 2018, "Attention U-Net")."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from monai.networks.layers.utils import get_act_layer
from torch import nn

from .layers import LayerArg, conv_unit, convolution

__all__ = ["AdditiveAttentionGate", "ATTENTION_MODES"]

ATTENTION_MODES = ("grid", "same")


def interp_mode_for(mode: str, spatial_dims: int) -> str:
    """``"linear"`` -> ``"bilinear"``/``"trilinear"``; other modes unchanged."""
    if mode == "linear":
        return "bilinear" if spatial_dims == 2 else "trilinear"
    return mode


class AdditiveAttentionGate(nn.Module):
    """Additive attention gate: ``alpha = sigmoid(psi(act(theta(x) + phi(g))))``, output ``x * alpha``.

    Two forms:

    - ``mode="grid"`` (the paper's grid attention, ozan-oktay/Attention-Gated-Networks
      ``GridAttentionBlockND``, "concatenation" mode): ``g`` comes from the coarser level; ``theta`` is a
      strided ``subsample`` x ``subsample`` convolution without bias that brings ``x`` to ``g``'s grid,
      ``phi`` and ``psi`` are 1x1 convolutions with bias, the coefficients are computed at the coarse
      resolution, resampled to ``x`` and the gated features pass an output 1x1 convolution + norm.
    - ``mode="same"`` (LeeJunHyun/Image_Segmentation ``Attention_block``, MONAI ``AttentionUnet``): ``g``
      has ``x``'s resolution; ``theta``, ``phi`` and ``psi`` are 1x1 convolutions each followed by the
      normalisation, with no output convolution.

    Args:
        spatial_dims: 2 or 3.
        skip_channels: channels of ``x``.
        gating_channels: channels of ``g``.
        inter_channels: channels of the intermediate space.
        mode: ``"grid"`` or ``"same"``. Defaults to ``"grid"``.
        subsample: ``theta``'s kernel and stride in grid mode (the level's stride). Defaults to 2.
        act: activation of the additive term. Defaults to ``"relu"``.
        norm: normalisation. Defaults to ``"batch"``.
        bias: bias of the 1x1 convolutions. Defaults to ``True``.
        interp_mode: resampling of ``phi(g)`` and of the coefficients. Defaults to ``"linear"``.

    Returns (``forward``): the gated features and the coefficients ``(B, 1, *x.shape[2:])``.

    Examples::

        >>> gate = AdditiveAttentionGate(3, 32, 64, 32, mode="grid")
        >>> y, a = gate(torch.randn(1, 32, 16, 16, 16), torch.randn(1, 64, 8, 8, 8))
        >>> y.shape, a.shape
        (torch.Size([1, 32, 16, 16, 16]), torch.Size([1, 1, 16, 16, 16]))
    """

    def __init__(
        self,
        spatial_dims: int,
        skip_channels: int,
        gating_channels: int,
        inter_channels: int,
        mode: str = "grid",
        subsample: int = 2,
        act: LayerArg = "relu",
        norm: LayerArg = "batch",
        bias: bool = True,
        interp_mode: str = "linear",
    ) -> None:
        super().__init__()
        if mode not in ATTENTION_MODES:
            raise ValueError(f"attention mode must be one of {ATTENTION_MODES} (got {mode!r}).")
        self.mode = mode
        self.interp_mode = interp_mode_for(interp_mode, spatial_dims)
        self.align_corners = None if self.interp_mode in ("nearest", "nearest-exact", "area") else False
        self.act = get_act_layer(act) if act is not None else nn.ReLU()
        self.out: nn.Module = nn.Identity()
        if mode == "grid":
            self.theta = convolution(
                spatial_dims, skip_channels, inter_channels, strides=subsample, kernel_size=subsample, bias=False, conv_only=True, padding=0
            )
            self.phi = convolution(spatial_dims, gating_channels, inter_channels, kernel_size=1, bias=bias, conv_only=True)
            self.psi = convolution(spatial_dims, inter_channels, 1, kernel_size=1, bias=bias, conv_only=True)
            self.out = conv_unit(spatial_dims, skip_channels, skip_channels, 1, 1, None, norm, None, bias)
        else:
            self.theta = conv_unit(spatial_dims, skip_channels, inter_channels, 1, 1, None, norm, None, bias)
            self.phi = conv_unit(spatial_dims, gating_channels, inter_channels, 1, 1, None, norm, None, bias)
            self.psi = conv_unit(spatial_dims, inter_channels, 1, 1, 1, None, norm, None, bias)

    def _resize(self, x: torch.Tensor, size: list[int]) -> torch.Tensor:
        if list(x.shape[2:]) == size:
            return x
        return F.interpolate(x, size=size, mode=self.interp_mode, align_corners=self.align_corners)

    def forward(self, x: torch.Tensor, g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        theta_x = self.theta(x)
        phi_g = self._resize(self.phi(g), list(theta_x.shape[2:]))
        alpha = torch.sigmoid(self.psi(self.act(theta_x + phi_g)))
        alpha = self._resize(alpha, list(x.shape[2:]))
        return self.out(x * alpha), alpha
