"""Enhanced (multi-frame) CT: the whole volume in one DICOM file, as newer scanners export it. Made here from the
generated single-frame series with highdicom's legacy converter (a real Legacy Converted Enhanced CT Image, every
frame's position and rescale in its functional groups), read through the bundles' input check and compared with
ITK's reading of the single-frame series it came from; refused where its geometry is not a volume's; written back
as a DICOM SEG that refers to its frames."""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
import torch

import monai_unet_variants.bundle as mb
from monai_unet_variants.bundle.dicom import DicomSeriesError, dicom_source
from monai_unet_variants.data import generate_case, write_dicom_series

highdicom = pytest.importorskip("highdicom")

SHAPE = (48, 40, 12)


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch) -> Path:
    """The volumes read from multi-frame files go to this test's own cache."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return tmp_path / "cache" / "monai_unet_variants" / "dicom_volumes"


def _series(folder: Path, intercept: int = 0, seed: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """A generated CT series in ``folder`` (stored values = HU - ``intercept``), and its label map and affine."""
    image, label, affine = generate_case(seed, shape=SHAPE)
    write_dicom_series(image, affine, folder, seed=seed)
    if intercept:
        for path in folder.iterdir():
            ds = pydicom.dcmread(str(path))
            stored = ds.pixel_array.astype(np.int32) - intercept
            ds.PixelRepresentation = 0
            ds.PixelData = stored.astype(np.uint16).tobytes()
            ds.RescaleIntercept = intercept
            ds.save_as(str(path))
    return label, affine


def _enhanced(series: Path, out: Path, order: str = "as stored") -> Path:
    """``series`` as one Legacy Converted Enhanced CT file ``out/volume.dcm``; ``order`` of its frames: as the
    converter stores them (by position, from the head down), or shuffled (each frame's pixels and functional groups
    moved together; ITK then reads a wrong volume: unit spacing, slices out of order)."""
    from pydicom.sequence import Sequence
    from pydicom.uid import generate_uid

    slices = [pydicom.dcmread(str(p)) for p in sorted(series.iterdir())]
    image = highdicom.legacy.LegacyConvertedEnhancedCTImage(
        legacy_datasets=slices, series_instance_uid=generate_uid(), series_number=2, sop_instance_uid=generate_uid(),
        instance_number=1)
    if order == "shuffled":
        perm = np.random.default_rng(0).permutation(len(slices))
        groups = list(image.PerFrameFunctionalGroupsSequence)
        image.PerFrameFunctionalGroupsSequence = Sequence([groups[i] for i in perm])
        image.PixelData = np.ascontiguousarray(image.pixel_array[perm]).tobytes()
    out.mkdir(parents=True, exist_ok=True)
    image.save_as(str(out / "volume.dcm"))
    return out / "volume.dcm"


def _jpeg2000(volume: Path) -> None:
    """Store ``volume``'s frames compressed, as JPEG 2000 lossless (Pillow's encoder), as scanners often send them."""
    import io

    from PIL import Image

    ds = pydicom.dcmread(str(volume))
    frames = []
    for plane in ds.pixel_array:
        buffer = io.BytesIO()
        Image.fromarray(plane.astype(np.uint16)).save(buffer, format="JPEG2000", irreversible=False, no_jp2=True)
        frames.append(buffer.getvalue())
    ds.file_meta.TransferSyntaxUID = pydicom.uid.JPEG2000Lossless
    ds.PixelData = pydicom.encaps.encapsulate(frames)
    ds.save_as(str(volume), enforce_file_format=True)


def on_grid(label: np.ndarray, affine: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """``label`` (on ``affine``) seen on another voxel grid ``grid`` of the same lattice and shape (axes flipped or
    swapped): each voxel takes the label value at its position."""
    to_label = np.linalg.inv(affine) @ grid
    index = np.rint(np.tensordot(to_label[:3, :3], np.indices(label.shape), axes=1) + to_label[:3, 3, None, None, None])
    return label[tuple(index.astype(int))]


def _load(path: str):
    from monai.transforms import LoadImage

    from monai_unet_variants.bundle.checks import nifti_reader

    return LoadImage(image_only=True, reader=nifti_reader())(path)


@pytest.mark.parametrize("order,syntax", [("as stored", "native"), ("shuffled", "jpeg2000")])
def test_an_enhanced_ct_reads_as_its_single_frame_series(tmp_path, cache, order, syntax):
    """The folder of the file, and the file itself, read as the volume that ITK reads from the series (same values in
    HU after a rescale intercept of -1024, same affine), whatever the order of the frames, native or JPEG 2000
    compressed; built once and reused."""
    series = tmp_path / "series"
    _series(series, intercept=-1024)
    volume = _enhanced(series, tmp_path / "case7", order)
    if syntax == "jpeg2000":
        _jpeg2000(volume)
    assert int(pydicom.dcmread(str(volume), stop_before_pixels=True).NumberOfFrames) == SHAPE[2]
    reference = _load(mb.check_inputs([str(series)])[0])  # MONAI's ITK reader on the single-frame series

    read = mb.check_inputs([str(tmp_path / "case7")])[0]
    assert Path(read).parent.parent == cache and Path(read).name == "case7.nii"
    assert dicom_source(read) == ((tmp_path / "case7").resolve(), volume.resolve())
    image = _load(read)
    assert tuple(image.shape) == SHAPE and float(image.min()) < -500  # Hounsfield units: air is there
    torch.testing.assert_close(image, reference, rtol=0, atol=0)
    np.testing.assert_allclose(np.asarray(image.affine), np.asarray(reference.affine), atol=1e-4)

    written = Path(read).stat().st_mtime_ns
    assert mb.check_inputs([str(tmp_path / "case7")]) == [read] and Path(read).stat().st_mtime_ns == written
    direct = mb.check_inputs([str(volume)])[0]  # the file named in the datalist: named after the file
    assert Path(direct).name == "volume.nii" and dicom_source(direct) == (volume.resolve(), volume.resolve())
    torch.testing.assert_close(_load(direct), reference, rtol=0, atol=0)


def test_the_volumes_read_are_kept_within_the_cache_limit(tmp_path, cache, monkeypatch, caplog):
    """With ``MONAI_UNET_VARIANTS_CACHE_GB=0`` a run keeps the volumes it reads while it runs (it reads them again
    later); the next run's first new volume removes them; a volume removed is read anew when asked for again."""
    from monai_unet_variants.bundle.user_cache import CACHE_LIMIT_ENV, release

    series = tmp_path / "series"
    _series(series)
    _enhanced(series, tmp_path / "a"), _enhanced(series, tmp_path / "b")
    monkeypatch.setenv(CACHE_LIMIT_ENV, "0")
    first = Path(mb.check_inputs([str(tmp_path / "a")])[0])
    second = Path(mb.check_inputs([str(tmp_path / "b")])[0])
    assert first.is_file() and second.is_file()  # both in use by this run
    release()  # the run ends
    with caplog.at_level(logging.INFO, logger="monai_unet_variants.bundle"):
        again = Path(mb.check_inputs([str(tmp_path / "a")])[0])  # cached: used, nothing written, nothing pruned
        assert again == first and "removed" not in caplog.text
        _enhanced(series, tmp_path / "c")
        third = Path(mb.check_inputs([str(tmp_path / "c")])[0])
    assert third.is_file() and first.is_file() and not second.parent.exists()
    assert "removed 1 least recently used entry" in caplog.text
    torch.testing.assert_close(_load(str(third)), _load(str(first)), rtol=0, atol=0)
    monkeypatch.setenv(CACHE_LIMIT_ENV, "20 GB")
    with pytest.raises(ValueError, match=f"{CACHE_LIMIT_ENV}='20 GB': expected the DICOM cache's limit"):
        mb.check_inputs([str(tmp_path / "a")])  # cached, nothing to write: refused all the same


def test_an_enhanced_ct_with_a_missing_or_doubled_frame_is_refused(tmp_path):
    """The series checks run on the frames: a frame left out (uneven spacing) or one frame twice, named by frame."""
    series = tmp_path / "series"
    _series(series)
    (series / "IM0005.dcm").unlink()
    _enhanced(series, tmp_path / "gap")
    with pytest.raises(DicomSeriesError, match=r"series [0-9.]+ in .*gap is not evenly spaced: 5 mm between frame "
                                               r"\d+ of volume.dcm and frame \d+ of volume.dcm, 2.5 mm elsewhere "
                                               r"\(1 slice missing there\?\)"):
        mb.check_inputs([str(tmp_path / "gap")])
    doubled = tmp_path / "doubled_series"
    shutil.copytree(series, doubled)
    ds = pydicom.dcmread(str(doubled / "IM0004.dcm"))
    ds.SOPInstanceUID = pydicom.uid.generate_uid()
    ds.save_as(str(doubled / "IM0005.dcm"))  # a second frame at IM0004's position
    _enhanced(doubled, tmp_path / "doubled")
    with pytest.raises(DicomSeriesError, match=r"frame \d+ of volume.dcm and frame \d+ of volume.dcm lie at the same "
                                               "position"):
        mb.check_inputs([str(tmp_path / "doubled")])
    assert not list((tmp_path / "cache").rglob("*.nii*"))  # nothing read from a refused volume


def test_what_is_not_one_enhanced_volume_is_refused(tmp_path):
    """A multi-frame file beside single-frame files of its series, a single slice given as a file, and a multi-frame
    file whose pixel data cannot be decoded (its transfer syntax and the way out named)."""
    series = tmp_path / "series"
    _series(series)
    volume = _enhanced(series, tmp_path / "mixed")
    for path in list(series.iterdir())[:3]:
        ds = pydicom.dcmread(str(path))
        ds.SeriesInstanceUID = pydicom.dcmread(str(volume), stop_before_pixels=True).SeriesInstanceUID
        ds.save_as(str(tmp_path / "mixed" / path.name))
    with pytest.raises(DicomSeriesError, match=r"volume.dcm in .*mixed is a multi-frame DICOM file \(12 frames, "
                                               r"Legacy Converted Enhanced CT Image Storage\), one of 4 files of "
                                               r"series [0-9.]+ \(1 multi-frame\)"):
        mb.check_inputs([str(tmp_path / "mixed")])
    with pytest.raises(DicomSeriesError, match=r"IM0001.dcm is a single DICOM slice: give the folder of its series"):
        mb.check_inputs([str(series / "IM0001.dcm")])
    broken = tmp_path / "jpeg" / "volume.dcm"
    broken.parent.mkdir()
    ds = pydicom.dcmread(str(volume))
    ds.file_meta.TransferSyntaxUID = pydicom.uid.JPEG2000Lossless  # JPEG 2000 frames that do not decode: damaged
    ds.PixelData = pydicom.encaps.encapsulate([b"\xff\x4f\xff\x51" + bytes(60)] * int(ds.NumberOfFrames))
    ds.save_as(str(broken), enforce_file_format=True)
    with pytest.raises(DicomSeriesError, match=rf"(?s){broken}: its pixel data cannot be decoded \(.*\); "
                                               r"transfer syntax JPEG 2000 Image Compression \(Lossless Only\)\. "
                                               "Install the decoder"):
        mb.check_inputs([str(broken.parent)])


def test_a_dicom_seg_of_an_enhanced_ct_refers_to_its_frames(tmp_path):
    """The inference writer on a volume read from an Enhanced CT: the NIfTI named after the input folder, and a DICOM
    SEG whose frames refer to the source's frames, holding the label map at each frame's position."""
    from monai.data import MetaTensor

    from monai_unet_variants.bundle.dicom_seg import label_frames
    from monai_unet_variants.bundle.outputs import SegmentationWriter

    series = tmp_path / "series"
    label, affine = _series(series)
    volume = _enhanced(series, tmp_path / "case7", "shuffled")
    read = mb.check_inputs([str(tmp_path / "case7")])[0]
    nifti_affine = _load(read).affine.numpy()
    pred = MetaTensor(torch.as_tensor(label[None], dtype=torch.float32), affine=nifti_affine,
                      meta={"filename_or_obj": read})
    out = tmp_path / "out"
    writer = SegmentationWriter("pred", str(out), [read], dicom_seg=True, algorithm="attunet_pancreas",
                                print_log=False)
    writer.check_outputs()
    writer({"pred": pred})
    assert sorted(p.name for p in out.iterdir()) == ["case7_seg.dcm", "case7_seg.nii.gz"] and not writer.failed
    seg = highdicom.seg.segread(str(out / "case7_seg.dcm"))
    source = pydicom.dcmread(str(volume), stop_before_pixels=True)
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == source.SeriesInstanceUID
    numbers = list(range(1, SHAPE[2] + 1))
    frames = seg.get_pixels_by_source_frame(source_sop_instance_uid=source.SOPInstanceUID,
                                            source_frame_numbers=numbers, combine_segments=True,
                                            ignore_spatial_locations=True)
    from monai_unet_variants.bundle.dicom import _frame_headers

    headers = [f for _, f in _frame_headers(volume, source)]
    expected = label_frames(label, affine, headers)
    assert expected.shape == (SHAPE[2], SHAPE[1], SHAPE[0]) and set(np.unique(expected)) == {0, 1, 2}
    np.testing.assert_array_equal(frames, expected)
    np.testing.assert_array_equal(np.asarray(nib.load(str(out / "case7_seg.nii.gz")).dataobj), label)


def test_two_runs_linking_one_series_at_once(tmp_path, monkeypatch):
    """A folder of links to the chosen series (a folder holding two series): a link that another run made between
    the check and the link is taken, not an error."""
    from monai_unet_variants.bundle import dicom

    series = tmp_path / "two"
    _series(series, seed=3)
    _series(series / "other", seed=4)
    for path in (series / "other").iterdir():
        path.rename(series / f"b_{path.name}")
    (series / "other").rmdir()
    made = []
    real_symlink = os.symlink

    def racing(src, dst, *args):  # the other run wins every link: it exists when this one makes it
        real_symlink(src, dst, *args)
        made.append(dst)
        raise FileExistsError(17, "File exists", str(dst))

    monkeypatch.setattr(dicom.os, "symlink", racing)
    read = dicom.check_dicom_folder(series, "largest")
    assert len(made) == len(os.listdir(read)) == SHAPE[2]


def test_largest_counts_an_enhanced_ct_by_its_frames(tmp_path, cache):
    """A folder holding an Enhanced CT (one file, 12 frames) and a 3-slice series of single files (a localizer):
    refused without a choice, each listed with its files and frames; ``--dicom_series largest`` reads the volume."""
    series = tmp_path / "series"
    _series(series)
    both = tmp_path / "both"
    _enhanced(series, both)
    _series(tmp_path / "scout", seed=5)
    for path in sorted((tmp_path / "scout").iterdir())[:3]:
        shutil.copy(path, both / f"scout_{path.name}")
    with pytest.raises(DicomSeriesError, match="holds 2 series: ") as err:
        mb.check_inputs([str(both)])
    assert "(1 file holding 12 frames, " in str(err.value) and "(3 files, " in str(err.value)
    read = mb.check_inputs([str(both)], dicom_series="largest")[0]
    assert Path(read).parent.parent == cache and tuple(_load(read).shape) == SHAPE


def test_a_dicom_seg_label_beside_an_enhanced_ct(tmp_path):
    """A SEG made on the series reads as the Enhanced CT's label (the label map on its grid); a SEG of another scan
    (another frame of reference) is refused naming both."""
    from monai_unet_variants.bundle.dicom_seg import write_dicom_seg

    series = tmp_path / "series"
    label, affine = _series(series)
    _enhanced(series, tmp_path / "case7", "shuffled")
    seg = write_dicom_seg(label, affine, series, tmp_path / "annotation.dcm")
    [item] = mb.check_inputs([{"image": str(tmp_path / "case7"), "label": str(seg)}])
    read = nib.load(item["label"])
    np.testing.assert_allclose(read.affine, nib.load(item["image"]).affine, atol=1e-4)
    expected = on_grid(label, affine, read.affine)
    assert set(np.unique(expected)) == {0, 1, 2}
    np.testing.assert_array_equal(np.asarray(read.dataobj), expected)
    other = tmp_path / "other"
    other_label, _ = _series(other, seed=4)
    other_seg = write_dicom_seg(other_label, affine, other, tmp_path / "other.dcm")
    with pytest.raises(ValueError, match=rf"DICOM SEG {other_seg} was made on frame of reference [0-9.]+, its image "
                                         rf"{(tmp_path / 'case7').resolve()} lies on [0-9.]+: a segmentation of "
                                         "another scan"):
        mb.check_inputs([{"image": str(tmp_path / "case7"), "label": str(other_seg)}])
