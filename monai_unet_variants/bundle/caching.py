"""Preprocessed cases kept within a memory budget: in RAM while the budget lasts, on disk after it.

A clinical-size CT case resampled to 1 mm is about 40 M voxels; caching every case of a data set in RAM, as
``CacheDataset(cache_rate=1.0)`` does, needs on the order of 90 GB for the Decathlon's 281 pancreas cases. Here the
cases' deterministic preprocessing is cached compactly (the bundles keep the windowed image as float16, the label as
uint8, cropped to the body) and each cached case is placed by a shared ``CacheBudget``: in memory while the budget
lasts, else in a persistent on-disk cache (``DiskCache``), read back in the loader's thread when the case is drawn.
The disk cache is keyed by the case's files (path, size, modification time) and by the preprocessing itself (every
deterministic transform's class and settings, and the code of any function a transform holds, as ``Lambdad``'s), so
a changed file, setting or function is preprocessed again, and a later run reads what an earlier one wrote instead
of preprocessing again. Not seen: a module-level name that such a function reads (its name is, its value is not).
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import json
import logging
import os
import threading
import types
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .user_cache import EntryCache
from .user_cache import gigabytes as parse_gigabytes

__all__ = ["DISK_LIMIT_GB", "CacheBudget", "DiskCache", "Uncached", "available_memory_gb", "cache_key", "nbytes",
           "transform_signature"]

logger = logging.getLogger("monai_unet_variants.bundle")

#: share of the available memory that ``cache_gb="auto"`` takes
AUTO_SHARE = 0.5
#: the preprocessed-case disk cache's default limit (``--cache_dir_gb``), GB: a Decathlon-size set at clinical size
#: (about 95 MB a case) and room for a second preprocessing of it
DISK_LIMIT_GB = 50.0


def available_memory_gb() -> float:
    """Memory the system can give without swapping (``MemAvailable``), in GB (10^9 bytes)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024 / 1e9
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") / 1e9


def nbytes(item: Any) -> int:
    """Bytes held by the tensors and arrays of ``item`` (nested dicts, lists and tuples)."""
    if isinstance(item, torch.Tensor):
        return item.element_size() * item.nelement()
    if isinstance(item, np.ndarray):
        return int(item.nbytes)
    if isinstance(item, Mapping):
        return sum(nbytes(v) for v in item.values())
    if isinstance(item, (list, tuple)):
        return sum(nbytes(v) for v in item)
    return 0


class CacheBudget:
    """Bytes of preprocessed cases that may stay in memory, shared by the datasets of a run (training first, then
    validation) and taken case by case (thread-safe: the cache threads take from it at once).

    Args:
        gigabytes: the budget in GB: a number, ``"auto"`` (half the memory available when it is created, shared
            by the processes of this machine under torchrun: ``LOCAL_WORLD_SIZE``, each of which caches), or
            ``"none"`` / ``None`` (no limit: every case in memory, as MONAI's ``CacheDataset``). As typed on the
            command line (``--cache_gb 8``).
        device: where the cached cases live (the bundles' ``data_device``): with ``"auto"`` on a CUDA device the
            budget is half of that GPU's free memory, or of the host's if that is less. Defaults to ``"cpu"``.

    Examples::

        >>> budget = CacheBudget("0.000001")
        >>> budget.take(600), budget.take(600), budget.used
        (True, False, 600)
    """

    def __init__(self, gigabytes: Any = "auto", device: Any = "cpu") -> None:
        text = str(gigabytes).strip().lower() if gigabytes is not None else "none"
        if text in ("", "inf", "unlimited"):
            text = "none"
        if text == "auto":
            local = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1))
            free = available_memory_gb() * 1e9
            if torch.device(device).type == "cuda":
                free = min(free, float(torch.cuda.mem_get_info(torch.device(device))[0]))
            self.limit: float = AUTO_SHARE * free / local
        else:
            limit = parse_gigabytes(text, f"--cache_gb {gigabytes!r}", "a number of GB >= 0, auto or none")
            self.limit = float("inf") if limit is None else limit * 1e9
        self.used = 0
        self._lock = threading.Lock()

    def take(self, size: int) -> bool:
        """Whether ``size`` more bytes fit; if so they are counted as used."""
        with self._lock:
            if self.used + size > self.limit:
                return False
            self.used += size
            return True

    def describe(self) -> str:
        """``"1.93 GB of the 4.00 GB budget"``, or ``"1.93 GB, no budget"``."""
        if self.limit == float("inf"):
            return f"{self.used / 1e9:.2f} GB, no budget"
        return f"{self.used / 1e9:.2f} GB of the {self.limit / 1e9:.2f} GB budget"


def _describe(value: Any, depth: int = 0) -> Any:
    """A JSON-able description of a transform's settings: plain values as they are, transforms and other objects by
    class and (for transforms, a few levels deep) their own settings; tensors by shape, type and a checksum."""
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, (list, tuple)):
        return [_describe(v, depth) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _describe(v, depth) for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))}
    if isinstance(value, (torch.Tensor, np.ndarray)):
        arr = np.asarray(value.detach().cpu() if isinstance(value, torch.Tensor) else value)
        return {"array": list(arr.shape), "dtype": str(arr.dtype), "sha": hashlib.sha256(arr.tobytes()).hexdigest()[:16]}
    if isinstance(value, (torch.dtype, np.dtype, type)):
        return str(value)
    if isinstance(value, functools.partial):
        return {"partial": _describe(value.func, depth + 1), "args": _describe(value.args, depth + 1),
                "keywords": _describe(value.keywords, depth + 1)}
    if inspect.ismethod(value):
        return {"method": _describe(value.__func__, depth + 1), "of": _describe(value.__self__, depth + 1)}
    if inspect.isfunction(value):  # a Lambdad's function: its code, defaults and closure, not only its name
        closure = [cell.cell_contents for cell in value.__closure__ or ()]
        return {"function": f"{value.__module__}.{value.__qualname__}", "code": _code_digest(value.__code__),
                "defaults": _describe(value.__defaults__, depth + 1), "closure": _describe(closure, depth + 1)}
    name = f"{type(value).__module__}.{type(value).__qualname__}"
    if depth < 4 and hasattr(value, "__dict__") and not inspect.isroutine(value):
        state = {k: v for k, v in vars(value).items() if not k.startswith("_") and k != "R"}  # R: a random state
        return {"class": name, **{k: _describe(v, depth + 1) for k, v in sorted(state.items())}}
    return {"class": name}


def _code_digest(code: types.CodeType) -> str:
    """A digest of a function's compiled code: instructions, names and constants (nested functions' code too)."""
    parts = [code.co_code, repr((code.co_names, code.co_varnames)).encode()]
    for const in code.co_consts:  # a frozenset's order follows the string hash seed: sorted, so runs agree
        text = _code_digest(const) if isinstance(const, types.CodeType) else repr(
            sorted(map(repr, const)) if isinstance(const, frozenset) else const)
        parts.append(text.encode())
    return hashlib.sha256(b"\0".join(parts)).hexdigest()[:16]


def transform_signature(transforms: Sequence[Any]) -> str:
    """A digest of the deterministic transforms that produce a cached case (every class and setting): a change in
    the preprocessing gives another digest, hence other cache files."""
    text = json.dumps([_describe(t) for t in transforms], sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def cache_key(item: Any, signature: str) -> str:
    """The disk cache's name for ``item`` (a datalist entry) preprocessed by the transforms of ``signature``: its
    files' paths, sizes and modification times, and the signature."""
    entries = item if isinstance(item, Mapping) else {"image": item}
    files = {}
    for key, value in sorted(entries.items(), key=lambda kv: str(kv[0])):
        if isinstance(value, (str, os.PathLike)) and os.path.exists(value):
            path = Path(value).resolve()
            stats = [path.stat()] if path.is_file() else [p.stat() for p in sorted(path.iterdir()) if p.is_file()]
            files[str(key)] = [str(path), sum(s.st_size for s in stats), max((s.st_mtime_ns for s in stats), default=0)]
        else:
            files[str(key)] = _describe(value)
    return hashlib.sha256(json.dumps([files, signature], sort_keys=True, default=str).encode()).hexdigest()[:32]


class DiskCache:
    """Preprocessed cases as files (``cases/<key>/case.pt``, written atomically) in ``folder``, within ``limit_gb``.

    The folder is an ``user_cache.EntryCache``: each case this process reads or writes is leased while the process
    lives (a training run reads its cases again every epoch: never removed under it, also not by another run sharing
    the folder), and after each new case, and once when a dataset has placed its cases, the least recently used
    cases are removed until the folder holds at most ``limit_gb``. So a preprocessing changed (another spacing, window,
    function) leaves the earlier set behind only until it is needed for the room. Files of the flat layout of earlier
    versions (``<key>.pt`` in ``folder``) are moved into it, keeping their time of last use.

    Args:
        folder: where the files go (created when the first one is written).
        limit_gb: the limit in GB, as typed (``--cache_dir_gb``): a number >= 0 or ``none``. Defaults to
            ``DISK_LIMIT_GB``.

    Raises:
        ValueError: naming ``--cache_dir_gb``, for a limit that is no number >= 0 and not ``none``.
    """

    KIND, FILE = "cases", "case.pt"

    def __init__(self, folder: str | os.PathLike, limit_gb: Any = None) -> None:
        self.folder = Path(folder).absolute()
        typed = DISK_LIMIT_GB if limit_gb is None else limit_gb
        self.limit_gb = parse_gigabytes(typed, f"--cache_dir_gb {typed!r}")
        fix = "give --cache_dir a writable folder (or an empty one for no disk cache)"
        self.entries = EntryCache(self.folder, [self.KIND], lambda: self.limit_gb, name="preprocessed-case cache",
                                  limit_name="--cache_dir_gb", fix=fix)
        self._adopt_flat_files()

    def _adopt_flat_files(self) -> None:
        for old in self.folder.glob("*.pt") if self.folder.is_dir() else []:
            if len(old.stem) == 32 and all(c in "0123456789abcdef" for c in old.stem):
                try:
                    used = old.stat().st_mtime
                    self.path(old.stem).parent.mkdir(parents=True, exist_ok=True)
                    os.replace(old, self.path(old.stem))
                    os.utime(self.path(old.stem).parent, (used, used))
                except FileNotFoundError:  # moved meanwhile by another process of the run
                    continue

    def path(self, key: str) -> Path:
        return self.folder / self.KIND / key / self.FILE

    def _lease(self, key: str) -> Path:
        from .checkpoints import OutputError

        try:
            return self.entries.lease(self.KIND, key)
        except OSError as err:  # the cache cannot be written: the case is fine, its copy cannot be kept
            raise OutputError(err.errno, str(err.strerror or err)) from None  # the message says it all

    def load(self, key: str) -> Any | None:
        """The case stored under ``key`` (leased), or ``None`` when there is none or it cannot be read (then
        removed)."""
        path = self.path(key)
        if not path.is_file():
            return None
        self._lease(key)
        try:
            return torch.load(path, weights_only=False, map_location=None)  # our own files: MetaTensors pickled
        except FileNotFoundError:  # pruned by another run between the look and the lease
            return None
        except Exception as err:  # a file cut short by a killed run: preprocess again
            logger.warning(f"preprocessed-case cache file {path} cannot be read ({err}); preprocessing the case again")
            path.unlink(missing_ok=True)
            return None

    def save(self, key: str, item: Any) -> Path:
        """Write the case (leased), then prune the folder to its limit."""
        from .checkpoints import atomic_write

        path = self._lease(key) / self.FILE
        atomic_write(path, lambda f: torch.save(item, f), suffix=".pt")
        self.entries.prune()
        return path


class OnDisk:
    """A cached case that lives in a ``DiskCache``: read back when the case is drawn."""

    def __init__(self, cache: DiskCache, key: str) -> None:
        self.cache, self.key = cache, key

    def load(self) -> Any:
        item = self.cache.load(self.key)
        if item is None:
            raise FileNotFoundError(f"preprocessed case {self.cache.path(self.key)} is gone or unreadable; it was "
                                    "removed while the run was going (clear the cache only between runs)")
        return item


class TieredCache(list):
    """``CacheDataset``'s list of cached cases, some of which live on disk (``OnDisk``): indexing reads them back."""

    def __getitem__(self, index: Any) -> Any:
        value = super().__getitem__(index)
        return value.load() if isinstance(value, OnDisk) else value

    def in_memory(self) -> int:
        return sum(not isinstance(v, OnDisk) for v in list.__iter__(self))


class Uncached:
    """Run ``transform`` on every fetch, after the cache: ``CacheDataset`` caches up to the first step that is not a
    MONAI ``Transform``, which this wrapper is not. For a cheap step whose output should not be stored (the float32
    copy of an image cached as float16)."""

    def __init__(self, transform: Any) -> None:
        self.transform = transform

    def __call__(self, data: Any) -> Any:
        return self.transform(data)
