"""The U-Net family as MONAI networks (2D and 3D), all compositions of one skeleton.

Use full paths in bundles, e.g. ``"_target_": "monai_unet_variants.networks.AttentionUNet"``.
"""

from .attention_unet import AttentionUNet
from .composable import BLOCKS, ComposableUNet
from .denseunet import DenseUNet
from .multiresunet import MultiResUNet
from .r2unet import AttentionR2UNet, R2UNet
from .resunet import ResUNet
from .unet import PlainUNet
from .unet3plus import UNet3Plus
from .unetplusplus import UNetPlusPlus

__all__ = [
    "BLOCKS",
    "AttentionR2UNet",
    "AttentionUNet",
    "ComposableUNet",
    "DenseUNet",
    "MultiResUNet",
    "PlainUNet",
    "R2UNet",
    "ResUNet",
    "UNet3Plus",
    "UNetPlusPlus",
]
