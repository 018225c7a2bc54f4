"""The last line of a failed bundle run: the cause, not the wrapper.

``python -m monai.bundle run`` wraps every failure of a config item in ``RuntimeError: Failed to instantiate
component ...`` or ``Failed to evaluate ConfigExpression``; the message that names the file and the fix is dozens of
lines further up. ``summarize_errors()`` (every bundle config calls it first in ``initialize``) keeps Python's
traceback and adds one line at the end: ``error: <the innermost exception>``.
"""

from __future__ import annotations

import sys
from types import TracebackType

__all__ = ["root_cause", "summarize_errors"]


def root_cause(err: BaseException) -> BaseException:
    """The innermost exception of ``err``'s chain (``raise ... from ...`` and exceptions raised while handling)."""
    seen = {id(err)}
    while True:
        inner = err.__cause__ or err.__context__
        if inner is None or id(inner) in seen:
            return err
        seen.add(id(inner))
        err = inner


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
