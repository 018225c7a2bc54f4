"""Deep Residual U-Net (Zhang, Liu, Wang 2018)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Optional

from ..registry import register_network
from ._common import DEFAULT_CHANNELS, PresetMixin, fill_doc
from .blocks.layers import LayerArg
from .composable import ComposableUNet

__all__ = ["ResUNet"]


@register_network("resunet")
@fill_doc
class ResUNet(PresetMixin, ComposableUNet):
    """ResUNet: pre-activation residual units (norm-act-conv) in encoder, bridge and decoder; each
    down-sampling is the stride-2 first convolution of a unit; the decoder up-samples by interpolation.

    {papers}

    The first unit sees the raw input and is not pre-activated (conv-norm-act-conv, paper Fig. 1). Units
    whose width or stride changes use a 1x1 convolution + norm projection shortcut. The head is a 1x1
    convolution returning logits (the paper's sigmoid belongs to the loss).

    Reference (``preset="reference"``: 2D, 3 channels in, 1 out, widths 64/128/256 with a 512 bridge,
    nearest up-sampling): 8,223,809 parameters. The paper reports 7.8 M, which leaves out the projection
    shortcuts that a residual unit needs when its width changes (1x1 conv + BN: 0.42 M here).

    Args:
{common_args}
{option_args}
            Defaults to ``"nontrainable"`` (nearest interpolation, as in the paper).

    Examples::

        >>> net = ResUNet(spatial_dims=2, in_channels=3, out_channels=1, channels=(16, 32, 64, 128))
        >>> net(torch.randn(1, 3, 64, 64)).shape
        torch.Size([1, 1, 64, 64])
        >>> ResUNet(spatial_dims=3)(torch.randn(1, 1, 32, 32, 32)).shape
        torch.Size([1, 2, 32, 32, 32])
    """

    #: the papers this network follows, full citations (read by the bundles' metadata and docs)
    PAPERS = (
        "Zhang, Z., Liu, Q., Wang, Y. Road Extraction by Deep Residual U-Net. IEEE Geoscience and Remote "
        "Sensing Letters 15(5), 2018. https://arxiv.org/abs/1711.10684",
    )
    BUNDLE = {
        "name": "resunet_pancreas",
        "title": "ResUNet",
        "about": (
            "pre-activation residual units in encoder and decoder, down-sampling by strided convolutions, "
            "nearest-neighbour up-sampling, widths 16-32-64-128-256, instance normalisation."
        ),
    }
    PRESETS = {
        "reference": dict(spatial_dims=2, in_channels=3, out_channels=1, channels=(64, 128, 256, 512), strides=(2, 2, 2))
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
        upsample: str = "nontrainable",
        deep_supervision: bool = False,
        deep_supr_num: int = 1,
        checkpointing: bool = False,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("downsample", "conv")
        super().__init__(
            spatial_dims=spatial_dims, in_channels=in_channels, out_channels=out_channels, channels=channels,
            strides=strides, kernel_size=kernel_size, up_kernel_size=up_kernel_size, act=act, norm=norm,
            dropout=dropout, bias=bias, encoder_block="preact_residual", upsample=upsample, deep_supervision=deep_supervision,
            deep_supr_num=deep_supr_num, checkpointing=checkpointing, **kwargs,
        )
