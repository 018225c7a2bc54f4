"""A training run's history, epoch by epoch, as a table and a picture to look at without starting TensorBoard."""

from __future__ import annotations

import csv
import io
import logging
import math
import time
from pathlib import Path
from typing import Any

from .checkpoints import atomic_write

__all__ = ["TrainingHistory"]

logger = logging.getLogger("monai_unet_variants.bundle")


class TrainingHistory:
    """Write ``training_history.csv`` (epoch, mean training loss, learning rate, each validation metric) and
    ``training_curves.png`` (the loss, and the validation metrics with the best epoch marked) into ``output_dir``,
    each file complete or absent (``atomic_write``): the table after every epoch and every validation, the picture
    after the first epoch, then at most every ``redraw_s`` seconds and when training ends (drawing takes ~0.2 s: on a
    GPU, where an epoch of a small data set takes about a second, redrawing every epoch would be a visible share).

    A resumed run keeps the rows of the epochs its checkpoint holds and goes on from there; a fresh run starts a new
    table. Without matplotlib (a model-zoo environment, say) the picture is left out, said once; a file that cannot
    be written stops the run naming it, as every output of the bundles does.

    Args:
        output_dir: the folder of the two files (the bundle's ``output_dir``).
        validator: the evaluator whose metrics each validation adds to the row of the epoch. Defaults to ``None``.
        optimizer: the optimizer whose learning rate (first parameter group, as the epoch starts) each row records.
            Defaults to ``None``.
        key_metric: the metric whose best epoch the picture marks. Defaults to ``"val_mean_dice"``.
        enabled: attach (``True``) or do nothing (other ranks of a distributed run). Defaults to ``True``.
        table, picture: the file names. Default to ``training_history.csv`` and ``training_curves.png``.
        redraw_s: the least time between two drawings of the picture during training. Defaults to 30 s.

    Example::

        history = TrainingHistory("eval", validator=evaluator, optimizer=optimizer)
        history.attach(trainer)  # eval/training_history.csv and eval/training_curves.png after each epoch
    """

    def __init__(self, output_dir: str, validator: Any = None, optimizer: Any = None,
                 key_metric: str = "val_mean_dice", enabled: bool = True, table: str = "training_history.csv",
                 picture: str = "training_curves.png", redraw_s: float = 30.0) -> None:
        self.folder = Path(output_dir)
        self.validator, self.optimizer = validator, optimizer
        self.key_metric, self.enabled = key_metric, bool(enabled)
        self.table, self.picture = self.folder / table, self.folder / picture
        self.rows: dict[int, dict[str, float]] = {}
        self._loss_sum: Any = 0.0
        self._loss_count = 0
        self._lr: float | None = None
        self._written = 0  # the last epoch whose end wrote the files
        self._plots = True
        self.redraw_s = float(redraw_s)
        self._drawn_at: float | None = None  # time.monotonic() of the last drawing

    def attach(self, trainer: Any) -> None:
        from ignite.engine import Events

        if not self.enabled:
            return
        trainer.add_event_handler(Events.STARTED, self._start)
        trainer.add_event_handler(Events.EPOCH_STARTED, self._start_epoch)
        trainer.add_event_handler(Events.ITERATION_COMPLETED, self._add_loss)
        trainer.add_event_handler(Events.EPOCH_COMPLETED, self._end_epoch)
        trainer.add_event_handler(Events.COMPLETED, lambda _: self._write(draw=True))  # after the last validation
        if self.validator is not None:
            self.validator.add_event_handler(Events.COMPLETED, lambda _: self._add_metrics(trainer))

    def _start(self, trainer: Any) -> None:
        """A resumed run (its checkpoint restored before this handler, at the same event) reads back its rows."""
        self.rows.clear()
        self._drawn_at = None
        done = self._written = trainer.state.epoch  # a resumed run's table on disk holds its epochs
        if done and self.table.is_file():
            with open(self.table, newline="") as f:
                for row in csv.DictReader(f):
                    epoch = int(row.pop("epoch"))
                    if epoch <= done:
                        self.rows[epoch] = {k: float(v) for k, v in row.items() if v not in ("", None)}

    def _start_epoch(self, trainer: Any) -> None:
        """The epoch's learning rate, before the schedule steps at its end."""
        self._loss_sum, self._loss_count = 0.0, 0
        if self.optimizer is not None:
            self._lr = float(self.optimizer.param_groups[0]["lr"])

    def _add_loss(self, trainer: Any) -> None:
        output = trainer.state.output  # a dict, or one per item when decollated (each holding the batch's loss)
        loss = (output[0] if isinstance(output, list) else output)["loss"]
        # summed where it lives (no host sync per step on a GPU), read once at the epoch's end
        self._loss_sum = self._loss_sum + (loss.detach() if hasattr(loss, "detach") else loss)
        self._loss_count += 1

    def _end_epoch(self, trainer: Any) -> None:
        row = self.rows.setdefault(trainer.state.epoch, {})
        mean = float(self._loss_sum) / self._loss_count if self._loss_count else math.nan
        if math.isfinite(mean):  # a diverged epoch's loss stays out of the table (the checkpoint saver stops it)
            row["loss"] = mean
        if self._lr is not None:
            row["learning_rate"] = self._lr
        self._write()
        self._written = trainer.state.epoch

    def _add_metrics(self, trainer: Any) -> None:
        row = self.rows.setdefault(trainer.state.epoch, {})
        row.update({k: float(v) for k, v in self.validator.state.metrics.items() if isinstance(v, (int, float))})
        if self._written == trainer.state.epoch:  # a validation after the epoch's end (the last one): write again
            self._write()  # (one during the epoch's end is written with its row, once)

    def _columns(self) -> list[str]:
        names = [k for row in self.rows.values() for k in row]
        return ["epoch"] + list(dict.fromkeys(names))

    def _write(self, draw: bool = False) -> None:
        """The table; the picture too when ``draw``, when none was drawn yet or ``redraw_s`` has passed."""
        columns = self._columns()
        text = io.StringIO(newline="")
        writer = csv.DictWriter(text, fieldnames=columns)
        writer.writeheader()
        for epoch in sorted(self.rows):
            writer.writerow({"epoch": epoch, **{k: f"{v:.6g}" for k, v in self.rows[epoch].items()}})
        atomic_write(self.table, lambda f: f.write(text.getvalue().encode()))
        due = self._drawn_at is None or time.monotonic() - self._drawn_at >= self.redraw_s
        if self._plots and self.rows and (draw or due):
            self._draw(columns[1:])
            self._drawn_at = time.monotonic()

    def _draw(self, columns: list[str]) -> None:
        from ..visualize import pyplot, save_figure

        plt = pyplot()
        if plt is None:
            self._plots = False
            logger.warning(f"no {self.picture.name}: matplotlib is not installed (pip install matplotlib); "
                           f"{self.table.name} holds the same numbers")
            return
        epochs = sorted(self.rows)
        metrics = [c for c in columns if c not in ("loss", "learning_rate")]
        fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
        losses = [(e, self.rows[e]["loss"]) for e in epochs if "loss" in self.rows[e]]
        if losses:
            left.plot(*zip(*losses, strict=True), marker=".", color="tab:red")
        left.set(title="training loss (mean per epoch)", xlabel="epoch", ylabel="loss")
        for name in metrics:
            points = [(e, self.rows[e][name]) for e in epochs if name in self.rows[e]]
            right.plot(*zip(*points, strict=True), marker="o", label=name)
            if name == self.key_metric:
                best = max(points, key=lambda p: p[1])
                right.scatter(*best, s=160, marker="*", color="gold", edgecolor="black", zorder=3,
                              label=f"best: {best[1]:.3f} at epoch {best[0]}")
        right.set(title="validation", xlabel="epoch", ylabel="Dice", ylim=(0, 1))
        if metrics:
            right.legend(loc="upper left", fontsize=8)  # Dice rises: the early epochs leave that corner free
        for ax in (left, right):
            ax.grid(alpha=0.3)
            ax.xaxis.get_major_locator().set_params(integer=True)
        fig.tight_layout()
        save_figure(fig, self.picture)
