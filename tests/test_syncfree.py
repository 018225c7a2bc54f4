"""The training iteration's bookkeeping without host reads (``monai_unet_variants.bundle.syncfree``): the same
values as MONAI's pieces, and a flagship training iteration that reads nothing back between the optimizer step and
the next batch."""

from __future__ import annotations

import collections
import threading

import pytest
import torch

from conftest import flagship_trainer
from monai_unet_variants.bundle import (
    HOST_READS,
    DecollateOnDevice,
    SyncFreeDiceMetric,
    SyncFreeMeanDice,
    every_n_iterations,
    host_reads,
    tracking_follows_log_interval,
)


def _maps(seed: int, batch: int, classes: int, shape: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """A one-hot prediction and label; class 1 absent from sample 0's label and class 2 from its prediction, and
    class 1 absent from both in sample 1, so that every empty case of Dice is scored."""
    g = torch.Generator().manual_seed(seed)
    pred = torch.randint(0, classes, (batch, *shape), generator=g)
    label = torch.randint(0, classes, (batch, *shape), generator=g)
    label[0][label[0] == 1] = 0
    pred[0][pred[0] == 2] = 0
    pred[1][pred[1] == 1], label[1][label[1] == 1] = 0, 0
    onehot = lambda x: torch.nn.functional.one_hot(x, classes).movedim(-1, 1).float()  # noqa: E731
    return onehot(pred), onehot(label)


@pytest.mark.parametrize("shape", [(12, 10), (8, 6, 5)], ids=["2d", "3d"])
@pytest.mark.parametrize("include_background", [False, True])
@pytest.mark.parametrize("ignore_empty", [True, False])
def test_sync_free_dice_scores_as_monais_dice(shape, include_background, ignore_empty):
    from monai.metrics import DiceMetric

    pred, label = _maps(0, 3, 3, shape)
    ours = SyncFreeDiceMetric(include_background=include_background, ignore_empty=ignore_empty)
    theirs = DiceMetric(include_background=include_background, ignore_empty=ignore_empty)
    expected = theirs(pred, label)
    assert expected.isnan().any() == ignore_empty  # the empty classes are in the data
    torch.testing.assert_close(ours(pred, label), expected, equal_nan=True)
    torch.testing.assert_close(ours(pred, label.argmax(1, keepdim=True)), expected, equal_nan=True)  # indices
    torch.testing.assert_close(ours.aggregate(), theirs.aggregate())
    scores = pred * 2.0 + torch.rand(pred.shape, generator=torch.Generator().manual_seed(1))  # argmax: pred's class
    argmax = SyncFreeDiceMetric(include_background=include_background, ignore_empty=ignore_empty, apply_argmax=True)
    torch.testing.assert_close(argmax(scores, label.argmax(1, keepdim=True)), expected, equal_nan=True)
    with pytest.raises(ValueError, match="one-hot maps of one shape"):
        ours(pred, label[:, :2])
    with pytest.raises(ValueError, match="apply_argmax needs class scores of 2 or more classes"):
        argmax(scores[:, :1], label[:, :1])  # a sigmoid output: its argmax would predict the class everywhere


def test_sync_free_mean_dice_is_monais_mean_dice_over_an_epoch():
    """Per-sample outputs (as the trainer's decollated output) over three iterations: the same epoch value."""
    from ignite.engine import Engine
    from monai.handlers import MeanDice, from_engine

    batches = [_maps(seed, 2, 3, (9, 7, 6)) for seed in range(3)]

    def step(engine, batch):
        return [{"pred": p, "label": g} for p, g in zip(*batch, strict=True)]

    values = {}
    for name, handler in (("ours", SyncFreeMeanDice), ("monai", MeanDice)):
        engine = Engine(step)
        handler(include_background=False, output_transform=from_engine(["pred", "label"])).attach(engine, name)
        values[name] = engine.run(batches, max_epochs=1).metrics[name]
    assert isinstance(values["ours"], float) and values["ours"] == pytest.approx(values["monai"], abs=1e-6)
    assert 0.1 < values["ours"] < 0.6  # random maps of three classes: a real mean, not an empty one


def test_decollate_on_device_splits_per_sample_and_keeps_the_loss_a_tensor():
    from monai.engines.utils import IterationEvents
    from monai.transforms import AsDiscreted

    class State:
        pass

    class Engine:
        state = State()

        def add_event_handler(self, event, handler):
            self.event, self.handler = event, handler

    engine = Engine()
    pred = torch.randn(2, 3, 4, 4, requires_grad=True)
    loss = (pred ** 2).mean()
    engine.state.batch = {"image": torch.rand(2, 1, 4, 4), "label": torch.randint(0, 3, (2, 1, 4, 4)).float()}
    engine.state.output = {"image": engine.state.batch["image"], "label": engine.state.batch["label"], "pred": pred,
                           "loss": loss}
    handler = DecollateOnDevice(AsDiscreted(keys=["pred", "label"], argmax=[True, False], to_onehot=3))
    handler.attach(engine)
    assert engine.event == IterationEvents.MODEL_COMPLETED and engine.handler is handler
    handler(engine)
    out = engine.state.output
    assert isinstance(out, list) and len(out) == 2 and len(engine.state.batch) == 2
    for i, item in enumerate(out):
        assert isinstance(item["loss"], torch.Tensor) and item["loss"].ndim == 0 and not item["loss"].requires_grad
        assert item["loss"] == loss.detach()
        assert item["pred"].shape == (3, 4, 4) and not item["pred"].requires_grad
        assert torch.equal(item["pred"].argmax(0), pred[i].detach().argmax(0))  # postprocessed: one-hot
        assert torch.equal(item["label"].argmax(0), engine.state.batch[i]["label"][0].long())
    with pytest.raises(RuntimeError, match="decollate=False"):
        handler(engine)  # the output decollated already (MONAI's decollation left on)


def test_every_n_iterations_means_what_is_typed():
    assert every_n_iterations(1) is True and every_n_iterations(0) is False
    every3 = every_n_iterations(3)
    assert [i for i in range(1, 10) if every3(None, i)] == [3, 6, 9]
    for bad in (-1, 2.5, "x", True):
        with pytest.raises(ValueError, match="--log_interval must be a whole number"):
            every_n_iterations(bad)


def test_tracking_loss_follows_the_log_interval(tmp_path):
    """``--tracking mlflow`` adds MONAI's MLFlowHandler logging the loss every iteration (a read-back each): it
    follows ``--log_interval`` as the console lines do; a tracking file's own ``iteration_log`` stays."""
    pytest.importorskip("mlflow")
    from ignite.engine import Engine
    from monai.handlers import MLFlowHandler, StatsHandler

    import mlflow

    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    for typed, steps in [(3, [3, 6, 9]), (1, list(range(1, 11))), (0, [])]:
        default = MLFlowHandler(tracking_uri=uri, experiment_name=f"every{typed}", tag_name="train_loss",
                                output_transform=lambda out: out)
        own = MLFlowHandler(tracking_uri=uri, iteration_log=False)
        other = StatsHandler(iteration_log=True)
        assert tracking_follows_log_interval([default, own, other], typed) is True
        assert own.iteration_log is False and other.iteration_log is True
        engine = Engine(lambda e, b: 0.5)
        default.attach(engine)
        engine.run([0] * 10, max_epochs=1)
        client = mlflow.tracking.MlflowClient(tracking_uri=uri)
        [run] = client.search_runs([client.get_experiment_by_name(f"every{typed}").experiment_id])
        history = client.get_metric_history(run.info.run_id, "train_loss")
        assert sorted(m.step for m in history) == steps, typed


def test_flagship_training_reads_nothing_back_but_its_loss_lines(tmp_path, sample):
    """The flagship's training iterations, counted from the end of the backward pass to the last handler of the
    iteration (the optimizer's own step counter left out): no tensor value is read on the host (MONAI's ``MeanDice``
    and decollation read five per iteration here) except the loss, by the console and TensorBoard lines, on every
    ``--log_interval``-th iteration only."""
    from ignite.engine import Events
    from monai.engines.utils import IterationEvents

    workflow, trainer = flagship_trainer(tmp_path, sample, log_interval=3)
    main, counting = threading.get_ident(), {"on": False}
    trainer.add_event_handler(IterationEvents.BACKWARD_COMPLETED, lambda _: counting.update(on=True))
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda _: counting.update(on=False))  # the last handler
    with host_reads(lambda: counting["on"] and threading.get_ident() == main and trainer.state.iteration) as found:
        workflow.run()
    reads = collections.defaultdict(list)
    for read in found:
        if not any("/torch/optim/" in frame.filename for frame in read.stack):
            reads[read.tag].append(read.place)
    iterations = trainer.state.iteration
    assert iterations >= 4 and trainer.state.metrics["train_mean_dice"] >= 0  # the training Dice is still there
    lines = {i for i in range(1, iterations + 1) if i % 3 == 0}
    assert {i: r for i, r in reads.items() if i not in lines} == {}
    for i in lines:  # the console's and TensorBoard's loss lines, one read each
        assert len(reads[i]) == 2 and all(r.startswith("item at ") for r in reads[i]), reads[i]


def test_host_reads_records_reads_while_asked_and_restores_the_methods():
    before = {name: getattr(torch.Tensor, name) for name in HOST_READS}
    x = torch.tensor([1.5, 2.0])
    tag = {"value": "first"}
    with host_reads(lambda: tag["value"]) as reads:
        x.sum().item()
        tag["value"] = None
        x.tolist()
        tag["value"] = 7
        bool(x.any())
    x.sum().item()  # after the context: not recorded
    assert [(r.method, r.tag) for r in reads] == [("item", "first"), ("any", 7), ("__bool__", 7)]
    assert reads[0].place == f"item at {__file__}:{reads[0].stack[-2].lineno}"
    assert all(getattr(torch.Tensor, name) is method for name, method in before.items())
