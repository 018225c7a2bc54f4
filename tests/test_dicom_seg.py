"""DICOM SEG output: written by ``write_dicom_seg``, read back by highdicom and compared voxel by voxel with the
label map, for axial series stored with negative and with positive slice ordering; and through the inference bundle
(``--dicom_seg true``)."""

from __future__ import annotations

import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest

from monai_unet_variants.bundle.dicom_seg import write_dicom_seg
from monai_unet_variants.data import generate_case, write_dicom_series

highdicom = pytest.importorskip("highdicom")

SHAPE = (64, 56, 16)


def _series(tmp_path: Path, order: str) -> tuple[Path, np.ndarray, np.ndarray]:
    """A synthetic CT series and its label map. ``write_dicom_series`` stores file ``IM{n}`` with voxel slice
    ``k = nz - n``: with the usual affine (k towards the head) the positions fall as the instance number rises
    (negative ordering); with the slice axis flipped (k towards the feet) they rise (positive ordering)."""
    image, label, affine = generate_case(7, shape=SHAPE)
    if order == "positive":
        affine = affine.copy()
        affine[:3, 3] += affine[:3, 2] * (SHAPE[2] - 1)
        affine[:3, 2] *= -1
        image, label = image[:, :, ::-1].copy(), label[:, :, ::-1].copy()  # the same anatomy on the flipped grid
    folder = tmp_path / f"series_{order}"
    write_dicom_series(image, affine, folder, seed=7)
    return folder, label, affine


def _by_instance(folder: Path) -> list[pydicom.Dataset]:
    return sorted((pydicom.dcmread(str(p)) for p in folder.iterdir()), key=lambda ds: int(ds.InstanceNumber))


@pytest.mark.parametrize("order", ["negative", "positive"])
def test_dicom_seg_matches_the_label_map_slice_by_slice(tmp_path, order):
    folder, label, affine = _series(tmp_path, order)
    sources = _by_instance(folder)
    z = [float(ds.ImagePositionPatient[2]) for ds in sources]
    assert (np.diff(z) < 0).all() if order == "negative" else (np.diff(z) > 0).all()
    assert set(np.unique(label)) == {0, 1, 2}

    path = write_dicom_seg(label, affine, folder, tmp_path / "seg.dcm", algorithm="attunet_pancreas")
    seg = highdicom.seg.segread(str(path))
    uids = [ds.SOPInstanceUID for ds in sources]
    frames = seg.get_pixels_by_source_instance(source_sop_instance_uids=uids, combine_segments=True,
                                               ignore_spatial_locations=True)
    nz = SHAPE[2]
    expected = np.stack([label[:, :, nz - n].T for n in range(1, nz + 1)])  # file IM{n}: slice nz - n, rows = j
    assert frames.shape == expected.shape
    np.testing.assert_array_equal(frames, expected)

    # on the source series' frame of reference, referencing its study, series and instances
    src = sources[0]
    assert seg.FrameOfReferenceUID == src.FrameOfReferenceUID and seg.StudyInstanceUID == src.StudyInstanceUID
    assert seg.SeriesInstanceUID != src.SeriesInstanceUID and seg.Modality == "SEG"
    referenced = seg.ReferencedSeriesSequence[0]
    assert referenced.SeriesInstanceUID == src.SeriesInstanceUID
    assert {item.ReferencedSOPInstanceUID for item in referenced.ReferencedInstanceSequence} == set(uids)
    # one segment per class, SNOMED CT coded
    described = {int(s.SegmentNumber): (s.SegmentLabel, s.SegmentedPropertyTypeCodeSequence[0].CodeValue,
                                        s.SegmentedPropertyTypeCodeSequence[0].CodingSchemeDesignator)
                 for s in seg.SegmentSequence}
    assert described == {1: ("pancreas", "15776009", "SCT"), 2: ("pancreatic tumour", "108369006", "SCT")}
    assert seg.SegmentationType == "BINARY" and seg.SegmentSequence[0].SegmentAlgorithmName == "attunet_pancreas"


def test_dicom_seg_refuses_a_label_map_off_the_series_grid(tmp_path):
    folder, label, affine = _series(tmp_path, "negative")
    shifted = affine.copy()
    shifted[:3, 3] += [0.4, 0.0, 0.0]  # half a voxel: the series' pixels fall between the label map's voxels
    with pytest.raises(ValueError, match=f"DICOM series {folder}: slice [0-9.]+ does not lie on the label map's "
                                         "voxel grid \\(up to 0.5 voxels off\\)"):
        write_dicom_seg(label, shifted, folder, tmp_path / "seg.dcm")
    with pytest.raises(ValueError, match=f"label map for {folder} has values \\[3\\] that are not segments"):
        write_dicom_seg(np.full_like(label, 3), affine, folder, tmp_path / "seg.dcm")
    assert not (tmp_path / "seg.dcm").exists()


def test_a_case_whose_dicom_seg_cannot_be_written_is_reported_incomplete(tmp_path):
    """The NIfTI output is written, the SEG is not (a label map off the series' grid): the case is reported as
    incomplete, naming the written file and the SEG's cause, and the run fails at its end (at once without
    ``keep_going``)."""
    from monai.data import MetaTensor

    from monai_unet_variants.bundle.outputs import OutputError, OutputsReport, SegmentationWriter

    folder, label, affine = _series(tmp_path, "negative")
    shifted = affine.copy()
    shifted[:3, 3] += [0.4, 0.0, 0.0]
    pred = MetaTensor(label[None].astype(np.float32), affine=shifted, meta={"filename_or_obj": str(folder)})
    out = tmp_path / "out"
    writer = SegmentationWriter("pred", str(out), [str(folder)], dicom_seg=True, print_log=False)
    writer({"pred": pred})
    nifti, seg = out / "series_negative_seg.nii.gz", out / "series_negative_seg.dcm"
    assert nib.load(str(nifti)).shape == label.shape and not seg.exists()
    assert writer.written == [] and len(writer.failed) == 1
    assert writer.failed[0].startswith(f"{folder}: {nifti} was written, its DICOM SEG was not: [Errno 5] cannot "
                                       f"write the DICOM SEG {seg}: DICOM series {folder}: slice")
    with pytest.raises(OutputError, match="1 case\\(s\\) have no output or an incomplete one; the other 0 were "
                                          "written"):
        OutputsReport(writer)(None)
    strict = SegmentationWriter("pred", str(out), [str(folder)], dicom_seg=True, overwrite=True, keep_going=False)
    with pytest.raises(OutputError, match="cannot write the DICOM SEG"):
        strict({"pred": pred})


@pytest.mark.slow
def test_inference_writes_a_dicom_seg_for_a_dicom_input(tmp_path, sample, monkeypatch):
    """``--dicom_seg true`` through the bundle: a SEG beside the NIfTI output of each DICOM input (the same label map
    on the same slices), a series folder and the same series as one Enhanced CT file (the same label map as the
    series', its SEG referring to its frames); none for the NIfTI input; the SEG counts as an output (refused when it
    exists)."""
    from test_bundle import BUNDLE, TINY, run_bundle
    from test_dicom_enhanced import _enhanced

    from monai_unet_variants.bundle.dicom import _frame_headers
    from monai_unet_variants.bundle.dicom_seg import label_frames

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    root = tmp_path / "bundle"
    shutil.copytree(BUNDLE, root, ignore=shutil.ignore_patterns("eval", "models"))
    run_bundle("run", "--config_file", str(root / "configs" / "train.json"), "--dataset_dir", str(sample),
               "--epochs", "1", *TINY)
    series = tmp_path / "series_a"
    shutil.copytree(sample / "dicomTs" / "pancreas_005", series)
    enhanced = _enhanced(series, tmp_path / "enhanced_a")
    nifti = sample / "imagesTs" / "pancreas_005.nii.gz"
    out = tmp_path / "out"
    args = ["run", "--config_file", str(root / "configs" / "inference.json"), "--datalist",
            f"['{nifti}','{series}','{enhanced.parent}']", "--output_dir", str(out), "--dicom_seg", "True", *TINY[:6]]
    proc = run_bundle(*args)
    assert sorted(p.name for p in out.iterdir()) == ["enhanced_a_seg.dcm", "enhanced_a_seg.nii.gz",
                                                     "pancreas_005_seg.nii.gz", "series_a_seg.dcm",
                                                     "series_a_seg.nii.gz"]
    assert "1 input(s) are not DICOM series" in proc.stdout + proc.stderr
    assert f"read the multi-frame DICOM file {enhanced} (24 frames) as a volume" in proc.stdout + proc.stderr
    assert " - highdicom.base - INFO - " not in proc.stdout  # its INFO line per module copied: not the user's news
    seg = highdicom.seg.segread(str(out / "series_a_seg.dcm"))
    sources = _by_instance(series)
    frames = seg.get_pixels_by_source_instance(source_sop_instance_uids=[ds.SOPInstanceUID for ds in sources],
                                               combine_segments=True, ignore_spatial_locations=True)
    written = nib.load(str(out / "series_a_seg.nii.gz"))
    labels = np.asarray(written.dataobj)
    np.testing.assert_array_equal(frames, label_frames(labels, written.affine, sources))
    assert [int((frames == c).sum()) for c in (1, 2)] == [int((labels == c).sum()) for c in (1, 2)]
    # the Enhanced CT: the series' volume, so the series' label map, on the same grid
    from_enhanced = nib.load(str(out / "enhanced_a_seg.nii.gz"))
    np.testing.assert_array_equal(np.asarray(from_enhanced.dataobj), labels)
    np.testing.assert_allclose(from_enhanced.affine, written.affine, atol=1e-4)
    source = pydicom.dcmread(str(enhanced), stop_before_pixels=True)
    seg = highdicom.seg.segread(str(out / "enhanced_a_seg.dcm"))
    frames = seg.get_pixels_by_source_frame(source_sop_instance_uid=source.SOPInstanceUID,
                                            source_frame_numbers=list(range(1, 25)), combine_segments=True,
                                            ignore_spatial_locations=True)
    np.testing.assert_array_equal(frames, label_frames(labels, written.affine,
                                                       [f for _, f in _frame_headers(enhanced, source)]))
    (out / "series_a_seg.nii.gz").unlink()  # the SEG alone is an output too: not replaced unless told
    args[args.index("--datalist") + 1] = f"['{series}']"
    proc = run_bundle(*args, check=False)
    assert proc.returncode == 1 and f"1 output(s) exist already ({out / 'series_a_seg.dcm'})" in proc.stderr
