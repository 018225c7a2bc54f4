"""UNet 3+: full-scale skip connections and full-scale deep supervision (Huang et al. 2020)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, Optional

import torch
import torch.nn.functional as F
from monai.networks.layers.factories import Pool
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..registry import register_network
from ._common import DEFAULT_CHANNELS, PresetMixin, fill_doc
from .base import UNetBase, check_unet_args
from .blocks.attention import interp_mode_for
from .blocks.layers import LayerArg, conv_unit, convolution

__all__ = ["FullScaleDecoder", "FullScaleHead", "FullScaleStage", "UNet3Plus"]


class FullScaleStage(nn.Module):
    """One UNet 3+ decoder stage ``X_De^i``: every encoder level ``k < i`` max-pooled down to level ``i``, the
    encoder level ``i`` itself, and every deeper decoder stage (the bottleneck counting as the deepest) up-sampled
    to level ``i``, each through a 3x3 conv-norm-act to ``cat_channels``; their concatenation, in that order, is
    fused by one 3x3 conv-norm-act to ``len(sources) * cat_channels`` channels.

    Args:
        spatial_dims: 2 or 3.
        sources: ``(channels, factor)`` per input, shallowest first; ``factor < 0`` max-pools by ``-factor``,
            ``factor > 1`` up-samples by it, ``1`` keeps the size.
        cat_channels: channels of each input after its convolution.
        kernel_size, act, norm, dropout, bias: of the convolutions.
        interp_mode: ``"nearest"`` or ``"linear"`` (bilinear/trilinear, the authors') up-sampling.
    """

    def __init__(
        self,
        spatial_dims: int,
        sources: Sequence[tuple[int, int]],
        cat_channels: int,
        kernel_size: int,
        act: LayerArg,
        norm: LayerArg,
        dropout: Optional[float],
        bias: bool,
        interp_mode: str,
    ) -> None:
        super().__init__()
        paths = []
        mode = interp_mode_for(interp_mode, spatial_dims)
        for c_in, factor in sources:
            if factor < 0:
                resample: nn.Module = Pool[Pool.MAX, spatial_dims](kernel_size=-factor, stride=-factor, ceil_mode=True)
            elif factor > 1:
                resample = nn.Upsample(scale_factor=factor, mode=mode, align_corners=None if mode == "nearest" else False)
            else:
                resample = nn.Identity()
            unit = conv_unit(spatial_dims, c_in, cat_channels, kernel_size, 1, act, norm, dropout, bias)
            paths.append(nn.Sequential(resample, unit))
        self.paths = nn.ModuleList(paths)
        self.out_channels = cat_channels * len(sources)
        self.fuse = conv_unit(spatial_dims, self.out_channels, self.out_channels, kernel_size, 1, act, norm, dropout, bias)

    def forward(self, inputs: list[torch.Tensor]) -> torch.Tensor:
        parts: list[torch.Tensor] = []
        for k, path in enumerate(self.paths):
            parts.append(path(inputs[k]))
        return self.fuse(torch.cat(parts, dim=1))


class FullScaleDecoder(nn.Module):
    """UNet 3+'s decoder: a ``FullScaleStage`` per level from the second deepest up, each aggregating every encoder
    scale and every deeper decoder scale (the bottleneck counting as the deepest).

    ``forward(feats, use_checkpoint=False)``: the decoder outputs, top level first, the bottleneck last (the
    protocol in ``base``); with ``use_checkpoint`` each stage keeps only its output for the backward pass.
    ``out_channels``: their widths.

    Args:
        spatial_dims: 2 or 3.
        enc_channels: the encoder's widths, top first.
        strides: the down-sampling factors between levels.
        cat_channels: channels of each aggregated input.
        kernel_size, act, norm, dropout, bias: of the stages' convolutions.
        interp_mode: ``"nearest"`` or ``"linear"`` up-sampling.
    """

    def __init__(
        self,
        spatial_dims: int,
        enc_channels: Sequence[int],
        strides: Sequence[int],
        cat_channels: int,
        kernel_size: int,
        act: LayerArg,
        norm: LayerArg,
        dropout: Optional[float],
        bias: bool,
        interp_mode: str,
    ) -> None:
        super().__init__()
        depth = len(enc_channels)

        def scale(a: int, b: int) -> int:  # the size ratio between levels a < b
            return int(math.prod(strides[a:b]))

        # stages from the second deepest level up; widths[k]: what level k's decoder output has (bottleneck: enc)
        widths = {depth - 1: enc_channels[-1]}
        stages = []
        for i in reversed(range(depth - 1)):
            sources = [(enc_channels[k], -scale(k, i) if k < i else 1) for k in range(i + 1)]
            sources += [(widths[k], scale(i, k)) for k in range(i + 1, depth)]
            stage = FullScaleStage(spatial_dims, sources, cat_channels, kernel_size, act, norm, dropout, bias,
                                   interp_mode)
            stages.append(stage)
            widths[i] = stage.out_channels
        self.stages = nn.ModuleList(stages)
        self.out_channels: list[int] = [widths[k] for k in range(depth)]

    def forward(self, feats: list[torch.Tensor], use_checkpoint: bool = False) -> list[torch.Tensor]:
        deeper: list[torch.Tensor] = [feats[-1]]  # decoder outputs of the deeper levels, shallowest first
        level = len(feats) - 2
        for stage in self.stages:
            inputs = feats[: level + 1] + deeper
            if use_checkpoint and not torch.jit.is_scripting():  # TorchScript drops this branch
                h = checkpoint(stage, inputs, use_reentrant=False)
            else:
                h = stage(inputs)
            deeper.insert(0, h)
            level -= 1
        return deeper


class FullScaleHead(nn.Module):
    """UNet 3+'s output: a ``kernel_size`` convolution on the top decoder stage and, for full-scale deep supervision,
    on the next ``deep_supr_num`` levels (the last may be the bottleneck), each up-sampled bilinearly (trilinearly)
    to full size; with ``classification_guided``, the authors' classification-guided module on the bottleneck
    (dropout 0.5, 1x1 convolution to 2 channels, global max pooling, sigmoid) whose argmax multiplies every output.

    ``forward(outs, deep)``: ``[main]`` or, with ``deep``, ``[main, ds_1, ..., ds_n]``, from the decoder's outputs
    (top first, the bottleneck last); ``forward_with_classification(outs, deep)`` also returns the ``(B, 2)``
    probabilities (absent, present), all ones without the module.

    Args:
        spatial_dims: 2 or 3.
        in_channels: the decoder's output widths, top first, the bottleneck last.
        out_channels: classes.
        kernel_size: of the head convolutions.
        deep_supr_num: deep-supervision heads. Defaults to 0.
        classification_guided: add the classification-guided module. Defaults to ``False``.
    """

    def __init__(self, spatial_dims: int, in_channels: Sequence[int], out_channels: int, kernel_size: int,
                 deep_supr_num: int = 0, classification_guided: bool = False) -> None:
        super().__init__()
        # heads[k] reads the decoder output of level k (level depth - 1: the bottleneck)
        self.heads = nn.ModuleList(
            [convolution(spatial_dims, in_channels[k], out_channels, kernel_size=kernel_size, bias=True, conv_only=True)
             for k in range(1 + deep_supr_num)]
        )
        self.interp_mode = interp_mode_for("linear", spatial_dims)  # the authors' bilinear up-scoring of the heads
        self.classification_guided = bool(classification_guided)
        self.classifier: nn.Module = nn.Identity()
        if self.classification_guided:
            self.classifier = nn.Sequential(
                nn.Dropout(p=0.5),  # element-wise, as the authors' (not a channel dropout)
                convolution(spatial_dims, in_channels[-1], 2, kernel_size=1, bias=True, conv_only=True),
                Pool[Pool.ADAPTIVEMAX, spatial_dims](1),
                nn.Sigmoid(),
            )

    def forward(self, dec: list[torch.Tensor], deep: bool) -> list[torch.Tensor]:
        return self.forward_with_classification(dec, deep)[0]

    @torch.jit.export
    def forward_with_classification(
        self, dec: list[torch.Tensor], deep: bool
    ) -> tuple[list[torch.Tensor], torch.Tensor]:
        size = list(dec[0].shape[2:])
        outs: list[torch.Tensor] = []
        for k, head in enumerate(self.heads):
            if k == 0:
                outs.append(head(dec[0]))
            elif deep:
                outs.append(F.interpolate(head(dec[k]), size=size, mode=self.interp_mode, align_corners=False))
        present = torch.ones(dec[0].shape[0], 2, dtype=outs[0].dtype, device=dec[0].device)
        if self.classification_guided:
            present = self.classifier(dec[-1]).flatten(1)
            gate = present.argmax(dim=1).to(outs[0].dtype).view([-1] + [1] * (outs[0].dim() - 1))
            outs = [o * gate for o in outs]
        return outs, present


@register_network("unet3plus")
@fill_doc
class UNet3Plus(PresetMixin, UNetBase):
    """UNet 3+: every decoder stage aggregates all encoder scales and all deeper decoder scales.

    {papers}

    The encoder is the U-Net's (two conv-norm-ReLU layers per level, max pooling). Decoder stage ``i`` (from the
    second deepest level up) is a ``FullScaleStage``: encoder levels ``0..i-1`` max-pooled to its scale, encoder
    level ``i``, and the deeper decoder stages and the bottleneck up-sampled (bilinear/trilinear), each through a
    3x3 conv-norm-ReLU to ``cat_channels`` (the top width by default) channels, concatenated and fused by a 3x3
    conv-norm-ReLU to ``len(channels) * cat_channels`` channels. The output is a 3x3 convolution of the top stage.
    Full-scale deep supervision (``deep_supervision=True``) adds a 3x3 head on each deeper stage and, with
    ``deep_supr_num = len(channels) - 1``, on the bottleneck, each up-sampled bilinearly to full size and stacked
    after the main output in training mode (MONAI's form ``(B, 1 + deep_supr_num, out_channels, *spatial)``;
    for ``DeepSupervisionLoss`` pass ``list(torch.unbind(out, 1))``).

    The classification-guided module (``classification_guided=True``) is the authors': dropout 0.5, a 1x1
    convolution of the bottleneck to 2 channels, global max pooling and a sigmoid give ``P(organ present)``; the
    argmax (0 or 1) multiplies every output, so a volume the classifier calls empty gets all-zero logits (its
    argmax is background). ``forward_with_classification`` also returns the two probabilities, to be trained with
    a binary cross-entropy against "the label is not empty", as in the paper.

    Differences from the authors' code: the outputs are logits (the authors apply a sigmoid inside); the
    classification gate multiplies logits as theirs does, which in their sigmoid output gives 0.5 rather than 0 for
    an "absent" verdict. Weight initialisation is PyTorch's default (theirs is Kaiming normal). Up-sampling is
    always interpolation followed by the path's convolution (``upsample="resize_conv"``, the only mode).

    Reference (``preset="reference"``): ZJUGiveLab/UNet-Version ``UNet_3Plus`` (2D, 3 channels in, 1 out,
    widths 64-128-256-512-1024, batch norm): 26,971,777 parameters, the authors' model layer for layer (their
    state dict, loaded in order, gives outputs equal to theirs in eval mode: max difference 0.0 after the sigmoid,
    checked 2026-11-26 on a 2x3x64x64 input); with ``deep_supervision=True, deep_supr_num=4`` their
    ``UNet_3Plus_DeepSup``, 26,989,637 parameters (all five outputs equal); with ``classification_guided=True``
    as well their ``UNet_3Plus_DeepSup_CGM``, 26,991,687 (equal in eval mode).

    Args:
{common_args}
        cat_channels: channels of each aggregated input (``None``: ``channels[0]``). Defaults to ``None``.
        upsample: ``"resize_conv"`` only (interpolation, then the path's convolution). Defaults to ``"resize_conv"``.
        interp_mode: ``"linear"`` (bilinear/trilinear, the authors') or ``"nearest"``. Defaults to ``"linear"``.
        deep_supervision: stack the deeper stages' heads in training mode. Defaults to ``False``.
        deep_supr_num: deep-supervision heads (``1 .. len(channels) - 1``; the last one reads the bottleneck).
            Defaults to 1.
        classification_guided: add the classification-guided module. Defaults to ``False``.
        checkpointing: keep only stage outputs for the backward pass, recompute the rest (training). Defaults to
            ``False``.
        block_args: extra keyword arguments of the encoder's ``"conv"`` blocks (e.g. ``{"num_convs": 3}``).
            Defaults to ``None``.

    Input-size rule: every spatial size must be divisible by ``prod(strides)`` (16 for the defaults).

    Examples::

        >>> net = UNet3Plus(spatial_dims=2, in_channels=1, out_channels=2, channels=(8, 16, 32, 64))
        >>> net(torch.randn(1, 1, 64, 64)).shape
        torch.Size([1, 2, 64, 64])
        >>> net = UNet3Plus(3, 1, 3, channels=(8, 16, 32), deep_supervision=True, deep_supr_num=2,
        ...                 classification_guided=True).train()
        >>> out, present = net.forward_with_classification(torch.randn(2, 1, 32, 32, 32))
        >>> out.shape, present.shape
        (torch.Size([2, 3, 3, 32, 32, 32]), torch.Size([2, 2]))
    """

    #: the papers this network follows, full citations (read by the bundles' metadata and docs)
    PAPERS = (
        "Huang, H. et al. UNet 3+: A Full-Scale Connected UNet for Medical Image Segmentation. ICASSP 2020. "
        "https://arxiv.org/abs/2004.08790",
    )
    BUNDLE = {
        "name": "unet3plus_pancreas",
        "title": "UNet 3+",
        "about": (
            "full-scale skip connections: every decoder stage takes all shallower encoder levels (max-pooled), its "
            "own encoder level and all deeper decoder stages (trilinear up-sampling), each through a 3x3x3 "
            "conv-norm-ReLU to 16 channels, fused by one 3x3x3 conv-norm-ReLU to 80 channels; widths "
            "16-32-64-128-256, instance normalisation, a 3x3x3 head. The bundle trains with the paper's full-scale "
            "deep supervision (a head on every decoder stage and on the bottleneck, each up-sampled to full size, "
            "the DiceCE loss of the five outputs averaged with equal weights; `--deep_supervision false` trains the "
            "main output only, and its checkpoint needs the same flag at inference); the classification-guided "
            "module is an option of the network class."
        ),
        "settings": {"deep_supervision": True, "deep_supr_num": 4},
    }
    PRESETS = {
        "reference": dict(
            spatial_dims=2, in_channels=3, out_channels=1, channels=(64, 128, 256, 512, 1024), norm="batch"
        )
    }
    UPSAMPLE_MODES = ("resize_conv",)

    def __init__(
        self,
        spatial_dims: int = 3,
        in_channels: int = 1,
        out_channels: int = 2,
        channels: Sequence[int] = DEFAULT_CHANNELS,
        strides: Optional[Sequence[int]] = None,
        kernel_size: int = 3,
        act: LayerArg = "relu",
        norm: LayerArg = "batch",
        dropout: Optional[float] = None,
        bias: bool = True,
        cat_channels: Optional[int] = None,
        upsample: str = "resize_conv",
        interp_mode: str = "linear",
        deep_supervision: bool = False,
        deep_supr_num: int = 1,
        classification_guided: bool = False,
        checkpointing: bool = False,
        block_args: Optional[Mapping[str, Any]] = None,
    ) -> None:
        super().__init__()
        if upsample not in self.UPSAMPLE_MODES:
            raise ValueError(
                f"upsample must be one of {self.UPSAMPLE_MODES} (got {upsample!r}): UNet 3+ interpolates every "
                "deeper scale and convolves it in its own path."
            )
        channels, strides = check_unet_args(
            spatial_dims, in_channels, out_channels, channels, strides, kernel_size, act, norm, dropout, upsample,
            deep_supervision, deep_supr_num, max_deep_supr_num=len(tuple(channels)) - 1, interp_mode=interp_mode,
        )
        cat = channels[0] if cat_channels is None else int(cat_channels)
        if cat < 1:
            raise ValueError(f"cat_channels must be a positive integer (got {cat_channels!r}).")
        self.deep_supervision = bool(deep_supervision)
        self.classification_guided = bool(classification_guided)
        common = dict(kernel_size=kernel_size, act=act, norm=norm, dropout=dropout, bias=bias)
        enc = self._build_encoder(
            spatial_dims, in_channels, out_channels, channels, strides, "conv", common, dict(block_args or {}),
            "maxpool", checkpointing,
        )
        self.decoder = FullScaleDecoder(spatial_dims, enc, strides, cat, kernel_size, act, norm, dropout, bias,
                                        interp_mode)
        n_deep = deep_supr_num if deep_supervision else 0
        self.head = FullScaleHead(spatial_dims, self.decoder.out_channels, out_channels, kernel_size, n_deep,
                                  self.classification_guided)

    def _head(self, dec: list[torch.Tensor], deep: bool) -> tuple[list[torch.Tensor], Optional[torch.Tensor]]:
        outs, present = self.head.forward_with_classification(dec, deep)
        return outs, present

    @torch.jit.export
    def forward_with_classification(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``forward``'s output and the classification-guided module's ``(B, 2)`` probabilities (absent,
        present); all ones without the module."""
        out, _, present = self._run(x)
        if present is None:  # never: this network's head always returns them (TorchScript's Optional refinement)
            raise RuntimeError("UNet3Plus's head returned no classification probabilities")
        return out, present
