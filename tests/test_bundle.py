"""The attunet_pancreas bundle end to end: metadata and network checks, training, resuming after SIGKILL,
inference on NIfTI and DICOM, evaluation, exports, and bad inputs. Runs the real `python -m monai.bundle`
command line on a copy of the bundle and a small synthetic data set."""

from __future__ import annotations

import csv
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from conftest import cli_overrides

from monai_unet_variants import bundle as mb

REPO = Path(__file__).resolve().parents[1]
BUNDLE = REPO / "bundles" / "attunet_pancreas"
SCHEMA = REPO / "bundles" / "schema" / "meta_schema.json"
TINY = ["--roi_size", "[32,32,32]", "--network_def#channels", "[4,8,16,32,64]", "--sw_batch_size", "4",
        "--num_workers", "0", "--batch_size", "2"]


def run_bundle(*args: str, cwd: Path | None = None, check: bool = True, timeout: int = 600) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.run([sys.executable, "-m", "monai.bundle", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env=env)
    if check and proc.returncode != 0:
        raise AssertionError(f"monai.bundle {args[0]} failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-6000:]}")
    return proc


@pytest.fixture(scope="session")
def trained(tmp_path_factory, sample) -> Path:
    """A copy of the bundle (outside the repository) trained for two tiny epochs."""
    root = tmp_path_factory.mktemp("bundles") / "attunet_copy"
    shutil.copytree(BUNDLE, root, ignore=shutil.ignore_patterns("*.pt", "eval"))
    run_bundle("run", "--config_file", str(root / "configs" / "train.json"), "--dataset_dir", str(sample),
               "--epochs", "2", "--val_interval", "1", *TINY)
    return root


# the two commands as the model zoo's CI types them (a process each: slow); test_every_bundle_metadata_and_network runs
# the same functions in this process for every bundle in the default run
@pytest.mark.slow
def test_verify_metadata():
    run_bundle("verify_metadata", "--meta_file", str(BUNDLE / "configs" / "metadata.json"), "--filepath", str(SCHEMA))


def test_metadata_describes_the_network():
    meta = json.loads((BUNDLE / "configs" / "metadata.json").read_text())
    assert "monai_unet_variants" in meta["required_packages_version"]
    fmt = meta["network_data_format"]
    assert fmt["inputs"]["image"]["num_channels"] == 1 and fmt["inputs"]["image"]["modality"] == "CT"
    assert fmt["outputs"]["pred"]["channel_def"] == {"0": "background", "1": "pancreas", "2": "tumour"}


@pytest.mark.slow
def test_verify_net_in_out():
    run_bundle("verify_net_in_out", "network_def", "--meta_file", str(BUNDLE / "configs" / "metadata.json"),
               "--config_file", str(BUNDLE / "configs" / "inference.json"), "--network_def#channels", "[4,8,16,32,64]")


def test_find_bundle_root(tmp_path, monkeypatch):
    cfg = "bundles/attunet_pancreas/configs/train.json"
    assert mb.find_bundle_root(["x", "run", "--config_file", cfg], cwd=REPO) == str(BUNDLE)
    assert mb.find_bundle_root(["x", "run", f"--config_file={cfg}"], cwd=REPO) == str(BUNDLE)
    both = "['bundles/attunet_pancreas/configs/train.json','bundles/attunet_pancreas/configs/evaluate.json']"
    monkeypatch.chdir(REPO)
    assert mb.find_bundle_root(["x", "run", "--config_file", both]) == str(BUNDLE)
    assert mb.find_bundle_root([], cwd=BUNDLE) == str(BUNDLE)


def test_training_writes_into_the_bundle_copy(trained):
    assert (trained / "models" / "model.pt").is_file()
    latest = torch.load(trained / "models" / mb.LATEST_CHECKPOINT, weights_only=True)
    assert latest["trainer"]["iteration"] == 2 * latest["trainer"]["epoch_length"]  # ignite keeps iterations
    assert set(latest) == {"network", "optimizer", "lr_scheduler", "best_metric", "rng", "training_options", "trainer"}
    assert latest["training_options"] == {"pixdim": [1.0, 1.0, 1.0], "hu_window": [-87.0, 199.0],
                                          "channels": [4, 8, 16, 32, 64]}
    assert latest["best_metric"]["best_metric_epoch"] in (1, 2)
    assert any(p.name.startswith("events.out.tfevents") for p in (trained / "eval").iterdir())
    assert not (REPO / "models").exists()
    history = list(csv.DictReader((trained / "eval" / "training_history.csv").open()))
    assert [row["epoch"] for row in history] == ["1", "2"] and all(float(row["val_mean_dice"]) >= 0 for row in history)
    best = max(history, key=lambda row: float(row["val_mean_dice"]))
    assert float(best["val_mean_dice"]) == pytest.approx(latest["best_metric"]["best_metric"], abs=1e-5)
    assert (trained / "eval" / "training_curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((trained / "models" / mb.TRAINING_OPTIONS).read_text()) == {
        "pixdim": [1.0, 1.0, 1.0], "hu_window": [-87.0, 199.0], "channels": [4, 8, 16, 32, 64]}


def _check_geometry(out: Path, reference) -> None:
    seg = nib.load(str(out))
    assert seg.shape == tuple(reference.shape)
    np.testing.assert_allclose(seg.affine, reference.affine.numpy(), atol=1e-4)
    assert set(np.unique(np.asarray(seg.dataobj)).tolist()) <= {0, 1, 2}


def test_inference_on_nifti_and_dicom(trained, sample, tmp_path):
    from monai.transforms import LoadImage

    nifti = sample / "imagesTs" / "pancreas_005.nii.gz"
    dicom = tmp_path / "series_a"
    shutil.copytree(sample / "dicomTs" / "pancreas_005", dicom)
    out = trained / "eval" / "seg"
    # run from inside the bundle folder: the relative --config_file must find the bundle too; the widths are not
    # typed again: inference builds the network as it was trained (its training_options.json)
    proc = run_bundle("run", "--config_file", "configs/inference.json", "--dataset_dir", str(sample),
                      "--datalist", f"['{nifti}','{dicom}']", "--output_dir", str(out), "--largest_component", "true",
                      *TINY[:2], *TINY[4:6], cwd=trained)
    assert "inference: [2/2] 100%" in proc.stderr  # a progress bar over the cases
    assert "--channels [4, 8, 16, 32, 64]: as model.pt was trained" in proc.stdout + proc.stderr
    assert sorted(p.name for p in out.iterdir()) == ["pancreas_005_seg.nii.gz", "series_a_seg.nii.gz"]
    _check_geometry(out / "pancreas_005_seg.nii.gz", LoadImage(image_only=True, reader="NibabelReader")(nifti))
    _check_geometry(out / "series_a_seg.nii.gz", LoadImage(image_only=True, reader="ITKReader")(dicom))


@pytest.mark.slow  # a process (or three exports through black, isort and flake8): ~10-17 s
def test_inference_default_inputs_are_the_test_images(trained, sample):
    out = trained / "eval" / "default"
    run_bundle("run", "--config_file", str(trained / "configs" / "inference.json"), "--dataset_dir", str(sample),
               "--output_dir", str(out), *TINY[:6])
    assert sorted(p.name for p in out.iterdir()) == ["pancreas_005_seg.nii.gz"]


def test_evaluate_writes_metrics_table(trained, sample):
    proc = run_bundle("run", "--config_file",
                      f"['{trained}/configs/train.json','{trained}/configs/evaluate.json']",
                      "--dataset_dir", str(sample), *TINY)
    rows = (trained / "eval" / "metrics.csv").read_text().splitlines()
    assert rows[0] == ("case,space,dice_pancreas,hd95_pancreas,pred_ml_pancreas,label_ml_pancreas,dice_tumour,"
                       "hd95_tumour,pred_ml_tumour,label_ml_tumour")
    assert rows[-1].startswith("mean,") and len(rows) == 3
    assert "dice_pancreas" in proc.stdout and "evaluation: [1/1] 100%" in proc.stderr


def test_per_case_metrics_show_what_an_undefined_dice_leaves_out(tmp_path, caplog, monkeypatch):
    """A case whose label has no tumour but whose prediction has some: its tumour Dice is undefined (left out of the
    mean, as the Decathlon scores), so the table gives each class's predicted and labelled volume in ml (at the
    label's spacing) and a warning names the case with the volume predicted."""
    from ignite.engine import Engine
    from monai.data import MetaTensor
    from monai.networks.utils import one_hot

    def case(name: str, tumour_in_label: bool) -> dict:
        label = torch.zeros(1, 10, 10, 10)
        label[0, 2:6, 2:6, 2:6] = 1
        pred = label.clone()
        pred[0, 7:9, 7:9, 7:9] = 2  # 8 voxels of tumour predicted
        if tumour_in_label:
            label[0, 7:9, 7:9, 7:9] = 2
        meta = {"filename_or_obj": f"/data/{name}.nii.gz", "pixdim": [0.0, 0.5, 0.5, 2.0]}
        onehot = [MetaTensor(one_hot(x[None], 3)[0], affine=torch.diag(torch.tensor([0.5, 0.5, 2.0, 1.0])),
                             meta=meta) for x in (pred, label)]
        return {"pred": onehot[0], "label": onehot[1]}

    writer = mb.PerCaseMetricsWriter(str(tmp_path))
    engine = Engine(lambda e, batch: batch)
    writer.attach(engine)
    with caplog.at_level(logging.WARNING):
        engine.run([[case("healthy", False)], [case("tumour", True)]])
    rows = list(csv.DictReader((tmp_path / "metrics.csv").open()))
    healthy, tumour, mean = rows
    assert healthy["dice_tumour"] == "nan" and float(tumour["dice_tumour"]) == 1.0 and float(mean["dice_tumour"]) == 1.0
    assert float(healthy["pred_ml_tumour"]) == pytest.approx(8 * 0.5 * 0.5 * 2.0 / 1000) and healthy["label_ml_tumour"] == "0.0000"
    assert float(healthy["label_ml_pancreas"]) == pytest.approx(64 * 0.5 / 1000)
    assert "1 case(s) without tumour in their label have tumour predicted (healthy.nii.gz 0.004 ml)" in caplog.text
    assert "pancreas in their label" not in caplog.text
    # the picture beside the table: 10 x 4.2 inches at 90 dpi; a class no case scores (tumour Dice undefined in
    # the only case) is drawn without its box; without matplotlib the table alone, said
    from PIL import Image

    with Image.open(tmp_path / "metrics.png") as picture:
        assert picture.format == "PNG" and picture.size == (900, 378)
    for folder, cases in (("one", [[case("healthy", False)]]), ("plain", [[case("tumour", True)]])):
        if folder == "plain":
            monkeypatch.setitem(sys.modules, "matplotlib", None)
        writer = mb.PerCaseMetricsWriter(str(tmp_path / folder))
        engine = Engine(lambda e, batch: batch)
        writer.attach(engine)
        with caplog.at_level(logging.WARNING):
            engine.run(cases)
        assert (tmp_path / folder / "metrics.csv").is_file()
        assert (tmp_path / folder / "metrics.png").is_file() == (folder == "one")
    assert "no metrics.png: matplotlib is not installed" in caplog.text


def test_validation_overlap_is_lighter_on_a_cpu_and_evaluation_keeps_the_full_one():
    # a clinical-size volume takes minutes per validation on a CPU at overlap 0.625 (README, benchmark): training
    # validates at 0.25 there; evaluate.json scores at the full overlap wherever it runs
    from monai.bundle import ConfigParser

    def overlap(*files: str, **updates) -> float:
        parser = ConfigParser()
        parser.read_config([str(BUNDLE / "configs" / f) for f in files])
        parser.update(updates)
        return parser.get_parsed_content("validate#inferer").overlap

    assert overlap("train.json") == (0.625 if torch.cuda.is_available() else 0.25)
    assert overlap("train.json", "evaluate.json") == 0.625
    assert overlap("train.json", val_overlap=0.5) == 0.5 and overlap("train.json", "evaluate.json", overlap=0.4) == 0.4


def test_original_grid_gives_back_each_cases_own_label(sample, tmp_path):
    # evaluate.json's OriginalGridd with the template's validation preprocessing: a perfect prediction on the 1 mm
    # grid taken back to the 0.8 x 0.8 x 2.5 mm LPS grid agrees with the label file read as it is
    from monai.bundle import ConfigParser
    from monai.data import decollate_batch, list_data_collate
    from monai.networks.utils import one_hot

    parser = ConfigParser()
    parser.read_config([str(BUNDLE / "configs" / "train.json"), str(BUNDLE / "configs" / "evaluate.json")])
    preprocessing = parser.get_parsed_content("validate#preprocessing")
    case = {"image": str(sample / "imagesTr" / "pancreas_000.nii.gz"), "label": str(sample / "labelsTr" / "pancreas_000.nii.gz")}
    original = np.asarray(nib.load(case["label"]).dataobj)
    item = decollate_batch(list_data_collate([preprocessing(case)]))[0]  # as the evaluator's batch of one arrives
    assert tuple(item["label"].shape[1:]) != original.shape  # resampled and cropped
    item["pred"] = one_hot(item["label"][None].long(), 3)[0].float()
    back = mb.OriginalGridd(preprocessing, space="original")(item)
    assert torch.equal(back["label"][0].to(torch.uint8), torch.as_tensor(original))
    pred = back["pred"].argmax(0).numpy()
    assert pred.shape == original.shape
    for c in (1, 2):  # a round trip through 1 mm loses only boundary voxels
        dice = 2 * ((pred == c) & (original == c)).sum() / ((pred == c).sum() + (original == c).sum())
        assert dice > 0.85, (c, dice)
    np.testing.assert_allclose(back["pred"].affine.numpy(), nib.load(case["label"]).affine, atol=1e-4)
    same = mb.OriginalGridd(preprocessing, space=" Resampled ")(item)  # as typed: case and blanks do not matter
    assert same["pred"] is item["pred"] and same["label"] is item["label"]
    with pytest.raises(ValueError, match="--eval_space 'orignal': expected one of original, resampled"):
        mb.OriginalGridd(preprocessing, space="orignal")
    # a label file changed after preprocessing (another case's grid) is named
    shutil.copytree(sample, tmp_path / "copy")
    moved = tmp_path / "copy" / "labelsTr" / "pancreas_000.nii.gz"
    _write(moved, original[:, :, :-2])
    item["label"].meta["filename_or_obj"] = str(moved)
    with pytest.raises(ValueError, match=f"label {moved}: the prediction taken back to the image's grid has shape"):
        mb.OriginalGridd(preprocessing)(item)


def test_inference_and_evaluation_preprocess_as_the_model_was_trained(tmp_path, caplog):
    """A model trained with ``--pixdim [1.5,1.5,2]`` and another window: inference and evaluation take both from the
    ``training_options.json`` beside ``--ckpt_path`` (a network fed 1 mm voxels would segment worse without a word);
    typed values win, with a warning naming both; without the file the defaults are train.json's; a file that
    cannot be read is named."""
    from monai.bundle import ConfigParser

    def parsed(files: list[str], **updates) -> tuple:
        parser = ConfigParser()
        parser.read_config([str(BUNDLE / "configs" / f) for f in files])
        parser.update(updates)
        return parser.get_parsed_content("pixdim"), parser.get_parsed_content("hu_window")

    train = parsed(["train.json"])
    models = tmp_path / "models"
    for files in (["inference.json"], ["train.json", "evaluate.json"]):
        assert parsed(files, ckpt_path=str(models / "model.pt")) == train  # nothing recorded: the defaults
    recorded = mb.record_training_options(models, pixdim=[1.5, 1.5, 2], hu_window=[-100, 240], channels=(8, 16, 32, 64))
    assert recorded is True
    assert json.loads((models / mb.TRAINING_OPTIONS).read_text()) == {"pixdim": [1.5, 1.5, 2.0],
                                                                      "hu_window": [-100.0, 240.0],
                                                                      "channels": [8, 16, 32, 64]}
    for files, key in ((["inference.json"], "ckpt_path"), (["train.json", "evaluate.json"], "ckpt_dir")):
        parser = ConfigParser()  # the network as it was trained, and as typed where the command line says so
        parser.read_config([str(BUNDLE / "configs" / f) for f in files])
        parser[key] = str(models / "model.pt") if key == "ckpt_path" else str(models)
        assert parser.get_parsed_content("network_def#channels") == [8, 16, 32, 64]
        parser["channels"] = [4, 8, 16, 32, 64]
        assert parser.get_parsed_content("network_def#channels") == [4, 8, 16, 32, 64]
    with caplog.at_level(logging.INFO, logger="monai_unet_variants.bundle"):
        assert parsed(["inference.json"], ckpt_path=str(models / "model.pt")) == ([1.5, 1.5, 2.0], [-100.0, 240.0])
        assert parsed(["train.json", "evaluate.json"], ckpt_dir=str(models)) == ([1.5, 1.5, 2.0], [-100.0, 240.0])
    assert f"--pixdim [1.5, 1.5, 2.0]: as model.pt was trained ({models / mb.TRAINING_OPTIONS})" in caplog.text
    assert parsed(["inference.json"], ckpt_path=str(models / "model.pt"), pixdim=[1, 1, 1])[0] == [1, 1, 1]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="monai_unet_variants.bundle"):
        mb.check_trained_options(models / "model.pt", pixdim=[1, 1, 1], hu_window=(-100, 240))
    assert caplog.text.count("differs from") == 1
    assert "--pixdim [1.0, 1.0, 1.0] differs from the [1.5, 1.5, 2.0] that model.pt was trained with" in caplog.text
    (models / mb.TRAINING_OPTIONS).write_text("{not json")
    with pytest.raises(ValueError, match=f"{models / mb.TRAINING_OPTIONS} \\(what model.pt was trained with\\) "
                                         "cannot be read"):
        mb.trained_option(models / "model.pt", "pixdim", [1.0, 1.0, 1.0])


def test_a_label_stored_in_another_orientation_is_the_same_label(sample, tmp_path):
    """A label stored in another orientation than its image (RAS or axes swapped beside the sample's LPS CT, as other
    tools write them) holds the same voxels: the case check accepts it, the preprocessed label equals the one of the
    label stored as the image is, and evaluation reads it back in the image's order. Moved by 5 mm as well, it is
    still refused."""
    from monai.bundle import ConfigParser
    from monai.data import decollate_batch, list_data_collate
    from monai.networks.utils import one_hot

    parser = ConfigParser()
    parser.read_config([str(BUNDLE / "configs" / "train.json"), str(BUNDLE / "configs" / "evaluate.json")])
    preprocessing = parser.get_parsed_content("validate#preprocessing")
    image, label = sample / "imagesTr" / "pancreas_000.nii.gz", sample / "labelsTr" / "pancreas_000.nii.gz"
    stored = nib.load(str(label))
    ras = nib.as_closest_canonical(stored)
    swapped = nib.Nifti1Image(np.asarray(ras.dataobj).transpose(2, 0, 1), ras.affine[:, [2, 0, 1, 3]])
    moved = nib.Nifti1Image(np.asarray(ras.dataobj), ras.affine + np.array([[0, 0, 0, 5.0]] + [[0] * 4] * 3))
    assert nib.aff2axcodes(stored.affine) == ("L", "P", "S") and nib.aff2axcodes(swapped.affine) == ("S", "R", "A")
    reference = preprocessing({"image": str(image), "label": str(label)})["label"]
    for name, img in (("ras", ras), ("swapped", swapped)):
        path = tmp_path / f"{name}.nii.gz"
        nib.save(img, str(path))
        item = preprocessing({"image": str(image), "label": str(path)})
        assert torch.equal(item["label"], reference), name
        item = decollate_batch(list_data_collate([item]))[0]
        item["pred"] = one_hot(item["label"][None].long(), 3)[0].float()
        back = mb.OriginalGridd(preprocessing, space="original")(item)
        assert torch.equal(back["label"][0].to(torch.uint8), torch.as_tensor(np.asarray(stored.dataobj))), name
    nib.save(moved, str(tmp_path / "moved.nii.gz"))
    with pytest.raises(RuntimeError) as err:  # MONAI's Compose names the transform, the cause says why
        preprocessing({"image": str(image), "label": str(tmp_path / "moved.nii.gz")})
    assert f"label {tmp_path / 'moved.nii.gz'} is not on the voxel grid of image {image}: " in str(err.value.__cause__)
    assert "up to 5.00 mm" in str(err.value.__cause__)


def test_a_volume_with_trailing_singleton_dimensions_is_the_same_volume(sample, tmp_path):
    """A CT and label stored as ``(x, y, z, 1)`` (a 4D file of one time point) or ``(x, y, z, 1, 1)`` (ITK's vector
    image) are the 3D volumes they hold: training's and inference's preprocessing give what the plain files give, and
    evaluation reads such a label back (MONAI's default reader made the 5D one a 4D image that failed in
    ``Orientationd`` naming no file)."""
    from monai.bundle import ConfigParser
    from monai.data import decollate_batch, list_data_collate
    from monai.networks.utils import one_hot

    parser = ConfigParser()
    parser.read_config([str(BUNDLE / "configs" / "train.json"), str(BUNDLE / "configs" / "evaluate.json")])
    preprocessing = parser.get_parsed_content("validate#preprocessing")
    inference = ConfigParser()
    inference.read_config(str(BUNDLE / "configs" / "inference.json"))
    inference.update({"ckpt_path": str(tmp_path / "none.pt")})
    infer_pre = inference.get_parsed_content("preprocessing")
    image, label = sample / "imagesTr" / "pancreas_000.nii.gz", sample / "labelsTr" / "pancreas_000.nii.gz"
    reference = preprocessing({"image": str(image), "label": str(label)})
    infer_reference = infer_pre({"image": str(image)})["image"]
    for extra in ((1,), (1, 1)):
        paths = {}
        for key, path in (("image", image), ("label", label)):
            stored = nib.load(str(path))
            paths[key] = tmp_path / f"{key}{len(extra)}.nii.gz"
            nib.save(nib.Nifti1Image(np.asarray(stored.dataobj).reshape(stored.shape + extra), stored.affine),
                     str(paths[key]))
        assert nib.load(str(paths["image"])).shape[3:] == extra
        mb.check_inputs([{k: str(v) for k, v in paths.items()}])
        item = preprocessing({k: str(v) for k, v in paths.items()})
        for key in ("image", "label"):
            assert torch.equal(item[key], reference[key]), (extra, key)
        assert torch.equal(infer_pre({"image": str(paths["image"])})["image"], infer_reference), extra
        item = decollate_batch(list_data_collate([item]))[0]
        item["pred"] = one_hot(item["label"][None].long(), 3)[0].float()
        back = mb.OriginalGridd(preprocessing, space="original")(item)
        assert tuple(back["label"].shape) == (1, *nib.load(str(label)).shape), extra


@pytest.mark.slow  # ~15 s; every network's TorchScript and ONNX export is also tested in test_export.py
def test_exports(trained, tmp_path):
    cfg = ["--meta_file", str(trained / "configs" / "metadata.json"), "--config_file",
           str(trained / "configs" / "inference.json"), "--ckpt_file", str(trained / "models" / "model.pt"),
           "--network_def#channels", "[4,8,16,32,64]"]
    run_bundle("ckpt_export", "network_def", "--filepath", str(tmp_path / "model.ts"), *cfg)
    ts = torch.jit.load(str(tmp_path / "model.ts"))
    assert ts(torch.rand(1, 1, 32, 32, 32)).shape == (1, 3, 32, 32, 32)
    run_bundle("onnx_export", "network_def", "--args_file", str(trained / "configs" / "onnx_export.json"),
               "--filepath", str(tmp_path / "model.onnx"), *cfg)
    ort = pytest.importorskip("onnxruntime")
    session = ort.InferenceSession(str(tmp_path / "model.onnx"), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["image"]
    for shape in [(1, 1, 64, 64, 64), (2, 1, 96, 96, 96), (1, 1, 48, 80, 32)]:  # exported once, at 64^3
        x = torch.rand(shape)
        (out,) = session.run(["pred"], {"image": x.numpy()})
        with torch.no_grad():
            expected = ts(x).numpy()
        assert out.shape == (shape[0], 3, *shape[2:])
        assert abs(out - expected).max() <= 1e-4 * max(1.0, abs(expected).max()), shape


def test_truncated_checkpoint_is_named(trained, sample, tmp_path):
    bad = tmp_path / "model.pt"
    data = (trained / "models" / "model.pt").read_bytes()
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=f"checkpoint {bad} cannot be read.*truncated"):
        mb.check_checkpoint(bad)
    proc = run_bundle("run", "--config_file", str(trained / "configs" / "inference.json"), "--dataset_dir", str(sample),
                      "--ckpt_path", str(bad), "--output_dir", str(tmp_path / "out"), *TINY[:4], check=False)
    assert proc.returncode != 0
    assert f"checkpoint {bad} cannot be read" in proc.stderr


def _epoch(path: Path) -> int:
    state = torch.load(path, weights_only=True)["trainer"]
    return state["iteration"] // state["epoch_length"]


@pytest.mark.slow
def test_resume_after_sigkill(tmp_path, sample):
    root = tmp_path / "bundle"
    shutil.copytree(BUNDLE, root, ignore=shutil.ignore_patterns("*.pt", "eval"))
    args = [sys.executable, "-m", "monai.bundle", "run", "--config_file", str(root / "configs" / "train.json"),
            "--dataset_dir", str(sample), "--epochs", "6", "--val_interval", "100", *TINY]
    latest = root / "models" / mb.LATEST_CHECKPOINT
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 300
        epoch = 0
        while time.time() < deadline and proc.poll() is None:
            if latest.is_file():
                epoch = _epoch(latest)
                if epoch >= 2:
                    break
            time.sleep(0.2)
        assert epoch >= 2 and proc.poll() is None, "training ended or stalled before the kill"
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
    saved = _epoch(latest)  # loads: never a truncated file
    assert saved >= 2
    before = latest.read_bytes()
    other = run_bundle(*args[3:], "--resume", "true", "--hu_window", "[-100,240]", check=False)
    assert other.returncode == 1 and other.stderr.strip().splitlines()[-1] == (
        f"error: ValueError: checkpoint {latest}: --hu_window [-100.0, 240.0] differs from the [-87.0, 199.0] that "
        "the run being resumed was started with, and a run cannot change it midway. Repeat --hu_window "
        "'[-87.0,199.0]', or start afresh with --overwrite true"), other.stderr[-3000:]
    assert latest.read_bytes() == before
    out = run_bundle(*args[3:], "--resume", "true")
    log = out.stdout + out.stderr
    assert f"Restored all variables from {latest}" in log, log[-3000:]
    assert f"Epoch: {saved + 1}/6, Iter: 1/" in log and "Epoch: 1/6," not in log, log[-3000:]
    assert _epoch(latest) == 6


def _write(path: Path, arr: np.ndarray, affine=None) -> Path:
    nib.save(nib.Nifti1Image(arr, np.eye(4) if affine is None else affine), str(path))
    return path


def test_bad_inputs_are_named(tmp_path):
    img = _write(tmp_path / "img.nii.gz", np.zeros((16, 16, 8), np.int16))
    with pytest.raises(FileNotFoundError, match=f"image {tmp_path / 'missing.nii.gz'} does not exist"):
        mb.check_inputs([{"image": str(tmp_path / "missing.nii.gz"), "label": str(img)}])
    empty = tmp_path / "empty.nii.gz"
    empty.write_bytes(b"")
    with pytest.raises(ValueError, match=f"label {empty} is an empty file"):
        mb.check_inputs([{"image": str(img), "label": str(empty)}])
    corrupt = tmp_path / "corrupt.nii.gz"
    corrupt.write_bytes(b"\x1f\x8b" + os.urandom(200))
    with pytest.raises(ValueError, match=f"image {corrupt} is not a readable NIfTI file"):
        mb.check_inputs([str(corrupt)])
    (tmp_path / "nodicom").mkdir()
    with pytest.raises(ValueError, match="is not a DICOM series: it holds no files and no DICOM file"):
        mb.check_inputs([str(tmp_path / "nodicom")])


def test_bad_labels_are_named(tmp_path):
    from monai.transforms import Compose, EnsureChannelFirstd, LoadImaged

    img = _write(tmp_path / "img.nii.gz", np.arange(16 * 16 * 8, dtype=np.int16).reshape(16, 16, 8) - 1024)
    small = _write(tmp_path / "small.nii.gz", np.zeros((16, 16, 6), np.uint8))
    wrong = _write(tmp_path / "wrong.nii.gz", np.full((16, 16, 8), 5, np.uint8))
    load = Compose([LoadImaged(["image", "label"], image_only=True), EnsureChannelFirstd(["image", "label"])])
    check = mb.CheckCased(["image", "label"])
    with pytest.raises(ValueError, match=f"label {small} has shape \\(16, 16, 6\\) but image {img} has \\(16, 16, 8\\)"):
        check(load({"image": str(img), "label": str(small)}))
    with pytest.raises(ValueError, match=f"label {wrong} has values \\[5\\] outside \\[0, 1, 2\\]"):
        check(load({"image": str(img), "label": str(wrong)}))


@pytest.mark.slow  # the fast checks are in test_faults.py
def test_bad_label_fails_training_with_the_file_name(tmp_path, sample):
    bad = tmp_path / "bad"
    shutil.copytree(sample, bad)
    lbl = bad / "labelsTr" / "pancreas_001.nii.gz"
    nii = nib.load(str(lbl))
    _write(lbl, np.asarray(nii.dataobj).astype(np.uint8) * 3, nii.affine)
    proc = run_bundle("run", "--config_file", str(BUNDLE / "configs" / "train.json"), "--dataset_dir", str(bad),
                      "--epochs", "1", "--ckpt_dir", str(tmp_path / "ck"), "--output_dir", str(tmp_path / "ev"),
                      *TINY, check=False)
    assert proc.returncode != 0
    assert f"label {lbl} has values" in proc.stderr


def test_datalist_split_is_deterministic(sample):
    train = mb.load_datalist(sample, "training")
    val = mb.load_datalist(sample, "validation")
    assert [Path(e["image"]).name for e in val] == ["pancreas_004.nii.gz"]
    assert not {e["image"] for e in train} & {e["image"] for e in val}
    assert len(train) + len(val) == 5
    assert mb.list_test_images(sample) == [str(sample / "imagesTs" / "pancreas_005.nii.gz")]
    assert mb.datalists.test_inputs is mb.list_test_images  # the earlier name, for bundles exported before
    assert len(mb.load_datalist(sample, "validation", val_fraction=0.4)) == 2  # round(0.4 * 5)


def test_inference_reads_a_path_as_the_inputs_it_names(sample, tmp_path):
    """``--datalist`` given one path (as a person types it) is not a list of its characters: a NIfTI file is one
    input, a folder of NIfTI files each of them, a DICOM folder one series, a JSON datalist its test images; through
    inference.json's own ``data`` too."""
    from monai.bundle import ConfigParser

    nifti = str(sample / "imagesTs" / "pancreas_005.nii.gz")
    series = str(sample / "dicomTs" / "pancreas_005")
    assert mb.inference_inputs(nifti) == [nifti] and mb.inference_inputs(Path(series)) == [series]
    folder = tmp_path / "imagesTs"
    shutil.copytree(sample / "imagesTr", folder)
    (folder / "._pancreas_000.nii.gz").write_bytes(b"\0\5\26\7")  # macOS metadata, as in the Decathlon's tars
    (folder / "notes.txt").write_text("not a volume")
    assert mb.inference_inputs(folder) == sorted(str(p) for p in folder.glob("pancreas_*.nii.gz"))
    assert mb.inference_inputs(str(sample / "dataset.json")) == mb.list_test_images(sample)
    assert mb.inference_inputs((nifti, series)) == [nifti, series]
    (tmp_path / "dataset.json").write_text(json.dumps({"training": []}))
    for nothing in ([], str(tmp_path / "dataset.json")):
        with pytest.raises(ValueError, match="names no input"):
            mb.inference_inputs(nothing)
    with pytest.raises(ValueError, match="--datalist must be a path or a list of paths, got 3"):
        mb.inference_inputs(3)
    parser = ConfigParser()
    parser.read_config(str(BUNDLE / "configs" / "inference.json"))
    parser.update({"dataset_dir": str(sample), "datalist": nifti})
    assert parser.get_parsed_content("data") == [{"image": nifti}]


@pytest.mark.parametrize("fraction, message", [
    (1.5, r"--val_fraction must be a number in \(0, 1\), got 1.5"),
    (0, r"--val_fraction must be a number in \(0, 1\), got 0"),
    (0.95, r"dataset.json: --val_fraction 0.95 of its 5 labelled case\(s\) leaves none to train on"),
])
def test_a_split_that_cannot_train_is_refused(sample, fraction, message):
    with pytest.raises(ValueError, match=message):
        mb.load_datalist(sample, "training", val_fraction=fraction)


def test_a_split_without_validation_cases_is_refused(sample, tmp_path):
    """One labelled case, or an empty 'validation' list: training ran, wrote no model.pt (it is the best validation
    epoch's weights) and exited 0; now the split stops, saying why."""
    cases = [{"image": str(sample / "imagesTr" / f"pancreas_00{i}.nii.gz"),
              "label": str(sample / "labelsTr" / f"pancreas_00{i}.nii.gz")} for i in range(2)]
    for name, content in (("one", {"training": cases[:1]}), ("empty", {"training": cases, "validation": []})):
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps(content))
        for section in ("training", "validation"):
            with pytest.raises(ValueError, match=f"{path}.*: model.pt is the weights of the best validation epoch, so "
                                                 "training needs at least one case to train on and one to validate"):
                mb.load_datalist(path, section)
    assert len(mb.load_datalist(tmp_path / "one.json", "all")) == 1
    path.write_text(json.dumps({"training": cases}))
    assert [len(mb.load_datalist(path, s)) for s in ("training", "validation")] == [1, 1]


def test_a_training_datalist_that_is_not_one_is_named(sample):
    """An image or a list where training's datalist belongs says what was given and what is read (it was a
    TypeError, or "not valid JSON: 'utf-8' codec can't decode byte 0x8b")."""
    image = sample / "imagesTr" / "pancreas_000.nii.gz"
    with pytest.raises(ValueError, match=f"--datalist {image} is an image, not a datalist: training and evaluation "
                                         "need labelled cases, from a datalist JSON file"):
        mb.load_datalist(image)
    with pytest.raises(ValueError, match="training and evaluation read a datalist JSON file .*, not a list"):
        mb.load_datalist([{"image": str(image), "label": str(image)}])


def test_an_own_validation_list_is_kept_apart_from_training(sample, tmp_path, caplog):
    """A datalist's own ``validation`` list: a case also under ``training`` (validation would score what was trained
    on) stops the split naming it; ``--val_fraction`` beside the list (it would not be used) stops it; a case listed
    twice is a warning; a validation case without a label is refused."""
    cases = [{"image": f"imagesTr/pancreas_00{i}.nii.gz", "label": f"labelsTr/pancreas_00{i}.nii.gz"} for i in range(5)]
    path = sample / "split.json"

    def split(content: dict, **kw):
        path.write_text(json.dumps(content))
        return mb.load_datalist(path, "validation", **kw)

    try:
        assert [Path(e["image"]).name for e in split({"training": cases[:4], "validation": cases[4:]})] == [
            "pancreas_004.nii.gz"]
        with pytest.raises(ValueError, match=r"1 'validation' case\(s\) are also in 'training' \(.*pancreas_003"):
            split({"training": cases[:4], "validation": cases[3:]})
        with pytest.raises(ValueError, match=r"split.json has its own 'validation' list \(1 cases\): --val_fraction "
                                             r"0.3 would not be used"):
            split({"training": cases[:4], "validation": cases[4:]}, val_fraction=0.3)
        with pytest.raises(ValueError, match="every 'validation' entry needs 'image' and 'label'"):
            split({"training": cases[:4], "validation": [{"image": cases[4]["image"]}]})
        with caplog.at_level(logging.WARNING, logger="monai_unet_variants.bundle"):
            split({"training": cases[:4] + cases[:1], "validation": cases[4:]})
        assert "lists 1 'training' case(s) more than once" in caplog.text and "pancreas_000" in caplog.text
    finally:
        path.unlink()


def test_what_a_dataset_json_declares_is_checked(sample, tmp_path, caplog):
    """An MSD dataset.json of another task: label values beyond 0, 1, 2 (BTCV's 13 organs) or several input channels
    (Task01's MR sequences) stop the split naming the file; classes named otherwise (Task03's "liver") or another
    modality are a warning, once for training and validation; Task07's own names ("cancer") pass quietly."""
    content = json.loads((sample / "dataset.json").read_text())
    content["training"] = [{k: str(sample / v) for k, v in e.items()} for e in content["training"]]

    def split(name: str, section: str = "training", **declared):
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps({**content, **declared}))
        return mb.load_datalist(path, section)

    with caplog.at_level(logging.WARNING, logger="monai_unet_variants.bundle"):
        assert len(split("task07")) == 4 and content["labels"]["2"] == "cancer"
        assert caplog.text == ""
        organs = {str(i): f"organ {i}" for i in range(14)}
        with pytest.raises(ValueError, match=r"btcv.json declares labels .*: values \[3, 4, .*, 13\] are not classes "
                                             r"of this bundle \(0 background, 1 pancreas, 2 tumour\)"):
            split("btcv", labels=organs)
        with pytest.raises(ValueError, match=r"brain.json declares 2 input channels \(modality"):
            split("brain", modality={"0": "FLAIR", "1": "T1w"})
        with pytest.raises(ValueError, match=r"'labels' keys must be label values \(0, 1, 2\), got \['pancreas'\]"):
            split("names", labels={"pancreas": 1})
        liver = {"0": "background", "1": "liver", "2": "cancer"}
        assert len(split("liver", labels=liver)) == 4 and len(split("liver", "validation", labels=liver)) == 1
        assert caplog.text.count("names labels {1: 'liver'} where the bundles segment") == 1
        split("mr", modality={"0": "MRI"})
        assert "mr.json declares modality {'0': 'MRI'}: the bundles are for CT" in caplog.text


def test_user_datalist_mixes_nifti_and_dicom(tmp_path, sample):
    dl = {"training": [{"image": str(sample / "imagesTr" / "pancreas_000.nii.gz"),
                        "label": str(sample / "labelsTr" / "pancreas_000.nii.gz")}],
          "validation": [{"image": "../Task07/dicomTs/pancreas_005", "label": "x.nii.gz"}],
          "test": [str(sample / "dicomTs" / "pancreas_005"), "rel.nii.gz"]}
    path = sample.parent / "lists" / "datalist.json"
    path.parent.mkdir(exist_ok=True)
    path.write_text(json.dumps(dl))
    val = mb.load_datalist(path, "validation")
    assert val[0]["image"] == str(sample / "dicomTs" / "pancreas_005")
    assert mb.list_test_images(path)[1] == str(path.parent / "rel.nii.gz")


@pytest.mark.slow
def test_training_learns(tmp_path, sample):
    """A few minutes of CPU training lift validation pancreas Dice well above the untrained network's."""
    from monai.bundle import ConfigWorkflow

    workflow = ConfigWorkflow(
        config_file=str(BUNDLE / "configs" / "train.json"),
        meta_file=str(BUNDLE / "configs" / "metadata.json"),
        logging_file=False,
        workflow_type=None,
        dataset_dir=str(sample),
        bundle_root=str(tmp_path),
        epochs=40,
        val_interval=40,
        roi_size=[48, 48, 48],
        num_samples=2,
        learning_rate=0.003,
        num_workers=0,
        **{"network_def#channels": [8, 16, 32, 64, 128]},
    )
    workflow.initialize()
    evaluator = workflow.parser.get_parsed_content("validate#evaluator")
    evaluator.run()
    untrained = evaluator.state.metrics["val_pancreas_dice"]
    workflow.run()
    trained = evaluator.state.metrics["val_pancreas_dice"]
    workflow.finalize()
    print(f"validation pancreas Dice: untrained {untrained:.3f}, trained {trained:.3f}")
    assert trained > untrained + 0.15, (untrained, trained)
    assert (tmp_path / "models" / "model.pt").is_file()


@pytest.mark.slow
def test_multi_process_training_with_torchrun(tmp_path, sample):
    """Two real torchrun processes (gloo on CPU) train with DDP; only rank 0 writes checkpoints and logs."""
    root = tmp_path / "bundle"
    shutil.copytree(BUNDLE, root, ignore=shutil.ignore_patterns("*.pt", "eval"))
    configs = f"['{root}/configs/train.json','{root}/configs/multi_gpu_train.json']"
    logs = tmp_path / "rank_logs"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29517",
           "--log_dir", str(logs), "--redirects", "3", "--tee", "3",
           "-m", "monai.bundle", "run", "--config_file", configs, "--dataset_dir", str(sample),
           "--epochs", "2", "--val_interval", "1", *TINY]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    latest = torch.load(root / "models" / mb.LATEST_CHECKPOINT, weights_only=True)
    assert latest["trainer"]["iteration"] == 2 * latest["trainer"]["epoch_length"]
    # 4 training cases over 2 ranks with batch 2: one iteration per epoch on each rank
    assert latest["trainer"]["epoch_length"] == 1
    assert not any(k.startswith("module.") for k in latest["network"]), "DDP wrapper leaked into the checkpoint"
    assert (root / "models" / "model.pt").is_file()
    history = list(csv.DictReader((root / "eval" / "training_history.csv").open()))  # rank 0's epochs, reduced
    assert [row["epoch"] for row in history] == ["1", "2"] and all(row["val_mean_dice"] for row in history)
    log = proc.stdout + proc.stderr
    assert log.count("Epoch[2] Metrics -- val_mean_dice") == 1  # reduced metrics, printed by rank 0 only
    # rank 1 trains and validates in silence: no INFO lines, no "best metric", no TensorBoard files of its own
    by_rank = {r: "".join(p.read_text() for p in logs.rglob(f"{r}/std*.log")) for r in (0, 1)}
    assert "Got new best metric" in by_rank[0] and "Got new best metric" not in by_rank[1]
    rank1_info = [line for line in by_rank[1].splitlines() if " INFO " in line
                  and "Setting logging properties based on config" not in line]  # monai.bundle's, before initialize
    assert " INFO " in by_rank[0] and not rank1_info, rank1_info
    assert "Loading dataset" in by_rank[0] and "Loading dataset" not in by_rank[1]
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    events = sorted((root / "eval").rglob("events.out.tfevents.*"))
    assert events
    for path in events:  # an events file that a rank opened and never wrote to holds no summary
        assert any(e.HasField("summary") for e in EventFileLoader(str(path)).Load()), f"empty events file {path.name}"

    # multi_gpu_evaluate.json: the validation cases split over two ranks, every case's row gathered and written once
    # by rank 0, the same rows as one process's evaluate.json
    configs = f"['{root}/configs/train.json','{root}/configs/evaluate.json','{root}/configs/multi_gpu_evaluate.json']"
    dist_cmd = [*cmd[:cmd.index("--master_port=29517")], "--master_port=29518",
                *cmd[cmd.index("--master_port=29517") + 1:cmd.index("--config_file") + 1], configs,
                "--dataset_dir", str(sample), "--output_dir", str(tmp_path / "eval_dist"), *TINY]
    dist_cmd[dist_cmd.index(str(logs))] = str(tmp_path / "eval_logs")
    proc = subprocess.run(dist_cmd, capture_output=True, text=True, timeout=600, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    run_bundle("run", "--config_file", f"['{root}/configs/train.json','{root}/configs/evaluate.json']",
               "--dataset_dir", str(sample), "--output_dir", str(tmp_path / "eval_one"), *TINY)
    dist_rows = (tmp_path / "eval_dist" / "metrics.csv").read_text().splitlines()
    one_rows = (tmp_path / "eval_one" / "metrics.csv").read_text().splitlines()
    assert len(one_rows) >= 3 and dist_rows[0] == one_rows[0] and dist_rows[-1] == one_rows[-1]  # header, mean
    assert sorted(dist_rows[1:-1]) == sorted(one_rows[1:-1])
    assert (proc.stdout + proc.stderr).count("per-case metrics (original grid of each case) written to") == 1


def test_end_distributed_waits_then_destroys_the_process_group(tmp_path, monkeypatch):
    """The multi-GPU configs' finalize: a barrier, then the group destroyed; nothing to do without a group."""
    import torch.distributed as dist

    assert mb.end_distributed() is False  # a single-process run: no group
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    calls = []
    barrier = dist.barrier
    monkeypatch.setattr(dist, "barrier", lambda *a, **k: (calls.append("barrier"), barrier(*a, **k))[1])
    try:
        assert mb.end_distributed() is True
        assert calls == ["barrier"] and not dist.is_initialized()
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    assert mb.end_distributed() is False


def test_best_metric_state_round_trip():
    from types import SimpleNamespace

    engine = SimpleNamespace(state=SimpleNamespace(best_metric=0.61, best_metric_epoch=12))
    saved = mb.BestMetricState(engine).state_dict()
    fresh = SimpleNamespace(state=SimpleNamespace(best_metric=-1, best_metric_epoch=-1))
    mb.BestMetricState(fresh).load_state_dict(saved)
    assert (fresh.state.best_metric, fresh.state.best_metric_epoch) == (0.61, 12)


def test_a_diverged_network_is_not_saved(tmp_path):
    """Weights that a NaN loss stepped into stop the run at the save, naming the epoch; the last sound
    ``checkpoint_latest.pt`` stays, and no ``model.pt`` or ``best_metric.json`` is written for them."""
    from ignite.engine import Engine

    net = torch.nn.Linear(3, 2)
    engine = Engine(lambda e, b: None)
    engine.state.epoch, engine.state.output = 1, [{"loss": 0.7}]
    latest = mb.AtomicCheckpointSaver(str(tmp_path), {"network": net})
    latest.save_latest(engine)
    sound = (tmp_path / mb.LATEST_CHECKPOINT).read_bytes()
    with torch.no_grad():
        net.bias[1] = float("inf")
    engine.state.epoch, engine.state.output = 2, [{"loss": float("nan")}]
    engine.state.best_metric, engine.state.best_metric_epoch = 0.5, 2
    with pytest.raises(FloatingPointError, match=r"training diverged: 1 tensor\(s\) of the network are NaN or infinite at "
                                                 r"epoch 2 \(e.g. bias\); the last loss was nan\. .*checkpoint_latest.pt "
                                                 r"was not written .* lower --learning_rate"):
        latest.save_latest(engine)
    assert (tmp_path / mb.LATEST_CHECKPOINT).read_bytes() == sound
    best = mb.AtomicCheckpointSaver(str(tmp_path), {"network": net}, save_interval=0, save_key_metric=True)
    with pytest.raises(FloatingPointError, match="model.pt was not written"):
        best.save_best(engine)
    assert not (tmp_path / "model.pt").exists() and not (tmp_path / "best_metric.json").exists()


def test_training_options_are_written_with_the_model_they_describe(tmp_path, sample):
    """``training_options.json`` is written with each ``model.pt``, not when training starts: a run started with
    ``--overwrite true`` (other ``pixdim``) over a folder holding another model leaves that model's options beside it
    until it saves its own model (stopped before, inference would have fed the old model the new run's voxels)."""
    from ignite.engine import Engine
    from monai.bundle import ConfigWorkflow

    models = tmp_path / "models"
    models.mkdir()
    old = {"pixdim": [1.5, 1.5, 2.0], "hu_window": [-100.0, 240.0], "channels": [4, 8, 16, 32, 64]}
    (models / mb.TRAINING_OPTIONS).write_text(json.dumps(old))
    (models / "model.pt").write_bytes(b"the earlier model")
    workflow = ConfigWorkflow(config_file=str(BUNDLE / "configs" / "train.json"), workflow_type="train",
                              logging_file=False, dataset_dir=str(sample), ckpt_dir=str(models),
                              output_dir=str(tmp_path / "eval"), overwrite=True, pixdim=[1.0, 1.0, 1.2],
                              cache_rate=0.0, num_workers=0, **cli_overrides(TINY[:4]))
    workflow.initialize()
    assert json.loads((models / mb.TRAINING_OPTIONS).read_text()) == old  # nothing saved yet: the old pair stays
    saver = next(h for h in workflow.parser.get_parsed_content("validate#handlers")
                 if isinstance(h, mb.AtomicCheckpointSaver) and h.save_key_metric)
    engine = Engine(lambda e, b: None)
    engine.state.epoch, engine.state.best_metric, engine.state.best_metric_epoch = 2, 0.4, 1  # not the best epoch
    saver.save_best(engine)
    assert json.loads((models / mb.TRAINING_OPTIONS).read_text()) == old
    engine.state.best_metric_epoch = 2
    saver.save_best(engine)
    assert json.loads((models / mb.TRAINING_OPTIONS).read_text()) == {
        "pixdim": [1.0, 1.0, 1.2], "hu_window": [-87.0, 199.0], "channels": [4, 8, 16, 32, 64]}
    assert (models / "model.pt").read_bytes() != b"the earlier model"


def test_a_resume_with_other_preprocessing_is_refused_naming_the_checkpoint(tmp_path, caplog):
    """``checkpoint_latest.pt`` holds the run's ``pixdim``, ``hu_window`` and ``channels`` (``TrainingOptionsState``):
    a resume without the ``--pixdim`` the run was started with is refused naming the option, both values and the
    file, instead of training on other voxels; the same options resume; a checkpoint of an older version, without
    them, resumes with a warning."""
    from ignite.engine import Engine

    from monai_unet_variants.bundle.errors import root_cause

    net = torch.nn.Linear(3, 2)
    started = mb.TrainingOptionsState(pixdim=[1.5, 1.5, 2], hu_window=[-100, 240], channels=[4, 8, 16, 32, 64])
    mb.AtomicCheckpointSaver(str(tmp_path), {"network": net, "training_options": started}).save_latest(
        Engine(lambda e, b: None))
    path = tmp_path / mb.LATEST_CHECKPOINT

    def resume(**options) -> None:
        loader = mb.SafeCheckpointLoader(str(path), {"network": torch.nn.Linear(3, 2),
                                                     "training_options": mb.TrainingOptionsState(**options)},
                                         purpose="resume", optional_keys=("rng", "training_options"))
        loader(Engine(lambda e, b: None))

    with pytest.raises(ValueError) as err:
        resume(pixdim=[1, 1, 1], hu_window=[-100, 240], channels=[4, 8, 16, 32, 64])
    assert str(root_cause(err.value)) == (
        f"checkpoint {path}: --pixdim [1.0, 1.0, 1.0] differs from the [1.5, 1.5, 2.0] that the run being resumed was "
        "started with, and a run cannot change it midway. Repeat --pixdim '[1.5,1.5,2.0]', or start afresh "
        "with --overwrite true")
    with pytest.raises(ValueError, match=r"--hu_window \[-87.0, 199.0\] differs from the \[-100.0, 240.0\]"):
        resume(pixdim=[1.5, 1.5, 2.0], hu_window=[-87, 199], channels=[4, 8, 16, 32, 64])
    resume(pixdim=[1.5, 1.5, 2], hu_window=[-100.0, 240], channels=[4, 8, 16, 32, 64])  # the same options
    torch.save({"network": net.state_dict()}, path)  # an older version's checkpoint
    with caplog.at_level(logging.WARNING):
        resume(pixdim=[1, 1, 1], hu_window=[-87, 199], channels=[4, 8, 16, 32, 64])
    assert "holds no 'training_options' (saved by an older version): resuming without it" in caplog.text


def test_atomic_save_keeps_the_old_file_when_interrupted(tmp_path, monkeypatch):
    target = tmp_path / "checkpoint_latest.pt"
    mb.checkpoints._atomic_save({"a": torch.ones(3)}, target)

    def broken_save(obj, f):
        f.write(b"partial")
        raise KeyboardInterrupt  # a kill in the middle of writing

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(KeyboardInterrupt):
        mb.checkpoints._atomic_save({"a": torch.zeros(3)}, target)
    assert torch.equal(torch.load(target, weights_only=True)["a"], torch.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint_latest.pt"]


@pytest.mark.slow
def test_mlflow_tracking(tmp_path, sample):
    """MONAI's standard `--tracking mlflow` records the run's metrics in <output_dir>/mlruns.db; the loss every
    `--log_interval` iterations, as the console lines."""
    mlflow = pytest.importorskip("mlflow")
    root = tmp_path / "bundle"
    shutil.copytree(BUNDLE, root, ignore=shutil.ignore_patterns("*.pt", "eval"))
    run_bundle("run", "--config_file", str(root / "configs" / "train.json"), "--dataset_dir", str(sample),
               "--epochs", "1", "--val_interval", "1", "--tracking", "mlflow", "--log_interval", "2", *TINY)
    db = root / "eval" / "mlruns.db"
    assert db.is_file()
    client = mlflow.tracking.MlflowClient(tracking_uri=f"sqlite:///{db}")
    runs = [r for e in client.search_experiments() for r in client.search_runs([e.experiment_id])]
    assert runs, "no MLflow run recorded"
    metrics = set().union(*(r.data.metrics for r in runs))
    assert {"train_loss", "val_mean_dice"} <= metrics, metrics
    [trained] = [r for r in runs if "train_loss" in r.data.metrics]
    steps = [m.step for m in client.get_metric_history(trained.info.run_id, "train_loss")]
    assert steps and all(step % 2 == 0 for step in steps), steps


def test_tensorrt_inference_config(monkeypatch, caplog):
    """``inference_trt.json`` over ``inference.json``: where TensorRT is absent (here) MONAI's ``trt_compile`` leaves
    the network as it is and says so; where it is present the network is wrapped to build an fp16 engine beside the
    checkpoint for window batches of 1 to ``sw_batch_size``, with torch.compile and channels-last off."""
    import monai.networks.trt_compiler as trt
    from monai.bundle import ConfigParser

    from monai_unet_variants.networks import AttentionUNet

    def parsed() -> ConfigParser:
        parser = ConfigParser()
        parser.read_config([str(BUNDLE / "configs" / "inference.json"), str(BUNDLE / "configs" / "inference_trt.json")])
        parser.update({"bundle_root": str(BUNDLE), "device": "$torch.device('cpu')", "sw_batch_size": 4})
        return parser

    logger = logging.getLogger("monai.networks.trt_compiler")  # MONAI's logger does not propagate to caplog's
    logger.addHandler(caplog.handler)
    try:
        net = parsed().get_parsed_content("network")
    finally:
        logger.removeHandler(caplog.handler)
    assert type(net) is AttentionUNet and not hasattr(net, "_trt_compiler")
    assert "TensorRT and/or polygraphy packages are not available" in caplog.text
    monkeypatch.setattr(trt, "trt_imported", True)
    monkeypatch.setattr(trt, "polygraphy_imported", True)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    parser = parsed()
    compiler = parser.get_parsed_content("network")._trt_compiler
    assert compiler.plan_path == str(BUNDLE / "models" / "model.pt") + ".plan"
    assert (compiler.dynamic_batchsize, compiler.precision) == ([1, 4, 4], "fp16")
    assert parser.get_parsed_content("evaluator#compile") is False and parser["channels_last"] is False


# ------------------------------------------------------------------------------- every bundle folder
BUNDLE_NAMES = sorted(p.name for p in (REPO / "bundles").iterdir() if (p / "configs" / "metadata.json").is_file())


def test_bundles_are_in_step_with_the_template():
    from monai_unet_variants.bundle_family import VARIANTS, check_bundles

    assert check_bundles(REPO / "bundles") == []
    assert sorted(VARIANTS) == BUNDLE_NAMES


def test_bundle_family_check_catches_drift(tmp_path):
    from monai_unet_variants.bundle_family import check_bundles

    copy = tmp_path / "bundles"
    shutil.copytree(REPO / "bundles", copy, ignore=shutil.ignore_patterns("*.pt", "eval"))
    train = copy / "resunet_pancreas" / "configs" / "train.json"
    config = json.loads(train.read_text())
    config["learning_rate"] = 0.01
    train.write_text(json.dumps(config))
    assert check_bundles(copy) == [
        "resunet_pancreas/configs/train.json: differs from the template (run python -m monai_unet_variants.bundle_family)"
    ]
    # compared as text: the same config in another layout (keys reordered) is drift too, as git diff would show it
    shutil.copy(REPO / "bundles" / "resunet_pancreas" / "configs" / "train.json", train)
    infer = copy / "unet_pancreas" / "configs" / "inference.json"
    infer.write_text(json.dumps(dict(reversed(json.loads(infer.read_text()).items())), indent=4) + "\n")
    overlay = copy / "denseunet_pancreas" / "configs" / "network.json"
    overlay.write_text(overlay.read_text().replace('"channels_last": false', '"channels_last": true'))
    own = copy / "attunet_pancreas" / "configs" / "network.json"
    own.unlink()
    assert check_bundles(copy) == [
        "attunet_pancreas/configs/network.json: missing or differs from VARIANTS['attunet_pancreas'] "
        "(run python -m monai_unet_variants.bundle_family)",
        "denseunet_pancreas/configs/network.json: differs from the template (run python -m monai_unet_variants.bundle_family)",
        "unet_pancreas/configs/inference.json: differs from the template (run python -m monai_unet_variants.bundle_family)",
    ]


@pytest.mark.parametrize("name", BUNDLE_NAMES)
def test_each_bundle_is_the_template_merged_with_its_overlay_by_monai(name):
    """What the bundle docs promise: MONAI's own multi-file loading of the template's config and the bundle's
    ``configs/network.json`` gives the bundle's config, and the overlay holds the network and nothing shared."""
    from monai.bundle import ConfigParser

    from monai_unet_variants.bundle_family import SETTINGS, TEMPLATE

    configs = REPO / "bundles" / name / "configs"
    overlay = json.loads((configs / "network.json").read_text())
    assert set(overlay) == {"network_def", *SETTINGS}
    for conf in ("train.json", "inference.json"):
        merged = ConfigParser.load_config_files([str(REPO / "bundles" / TEMPLATE / "configs" / conf),
                                                 str(configs / "network.json")])
        assert merged == json.loads((configs / conf).read_text()), (name, conf)
        assert list(merged) == list(json.loads((REPO / "bundles" / TEMPLATE / "configs" / conf).read_text()))


@pytest.mark.parametrize("confs", [["train.json"], ["inference.json"], ["train.json", "evaluate.json"],
                                   ["train.json", "multi_gpu_train.json"],
                                   ["train.json", "evaluate.json", "multi_gpu_evaluate.json"]])
def test_every_numeric_option_is_checked_before_anything_runs(confs):
    """Each config checks its options' names, then their values first in ``initialize`` (``check_option_names``,
    ``options.check_options``), and every top-level option
    that holds a number, or has a rule, is among those checked: a new numeric option without a rule fails here."""
    import re

    from monai.bundle import ConfigParser

    from monai_unet_variants.options import OPTION_RULES

    config = ConfigParser.load_config_files([str(BUNDLE / "configs" / c) for c in confs])
    initialize = config["initialize"]
    assert initialize[:3] == ["$monai_unet_variants.bundle.summarize_errors()",
                              "$monai_unet_variants.bundle.check_option_names()", "@checked_options"]
    # the patch size against the network comes after the seed: building the network draws its initial weights, which
    # the seed must decide (a network built before set_determinism trains differently from run to run)
    seeded = next(i for i, item in enumerate(initialize) if "set_determinism" in item)
    assert initialize[seeded + 1] == "@checked_patch" and "network" not in config["checked_options"]
    assert "@network_def" in config["checked_patch"]
    checked = re.findall(r"'(\w+)': @(\w+)", config["checked_options"])
    assert all(key == ref for key, ref in checked)
    checked_names = {key for key, _ in checked}

    def numeric(v):
        is_number = isinstance(v, (int, float)) and not isinstance(v, bool)
        return is_number or (isinstance(v, list) and bool(v) and all(numeric(x) for x in v))

    options = {k for k, v in config.items() if k in OPTION_RULES or numeric(v)}
    assert options - checked_names == set(), "options that reach the run unchecked"
    assert checked_names <= set(OPTION_RULES) and checked_names <= set(config)


def test_the_seed_decides_the_initial_weights(tmp_path, sample):
    """``--seed`` fixes the network's initial weights whatever random state the process was in: every config builds
    the network after ``set_determinism`` (the option checks run before it and build nothing)."""
    from monai.bundle import ConfigWorkflow
    from monai.utils import set_determinism

    def weights(seed: int, run: int) -> dict:
        torch.manual_seed(1000 + run)  # another random state in each run
        workflow = ConfigWorkflow(config_file=str(BUNDLE / "configs" / "train.json"), workflow_type="train",
                                  dataset_dir=str(sample), ckpt_dir=str(tmp_path / f"m{run}"), seed=seed,
                                  output_dir=str(tmp_path / f"e{run}"), roi_size=[32, 32, 32], num_workers=0,
                                  **{"network_def#channels": [4, 8, 16, 32, 64]})
        workflow.initialize()
        return {k: v.clone() for k, v in workflow.parser.get_parsed_content("network").state_dict().items()}

    try:
        first, again, other = weights(0, 0), weights(0, 1), weights(1, 2)
    finally:
        set_determinism(seed=None)
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert not all(torch.equal(first[k], other[k]) for k in first)


def test_a_new_network_class_with_a_bundle_spec_is_a_new_bundle(monkeypatch):
    """What a new variant's file holds is all a bundle needs: a registered class with ``PAPERS`` and ``BUNDLE``
    becomes a bundle of its own (configs, metadata, docs) without an entry anywhere else."""
    from monai_unet_variants import bundle_family, networks
    from monai_unet_variants.registry import NETWORKS, register_network

    @register_network("demo_unet")
    class DemoUNet(networks.PlainUNet):
        PAPERS = ("Doe, J., Roe, R. A Demo U-Net. Demo Conference 2031. https://arxiv.org/abs/3101.00001",)
        BUNDLE = {"name": "demo_pancreas", "title": "Demo U-Net", "about": "a demonstration.", "args": {"bias": False},
                  "settings": {"channels_last": True}}

    monkeypatch.setattr(networks, "DemoUNet", DemoUNet, raising=False)  # as the package exports a module's classes
    try:
        variants = bundle_family._variants()
        assert variants["demo_pancreas"]["class"] == "DemoUNet" and "demo_pancreas" not in bundle_family.VARIANTS
        monkeypatch.setattr(bundle_family, "VARIANTS", variants)
        files = bundle_family.render_bundle(BUNDLE, "demo_pancreas")
    finally:
        NETWORKS.pop("demo_unet")
    train = json.loads(files["configs/train.json"])
    assert train["network_def"]["_target_"] == "monai_unet_variants.networks.DemoUNet"
    assert train["network_def"]["bias"] is False and train["channels_last"] is True
    meta = json.loads(files["configs/metadata.json"])
    assert meta["name"] == "pancreas_ct_demo_segmentation" and meta["references"][0] == DemoUNet.PAPERS[0]
    doc = files["docs/README.md"]
    assert doc.startswith("# demo_pancreas: Demo U-Net") and "(Doe et al. 2031, https://arxiv.org/abs/3101.00001)" in doc
    assert "Not yet trained by" in doc and "not yet measured on a GPU" in doc


def test_per_network_settings_reach_each_bundle_and_their_drift_is_caught(tmp_path):
    """A measured per-network default (``channels_last``: on for the Attention U-Net, off elsewhere) is what each
    bundle's train and inference configs hold; the template edited by hand against ``VARIANTS`` is reported."""
    from monai_unet_variants.bundle_family import TEMPLATE, check_bundles, settings

    for name in BUNDLE_NAMES:
        for conf in ("train.json", "inference.json"):
            config = json.loads((REPO / "bundles" / name / "configs" / conf).read_text())
            assert {k: config[k] for k in settings(name)} == settings(name), (name, conf)
    assert settings(TEMPLATE)["channels_last"] is True and settings("unet_pancreas")["channels_last"] is False
    copy = tmp_path / "bundles"
    shutil.copytree(REPO / "bundles", copy, ignore=shutil.ignore_patterns("*.pt", "eval"))
    infer = copy / TEMPLATE / "configs" / "inference.json"
    infer.write_text(infer.read_text().replace('"channels_last": true', '"channels_last": false'))
    assert check_bundles(copy) == [
        f"{TEMPLATE}/configs/inference.json: channels_last is False, VARIANTS['{TEMPLATE}'] says True"]
    # the docs' per-network sections (training configuration, measured performance, references) are generated too
    doc = copy / TEMPLATE / "docs" / "README.md"
    doc.write_text(doc.read_text().replace("## Performance", "## Performance\n\nDice 0.99 on everything."))
    assert f"{TEMPLATE}/docs/README.md: per-network sections differ (run python -m monai_unet_variants.bundle_family)" \
        in check_bundles(copy)
    for name in BUNDLE_NAMES:
        text = (REPO / "bundles" / name / "docs" / "README.md").read_text()
        assert "## Training configuration" in text and "## Performance" in text and "## References" in text, name


@pytest.mark.parametrize("name", BUNDLE_NAMES)
def test_every_bundle_json_is_formatted_as_the_zoo_hook_formats_it(name):
    """The model zoo's pre-commit ``pretty-format-json --indent=4`` would leave every config as it is (indent 4,
    ASCII, keys in their written order, one newline at the end); the metadata names the bundle zoo-style."""
    from monai_unet_variants.bundle_family import zoo_name

    for path in sorted((REPO / "bundles" / name / "configs").glob("*.json")):
        text = path.read_text()
        assert text == json.dumps(json.loads(text), indent=4) + "\n", f"{path} is not formatted as the zoo's hook would"
    assert json.loads((REPO / "bundles" / name / "configs" / "metadata.json").read_text())["name"] == zoo_name(name)


@pytest.mark.parametrize("name", BUNDLE_NAMES)
def test_every_bundle_metadata_and_network(name):
    from monai.bundle import verify_metadata, verify_net_in_out

    root = REPO / "bundles" / name
    verify_metadata(meta_file=str(root / "configs" / "metadata.json"), filepath=str(SCHEMA))
    verify_net_in_out(net_id="network_def", meta_file=str(root / "configs" / "metadata.json"),
                      config_file=str(root / "configs" / "inference.json"),
                      **{"network_def#channels": [8, 16, 32, 64, 128]})
    train = json.loads((root / "configs" / "train.json").read_text())
    infer = json.loads((root / "configs" / "inference.json").read_text())
    assert train["network_def"] == infer["network_def"]
    assert train["network_def"]["_target_"].startswith("monai_unet_variants.networks.")
    # honest metadata: the bundle's own network's papers (then the data set's), the label as it is stored
    import monai_unet_variants.networks as nets

    meta = json.loads((root / "configs" / "metadata.json").read_text())
    papers = getattr(nets, train["network_def"]["_target_"].rsplit(".", 1)[1]).PAPERS
    assert papers and meta["references"] == [*papers, meta["references"][-1]]
    assert meta["label_classes"].startswith("one channel") and "logits" in meta["pred_classes"]
    assert "eval_metrics" not in meta and {"scipy", "tqdm"} <= set(meta["required_packages_version"])


@pytest.mark.slow
@pytest.mark.parametrize("name", [n for n in BUNDLE_NAMES if n != "attunet_pancreas"])  # the flagship is tested above
def test_every_generated_bundle_infers_and_exports(name, tmp_path, sample):
    """A generated bundle differs from the template only in its network (the drift check), so it is run only as far
    as it differs: its network from its own config, saved as the checkpoint, through the inference workflow on NIfTI
    and DICOM (output geometry equal to the input's) and the TorchScript export, in this process (the flagship's
    tests run the same commands as processes: a process each took ~9 s before it did anything)."""
    from monai.bundle import ConfigParser, ConfigWorkflow, ckpt_export
    from monai.transforms import LoadImage

    root = tmp_path / name
    shutil.copytree(REPO / "bundles" / name, root, ignore=shutil.ignore_patterns("*.pt", "eval"))
    # overlap 0.25: the output geometry is what is checked here, and it does not depend on how windows overlap
    small = ["--roi_size", "[32,32,32]", "--network_def#channels", "[8,16,32,64,128]", "--overlap", "0.25"]
    parser = ConfigParser()
    parser.read_config(str(root / "configs" / "inference.json"))
    parser["network_def#channels"] = [8, 16, 32, 64, 128]
    torch.manual_seed(0)
    net = parser.get_parsed_content("network_def")
    (root / "models").mkdir(exist_ok=True)
    torch.save(net.state_dict(), root / "models" / "model.pt")
    nifti, dicom = sample / "imagesTs" / "pancreas_005.nii.gz", tmp_path / "series"
    shutil.copytree(sample / "dicomTs" / "pancreas_005", dicom)
    workflow = ConfigWorkflow(config_file=str(root / "configs" / "inference.json"), logging_file=False,
                              meta_file=str(root / "configs" / "metadata.json"), workflow_type=None,
                              bundle_root=str(root), dataset_dir=str(sample), datalist=[str(nifti), str(dicom)],
                              **cli_overrides(small))
    workflow.initialize()
    workflow.run()
    workflow.finalize()
    _check_geometry(root / "eval" / "pancreas_005_seg.nii.gz", LoadImage(image_only=True, reader="NibabelReader")(nifti))
    _check_geometry(root / "eval" / "series_seg.nii.gz", LoadImage(image_only=True, reader="ITKReader")(dicom))
    ckpt_export(net_id="network_def", filepath=str(root / "models" / "model.ts"),
                ckpt_file=str(root / "models" / "model.pt"), meta_file=str(root / "configs" / "metadata.json"),
                config_file=str(root / "configs" / "inference.json"), **{"network_def#channels": [8, 16, 32, 64, 128]})
    x = torch.rand(1, 1, 32, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(torch.jit.load(str(root / "models" / "model.ts"))(x), net.eval()(x))


def test_ckpt_export_of_a_checkpoint_trained_elsewhere_builds_its_widths(tmp_path):
    """MONAI's ckpt_export takes ``--ckpt_file`` out of the arguments the config sees; the config's ``ckpt_path``
    follows it in an export (``export_checkpoint``), so a checkpoint of other widths kept elsewhere exports with the
    widths recorded beside it, without ``--ckpt_path``. A ``--ckpt_path`` typed to another folder is what the
    widths come from; one that does not fit is refused with one line naming the widths and the options."""
    from monai.bundle import ckpt_export

    from monai_unet_variants.networks import AttentionUNet

    root = REPO / "bundles" / "attunet_pancreas"
    run = tmp_path / "run1"
    run.mkdir()
    widths = [8, 16, 32, 64, 128]
    torch.manual_seed(0)
    net = AttentionUNet(spatial_dims=3, in_channels=1, out_channels=3, channels=widths,
                        strides=[2, 2, 2, 2], norm=["instance", {"affine": True}]).eval()
    torch.save(net.state_dict(), run / "model.pt")
    (run / "training_options.json").write_text(json.dumps({"channels": widths}))
    args = dict(net_id="network_def", filepath=str(tmp_path / "model.ts"), ckpt_file=str(run / "model.pt"),
                meta_file=str(root / "configs" / "metadata.json"), config_file=str(root / "configs" / "inference.json"),
                bundle_root=str(tmp_path / "elsewhere"))
    with pytest.raises(RuntimeError, match=r"widths \[16, 32, 64, 128, 256\]\).*in an export beside --ckpt_file"):
        ckpt_export(**args, ckpt_path=str(tmp_path / "elsewhere" / "model.pt"))
    assert not (tmp_path / "model.ts").exists()
    ckpt_export(**args)
    x = torch.rand(1, 1, 32, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(torch.jit.load(str(tmp_path / "model.ts"))(x), net(x))


def _truncated_checkpoint(folder: Path) -> tuple[Path, Path, str]:
    """A complete checkpoint ``good.pt`` and its first half as ``model.pt`` in ``folder``, and the cause the exports
    name for the latter."""
    from monai_unet_variants.networks import AttentionUNet

    folder.mkdir()
    net = AttentionUNet(spatial_dims=3, in_channels=1, out_channels=3, channels=[4, 8, 16, 32, 64],
                        strides=[2, 2, 2, 2])
    good, bad = folder / "good.pt", folder / "model.pt"
    torch.save(net.state_dict(), good)
    data = good.read_bytes()
    bad.write_bytes(data[: len(data) // 2])
    return good, bad, f"checkpoint {bad} cannot be read (it is no zip archive with the directory at its end that " \
        "torch.save writes)"


def test_export_of_a_truncated_or_foreign_checkpoint_names_the_file(tmp_path, monkeypatch):
    """MONAI's ckpt_export and onnx_export load the checkpoint themselves: a truncated file came out as torch's
    weights-only unpickling error advising ``weights_only=False``, or a zip error without the file's name. The
    configs check the file before they build the network (``check_complete``): the cause names the file, nothing is
    written; also where ``--ckpt_path`` names a complete file beside the export's ``--ckpt_file``. A complete
    checkpoint, also of torch's legacy format, passes without being loaded."""
    from monai.bundle import ckpt_export, onnx_export

    from monai_unet_variants.bundle import checkpoints
    from monai_unet_variants.bundle.checkpoints import check_complete
    from monai_unet_variants.bundle.errors import root_cause

    good, bad, cause = _truncated_checkpoint(tmp_path / "models")
    legacy = tmp_path / "models" / "legacy.pt"
    torch.save(torch.load(good, weights_only=True), legacy, _use_new_zipfile_serialization=False)
    loads = []
    load = checkpoints.check_checkpoint
    monkeypatch.setattr(checkpoints, "check_checkpoint", lambda p: loads.append(p) or load(p))
    for path in (good, legacy, tmp_path / "nowhere.pt", legacy):
        check_complete(path)  # passes: no error
    assert loads == [legacy]  # a zip is not loaded; the legacy file once (a config reads several options beside it)
    root = REPO / "bundles" / "attunet_pancreas"
    common = {"net_id": "network_def", "ckpt_file": str(bad), "meta_file": str(root / "configs" / "metadata.json"),
              "config_file": str(root / "configs" / "inference.json"), "bundle_root": str(tmp_path)}
    for export, args in [(ckpt_export, {"filepath": str(tmp_path / "model.ts")}),
                         (onnx_export, {"filepath": str(tmp_path / "model.onnx"),
                                        "args_file": str(root / "configs" / "onnx_export.json")}),
                         (ckpt_export, {"filepath": str(tmp_path / "model.ts"), "ckpt_path": str(good)})]:
        with pytest.raises(RuntimeError) as err:
            export(**common, **args)
        assert str(root_cause(err.value)).startswith(cause), export
        assert not Path(args["filepath"]).exists()
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="it is no zip archive"):
        check_complete(bad)


@pytest.mark.slow  # ~6 s: the command line's last line (the in-process checks above run by default)
def test_export_command_of_a_truncated_checkpoint_ends_with_the_cause(tmp_path):
    _, bad, cause = _truncated_checkpoint(tmp_path / "models")
    root = REPO / "bundles" / "attunet_pancreas"
    proc = run_bundle("ckpt_export", "network_def", "--filepath", str(tmp_path / "model.ts"),
                      "--meta_file", str(root / "configs" / "metadata.json"),
                      "--config_file", str(root / "configs" / "inference.json"), "--bundle_root", str(tmp_path),
                      "--ckpt_file", str(bad), check=False)
    assert proc.returncode != 0
    assert proc.stderr.strip().splitlines()[-1].startswith(f"error: ValueError: {cause}"), proc.stderr[-3000:]
    assert "weights_only" not in proc.stderr.strip().splitlines()[-1]
    assert not (tmp_path / "model.ts").exists()


def test_an_option_the_config_does_not_have_is_refused_naming_it(tmp_path):
    """MONAI adds every option it is given to the config, so ``--epoch 1`` beside ``epochs`` trained for 10 epochs
    without a word. Each command (``run`` with one or two config files, options from ``--args_file``, the exports)
    refuses an option whose first id the config files do not have, naming it, the files and the closest names, or
    that nothing in them reads (training's ``--overwrite`` typed to the evaluation), before anything is read or
    written."""
    from monai.bundle import ckpt_export, run

    from monai_unet_variants.bundle.errors import root_cause

    configs = BUNDLE / "configs"
    folders = {"ckpt_dir": str(tmp_path / "models"), "output_dir": str(tmp_path / "eval")}
    args_file = tmp_path / "args.json"
    args_file.write_text(json.dumps({"val_intervall": 2}))
    (tmp_path / "m.pt").write_bytes(b"never read")
    cases = [
        (run, {"config_file": str(configs / "train.json"), "epoch": 1, **folders},
         "--epoch: there is no option 'epoch' in train.json (it would be ignored); did you mean --epochs?"),
        (run, {"config_file": [str(configs / "train.json"), str(configs / "multi_gpu_train.json")],
               "learning_rat": 0.1, **folders},
         "--learning_rat: there is no option 'learning_rat' in train.json + multi_gpu_train.json (it would be "
         "ignored); did you mean --learning_rate?"),
        (run, {"config_file": str(configs / "train.json"), "args_file": str(args_file), **folders},
         "--val_intervall: there is no option 'val_intervall' in train.json"),
        (run, {"config_file": [str(configs / "train.json"), str(configs / "evaluate.json")], "ckpt_pth": "m.pt",
               **folders},
         "--ckpt_pth: there is no option 'ckpt_pth' in train.json + evaluate.json (it would be ignored); did you "
         "mean --ckpt_path"),
        (run, {"config_file": [str(configs / "train.json"), str(configs / "evaluate.json")], "overwrite": False,
               **folders},
         "--overwrite: nothing in train.json + evaluate.json reads the option 'overwrite', so it would be ignored"),
        (ckpt_export, {"net_id": "network_def", "filepath": str(tmp_path / "model.ts"), "ckpt_pth": "m.pt",
                       "ckpt_file": str(tmp_path / "m.pt"), "meta_file": str(configs / "metadata.json"),
                       "config_file": str(configs / "inference.json"), "bundle_root": str(tmp_path)},
         "--ckpt_pth: there is no option 'ckpt_pth' in inference.json (it would be ignored); did you mean --ckpt_path"),
    ]
    for command, args, message in cases:
        with pytest.raises(RuntimeError) as err:
            command(**args)
        cause = root_cause(err.value)
        assert isinstance(cause, ValueError) and str(cause).startswith(message), (message, str(cause))
        assert str(configs) in str(cause)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["args.json", "m.pt"]  # nothing written


def test_options_the_config_has_pass_the_name_check(tmp_path):
    """What a person may type beside the config's own names: a path into one (``--optimizer#fused``, MONAI's ``::``
    too), the workflow's own arguments, the ids of ``--tracking``'s settings, a new name that another option
    references."""
    from monai.bundle.scripts import create_workflow

    from monai_unet_variants.bundle.errors import root_cause

    workflow = create_workflow(
        config_file=str(BUNDLE / "configs" / "train.json"), workflow_type="train", logging_file=False,
        initialize=["$monai_unet_variants.bundle.check_option_names()"], output_dir=str(tmp_path / "eval"),
        tracking="mlflow", tracking_uri=(tmp_path / "mlruns").as_uri(),  # MONAI's tracking settings add these ids
        **{"optimizer#fused": True, "network_def::channels": [4, 8, 16, 32, 64], "my_epochs": 3,
           "epochs": "@my_epochs"})
    assert workflow.parser.get_parsed_content("epochs") == 3
    with pytest.raises(RuntimeError) as err:  # the same check, with a new name that nothing references
        create_workflow(config_file=str(BUNDLE / "configs" / "train.json"), logging_file=False,
                        initialize=["$monai_unet_variants.bundle.check_option_names()"], my_epochs=3)
    assert str(root_cause(err.value)).startswith("--my_epochs: there is no option 'my_epochs' in train.json")


@pytest.mark.slow  # ~6 s: the command line (fire reads --val-interval as val_interval), its last line
def test_a_mistyped_option_ends_the_command_with_its_name(tmp_path):
    proc = run_bundle("run", "--config_file", str(BUNDLE / "configs" / "train.json"), "--val-interval", "1",
                      "--epoch", "1", "--ckpt_dir", str(tmp_path / "models"), check=False)
    assert proc.returncode != 0
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ValueError: --epoch: there is no option 'epoch' in train.json"), proc.stderr[-3000:]
    assert "did you mean --epochs?" in last
    assert not (tmp_path / "models").exists()


@pytest.mark.slow
def test_compare_command(tmp_path, sample):
    """The side-by-side comparison runs every chosen bundle with one budget and writes table, JSON and plot."""
    from monai_unet_variants import compare

    out = tmp_path / "cmp"
    assert compare.main(["--dataset_dir", str(sample), "--bundles", "unet_pancreas,attunet_pancreas", "--epochs", "2",
                         "--val_interval", "1", "--roi_size", "32", "--num_samples", "1", "--out", str(out)]) == 0
    rows = json.loads((out / "results.json").read_text())["rows"]
    assert [r["bundle"] for r in rows] == ["unet_pancreas", "attunet_pancreas"]
    for r in rows:
        assert r["params"] > 0 and r["gflops_per_patch"] > 0 and r["s_per_epoch"] > 0 and r["peak_mib"] > 0
        assert 0 <= r["dice_pancreas"] <= 1 and r["infer_s_per_volume"] > 0
        assert [c["epoch"] for c in r["curve"]][:2] == [1, 2]
    assert rows[0]["params"] < rows[1]["params"]  # gates add parameters
    assert (out / "dice_vs_epoch.png").read_bytes()[:4] == b"\x89PNG"
    assert (out / "results.csv").read_text().splitlines()[0].startswith("bundle,dice_pancreas,")


def test_meta_safe_spacing_leaves_monailabel_path_alone(tmp_path):
    """MONAI Label adds ``image_path`` (a string) beside ``image``; resampling must keep it and stay invertible."""
    from monai.transforms import EnsureChannelFirstd, LoadImaged

    img = _write(tmp_path / "img.nii.gz", np.arange(16 * 12 * 8, dtype=np.float32).reshape(16, 12, 8),
                 np.diag([0.8, 0.8, 2.5, 1.0]))
    data = EnsureChannelFirstd("image")(LoadImaged("image", image_only=True)({"image": str(img)}))
    data["image_path"] = str(img)
    spacing = mb.MetaSafeSpacingd("image", pixdim=(1.0, 1.0, 1.0), mode="bilinear")
    out = spacing(data)
    assert out["image_path"] == str(img)
    assert tuple(out["image"].shape[1:]) == (13, 10, 18)  # extents 15*0.8, 11*0.8, 7*2.5 mm at 1 mm
    np.testing.assert_allclose(out["image"].pixdim, (1.0, 1.0, 1.0), atol=1e-6)
    assert tuple(spacing.inverse(out)["image"].shape[1:]) == (16, 12, 8)


@pytest.mark.parametrize("epochs, interval, expected", [(5, 2, [2, 4, 5]), (4, 2, [2, 4]), (1, 3, [1])])
def test_final_validation_runs_after_the_last_epoch(epochs, interval, expected):
    from ignite.engine import Engine
    from monai.engines import Evaluator

    runs: list[int] = []

    class Validator(Evaluator):  # records the epochs it validates at
        def __init__(self) -> None:
            pass

        def run(self, global_epoch: int = 1, global_iteration: int = 0) -> None:
            runs.append(global_epoch)

    trainer = Engine(lambda engine, batch: None)
    mb.FinalValidationHandler(validator=Validator(), interval=interval, epoch_level=True).attach(trainer)
    trainer.run([0, 1], max_epochs=epochs)
    assert runs == expected


def test_compare_finds_bundles_or_says_where_to_look(tmp_path):
    """``compare`` lists the bundles of ``--bundles_dir``; an installed package has no bundles folder, and the
    message says so and names the option, before any data is written."""
    from monai_unet_variants import compare

    assert [p.name for p in compare.bundle_folders(REPO / "bundles", "unet_pancreas,unet3plus_pancreas")] == [
        "unet_pancreas", "unet3plus_pancreas"]
    assert len(compare.bundle_folders(REPO / "bundles")) == len(BUNDLE_NAMES)
    with pytest.raises(SystemExit, match=r"no bundles in .*pass --bundles_dir"):
        compare.main(["--bundles_dir", str(tmp_path / "site-packages"), "--out", str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()
    with pytest.raises(SystemExit, match=r"no bundle unet_pancreaz in .*it holds .*unet_pancreas"):
        compare.bundle_folders(REPO / "bundles", "unet_pancreaz")


def test_multi_gpu_config_silences_the_right_handlers():
    """``multi_gpu_train.json`` switches handlers off on ranks above 0 by their place in ``train.json``: the places
    must still hold the writing handlers (checkpoints, logs, TensorBoard, progress, compile log, history), and the
    checkpoint loader and the validation trigger stay on every rank."""
    import re

    train = json.loads((BUNDLE / "configs" / "train.json").read_text())
    multi = json.loads((BUNDLE / "configs" / "multi_gpu_train.json").read_text())
    off = {}
    for key, value in multi.items():
        m = re.fullmatch(r"(train|validate)#handlers#(\d+)#_disabled_", key)
        if m:
            assert value == "$@rank > 0", key
            off.setdefault(m[1], []).append(train[m[1]]["handlers"][int(m[2])]["_target_"].rsplit(".", 1)[-1])
    assert sorted(off["train"]) == sorted(["AtomicCheckpointSaver", "StatsHandler", "TensorBoardStatsHandler",
                                           "ProgressBar", "CompileMonitor", "TrainingHistory"])
    assert sorted(off["validate"]) == sorted(t["_target_"].rsplit(".", 1)[-1] for t in train["validate"]["handlers"])
    kept = [h["_target_"].rsplit(".", 1)[-1] for i, h in enumerate(train["train"]["handlers"])
            if f"train#handlers#{i}#_disabled_" not in multi]
    assert kept == ["SafeCheckpointLoader", "LrScheduleHandler", "FinalValidationHandler", "SkippedCasesReport",
                    "DecollateOnDevice"]  # every rank splits its output and scores its share


# ------------------------------------------------------------------------------- deep supervision in the bundles
def test_stacked_deep_supervision_loss_is_the_weighted_mean_of_each_outputs_loss():
    from monai.losses import DiceCELoss

    base = DiceCELoss(to_onehot_y=True, softmax=True)
    label = torch.randint(0, 3, (2, 1, 8, 8, 8))
    stacked = torch.randn(2, 4, 3, 8, 8, 8)
    each = torch.stack([base(stacked[:, k], label) for k in range(4)])
    torch.testing.assert_close(mb.StackedDeepSupervisionLoss(base)(stacked, label), each.mean())
    weights = torch.tensor([1.0, 0.5, 0.25, 0.125])
    torch.testing.assert_close(mb.StackedDeepSupervisionLoss(base, weight_mode="exp")(stacked, label),
                               (each * weights).sum() / weights.sum())
    # a plain output (eval mode, a network without deep supervision) is the plain loss
    torch.testing.assert_close(mb.StackedDeepSupervisionLoss(base)(stacked[:, 2], label), each[2])
    with pytest.raises(ValueError, match=r"neither a plain .* nor a deep-supervision stack"):
        mb.StackedDeepSupervisionLoss(base)(stacked[None], label)
    with pytest.raises(ValueError, match="weight_mode must be"):
        mb.StackedDeepSupervisionLoss(base, weight_mode="Same")


def test_main_output_goes_to_the_training_metrics():
    item = {"pred": torch.arange(4 * 3 * 8.0).reshape(4, 3, 2, 2, 2), "label": torch.zeros(1, 2, 2, 2)}
    out = mb.MainOutputd(keys="pred", ref_key="label")(item)
    torch.testing.assert_close(out["pred"], item["pred"][0])
    assert mb.MainOutputd()(out)["pred"] is out["pred"]  # a plain output stays as it is
    with pytest.raises(ValueError, match="neither an output with the dimensions of label"):
        mb.MainOutputd()({"pred": torch.zeros(3, 2, 2), "label": torch.zeros(1, 2, 2, 2)})


def _deep_supervision_bundles() -> list[str]:
    """The bundles that train with deep supervision, and the template (without): read from the bundle family."""
    from monai_unet_variants.bundle_family import TEMPLATE, settings

    return [n for n in BUNDLE_NAMES if settings(n)["deep_supervision"]] + [TEMPLATE]


@pytest.mark.parametrize("name", _deep_supervision_bundles())
def test_bundle_trains_every_deep_supervision_head_it_declares(name):
    """The bundle's own configs wired together as the trainer uses them: its network (UNet++ and UNet 3+ with the
    papers' deep supervision) in training mode, its loss on the stacked output, its training postprocessing giving
    the training Dice the main output; every head's weights get a gradient, and eval mode returns one output."""
    from monai.bundle import ConfigParser
    from monai.data import decollate_batch

    from monai_unet_variants.bundle_family import settings

    own = settings(name)
    heads = 1 + own["deep_supr_num"] if own["deep_supervision"] else 1
    assert heads > 1 or name not in ("unetplusplus_pancreas", "unet3plus_pancreas")  # as their papers train them
    parser = ConfigParser()
    parser.read_config(str(REPO / "bundles" / name / "configs" / "train.json"))
    parser["network_def#channels"] = [4, 8, 16, 32, 64]
    torch.manual_seed(0)
    net, loss, post = (parser.get_parsed_content(k) for k in ("network_def", "loss", "train#postprocessing"))
    x, label = torch.rand(1, 1, 32, 32, 32), torch.randint(0, 3, (1, 1, 32, 32, 32)).float()
    out = net.train()(x)
    assert out.shape == ((1, heads, 3, 32, 32, 32) if heads > 1 else (1, 3, 32, 32, 32))
    loss(out, label).backward()
    head_grads = {n: p.grad for n, p in net.named_parameters() if n.startswith("head.")}
    assert len({n.rsplit(".", 1)[0] for n in head_grads}) == heads  # one convolution per output
    assert all(g is not None and g.abs().sum() > 0 for g in head_grads.values()), head_grads.keys()
    item = post(decollate_batch({"pred": out.detach(), "label": label})[0])
    assert item["pred"].shape == (3, 32, 32, 32) and item["label"].shape == (1, 32, 32, 32)
    torch.testing.assert_close(item["pred"], out.detach()[0, 0] if heads > 1 else out.detach()[0])  # the main output
    dice = parser.get_parsed_content("train#key_metric#train_mean_dice").metric_fn
    dice([item["pred"]], [item["label"]])  # the training Dice scores it as it comes
    assert 0 <= dice.aggregate().item() <= 1
    assert net.eval()(x).shape == (1, 3, 32, 32, 32)


@pytest.mark.slow
def test_unetplusplus_bundle_trains_with_deep_supervision_as_typed(tmp_path, sample):
    """The real command line: the UNet++ bundle trains its four top-row heads by default and the last one only with
    ``--deep_supervision false`` (the text, as typed); its inference loads either checkpoint as it was trained."""
    root = tmp_path / "unetplusplus_pancreas"
    shutil.copytree(REPO / "bundles" / "unetplusplus_pancreas", root, ignore=shutil.ignore_patterns("*.pt", "eval"))
    heads = {}
    for flag in ("true", "false"):
        models = tmp_path / f"models_{flag}"
        proc = run_bundle("run", "--config_file", str(root / "configs" / "train.json"), "--dataset_dir", str(sample),
                          "--epochs", "1", "--val_interval", "1", "--ckpt_dir", str(models), "--deep_supervision", flag,
                          *TINY)
        losses = [float(line.rsplit("train_loss:", 1)[1]) for line in (proc.stdout + proc.stderr).splitlines()
                  if "train_loss:" in line]
        assert losses and all(0 < v < 10 for v in losses)
        state = torch.load(models / "model.pt", map_location="cpu", weights_only=True)
        heads[flag] = sorted({k.split(".")[2] for k in state if k.startswith("head.heads.")})
        run_bundle("run", "--config_file", str(root / "configs" / "inference.json"), "--dataset_dir", str(sample),
                   "--ckpt_path", str(models / "model.pt"), "--output_dir", str(tmp_path / f"seg_{flag}"),
                   "--deep_supervision", flag, *TINY[:4])
        assert len(list((tmp_path / f"seg_{flag}").glob("*_seg.nii.gz"))) == 1
    assert heads == {"true": ["0", "1", "2", "3"], "false": ["0"]}
    # without the flag it was trained with, inference names the heads as the cause (not "another network")
    proc = run_bundle("run", "--config_file", str(root / "configs" / "inference.json"), "--dataset_dir", str(sample),
                      "--ckpt_path", str(tmp_path / "models_false" / "model.pt"), "--output_dir",
                      str(tmp_path / "seg_default"), *TINY[:4], check=False)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1].endswith(
        f"checkpoint {tmp_path / 'models_false' / 'model.pt'} fits the network except its output heads (2 head tensors "
        "saved, 8 in the network): it was trained with other deep-supervision settings. Pass the ones it was trained "
        "with, e.g. --deep_supervision false, or its --deep_supr_num")
    assert not list((tmp_path / "seg_default").glob("*_seg.nii.gz"))
