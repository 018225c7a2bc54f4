"""What layout Inductor gives a 3D network's convolutions: the code ``torch.compile`` generates, read rather than timed.

    python benchmarks/inductor_layouts.py                       # CPU, bf16 autocast: ~40 s a variant and graph here
    python benchmarks/inductor_layouts.py --device cuda         # a GPU, fp16 autocast
    python benchmarks/inductor_layouts.py --variants plain,cl_inputs+cl_norm+no_layout_opt --modes infer

For each variant (in its own process, Inductor's caches off) and each graph (``infer``: eval mode without gradients;
``train``: the forward graph of a training step) it compiles the network once and counts, in the generated code, the
convolutions whose output Inductor lays out channels-last, the convolution inputs whose buffers are allocated
channels-last (of those allocated in the graph: graph inputs and views are not counted), the fused kernels and
those of them that copy (``clone`` in their name: a layout change). Variants: ``plain`` (channels-first weights; no
channels-last narrow convolutions on a CPU either),
``channels_last`` (channels-last weights, as ``to_device(channels_last=True)`` does on a GPU), and with them
``acceleration.keep_channels_last``'s parts ``cl_inputs`` / ``cl_norm`` and ``no_layout_opt`` (Inductor's layout
optimization off), joined by ``+``. On a CPU, oneDNN chooses convolution layouts by cuDNN's rule (channels-last when
the input or the weight is); the timings of the same variants on a GPU are ``benchmarks/run.py``'s options of the same
names.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys

VARIANTS = "plain,channels_last,channels_last+cl_inputs,channels_last+cl_inputs+cl_norm," \
           "channels_last+cl_inputs+cl_norm+no_layout_opt"
PARTS = ("channels_last", "cl_inputs", "cl_norm", "no_layout_opt")


def count_layouts(code: str) -> dict:
    """Convolutions and their layouts in one graph's generated code (CPU or CUDA wrapper code of Inductor)."""

    def ints(text: str) -> list[int]:
        return [int(v) for v in text.split(",") if v.strip()]

    def channels_last(sizes: list[int], strides: list[int]) -> bool:
        return len(sizes) == 5 and sizes[1] > 1 and strides[1] == 1

    convs = re.findall(r"(buf\d+) = extern_kernels\.convolution\((\w+), \w+,.*\n\s*"
                       r"assert_size_stride\(\1, \(([^)]*)\), \(([^)]*)\)", code)
    allocations = re.findall(r"(buf\d+) = empty_strided_\w+\(\(([^)]*)\), \(([^)]*)\)", code)
    alloc = {name: (ints(sizes), ints(strides)) for name, sizes, strides in allocations}
    inputs = [alloc[c[1]] for c in convs if c[1] in alloc]
    kernels = re.findall(r"^(\w*fused\w*) = async_compile\.", code, re.M)
    return {
        "convolutions": len(convs),
        "outputs_channels_last": sum(channels_last(ints(c[2]), ints(c[3])) for c in convs),
        "inputs_allocated": len(inputs),
        "inputs_channels_last": sum(channels_last(*i) for i in inputs),
        "fused_kernels": len(kernels),
        "copy_kernels": sum("clone" in k for k in kernels),
    }


def measure(device: str, network: str, channels: list[int], size: int, variant: str, mode: str) -> dict:
    """Compile one variant's graph and count its layouts (run in a fresh process)."""
    import torch
    import torch._inductor.config as inductor_config
    from torch._inductor.utils import run_and_get_code

    from monai_unet_variants import create_network
    from monai_unet_variants.acceleration import keep_channels_last
    from monai_unet_variants.networks.blocks.layers import narrow_channels_last

    parts = set(variant.split("+")) - {"plain"}
    if parts - set(PARTS):
        raise ValueError(f"unknown variant part(s) {sorted(parts - set(PARTS))}: use plain or {', '.join(PARTS)}")
    inductor_config.layout_optimization = "no_layout_opt" not in parts
    torch.manual_seed(0)
    with narrow_channels_last(False):  # plain convolutions, also on a CPU (see layers.prefers_channels_last)
        net = create_network(network, spatial_dims=3, in_channels=1, out_channels=3, channels=channels,
                             strides=[2] * (len(channels) - 1), norm=("instance", {"affine": True})).to(device)
    if "channels_last" in parts:
        net = net.to(memory_format=torch.channels_last_3d)
    if parts & {"cl_inputs", "cl_norm"}:
        keep_channels_last(net, conv_inputs="cl_inputs" in parts, norms="cl_norm" in parts)
    x = torch.randn(2, 1, size, size, size, device=device)
    dtype = torch.float16 if device.startswith("cuda") else torch.bfloat16
    compiled = torch.compile(net, dynamic=False)

    def run() -> None:
        net.train(mode == "train")
        with torch.set_grad_enabled(mode == "train"), torch.autocast(device.split(":")[0], dtype=dtype):
            y = compiled(x)
        if mode == "train":
            y.float().mean().backward()

    _, codes = run_and_get_code(run)
    return {"variant": variant, "graph": mode, **count_layouts(codes[0])}  # the first graph: the forward


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--network", default="attention_unet")
    p.add_argument("--channels", default="8,16,32,64", help="widths (default: small, for a quick compile)")
    p.add_argument("--size", type=int, default=32, help="edge of the 2 x 1 x size^3 input")
    p.add_argument("--variants", default=VARIANTS, help="comma-separated, parts joined by '+'")
    p.add_argument("--modes", default="infer,train")
    p.add_argument("--out", default="", help="also write the rows to this JSON file")
    p.add_argument("--one", default="", help=argparse.SUPPRESS)  # variant:mode, in the child process
    args = p.parse_args()
    channels = [int(c) for c in args.channels.split(",")]
    if args.one:
        variant, mode = args.one.split(":")
        print(json.dumps(measure(args.device, args.network, channels, args.size, variant, mode)))
        return 0
    env = {**os.environ, "TORCHINDUCTOR_FORCE_DISABLE_CACHES": "1"}
    print(f"{args.network} 3D, widths {channels}, 2 x 1 x {args.size}^3 on {args.device}, "
          f"{'fp16' if args.device.startswith('cuda') else 'bf16'} autocast; the forward graph of each")
    print(f"{'variant':48s} {'graph':5s} {'convs':>5s} {'out CL':>6s} {'in CL':>9s} {'kernels':>7s} {'copies':>6s}")
    rows, failed = [], 0
    for variant in args.variants.split(","):
        for mode in args.modes.split(","):
            cmd = [sys.executable, __file__, "--device", args.device, "--network", args.network, "--channels",
                   args.channels, "--size", str(args.size), "--one", f"{variant}:{mode}"]
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
            if proc.returncode:
                failed += 1
                print(f"{variant:48s} {mode:5s} failed: {(proc.stderr.strip().splitlines() or ['?'])[-1]}")
                continue
            r = json.loads(proc.stdout.strip().splitlines()[-1])
            rows.append(r)
            print(f"{variant:48s} {mode:5s} {r['convolutions']:5d} {r['outputs_channels_last']:6d} "
                  f"{r['inputs_channels_last']:4d} of {r['inputs_allocated']:2d} {r['fused_kernels']:7d} "
                  f"{r['copy_kernels']:6d}", flush=True)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(rows, f, indent=2)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
