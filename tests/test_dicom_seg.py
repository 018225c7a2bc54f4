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
import torch

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


@pytest.mark.parametrize("order", ["negative", "positive"])
def test_a_dicom_seg_label_reads_as_the_label_map_it_holds(tmp_path, order, monkeypatch):
    """A DICOM SEG given as a training label (as 3D Slicer or OHIF export annotations): read onto its image's grid,
    for a DICOM series image (the affine ITK reads) and for the same image as NIfTI, the label map that was
    written into it, voxel for voxel; built once."""
    from monai.transforms import LoadImage
    from test_dicom_enhanced import on_grid

    import monai_unet_variants.bundle as mb

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    folder, label, affine = _series(tmp_path, order)
    seg = write_dicom_seg(label, affine, folder, tmp_path / "annotation.dcm")
    nifti = tmp_path / "ct.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros(SHAPE, np.int16), affine), str(nifti))  # the label map's own grid
    itk = np.asarray(LoadImage(image_only=True)(str(folder)).affine)  # ITK's grid of the series: slices ascending
    for source, grid in ((folder, itk), (nifti, affine)):
        [item] = mb.check_inputs([{"image": str(source), "label": str(seg)}])
        assert item["image"] == str(source) and Path(item["label"]).name == "annotation.nii.gz"
        read = nib.load(item["label"])
        np.testing.assert_allclose(read.affine, grid, atol=1e-4)
        expected = on_grid(label, affine, read.affine)  # the series' grid may run the other way along k
        assert set(np.unique(expected)) == {0, 1, 2}
        np.testing.assert_array_equal(np.asarray(read.dataobj), expected)
        written = Path(item["label"]).stat().st_mtime_ns
        assert mb.check_inputs([{"image": str(source), "label": str(seg)}]) == [item]
        assert Path(item["label"]).stat().st_mtime_ns == written
    # another image saved under the same name (here: 4 more slices): read anew on its grid
    nib.save(nib.Nifti1Image(np.zeros((*SHAPE[:2], SHAPE[2] + 4), np.int16), affine), str(nifti))
    [again] = mb.check_inputs([{"image": str(nifti), "label": str(seg)}])
    assert again["label"] != item["label"] and nib.load(again["label"]).shape == (*SHAPE[:2], SHAPE[2] + 4)


def test_a_dicom_seg_label_of_another_scan_or_class_is_refused(tmp_path, monkeypatch):
    """A SEG made on another scan (another frame of reference; or, beside a NIfTI image, frames off its grid) or
    holding a segment that is none of the bundle's classes stops with both files and the cause named."""
    import monai_unet_variants.bundle as mb

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    folder, label, affine = _series(tmp_path, "negative")
    seg = write_dicom_seg(label, affine, folder, tmp_path / "annotation.dcm")
    other = tmp_path / "other"
    image, _, _ = generate_case(8, shape=SHAPE)
    write_dicom_series(image, affine, other, seed=8)
    with pytest.raises(ValueError, match=f"DICOM SEG {seg} was made on frame of reference [0-9.]+, its image {other} "
                                         "lies on [0-9.]+: a segmentation of another scan"):
        mb.check_inputs([{"image": str(other), "label": str(seg)}])
    shifted = affine.copy()
    shifted[:3, 3] += [0.4, 0.0, 0.0]
    nifti = tmp_path / "ct.nii.gz"
    nib.save(nib.Nifti1Image(image, shifted), str(nifti))
    with pytest.raises(ValueError, match=f"DICOM SEG {seg} as the label of {nifti}: frame 1 of annotation.dcm does "
                                         r"not lie on the image's voxel grid \(up to 0.5 voxels off\): a SEG of "
                                         "another series"):
        mb.check_inputs([{"image": str(nifti), "label": str(seg)}])
    liver = write_dicom_seg((label > 0).astype(np.uint8), affine, folder, tmp_path / "liver.dcm",
                            segments={1: ("liver", "AnatomicalStructure", "Liver")})
    with pytest.raises(ValueError, match=f"DICOM SEG {liver}: segment 1 'liver' \\(SCT 10200004 Liver\\) is none of "
                                         r"the classes the bundles train: pancreas \(SCT 15776009\), pancreatic "
                                         r"tumour \(SCT 108369006\)"):
        mb.check_inputs([{"image": str(folder), "label": str(liver)}])


def test_overlapping_segments_give_the_tumour_within_the_pancreas(tmp_path, monkeypatch):
    """Annotation tools store each segment whole: a pancreas segment that includes the tumour beside a tumour
    segment. Read as a label map the tumour stays 2 inside the pancreas (1), whatever the segments' order."""
    from pydicom.sr.codedict import codes

    import monai_unet_variants.bundle as mb

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    folder, label, affine = _series(tmp_path, "negative")
    sources = _by_instance(folder)
    for ds in sources:  # type 2 attributes that the generated series leaves out (write_dicom_seg adds them too)
        for keyword in ("PatientBirthDate", "PatientSex", "StudyTime", "AccessionNumber", "StudyID",
                        "ReferringPhysicianName"):
            setattr(ds, keyword, getattr(ds, keyword, ""))
    nz = SHAPE[2]
    frames = np.stack([label[:, :, nz - n].T for n in range(1, nz + 1)])  # file IM{n}: slice nz - n, rows = j
    assert (frames == 2).any()
    algorithm = highdicom.AlgorithmIdentificationSequence(name="annotator", version="1",
                                                          family=codes.cid7162.ArtificialIntelligence)
    descriptions = [highdicom.seg.SegmentDescription(
        segment_number=n, segment_label=name, segmented_property_category=codes.SCT.AnatomicalStructure,
        segmented_property_type=kind, algorithm_type=highdicom.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=algorithm)
        for n, (name, kind) in enumerate([("tumour", codes.SCT.Neoplasm), ("pancreas", codes.SCT.Pancreas)], start=1)]
    seg = highdicom.seg.Segmentation(
        source_images=sources, pixel_array=np.stack([frames == 2, frames > 0], axis=-1).astype(np.uint8),
        segmentation_type=highdicom.seg.SegmentationTypeValues.BINARY, segment_descriptions=descriptions,
        series_instance_uid=pydicom.uid.generate_uid(), series_number=9, sop_instance_uid=pydicom.uid.generate_uid(),
        instance_number=1, manufacturer="test", manufacturer_model_name="test", software_versions="1",
        device_serial_number="1")
    seg.save_as(str(tmp_path / "whole_segments.dcm"))
    nifti = tmp_path / "ct.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros(SHAPE, np.int16), affine), str(nifti))
    [item] = mb.check_inputs([{"image": str(nifti), "label": str(tmp_path / "whole_segments.dcm")}])
    np.testing.assert_array_equal(np.asarray(nib.load(item["label"]).dataobj), label)


def test_the_bundles_preprocess_a_dicom_seg_label_as_its_nifti_label(sample, tmp_path, monkeypatch):
    """The flagship's validation preprocessing on a DICOM series with its label as a DICOM SEG gives the image and
    label that it gives the same case as NIfTI files (the label checked against the image's grid on the way)."""
    from monai.bundle import ConfigParser

    import monai_unet_variants.bundle as mb

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    label = nib.load(str(sample / "labelsTs" / "pancreas_005.nii.gz"))
    series = sample / "dicomTs" / "pancreas_005"
    seg = write_dicom_seg(np.asarray(label.dataobj), label.affine, series, tmp_path / "pancreas_005.dcm")
    parser = ConfigParser()
    parser.read_config(str(Path(__file__).parents[1] / "bundles" / "attunet_pancreas" / "configs" / "train.json"))
    preprocessing = parser.get_parsed_content("validate#preprocessing")
    [dicom] = mb.check_inputs([{"image": str(series), "label": str(seg)}])
    from_dicom = preprocessing(dicom)
    nifti = {"image": str(sample / "imagesTs" / "pancreas_005.nii.gz"), "label": label.get_filename()}
    from_nifti = preprocessing(nifti)
    assert set(torch.unique(from_dicom["label"]).tolist()) == {0, 1, 2}
    for key in ("image", "label"):
        assert from_dicom[key].shape == from_nifti[key].shape
        torch.testing.assert_close(from_dicom[key].as_tensor(), from_nifti[key].as_tensor(), rtol=0, atol=1e-4)
