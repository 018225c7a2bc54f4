"""Plain U-Net baseline (Ronneberger et al. 2015)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Optional

from ..registry import register_network
from ._common import DEFAULT_CHANNELS, REFERENCE_2D, PresetMixin, fill_doc
from .blocks.layers import LayerArg
from .composable import ComposableUNet

__all__ = ["PlainUNet"]


@register_network("unet")
@fill_doc
class PlainUNet(PresetMixin, ComposableUNet):
    """U-Net: two conv-norm-act layers per level, max pooling, up-sampling, concatenated skips.

    {papers}

    Named ``PlainUNet`` so that it never collides with ``monai.networks.nets.UNet`` in a bundle.

    Differences from the paper: "same" padding (the output has the input's size, no cropping of skips),
    batch normalisation (the paper predates it), and a 2x2 transposed convolution with bias for "up-conv".
    The ``reference`` preset reproduces LeeJunHyun/Image_Segmentation ``U_Net`` (nearest up-sampling + 3x3
    conv-BN-ReLU): 34,527,041 parameters.

    Args:
{common_args}
{option_args}

    Examples::

        >>> net = PlainUNet(spatial_dims=2, in_channels=1, out_channels=2, channels=(16, 32, 64), strides=(2, 2))
        >>> net(torch.randn(1, 1, 64, 64)).shape
        torch.Size([1, 2, 64, 64])
        >>> net3d = PlainUNet(spatial_dims=3, in_channels=1, out_channels=3)
        >>> net3d(torch.randn(1, 1, 32, 32, 32)).shape
        torch.Size([1, 3, 32, 32, 32])
    """

    #: the papers this network follows, full citations (read by the bundles' metadata and docs)
    PAPERS = (
        "Ronneberger, O., Fischer, P., Brox, T. U-Net: Convolutional Networks for Biomedical Image "
        "Segmentation. MICCAI 2015. https://arxiv.org/abs/1505.04597",
    )
    BUNDLE = {
        "name": "unet_pancreas",
        "title": "U-Net",
        "about": (
            "the baseline: two conv-norm-ReLU layers per level, max pooling, 2x2 transposed convolutions, "
            "concatenated skips, widths 16-32-64-128-256, instance normalisation."
        ),
    }
    PRESETS = {"reference": dict(REFERENCE_2D, upsample="resize_conv")}

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
        upsample: str = "deconv",
        deep_supervision: bool = False,
        deep_supr_num: int = 1,
        checkpointing: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            spatial_dims=spatial_dims, in_channels=in_channels, out_channels=out_channels, channels=channels,
            strides=strides, kernel_size=kernel_size, up_kernel_size=up_kernel_size, act=act, norm=norm,
            dropout=dropout, bias=bias, encoder_block="conv", upsample=upsample, deep_supervision=deep_supervision,
            deep_supr_num=deep_supr_num, checkpointing=checkpointing, **kwargs,
        )
