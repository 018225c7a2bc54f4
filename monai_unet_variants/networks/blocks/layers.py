"""Small layer helpers shared by every block: argument checks and conv/norm/act units.

Everything is created through MONAI's factories (``Convolution``, ``ADN``, ``get_norm_layer``,
``get_act_layer``), so one code path serves 2D and 3D and ``act``/``norm`` may be written in a
bundle's JSON as a name or a ``(name, {kwargs})`` pair.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

import torch
from monai.networks.blocks import ADN, Convolution
from monai.networks.layers.utils import get_act_layer, get_norm_layer
from monai.utils import ensure_tuple_rep
from torch import nn

__all__ = [
    "BLOCKS",
    "LayerArg",
    "ChannelShift",
    "NarrowConv2d",
    "NarrowConv3d",
    "convolution",
    "narrow_channels_last",
    "prefers_channels_last",
    "conv_unit",
    "norm_act",
    "make_norm",
    "check_layer_args",
    "check_spatial_dims",
    "register_block",
]

LayerArg = str | tuple | None

#: Encoder/decoder blocks by name, filled by ``@register_block(name)`` beside each block class. Each takes
#: ``(spatial_dims, in_channels, out_channels, stride, kernel_size, act, norm, dropout, bias, is_stem, **block_args)``
#: and has an ``out_channels`` attribute; ``ComposableUNet(encoder_block=name)`` and ``make_block`` build them.
BLOCKS: dict[str, type[nn.Module]] = {}


def register_block(name: str) -> Any:
    """Class decorator: make a block available to the skeleton under ``name`` (a name is taken once).

    Examples::

        >>> @register_block("identity_demo")
        ... class IdentityBlock(nn.Identity):
        ...     def __init__(self, spatial_dims, in_channels, out_channels, **kwargs):
        ...         super().__init__()
        ...         self.out_channels = in_channels
        >>> BLOCKS.pop("identity_demo").__name__
        'IdentityBlock'
    """

    def add(cls: type[nn.Module]) -> type[nn.Module]:
        if name in BLOCKS and BLOCKS[name] is not cls:
            raise ValueError(f"block name {name!r} is taken by {BLOCKS[name].__name__}")
        BLOCKS[name] = cls
        return cls

    return add


def check_spatial_dims(spatial_dims: int) -> None:
    """Raise ``ValueError`` unless ``spatial_dims`` is 2 or 3."""
    if spatial_dims not in (2, 3):
        raise ValueError(f"spatial_dims must be 2 or 3 (got {spatial_dims!r}); use 2 for slices, 3 for volumes.")


def check_layer_args(spatial_dims: int, act: LayerArg, norm: LayerArg, dropout: float | None = None) -> None:
    """Build ``act`` and ``norm`` once so that a typo fails at construction with a fix-it message."""
    if act is not None:
        try:
            get_act_layer(act)
        except (KeyError, TypeError, ValueError) as err:
            raise ValueError(
                f"unknown activation act={act!r}: use a MONAI activation name such as 'relu', 'prelu', "
                f"'leakyrelu' or a pair like ('leakyrelu', {{'negative_slope': 0.1}}) ({err})."
            ) from err
    if norm is not None:
        try:
            get_norm_layer(norm, spatial_dims=spatial_dims, channels=8)
        except (KeyError, TypeError, ValueError) as err:
            raise ValueError(
                f"unknown normalisation norm={norm!r}: use a MONAI norm name such as 'batch' or 'instance', "
                f"or a pair like ('group', {{'num_groups': 8}}) ({err})."
            ) from err
    if dropout is not None and not 0.0 <= float(dropout) < 1.0:
        raise ValueError(f"dropout must be a probability in [0, 1) (got {dropout!r}).")


class ChannelShift(nn.Module):
    """A learnable per-channel offset: the ``beta`` of a normalisation built without ``gamma``.

    Keras' ``BatchNormalization(scale=False)`` learns a shift but no scale; a normalisation with
    ``affine=False`` followed by this module reproduces it (used by MultiResUNet's reference preset).
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.bias.view([1, -1] + [1] * (x.dim() - 2)).to(x.dtype)


_NARROW = ContextVar("narrow_channels_last", default=True)


@contextmanager
def narrow_channels_last(enabled: bool = True) -> Iterator[None]:
    """Within the ``with`` block, networks are built with narrow convolutions as ``NarrowConv2d``/``NarrowConv3d``
    (``enabled``, the default everywhere else: channels-last on a CPU where ``prefers_channels_last`` says it is
    faster) or as plain ``nn.Conv2d``/``nn.Conv3d`` (``False``). Parameters, state-dict keys and results are the
    same either way; the switch is for measuring (the benchmark's ``no_narrow``) and for comparing layouts. It holds
    for the current thread (a context variable), not process-wide.

    Examples::

        >>> from monai_unet_variants import create_network
        >>> with narrow_channels_last(False):
        ...     net = create_network("unet", spatial_dims=3, in_channels=1, out_channels=2, channels=(4, 8))
        >>> any(isinstance(m, (NarrowConv2d, NarrowConv3d)) for m in net.modules())
        False
    """
    token = _NARROW.set(bool(enabled))
    try:
        yield
    finally:
        _NARROW.reset(token)


def prefers_channels_last(
    spatial_dims: int,
    in_channels: int,
    out_channels: int,
    kernel_size: Sequence[int] | int = 3,
    stride: Sequence[int] | int = 1,
) -> bool:
    """Whether a convolution this narrow runs faster in channels-last layout on a CPU (always ``False`` inside
    ``narrow_channels_last(False)``).

    oneDNN computes a channels-first convolution in a blocked layout that pads channels to 8 or 16; for
    narrow convolutions most of that work is padding. Measured here (2-core x86 CPU, PyTorch 2.13, batch 2,
    forward+backward including the two layout copies), channels-last takes 0.1-0.7x the time for 3D
    convolutions with 2-16 input and at most 16 output channels at 64^3 (1-channel inputs: no change; wider:
    1.0-1.4x slower) and for 2D ones with 2-8 channels in and out at 256^2 (wider: up to 2.7x slower).

    A convolution whose stride exceeds its kernel (the strided 1x1 projections of residual shortcuts) stays
    channels-first: oneDNN's channels-last 1x1 weight gradient with a stride writes past its workspace when the
    input has fewer channels than its block (uxlfoundation/oneDNN#6035; seen here with PyTorch 2.11 and 2.13 as
    heap corruption and segmentation faults from 3 threads on, in 2D; reported elsewhere as silently wrong
    weight gradients).
    """
    if not _NARROW.get():
        return False
    kernel, strides = ensure_tuple_rep(kernel_size, spatial_dims), ensure_tuple_rep(stride, spatial_dims)
    if any(s > k for s, k in zip(strides, kernel, strict=True)):
        return False
    if spatial_dims == 3:
        return 2 <= in_channels <= 16 and out_channels <= 16 and in_channels * out_channels < 256
    return 2 <= in_channels <= 8 and out_channels <= 8


def _channels_last(x: torch.Tensor) -> torch.Tensor:
    """``x`` copied to the channels-last layout of its rank (2D or 3D)."""
    return x.contiguous(memory_format=torch.channels_last_3d if x.dim() == 5 else torch.channels_last)


class _ToChannelsLast(torch.autograd.Function):
    """A channels-first tensor copied to channels-last layout, whose gradient is copied back to channels-first.

    A plain ``x.contiguous(memory_format=...)`` hands the convolution's channels-last input gradient on as it is;
    the layers before (activation, normalisation, concatenation) then mix layouts in their backward, which runs
    several times slower (measured: ReLU's backward x5.6 on a 2 x 8 x 64^3 tensor).
    """

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        return _channels_last(x)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        return grad.contiguous()


class _ChannelsLastOnCpu:
    """``forward`` of ``NarrowConv2d``/``NarrowConv3d``: a channels-first CPU tensor is computed in channels-last
    layout and the result (and the input's gradient) returned channels-first; other inputs (GPU, a layout chosen
    by the caller) and traced calls (ONNX has no channels-last-3d copy) run as in the plain convolution."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type == "cpu" and x.is_contiguous() and not torch.jit.is_tracing():
            if torch.jit.is_scripting():  # TorchScript cannot call an autograd.Function
                x = _channels_last(x)
            else:
                x = _ToChannelsLast.apply(x)
            return self._conv_forward(x, self.weight, self.bias).contiguous()
        return self._conv_forward(x, self.weight, self.bias)


class NarrowConv2d(_ChannelsLastOnCpu, nn.Conv2d):
    """``nn.Conv2d`` computed in channels-last layout on a CPU (see ``prefers_channels_last``): same parameters,
    state-dict keys and results as ``nn.Conv2d``, and the input's layout on the way out."""


class NarrowConv3d(_ChannelsLastOnCpu, nn.Conv3d):
    """``nn.Conv3d`` computed in channels-last layout on a CPU (see ``prefers_channels_last``): same parameters,
    state-dict keys and results as ``nn.Conv3d``, and the input's layout on the way out."""


def convolution(spatial_dims: int, in_channels: int, out_channels: int, **kwargs: Any) -> Convolution:
    """MONAI's ``Convolution`` (same arguments, same state-dict keys) whose convolution runs in channels-last
    layout on a CPU when ``prefers_channels_last`` says that is faster for its widths."""
    unit = Convolution(spatial_dims, in_channels, out_channels, **kwargs)
    conv = unit.conv
    if type(conv) in (nn.Conv2d, nn.Conv3d) and conv.groups == 1 and prefers_channels_last(
        spatial_dims, in_channels, out_channels, conv.kernel_size, conv.stride
    ):
        narrow = nn.utils.skip_init(
            NarrowConv3d if spatial_dims == 3 else NarrowConv2d, in_channels, out_channels, conv.kernel_size,
            stride=conv.stride, padding=conv.padding, dilation=conv.dilation, bias=conv.bias is not None,
            padding_mode=conv.padding_mode,
        )
        narrow.weight, narrow.bias = conv.weight, conv.bias  # the initialised parameters, untouched
        unit.conv = narrow
    return unit


def make_norm(spatial_dims: int, channels: int, norm: LayerArg, scale: bool = True) -> nn.Module:
    """A normalisation layer; with ``scale=False`` its affine part is a shift only (see ``ChannelShift``)."""
    if norm is None:
        return nn.Identity()
    if scale:
        return get_norm_layer(norm, spatial_dims=spatial_dims, channels=channels)
    name, args = (norm[0], dict(norm[1])) if isinstance(norm, tuple) else (norm, {})
    args["affine"] = False
    return nn.Sequential(get_norm_layer((name, args), spatial_dims=spatial_dims, channels=channels), ChannelShift(channels))


def conv_unit(
    spatial_dims: int,
    in_channels: int,
    out_channels: int,
    kernel_size: int = 3,
    stride: int = 1,
    act: LayerArg = "relu",
    norm: LayerArg = "batch",
    dropout: float | None = None,
    bias: bool = True,
    norm_scale: bool = True,
) -> nn.Module:
    """Convolution followed by normalisation, dropout and activation (any of them may be ``None``).

    ``norm_scale=False`` replaces the normalisation's affine part with a shift (Keras ``scale=False``).
    """
    if norm_scale or norm is None:
        return convolution(
            spatial_dims,
            in_channels,
            out_channels,
            strides=stride,
            kernel_size=kernel_size,
            act=act,
            norm=norm,
            dropout=dropout,
            bias=bias,
            adn_ordering="NDA",
        )
    conv = convolution(spatial_dims, in_channels, out_channels, strides=stride, kernel_size=kernel_size, bias=bias, conv_only=True)
    layers: list[nn.Module] = [conv, make_norm(spatial_dims, out_channels, norm, scale=False)]
    if dropout:
        layers.append(nn.Dropout(float(dropout)))
    if act is not None:
        layers.append(get_act_layer(act))
    return nn.Sequential(*layers)


def norm_act(spatial_dims: int, channels: int, act: LayerArg, norm: LayerArg, dropout: float | None = None) -> nn.Module:
    """Normalisation, dropout and activation without a convolution (a pre-activation)."""
    if act is None and norm is None and not dropout:
        return nn.Identity()
    return ADN(ordering="NDA", in_channels=channels, act=act, norm=norm, norm_dim=spatial_dims, dropout=dropout, dropout_dim=spatial_dims)
