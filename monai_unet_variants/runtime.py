"""Process-level settings that make CPU training and inference faster.

``reuse_freed_memory()``: glibc's ``malloc`` serves every allocation above its mmap threshold (at most 32 MiB
by default, 128 KiB at start) with fresh pages from the kernel and gives them back on ``free``. A 3D network
allocates and frees activations of tens to hundreds of MiB many times per step, so each step pays page faults
and page zeroing on all of them, often more than the memory-bound layers themselves cost. Raising the mmap
threshold and turning trimming off keeps freed memory in the process for the next allocation of the same size.

Measured on this project's 2-core CPU (``benchmarks/run.py``, batch 2, bundle widths, README's table): without
it the 3D 96^3 training step takes 1.7x (U-Net) to 2.3x (MultiResUNet, DenseUNet) as long, the 2D step 2.3-2.9x;
sliding-window inference of the flagship bundle 657 -> 332 s. The price: the process's resident size stays at its
peak instead of following live memory. Every bundle's configs call ``reuse_freed_memory_for_bundle(@reuse_memory)``
in ``initialize``: applied when the bundle command owns the process (``python -m monai.bundle run``, torchrun),
skipped inside a host such as a MONAI Label server, and off with ``--reuse_memory false``. Call
``reuse_freed_memory()`` yourself at the start of a training script of your own.
"""

from __future__ import annotations

import ctypes
import logging
import os
import sys
from collections.abc import Sequence
from typing import Any

__all__ = ["bundle_owns_process", "release_freed_memory", "reuse_freed_memory", "reuse_freed_memory_for_bundle"]

logger = logging.getLogger(__name__)

_M_TRIM_THRESHOLD = -1  # mallopt parameters, <malloc.h>
_M_MMAP_THRESHOLD = -3
_KEEP = 2**31 - 1  # mallopt takes a C int: the largest mmap threshold it can be given (2 GiB)
_NEVER = -1  # a trim threshold of -1 turns trimming off (mallopt(3))
_RETURN = 128 * 1024  # glibc's initial thresholds, fixed: freed memory goes back to the kernel at once


def _libc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL(None)  # the symbols already loaded into this process, the C library's among them
    except (OSError, TypeError):  # Windows has no such handle
        return None
    return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None


def reuse_freed_memory(enabled: bool = True) -> bool:
    """Keep freed CPU memory in the process for reuse (``True``), or give it back to the kernel at once (``False``).

    ``enabled=True`` raises glibc's mmap threshold to 2 GiB, so that tensors up to that size are served from
    memory the process already holds, and turns trimming off: with a trim threshold of 2 GiB (as before
    2026-11-24) a step whose free heap top passed 2 GiB gave it back and faulted it in again in the next step
    (3D MultiResUNet at 96^3, batch 2: 600,000 page faults and 9.6 s per step instead of none and 8.2 s).
    ``enabled=False`` fixes both at 128 KiB and trims the heap:
    resident size then follows live memory, which is what a peak-memory reading needs (``benchmarks/run.py``
    uses it that way). The setting is process-wide; data-loader workers started afterwards inherit it.

    Args:
        enabled: keep freed memory (``True``) or return it (``False``). Defaults to ``True``.

    Returns:
        ``True`` if the setting was applied; ``False`` where the C library has no ``mallopt`` (not glibc:
        macOS, Windows, musl), in which case nothing changes.

    Examples::

        >>> from monai_unet_variants.runtime import reuse_freed_memory
        >>> reuse_freed_memory()  # doctest: +SKIP
        True
    """
    libc = _libc()
    if libc is None:
        logger.debug("reuse_freed_memory: no glibc mallopt here; allocator left as it is")
        return False
    mmap, trim = (_KEEP, _NEVER) if enabled else (_RETURN, _RETURN)
    applied = bool(libc.mallopt(_M_MMAP_THRESHOLD, ctypes.c_int(mmap))) and bool(
        libc.mallopt(_M_TRIM_THRESHOLD, ctypes.c_int(trim))
    )
    if applied and not enabled:
        libc.malloc_trim(ctypes.c_size_t(0))
    return applied


def release_freed_memory() -> bool:
    """Give the C heap's free pages back to the kernel now (glibc ``malloc_trim(0)``), whatever
    ``reuse_freed_memory`` set. For a phase whose transient buffers do not come back, such as preprocessing case
    after case into a long-lived cache: without it each case's freed buffers are left in holes between cached
    tensors, and the resident size creeps up with the number of cases. Returns whether anything was released
    (``False`` without glibc)."""
    libc = _libc()
    return bool(libc.malloc_trim(ctypes.c_size_t(0))) if libc is not None else False


def bundle_owns_process(argv: Sequence[str] | None = None) -> bool:
    """Whether this process was started as the bundle command (``python -m monai.bundle ...``, also under
    torchrun), so that a bundle may change process-wide settings; ``False`` inside a host application (a MONAI
    Label server, a notebook, a user's script) that parses the bundle's configs itself.

    Args:
        argv: the process's command line; ``None`` for ``sys.argv`` (with ``-m``, Python puts the module's
            ``__main__.py`` path first).
    """
    argv = list(sys.argv if argv is None else argv)
    if not argv:
        return False
    first = os.path.normpath(argv[0])
    return first.endswith(os.path.join("monai", "bundle", "__main__.py")) or first == "monai.bundle"


def reuse_freed_memory_for_bundle(option: Any = True, argv: Sequence[str] | None = None) -> bool:
    """``reuse_freed_memory()`` as a bundle's ``initialize`` applies it: only where the bundle owns the process
    (``bundle_owns_process``) and ``option`` (``--reuse_memory``, read with ``options.as_bool``) is true. Logs what
    it did and why; returns whether the setting was applied.

    Raises:
        ValueError: ``option`` is not a boolean word (``--reuse_memory maybe``).
    """
    from .options import as_bool

    if not as_bool(option, "reuse_memory"):
        logger.info("reuse_memory false: the C allocator is left as it is")
        return False
    if not bundle_owns_process(argv):
        logger.info("the bundle runs inside a host process (%s): process-wide allocator settings left as they are",
                    (list(sys.argv if argv is None else argv) or ["?"])[0])
        return False
    return reuse_freed_memory()
