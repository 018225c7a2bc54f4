"""The last line of a failed bundle run: the cause, not the wrapper.

``python -m monai.bundle run`` wraps every failure of a config item in ``RuntimeError: Failed to instantiate
component ...`` or ``Failed to evaluate ConfigExpression``; the message that names the file and the fix is dozens of
lines further up. ``summarize_errors()`` (every bundle config calls it first in ``initialize``; ``trained_option``
on an export command's unreadable checkpoint) keeps Python's traceback and adds one line at the end: ``error: <the
cause>``, the innermost exception that this package raised (where it wraps a library's error, its message names the
file and the fix), else the innermost of all.
"""

from __future__ import annotations

import sys
from pathlib import Path
from types import TracebackType

__all__ = ["root_cause", "summarize_errors"]

_PACKAGE = Path(__file__).resolve().parent.parent  # monai_unet_variants/


def root_cause(err: BaseException) -> BaseException:
    """The exception of ``err``'s chain (``raise ... from ...`` and exceptions raised while handling) that says what
    went wrong: the innermost one this package raised (its messages name the file and the fix, as a checkpoint that
    does not fit over the loader's raw key list), else the innermost of all. The chain ends where Python's traceback
    ends it: ``raise ... from None`` replaces what it was raised while handling (``float('lots')`` behind
    ``--cache_gb 'lots': expected a number of GB``)."""
    chain = [err]
    while True:
        last = chain[-1]
        inner = last.__cause__ if last.__cause__ is not None or last.__suppress_context__ else last.__context__
        if inner is None or any(inner is e for e in chain):
            break
        chain.append(inner)
    ours = [e for e in chain if _raised_here(e)]
    return (ours or chain)[-1]


def _raised_here(err: BaseException) -> bool:
    """Whether ``err`` was raised by this package's code (the last frame of its traceback is in the package)."""
    tb = err.__traceback__
    if tb is None:
        return False
    while tb.tb_next is not None:
        tb = tb.tb_next
    return Path(tb.tb_frame.f_code.co_filename).resolve().is_relative_to(_PACKAGE)


def _hook(kind: type[BaseException], value: BaseException, tb: TracebackType | None) -> None:
    sys.__excepthook__(kind, value, tb)
    if isinstance(value, KeyboardInterrupt):
        return
    cause = root_cause(value)
    text = str(cause).strip().splitlines()
    sys.stderr.write(f"error: {type(cause).__name__}: {' '.join(line.strip() for line in text) or '(no message)'}\n")
    sys.stderr.flush()


def summarize_errors() -> bool:
    """Install the hook (once; a hook somebody else installed is left alone). Returns whether it is installed.

    Examples::

        >>> summarize_errors()  # doctest: +SKIP
        True
    """
    if sys.excepthook is _hook:
        return True
    if sys.excepthook is not sys.__excepthook__:
        return False
    sys.excepthook = _hook
    return True
