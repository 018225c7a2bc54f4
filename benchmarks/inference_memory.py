"""Peak memory and time of the flagship inference at clinical size, stage by stage, against the same pipeline with
MONAI's own resampling, softmax and argmax.

Runs the flagship bundle's ``inference.json`` preprocessing, sliding-window inferer and postprocessing (softmax,
``Invertd`` back to the scan's grid, argmax) on one CT volume, twice, each in a fresh process:

- ``monai``: the config with MONAI's ``Spacingd`` (its whole-volume sampling grid, in the forward resampling and in
  ``Invertd``'s), ``Activationsd(softmax=True)`` (a second copy of the class scores) and ``AsDiscreted`` (torch's
  argmax: an int64 map, and a slow path on a CPU);
- ``bundle``: the config as it is (``MetaSafeSpacingd``: the grid a slab at a time; ``InPlaceSoftmaxd``;
  ``SlabAsDiscreted``).

The network is a 1 x 1 x 1 convolution to 3 classes with fixed weights (what is measured is the data's memory, not the
network's; the two runs' label maps are compared voxel by voxel). Each transform's and the inferer's peak resident
memory is sampled from ``/proc/self/status`` every 5 ms; the run's peak is ``ru_maxrss``. As the bundle command does,
both processes keep freed memory for reuse (``runtime.reuse_freed_memory``; ``--reuse_memory false``: glibc's
defaults, the resident size following the live memory). Prints a table with the ratio bundle / MONAI and writes JSON
(``--json``).

Example::

    python benchmarks/inference_memory.py --shape 512,512,400 --json docs/benchmark_cpu_inference_memory.json
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Sequence

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "bundles" / "attunet_pancreas" / "configs" / "inference.json"
VARIANTS = ("monai", "bundle")
#: the bundle's transforms and what the ``monai`` variant puts in their place
MONAI_OWN = {"monai_unet_variants.bundle.MetaSafeSpacingd": {"_target_": "Spacingd"},
             "monai_unet_variants.bundle.InPlaceSoftmaxd": {"_target_": "Activationsd", "softmax": True},
             "monai_unet_variants.bundle.SlabAsDiscreted": {"_target_": "AsDiscreted"}}
#: stage names, MONAI's -> the bundle's
PAIRS = {"Spacingd": "MetaSafeSpacingd", "Activationsd": "InPlaceSoftmaxd", "AsDiscreted": "SlabAsDiscreted"}


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--image", default="", help="a CT volume (NIfTI) to run on (default: one generated of --shape)")
    p.add_argument("--shape", default="512,512,400", help="the generated volume x,y,z at 0.8 x 0.8 x 2.5 mm")
    p.add_argument("--overlap", type=float, default=0.25,
                   help="sliding-window overlap (its buffers are the volume's size whatever the overlap; default 0.25)")
    p.add_argument("--slab_mb", type=float, default=0,
                   help="the slab resampler's grid budget in MiB (default: its own)")
    p.add_argument("--reuse_memory", default="true",
                   help="keep freed memory for reuse as the bundle command does (its --reuse_memory; default true): "
                        "the resident size then holds what was freed too; false shows the live memory")
    p.add_argument("--workdir", default="", help="where the generated volume goes (default: a temporary folder)")
    p.add_argument("--json", default="", help="write the results here")
    p.add_argument("--variant", choices=VARIANTS, help=argparse.SUPPRESS)  # a child process: one variant's run
    p.add_argument("--result", default="", help=argparse.SUPPRESS)
    return p.parse_args(argv)


class Peaks:
    """Resident memory sampled in a thread; ``stage(name, fn)`` runs ``fn`` and records its peak and duration."""

    def __init__(self) -> None:
        self.stages: dict[str, dict[str, float]] = {}
        self._peak = 0.0
        threading.Thread(target=self._sample, daemon=True).start()

    @staticmethod
    def rss_gb() -> float:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024 / 1e9
        return 0.0

    def _sample(self) -> None:
        while True:
            self._peak = max(self._peak, self.rss_gb())
            time.sleep(0.005)

    def stage(self, name: str, fn: Any, *args: Any) -> Any:
        self._peak = before = self.rss_gb()
        start = time.perf_counter()
        out = fn(*args)
        seconds = time.perf_counter() - start
        entry = self.stages.setdefault(name, {"before_gb": before, "peak_gb": 0.0, "seconds": 0.0})
        entry["peak_gb"] = max(entry["peak_gb"], self._peak, self.rss_gb())
        entry["seconds"] += seconds
        return out


def _swap(config: Any) -> Any:
    """The config with the bundle's transforms replaced by MONAI's own (``MONAI_OWN``)."""
    if isinstance(config, dict):
        new = {k: _swap(v) for k, v in config.items()}
        if new.get("_target_") in MONAI_OWN:
            new.update(MONAI_OWN[config["_target_"]])
        return new
    if isinstance(config, list):
        return [_swap(v) for v in config]
    return config


def run_variant(args: argparse.Namespace) -> dict[str, Any]:
    """One variant's run in this process: the stages' peaks and times, the run's peak, a digest of the label map."""
    import torch
    from monai.bundle import ConfigParser

    from monai_unet_variants.bundle.transforms import SlabAffineTransform
    from monai_unet_variants.options import as_bool
    from monai_unet_variants.runtime import reuse_freed_memory

    reuse_freed_memory(as_bool(args.reuse_memory, "reuse_memory"))
    if args.slab_mb:
        SlabAffineTransform.slab_grid_bytes = int(args.slab_mb * 2**20)
    config = json.loads(CONFIG.read_text())
    if args.variant == "monai":
        config = _swap(config)
    config["postprocessing"]["transforms"] = [t for t in config["postprocessing"]["transforms"] if t != "@writer"]
    parser = ConfigParser(config)
    parser.update({"pixdim": [1.0, 1.0, 1.0], "hu_window": [-87, 199], "roi_size": [64, 64, 64],
                   "overlap": args.overlap, "sw_batch_size": 2, "device": "cpu", "compile": False,
                   "inferer#progress": False})
    pre, inferer, post = (parser.get_parsed_content(k) for k in ("preprocessing", "inferer", "postprocessing"))
    peaks = Peaks()
    for compose in (pre, post):
        for t in compose.transforms:  # each class once: Compose calls the instance, the class holds __call__
            cls = type(t)
            if "_timed" not in cls.__dict__:
                call = cls.__call__
                cls.__call__ = (lambda c, n: lambda self, *a, **k: peaks.stage(n, lambda: c(self, *a, **k)))(
                    call, cls.__name__)
                cls._timed = True
    net = torch.nn.Conv3d(1, 3, 1)
    with torch.no_grad():
        net.weight.copy_(torch.tensor([0.0, 3.0, -2.0]).view(3, 1, 1, 1, 1))
        net.bias.copy_(torch.tensor([0.0, -1.5, 0.5]))  # background, pancreas and tumour each somewhere
    net.eval()
    item = pre({"image": args.image})
    with torch.no_grad():
        scores = peaks.stage("sliding window", lambda: inferer(item["image"][None], net))
    item["pred"] = scores[0]
    del scores
    label = post(item)["pred"]
    digest = hashlib.sha256(label.to(torch.uint8).numpy().tobytes()).hexdigest()[:16]
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9
    return {"variant": args.variant, "stages": peaks.stages, "peak_gb": peak, "label_shape": list(label.shape),
            "label_digest": digest,
            "label_voxels": {str(c): int((label == c).sum()) for c in (0, 1, 2)}}


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.variant:
        Path(args.result).write_text(json.dumps(run_variant(args)))
        return 0
    work = Path(args.workdir or tempfile.mkdtemp(prefix="inference_memory_"))
    work.mkdir(parents=True, exist_ok=True)
    if not args.image:
        from monai_unet_variants.data import make_dataset

        shape = tuple(int(n) for n in args.shape.split(","))
        print(f"generating a {shape[0]} x {shape[1]} x {shape[2]} CT in {work} ...", flush=True)
        root = make_dataset(work / "ct", num_train=1, num_test=1, shape=shape, dicom=False, progress=False)
        args.image = str(next((root / "imagesTs").glob("*.nii.gz")))
    results = {}
    for variant in VARIANTS:
        out = work / f"{variant}.json"
        cmd = [sys.executable, __file__, "--variant", variant, "--result", str(out), "--image", args.image,
               "--overlap", str(args.overlap), "--slab_mb", str(args.slab_mb), "--reuse_memory", args.reuse_memory]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            print(proc.stdout[-3000:] + proc.stderr[-3000:], file=sys.stderr)
            return proc.returncode
        results[variant] = json.loads(out.read_text())
    monai, ours = results["monai"], results["bundle"]
    print(f"\n{args.image}: label map {monai['label_shape']}; peak resident memory per stage (GB) and seconds")
    print(f"{'stage':<34} {'MONAI':>7} {'bundle':>7} {'ratio':>6}   {'MONAI s':>8} {'bundle s':>8}")
    for name, a in monai["stages"].items():  # in the pipeline's order; a swapped transform beside its twin
        mine = PAIRS.get(name, name)
        b = ours["stages"][mine]
        row = name if mine == name else f"{name} / {mine}"
        print(f"{row:<34} {a['peak_gb']:>7.2f} {b['peak_gb']:>7.2f} {b['peak_gb'] / a['peak_gb']:>6.2f}   "
              f"{a['seconds']:>8.1f} {b['seconds']:>8.1f}")
    ratio = ours["peak_gb"] / monai["peak_gb"]
    same = monai["label_digest"] == ours["label_digest"]
    print(f"{'whole run (ru_maxrss)':<34} {monai['peak_gb']:>7.2f} {ours['peak_gb']:>7.2f} {ratio:>6.2f}")
    print(f"label maps {'identical' if same else 'DIFFER'} ({ours['label_voxels']} voxels per class)")
    if args.json:
        Path(args.json).write_text(json.dumps({
            "machine": f"{platform.machine()}, {os.cpu_count()} cores", "python": platform.python_version(),
            "date": time.strftime("%Y-%m-%d"), "image": args.image, "overlap": args.overlap,
            "reuse_memory": args.reuse_memory,
            "peak_gb": {"monai": monai["peak_gb"], "bundle": ours["peak_gb"]}, "ratio": ratio,
            "label_maps_identical": same, "runs": results}, indent=2) + "\n")
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
