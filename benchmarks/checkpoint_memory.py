"""Peak memory of one training step with and without activation checkpointing, for every network.

Each case runs in its own subprocess; the figure is the rise of the process's peak resident memory
(CPU) or ``torch.cuda.max_memory_allocated`` (GPU) during one forward + backward pass (``run.PeakMemory``). The run fails
(exit 1) if checkpointing does not lower the peak for every network.

    python benchmarks/checkpoint_memory.py                 # 3D, batch 1, 64^3, default widths
    python benchmarks/checkpoint_memory.py --size 96 --device cuda
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys


def _peak_memory_class() -> type:
    """``PeakMemory`` of ``benchmarks/run.py``, the file beside this one, loaded from its path (``benchmarks`` is
    a folder of scripts, not a package on ``sys.path``)."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("muv_benchmark_run", Path(__file__).with_name("run.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.PeakMemory


def measure(name: str, size: int, checkpointing: bool, device: str, channels: list[int]) -> dict:
    import torch

    PeakMemory = _peak_memory_class()  # noqa: N806

    from monai_unet_variants import create_network

    torch.manual_seed(0)
    net = create_network(name, spatial_dims=3, in_channels=1, out_channels=3, channels=channels,
                         checkpointing=checkpointing).to(device).train()
    x = torch.randn(1, 1, size, size, size, device=device)
    with PeakMemory(torch.device(device)) as mem:
        net(x).float().square().mean().backward()
    return {"network": name, "checkpointing": checkpointing, "peak_mib": mem.mib}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=64, help="cubic patch size (default 64)")
    parser.add_argument("--channels", default="16,32,64,128,256", help="widths, comma separated")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--networks", default="", help="comma separated names (default: all)")
    parser.add_argument("--json", default="", help="also write the results to this file")
    parser.add_argument("--_case", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    channels = [int(c) for c in args.channels.split(",")]
    if args._case:
        name, ckpt = args._case.split(":")
        print(json.dumps(measure(name, args.size, ckpt == "1", args.device, channels)))
        return 0

    from monai_unet_variants import list_networks

    names = args.networks.split(",") if args.networks else [n for n in list_networks() if n != "composable"]
    rows, ok = [], True
    print(f"{'network':<18}{'plain MiB':>12}{'ckpt MiB':>12}{'saved':>8}")
    for name in names:
        res = {}
        for ckpt in (False, True):
            cmd = [sys.executable, __file__, "--size", str(args.size), "--channels", args.channels,
                   "--device", args.device, "--_case", f"{name}:{int(ckpt)}"]
            # a fixed mmap threshold makes glibc return every freed tensor to the OS, so the peak resident
            # size is the peak of live memory rather than of a fragmented heap
            env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="131072")
            out = subprocess.run(cmd, capture_output=True, text=True, check=True, env=env).stdout.strip().splitlines()[-1]
            res[ckpt] = json.loads(out)["peak_mib"]
        saved = 1 - res[True] / res[False]
        ok &= res[True] < res[False]
        rows.append({"network": name, "plain_mib": res[False], "checkpointing_mib": res[True], "saved": saved})
        print(f"{name:<18}{res[False]:>12.0f}{res[True]:>12.0f}{saved:>8.0%}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"size": args.size, "channels": channels, "device": args.device, "rows": rows}, f, indent=2)
    if not ok:
        print("FAIL: checkpointing did not lower the peak for every network", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
