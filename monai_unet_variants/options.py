"""Command-line values of the bundles, read the way a person typed them.

``python -m monai.bundle run ... --resume false`` hands the config the *string* ``"false"`` (the command line goes
through ``fire``, which turns ``False`` into a boolean but leaves ``false``, ``no`` or ``off`` as text), and a
non-empty string is true in Python: without this module ``--resume false`` resumes. Every boolean option of the
bundles is read through ``as_bool``.

Numbers the same way: ``--epochs two`` reaches the config as the string ``"two"``, ``--val_fraction 1.5`` as a number
that nothing downstream refuses (it trained on half the cases), ``--cache_rate 2`` as one that MONAI clips. Each
config checks its numeric options, its patch size and its device once, first thing in ``initialize``
(``check_options`` over ``OPTION_RULES``), so that a value outside its range stops the run with the option's name
before any data is read.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from itertools import pairwise
from typing import Any

import torch

__all__ = [
    "TRUE_WORDS", "FALSE_WORDS", "OPTION_RULES", "as_bool", "as_device", "as_int", "as_number", "as_size",
    "as_numbers", "as_widths", "check_options",
]

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
    """``value`` (``torch.device``, ``"cuda"``, ``"cuda:1"``, ``"cpu"``) as a ``torch.device``, with a message that
    names the option when it is not one, or when it names a CUDA device that this machine does not have.

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
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ValueError(
            f"--{name} {value!r}: this machine has {torch.cuda.device_count()} CUDA device(s), "
            f"cuda:0 to cuda:{torch.cuda.device_count() - 1}"
        )
    return device


def _in_interval(x: float, interval: str) -> bool:
    """Whether ``x`` lies in ``interval``, written as in mathematics: ``"[0, 1)"``, ``"(0, inf)"``."""
    low, high = (float(v) for v in interval[1:-1].split(","))
    above = x >= low if interval[0] == "[" else x > low
    below = x <= high if interval[-1] == "]" else x < high
    return above and below


def as_int(value: Any, name: str = "option", interval: str = "[0, inf)") -> int:
    """``value`` as a whole number in ``interval`` (``"[1, inf)"``: at least 1).

    Raises:
        ValueError: for text (``"two"``), fractions (``2.5``), booleans or numbers outside ``interval``, naming the
            option.

    Examples::

        >>> as_int(3, "epochs", "[1, inf)")
        3
        >>> as_int("two", "epochs", "[1, inf)")
        Traceback (most recent call last):
        ...
        ValueError: --epochs must be a whole number in [1, inf), got 'two'
    """
    if isinstance(value, bool) or not isinstance(value, int) or not _in_interval(value, interval):
        raise ValueError(f"--{name} must be a whole number in {interval}, got {value!r}")
    return int(value)


def as_number(value: Any, name: str = "option", interval: str = "(-inf, inf)") -> float:
    """``value`` (an integer or a float, not text, a boolean or NaN) as a float in ``interval``.

    Examples::

        >>> as_number(0.25, "overlap", "[0, 1)")
        0.25
        >>> as_number(1.5, "val_fraction", "(0, 1)")
        Traceback (most recent call last):
        ...
        ValueError: --val_fraction must be a number in (0, 1), got 1.5
    """
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and not math.isnan(value)
    if not ok or not _in_interval(float(value), interval):
        raise ValueError(f"--{name} must be a number in {interval}, got {value!r}")
    return float(value)


def as_numbers(
    value: Any, name: str, count: int, interval: str = "(-inf, inf)", ascending: bool = False
) -> list[float]:
    """``value`` as a list of ``count`` numbers, each in ``interval`` and, with ``ascending``, each above the last
    (an intensity window ``[low, high]``: a reversed one would invert the image without a word).

    Examples::

        >>> as_numbers([1, 1, 2.5], "pixdim", 3, "(0, inf)")
        [1.0, 1.0, 2.5]
        >>> as_numbers([199, -87], "hu_window", 2, ascending=True)
        Traceback (most recent call last):
        ...
        ValueError: --hu_window must be 2 numbers, each above the last, such as [-87, 199], got [199, -87]
    """
    order = ", each above the last" if ascending else ""
    example = "[-87, 199]" if ascending else "[" + ", ".join(["1.0"] * count) + "]"
    within = f" in {interval}" if interval != "(-inf, inf)" else ""
    message = f"--{name} must be {count} numbers{within}{order}, such as {example}, got {value!r}"
    if not isinstance(value, (list, tuple)) or len(value) != count:
        raise ValueError(message)
    try:
        numbers = [as_number(v, name, interval) for v in value]
    except ValueError:
        raise ValueError(message) from None
    if ascending and any(b <= a for a, b in pairwise(numbers)):
        raise ValueError(message)
    return numbers


def as_widths(value: Any, name: str = "channels") -> list[int]:
    """``value`` as a network's widths per level: two or more whole numbers of at least 1 (a list or tuple).

    Examples::

        >>> as_widths([8, 16, 32, 64, 128])
        [8, 16, 32, 64, 128]
        >>> as_widths("16,32")
        Traceback (most recent call last):
        ...
        ValueError: --channels must be 2 or more whole numbers of at least 1, such as [16, 32, 64], got '16,32'
    """
    message = f"--{name} must be 2 or more whole numbers of at least 1, such as [16, 32, 64], got {value!r}"
    if not isinstance(value, (list, tuple)) or len(value) < 2:
        raise ValueError(message)
    try:
        return [as_int(v, name, "[1, inf)") for v in value]
    except ValueError:
        raise ValueError(message) from None


def as_size(value: Any, name: str = "roi_size", dims: int | None = None, divisor: int | None = None) -> list[int]:
    """``value`` as a patch size: ``dims`` whole numbers of at least 1 (a list or tuple), each a multiple of
    ``divisor`` where given (the network's down-sampling: the product of its strides).

    Examples::

        >>> as_size([96, 96, 64], "roi_size", 3, 16)
        [96, 96, 64]
        >>> as_size([60, 64, 64], "roi_size", 3, 16)
        Traceback (most recent call last):
        ...
        ValueError: --roi_size [60, 64, 64]: every size must be a multiple of 16 (the network's down-sampling, \
the product of its strides), e.g. [64, 64, 64]
    """
    sizes = list(value) if isinstance(value, (list, tuple)) else None
    if sizes is None or not sizes or (dims is not None and len(sizes) != dims) or any(
        isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in sizes
    ):
        count = f"{dims} " if dims is not None else ""
        raise ValueError(f"--{name} must be a list of {count}whole numbers of at least 1 such as "
                         f"[{', '.join(['96'] * (dims or 3))}], got {value!r}")
    if divisor and any(s % divisor for s in sizes):
        fixed = [-(-s // divisor) * divisor for s in sizes]  # each rounded up
        raise ValueError(f"--{name} {sizes}: every size must be a multiple of {divisor} (the network's down-sampling, "
                         f"the product of its strides), e.g. {fixed}")
    return sizes


#: the bundles' options that ``check_options`` knows, and what each accepts: ``("int", interval)``,
#: ``("number", interval)`` (a kind ending in ``?`` also takes ``None``: no fixed seed, the datalist's own split),
#: ``("size",)`` (the patch size), ``("numbers", count, interval)``, ``("window",)`` (two numbers, low then high),
#: ``("widths",)`` (a network's channels per level), ``("gigabytes",)`` (a size limit: a number of GB >= 0, or
#: ``none`` for no limit), ``("device",)`` or ``("amp",)`` (a boolean that needs a CUDA
#: ``device``: MONAI's engines autocast on CUDA only, and elsewhere would turn it off with a warning, running float32
#: while the command line says mixed precision)
OPTION_RULES: dict[str, tuple[str, ...]] = {
    "epochs": ("int", "[1, inf)"),
    "val_interval": ("int", "[1, inf)"),
    "batch_size": ("int", "[1, inf)"),
    "num_samples": ("int", "[1, inf)"),
    "sw_batch_size": ("int", "[1, inf)"),
    "num_workers": ("int", "[0, inf)"),
    "max_samples_per_class": ("int", "[1, inf)"),
    "deep_supr_num": ("int", "[1, inf)"),
    "seed": ("int?", "(-inf, inf)"),
    "log_interval": ("int", "[0, inf)"),
    "learning_rate": ("number", "(0, inf)"),
    "val_fraction": ("number?", "(0, 1)"),
    "overlap": ("number", "[0, 1)"),
    "val_overlap": ("number", "[0, 1)"),
    "cache_rate": ("number", "[0, 1]"),
    "cache_dir_gb": ("gigabytes",),
    "roi_size": ("size",),
    "pixdim": ("numbers", "3", "(0, inf)"),
    "hu_window": ("window",),
    "channels": ("widths",),
    "device": ("device",),
    "data_device": ("device",),
    "sw_device": ("device",),
    "amp": ("amp",),
}


def check_options(values: Mapping[str, Any], network: Any = None) -> dict[str, Any]:
    """Check a bundle's options (``OPTION_RULES``) as the command line gave them; the configs call it first in
    ``initialize``. ``network``: the bundle's network, whose ``spatial_dims`` and ``divisor`` the patch size must fit
    (skipped for a network without them, e.g. one of MONAI's). Returns the values read (numbers, ``torch.device``).

    Raises:
        ValueError: for the first value outside its option's rule, naming the option.
        KeyError: for an option that ``OPTION_RULES`` does not know (a config's mistake, not the user's).

    Examples::

        >>> check_options({"epochs": 10, "val_fraction": 0.2, "roi_size": [64, 64, 64]})
        {'epochs': 10, 'val_fraction': 0.2, 'roi_size': [64, 64, 64]}
    """
    checked: dict[str, Any] = {}
    for name, value in values.items():
        kind, *args = OPTION_RULES[name]
        if kind.endswith("?") and value is None:
            checked[name] = None
            continue
        kind = kind.rstrip("?")
        if kind == "int":
            checked[name] = as_int(value, name, *args)
        elif kind == "number":
            checked[name] = as_number(value, name, *args)
        elif kind == "numbers":
            checked[name] = as_numbers(value, name, int(args[0]), args[1])
        elif kind == "window":
            checked[name] = as_numbers(value, name, 2, ascending=True)
        elif kind == "widths":
            checked[name] = as_widths(value, name)
        elif kind == "size":
            dims, divisor = getattr(network, "spatial_dims", None), getattr(network, "divisor", None)
            checked[name] = as_size(value, name, dims, divisor)
        elif kind == "gigabytes":
            none = isinstance(value, str) and value.strip().lower() == "none"
            try:
                checked[name] = None if none else as_number(value, name, "[0, inf)")
            except ValueError:
                raise ValueError(f"--{name} must be a number of GB >= 0, or none for no limit, got {value!r}") from None
        elif kind == "device":
            checked[name] = as_device(value, name)
        else:
            checked[name] = as_bool(value, name)
    device = checked.get("device")
    if checked.get("amp") and (device is None or device.type != "cuda"):
        raise ValueError(f"--amp true needs a CUDA --device (MONAI's engines autocast on CUDA only), got --device "
                         f"{device}: it would run in float32; drop --amp or run on a GPU")
    return checked
