"""Host time of a training iteration's output bookkeeping: the flagship's pieces against MONAI's own, in one run.

After the optimizer step a MONAI trainer splits its output per sample (``decollate=True``), runs the training
postprocessing on each sample (the flagship's: main output, softmax, argmax, one-hot of prediction and label) and
updates the training metric (``MeanDice``). The bundles now split with ``DecollateOnDevice`` (the loss left a
tensor), keep only the main output and score the logits in ``SyncFreeMeanDice(apply_argmax=True)``. This measures
the host's time for each way on the same outputs: on a GPU, host time spent here (and every read of a device value,
which waits for the queue) is time the next step is not being launched. Also counted: the reads of tensor values
each way makes per iteration.

    python benchmarks/iteration_output.py                       # CPU, 2 x 3 x 96^3 outputs
    python benchmarks/iteration_output.py --device cuda --size 96
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def ways(train_json: Path) -> dict[str, tuple[Callable[[Any], None], Any]]:
    """Each way's bookkeeping (split + postprocessing) and its metric, built from the flagship's config as it is and
    as MONAI's defaults were in it."""
    from monai.bundle import ConfigParser
    from monai.engines.utils import engine_apply_transform
    from monai.handlers import MeanDice, from_engine
    from monai.transforms import Decollated

    from monai_unet_variants.bundle import DecollateOnDevice

    parser = ConfigParser()
    parser.read_config(str(train_json))
    full = parser.get_parsed_content("validate#postprocessing")  # main output, softmax, argmax, one-hot

    def monai(engine: Any) -> None:
        split = Decollated(keys=None, detach=True)
        engine.state.batch, engine.state.output = split(engine.state.batch), split(engine.state.output)
        for i, (b, o) in enumerate(zip(engine.state.batch, engine.state.output, strict=True)):
            engine.state.batch[i], engine.state.output[i] = engine_apply_transform(b, o, full)

    monai_dice = MeanDice(include_background=False, output_transform=from_engine(["pred", "label"]))
    return {
        "MONAI (decollate, postprocessing, MeanDice)": (monai, monai_dice),
        "bundles (DecollateOnDevice, SyncFreeMeanDice)": (
            DecollateOnDevice(parser.get_parsed_content("train#postprocessing")),
            parser.get_parsed_content("train#key_metric#train_mean_dice")),
    }


def outputs(batch: int, size: int, device: torch.device, seed: int) -> tuple[dict, dict]:
    """A trainer's batch and output after its step: MetaTensor image and label, logits, the loss."""
    from monai.data import MetaTensor

    g = torch.Generator(device=device).manual_seed(seed)
    shape = (batch, 1, size, size, size)
    image = MetaTensor(torch.rand(shape, generator=g, device=device))
    label = MetaTensor(torch.randint(0, 3, shape, generator=g, device=device).float())
    logits = torch.randn((batch, 3, size, size, size), generator=g, device=device, requires_grad=True)
    loss = logits.square().mean()
    loss.backward()
    return {"image": image, "label": label}, {"image": image, "label": label, "pred": MetaTensor(logits), "loss": loss}


def measure(way: Callable[[Any], None], metric: Any, args: argparse.Namespace, device: torch.device) -> dict:
    """Median host time per iteration (the device's work is waited for after the timing), reads per iteration
    (counted in the warm-up iterations: recording a read's stack costs time), and the epoch's metric value."""
    from ignite.engine import Engine

    from monai_unet_variants.bundle import host_reads

    metric.attach(Engine(lambda e, b: None), "dice")  # as the trainer attaches it; updated by hand below
    metric.reset()
    times, reads = [], 0
    for i in range(args.warmup + args.repeats):
        batch, output = outputs(args.batch, args.size, device, seed=i)
        engine = SimpleNamespace(state=SimpleNamespace(batch=batch, output=output))  # what the bookkeeping touches
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        counting = host_reads() if i < args.warmup else contextlib.nullcontext([])  # the timed ones run plain
        with counting as found:
            start = time.perf_counter()
            way(engine)
            metric.iteration_completed(engine)
            host = time.perf_counter() - start
        reads += len(found)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if i >= args.warmup:
            times.append(host)
    per_iteration = reads / args.warmup
    return {"host_ms": 1000 * statistics.median(times), "reads": per_iteration, "dice": float(metric.compute())}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--size", type=int, default=96, help="the patch's edge (voxels)")
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3, help="untimed iterations first, whose reads are counted (>= 1)")
    p.add_argument("--train_json", default=str(REPO / "bundles" / "attunet_pancreas" / "configs" / "train.json"))
    args = p.parse_args(argv)
    if args.warmup < 1:
        p.error("--warmup must be 1 or more: the reads are counted in the warm-up iterations")
    device = torch.device(args.device)
    results = {name: measure(way, metric, args, device) for name, (way, metric) in ways(Path(args.train_json)).items()}
    print(f"output bookkeeping of one training iteration, batch {args.batch} x 3 classes x {args.size}^3, {device}, "
          f"median of {args.repeats}")
    for name, r in results.items():
        print(f"  {name:48s} host {r['host_ms']:8.2f} ms   reads/iteration {r['reads']:5.1f}   Dice {r['dice']:.4f}")
    (monai, ours) = results.values()
    print(f"  host time: x{ours['host_ms'] / monai['host_ms']:.2f} of MONAI's; "
          f"the same Dice: {abs(ours['dice'] - monai['dice']) < 1e-5}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
