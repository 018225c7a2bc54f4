"""What a model was trained with, kept beside its weights, so that inference and evaluation preprocess as training did.

A network trained on 1.5 mm voxels or another intensity window segments poorly, without any error, when inference
feeds it 1 mm voxels in the default window. Training records its preprocessing options in ``training_options.json``
beside its checkpoints; inference and evaluation take them as their defaults from the folder of ``--ckpt_path``, and
warn when the command line gives other values.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from ..options import check_options
from .checkpoints import atomic_write, check_complete, exported_file
from .errors import summarize_errors

__all__ = ["TRAINING_OPTIONS", "TrainingOptionsState", "check_trained_options", "record_training_options",
           "trained_option"]

logger = logging.getLogger("monai_unet_variants.bundle")

#: the file beside ``model.pt`` that holds what the model was trained with
TRAINING_OPTIONS = "training_options.json"


def _rank() -> int:
    import torch.distributed as dist

    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def record_training_options(ckpt_dir: str | os.PathLike, **options: Any) -> bool:
    """Write ``options`` (checked by ``check_options``: e.g. ``pixdim``, ``hu_window``) into ``ckpt_dir``'s
    ``training_options.json`` (rank 0 only under ``torch.distributed``; ``AtomicCheckpointSaver`` calls it with each
    ``model.pt``). Returns ``True`` (for a config's expression list)."""
    if _rank() > 0:
        return True
    values = check_options(options)
    path = Path(ckpt_dir) / TRAINING_OPTIONS
    atomic_write(path, lambda f: f.write((json.dumps(values, indent=4) + "\n").encode()))
    return True


class TrainingOptionsState:
    """A training run's preprocessing and widths (``pixdim``, ``hu_window``, ``channels``) as a checkpointable object:
    saved in ``checkpoint_latest.pt`` beside the network, so that a resumed run is refused when the command line gives
    other values (a resume without the ``--pixdim`` the run was started with continued it on 1 mm voxels without a
    word). ``state_dict()`` also gives what ``model.pt``'s ``training_options.json`` records.

    Args:
        options: the run's options, checked by ``check_options``.

    Examples::

        >>> state = TrainingOptionsState(pixdim=[1.5, 1.5, 2], hu_window=[-87, 199])
        >>> state.state_dict()
        {'pixdim': [1.5, 1.5, 2.0], 'hu_window': [-87.0, 199.0]}
        >>> state.load_state_dict({"pixdim": [1.0, 1.0, 1.0]})
        Traceback (most recent call last):
        ...
        ValueError: --pixdim [1.5, 1.5, 2.0] differs from the [1.0, 1.0, 1.0] that the run being resumed was started \
with, and a run cannot change it midway. Repeat --pixdim '[1.0,1.0,1.0]', or start afresh with --overwrite true
    """

    def __init__(self, **options: Any) -> None:
        self.options = check_options(options)

    def state_dict(self) -> dict[str, Any]:
        return dict(self.options)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Refuse a run whose options differ from the resumed run's ``state`` (options only one side has pass)."""
        for name, value in _differing(self.options, state):
            typed = json.dumps(state[name]).replace(" ", "")
            raise ValueError(f"--{name} {value} differs from the {state[name]} that the run being resumed was "
                             f"started with, and a run cannot change it midway. Repeat --{name} {typed!r}, or start "
                             "afresh with --overwrite true")


def _differing(checked: dict[str, Any], recorded: dict[str, Any]) -> list[tuple[str, Any]]:
    """``(name, value)`` of each of the ``checked`` options (``check_options``' values) that ``recorded`` (a
    training's record, as written) holds with another value; options only one side has are left out."""
    return [(name, value) for name, value in checked.items()
            if name in recorded and check_options({name: recorded[name]})[name] != value]


def _recorded(ckpt_path: str | os.PathLike) -> tuple[dict, Path]:
    """What the model at ``ckpt_path`` was trained with, and the file that says so; a checkpoint file there that is
    truncated or no checkpoint is refused first (``check_complete``), and so is the file an export was given as
    ``--ckpt_file`` where ``--ckpt_path`` names another: the configs read this before they build the network, also
    where MONAI's ``ckpt_export`` and ``onnx_export`` read the checkpoint without this package."""
    try:
        check_complete(ckpt_path)
        exported = exported_file()
        if exported is not None:  # checked once however often the configs ask (check_complete remembers)
            check_complete(exported)
    except ValueError:
        summarize_errors()  # the export commands run no ``initialize``: the cause is made their last line here
        raise
    path = Path(ckpt_path).expanduser().parent / TRAINING_OPTIONS
    if not path.is_file():
        return {}, path
    try:
        content = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise ValueError(f"{path} (what {Path(ckpt_path).name} was trained with) cannot be read: {err}. Restore it, "
                         "or remove it and give the training's --pixdim and --hu_window yourself") from err
    if not isinstance(content, dict):
        raise ValueError(f"{path} (what {Path(ckpt_path).name} was trained with) must hold a JSON object")
    return content, path


def trained_option(ckpt_path: str | os.PathLike, name: str, default: Any) -> Any:
    """The value of option ``name`` that the model at ``ckpt_path`` was trained with (its folder's
    ``training_options.json``), else ``default``; the configs' default for ``pixdim`` and ``hu_window``.

    Examples::

        >>> trained_option("/nowhere/model.pt", "pixdim", [1.0, 1.0, 1.0])
        [1.0, 1.0, 1.0]
    """
    content, path = _recorded(ckpt_path)
    if name not in content:
        return default
    logger.info(f"--{name} {content[name]}: as {Path(ckpt_path).name} was trained ({path}); --{name} chooses another")
    return content[name]


def check_trained_options(ckpt_path: str | os.PathLike, **options: Any) -> bool:
    """Warn, naming the option and both values, for each of ``options`` that differs from what the model at
    ``ckpt_path`` was trained with (a value typed on the command line: the defaults follow the training). Returns
    ``True`` (for a config's ``initialize``)."""
    content, path = _recorded(ckpt_path)
    for name, value in _differing(check_options(options), content):
        logger.warning(f"--{name} {value} differs from the {content[name]} that {Path(ckpt_path).name} was "
                       f"trained with ({path}): the network sees the images otherwise than in training, and may "
                       "segment them worse")
    return True
