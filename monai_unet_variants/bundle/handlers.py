"""Ignite handlers and output transforms of the bundles' training and validation."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from monai.handlers import ValidationHandler

__all__ = ["FinalValidationHandler", "end_distributed", "quiet_other_ranks", "select_class"]


class FinalValidationHandler(ValidationHandler):
    """``ValidationHandler`` that also validates after the last epoch when ``interval`` skipped it.

    Without it a run of 5 epochs with ``val_interval`` 2 ends on an unvalidated model, and a short run (a MONAI
    Label training request of one epoch) never writes ``model.pt``. Takes ``ValidationHandler``'s arguments. Says
    once, at the start, on which grid validation scores (the preprocessed one, unlike ``evaluate.json``).
    """

    def attach(self, engine: Any) -> None:
        from ignite.engine import Events

        super().attach(engine)
        engine.add_event_handler(Events.STARTED, self._say_grid)
        engine.add_event_handler(Events.COMPLETED, self._final)

    def _say_grid(self, engine: Any) -> None:
        engine.logger.info("validation Dice is scored on the preprocessed grid (resampled to pixdim, cropped to the "
                           "body), so it differs slightly from evaluate.json's, which scores each case on its own grid")

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


def quiet_other_ranks(rank: int) -> bool:
    """In a distributed run, let only rank 0 speak: ranks above 0 log warnings and errors only (the engines'
    "Got new best metric", epoch summaries and every INFO line stay with rank 0, which reports the reduced
    metrics). Their writing handlers are switched off in ``multi_gpu_train.json`` (``_disabled_``). Returns
    whether this rank was quietened.
    """
    if int(rank) <= 0:
        return False
    for name in ("", "ignite", "monai", "monai_unet_variants", "py.warnings"):
        logging.getLogger(name).setLevel(logging.WARNING)
    for name in list(logging.root.manager.loggerDict):  # engine loggers created before this point
        if name.startswith(("ignite.", "monai.")):
            logging.getLogger(name).setLevel(logging.WARNING)
    return True


def end_distributed() -> bool:
    """End a distributed run: every rank waits for the others (``barrier``), then the process group is destroyed, so
    that no rank tears its connections down while another still has collective work in flight (a gloo rank that
    did so was seen to abort at exit once). Returns whether there was a process group to end."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return False
    dist.barrier()
    dist.destroy_process_group()
    return True
