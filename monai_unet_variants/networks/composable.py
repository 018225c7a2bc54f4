"""The U-Net decoder (``UNetDecoder``: one stage per level) and ``ComposableUNet``, the U-Net whose encoder block,
decoder block, skip path and head are chosen by name.

The seven classic networks of this package are thin compositions of ``ComposableUNet``; users can compose their
own (e.g. a MultiResUNet with attention gates) with JSON-friendly string arguments. UNet++ and UNet 3+ bring
decoders of their own to the same skeleton (``base``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Optional

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..registry import register_network
from .base import BLOCKS, DOWNSAMPLE_MODES, UNetBase, check_unet_args, make_block
from .blocks import ATTENTION_MODES, HEADS, MultiScaleFusionHead, OutputHead, ResPath, SkipPath, make_upsample
from .blocks.layers import LayerArg

__all__ = ["ComposableUNet", "BLOCKS", "DOWNSAMPLE_MODES", "SKIP_TRANSFORMS", "UNetDecoder"]

SKIP_TRANSFORMS = ("plain", "respath")


def _decode_stage(
    up_layer: nn.Module, skip_path: nn.Module, dec: nn.Module, skip: torch.Tensor, h: torch.Tensor
) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """One decoder stage: up-sample ``h``, pass ``skip`` through its path (gated by ``h``), concatenate, decode."""
    up = up_layer(h)
    s, amap = skip_path(skip, h, up)
    return dec(torch.cat([s, up], dim=1)), amap


class UNetDecoder(nn.Module):
    """The U-Net's decoder: one stage per level from the deepest up, each up-sampling the coarser features,
    passing the level's encoder features through its skip path (plain, ResPath, attention gates: ``SkipPath``),
    concatenating ``[skip, up]`` and applying the decoder block.

    ``forward(feats, use_checkpoint=False)``: the decoder outputs, top level first, the bottleneck last (the
    protocol in ``base``); ``forward_with_attention`` also returns the gates' attention maps, top level first. With
    ``use_checkpoint`` each stage (up-sampling, skip path with its gates, concatenation and block) is one checkpoint.
    ``out_channels``: the widths of those outputs. ``ups``, ``skips`` and ``blocks`` are stored deepest stage first,
    the order of the forward pass.

    Args:
        spatial_dims: 2 or 3.
        enc_channels: the encoder's widths, top first.
        channels: each level's width, top first.
        strides: the down-sampling factors between levels.
        block: the decoder block, a key of ``BLOCKS``.
        common: the blocks' shared arguments (``kernel_size``, ``act``, ``norm``, ``dropout``, ``bias``).
        block_args: the block's own arguments.
        upsample, up_kernel_size, interp_mode: of the up-sampling (``make_upsample``).
        skip_transform: ``"plain"`` or ``"respath"``, with ``skip_args`` for the ResPath.
        attention, attention_levels, attention_gates, attention_ratio: the gates (``SkipPath``); ``attention_levels``
            a set of skip levels.
    """

    def __init__(
        self,
        spatial_dims: int,
        enc_channels: Sequence[int],
        channels: Sequence[int],
        strides: Sequence[int],
        block: str,
        common: Mapping[str, Any],
        block_args: Mapping[str, Any],
        upsample: str,
        up_kernel_size: Optional[int],
        interp_mode: str,
        skip_transform: str,
        skip_args: Mapping[str, Any],
        attention: Optional[str],
        attention_levels: set[int],
        attention_gates: int,
        attention_ratio: float,
    ) -> None:
        super().__init__()
        depth = len(channels)
        act, norm, bias, kernel_size = common["act"], common["norm"], common["bias"], common["kernel_size"]
        ups, skips, blocks = [], [], []
        widths = [0] * depth
        widths[-1] = enc_channels[-1]
        for i in reversed(range(depth - 1)):
            coarse = widths[i + 1]
            up = make_upsample(
                spatial_dims, coarse, channels[i], strides[i], upsample, up_kernel_size, interp_mode, act, norm, bias
            )
            transform = None
            if skip_transform == "respath":
                transform = ResPath(
                    spatial_dims, enc_channels[i], channels[i], depth - 1 - i, kernel_size, act, norm, bias, **skip_args
                )
            gated = attention is not None and i in attention_levels
            sp = SkipPath(
                spatial_dims,
                enc_channels[i],
                coarse,
                up.out_channels,
                transform=transform,
                attention=attention if gated else None,
                num_gates=attention_gates,
                inter_ratio=attention_ratio,
                subsample=strides[i],
                project_gating=attention == "grid" and i == depth - 2,
                act=act,
                norm=norm,
                bias=bias,
                interp_mode="linear",
            )
            ups.append(up)
            skips.append(sp)
            c_in = sp.out_channels + up.out_channels
            blocks.append(make_block(block, spatial_dims, c_in, channels[i], 1, False, common, block_args))
            widths[i] = blocks[-1].out_channels
        self.ups = nn.ModuleList(ups)
        self.skips = nn.ModuleList(skips)
        self.blocks = nn.ModuleList(blocks)
        self.out_channels: list[int] = widths

    def forward(self, feats: list[torch.Tensor], use_checkpoint: bool = False) -> list[torch.Tensor]:
        return self.forward_with_attention(feats, use_checkpoint)[0]

    @torch.jit.export
    def forward_with_attention(
        self, feats: list[torch.Tensor], use_checkpoint: bool = False
    ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        h = feats[-1]
        outs: list[torch.Tensor] = [h]
        maps: list[torch.Tensor] = []
        level = len(feats) - 2
        for up_layer, skip_path, dec in zip(self.ups, self.skips, self.blocks):  # noqa: B905 (TorchScript: no strict=)
            if use_checkpoint and not torch.jit.is_scripting():
                h, amap = checkpoint(_decode_stage, up_layer, skip_path, dec, feats[level], h, use_reentrant=False)
            else:  # the same steps as _decode_stage, written out for TorchScript (no modules as arguments)
                up = up_layer(h)
                s, amap = skip_path(feats[level], h, up)
                h = dec(torch.cat([s, up], dim=1))
            if amap is not None:
                maps.insert(0, amap)
            outs.insert(0, h)
            level -= 1
        return outs, maps


@register_network("composable")
class ComposableUNet(UNetBase):
    """A U-Net whose encoder block, decoder block, skip path, up-sampling and head are chosen by name.

    Topology: ``len(channels)`` levels; level ``i > 0`` is reached by down-sampling with ``strides[i-1]``
    (max pooling, or the block's first convolution with ``downsample="conv"``). The decoder up-samples
    the coarser features, passes the level's encoder features through the skip path (plain, ResPath,
    attention gates), concatenates ``[skip, up]`` and applies the decoder block. Its parts (the protocol in
    ``base``): ``encoder`` a ``UNetEncoder``, ``decoder`` a ``UNetDecoder``, ``head`` an ``OutputHead`` or a
    ``MultiScaleFusionHead``.

    Args:
        spatial_dims: 2 or 3. Defaults to 3.
        in_channels: input channels. Defaults to 1.
        out_channels: output channels (classes). Defaults to 2.
        channels: width of every level, top first; its length is the depth. Defaults to ``(16, 32, 64, 128, 256)``.
        strides: down-sampling factor between consecutive levels (``len(channels) - 1`` values). Defaults to 2s.
        kernel_size: kernel size of the blocks. Defaults to 3.
        up_kernel_size: kernel of the up-sampling convolution (``None``: the stride for ``"deconv"``, 3 for
            ``"resize_conv"``). Defaults to ``None``.
        act: activation, a MONAI name or ``(name, args)``. Defaults to ``"relu"``.
        norm: normalisation, a MONAI name or ``(name, args)``. Defaults to ``"batch"``.
        dropout: dropout probability inside the blocks (MONAI Label sets it). Defaults to ``None``.
        bias: convolution bias. Defaults to ``True``.
        encoder_block: a key of ``BLOCKS``. Defaults to ``"conv"``.
        decoder_block: a key of ``BLOCKS``, ``None`` for ``encoder_block``. Defaults to ``None``.
        block_args: extra keyword arguments of the blocks (e.g. ``{"recurrence": 2}``). Defaults to ``None``.
        skip_args: extra keyword arguments of the skip transform (e.g. ``{"norm_scale": False}`` for the ResPath).
            Defaults to ``None``.
        downsample: ``"maxpool"`` or ``"conv"`` (strided first convolution of the block). Defaults to ``"maxpool"``.
        upsample: ``"deconv"``, ``"nontrainable"`` or ``"resize_conv"``. Defaults to ``"deconv"``.
        interp_mode: ``"nearest"`` or ``"linear"`` for interpolating up-sampling. Defaults to ``"nearest"``.
        skip: ``"plain"`` or ``"respath"`` (lengths ``depth-1 .. 1`` from the top, as in MultiResUNet).
            Defaults to ``"plain"``.
        attention: ``None``, ``"grid"`` (coarse gating signal, the paper's) or ``"same"`` (up-sampled
            gating signal, the reference implementation's). Defaults to ``None``.
        attention_levels: skip levels that get gates (0 is the top); ``None`` for all. Defaults to ``None``.
        attention_gates: parallel gates per level. Defaults to 1.
        attention_ratio: a gate's intermediate channels as a fraction of its skip channels; ``None`` for 1.0
            with grid gates (the authors' 3D model) and 0.5 with same-resolution gates (the reference). Defaults to ``None``.
        head: ``"plain"`` (1x1 conv) or ``"multiscale"`` (fusion of 1x1 heads on every level). Defaults to ``"plain"``.
        deep_supervision: in training mode return ``(B, 1 + deep_supr_num, out_channels, *spatial)``, the
            main output followed by lower-level outputs interpolated to full size; eval mode always returns
            the plain tensor. Defaults to ``False``.
        deep_supr_num: deep-supervision outputs, ``1 .. depth - 2``. Defaults to 1.
        global_residual: add the input to the output (needs ``in_channels == out_channels``). Defaults to ``False``.
        checkpointing: keep only every level's output for the backward pass and recompute the rest
            (encoder levels and whole decoder stages, training only) to save memory. Defaults to ``False``.

    Input-size rule: every spatial size must be divisible by ``prod(strides)``; otherwise ``forward`` raises a
    ``ValueError`` naming the multiple and the padded size (``monai.transforms.DivisiblePad`` pads for you).

    Examples::

        >>> net = ComposableUNet(2, 1, 3, channels=(8, 16, 32), strides=(2, 2), encoder_block="multires",
        ...                      skip="respath", attention="grid")
        >>> net(torch.randn(1, 1, 64, 64)).shape
        torch.Size([1, 3, 64, 64])
        >>> net3d = ComposableUNet(3, 1, 2, channels=(8, 16, 32), strides=(2, 2), encoder_block="recurrent_residual")
        >>> net3d(torch.randn(1, 1, 32, 32, 32)).shape
        torch.Size([1, 2, 32, 32, 32])
    """

    def __init__(
        self,
        spatial_dims: int = 3,
        in_channels: int = 1,
        out_channels: int = 2,
        channels: Sequence[int] = (16, 32, 64, 128, 256),
        strides: Optional[Sequence[int]] = None,
        kernel_size: int = 3,
        up_kernel_size: Optional[int] = None,
        act: LayerArg = "relu",
        norm: LayerArg = "batch",
        dropout: Optional[float] = None,
        bias: bool = True,
        encoder_block: str = "conv",
        decoder_block: Optional[str] = None,
        block_args: Optional[Mapping[str, Any]] = None,
        skip_args: Optional[Mapping[str, Any]] = None,
        downsample: str = "maxpool",
        upsample: str = "deconv",
        interp_mode: str = "nearest",
        skip: str = "plain",
        attention: Optional[str] = None,
        attention_levels: Optional[Sequence[int]] = None,
        attention_gates: int = 1,
        attention_ratio: Optional[float] = None,
        head: str = "plain",
        deep_supervision: bool = False,
        deep_supr_num: int = 1,
        global_residual: bool = False,
        checkpointing: bool = False,
    ) -> None:
        super().__init__()
        channels, strides = check_unet_args(
            spatial_dims, in_channels, out_channels, channels, strides, kernel_size, act, norm, dropout, upsample,
            deep_supervision, deep_supr_num, interp_mode=interp_mode,
        )
        depth = len(channels)
        decoder_block = encoder_block if decoder_block is None else decoder_block
        for name in (encoder_block, decoder_block):
            if name not in BLOCKS:
                raise ValueError(f"unknown block {name!r}: choose one of {sorted(BLOCKS)}.")
        for arg, value, allowed in (
            ("downsample", downsample, DOWNSAMPLE_MODES),
            ("skip", skip, SKIP_TRANSFORMS),
            ("head", head, HEADS),
        ):
            if value not in allowed:
                raise ValueError(f"{arg} must be one of {allowed} (got {value!r}).")
        if attention is not None and attention not in ATTENTION_MODES:
            raise ValueError(f"attention must be None or one of {ATTENTION_MODES} (got {attention!r}).")
        levels = set(range(depth - 1)) if attention_levels is None else {int(v) for v in attention_levels}
        if not levels <= set(range(depth - 1)):
            raise ValueError(f"attention_levels must be skip levels in 0..{depth - 2} (got {sorted(levels)}).")
        if attention_gates < 1:
            raise ValueError(f"attention_gates must be >= 1 (got {attention_gates}).")
        if attention_ratio is None:
            attention_ratio = 1.0 if attention == "grid" else 0.5
        if not 0 < attention_ratio <= 4:
            raise ValueError(f"attention_ratio must be in (0, 4] (got {attention_ratio}).")
        if global_residual and in_channels != out_channels:
            raise ValueError(
                f"global_residual adds the input to the output and needs in_channels == out_channels "
                f"(got {in_channels} and {out_channels}); set global_residual=False for segmentation."
            )

        self.deep_supervision = bool(deep_supervision)
        self.global_residual = bool(global_residual)
        common = dict(kernel_size=kernel_size, act=act, norm=norm, dropout=dropout, bias=bias)
        extra = dict(block_args or {})
        enc_out = self._build_encoder(
            spatial_dims, in_channels, out_channels, channels, strides, encoder_block, common, extra, downsample,
            checkpointing,
        )
        self.decoder = UNetDecoder(
            spatial_dims, enc_out, channels, strides, decoder_block, common, extra, upsample, up_kernel_size,
            interp_mode, skip, dict(skip_args or {}), attention, levels, attention_gates, attention_ratio,
        )
        n_deep = deep_supr_num if deep_supervision else 0
        head_cls = MultiScaleFusionHead if head == "multiscale" else OutputHead
        self.head: nn.Module = head_cls(spatial_dims, self.decoder.out_channels[:-1], out_channels, n_deep)

    def _finish(self, x: torch.Tensor, outs: list[torch.Tensor]) -> list[torch.Tensor]:
        if self.global_residual:
            outs[0] = outs[0] + x
        return outs

    def _decode(self, feats: list[torch.Tensor], use_checkpoint: bool) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        return self.decoder.forward_with_attention(feats, use_checkpoint)
