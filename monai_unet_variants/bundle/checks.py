"""Input checks: every file of a datalist before any work starts, and every loaded case (image and label together),
with messages that name the file and the problem."""

from __future__ import annotations

import os
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform

__all__ = ["CheckCased", "check_inputs"]


def _check_file(path: str, role: str) -> None:
    p = Path(path)
    if p.is_dir():
        if not any(f.is_file() for f in p.iterdir()):
            raise ValueError(f"{role} {p} is an empty folder: expected a DICOM series")
        return
    if not p.exists():
        raise FileNotFoundError(f"{role} {p} does not exist")
    if p.stat().st_size == 0:
        raise ValueError(f"{role} {p} is an empty file")
    if p.name.endswith((".nii", ".nii.gz")):
        import nibabel as nib

        try:
            img = nib.load(str(p))
            shape = img.shape
        except Exception as err:  # nibabel raises several types for corrupt headers
            raise ValueError(f"{role} {p} is not a readable NIfTI file: {err}") from err
        if len(shape) < 3 or min(shape[:3]) < 1:
            raise ValueError(f"{role} {p} is not a 3D volume (shape {shape})")


def check_inputs(items: Sequence[Any], keys: Sequence[str] = ("image", "label")) -> list:
    """Check that every file of a datalist exists and has a readable header, before any work starts.

    Raises ``FileNotFoundError`` / ``ValueError`` naming the file. Returns ``items`` unchanged.
    """
    for item in items:
        if isinstance(item, (str, os.PathLike)):
            _check_file(str(item), "image")
            continue
        for key in keys:
            if key in item:
                _check_file(str(item[key]), key)
    return list(items)


class CheckCased(MapTransform):
    """Check a loaded case: finite, non-constant image; label of the image's shape with values in ``labels``.

    Errors name both files and the problem, so a bad case fails at caching time with a readable message.
    """

    def __init__(
        self, keys: KeysCollection = ("image", "label"), labels: Sequence[int] = (0, 1, 2), allow_missing_keys: bool = True
    ):
        super().__init__(keys, allow_missing_keys)
        self.labels = set(int(v) for v in labels)

    @staticmethod
    def _name(x: Any) -> str:
        meta = getattr(x, "meta", {})
        return str(meta.get("filename_or_obj", "<unknown file>"))

    def __call__(self, data: Mapping[Hashable, Any]) -> dict:
        d = dict(data)
        image_key, label_key = self.keys[0], self.keys[1] if len(self.keys) > 1 else None
        image = d[image_key]
        name = self._name(image)
        arr = torch.as_tensor(image)
        if arr.numel() == 0:
            raise ValueError(f"image {name} is empty (shape {tuple(arr.shape)})")
        if not torch.isfinite(arr).all():
            raise ValueError(f"image {name} contains NaN or infinite values")
        if label_key is not None and label_key in d:
            label = d[label_key]
            lname = self._name(label)
            if tuple(label.shape[1:]) != tuple(image.shape[1:]):
                raise ValueError(
                    f"label {lname} has shape {tuple(label.shape[1:])} but image {name} has {tuple(image.shape[1:])}: "
                    "they must be voxel-aligned volumes of the same size"
                )
            values = set(int(v) for v in torch.unique(torch.as_tensor(label)).tolist())
            extra = sorted(values - self.labels)
            if extra:
                raise ValueError(
                    f"label {lname} has values {extra} outside {sorted(self.labels)} "
                    "(0 background, 1 pancreas, 2 tumour): is it the right file, or another task's labels?"
                )
        return d
