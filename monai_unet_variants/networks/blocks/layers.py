"""Small layer helpers shared by every block: argument checks and conv/norm/act units.

Everything is created through MONAI's factories (``Convolution``, ``ADN``, ``get_norm_layer``,
``get_act_layer``), so one code path serves 2D and 3D and ``act``/``norm`` may be written in a
bundle's JSON as a name or a ``(name, {kwargs})`` pair.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.networks.blocks import ADN, Convolution
from monai.networks.layers.utils import get_act_layer, get_norm_layer
from torch import nn

__all__ = [
    "LayerArg",
    "ChannelShift",
    "conv_unit",
    "norm_act",
    "make_norm",
    "check_layer_args",
    "check_spatial_dims",
]

LayerArg = str | tuple | None


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
        return Convolution(
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
    conv = Convolution(spatial_dims, in_channels, out_channels, strides=stride, kernel_size=kernel_size, bias=bias, conv_only=True)
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


def as_tuple(value: int | Sequence[int], n: int) -> tuple[int, ...]:
    """Repeat an int ``n`` times or check a sequence has length ``n``."""
    if isinstance(value, int):
        return (value,) * n
    value = tuple(int(v) for v in value)
    if len(value) != n:
        raise ValueError(f"expected {n} values, got {len(value)}: {value}")
    return value
