"""UNet++: nested dense skip pathways (Zhou et al. 2018/2019)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Optional

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..registry import register_network
from ._common import DEFAULT_CHANNELS, PresetMixin, fill_doc
from .base import UNetBase, check_unet_args, make_block
from .blocks import make_upsample
from .blocks.heads import conv1x1
from .blocks.layers import LayerArg

__all__ = ["NestedDecoder", "NestedNode", "TopRowHead", "UNetPlusPlus"]


class NestedNode(nn.Module):
    """One node ``X^{i,j}`` (``j >= 1``) of UNet++: up-sample ``X^{i+1,j-1}``, concatenate it with every earlier
    node of its own row ``X^{i,0} .. X^{i,j-1}`` (in this order, as the authors' Keras code), apply the block.

    Args:
        up: the up-sampling step from level ``row + 1``.
        block: the convolution block of the node.
        row: the level ``i`` (0 is full resolution).
        column: the node's column ``j``.
    """

    def __init__(self, up: nn.Module, block: nn.Module, row: int, column: int) -> None:
        super().__init__()
        self.up = up
        self.block = block
        self.row = row
        self.column = column
        self.diagonal = row + column  # the encoder level after which the node can be computed
        self.out_channels: int = block.out_channels

    def forward(self, coarse: torch.Tensor, same_row: list[torch.Tensor]) -> torch.Tensor:
        return self.block(torch.cat([self.up(coarse)] + same_row, dim=1))


class NestedDecoder(nn.Module):
    """UNet++'s decoder: the nested dense skip pathways, every node ``X^{i,j}`` (``j >= 1``) of the grid above the
    encoder, stored in the order of the forward pass (by diagonal ``i + j``, then from the deepest row up).

    ``forward(feats, use_checkpoint=False)``: the top row ``X^{0,0} .. X^{0,d}`` (``d = len(feats) - 1``: given the
    first ``d + 1`` encoder levels, only the nodes with ``i + j <= d`` are computed; the paper's pruning); with
    ``use_checkpoint`` each node keeps only its output for the backward pass.

    Args:
        spatial_dims: 2 or 3.
        enc_channels: the encoder's widths, top first.
        channels: each level's width, top first.
        strides: the down-sampling factors between levels.
        block: the node block, a key of ``BLOCKS``.
        common: the blocks' shared arguments (``kernel_size``, ``act``, ``norm``, ``dropout``, ``bias``).
        block_args: the block's own arguments.
        upsample, up_kernel_size, interp_mode: of the up-sampling (``make_upsample``).
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
    ) -> None:
        super().__init__()
        act, norm, bias = common["act"], common["norm"], common["bias"]
        widths = [[w] for w in enc_channels]
        nodes = []
        for diagonal in range(1, len(channels)):  # the order of the forward pass: after encoder level `diagonal`
            for row in reversed(range(diagonal)):
                up = make_upsample(
                    spatial_dims, widths[row + 1][-1], channels[row], strides[row], upsample, up_kernel_size,
                    interp_mode, act, norm, bias,
                )
                c_in = up.out_channels + sum(widths[row])
                unit = make_block(block, spatial_dims, c_in, channels[row], 1, False, common, block_args)
                nodes.append(NestedNode(up, unit, row, diagonal - row))
                widths[row].append(unit.out_channels)
        self.nodes = nn.ModuleList(nodes)
        #: the widths of the top row X^{0,0} .. X^{0,D}
        self.out_channels: list[int] = widths[0]

    def forward(self, feats: list[torch.Tensor], use_checkpoint: bool = False) -> list[torch.Tensor]:
        last = len(feats) - 1
        rows: list[list[torch.Tensor]] = [[f] for f in feats]
        for node in self.nodes:
            if node.diagonal <= last:
                coarse = rows[node.row + 1][-1]  # X^{i+1, j-1}: the last node computed on the row below
                if use_checkpoint and not torch.jit.is_scripting():  # TorchScript drops this branch
                    # a copy of the row: the recomputation must see the row as it is now, not as it grows
                    h = checkpoint(node, coarse, list(rows[node.row]), use_reentrant=False)
                else:
                    h = node(coarse, rows[node.row])
                rows[node.row].append(h)
        return rows[0]


class TopRowHead(nn.Module):
    """UNet++'s heads: a 1x1 convolution on each of the top row's last ``1 + deep_supr_num`` nodes.

    ``forward(top_row, deep)`` takes ``X^{0,0} .. X^{0,d}`` (``NestedDecoder``'s output) and returns the head of
    ``X^{0,d}`` (the main output; ``d < D`` when pruned) or, with ``deep``, the heads of ``X^{0,D} .. X^{0,D-n}``,
    the deepest column first, all at full resolution.

    Args:
        spatial_dims: 2 or 3.
        in_channels: the widths of the top row ``X^{0,0} .. X^{0,D}``.
        out_channels: classes.
        deep_supr_num: heads after the main one. Defaults to 0.
    """

    def __init__(self, spatial_dims: int, in_channels: Sequence[int], out_channels: int, deep_supr_num: int = 0) -> None:
        super().__init__()
        top = len(in_channels) - 1
        self.depth = top
        # heads[k] reads X^{0, D - k}: the main output first, then the deep-supervision heads
        self.heads = nn.ModuleList([conv1x1(spatial_dims, in_channels[top - k], out_channels)
                                    for k in range(1 + deep_supr_num)])

    def forward(self, top_row: list[torch.Tensor], deep: bool) -> list[torch.Tensor]:
        last = len(top_row) - 1
        outs: list[torch.Tensor] = []
        for k, head in enumerate(self.heads):
            column = self.depth - k
            if column == last or (deep and column <= last):
                outs.append(head(top_row[column]))
        return outs


@register_network("unetplusplus")
@fill_doc
class UNetPlusPlus(PresetMixin, UNetBase):
    """UNet++: a U-Net whose skips are nested, dense convolution pathways.

    {papers}

    Node ``X^{i,0}`` is the encoder at level ``i``; every other node ``X^{i,j}`` convolves the concatenation of the
    up-sampled ``X^{i+1,j-1}`` and all earlier nodes of its row, ``X^{i,0} .. X^{i,j-1}`` (the dense skip pathway).
    The top row ``X^{0,1} .. X^{0,D}`` (``D = len(channels) - 1``) carries the 1x1 heads: ``X^{0,D}``'s head is
    the output; with ``deep_supervision`` the heads of ``X^{0,D-1} .. X^{0,D-deep_supr_num}`` are stacked after it
    in training mode (MONAI's form, ``(B, 1 + deep_supr_num, out_channels, *spatial)``, all at full resolution:
    no interpolation is needed). For MONAI's ``DeepSupervisionLoss`` pass ``list(torch.unbind(out, 1))``.

    **Pruning** (the paper's Section III-C): a network trained with deep supervision can run as ``UNet++ L^d`` in
    eval mode, computing only the encoder levels ``0..d`` and the nodes with ``i + j <= d`` and returning the head
    of ``X^{0,d}``: ``prune_depth=d`` (``D - deep_supr_num <= d <= D``, so that ``X^{0,d}`` has a trained head).
    Training mode always runs the whole network, so that every head keeps learning. The state dict does not
    depend on ``prune_depth``: a checkpoint of the full network loads into a pruned one.

    Convolutions start from the authors' initialisation (He normal, zero biases; Keras' ``he_normal`` is a truncated
    normal, PyTorch's ``kaiming_normal_`` is not): with PyTorch's default initialisation the 3D network learned far
    more slowly than the U-Net in our checks.

    Differences from the paper: the paper's "accurate mode" (averaging the top row's outputs at inference) is not
    built in (average ``torch.unbind(out, 1)`` of a training-mode forward to get it); the output is logits (the
    authors apply a sigmoid in the network); any block of ``BLOCKS`` can serve as the node (``block="conv"``,
    the paper's two 3x3 convolutions, by default).

    Reference (``preset="reference"``): the authors' Keras ``UNetPlusPlus`` (MrGiovanni/UNetPlusPlus,
    ``keras/helper_functions.py``): 2D, one channel in and out, widths 32-64-128-256-512, two 3x3 convolutions
    + ReLU + dropout 0.5 per node and no normalisation, 2x2 transposed convolutions, max pooling:
    9,041,601 parameters, as the authors' code states (9,041,700 with the three deep-supervision heads).

    Args:
{common_args}
        block: the node (and encoder) block, a key of ``BLOCKS``. Defaults to ``"conv"``.
        block_args: extra keyword arguments of the block. Defaults to ``None``.
        downsample: ``"maxpool"`` or ``"conv"`` (the block's strided first convolution). Defaults to ``"maxpool"``.
        upsample: ``"deconv"``, ``"nontrainable"`` (interpolation) or ``"resize_conv"`` (interpolation + conv).
            Defaults to ``"deconv"``.
        interp_mode: ``"nearest"`` or ``"linear"`` for the interpolating up-sampling. Defaults to ``"nearest"``.
        deep_supervision: stack the top row's heads in training mode. Defaults to ``False``.
        deep_supr_num: deep-supervision heads after the main one (``1 .. len(channels) - 2``). Defaults to 1.
        prune_depth: ``None`` (the full network) or the ``d`` of ``UNet++ L^d`` used in eval mode. Defaults to ``None``.
        checkpointing: keep only the nodes' outputs for the backward pass and recompute each node's inside
            (training). Defaults to ``False``.

    Input-size rule: every spatial size must be divisible by ``prod(strides)`` (16 for the defaults).

    Examples::

        >>> net = UNetPlusPlus(spatial_dims=2, in_channels=1, out_channels=2, channels=(8, 16, 32, 64),
        ...                    deep_supervision=True, deep_supr_num=2)
        >>> net.train()(torch.randn(1, 1, 64, 64)).shape        # X^{0,3}, X^{0,2}, X^{0,1}
        torch.Size([1, 3, 2, 64, 64])
        >>> pruned = UNetPlusPlus(spatial_dims=2, in_channels=1, out_channels=2, channels=(8, 16, 32, 64),
        ...                       deep_supervision=True, deep_supr_num=2, prune_depth=1)
        >>> pruned.load_state_dict(net.state_dict())
        <All keys matched successfully>
        >>> pruned.eval()(torch.randn(1, 1, 64, 64)).shape      # UNet++ L^1: levels 0-1 and X^{0,1} only
        torch.Size([1, 2, 64, 64])
    """

    #: the papers this network follows, full citations (read by the bundles' metadata and docs)
    PAPERS = (
        "Zhou, Z., Rahman Siddiquee, M. M., Tajbakhsh, N., Liang, J. UNet++: A Nested U-Net Architecture for "
        "Medical Image Segmentation. DLMIA 2018. https://arxiv.org/abs/1807.10165",
        "Zhou, Z., Rahman Siddiquee, M. M., Tajbakhsh, N., Liang, J. UNet++: Redesigning Skip Connections to "
        "Exploit Multiscale Features in Image Segmentation. IEEE TMI 39(6), 2020. "
        "https://arxiv.org/abs/1912.05074",
    )
    BUNDLE = {
        "name": "unetplusplus_pancreas",
        "title": "UNet++",
        "about": (
            "nested dense skip pathways: every skip node convolves the up-sampled node below it with all earlier "
            "nodes of its level (ten nodes for five levels), two conv-norm-ReLU layers per node, 2x2 transposed "
            "convolutions, widths 16-32-64-128-256, instance normalisation, the head on the last top-row node. The "
            "bundle trains with the paper's deep supervision (a head on each of the four top-row nodes, the DiceCE "
            "loss of the four outputs averaged with equal weights; `--deep_supervision false` trains the last head "
            "only, and its checkpoint needs the same flag at inference); inference uses the last head, and the "
            "paper's pruning is `--network_def#prune_depth d`."
        ),
        "settings": {"deep_supervision": True, "deep_supr_num": 3},
    }
    PRESETS = {
        "reference": dict(
            spatial_dims=2, in_channels=1, out_channels=1, channels=(32, 64, 128, 256, 512), norm=None, dropout=0.5
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
        block: str = "conv",
        block_args: Optional[Mapping[str, Any]] = None,
        downsample: str = "maxpool",
        upsample: str = "deconv",
        interp_mode: str = "nearest",
        deep_supervision: bool = False,
        deep_supr_num: int = 1,
        prune_depth: Optional[int] = None,
        checkpointing: bool = False,
    ) -> None:
        super().__init__()
        channels, strides = check_unet_args(
            spatial_dims, in_channels, out_channels, channels, strides, kernel_size, act, norm, dropout, upsample,
            deep_supervision, deep_supr_num, interp_mode=interp_mode,
        )
        top = len(channels) - 1  # D: the deepest level and the last column
        n_deep = deep_supr_num if deep_supervision else 0
        if prune_depth is not None and not top - n_deep <= prune_depth <= top:
            raise ValueError(
                f"prune_depth={prune_depth} needs a trained head on X^(0,{prune_depth}): with "
                f"len(channels) - 1 = {top} it must be in {top - n_deep}..{top}; train with deep_supervision=True "
                f"and deep_supr_num >= {top - prune_depth if isinstance(prune_depth, int) else '...'} to prune deeper."
            )
        self.depth = top
        self.deep_supervision = bool(deep_supervision)
        self.prune_depth = top if prune_depth is None else int(prune_depth)
        common = dict(kernel_size=kernel_size, act=act, norm=norm, dropout=dropout, bias=bias)
        extra = dict(block_args or {})
        enc = self._build_encoder(
            spatial_dims, in_channels, out_channels, channels, strides, block, common, extra, downsample, checkpointing
        )
        self.decoder = NestedDecoder(
            spatial_dims, enc, channels, strides, block, common, extra, upsample, up_kernel_size, interp_mode
        )
        self.head = TopRowHead(spatial_dims, self.decoder.out_channels, out_channels, n_deep)
        # the authors' initialisation (Keras he_normal, zero biases): with PyTorch's default one the 3D network at
        # lr 3e-3 stayed at background where the U-Net learned (a 3-class sphere, 100 steps: Dice 0 vs 0.99)
        for module in self.modules():
            if isinstance(module, nn.modules.conv._ConvNd):
                nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    def _levels(self) -> int:
        """The encoder levels ``0..d`` of ``UNet++ L^d``: all in training, ``prune_depth + 1`` in eval mode."""
        return self.depth + 1 if self.training else self.prune_depth + 1
