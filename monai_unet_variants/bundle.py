"""Helpers that the MONAI bundles under ``bundles/`` call from their configs.

They locate the bundle's own folder, read MSD-style datalists (NIfTI files or DICOM series folders),
check every case with messages that name the file, save checkpoints atomically, load them with clear
errors, and write per-case evaluation tables.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import sys
import tempfile
from collections.abc import Callable, Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.handlers import CheckpointLoader, ValidationHandler
from monai.transforms import MapTransform, Spacingd

__all__ = [
    "LATEST_CHECKPOINT",
    "AtomicCheckpointSaver",
    "BestMetricState",
    "CheckCased",
    "FinalValidationHandler",
    "MetaSafeSpacingd",
    "PerCaseMetricsWriter",
    "SafeCheckpointLoader",
    "check_checkpoint",
    "check_inputs",
    "find_bundle_root",
    "load_datalist",
    "select_class",
    "test_inputs",
]

LATEST_CHECKPOINT = "checkpoint_latest.pt"
logger = logging.getLogger("monai_unet_variants.bundle")


# ----------------------------------------------------------------------------------------- bundle root
def find_bundle_root(argv: Sequence[str] | None = None, cwd: str | os.PathLike | None = None) -> str:
    """The bundle folder of the config being run.

    MONAI does not tell a config where it lives, and a plain ``"."`` would put checkpoints and logs in
    whatever folder the command runs from. This reads ``--config_file`` from the command line (a path or
    a list of paths, as ``monai.bundle run`` accepts) and returns the folder above ``configs/``; without
    one, it returns the working directory when that holds ``configs/metadata.json``. Override with
    ``--bundle_root`` as usual.
    """
    argv = list(sys.argv if argv is None else argv)
    value = None
    for i, arg in enumerate(argv):
        if arg == "--config_file" and i + 1 < len(argv):
            value = argv[i + 1]
        elif arg.startswith("--config_file="):
            value = arg.split("=", 1)[1]
    if value:
        first = value.strip().strip("[]()").split(",")[0].strip().strip("'\"")
        folder = Path(first).expanduser().resolve().parent
        return str(folder.parent if folder.name == "configs" else folder)
    here = Path(cwd or os.getcwd()).resolve()
    if (here / "configs" / "metadata.json").is_file():
        return str(here)
    if here.name == "configs" and (here / "metadata.json").is_file():
        return str(here.parent)
    logger.warning("could not tell the bundle folder (no --config_file); using %s", here)
    return str(here)


# ------------------------------------------------------------------------------------------- datalists
def _resolve(entry: Any, base: Path) -> Any:
    if isinstance(entry, str):
        p = Path(entry).expanduser()
        return str(p if p.is_absolute() else (base / p).resolve())
    if isinstance(entry, Mapping):
        return {k: _resolve(v, base) if k in ("image", "label") else v for k, v in entry.items()}
    raise ValueError(f"datalist entries must be paths or {{'image': ..., 'label': ...}} dicts, got {entry!r}")


def _read_datalist(datalist: str | os.PathLike) -> tuple[dict, Path]:
    path = Path(datalist).expanduser()
    if path.is_dir():
        path = path / "dataset.json"
    if not path.is_file():
        raise FileNotFoundError(
            f"datalist {path} does not exist: point --dataset_dir at an MSD Task07 folder (with dataset.json) or "
            "--datalist at a JSON file with 'training' (and optionally 'validation', 'test') entries"
        )
    try:
        content = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"datalist {path} is not valid JSON: {err}") from err
    if not isinstance(content, dict):
        raise ValueError(f"datalist {path} must hold a JSON object with a 'training' list")
    return content, path.parent


def load_datalist(datalist: str | os.PathLike, section: str = "training", val_fraction: float = 0.2) -> list:
    """Cases of an MSD ``dataset.json`` or a datalist JSON of the same form, with absolute paths.

    ``section``: ``"training"`` or ``"validation"`` (the deterministic split below), ``"all"`` (every labelled
    case) or ``"test"`` (unlabelled inputs). Paths are relative to the JSON file's folder; an ``image`` may be a
    NIfTI file or a DICOM series folder.

    Split: if the file has a ``"validation"`` list it is used as is; otherwise the labelled cases are sorted
    by image path and the last ``max(1, round(val_fraction * n))`` form the validation set (never trained on).
    """
    content, base = _read_datalist(datalist)
    labelled = [_resolve(e, base) for e in content.get("training", [])]
    if section == "test":
        return [_resolve(e, base) for e in content.get("test", [])]
    if not labelled:
        raise ValueError(f"datalist {base} has no 'training' cases")
    for e in labelled:
        if not isinstance(e, dict) or "image" not in e or "label" not in e:
            raise ValueError(f"datalist {base}: every 'training' entry needs 'image' and 'label', got {e!r}")
    if section == "all":
        return labelled
    if "validation" in content:
        train, val = labelled, [_resolve(e, base) for e in content["validation"]]
    else:
        ordered = sorted(labelled, key=lambda e: e["image"])
        n_val = max(1, round(val_fraction * len(ordered))) if len(ordered) > 1 else 0
        train, val = ordered[: len(ordered) - n_val], ordered[len(ordered) - n_val :]
    if section == "training":
        return train
    if section == "validation":
        return val
    raise ValueError(f"section must be 'training', 'validation', 'all' or 'test' (got {section!r})")


def test_inputs(datalist: str | os.PathLike) -> list[str]:
    """Image paths of the ``test`` section of a datalist / MSD ``dataset.json`` (the inference default)."""
    return [e["image"] if isinstance(e, dict) else e for e in load_datalist(datalist, "test")]


def _check_file(path: str, role: str) -> None:
    p = Path(path)
    if p.is_dir():
        if not any(f.is_file() for f in p.iterdir()):
            raise ValueError(f"{role} {p} is an empty folder: expected a DICOM series")
        return
    if not p.exists():
        raise FileNotFoundError(f"{role} {p} does not exist")
    if p.stat().st_size == 0:
        raise ValueError(f"{role} {p} is an empty file")
    if p.name.endswith((".nii", ".nii.gz")):
        import nibabel as nib

        try:
            img = nib.load(str(p))
            shape = img.shape
        except Exception as err:  # nibabel raises several types for corrupt headers
            raise ValueError(f"{role} {p} is not a readable NIfTI file: {err}") from err
        if len(shape) < 3 or min(shape[:3]) < 1:
            raise ValueError(f"{role} {p} is not a 3D volume (shape {shape})")


def check_inputs(items: Sequence[Any], keys: Sequence[str] = ("image", "label")) -> list:
    """Check that every file of a datalist exists and has a readable header, before any work starts.

    Raises ``FileNotFoundError`` / ``ValueError`` naming the file. Returns ``items`` unchanged.
    """
    for item in items:
        if isinstance(item, (str, os.PathLike)):
            _check_file(str(item), "image")
            continue
        for key in keys:
            if key in item:
                _check_file(str(item[key]), key)
    return list(items)


class CheckCased(MapTransform):
    """Check a loaded case: finite, non-constant image; label of the image's shape with values in ``labels``.

    Errors name both files and the problem, so a bad case fails at caching time with a readable message.
    """

    def __init__(self, keys: KeysCollection = ("image", "label"), labels: Sequence[int] = (0, 1, 2), allow_missing_keys: bool = True):
        super().__init__(keys, allow_missing_keys)
        self.labels = set(int(v) for v in labels)

    @staticmethod
    def _name(x: Any) -> str:
        meta = getattr(x, "meta", {})
        return str(meta.get("filename_or_obj", "<unknown file>"))

    def __call__(self, data: Mapping[Hashable, Any]) -> dict:
        d = dict(data)
        image_key, label_key = self.keys[0], self.keys[1] if len(self.keys) > 1 else None
        image = d[image_key]
        name = self._name(image)
        arr = torch.as_tensor(image)
        if arr.numel() == 0:
            raise ValueError(f"image {name} is empty (shape {tuple(arr.shape)})")
        if not torch.isfinite(arr).all():
            raise ValueError(f"image {name} contains NaN or infinite values")
        if label_key is not None and label_key in d:
            label = d[label_key]
            lname = self._name(label)
            if tuple(label.shape[1:]) != tuple(image.shape[1:]):
                raise ValueError(
                    f"label {lname} has shape {tuple(label.shape[1:])} but image {name} has {tuple(image.shape[1:])}: "
                    "they must be voxel-aligned volumes of the same size"
                )
            values = set(int(v) for v in torch.unique(torch.as_tensor(label)).tolist())
            extra = sorted(values - self.labels)
            if extra:
                raise ValueError(
                    f"label {lname} has values {extra} outside {sorted(self.labels)} "
                    "(0 background, 1 pancreas, 2 tumour): is it the right file, or another task's labels?"
                )
        return d


class MetaSafeSpacingd(Spacingd):
    """``Spacingd`` that leaves entries named ``<key>_...`` alone unless they are metadata dictionaries.

    MONAI 1.6 updates every entry whose name starts with ``"<key>_"`` after resampling a NIfTI image, and
    MONAI Label puts the image's path (a string) under ``image_path``: plain ``Spacingd`` then fails with
    ``'str' object has no attribute 'update'``. This transform sets such entries aside for the call;
    everything else, including ``inverse``, is ``Spacingd``'s.
    """

    def __call__(self, data: Mapping[Hashable, Any], lazy: bool | None = None) -> dict:
        d = dict(data)
        prefixes = tuple(f"{key}_" for key in self.keys)
        aside = {k: d.pop(k) for k in list(d) if isinstance(k, str) and k.startswith(prefixes)
                 and not isinstance(d[k], Mapping)}
        out = dict(super().__call__(d, lazy=lazy))
        out.update(aside)
        return out


class FinalValidationHandler(ValidationHandler):
    """``ValidationHandler`` that also validates after the last epoch when ``interval`` skipped it.

    Without it a run of 5 epochs with ``val_interval`` 2 ends on an unvalidated model, and a short run (a MONAI
    Label training request of one epoch) never writes ``model.pt``. Takes ``ValidationHandler``'s arguments.
    """

    def attach(self, engine: Any) -> None:
        from ignite.engine import Events

        super().attach(engine)
        engine.add_event_handler(Events.COMPLETED, self._final)

    def _final(self, engine: Any) -> None:
        done = engine.state.epoch if self.epoch_level else engine.state.iteration
        if done % self.interval != 0:
            self(engine)


def select_class(index: int, keys: tuple[str, str] = ("pred", "label")) -> Callable:
    """An ignite ``output_transform`` keeping one class channel of one-hot ``pred`` and ``label``
    (for per-class Dice with ``MeanDice(include_background=True)``)."""
    from monai.handlers.utils import from_engine

    get = from_engine(list(keys))

    def transform(output: Any) -> tuple[list, list]:
        preds, labels = get(output)
        return [p[index : index + 1] for p in preds], [lb[index : index + 1] for lb in labels]

    return transform


# ----------------------------------------------------------------------------------------- checkpoints
def _atomic_save(obj: Any, path: Path) -> None:
    """Write to a temporary file in the same folder, flush it to disk, then rename over ``path``:
    a kill at any moment leaves either the old file or the new one, never a truncated one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=str(path.parent))
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def check_checkpoint(path: str | os.PathLike) -> dict:
    """Load a checkpoint with ``weights_only=True`` and say clearly what is wrong with it if anything is."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"checkpoint {p} does not exist: train first (train.json writes it) or pass --ckpt_path")
    if p.stat().st_size == 0:
        raise ValueError(f"checkpoint {p} is empty (0 bytes): it was not written completely; use another checkpoint")
    try:
        return torch.load(str(p), map_location="cpu", weights_only=True)
    except Exception as err:
        raise ValueError(
            f"checkpoint {p} cannot be read ({type(err).__name__}: {err}); it is truncated or corrupt, or not a "
            "PyTorch checkpoint: use another checkpoint or train again"
        ) from err


class AtomicCheckpointSaver:
    """Save ``save_dict`` atomically: the latest state every ``save_interval`` epochs (for resuming) and/or
    the network each time the evaluator's key metric improves (``model.pt``).

    Args:
        save_dir: folder of the checkpoints.
        save_dict: objects with ``state_dict()`` (network, optimizer, scheduler, trainer, ...).
        save_interval: save ``latest_filename`` every this many epochs (0: never). Defaults to 1.
        latest_filename: name of the resumable checkpoint. Defaults to ``checkpoint_latest.pt``.
        save_key_metric: save ``key_metric_filename`` when the engine's key metric improves. Defaults to False.
        key_metric_filename: name of the best checkpoint. Defaults to ``model.pt``.
        only_rank0: save on rank 0 only under ``torch.distributed``. Defaults to True.
        engine_key: also save the engine it is attached to under this key (its epoch and iteration, for
            resuming); a config cannot name the trainer inside the trainer's own handlers. Defaults to ``None``.
    """

    def __init__(
        self,
        save_dir: str,
        save_dict: dict,
        save_interval: int = 1,
        latest_filename: str = LATEST_CHECKPOINT,
        save_key_metric: bool = False,
        key_metric_filename: str = "model.pt",
        only_rank0: bool = True,
        engine_key: str | None = None,
    ) -> None:
        self.save_dir = Path(save_dir)
        self.save_dict = dict(save_dict)
        self.engine_key = engine_key
        self.save_interval = save_interval
        self.latest_filename = latest_filename
        self.save_key_metric = save_key_metric
        self.key_metric_filename = key_metric_filename
        self.only_rank0 = only_rank0

    def _state(self) -> dict:
        """``{key: state_dict}``; a single object is saved as its bare state dict (the model-zoo ``model.pt``)."""
        out = {}
        for k, obj in self.save_dict.items():
            if isinstance(obj, torch.nn.parallel.DistributedDataParallel):
                obj = obj.module
            out[k] = obj.state_dict()
        return next(iter(out.values())) if len(out) == 1 else out

    def _rank0(self) -> bool:
        if not self.only_rank0 or not torch.distributed.is_available() or not torch.distributed.is_initialized():
            return True
        return torch.distributed.get_rank() == 0

    def attach(self, engine: Any) -> None:
        from ignite.engine import Events

        if self.engine_key:
            self.save_dict[self.engine_key] = engine
        if self.save_interval > 0:
            engine.add_event_handler(Events.EPOCH_COMPLETED(every=self.save_interval), self.save_latest)
        if self.save_key_metric:
            engine.add_event_handler(Events.EPOCH_COMPLETED, self.save_best)

    def save_latest(self, engine: Any) -> None:
        if self._rank0():
            _atomic_save(self._state(), self.save_dir / self.latest_filename)

    def save_best(self, engine: Any) -> None:
        state = engine.state
        if getattr(state, "best_metric_epoch", -1) == state.epoch and self._rank0():
            _atomic_save(self._state(), self.save_dir / self.key_metric_filename)
            engine.logger.info(f"saved best checkpoint {self.save_dir / self.key_metric_filename} "
                               f"(key metric {state.best_metric:.4f} at epoch {state.epoch})")


class BestMetricState:
    """The best key metric of an evaluator as a checkpointable object, so that a resumed training does not
    overwrite ``model.pt`` with a worse model just because the evaluator forgot its best value."""

    def __init__(self, engine: Any) -> None:
        self.engine = engine

    def state_dict(self) -> dict:
        state = self.engine.state
        return {"best_metric": float(state.best_metric), "best_metric_epoch": int(state.best_metric_epoch)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.engine.state.best_metric = float(state["best_metric"])
        self.engine.state.best_metric_epoch = int(state["best_metric_epoch"])


class SafeCheckpointLoader(CheckpointLoader):
    """MONAI's ``CheckpointLoader`` (``weights_only=True``) whose errors name the file and the problem.

    With ``enabled=False`` it does nothing (a config can switch resuming on and off with one id);
    ``engine_key`` adds the engine it is attached to into ``load_dict`` (to restore the trainer's epoch).
    """

    def __init__(
        self, load_path: str, load_dict: dict, enabled: bool = True, engine_key: str | None = None, **kwargs: Any
    ) -> None:
        super().__init__(load_path=load_path, load_dict=dict(load_dict), **kwargs)
        self.enabled = enabled
        self.engine_key = engine_key

    def attach(self, engine: Any) -> None:
        if self.engine_key:
            self.load_dict[self.engine_key] = engine
        if self.enabled:
            super().attach(engine)

    def __call__(self, engine: Any) -> None:
        check_checkpoint(self.load_path)
        super().__call__(engine)


# ------------------------------------------------------------------------------------------ evaluation
class PerCaseMetricsWriter:
    """Dice and 95th-percentile Hausdorff distance (mm) per case and class, written as a CSV and printed as a table.

    Expects one-hot ``pred`` and ``label`` in the engine output (batch size 1 or more) at the label's spacing.
    """

    def __init__(self, output_dir: str, class_names: Mapping[int, str] | None = None, filename: str = "metrics.csv"):
        self.output_dir = Path(output_dir)
        self.class_names = {int(k): v for k, v in (class_names or {1: "pancreas", 2: "tumour"}).items()}
        self.filename = filename
        self.rows: list[dict] = []

    def attach(self, engine: Any) -> None:
        from ignite.engine import Events

        engine.add_event_handler(Events.STARTED, lambda e: self.rows.clear())
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.iteration)
        engine.add_event_handler(Events.COMPLETED, self.write)

    def iteration(self, engine: Any) -> None:
        from monai.metrics import compute_dice, compute_hausdorff_distance

        for item in engine.state.output:
            pred, label = item["pred"], item["label"]
            name = str(getattr(label, "meta", {}).get("filename_or_obj", f"case_{len(self.rows)}"))
            spacing = None
            if hasattr(label, "pixdim"):
                spacing = [float(s) for s in label.pixdim]
            row: dict[str, Any] = {"case": os.path.basename(name.rstrip("/"))}
            for c, cname in self.class_names.items():
                p, g = pred[None, c : c + 1].float(), label[None, c : c + 1].float()
                dice = compute_dice(p, g, include_background=True, ignore_empty=True)
                row[f"dice_{cname}"] = float(dice.item())
                if g.sum() > 0 and p.sum() > 0:
                    hd = compute_hausdorff_distance(p, g, include_background=True, percentile=95, spacing=spacing)
                    row[f"hd95_{cname}"] = float(hd.item())
                else:
                    row[f"hd95_{cname}"] = float("nan")
            self.rows.append(row)

    def write(self, engine: Any) -> None:
        if not self.rows:
            return
        self.output_dir.mkdir(parents=True, exist_ok=True)
        cols = list(self.rows[0])
        mean = {"case": "mean"}
        for c in cols[1:]:
            vals = [r[c] for r in self.rows if not math.isnan(r[c])]
            mean[c] = float(np.mean(vals)) if vals else float("nan")
        path = self.output_dir / self.filename
        with open(path, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=cols)
            writer.writeheader()
            for r in self.rows + [mean]:
                writer.writerow({k: (f"{v:.4f}" if isinstance(v, float) else v) for k, v in r.items()})
        width = max(len(r["case"]) for r in self.rows + [mean]) + 2
        lines = ["".join([f"{'case':<{width}}"] + [f"{c:>16}" for c in cols[1:]])]
        for r in self.rows + [mean]:
            lines.append("".join([f"{r['case']:<{width}}"] + [f"{r[c]:>16.4f}" for c in cols[1:]]))
        print("\n".join(lines), flush=True)
        engine.logger.info(f"per-case metrics written to {path}")
