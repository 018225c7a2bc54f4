"""A registry of the networks: ``create_network(name, preset=None, **kwargs)`` and ``list_networks(pattern)``.

Names: ``unet``, ``resunet``, ``denseunet``, ``multiresunet``, ``r2unet``, ``attention_unet``,
``attention_r2unet``, ``unetplusplus`` (and ``composable`` for free composition); each class registers itself
with ``@register_network(name)`` in its own file. Keyword overrides equal to ``None`` are
dropped, so a CLI or bundle can pass unset options through.

Examples::

    >>> net = create_network("attention_unet", spatial_dims=3, in_channels=1, out_channels=3)
    >>> ref = create_network("r2unet", preset="reference")            # LeeJunHyun's R2U_Net, 2D
    >>> ref3d = create_network("unet", preset="reference", spatial_dims=3)
    >>> list_networks("*unet*")[:3]
    ['attention_r2unet', 'attention_unet', 'denseunet']
"""

from __future__ import annotations

import difflib
import fnmatch
from typing import Any, Optional

from torch import nn

__all__ = ["NETWORKS", "create_network", "list_networks", "list_presets", "register_network"]

#: every registered network by name; filled by ``@register_network(name)`` next to each class
NETWORKS: dict[str, type[nn.Module]] = {}


def register_network(name: str, cls: Optional[type[nn.Module]] = None) -> Any:
    """Register a network class under ``name`` (lower case): ``@register_network("unetplusplus")`` above the class
    (as timm's ``register_model``), or ``register_network(name, cls)``. Raises ``ValueError`` if the name is taken
    by another class."""

    def add(klass: type[nn.Module]) -> type[nn.Module]:
        key = name.lower()
        if key in NETWORKS and NETWORKS[key] is not klass:
            raise ValueError(f"network name {name!r} is already registered to {NETWORKS[key].__name__}.")
        NETWORKS[key] = klass
        return klass

    return add if cls is None else add(cls)


def _registered() -> dict[str, type[nn.Module]]:
    """``NETWORKS`` after the package's networks have registered themselves."""
    from . import networks  # noqa: F401  (importing the networks runs their decorators)

    return NETWORKS


def list_networks(pattern: str = "*") -> list[str]:
    """Registered names matching a shell-style wildcard (``"*attention*"``), sorted."""
    return sorted(n for n in _registered() if fnmatch.fnmatch(n, pattern.lower()))


def _lookup(name: str) -> type[nn.Module]:
    key = name.lower().replace("-", "_")
    if key not in _registered():
        close = difflib.get_close_matches(key, NETWORKS, n=3, cutoff=0.3)
        hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        raise KeyError(f"unknown network {name!r}{hint} Available: {', '.join(sorted(NETWORKS))}.")
    return NETWORKS[key]


def list_presets(name: str) -> list[str]:
    """Preset names of a network (e.g. ``["reference"]``)."""
    return sorted(getattr(_lookup(name), "PRESETS", {}))


def create_network(name: str, preset: Optional[str] = None, **kwargs: Any) -> nn.Module:
    """Build a registered network by name, optionally from a named preset, with keyword overrides.

    Args:
        name: a name of ``list_networks()``; case and ``-``/``_`` are forgiven.
        preset: ``None`` for the class defaults, or a preset such as ``"reference"`` (see ``list_presets``).
        kwargs: constructor arguments; ``None`` values are dropped.

    Raises:
        KeyError: unknown name (the message lists the closest names) or unknown preset.
    """
    cls = _lookup(name)
    overrides = {k: v for k, v in kwargs.items() if v is not None}
    if preset is None:
        return cls(**overrides)
    if not hasattr(cls, "from_preset"):
        raise KeyError(f"network {name!r} has no presets.")
    return cls.from_preset(preset, **overrides)
