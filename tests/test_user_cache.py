"""The DICOM reader's cache (``~/.cache/monai_unet_variants``) stays within its limit: least recently used entries go
first, never one that a living process uses; a process that ended (or was killed) leaves nothing that keeps an entry.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from monai_unet_variants.bundle import user_cache
from monai_unet_variants.bundle.user_cache import CACHE_LIMIT_ENV, cache_limit_gb, lease, prune, release

MB = 1_000_000


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch) -> Path:
    """This test's own cache; this process's leases given up after the test."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv(CACHE_LIMIT_ENV, raising=False)
    monkeypatch.setattr(user_cache.DICOM, "warned", False)
    yield tmp_path / "cache" / "monai_unet_variants"
    release()


def _entry(cache: Path, name: str, megabytes: float, age_s: float, links: int = 0) -> Path:
    """An entry of a process that has ended (no lease), of ``megabytes`` MB and ``links`` links in a subfolder (as
    a series' link folder holds them), last used ``age_s`` seconds ago."""
    entry = cache / name
    entry.mkdir(parents=True)
    (entry / "volume.nii.gz").write_bytes(b"\0" * int(megabytes * MB))
    if links:
        (entry / "series").mkdir()
        for i in range(links):
            os.symlink(f"/nowhere/IM{i:04d}.dcm", entry / "series" / f"IM{i:04d}.dcm")
    os.utime(entry, (time.time() - age_s,) * 2)
    return entry


def test_the_limit_is_read_from_the_environment(monkeypatch):
    assert cache_limit_gb() == 20.0
    for text, value in [("5", 5.0), (" 0.5 ", 0.5), ("0", 0.0), ("none", None), ("None", None)]:
        monkeypatch.setenv(CACHE_LIMIT_ENV, text)
        assert cache_limit_gb() == value, text
    for text in ["lots", "-1", "nan", "inf", "20GB"]:
        monkeypatch.setenv(CACHE_LIMIT_ENV, text)
        with pytest.raises(ValueError, match=f"{CACHE_LIMIT_ENV}={text!r}: expected the DICOM cache's limit"):
            cache_limit_gb()
        with pytest.raises(ValueError, match=f"{CACHE_LIMIT_ENV}={text!r}"):  # at each use, not only at a prune
            lease("dicom_volumes", "x")
    with pytest.raises(ValueError, match="kinds"):
        lease("checkpoints", "x")


def test_least_recently_used_entries_go_first_and_a_leased_one_never(cache, caplog):
    old = _entry(cache, "dicom_volumes/old", 1, age_s=3000)
    older = _entry(cache, "dicom_labels/older", 1, age_s=4000)
    recent = _entry(cache, "dicom_volumes/recent", 1, age_s=100)
    links = _entry(cache, "dicom_series/links", 0, age_s=5000, links=3906)  # 3906 x 256 bytes: 1 MB
    other = _entry(cache, "sample_pancreas_v1", 5, age_s=9000)  # not an entry: the sample data lives here too
    mine = lease("dicom_volumes", "mine")  # in use by this process, and the least recently used of all
    (mine / "volume.nii.gz").write_bytes(b"\0" * MB)
    os.utime(mine, (time.time() - 8000,) * 2)
    assert prune(None) == [] and prune(5e-3) == []  # no limit; 5 MB within 5 MB
    with caplog.at_level(logging.INFO, logger="monai_unet_variants.bundle"):
        removed = prune(3.5e-3)  # oldest first, mine skipped: links and older go, 3 MB remain
    assert removed == [links, older]
    assert mine.is_dir() and old.is_dir() and recent.is_dir() and other.is_dir()
    assert "removed 2 least recently used entries (2 MB) to keep it within 0.0035 GB" in caplog.text
    caplog.clear()
    os.utime(old)  # used again: now the most recent of the two unleased
    with caplog.at_level(logging.INFO, logger="monai_unet_variants.bundle"):
        assert prune(0) == [recent, old]
        assert prune(0) == []
    assert mine.is_dir() and (mine / "volume.nii.gz").stat().st_size == MB
    assert caplog.text.count("the rest is in use by running processes") == 1  # said once per process
    release()
    assert prune(0) == [mine] and other.is_dir()


def test_an_entry_is_kept_while_its_process_lives_and_only_then(cache, tmp_path):
    """Another process (a training run) leases an entry; pruning to 0 keeps it while that process lives, also when
    it is killed without a word the lease file goes at the next prune, and the entry with it."""
    script = textwrap.dedent(f"""
        import importlib.util, sys
        spec = importlib.util.spec_from_file_location("user_cache", {str(Path(user_cache.__file__))!r})
        cache = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(cache)
        entry = cache.lease("dicom_volumes", sys.argv[1])
        (entry / "volume.nii.gz").write_bytes(bytes(1000))
        print("leased", flush=True)
        if sys.argv[2] == "wait":
            sys.stdin.read()
    """)
    env = dict(os.environ)
    proc = subprocess.Popen([sys.executable, "-c", script, "theirs", "wait"], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert proc.stdout.readline().strip() == "leased"
        leases = list((cache / "leases").iterdir())
        assert len(leases) == 1 and leases[0].read_text() == "dicom_volumes/theirs\n"
        assert prune(0) == [] and (cache / "dicom_volumes" / "theirs").is_dir()
    finally:
        proc.send_signal(signal.SIGKILL)  # no exit handler runs: its lease file stays behind
        proc.wait()
    assert list((cache / "leases").iterdir()) == leases
    assert prune(0) == [cache / "dicom_volumes" / "theirs"]
    assert not (cache / "leases").exists() or not list((cache / "leases").iterdir())
    # a process that ends as processes do gives its leases up itself
    subprocess.run([sys.executable, "-c", script, "done", "exit"], check=True, env=env, capture_output=True)
    assert (cache / "dicom_volumes" / "done").is_dir() and not list((cache / "leases").iterdir())
    assert prune(0) == [cache / "dicom_volumes" / "done"]


def test_a_cache_that_cannot_be_written_is_named(tmp_path, monkeypatch):
    """A read-only home (as some containers have) or a file in the way: the cache and the fix are named."""
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("")
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocker / "cache"))
    with pytest.raises(NotADirectoryError, match=f"the DICOM cache {blocker / 'cache' / 'monai_unet_variants'} cannot "
                                                 "be written .*set XDG_CACHE_HOME to a writable folder"):
        lease("dicom_volumes", "k")


def test_the_cache_command_shows_and_prunes_it(cache, capsys):
    """``python -m monai_unet_variants.cache``: entries, GB and those in use per kind; ``--prune`` as a run prunes."""
    from monai_unet_variants.cache import main

    old = _entry(cache, "dicom_volumes/old", 2, age_s=100)
    mine = lease("dicom_labels", "mine")
    (mine / "label.nii.gz").write_bytes(b"\0" * MB)
    assert main([]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"DICOM cache {cache} (limit 20 GB, {CACHE_LIMIT_ENV}):"
    assert lines[1].split() == ["dicom_volumes", "1", "entries", "0.002", "GB", "0", "in", "use", "by", "running",
                                "processes"]
    assert lines[2].split()[:6] == ["dicom_labels", "1", "entries", "0.001", "GB", "1"]
    assert main(["--prune", "0"]) == 0
    assert capsys.readouterr().out.startswith("removed 1 entry\n") and not old.exists() and mine.is_dir()
    with pytest.raises(SystemExit):
        main(["--prune", "-1"])
    assert "--prune -1.0: expected a number of GB >= 0" in capsys.readouterr().err


def test_an_entry_needed_by_two_processes_at_once_is_built_once(cache, tmp_path):
    """The ranks of a distributed run check the same inputs at the same moment: one builds each entry, the other
    waits for it and reads it (a volume written eight times over by eight ranks before)."""
    script = textwrap.dedent(f"""
        import importlib.util, os, sys, time
        spec = importlib.util.spec_from_file_location("user_cache", {str(Path(user_cache.__file__))!r})
        cache = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(cache)

        def build(entry):
            with open({str(tmp_path / "builds.txt")!r}, "a") as f:
                f.write(str(os.getpid()) + "\\n")
            time.sleep(1.0)  # long enough for the other process to arrive while this one builds
            (entry / "volume.nii").write_bytes(bytes(1000))

        start = float(sys.argv[1])
        time.sleep(max(0.0, start - time.time()))
        print(cache.cached("dicom_volumes", "shared", ["volume.nii"], build) / "volume.nii")
    """)
    start = str(time.time() + 1.0)
    procs = [subprocess.Popen([sys.executable, "-c", script, start], stdout=subprocess.PIPE, text=True)
             for _ in range(2)]
    outputs = [p.communicate(timeout=60)[0].strip() for p in procs]
    assert [p.returncode for p in procs] == [0, 0]
    assert outputs == [str(cache / "dicom_volumes" / "shared" / "volume.nii")] * 2
    assert len((tmp_path / "builds.txt").read_text().split()) == 1
