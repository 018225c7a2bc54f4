"""Building blocks shared by every network: each is written once and composed by the networks."""

from .attention import ATTENTION_MODES, AdditiveAttentionGate
from .conv import ConvStack
from .dense import FullyDenseBlock, FullyDenseUnit
from .heads import HEADS, MultiScaleFusionHead, OutputHead
from .layers import ChannelShift, conv_unit, make_norm, norm_act
from .multires import MultiResBlock, ResPath, multires_widths
from .recurrent import RecurrentConv, RecurrentResidualUnit
from .residual import PreActResidualUnit
from .sampling import UPSAMPLE_MODES, make_upsample
from .skip import SkipPath

__all__ = [
    "ATTENTION_MODES",
    "HEADS",
    "UPSAMPLE_MODES",
    "AdditiveAttentionGate",
    "ChannelShift",
    "ConvStack",
    "FullyDenseBlock",
    "FullyDenseUnit",
    "MultiResBlock",
    "MultiScaleFusionHead",
    "OutputHead",
    "PreActResidualUnit",
    "RecurrentConv",
    "RecurrentResidualUnit",
    "ResPath",
    "SkipPath",
    "conv_unit",
    "make_norm",
    "make_upsample",
    "multires_widths",
    "norm_act",
]
