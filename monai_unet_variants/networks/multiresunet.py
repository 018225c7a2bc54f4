"""MultiResUNet (Ibtehaz & Rahman 2020)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Optional

from ..registry import register_network
from ._common import DEFAULT_CHANNELS, PresetMixin, fill_doc
from .blocks.layers import LayerArg
from .composable import ComposableUNet

__all__ = ["MultiResUNet"]


@register_network("multiresunet")
@fill_doc
class MultiResUNet(PresetMixin, ComposableUNet):
    """MultiResUNet: MultiRes blocks instead of double convolutions and ResPaths on the skips.

    {papers}

    A MultiRes block of nominal width ``U`` chains three 3x3 convolutions with ``W/6, W/3, W/2`` filters
    (``W = alpha * U``), concatenates them, adds a 1x1 shortcut and outputs their total (51 for ``U = 32``).
    The skip of level ``i`` passes a ResPath of ``depth - 1 - i`` residual units (4, 3, 2, 1 from the top
    for five levels) with ``U`` filters. Up-sampling is a 2x2 transposed convolution to ``U`` filters.

    Reference (``preset="reference"``: 2D, 3 channels in, 1 out, ``alpha = 1.67``, widths 32..512, no
    convolution bias, shift-only normalisation after convolutions as Keras' ``BatchNormalization(scale=False)``,
    with Keras' defaults ``epsilon=1e-3`` and ``momentum=0.99``, i.e. PyTorch ``eps=1e-3, momentum=0.01``):
    7,238,228 trainable parameters, exactly the Keras original (nibtehaz/MultiResUNet); Keras' "7,262,750
    total" also counts BatchNorm moving statistics. The Keras original is followed where the authors' PyTorch
    port differs (it reuses one BatchNorm twice per ResPath unit and outputs ``num_classes + 1`` channels).
    The head is a 1x1 convolution with bias returning logits: the same parameter count as the original's
    conv + shift-only BN, whose sigmoid belongs to the loss.

    Args:
{common_args}
        alpha: width multiplier ``alpha``. Defaults to 1.67.
        norm_scale: learnable scale in the normalisations after convolutions (``False``: Keras' ``scale=False``).
            Defaults to ``True``.
{option_args}
            Defaults to ``"deconv"``.

    Examples::

        >>> net = MultiResUNet(spatial_dims=2, in_channels=3, out_channels=1, channels=(32, 64, 128))
        >>> net(torch.randn(1, 3, 64, 64)).shape
        torch.Size([1, 1, 64, 64])
        >>> MultiResUNet(spatial_dims=3)(torch.randn(1, 1, 32, 32, 32)).shape
        torch.Size([1, 2, 32, 32, 32])
    """

    #: the papers this network follows, full citations (read by the bundles' metadata and docs)
    PAPERS = (
        "Ibtehaz, N., Rahman, M. S. MultiResUNet: Rethinking the U-Net Architecture for Multimodal Biomedical "
        "Image Segmentation. Neural Networks 121, 2020. https://arxiv.org/abs/1902.04049",
    )
    BUNDLE = {
        "name": "multiresunet_pancreas",
        "title": "MultiResUNet",
        "about": (
            "MultiRes blocks (three chained 3x3x3 convolutions, alpha 1.67) and ResPaths of lengths 4, 3, 2, 1 on "
            "the skips, nominal widths 16-32-64-128-256, instance normalisation."
        ),
    }
    PRESETS = {
        "reference": dict(
            spatial_dims=2, in_channels=3, out_channels=1, channels=(32, 64, 128, 256, 512), bias=False,
            norm_scale=False, norm=("batch", {"eps": 1e-3, "momentum": 0.01}),
        )
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
        alpha: float = 1.67,
        norm_scale: bool = True,
        upsample: str = "deconv",
        deep_supervision: bool = False,
        deep_supr_num: int = 1,
        checkpointing: bool = False,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("skip", "respath")
        kwargs.setdefault("skip_args", dict(norm_scale=norm_scale))
        super().__init__(
            spatial_dims=spatial_dims, in_channels=in_channels, out_channels=out_channels, channels=channels,
            strides=strides, kernel_size=kernel_size, up_kernel_size=up_kernel_size, act=act, norm=norm,
            dropout=dropout, bias=bias, encoder_block="multires", block_args=dict(alpha=alpha, norm_scale=norm_scale),
            upsample=upsample, deep_supervision=deep_supervision, deep_supr_num=deep_supr_num,
            checkpointing=checkpointing, **kwargs,
        )
