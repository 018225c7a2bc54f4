"""Shared helpers: tiny configurations of every registered network, in 2D and 3D."""

from __future__ import annotations

import pytest
import torch

from monai_unet_variants import create_network, list_networks

#: every registered network; a new registration is tested with no new test code
NETWORK_NAMES = list_networks()
DIMS = (2, 3)

#: tiny widths per network (DenseUNet needs multiples of 8 for k = f/8)
TINY_CHANNELS = {"denseunet": (8, 16, 32)}
DEFAULT_TINY = (4, 8, 16)


def tiny_kwargs(name: str, spatial_dims: int, **overrides) -> dict:
    kwargs = dict(
        spatial_dims=spatial_dims,
        in_channels=2,
        out_channels=3,
        channels=TINY_CHANNELS.get(name, DEFAULT_TINY),
        strides=(2, 2),
    )
    kwargs.update(overrides)
    return kwargs


def tiny_net(name: str, spatial_dims: int, **overrides) -> torch.nn.Module:
    torch.manual_seed(0)
    return create_network(name, **tiny_kwargs(name, spatial_dims, **overrides))


def tiny_input(spatial_dims: int, batch: int = 2, channels: int = 2, size: int = 16) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    return torch.randn((batch, channels) + (size,) * spatial_dims, generator=g)


@pytest.fixture(params=NETWORK_NAMES)
def name(request) -> str:
    return request.param


@pytest.fixture(params=DIMS, ids=lambda d: f"{d}d")
def dims(request) -> int:
    return request.param
