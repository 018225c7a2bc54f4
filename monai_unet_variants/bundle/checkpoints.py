"""Checkpoints written atomically and read with errors that name the file; the evaluator's best metric as part of
the resumable state."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from monai.handlers import CheckpointLoader

__all__ = ["LATEST_CHECKPOINT", "AtomicCheckpointSaver", "BestMetricState", "SafeCheckpointLoader", "check_checkpoint"]

LATEST_CHECKPOINT = "checkpoint_latest.pt"


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
