"""Caches of files that a run builds once and reuses, kept within a size limit (``EntryCache``).

The DICOM reader's cache (``DICOM``, under ``~/.cache/monai_unet_variants``): volumes read from Enhanced CTs
(``dicom_volumes``, uncompressed: about the DICOM file's size each), label maps read from DICOM SEGs
(``dicom_labels``) and folders of links to one series of a folder holding several (``dicom_series``). On a machine
that segments every CT a hospital sends they would fill the disk, so they are kept within
``MONAI_UNET_VARIANTS_CACHE_GB`` (default 20 GB; ``none``: no limit; ``0``: nothing beyond what running processes
use). The training bundles' preprocessed cases (``--cache_dir``, ``caching.DiskCache``) are another such cache, with
a limit of their own (``--cache_dir_gb``).

Each cached thing is an *entry* that a run leases while it uses it (a training run reads its inputs again every
epoch): the least recently used entries are removed first, never a leased one. Without ``fcntl`` (Windows) nothing
is pruned.
"""

from __future__ import annotations

import atexit
import logging
import os
import shutil
import socket
import threading
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

try:
    import fcntl
except ImportError:  # Windows: no flock; leases cannot be seen across processes, so nothing is pruned
    fcntl = None  # type: ignore[assignment]

__all__ = ["CACHE_LIMIT_ENV", "DICOM", "KINDS", "EntryCache", "cache_dir", "cached", "cache_limit_gb", "gigabytes",
           "lease", "prune", "release", "summary"]

logger = logging.getLogger("monai_unet_variants.bundle")

#: the environment variable that limits the cache, in GB (a number >= 0, or ``none``)
CACHE_LIMIT_ENV = "MONAI_UNET_VARIANTS_CACHE_GB"
DEFAULT_LIMIT_GB = 20.0
#: what a link counts towards the limit: an inode's size (ext4's default), its target held in the inode itself
LINK_BYTES = 256
#: the kinds of entries (folders of the cache) that are pruned
KINDS = ("dicom_volumes", "dicom_labels", "dicom_series")

_leases: dict[tuple[Path, int], tuple[IO[str], set[str]]] = {}  # (cache, pid) -> this process's lease file, names
_guard = threading.Lock()  # this process's threads, around the lease files they share


def cache_dir() -> Path:
    """``$XDG_CACHE_HOME/monai_unet_variants`` (``~/.cache/monai_unet_variants`` by default)."""
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "monai_unet_variants"


def gigabytes(text: Any, setting: str, expected: str = "a number of GB >= 0, or none for no limit") -> float | None:
    """A size as typed for a limit: a number of GB >= 0, or ``none`` (``None``: no limit).

    Raises:
        ValueError: ``"<setting>: expected <expected>"``, for anything else (``-1``, ``lots``, ``20GB``, ``inf``).

    Examples::

        >>> gigabytes(" 2.5 ", "--cache_dir_gb"), gigabytes("None", "--cache_dir_gb")
        (2.5, None)
    """
    text = str(text).strip()
    if text.lower() == "none":
        return None
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{setting}: expected {expected}") from None  # float()'s own message says less
    if not 0 <= value < float("inf"):
        raise ValueError(f"{setting}: expected {expected}")
    return value


def cache_limit_gb() -> float | None:
    """The limit ``MONAI_UNET_VARIANTS_CACHE_GB`` sets (GB; ``None``: no limit), 20 GB when it is not set.

    Raises:
        ValueError: naming the variable, for a value that is no number >= 0 and not ``none``.
    """
    text = os.environ.get(CACHE_LIMIT_ENV, "").strip()
    if not text:
        return DEFAULT_LIMIT_GB
    expected = f"the DICOM cache's limit as a number of GB >= 0, or none for no limit (the cache is {cache_dir()})"
    return gigabytes(text, f"{CACHE_LIMIT_ENV}={text!r}", expected)


@contextmanager
def _locked(root: Path) -> Iterator[None]:
    """The cache's lock (``.lock``), held exclusively: leasing and pruning take turns, across processes and threads
    (each holder opens the file anew, and flock locks belong to the open file)."""
    root.mkdir(parents=True, exist_ok=True)
    with _guard, open(root / ".lock", "a") as f:
        if fcntl is not None:
            fcntl.flock(f, fcntl.LOCK_EX)
        yield  # the lock goes with the file when it is closed


def _own_leases(root: Path) -> tuple[IO[str], set[str]]:
    """This process's lease file in ``root`` and the names in it, made at its first lease (under ``_locked``: a pruner
    never sees it before it is locked). Keyed by the process too: a forked child writes a file of its own."""
    key = (root, os.getpid())
    if key not in _leases:
        folder = root / "leases"
        folder.mkdir(exist_ok=True)
        f = open(folder / f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}", "a")
        if fcntl is not None:
            fcntl.flock(f, fcntl.LOCK_EX)
        _leases[key] = (f, set())
    return _leases[key]


def release() -> None:
    """Give up this process's leases, in every cache it used: its entries may be pruned from now on. Called at exit; a
    process killed before leaves a lease file that the next prune removes."""
    with _guard:
        for key in [k for k in _leases if k[1] == os.getpid()]:
            f, _ = _leases.pop(key)
            Path(f.name).unlink(missing_ok=True)
            f.close()


atexit.register(release)


class EntryCache:
    """A folder of cache entries kept within a size limit: least recently used first, never one that a living process
    has leased.

    An entry is a folder ``<root>/<kind>/<key>/``. A process that uses one leases it (``lease``): the entry's name goes
    into the process's lease file (``<root>/leases/<host>-<pid>-<random>``, under an exclusive lock while the process
    lives) and the entry's time is set to now, its last use. ``prune`` removes the least recently used entries until
    the cache is within its limit, skipping the leased ones; a lease file whose lock can be taken belongs to a process
    that has ended and is removed. One lock over the cache (``<root>/.lock``) makes leasing and pruning take turns, so
    that an entry is never removed between its lease and its use. Without ``fcntl`` (Windows) nothing is pruned.

    Args:
        root: the cache's folder, or a function giving it (read at each use: an environment variable may move it).
        kinds: the kinds of entries (the subfolders of ``root`` that are pruned; anything else there is left alone).
        limit_gb: a function giving the limit in GB (``None``: no limit); it raises for a mistyped limit.
        name: what messages call the cache (``"DICOM cache"``).
        limit_name: what messages call the limit's setting (an environment variable, a bundle option).
        fix: what a message says to do when the cache cannot be written.

    Examples::

        >>> import tempfile
        >>> cache = EntryCache(Path(tempfile.mkdtemp()), ["cases"], lambda: 0.0, name="case cache",
        ...                    limit_name="--limit", fix="give another folder")
        >>> (cache.lease("cases", "a") / "case.pt").write_bytes(bytes(10))
        10
        >>> cache.prune(), cache.summary()["cases"]  # leased by this process: kept, although over the limit
        ([], {'entries': 1, 'bytes': 10, 'in_use': 1})
    """

    def __init__(self, root: Path | Callable[[], Path], kinds: Sequence[str], limit_gb: Callable[[], float | None], *,
                 name: str, limit_name: str, fix: str) -> None:
        self._root = root
        self.kinds = tuple(kinds)
        self.limit_gb = limit_gb
        self.name, self.limit_name, self.fix = name, limit_name, fix
        self.warned = False  # whether this process has said that the cache is over its limit with entries in use

    @property
    def root(self) -> Path:
        return Path(self._root() if callable(self._root) else self._root)

    def lease(self, kind: str, key: str) -> Path:
        """The folder of entry ``key`` of ``kind`` (one of ``kinds``), made if missing, leased to this process (no
        prune removes it while the process lives) and marked as used now.

        Raises:
            OSError: naming the cache and ``fix``, where it cannot be written.
        """
        if kind not in self.kinds:
            raise ValueError(f"{self.name} entries are of the kinds {self.kinds}, not {kind!r}")
        self.limit_gb()  # a limit mistyped stops the run at the first entry, also where nothing new is written
        root = self.root
        entry, name = root / kind / key, f"{kind}/{key}"
        try:
            with _locked(root):
                f, names = _own_leases(root)
                if name not in names:
                    f.write(name + "\n")
                    f.flush()
                    names.add(name)
                entry.mkdir(parents=True, exist_ok=True)
                os.utime(entry)
        except OSError as err:  # a read-only home (a container), a full disk, a file in the way
            raise OSError(err.errno, f"the {self.name} {root} cannot be written ({err.strerror or err}: "
                                     f"{err.filename or root}); {self.fix}") from err
        return entry

    def cached(self, kind: str, key: str, names: Sequence[str], build: Callable[[Path], None]) -> Path:
        """The folder of entry ``key`` of ``kind`` (leased, see ``lease``) holding the files ``names``, which
        ``build(folder)`` writes where any is missing; then the cache is pruned. Built once: the building holds an
        exclusive lock on the entry's ``.building`` file, so a second process that needs the entry at once (the ranks
        of a distributed run, two runs over one input) waits and then finds the files instead of building them again
        (the lock goes with its process, however that ends)."""
        entry = self.lease(kind, key)
        if all((entry / name).is_file() for name in names):
            return entry
        with open(entry / ".building", "a") as lock:
            if fcntl is not None:
                fcntl.flock(lock, fcntl.LOCK_EX)
            if all((entry / name).is_file() for name in names):  # built meanwhile by another process
                return entry
            build(entry)
        self.prune()
        return entry

    def _entries(self, root: Path) -> list[tuple[float, int, str, Path]]:
        """Every entry of the cache: ``(last use, bytes, "<kind>/<key>", folder)``."""
        entries = []
        for kind in self.kinds:
            folder = root / kind
            for entry in folder.iterdir() if folder.is_dir() else []:
                if entry.is_dir():
                    entries.append((entry.stat().st_mtime, _size(entry), f"{kind}/{entry.name}", entry))
        return entries

    def summary(self) -> dict[str, dict[str, int]]:
        """Per kind of entry: how many there are (``entries``), their bytes and how many of them living processes
        hold (``in_use``)."""
        root = self.root
        out = {kind: {"entries": 0, "bytes": 0, "in_use": 0} for kind in self.kinds}
        if not root.is_dir():
            return out
        with _locked(root):
            held = _leased(root) if fcntl is not None else set()
            for _, size, name, _ in self._entries(root):
                counts = out[name.split("/")[0]]
                counts["entries"] += 1
                counts["bytes"] += size
                counts["in_use"] += name in held
        return out

    def prune(self, limit_gb: float | None | str = "setting") -> list[Path]:
        """Remove the least recently used entries until the cache holds at most ``limit_gb`` GB, never one that a
        living process has leased; returns the entries removed (logged). A cache still over the limit then (entries
        in use) is logged as a warning, once per process.

        Args:
            limit_gb: the limit in GB, ``None`` for none. Defaults to ``"setting"``: ``self.limit_gb()``.
        """
        limit = self.limit_gb() if limit_gb == "setting" else limit_gb
        root = self.root
        if limit is None or fcntl is None or not root.is_dir():
            return []
        with _locked(root):
            held = _leased(root)
            entries = self._entries(root)
            total = sum(size for _, size, _, _ in entries)
            removed, freed = [], 0
            for _, size, name, entry in sorted(entries, key=lambda e: e[0]):
                if total <= limit * 1e9:
                    break
                if name in held:
                    continue
                shutil.rmtree(entry, ignore_errors=True)
                total, freed = total - size, freed + size
                removed.append(entry)
        if removed:
            logger.info(f"{self.name} {root}: removed {len(removed)} least recently used "
                        f"entr{'y' if len(removed) == 1 else 'ies'} ({freed / 1e6:.0f} MB) to keep it within {limit:g} "
                        f"GB ({self.limit_name})")
        if total > limit * 1e9 and not self.warned:
            self.warned = True  # once per process: with a limit of 0 every new entry of the run is over it
            logger.warning(f"{self.name} {root} holds {total / 1e9:.2f} GB, over its {limit:g} GB ({self.limit_name}): "
                           "the rest is in use by running processes (this one's among them)")
        return removed


def _leased(root: Path) -> set[str]:
    """The entries that living processes hold (under ``_locked``); lease files of processes that have ended are
    removed. This process's own file is locked by its own open file: seen as living too."""
    names: set[str] = set()
    folder = root / "leases"
    for path in sorted(folder.iterdir()) if folder.is_dir() else []:
        try:
            with open(path) as f:
                try:
                    fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    names.update(f.read().split())
                    continue
                path.unlink()  # its process has ended (the lock went with it)
        except FileNotFoundError:  # removed just now by another pruner's look at it
            continue
    return names


def _size(entry: str | os.PathLike) -> int:
    """The bytes of ``entry``'s files; a link (a series' link folder holds hundreds) counts ``LINK_BYTES`` without
    being looked at beyond its directory entry: a prune after each new entry stays quick over thousands of them."""
    total = 0
    try:
        with os.scandir(entry) as items:
            for item in items:
                if item.is_symlink():
                    total += LINK_BYTES
                else:
                    total += _size(item.path) if item.is_dir() else item.stat().st_size
    except FileNotFoundError:  # removed meanwhile
        pass
    return total


#: the DICOM reader's cache
DICOM = EntryCache(cache_dir, KINDS, cache_limit_gb, name="DICOM cache", limit_name=CACHE_LIMIT_ENV,
                   fix="set XDG_CACHE_HOME to a writable folder (the DICOM reader's volumes, label maps and link "
                       "folders are kept in <XDG_CACHE_HOME>/monai_unet_variants)")


def lease(kind: str, key: str) -> Path:
    """``DICOM.lease``: the folder of the DICOM cache's entry ``key`` of ``kind``, leased to this process.

    Examples::

        >>> folder = lease("dicom_volumes", "0123456789abcdef")  # doctest: +SKIP
    """
    return DICOM.lease(kind, key)


def cached(kind: str, key: str, names: Sequence[str], build: Callable[[Path], None]) -> Path:
    """``DICOM.cached``: the DICOM cache's entry ``key`` of ``kind`` holding ``names``, built once where missing."""
    return DICOM.cached(kind, key, names, build)


def summary() -> dict[str, dict[str, int]]:
    """``DICOM.summary``: per kind of entry, how many, their bytes and how many are in use.

    Examples::

        >>> sorted(summary()) == sorted(KINDS)
        True
    """
    return DICOM.summary()


def prune(limit_gb: float | None | str = "setting") -> list[Path]:
    """``DICOM.prune``: the DICOM cache's least recently used entries removed down to ``limit_gb`` (by default
    ``MONAI_UNET_VARIANTS_CACHE_GB``)."""
    return DICOM.prune(limit_gb)
