"""DICOM series folders checked before they are read: one series, every slice there, evenly spaced.

ITK reads whatever DICOM files a folder holds: a folder with a missing slice gives a volume with one slice fewer
(and the wrong spacing, with only a warning on stderr), a folder holding two series gives one of them without a word,
and a series one folder down gives "an empty folder". ``check_dicom_folder`` reads every file's header (pydicom,
pixels untouched), groups the files by ``SeriesInstanceUID``, and checks the chosen series: one pixel grid (rows,
columns, pixel spacing) and the same orientation on every slice, no two slices at one position, slice positions
evenly spaced along the slice normal and stacked along it (not sheared by a gantry tilt, which ITK reads as an
untilted stack: displaced and stretched), instance numbers without gaps. It goes one folder down when the folder
holds no DICOM file itself and exactly one subfolder does. DICOM objects that are no image (a structure set, a SEG, a
dose grid: ``NOT_IMAGES``) are left out of the series beside which exports put them.

A series stored as one multi-frame image (an Enhanced or Legacy Converted Enhanced CT: the whole volume in one file,
each frame's position and rescale in its functional groups) gets the same checks frame by frame and is then read as a
volume by ``enhanced_volume`` (a NIfTI file built once in the cache, which MONAI's readers read): ITK stacks such a
file's frames in the file's order (frames stored out of order read here as a scrambled volume of unit spacing, without
an error).

pydicom rather than SimpleITK's GDCM series tools: it is already a dependency of the bundles (SimpleITK would add
~50 MB), and the checks need the raw header values (instance numbers, positions, orientation) that pydicom exposes
directly; GDCM's ordering is the same sort by position along the normal that is done here.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from .user_cache import cached, lease

__all__ = ["NOT_IMAGES", "DicomSeriesError", "check_dicom_folder", "dicom_source", "enhanced_volume", "image_grid",
           "is_dicom_file", "series_choice"]

logger = logging.getLogger("monai_unet_variants.bundle")

#: largest allowed deviation of one slice gap from the median gap: 1% (and at least 0.01 mm)
SPACING_TOLERANCE = 0.01
#: fewest slices a series needs to be segmented as a CT volume (fewer: a localizer, a key-image series, a partial
#: export)
MIN_SLICES = 8
#: largest sideways drift (mm) of the slices' in-plane origin from the first slice to the last before a series is
#: refused as sheared (a gantry tilt): far above the rounding of header positions, below any voxel
SHEAR_TOLERANCE_MM = 0.1


class DicomSeriesError(ValueError):
    """A DICOM folder that does not hold exactly one complete, evenly spaced series; the message names the folder,
    what was found and the fix."""


def _pixels_complete(ds: Any, path: Path) -> bool:
    """Whether the file holds all of its pixel data (a file cut short ends before the value's declared length)."""
    if "PixelData" not in ds:
        return False
    try:
        raw = ds.get_item("PixelData", keep_deferred=True)  # pydicom 3: the deferred element, not its value
    except TypeError:  # pydicom 2 returns the raw element as it is
        raw = ds.get_item("PixelData")
    tell, length = getattr(raw, "value_tell", None), getattr(raw, "length", None)
    if tell is None or length in (None, 0xFFFFFFFF):  # read already, or encapsulated (undefined length)
        return True
    return tell + length <= path.stat().st_size


#: the Modality of DICOM objects that are no image to segment: structure sets, plans, dose grids, segmentations,
#: reports, presentation states, key-object selections, registrations, documents. Beside a CT series (as radiotherapy
#: and PACS exports put them) they are left out of it, not taken for a second series or for a slice cut short (an
#: RTSTRUCT holds no pixel data)
NOT_IMAGES = frozenset({"RTSTRUCT", "RTPLAN", "RTRECORD", "RTDOSE", "SEG", "SR", "PR", "KO", "REG", "DOC", "PLAN"})


def is_dicom_file(path: str | os.PathLike) -> bool:
    """Whether ``path`` carries a DICOM file's own mark ("DICM" after its 128-byte preamble)."""
    path = Path(path)
    with open(path, "rb") as f:
        return f.read(132)[128:] == b"DICM"


def _modality(ds: Any) -> str:
    return str(getattr(ds, "Modality", "") or "").strip().upper()


def _headers(folder: Path, files: list[Path] | None = None) -> tuple[list[tuple[Path, Any]], list[Path]]:
    """(file, header) of every DICOM image directly in ``folder`` (or of ``files`` in it), and the other files: not
    DICOM, or DICOM objects that are no image (``NOT_IMAGES``)."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    found, other = [], []
    for path in files if files is not None else sorted(p for p in folder.iterdir() if p.is_file()):
        marked = is_dicom_file(path)  # such a file must read completely
        try:
            ds = pydicom.dcmread(str(path), defer_size=1024)  # large values (the pixels) are not read, only located
            if _modality(ds) in NOT_IMAGES:
                other.append(path)
                continue
            if marked and ("SeriesInstanceUID" not in ds or not _pixels_complete(ds, path)):
                raise ValueError("its header or pixel data is incomplete")
        except InvalidDicomError:
            if marked:
                raise DicomSeriesError(f"{path} of the DICOM folder {folder} cannot be read (not a valid DICOM "
                                       "file): the file is truncated or corrupt; replace it") from None
            other.append(path)
            continue
        except Exception as err:  # a DICOM file cut short, or otherwise unreadable
            raise DicomSeriesError(f"{path} of the DICOM folder {folder} cannot be read ({type(err).__name__}: "
                                   f"{err}): the file is truncated or corrupt; replace it") from err
        if "SeriesInstanceUID" not in ds:
            other.append(path)
            continue
        found.append((path, ds))
    return found, other


def _frame_count(ds: Any) -> int:
    """How many frames a DICOM file holds (1 for a single-frame slice)."""
    return int(getattr(ds, "NumberOfFrames", 1) or 1)


def _slices(items: list) -> int:
    """How many slices a series' files hold: a multi-frame file counts its frames."""
    return sum(_frame_count(ds) for _, ds in items)


def _describe(uid: str, items: list) -> str:
    ds = items[0][1]
    slices = _slices(items)
    frames = f" holding {slices} frames" if slices != len(items) else ""
    return (f"{uid} ({len(items)} file{'s' if len(items) != 1 else ''}{frames}, "
            f"{str(getattr(ds, 'SeriesDescription', ''))!r}, series {getattr(ds, 'SeriesNumber', '?')})")


def _choose(folder: Path, series: dict[str, list], choice: str | None) -> tuple[str, list]:
    if len(series) == 1:
        return next(iter(series.items()))
    listing = "; ".join(_describe(uid, items) for uid, items in series.items())
    if not choice:
        raise DicomSeriesError(
            f"DICOM folder {folder} holds {len(series)} series: {listing}. Put each series in its own folder, or "
            "choose one with --dicom_series largest or --dicom_series <SeriesInstanceUID>"
        )
    if choice == "largest":
        uid = max(series, key=lambda u: _slices(series[u]))  # an Enhanced CT's one file counts its frames
    elif choice in series:
        uid = choice
    else:
        raise DicomSeriesError(f"DICOM folder {folder} holds no series {choice}; it holds: {listing}")
    logger.warning(f"DICOM folder {folder} holds {len(series)} series; reading {_describe(uid, series[uid])} "
                   f"(--dicom_series {choice})")
    return uid, series[uid]


#: the header fields that give a slice's pixel grid: every slice of a volume needs the same
GRID_FIELDS = ("Rows", "Columns", "PixelSpacing")


def _check_grids(folder: Path, uid: str, items: list) -> None:
    """Refuse slices whose pixel grid (``GRID_FIELDS``) differs from the most common one: ITK takes the first
    slice's spacing for all (a slice of another spacing is read at the wrong scale), and splits slices of another size
    into a series of their own, of which it reads one (a volume of one slice), both without an error."""
    def grid(ds: Any) -> tuple:
        spacing = tuple(round(float(v), 4) for v in getattr(ds, "PixelSpacing", None) or ())
        return getattr(ds, "Rows", None), getattr(ds, "Columns", None), spacing

    grids = [grid(ds) for _, ds in items]
    common = Counter(grids).most_common(1)[0][0]  # ties: the first slice's grid
    odd = [(path.name, g) for (path, _), g in zip(items, grids, strict=True) if g != common]
    if odd:
        name, g = odd[0]
        shown = [list(v) if isinstance(v, tuple) else v for v in (*g, *common)]
        fields = ", ".join(f"{field} {shown[i]} (others {shown[i + len(g)]})"
                           for i, field in enumerate(GRID_FIELDS) if g[i] != common[i])
        raise DicomSeriesError(
            f"series {uid} in {folder}: {len(odd)} of its {len(items)} slices have another pixel grid, e.g. {name}: "
            f"{fields}. A volume needs one grid for every slice (read as it is, ITK would scale or drop slices "
            "without an error): a reformat or a scout mixed in? Remove those slices"
        )


def _check_geometry(folder: Path, uid: str, items: list) -> None:
    if len(items) < 2:
        return
    _check_grids(folder, uid, items)
    try:
        orientations = np.array([[float(v) for v in ds.ImageOrientationPatient] for _, ds in items])
        positions = np.array([[float(v) for v in ds.ImagePositionPatient] for _, ds in items])
    except AttributeError as err:
        raise DicomSeriesError(f"series {uid} in {folder} lacks ImageOrientationPatient or ImagePositionPatient "
                               f"on some slice ({err}): its geometry cannot be known") from err
    if np.abs(orientations - orientations[0]).max() > 1e-4:
        raise DicomSeriesError(f"series {uid} in {folder}: its slices have different orientations (a localizer or "
                               "a reformat mixed in?); read one orientation per folder")
    normal = np.cross(orientations[0][:3], orientations[0][3:])
    along = positions @ normal
    order = np.argsort(along)
    gaps = np.diff(along[order])
    files = [items[i][0].name for i in order]
    if np.any(gaps < 1e-3):
        k = int(np.argmin(gaps))
        raise DicomSeriesError(f"series {uid} in {folder}: {files[k]} and {files[k + 1]} lie at the same position "
                               "(a duplicated slice, or two acquisitions in one series)")
    _check_stacking(folder, uid, positions[order], normal, files)
    median = float(np.median(gaps))
    worst = int(np.argmax(np.abs(gaps - median)))
    if abs(gaps[worst] - median) > max(SPACING_TOLERANCE * median, 0.01):
        missing = round(gaps[worst] / median) - 1
        hint = f" ({missing} slice{'s' if missing != 1 else ''} missing there?)" if missing >= 1 else ""
        raise DicomSeriesError(
            f"series {uid} in {folder} is not evenly spaced: {gaps[worst]:.3g} mm between {files[worst]} and "
            f"{files[worst + 1]}, {median:.3g} mm elsewhere{hint}; read as it is, the volume would have wrong "
            "geometry. Complete the series or remove the odd slices"
        )
    numbers = [int(ds.InstanceNumber) for _, ds in items if "InstanceNumber" in ds and ds.InstanceNumber is not None]
    if len(numbers) == len(items) and len(set(numbers)) == len(numbers):
        expected = set(range(min(numbers), max(numbers) + 1))
        absent = sorted(expected - set(numbers))
        if absent:
            raise DicomSeriesError(
                f"series {uid} in {folder} has {len(items)} slices numbered {min(numbers)}..{max(numbers)}: instance "
                f"number(s) {absent[:5]}{' ...' if len(absent) > 5 else ''} missing. Complete the series"
            )


def _check_stacking(folder: Path, uid: str, positions: np.ndarray, normal: np.ndarray, files: list[str]) -> None:
    """Refuse a series whose slices are not stacked along their normal (sorted ``positions``): a CT acquired with a
    gantry tilt. ITK (MONAI's DICOM reader) builds its grid from the slices' orientation and the distance between
    slices, so such a series would be read untilted: each slice displaced sideways, the volume stretched."""
    span = positions[-1] - positions[0]
    along = float(span @ normal)
    sideways = span - along * normal
    drift = float(np.linalg.norm(sideways))
    if drift > SHEAR_TOLERANCE_MM:
        angle = float(np.degrees(np.arctan2(drift, abs(along))))
        raise DicomSeriesError(
            f"series {uid} in {folder} is sheared, as a gantry tilt of {angle:.1f} degrees leaves it: its slices "
            f"drift {drift:.1f} mm sideways from {files[0]} to {files[-1]} over {abs(along):.1f} mm along their "
            "normal. Read as a stack (as ITK reads series) every slice would be displaced by up to that much and the "
            "volume stretched; resample it to an untilted grid first (dcm2niix corrects gantry tilt) and give that"
        )


def _series_folder(folder: Path, uid: str, items: list) -> Path:
    """A folder holding only the chosen series' files (links), for a reader that reads whole folders."""
    key = hashlib.sha256(f"{folder.resolve()}|{uid}".encode()).hexdigest()[:16]
    out = lease("dicom_series", key) / folder.name  # the folder's own name: outputs are still named after it
    out.mkdir(parents=True, exist_ok=True)
    for path, _ in items:
        link = out / path.name
        if not link.exists():
            try:
                os.symlink(path.resolve(), link)
            except FileExistsError:  # another process (a second run over the same folder) made it just now
                pass
    return out


def _group_value(groups: tuple, sequence: str, keyword: str, default: Any = None) -> Any:
    """``keyword``'s value in the first of ``groups`` (a frame's own functional groups, then the shared ones) whose
    ``sequence`` holds it, else ``default``."""
    for group in groups:
        items = getattr(group, sequence, None)
        if items and keyword in items[0] and items[0][keyword].value not in (None, ""):
            return items[0][keyword].value
    return default


def _frame_headers(path: Path, ds: Any) -> list[tuple[Path, Any]] | None:
    """One header per frame of a multi-frame image (an Enhanced or Legacy Converted Enhanced CT), as a single-frame
    slice's header would hold it: ``Rows``, ``Columns`` and ``Modality``, ``PixelSpacing``,
    ``ImageOrientationPatient`` and ``ImagePositionPatient`` from the frame's functional groups (its own, else the
    shared ones), ``RescaleSlope`` and ``RescaleIntercept`` (1 and 0 where absent), and ``description`` naming the
    frame; each with that name as its pseudo-path (the checks' messages name it). ``None`` when the frames
    carry no geometry (a multi-frame file without per-frame functional groups: ultrasound, secondary capture, RT
    dose)."""
    from pydicom.dataset import Dataset

    count = _frame_count(ds)
    per_frame = getattr(ds, "PerFrameFunctionalGroupsSequence", None) or []
    shared = (getattr(ds, "SharedFunctionalGroupsSequence", None) or [Dataset()])[0]
    if len(per_frame) != count:
        return None
    headers = []
    for number, group in enumerate(per_frame, start=1):
        groups = (group, shared)
        frame = Dataset()
        frame.PixelSpacing = _group_value(groups, "PixelMeasuresSequence", "PixelSpacing")
        frame.ImageOrientationPatient = _group_value(groups, "PlaneOrientationSequence", "ImageOrientationPatient")
        frame.ImagePositionPatient = _group_value(groups, "PlanePositionSequence", "ImagePositionPatient")
        if frame.PixelSpacing is None or frame.ImageOrientationPatient is None or frame.ImagePositionPatient is None:
            return None
        frame.Rows, frame.Columns, frame.Modality = ds.Rows, ds.Columns, getattr(ds, "Modality", "")
        frame.RescaleSlope = _group_value(groups, "PixelValueTransformationSequence", "RescaleSlope", 1)
        frame.RescaleIntercept = _group_value(groups, "PixelValueTransformationSequence", "RescaleIntercept", 0)
        frame.description = f"frame {number} of {path.name}"  # a plain attribute (not a DICOM element) for messages
        headers.append((Path(frame.description), frame))
    return headers


def _multi_frame(folder: Path, uid: str, items: list) -> tuple[Path, Any, list] | None:
    """``(file, header, frame headers)`` when the series is one multi-frame image whose frames carry their geometry
    (an Enhanced CT: the whole volume in one file), ``None`` for a series of single-frame slices; any other
    multi-frame file is refused: the checks and the reader go by one position per file or per frame."""
    multi = [(path, ds) for path, ds in items if _frame_count(ds) > 1]
    if not multi:
        return None
    path, ds = multi[0]
    frames = _frame_count(ds)
    what = f"{path} in {folder} is a multi-frame DICOM file ({frames} frames, {ds.SOPClassUID.name})"
    if len(items) > 1:
        raise DicomSeriesError(
            f"{what}, one of {len(items)} files of series {uid} ({len(multi)} multi-frame): a series is read as "
            "single-slice files or as one multi-frame (Enhanced) file, not both. Put the file in a folder of its own, "
            "or convert the series first, e.g. to NIfTI with dcm2niix")
    headers = _frame_headers(path, ds)
    if headers is None:
        raise DicomSeriesError(
            f"{what} without a position for each frame (no per-frame functional groups, as an Enhanced CT has): "
            "its geometry cannot be known. Convert it first, e.g. to NIfTI with dcm2niix, or to single-frame files "
            "with dcm4che's emf2sf")
    return path, ds, headers


#: the record beside a volume read from a multi-frame file (``enhanced_volume``): the input as given and the file
SOURCE_RECORD = "dicom_source.json"


def enhanced_volume(path: str | os.PathLike, given: str | os.PathLike | None = None,
                    frames: list | None = None) -> Path:
    """The volume of a multi-frame DICOM image (an Enhanced CT) as a NIfTI file that MONAI's readers read: built once
    per file (its path, size and modification time) and input under ``~/.cache/monai_unet_variants/dicom_volumes``,
    named after ``given`` (the folder or file of the datalist, so that outputs are named as for a series folder), with
    a ``dicom_source.json`` record beside it (``dicom_source``: what a DICOM SEG refers to); the cache is kept within
    its size limit (``user_cache``), never removing what a running process uses.

    The frames are stacked by position along their normal (their order in the file does not matter), their stored
    values taken to Hounsfield units with each frame's rescale slope and intercept; the affine is the one ITK gives
    the same frames as a series of single-frame files (RAS, origin at the first frame's first pixel). It checks no
    geometry: ``check_dicom_folder`` checks the frames as it checks a series' slices, then calls this.

    Args:
        path: the multi-frame file.
        given: the input as the datalist names it. Defaults to ``path``.
        frames: the frames' headers (``_frame_headers``). Defaults to reading them from ``path``.

    Raises:
        DicomSeriesError: the pixel data cannot be decoded (its transfer syntax and the decoder to install named) or
            does not hold one grey-level plane per frame.
    """
    import pydicom

    path = Path(path)
    given = Path(given) if given is not None else path
    stat = path.stat()
    text = f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}|{given.resolve()}|nii"  # |nii: not the earlier .nii.gz
    key = hashlib.sha256(text.encode()).hexdigest()[:16]
    name = (given.name[:-4] if given.name.lower().endswith(".dcm") else given.name) + ".nii"

    def build(entry: Path) -> None:
        ds = pydicom.dcmread(str(path))  # its header was read and checked already
        try:
            pixels = ds.pixel_array
        except Exception as err:  # a decoder that is missing (JPEG 2000, JPEG-LS) or data that does not decode
            syntax = getattr(ds.file_meta, "TransferSyntaxUID", None)
            raise DicomSeriesError(
                f"{path}: its pixel data cannot be decoded ({type(err).__name__}: {err}); transfer syntax "
                f"{getattr(syntax, 'name', syntax)}. Install the decoder pydicom names (e.g. pip install pylibjpeg "
                "pylibjpeg-openjpeg), or convert the file first, e.g. to NIfTI with dcm2niix") from err
        headers = frames if frames is not None else _frame_headers(path, ds)
        if headers is None or pixels.shape != (len(headers), int(ds.Rows), int(ds.Columns)):
            raise DicomSeriesError(f"{path}: its pixel data has shape {pixels.shape}, not one grey-level plane of "
                                   f"{ds.Rows} x {ds.Columns} for each of its {ds.NumberOfFrames} frames")
        volume, affine = _stack(pixels, [f for _, f in headers])
        _write_volume(entry / name, volume, affine)
        from .checkpoints import atomic_write

        content = json.dumps({"input": str(given.resolve()), "dicom": str(path.resolve())}, indent=2) + "\n"
        atomic_write(entry / SOURCE_RECORD, lambda f: f.write(content.encode()))
        logger.info(f"read the multi-frame DICOM file {path} ({len(headers)} frames) as a volume: {entry / name}")

    return cached("dicom_volumes", key, [name, SOURCE_RECORD], build) / name


def _stack(pixels: np.ndarray, frames: list) -> tuple[np.ndarray, np.ndarray]:
    """The frames' pixels ``(frames, rows, columns)`` as a volume ``(columns, rows, slices)`` in Hounsfield units,
    slices ordered along the frames' normal, and its RAS affine (as ITK reads a series and MONAI turns it to RAS).

    Each frame is rescaled on its own (no float64 copy of the whole volume); int16 where every slope and intercept is
    a whole number and the values fit, else float32. The volume is the frames' memory seen in Fortran order (as NIfTI
    stores it), not copied again."""
    order, affine = _grid(frames)
    slope = np.array([float(f.RescaleSlope) for f in frames])
    intercept = np.array([float(f.RescaleIntercept) for f in frames])
    low, high = float(pixels.min()), float(pixels.max())
    ends = np.concatenate([low * slope + intercept, high * slope + intercept])
    whole = np.all(slope == np.rint(slope)) and np.all(intercept == np.rint(intercept))
    fits = whole and ends.min() >= np.iinfo(np.int16).min and ends.max() <= np.iinfo(np.int16).max
    values = np.empty(pixels.shape, np.int16 if fits else np.float32)
    for k, i in enumerate(order):
        values[k] = pixels[i] * slope[i] + intercept[i]
    return values.transpose(2, 1, 0), affine


def _grid(slices: list) -> tuple[np.ndarray, np.ndarray]:
    """The order of slices (or frames) along their normal, and the RAS affine of the volume they stack into (as ITK
    reads a series and MONAI turns it to RAS): origin at the first slice's first pixel, columns along ``i``, rows
    along ``j``, slices along ``k``."""
    orientation = np.array([float(v) for v in slices[0].ImageOrientationPatient])
    row_cos, col_cos = orientation[:3], orientation[3:]
    positions = np.array([[float(v) for v in f.ImagePositionPatient] for f in slices])
    order = np.argsort(positions @ np.cross(row_cos, col_cos), kind="stable")
    row_spacing, col_spacing = (float(v) for v in slices[0].PixelSpacing)
    first = positions[order[0]]
    step = (positions[order[-1]] - first) / (len(slices) - 1) if len(slices) > 1 else np.cross(row_cos, col_cos)
    lps = np.eye(4)
    lps[:3, 0], lps[:3, 1], lps[:3, 2], lps[:3, 3] = row_cos * col_spacing, col_cos * row_spacing, step, first
    return order, np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps


def image_grid(path: str | os.PathLike, slices: list | None = None) -> tuple[tuple[int, int, int], np.ndarray]:
    """The voxel grid ``(shape, RAS affine)`` that an input (as ``check_dicom_folder`` or the NIfTI check returns it)
    is read on, from headers alone: a DICOM series folder's slices (as ITK stacks them; ``slices``: their headers,
    where read already) or a NIfTI file's header."""
    p = Path(path)
    if p.is_dir():
        slices = slices if slices is not None else [ds for _, ds in _headers(p)[0]]
        _, affine = _grid(slices)
        return (int(slices[0].Columns), int(slices[0].Rows), len(slices)), affine
    import nibabel as nib

    image = nib.load(str(p))
    return tuple(int(n) for n in image.shape[:3]), np.asarray(image.affine, dtype=np.float64)


def _write_volume(out: Path, volume: np.ndarray, affine: np.ndarray) -> None:
    """``volume`` as the NIfTI file ``out`` (written atomically): gzip-compressed (level 1) where its name ends in
    ``.gz`` (a label map: mostly zeros, a few hundred kB), else plain (a CT volume: compressing it took 80 % of reading
    an Enhanced CT, and every later read of it would spend 0.3 s decompressing 512 x 512 x 112 voxels)."""
    import gzip

    import nibabel as nib

    from .checkpoints import atomic_write

    image = nib.Nifti1Image(volume, affine)
    image.header.set_qform(affine, code=1)
    image.header.set_sform(affine, code=1)

    compress = out.name.endswith(".gz")

    def write(f: Any) -> None:
        if compress:
            with gzip.GzipFile(fileobj=f, mode="wb", compresslevel=1) as z:
                image.to_stream(z)
        else:
            image.to_stream(f)

    atomic_write(out, write, suffix=".nii.gz" if compress else ".nii")


def dicom_source(path: str | os.PathLike) -> tuple[Path, Path] | None:
    """Where an input that the bundles read comes from, when it is DICOM: ``(input, DICOM)``, the input as the
    datalist names it and the DICOM that a DICOM SEG of it refers to: a series folder's own path twice, the folder or
    file of a multi-frame image and that file for a volume read from one (``enhanced_volume``); ``None`` for any other
    input (a NIfTI file).

    Examples::

        >>> dicom_source("/nowhere/ct.nii.gz") is None
        True
    """
    p = Path(path)
    if p.is_dir():
        return p, p
    record = p.parent / SOURCE_RECORD
    if not (p.name.endswith((".nii", ".nii.gz")) and record.is_file()):
        return None
    try:
        content = json.loads(record.read_text())
        return Path(content["input"]), Path(content["dicom"])
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ValueError(f"{record}, the record of where {p} was read from, cannot be read ({err}): remove "
                         f"{p.parent} and run again to read the DICOM file anew") from err


def _check_content(folder: Path, uid: str, items: list) -> None:
    """Refuse a series that is not a CT volume: another Modality, or too few slices to be one."""
    modality = _modality(items[0][1])
    if modality and modality != "CT":
        raise DicomSeriesError(
            f"series {uid} in {folder} has Modality {modality}, not CT: the networks are trained on CT in Hounsfield "
            "units and would segment it without meaning. Give a CT series, or --allow_non_ct true if this one is CT "
            "under another Modality tag")
    if len(items) < MIN_SLICES:
        raise DicomSeriesError(
            f"series {uid} in {folder} has {len(items)} slice{'s' if len(items) != 1 else ''}, fewer than the "
            f"{MIN_SLICES} of a CT volume (a localizer, key images or a partial export?); give the whole series, or "
            "--allow_non_ct true to segment it anyway")


def _not_an_image(path: Path) -> str:
    """What a DICOM file given as an input is, when it is not an image to segment."""
    import pydicom

    ds = pydicom.dcmread(str(path), stop_before_pixels=True)
    sop = getattr(getattr(ds, "SOPClassUID", None), "name", "no SOP class")
    if _modality(ds) in NOT_IMAGES:
        return (f"{path} is a DICOM {_modality(ds)} object ({sop}), not an image to segment: give the CT series' "
                "folder or Enhanced CT file as the image; a label is a NIfTI label map or a DICOM SEG beside its image "
                "(a datalist item {'image': ..., 'label': ...})")
    return f"{path} is not a DICOM image ({sop}, no SeriesInstanceUID)"


def check_dicom_folder(folder: str | os.PathLike, series: str | None = None, allow_non_ct: bool = False) -> str:
    """Check a DICOM series folder (or one multi-frame DICOM file) and return the path to read: the folder itself, its
    one DICOM subfolder, a folder of links to the chosen series' files, or for a series that is one multi-frame image
    (an Enhanced CT) its volume as a NIfTI file (``enhanced_volume``).

    Args:
        folder: the folder (or multi-frame file) given in the datalist.
        series: ``None`` (a folder must hold one series), ``"largest"`` or a ``SeriesInstanceUID`` to choose one of
            several (logged). Defaults to ``None``.
        allow_non_ct: read a series whose Modality is not CT, or with fewer than ``MIN_SLICES`` slices (logged).
            Defaults to ``False``.

    Raises:
        DicomSeriesError: no DICOM files (saying what the folder holds), several series without ``series``, a slice
            that cannot be read, a multi-frame file without per-frame positions or beside other files, a single
            slice given as a file, slices (or frames) of different sizes or pixel spacings, missing or duplicated
            slices, uneven spacing, mixed orientations, slices sheared by a gantry tilt, a Modality other than CT or
            too few slices (unless ``allow_non_ct``), pixel data that cannot be decoded.
    """
    given = Path(folder)
    folder = given.parent if given.is_file() else given
    found, other = _headers(folder, [given] if given.is_file() else None)
    if given.is_file():
        if not found:
            raise DicomSeriesError(_not_an_image(given))
        if _frame_count(found[0][1]) == 1:
            hint = "give the folder of its series, which is read as one volume"
            raise DicomSeriesError(f"{given} is a single DICOM slice: {hint}")
    if not found:
        subfolders = [p for p in sorted(folder.iterdir()) if p.is_dir()]
        with_dicom = [p for p in subfolders if _headers(p)[0]]
        if len(with_dicom) == 1:
            logger.warning(f"DICOM folder {folder} holds no DICOM file itself; reading its subfolder {with_dicom[0]}")
            return check_dicom_folder(with_dicom[0], series, allow_non_ct)
        what = (f"{len(other)} other file(s) (e.g. {other[0].name})" if other else "no files") + (
            f" and {len(subfolders)} subfolder(s)" if subfolders else "")
        if len(with_dicom) > 1:
            raise DicomSeriesError(f"{folder} holds no DICOM file itself but {len(with_dicom)} subfolders with "
                                   f"DICOM series ({', '.join(p.name for p in with_dicom)}): list each in the datalist")
        raise DicomSeriesError(f"{folder} is not a DICOM series: it holds {what} and no DICOM file")
    groups: dict[str, list] = {}
    for path, ds in found:
        groups.setdefault(str(ds.SeriesInstanceUID), []).append((path, ds))
    uid, items = _choose(folder, groups, series)
    volume = _multi_frame(folder, uid, items)
    if volume is not None:
        items = volume[2]
    try:
        _check_content(folder, uid, items)
    except DicomSeriesError as err:
        if not allow_non_ct:
            raise
        logger.warning(f"{err} (read anyway: --allow_non_ct)")
    _check_geometry(folder, uid, items)
    if volume is not None:
        return str(enhanced_volume(volume[0], given, items))
    if len(groups) > 1 or other:
        objects = [p for p in other if is_dicom_file(p)]
        if objects:
            logger.info(f"DICOM folder {folder}: reading series {uid}; {len(objects)} other DICOM file(s) left out "
                        f"(not images of it, e.g. {objects[0].name})")
        return str(_series_folder(folder, uid, items))
    return str(folder)


def series_choice(value: Any) -> str | None:
    """The ``--dicom_series`` option: empty or ``none`` -> ``None``."""
    text = str(value).strip() if value is not None else ""
    return None if text.lower() in ("", "none", "false") else text
