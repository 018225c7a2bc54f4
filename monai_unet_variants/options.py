"""Command-line values of the bundles, read the way a person typed them.

``python -m monai.bundle run ... --resume false`` hands the config the *string* ``"false"`` (the command line goes
through ``fire``, which turns ``False`` into a boolean but leaves ``false``, ``no`` or ``off`` as text), and a
non-empty string is true in Python: without this module ``--resume false`` resumes. Every boolean option of the
bundles is read through ``as_bool``.
"""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["TRUE_WORDS", "FALSE_WORDS", "as_bool", "as_device"]

TRUE_WORDS = ("true", "1", "yes")
FALSE_WORDS = ("false", "0", "no")


def as_bool(value: Any, name: str = "option") -> bool:
    """``value`` as a boolean: ``True``/``False``, ``1``/``0`` or one of ``true/false/1/0/yes/no`` in any case.

    Args:
        value: what the config holds (a boolean from JSON or an expression, a string or a number from the command line).
        name: the option's name, for the error message.

    Raises:
        ValueError: for anything else (``"maybe"``, ``2``, ``None``, ``""``), naming the option and the accepted words.

    Examples::

        >>> as_bool("false", "resume"), as_bool("YES", "amp"), as_bool(True), as_bool(0)
        (False, True, True, False)
        >>> as_bool("flase", "resume")
        Traceback (most recent call last):
        ...
        ValueError: --resume must be true or false (also 1/0, yes/no, in any case), got 'flase'
    """
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        word = value.strip().lower()
        if word in TRUE_WORDS:
            return True
        if word in FALSE_WORDS:
            return False
    raise ValueError(f"--{name} must be true or false (also 1/0, yes/no, in any case), got {value!r}")


def as_device(value: Any, name: str = "device") -> torch.device:
    """``value`` (``torch.device``, ``"cuda"``, ``"cuda:1"``, ``"cpu"``) as a ``torch.device``, with a message that names
    the option when it is not one, or when it names a CUDA device that this machine does not have.

    Examples::

        >>> as_device("cpu")
        device(type='cpu')
    """
    try:
        device = value if isinstance(value, torch.device) else torch.device(str(value).strip())
    except (RuntimeError, ValueError) as err:
        raise ValueError(f"--{name} must be a device such as cpu, cuda or cuda:0, got {value!r}") from err
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--{name} {value!r}: this machine has no CUDA device; use --{name} cpu")
    return device
