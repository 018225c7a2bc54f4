"""Process-level speed settings (``monai_unet_variants.runtime``)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

PROBE = textwrap.dedent(
    """
    import re, sys, torch
    from monai_unet_variants.runtime import reuse_freed_memory

    def rss_mib():
        with open("/proc/self/status") as f:
            return int(re.search(r"VmRSS:\\s+(\\d+)", f.read()).group(1)) / 1024

    applied = reuse_freed_memory(sys.argv[1] == "keep")
    before = rss_mib()
    x = torch.ones(64 * 2**20 // 4)  # 64 MiB, written so that its pages are resident
    del x
    print(applied, round(rss_mib() - before))
    """
)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc and /proc are Linux's")
@pytest.mark.parametrize("mode, kept", [("keep", True), ("return", False)])
def test_reuse_freed_memory(mode, kept):
    """Kept: a freed 64 MiB tensor stays resident for the next allocation; returned: it leaves at once."""
    out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True)
    applied, retained = out.stdout.split()
    assert applied == "True"
    assert (int(retained) >= 60) == kept, out.stdout


def test_bundles_configure_the_allocator():
    """Every bundle config that runs a network turns memory reuse on first."""
    import json
    from pathlib import Path

    bundles = Path(__file__).resolve().parents[1] / "bundles"
    configs = [p for p in bundles.glob("*/configs/*.json") if p.stem in ("train", "inference", "evaluate",
                                                                           "multi_gpu_train")]
    assert len(configs) >= 7 * 4
    for path in configs:
        init = json.loads(path.read_text()).get("initialize", [])
        assert "$monai_unet_variants.runtime.reuse_freed_memory()" in init, path
