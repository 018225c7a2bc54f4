"""One U-Net skeleton with pluggable encoder block, decoder block, skip path and head.

Every network of this package is a thin composition of this class; users can compose their own
(e.g. a MultiResUNet with attention gates) with JSON-friendly string arguments.
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

__all__ = ["ComposableUNet", "BLOCKS", "DOWNSAMPLE_MODES", "SKIP_TRANSFORMS"]

SKIP_TRANSFORMS = ("plain", "respath")


def _decode_stage(
    up_layer: nn.Module, skip_path: nn.Module, dec: nn.Module, skip: torch.Tensor, h: torch.Tensor
) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """One decoder stage: up-sample ``h``, pass ``skip`` through its path (gated by ``h``), concatenate, decode."""
    up = up_layer(h)
    s, amap = skip_path(skip, h, up)
    return dec(torch.cat([s, up], dim=1)), amap


@register_network("composable")
class ComposableUNet(UNetBase):
    """A U-Net whose encoder block, decoder block, skip path, up-sampling and head are chosen by name.

    Topology: ``len(channels)`` levels; level ``i > 0`` is reached by down-sampling with ``strides[i-1]``
    (max pooling, or the block's first convolution with ``downsample="conv"``). The decoder up-samples
    the coarser features, passes the level's encoder features through the skip path (plain, ResPath,
    attention gates), concatenates ``[skip, up]`` and applies the decoder block.

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

        # decoder, built from the deepest level up; stored in forward order
        ups, skips, decoder = [], [], []
        dec_out = [0] * depth
        dec_out[-1] = enc_out[-1]
        for i in reversed(range(depth - 1)):
            coarse = dec_out[i + 1]
            up = make_upsample(
                spatial_dims, coarse, channels[i], strides[i], upsample, up_kernel_size, interp_mode, act, norm, bias
            )
            transform = None
            if skip == "respath":
                transform = ResPath(
                    spatial_dims, enc_out[i], channels[i], depth - 1 - i, kernel_size, act, norm, bias,
                    **dict(skip_args or {}),
                )
            gated = attention is not None and i in levels
            sp = SkipPath(
                spatial_dims,
                enc_out[i],
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
            decoder.append(make_block(decoder_block, spatial_dims, c_in, channels[i], 1, False, common, extra))
            dec_out[i] = decoder[-1].out_channels
        self.ups = nn.ModuleList(ups)
        self.skips = nn.ModuleList(skips)
        self.decoder = nn.ModuleList(decoder)

        n_deep = deep_supr_num if deep_supervision else 0
        if head == "multiscale":
            self.head: nn.Module = MultiScaleFusionHead(spatial_dims, dec_out[:-1], out_channels, n_deep)
        else:
            self.head = OutputHead(spatial_dims, dec_out[:-1], out_channels, n_deep)

    def _features(self, x: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Decoder outputs (top level first, bottleneck last) and attention maps (top level first).

        With checkpointing, each encoder level (pooling + block) and each decoder stage (up-sampling, skip
        path with its gates, concatenation and block) is one checkpoint: only the level outputs are kept for
        the backward pass and everything inside a level or stage is recomputed.
        """
        use_ckpt = self._use_checkpointing()
        feats = self._encode(x)
        h = feats[-1]
        outs: list[torch.Tensor] = [h]
        maps: list[torch.Tensor] = []
        level = len(feats) - 2
        for up_layer, skip_path, dec in zip(self.ups, self.skips, self.decoder):  # noqa: B905 (TorchScript: no strict=)
            if use_ckpt and not torch.jit.is_scripting():
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

    def _output(self, x: torch.Tensor, feats: list[torch.Tensor]) -> torch.Tensor:
        deep = self.deep_supervision and self.training
        outs = self.head(feats, deep)
        if self.global_residual:
            outs[0] = outs[0] + x
        if deep:
            return torch.stack(outs, dim=1)
        return outs[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Segmentation logits ``(B, out_channels, *spatial)``; with deep supervision in training mode
        ``(B, 1 + deep_supr_num, out_channels, *spatial)``."""
        self._check_input(x)
        feats, _ = self._features(x)
        return self._output(x, feats)

    @torch.jit.export
    def forward_with_attention(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Like ``forward``, plus the attention coefficients of every gated skip, top level first, each
        ``(B, gates, *skip_spatial)`` (an empty list for networks without gates)."""
        self._check_input(x)
        feats, maps = self._features(x)
        return self._output(x, feats), maps
