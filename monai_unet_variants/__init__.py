"""monai-unet-variants: the classic U-Net family as first-class MONAI networks.

Importing this package imports only torch and MONAI; optional features load lazily.
"""

from .networks import (
    AttentionR2UNet,
    AttentionUNet,
    ComposableUNet,
    DenseUNet,
    MultiResUNet,
    PlainUNet,
    R2UNet,
    ResUNet,
)
from .registry import create_network, list_networks, list_presets, register_network

__version__ = "0.1.0"

__all__ = [
    "AttentionR2UNet",
    "AttentionUNet",
    "ComposableUNet",
    "DenseUNet",
    "MultiResUNet",
    "PlainUNet",
    "R2UNet",
    "ResUNet",
    "__version__",
    "create_network",
    "list_networks",
    "list_presets",
    "register_network",
]
