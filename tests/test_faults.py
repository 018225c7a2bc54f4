"""The fault suite: broken inputs built from the synthetic sample, each refused with the file, the case and the reason.

Fast tests check the pieces (case checks, the cached dataset, the loader thread, the last line of a failed run); the
slow ones run the real ``python -m monai.bundle`` command line on each broken data set and check the exit code, that
the last line of the output names the file, and that a good ``model.pt`` already in ``ckpt_dir`` is left as it was.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from conftest import FLAGSHIP, cli_overrides
from monai.data import DataLoader, Dataset, MetaTensor, ThreadDataLoader
from monai.transforms import Compose, EnsureChannelFirstd, LoadImaged

from monai_unet_variants import bundle as mb

TINY = ["--roi_size", "[32,32,32]", "--network_def#channels", "[4,8,16,32,64]", "--sw_batch_size", "4",
        "--num_workers", "2", "--batch_size", "2"]


def _tiny(config: str) -> list[str]:
    """``TINY`` as ``config`` takes it: inference has no training loader (``--num_workers``, ``--batch_size``)."""
    return TINY if config == "train.json" else TINY[:6]


def _write(path: Path, array: np.ndarray, affine: np.ndarray | None = None) -> Path:
    nib.save(nib.Nifti1Image(array, np.eye(4) if affine is None else affine), str(path))
    return path


def _ramp(shape=(16, 16, 8)) -> np.ndarray:
    return np.arange(np.prod(shape), dtype=np.int16).reshape(shape) % 1200 - 1000  # air to soft tissue, in HU


def _case(tmp_path: Path, label: np.ndarray, label_affine: np.ndarray | None = None, image: np.ndarray | None = None):
    img = _write(tmp_path / "img.nii.gz", _ramp() if image is None else image)
    lbl = _write(tmp_path / "lbl.nii.gz", label, label_affine)
    load = Compose([LoadImaged(["image", "label"], image_only=True), EnsureChannelFirstd(["image", "label"])])
    return load({"image": str(img), "label": str(lbl)}), img, lbl


def _label() -> np.ndarray:
    label = np.zeros((16, 16, 8), np.uint8)
    label[4:10, 4:10, 2:5] = 1
    label[6:8, 6:8, 3] = 2
    return label


# ----------------------------------------------------------------------------------------------- case checks
def test_label_off_the_image_grid_is_refused(tmp_path):
    shifted = np.eye(4)
    shifted[:3, 3] = [20.0, -5.0, 0.0]  # same shape, 2 cm away
    data, img, lbl = _case(tmp_path, _label(), shifted)
    with pytest.raises(ValueError, match=f"label {lbl} is not on the voxel grid of image {img}: .* up to 20.62 mm"):
        mb.CheckCased()(data)
    scaled = np.diag([1.2, 1.0, 1.0, 1.0])  # another spacing
    data, _, _ = _case(tmp_path, _label(), scaled)
    with pytest.raises(ValueError, match="is not on the voxel grid"):
        mb.CheckCased()(data)


def test_sub_millimetre_header_rounding_is_accepted(tmp_path):
    nudged = np.eye(4)
    nudged[:3, 3] = [0.03, -0.02, 0.01]
    data, _, _ = _case(tmp_path, _label(), nudged)
    assert mb.CheckCased()(data)["label"].shape == (1, 16, 16, 8)


def test_fractional_nan_and_multichannel_labels_are_refused(tmp_path):
    frac = _label().astype(np.float32) * 0.6  # a label resampled with linear interpolation
    data, _, lbl = _case(tmp_path, frac)
    with pytest.raises(ValueError, match=f"label {lbl} has fractional values \\(e.g. 0.6"):
        mb.CheckCased()(data)
    nan = _label().astype(np.float32)
    nan[0, 0, 0] = np.nan
    data, _, lbl = _case(tmp_path, nan)
    with pytest.raises(ValueError, match=f"label {lbl} contains NaN"):
        mb.CheckCased()(data)
    data, _, _ = _case(tmp_path, _label())
    data["label"] = MetaTensor(torch.cat([data["label"], data["label"]]), meta=data["label"].meta)
    with pytest.raises(ValueError, match="has 2 channels"):
        mb.CheckCased()(data)


def test_constant_image_and_empty_label(tmp_path, caplog):
    data, img, _ = _case(tmp_path, _label(), image=np.full((16, 16, 8), -1024, np.int16))
    with pytest.raises(ValueError, match=f"image {img} is constant \\(every voxel -1024\\)"):
        mb.CheckCased()(data)
    for bad in (np.nan, np.inf, -np.inf):  # one voxel is enough
        image = _ramp().astype(np.float32)
        image[3, 4, 5] = bad
        data, img, _ = _case(tmp_path, _label(), image=image)
        with pytest.raises(ValueError, match=f"image {img} contains NaN or infinite values"):
            mb.CheckCased()(data)
    data, _, lbl = _case(tmp_path, np.zeros((16, 16, 8), np.uint8))
    with caplog.at_level(logging.WARNING, logger="monai_unet_variants.bundle"):
        mb.CheckCased()(data)
    assert f"label {lbl} has no foreground" in caplog.text


@pytest.mark.parametrize("what, image", [
    ("MR", (np.arange(16 * 16 * 8, dtype=np.int16).reshape(16, 16, 8) % 1200)),  # non-negative, MR-like
    ("intercept missing", _ramp() + 1024),  # stored values whose rescale intercept -1024 was never applied
])
def test_an_image_not_in_hounsfield_units_is_refused_unless_allowed(tmp_path, caplog, what, image):
    data, img, _ = _case(tmp_path, _label(), image=image.astype(np.int16))
    with pytest.raises(ValueError, match=f"image {img} does not look like CT in Hounsfield units: 0.00% of its voxels "
                                         "lie below -500 HU .* --allow_non_ct true to read it anyway"):
        mb.CheckCased()(data)
    with caplog.at_level(logging.WARNING, logger="monai_unet_variants.bundle"):
        assert mb.CheckCased(allow_non_ct="Yes")(data)["image"].shape == (1, 16, 16, 8)  # as the command line types it
    assert "does not look like CT in Hounsfield units" in caplog.text and "(read anyway: --allow_non_ct)" in caplog.text
    ct = _case(tmp_path, _label())[0]  # the same label with an image in HU passes
    assert mb.CheckCased()(ct)["image"].shape == (1, 16, 16, 8)


def test_a_case_smaller_than_one_patch_is_padded_and_named_once(caplog):
    from monai.data import MetaTensor

    from monai_unet_variants.acceleration import PaddedSlidingWindowInferer

    small = MetaTensor(torch.zeros(1, 40, 70, 20), meta={"filename_or_obj": "/data/partial.nii.gz"})
    pad = mb.PatchPadd(["image"], [64, 64, 64])
    inferer = PaddedSlidingWindowInferer([32, 32, 32], sw_batch_size=2)
    with caplog.at_level(logging.WARNING, logger="monai_unet_variants.bundle"):
        for _ in range(2):  # cached once, validated every epoch: said once each
            assert pad({"image": small})["image"].shape == (1, 64, 70, 64)
            assert inferer(small[None], torch.nn.Conv3d(1, 2, 1)).shape == (1, 2, 40, 70, 20)
        large = MetaTensor(torch.zeros(1, 64, 70, 64), meta={"filename_or_obj": "/data/whole.nii.gz"})
        pad({"image": large})
    lines = [r.getMessage() for r in caplog.records]
    assert lines == [
        "/data/partial.nii.gz: 40 x 70 x 20 voxels after preprocessing is smaller than one 64 x 64 x 64 training "
        "patch: padded to 64 x 70 x 64",
        "/data/partial.nii.gz: 40 x 70 x 20 voxels after preprocessing is smaller than one 32 x 32 x 32 sliding "
        "window: padded to 40 x 70 x 32"]


def test_checking_many_inputs_shows_its_progress(tmp_path, monkeypatch, capsys):
    """The checks before any work (minutes for a few hundred DICOM series or Enhanced CTs) show a progress bar once
    they take ``PROGRESS_DELAY_S``; a check quicker than that prints nothing."""
    from monai_unet_variants.bundle import checks

    paths = [str(_write(tmp_path / f"case{i}.nii.gz", _ramp())) for i in range(3)]
    assert mb.check_inputs([{"image": p, "label": p} for p in paths]) == [{"image": p, "label": p} for p in paths]
    assert capsys.readouterr().err == ""
    monkeypatch.setattr(checks, "PROGRESS_DELAY_S", 0.0)
    assert mb.check_inputs(paths) == paths
    err = capsys.readouterr().err
    assert "checking inputs" in err and "3/3" in err, err


def test_four_dimensional_files_are_refused(tmp_path):
    four = _write(tmp_path / "4d.nii.gz", np.stack([_ramp(), _ramp()], axis=-1))
    with pytest.raises(ValueError, match=f"image {four} is a 4D volume \\(shape \\(16, 16, 8, 2\\)\\)"):
        mb.check_inputs([str(four)])
    single = _write(tmp_path / "4d1.nii.gz", _ramp()[..., None])  # one volume stored as 4D: fine
    assert mb.check_inputs([str(single)]) == [str(single)]


# ------------------------------------------------------------------------------------------ loading failures
def _truncated(tmp_path: Path) -> Path:
    good = _write(tmp_path / "good.nii.gz", _ramp())
    data = good.read_bytes()
    bad = tmp_path / "bad.nii.gz"
    bad.write_bytes(data[: len(data) // 2])
    return bad


def _load_transform() -> Compose:
    return Compose([LoadImaged("image", image_only=True), EnsureChannelFirstd("image")])


def test_cached_dataset_names_the_file_that_fails_and_can_skip_it(tmp_path, caplog):
    bad = _truncated(tmp_path)
    good = tmp_path / "good.nii.gz"
    items = [{"image": str(good)}, {"image": str(bad)}, {"image": str(good)}]
    with pytest.raises(mb.BadCaseError, match=f"1 of 3 training cases cannot be used:\n  image {bad} cannot be "
                                              "loaded \\(EOFError"):
        mb.CheckedCacheDataset(items, _load_transform(), num_workers=2, progress=False, name="training")
    with caplog.at_level(logging.WARNING, logger="monai_unet_variants.bundle"):
        ds = mb.CheckedCacheDataset(items, _load_transform(), num_workers=2, progress=False, skip_bad_cases=True)
    assert len(ds) == 2 and all(d["image"].shape == (1, 16, 16, 8) for d in ds)
    assert len(ds.skipped) == 1 and str(bad) in ds.skipped[0] and "skipping 1 of 3" in caplog.text


def test_uncached_failure_fails_or_is_replaced_and_counted(tmp_path):
    bad = _truncated(tmp_path)
    items = [{"image": str(tmp_path / "good.nii.gz")}, {"image": str(bad)}]
    strict = mb.CheckedCacheDataset(items, _load_transform(), cache_rate=0.0, progress=False)
    with pytest.raises(mb.BadCaseError, match=f"image {bad} cannot be loaded"):
        strict[1]
    lenient = mb.CheckedCacheDataset(items, _load_transform(), cache_rate=0.0, progress=False, skip_bad_cases=True)
    assert lenient[1]["image"].shape == (1, 16, 16, 8) and len(lenient.skipped) == 1


def test_loader_thread_hands_its_errors_over(tmp_path):
    """MONAI's ThreadDataLoader ends an epoch early and quietly when its thread fails; ours raises."""
    bad = _truncated(tmp_path)
    items = [{"image": str(tmp_path / "good.nii.gz")}] * 3 + [{"image": str(bad)}] + [{"image": str(tmp_path / "good.nii.gz")}]
    ds = Dataset(items, _load_transform())
    quiet = list(ThreadDataLoader(ds, batch_size=1, num_workers=0))
    assert len(quiet) == 3  # the fault this guards against: two batches lost without an error
    loader = mb.CheckedThreadDataLoader(ds, batch_size=1, num_workers=0)
    seen = []
    with pytest.raises(RuntimeError, match="applying transform"):
        for batch in loader:
            seen.append(batch)
    assert len(seen) == 3
    assert len(list(mb.CheckedThreadDataLoader(Dataset(items[:3], _load_transform()), batch_size=2))) == 2
    assert len(list(DataLoader(Dataset(items[:3], _load_transform()), batch_size=2))) == 2


def test_the_last_line_of_a_failed_run_is_the_cause(capsys, monkeypatch, tmp_path):
    from monai_unet_variants.bundle import errors

    monkeypatch.setattr(sys, "excepthook", sys.__excepthook__)
    assert mb.summarize_errors() and sys.excepthook is errors._hook and mb.summarize_errors()
    try:
        try:
            raise ValueError("image /data/ct.nii.gz is constant")
        except ValueError as e:
            raise RuntimeError("Failed to instantiate component") from e
    except RuntimeError as err:
        sys.excepthook(type(err), err, err.__traceback__)
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[-1] == "error: ValueError: image /data/ct.nii.gz is constant"
    assert any("Failed to instantiate component" in line for line in lines)  # Python's traceback stays

    # where this package wraps a library's error, its message (file and fix) is the cause, not the library's
    bad = tmp_path / "model.pt"
    bad.write_bytes(b"not a checkpoint")
    try:
        try:
            mb.check_checkpoint(bad)
        except ValueError as e:
            raise RuntimeError("Failed to evaluate ConfigExpression") from e
    except RuntimeError as err:
        assert isinstance(err.__cause__.__cause__, Exception)  # torch's own error, innermost
        sys.excepthook(type(err), err, err.__traceback__)
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith(f"error: ValueError: checkpoint {bad} cannot be read (") and "train again" in last

    # ``raise ... from None`` ends the chain as Python's traceback does: the message that replaced float()'s own
    try:
        try:
            mb.CacheBudget("lots")
        except ValueError as e:
            raise RuntimeError("Failed to instantiate component") from e
    except RuntimeError as err:
        assert err.__cause__.__context__ is not None and err.__cause__.__suppress_context__
        sys.excepthook(type(err), err, err.__traceback__)
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last == "error: ValueError: --cache_gb 'lots': expected a number of GB >= 0, auto or none"


# --------------------------------------------------------------------------------- the real command line
def _hash(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _break(root: Path, fault: str) -> Path:
    """Break case pancreas_001 of the data set copy at ``root`` in one way; return the file to be named."""
    img, lbl = root / "imagesTr" / "pancreas_001.nii.gz", root / "labelsTr" / "pancreas_001.nii.gz"
    image, label = nib.load(str(img)), nib.load(str(lbl))
    if fault == "truncated image":
        data = img.read_bytes()
        img.write_bytes(data[: len(data) // 2])
        return img
    if fault == "label off the grid":
        moved = label.affine.copy()
        moved[:3, 3] += [15.0, 0.0, 0.0]
        _write(lbl, np.asarray(label.dataobj), moved)
        return lbl
    if fault == "fractional label":
        _write(lbl, np.asarray(label.dataobj).astype(np.float32) * 0.6, label.affine)
        return lbl
    if fault == "NaN label":
        values = np.asarray(label.dataobj).astype(np.float32)
        values[0, 0, 0] = np.nan
        _write(lbl, values, label.affine)
        return lbl
    if fault == "constant image":
        _write(img, np.full(image.shape, -1000, np.int16), image.affine)
        return img
    if fault == "4D label":
        _write(lbl, np.stack([np.asarray(label.dataobj)] * 2, axis=-1), label.affine)
        return lbl
    raise ValueError(fault)


@pytest.mark.slow
@pytest.mark.parametrize("fault", ["truncated image", "label off the grid", "fractional label", "NaN label",
                                   "constant image", "4D label"])
def test_training_refuses_broken_data(tmp_path, sample, fault):
    data = tmp_path / "data"
    shutil.copytree(sample, data)
    named = _break(data, fault)
    ckpt = tmp_path / "models"
    ckpt.mkdir()
    good = ckpt / "model.pt"
    torch.save({"w": torch.ones(3)}, good)
    before = _hash(good)
    proc = subprocess.run([sys.executable, "-m", "monai.bundle", "run", "--config_file",
                           str(FLAGSHIP / "configs" / "train.json"), "--dataset_dir", str(data), "--epochs", "1",
                           "--ckpt_dir", str(ckpt), "--output_dir", str(tmp_path / "eval"), *TINY, "--overwrite", "true"],
                          capture_output=True, text=True, timeout=600, env=dict(os.environ, PYTHONUNBUFFERED="1"))
    assert proc.returncode == 1, proc.stderr[-3000:]  # a clean failure: no abort from a thread (134)
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and str(named) in last, last
    assert _hash(good) == before and sorted(p.name for p in ckpt.iterdir() if not p.name.startswith(".")) == ["model.pt"]


@pytest.mark.slow
def test_skip_bad_cases_trains_on_the_rest_and_says_so(tmp_path, sample):
    data = tmp_path / "data"
    shutil.copytree(sample, data)
    named = _break(data, "truncated image")
    proc = subprocess.run([sys.executable, "-m", "monai.bundle", "run", "--config_file",
                           str(FLAGSHIP / "configs" / "train.json"), "--dataset_dir", str(data), "--epochs", "1",
                           "--ckpt_dir", str(tmp_path / "models"), "--output_dir", str(tmp_path / "eval"), *TINY,
                           "--skip_bad_cases", "true"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = proc.stdout + proc.stderr
    assert "skipping 1 of 4 training cases" in log
    assert "this run left out 1 training case(s)" in log and str(named) in log.split("this run left out")[1]
    assert (tmp_path / "models" / "model.pt").is_file()


# ---------------------------------------------------------------------------------- resuming and checkpoints
def test_atomic_write_names_the_file_and_leaves_nothing_behind(tmp_path):
    out = mb.atomic_write(tmp_path / "a" / "table.csv", lambda f: f.write(b"x\n"))
    assert out.read_bytes() == b"x\n"
    assert oct(out.stat().st_mode & 0o777) == oct(0o666 & ~_current_umask())  # readable by a server's other user
    (tmp_path / "file").write_text("in the way")
    with pytest.raises(mb.OutputError, match=f"cannot write {tmp_path / 'file' / 'seg.nii.gz'}: (Not a directory|File exists)"):
        mb.atomic_write(tmp_path / "file" / "seg.nii.gz", lambda f: f.write(b"x"))

    def refuse(path: Path) -> None:
        raise OSError(28, "No space left on device")

    with pytest.raises(mb.OutputError, match=f"cannot write {out}: No space left on device"):
        mb.atomic_write(out, lambda f: f.write(b"new"), verify=refuse)
    assert out.read_bytes() == b"x\n" and sorted(p.name for p in out.parent.iterdir()) == ["table.csv"]


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_leftovers_of_killed_saves_are_swept(tmp_path):
    for name in (".checkpoint_latest.pt.k2j3.tmp", ".model.pt.aa.tmp", "notes.tmp", "model.pt"):
        (tmp_path / name).write_bytes(b"x")
    mb.AtomicCheckpointSaver(str(tmp_path), {"m": torch.nn.Linear(1, 1)}, save_key_metric=True).attach(_Engine())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pt", "notes.tmp"]


class _Engine:
    def __init__(self) -> None:
        from types import SimpleNamespace

        self.state = SimpleNamespace(best_metric=-1.0, best_metric_epoch=-1, epoch=0)

    def add_event_handler(self, *args) -> None:
        pass


def test_random_states_round_trip():
    import random

    from monai.transforms import RandFlipd, RandScaleIntensityd

    pipeline = Compose([RandFlipd("image", prob=0.5), Compose([RandScaleIntensityd("image", factors=0.1, prob=0.5)])])
    pipeline.set_random_state(seed=4)
    states = mb.RandomStates(pipeline)
    saved = states.state_dict()

    def draw() -> list:
        return [torch.rand(1).item(), np.random.rand(), random.random(),
                *(t.R.rand() for t in states._randomized())]

    first = draw()
    states.load_state_dict(saved)
    assert draw() == first
    # both Composes, both dictionary transforms and the array transform inside RandScaleIntensityd
    assert len(saved["transforms"]) == 5
    with pytest.raises(ValueError, match="random states of 5 random transforms, the training pipeline has 2"):
        mb.RandomStates(Compose([RandFlipd("image", prob=0.5)])).load_state_dict(saved)


def test_best_metric_record_wins_over_an_older_checkpoint(tmp_path):
    engine = _Engine()
    record = tmp_path / "best_metric.json"
    record.write_text('{"metric": 0.8, "epoch": 7, "file": "model.pt"}')
    mb.BestMetricState(engine, record).load_state_dict({"best_metric": 0.7, "best_metric_epoch": 6})
    assert (engine.state.best_metric, engine.state.best_metric_epoch) == (0.8, 7)
    mb.BestMetricState(engine, record).load_state_dict({"best_metric": 0.9, "best_metric_epoch": 9})
    assert engine.state.best_metric == 0.9


def test_loader_messages_and_schedule_extension(tmp_path):
    from ignite.engine import Engine

    net = torch.nn.Linear(4, 2)
    with pytest.raises(FileNotFoundError, match="--resume true, but there is nothing to resume: .*point --ckpt_dir"):
        mb.SafeCheckpointLoader(str(tmp_path / "none.pt"), {"network": net}, purpose="resume")(Engine(lambda e, b: b))
    torch.save(torch.nn.Linear(8, 2).state_dict(), tmp_path / "other.pt")
    with pytest.raises(ValueError, match=f"checkpoint {tmp_path / 'other.pt'} does not fit the network \\(weight is "
                                         r"\[2, 8\] in the checkpoint, \[2, 4\] in the network\): .*"
                                         "--network_def#_target_"):
        mb.SafeCheckpointLoader(str(tmp_path / "other.pt"), {"network": net})(Engine(lambda e, b: b))
    torch.save({"weight": torch.zeros(2, 4), "scale": torch.ones(1)}, tmp_path / "renamed.pt")
    with pytest.raises(ValueError, match=r"does not fit the network \(1 saved tensor\(s\) the network lacks \(e.g. "
                                         r"scale\), 1 tensor\(s\) of the network not saved \(e.g. bias\)\)"):
        mb.SafeCheckpointLoader(str(tmp_path / "renamed.pt"), {"network": net})(Engine(lambda e, b: b))
    with pytest.raises(IsADirectoryError, match=f"checkpoint {tmp_path} is a folder, not a checkpoint file \\(it "
                                                "holds other.pt, renamed.pt\\): pass the file, e.g. --ckpt_path "
                                                f"{tmp_path / 'other.pt'}"):
        mb.SafeCheckpointLoader(str(tmp_path), {"network": net})(Engine(lambda e, b: b))

    # a checkpoint of the same network trained with other deep-supervision settings: the heads are named, not
    # "another network"; both ways round, and for the stacked and the top-row heads
    from monai_unet_variants.networks import AttentionUNet, UNetPlusPlus

    for cls, deep in ((UNetPlusPlus, 3), (AttentionUNet, 2)):
        def build(ds: bool, channels=(4, 8, 16, 32, 64), cls=cls, deep=deep) -> torch.nn.Module:
            return cls(spatial_dims=3, in_channels=1, out_channels=3, channels=channels, strides=(2, 2, 2, 2),
                       deep_supervision=ds, deep_supr_num=deep if ds else 1)

        for saved, here in ((False, True), (True, False)):
            torch.save(build(saved).state_dict(), tmp_path / "heads.pt")
            few, many = 2, 2 + 2 * deep  # a weight and a bias per head
            counts = f"{few} head tensors saved, {many}" if here else f"{many} head tensors saved, {few}"
            with pytest.raises(ValueError, match=f"checkpoint {tmp_path / 'heads.pt'} fits the network except its "
                                                 f"output heads \\({counts}.*--deep_supervision false"):
                mb.SafeCheckpointLoader(str(tmp_path / "heads.pt"), {"network": build(here)})(Engine(lambda e, b: b))
        # other widths as well: not the heads
        torch.save(build(True, (4, 8, 16, 32, 128)).state_dict(), tmp_path / "wider.pt")
        with pytest.raises(ValueError, match="does not fit the network .* --network_def#_target_"):
            mb.SafeCheckpointLoader(str(tmp_path / "wider.pt"), {"network": build(False)})(Engine(lambda e, b: b))

    def schedule(epochs: int, lr: float = 1e-3) -> tuple:
        opt = torch.optim.AdamW(net.parameters(), lr=lr)
        return opt, torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs, eta_min=1e-6)

    opt, sched = schedule(2)
    for _ in range(2):
        opt.step()
        sched.step()
    assert sched.get_last_lr()[0] == pytest.approx(1e-6)  # a finished 2-epoch schedule
    torch.save({"optimizer": opt.state_dict(), "lr_scheduler": sched.state_dict()}, tmp_path / "latest.pt")
    opt4, sched4 = schedule(4)
    loader = mb.SafeCheckpointLoader(str(tmp_path / "latest.pt"), {"optimizer": opt4, "lr_scheduler": sched4},
                                     purpose="resume", extend_schedule_to=4)
    loader(Engine(lambda e, b: b))
    ref_opt, ref = schedule(4)
    lrs, ref_lrs = [], []
    for _ in range(2):
        ref_opt.step()
        ref.step()
    for _ in range(2):  # epochs 3 and 4: on the 4-epoch cosine, never back up
        lrs.append(opt4.param_groups[0]["lr"])
        ref_lrs.append(ref_opt.param_groups[0]["lr"])
        opt4.step()
        sched4.step()
        ref_opt.step()
        ref.step()
    assert lrs == pytest.approx(ref_lrs) and lrs[0] < 1e-3 * 0.51 and lrs[1] < lrs[0]


@pytest.mark.parametrize("steps", [3, 6])
def test_a_resumed_run_takes_its_own_steps_per_epoch(tmp_path, caplog, steps):
    """Resumed with twice the steps per epoch (``--batch_size`` halved): ignite would restore the checkpoint's epoch
    length and run 3 of this run's 6 batches per epoch; the resumed epochs take all 6, with a warning. The same
    length is resumed as it is, without a word."""
    from ignite.engine import Engine

    net = torch.nn.Linear(4, 2)
    torch.save({"network": net.state_dict(), "trainer": {"epoch_length": 3, "iteration": 6, "max_epochs": 4}},
               tmp_path / "latest.pt")
    seen = []
    trainer = Engine(lambda engine, batch: seen.append(batch))
    trainer.data_loader = list(range(steps))  # as MONAI's workflows hold their loader
    mb.SafeCheckpointLoader(str(tmp_path / "latest.pt"), {"network": net}, engine_key="trainer",
                            purpose="resume").attach(trainer)
    with caplog.at_level(logging.WARNING, logger="monai_unet_variants.bundle"):
        trainer.run(trainer.data_loader, max_epochs=4)
    assert seen == list(range(steps)) * 2  # epochs 3 and 4, each over every batch
    assert (trainer.state.epoch, trainer.state.iteration) == (4, 4 * steps)
    warned = "resuming at epoch 2 with 6 steps per epoch: " in caplog.text
    assert warned == (steps == 6) and (steps == 3 or "was trained with 3" in caplog.text)


def test_a_resumed_run_needs_epochs_left(tmp_path, caplog):
    """``--resume true --epochs 1`` over a 2-epoch checkpoint stops naming the file and the option before anything
    loads; ``--epochs 2`` says that nothing is left to train."""
    from ignite.engine import Engine

    net = torch.nn.Linear(4, 2)
    torch.save({"network": net.state_dict(), "trainer": {"epoch_length": 3, "iteration": 6, "max_epochs": 2}},
               tmp_path / "latest.pt")
    def resume(epochs: int) -> None:
        trainer = Engine(lambda engine, batch: None)
        mb.SafeCheckpointLoader(str(tmp_path / "latest.pt"), {"network": net}, engine_key="trainer",
                                purpose="resume").attach(trainer)
        trainer.run([0, 1, 2], max_epochs=epochs)

    with pytest.raises(ValueError, match=f"--resume true: {tmp_path / 'latest.pt'} has trained 2 epochs, more than "
                                         "--epochs 1: pass --epochs above 2"):
        resume(1)
    with caplog.at_level(logging.WARNING, logger="monai_unet_variants.bundle"):
        resume(2)
    assert "has trained all 2 epochs; nothing is left to train: pass --epochs above 2" in caplog.text


def _history_run(folder: Path, epochs: int, resume_at: int = 0, **kw) -> list[dict]:
    """``TrainingHistory`` on real ignite engines: losses 1, 2, ... per step (2 steps an epoch), a learning rate
    halved each epoch, validation every second epoch with Dice 0.1 * epoch; ``resume_at`` restores the trainer's
    state before the history starts, as the bundles' checkpoint loader does. Returns the table's rows."""
    import csv

    from ignite.engine import Engine, Events

    net = torch.nn.Linear(2, 2)
    opt = torch.optim.SGD(net.parameters(), lr=1.0)
    losses = iter(range(1, 100))
    trainer = Engine(lambda engine, batch: {"loss": torch.tensor(float(next(losses)))})
    validator = Engine(lambda engine, batch: None)
    validator.add_event_handler(Events.COMPLETED, lambda e: e.state.metrics.update(
        {"val_mean_dice": 0.1 * trainer.state.epoch, "val_tumour_dice": 0.05}))
    if resume_at:
        trainer.add_event_handler(Events.STARTED, lambda e: e.load_state_dict(
            {"epoch_length": 2, "iteration": 2 * resume_at, "max_epochs": epochs}))
    mb.TrainingHistory(str(folder), validator=validator, optimizer=opt, **kw).attach(trainer)
    trainer.add_event_handler(Events.EPOCH_COMPLETED(every=2), lambda e: validator.run([0]))
    trainer.add_event_handler(Events.EPOCH_COMPLETED, lambda e: [g.update(lr=g["lr"] / 2) for g in opt.param_groups])
    trainer.run([0, 1], max_epochs=epochs)
    return list(csv.DictReader((folder / "training_history.csv").open()))


def test_training_history_is_a_table_and_a_picture_that_resumes(tmp_path, monkeypatch, caplog):
    """Each epoch's mean loss and starting learning rate, each validation's metrics on its epoch's row; the picture
    beside it; a resumed run keeps the rows up to its checkpoint's epoch, a fresh one starts anew; without
    matplotlib the table alone, said once; a folder that cannot be written stops the run naming the file."""
    rows = _history_run(tmp_path, 3)
    assert [(r["epoch"], r["loss"], r["learning_rate"], r["val_mean_dice"]) for r in rows] == [
        ("1", "1.5", "1", ""), ("2", "3.5", "0.5", "0.2"), ("3", "5.5", "0.25", "")]
    picture = (tmp_path / "training_curves.png").read_bytes()
    assert picture[:8] == b"\x89PNG\r\n\x1a\n" and len(picture) > 10_000
    table = tmp_path / "training_history.csv"
    table.write_text(table.read_text().replace("1,1.5,", "1,7,"))  # marks the row the checkpoint holds
    rows = _history_run(tmp_path, 2, resume_at=1)  # epochs 2 and 3 of the first run are not in its checkpoint
    assert [(r["epoch"], r["loss"], r["val_mean_dice"]) for r in rows] == [("1", "7", ""), ("2", "1.5", "0.2")]
    assert [r["epoch"] for r in _history_run(tmp_path, 1)] == ["1"]  # a fresh run: a new table
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # not installed
    with caplog.at_level(logging.WARNING, logger="monai_unet_variants.bundle"):
        assert len(_history_run(tmp_path / "plain", 3)) == 3
    assert caplog.text.count("no training_curves.png: matplotlib is not installed") == 1
    assert not (tmp_path / "plain" / "training_curves.png").exists()
    (tmp_path / "file").write_text("in the way")
    with pytest.raises(mb.OutputError, match=f"cannot write {tmp_path / 'file' / 'training_history.csv'}"):
        _history_run(tmp_path / "file", 1)


def test_training_history_redraws_its_picture_at_most_every_redraw_s(tmp_path, monkeypatch):
    """The table after every epoch; the picture (~0.2 s to draw) after the first epoch, then when ``redraw_s`` has
    passed, and at the end of training with every row in it."""
    drawn = []
    monkeypatch.setattr(mb.TrainingHistory, "_draw", lambda self, columns: drawn.append(sorted(self.rows)))
    assert len(_history_run(tmp_path / "rare", 5, redraw_s=3600)) == 5
    assert drawn == [[1], [1, 2, 3, 4, 5]]
    drawn.clear()
    _history_run(tmp_path / "always", 5, redraw_s=0)
    assert drawn[0] == [1] and drawn[-1] == [1, 2, 3, 4, 5] and len(drawn) >= 5  # every epoch (and validation)


@pytest.mark.parametrize("typed", [1e-3, 1e-4])
def test_a_resumed_run_follows_the_learning_rate_typed(tmp_path, caplog, typed):
    """``--resume true --learning_rate 1e-4`` over a checkpoint trained from 1e-3: the optimizer's and the schedule's
    restored state would silently bring back 1e-3; the schedule runs from the rate typed, at the epoch reached, and
    says so. Resumed with the rate it was trained with, the restored state is kept exactly, without a word."""
    from ignite.engine import Engine

    net = torch.nn.Linear(4, 2)

    def schedule(lr: float) -> tuple:
        opt = torch.optim.AdamW(net.parameters(), lr=lr)
        return opt, torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=4, eta_min=1e-6)

    opt, sched = schedule(1e-3)
    opt.step()
    sched.step()  # one epoch of four done
    torch.save({"optimizer": opt.state_dict(), "lr_scheduler": sched.state_dict()}, tmp_path / "latest.pt")
    resumed_opt, resumed = schedule(typed)
    with caplog.at_level(logging.WARNING, logger="monai_unet_variants.bundle"):
        mb.SafeCheckpointLoader(str(tmp_path / "latest.pt"), {"optimizer": resumed_opt, "lr_scheduler": resumed},
                                purpose="resume", extend_schedule_to=4)(Engine(lambda e, b: b))
    ref_opt, ref = schedule(typed)
    ref_opt.step()
    ref.step()
    for _ in range(3):  # epochs 2 to 4 on the schedule of the rate typed
        assert resumed_opt.param_groups[0]["lr"] == pytest.approx(ref_opt.param_groups[0]["lr"], rel=1e-9)
        for o, s in ((resumed_opt, resumed), (ref_opt, ref)):
            o.step()
            s.step()
    if typed == 1e-3:
        assert "resuming" not in caplog.text
    else:
        assert "resuming at epoch 1 with --learning_rate 0.0001: " in caplog.text
        assert "latest.pt was trained from 0.001; the cosine schedule now runs from 0.0001" in caplog.text


def test_bundle_root_with_a_comma_in_its_name(tmp_path):
    root = tmp_path / "pancreas,v2"
    (root / "configs").mkdir(parents=True)
    cfg = root / "configs" / "train.json"
    cfg.write_text("{}")
    assert mb.find_bundle_root(["x", "run", "--config_file", str(cfg)]) == str(root)
    assert mb.find_bundle_root(["x", "run", "--config_file", f"['{cfg}', '{root}/configs/evaluate.json']"]) == str(root)


@pytest.mark.slow
def test_resumed_training_continues_the_uninterrupted_run(tmp_path, sample):
    """Two epochs in one go, and one epoch then ``--resume true --epochs 2``: the same weights at the end
    (optimizer, schedule, best metric and every random generator restored)."""
    def train(ckpt: Path, *extra: str) -> None:
        proc = subprocess.run([sys.executable, "-m", "monai.bundle", "run", "--config_file",
                               str(FLAGSHIP / "configs" / "train.json"), "--dataset_dir", str(sample), "--ckpt_dir",
                               str(ckpt), "--output_dir", str(ckpt.parent / "eval"), "--val_interval", "1", *TINY,
                               "--num_workers", "0", *extra], capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]

    train(tmp_path / "once" / "models", "--epochs", "2")
    train(tmp_path / "twice" / "models", "--epochs", "1")
    train(tmp_path / "twice" / "models", "--epochs", "2", "--resume", "true")
    a = torch.load(tmp_path / "once" / "models" / mb.LATEST_CHECKPOINT, weights_only=True)
    b = torch.load(tmp_path / "twice" / "models" / mb.LATEST_CHECKPOINT, weights_only=True)
    assert a["trainer"]["iteration"] == b["trainer"]["iteration"]
    for key, value in a["network"].items():
        torch.testing.assert_close(b["network"][key], value, rtol=1e-5, atol=1e-6, msg=key)
    assert oct((tmp_path / "twice" / "models" / "model.pt").stat().st_mode & 0o044) == oct(0o044)


# ----------------------------------------------------------------------------------- outputs that clobber
def test_output_names_are_unique_per_input(tmp_path):
    (tmp_path / "ct").mkdir()
    (tmp_path / "ct.nii.gz").write_bytes(b"x")
    names = mb.output_names([str(tmp_path / "siteA" / "ct.nii.gz"), str(tmp_path / "siteB" / "ct.nii.gz"),
                             str(tmp_path / "ct.nii.gz"), str(tmp_path / "ct"), str(tmp_path / "liver.nii")])
    assert set(names.values()) == {"ct_dicom_seg.nii.gz", f"{tmp_path.name}_ct_seg.nii.gz", "liver_seg.nii.gz",
                                   "siteA_ct_seg.nii.gz", "siteB_ct_seg.nii.gz"}


def _hold(ckpt: str, out: str, ready, release) -> None:  # a forked process: the package is already imported
    mb.claim_training_folders(ckpt, out)
    ready.set()
    release.wait(60)


def test_a_second_training_in_the_same_folders_is_refused(tmp_path):
    import multiprocessing

    ctx = multiprocessing.get_context("fork")
    ckpt, out = tmp_path / "models", tmp_path / "eval"
    ready, release = ctx.Event(), ctx.Event()
    holder = ctx.Process(target=_hold, args=(str(ckpt), str(out), ready, release))
    holder.start()
    try:
        assert ready.wait(30)
        with pytest.raises(RuntimeError, match=f"--ckpt_dir {ckpt} is in use by a training run that is still going "
                                               f"\\(pid {holder.pid}\\)"):
            mb.claim_training_folders(ckpt, out)
    finally:
        release.set()
        holder.join(30)
    assert mb.claim_training_folders(ckpt, out)  # free again once the holder is gone
    torch.save({}, ckpt / "model.pt")
    with pytest.raises(FileExistsError, match=f"{ckpt / 'model.pt'} exist.* --resume true .* --overwrite true"):
        mb.claim_training_folders(tmp_path / "models", tmp_path / "eval2")
    assert mb.claim_training_folders(ckpt, out, resume="true") and mb.claim_training_folders(ckpt, out, overwrite="yes")
    from monai.handlers import CheckpointLoader  # fine-tuning from model.pt, as MONAI Label trains

    tune = CheckpointLoader(str(ckpt / "model.pt"), {"network": torch.nn.Linear(1, 1)})
    assert mb.claim_training_folders(ckpt, out, handlers=[tune])


def _run_bundle(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "monai.bundle", "run", *args], capture_output=True, text=True,
                          timeout=600, env=dict(os.environ, PYTHONUNBUFFERED="1"))


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory, sample) -> Path:
    ckpt = tmp_path_factory.mktemp("trained") / "models"
    proc = _run_bundle("--config_file", str(FLAGSHIP / "configs" / "train.json"), "--dataset_dir", str(sample),
                       "--epochs", "1", "--ckpt_dir", str(ckpt), "--output_dir", str(ckpt.parent / "eval"), *TINY)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return ckpt / "model.pt"


def _infer(model: Path, sample: Path, inputs: list, out: Path, *extra: str) -> subprocess.CompletedProcess:
    listing = "[" + ",".join(f"'{p}'" for p in inputs) + "]"
    return _run_bundle("--config_file", str(FLAGSHIP / "configs" / "inference.json"), "--dataset_dir", str(sample),
                       "--ckpt_path", str(model), "--datalist", listing, "--output_dir", str(out), *TINY[:4], *extra)


def test_overlay_pictures_beside_the_outputs(tmp_path, sample, monkeypatch):
    """``overlays``: a picture of each written label map over its input (a NIfTI file and a DICOM series), named
    after the output; it counts as an output (an existing one stops the run before the first case); a picture that
    cannot be written leaves the case incomplete, named; without matplotlib the run does not start."""
    from monai.data import MetaTensor

    from monai_unet_variants.bundle.outputs import SegmentationWriter

    inputs = [str(sample / "imagesTs" / "pancreas_005.nii.gz"), str(sample / "dicomTs" / "pancreas_005")]
    label = nib.load(str(sample / "labelsTs" / "pancreas_005.nii.gz"))
    pred = {"pred": MetaTensor(np.asarray(label.dataobj)[None].astype(np.float32), affine=label.affine)}
    out = tmp_path / "out"
    writer = SegmentationWriter("pred", str(out), inputs, overlays=True, print_log=False)
    assert writer.check_outputs()
    for source in inputs:
        pred["pred"].meta["filename_or_obj"] = source
        writer(pred)
    pictures = [out / "pancreas_005_seg_overlay.png", out / "pancreas_005_dicom_seg_overlay.png"]
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in pictures) and not writer.failed
    with pytest.raises(FileExistsError, match="_overlay.png"):
        SegmentationWriter("pred", str(out), inputs, overlays=True).check_outputs()
    for p in (*pictures, *out.glob("*.nii.gz")):
        p.unlink()
    pictures[0].mkdir()  # a folder in the picture's place
    pred["pred"].meta["filename_or_obj"] = inputs[0]
    writer(pred)
    assert writer.failed == [f"{inputs[0]}: {out / 'pancreas_005_seg.nii.gz'} was written, its overlay picture was "
                             f"not: [Errno 17] cannot write {pictures[0]}: it exists already (--overwrite true "
                             "replaces it)"]
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(FLAGSHIP / "configs" / "inference.json"))
    for typed, meant in (("Yes", True), ("false", False)):  # as the command line hands it over
        parser.update({"overlays": typed, "dataset_dir": str(sample)})
        assert parser.get_parsed_content("writer", lazy=False).overlays is meant
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(ImportError, match="--overlays true draws pictures with matplotlib, which is not installed"):
        SegmentationWriter("pred", str(tmp_path / "other"), inputs, overlays=True).check_outputs()


def test_skip_existing_runs_what_an_interrupted_run_left(tmp_path, sample):
    """``--skip_existing true`` after a run that stopped: inputs with all their outputs are skipped, a case cut short
    (its NIfTI written, its overlay not) runs again and replaces what it left, names stay those of every input (two
    ``ct.nii.gz`` stay ``siteA_``/``siteB_`` when one is skipped); without it the outputs stop the run, naming the
    option; with ``--overwrite true`` it is a contradiction."""
    from monai.bundle import ConfigParser
    from monai.data import MetaTensor

    from monai_unet_variants.bundle.outputs import SegmentationWriter

    inputs = []
    for site in ("siteA", "siteB", "siteC"):
        (tmp_path / site).mkdir()
        inputs.append(str(shutil.copy(sample / "imagesTs" / "pancreas_005.nii.gz", tmp_path / site / "ct.nii.gz")))
    label = nib.load(str(sample / "labelsTs" / "pancreas_005.nii.gz"))
    pred = {"pred": MetaTensor(np.asarray(label.dataobj)[None].astype(np.float32), affine=label.affine)}
    out = tmp_path / "out"
    first = SegmentationWriter("pred", str(out), inputs, overlays=True, print_log=False)
    pred["pred"].meta["filename_or_obj"] = inputs[0]
    first(pred)  # siteA: complete
    first.overlays = False
    pred["pred"].meta["filename_or_obj"] = inputs[1]
    first(pred)  # siteB: cut short before its overlay
    cut_short = out / "siteB_ct_seg.nii.gz"
    os.utime(cut_short, (0, 0))
    assert sorted(p.name for p in out.iterdir()) == ["siteA_ct_seg.nii.gz", "siteA_ct_seg_overlay.png", cut_short.name]
    with pytest.raises(FileExistsError, match="3 output\\(s\\) exist already .*--skip_existing true keeps them"):
        SegmentationWriter("pred", str(out), inputs, overlays=True).check_outputs()
    with pytest.raises(ValueError, match="--overwrite true replaces .*--skip_existing true keeps them .*: choose one"):
        SegmentationWriter("pred", str(out), inputs, overwrite=True, skip_existing=True)

    writer = SegmentationWriter("pred", str(out), overlays=True, skip_existing=True, print_log=False)
    todo = writer.pending([{"image": p} for p in inputs])
    assert [d["image"] for d in todo] == inputs[1:] and writer.skipped == inputs[:1]
    assert writer.check_outputs()
    for item in todo:
        pred["pred"].meta["filename_or_obj"] = item["image"]
        writer(pred)
    assert not writer.failed and cut_short.stat().st_mtime > 0
    assert sorted(p.name for p in out.iterdir()) == [f"{s}_ct_seg{x}" for s in ("siteA", "siteB", "siteC")
                                                     for x in (".nii.gz", "_overlay.png")]

    parser = ConfigParser()  # the bundle's wiring: the dataset holds the pending inputs only
    parser.read_config(str(FLAGSHIP / "configs" / "inference.json"))
    (out / "siteC_ct_seg_overlay.png").unlink()
    for typed, expected in (("Yes", inputs[2:]), ("false", inputs)):  # as the command line hands it over
        parser.update({"skip_existing": typed, "overlays": True, "overwrite": typed == "false", "datalist": inputs,
                       "output_dir": str(out), "ckpt_path": str(tmp_path / "no.pt")})
        assert [d["image"] for d in parser.get_parsed_content("dataset", lazy=False).data] == expected, typed
    parser.update({"skip_existing": "maybe"})
    with pytest.raises(RuntimeError) as err:  # the config names the expression, the cause the option
        parser.get_parsed_content("dataset", lazy=False)
    assert "--skip_existing must be true or false (also 1/0, yes/no, in any case), got 'maybe'" in str(err.value.__cause__)


@pytest.mark.slow
def test_inference_outputs_are_unique_checked_and_never_clobbered(tmp_path, sample, tiny_model):
    image = sample / "imagesTs" / "pancreas_005.nii.gz"
    for site in ("siteA", "siteB"):
        (tmp_path / site).mkdir()
        shutil.copy(image, tmp_path / site / "ct.nii.gz")
    inputs = [tmp_path / "siteA" / "ct.nii.gz", tmp_path / "siteB" / "ct.nii.gz"]
    out = tmp_path / "out"
    proc = _infer(tiny_model, sample, inputs, out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert sorted(p.name for p in out.iterdir()) == ["siteA_ct_seg.nii.gz", "siteB_ct_seg.nii.gz"]
    before = {p.name: _hash(p) for p in out.iterdir()}
    again = _infer(tiny_model, sample, inputs, out)  # a re-run over existing outputs
    assert again.returncode == 1
    assert again.stderr.strip().splitlines()[-1].startswith("error: FileExistsError: 2 output(s) exist already")
    assert {p.name: _hash(p) for p in out.iterdir()} == before
    assert _infer(tiny_model, sample, inputs, out, "--overwrite", "true").returncode == 0


@pytest.mark.slow
def test_a_case_that_cannot_be_written_fails_the_run_after_the_others(tmp_path, sample, tiny_model):
    image = sample / "imagesTs" / "pancreas_005.nii.gz"
    shutil.copy(image, tmp_path / "a.nii.gz")
    shutil.copy(image, tmp_path / "b.nii.gz")
    out = tmp_path / "out"
    (out / "a_seg.nii.gz").mkdir(parents=True)  # a folder where a's output must go
    proc = _infer(tiny_model, sample, [tmp_path / "a.nii.gz", tmp_path / "b.nii.gz"], out, "--overwrite", "true")
    assert proc.returncode == 1
    last = proc.stderr.strip().splitlines()[-1]
    assert "1 case(s) have no output or an incomplete one; the other 1 were written" in last
    assert str(tmp_path / "a.nii.gz") in last
    assert f"cannot write {out / 'a_seg.nii.gz'}" in last
    assert nib.load(str(out / "b_seg.nii.gz")).shape == nib.load(str(image)).shape  # the other case: complete
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp") or p.name.startswith(".a_seg")]
    blocked = tmp_path / "blocked"
    blocked.write_text("a file where the output folder should be")
    proc = _infer(tiny_model, sample, [tmp_path / "b.nii.gz"], blocked)
    assert proc.returncode == 1  # an output folder that cannot be made stops the run before the first case
    assert proc.stderr.strip().splitlines()[-1] == (
        f"error: OutputError: [Errno 17] --output_dir {blocked} cannot be written (File exists): no case was run; "
        "choose a folder this process can write to")
    assert "Epoch[1] Complete" not in proc.stdout + proc.stderr


@pytest.mark.slow
def test_inference_onto_a_full_disk_fails_naming_the_file(tmp_path, sample, tiny_model):
    mount = tmp_path / "small"
    mount.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount)],
                                           capture_output=True).returncode != 0:
        pytest.skip("needs root and permission to mount a tmpfs")
    try:
        fd = os.open(mount / "filler", os.O_WRONLY | os.O_CREAT)
        try:  # fill the disk to the last byte
            while os.write(fd, b"\0" * 1024):
                pass
        except OSError:
            pass
        finally:
            os.close(fd)
        image = sample / "imagesTs" / "pancreas_005.nii.gz"
        proc = _infer(tiny_model, sample, [image], mount)
        assert proc.returncode == 1
        last = proc.stderr.strip().splitlines()[-1]
        assert f"cannot write {mount / 'pancreas_005_seg.nii.gz'}: No space left on device" in last
        assert [p.name for p in mount.iterdir()] == ["filler"]  # no 0-byte or partial file left behind
    finally:
        subprocess.run(["umount", str(mount)], capture_output=True)


@pytest.mark.slow
def test_training_again_over_a_finished_run_is_refused(tmp_path, sample, tiny_model):
    before = _hash(tiny_model)
    proc = _run_bundle("--config_file", str(FLAGSHIP / "configs" / "train.json"), "--dataset_dir", str(sample),
                       "--epochs", "1", "--ckpt_dir", str(tiny_model.parent),
                       "--output_dir", str(tmp_path / "eval"), *TINY)
    assert proc.returncode == 1
    assert "exist from an earlier run: --resume true continues" in proc.stderr.strip().splitlines()[-1]
    assert _hash(tiny_model) == before


# -------------------------------------------------------------------------------- options as they were typed
TRAIN_FLAGS = ["resume", "overwrite", "amp", "compile", "channels_last", "skip_bad_cases", "reuse_memory", "allow_non_ct",
               "deep_supervision"]
INFERENCE_FLAGS = ["largest_component", "overwrite", "skip_existing", "keep_going", "dicom_seg", "overlays", "amp",
                   "compile", "channels_last", "reuse_memory", "allow_non_ct", "deep_supervision"]


def _causes(err: BaseException) -> str:
    """An error's message and those of its causes (MONAI's config wraps the one that says what is wrong)."""
    texts = []
    while err is not None:
        texts.append(str(err))
        err = err.__cause__ or err.__context__
    return "\n".join(texts)


@pytest.mark.slow
@pytest.mark.parametrize("config, option", [("train.json", o) for o in TRAIN_FLAGS]
                         + [("inference.json", o) for o in INFERENCE_FLAGS])
def test_every_boolean_option_refuses_what_it_cannot_read(tmp_path, sample, tiny_model, config, option):
    """Every boolean option of both configs, run in this process as the command line hands it over (the text
    "maybe"): a value that is not true/false/1/0/yes/no stops the run with the option's name, before anything is
    written (a process each, as below, took ~9 s apiece for the same wiring)."""
    from monai.bundle import ConfigWorkflow

    overrides = {"dataset_dir": str(sample), "output_dir": str(tmp_path / "out"), option: "maybe",
                 **cli_overrides(TINY)}
    if config == "train.json":
        overrides.update({"epochs": 1, "ckpt_dir": str(tmp_path / "models")})
    else:
        overrides["ckpt_path"] = str(tiny_model)
    workflow = ConfigWorkflow(config_file=str(FLAGSHIP / "configs" / config), logging_file=False, workflow_type=None,
                              meta_file=str(FLAGSHIP / "configs" / "metadata.json"), **overrides)
    with pytest.raises(Exception) as err:
        workflow.initialize()
        workflow.run()
    assert f"--{option} must be true or false (also 1/0, yes/no, in any case), got 'maybe'" in _causes(err.value)
    assert not (tmp_path / "models" / "model.pt").exists() and not list((tmp_path / "out").glob("*.nii.gz"))


@pytest.mark.slow
@pytest.mark.parametrize("config, option", [("train.json", "resume"), ("inference.json", "keep_going")])
def test_boolean_options_refuse_what_they_cannot_read(tmp_path, sample, tiny_model, config, option):
    """A boolean option through the real command line: a value that is not true/false/1/0/yes/no stops the run with
    exit 1 and the option's name on the last line, before anything is written."""
    args = ["--config_file", str(FLAGSHIP / "configs" / config), "--dataset_dir", str(sample),
            "--output_dir", str(tmp_path / "out"), *_tiny(config), f"--{option}", "maybe"]
    if config == "train.json":
        args += ["--epochs", "1", "--ckpt_dir", str(tmp_path / "models")]
    else:
        args += ["--ckpt_path", str(tiny_model)]
    proc = _run_bundle(*args)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1] == (
        f"error: ValueError: --{option} must be true or false (also 1/0, yes/no, in any case), got 'maybe'")
    assert not (tmp_path / "models" / "model.pt").exists() and not list((tmp_path / "out").glob("*.nii.gz"))


@pytest.mark.slow
@pytest.mark.parametrize("config, option, value, message", [
    ("train.json", "epochs", "two", "--epochs must be a whole number in [1, inf), got 'two'"),
    ("train.json", "roi_size", "[40,32,32]", "--roi_size [40, 32, 32]: every size must be a multiple of 16 (the "
     "network's down-sampling, the product of its strides), e.g. [48, 32, 32]"),
    ("inference.json", "hu_window", "[199,-87]",
     "--hu_window must be 2 numbers, each above the last, such as [-87, 199], got [199, -87]"),
])
def test_numeric_options_refuse_what_does_not_fit(tmp_path, sample, tiny_model, config, option, value, message):
    """A number the run cannot use stops it with the option's name before anything is read or written (the
    reversed HU window would have inverted every image without a word)."""
    opts = {"--config_file": str(FLAGSHIP / "configs" / config), "--dataset_dir": str(sample),
            "--output_dir": str(tmp_path / "out"), **dict(zip(_tiny(config)[::2], _tiny(config)[1::2]))}
    if config == "train.json":
        opts.update({"--epochs": "1", "--ckpt_dir": str(tmp_path / "models"), "--cache_dir": str(tmp_path / "cache")})
    else:
        opts["--ckpt_path"] = str(tiny_model)
    opts[f"--{option}"] = value
    proc = _run_bundle(*[a for pair in opts.items() for a in pair])
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1] == f"error: ValueError: {message}"
    assert not (tmp_path / "models").exists() and not (tmp_path / "cache").exists()
    assert not list((tmp_path / "out").glob("*.nii.gz"))


@pytest.mark.slow
def test_resume_false_starts_afresh(tmp_path, sample):
    """``--resume false`` (the text "false", as the command line passes it) does not resume."""
    ckpt = tmp_path / "models"
    common = ["--config_file", str(FLAGSHIP / "configs" / "train.json"), "--dataset_dir", str(sample),
              "--ckpt_dir", str(ckpt), "--output_dir", str(tmp_path / "eval"), *TINY]
    assert _run_bundle(*common, "--epochs", "2").returncode == 0
    proc = _run_bundle(*common, "--epochs", "1", "--resume", "FALSE", "--overwrite", "Yes")
    assert proc.returncode == 0, proc.stderr[-3000:]
    state = torch.load(ckpt / mb.LATEST_CHECKPOINT, weights_only=True)["trainer"]
    assert state["iteration"] == state["epoch_length"]  # one epoch from the start, not epoch 2 + 1
    assert "Restored all variables" not in proc.stdout + proc.stderr


# ------------------------------------------------------------------------------------------- DICOM series
@pytest.fixture
def series(tmp_path, sample) -> Path:
    folder = tmp_path / "series"
    shutil.copytree(sample / "dicomTs" / "pancreas_005", folder)
    return folder


def test_a_complete_series_is_read_as_it_is(series):
    assert mb.check_inputs([str(series)]) == [str(series)]


def test_dicom_objects_beside_a_series_are_left_out_and_refused_as_inputs(tmp_path, sample, series, caplog,
                                                                            monkeypatch):
    """A radiotherapy or PACS export puts a structure set (no pixel data) and a DICOM SEG beside the CT slices: the
    series is read without them (logged), not refused as holding a slice cut short or a second series; either object
    given as an image or a label is refused, naming what it is."""
    import pydicom
    from monai.transforms import LoadImage
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, RTStructureSetStorage, generate_uid

    from monai_unet_variants.bundle.dicom_seg import write_dicom_seg

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    label = nib.load(str(sample / "labelsTs" / "pancreas_005.nii.gz"))
    seg = write_dicom_seg(np.asarray(label.dataobj), label.affine, series, tmp_path / "seg.dcm")
    shutil.move(seg, series / "zz_seg.dcm")
    slice_ = pydicom.dcmread(str(next(series.glob("IM*.dcm"))), stop_before_pixels=True)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = RTStructureSetStorage, generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    rs = FileDataset(str(series / "RS.dcm"), {}, file_meta=meta, preamble=b"\0" * 128)
    rs.SOPClassUID, rs.SOPInstanceUID, rs.Modality = RTStructureSetStorage, meta.MediaStorageSOPInstanceUID, "RTSTRUCT"
    rs.StudyInstanceUID, rs.SeriesInstanceUID = slice_.StudyInstanceUID, generate_uid()
    rs.save_as(str(series / "RS.dcm"), enforce_file_format=True)

    with caplog.at_level(logging.INFO, logger="monai_unet_variants.bundle"):
        [read] = mb.check_inputs([str(series)])
    assert read != str(series) and "2 other DICOM file(s) left out (not images of it, e.g. RS.dcm)" in caplog.text
    assert sorted(p.name for p in Path(read).iterdir()) == sorted(p.name for p in series.glob("IM*.dcm"))
    volume = LoadImage(image_only=True)(read)
    assert tuple(volume.shape) == np.asarray(label.dataobj).shape
    with pytest.raises(mb.DicomSeriesError, match=r"zz_seg.dcm is a DICOM SEG object \(Segmentation Storage\), not "
                                                  "an image to segment: .*a label is a NIfTI label map or "
                                                  "a DICOM SEG beside its image"):
        mb.check_inputs([str(series / "zz_seg.dcm")])
    with pytest.raises(mb.DicomSeriesError, match=r"RS.dcm is a DICOM RTSTRUCT object \(RT Structure Set Storage\)"):
        mb.check_inputs([{"image": str(read), "label": str(series / "RS.dcm")}])


def test_a_series_of_another_modality_is_refused_unless_allowed(series, caplog):
    """An MR series (Modality MR) is not segmented as CT: refused, naming the folder and the override; with
    ``allow_non_ct`` (as the command line spells it) it is read with a warning; a misspelt flag names the setting."""
    import pydicom

    for path in series.iterdir():
        ds = pydicom.dcmread(str(path))
        ds.Modality = "MR"
        ds.save_as(str(path))
    with pytest.raises(mb.DicomSeriesError, match=f"series [0-9.]+ in {series} has Modality MR, not CT: .* "
                                                  "--allow_non_ct true"):
        mb.check_inputs([str(series)])
    with caplog.at_level(logging.WARNING, logger="monai_unet_variants.bundle"):
        assert mb.check_inputs([str(series)], allow_non_ct="True") == [str(series)]
    assert "has Modality MR, not CT" in caplog.text and "(read anyway: --allow_non_ct)" in caplog.text
    with pytest.raises(ValueError, match="allow_non_ct"):
        mb.check_inputs([str(series)], allow_non_ct="maybe")


def test_a_series_of_a_few_slices_is_not_a_volume(tmp_path):
    from monai_unet_variants.bundle.dicom import MIN_SLICES
    from monai_unet_variants.data import generate_case, write_dicom_series

    image, _, affine = generate_case(7, (40, 32, MIN_SLICES - 1))
    folder = tmp_path / "scout"
    write_dicom_series(image, affine, folder, seed=7)
    with pytest.raises(mb.DicomSeriesError, match=f"in {folder} has {MIN_SLICES - 1} slices, fewer than the "
                                                  f"{MIN_SLICES} of a CT volume"):
        mb.check_inputs([str(folder)])
    assert mb.check_inputs([str(folder)], allow_non_ct=True) == [str(folder)]
    image, _, affine = generate_case(7, (40, 32, MIN_SLICES))
    write_dicom_series(image, affine, tmp_path / "enough", seed=7)
    assert mb.check_inputs([str(tmp_path / "enough")]) == [str(tmp_path / "enough")]


def test_a_missing_slice_is_found(series):
    (series / "IM0010.dcm").unlink()
    with pytest.raises(mb.DicomSeriesError, match=f"series .* in {series} is not evenly spaced: 5 mm between "
                                                  "IM0011.dcm and IM0009.dcm, 2.5 mm elsewhere \\(1 slice missing"):
        mb.check_inputs([str(series)])


@pytest.mark.parametrize("tilt", [0.0, 15.0], ids=["oblique", "tilted"])
def test_a_series_sheared_by_a_gantry_tilt_is_refused(tmp_path, tilt):
    """A series acquired with a gantry tilt (slices stacked at an angle to their normal) is what ITK reads as an
    untilted stack, displaced and stretched: refused naming the angle and the drift. An oblique series stacked along
    its normal (rotated about the patient's axis, header positions rounded as scanners write them) is read."""
    import pydicom

    from monai_unet_variants.data import generate_case, write_dicom_series

    image, _, affine = generate_case(7, (40, 32, 12))
    turn = np.radians(20)  # an oblique in-plane orientation: rotated about z
    rotation = np.array([[np.cos(turn), -np.sin(turn), 0], [np.sin(turn), np.cos(turn), 0], [0, 0, 1]])
    affine[:3, :3] = rotation @ affine[:3, :3]
    affine[:3, 2] += rotation @ np.array([0.0, np.tan(np.radians(tilt)) * affine[2, 2], 0.0])  # sideways per slice
    folder = tmp_path / "series"
    write_dicom_series(image, affine, folder, seed=7)
    for path in folder.iterdir():  # positions to 0.01 mm, directions to 6 decimals, as scanners write them
        ds = pydicom.dcmread(str(path))
        ds.ImagePositionPatient = [round(float(v), 2) for v in ds.ImagePositionPatient]
        ds.ImageOrientationPatient = [round(float(v), 6) for v in ds.ImageOrientationPatient]
        ds.save_as(str(path))
    if not tilt:
        assert mb.check_inputs([str(folder)]) == [str(folder)]
        return
    with pytest.raises(mb.DicomSeriesError, match=f"series [0-9.]+ in {folder} is sheared, as a gantry tilt of 15.0 "
                                                  r"degrees leaves it: its slices drift 7.4 mm sideways from "
                                                  r"IM0012.dcm to IM0001.dcm over 27.5 mm .*dcm2niix"):
        mb.check_inputs([str(folder)])


def test_a_multi_frame_file_is_named_not_taken_for_a_scout(tmp_path, series):
    """A whole volume in one file (24 frames) whose frames carry no positions (no per-frame functional groups, unlike
    a real Enhanced CT: tests/test_dicom_enhanced.py) is refused as what it is, with the conversion to use, not as "1
    slice, fewer than 8"; not even with --allow_non_ct."""
    import pydicom
    from pydicom.uid import EnhancedCTImageStorage

    slices = [pydicom.dcmread(str(p)) for p in sorted(series.iterdir())]
    volume = slices[0]
    volume.NumberOfFrames = len(slices)
    volume.SOPClassUID = volume.file_meta.MediaStorageSOPClassUID = EnhancedCTImageStorage
    volume.PixelData = b"".join(ds.PixelData for ds in slices)
    folder = tmp_path / "enhanced"
    folder.mkdir()
    volume.save_as(str(folder / "volume.dcm"))
    for allow in (False, True):
        with pytest.raises(mb.DicomSeriesError, match=f"{folder / 'volume.dcm'} in {folder} is a multi-frame DICOM "
                                                      "file \\(24 frames, Enhanced CT Image Storage\\) without a position "
                                                      "for each frame .*dcm2niix"):
            mb.check_inputs([str(folder)], allow_non_ct=allow)


@pytest.mark.parametrize("field", ["PixelSpacing", "Rows"])
def test_a_slice_of_another_pixel_grid_is_refused(series, field):
    """A slice of another pixel spacing (ITK would read it at the first slice's scale) or size (ITK would split it
    off as a series of its own and read a volume of one slice) stops the check, naming a slice and the fields."""
    import pydicom

    path = series / "IM0006.dcm"
    ds = pydicom.dcmread(str(path))
    if field == "PixelSpacing":
        ds.PixelSpacing = [0.7, 0.7]
        expected = r"PixelSpacing \[0.7, 0.7\] \(others \[0.8, 0.8\]\)"
    else:
        expected = f"Rows 30 \\(others {ds.Rows}\\)"
        ds.PixelData, ds.Rows = ds.pixel_array[:30].tobytes(), 30
    ds.save_as(str(path))
    with pytest.raises(mb.DicomSeriesError, match=f"series [0-9.]+ in {series}: 1 of its 24 slices have another "
                                                  f"pixel grid, e.g. IM0006.dcm: {expected}"):
        mb.check_inputs([str(series)])


def test_a_missing_instance_number_is_found(series):
    import pydicom

    ds = pydicom.dcmread(str(series / "IM0005.dcm"))
    ds.InstanceNumber = 40  # numbering 1..24 with 5 absent and 40 present
    ds.save_as(str(series / "IM0005.dcm"))
    with pytest.raises(mb.DicomSeriesError, match="numbered 1..40: instance number\\(s\\) \\[5, 25, 26"):
        mb.check_inputs([str(series)])


@pytest.mark.parametrize("keep", [200, -1000], ids=["header cut", "pixels cut"])
def test_an_unreadable_slice_is_named(series, keep):
    slice_ = series / "IM0007.dcm"
    slice_.write_bytes(slice_.read_bytes()[:keep])
    with pytest.raises(mb.DicomSeriesError, match=f"{slice_} of the DICOM folder {series} cannot be read"):
        mb.check_inputs([str(series)])


def test_two_series_in_one_folder_are_refused_or_chosen(series, caplog):
    from monai_unet_variants.data import generate_case, write_dicom_series

    image, _, affine = generate_case(7, (40, 32, 6))
    other = series.parent / "other"
    write_dicom_series(image, affine, other, seed=7)
    for f in other.iterdir():
        shutil.copy(f, series / f"B{f.name}")
    with pytest.raises(mb.DicomSeriesError, match=f"DICOM folder {series} holds 2 series: ") as err:
        mb.check_inputs([str(series)])
    assert "(24 files," in str(err.value) and "(6 files," in str(err.value) and "--dicom_series largest" in str(err.value)
    with caplog.at_level(logging.WARNING, logger="monai_unet_variants.bundle"):
        [chosen] = mb.check_inputs([str(series)], dicom_series="largest")
    assert Path(chosen).name == series.name and len(list(Path(chosen).iterdir())) == 24
    assert "holds 2 series; reading" in caplog.text


def test_a_series_one_folder_down_is_found(series, caplog):
    outer = series.parent / "study"
    outer.mkdir()
    shutil.move(str(series), outer / "series")
    (outer / "notes.txt").write_text("not an image")
    with caplog.at_level(logging.WARNING, logger="monai_unet_variants.bundle"):
        assert mb.check_inputs([str(outer)]) == [str(outer / "series")]
    assert "holds no DICOM file itself; reading its subfolder" in caplog.text
    empty = series.parent / "empty"
    empty.mkdir()
    (empty / "readme.txt").write_text("x")
    with pytest.raises(mb.DicomSeriesError, match=f"{empty} is not a DICOM series: it holds 1 other file\\(s\\) "
                                                  "\\(e.g. readme.txt\\)"):
        mb.check_inputs([str(empty)])


@pytest.mark.slow
def test_inference_refuses_a_series_with_a_gap(series, sample, tiny_model, tmp_path):
    (series / "IM0012.dcm").unlink()
    proc = _infer(tiny_model, sample, [series], tmp_path / "out")
    assert proc.returncode == 1
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: DicomSeriesError: series") and f"in {series} is not evenly spaced" in last
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())
