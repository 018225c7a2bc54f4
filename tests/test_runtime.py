"""Process-level speed settings (``monai_unet_variants.runtime``)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

PROBE = textwrap.dedent(
    """
    import importlib.util, re, sys, torch

    # runtime.py alone (it imports nothing of the package): the package's import of MONAI takes seconds here
    spec = importlib.util.spec_from_file_location("runtime", sys.argv[3])
    runtime = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(runtime)
    reuse_freed_memory = runtime.reuse_freed_memory

    def rss_mib():
        with open("/proc/self/status") as f:
            return int(re.search(r"VmRSS:\\s+(\\d+)", f.read()).group(1)) / 1024

    applied = reuse_freed_memory(sys.argv[1] == "keep")
    before = rss_mib()
    retained = []
    for _ in range(4):  # whether glibc trims depends on what else sits at the heap's top: try a few times
        xs = [torch.ones(int(mib) * 2**20 // 4) for mib in sys.argv[2].split(",")]  # written: pages resident
        del xs
        retained.append(rss_mib() - before)
    print(applied, round(min(retained)))
    """
)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc and /proc are Linux's")
@pytest.mark.parametrize(
    "mode, sizes, kept",
    [("keep", "64", True), ("return", "64", False),  # the 2 x 1200 MiB cases take ~10 s each: slow
     pytest.param("keep", "1200,1200", True, marks=pytest.mark.slow),
     pytest.param("return", "1200,1200", False, marks=pytest.mark.slow)],
    ids=["keep-64MiB", "return-64MiB", "keep-2x1200MiB", "return-2x1200MiB"],
)
def test_reuse_freed_memory(mode, sizes, kept):
    """Kept: freed tensors stay resident for the next allocation, also when more than 2 GiB falls free at once (a
    trim threshold of 2 GiB gave that back to the kernel, to be faulted in again in the next training step);
    returned: they leave at once."""
    from monai_unet_variants import runtime

    out = subprocess.run([sys.executable, "-c", PROBE, mode, sizes, runtime.__file__], capture_output=True, text=True,
                         check=True)
    applied, retained = out.stdout.split()
    assert applied == "True"
    total = sum(int(mib) for mib in sizes.split(","))
    assert (int(retained) >= 0.9 * total) == kept, out.stdout


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
        assert "$monai_unet_variants.runtime.reuse_freed_memory_for_bundle(@reuse_memory)" in init, path


def test_bundle_memory_setting_only_where_the_bundle_owns_the_process(monkeypatch):
    """Process-wide allocator settings apply under ``python -m monai.bundle`` (also torchrun's children), not inside
    a host that parses the configs (MONAI Label's server, a script), and never with ``--reuse_memory false``."""
    import os

    from monai_unet_variants import runtime

    calls: list = []
    monkeypatch.setattr(runtime, "reuse_freed_memory", lambda enabled=True: calls.append(enabled) or True)
    cli = [os.path.join("/env", "lib", "python3.11", "site-packages", "monai", "bundle", "__main__.py"), "run"]
    host = ["/env/bin/monailabel", "start_server", "--app", "apps/monaibundle"]
    assert runtime.bundle_owns_process(cli) and not runtime.bundle_owns_process(host)
    assert not runtime.bundle_owns_process([]) and not runtime.bundle_owns_process(["-c"])
    assert runtime.reuse_freed_memory_for_bundle(True, cli) is True and calls == [True]
    assert runtime.reuse_freed_memory_for_bundle(True, host) is False
    assert runtime.reuse_freed_memory_for_bundle("false", cli) is False
    assert runtime.reuse_freed_memory_for_bundle("YES", cli) is True and calls == [True, True]
    with pytest.raises(ValueError, match="--reuse_memory must be true or false"):
        runtime.reuse_freed_memory_for_bundle("maybe", cli)
