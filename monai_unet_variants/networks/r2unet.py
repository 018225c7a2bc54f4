"""R2U-Net and Attention R2U-Net (Alom et al. 2018)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Optional

from ..registry import register_network
from ._common import DEFAULT_CHANNELS, REFERENCE_2D, PresetMixin, fill_doc
from .blocks.layers import LayerArg
from .attention_unet import AttentionUNet
from .composable import ComposableUNet

__all__ = ["R2UNet", "AttentionR2UNet"]


@register_network("r2unet")
@fill_doc
class R2UNet(PresetMixin, ComposableUNet):
    """R2U-Net: recurrent residual convolutional units (RRCNN) in encoder and decoder.

    {papers}

    Each unit is a 1x1 convolution to the level's width followed by two recurrent convolutional layers and a
    residual connection around them. **Recurrence** ``t`` means: a recurrent layer applies its one
    convolution ``t + 1`` times (``h_0 = f(conv(x))``, then ``h_k = f(conv(x + h_{k-1}))`` for ``k = 1..t``),
    so a unit runs ``2 (t + 1)`` convolutions with the weights of two. This is the count of the reference
    implementation (LeeJunHyun/Image_Segmentation ``Recurrent_block``: 3 applications for ``t = 2``).

    Difference from the reference: by default every time step has its own normalisation while the
    convolution stays shared (``shared_norm=False``). The reference reuses one BatchNorm at every step, so its
    running statistics average the distributions of ``x`` and of ``x + h`` and eval-mode predictions drift
    from train-mode ones (a reported cause of R2U-Nets that "predict nothing" in eval mode).
    ``preset="reference"`` keeps the shared normalisation: 39,091,393 parameters (2D, 3 in, 1 out, widths
    64..1024, ``t = 2``, nearest up-sampling + 3x3 conv-BN-ReLU).

    Args:
{common_args}
        recurrence: ``t``. Defaults to 2.
        shared_norm: one normalisation for all time steps (the reference's). Defaults to ``False``.
{option_args}
            Defaults to ``"resize_conv"`` (nearest interpolation + conv-norm-act, as in the reference).

    Examples::

        >>> net = R2UNet(spatial_dims=2, in_channels=3, out_channels=1, channels=(16, 32, 64))
        >>> net(torch.randn(1, 3, 64, 64)).shape
        torch.Size([1, 1, 64, 64])
        >>> R2UNet(spatial_dims=3, channels=(8, 16, 32))(torch.randn(1, 1, 32, 32, 32)).shape
        torch.Size([1, 2, 32, 32, 32])
    """

    #: the papers this network follows, full citations (read by the bundles' metadata and docs)
    PAPERS = (
        "Alom, M. Z., Hasan, M., Yakopcic, C., Taha, T. M., Asari, V. K. Recurrent Residual Convolutional "
        "Neural Network based on U-Net (R2U-Net) for Medical Image Segmentation. arXiv 2018. "
        "https://arxiv.org/abs/1802.06955",
    )
    BUNDLE = {
        "name": "r2unet_pancreas",
        "title": "R2U-Net",
        "about": (
            "recurrent residual units (t = 2: three applications of one shared convolution per recurrent layer, a "
            "normalisation per step), widths 16-32-64-128-256, instance normalisation. Its activations take about "
            "twice the memory of the U-Net's: add `--network_def#checkpointing true` if a GPU runs short."
        ),
        "args": {"recurrence": 2},
    }
    PRESETS = {"reference": dict(REFERENCE_2D, recurrence=2, shared_norm=True)}

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
        recurrence: int = 2,
        shared_norm: bool = False,
        upsample: str = "resize_conv",
        deep_supervision: bool = False,
        deep_supr_num: int = 1,
        checkpointing: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            spatial_dims=spatial_dims, in_channels=in_channels, out_channels=out_channels, channels=channels,
            strides=strides, kernel_size=kernel_size, up_kernel_size=up_kernel_size, act=act, norm=norm,
            dropout=dropout, bias=bias, encoder_block="recurrent_residual",
            block_args=dict(recurrence=recurrence, shared_norm=shared_norm), upsample=upsample,
            deep_supervision=deep_supervision, deep_supr_num=deep_supr_num, checkpointing=checkpointing, **kwargs,
        )


@register_network("attention_r2unet")
@fill_doc
class AttentionR2UNet(R2UNet):
    """Attention R2U-Net: R2U-Net's recurrent residual units with additive attention gates on the skips.

    {papers}
    The combination is LeeJunHyun/Image_Segmentation ``R2AttU_Net``.

    Everything of ``R2UNet`` applies (recurrence ``t`` = ``t + 1`` applications of a shared convolution,
    per-step normalisation by default). The gates follow ``AttentionUNet``: ``attention="grid"`` (default,
    the Attention U-Net paper's gate, gating signal from the coarser level) or ``"same"`` (the reference's).
    ``preset="reference"`` (same-resolution gates, shared normalisation, 2D, 3 in, 1 out, widths 64..1024):
    39,442,925 parameters.

    Args:
{common_args}
        recurrence: ``t``. Defaults to 2.
        shared_norm: one normalisation for all time steps (the reference's). Defaults to ``False``.
{option_args}
            Defaults to ``"resize_conv"``. ``attention`` (``"grid"``/``"same"``), ``attention_levels``,
            ``attention_gates`` and ``attention_ratio`` are accepted as keyword arguments (see ``AttentionUNet``).

    Examples::

        >>> net = AttentionR2UNet(spatial_dims=2, in_channels=3, out_channels=1, channels=(16, 32, 64))
        >>> net(torch.randn(1, 3, 64, 64)).shape
        torch.Size([1, 1, 64, 64])
        >>> AttentionR2UNet(spatial_dims=3, channels=(8, 16, 32))(torch.randn(1, 1, 32, 32, 32)).shape
        torch.Size([1, 2, 32, 32, 32])
    """

    PAPERS = (*R2UNet.PAPERS, *AttentionUNet.PAPERS)
    BUNDLE = {
        "name": "attention_r2unet_pancreas",
        "title": "Attention R2U-Net",
        "about": (
            "R2U-Net's recurrent residual units with the Attention U-Net's grid attention gates on every skip, "
            "widths 16-32-64-128-256, instance normalisation. Its activations take about twice the memory of the "
            "U-Net's: add `--network_def#checkpointing true` if a GPU runs short."
        ),
        "args": {"recurrence": 2},
    }
    PRESETS = {"reference": dict(REFERENCE_2D, recurrence=2, shared_norm=True, attention="same")}

    def __init__(self, *args: Any, attention: Optional[str] = "grid", **kwargs: Any) -> None:
        super().__init__(*args, attention=attention, **kwargs)
