"""Checkpoints and other outputs written atomically, read with errors that name the file; everything a resumed run
needs to go on as if it had never stopped (the evaluator's best metric, the random states, the schedule's length)."""

from __future__ import annotations

import contextlib
import errno
import glob
import json
import logging
import math
import os
import random
import re
import tempfile
import zipfile
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch
from monai.handlers import CheckpointLoader

from ..networks.base import first_shape_mismatch
from .command_line import check_option_names, monai_command_frames

__all__ = ["LATEST_CHECKPOINT", "AtomicCheckpointSaver", "BestMetricState", "OutputError", "RandomStates",
           "SafeCheckpointLoader", "atomic_write", "check_checkpoint", "check_complete",
           "export_checkpoint", "exported_file", "sweep_temporaries"]

LATEST_CHECKPOINT = "checkpoint_latest.pt"
logger = logging.getLogger("monai_unet_variants.bundle")


class OutputError(OSError):
    """An output that could not be written: the message names the file and the operating system's reason."""


def refuse_existing(path: Path, overwrite: bool) -> None:
    """Raise ``OutputError`` (EEXIST) for an output ``path`` that exists, unless ``overwrite``."""
    if path.exists() and not overwrite:
        raise OutputError(17, f"cannot write {path}: it exists already (--overwrite true replaces it)")


def _umask() -> int:
    try:
        with open("/proc/self/status") as f:
            found = re.search(r"Umask:\s+([0-7]+)", f.read())
        return int(found.group(1), 8) if found else 0o022
    except OSError:
        return 0o022


def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):  # not every file system lets a folder be opened or synced
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_write(path: str | os.PathLike, write: Callable[[IO[bytes]], None],
                 verify: Callable[[Path], None] | None = None, suffix: str = ".tmp") -> Path:
    """Write ``path`` so that it is either complete and checked or not there at all.

    ``write(f)`` fills a temporary file in the same folder, which is flushed and fsync-ed, given the permissions a
    new file gets (0644 under the usual umask: a server running as another user can read it), checked with
    ``verify(tmp_path)`` if given (size, a header read back), renamed over ``path``, and the folder is fsync-ed so
    that the rename survives a crash. On any failure the temporary file is removed and ``OutputError`` names
    ``path`` and the reason (``No space left on device``, ``Permission denied``, ``Not a directory``, ...).

    Args:
        path: the file to write.
        write: writes the content to the open binary file it is given.
        verify: raises if the written temporary file is not what it should be. Defaults to ``None``.
        suffix: the temporary file's suffix (a writer may need the real one, e.g. ``.nii.gz``). Defaults to ``.tmp``.

    Examples::

        >>> import tempfile, pathlib
        >>> out = pathlib.Path(tempfile.mkdtemp()) / "table.csv"
        >>> atomic_write(out, lambda f: f.write(b"case,dice\\n")).read_text()
        'case,dice\\n'
    """
    path = Path(path)
    tmp: str | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=str(path.parent))
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        if verify is not None:
            verify(Path(tmp))
        os.replace(tmp, path)
        tmp = None
        _fsync_dir(path.parent)
    except OSError as err:
        reason = err.strerror or str(err)
        raise OutputError(err.errno or errno.EIO, f"cannot write {path}: {reason}") from err
    finally:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
    return path


def _atomic_save(obj: Any, path: Path) -> None:
    """``torch.save`` through ``atomic_write``: a kill at any moment leaves the old file or the new one."""
    atomic_write(path, lambda f: torch.save(obj, f))


def sweep_temporaries(folder: str | os.PathLike, names: list[str]) -> list[Path]:
    """Remove the temporary files that killed saves of ``names`` left in ``folder`` (``.<name>.*.tmp``); returns
    them. Only for a folder whose writer is this process (a training run holds its ``ckpt_dir``)."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    gone = []
    for name in names:
        for leftover in folder.glob(f".{glob.escape(name)}.*.tmp"):
            with contextlib.suppress(OSError):
                leftover.unlink()
                gone.append(leftover)
    if gone:
        logger.info(f"removed {len(gone)} temporary file(s) of interrupted saves in {folder}")
    return gone


def check_checkpoint(path: str | os.PathLike) -> dict:
    """Load a checkpoint with ``weights_only=True`` and say clearly what is wrong with it if anything is."""
    p = Path(path)
    if p.is_dir():
        found = sorted(f.name for f in p.glob("*.pt"))
        hint = f"it holds {', '.join(found)}" if found else "it holds no .pt file"
        pick = "model.pt" if "model.pt" in found or not found else found[0]
        raise IsADirectoryError(f"checkpoint {p} is a folder, not a checkpoint file ({hint}): pass the file, e.g. "
                                f"--ckpt_path {p / pick}")
    if not p.is_file():
        raise FileNotFoundError(f"checkpoint {p} does not exist: train first (train.json writes it) or pass --ckpt_path")
    if p.stat().st_size == 0:
        raise ValueError(f"checkpoint {p} is empty (0 bytes): it was not written completely; use another checkpoint")
    try:
        return torch.load(str(p), map_location="cpu", weights_only=True)
    except Exception as err:
        cause = f"{type(err).__name__}: {err}"
        if not zipfile.is_zipfile(p):  # torch calls it a weights-only unpickling error and advises weights_only=False
            cause = "it is no zip archive with the directory at its end that torch.save writes"
        raise ValueError(
            f"checkpoint {p} cannot be read ({cause}); it is truncated or corrupt, or not a "
            "PyTorch checkpoint: use another checkpoint or train again"
        ) from err


def check_complete(path: str | os.PathLike) -> None:
    """Refuse a checkpoint file that is truncated or no checkpoint (``check_checkpoint``'s message), cheaply: a zip
    archive with its directory at its end (as ``torch.save`` writes) passes without being loaded; anything else is
    loaded (a checkpoint of the legacy pickle format loads). A path with no file passes: the caller says whether it
    must exist. For what reads a checkpoint without this package's loader (MONAI's ``ckpt_export`` and
    ``onnx_export``, which report a truncated file as an unpickling error)."""
    p = Path(path).expanduser()
    if not p.is_file():
        return
    stat = p.stat()
    seen = (str(p.resolve()), stat.st_size, stat.st_mtime_ns)
    if seen in _COMPLETE:  # a config asks once per option it reads (and a legacy file would be loaded each time)
        return
    if not zipfile.is_zipfile(p):
        check_checkpoint(p)
    _COMPLETE.add(seen)


_COMPLETE: set[tuple[str, int, int]] = set()  # (path, size, mtime) of the files check_complete has passed


#: MONAI's export commands (``monai.bundle.scripts``) and the name each gives its checkpoint file once defaulted
_EXPORTS = {"ckpt_export": "ckpt_file_", "onnx_export": "ckpt_file_", "trt_export": "ckpt_file_",
            "_export": "ckpt_file"}


def exported_file() -> str | None:
    """The checkpoint file (``--ckpt_file``) of the MONAI export command that is building the network in this
    process (``ckpt_export``, ``onnx_export``, ``trt_export``; from the command line or called), else ``None``.

    MONAI's exports take ``--ckpt_file`` out of the arguments before the rest override the config, so the config
    cannot see it: it is read from the export's frame on the stack (a local of ``monai.bundle.scripts``, as MONAI
    1.6 names it; the export tests fail where a MONAI names it otherwise). Where none is found, ``None``: the configs
    then read ``--ckpt_path`` alone."""
    for name, local in monai_command_frames():
        value = local.get(_EXPORTS.get(name, ""))
        if isinstance(value, (str, os.PathLike)):
            return os.fspath(value)
    return None


def export_checkpoint(default: str | os.PathLike) -> str:
    """The configs' ``ckpt_path``: ``default`` (``<ckpt_dir>/model.pt``), but in a MONAI export, the file it exports
    (``--ckpt_file``), so that the network is built with the widths recorded beside that file, and a truncated file
    is refused naming it before MONAI loads it. A ``--ckpt_path`` typed on the command line replaces this.

    Examples::

        >>> export_checkpoint("/runs/r1/model.pt")  # not within an export
        '/runs/r1/model.pt'
    """
    exported = exported_file()
    if exported is not None:
        check_option_names()  # the export's other options, as run's are checked in the configs' initialize
    if exported is None or Path(exported).expanduser().resolve() == Path(default).expanduser().resolve():
        return os.fspath(default)
    logger.info(f"--ckpt_path {exported}: the file given to the export as --ckpt_file (its widths and preprocessing "
                f"are read beside it, not beside {default}); --ckpt_path chooses another")
    return exported


class AtomicCheckpointSaver:
    """Save ``save_dict`` atomically: the latest state every ``save_interval`` epochs (for resuming) and/or
    the network each time the evaluator's key metric improves (``model.pt``).

    Temporary files of saves that a kill interrupted are removed when it is attached. Before ``model.pt`` is
    replaced, the metric it is saved for is recorded in ``best_metric.json`` beside it (write-ahead), so that a run
    killed between ``model.pt`` and the next ``checkpoint_latest.pt`` resumes knowing how good ``model.pt`` is, and no
    worse model replaces it (``BestMetricState(record=...)`` reads it back).

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
        training_options: what the network is trained with (``pixdim``, ``hu_window``, ``channels``), written to
            ``training_options.json`` beside ``key_metric_filename`` each time that is saved (just before it, with
            ``best_metric.json``), so that the file describes the model beside it: a run started with
            ``--overwrite true`` over another model and stopped before its first save leaves that model's file
            (written when training starts, it would pair the old model with the new run's options). Defaults to
            ``None`` (nothing written).
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
        training_options: Mapping[str, Any] | None = None,
    ) -> None:
        self.save_dir = Path(save_dir)
        self.training_options = None if training_options is None else dict(training_options)
        self.save_dict = dict(save_dict)
        self.engine_key = engine_key
        self.save_interval = save_interval
        self.latest_filename = latest_filename
        self.save_key_metric = save_key_metric
        self.key_metric_filename = key_metric_filename
        self.only_rank0 = only_rank0

    def _objects(self) -> Iterator[tuple[str, Any]]:
        """``save_dict``'s objects, a ``DistributedDataParallel`` wrapper replaced by the network it wraps."""
        for k, obj in self.save_dict.items():
            yield k, obj.module if isinstance(obj, torch.nn.parallel.DistributedDataParallel) else obj

    def _state(self) -> dict:
        """``{key: state_dict}``; a single object is saved as its bare state dict (the model-zoo ``model.pt``)."""
        out = {k: obj.state_dict() for k, obj in self._objects()}
        return next(iter(out.values())) if len(out) == 1 else out

    def _rank0(self) -> bool:
        if not self.only_rank0 or not torch.distributed.is_available() or not torch.distributed.is_initialized():
            return True
        return torch.distributed.get_rank() == 0

    def attach(self, engine: Any) -> None:
        from ignite.engine import Events

        if self.engine_key:
            self.save_dict[self.engine_key] = engine
        if self._rank0():
            names = [self.latest_filename] if self.save_interval > 0 else []
            names += [self.key_metric_filename, BEST_METRIC_RECORD] if self.save_key_metric else []
            sweep_temporaries(self.save_dir, names)
        if self.save_interval > 0:
            engine.add_event_handler(Events.EPOCH_COMPLETED(every=self.save_interval), self.save_latest)
        if self.save_key_metric:
            engine.add_event_handler(Events.EPOCH_COMPLETED, self.save_best)

    def _check_finite(self, engine: Any, target: Path) -> None:
        """Refuse to save a network whose weights are no longer finite (training diverged: a NaN or infinite loss
        stepped into them), so that the checkpoint of the last sound epoch is kept and the run stops saying so."""
        for name, module in self._objects():
            if not isinstance(module, torch.nn.Module):
                continue
            bad = [k for k, v in module.state_dict().items() if v.is_floating_point() and not torch.isfinite(v).all()]
            if bad:
                output = getattr(engine.state, "output", None)  # MONAI's: one dict per sample, each with the loss
                first = output[0] if isinstance(output, (list, tuple)) and output else output
                loss = first.get("loss") if isinstance(first, Mapping) else None
                last = f"; the last loss was {float(loss):g}" if isinstance(loss, (torch.Tensor, float)) else ""
                raise FloatingPointError(
                    f"training diverged: {len(bad)} tensor(s) of the {name} are NaN or infinite at epoch "
                    f"{engine.state.epoch} (e.g. {bad[0]}){last}. {target} was not written (it keeps the last sound "
                    "save, if any); lower --learning_rate and train again"
                )

    def save_latest(self, engine: Any) -> None:
        if self._rank0():
            self._check_finite(engine, self.save_dir / self.latest_filename)
            _atomic_save(self._state(), self.save_dir / self.latest_filename)

    def save_best(self, engine: Any) -> None:
        state = engine.state
        if getattr(state, "best_metric_epoch", -1) == state.epoch and self._rank0():
            self._check_finite(engine, self.save_dir / self.key_metric_filename)
            if self.training_options is not None:
                from .training_options import record_training_options  # it imports this module

                record_training_options(self.save_dir, **self.training_options)
            record = {"metric": float(state.best_metric), "epoch": int(state.epoch), "file": self.key_metric_filename}
            atomic_write(self.save_dir / BEST_METRIC_RECORD, lambda f: f.write((json.dumps(record, indent=4) + "\n").encode()))
            _atomic_save(self._state(), self.save_dir / self.key_metric_filename)
            engine.logger.info(f"saved best checkpoint {self.save_dir / self.key_metric_filename} "
                               f"(key metric {state.best_metric:.4f} at epoch {state.epoch})")


#: the metric ``model.pt`` was saved for, written before it (see ``AtomicCheckpointSaver``)
BEST_METRIC_RECORD = "best_metric.json"


class BestMetricState:
    """The best key metric of an evaluator as a checkpointable object, so that a resumed training does not
    overwrite ``model.pt`` with a worse model just because the evaluator forgot its best value.

    Args:
        engine: the evaluator.
        record: ``best_metric.json`` beside ``model.pt`` (see ``AtomicCheckpointSaver``): on loading, a better metric
            recorded there than in the checkpoint (a kill between the two saves) wins. Defaults to ``None``.
    """

    def __init__(self, engine: Any, record: str | os.PathLike | None = None) -> None:
        self.engine = engine
        self.record = Path(record) if record else None

    def state_dict(self) -> dict:
        state = self.engine.state
        return {"best_metric": float(state.best_metric), "best_metric_epoch": int(state.best_metric_epoch)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        best, epoch = float(state["best_metric"]), int(state["best_metric_epoch"])
        if self.record is not None and self.record.is_file():
            try:
                recorded = json.loads(self.record.read_text())
                metric, at = float(recorded["metric"]), int(recorded["epoch"])
            except (ValueError, KeyError, TypeError, OSError) as err:
                raise ValueError(f"{self.record} cannot be read ({err}): remove it to resume") from err
            if metric > best:
                logger.warning(f"{self.record} records a better model.pt ({metric:.4f} at epoch {at}) than the "
                               f"checkpoint being resumed ({best:.4f}): the run was stopped between the two saves; "
                               "keeping the better value, so that no worse model replaces model.pt")
                best, epoch = metric, at
        self.engine.state.best_metric = best
        self.engine.state.best_metric_epoch = epoch


def _tensor_of(state: Any) -> Any:
    """A random generator's state in tensors and numbers only (``weights_only`` checkpoints hold nothing else)."""
    if isinstance(state, np.ndarray):
        return torch.from_numpy(state.astype(np.int64))
    if isinstance(state, tuple):
        return [_tensor_of(s) for s in state]
    return state


class RandomStates:
    """Every random generator a training run draws from, as a checkpointable object: PyTorch's (CPU and CUDA),
    NumPy's and Python's global ones, and the generator of every random transform of ``transform`` (crop centres,
    flips, rotations, intensity changes). Restored with the rest of the checkpoint, a resumed run draws what the
    uninterrupted run would have drawn.

    Args:
        transform: the training transform (a ``Compose``, nested ones included). Defaults to ``None``.
    """

    def __init__(self, transform: Any = None) -> None:
        self.transform = transform

    def _randomized(self) -> Iterator[Any]:
        """Every object with a generator ``R`` in the transform, nested ``Compose``s and the array transforms inside
        dictionary transforms (``RandScaleIntensityd.scaler``) included, in a fixed order."""
        from monai.transforms import Randomizable

        seen: set[int] = set()

        def walk(t: Any) -> Iterator[Any]:
            if id(t) in seen:
                return
            seen.add(id(t))
            if isinstance(getattr(t, "R", None), np.random.RandomState):
                yield t
            for inner in getattr(t, "transforms", ()):
                yield from walk(inner)
            for value in vars(t).values() if hasattr(t, "__dict__") else ():
                if isinstance(value, Randomizable):
                    yield from walk(value)

        if self.transform is not None:
            yield from walk(self.transform)

    def state_dict(self) -> dict:
        py = random.getstate()
        np_state = np.random.get_state()
        out: dict[str, Any] = {
            "torch": torch.get_rng_state(),
            "numpy": _tensor_of(np_state[1:]),
            "python": [py[0], torch.tensor(py[1], dtype=torch.int64), py[2]],
            "transforms": [_tensor_of(t.R.get_state()[1:]) for t in self._randomized()],
        }
        if torch.cuda.is_available():
            out["cuda"] = torch.cuda.get_rng_state_all()
        return out

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        def numpy_state(s: list) -> tuple:
            return ("MT19937", s[0].numpy().astype(np.uint32), int(s[1]), int(s[2]), float(s[3]))

        transforms = list(self._randomized())
        if len(state["transforms"]) != len(transforms):
            raise ValueError(f"the checkpoint holds the random states of {len(state['transforms'])} random transforms, "
                             f"the training pipeline has {len(transforms)}: it was saved by another pipeline")
        torch.set_rng_state(state["torch"])
        if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(state["cuda"])
        np.random.set_state(numpy_state(state["numpy"]))
        version, values, gauss = state["python"]
        random.setstate((version, tuple(int(v) for v in values.tolist()), gauss))
        for t, s in zip(transforms, state["transforms"], strict=True):
            t.R.set_state(numpy_state(s))


def _network_states(content: Any, load_dict: Mapping[str, Any]) -> Iterator[tuple[dict, Mapping]]:
    """For each network of ``load_dict`` that the checkpoint ``content`` holds a state for: (the network's state
    dict, the saved one); a bare state dict (``model.pt``) stands for every key."""
    for key, obj in load_dict.items():
        state = content.get(key, content) if isinstance(content, Mapping) else None
        if isinstance(obj, torch.nn.Module) and isinstance(state, Mapping):
            yield obj.state_dict(), state


def _head_mismatch(content: Any, load_dict: Mapping[str, Any]) -> str:
    """When a checkpoint and a network of ``load_dict`` differ only in which tensors of the network's ``head`` they
    hold (its deep-supervision heads), every other tensor of the same shape, the counts of head tensors in each
    (``"2 head tensors saved, 8 in the network"``); else ``""``."""
    for mine, state in _network_states(content, load_dict):
        own, saved = set(mine), {str(k) for k in state}
        body = [k for k in own & saved if not k.startswith("head.")]
        same_body = all(getattr(state[k], "shape", None) == mine[k].shape for k in body)
        if own != saved and same_body and all(k.startswith("head.") for k in own ^ saved):
            count = sum(k.startswith("head.") for k in saved), sum(k.startswith("head.") for k in own)
            return f"{count[0]} head tensors saved, {count[1]} in the network"
    return ""


def _state_mismatch(content: Any, load_dict: Mapping[str, Any]) -> str:
    """Where a checkpoint and the networks of ``load_dict`` first differ, in words: the first tensor of another
    shape (``"encoder.blocks.0.0.conv.weight is [4, 1, 3, 3, 3] in the checkpoint, [16, 1, 3, 3, 3] in the
    network"``), else the tensors that only one of them has; ``""`` when they fit."""
    for mine, state in _network_states(content, load_dict):
        where = first_shape_mismatch(mine, state)
        if where:
            return where
        extra, lacking = [k for k in state if k not in mine], [k for k in mine if k not in state]
        if extra or lacking:
            parts = [f"{len(extra)} saved tensor(s) the network lacks (e.g. {extra[0]})" if extra else "",
                     f"{len(lacking)} tensor(s) of the network not saved (e.g. {lacking[0]})" if lacking else ""]
            return ", ".join(p for p in parts if p)
    return ""


class SafeCheckpointLoader(CheckpointLoader):
    """MONAI's ``CheckpointLoader`` (``weights_only=True``) whose errors name the file, the problem and the fix.

    With ``enabled=False`` it does nothing (a config can switch resuming on and off with one id);
    ``engine_key`` adds the engine it is attached to into ``load_dict`` (to restore the trainer's epoch).

    Args:
        load_path, load_dict, map_location, strict, ...: as ``CheckpointLoader``.
        enabled: load (``True``) or do nothing. Defaults to ``True``.
        engine_key: add the engine under this key to ``load_dict``. Defaults to ``None``.
        purpose: ``"resume"`` (a training's own latest checkpoint) or ``"weights"`` (a network's weights), for the
            messages. Defaults to ``"weights"``.
        extend_schedule_to: the run's epochs: when the restored cosine schedule was made for another number (a
            finished 2-epoch run resumed with ``--epochs 4``), it is stretched to this many epochs from where it is,
            and the learning rate set to the longer schedule's value at the current epoch (it never climbs back).
            Likewise a run resumed with another ``--learning_rate`` follows it: the schedule's starting rate is the
            one this run was started with (the checkpoint's would silently override what was typed). Both logged.
            Defaults to ``None``.
        optional_keys: entries of ``load_dict`` that a checkpoint may lack (it is then resumed without them, with a
            warning). Defaults to ``("rng",)``.
    """

    def __init__(
        self,
        load_path: str,
        load_dict: dict,
        enabled: bool = True,
        engine_key: str | None = None,
        purpose: str = "weights",
        extend_schedule_to: int | None = None,
        optional_keys: tuple[str, ...] = ("rng",),
        **kwargs: Any,
    ) -> None:
        super().__init__(load_path=load_path, load_dict=dict(load_dict), **kwargs)
        self.enabled = enabled
        self.engine_key = engine_key
        self.purpose = purpose
        self.extend_schedule_to = extend_schedule_to
        self.optional_keys = tuple(optional_keys)

    def attach(self, engine: Any) -> None:
        if self.engine_key:
            self.load_dict[self.engine_key] = engine
        if self.enabled:
            super().attach(engine)

    def __call__(self, engine: Any) -> None:
        path = Path(self.load_path)
        if self.purpose == "resume" and not path.is_file():
            raise FileNotFoundError(
                f"--resume true, but there is nothing to resume: {path} does not exist. Train without --resume, or "
                f"point --ckpt_dir at the models folder of the run to continue"
            )
        content = check_checkpoint(path)
        self._check_epochs_left(content, engine)
        missing = [k for k in self.optional_keys if k in self.load_dict and isinstance(content, Mapping)
                   and k not in content and len(self.load_dict) > 1]
        for key in missing:  # e.g. the random states, which checkpoints of older versions do not hold
            logger.warning(f"{path} holds no {key!r} (saved by an older version): resuming without it")
        kept = {k: self.load_dict.pop(k) for k in missing}
        scheduler = self.load_dict.get("lr_scheduler")
        typed_lrs = list(scheduler.base_lrs) if hasattr(scheduler, "base_lrs") else None  # this run's, before loading
        try:
            super().__call__(engine)
        except ValueError as err:  # a restored object refusing its state (TrainingOptionsState): name the file
            raise ValueError(f"checkpoint {path}: {err}") from None
        except RuntimeError as err:
            if "state_dict" not in str(err) and "size mismatch" not in str(err):
                raise
            first = str(err).strip().splitlines()
            heads = _head_mismatch(content, self.load_dict)
            if heads:
                raise ValueError(f"checkpoint {path} fits the network except its output heads ({heads}): it was "
                                 "trained with other deep-supervision settings. Pass the ones it was trained with, "
                                 "e.g. --deep_supervision false, or its --deep_supr_num") from err
            where = _state_mismatch(content, self.load_dict) or first[0] + " ..."
            raise ValueError(
                f"checkpoint {path} does not fit the network ({where}): it was saved from another network or "
                "other widths. Pass the network_def it was trained with, e.g. --network_def#_target_ "
                "monai_unet_variants.networks.ResUNet or --channels \"[16,32,64,128,256]\""
            ) from err
        finally:
            self.load_dict.update(kept)
        self._follow_command_line(typed_lrs)
        self._follow_epoch_length(engine)

    def _check_epochs_left(self, content: Any, engine: Any) -> None:
        """A resumed run needs epochs left to train: ``--epochs`` below the checkpoint's epoch is refused naming both,
        and the same number is said to train nothing (MONAI's own error names neither the file nor the option)."""
        state = content.get(self.engine_key) if self.purpose == "resume" and isinstance(content, Mapping) else None
        epochs = engine.state.max_epochs
        if not isinstance(state, Mapping) or not state.get("epoch_length") or epochs is None:
            return
        done = int(state.get("iteration", 0)) // int(state["epoch_length"])
        if done > epochs:
            raise ValueError(f"--resume true: {self.load_path} has trained {done} epochs, more than --epochs {epochs}: "
                             f"pass --epochs above {done} to train further, or --overwrite true to start afresh")
        if done == epochs:
            logger.warning(f"--resume true: {self.load_path} has trained all {epochs} epochs; nothing is left to "
                           f"train: pass --epochs above {done} to train further")

    def _follow_epoch_length(self, engine: Any) -> None:
        """A run resumed with other steps per epoch (another ``--batch_size`` or ``--num_samples``, or other training
        cases) takes its own: ignite restores the checkpoint's epoch length, and every later epoch would run that many
        steps over this run's data (half of it, with the batch halved)."""
        if self.purpose != "resume" or not self.engine_key or engine.state.epoch_length is None:
            return
        try:
            steps = len(engine.data_loader)
        except (AttributeError, TypeError):  # no loader, or one without a length: nothing to compare
            return
        saved = engine.state.epoch_length
        if steps == saved:
            return
        engine.state.epoch_length, engine.state.iteration = steps, engine.state.epoch * steps
        logger.warning(f"resuming at epoch {engine.state.epoch} with {steps} steps per epoch: {self.load_path} was "
                       f"trained with {saved} (another --batch_size, --num_samples or other training cases); epochs "
                       f"from here take {steps} steps")

    def _follow_command_line(self, typed_lrs: list[float] | None) -> None:
        """After resuming, the cosine schedule runs as this run's command line says, from where it is: over
        ``extend_schedule_to`` epochs, from the learning rate(s) the run was started with (``typed_lrs``, the
        schedule's ``base_lrs`` before the checkpoint replaced them), each change logged. The learning rate becomes
        the new schedule's value at the current epoch (a longer schedule never climbs back above where it was)."""
        scheduler = self.load_dict.get("lr_scheduler")
        if scheduler is None or not hasattr(scheduler, "T_max"):
            return
        done, old_epochs, old_lrs = scheduler.last_epoch, scheduler.T_max, list(scheduler.base_lrs)
        target = old_epochs if self.extend_schedule_to is None else int(self.extend_schedule_to)
        bases = old_lrs if typed_lrs is None else list(typed_lrs)
        new_rate = any(not math.isclose(a, b, rel_tol=1e-9) for a, b in zip(bases, old_lrs, strict=True))
        if target == old_epochs and not new_rate:
            return
        scheduler.T_max, scheduler.base_lrs = target, bases
        lrs = [scheduler.eta_min + (base - scheduler.eta_min) * (1 + math.cos(math.pi * done / target)) / 2
               for base in bases]
        for group, base, lr in zip(scheduler.optimizer.param_groups, bases, lrs, strict=True):
            group["initial_lr"], group["lr"] = base, lr
        scheduler._last_lr = lrs
        if target != old_epochs:
            logger.warning(f"resuming at epoch {done} with --epochs {target}: the cosine schedule of {self.load_path} "
                           f"was made for {old_epochs} epochs and now runs over {target}")
        if new_rate:
            logger.warning(f"resuming at epoch {done} with --learning_rate {bases[0]:g}: {self.load_path} was trained "
                           f"from {old_lrs[0]:g}; the cosine schedule now runs from {bases[0]:g}")
        schedule = f"the value of a {target}-epoch schedule from {bases[0]:g}"
        logger.warning(f"learning rate {lrs[0]:.3g} at epoch {done} ({schedule})")
