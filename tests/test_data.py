"""The synthetic pancreas-CT generator and the overlay pictures."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from monai_unet_variants import data
from monai_unet_variants.visualize import overlay_png


def test_cases_are_deterministic_and_plausible():
    a_img, a_lbl, a_aff = data.generate_case(7, shape=(80, 70, 16))
    b_img, b_lbl, b_aff = data.generate_case(7, shape=(80, 70, 16))
    c_img, _, _ = data.generate_case(8, shape=(80, 70, 16))
    assert np.array_equal(a_img, b_img) and np.array_equal(a_lbl, b_lbl) and np.array_equal(a_aff, b_aff)
    assert not np.array_equal(a_img, c_img)
    assert a_img.dtype == np.int16 and a_lbl.dtype == np.uint8
    assert set(np.unique(a_lbl)) == {0, 1, 2}
    assert (a_lbl == 1).sum() > (a_lbl == 2).sum() > 50
    assert np.median(a_img[0]) < -900  # air at the border
    assert a_img.max() > 300  # bone
    panc, tum = a_img[a_lbl == 1].mean(), a_img[a_lbl == 2].mean()
    assert 80 < panc < 140 and tum < panc - 30  # enhancing pancreas, hypodense tumour
    assert a_aff[0, 0] < 0 and a_aff[1, 1] < 0 and a_aff[2, 2] == pytest.approx(2.5)  # LPS-style storage


def test_make_dataset_layout_and_dicom_geometry(tmp_path):
    from monai.transforms import LoadImage

    out = data.make_dataset(tmp_path / "set", num_train=2, num_test=1, shape=(60, 50, 12), progress=False)
    meta = json.loads((out / "dataset.json").read_text())
    assert meta["labels"] == {"0": "background", "1": "pancreas", "2": "cancer"}
    assert [e["image"] for e in meta["training"]] == ["./imagesTr/pancreas_000.nii.gz", "./imagesTr/pancreas_001.nii.gz"]
    assert meta["test"] == ["./imagesTs/pancreas_002.nii.gz"]
    nii = LoadImage(image_only=True, reader="NibabelReader")(out / "imagesTs" / "pancreas_002.nii.gz")
    dcm = LoadImage(image_only=True, reader="ITKReader")(out / "dicomTs" / "pancreas_002")
    assert tuple(dcm.shape) == tuple(nii.shape) == (60, 50, 12)
    np.testing.assert_allclose(dcm.affine, nii.affine, atol=1e-4)
    np.testing.assert_array_equal(np.asarray(dcm), np.asarray(nii))
    assert len(list((out / "dicomTs" / "pancreas_002").glob("*.dcm"))) == 12


def test_ensure_sample_data_generates_once(tmp_path, monkeypatch):
    monkeypatch.setenv("MUV_SAMPLE_DIR", str(tmp_path / "sample"))
    calls = []
    real = data.make_dataset

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, num_train=1, num_test=1, shape=(40, 40, 8), progress=False)

    monkeypatch.setattr(data, "make_dataset", counting)
    first = data.ensure_sample_data()
    second = data.ensure_sample_data()
    assert first == second == tmp_path / "sample" and len(calls) == 1
    assert not list(tmp_path.glob("sample.tmp-*"))


def test_command_line(tmp_path, capsys):
    assert data.main(["--out", str(tmp_path / "cli"), "--num-train", "1", "--num-test", "1", "--shape", "40", "40", "8",
                      "--no-dicom"]) == 0
    assert "wrote 1 training and 1 test cases" in capsys.readouterr().out
    assert not (tmp_path / "cli" / "dicomTs").exists()


def test_overlay_png(tmp_path):
    out = data.make_dataset(tmp_path / "set", num_train=1, num_test=0, shape=(60, 50, 12), progress=False)
    img, lbl = out / "imagesTr" / "pancreas_000.nii.gz", out / "labelsTr" / "pancreas_000.nii.gz"
    png = overlay_png(img, lbl, tmp_path / "o.png", label=lbl, title="test")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
    bad = tmp_path / "bad.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((10, 10, 10), np.uint8), np.eye(4)), str(bad))
    with pytest.raises(ValueError, match=f"label {bad} has shape \\(10, 10, 10\\) but image {img} has"):
        overlay_png(img, bad, tmp_path / "x.png")
    # what training refuses is not drawn either: a CT passed as the label map, a label map on another grid
    with pytest.raises(ValueError, match=f"label {img} has values \\[-?\\d+, .*\\] \\.\\.\\. .* values\\) outside"):
        overlay_png(img, img, tmp_path / "x.png")
    moved = tmp_path / "moved.nii.gz"
    source = nib.load(str(lbl))
    nib.save(nib.Nifti1Image(np.asarray(source.dataobj), source.affine @ np.diag([1.0, 1.0, 2.0, 1.0])), str(moved))
    with pytest.raises(ValueError, match=f"label {moved} is not on the voxel grid of image {img}"):
        overlay_png(img, lbl, tmp_path / "x.png", label=moved)
    assert not (tmp_path / "x.png").exists()
