"""Transforms the bundles need beyond MONAI's own."""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import Any

from monai.transforms import Spacingd

__all__ = ["MetaSafeSpacingd"]


class MetaSafeSpacingd(Spacingd):
    """``Spacingd`` that leaves entries named ``<key>_...`` alone unless they are metadata dictionaries.

    MONAI 1.6 updates every entry whose name starts with ``"<key>_"`` after resampling a NIfTI image, and
    MONAI Label puts the image's path (a string) under ``image_path``: plain ``Spacingd`` then fails with
    ``'str' object has no attribute 'update'``. This transform sets such entries aside for the call;
    everything else, including ``inverse``, is ``Spacingd``'s.
    """

    def __call__(self, data: Mapping[Hashable, Any], lazy: bool | None = None) -> dict:
        d = dict(data)
        prefixes = tuple(f"{key}_" for key in self.keys)
        aside = {k: d.pop(k) for k in list(d) if isinstance(k, str) and k.startswith(prefixes)
                 and not isinstance(d[k], Mapping)}
        out = dict(super().__call__(d, lazy=lazy))
        out.update(aside)
        return out
