"""Transforms the bundles need beyond MONAI's own."""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import Any

from monai.config import KeysCollection
from monai.transforms import Compose, EnsureChannelFirst, Invertd, LoadImage, MapTransform, Spacingd, SpatialPadd

from ..acceleration import say_padding
from .checks import AFFINE_TOLERANCE_MM, _grid_distance_mm, in_axis_order, nifti_reader

__all__ = ["EVAL_SPACES", "MetaSafeSpacingd", "OriginalGridd", "PatchPadd", "eval_space"]


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


class PatchPadd(SpatialPadd):
    """``SpatialPadd`` to the training patch that says so (``acceleration.say_padding``: a warning naming the file
    and both sizes, once per file) when a case is smaller than one patch along an axis; everything else is
    ``SpatialPadd``'s."""

    _said: set[str]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._said = set()

    def __call__(self, data: Mapping[Hashable, Any], lazy: bool | None = None) -> dict:
        first = next(iter(self.key_iterator(dict(data))), None)
        if first is not None:
            say_padding(data[first], self.padder.spatial_size, "training patch", self._said)
        return dict(super().__call__(data, lazy=lazy))


#: where evaluate.json scores: each case's own grid (``original``, as the Decathlon reports) or the preprocessed one
EVAL_SPACES = ("original", "resampled")


class MainOutputd(MapTransform):
    """The main output of a deep-supervision stack: a training step's ``pred`` of a network with
    ``deep_supervision=True`` is, per case, ``(1 + n, C, *spatial)`` (the main output first); the training metrics
    score the main output ``(C, *spatial)``. A plain output (one dimension fewer than the stack, as many as
    ``ref_key``'s) is left as it is, so one config serves every network.

    Args:
        keys: the outputs. Defaults to ``"pred"``.
        ref_key: an item with the plain output's number of dimensions (the label). Defaults to ``"label"``.
    """

    def __init__(self, keys: KeysCollection = "pred", ref_key: str = "label", allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.ref_key = ref_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict:
        d = dict(data)
        plain = d[self.ref_key].ndim
        for key in self.key_iterator(d):
            if d[key].ndim == plain + 1:
                d[key] = d[key][0]
            elif d[key].ndim != plain:
                raise ValueError(f"{key} has shape {tuple(d[key].shape)}: neither an output with the dimensions of "
                                 f"{self.ref_key} {tuple(d[self.ref_key].shape)} nor a deep-supervision stack of them")
        return d


def eval_space(space: Any) -> str:
    """``space`` as typed on the command line (``--eval_space original|resampled``), checked."""
    value = str(space).strip().lower()
    if value not in EVAL_SPACES:
        raise ValueError(f"--eval_space {space!r}: expected one of {', '.join(EVAL_SPACES)}")
    return value


class OriginalGridd(MapTransform):
    """Prediction and label on each case's own voxel grid, where the Medical Segmentation Decathlon scores them.

    ``pred`` (class probabilities on the preprocessed grid) is taken back through the preprocessing ``transform``
    (``Invertd``: the foreground crop, the resampling and the reorientation undone, probabilities interpolated
    linearly) and ``label`` is read again from its own file, untouched by any resampling. With
    ``space="resampled"`` both pass unchanged (the preprocessed 1 mm space that validation during training uses).

    Args:
        transform: the preprocessing that produced ``image`` (``validate#preprocessing``).
        space: ``"original"`` or ``"resampled"`` (as typed). Defaults to ``"original"``.
        keys: the prediction key, then the label key. Defaults to ``("pred", "label")``.
        image_key: the key whose applied operations are undone. Defaults to ``"image"``.

    Raises:
        ValueError: naming the label file when the inverted prediction and the label read back differ in shape or
            lie on different grids.
    """

    def __init__(self, transform: Any, space: str = "original", keys: KeysCollection = ("pred", "label"),
                 image_key: str = "image") -> None:
        super().__init__(keys)
        self.space = eval_space(space)
        self.invert = Invertd(keys=self.keys[0], transform=transform, orig_keys=image_key, nearest_interp=False)
        self.read = Compose([LoadImage(image_only=True, reader=nifti_reader()), EnsureChannelFirst()])

    def __call__(self, data: Mapping[Hashable, Any]) -> dict:
        if self.space == "resampled":
            return dict(data)
        pred_key, label_key = self.keys[0], self.keys[1]
        d = dict(self.invert(data))
        pred = d[pred_key]
        source = str(d[label_key].meta["filename_or_obj"])
        label = in_axis_order(self.read(source), pred)  # a label stored in another orientation: same voxels
        if tuple(label.shape[1:]) != tuple(pred.shape[1:]):
            raise ValueError(f"label {source}: the prediction taken back to the image's grid has shape "
                             f"{tuple(pred.shape[1:])}, the label {tuple(label.shape[1:])}")
        distance = _grid_distance_mm(pred.affine, label.affine, label.shape[1:])
        if distance > AFFINE_TOLERANCE_MM:
            raise ValueError(f"label {source}: the prediction taken back to the image's grid lies up to "
                             f"{distance:.2f} mm from the label's grid")
        d[label_key] = label.to(pred.device)
        return d
