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
(``num_res_units=2``), ``BasicUNet``, ``AttentionUnet`` and ``BasicUNetPlusPlus`` at the same widths, and every network gets ratios
against them: time, and time per FLOP against ``UNet`` (``t/F``: 1.0 means as efficient as MONAI's UNet).

Efficiency (``eff``): the network's achieved forward+backward FLOP/s divided by the FLOP/s of one large 3D
convolution (64 -> 64 channels, 3^3 kernel) measured in the same run with the same precision: the machine's
practical roof, so the figure compares across machines.

Further sections: attention gates at the coarse grid (the paper's) against gates at skip resolution; activation
checkpointing of the 3D Attention R2U-Net (memory saved, time paid); optional trials (``--options``, several joined
by ``+``) of ``torch.compile`` (``compile``: default mode; ``compile_cudagraphs``: ``mode="reduce-overhead"``;
``compile_autotune``: ``mode="max-autotune-no-cudagraphs"``; the compile time is reported separately), channels-last
memory format for the whole network, AMP (bf16 on CPU), ``no_reuse`` (freed memory goes back to the kernel at once,
128 KiB malloc thresholds), ``no_narrow`` (narrow convolutions in channels-first layout), ``cudnn_benchmark``
(cuDNN picks its algorithms by timing them; GPU), ``force_layout`` (Inductor's layout optimization forced on,
which its heuristic declines for U-Nets' training graphs; ``TORCHINDUCTOR_FORCE_LAYOUT_OPT=1`` does it for a whole
process; Inductor applies it to 2D convolutions only), ``no_layout_opt`` (that optimization off: a 3D convolution's
inputs then keep the layout they have in eager mode, which it otherwise leaves to Inductor in inference graphs),
``cl_inputs`` and ``cl_norm`` (``acceleration.keep_channels_last``: every convolution's input copied to
channels-last layout, instance normalisations that keep it; with ``channels_last``); sliding-window
inference of the flagship bundle's inference config on a 512x512x128 synthetic CT volume, as configured and in the
trials of ``--sw_trials`` (config overrides: window batch, compile, AMP, ...), each label map compared voxel by voxel
with an eager float32 run's; the flagship bundle's training throughput, its share of step time spent waiting for
data and its compile times. ``--profile``: after each case's timings, where its device time goes (``kernel_profile``,
``StepProfile`` for a bundle's steps). Named only,
``--sections scale``: the flagship bundle trained on the first N cases of a clinical-size synthetic set (512 x 512 x
80-120 voxels) for every N of ``--scale_cases``, each with a fresh disk cache under ``--scale_cache_gb``: cache build
time, peak resident memory, cases in memory and on disk, epoch time and data wait, peak memory extrapolated to the
Decathlon's 281 cases, and a plot (``scale_rss.png``). Results: a table on stdout, ``results.json`` and
``results.csv`` in ``--out``.

``--jobs N`` prepares up to N cases at once, each in its own process (building, compiling, warming up: the
compilation of ``torch.compile`` takes tens of seconds per network and runs on the CPU), then lets them time one
after another while the others wait, so that no two timings share the device.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import re
import shutil
import signal
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
MONAI_NETS = ("monai_unet", "monai_basicunet", "monai_attentionunet", "monai_basicunetplusplus")
# variants of a network measured as extra rows: name -> (network, keyword overrides)
VARIANTS: dict[str, tuple[str, dict]] = {
    "attention_unet+same": ("attention_unet", {"attention": "same"}),
    "attention_r2unet+ckpt": ("attention_r2unet", {"checkpointing": True}),
}
OPTIONS = ("compile", "compile_cudagraphs", "compile_autotune", "channels_last", "amp", "no_reuse", "no_narrow",
           "cudnn_benchmark", "force_layout", "no_layout_opt", "cl_inputs", "cl_norm")
#: process-wide settings a sliding-window or bundle trial may give besides config keys (``apply_settings``), with the
#: network options of the same meaning
TRIAL_SETTINGS = {"cudnn_benchmark": "cudnn_benchmark", "force_layout": "force_layout", "layout_opt": "no_layout_opt",
                  "cl_inputs": "cl_inputs", "cl_norm": "cl_norm"}
#: ``torch.compile`` modes of the compile options
COMPILE_MODES = {"compile": "default", "compile_cudagraphs": "reduce-overhead",
                 "compile_autotune": "max-autotune-no-cudagraphs"}
#: the inference trial every other is compared with: eager, float32, the bundle's window batch before tuning
REFERENCE_TRIAL = "compile=false,amp=false,sw_batch_size=2"


# ----------------------------------------------------------------------------------------------- building


def first_output(net: Any) -> Any:
    """``net`` seen through the first of the outputs it returns as a list (MONAI's ``BasicUNetPlusPlus``); torch is
    imported here, in the process that measures, not when this script starts."""
    import torch

    class FirstOutput(torch.nn.Module):
        def __init__(self, inner: torch.nn.Module) -> None:
            super().__init__()
            self.net = inner

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.net(x)[0]

    return FirstOutput(net)


#: narrow convolutions channels-last on a CPU (the package's default); the ``no_narrow`` option turns it off
NARROW = True


def build(name: str, spatial_dims: int, channels: Sequence[int], norm: Any) -> Any:
    """One network at the given widths: ours through the registry (inside ``narrow_channels_last(NARROW)``), MONAI's
    with matching arguments."""
    from monai_unet_variants.networks.blocks.layers import narrow_channels_last

    with narrow_channels_last(NARROW):
        return _build(name, spatial_dims, channels, norm)


def _build(name: str, spatial_dims: int, channels: Sequence[int], norm: Any) -> Any:
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
    if name == "monai_basicunetplusplus":  # returns a list of outputs: measured through its first (the main one)
        if len(channels) != 5:
            raise ValueError("MONAI's BasicUNetPlusPlus has five levels: give five --channels")
        return first_output(nets.BasicUNetPlusPlus(**common, features=(*channels, channels[0]), act="relu", norm=norm))
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


def _noop() -> None:
    """``wait_turn`` of a case that runs alone: nothing to wait for."""


def synchronize(device: Any) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn: Callable[[], Any], device: Any) -> tuple[Any, float]:
    """``fn()`` and its duration in seconds, the device's queue included."""
    synchronize(device)
    t0 = time.perf_counter()
    out = fn()
    synchronize(device)
    return out, time.perf_counter() - t0


#: kernel-name patterns of ``kernel_profile``'s categories, tried in order (the first that matches names it)
KERNEL_KINDS = (
    ("fused (Inductor)", re.compile(r"^triton_", re.I)),
    ("copy, layout", re.compile(r"memcpy|memset|copy|transpose|nchwtonhwc|nhwctonchw|contiguous", re.I)),
    ("convolution", re.compile(r"conv|cudnn|xmma|implicit|gemm|cutlass|sm\d\d_|wgrad|dgrad|fprop|mkldnn|onednn", re.I)),
    ("normalization", re.compile(r"norm", re.I)),
    ("elementwise, reduction", re.compile(r"elementwise|vectorized|reduce|unrolled|pointwise|add|mul|relu|sigmoid|cat",
                                          re.I)),
)


def kernel_profile(fn: Callable[[], Any], device: Any, calls: int = 3, top: int = 8) -> dict:
    """``_kernel_profile``, or its error: a profiler that fails costs the case none of its timings."""
    try:
        return _kernel_profile(fn, device, calls, top)
    except Exception as err:  # noqa: BLE001 - reported in the results
        return {"error": f"{type(err).__name__}: {err}"}


def _kernel_profile(fn: Callable[[], Any], device: Any, calls: int, top: int) -> dict:
    """Where one call of ``fn`` spends its device time: ``torch.profiler`` over ``calls`` calls (after one untimed),
    summed up by ``profile_summary``."""
    from torch.profiler import ProfilerActivity, profile

    cuda = device.type == "cuda"
    fn()
    synchronize(device)
    for activities in ([ProfilerActivity.CUDA], [ProfilerActivity.CPU, ProfilerActivity.CUDA]) if cuda else (
            [ProfilerActivity.CPU],):  # the device alone first (no host-side recording in the wall time)
        with profile(activities=activities) as prof:
            t0 = time.perf_counter()
            for _ in range(calls):
                fn()
            synchronize(device)
            wall = (time.perf_counter() - t0) / calls
        summary = profile_summary(prof.events(), calls, wall, cuda, top)
        if summary["top"]:
            break
    return summary


def profile_summary(events: Any, calls: int, wall_s: float, cuda: bool, top: int = 8) -> dict:
    """A profiler's events over ``calls`` calls of ``wall_s`` seconds each, per call: the kernels' own time grouped by
    ``KERNEL_KINDS``, the ``top`` kernels and ``busy`` (kernel time / wall time; near 1: the kernels bound the call,
    far below: launches and the host do). On a CPU the top-level operators' CPU times stand in for kernels."""
    import torch

    kernels: dict[str, list[float]] = {}
    for e in events:
        if cuda and e.device_type != torch.autograd.DeviceType.CUDA:
            continue
        if not cuda and e.cpu_parent is not None:  # operators' own time, each counted once at the top of its tree
            continue
        us = e.time_range.elapsed_us() if cuda else e.cpu_time_total  # a kernel's own span on the device
        entry = kernels.setdefault(e.name, [0.0, 0])
        entry[0] += us / 1e3 / calls
        entry[1] += 1 / calls
    total = sum(ms for ms, _ in kernels.values())
    kinds: dict[str, float] = {}
    for name, (ms, _) in kernels.items():
        kind = next((k for k, pattern in KERNEL_KINDS if pattern.search(name)), "other")
        kinds[kind] = kinds.get(kind, 0.0) + ms
    ranked = sorted(kernels.items(), key=lambda kv: -kv[1][0])[:top]
    return {
        "wall_ms": wall_s * 1e3,
        "kernel_ms": total,
        "busy": total / (wall_s * 1e3) if wall_s else float("nan"),
        "launches": round(sum(n for _, n in kernels.values())),
        "kinds_ms": dict(sorted(kinds.items(), key=lambda kv: -kv[1])),
        "top": [{"name": name[:120], "ms": ms, "calls": round(n)} for name, (ms, n) in ranked],
    }


def profile_line(what: str, p: dict) -> str:
    """One report line of a ``kernel_profile``."""
    if "error" in p:
        return f"{what}: profile failed: {p['error']}"
    kinds = ", ".join(f"{k} {100 * ms / p['kernel_ms']:.0f}%" for k, ms in p["kinds_ms"].items() if p["kernel_ms"])
    return (f"{what}: {p['wall_ms']:.1f} ms a call, kernels {p['kernel_ms']:.1f} ms (busy {100 * p['busy']:.0f}%, "
            f"{p['launches']} launches): {kinds}; longest: {p['top'][0]['name'][:60] if p['top'] else '-'}")


def compile_mode(options: dict) -> str | None:
    """The ``torch.compile`` mode that a case's options ask for (``None``: eager)."""
    modes = [COMPILE_MODES[k] for k, v in options.items() if v and k in COMPILE_MODES]
    if len(modes) > 1:
        raise ValueError(f"one compile option at a time, got {sorted(k for k in options if k in COMPILE_MODES)}")
    return modes[0] if modes else None


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
    ``no_reuse`` option returns freed memory to the kernel at once instead), the channels-last layout of narrow
    convolutions (``layers.narrow_channels_last`` around ``build``, off with ``no_narrow``) and ``apply_settings``."""
    from monai_unet_variants.runtime import reuse_freed_memory

    opts = case.get("options", {})
    # a network case reads its peak memory first and turns reuse on itself afterwards (see measure_case)
    reuse_freed_memory(case["kind"] != "network" and not opts.get("no_reuse"))
    global NARROW
    NARROW = not opts.get("no_narrow")
    apply_settings(opts)  # reset for the next case in-process


def apply_settings(opts: dict) -> dict:
    """Set the process-wide settings named in ``opts`` (network options, or ``TRIAL_SETTINGS`` keys of a trial, whose
    values may be strings as typed) and return them all as set: ``cudnn_benchmark`` (cuDNN times its algorithms for
    each shape and keeps the fastest; GPU), ``force_layout`` / ``layout_opt`` (Inductor's layout optimization forced
    on / left on; the options ``force_layout`` / ``no_layout_opt``; Inductor is imported only when one is changed or
    it is loaded), ``cl_inputs`` / ``cl_norm`` (``acceleration.CHANNELS_LAST_EXTRAS``, what ``to_device`` does with
    ``channels_last`` on a GPU; the network cases apply them themselves)."""
    import torch

    from monai_unet_variants import acceleration
    from monai_unet_variants.options import as_bool

    def option_on(key: str) -> bool:  # a trial's key (layout_opt=false) or the network option of the same meaning
        option = TRIAL_SETTINGS[key]
        if key in opts:
            return as_bool(opts[key], key) != (option.startswith("no_"))
        return bool(opts.get(option))

    torch.backends.cudnn.benchmark = option_on("cudnn_benchmark")
    acceleration.CHANNELS_LAST_EXTRAS.update(conv_inputs=option_on("cl_inputs"), norms=option_on("cl_norm"))
    force, off = option_on("force_layout"), option_on("layout_opt")
    if force or off or "torch._inductor.config" in sys.modules:
        import torch._inductor.config as inductor_config

        inductor_config.force_layout_optimization = force or os.environ.get("TORCHINDUCTOR_FORCE_LAYOUT_OPT") == "1"
        inductor_config.layout_optimization = not off
    else:
        inductor_config = None
    return {
        "cudnn_benchmark": torch.backends.cudnn.benchmark,
        "force_layout": bool(inductor_config and inductor_config.force_layout_optimization),
        "layout_opt": bool(inductor_config is None or inductor_config.layout_optimization),
        "cl_inputs": acceleration.CHANNELS_LAST_EXTRAS["conv_inputs"],
        "cl_norm": acceleration.CHANNELS_LAST_EXTRAS["norms"],
    }


def pop_settings(overrides: dict) -> dict:
    """The ``TRIAL_SETTINGS`` keys of a trial's overrides, removed from them (they are not config keys)."""
    return {k: overrides.pop(k) for k in list(overrides) if k in TRIAL_SETTINGS}


def extras_of(network: Any) -> dict:
    """``cl_inputs`` / ``cl_norm`` as the bundle's network has them (``to_device`` ignores them on a CPU)."""
    from monai_unet_variants.acceleration import channels_last_extras

    found = channels_last_extras(network)
    return {"cl_inputs": found["conv_inputs"], "cl_norm": found["norms"]}


def measure_case(case: dict, wait_turn: Callable[[], None] = _noop) -> dict:
    """Everything about one network in one configuration (runs in a fresh process).

    Preparation (building, FLOP counting, compiling, warming up, the peak-memory step) comes before ``wait_turn()``,
    the timings after it. With a compile option the first training step and the first forward pass are timed on
    their own (``compile_s``, ``compile_eval_s``: compilation included), and graphs compiled during the timed runs
    are counted (``recompiles``: 0 when the shapes stay static).
    """
    import torch

    from monai_unet_variants.acceleration import compiled_graphs, keep_channels_last
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
    if opts.get("cl_inputs") or opts.get("cl_norm"):
        keep_channels_last(net, conv_inputs=bool(opts.get("cl_inputs")), norms=bool(opts.get("cl_norm")))
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
    mode = compile_mode(opts)
    if mode:
        run = torch.compile(net, mode=mode, dynamic=False, backend=case.get("compile_backend", "inductor"))
    # memory first, while freed blocks have always gone back to the kernel (resident size = live memory): once
    # the heap has held large blocks, steps reuse them without a rise of resident size, and the reading is void
    reuse_freed_memory(False)
    graphs = compiled_graphs()
    _, first_step = timed(step, device)  # warm-up (and compilation of the training graph)
    with PeakMemory(device) as mem:
        step()
    net.eval()
    _, first_forward = timed(forward, device)  # warm-up (and compilation of the inference graph)
    net.train()
    reuse_freed_memory(not opts.get("no_reuse"))
    compiled = compiled_graphs() - graphs
    wait_turn()
    t_fb = median_seconds(step, device, case["warmup"], case["repeats"])
    net.eval()
    t_fwd = median_seconds(forward, device, case["warmup"], case["repeats"])
    out = {
        "params": params,
        "gflop_fwd": flops_fwd / 1e9,
        "gflop_fwd_bwd": flops_fb / 1e9,
        "fwd_ms": t_fwd * 1e3,
        "fwd_bwd_ms": t_fb * 1e3,
        "peak_mib": mem.mib,
        "tflops_achieved": flops_fb / t_fb / 1e12,
    }
    if mode:
        out.update(compile_mode=mode, compile_s=first_step, compile_eval_s=first_forward, graphs=compiled,
                   recompiles=compiled_graphs() - graphs - compiled)
    if case.get("profile"):  # after the timings and the recompilation count: the profiler's own cost stays out
        out["profile_forward"] = kernel_profile(forward, device)
        net.train()
        out["profile_step"] = kernel_profile(step, device)
    return out


def measure_gates(case: dict, wait_turn: Callable[[], None] = _noop) -> dict:
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
    steps: dict[str, Callable[[], None]] = {}
    for mode, name in (("grid", "attention_unet"), ("same", "attention_unet+same"), ("grid_at_skip", "attention_unet")):
        torch.manual_seed(0)
        net = build(name, dims, channels, case["norm"])
        if mode == "grid_at_skip":
            for gate in (gate for skip_path in net.decoder.skips for gate in skip_path.gates):
                theta = gate.theta.conv
                gate.theta = convolution(dims, theta.in_channels, theta.out_channels, kernel_size=1, bias=False,
                                         conv_only=True)
        net = net.to(device).train()
        paths = []
        for j, skip_path in enumerate(net.decoder.skips):  # the deepest skip first, as the decoder runs
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
        steps[mode] = step
    wait_turn()
    for mode, step in steps.items():
        out[f"{mode}_ms"] = median_seconds(step, device, case["warmup"], case["repeats"]) * 1e3
    out["time_ratio"] = out["grid_ms"] / out["same_ms"]
    out["flop_ratio"] = out["grid_gflop"] / out["same_gflop"]
    out["like_time_ratio"] = out["grid_ms"] / out["grid_at_skip_ms"]
    out["like_flop_ratio"] = out["grid_gflop"] / out["grid_at_skip_gflop"]
    return out


def measure_roof(case: dict, wait_turn: Callable[[], None] = _noop) -> dict:
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
    wait_turn()
    t_fwd = median_seconds(fwd, device, case["warmup"], case["repeats"])
    t_fb = median_seconds(fb, device, case["warmup"], case["repeats"])
    return {"tflops_fwd": f_fwd / t_fwd / 1e12, "tflops_fwd_bwd": f_fb / t_fb / 1e12}


def parse_trial(text: str) -> dict:
    """``"compile=false,sw_batch_size=8"`` -> ``{"compile": False, "sw_batch_size": 8}``: overrides of the inference
    config (ids as on the bundle command line, ``#`` for nested ones), values read as JSON where they are JSON."""
    overrides: dict[str, Any] = {}
    for item in filter(None, (t.strip() for t in text.split(","))):
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"sliding-window trial {text!r}: write key=value pairs separated by commas")
        try:
            overrides[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            overrides[key.strip()] = value.strip()
    return overrides


def sliding_window_volume(shape: Sequence[int], seed: int = 7) -> Any:
    """A CT-like volume for the sliding-window section: a synthetic case of the sample's generator at ``shape``
    (1 mm voxels, so the inference preprocessing would leave its grid alone), windowed to [0, 1] as the bundle's
    preprocessing does; float32, ``(1, 1, *shape)``."""
    import numpy as np
    from monai.bundle import ConfigParser

    from monai_unet_variants.data import generate_case

    parser = ConfigParser()
    parser.read_config(str(FLAGSHIP / "configs" / "inference.json"))
    parser.update({"bundle_root": str(FLAGSHIP)})  # the window its model was trained with, else the default
    lo, hi = parser.get_parsed_content("hu_window")
    image, _, _ = generate_case(seed, shape, (1.0, 1.0, 1.0))
    return np.clip((image.astype(np.float32) - lo) / (hi - lo), 0.0, 1.0)[None, None]


def measure_sliding_window(case: dict, wait_turn: Callable[[], None] = _noop) -> dict:
    """Voxels per second of the flagship bundle's inference config (inferer, network, AMP, compile) on a CT-sized
    volume, with the case's overrides of that config (``case["overrides"]``). The first pass (compilation included)
    runs on random data of the volume's shape before ``wait_turn()``; the timed passes run on ``case["volume_file"]``
    (a ``.npy`` written by the parent; random data without one), and the last pass's label map is written to
    ``case["labels_file"]`` for the comparison between trials."""
    import numpy as np
    import torch
    from monai.bundle import ConfigParser

    from monai_unet_variants.acceleration import compiled_graphs
    from monai_unet_variants.bundle import check_checkpoint
    from monai_unet_variants.options import as_bool

    device = torch.device(case["device"])
    parser = ConfigParser()
    parser.read_config(str(FLAGSHIP / "configs" / "inference.json"))
    parser.update({"bundle_root": str(FLAGSHIP), "device": f"$torch.device('{device}')",
                   "network_def#channels": case["channels"]})
    if case.get("roi_size"):
        parser["roi_size"] = [case["roi_size"]] * 3
    overrides = dict(case.get("overrides", {}))
    settings = apply_settings(pop_settings(overrides))
    for key, value in overrides.items():
        parser[key] = value
    parser["inferer#progress"] = False
    inferer = parser.get_parsed_content("inferer")
    torch.manual_seed(0)  # the same weights in every trial's process
    net = parser.get_parsed_content("network").eval()
    settings.update(extras_of(net))
    if case.get("checkpoint"):
        net.load_state_dict(check_checkpoint(case["checkpoint"]))
    amp = parser.get_parsed_content("evaluator#amp")
    use_compile = parser.get_parsed_content("evaluator#compile")
    compile_kwargs = parser.get_parsed_content("evaluator#compile_kwargs") if use_compile else {}
    run = torch.compile(net, **compile_kwargs) if use_compile else net
    torch.manual_seed(0)
    volume = torch.rand(1, 1, *case["volume"], device=device)

    windows: list[int] = []

    def counted(x: Any) -> Any:
        windows.append(x.shape[0])
        return run(x)

    def infer(net: Callable[[Any], Any] = run) -> Any:
        with torch.no_grad(), autocast(device, amp):
            return inferer(volume, net)

    graphs = compiled_graphs()
    _, first = timed(lambda: infer(counted), device)  # warm-up, compilation included
    compiled = compiled_graphs() - graphs
    with PeakMemory(device) as mem:
        infer()
    wait_turn()
    if case.get("volume_file"):
        volume = torch.from_numpy(np.load(case["volume_file"])).to(device)
    seconds = median_seconds(infer, device, 0, case["repeats"])
    # the network alone on one window batch of the pass's shape: what share of the pass its forward passes are
    batch = torch.rand(max(windows), volume.shape[1], *inferer.roi_size, device=device)

    def forward() -> Any:
        with torch.no_grad(), autocast(device, amp):
            return run(batch)

    forward_s = median_seconds(forward, device, 2, 10)
    out = {
        "volume": case["volume"],
        "overrides": case.get("overrides", {}),
        "roi_size": list(parser.get_parsed_content("roi_size")),
        "overlap": parser.get_parsed_content("overlap"),
        "sw_batch_size": inferer.sw_batch_size,
        "static_batch": getattr(inferer, "static_batch", False),
        "amp": amp,
        "compile": use_compile,
        "compile_mode": compile_kwargs.get("mode"),
        "channels_last": as_bool(parser.get_parsed_content("channels_last"), "channels_last"),
        **settings,
        "first_pass_s": first,
        "graphs": compiled,
        "recompiles": compiled_graphs() - graphs - compiled,
        "seconds": seconds,
        "mvoxels_per_s": math.prod(case["volume"]) / seconds / 1e6,
        "peak_mib": mem.mib,
        "network_windows": sum(windows),  # the padded last batch counted whole
        "window_batches": len(windows),
        "forward_ms_per_batch": forward_s * 1e3,
        "forward_share": forward_s * len(windows) / seconds,
        **({"profile_forward": kernel_profile(forward, device)} if case.get("profile") else {}),
    }
    if case.get("labels_file"):
        np.save(case["labels_file"], infer().argmax(1).to(torch.uint8).cpu().numpy())
    return out


class StepProfile:
    """``--profile`` of a bundle run: the trainer's iterations 2 to ``steps + 1`` of the last epoch (the first waits
    for the loader's thread), from fetching the batch to the end of the step, through ``profile_summary``."""

    def __init__(self, device: Any, last_epoch: int, steps: int = 4) -> None:
        self.device, self.last_epoch, self.steps = device, last_epoch, steps
        self.prof: Any = None
        self.summary: dict = {}
        self.count, self.t0 = 0, 0.0

    @property
    def running(self) -> bool:
        return self.prof is not None and not self.summary

    def started(self, engine: Any) -> None:
        if self.prof is None and engine.state.epoch == self.last_epoch and \
                (engine.state.iteration - 1) % engine.state.epoch_length == 1:
            from torch.profiler import ProfilerActivity, profile

            synchronize(self.device)
            self.prof = profile(activities=[ProfilerActivity.CUDA if self.device.type == "cuda" else
                                            ProfilerActivity.CPU])
            self.prof.start()
            self.t0 = time.perf_counter()

    def completed(self, engine: Any) -> None:
        if not self.running:
            return
        self.count += 1
        if self.count == self.steps or engine.state.iteration % engine.state.epoch_length == 0:
            synchronize(self.device)
            wall = (time.perf_counter() - self.t0) / self.count
            self.prof.stop()
            self.summary = profile_summary(self.prof.events(), self.count, wall, self.device.type == "cuda")


def measure_bundle(case: dict, wait_turn: Callable[[], None] = _noop) -> dict:
    """Training iterations per second of the flagship bundle as configured for the device (compiled network and
    data pipeline on a GPU), the share of step time spent waiting for data, and what compilation cost.

    A step runs from fetching a batch (Ignite's GET_BATCH_STARTED) to the end of the iteration; the wait is
    GET_BATCH_STARTED -> GET_BATCH_COMPLETED. The first epoch (compilation, the first validation) runs before
    ``wait_turn()`` and is not counted; every later epoch validates (``val_interval`` 1), outside the steps. The
    share is given over all steps and over the steps after each epoch's first batch (``data_wait_share_steady``:
    an epoch's first batch waits for the loader's thread to start, which weighs a lot in a sample of a few batches
    per epoch). ``graphs_after_first_epoch`` counts compilations after the first epoch (0: no recompilation).
    """
    import torch
    from ignite.engine import Events
    from monai.bundle import ConfigWorkflow

    from monai_unet_variants.acceleration import compiled_graphs
    from monai_unet_variants.data import ensure_sample_data, make_dataset

    out = Path(tempfile.mkdtemp(prefix="muv_bench_bundle_"))
    overrides = dict(case.get("overrides", {}))
    settings = apply_settings(pop_settings(overrides))
    if case.get("scale"):  # the first N cases of a clinical-size set, a fresh disk cache, validation left out
        data_dir = Path(case["scale_data"])
        meta = json.loads((data_dir / "dataset.json").read_text())
        first = meta["training"][: case["scale"] + 1]
        datalist = out / "datalist.json"
        datalist.write_text(json.dumps({"training": first[:-1], "validation": first[-1:]}).replace("./", f"{data_dir}/"))
        overrides.update({"datalist": str(datalist), "cache_gb": str(case["cache_gb"]), "cache_dir": str(out / "cache")})
    elif case.get("cases"):
        data_dir = make_dataset(out / "data", num_train=case["cases"], num_test=1, dicom=False, progress=False)
    else:
        data_dir = ensure_sample_data(case.get("sample_dir") or None)
    bundle_dir = Path(case.get("bundle_dir") or FLAGSHIP)
    workflow = ConfigWorkflow(
        config_file=str(bundle_dir / "configs" / "train.json"),
        meta_file=str(bundle_dir / "configs" / "metadata.json"),
        logging_file=False,
        workflow_type=None,
        bundle_root=str(out),
        dataset_dir=str(data_dir),
        epochs=case["epochs"],
        val_interval=1,
        device=f"$torch.device('{case['device']}')",
        **{"network_def#channels": case["channels"]},
        **({"roi_size": [case["roi_size"]] * 3} if case.get("roi_size") else {}),
        **overrides,
    )
    if case.get("scale"):
        from monai_unet_variants.runtime import reuse_freed_memory

        reuse_freed_memory(True)  # the allocator as `python -m monai.bundle run` sets it (here the bundle is a guest)
        # training alone: a clinical-size validation takes minutes on a CPU (the sliding-window section times it)
        handlers = workflow.parser.get("train#handlers")
        final = next(i for i, h in enumerate(handlers) if h["_target_"].endswith("FinalValidationHandler"))
        workflow.parser[f"train#handlers#{final}#_disabled_"] = True
    setup = time.perf_counter()
    workflow.initialize()
    trainer = workflow.parser.get_parsed_content("train#trainer")
    settings.update(extras_of(workflow.parser.get_parsed_content("network")))
    setup = time.perf_counter() - setup
    rss_after_setup = _rss_kib("VmHWM") * 1024 / 1e9
    marks: dict[str, float] = {}
    waits: list[float] = []
    steps: list[float] = []
    firsts: list[bool] = []
    graphs: dict[str, int] = {}
    durations: dict[str, float] = {}

    def on(event: Any, fn: Callable[[Any], None]) -> None:
        trainer.add_event_handler(event, fn)

    on(Events.GET_BATCH_STARTED, lambda e: marks.update(start=time.perf_counter()))
    on(Events.GET_BATCH_COMPLETED, lambda e: marks.update(got=time.perf_counter()))
    profiled = StepProfile(torch.device(case["device"]), case["epochs"]) if case.get("profile") else None
    if profiled:
        on(Events.ITERATION_STARTED, profiled.started)

    def done(e: Any) -> None:
        if e.state.iteration == 1:
            durations["first_iteration_s"] = time.perf_counter() - marks["start"]
        if e.state.epoch > 1 and not (profiled and profiled.running):  # profiled steps are not timed
            waits.append(marks["got"] - marks["start"])
            steps.append(time.perf_counter() - marks["start"])
            firsts.append((e.state.iteration - 1) % e.state.epoch_length == 0)

    def epoch_done(e: Any) -> None:  # attached after the config's handlers: runs after the validation
        if e.state.epoch == 1:
            durations["first_epoch_s"] = time.perf_counter() - marks["epoch"]
            graphs["first_epoch"] = compiled_graphs()
            wait_turn()

    on(Events.ITERATION_COMPLETED, done)
    if profiled:
        on(Events.ITERATION_COMPLETED, profiled.completed)
    on(Events.EPOCH_STARTED, lambda e: marks.update(epoch=time.perf_counter()))
    on(Events.EPOCH_COMPLETED, epoch_done)
    graphs["start"] = compiled_graphs()
    workflow.run()
    graphs["end"] = compiled_graphs()
    def parsed(key: str, default: Any = None) -> Any:  # an older bundle (--bundle_dir) may lack a setting
        return workflow.parser.get_parsed_content(key) if workflow.parser.get(key) is not None else default

    steady = [(w, s) for w, s, first in zip(waits, steps, firsts) if not first]
    result = {
        "epochs_counted": case["epochs"] - 1,
        "iterations": len(steps),
        "training_cases": len(parsed("train_datalist")),
        "batch_size": parsed("batch_size"),
        "roi_size": parsed("roi_size"),
        "num_workers": parsed("num_workers"),
        "data_device": str(parsed("data_device", "cpu")),
        "compile": parsed("train#trainer#compile", False),
        "amp": parsed("train#trainer#amp"),
        **settings,
        "iterations_per_s": len(steps) / sum(steps) if steps else float("nan"),
        "step_ms": 1e3 * statistics.median(steps) if steps else float("nan"),
        "data_wait_share": sum(waits) / sum(steps) if steps else float("nan"),
        "data_wait_share_steady": sum(w for w, _ in steady) / sum(s for _, s in steady) if steady else float("nan"),
        **({"profile_step": profiled.summary} if profiled else {}),
        "graphs_first_epoch": graphs.get("first_epoch", graphs["end"]) - graphs["start"],
        "graphs_after_first_epoch": graphs["end"] - graphs.get("first_epoch", graphs["end"]),
        "setup_s": setup,
        "peak_rss_setup_gb": rss_after_setup,
        "peak_rss_gb": _rss_kib("VmHWM") * 1024 / 1e9,
        **durations,
    }
    dataset = workflow.parser.get_parsed_content("train#dataset")
    if hasattr(dataset, "budget"):
        result.update(cached_in_memory=dataset._cache.in_memory(), cached_on_disk=len(dataset._cache)
                      - dataset._cache.in_memory(), cache_memory_gb=dataset.budget.used / 1e9)
    workflow.finalize()
    shutil.rmtree(out, ignore_errors=True)
    return result


KINDS = {"network": measure_case, "gates": measure_gates, "roof": measure_roof,
         "sliding_window": measure_sliding_window, "bundle": measure_bundle}


def run_in_process(case: dict) -> dict:
    """Run one case in this process and return its figures (an ``error`` entry if it failed)."""
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


class Child:
    """One case in its own process: it prepares, says so (``<n>.ready`` in ``turn_dir``), waits for ``<n>.go``, times,
    and prints its figures as the last line of its output."""

    def __init__(self, index: int, case: dict, turn_dir: Path, env: dict) -> None:
        self.index, self.case = index, case
        self.ready, self.go = turn_dir / f"{index}.ready", turn_dir / f"{index}.go"
        self.stdout, self.stderr = (open(turn_dir / f"{index}.{n}", "w+") for n in ("out", "err"))
        self.started = time.monotonic()
        self.error = ""
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "--_case", json.dumps(case), "--_turn", str(turn_dir), "--_index", str(index)],
            stdout=self.stdout, stderr=self.stderr, env=env)

    def waiting(self) -> bool:
        return self.proc.poll() is None and self.ready.exists()

    def stop(self, why: str) -> None:
        """End a child that ran past its time, with the Python stacks of its threads in its stderr (where it hung)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGUSR1)  # faulthandler: every thread's stack, see main()
            time.sleep(2)
            self.proc.kill()
            self.proc.wait()
        self.error = why

    def result(self, verbose: bool) -> dict:
        self.stdout.seek(0)
        self.stderr.seek(0)
        out, err = self.stdout.read(), self.stderr.read()
        if verbose and err:
            sys.stderr.write(err)
        if self.error:  # the main thread's innermost frames from faulthandler's dump (most recent call first)
            dump = err[max(err.rfind("Current thread"), err.rfind("most recent call first"), 0):].splitlines()
            where = [ln.strip() for ln in dump if ln.strip().startswith("File ")][:4]
            return {**self.case, "error": f"{self.error}, in: {' <- '.join(where) or 'no stack dumped'}"}
        if self.proc.returncode != 0:
            tail = err.strip().splitlines()[-1:] or [f"exit {self.proc.returncode}"]
            return {**self.case, "error": tail[0]}
        return {**self.case, **json.loads(out.strip().splitlines()[-1])}


def heavy(case: dict) -> bool:
    """Whether a case compiles (tens of seconds of preparation) or trains a bundle."""
    overrides = case.get("overrides", {})
    return bool(compile_mode(case.get("options", {}))) or case["kind"] == "bundle" or (
        case["kind"] == "sliding_window" and case["device"].startswith("cuda")
        and str(overrides.get("compile", True)).lower() not in ("false", "0", "no"))


def waves(count: int, jobs: int, is_heavy: Sequence[bool]) -> list[list[int]]:
    """Case indices in waves of at most ``jobs``, the heavy cases dealt out evenly so that every wave's slowest
    preparation is shared by as many light cases as fit."""
    n_waves = max(1, math.ceil(count / max(1, jobs)))
    out: list[list[int]] = [[] for _ in range(n_waves)]
    for i in [i for i in range(count) if is_heavy[i]] + [i for i in range(count) if not is_heavy[i]]:
        min(out, key=len).append(i)
    return [sorted(w) for w in out]


def run_children(cases: Sequence[dict], jobs: int = 1, verbose: bool = False, timeout: float = 0,
                 progress: Callable[[dict], None] | None = None,
                 on_result: Callable[[dict], None] | None = None) -> list[dict]:
    """Run every case in its own process, ``jobs`` at a time: a wave of children prepares together, then each
    times alone while the others wait (in case order), then the next wave starts. A child still preparing or timing
    after ``timeout`` seconds (0: no limit) is stopped and reported with the place it was stuck. Interrupted (SIGINT,
    as ``timeout -s INT`` sends it), the children are ended and the cases that finished are returned, the others as
    errors, so that the caller still compares and writes what was measured."""
    results: list[dict] = [{} for _ in cases]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    if jobs > 1:  # two compile workers per child: jobs x cores worker processes would crowd the machine
        env.setdefault("TORCHINDUCTOR_COMPILE_THREADS", "2")
    with tempfile.TemporaryDirectory(prefix="muv_bench_turns_") as tmp:
        wave: list[Child] = []
        try:
            for indices in waves(len(cases), jobs, [heavy(c) for c in cases]):
                wave = [Child(i, cases[i], Path(tmp), env) for i in indices]
                while any(c.proc.poll() is None and not c.ready.exists() for c in wave):
                    for c in wave:
                        if timeout and c.proc.poll() is None and not c.ready.exists() and \
                                time.monotonic() - c.started > timeout:
                            c.stop(f"still preparing after {timeout:g} s")
                    time.sleep(0.2)
                for c in wave:
                    if progress:
                        progress(c.case)
                    if c.waiting():
                        c.go.touch()
                        try:
                            c.proc.wait(timeout=timeout or None)
                        except subprocess.TimeoutExpired:
                            c.stop(f"still timing after {timeout:g} s")
                    c.proc.wait()
                    results[c.index] = c.result(verbose)
                    if on_result:
                        on_result(results[c.index])
        except KeyboardInterrupt:  # a time limit (timeout -s INT): keep what finished, report the rest as not run
            for c in wave:
                if c.proc.poll() is None:
                    c.proc.kill()
                    c.proc.wait()
            print(f"benchmark: interrupted; {sum(bool(r) for r in results)} of {len(cases)} cases finished",
                  file=sys.stderr, flush=True)
            for i, case in enumerate(cases):
                results[i] = results[i] or {**case, "error": "not run: the benchmark was interrupted"}
    return results


def child_main(case: dict, turn_dir: str, index: int) -> int:
    """The child's side of ``run_children``: prepare, announce, wait for the turn, time, print the figures."""
    import faulthandler

    faulthandler.register(signal.SIGUSR1, all_threads=True)

    def wait_turn() -> None:
        if not turn_dir:
            return
        (Path(turn_dir) / f"{index}.ready").touch()
        go = Path(turn_dir) / f"{index}.go"
        while not go.exists():
            time.sleep(0.05)

    process_settings(case)
    print(json.dumps(KINDS[case["kind"]](case, wait_turn)))
    return 0


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
    ("compile_s", "{:>7.0f}", "comp s"),
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
                    compiled = (f"; compiled in {r['compile_s']:.0f} s (training graph) + {r['compile_eval_s']:.0f} s "
                                f"(inference graph), {r['recompiles']} recompilations while timed"
                                if "compile_s" in r else "")
                    out.append(f"{dims}D {label(r)} against the default: {_ratios(r, base)}{compiled}")
        out += _against_basicunet(rows, dims)
        nested, ref = ok_rows(rows, "unetplusplus", dims), ok_rows(rows, "monai_basicunetplusplus", dims)
        if nested and ref:
            out.append(f"{dims}D UNet++ against MONAI's BasicUNetPlusPlus at the same widths: params "
                       f"{nested['params']:,} / {ref['params']:,}, {_ratios(nested, ref)}")
        unet = [r for r in rows if r["spatial_dims"] == dims and r["network"] == "unet" and "efficiency" in r]
        best = max(unet, key=lambda r: r["efficiency"], default=None)
        if best:
            out.append(f"{dims}D U-Net training step: best {best['efficiency']:.0%} of the roof ({label(best)}, "
                       f"{best['fwd_bwd_ms']:.1f} ms)")
    return out


def _against_basicunet(rows: Sequence[dict], dims: int) -> list[str]:
    """Every network's forward+backward time against MONAI's BasicUNet under the same options (target: <= 1.5)."""
    out = []
    for opts in {json.dumps(r.get("options", {}), sort_keys=True) for r in rows if r["spatial_dims"] == dims}:
        options = json.loads(opts)
        ref = ok_rows(rows, "monai_basicunet", dims, **options)
        if not ref:
            continue
        ours = [r for r in rows if r["spatial_dims"] == dims and r.get("options", {}) == options and "error" not in r
                and r["network"] not in MONAI_NETS]
        if ours:
            ratios = ", ".join(f"{r['network']} x{r['fwd_bwd_ms'] / ref['fwd_bwd_ms']:.2f}"
                               for r in sorted(ours, key=lambda r: r["network"]))
            over = [r["network"] for r in ours if r["fwd_bwd_ms"] > 1.5 * ref["fwd_bwd_ms"]]
            out.append(f"{dims}D forward+backward against MONAI's BasicUNet, both {'+'.join(options) or 'eager'}: "
                       f"{ratios}; over 1.5x: {', '.join(over) or 'none'}")
    return out


# ---------------------------------------------------------------------------------------------------- main


#: what ``--smoke`` sets, each unless typed on the command line
SMOKE = {"channels": "8,16,32,64,128", "size2d": 64, "size3d": 32, "batch": 1, "warmup": 0, "repeats": 1,
         "roof_size": 16, "sw_volume": "48,48,32", "sw_roi": 32, "bundle_epochs": 2, "bundle_roi": 32}


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu", help="cpu or cuda (cuda runs with AMP fp16)")
    p.add_argument("--dims", default="2,3", help="spatial dims to measure (default 2,3)")
    p.add_argument("--networks", default="", help="comma-separated names (default: every registered network)")
    p.add_argument("--monai_networks", default=",".join(MONAI_NETS),
                   help="MONAI's networks measured beside them, comma-separated (default: all of "
                        f"{', '.join(MONAI_NETS)}; '' none: their ratios are then left out)")
    p.add_argument("--channels", default="16,32,64,128,256", help="widths (default: the bundles')")
    p.add_argument("--size2d", type=int, default=256, help="2D patch edge (default 256)")
    p.add_argument("--size3d", type=int, default=96, help="3D patch edge (default 96)")
    p.add_argument("--batch", type=int, default=2, help="batch size (default 2)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--roof_size", type=int, default=64, help="edge of the roof convolution's volume")
    p.add_argument("--options", default="",
                   help="also try these on --option_networks, comma-separated, several at once joined by '+', "
                   "on other networks than --option_networks after ':' (e.g. 'compile,compile_cudagraphs:unet/denseunet'): "
                   + ",".join(OPTIONS) + " (see the module's doc)")
    p.add_argument("--option_networks", default="unet,attention_unet",
                   help="networks for the --options trials ('all': every network measured, MONAI's included)")
    p.add_argument("--option_dims", default="", help="spatial dims of the --options trials (default: --dims)")
    p.add_argument("--compile_backend", default="inductor",
                   help="torch.compile backend of the compile options (default inductor; 'eager' checks the command "
                   "quickly)")
    p.add_argument("--profile", action="store_true",
                   help="after the timings, profile each network case's training step and forward pass and each "
                   "sliding-window trial's window batch and a few steps of each bundle run: kernel time by kind, the "
                   "longest kernels, the share of wall time the device is busy")
    p.add_argument("--sw_volume", default="512,512,128", help="sliding-window volume (empty: skip)")
    p.add_argument("--sw_roi", type=int, default=0, help="sliding-window roi edge (default: the bundle's)")
    p.add_argument("--sw_trials", default="",
                   help="sliding-window trials besides the inference config as it is, separated by ';', each a list "
                   "of config overrides such as 'compile=false,sw_batch_size=8', or settings of the process: "
                   "'cudnn_benchmark=true', 'force_layout=true', 'layout_opt=false', 'cl_inputs=true', 'cl_norm=true' "
                   "(the options of those names); with trials, an eager float32 run ("
                   + REFERENCE_TRIAL + ") is added and every label map is compared with its")
    p.add_argument("--sw_checkpoint", default="", help="weights for the sliding-window network (default: random)")
    p.add_argument("--sw_repeats", type=int, default=1, help="timed sliding-window passes (median)")
    p.add_argument("--bundle_epochs", type=int, default=3, help="bundle training epochs, first not counted (0: skip)")
    p.add_argument("--bundle_roi", type=int, default=0, help="bundle training roi edge (default: the bundle's)")
    p.add_argument("--bundle_cases", type=int, default=0,
                   help="training cases of a synthetic set made for the bundle run (default: the built-in sample)")
    p.add_argument("--bundle_trials", default="",
                   help="bundle runs besides the config as it is, separated by ';', e.g. 'data_device=cpu' (config "
                   "overrides) or 'cl_inputs=true,cl_norm=true' (settings of the process, as in --sw_trials)")
    p.add_argument("--bundle_dir", default="",
                   help="bundle folder for the bundle run (default: the flagship; e.g. an older copy to compare with)")
    p.add_argument("--sample_dir", default="", help="synthetic sample folder for the bundle run")
    p.add_argument("--scale_cases", default="8,16,32",
                   help="scale section: training cases of the clinical-size set per run (default 8,16,32)")
    p.add_argument("--scale_data", default="",
                   help="scale section: a clinical-size set (python -m monai_unet_variants.data --clinical); made in "
                   "a temporary folder when not given")
    p.add_argument("--scale_cache_gb", type=float, default=2.0,
                   help="scale section: the bundle's --cache_gb (default 2: the larger runs exceed it)")
    p.add_argument("--scale_extrapolate", type=int, default=281,
                   help="scale section: peak RSS extrapolated to this many cases (default 281, MSD Task07)")
    p.add_argument("--sections", default="networks,gates,sliding_window,bundle",
                   help="what to measure (default: networks,gates,sliding_window,bundle; scale: the bundle on "
                   "clinical-size sets, cache build, peak memory and epoch time against N, only when named)")
    p.add_argument("--smoke", action="store_true",
                   help="tiny sizes and one repeat (an option typed beside it still counts): checks the command, not "
                   "speed")
    p.add_argument("--out", default="benchmark_results", help="folder for results.json and results.csv")
    p.add_argument("--verbose", action="store_true", help="show the children's stderr")
    p.add_argument("--in_process", action="store_true",
                   help="run every case in this process (faster start; peak memory then shares one heap)")
    p.add_argument("--jobs", type=int, default=1,
                   help="cases prepared (built, compiled, warmed up) at once, each in its own process; they time "
                   "one after another (default 1)")
    p.add_argument("--case_timeout", type=float, default=0,
                   help="stop a case still preparing or timing after this many seconds and report where it was "
                   "(default 0: no limit)")
    p.add_argument("--report", default="",
                   help="only print the tables and findings of saved results (results.json, or results_partial.jsonl "
                   "of a run cut short)")
    p.add_argument("--_case", default="", help=argparse.SUPPRESS)
    p.add_argument("--_turn", default="", help=argparse.SUPPRESS)
    p.add_argument("--_index", type=int, default=0, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.smoke:  # tiny sizes where the command line does not say otherwise (`--smoke --sw_volume ""` skips it)
        unset = object()
        p.set_defaults(**dict.fromkeys(SMOKE, unset))
        typed = vars(p.parse_args(argv))
        for name, value in SMOKE.items():
            if typed[name] is unset:
                setattr(args, name, value)
    return args


def parse_options(text: str) -> list[tuple[dict, list[str] | None]]:
    """``"compile,compile+channels_last:unet/denseunet"`` -> ``[({"compile": True}, None), ({"compile": True,
    "channels_last": True}, ["unet", "denseunet"])]``: option sets, and the networks of each when it names them."""
    out = []
    for trial in filter(None, (c.strip() for c in text.split(","))):
        combo, _, networks = trial.partition(":")
        names = combo.split("+")
        unknown = [n for n in names if n not in OPTIONS]
        if unknown:
            raise SystemExit(f"unknown option {unknown[0]!r}: choose from {OPTIONS}")
        compile_mode({n: True for n in names})  # one compile mode per trial
        out.append(({n: True for n in names}, networks.split("/") if networks else None))
    return out


def plan(args: argparse.Namespace) -> list[dict]:
    from monai_unet_variants import list_networks

    channels = [int(c) for c in args.channels.split(",")]
    amp = args.device.startswith("cuda")
    base = {"device": args.device, "channels": channels, "batch": args.batch, "warmup": args.warmup,
            "repeats": args.repeats, "norm": ["instance", {"affine": True}], "amp": amp,
            "compile_backend": args.compile_backend, "profile": args.profile}
    names = args.networks.split(",") if args.networks else [n for n in list_networks() if n != "composable"]
    monai = [n.strip() for n in args.monai_networks.split(",") if n.strip()]
    unknown = [n for n in monai if n not in MONAI_NETS]
    if unknown:
        raise SystemExit(f"--monai_networks: unknown {unknown[0]!r}; choose from {', '.join(MONAI_NETS)}")
    option_names = [*names, *monai] if args.option_networks == "all" else args.option_networks.split(",")
    names = [*names, *(v for v in VARIANTS if VARIANTS[v][0] in names), *monai]
    options = parse_options(args.options)
    option_dims = {int(d) for d in (args.option_dims or args.dims).split(",")}
    cases = [{"kind": "roof", **base, "size": args.roof_size, "spatial_dims": 3, "network": "conv3d_64"}]
    for dims in (int(d) for d in args.dims.split(",")):
        size = args.size2d if dims == 2 else args.size3d
        for name in names:
            cases.append({"kind": "network", **base, "network": name, "spatial_dims": dims, "size": size})
        if "attention_unet" in names:
            cases.append({"kind": "gates", **base, "network": "attention gates", "spatial_dims": dims, "size": size})
        for opts, networks in options if dims in option_dims else []:
            for name in networks or option_names:
                cases.append({"kind": "network", **base, "network": name, "spatial_dims": dims, "size": size,
                              "options": opts})
    if args.bundle_epochs:  # before the sliding window: a run cut short at its time limit keeps these
        bundle = {"kind": "bundle", **base, "network": "flagship", "spatial_dims": 3,
                  "epochs": max(2, args.bundle_epochs), "roi_size": args.bundle_roi, "sample_dir": args.sample_dir,
                  "cases": args.bundle_cases, "bundle_dir": args.bundle_dir}
        trials = [t for t in args.bundle_trials.split(";") if t.strip()]
        cases.append({**bundle, "trial": "as configured", "overrides": {}})
        cases += [{**bundle, "trial": t.strip(), "overrides": parse_trial(t)} for t in trials]
    if args.sw_volume:
        sw = {"kind": "sliding_window", **base, "network": "flagship", "spatial_dims": 3,
              "volume": [int(v) for v in args.sw_volume.split(",")], "roi_size": args.sw_roi,
              "repeats": args.sw_repeats, "checkpoint": args.sw_checkpoint}
        trials = [t for t in args.sw_trials.split(";") if t.strip()]
        if trials and args.device.startswith("cuda"):  # on a CPU the config as it is runs eager float32 already
            trials = [REFERENCE_TRIAL, *trials]
        cases.append({**sw, "trial": "as configured", "overrides": {}})
        cases += [{**sw, "trial": t.strip(), "overrides": parse_trial(t)} for t in trials]
    sections = {s.strip() for s in args.sections.split(",")}
    for n in (int(v) for v in args.scale_cases.split(",") if v.strip()) if "scale" in sections else []:
        cases.append({"kind": "bundle", **base, "network": "flagship", "spatial_dims": 3, "epochs": 2,
                      "roi_size": args.bundle_roi, "trial": f"scale N={n}", "scale": n, "scale_data": args.scale_data,
                      "cache_gb": args.scale_cache_gb, "overrides": {}})
    kinds = {"roof": "networks", "network": "networks", "gates": "gates", "sliding_window": "sliding_window",
             "bundle": "bundle"}
    return [c for c in cases if ("scale" if c.get("scale") else kinds[c["kind"]]) in sections]


def compare_label_maps(results: list[dict], files: dict[int, Path]) -> None:
    """Fraction of voxels of every sliding-window trial's label map equal to the reference trial's (``agreement``):
    eager float32 with window batch 2 (``REFERENCE_TRIAL`` on a GPU, the config as it is on a CPU)."""
    import numpy as np

    ref = next((i for i, r in enumerate(results) if r.get("trial") == REFERENCE_TRIAL and "error" not in r), None)
    if ref is None:  # a CPU run: the config as it is (eager, float32) is the reference
        ref = next((i for i, r in enumerate(results) if r.get("kind") == "sliding_window"
                    and r.get("trial") == "as configured" and "error" not in r), None)
    if ref is None or not files[ref].is_file():
        return
    reference = np.load(files[ref])
    for i, path in files.items():
        if "error" not in results[i] and path.is_file():
            results[i]["agreement"] = float((np.load(path) == reference).mean())


def _sliding_window_line(r: dict) -> str:
    if "error" in r:
        return f"sliding window ({r.get('trial')}): failed: {r['error']}"
    what = (f"sw_batch {r['sw_batch_size']}, {'compiled' + (' ' + r['compile_mode'] if r['compile_mode'] else '') if r['compile'] else 'eager'}, "
            f"{'AMP fp16' if r['amp'] else 'float32'}{', channels-last' if r.get('channels_last') else ''}"
            f"{', cuDNN benchmark' if r.get('cudnn_benchmark') else ''}"
            f"{', layout forced channels-last' if r.get('force_layout') else ''}"
            f"{', no layout optimization' if r.get('layout_opt') is False else ''}"
            f"{', conv inputs channels-last' if r.get('cl_inputs') else ''}"
            f"{', layout-keeping norms' if r.get('cl_norm') else ''}")
    agree = f", label map = reference on {r['agreement']:.4%} of voxels" if "agreement" in r else ""
    return (f"sliding window [{r['trial']}] ({what}; roi {r['roi_size']}, overlap {r['overlap']}) on "
            f"{'x'.join(map(str, r['volume']))}: {r['seconds']:.2f} s, {r['mvoxels_per_s']:.1f} Mvoxel/s, first pass "
            f"{r['first_pass_s']:.1f} s, {r['recompiles']} recompilations, peak {r['peak_mib']:.0f} MiB; "
            f"{r['window_batches']} window batches, the network alone "
            f"{r['forward_ms_per_batch']:.2f} ms a batch = {r['forward_share']:.0%} of the pass{agree}")


def _bundle_line(r: dict) -> str:
    if "error" in r:
        return f"bundle training ({r.get('trial')}): failed: {r['error']}"
    return (f"bundle training [{r['trial']}] (flagship, {r['training_cases']} training cases, roi {r['roi_size']}, "
            f"batch {r['batch_size']}, data on {r['data_device']}, {'compiled' if r['compile'] else 'eager'}, "
            f"{r.get('cached_in_memory', '?')} cached cases in memory, {r.get('cached_on_disk', 0)} on disk): "
            f"{r['iterations_per_s']:.2f} it/s over {r['iterations']} iterations (median step {r['step_ms']:.1f} ms), "
            f"data wait {r['data_wait_share']:.1%} of step time ({r['data_wait_share_steady']:.1%} after each epoch's "
            f"first batch); first iteration {r.get('first_iteration_s', float('nan')):.1f} s, first epoch "
            f"{r.get('first_epoch_s', float('nan')):.1f} s with its validation; graphs compiled: "
            f"{r['graphs_first_epoch']} in the first epoch, {r['graphs_after_first_epoch']} after")


def _scale_lines(results: Sequence[dict], extrapolate: int) -> list[str]:
    """One line per scale run, then peak RSS extrapolated to ``extrapolate`` cases from the runs whose memory cache
    was full (a least-squares line through them, never falling: beyond the budget only the per-case bookkeeping
    grows)."""
    runs = sorted((r for r in results if r.get("scale")), key=lambda r: r["scale"])
    lines = []
    for r in runs:
        if "error" in r:
            lines.append(f"scale N={r['scale']}: failed: {r['error']}")
            continue
        lines.append(
            f"scale N={r['scale']} (clinical size, --cache_gb {r['cache_gb']}): cache built in {r['setup_s']:.0f} s, "
            f"{r.get('cached_in_memory', '?')} training cases in memory, {r.get('cached_on_disk', 0)} on disk (memory "
            f"cache {r.get('cache_memory_gb', float('nan')):.2f} GB with the validation case); peak RSS "
            f"{r.get('peak_rss_setup_gb', float('nan')):.2f} GB caching, {r['peak_rss_gb']:.2f} GB by the end; epoch "
            f"{r['iterations'] / r['iterations_per_s']:.0f} s ({r['iterations']} steps, median {r['step_ms']:.0f} ms), "
            f"data wait {r['data_wait_share']:.1%} ({r['data_wait_share_steady']:.1%} after the first batch)")
    full = [r for r in runs if "error" not in r and r.get("cached_on_disk")]
    if len(full) >= 2:  # least squares through the runs beyond the budget (one run's peak depends on when the cache
        # threads' largest buffers happen to coincide: a few hundred MB either way)
        n = [float(r["scale"]) for r in full]
        rss = [r["peak_rss_gb"] for r in full]
        mean_n, mean_rss = statistics.fmean(n), statistics.fmean(rss)
        slope = sum((a - mean_n) * (b - mean_rss) for a, b in zip(n, rss)) / sum((a - mean_n) ** 2 for a in n)
        at = mean_rss + max(0.0, slope) * (extrapolate - mean_n)
        lines.append(f"scale: peak RSS changes by {1e3 * slope:+.1f} MB per case once the memory cache is full (N = "
                     f"{', '.join(str(r['scale']) for r in full)}); extrapolated to {extrapolate} cases (no fall "
                     f"assumed): {at:.1f} GB")
    elif runs:
        lines.append("scale: fewer than two runs beyond the memory budget; no extrapolation")
    return lines


def plot_scale(results: Sequence[dict], path: Path) -> Path | None:
    """Peak RSS and cache build time against the number of cases (a PNG), from the scale runs."""
    runs = sorted((r for r in results if r.get("scale") and "error" not in r), key=lambda r: r["scale"])
    if not runs:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = [r["scale"] for r in runs]
    fig, ax = plt.subplots(figsize=(6, 3.6))
    ax.plot(n, [r["peak_rss_gb"] for r in runs], "o-", label="peak RSS")
    ax.plot(n, [r.get("cache_memory_gb", 0) for r in runs], "s--", label="cases cached in memory")
    ax.axhline(runs[0]["cache_gb"], color="grey", lw=0.8, ls=":", label=f"--cache_gb {runs[0]['cache_gb']:g}")
    ax.set_xlabel("clinical-size training cases (512 x 512 x 80-120)")
    ax.set_ylabel("GB")
    ax.set_ylim(bottom=0)
    ax.legend(loc="upper left", fontsize=8)
    ax.set_title("Flagship bundle training on a CPU: memory against data set size", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def render(results: list[dict], extrapolate: int = 281) -> tuple[list[dict], list[str]]:
    """The network rows (with efficiency and ratios added) and the report's lines, from the cases' results."""
    roof = next((r for r in results if r["kind"] == "roof"), {"error": "not measured", "size": "?"})
    rows = [r for r in results if r["kind"] == "network"]
    for r in rows:
        if "error" not in r and "error" not in roof:
            r["efficiency"] = r["tflops_achieved"] / roof["tflops_fwd_bwd"]
        r["label"] = label(r)
    add_ratios(rows)
    report = [f"roof (one 64->64 3^3 conv on {roof['size']}^3): "
              + (f"{roof['tflops_fwd']:.3f} TFLOP/s forward, {roof['tflops_fwd_bwd']:.3f} TFLOP/s forward+backward"
                 if "error" not in roof else f"failed: {roof['error']}")]
    for dims in sorted({r["spatial_dims"] for r in rows}):
        same = [r for r in rows if r["spatial_dims"] == dims]
        report += ["", f"{dims}D, batch {same[0]['batch']} x 1 x {same[0]['size']}^{dims}", format_table(same)]
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
            report.append(_sliding_window_line(r))
        if r["kind"] == "bundle" and not r.get("scale"):
            report.append(_bundle_line(r))
        for key, what in (("profile_step", "training step"), ("profile_forward", "forward")):
            if key in r:
                name = {"network": f"{r['spatial_dims']}D {r.get('label')} {what}",
                        "sliding_window": f"sliding window [{r.get('trial')}], one window batch",
                        "bundle": f"bundle training [{r.get('trial')}], one step"}[r["kind"]]
                report.append(profile_line(f"profile: {name}", r[key]))
    report += _scale_lines(results, extrapolate)
    return rows, report


def report_saved(path: str) -> int:
    """Print the table and findings of saved results: a ``results.json`` or the ``results_partial.jsonl`` of a run
    that was cut short (cases that had not finished are listed as missing)."""
    text = Path(path).read_text()
    if path.endswith(".jsonl"):
        results = [json.loads(line) for line in text.splitlines() if line.strip()]
    else:
        results = json.loads(text)["results"]
    _, report = render(results)
    print("\n".join(report))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args._case:
        return child_main(json.loads(args._case), args._turn, args._index)
    if args.report:
        return report_saved(args.report)
    # Ctrl-C or `timeout -s INT` ends the run with what finished (run_children), also where the shell that started
    # it in the background left SIGINT ignored
    signal.signal(signal.SIGINT, signal.default_int_handler)
    import threading

    import numpy as np
    import torch

    cases = plan(args)
    started = time.strftime("%Y-%m-%d %H:%M")
    device_name = (f"{torch.cuda.get_device_name(0)}, torch {torch.__version__}" if args.device.startswith("cuda")
                   else f"CPU, {os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"benchmark {started} on {device_name}; widths {args.channels}, batch {args.batch}, "
          f"2D {args.size2d}^2, 3D {args.size3d}^3, median of {args.repeats} after {args.warmup} warm-up, "
          f"{args.jobs} case(s) prepared at once")
    work = Path(tempfile.mkdtemp(prefix="muv_bench_sw_"))
    scale = [i for i, c in enumerate(cases) if c.get("scale")]
    if scale and not args.scale_data:  # one clinical-size set for every scale run
        from monai_unet_variants.data import make_dataset

        data = make_dataset(work / "clinical", num_train=max(cases[i]["scale"] for i in scale) + 1, num_test=0,
                            dicom=False, clinical=True, workers=os.cpu_count() or 1)
        for i in scale:
            cases[i] = {**cases[i], "scale_data": str(data)}
    label_files: dict[int, Path] = {}
    maker: threading.Thread | None = None
    sw_cases = [i for i, c in enumerate(cases) if c["kind"] == "sliding_window"]
    if sw_cases:  # one CT-like volume for every trial, made while the first cases prepare
        volume_file = work / "volume.npy"

        def make_volume() -> None:
            try:
                np.save(volume_file, sliding_window_volume(cases[sw_cases[0]]["volume"]))
            except Exception as err:  # the cases then fail on the missing file: say why it is missing
                print(f"benchmark: the sliding-window volume could not be made ({type(err).__name__}: {err})",
                      file=sys.stderr, flush=True)
                raise

        maker = threading.Thread(target=make_volume, daemon=True)
        maker.start()
        for i in sw_cases:
            label_files[i] = work / f"labels_{i}.npy"
            cases[i] = {**cases[i], "volume_file": str(volume_file), "labels_file": str(label_files[i])}
    try:
        from tqdm import tqdm

        bar = tqdm(total=len(cases), desc="benchmark", unit="case", file=sys.stderr)
    except ImportError:
        bar = None

    def progress(case: dict) -> None:
        if case["kind"] == "sliding_window" and maker is not None:
            maker.join()
        if bar is not None:
            bar.set_postfix_str(f"{case['network']} {case['spatial_dims']}D")
            bar.update()

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    partial = out / "results_partial.jsonl"  # every case's figures as soon as they exist (a run cut short keeps them)
    partial.write_text("")

    def keep(result: dict) -> None:
        with open(partial, "a") as f:
            f.write(json.dumps(result) + "\n")

    if args.in_process:
        results = []
        for case in cases:
            progress(case)
            results.append(run_in_process(case))
            keep(results[-1])
    else:
        results = run_children(cases, args.jobs, args.verbose, args.case_timeout, progress, keep)
    if bar is not None:
        bar.close()
    compare_label_maps(results, label_files)
    shutil.rmtree(work, ignore_errors=True)
    rows, report = render(results, args.scale_extrapolate)
    print("\n".join(report))
    if plot_scale(results, out / "scale_rss.png"):
        print(f"wrote {out / 'scale_rss.png'}")
    settings = {k: v for k, v in vars(args).items() if not k.startswith("_")}
    (out / "results.json").write_text(json.dumps(
        {"date": started, "device": device_name, "settings": settings, "results": results, "report": report}, indent=2))
    keys = ["label", "spatial_dims", "size", "batch", *(k for k, _, _ in COLUMNS[1:]), "gflop_fwd_bwd", "mem_vs_unet",
            "tflops_achieved", "compile_eval_s", "recompiles", "error"]
    with open(out / "results.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=keys, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    print(f"\nwrote {out / 'results.json'} and {out / 'results.csv'}")
    failed = [r for r in results if "error" in r]
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
