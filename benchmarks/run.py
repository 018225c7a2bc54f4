"""Benchmark every network of the package against MONAI's own networks, in one run.

    python benchmarks/run.py                                  # CPU: 2D 2x1x256^2 and 3D 2x1x96^3, bundle widths
    python benchmarks/run.py --size3d 64 --batch 1            # a smaller machine
    python benchmarks/run.py --device cuda                    # GPU, with AMP (fp16)
    python benchmarks/run.py --smoke --out /tmp/bench         # tiny sizes: checks that everything runs

For every network in 2D and 3D (each case in its own subprocess, so that peak memory is its own) it measures
parameters, FLOPs (``torch.utils.flop_counter``) of the forward and of forward+backward, the median forward time
(eval mode, no gradients) and forward+backward time (train mode) after warm-up, and the peak memory of one
training step (GPU: ``torch.cuda.max_memory_allocated``; CPU: the rise of the process's peak resident size,
reset before the step through ``/proc/self/clear_refs``, read before the timings with freed memory returned to
the kernel so that resident size follows live memory). Timings run with
``monai_unet_variants.runtime.reuse_freed_memory()`` on, as in the bundles (the ``no_reuse`` option: off).
The same figures are taken for MONAI's ``UNet``
(``num_res_units=2``), ``BasicUNet`` and ``AttentionUnet`` at the same widths, and every network gets ratios
against them: time, and time per FLOP against ``UNet`` (``t/F``: 1.0 means as efficient as MONAI's UNet).

Efficiency (``eff``): the network's achieved forward+backward FLOP/s divided by the FLOP/s of one large 3D
convolution (64 -> 64 channels, 3^3 kernel) measured in the same run with the same precision: the machine's
practical roof, so the figure compares across machines.

Further sections: attention gates at the coarse grid (the paper's) against gates at skip resolution; activation
checkpointing of the 3D Attention R2U-Net (memory saved, time paid); optional trials (``--options``) of
``torch.compile``, channels-last memory format for the whole network, AMP (bf16 on CPU), ``no_reuse`` (freed
memory goes back to the kernel at once, 128 KiB malloc thresholds), ``no_narrow`` (narrow convolutions in
channels-first layout) and ``cudnn_benchmark`` (cuDNN picks its algorithms by timing them; GPU); sliding-window
inference throughput of the flagship bundle's inferer on a 512x512x128 volume; the flagship bundle's training
throughput and its share of step time spent waiting for data. Results: a table on stdout, ``results.json`` and
``results.csv`` in ``--out``.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
FLAGSHIP = REPO / "bundles" / "attunet_pancreas"
MONAI_NETS = ("monai_unet", "monai_basicunet", "monai_attentionunet")
# variants of a network measured as extra rows: name -> (network, keyword overrides)
VARIANTS: dict[str, tuple[str, dict]] = {
    "attention_unet+same": ("attention_unet", {"attention": "same"}),
    "attention_r2unet+ckpt": ("attention_r2unet", {"checkpointing": True}),
}
OPTIONS = ("compile", "channels_last", "amp", "no_reuse", "no_narrow", "cudnn_benchmark")


# ----------------------------------------------------------------------------------------------- building


def build(name: str, spatial_dims: int, channels: Sequence[int], norm: Any) -> Any:
    """One network at the given widths: ours through the registry, MONAI's with matching arguments."""
    from monai.networks import nets

    from monai_unet_variants import create_network

    common = dict(spatial_dims=spatial_dims, in_channels=1, out_channels=3)
    strides = (2,) * (len(channels) - 1)
    if name == "monai_unet":
        return nets.UNet(**common, channels=channels, strides=strides, num_res_units=2, act="relu", norm=norm)
    if name == "monai_basicunet":
        if len(channels) != 5:
            raise ValueError("MONAI's BasicUNet has five levels: give five --channels")
        return nets.BasicUNet(**common, features=(*channels, channels[0]), act="relu", norm=norm)
    if name == "monai_attentionunet":  # batch norm is built in; it takes no norm argument
        return nets.AttentionUnet(**common, channels=channels, strides=strides)
    network, overrides = VARIANTS.get(name, (name, {}))
    return create_network(network, **common, channels=channels, strides=strides, act="relu", norm=norm,
                          dropout=0.0, **overrides)


# ---------------------------------------------------------------------------------------------- measuring


def _rss_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        return int(re.search(rf"{field}:\s+(\d+)", f.read()).group(1))


class PeakMemory:
    """Peak memory (MiB) above the level at entry: CUDA allocator or the process's resident size."""

    def __init__(self, device: Any) -> None:
        self.cuda = device.type == "cuda"
        self.mib = 0.0

    def __enter__(self) -> PeakMemory:
        import torch

        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
        else:
            with open("/proc/self/clear_refs", "w") as f:  # resets VmHWM to the current resident size
                f.write("5")
            self.base = _rss_kib("VmRSS") * 1024
        return self

    def __exit__(self, *exc: Any) -> None:
        import torch

        if self.cuda:
            torch.cuda.synchronize()
            peak = torch.cuda.max_memory_allocated()
        else:
            peak = _rss_kib("VmHWM") * 1024
        self.mib = (peak - self.base) / 2**20


def median_seconds(fn: Callable[[], Any], device: Any, warmup: int, repeats: int) -> float:
    import torch

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        sync()
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def count_flops(fn: Callable[[], Any]) -> int:
    """FLOPs of one call of ``fn`` (``torch.utils.flop_counter``: convolutions and matrix products)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def autocast(device: Any, amp: bool) -> Any:
    import torch

    dtype = torch.float16 if device.type == "cuda" else torch.bfloat16
    return torch.autocast(device.type, dtype=dtype, enabled=amp)


def process_settings(case: dict) -> None:
    """Apply a case's process-wide settings before it runs: memory reuse (``reuse_freed_memory``; the
    ``no_reuse`` option returns freed memory to the kernel at once instead) and the channels-last layout of narrow
    convolutions (``layers.NARROW_CHANNELS_LAST``, switched off by ``no_narrow``); ``cudnn_benchmark`` lets cuDNN time
    its algorithms for each shape and keep the fastest (GPU)."""
    from monai_unet_variants.networks.blocks import layers
    from monai_unet_variants.runtime import reuse_freed_memory

    opts = case.get("options", {})
    # a network case reads its peak memory first and turns reuse on itself afterwards (see measure_case)
    reuse_freed_memory(case["kind"] != "network" and not opts.get("no_reuse"))
    layers.NARROW_CHANNELS_LAST = not opts.get("no_narrow")
    import torch

    torch.backends.cudnn.benchmark = bool(opts.get("cudnn_benchmark"))  # reset for the next case in-process


def measure_case(case: dict) -> dict:
    """Everything about one network in one configuration (runs in a fresh process)."""
    import torch

    from monai_unet_variants.runtime import reuse_freed_memory

    torch.manual_seed(0)
    device = torch.device(case["device"])
    dims, size, batch = case["spatial_dims"], case["size"], case["batch"]
    opts = case.get("options", {})
    amp = case["amp"] or opts.get("amp", False)
    net = build(case["network"], dims, case["channels"], case["norm"]).to(device)
    x = torch.randn(batch, 1, *([size] * dims), device=device)
    if opts.get("channels_last"):
        fmt = torch.channels_last if dims == 2 else torch.channels_last_3d
        net, x = net.to(memory_format=fmt), x.contiguous(memory_format=fmt)
    params = sum(p.numel() for p in net.parameters())

    def forward() -> Any:
        with torch.no_grad(), autocast(device, amp):
            return run(x)

    def step() -> None:
        with autocast(device, amp):
            loss = run(x).float().square().mean()
        loss.backward()
        net.zero_grad(set_to_none=True)

    run = net
    net.eval()
    flops_fwd = count_flops(forward)
    net.train()
    flops_fb = count_flops(step)
    if opts.get("compile"):
        run = torch.compile(net)
    # memory first, while freed blocks have always gone back to the kernel (resident size = live memory): once
    # the heap has held large blocks, steps reuse them without a rise of resident size, and the reading is void
    reuse_freed_memory(False)
    step()  # warm-up (and compilation)
    with PeakMemory(device) as mem:
        step()
    reuse_freed_memory(not opts.get("no_reuse"))
    t_fb = median_seconds(step, device, case["warmup"], case["repeats"])
    net.eval()
    t_fwd = median_seconds(forward, device, case["warmup"] + 1, case["repeats"])
    return {
        "params": params,
        "gflop_fwd": flops_fwd / 1e9,
        "gflop_fwd_bwd": flops_fb / 1e9,
        "fwd_ms": t_fwd * 1e3,
        "fwd_bwd_ms": t_fb * 1e3,
        "peak_mib": mem.mib,
        "tflops_achieved": flops_fb / t_fb / 1e12,
    }


def measure_gates(case: dict) -> dict:
    """The attention gates alone: every skip path of the Attention U-Net, forward+backward, on the level's tensor
    shapes: the paper's gates with their additive attention at the coarse grid (``grid``), LeeJunHyun's and MONAI's
    smaller gates at skip resolution (``same``), and like for like, the paper's gates with their additive attention
    at skip resolution (``grid_at_skip``: ``theta`` a 1x1 convolution instead of the strided one, the gating signal
    interpolated up to the skip's grid)."""
    import torch

    from monai_unet_variants.networks.blocks.layers import convolution

    device = torch.device(case["device"])
    dims, size, batch, channels = case["spatial_dims"], case["size"], case["batch"], case["channels"]
    out: dict[str, float] = {}
    for mode, name in (("grid", "attention_unet"), ("same", "attention_unet+same"), ("grid_at_skip", "attention_unet")):
        torch.manual_seed(0)
        net = build(name, dims, channels, case["norm"])
        if mode == "grid_at_skip":
            for gate in (gate for skip_path in net.skips for gate in skip_path.gates):
                theta = gate.theta.conv
                gate.theta = convolution(dims, theta.in_channels, theta.out_channels, kernel_size=1, bias=False,
                                         conv_only=True)
        net = net.to(device).train()
        paths = []
        for j, skip_path in enumerate(net.skips):  # the deepest skip first, as the decoder runs
            level = len(channels) - 2 - j
            edge = size // 2**level

            def tensor(c: int, e: int) -> Any:
                return torch.randn(batch, c, *([e] * dims), device=device, requires_grad=True)

            paths.append((skip_path, tensor(channels[level], edge), tensor(channels[level + 1], edge // 2),
                          tensor(channels[level], edge)))

        def step(paths: list = paths) -> None:
            with autocast(device, case["amp"]):
                total = sum(sp(skip, coarse, up)[0].float().sum() for sp, skip, coarse, up in paths)
            total.backward()

        out[f"{mode}_gflop"] = count_flops(step) / 1e9
        out[f"{mode}_ms"] = median_seconds(step, device, case["warmup"], case["repeats"]) * 1e3
    out["time_ratio"] = out["grid_ms"] / out["same_ms"]
    out["flop_ratio"] = out["grid_gflop"] / out["same_gflop"]
    out["like_time_ratio"] = out["grid_ms"] / out["grid_at_skip_ms"]
    out["like_flop_ratio"] = out["grid_gflop"] / out["grid_at_skip_gflop"]
    return out


def measure_roof(case: dict) -> dict:
    """FLOP/s of one large 3D convolution, forward and forward+backward: the machine's practical roof."""
    import torch

    device = torch.device(case["device"])
    amp = case["amp"]
    conv = torch.nn.Conv3d(64, 64, 3, padding=1).to(device)
    x = torch.randn(1, 64, *([case["size"]] * 3), device=device, requires_grad=True)

    def fwd() -> Any:
        with torch.no_grad(), autocast(device, amp):
            return conv(x)

    def fb() -> None:
        with autocast(device, amp):
            y = conv(x)
        y.float().sum().backward()

    f_fwd, f_fb = count_flops(fwd), count_flops(fb)
    t_fwd = median_seconds(fwd, device, case["warmup"], case["repeats"])
    t_fb = median_seconds(fb, device, case["warmup"], case["repeats"])
    return {"tflops_fwd": f_fwd / t_fwd / 1e12, "tflops_fwd_bwd": f_fb / t_fb / 1e12}


def measure_sliding_window(case: dict) -> dict:
    """Voxels per second of the flagship bundle's inferer and network on a CT-sized volume."""
    import torch
    from monai.bundle import ConfigParser

    device = torch.device(case["device"])
    parser = ConfigParser()
    parser.read_config(str(FLAGSHIP / "configs" / "inference.json"))
    parser.update({"bundle_root": str(FLAGSHIP), "device": f"$torch.device('{device}')",
                   "network_def#channels": case["channels"]})
    if case.get("roi_size"):
        parser["roi_size"] = [case["roi_size"]] * 3
    parser["inferer#progress"] = False
    inferer = parser.get_parsed_content("inferer")
    net = parser.get_parsed_content("network").eval()
    amp = case["amp"]
    volume = torch.randn(1, 1, *case["volume"], device=device)
    roi = list(parser.get_parsed_content("roi_size"))

    def infer() -> Any:
        with torch.no_grad(), autocast(device, amp):
            return inferer(volume, net)

    with torch.no_grad(), autocast(device, amp):  # warm-up on one window
        net(torch.randn(1, 1, *roi, device=device))
    seconds = median_seconds(infer, device, 0, case["repeats"])
    return {
        "volume": case["volume"],
        "roi_size": roi,
        "overlap": parser.get_parsed_content("overlap"),
        "sw_batch_size": parser.get_parsed_content("sw_batch_size"),
        "seconds": seconds,
        "mvoxels_per_s": math.prod(case["volume"]) / seconds / 1e6,
    }


def measure_bundle(case: dict) -> dict:
    """Training iterations per second of the flagship bundle and the share of step time spent waiting for data.

    A step runs from fetching a batch (Ignite's GET_BATCH_STARTED) to the end of the iteration; the wait is
    GET_BATCH_STARTED -> GET_BATCH_COMPLETED. The first epoch (worker start-up) is left out.
    """
    from ignite.engine import Events
    from monai.bundle import ConfigWorkflow

    from monai_unet_variants.data import ensure_sample_data

    out = Path(tempfile.mkdtemp(prefix="muv_bench_bundle_"))
    workflow = ConfigWorkflow(
        config_file=str(FLAGSHIP / "configs" / "train.json"),
        meta_file=str(FLAGSHIP / "configs" / "metadata.json"),
        logging_file=False,
        workflow_type=None,
        bundle_root=str(out),
        dataset_dir=str(ensure_sample_data(case.get("sample_dir") or None)),
        epochs=case["epochs"],
        val_interval=case["epochs"] + 1,
        device=f"$torch.device('{case['device']}')",
        **{"network_def#channels": case["channels"]},
        **({"roi_size": [case["roi_size"]] * 3} if case.get("roi_size") else {}),
    )
    workflow.initialize()
    trainer = workflow.parser.get_parsed_content("train#trainer")
    marks: dict[str, float] = {}
    waits: list[float] = []
    steps: list[float] = []

    def on(event: Any, fn: Callable[[Any], None]) -> None:
        trainer.add_event_handler(event, fn)

    def counted(e: Any) -> bool:
        return e.state.epoch > 1

    on(Events.GET_BATCH_STARTED, lambda e: marks.update(start=time.perf_counter()))
    on(Events.GET_BATCH_COMPLETED, lambda e: marks.update(got=time.perf_counter()))

    def done(e: Any) -> None:
        if counted(e):
            waits.append(marks["got"] - marks["start"])
            steps.append(time.perf_counter() - marks["start"])

    on(Events.ITERATION_COMPLETED, done)
    workflow.run()
    workflow.finalize()
    return {
        "epochs_counted": case["epochs"] - 1,
        "iterations": len(steps),
        "batch_size": workflow.parser.get_parsed_content("batch_size"),
        "roi_size": workflow.parser.get_parsed_content("roi_size"),
        "num_workers": workflow.parser.get_parsed_content("num_workers"),
        "iterations_per_s": len(steps) / sum(steps) if steps else float("nan"),
        "data_wait_share": sum(waits) / sum(steps) if steps else float("nan"),
    }


KINDS = {"network": measure_case, "gates": measure_gates, "roof": measure_roof,
         "sliding_window": measure_sliding_window, "bundle": measure_bundle}


def run_case(case: dict, verbose: bool = False, in_process: bool = False) -> dict:
    """Run one case in a child process (or in this one) and return its figures (an ``error`` entry if it failed)."""
    if in_process:
        import gc

        import torch

        gc.collect()  # the previous case's tensors and cached blocks do not count towards this one's peak
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        try:
            process_settings(case)
            return {**case, **KINDS[case["kind"]](case)}
        except Exception as err:  # reported in the table like a failed child
            return {**case, "error": f"{type(err).__name__}: {err}"}
    proc = subprocess.run([sys.executable, __file__, "--_case", json.dumps(case)], capture_output=True, text=True)
    if verbose and proc.stderr:
        sys.stderr.write(proc.stderr)
    if proc.returncode != 0:
        tail = proc.stderr.strip().splitlines()[-1:] or [f"exit {proc.returncode}"]
        return {**case, "error": tail[0]}
    return {**case, **json.loads(proc.stdout.strip().splitlines()[-1])}


# ---------------------------------------------------------------------------------------------- reporting


def add_ratios(rows: list[dict]) -> None:
    """Time, time per FLOP and memory of every network row relative to MONAI's nets of the same dims."""
    for dims in {r["spatial_dims"] for r in rows}:
        same = [r for r in rows if r["spatial_dims"] == dims and "error" not in r]
        refs = {r["network"]: r for r in same if r["network"] in MONAI_NETS and not r.get("options")}
        for r in same:
            for ref_name, ref in refs.items():
                short = ref_name.replace("monai_", "")
                r[f"time_vs_{short}"] = r["fwd_bwd_ms"] / ref["fwd_bwd_ms"]
            if "monai_unet" in refs:
                ref = refs["monai_unet"]
                r["time_per_flop_vs_unet"] = (r["fwd_bwd_ms"] / r["gflop_fwd_bwd"]) / (
                    ref["fwd_bwd_ms"] / ref["gflop_fwd_bwd"])
                r["mem_vs_unet"] = r["peak_mib"] / ref["peak_mib"] if ref["peak_mib"] > 0 else float("nan")


COLUMNS = [
    ("label", "{:<30}", "network"),
    ("params", "{:>11,}", "params"),
    ("gflop_fwd", "{:>9.1f}", "GFLOP"),
    ("fwd_ms", "{:>9.0f}", "fwd ms"),
    ("fwd_bwd_ms", "{:>9.0f}", "f+b ms"),
    ("peak_mib", "{:>9.0f}", "peak MiB"),
    ("efficiency", "{:>6.0%}", "eff"),
    ("time_vs_unet", "{:>7.2f}", "xUNet"),
    ("time_vs_basicunet", "{:>7.2f}", "xBasic"),
    ("time_vs_attentionunet", "{:>7.2f}", "xAttU"),
    ("time_per_flop_vs_unet", "{:>7.2f}", "t/F"),
]


def label(r: dict) -> str:
    opts = "+".join(k for k, v in sorted(r.get("options", {}).items()) if v)
    return f"{r['network']}{' +' + opts if opts else ''}"


def format_table(rows: Sequence[dict]) -> str:
    widths = [len(fmt.format(1)) if k != "label" else 30 for k, fmt, _ in COLUMNS]
    head = "".join(t.ljust(w) if k == "label" else t.rjust(w) for (k, _, t), w in zip(COLUMNS, widths))
    lines = [head]
    for r in rows:
        if "error" in r:
            lines.append(f"{label(r):<30}failed: {r['error']}")
            continue
        cells = []
        for (k, fmt, _), w in zip(COLUMNS, widths):
            v = label(r) if k == "label" else r.get(k)
            cells.append(fmt.format(v) if v is not None else "-".rjust(w))
        lines.append("".join(cells))
    return "\n".join(lines)


def ok_rows(rows: Sequence[dict], network: str, dims: int, **options: bool) -> dict | None:
    for r in rows:
        same_case = r["network"] == network and r["spatial_dims"] == dims and r.get("options", {}) == options
        if same_case and "error" not in r:
            return r
    return None


def _ratios(a: dict, b: dict) -> str:
    """``a`` against ``b``: forward, forward+backward and peak-memory ratios."""
    return (f"forward x{a['fwd_ms'] / b['fwd_ms']:.2f}, forward+backward x{a['fwd_bwd_ms'] / b['fwd_bwd_ms']:.2f}, "
            f"FLOPs x{a['gflop_fwd_bwd'] / b['gflop_fwd_bwd']:.2f}, memory x{a['peak_mib'] / max(b['peak_mib'], 1e-9):.2f}")


def findings(rows: Sequence[dict]) -> list[str]:
    """The figures behind the performance targets, read off the rows."""
    out = []
    for dims in (2, 3):
        grid, same = (ok_rows(rows, n, dims) for n in ("attention_unet", "attention_unet+same"))
        if grid and same:
            out.append(f"{dims}D Attention U-Net, gates at the coarse grid vs at skip resolution: {_ratios(grid, same)}")
        plain, ckpt = ok_rows(rows, "attention_r2unet", dims), ok_rows(rows, "attention_r2unet+ckpt", dims)
        if plain and ckpt:
            saved = 1 - ckpt["peak_mib"] / plain["peak_mib"] if plain["peak_mib"] > 0 else float("nan")
            out.append(f"{dims}D Attention R2U-Net activation checkpointing: peak training memory "
                       f"{plain['peak_mib']:.0f} -> {ckpt['peak_mib']:.0f} MiB ({saved:.0%} saved), "
                       f"step time x{ckpt['fwd_bwd_ms'] / plain['fwd_bwd_ms']:.2f}")
        ours = [r for r in rows if r["spatial_dims"] == dims and "time_per_flop_vs_unet" in r
                and r["network"] not in MONAI_NETS and not r.get("options")]
        worst = max(ours, key=lambda r: r["time_per_flop_vs_unet"], default=None)
        if worst:
            out.append(f"{dims}D worst time per FLOP against MONAI's UNet: {worst['network']} "
                       f"x{worst['time_per_flop_vs_unet']:.2f}")
        for r in rows:
            if r["spatial_dims"] == dims and r.get("options") and "error" not in r:
                base = ok_rows(rows, r["network"], dims)
                if base:
                    out.append(f"{dims}D {label(r)} against the default: {_ratios(r, base)}")
    return out


# ---------------------------------------------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu", help="cpu or cuda (cuda runs with AMP fp16)")
    p.add_argument("--dims", default="2,3", help="spatial dims to measure (default 2,3)")
    p.add_argument("--networks", default="", help="comma-separated names (default: every registered network)")
    p.add_argument("--channels", default="16,32,64,128,256", help="widths (default: the bundles')")
    p.add_argument("--size2d", type=int, default=256, help="2D patch edge (default 256)")
    p.add_argument("--size3d", type=int, default=96, help="3D patch edge (default 96)")
    p.add_argument("--batch", type=int, default=2, help="batch size (default 2)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--roof_size", type=int, default=64, help="edge of the roof convolution's volume")
    p.add_argument("--options", default="",
                   help="also try these on --option_networks: " + ",".join(OPTIONS) + " (see the module's doc)")
    p.add_argument("--option_networks", default="unet,attention_unet", help="networks for the --options trials")
    p.add_argument("--sw_volume", default="512,512,128", help="sliding-window volume (empty: skip)")
    p.add_argument("--sw_roi", type=int, default=0, help="sliding-window roi edge (default: the bundle's)")
    p.add_argument("--bundle_epochs", type=int, default=3, help="bundle training epochs, first not counted (0: skip)")
    p.add_argument("--bundle_roi", type=int, default=0, help="bundle training roi edge (default: the bundle's)")
    p.add_argument("--sample_dir", default="", help="synthetic sample folder for the bundle run")
    p.add_argument("--smoke", action="store_true", help="tiny sizes and one repeat: checks the command, not speed")
    p.add_argument("--out", default="benchmark_results", help="folder for results.json and results.csv")
    p.add_argument("--verbose", action="store_true", help="show the children's stderr")
    p.add_argument("--in_process", action="store_true",
                   help="run every case in this process (faster start; peak memory then shares one heap)")
    p.add_argument("--_case", default="", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.smoke:
        args.channels, args.size2d, args.size3d, args.batch = "8,16,32,64,128", 64, 32, 1
        args.warmup, args.repeats, args.roof_size = 0, 1, 16
        args.sw_volume, args.sw_roi, args.bundle_epochs, args.bundle_roi = "48,48,32", 32, 2, 32
    return args


def plan(args: argparse.Namespace) -> list[dict]:
    from monai_unet_variants import list_networks

    channels = [int(c) for c in args.channels.split(",")]
    amp = args.device.startswith("cuda")
    base = {"device": args.device, "channels": channels, "batch": args.batch, "warmup": args.warmup,
            "repeats": args.repeats, "norm": ["instance", {"affine": True}], "amp": amp}
    names = args.networks.split(",") if args.networks else [n for n in list_networks() if n != "composable"]
    names = [*names, *(v for v in VARIANTS if VARIANTS[v][0] in names), *MONAI_NETS]
    cases = [{"kind": "roof", **base, "size": args.roof_size, "spatial_dims": 3, "network": "conv3d_64"}]
    for dims in (int(d) for d in args.dims.split(",")):
        size = args.size2d if dims == 2 else args.size3d
        for name in names:
            cases.append({"kind": "network", **base, "network": name, "spatial_dims": dims, "size": size})
        if "attention_unet" in names:
            cases.append({"kind": "gates", **base, "network": "attention gates", "spatial_dims": dims, "size": size})
        for opt in filter(None, args.options.split(",")):
            if opt not in OPTIONS:
                raise SystemExit(f"unknown option {opt!r}: choose from {OPTIONS}")
            for name in args.option_networks.split(","):
                cases.append({"kind": "network", **base, "network": name, "spatial_dims": dims, "size": size,
                              "options": {opt: True}})
    if args.sw_volume:
        cases.append({"kind": "sliding_window", **base, "network": "flagship", "spatial_dims": 3,
                      "volume": [int(v) for v in args.sw_volume.split(",")], "roi_size": args.sw_roi,
                      "repeats": 1})
    if args.bundle_epochs:
        cases.append({"kind": "bundle", **base, "network": "flagship", "spatial_dims": 3,
                      "epochs": max(2, args.bundle_epochs), "roi_size": args.bundle_roi, "sample_dir": args.sample_dir})
    return cases


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args._case:
        case = json.loads(args._case)
        process_settings(case)
        print(json.dumps(KINDS[case["kind"]](case)))
        return 0
    import torch

    cases = plan(args)
    started = time.strftime("%Y-%m-%d %H:%M")
    device_name = torch.cuda.get_device_name(0) if args.device.startswith("cuda") else (
        f"CPU, {os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"benchmark {started} on {device_name}; widths {args.channels}, batch {args.batch}, "
          f"2D {args.size2d}^2, 3D {args.size3d}^3, median of {args.repeats} after {args.warmup} warm-up")
    results: list[dict] = []
    try:
        from tqdm import tqdm

        progress = tqdm(cases, desc="benchmark", unit="case", file=sys.stderr)
    except ImportError:
        progress = cases
    for case in progress:
        if hasattr(progress, "set_postfix_str"):
            progress.set_postfix_str(f"{case['network']} {case['spatial_dims']}D")
        results.append(run_case(case, args.verbose, args.in_process))
    roof = next(r for r in results if r["kind"] == "roof")
    rows = [r for r in results if r["kind"] == "network"]
    for r in rows:
        if "error" not in r and "error" not in roof:
            r["efficiency"] = r["tflops_achieved"] / roof["tflops_fwd_bwd"]
        r["label"] = label(r)
    add_ratios(rows)
    report = [f"roof (one 64->64 3^3 conv on {args.roof_size}^3): "
              + (f"{roof['tflops_fwd']:.3f} TFLOP/s forward, {roof['tflops_fwd_bwd']:.3f} TFLOP/s forward+backward"
                 if "error" not in roof else f"failed: {roof['error']}")]
    for dims in sorted({r["spatial_dims"] for r in rows}):
        size = args.size2d if dims == 2 else args.size3d
        table = format_table([r for r in rows if r["spatial_dims"] == dims])
        report += ["", f"{dims}D, batch {args.batch} x 1 x {size}^{dims}", table]
    report += ["", *findings(rows)]
    for r in results:
        if r["kind"] == "gates":
            report.append(f"{r['spatial_dims']}D attention gates failed: {r['error']}" if "error" in r else (
                f"{r['spatial_dims']}D attention gates alone (every skip, forward+backward): coarse grid "
                f"{r['grid_ms']:.0f} ms, {r['grid_gflop']:.2f} GFLOP vs skip resolution {r['same_ms']:.0f} ms, "
                f"{r['same_gflop']:.2f} GFLOP: time x{r['time_ratio']:.2f}, FLOPs x{r['flop_ratio']:.2f}; like for "
                f"like, the paper's gate with its additive attention at the coarse grid vs at skip resolution "
                f"{r['grid_at_skip_ms']:.0f} ms, {r['grid_at_skip_gflop']:.2f} GFLOP: time x{r['like_time_ratio']:.2f}, "
                f"FLOPs x{r['like_flop_ratio']:.2f}"))
        if r["kind"] == "sliding_window":
            report.append(("sliding window: failed: " + r["error"]) if "error" in r else (
                f"sliding-window inference (flagship bundle: roi {r['roi_size']}, overlap {r['overlap']}, "
                f"sw_batch {r['sw_batch_size']}) on {'x'.join(map(str, r['volume']))}: {r['seconds']:.1f} s, "
                f"{r['mvoxels_per_s']:.2f} Mvoxel/s"))
        if r["kind"] == "bundle":
            report.append(("bundle training: failed: " + r["error"]) if "error" in r else (
                f"bundle training (flagship, roi {r['roi_size']}, batch {r['batch_size']}, "
                f"{r['num_workers']} caching workers): "
                f"{r['iterations_per_s']:.2f} it/s over {r['iterations']} iterations, "
                f"data wait {r['data_wait_share']:.1%} of step time"))
    print("\n".join(report))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    settings = {k: v for k, v in vars(args).items() if not k.startswith("_")}
    (out / "results.json").write_text(json.dumps(
        {"date": started, "device": device_name, "settings": settings, "results": results, "report": report}, indent=2))
    keys = ["label", "spatial_dims", "size", "batch", *(k for k, _, _ in COLUMNS[1:]), "gflop_fwd_bwd", "mem_vs_unet",
            "tflops_achieved", "error"]
    with open(out / "results.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=keys, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    print(f"\nwrote {out / 'results.json'} and {out / 'results.csv'}")
    failed = [r for r in results if "error" in r]
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
