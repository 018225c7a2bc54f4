"""Preprocessed cases within a memory budget: in memory while it lasts, then in a persistent disk cache keyed by the
files and the preprocessing, with the same training samples wherever a case lives."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys

import pytest
import torch
from conftest import FLAGSHIP, training_crops, training_dataset

from monai_unet_variants.bundle.caching import CacheBudget, nbytes


def test_cache_budget_reads_what_is_typed(monkeypatch):
    assert CacheBudget("none").limit == float("inf") and CacheBudget(None).limit == float("inf")
    assert CacheBudget("2").limit == 2e9 and CacheBudget(" 0.5 ").limit == 0.5e9 and CacheBudget(0).limit == 0
    monkeypatch.setattr("monai_unet_variants.bundle.caching.available_memory_gb", lambda: 10.0)
    assert CacheBudget("AUTO").limit == 5e9
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")  # torchrun: four processes on this machine, each caching
    assert CacheBudget("auto").limit == 1.25e9
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (4e9, 80e9))  # a cache on a GPU: its memory
    assert CacheBudget("auto", device="cuda:0").limit == 0.5e9 and CacheBudget("auto", device="cpu").limit == 1.25e9
    for bad in ("lots", "-1"):
        with pytest.raises(ValueError, match=f"--cache_gb '{bad}': expected a number of GB"):
            CacheBudget(bad)
    budget = CacheBudget("0.000001")  # 1000 bytes, taken case by case
    assert budget.take(600) and not budget.take(600) and budget.take(400) and budget.used == 1000
    assert budget.describe() == "0.00 GB of the 0.00 GB budget"


def _cases(cache) -> list:
    """The preprocessed cases' files in a disk cache folder."""
    return sorted(cache.glob("cases/*/case.pt"))


def _same(a, b) -> None:
    assert len(a) == len(b)
    for (image_a, label_a), (image_b, label_b) in zip(a, b, strict=True):
        assert image_a.dtype == torch.float32 and torch.equal(image_a, image_b) and torch.equal(label_a, label_b)


def test_cases_over_the_budget_go_to_disk_and_give_the_same_samples(sample, tmp_path, caplog):
    everything = training_dataset(sample, "cpu", cache_gb="none", num_workers=0)
    case_bytes = [nbytes(c) for c in list.__iter__(everything._cache)]
    assert list.__getitem__(everything._cache, 0)["image"].dtype == torch.float16  # cached compactly
    budget = (case_bytes[0] + case_bytes[1] + 1) / 1e9  # room for the first two cases
    cache = tmp_path / "cache"
    with caplog.at_level(logging.INFO, logger="monai_unet_variants.bundle"):
        tiered = training_dataset(sample, "cpu", cache_gb=str(budget), cache_dir=str(cache), num_workers=0)
    assert tiered._cache.in_memory() == 2 and len(tiered._cache) == len(everything) == 4
    assert tiered.budget.used == case_bytes[0] + case_bytes[1]
    files = _cases(cache)
    assert len(files) == 2
    assert f"training cases: 2 in memory (so far {tiered.budget.describe()}), 2 on disk in {cache}" in caplog.text
    _same(training_crops(tiered, 8), training_crops(everything, 8))

    # a later run reads the disk cache instead of preprocessing again
    stamps = {f: f.stat().st_mtime_ns for f in files}
    again = training_dataset(sample, "cpu", cache_gb=str(budget), cache_dir=str(cache), num_workers=0)
    assert {f: f.stat().st_mtime_ns for f in _cases(cache)} == stamps
    _same(training_crops(again, 8), training_crops(everything, 8))


def test_the_disk_cache_is_keyed_by_the_preprocessing_and_the_files(sample, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(sample, data)
    cache = tmp_path / "cache"
    on_disk = dict(cache_gb="0", cache_dir=str(cache), num_workers=0)
    training_dataset(data, "cpu", **on_disk)
    assert len(_cases(cache)) == 4
    training_dataset(data, "cpu", **on_disk, pixdim=[1.5, 1.5, 1.5])  # another spacing: every case again
    assert len(_cases(cache)) == 8
    training_dataset(data, "cpu", **on_disk, hu_window=[-100, 200])  # another window
    assert len(_cases(cache)) == 12
    os.utime(data / "labelsTr" / "pancreas_003.nii.gz", ns=(1, 1))  # a label file replaced
    training_dataset(data, "cpu", **on_disk)
    assert len(_cases(cache)) == 13  # only that case again


def test_the_preprocessing_signature_sees_a_changed_function():
    """A ``Lambdad`` whose function changed (its code, a constant, a captured value) is another preprocessing, so
    another disk-cache key."""
    from monai.transforms import Lambdad

    from monai_unet_variants.bundle.caching import transform_signature

    def sig(func):
        return transform_signature([Lambdad("image", func=func)])

    def scaled(k):
        return lambda x: x * k

    assert sig(lambda x: x * 2) == sig(lambda x: x * 2)
    assert len({sig(lambda x: x * 2), sig(lambda x: x * 3), sig(lambda x: x + 2), sig(scaled(2)), sig(scaled(3))}) == 5


@pytest.mark.slow
def test_the_preprocessing_signature_is_the_same_in_another_process(tmp_path):
    """The same function, and the flagship's own preprocessing, give the same disk-cache key in another process
    (another hash seed: a set literal's order differs), so a later run finds the cache."""
    script = tmp_path / "sig.py"
    script.write_text("from monai.transforms import Lambdad\n"
                      "from monai_unet_variants.bundle.caching import transform_signature\n"
                      "f = lambda x: x if x in {'liver', 'pancreas', 'tumour', 'spleen'} else 0\n"
                      "print(transform_signature([Lambdad('image', func=f)]))\n"
                      "from monai.bundle import ConfigParser\n"
                      "parser = ConfigParser()\n"
                      f"parser.read_config({str(FLAGSHIP / 'configs' / 'train.json')!r})\n"
                      "print(transform_signature(parser.get_parsed_content('train#deterministic_transforms')))\n")
    seen = {subprocess.run([sys.executable, str(script)], capture_output=True, text=True, check=True,
                           env={**os.environ, "PYTHONHASHSEED": seed}).stdout for seed in ("1", "2", "3")}
    assert len(seen) == 1 and [len(line) for line in seen.pop().split()] == [24, 24]


def test_a_damaged_cache_file_is_preprocessed_again(sample, tmp_path, caplog):
    cache = tmp_path / "cache"
    first = training_dataset(sample, "cpu", cache_gb="0", cache_dir=str(cache), num_workers=0)
    assert first._cache.in_memory() == 0 and len(_cases(cache)) == 4
    victim = _cases(cache)[0]
    victim.write_bytes(victim.read_bytes()[:100])  # a file cut short by a killed run
    with caplog.at_level(logging.WARNING, logger="monai_unet_variants.bundle"):
        second = training_dataset(sample, "cpu", cache_gb="0", cache_dir=str(cache), num_workers=0)
    assert f"preprocessed-case cache file {victim} cannot be read" in caplog.text
    _same(training_crops(second, 4), training_crops(first, 4))


def test_without_a_disk_cache_cases_over_the_budget_are_preprocessed_when_drawn(sample, tmp_path):
    everything = training_dataset(sample, "cpu", cache_gb="none", num_workers=0)
    one = nbytes(list.__getitem__(everything._cache, 0)) / 1e9
    partial = training_dataset(sample, "cpu", cache_gb=str(one * 1.5), cache_dir="", num_workers=0)
    assert partial.cache_num == 1 and len(partial) == 4
    assert [d["image"] for d in partial.data] == [d["image"] for d in everything.data]  # the first case fitted
    for i in range(len(partial)):
        item = partial[i][0]
        assert item["image"].shape == (1, 32, 32, 32) and item["image"].dtype == torch.float32


def test_a_cache_folder_that_cannot_be_one_is_named(sample, tmp_path):
    blocked = tmp_path / "cache"
    blocked.write_text("not a folder")
    with pytest.raises(RuntimeError) as info:  # the config parser wraps the dataset's own error
        training_dataset(sample, "cpu", cache_gb="0", cache_dir=str(blocked), num_workers=0)
    assert f"--cache_dir {blocked} is a file, not a folder" in str(info.value.__cause__)
    blocked.unlink()
    blocked.mkdir()
    (blocked / "cases").write_text("in the way")  # the folder is one, its cases cannot be written into it
    with pytest.raises(RuntimeError) as info:
        training_dataset(sample, "cpu", cache_gb="0", cache_dir=str(blocked), num_workers=0)
    assert (f"pancreas_000.nii.gz: its preprocessed copy cannot be stored in the disk cache: [Errno 20] the "
            f"preprocessed-case cache {blocked} cannot be written (Not a directory: ") in str(info.value.__cause__)
    assert "give --cache_dir a writable folder" in str(info.value.__cause__)


def test_the_disk_cache_stays_within_its_limit(sample, tmp_path, caplog):
    """A changed preprocessing leaves the earlier set behind only while there is room: beyond ``--cache_dir_gb`` the
    least recently used cases go, never one that a running process (this one) uses; a lowered limit takes effect in a
    run that writes nothing new."""
    from monai_unet_variants.bundle.user_cache import release

    cache = tmp_path / "cache"
    training_dataset(sample, "cpu", cache_gb="0", cache_dir=str(cache), num_workers=0)
    old = _cases(cache)
    assert len(old) == 4
    for age, file in enumerate(old, start=1):  # the first case the most recently used, the last the least
        os.utime(file.parent, (file.stat().st_mtime - 1000 * age,) * 2)
    release()  # that run has ended
    another = {"cache_gb": "0", "num_workers": 0, "hu_window": [-100, 200]}
    training_dataset(sample, "cpu", **another, cache_dir=str(tmp_path / "probe"))  # how big that set is
    size = sum(f.stat().st_size for f in _cases(tmp_path / "probe"))
    limit = (size + old[0].stat().st_size + old[1].stat().st_size + 100_000) / 1e9  # that set and two of the first
    another["cache_dir"] = str(cache)
    with caplog.at_level(logging.INFO, logger="monai_unet_variants.bundle"):
        second = training_dataset(sample, "cpu", **another, cache_dir_gb=str(limit))
    now = _cases(cache)
    assert len(now) == 6 and set(old) - set(now) == {old[2], old[3]}  # the two least recently used
    assert caplog.text.count(f"preprocessed-case cache {cache}: removed 1 least recently used entry") == 2
    crops = training_crops(second, 4)

    release()
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="monai_unet_variants.bundle"):
        third = training_dataset(sample, "cpu", **another, cache_dir_gb="0")  # reads its 4, writes nothing
    assert _cases(cache) == sorted(set(now) - set(old))
    assert f"preprocessed-case cache {cache} holds" in caplog.text and "over its 0 GB (--cache_dir_gb)" in caplog.text
    _same(training_crops(third, 4), crops)


def test_a_disk_cache_of_the_earlier_layout_is_kept(sample, tmp_path):
    """Cases written as ``<key>.pt`` in the folder itself (before the limit) are moved into the cache and read,
    not preprocessed again and not left outside the limit's reach."""
    cache = tmp_path / "cache"
    first = training_dataset(sample, "cpu", cache_gb="0", cache_dir=str(cache), num_workers=0)
    stamps = {}
    for file in _cases(cache):
        os.replace(file, cache / f"{file.parent.name}.pt")
        stamps[file.parent.name] = (cache / f"{file.parent.name}.pt").stat().st_mtime_ns
    shutil.rmtree(cache / "cases")
    again = training_dataset(sample, "cpu", cache_gb="0", cache_dir=str(cache), num_workers=0)
    assert not list(cache.glob("*.pt"))
    assert {f.parent.name: f.stat().st_mtime_ns for f in _cases(cache)} == stamps  # moved and read, not rewritten
    _same(training_crops(again, 4), training_crops(first, 4))


def test_a_mistyped_disk_cache_limit_is_named(sample, tmp_path):
    for typed in ("lots", "-1", "20GB"):
        with pytest.raises(RuntimeError) as info:
            training_dataset(sample, "cpu", cache_gb="0", cache_dir=str(tmp_path / "cache"), cache_dir_gb=typed)
        expected = f"--cache_dir_gb {typed!r}: expected a number of GB >= 0, or none for no limit"
        assert str(info.value.__cause__) == expected


def test_the_cache_command_shows_and_prunes_a_disk_cache(sample, tmp_path, capsys):
    """``python -m monai_unet_variants.cache --cache_dir FOLDER``: the preprocessed cases and those in use; ``--prune``
    removes what no running process uses."""
    from monai_unet_variants.bundle.user_cache import release
    from monai_unet_variants.cache import main

    cache = tmp_path / "cache"
    training_dataset(sample, "cpu", cache_gb="0", cache_dir=str(cache), num_workers=0)
    size = sum(f.stat().st_size for f in _cases(cache)) / 1e9
    capsys.readouterr()
    assert main(["--cache_dir", str(cache)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines == [f"preprocessed-case cache {cache} (limit the training's --cache_dir_gb):",
                     f"  cases               4 entries {size:>9.3f} GB  4 in use by running processes"]
    assert main(["--cache_dir", str(cache), "--prune", "0"]) == 0 and len(_cases(cache)) == 4  # in use: kept
    release()  # the run has ended
    assert main(["--cache_dir", str(cache), "--prune", "0"]) == 0 and _cases(cache) == []
    assert capsys.readouterr().out.splitlines()[-3:-1] == [
        "removed 4 entries", f"preprocessed-case cache {cache} (limit the training's --cache_dir_gb):"]
