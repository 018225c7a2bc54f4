"""Train every network's bundle on the same data with the same budget and compare them side by side.

    python -m monai_unet_variants.compare --out compare/                       # synthetic sample, small CPU settings
    python -m monai_unet_variants.compare --dataset_dir /data/Task07_Pancreas --epochs 300 \\
        --roi_size 96 --channels 16,32,64,128,256 --device cuda --out compare_msd/

Each bundle runs in its own process (so that peak memory is its own) with the same seed, data split, epochs,
patch size and widths. The table has: validation Dice per class and HD95 (mm) of the final model, parameters,
forward FLOPs per patch, seconds per training epoch, peak memory (GPU: max allocated; CPU: peak resident size
of the process) and sliding-window inference seconds per volume. It is printed, saved as ``results.csv`` and
``results.json``, and the validation Dice of every network against epoch is drawn in ``dice_vs_epoch.png``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["bundle_folders", "compare", "run_one"]

#: the bundles of a source checkout (an installed package has none: pass ``--bundles_dir``)
REPO_BUNDLES = Path(__file__).resolve().parents[1] / "bundles"


def bundle_folders(bundles_dir: str | os.PathLike, names: str = "") -> list[Path]:
    """The chosen bundle folders (all bundles of ``bundles_dir`` when ``names`` is empty).

    Raises:
        SystemExit: ``bundles_dir`` holds no bundle, or a named bundle is missing; the message says which and how
            to point at the folder.
    """
    root = Path(bundles_dir)
    found = sorted(p for p in root.iterdir() if (p / "configs" / "metadata.json").is_file()) if root.is_dir() else []
    if not found:
        raise SystemExit(
            f"compare: no bundles in {root} (a folder holding <name>/configs/metadata.json). The bundles ship in the "
            "source repository's bundles/ folder, not in the installed package: pass --bundles_dir /path/to/bundles."
        )
    if not names:
        return found
    chosen, missing = [], []
    for name in names.split(","):
        path = root / name.strip()
        (chosen if (path / "configs" / "metadata.json").is_file() else missing).append(path)
    if missing:
        raise SystemExit(f"compare: no bundle {', '.join(p.name for p in missing)} in {root}; it holds "
                         f"{', '.join(p.name for p in found)}.")
    return chosen


def _overrides(args: argparse.Namespace, out: Path) -> dict:
    roi = [args.roi_size] * 3
    return {
        "bundle_root": str(out),
        "dataset_dir": args.dataset_dir,
        "epochs": args.epochs,
        "val_interval": args.val_interval,
        "roi_size": roi,
        "num_samples": args.num_samples,
        "batch_size": args.batch_size,
        "learning_rate": args.learning_rate,
        "seed": args.seed,
        "num_workers": 0,
        "device": f"$torch.device({args.device!r})",
        "network_def#channels": [int(c) for c in args.channels.split(",")],
    }


def run_one(bundle_dir: Path, args: argparse.Namespace, out: Path) -> dict:
    """Train and evaluate one bundle in this process; return its figures."""
    import torch
    from ignite.engine import Events
    from monai.bundle import ConfigWorkflow
    from torch.utils.flop_counter import FlopCounterMode

    from monai_unet_variants.bundle import PerCaseMetricsWriter

    workflow = ConfigWorkflow(
        config_file=str(bundle_dir / "configs" / "train.json"),
        meta_file=str(bundle_dir / "configs" / "metadata.json"),
        logging_file=False,
        workflow_type=None,
        **_overrides(args, out),
    )
    workflow.initialize()
    parser = workflow.parser
    network = parser.get_parsed_content("network")
    trainer = parser.get_parsed_content("train#trainer")
    evaluator = parser.get_parsed_content("validate#evaluator")
    device = torch.device(args.device)
    params = sum(p.numel() for p in network.parameters())
    patch = torch.zeros(1, 1, args.roi_size, args.roi_size, args.roi_size, device=device)
    network.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        network(patch)
    flops = counter.get_total_flops()
    network.train()

    epoch_times: list[float] = []
    curve: list[dict] = []
    clock = {"start": 0.0, "last": 0.0}
    # training time of an epoch ends with its last iteration, before the validation run on EPOCH_COMPLETED
    trainer.add_event_handler(Events.EPOCH_STARTED, lambda e: clock.update(start=time.perf_counter()))
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: clock.update(last=time.perf_counter()))
    trainer.add_event_handler(Events.EPOCH_COMPLETED, lambda e: epoch_times.append(clock["last"] - clock["start"]))

    def record(e: Any) -> None:
        curve.append({"epoch": e.state.epoch, **{k: float(v) for k, v in e.state.metrics.items()}})

    evaluator.add_event_handler(Events.COMPLETED, record)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    workflow.run()
    evaluator.remove_event_handler(record, Events.COMPLETED)  # the curve holds the validation runs of training
    # final model on the validation set: per-class Dice and HD95, timed per volume
    writer = PerCaseMetricsWriter(str(out / "final"), space="resampled")  # train.json's validation: the 1 mm grid
    writer.attach(evaluator)
    t0 = time.perf_counter()
    evaluator.run()
    infer_s = (time.perf_counter() - t0) / max(1, len(writer.rows))
    workflow.finalize()
    scores = [k for k, v in writer.rows[0].items() if isinstance(v, float)]  # not the case's name or the grid
    mean = {k: sum(r[k] for r in writer.rows) / len(writer.rows) for k in scores}
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {
        "bundle": bundle_dir.name,
        "network": parser.get_parsed_content("network_def").__class__.__name__,
        **mean,
        "params": params,
        "gflops_per_patch": flops / 1e9,
        "s_per_epoch": sum(epoch_times) / max(1, len(epoch_times)),
        "peak_mib": peak,
        "infer_s_per_volume": infer_s,
        "curve": curve,
    }


COLUMNS = [
    ("bundle", "{:<27}", "bundle"),
    ("dice_pancreas", "{:>10.3f}", "Dice panc"),
    ("dice_tumour", "{:>10.3f}", "Dice tum"),
    ("hd95_pancreas", "{:>10.1f}", "HD95 panc"),
    ("hd95_tumour", "{:>10.1f}", "HD95 tum"),
    ("params", "{:>11,}", "params"),
    ("gflops_per_patch", "{:>8.2f}", "GFLOP"),
    ("s_per_epoch", "{:>9.1f}", "s/epoch"),
    ("peak_mib", "{:>10.0f}", "peak MiB"),
    ("infer_s_per_volume", "{:>10.1f}", "s/volume"),
]


def format_table(rows: Sequence[dict]) -> str:
    """Fixed-width text table; every title is aligned like its column."""
    widths = [len(fmt.format(1)) for _, fmt, _ in COLUMNS]
    head = "".join(t.ljust(w) if k == "bundle" else t.rjust(w) for (k, _, t), w in zip(COLUMNS, widths, strict=True))
    return "\n".join([head] + ["".join(fmt.format(r[k]) for k, fmt, _ in COLUMNS) for r in rows])


def plot_curves(rows: Sequence[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for r in rows:
        pts = [(c["epoch"], c["val_mean_dice"]) for c in r["curve"]]
        if pts:
            ax.plot(*zip(*pts, strict=True), marker="o", label=r["bundle"].replace("_pancreas", ""))
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation mean Dice (pancreas, tumour)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def compare(args: argparse.Namespace) -> list[dict]:
    bundles = bundle_folders(args.bundles_dir, args.bundles)  # before anything is written
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if not args.dataset_dir:
        from monai_unet_variants.data import ensure_sample_data

        args.dataset_dir = str(ensure_sample_data())
    # each bundle runs in a child process with the same arguments and the resolved data folder
    passthrough = [a for a in args.argv if a != "--verbose"] + ["--dataset_dir", args.dataset_dir]
    rows = []
    for i, bundle in enumerate(bundles, start=1):
        print(f"[{i}/{len(bundles)}] {bundle.name} ...", flush=True)
        result = out / bundle.name / "result.json"
        cmd = [sys.executable, "-m", "monai_unet_variants.compare", "--_one", str(bundle), *passthrough]
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL if not args.verbose else None)
        rows.append(json.loads(result.read_text()))
        print(format_table(rows[-1:]).splitlines()[1], flush=True)
    table = format_table(rows)
    print("\n" + table)
    (out / "results.json").write_text(json.dumps({"settings": vars(args), "rows": rows}, indent=2))
    with open(out / "results.csv", "w") as f:
        keys = [k for k, _, _ in COLUMNS]
        f.write(",".join(keys) + "\n")
        for r in rows:
            f.write(",".join(str(r[k]) for k in keys) + "\n")
    title = f"{Path(args.dataset_dir).name}: {args.epochs} epochs, {args.roi_size}^3 patches, {args.device}"
    plot_curves(rows, out / "dice_vs_epoch.png", title)
    print(f"\nwrote {out / 'results.csv'}, {out / 'results.json'} and {out / 'dice_vs_epoch.png'}")
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset_dir", default="", help="MSD Task07 folder (default: the synthetic sample)")
    parser.add_argument("--bundles", default="", help="comma-separated bundle names (default: all in --bundles_dir)")
    parser.add_argument("--bundles_dir", default=str(REPO_BUNDLES),
                        help="folder holding the bundles (default: the source checkout's bundles/, %(default)s)")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--val_interval", type=int, default=2)
    parser.add_argument("--roi_size", type=int, default=48)
    parser.add_argument("--channels", default="8,16,32,64,128")
    parser.add_argument("--batch_size", type=int, default=2)
    parser.add_argument("--num_samples", type=int, default=2)
    parser.add_argument("--learning_rate", type=float, default=0.003)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", default="compare")
    parser.add_argument("--verbose", action="store_true")
    parser.add_argument("--_one", default="", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args._one:
        bundle = Path(args._one)
        out = Path(args.out) / bundle.name
        out.mkdir(parents=True, exist_ok=True)
        result = run_one(bundle, args, out)
        (out / "result.json").write_text(json.dumps(result, indent=2))
        return 0
    args.argv = argv
    os.environ.setdefault("OMP_NUM_THREADS", str(os.cpu_count() or 1))
    compare(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
