"""The U-Net family as MONAI networks (2D and 3D), all compositions of one skeleton.

Use full paths in bundles, e.g. ``"_target_": "monai_unet_variants.networks.AttentionUNet"``.

A variant is one module of this package: its class, registered with ``@register_network(name)``, is imported
here and exported under its own name, whatever the module is called (modules starting with ``_``, ``base`` and
``blocks`` are the skeleton, not variants).
"""

import importlib
import pkgutil

from ..registry import NETWORKS
from .composable import BLOCKS, ComposableUNet

for _module in pkgutil.iter_modules(__path__):
    if not _module.name.startswith("_") and _module.name not in ("base", "blocks"):
        importlib.import_module(f"{__name__}.{_module.name}")

_classes = {cls.__name__: cls for cls in NETWORKS.values() if cls.__module__.startswith(__name__ + ".")}
globals().update(_classes)

__all__ = ["BLOCKS", "ComposableUNet", *sorted(set(_classes) - {"ComposableUNet"})]
