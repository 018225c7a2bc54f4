"""The training iteration's bookkeeping without host reads of device values.

On a GPU every read of a device value on the host (``item()``, ``if tensor > 0``, ``float(tensor)``) waits for the
queue to drain: the host stops preparing the next iteration while the device works, and the device then waits for
the host. As MONAI configures it, a training iteration reads back one value per sample and class (``MeanDice``'s
``if y_o > 0`` and ``masked_select``) and the loss (``decollate_batch`` turns it into a Python number for the
console's and TensorBoard's loss lines). The pieces here keep those values on the device:

- ``DecollateOnDevice``: MONAI's per-sample output (a list of dicts, the loss in each, as ``from_engine(["loss"],
  first=True)`` and MONAI's tracking handlers expect), with the loss left a 0-dim tensor where it was computed;
- ``SyncFreeMeanDice``: ``MeanDice``'s value (the same reduction over the same per-sample, per-class scores), the
  scores computed without a branch on a device value and read once, when the epoch's metric is computed;
- ``every_n_iterations``: the console and TensorBoard loss lines every ``--log_interval`` iterations (each line reads
  the loss back once);
- ``host_reads``: every read of a tensor's value on the host while it is active, to find them (the tests and
  ``benchmarks/iteration_output.py`` count with it).
"""

from __future__ import annotations

import contextlib
import traceback
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, NamedTuple

import torch
from monai.handlers import IgniteMetricHandler
from monai.metrics import DiceMetric

from ..options import as_int
from .transforms import channel_argmax

__all__ = ["HOST_READS", "DecollateOnDevice", "HostRead", "SyncFreeDiceMetric", "SyncFreeMeanDice",
           "every_n_iterations", "host_reads", "tracking_follows_log_interval"]

#: the ``torch.Tensor`` methods through which a tensor's value reaches the host (on a GPU each waits for the device)
HOST_READS = ("item", "tolist", "__bool__", "__float__", "__int__", "__index__", "cpu", "numpy", "__array__", "nonzero",
              "any", "all")


def _detached(data: Any) -> Any:
    """``data`` with every tensor in it detached (dicts, lists and tuples followed)."""
    if isinstance(data, torch.Tensor):
        return data.detach()
    if isinstance(data, Mapping):
        return {k: _detached(v) for k, v in data.items()}
    if isinstance(data, (list, tuple)):
        return type(data)(_detached(v) for v in data)
    return data


class DecollateOnDevice:
    """The trainer's batch and output split per sample, as MONAI's ``decollate=True`` does, but with the 0-dim
    tensors (the loss) kept as tensors on their device instead of read back as Python numbers; then
    ``postprocessing`` applied per sample (as MONAI's trainer applies its ``postprocessing``).

    Give the trainer ``decollate=False`` and ``postprocessing=None`` and this handler the postprocessing: it runs at
    ``IterationEvents.MODEL_COMPLETED``, where MONAI's own decollation would, before the metrics and the
    ``ITERATION_COMPLETED`` handlers. Handlers that print the loss read it (``StatsHandler`` calls ``item()``); the
    loss lines every ``--log_interval`` iterations (``every_n_iterations``) keep those reads rare.

    Args:
        postprocessing: a transform of one sample's merged batch and output dict, or ``None``.

    Example::

        handler = DecollateOnDevice(MainOutputd("pred", ref_key="label"))  # a deep-supervision stack's main output
        handler.attach(trainer)  # a SupervisedTrainer(decollate=False, postprocessing=None, ...)
    """

    def __init__(self, postprocessing: Callable | None = None) -> None:
        self.postprocessing = postprocessing

    def attach(self, engine: Any) -> None:
        from monai.engines.utils import IterationEvents

        engine.add_event_handler(IterationEvents.MODEL_COMPLETED, self)

    def __call__(self, engine: Any) -> None:
        from monai.data import decollate_batch
        from monai.engines.utils import engine_apply_transform

        state = engine.state
        if isinstance(state.output, list):
            raise RuntimeError("DecollateOnDevice found the trainer's output decollated already: give the trainer "
                               "decollate=False (MONAI's decollation reads the loss back to the host)")
        if isinstance(state.batch, (list, dict)):
            state.batch = decollate_batch(_detached(state.batch), detach=False)
        if isinstance(state.output, dict):
            state.output = decollate_batch(_detached(state.output), detach=False)
        if self.postprocessing is None:
            return
        if isinstance(state.batch, list) and isinstance(state.output, list):
            for i, (b, o) in enumerate(zip(state.batch, state.output, strict=True)):
                state.batch[i], state.output[i] = engine_apply_transform(b, o, self.postprocessing)
        else:
            state.batch, state.output = engine_apply_transform(state.batch, state.output, self.postprocessing)


class SyncFreeDiceMetric(DiceMetric):
    """MONAI's ``DiceMetric`` with ``ignore_empty`` and ``include_background`` (its other options left at their
    defaults), its scores computed in one pass over the batch: no Python branch on a device value, so no host
    read before ``aggregate()``. The scores are ``DiceMetric``'s: per sample and class ``2 |P ∩ G| / (|P| +
    |G|)`` of the binarized prediction ``P`` and the label ``G``; for a class absent from the label NaN (left out
    of the mean) with ``ignore_empty``, else 1 if nothing is predicted and 0 if something is.

    Args:
        include_background: score channel 0 too.
        reduction: as ``DiceMetric``'s (``"mean"``: over the classes of each sample, then over the samples).
        get_not_nans: as ``DiceMetric``'s.
        ignore_empty: as ``DiceMetric``'s.
        apply_argmax: ``y_pred`` holds class scores (logits or probabilities); each voxel is predicted its
            highest-scoring class (as ``AsDiscrete(argmax=True, to_onehot=C)`` would make it, without the transform's
            per-sample work on the host).

    Inputs: ``y_pred`` one-hot ``(B, C, *spatial)`` (any non-zero value counts as predicted), or class scores with
    ``apply_argmax``; ``y`` one-hot of the same shape or class indices ``(B, 1, *spatial)``.
    """

    def __init__(self, include_background: bool = True, reduction: str = "mean", get_not_nans: bool = False,
                 ignore_empty: bool = True, apply_argmax: bool = False) -> None:
        super().__init__(include_background=include_background, reduction=reduction, get_not_nans=get_not_nans,
                         ignore_empty=ignore_empty)
        self.apply_argmax = apply_argmax

    def _compute_tensor(self, y_pred: torch.Tensor, y: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        if y_pred.ndim < 3:
            raise ValueError(f"y_pred should have at least 3 dimensions (batch, channel, spatial), got {y_pred.ndim}")
        classes = y_pred.shape[1]
        if self.apply_argmax:  # class scores (logits, probabilities): the highest-scoring class of each voxel
            if classes < 2:
                raise ValueError(f"apply_argmax needs class scores of 2 or more classes, got y_pred "
                                 f"{tuple(y_pred.shape)} (one channel: threshold it into a one-hot map instead)")
            y_pred = torch.nn.functional.one_hot(channel_argmax(y_pred, 1, keepdim=False), classes).movedim(-1, 1)
        if y.shape[1] == 1 and classes > 1:  # class indices
            y = torch.nn.functional.one_hot(y[:, 0].long(), classes).movedim(-1, 1)
        if y.shape != y_pred.shape:
            raise ValueError(f"y_pred {tuple(y_pred.shape)} and y {tuple(y.shape)}: expected one-hot maps of one "
                             "shape, or class indices (B, 1, *spatial) for y")
        first = 0 if self.include_background or classes == 1 else 1
        pred = (y_pred[:, first:] != 0).to(torch.float32)
        label = y[:, first:].to(torch.float32)
        dims = tuple(range(2, pred.ndim))
        intersection, labelled, predicted = (label * pred).sum(dims), label.sum(dims), pred.sum(dims)
        dice = 2.0 * intersection / (labelled + predicted)  # NaN where nothing is labelled: not taken
        empty = torch.full_like(dice, float("nan")) if self.ignore_empty else (predicted == 0).to(dice.dtype)
        return torch.where(labelled > 0, dice, empty)


class SyncFreeMeanDice(IgniteMetricHandler):
    """MONAI's ``MeanDice`` handler over ``SyncFreeDiceMetric``: the same value, read back once when the metric
    is computed (the epoch's end) instead of once per sample and class every iteration; gathered across ranks in
    a distributed run as ``MeanDice`` is.

    Args:
        include_background: score channel 0 too.
        reduction: as ``MeanDice``'s.
        apply_argmax: ``y_pred`` holds class scores, see ``SyncFreeDiceMetric``.
        output_transform: ``(y_pred, y)`` from the engine's output, e.g. ``from_engine(["pred", "label"])``.
        save_details: keep the per-sample scores in ``engine.state.metric_details``.

    Example::

        # the trainer's per-sample logits and label indices, scored as MeanDice scores AsDiscrete's one-hot maps
        dice = SyncFreeMeanDice(include_background=False, apply_argmax=True,
                                output_transform=from_engine(["pred", "label"]))
    """

    def __init__(self, include_background: bool = True, reduction: str = "mean", apply_argmax: bool = False,
                 output_transform: Callable = lambda x: x, save_details: bool = True) -> None:
        metric_fn = SyncFreeDiceMetric(include_background=include_background, reduction=reduction,
                                       apply_argmax=apply_argmax)
        super().__init__(metric_fn=metric_fn, output_transform=output_transform, save_details=save_details)


def every_n_iterations(value: Any, name: str = "log_interval") -> bool | Callable[[Any, int], bool]:
    """An ``iteration_log`` for MONAI's ``StatsHandler`` and ``TensorBoardStatsHandler`` from ``--log_interval``
    as typed: ``0`` no iteration lines, ``1`` every iteration, ``n`` every n-th iteration (an event filter).

    Raises:
        ValueError: for anything but a whole number of at least 0, naming the option.

    Examples::

        >>> every_n_iterations(1), every_n_iterations(0)
        (True, False)
        >>> [i for i in range(1, 10) if every_n_iterations(4)(None, i)]
        [4, 8]
    """
    n = as_int(value, name, "[0, inf)")
    if n <= 1:
        return n == 1

    def every(engine: Any, iteration: int) -> bool:
        return iteration % n == 0

    return every


def tracking_follows_log_interval(handlers: Sequence[Any], log_interval: Any) -> bool:
    """Make the per-iteration loss of MONAI's experiment tracking (``--tracking mlflow`` adds an ``MLFlowHandler``
    with ``iteration_log=True``: a loss read back from the device and a metric written every iteration) follow
    ``--log_interval`` as the console and TensorBoard lines do. A handler whose ``iteration_log`` is anything but
    ``True`` (a tracking settings file's own choice) is left as it is; call before the trainer attaches them (its
    ``initialize``). Returns ``True`` (for a config's ``initialize``)."""
    from monai.handlers import MLFlowHandler

    for handler in handlers:
        if isinstance(handler, MLFlowHandler) and handler.iteration_log is True:
            handler.iteration_log = every_n_iterations(log_interval)
    return True


class HostRead(NamedTuple):
    """One read of a tensor's value on the host: the method, the tag ``host_reads``' ``when`` gave it, the stack."""

    method: str
    tag: Any
    stack: traceback.StackSummary

    @property
    def place(self) -> str:
        """``method at file:line`` of the code that called the method."""
        caller = self.stack[-2]
        return f"{self.method} at {caller.filename}:{caller.lineno}"


@contextlib.contextmanager
def host_reads(when: Callable[[], Any] = lambda: True) -> Iterator[list[HostRead]]:
    """Record every read of a tensor's value on the host (``HOST_READS``) made while the context is active and
    ``when()`` returns something other than ``None`` or ``False`` (kept as the read's ``tag``: e.g. the iteration).

    Example::

        with host_reads() as reads:
            trainer.run()
        print(len(reads), [r.place for r in reads][:5])
    """
    reads: list[HostRead] = []
    originals = {name: getattr(torch.Tensor, name) for name in HOST_READS}

    def counted(name: str) -> Callable:
        def read(self: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
            tag = when()
            if tag is not None and tag is not False:
                reads.append(HostRead(name, tag, traceback.extract_stack()))
            return originals[name](self, *args, **kwargs)

        return read

    try:
        for name in HOST_READS:
            setattr(torch.Tensor, name, counted(name))
        yield reads
    finally:
        for name, original in originals.items():
            setattr(torch.Tensor, name, original)
