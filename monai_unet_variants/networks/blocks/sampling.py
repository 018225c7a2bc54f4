"""Up-sampling between decoder levels: transposed convolution, interpolation, or interpolation + conv."""

from __future__ import annotations

from monai.networks.blocks import Convolution, UpSample
from torch import nn

from .attention import interp_mode_for
from .layers import LayerArg, conv_unit

__all__ = ["UPSAMPLE_MODES", "make_upsample"]

UPSAMPLE_MODES = ("deconv", "nontrainable", "resize_conv")


def make_upsample(
    spatial_dims: int,
    in_channels: int,
    out_channels: int,
    scale: int,
    mode: str = "deconv",
    kernel_size: int | None = None,
    interp_mode: str = "nearest",
    act: LayerArg = "relu",
    norm: LayerArg = "batch",
    bias: bool = True,
) -> nn.Module:
    """Build one up-sampling step; the returned module has an ``out_channels`` attribute.

    Args:
        spatial_dims: 2 or 3.
        in_channels: channels of the coarse features.
        out_channels: channels after up-sampling (ignored by ``"nontrainable"``, which keeps ``in_channels``).
        scale: up-sampling factor (the level's stride).
        mode: ``"deconv"`` (transposed convolution, always with bias, no norm/act, kernel ``kernel_size`` or ``scale``),
            ``"nontrainable"`` (interpolation only) or ``"resize_conv"`` (interpolation then a
            ``kernel_size`` (default 3) convolution + norm + act, as in LeeJunHyun/Image_Segmentation ``up_conv``).
        kernel_size: see ``mode``.
        interp_mode: ``"nearest"`` or ``"linear"`` (bilinear/trilinear) for the interpolating modes.
        act: activation of ``"resize_conv"``.
        norm: normalisation of ``"resize_conv"``.
        bias: bias of the ``"resize_conv"`` convolution.
    """
    if mode == "deconv":
        k = kernel_size or scale
        if k != scale and k % 2 == 0:
            raise ValueError(f"up_kernel_size must equal the stride ({scale}) or be odd for 'deconv' (got {k}).")
        exact = k == scale  # kernel == stride tiles the output exactly: no padding
        up: nn.Module = Convolution(
            spatial_dims,
            in_channels,
            out_channels,
            strides=scale,
            kernel_size=k,
            bias=True,  # no normalisation follows, so the bias matters (the papers' transposed convs have one)
            conv_only=True,
            is_transposed=True,
            padding=0 if exact else None,
            output_padding=0 if exact else None,
        )
        return up
    interp = interp_mode_for(interp_mode, spatial_dims)
    resize = UpSample(
        spatial_dims,
        in_channels,
        in_channels,
        scale_factor=scale,
        mode="nontrainable",
        pre_conv=None,
        interp_mode=interp,
        align_corners=None if interp == "nearest" else False,
    )
    if mode == "nontrainable":
        resize.out_channels = in_channels
        return resize
    if mode == "resize_conv":
        seq = nn.Sequential(resize, conv_unit(spatial_dims, in_channels, out_channels, kernel_size or 3, 1, act, norm, None, bias))
        seq.out_channels = out_channels
        return seq
    raise ValueError(f"upsample must be one of {UPSAMPLE_MODES} (got {mode!r}).")
