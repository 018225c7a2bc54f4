"""What every U-Net of the family shares, whatever its decoder: argument checks, the block registry, the
encoder, the input check, and the protocol by which the parts of a network compose.

A network of the family is four parts (segmentation_models_pytorch's encoder/decoder/head split, with the skip
pathways inside the decoder), each a module of its own:

- ``encoder``: a ``UNetEncoder``. ``encoder(x, levels, use_checkpoint)`` returns the features of the first
  ``levels`` levels (all for ``-1``), top level (full resolution) first; ``encoder.out_channels`` their widths.
- ``decoder``: any module with ``decoder(feats, use_checkpoint) -> outs``, the decoder's outputs that the head
  reads, ordered as that head expects (the family's decoders: top level first), and ``decoder.out_channels``. Its
  skip or aggregation pathways are its own submodules: ``UNetDecoder`` (one stage per level, ``SkipPath``: plain,
  ResPath, attention gates), ``NestedDecoder`` (UNet++'s dense nested nodes), ``FullScaleDecoder`` (UNet 3+'s
  full-scale aggregation). A decoder with attention gates also has
  ``decoder.forward_with_attention(feats, use_checkpoint) -> (outs, maps)``.
- ``head``: any module with ``head(outs, deep) -> [main, *deep_supervision_outputs]``, each full size.
- ``UNetBase.forward``: ``_check_input``, encoder, decoder, head; the outputs stacked along dimension 1 in training
  mode with deep supervision (MONAI's form), the main output alone otherwise. ``forward_with_attention`` is the same
  pass (``UNetBase._run``) returning the attention maps too.

``UNetBase`` holds that forward once; a variant's constructor builds the three parts (``_build_encoder`` for the
encoder) and sets ``deep_supervision``; it overrides ``_levels`` (how many encoder levels a forward needs: UNet++'s
pruning), ``_decode`` (the decoder's outputs and attention maps: ``ComposableUNet``'s gates), ``_head`` (the
head's outputs and an extra one: UNet 3+'s classification probabilities) or ``_finish`` (what becomes of the head's
outputs: ``ComposableUNet``'s global residual) only where it differs. The parts decide nothing about checkpointing: the
network passes ``use_checkpoint`` (its ``checkpointing`` flag, in training, with gradients on) and each part
checkpoints its levels or stages when told.
"""

from __future__ import annotations

import inspect
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any, Optional

import torch
from monai.networks.layers.factories import Pool
from torch import nn
from torch.utils.checkpoint import checkpoint

from .blocks import UPSAMPLE_MODES
from .blocks.layers import BLOCKS, LayerArg, check_layer_args, check_spatial_dims

__all__ = [
    "BLOCKS", "DOWNSAMPLE_MODES", "INTERP_MODES", "UNetBase", "UNetEncoder", "check_unet_args", "first_shape_mismatch",
    "make_block", "positive_ints",
]

DOWNSAMPLE_MODES = ("maxpool", "conv")
INTERP_MODES = ("nearest", "linear")


def first_shape_mismatch(own: Mapping[str, Any], saved: Mapping[str, Any], prefix: str = "") -> str:
    """The first tensor of the state dict ``own`` that ``saved`` holds (under ``prefix``) in another shape, in words
    (``"encoder.blocks.0.0.conv.weight is [4, 1, 3, 3, 3] in the checkpoint, [16, 1, 3, 3, 3] in the network"``);
    ``""`` when every shared tensor has the same shape."""
    for name, tensor in own.items():
        shape = getattr(saved.get(prefix + name), "shape", None)
        if shape is not None and shape != tensor.shape:
            return f"{name} is {list(shape)} in the checkpoint, {list(tensor.shape)} in the network"
    return ""


def positive_ints(name: str, values: Any) -> tuple[int, ...]:
    """``values`` as a tuple of positive ints; a ``ValueError`` naming ``name`` otherwise."""
    if isinstance(values, int):
        values = (values,)
    try:
        out = tuple(int(v) for v in values)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{name} must be a sequence of positive integers (got {values!r}).") from err
    if any(v < 1 or v != orig for v, orig in zip(out, values, strict=True)):
        raise ValueError(f"{name} must contain positive integers only (got {tuple(values)!r}).")
    return out


def check_unet_args(
    spatial_dims: int,
    in_channels: int,
    out_channels: int,
    channels: Sequence[int],
    strides: Optional[Sequence[int]],
    kernel_size: int,
    act: LayerArg,
    norm: LayerArg,
    dropout: Optional[float],
    upsample: str,
    deep_supervision: bool,
    deep_supr_num: int,
    max_deep_supr_num: Optional[int] = None,
    interp_mode: str = "nearest",
) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Check the arguments every U-Net shares; return ``(channels, strides)`` normalised to int tuples.
    ``max_deep_supr_num`` is ``len(channels) - 2`` unless the network says otherwise (a head on the bottleneck).

    Raises:
        ValueError: naming the argument, the value and what would fit.
    """
    check_spatial_dims(spatial_dims)
    if not isinstance(in_channels, int) or in_channels < 1 or not isinstance(out_channels, int) or out_channels < 1:
        raise ValueError(
            f"in_channels and out_channels must be positive integers (got {in_channels!r}, {out_channels!r})."
        )
    channels = positive_ints("channels", channels)
    depth = len(channels)
    if depth < 2:
        raise ValueError(f"channels needs at least 2 levels (got {channels}); e.g. channels=(16, 32, 64, 128, 256).")
    strides = (2,) * (depth - 1) if strides is None else positive_ints("strides", strides)
    if len(strides) != depth - 1:
        raise ValueError(
            f"strides must have len(channels) - 1 = {depth - 1} values, one per down-sampling step "
            f"(got {len(strides)}: {strides}); e.g. strides={(2,) * (depth - 1)}."
        )
    if not isinstance(kernel_size, int) or kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f"kernel_size must be a positive odd integer (got {kernel_size!r}).")
    check_layer_args(spatial_dims, act, norm, dropout)
    if upsample not in UPSAMPLE_MODES:
        raise ValueError(f"upsample must be one of {UPSAMPLE_MODES} (got {upsample!r}).")
    if interp_mode not in INTERP_MODES:
        raise ValueError(f"interp_mode must be one of {INTERP_MODES} (got {interp_mode!r}).")
    if deep_supervision not in (True, False):  # a command line's "false" is a non-empty string, not False
        raise ValueError(f"deep_supervision must be True or False (got {deep_supervision!r}).")
    if not isinstance(deep_supr_num, int) or isinstance(deep_supr_num, bool):
        raise ValueError(f"deep_supr_num must be an integer (got {deep_supr_num!r}).")
    most, most_text = (depth - 2, "len(channels) - 2") if max_deep_supr_num is None else (max_deep_supr_num, "")
    if deep_supervision and not 1 <= deep_supr_num <= most:
        raise ValueError(
            f"deep_supr_num must be in 1..{most_text + ' = ' if most_text else ''}{most} with deep_supervision "
            f"(got {deep_supr_num})."
        )
    return channels, strides


def make_block(
    name: str,
    spatial_dims: int,
    in_channels: int,
    out_channels: int,
    stride: int,
    is_stem: bool,
    common: Mapping[str, Any],
    block_args: Mapping[str, Any],
) -> nn.Module:
    """Build block ``name`` of ``BLOCKS``. Arguments the block does not take are reported as a ``ValueError``
    naming them; an error raised while the block is being built is not mistaken for one of them."""
    if name not in BLOCKS:
        raise ValueError(f"unknown block {name!r}: choose one of {sorted(BLOCKS)}.")
    cls = BLOCKS[name]
    kwargs = dict(stride=stride, is_stem=is_stem, **common, **block_args)
    try:
        inspect.signature(cls).bind(spatial_dims, in_channels, out_channels, **kwargs)
    except TypeError as err:
        raise ValueError(f"block_args {sorted(block_args)} do not fit block {name!r}: {err}") from err
    return cls(spatial_dims, in_channels, out_channels, **kwargs)


def _encode_level(pool: nn.Module, enc: nn.Module, h: torch.Tensor) -> torch.Tensor:
    return enc(pool(h))


class UNetEncoder(nn.Module):
    """The down-sampling path: level ``i > 0`` is reached by max pooling with ``strides[i-1]`` (or, with
    ``downsample="conv"``, by the block's strided first convolution), then block ``i`` of ``BLOCKS``.

    Args:
        spatial_dims: 2 or 3.
        in_channels: input channels.
        channels: each level's width, top first.
        strides: the down-sampling factor before each level after the first.
        block: a key of ``BLOCKS``.
        common: the blocks' shared arguments (``kernel_size``, ``act``, ``norm``, ``dropout``, ``bias``).
        block_args: the block's own arguments.
        downsample: ``"maxpool"`` or ``"conv"``. Defaults to ``"maxpool"``.

    ``forward(x, levels=-1, use_checkpoint=False)``: the features of the first ``levels`` levels (all for ``-1``),
    top level first; with ``use_checkpoint`` each level (pooling + block) is one activation checkpoint.
    ``out_channels``: each level's width.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        channels: Sequence[int],
        strides: Sequence[int],
        block: str,
        common: Mapping[str, Any],
        block_args: Mapping[str, Any],
        downsample: str = "maxpool",
    ) -> None:
        super().__init__()
        if downsample not in DOWNSAMPLE_MODES:
            raise ValueError(f"downsample must be one of {DOWNSAMPLE_MODES} (got {downsample!r}).")
        pools, blocks, widths = [], [], []
        prev = in_channels
        for i, width in enumerate(channels):
            stride = 1 if i == 0 else strides[i - 1]
            pool_here = downsample == "maxpool" and stride > 1
            pools.append(Pool[Pool.MAX, spatial_dims](kernel_size=stride, stride=stride) if pool_here else nn.Identity())
            unit_stride = 1 if pool_here else stride
            blocks.append(make_block(block, spatial_dims, prev, width, unit_stride, i == 0, common, block_args))
            prev = blocks[-1].out_channels
            widths.append(prev)
        self.pools = nn.ModuleList(pools)
        self.blocks = nn.ModuleList(blocks)
        self.out_channels: list[int] = widths

    def forward(self, x: torch.Tensor, levels: int = -1, use_checkpoint: bool = False) -> list[torch.Tensor]:
        feats: list[torch.Tensor] = []
        h = x
        # TorchScript's zip takes no strict=, and no `break`: it unrolls this loop
        for pool, block in zip(self.pools, self.blocks):  # noqa: B905
            if levels < 0 or len(feats) < levels:
                if use_checkpoint and not torch.jit.is_scripting():  # TorchScript drops this branch
                    h = checkpoint(_encode_level, pool, block, h, use_reentrant=False)
                else:
                    h = block(pool(h))
                feats.append(h)
        return feats


#: state-dict keys of checkpoints saved before the parts were modules (old pattern -> new key), read by
#: ``UNetBase``'s load hook so that those checkpoints still load
LEGACY_KEYS: tuple[tuple[str, str], ...] = (
    (r"^encoder\.(\d+)\.", r"encoder.blocks.\1."),
    (r"^(ups|skips|nodes|stages)\.", r"decoder.\1."),
    (r"^decoder\.(\d+)\.", r"decoder.blocks.\1."),
    (r"^(heads|classifier)\.", r"head.\1."),
)


class UNetBase(nn.Module):
    """The forward pass, encoder and input handling every network of the family shares (the protocol of its parts
    is in this module's docstring).

    Protocol for subclasses: call ``super().__init__()``, then ``_build_encoder(...)`` (it sets ``encoder``,
    ``spatial_dims``, ``in_channels``, ``out_channels``, ``divisor`` and ``checkpointing``), build ``decoder`` and
    ``head`` from the widths it returns and set ``deep_supervision``. ``PAPERS`` holds the full citations of the
    papers a variant follows (its bundles' metadata and docs read them); ``BUNDLE`` describes its bundle.
    """

    PAPERS: tuple[str, ...] = ()
    #: the variant's MONAI bundle, generated by ``bundle_family``: ``name`` (folder), ``title``, ``about`` (one
    #: paragraph for its docs), optional constructor ``args`` and per-network ``settings`` of its configs
    BUNDLE: dict[str, Any] | None = None

    def __init__(self) -> None:
        super().__init__()
        self.deep_supervision = False
        self._register_load_state_dict_pre_hook(self._legacy_keys)
        self._register_load_state_dict_pre_hook(self._refuse_other_shapes)

    def _build_encoder(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        channels: Sequence[int],
        strides: Sequence[int],
        block: str,
        common: Mapping[str, Any],
        block_args: Mapping[str, Any],
        downsample: str = "maxpool",
        checkpointing: bool = False,
    ) -> list[int]:
        """Build the encoder (``UNetEncoder``) and record what the forward pass needs. Returns each level's width."""
        self.spatial_dims = spatial_dims
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.divisor = int(math.prod(strides))
        self.checkpointing = bool(checkpointing)
        self.encoder = UNetEncoder(spatial_dims, in_channels, channels, strides, block, common, block_args, downsample)
        return list(self.encoder.out_channels)

    def _use_checkpointing(self) -> bool:
        return self.checkpointing and self.training and torch.is_grad_enabled()

    def _levels(self) -> int:
        """How many encoder levels a forward pass needs: all (``-1``) unless a variant prunes (UNet++)."""
        return -1

    def _finish(self, x: torch.Tensor, outs: list[torch.Tensor]) -> list[torch.Tensor]:
        """What becomes of the head's outputs before they are returned: nothing here (a variant's hook)."""
        return outs

    def _decode(self, feats: list[torch.Tensor], use_checkpoint: bool) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """The decoder's outputs and the attention maps of its gated skips: none here (``ComposableUNet``'s hook)."""
        maps: list[torch.Tensor] = []
        return self.decoder(feats, use_checkpoint), maps

    def _head(self, dec: list[torch.Tensor], deep: bool) -> tuple[list[torch.Tensor], Optional[torch.Tensor]]:
        """The head's outputs and what else it computes (UNet 3+'s classification probabilities): ``None`` here."""
        return self.head(dec, deep), None

    def _stack(self, outs: list[torch.Tensor]) -> torch.Tensor:
        if self.deep_supervision and self.training:
            return torch.stack(outs, dim=1)
        return outs[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Segmentation logits ``(B, out_channels, *spatial)``; with deep supervision in training mode
        ``(B, 1 + deep_supr_num, out_channels, *spatial)``, the main output first."""
        return self._run(x)[0]

    def _run(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor], Optional[torch.Tensor]]:
        """The one forward pass: check -> encoder -> decoder -> head -> hooks -> stack, with the attention maps and
        the head's extra output (``_head``)."""
        self._check_input(x)
        use_ckpt = self._use_checkpointing()
        feats = self.encoder(x, self._levels(), use_ckpt)
        dec, maps = self._decode(feats, use_ckpt)
        outs, extra = self._head(dec, self.deep_supervision and self.training)
        return self._stack(self._finish(x, outs)), maps, extra

    def _legacy_keys(self, state_dict: dict, prefix: str, *args: Any) -> None:
        """Rename the keys of a checkpoint saved before the parts were modules (``encoder.0.`` -> ``encoder.blocks.0.``,
        ``skips.`` -> ``decoder.skips.``, ...) where the network has no key of the old name."""
        own = set(self.state_dict(keep_vars=True))
        for key in [k for k in state_dict if k.startswith(prefix) and k[len(prefix):] not in own]:
            rest = key[len(prefix):]
            for pattern, repl in LEGACY_KEYS:
                new = re.sub(pattern, repl, rest)
                if new != rest and new in own:
                    state_dict[prefix + new] = state_dict.pop(key)
                    break

    def _refuse_other_shapes(self, state_dict: dict, prefix: str, *args: Any) -> None:
        """Refuse a state dict whose tensors have other shapes than this network's (saved from other widths, channels
        or classes, or another variant) with one line that says so and names the widths, before torch lists every
        such tensor."""
        where = first_shape_mismatch(self.state_dict(keep_vars=True), state_dict, prefix)
        if where:
            raise RuntimeError(
                f"Error(s) in loading state_dict for {type(self).__name__}: the checkpoint does not fit this network "
                f"(widths {list(self.encoder.out_channels)}): {where}. It was saved from a network of other widths, "
                "input channels or classes, or another variant: build the one it was trained with (--channels; a "
                "bundle reads the widths from the training_options.json beside --ckpt_path, in an export beside "
                "--ckpt_file unless --ckpt_path is given)"
            )

    @torch.jit.export
    def forward_with_attention(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """``forward`` and the attention coefficients of the network's gated skips, top level first, each
        ``(B, gates, *skip_spatial)``: the family's common interface for pictures of where a network looks. Here an
        empty list (no gates); ``ComposableUNet`` returns its gates' maps."""
        out, maps, _ = self._run(x)
        return out, maps

    def _check_input(self, x: torch.Tensor) -> None:
        if torch.jit.is_tracing():  # shapes are constants in a trace; ONNX runtime checks its inputs itself
            return
        if x.dim() != self.spatial_dims + 2:
            raise ValueError(
                "expected a " + str(self.spatial_dims + 2) + "D input (batch, channels, "
                + str(self.spatial_dims) + " spatial dims), got shape " + str(list(x.shape))
            )
        if x.shape[1] != self.in_channels:
            raise ValueError(
                "expected " + str(self.in_channels) + " input channels, received " + str(x.shape[1])
                + " (input shape " + str(list(x.shape)) + ")"
            )
        sizes = list(x.shape[2:])
        bad = False
        padded: list[int] = []
        for s in sizes:
            padded.append(((s + self.divisor - 1) // self.divisor) * self.divisor)
            if s % self.divisor != 0:
                bad = True
        if bad:
            raise ValueError(
                "spatial size " + str(sizes) + " is not divisible by " + str(self.divisor)
                + " (the product of strides); pad the input to " + str(padded)
                + ", e.g. with monai.transforms.DivisiblePad(k=" + str(self.divisor) + ")"
            )
