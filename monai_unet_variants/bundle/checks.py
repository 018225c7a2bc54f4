"""Input checks: every file of a datalist before any work starts, and every loaded case (image and label together),
with messages that name the file and the problem."""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Hashable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from queue import Empty, Full, Queue
from threading import Thread
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import CacheDataset, ThreadDataLoader
from monai.transforms import MapTransform

from ..runtime import release_freed_memory
from .dicom import check_dicom_folder, is_dicom_file, series_choice
from .errors import root_cause

__all__ = ["BadCaseError", "CheckCased", "CheckedCacheDataset", "CheckedThreadDataLoader", "SkippedCasesReport",
           "check_inputs", "in_axis_order", "nifti_reader"]

logger = logging.getLogger("monai_unet_variants.bundle")

#: a CT volume in Hounsfield units holds air (-1000 HU) around and inside the body: at least this share of its voxels
#: below ``AIR_HU``; an MR or PET volume, or stored values whose rescale intercept was never applied, hold none
AIR_HU = -500.0
MIN_AIR_FRACTION = 0.001
#: how far (mm) a label's voxel grid may lie from its image's before the pair is refused: far above the rounding of
#: header fields (1e-4 mm), far below a voxel
AFFINE_TOLERANCE_MM = 0.1


def nifti_reader() -> Any:
    """The NIfTI reader of every load (the bundles' ``LoadImaged`` and this package's own reads): a volume stored with
    trailing singleton dimensions (``(x, y, z, 1)``: a 4D file of one time point; ``(x, y, z, 1, 1)``: ITK's way of
    writing a 3D image as a vector image) reads as the 3D volume it is, as ``_check_file`` accepts it (MONAI's default
    reader made ``(x, y, z, 1, 1)`` a 4D image that failed in ``Orientationd`` naming no file). Given to ``LoadImage``
    as its ``reader``, it goes before MONAI's default readers, which still read DICOM folders, NRRD and MHA files.
    """
    from monai.data import NibabelReader

    return NibabelReader(squeeze_non_spatial_dims=True)


def _check_file(path: str, role: str, dicom_series: str | None = None, allow_non_ct: bool = False,
                image: str | None = None) -> str:
    """Check one input and return the path to read (a DICOM folder may lead to its one series' folder; a DICOM SEG
    given as the label of ``image``, a checked image, to its label map on the image's grid)."""
    p = Path(path)
    if p.is_dir():
        return check_dicom_folder(p, series_choice(dicom_series), allow_non_ct)
    if not p.exists():
        raise FileNotFoundError(f"{role} {p} does not exist")
    if p.stat().st_size == 0:
        raise ValueError(f"{role} {p} is an empty file")
    if is_dicom_file(p):  # one DICOM file: a multi-frame image (an Enhanced CT) is read as a volume
        from .dicom_seg import is_dicom_seg, seg_label_file

        if role == "label" and image is not None and is_dicom_seg(p):
            return str(seg_label_file(p, image))
        return check_dicom_folder(p, series_choice(dicom_series), allow_non_ct)
    if p.name.endswith((".nii", ".nii.gz")):
        import nibabel as nib

        try:
            img = nib.load(str(p))
            shape = img.shape
        except Exception as err:  # nibabel raises several types for corrupt headers
            raise ValueError(f"{role} {p} is not a readable NIfTI file: {err}") from err
        if len(shape) < 3 or min(shape[:3]) < 1:
            raise ValueError(f"{role} {p} is not a 3D volume (shape {shape})")
        if len(shape) > 3 and any(n > 1 for n in shape[3:]):
            raise ValueError(
                f"{role} {p} is a {len(shape)}D volume (shape {shape}): expected one 3D volume; take the volume you "
                "mean out of it first (e.g. with nibabel's four_to_three)"
            )
    return str(p)


def check_inputs(items: Sequence[Any], keys: Sequence[str] = ("image", "label"), dicom_series: str | None = None,
                 allow_non_ct: Any = False) -> list:
    """Check that every file of a datalist exists and has a readable header, and every DICOM folder holds one complete,
    evenly spaced series, before any work starts.

    Args:
        items: paths, or dicts with ``keys``.
        keys: the keys of a dict item that hold paths. Defaults to ``("image", "label")``.
        dicom_series: how to pick one of several series in a DICOM folder: ``None`` (refuse), ``"largest"`` or a
            ``SeriesInstanceUID`` (see ``dicom.check_dicom_folder``). Defaults to ``None``.
        allow_non_ct: read a DICOM series whose Modality is not CT or that has too few slices to be a CT volume
            (refused otherwise); a bool or its command-line spelling. Defaults to ``False``.

    Returns:
        The items, with a DICOM folder replaced by the folder to read where the check chose one (logged).

    Raises:
        FileNotFoundError, ValueError: naming the file and the problem.
    """
    from ..options import as_bool

    allow = as_bool(allow_non_ct, "allow_non_ct")
    out = []
    for item in _progress(items, "checking inputs", "input"):
        if isinstance(item, (str, os.PathLike)):
            out.append(_check_file(str(item), "image", dicom_series, allow))
            continue
        item = dict(item)
        for key in keys:  # the image first: a label in a DICOM SEG is read on its grid
            if key in item:
                image = item.get("image") if key != "image" else None
                item[key] = _check_file(str(item[key]), key, dicom_series, allow, image)
        out.append(item)
    return out


#: seconds of work before ``_progress`` shows its bar (a quick check of a few NIfTI headers shows none)
PROGRESS_DELAY_S = 2.0


def _progress(items: Sequence[Any], desc: str, unit: str) -> Iterable[Any]:
    """``items`` with a progress bar (tqdm, on stderr) that shows once the work takes ``PROGRESS_DELAY_S``: reading a
    few hundred DICOM series' headers, or Enhanced CTs into volumes (about 1 s each at 512 x 512 x 112), takes
    minutes before anything else is said. None on the ranks > 0 of a distributed run or without tqdm."""
    from .training_options import _rank

    if _rank() > 0:
        return items
    try:
        from tqdm import tqdm
    except ImportError:
        return items
    return tqdm(items, desc=desc, unit=unit, delay=PROGRESS_DELAY_S, mininterval=1.0)


def _name(x: Any) -> str:
    meta = getattr(x, "meta", {})
    return str(meta.get("filename_or_obj", "<unknown file>"))


def _grid_distance_mm(a: torch.Tensor, b: torch.Tensor, spatial_shape: Sequence[int]) -> float:
    """The largest distance (mm) between the world positions that two affines give the corners of one voxel grid."""
    corners = torch.cartesian_prod(*[torch.tensor([0.0, float(max(n - 1, 0))]) for n in spatial_shape])
    corners = torch.cat([corners, torch.ones(len(corners), 1)], dim=1).double()
    pa = corners @ torch.as_tensor(a, dtype=torch.float64).T
    pb = corners @ torch.as_tensor(b, dtype=torch.float64).T
    return float((pa[:, :3] - pb[:, :3]).norm(dim=1).max())


def in_axis_order(label: Any, image: Any) -> Any:
    """``label`` with its voxel axes in ``image``'s order (flipped and transposed as their affines say; nothing
    resampled). A label stored in another orientation (LPS beside an RAS image, axes swapped) holds the same voxels,
    which the pipeline's ``Orientationd`` aligns; a label of another grid still differs from the image afterwards."""
    from monai.transforms import Orientation
    from nibabel.orientations import aff2axcodes

    affine, laffine = getattr(image, "affine", None), getattr(label, "affine", None)
    if affine is None or laffine is None:
        return label
    codes = aff2axcodes(np.asarray(affine))
    if codes == aff2axcodes(np.asarray(laffine)) or None in codes:
        return label
    return Orientation(axcodes="".join(codes))(label)


class CheckCased(MapTransform):
    """Check a loaded case before anything is learnt from it; every error names the file(s) and the problem.

    Image: one channel, not empty, finite, not constant, and CT in Hounsfield units (at least ``MIN_AIR_FRACTION``
    of its voxels below ``AIR_HU``, as air is; refused otherwise unless ``allow_non_ct``). Label: one channel,
    finite, whole numbers within ``labels``, the image's shape, and on the image's voxel grid (the world positions
    of the grid's corners under the two affines within ``affine_tolerance_mm``: a label shifted, rescaled or rotated
    against its image is refused even when the shapes agree), compared in the image's axis order (a label stored in
    another orientation, e.g. LPS beside RAS, is the same grid: ``in_axis_order``). A label without any foreground
    is accepted with a warning. Place it right after ``EnsureChannelFirstd``, before any resampling (a fractional
    value is only detectable before nearest-neighbour resampling hides it).

    Args:
        keys: the image key, then the label key (the label is optional). Defaults to ``("image", "label")``.
        labels: allowed label values. Defaults to ``(0, 1, 2)``.
        affine_tolerance_mm: largest allowed distance between the two grids, in mm. Defaults to 0.1.
        allow_missing_keys: accept items without a label (inference). Defaults to ``True``.
        allow_non_ct: read an image whose intensities are not Hounsfield units (with a warning); a bool or its
            command-line spelling. Defaults to ``False``.
    """

    def __init__(
        self,
        keys: KeysCollection = ("image", "label"),
        labels: Sequence[int] = (0, 1, 2),
        affine_tolerance_mm: float = AFFINE_TOLERANCE_MM,
        allow_missing_keys: bool = True,
        allow_non_ct: Any = False,
    ) -> None:
        from ..options import as_bool

        super().__init__(keys, allow_missing_keys)
        self.allow_non_ct = as_bool(allow_non_ct, "allow_non_ct")
        self.labels = {int(v) for v in labels}
        self.affine_tolerance_mm = float(affine_tolerance_mm)

    def _check_image(self, image: Any) -> None:
        name = _name(image)
        arr = torch.as_tensor(image)
        if arr.numel() == 0:
            raise ValueError(f"image {name} is empty (shape {tuple(arr.shape)})")
        if arr.shape[0] != 1:
            raise ValueError(
                f"image {name} has {arr.shape[0]} channels (shape {tuple(arr.shape)}): expected one CT volume; is it "
                "a 4D file (several time points or phases)? Take the volume you mean out of it"
            )
        low, high = float(arr.min()), float(arr.max())  # NaN if any voxel is (torch's min and max propagate it)
        if not (math.isfinite(low) and math.isfinite(high)):  # not torch.isfinite: 7 bytes a voxel of temporaries
            raise ValueError(f"image {name} contains NaN or infinite values")
        if low == high:
            raise ValueError(f"image {name} is constant (every voxel {low:g}): an empty or failed export, not a scan")
        air = int(torch.count_nonzero(arr < AIR_HU)) / arr.numel()  # not .sum(): an int64 copy of the mask
        if air < MIN_AIR_FRACTION:
            problem = (f"image {name} does not look like CT in Hounsfield units: {air:.2%} of its voxels lie below "
                       f"{AIR_HU:g} HU (values {low:g} to {high:g}), where air (-1000 HU) around and inside the body "
                       "takes far more. An MR or PET volume, or stored values whose rescale intercept (e.g. -1024) was "
                       "not applied?")
            if not self.allow_non_ct:
                raise ValueError(f"{problem} Convert it to HU, or --allow_non_ct true to read it anyway")
            logger.warning(f"{problem} (read anyway: --allow_non_ct)")

    def _check_label(self, label: Any, image: Any) -> None:
        name, lname = _name(image), _name(label)
        label = in_axis_order(label, image)
        if tuple(label.shape[1:]) != tuple(image.shape[1:]):
            raise ValueError(
                f"label {lname} has shape {tuple(label.shape[1:])} but image {name} has {tuple(image.shape[1:])}: "
                "they must be voxel-aligned volumes of the same size"
            )
        if label.shape[0] != 1:
            raise ValueError(f"label {lname} has {label.shape[0]} channels (shape {tuple(label.shape)}): expected one "
                             "label map with values 0, 1, 2 (a 4D file, or one-hot labels?)")
        values = torch.as_tensor(label)
        if not torch.isfinite(values).all():
            raise ValueError(f"label {lname} contains NaN or infinite values: a label map holds whole numbers only")
        if values.is_floating_point():
            fractional = values[values != values.round()]
            if fractional.numel():
                raise ValueError(
                    f"label {lname} has fractional values (e.g. {float(fractional[0]):g}, {fractional.numel()} voxels): "
                    "was it resampled with linear interpolation? Resample label maps with nearest neighbour"
                )
        found = {int(v) for v in torch.unique(values).tolist()}
        extra = sorted(found - self.labels)
        if extra:
            shown = str(extra) if len(extra) <= 8 else f"{extra[:4]} ... {extra[-4:]} ({len(extra)} values)"
            raise ValueError(
                f"label {lname} has values {shown} outside {sorted(self.labels)} "
                "(0 background, 1 pancreas, 2 tumour): is it the right file, or another task's labels?"
            )
        affine, laffine = getattr(image, "affine", None), getattr(label, "affine", None)
        if affine is not None and laffine is not None:
            distance = _grid_distance_mm(affine, laffine, image.shape[1:])
            if distance > self.affine_tolerance_mm:
                raise ValueError(
                    f"label {lname} is not on the voxel grid of image {name}: with the same shape, its grid lies up "
                    f"to {distance:.2f} mm from the image's (tolerance {self.affine_tolerance_mm} mm; position, spacing "
                    "or orientation differ). Is it the label of another scan or series, or was its header changed?"
                )
        if found <= {0}:
            logger.warning(f"label {lname} has no foreground (every voxel 0): {name} trains as background only")

    def __call__(self, data: Mapping[Hashable, Any]) -> dict:
        d = dict(data)
        image_key, label_key = self.keys[0], self.keys[1] if len(self.keys) > 1 else None
        self._check_image(d[image_key])
        if label_key is not None and label_key in d:
            self._check_label(d[label_key], d[image_key])
        return d


# ------------------------------------------------------------------------------------------ loading failures
class BadCaseError(ValueError):
    """Cases that could not be loaded or checked; the message has one line per case, naming its file and cause."""


def _guilty_file(item: Any) -> str:
    """The file of a case that fails to load on its own (image or label), else the case's image."""
    from monai.transforms import LoadImage

    entries = item if isinstance(item, Mapping) else {"image": item}
    for key in ("image", "label"):
        path = entries.get(key)
        if isinstance(path, (str, os.PathLike)):
            try:
                LoadImage(image_only=True, reader=nifti_reader())(path)
            except Exception:  # the one that does not load is the one to name
                return f"{key} {path}"
    return f"image {entries.get('image', item)}"


def describe_failure(item: Any, err: BaseException) -> str:
    """One line: the case's file, the cause, and what to do."""
    from .checkpoints import OutputError

    cause = root_cause(err)
    if isinstance(cause, ValueError) and str(cause).startswith(("image ", "label ")):
        return str(cause)  # our own checks name their files already
    if isinstance(cause, OutputError):  # the case is fine; its preprocessed copy could not be stored
        return f"{_guilty_file(item)}: its preprocessed copy cannot be stored in the disk cache: {cause}"
    return (f"{_guilty_file(item)} cannot be loaded ({type(cause).__name__}: {cause}): the file is truncated, corrupt "
            "or not an image; replace it or take the case out of the datalist")


class _Uncached:
    """A case over the memory budget with no disk cache to hold it."""


class _BadCase:
    def __init__(self, index: int, item: Any, err: BaseException) -> None:
        self.index, self.item, self.message = index, item, describe_failure(item, err)


class CheckedCacheDataset(CacheDataset):
    """``CacheDataset`` that never trains on a case it could not load, and never dies in a loader thread.

    Every case's deterministic transforms run in the cache threads as before; a case that raises is recorded instead
    of killing its thread (which left MONAI's pool to be torn down at exit: ``terminate called without an active
    exception``, SIGABRT). After caching, the failed cases stop the run with one ``BadCaseError`` listing each file
    and cause, or, with ``skip_bad_cases=True``, are taken out of the dataset, logged as a warning and reported again
    at the end of the run (``SkippedCasesReport``). A case beyond the cache (``cache_rate`` < 1) that fails when it is
    drawn fails the run the same way, or is replaced by the next case and counted.

    Host memory stays within ``budget`` (``caching.CacheBudget``, shared by a run's datasets): a preprocessed case
    stays in memory while the budget lasts; after that it is written to ``cache_dir`` (a persistent ``DiskCache``,
    keyed by the case's files and the preprocessing) and read back in the loader's thread each time it is drawn. A
    case found in ``cache_dir`` from an earlier run is read instead of preprocessed again. The placement is logged.

    Args:
        data, transform, cache_num, cache_rate, num_workers, progress, copy_cache, ...: as ``CacheDataset``.
        skip_bad_cases: drop failing cases (counted and reported) instead of failing. Defaults to ``False``.
        name: what the messages call the set (``"training"``, ``"validation"``). Defaults to ``"dataset"``.
        budget: the memory budget (``CacheBudget``, or what it takes: GB, ``"auto"``, ``"none"``). Defaults to
            ``None`` (no limit).
        cache_dir: the on-disk cache's folder. Defaults to ``None``: no disk cache (cases beyond the budget are
            preprocessed again whenever they are drawn, as beyond MONAI's ``cache_rate``).
        cache_dir_gb: the on-disk cache's limit (GB, or ``none``): least recently used cases are removed beyond it,
            never one that a running process uses. Defaults to ``None``: ``caching.DISK_LIMIT_GB``.
    """

    def __init__(self, *args: Any, skip_bad_cases: bool = False, name: str = "dataset", budget: Any = None,
                 cache_dir: str | os.PathLike | None = None, cache_dir_gb: Any = None, **kwargs: Any) -> None:
        from .caching import CacheBudget, DiskCache

        self.skip_bad_cases = bool(skip_bad_cases)
        self.name = name
        self.skipped: list[str] = []
        self.budget = budget if isinstance(budget, CacheBudget) else CacheBudget(budget)
        if cache_dir and Path(cache_dir).exists() and not Path(cache_dir).is_dir():
            raise ValueError(f"--cache_dir {cache_dir} is a file, not a folder: give a folder for the preprocessed cases")
        self.disk = DiskCache(cache_dir, cache_dir_gb) if cache_dir else None
        self._signature: str | None = None
        super().__init__(*args, **kwargs)

    def _cache_key(self, idx: int) -> str | None:
        from monai.transforms import Transform
        from monai.transforms.transform import RandomizableTrait

        from .caching import cache_key, transform_signature

        if self.disk is None:
            return None
        if self._signature is None:
            steps = []
            for t in self.transform.flatten().transforms:
                if isinstance(t, RandomizableTrait) or not isinstance(t, Transform):
                    break
                steps.append(t)
            self._signature = transform_signature(steps)
        return cache_key(self.data[idx], self._signature)

    def _load_cache_item(self, idx: int) -> Any:
        from .caching import OnDisk, nbytes

        try:
            key = self._cache_key(idx)
            item = self.disk.load(key) if key else None
            stored = item is not None
            if item is None:
                item = super()._load_cache_item(idx)
                release_freed_memory()  # the case's transient buffers: not left in holes between cached cases
            if self.budget.take(nbytes(item)):
                return item
            if key is None:
                return _Uncached()
            if not stored:
                self.disk.save(key, item)
            return OnDisk(self.disk, key)
        except Exception as err:  # recorded, decided on after the pool has finished
            return _BadCase(idx, self.data[idx], err)

    def set_data(self, data: Sequence) -> None:
        from .caching import TieredCache

        super().set_data(data)
        entries = list(self._cache)
        bad = [c for c in entries if isinstance(c, _BadCase)]
        if bad:
            lines = "\n  ".join(c.message for c in bad)
            if not self.skip_bad_cases:
                raise BadCaseError(
                    f"{len(bad)} of {len(self.data)} {self.name} cases cannot be used:\n  {lines}\n"
                    "Fix or remove them, or run with --skip_bad_cases true to go on without them."
                )
            gone = {c.index for c in bad}
            self.skipped += [c.message for c in bad]
            logger.warning(
                f"skipping {len(bad)} of {len(self.data)} {self.name} cases (--skip_bad_cases true):\n  {lines}"
            )
            self.data = [self.data[i] for i in range(len(self.data)) if i not in gone]
            entries = [c for c in entries if not isinstance(c, _BadCase)]
            if not self.data:
                raise BadCaseError(f"every {self.name} case failed; nothing is left to train on:\n  {lines}")
        over = [i for i, c in enumerate(entries) if isinstance(c, _Uncached)]
        if over:  # over the budget, no disk cache: behind the cached cases, preprocessed whenever drawn
            kept = [i for i, c in enumerate(entries) if not isinstance(c, _Uncached)]
            self.data = [self.data[i] for i in kept + over + list(range(len(entries), len(self.data)))]
            entries = [entries[i] for i in kept]
        self._cache = TieredCache(entries)
        self.cache_num = len(entries)
        if self.disk is not None:  # a lowered limit, where no new case was written
            self.disk.entries.prune()
        self._say_where()

    def _say_where(self) -> None:
        cache = self._cache
        memory = cache.in_memory()
        disk = len(cache) - memory
        if disk or len(self.data) > len(cache):
            where = f"{disk} on disk in {self.disk.folder}" if disk else ""
            fresh = len(self.data) - len(cache)
            again = f"{fresh} preprocessed again whenever drawn" if fresh else ""
            logger.info(f"{self.name} cases: {memory} in memory (so far {self.budget.describe()}), "
                        + ", ".join(x for x in (where, again) if x))

    def _transform(self, index: int) -> Any:
        if not -len(self.data) <= index < len(self.data):
            raise IndexError(f"index {index} is out of range for {len(self.data)} {self.name} cases")
        for attempt in range(len(self.data)):  # the case asked for, then (skipping) the next ones
            i = (index + attempt) % len(self.data)
            try:
                return super()._transform(i)
            except Exception as err:
                message = describe_failure(self.data[i], err)
                if not self.skip_bad_cases:
                    raise BadCaseError(f"{self.name} case cannot be used: {message}") from err
                self.skipped.append(message)
                logger.warning(f"skipping a {self.name} case (--skip_bad_cases true): {message}")
        raise BadCaseError(f"every {self.name} case failed to load")


class SkippedCasesReport:
    """Repeat, at the end of a run, which cases ``CheckedCacheDataset(skip_bad_cases=True)`` left out (nothing when
    none was)."""

    def __init__(self, datasets: Sequence[Any]) -> None:
        self.datasets = list(datasets)

    def attach(self, engine: Any) -> None:
        from ignite.engine import Events

        engine.add_event_handler(Events.COMPLETED, self)

    def __call__(self, engine: Any) -> None:
        for ds in self.datasets:
            skipped = getattr(ds, "skipped", [])
            if skipped:
                lines = "\n  ".join(skipped)
                engine.logger.warning(f"this run left out {len(skipped)} {getattr(ds, 'name', '')} case(s) "
                                      f"that could not be used:\n  {lines}")


class _Failure:
    __slots__ = ("err",)

    def __init__(self, err: BaseException) -> None:
        self.err = err


class CheckedThreadDataLoader(ThreadDataLoader):
    """``ThreadDataLoader`` whose background thread hands its exceptions to the training loop.

    MONAI's ``ThreadBuffer`` lets an exception end its thread quietly: the epoch then just stops early and training
    goes on (a case that failed to load was skipped without a word, and a run exited 0). Here the exception is
    raised again where the batch is taken. Takes ``ThreadDataLoader``'s arguments (``repeats`` is not supported).
    """

    def __iter__(self) -> Iterator[Any]:
        source = super(ThreadDataLoader, self).__iter__()  # the plain DataLoader iterator, consumed in a thread
        buffer: Queue = Queue(max(1, self.buffer_size))
        running = [True]
        done = object()

        def put(item: Any) -> bool:
            """Queue ``item`` unless the consumer has stopped; whether it was queued."""
            while running[0]:
                try:
                    buffer.put(item, timeout=self.buffer_timeout)
                    return True
                except Full:
                    continue
            return False

        def fill() -> None:
            try:
                for batch in source:
                    if not put(batch):
                        return
                last: Any = done
            except BaseException as err:  # noqa: B036 - handed over to the consumer, which raises it
                last = _Failure(err)
            put(last)

        thread = Thread(target=fill, daemon=True)
        thread.start()
        try:
            while True:
                try:
                    item = buffer.get(timeout=self.buffer_timeout)
                except Empty:
                    if not thread.is_alive() and buffer.empty():
                        return
                    continue
                if item is done:
                    return
                if isinstance(item, _Failure):
                    raise item.err
                yield item
        finally:
            running[0] = False
            thread.join()
