"""Attention U-Net (Oktay et al. 2018)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Optional

from ..registry import register_network
from ._common import DEFAULT_CHANNELS, REFERENCE_2D, PresetMixin, fill_doc
from .blocks.layers import LayerArg
from .composable import ComposableUNet

__all__ = ["AttentionUNet"]


@register_network("attention_unet")
@fill_doc
class AttentionUNet(PresetMixin, ComposableUNet):
    """Attention U-Net: a U-Net whose skips pass additive attention gates.

    {papers}
    Official code: ozan-oktay/Attention-Gated-Networks.

    Gates (``attention``):

    - ``"grid"`` (default, the paper's): the gating signal is the coarser level's decoder features (for the
      deepest skip, the bottleneck through a 1x1 conv-norm-act), skip features are sub-sampled by a strided
      convolution, the coefficients are computed at the coarse resolution, passed through a sigmoid,
      resampled to the skip's grid and the gated features pass a 1x1 conv + norm; ``attention_gates``
      parallel gates are combined by a 1x1 conv-norm-act. Intermediate width: the skip's (``attention_ratio``
      1.0, as the authors' 3D model).
    - ``"same"``: the gating signal is the up-sampled decoder feature at the skip's resolution
      (LeeJunHyun/Image_Segmentation ``Attention_block`` and MONAI's ``AttentionUnet``); intermediate width
      half the skip's.

    ``forward_with_attention(x)`` returns the output and the coefficient maps (top skip first) for
    visualisation; ``forward`` stays single-tensor for MONAI's inferers.

    Presets:

    - ``"reference"``: LeeJunHyun's ``AttU_Net`` (2D, 3 in, 1 out, widths 64..1024, same-resolution gates on all
      skips, nearest up-sampling + 3x3 conv-BN-ReLU): 34,878,573 parameters.
    - ``"paper"``: the authors' ``unet_CT_multi_att_dsv_3D`` (3D, 1 in, 3 classes, widths 16..256, grid gates on
      the three lower skips, two gates per level, trilinear up-sampling, multi-scale output fusion as deep
      supervision): 6,473,049 parameters; 6,213,878 with ``attention_gates=1``. The paper reports 6.40 M.

    Args:
{common_args}
        attention: ``"grid"`` or ``"same"``. Defaults to ``"grid"``.
        attention_levels: skip levels with gates (0 = top); ``None`` for all. Defaults to ``None``.
        attention_gates: parallel gates per level. Defaults to 1.
        attention_ratio: gate width as a fraction of the skip's; ``None`` for 1.0 (grid) or 0.5 (same).
            Defaults to ``None``.
        head: ``"plain"`` or ``"multiscale"`` (the paper's fusion of per-level outputs). Defaults to ``"plain"``.
{option_args}
            Defaults to ``"deconv"``.

    Examples::

        >>> net = AttentionUNet(spatial_dims=2, in_channels=1, out_channels=2, channels=(16, 32, 64))
        >>> net(torch.randn(1, 1, 64, 64)).shape
        torch.Size([1, 2, 64, 64])
        >>> net3d = AttentionUNet(spatial_dims=3, in_channels=1, out_channels=3)
        >>> y, maps = net3d.forward_with_attention(torch.randn(1, 1, 32, 32, 32))
        >>> y.shape, maps[0].shape
        (torch.Size([1, 3, 32, 32, 32]), torch.Size([1, 1, 32, 32, 32]))
    """

    #: the papers this network follows, full citations (read by the bundles' metadata and docs)
    PAPERS = (
        "Oktay, O. et al. Attention U-Net: Learning Where to Look for the Pancreas. MIDL 2018. "
        "https://arxiv.org/abs/1804.03999",
    )
    BUNDLE = {
        "name": "attunet_pancreas",
        "title": "Attention U-Net",
        "about": (
            "a U-Net whose skips pass the paper's grid attention gates (gating signal from the coarser level, "
            "coefficients computed at the coarse resolution), widths 16-32-64-128-256 as the paper's 3D model, "
            "instance normalisation, a 1x1 head."
        ),
        # channels-last on a GPU: H200, 2026-11-26, compiled, AMP: training step 27.9 -> 19.9 ms, sliding window
        # 0.62 -> 0.56 s; the U-Net's and BasicUNet's steps were 5-8% slower with it, so only this bundle sets it
        "settings": {"channels_last": True},
    }
    PRESETS = {
        "reference": dict(REFERENCE_2D, attention="same", upsample="resize_conv"),
        "paper": dict(
            spatial_dims=3,
            in_channels=1,
            out_channels=3,
            channels=(16, 32, 64, 128, 256),
            attention="grid",
            attention_levels=(1, 2, 3),
            attention_gates=2,
            upsample="nontrainable",
            interp_mode="linear",
            head="multiscale",
        ),
    }

    def __init__(
        self,
        spatial_dims: int = 3,
        in_channels: int = 1,
        out_channels: int = 2,
        channels: Sequence[int] = DEFAULT_CHANNELS,
        strides: Optional[Sequence[int]] = None,
        kernel_size: int = 3,
        up_kernel_size: Optional[int] = None,
        act: LayerArg = "relu",
        norm: LayerArg = "batch",
        dropout: Optional[float] = None,
        bias: bool = True,
        attention: str = "grid",
        attention_levels: Optional[Sequence[int]] = None,
        attention_gates: int = 1,
        attention_ratio: Optional[float] = None,
        head: str = "plain",
        upsample: str = "deconv",
        deep_supervision: bool = False,
        deep_supr_num: int = 1,
        checkpointing: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            spatial_dims=spatial_dims, in_channels=in_channels, out_channels=out_channels, channels=channels,
            strides=strides, kernel_size=kernel_size, up_kernel_size=up_kernel_size, act=act, norm=norm,
            dropout=dropout, bias=bias, encoder_block="conv", upsample=upsample, attention=attention,
            attention_levels=attention_levels, attention_gates=attention_gates, attention_ratio=attention_ratio,
            head=head, deep_supervision=deep_supervision, deep_supr_num=deep_supr_num, checkpointing=checkpointing,
            **kwargs,
        )
