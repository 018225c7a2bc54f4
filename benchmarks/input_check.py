"""What the bundles' input checks cost at clinical size, against MONAI's own reading of the same DICOM.

Generates ``--cases`` synthetic CT volumes of ``--shape`` (default 512 x 512 x 112) as DICOM series (single-frame
files) and as Enhanced CT files (highdicom's legacy converter: one multi-frame file each), then times, in one run:

- ``check_inputs`` on the series folders (headers only: one series, spacing, orientation, tilt, Modality), and on
  the Enhanced CT folders the first time (frames checked, the volume written to the cache) and cached;
- MONAI's ``LoadImage`` (its ITK reader) on the series folders: what the pipeline reads anyway, the ratio's base;
- ``LoadImage`` on the volumes the Enhanced CTs were read into (a plain NIfTI file in the cache).

Prints a table with each time per case and its ratio to MONAI's reading of the series, and writes the numbers as
JSON (``--json``). Uses its own cache folder (``XDG_CACHE_HOME`` under ``--workdir``).

Example::

    python benchmarks/input_check.py --cases 4 --json docs/benchmark_cpu_inputs.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Sequence


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cases", type=int, default=4, help="volumes to generate (default 4)")
    p.add_argument("--shape", default="512,512,112", help="volume shape x,y,z (default 512,512,112)")
    p.add_argument("--repeats", type=int, default=3, help="timed passes of the repeatable steps (median)")
    p.add_argument("--workdir", default="", help="where the cases go (default: a temporary folder, removed)")
    p.add_argument("--json", default="", help="write the results here")
    return p.parse_args(argv)


def make_cases(root: Path, count: int, shape: tuple[int, int, int]) -> tuple[list[str], list[str]]:
    """``count`` generated CTs as series folders ``series<i>/`` and Enhanced CT folders ``enhanced<i>/volume.dcm``."""
    import highdicom
    import pydicom
    from pydicom.uid import generate_uid

    from monai_unet_variants.data import generate_case, write_dicom_series

    series, enhanced = [], []
    for i in range(count):
        image, _, affine = generate_case(100 + i, shape=shape)
        folder = root / f"series{i}"
        write_dicom_series(image, affine, folder, seed=100 + i)
        slices = [pydicom.dcmread(str(p)) for p in sorted(folder.iterdir())]
        volume = highdicom.legacy.LegacyConvertedEnhancedCTImage(
            legacy_datasets=slices, series_instance_uid=generate_uid(), series_number=2,
            sop_instance_uid=generate_uid(), instance_number=1)
        (root / f"enhanced{i}").mkdir()
        volume.save_as(str(root / f"enhanced{i}" / "volume.dcm"))
        series.append(str(folder))
        enhanced.append(str(root / f"enhanced{i}"))
    return series, enhanced


def seconds(fn: Callable[[], Any], repeats: int) -> float:
    """The median wall time of ``repeats`` calls of ``fn``."""
    times = []
    for _ in range(max(1, repeats)):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def measure(series: list[str], enhanced: list[str], repeats: int) -> dict[str, float]:
    """Seconds per case of each step (see the module's docstring)."""
    import monai_unet_variants.bundle as mb
    from monai.transforms import LoadImage

    from monai_unet_variants.bundle.checks import nifti_reader

    n = len(series)
    itk = LoadImage(image_only=True)  # MONAI's default readers: ITK for a DICOM folder
    nifti = LoadImage(image_only=True, reader=nifti_reader())
    out = {"monai_load_series": seconds(lambda: [itk(p) for p in series], repeats) / n,
           "check_series": seconds(lambda: mb.check_inputs(series), repeats) / n}
    start = time.perf_counter()
    volumes = mb.check_inputs(enhanced)
    out["check_enhanced_first"] = (time.perf_counter() - start) / n
    out["check_enhanced_cached"] = seconds(lambda: mb.check_inputs(enhanced), repeats) / n
    out["load_enhanced_volume"] = seconds(lambda: [nifti(p).sum() for p in volumes], repeats) / n
    out["cached_volume_mb"] = sum(os.path.getsize(p) for p in volumes) / n / 1e6
    out["enhanced_file_mb"] = sum(os.path.getsize(Path(p) / "volume.dcm") for p in enhanced) / n / 1e6
    return out


def table(result: dict[str, float]) -> str:
    base = result["monai_load_series"]
    rows = [("MONAI LoadImage (ITK) of a series folder", "monai_load_series"),
            ("check_inputs, series folder", "check_series"),
            ("check_inputs, Enhanced CT, first (volume written)", "check_enhanced_first"),
            ("check_inputs, Enhanced CT, cached", "check_enhanced_cached"),
            ("LoadImage of the Enhanced CT's cached volume", "load_enhanced_volume")]
    lines = [f"{'step':<52} {'s/case':>8} {'x MONAI load':>13}"]
    lines += [f"{what:<52} {result[key]:>8.3f} {result[key] / base:>13.3f}" for what, key in rows]
    lines.append(f"cached volume {result['cached_volume_mb']:.0f} MB per case (Enhanced CT file "
                 f"{result['enhanced_file_mb']:.0f} MB)")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    shape = tuple(int(v) for v in args.shape.split(","))
    if len(shape) != 3 or min(shape) < 8:
        raise SystemExit(f"--shape {args.shape!r}: expected three edges of at least 8, e.g. 512,512,112")
    workdir = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="input_check_"))
    try:
        workdir.mkdir(parents=True, exist_ok=True)
        cases = workdir / "cases"
        if cases.exists():
            shutil.rmtree(cases)
        cases.mkdir()
        os.environ["XDG_CACHE_HOME"] = str(workdir / "cache")  # a cold cache of its own
        shutil.rmtree(workdir / "cache", ignore_errors=True)
        start = time.perf_counter()
        series, enhanced = make_cases(cases, args.cases, shape)
        print(f"{args.cases} cases of {' x '.join(map(str, shape))} generated in {time.perf_counter() - start:.0f} s",
              file=sys.stderr)
        result = measure(series, enhanced, args.repeats)
    finally:
        if not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)
    print(table(result))
    if args.json:
        import torch

        record = {"date": time.strftime("%Y-%m-%d"), "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
                  "torch": torch.__version__, "cases": args.cases, "shape": list(shape),
                  "seconds_per_case": {k: round(v, 4) for k, v in result.items() if not k.endswith("_mb")},
                  "cached_volume_mb": round(result["cached_volume_mb"], 3),
                  "enhanced_file_mb": round(result["enhanced_file_mb"], 3)}
        Path(args.json).write_text(json.dumps(record, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
