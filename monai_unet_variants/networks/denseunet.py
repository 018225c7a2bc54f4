"""Fully Dense U-Net, FD-UNet (Guan et al. 2019)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Optional

from ..registry import register_network
from ._common import DEFAULT_CHANNELS, PresetMixin, fill_doc
from .blocks.layers import LayerArg
from .composable import ComposableUNet

__all__ = ["DenseUNet"]


@register_network("denseunet")
@fill_doc
class DenseUNet(PresetMixin, ComposableUNet):
    """FD-UNet: a dense block at every level of encoder and decoder, each preceded by a compression
    convolution, max pooling down, 2x2 transposed convolutions up.

    {papers}

    Each level of width ``f`` compresses its input to ``f/2`` channels (a 3x3 convolution on the raw input
    at the top level, 1x1 elsewhere: in the encoder on the pooled features, in the decoder on the
    concatenation of skip and up-sampled features) and grows it back to ``f`` with a four-layer dense block
    of growth rate ``k = f/8``; each dense layer is a 1x1 bottleneck to ``4k`` channels then a 3x3
    convolution to ``k``, all conv-BN-ReLU. ``global_residual=True`` adds the input to the output (the
    paper's artifact-removal setting; it needs ``in_channels == out_channels``).

    Reference (``preset="reference"``: 2D, 1 channel in and out, widths 64..1024, ``k = f/8``, global
    residual): 9,834,657 parameters (encoder 5.43 M, transposed convolutions 2.79 M, decoder 1.62 M). An
    implementation read off the paper's figures is reported at about 9.49 M; we have not seen it, so the
    difference is not traced layer by layer. The choices that set our count are the text's: the 4k-wide
    1x1 bottleneck in every dense layer (without it: 5.08 M; 2k wide: 6.66 M) and transposed convolutions
    from ``2f`` to ``f`` channels. The paper applies the 1x1 compression before pooling; applying it after
    pooling (same parameters) costs 4x (2D) / 8x (3D) fewer FLOPs.

    Args:
{common_args}
        dense_layers: layers per dense block. Defaults to 4.
        growth_rate: a fixed growth rate ``k`` for every level, or ``None`` for ``f / (2 * dense_layers)``.
            Defaults to ``None``.
        bottleneck: width of each dense layer's 1x1 bottleneck in multiples of ``k``. Defaults to 4.
        global_residual: add the input to the output. Defaults to ``False``.
{option_args}
            Defaults to ``"deconv"``.

    Examples::

        >>> net = DenseUNet(spatial_dims=2, in_channels=1, out_channels=1, channels=(16, 32, 64), global_residual=True)
        >>> net(torch.randn(1, 1, 64, 64)).shape
        torch.Size([1, 1, 64, 64])
        >>> DenseUNet(spatial_dims=3, channels=(16, 32, 64))(torch.randn(1, 1, 32, 32, 32)).shape
        torch.Size([1, 2, 32, 32, 32])
    """

    #: the papers this network follows, full citations (read by the bundles' metadata and docs)
    PAPERS = (
        "Guan, S., Khan, A. A., Sikdar, S., Chitnis, P. V. Fully Dense UNet for 2-D Sparse Photoacoustic "
        "Tomography Artifact Removal. IEEE JBHI 24(2), 2020. https://arxiv.org/abs/1808.10848",
    )
    BUNDLE = {
        "name": "denseunet_pancreas",
        "title": "Fully Dense U-Net (FD-UNet)",
        "about": (
            "a four-layer dense block (growth rate f/8, 1x1 bottlenecks) at every level of encoder and decoder, "
            "widths 16-32-64-128-256 (multiples of 8, as the growth rate needs), no global residual (segmentation)."
        ),
    }
    PRESETS = {
        "reference": dict(
            spatial_dims=2, in_channels=1, out_channels=1, channels=(64, 128, 256, 512, 1024), global_residual=True
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
        dense_layers: int = 4,
        growth_rate: Optional[int] = None,
        bottleneck: int = 4,
        global_residual: bool = False,
        upsample: str = "deconv",
        deep_supervision: bool = False,
        deep_supr_num: int = 1,
        checkpointing: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            spatial_dims=spatial_dims, in_channels=in_channels, out_channels=out_channels, channels=channels,
            strides=strides, kernel_size=kernel_size, up_kernel_size=up_kernel_size, act=act, norm=norm,
            dropout=dropout, bias=bias, encoder_block="fully_dense",
            block_args=dict(num_layers=dense_layers, growth_rate=growth_rate, bottleneck=bottleneck),
            upsample=upsample, global_residual=global_residual, deep_supervision=deep_supervision,
            deep_supr_num=deep_supr_num, checkpointing=checkpointing, **kwargs,
        )
