"""Transforms the bundles need beyond MONAI's own."""

from __future__ import annotations

import math
import threading
from collections.abc import Hashable, Mapping
from typing import Any

import torch
from monai.config import KeysCollection
from monai.data import get_track_meta
from monai.networks.layers import AffineTransform
from monai.networks.utils import to_norm_affine
from monai.transforms import (
    AsDiscrete,
    AsDiscreted,
    Compose,
    EnsureChannelFirst,
    Invertd,
    LoadImage,
    MapTransform,
    Spacingd,
    SpatialPadd,
)
from monai.utils import convert_data_type, convert_to_dst_type, convert_to_tensor, ensure_tuple

from ..acceleration import say_padding
from .checks import AFFINE_TOLERANCE_MM, _grid_distance_mm, in_axis_order, nifti_reader

__all__ = ["EVAL_SPACES", "InPlaceSoftmaxd", "MetaSafeSpacingd", "OriginalGridd", "PatchPadd", "SlabAffineTransform",
           "SlabAsDiscreted", "channel_argmax", "eval_space", "slab_resampling"]

#: the most bytes of sampling grid that ``SlabAffineTransform`` builds at once
SLAB_GRID_BYTES = 64 * 2**20
#: the most bytes of maxima and their indices that ``channel_argmax`` holds at once (12 per output voxel)
SLAB_ARGMAX_BYTES = 64 * 2**20


class SlabAffineTransform(AffineTransform):
    """MONAI's ``AffineTransform`` (the resampler behind ``Spacing``, ``SpatialResample`` and their inverses) that
    builds its sampling grid a slab of output slices at a time.

    ``torch.nn.functional.affine_grid`` makes the grid of the whole output at once: 12 bytes per output voxel, and 16
    more of homogeneous coordinates while it is made. A CT of 512 x 512 x 400 at 0.8 x 0.8 x 2.5 mm resampled to 1 mm
    is 168 M voxels: 4.6 GB of transient grid for a 0.67 GB image, and as much again when ``Invertd`` brings the
    prediction back to the scan's grid. Here a 3D output whose grid would exceed ``slab_grid_bytes`` is resampled a
    slab of its first spatial axis at a time, into one output tensor: the transform normalized as MONAI's ``forward``
    does (``to_norm_affine``, the axes reversed), each slab's grid the rows of the whole grid that ``affine_grid``
    makes (the same base coordinates and product: bit for bit, so also a nearest-neighbour tie breaks the same way),
    sampled by ``grid_sample`` as MONAI does. Anything else (2D, a batch of transforms, a smaller output) is MONAI's
    own call.

    Examples::

        >>> resample = SlabAffineTransform(normalized=False, reverse_indexing=True)
        >>> image = torch.rand(1, 1, 20, 24, 28)
        >>> theta = torch.diag(torch.tensor([0.5, 0.5, 0.5, 1.0]))
        >>> resample(image, theta, spatial_size=(40, 48, 56)).shape
        torch.Size([1, 1, 40, 48, 56])
    """

    slab_grid_bytes = SLAB_GRID_BYTES

    def forward(self, src: torch.Tensor, theta: torch.Tensor, spatial_size: Any = None) -> torch.Tensor:
        size = spatial_size if spatial_size is not None else self.spatial_size
        size = tuple(src.shape[2:]) if size is None else tuple(int(n) for n in ensure_tuple(size))
        square = isinstance(theta, torch.Tensor) and tuple(theta.shape[-2:]) in ((3, 4), (4, 4))
        plain = square and theta.numel() in (12, 16) and torch.is_floating_point(theta) and theta.dtype == src.dtype
        rows = max(1, self.slab_grid_bytes // (28 * max(1, math.prod(size[1:]))))  # 28 bytes of grid per voxel
        if self.normalized or not plain or src.ndim != 5 or src.shape[0] != 1 or len(size) != 3 or rows >= size[0]:
            return super().forward(src, theta, spatial_size)
        theta = theta.reshape(theta.shape[-2:])
        if theta.shape[0] == 3:
            theta = torch.cat([theta, torch.tensor([[0, 0, 0, 1]]).to(theta)])
        theta = to_norm_affine(affine=theta[None], src_size=src.shape[2:], dst_size=size,
                               align_corners=self.align_corners, zero_centered=self.zero_centered)
        if self.reverse_indexing:
            rev = torch.as_tensor([2, 1, 0], device=theta.device)
            theta[:, :3] = theta[:, rev]
            theta[:, :, :3] = theta[:, :, rev]
        weights = theta[:, :3].transpose(1, 2)  # affine_grid's product: base coordinates (x, y, z, 1) times this
        z, y, x = (self._steps(n, theta) for n in size)
        src = src.contiguous()
        out = torch.empty((*src.shape[:2], *size), dtype=src.dtype, device=src.device)
        for start in range(0, size[0], rows):
            stop = min(size[0], start + rows)
            base = torch.empty((1, stop - start, *size[1:], 4), dtype=theta.dtype, device=theta.device)
            base[..., 0] = x
            base[..., 1] = y[:, None]
            base[..., 2] = z[start:stop, None, None]
            base[..., 3] = 1
            grid = base.view(1, -1, 4).bmm(weights).view(1, stop - start, *size[1:], 3)
            out[:, :, start:stop] = torch.nn.functional.grid_sample(
                src, grid, mode=self.mode, padding_mode=self.padding_mode, align_corners=self.align_corners)
        return out

    def _steps(self, count: int, like: torch.Tensor) -> torch.Tensor:
        """``affine_grid``'s base coordinates along an axis of ``count`` voxels (ATen's ``linspace_from_neg_one``)."""
        if count <= 1:
            return torch.zeros((), dtype=like.dtype, device=like.device)
        steps = torch.linspace(-1, 1, count, dtype=like.dtype, device=like.device)
        return steps if self.align_corners else steps * (count - 1) / count


_installed = threading.Lock()


def slab_resampling() -> None:
    """Make MONAI's spatial resampling (``Spacing``, ``SpatialResample``, ``ResampleToMatch`` and their inverses, in
    this process) use ``SlabAffineTransform``: the same values, without a whole-volume sampling grid. Called by
    ``MetaSafeSpacingd``; idempotent."""
    from monai.transforms.spatial import functional

    with _installed:
        if functional.AffineTransform is not SlabAffineTransform:
            functional.AffineTransform = SlabAffineTransform


def channel_argmax(scores: torch.Tensor, dim: int = 0, keepdim: bool = True, dtype: torch.dtype = torch.int64,
                   slab_bytes: int = SLAB_ARGMAX_BYTES) -> torch.Tensor:
    """``torch.argmax(scores, dim, keepdim)`` in ``dtype``: the same index of each maximum (the first of equal maxima,
    a NaN's where there is one), from ``torch.max``'s indices, a slab of another axis at a time.

    On a CPU, torch's ``argmax`` over a short leading dimension takes a slow path: 19 s for the 3 class scores of a
    512 x 512 x 400 CT (torch 2.13, 2 cores), 0.1 s for a training step's 2 x 3 x 64^3; ``max`` gives the same
    indices 15-20 times faster. The slabs (at most ``slab_bytes`` of maxima and int64 indices) are written straight
    into the output, so no int64 map of the volume is made on the way to a float label map. Integer indices are
    exact in ``dtype`` as long as it holds the number of classes (float16: up to 2048).

    Examples::

        >>> scores = torch.tensor([[0.1, 0.7, 0.2], [0.5, 0.5, 0.0]]).T  # classes along dim 0, two voxels
        >>> channel_argmax(scores, dtype=torch.float32)
        tensor([[1., 0.]])
    """
    dim = dim % max(1, scores.ndim)
    shape = list(scores.shape)
    if scores.ndim == 0 or shape[dim] == 0:
        return torch.argmax(scores, dim, keepdim).to(dtype)  # torch's own answer (or error) for the odd cases
    shape[dim] = 1
    out = torch.empty(shape, dtype=dtype, device=scores.device)
    axis = max((a for a in range(scores.ndim) if a != dim), key=lambda a: shape[a], default=None)
    if axis is None or shape[axis] < 2:
        out.copy_(torch.max(scores, dim, keepdim=True).indices)
    else:
        step = max(1, slab_bytes // (12 * max(1, out.numel() // shape[axis])))
        for start in range(0, shape[axis], step):
            n = min(step, shape[axis] - start)
            out.narrow(axis, start, n).copy_(torch.max(scores.narrow(axis, start, n), dim, keepdim=True).indices)
    return out if keepdim else out.squeeze(dim)


class _SlabAsDiscrete(AsDiscrete):
    """``AsDiscrete`` whose argmax is ``channel_argmax``, made in the output's dtype where that holds the classes."""

    def __call__(self, img: Any, argmax: bool | None = None, to_onehot: int | None = None,
                 threshold: float | None = None, rounding: str | None = None) -> Any:
        if not (self.argmax if argmax is None else argmax):
            return super().__call__(img, False, to_onehot, threshold, rounding)
        img = convert_to_tensor(img, track_meta=get_track_meta())
        scores, *_ = convert_data_type(img, torch.Tensor)
        dtype = self.kwargs.get("dtype", torch.float)
        dim = self.kwargs.get("dim", 0)
        exact = isinstance(dtype, torch.dtype) and dtype.is_floating_point \
            and scores.shape[dim] <= 2 / torch.finfo(dtype).eps
        label = channel_argmax(scores, dim, self.kwargs.get("keepdim", True), dtype if exact else torch.int64)
        label, *_ = convert_to_dst_type(label, img, dtype=label.dtype)  # img's metadata, as AsDiscrete's output
        return super().__call__(label, False, to_onehot, threshold, rounding)


class SlabAsDiscreted(AsDiscreted):
    """``AsDiscreted`` (same arguments, same values and metadata) whose argmax is ``channel_argmax``: 15-20 times
    faster on a CPU, and no int64 label map of the volume beside the float one (+0.4 GB instead of +1.3 GB for a
    512 x 512 x 400 CT). For validation, evaluation and inference's argmax of the class scores.

    Examples::

        >>> scores = torch.tensor([[0.1, 0.7, 0.2], [0.5, 0.5, 0.0]]).T.reshape(3, 2, 1)
        >>> SlabAsDiscreted("pred", argmax=True)({"pred": scores})["pred"].flatten().tolist()
        [1.0, 0.0]
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.converter = _SlabAsDiscrete(**self.converter.kwargs)


class InPlaceSoftmaxd(MapTransform):
    """Softmax over the channels of each key's tensor, in place: ``Activationsd(softmax=True)`` without a second
    copy of the class scores (3 classes of a 512 x 512 x 400 CT at 1 mm: 2 GB each, the original kept alive by the
    engine's batch output while the postprocessing runs). Equal to ``torch.softmax`` but for float rounding.

    Examples::

        >>> d = InPlaceSoftmaxd("pred")({"pred": torch.tensor([[0.0, 2.0], [0.0, 0.0]])})
        >>> d["pred"]
        tensor([[0.5000, 0.8808],
                [0.5000, 0.1192]])
    """

    def __call__(self, data: Mapping[Hashable, Any]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            scores = d[key]
            if scores.dtype not in (torch.float32, torch.float64) or scores.requires_grad:  # as Activationsd does
                d[key] = torch.softmax(scores, dim=0)  # (float16 is computed in float32 there)
                continue
            with torch.no_grad():
                scores.sub_(torch.amax(scores, dim=0, keepdim=True)).exp_()  # not max(): its int64 indices
                scores.div_(scores.sum(dim=0, keepdim=True))
        return d


class MetaSafeSpacingd(Spacingd):
    """``Spacingd`` that leaves entries named ``<key>_...`` alone unless they are metadata dictionaries.

    MONAI 1.6 updates every entry whose name starts with ``"<key>_"`` after resampling a NIfTI image, and
    MONAI Label puts the image's path (a string) under ``image_path``: plain ``Spacingd`` then fails with
    ``'str' object has no attribute 'update'``. This transform sets such entries aside for the call;
    everything else, including ``inverse``, is ``Spacingd``'s. Its resampling and that of its inverse use no
    whole-volume sampling grid (``slab_resampling``).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        slab_resampling()

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
