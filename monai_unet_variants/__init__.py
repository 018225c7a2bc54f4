"""monai-unet-variants: the classic U-Net family as first-class MONAI networks.

Importing this package imports only torch and MONAI; optional features load lazily.
"""

from . import networks as _networks
from .registry import create_network, list_networks, list_presets, register_network

__version__ = "0.1.0"

# every network class under its own name (the networks package finds its variants itself)
_NETWORK_NAMES = [n for n in _networks.__all__ if n != "BLOCKS"]
globals().update({n: getattr(_networks, n) for n in _NETWORK_NAMES})

_LAZY_SUBMODULES = ("acceleration", "bundle", "data", "options", "runtime")


def __getattr__(name: str):
    """Import the heavier submodules (``bundle``, ``data``) on first use, so ``import monai_unet_variants``
    stays light and bundle configs can write ``monai_unet_variants.bundle.find_bundle_root()``."""
    if name in _LAZY_SUBMODULES:
        import importlib

        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    *_NETWORK_NAMES,
    "__version__",
    "create_network",
    "list_networks",
    "list_presets",
    "register_network",
]
