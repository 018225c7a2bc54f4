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
    files = sorted(cache.iterdir())
    assert len(files) == 2 and all(f.suffix == ".pt" for f in files)
    assert f"training cases: 2 in memory (so far {tiered.budget.describe()}), 2 on disk in {cache}" in caplog.text
    _same(training_crops(tiered, 8), training_crops(everything, 8))

    # a later run reads the disk cache instead of preprocessing again
    stamps = {f: f.stat().st_mtime_ns for f in files}
    again = training_dataset(sample, "cpu", cache_gb=str(budget), cache_dir=str(cache), num_workers=0)
    assert {f: f.stat().st_mtime_ns for f in sorted(cache.iterdir())} == stamps
    _same(training_crops(again, 8), training_crops(everything, 8))



def test_the_disk_cache_is_keyed_by_the_preprocessing_and_the_files(sample, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(sample, data)
    cache = tmp_path / "cache"
    on_disk = dict(cache_gb="0", cache_dir=str(cache), num_workers=0)
    training_dataset(data, "cpu", **on_disk)
    assert len(list(cache.iterdir())) == 4
    training_dataset(data, "cpu", **on_disk, pixdim=[1.5, 1.5, 1.5])  # another spacing: every case again
    assert len(list(cache.iterdir())) == 8
    training_dataset(data, "cpu", **on_disk, hu_window=[-100, 200])  # another window
    assert len(list(cache.iterdir())) == 12
    os.utime(data / "labelsTr" / "pancreas_003.nii.gz", ns=(1, 1))  # a label file replaced
    training_dataset(data, "cpu", **on_disk)
    assert len(list(cache.iterdir())) == 13  # only that case again


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
    assert first._cache.in_memory() == 0 and len(list(cache.iterdir())) == 4
    victim = sorted(cache.iterdir())[0]
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
