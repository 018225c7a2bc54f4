"""DICOM Segmentation objects for a DICOM series input: the label map back to the PACS, over its source series.

``write_dicom_seg`` takes a label map on the source series' voxel grid (as the inference bundle writes its NIfTI
output: the prediction taken back through the preprocessing) and writes a binary DICOM SEG (highdicom) with one
segment per class, coded with SNOMED CT terms, on the series' frame of reference and referencing its Study, Series
and SOP Instance UIDs, so that a PACS, OHIF or 3D Slicer shows it over the series. Each frame is matched to its
source slice by position: the voxel of every frame pixel is found through the slice's own ``ImagePositionPatient``,
``ImageOrientationPatient`` and ``PixelSpacing`` and the label map's affine, whatever the order of the files or the
direction of the slices. A multi-frame source (an Enhanced CT, read through ``dicom.enhanced_volume``) is matched
the same way frame by frame, from its frames' functional groups, and the SEG refers to its frames.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any

import numpy as np

from .checkpoints import atomic_write, refuse_existing

__all__ = ["SEGMENTS", "is_dicom_seg", "label_frames", "read_dicom_seg", "seg_label_file", "write_dicom_seg"]

logger = logging.getLogger("monai_unet_variants.bundle")

#: label value -> (segment label, SNOMED CT category, SNOMED CT type), in pydicom's ``codes.SCT`` names
SEGMENTS: dict[int, tuple[str, str, str]] = {
    1: ("pancreas", "AnatomicalStructure", "Pancreas"),
    2: ("pancreatic tumour", "MorphologicallyAbnormalStructure", "Neoplasm"),
}
#: how far (in voxels) a frame pixel may fall from a voxel centre of the label map before the grids are refused
GRID_TOLERANCE = 0.01
_LPS = np.diag([-1.0, -1.0, 1.0])  # DICOM patient coordinates (LPS) <-> the RAS world of NIfTI/MONAI affines
#: patient and study attributes the SEG copies from its source: type 2 (present, possibly empty) in a CT image, yet
#: missing from some exports; an absent one is copied as empty, as the standard allows
_TYPE2 = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime", "AccessionNumber",
          "StudyID", "ReferringPhysicianName")


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("monai-unet-variants")
    except PackageNotFoundError:  # a model-zoo copy of the bundle runs without the package installed
        return "unknown"


def _source_images(source: Path) -> tuple[list[Any], list[Any]]:
    """The source's image headers (pydicom datasets, pixels not read) that the SEG refers to, and the headers of its
    frames in the order of the SEG's frames: a series folder's slices (both, in file order, read as
    ``check_dicom_folder`` reads them; the folder holds one series, checked before inference), or a multi-frame
    image (an Enhanced CT) and its frames' geometry from its functional groups."""
    from .dicom import _frame_headers, _headers

    if source.is_dir():
        images = [ds for _, ds in _headers(source)[0] if "ImagePositionPatient" in ds]
        frames = images
    else:
        images = [ds for _, ds in _headers(source.parent, [source])[0]]
        frames = [f for _, f in (_frame_headers(source, images[0]) or [])] if images else []
    if not frames:
        raise ValueError(f"DICOM {source} holds no image slice to reference")
    for ds in images:
        for keyword in _TYPE2:
            if keyword not in ds:
                setattr(ds, keyword, "")
    return images, frames


def _frame_voxels(ds: Any, to_index: np.ndarray, shape: tuple, what: str) -> np.ndarray:
    """The voxel ``(i, j, k)`` of every pixel of slice (or frame) ``ds`` on the grid of ``shape`` whose affine's
    inverse is ``to_index``: ``(3, Rows, Columns)`` integers.

    Raises:
        ValueError: naming the slice when its pixels do not fall on the grid's voxels (``what``: the grid's name).
    """
    rows, cols = int(ds.Rows), int(ds.Columns)
    row_cos, col_cos = (np.array([float(v) for v in ds.ImageOrientationPatient[i:i + 3]]) for i in (0, 3))
    row_spacing, col_spacing = (float(v) for v in ds.PixelSpacing)
    origin = np.array([float(v) for v in ds.ImagePositionPatient])
    # DICOM: pixel (r, c) lies at origin + c * col_spacing * row_cos + r * row_spacing * col_cos (LPS)
    steps = np.stack([origin, row_cos * col_spacing, col_cos * row_spacing])  # origin, one column, one row
    steps = steps @ _LPS.T  # RAS
    o = to_index[:3, :3] @ steps[0] + to_index[:3, 3]
    dc, dr = to_index[:3, :3] @ steps[1], to_index[:3, :3] @ steps[2]
    r, c = np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij")
    index = o[:, None, None] + dr[:, None, None] * r + dc[:, None, None] * c
    nearest = np.rint(index)
    off = float(np.abs(index - nearest).max())
    inside = all((nearest[a] >= 0).all() and (nearest[a] < shape[a]).all() for a in range(3))
    if off > GRID_TOLERANCE or not inside:
        where = getattr(ds, "description", None) or f"slice {ds.SOPInstanceUID}"
        raise ValueError(f"{where} does not lie on the {what}'s voxel grid "
                         f"({'up to %.3g voxels off' % off if off > GRID_TOLERANCE else 'outside the ' + what})")
    return nearest.astype(np.intp)


def label_frames(label: np.ndarray, affine: np.ndarray, slices: list[Any], source: str = "") -> np.ndarray:
    """The label map's values at every pixel of every source slice (or frame): ``(len(slices), Rows, Columns)``.

    Args:
        label: the label map, ``(X, Y, Z)``, on the series' voxel grid.
        affine: its RAS affine (voxel index -> mm).
        slices: the series' slice headers, or a multi-frame image's frame headers (``dicom._frame_headers``).
        source: the series' folder, for messages.

    Raises:
        ValueError: naming ``source`` when a slice's pixels do not fall on the label map's voxels (another series'
            grid, or a label map that was resampled).
    """
    to_index = np.linalg.inv(np.asarray(affine, dtype=np.float64))
    frames = []
    for ds in slices:
        try:
            ijk = _frame_voxels(ds, to_index, label.shape, "label map")
        except ValueError as err:
            raise ValueError(f"DICOM series {source}: {err}; the label map must be on the series' own grid") from None
        frames.append(label[ijk[0], ijk[1], ijk[2]])
    return np.stack(frames)


def _segment_classes(ds: Any, path: Path, segments: Mapping[int, tuple[str, str, str]]) -> dict[int, int]:
    """SEG segment number -> label value: the segment whose property type is a class's SNOMED CT code (or, without a
    code, whose label is the class's name) takes that class's value.

    Raises:
        ValueError: naming the file and the segment that is none of ``segments``.
    """
    from pydicom.sr.codedict import codes

    by_code = {getattr(codes.SCT, kind).value: value for value, (_, _, kind) in segments.items()}
    by_name = {name.lower(): value for value, (name, _, _) in segments.items()}
    found = {}
    for item in ds.SegmentSequence:
        number, label = int(item.SegmentNumber), str(getattr(item, "SegmentLabel", "") or "")
        code = item.SegmentedPropertyTypeCodeSequence[0] if "SegmentedPropertyTypeCodeSequence" in item else None
        value = by_code.get(str(code.CodeValue)) if code is not None else None
        value = value if value is not None else by_name.get(label.strip().lower())
        if value is None:
            known = ", ".join(f"{name} (SCT {getattr(codes.SCT, kind).value})"
                              for _, (name, _, kind) in sorted(segments.items()))
            meaning = f"{code.CodingSchemeDesignator} {code.CodeValue} {code.CodeMeaning}" if code is not None else "-"
            raise ValueError(f"DICOM SEG {path}: segment {number} {label!r} ({meaning}) is none of the classes the "
                             f"bundles train: {known}")
        found[number] = value
    return found


def read_dicom_seg(path: str | os.PathLike, shape: tuple, affine: np.ndarray,
                   segments: Mapping[int, tuple[str, str, str]] | None = None, image: str = "") -> np.ndarray:
    """A binary DICOM SEG (one made in 3D Slicer, OHIF or by ``write_dicom_seg``) as a label map on an image's grid:
    every frame's pixels put on the voxels they lie on (each frame's own position, orientation and spacing), each
    segment's voxels set to its class (``segments``, matched by SNOMED CT code or name; a higher class over a lower
    one where segments overlap, as the tumour lies within the pancreas).

    Args:
        path: the SEG file.
        shape: the image's voxel grid ``(X, Y, Z)``.
        affine: its RAS affine.
        segments: label value -> (label, SNOMED CT category, type). Defaults to ``SEGMENTS``.
        image: the image's path, for messages. Defaults to ``""``.

    Returns:
        ``uint8`` label map of ``shape``.

    Raises:
        ValueError: naming the file: not a binary SEG, a segment of no class, or a frame off the image's grid.
    """
    import pydicom

    from .dicom import _frame_headers

    path = Path(path)
    ds = pydicom.dcmread(str(path))
    if str(getattr(ds, "SegmentationType", "")).upper() != "BINARY":
        raise ValueError(f"DICOM SEG {path} is {getattr(ds, 'SegmentationType', 'of no SegmentationType')}, not "
                         "BINARY: threshold it into a binary SEG (or a NIfTI label map) first")
    classes = _segment_classes(ds, path, dict(SEGMENTS if segments is None else segments))
    frames = _frame_headers(path, ds)
    if frames is None:
        raise ValueError(f"DICOM SEG {path} gives no position for each frame (no per-frame functional groups)")
    pixels = ds.pixel_array.reshape(len(frames), int(ds.Rows), int(ds.Columns))
    numbers = [int(group.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
               for group in ds.PerFrameFunctionalGroupsSequence]
    to_index = np.linalg.inv(np.asarray(affine, dtype=np.float64))
    label = np.zeros(tuple(int(n) for n in shape), np.uint8)
    for n in sorted(range(len(frames)), key=lambda n: classes[numbers[n]]):  # lower classes first
        try:
            ijk = _frame_voxels(frames[n][1], to_index, label.shape, "image")
        except ValueError as err:
            raise ValueError(f"DICOM SEG {path}{' as the label of ' + image if image else ''}: {err}: a SEG of "
                             "another series, or of this one resampled?") from None
        inside = pixels[n] > 0
        label[ijk[0][inside], ijk[1][inside], ijk[2][inside]] = classes[numbers[n]]
    return label


def is_dicom_seg(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a DICOM Segmentation object (Modality SEG)."""
    import pydicom

    from .dicom import is_dicom_file

    if not is_dicom_file(path):
        return False
    return str(getattr(pydicom.dcmread(str(path), stop_before_pixels=True), "Modality", "")).upper() == "SEG"


def seg_label_file(path: str | os.PathLike, image: str | os.PathLike) -> Path:
    """A DICOM SEG given as the label of ``image`` (a checked input: a DICOM series folder, an Enhanced CT's volume or
    a NIfTI file) as the NIfTI label map that the pipeline reads (``read_dicom_seg`` on the image's grid): built once
    per SEG file (path, size, modification time) and image (path, modification time) under
    ``~/.cache/monai_unet_variants/dicom_labels``, named after the SEG.

    Raises:
        ValueError: naming both files when the SEG was made on another frame of reference than a DICOM image's (another
            scan), and as ``read_dicom_seg`` does.
    """
    import hashlib

    import pydicom

    from .dicom import _headers, _write_volume, dicom_source, image_grid
    from .user_cache import cached

    path, image = Path(path), Path(image)
    header = pydicom.dcmread(str(path), stop_before_pixels=True)
    source = dicom_source(image)  # a DICOM image: its series folder, or the Enhanced CT file it was read from
    slices = None  # a series folder's headers, read once for its frame of reference and its grid
    if source is not None:
        dicom = source[1]
        slices = [ds for _, ds in _headers(dicom)[0]] if dicom.is_dir() else None
        first = slices[0] if slices else pydicom.dcmread(str(dicom), stop_before_pixels=True)
        frame = str(getattr(first, "FrameOfReferenceUID", ""))
        if frame and str(getattr(header, "FrameOfReferenceUID", "")) != frame:
            raise ValueError(f"DICOM SEG {path} was made on frame of reference {header.FrameOfReferenceUID}, its image "
                             f"{source[0]} lies on {frame}: a segmentation of another scan")
    seg, img = path.stat(), image.stat()  # the image's time too: another image saved under its name has another grid
    text = f"{path.resolve()}|{seg.st_size}|{seg.st_mtime_ns}|{image.resolve()}|{img.st_mtime_ns}"
    key = hashlib.sha256(text.encode()).hexdigest()
    name = f"{path.stem}.nii.gz"

    def build(entry: Path) -> None:
        shape, affine = image_grid(image, slices)
        _write_volume(entry / name, read_dicom_seg(path, shape, affine, image=str(image)), affine)
        logger.info(f"read the DICOM SEG {path} as the label map of {image}: {entry / name}")

    return cached("dicom_labels", key[:16], [name], build) / name


def write_dicom_seg(label: np.ndarray, affine: np.ndarray, series_folder: str | os.PathLike, path: str | os.PathLike,
                    segments: Mapping[int, tuple[str, str, str]] | None = None, algorithm: str = "monai-unet-variants",
                    overwrite: bool = False) -> Path:
    """Write ``label`` (on the grid of the DICOM series in ``series_folder``) as a binary DICOM SEG at ``path``.

    One segment per class of ``segments`` (all of them, present or not, so that every SEG of a model holds the
    same segments), frames only where a class is present (highdicom's ``omit_empty_frames``), written through
    ``atomic_write`` and read back before it replaces anything.

    Args:
        label: label map ``(X, Y, Z)`` (or ``(1, X, Y, Z)``) with values 0 and the keys of ``segments``.
        affine: its RAS affine.
        series_folder: the folder of the source series, or the file of a multi-frame source image (an Enhanced CT,
            whose frames the SEG's frames then refer to).
        path: the SEG file to write.
        segments: label value -> (label, SNOMED CT category name, type name in ``pydicom``'s ``codes.SCT``).
            Defaults to ``SEGMENTS``.
        algorithm: the algorithm's name in the SEG (the bundle's). Defaults to ``"monai-unet-variants"``.
        overwrite: replace an existing file. Defaults to ``False``.

    Returns:
        ``path``.

    Raises:
        OutputError: the file cannot be written or read back (path and reason named), or exists already.
        ValueError: the label map is not on the series' grid, or holds values that are not segments.
    """
    import highdicom as hd
    from pydicom.sr.codedict import codes
    from pydicom.uid import generate_uid

    version = _version()
    segments = dict(SEGMENTS if segments is None else segments)
    folder, path = Path(series_folder), Path(path)
    label = np.asarray(label)
    label = label[0] if label.ndim == 4 else label
    unknown = sorted({int(v) for v in np.unique(label)} - {0, *segments})
    if unknown:
        raise ValueError(f"label map for {folder} has values {unknown} that are not segments {sorted(segments)}")
    images, headers = _source_images(folder)
    frames = label_frames(label, affine, headers, str(folder)).astype(np.uint8)
    descriptions = [
        hd.seg.SegmentDescription(
            segment_number=number,
            segment_label=name,
            segmented_property_category=getattr(codes.SCT, category),
            segmented_property_type=getattr(codes.SCT, kind),
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=hd.AlgorithmIdentificationSequence(
                name=algorithm, version=version, family=codes.cid7162.ArtificialIntelligence),
            anatomic_regions=[codes.SCT.Pancreas] if kind != "Pancreas" else None,
        )
        for number, (name, category, kind) in sorted(segments.items())
    ]
    seg = hd.seg.Segmentation(
        source_images=images,
        pixel_array=frames,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=generate_uid(),
        series_number=int(getattr(images[0], "SeriesNumber", 0) or 0) + 1000,
        sop_instance_uid=generate_uid(),
        instance_number=1,
        manufacturer="monai-unet-variants",
        manufacturer_model_name=algorithm,
        software_versions=version,
        device_serial_number="none",
        series_description=f"{algorithm} segmentation",
    )

    def write(f: IO[bytes]) -> None:
        seg.save_as(f)

    def verify(tmp: Path) -> None:
        import pydicom

        try:
            back = pydicom.dcmread(str(tmp))
            count = int(back.NumberOfFrames)
        except Exception as err:  # any reader failure means the file is not what was written
            raise OSError(5, f"the written DICOM SEG cannot be read back ({err})") from err
        if count != int(seg.NumberOfFrames):
            raise OSError(5, f"the written DICOM SEG has {count} frames, not {seg.NumberOfFrames}")

    refuse_existing(path, overwrite)
    atomic_write(path, write, verify, suffix=".dcm")
    return path
