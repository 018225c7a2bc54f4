"""What MONAI's bundle command line was given, read from its frame, and a mistyped option refused.

``python -m monai.bundle run --config_file train.json --epoch 1`` trained for the config's 10 epochs without a word:
MONAI adds every option it is given to the config, and an id that nothing references (``epoch`` beside ``epochs``,
``lr`` beside ``learning_rate``) is never read. ``check_option_names()`` (each bundle config calls it first in
``initialize``; ``export_checkpoint`` within an export) refuses an option whose first id (``optimizer`` of
``--optimizer#fused``) is not a top-level name of the config files, naming it, the files and the nearest names; and
one that the files have but nothing in them reads (``--overwrite`` of training, typed to the evaluation, which
writes its tables whatever it says).

The options are read from the MONAI command's frame on the stack (locals of ``monai.bundle.scripts``, as MONAI 1.6
names them): ``create_workflow``'s ``_args`` (what ``run`` and ``run_workflow`` pass to the workflow, ``--args_file``'s
included) and ``config_file``; the exports' ``_args`` (what remains once their own arguments are taken) and
``config_file_``. A workflow built in Python (``ConfigWorkflow(...)``) has no such frame and is not checked.
"""

from __future__ import annotations

import difflib
import inspect
import json
import os
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = ["monai_command_frames", "check_option_names"]

#: MONAI's bundle commands whose remaining arguments override the config, and the name each gives its config files
_COMMANDS = {"create_workflow": "config_file", "ckpt_export": "config_file_", "onnx_export": "config_file_",
             "trt_export": "config_file_"}


def monai_command_frames() -> Iterator[tuple[str, dict[str, Any]]]:
    """``(function name, locals)`` of each frame of ``monai.bundle.scripts`` on the caller's stack, innermost first."""
    frame = sys._getframe(1)
    while frame is not None:
        if frame.f_globals.get("__name__") == "monai.bundle.scripts":
            yield frame.f_code.co_name, frame.f_locals
        frame = frame.f_back


def _top_id(key: str) -> str:
    """The first id of a config path (``optimizer`` of ``optimizer#fused`` or ``optimizer::fused``)."""
    return re.split("::|#", key, maxsplit=1)[0]


def check_option_names() -> None:
    """Refuse an option of the running MONAI bundle command that its config files do not have or do not read (see
    the module's docstring); nothing outside such a command. Names referenced by another option's value (``--my_lr
    0.1 --optimizer#lr @my_lr``) and the workflow's own arguments (``--workflow_type``, ``--meta_file``, ...) are
    allowed.

    Raises:
        ValueError: naming the option and the config files, and for a name they lack the closest ones they have.

    Examples::

        >>> check_option_names()  # not within a MONAI command: nothing to check
    """
    from monai.bundle import ConfigParser, ConfigWorkflow
    from monai.bundle.utils import DEFAULT_EXP_MGMT_SETTINGS

    for name, local in monai_command_frames():
        files_key = _COMMANDS.get(name)
        if files_key is None:
            continue
        args, files = local.get("_args"), local.get(files_key)
        if not isinstance(args, dict) or files is None:
            return
        allowed = {"_meta_"}
        if name == "create_workflow":
            workflow = local.get("workflow_class")
            if not (isinstance(workflow, type) and issubclass(workflow, ConfigWorkflow)):
                return  # another workflow class takes these arguments its own way
            allowed |= set(inspect.signature(workflow.__init__).parameters)
        config = ConfigParser.load_config_files(files)
        tracking = args.get("tracking") if name == "create_workflow" else None
        if tracking:  # --tracking mlflow adds its settings' ids (tracking_uri, run_name, ...) and handlers reading them
            settings = DEFAULT_EXP_MGMT_SETTINGS.get(tracking) if isinstance(tracking, str) else None
            config = {**(settings or ConfigParser.load_config_files(tracking)).get("configs", {}), **config}
        values = [v for v in args.values() if isinstance(v, str)]
        # what something reads: the ids referenced in the config and in the options' values (``@id``, ``%id``), the
        # workflow's own (its initialize / run / finalize lists, ``imports``) and the export's network
        read = set(re.findall(r"[@%](\w+)", json.dumps(config, default=str) + json.dumps(values)))
        steps = {"init_id": "initialize", "run_id": "run", "final_id": "finalize"}
        read |= {"imports", str(local.get("net_id_")), *(str(args.get(k) or v) for k, v in steps.items())}
        listed = _as_list(files)
        paths, shown = ", ".join(listed), " + ".join(os.path.basename(f) for f in listed)
        for key in args:
            top = _top_id(str(key))
            if top in allowed or top in read:
                continue
            if top in config:
                raise ValueError(f"--{key}: nothing in {shown} reads the option {top!r}, so it would be ignored here "
                                 f"(another of the bundle's commands uses it; the config files: {paths})")
            close = difflib.get_close_matches(top, sorted(n for n in config if not n.startswith("_")), n=3, cutoff=0.6)
            hint = f"; did you mean {' or '.join('--' + c for c in close)}?" if close else "."
            raise ValueError(
                f"--{key}: there is no option {top!r} in {shown} (it would be ignored){hint} The options are the "
                f"top-level names of {paths} (the bundle's docs/README.md lists them)")
        return


def _as_list(files: Any) -> list[str]:
    """The config files as MONAI reads them (``ConfigParser.load_config_files``: a list, or one path, or paths
    joined by commas), for the message."""
    if isinstance(files, dict):
        return ["the config given as a dict"]
    if isinstance(files, (str, os.PathLike)):
        text = os.fspath(files)
        return text.split(",") if "," in text and not Path(text).is_file() else [text]
    return [os.fspath(f) for f in files]
