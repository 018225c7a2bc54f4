"""Where a bundle lives and what it reads: the bundle folder from the command line, MSD-style datalists of NIfTI files
or DICOM series folders, with paths made absolute and a deterministic training/validation split."""

from __future__ import annotations

import ast
import json
import logging
import os
import sys
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..options import check_options

__all__ = ["BUNDLE_CLASSES", "DEFAULT_VAL_FRACTION", "NIFTI_SUFFIXES", "find_bundle_root", "inference_inputs",
           "list_test_images", "load_datalist"]

logger = logging.getLogger("monai_unet_variants.bundle")

#: the file names read as NIfTI volumes (a folder given to inference; an image given where a datalist belongs)
NIFTI_SUFFIXES = (".nii", ".nii.gz")


def _first_config(value: str) -> str:
    """The first file of a ``--config_file`` value: a list literal (``"['a/train.json','a/evaluate.json']"``, whose
    paths may hold commas), a path, or MONAI's comma-separated paths."""
    text = value.strip()
    if text[:1] in "[(":
        try:
            files = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            files = None
        if isinstance(files, (list, tuple)) and files:
            return str(files[0])
    if Path(text).expanduser().exists():
        return text
    return text.strip("[]()").split(",")[0].strip().strip("'\"")


def find_bundle_root(argv: Sequence[str] | None = None, cwd: str | os.PathLike | None = None) -> str:
    """The bundle folder of the config being run.

    MONAI does not tell a config where it lives, and a plain ``"."`` would put checkpoints and logs in
    whatever folder the command runs from. This reads ``--config_file`` from the command line (a path or
    a list of paths, as ``monai.bundle run`` accepts) and returns the folder above ``configs/``; without
    one, it returns the working directory when that holds ``configs/metadata.json``. Override with
    ``--bundle_root`` as usual.
    """
    argv = list(sys.argv if argv is None else argv)
    value = None
    for i, arg in enumerate(argv):
        if arg == "--config_file" and i + 1 < len(argv):
            value = argv[i + 1]
        elif arg.startswith("--config_file="):
            value = arg.split("=", 1)[1]
    if value:
        folder = Path(_first_config(value)).expanduser().resolve().parent
        return str(folder.parent if folder.name == "configs" else folder)
    here = Path(cwd or os.getcwd()).resolve()
    if (here / "configs" / "metadata.json").is_file():
        return str(here)
    if here.name == "configs" and (here / "metadata.json").is_file():
        return str(here.parent)
    logger.warning("could not tell the bundle folder (no --config_file); using %s", here)
    return str(here)


def _resolve(entry: Any, base: Path) -> Any:
    if isinstance(entry, str):
        p = Path(entry).expanduser()
        return str(p if p.is_absolute() else (base / p).resolve())
    if isinstance(entry, Mapping):
        return {k: _resolve(v, base) if k in ("image", "label") else v for k, v in entry.items()}
    raise ValueError(f"datalist entries must be paths or {{'image': ..., 'label': ...}} dicts, got {entry!r}")


#: what a training or evaluation ``--datalist`` may be, for the messages that refuse anything else
DATALIST_FORMS = ("a datalist JSON file with 'training' (and optionally 'validation', 'test') cases of 'image' and "
                  "'label', or an MSD task folder holding dataset.json")


def _read_datalist(datalist: str | os.PathLike) -> tuple[dict, Path]:
    if not isinstance(datalist, (str, os.PathLike)):
        raise ValueError(f"--datalist {datalist!r}: training and evaluation read {DATALIST_FORMS}, not a list")
    path = Path(datalist).expanduser()
    if path.name.endswith(NIFTI_SUFFIXES) or path.suffix == ".dcm":
        raise ValueError(f"--datalist {path} is an image, not a datalist: training and evaluation need labelled "
                         f"cases, from {DATALIST_FORMS}")
    if path.is_dir():
        path = path / "dataset.json"
    if not path.is_file():
        raise FileNotFoundError(
            f"datalist {path} does not exist: point --dataset_dir at an MSD Task07 folder (with dataset.json) or "
            "--datalist at a JSON file with 'training' (and optionally 'validation', 'test') entries"
        )
    try:
        content = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"datalist {path} is not valid JSON: {err}") from err
    if not isinstance(content, dict):
        raise ValueError(f"datalist {path} must hold a JSON object with a 'training' list")
    return content, path


#: the validation share of a datalist without a ``validation`` list, when ``--val_fraction`` is not given
DEFAULT_VAL_FRACTION = 0.2

#: why a split needs cases on both sides: without validation, training ran and wrote no model.pt (exit 0)
NEEDS_VALIDATION = ("model.pt is the weights of the best validation epoch, so training needs at least one case to "
                    "train on and one to validate on: add labelled cases, or a 'validation' list of other cases")

#: the label values every bundle segments, each with its name and the words by which a dataset.json's ``labels`` may
#: name it (Task07 says "cancer"; other exports "tumor", "lesion", "mass")
BUNDLE_CLASSES = {0: ("background",), 1: ("pancreas",), 2: ("tumour", "tumor", "cancer", "neoplasm", "lesion", "mass")}
_declared_warned: set[tuple[str, str]] = set()


def _warn_once(source: Path, message: str) -> None:
    """One warning per datalist and message (training and validation read the same file)."""
    if (str(source), message) not in _declared_warned:
        _declared_warned.add((str(source), message))
        logger.warning("datalist %s %s", source, message)


def _check_declared(content: dict, source: Path) -> None:
    """Check what an MSD ``dataset.json`` declares against what the bundles do: one CT channel (``modality``) and
    the label values of ``BUNDLE_CLASSES`` (``labels``). More channels or other label values stop the run here,
    before any case is read; another modality, or classes named otherwise (another Decathlon task pointed at by
    mistake: Task03 Liver's 1 is "liver"), are warned about, naming both (the case checks refuse non-CT volumes)."""
    modality = content.get("modality")
    if isinstance(modality, Mapping) and len(modality) > 1:
        raise ValueError(f"datalist {source} declares {len(modality)} input channels (modality {dict(modality)}): the "
                         "bundles read one CT volume per case")
    if isinstance(modality, Mapping) and modality and str(next(iter(modality.values()))).strip().upper() != "CT":
        _warn_once(source, f"declares modality {dict(modality)}: the bundles are for CT in Hounsfield units")
    labels = content.get("labels")
    if not isinstance(labels, Mapping) or not labels:
        return
    try:
        declared = {int(str(k).strip()): str(v) for k, v in labels.items()}
    except ValueError:
        got = sorted(map(str, labels))
        raise ValueError(f"datalist {source}: its 'labels' keys must be label values (0, 1, 2), got {got}") from None
    ours = ", ".join(f"{v} {names[0]}" for v, names in BUNDLE_CLASSES.items())
    extra = sorted(set(declared) - set(BUNDLE_CLASSES))
    if extra:
        raise ValueError(
            f"datalist {source} declares labels {declared}: values {extra} are not classes of this bundle ({ours}). "
            "Is --dataset_dir another task's folder? Merge or drop those labels first"
        )
    other = {v: name for v, name in declared.items()
             if not any(word in name.strip().lower() for word in BUNDLE_CLASSES[v])}
    if other:
        _warn_once(source, f"names labels {other} where the bundles segment {ours}: is it another task's data? The "
                           "network learns what the label maps mark, but metrics, DICOM SEG and metadata say pancreas "
                           "and tumour")


def _labelled(entries: Any, base: Path, source: Path, section: str) -> list[dict]:
    """A datalist section's cases, with absolute paths; each needs an ``image`` and a ``label``."""
    if not isinstance(entries, list):
        raise ValueError(f"datalist {source}: {section!r} must be a list of cases, got {type(entries).__name__}")
    cases = [_resolve(e, base) for e in entries]
    for e in cases:
        if not isinstance(e, dict) or "image" not in e or "label" not in e:
            raise ValueError(f"datalist {source}: every {section!r} entry needs 'image' and 'label', got {e!r}")
    return cases


def _check_disjoint(train: list[dict], val: list[dict], source: Path) -> None:
    """Refuse validation cases that are also trained on (the score would measure memory, not segmentation); warn of
    a case listed twice in one section (it counts twice)."""
    def key(e: dict) -> str:
        return os.path.realpath(e["image"])

    shared = sorted({key(e) for e in train} & {key(e) for e in val})
    if shared:
        shown = ", ".join(shared[:3]) + (f" and {len(shared) - 3} more" if len(shared) > 3 else "")
        raise ValueError(
            f"datalist {source}: {len(shared)} 'validation' case(s) are also in 'training' ({shown}): validation "
            "would score cases the network was trained on; list each case in one of the two"
        )
    for section, cases in (("training", train), ("validation", val)):
        twice = sorted(k for k, n in Counter(key(e) for e in cases).items() if n > 1)
        if twice:
            logger.warning("datalist %s lists %d '%s' case(s) more than once, each counting as often: %s", source,
                           len(twice), section, ", ".join(twice[:3]))


def load_datalist(datalist: str | os.PathLike, section: str = "training", val_fraction: float | None = None) -> list:
    """Cases of an MSD ``dataset.json`` or a datalist JSON of the same form, with absolute paths.

    ``section``: ``"training"`` or ``"validation"`` (the split below), ``"all"`` (every labelled case) or ``"test"``
    (unlabelled inputs). Paths are relative to the JSON file's folder; an ``image`` may be a NIfTI file or a DICOM
    series folder.

    Split: if the file has a ``"validation"`` list it is used as is (its cases must not also be in ``"training"``,
    and ``val_fraction`` must not be given: it would not be used); otherwise the labelled cases are sorted by image
    path and the last ``max(1, round(val_fraction * n))`` form the validation set (never trained on),
    ``val_fraction`` defaulting to ``DEFAULT_VAL_FRACTION``.

    What an MSD ``dataset.json`` declares is checked first (``_check_declared``): several input channels, or label
    values other than ``BUNDLE_CLASSES``, stop here; another modality or other class names are warned about.

    Raises:
        ValueError: naming the datalist, for a case without image or label, a validation case that is also a
            training case, a ``val_fraction`` beside a ``validation`` list, a split that leaves nothing to train or to
            validate on (no model.pt would be written), or declared channels or labels that the bundles do not segment.
    """
    content, source = _read_datalist(datalist)
    base = source.parent
    _check_declared(content, source)
    if section == "test":
        return [_resolve(e, base) for e in content.get("test", [])]
    labelled = _labelled(content.get("training", []), base, source, "training")
    if not labelled:
        raise ValueError(f"datalist {base} has no 'training' cases")
    if section == "all":
        return labelled
    if "validation" in content:
        train, val = labelled, _labelled(content["validation"], base, source, "validation")
        if val_fraction is not None:
            raise ValueError(
                f"datalist {source} has its own 'validation' list ({len(val)} cases): --val_fraction {val_fraction} "
                "would not be used; drop --val_fraction, or remove the list to split 'training' by the fraction"
            )
        _check_disjoint(train, val, source)
    else:
        ordered = sorted(labelled, key=lambda e: e["image"])
        fraction = DEFAULT_VAL_FRACTION if val_fraction is None else val_fraction
        fraction = check_options({"val_fraction": fraction})["val_fraction"]  # the bundles' rule, (0, 1)
        n_val = max(1, round(fraction * len(ordered)))
        if len(ordered) == 1:
            raise ValueError(f"datalist {source} has one labelled case: {NEEDS_VALIDATION}")
        if n_val >= len(ordered):
            raise ValueError(f"datalist {source}: --val_fraction {fraction:g} of its {len(ordered)} labelled "
                             f"case(s) leaves none to train on; {NEEDS_VALIDATION}")
        train, val = ordered[: len(ordered) - n_val], ordered[len(ordered) - n_val :]
    if not val:
        raise ValueError(f"datalist {source} has an empty 'validation' list: {NEEDS_VALIDATION}")
    if section == "training":
        return train
    if section == "validation":
        return val
    raise ValueError(f"section must be 'training', 'validation', 'all' or 'test' (got {section!r})")


def list_test_images(datalist: str | os.PathLike) -> list[str]:
    """Image paths of the ``test`` section of a datalist / MSD ``dataset.json`` (the inference default)."""
    return [e["image"] if isinstance(e, dict) else e for e in load_datalist(datalist, "test")]


def inference_inputs(datalist: Any) -> list:
    """What inference's ``--datalist`` names, as the list of its inputs: a list as it is; a datalist JSON: its
    ``test`` images; a folder holding NIfTI files: each of them, sorted, hidden files left out (any other folder is
    one DICOM series); any other path: that one input (a NIfTI file, or an Enhanced CT's DICOM file). A path must not
    be read as a list of its characters.

    Raises:
        ValueError: for anything else, or when nothing is named (an empty list, a datalist without ``test``).

    Examples::

        >>> inference_inputs(["a.nii.gz", "series/"])
        ['a.nii.gz', 'series/']
        >>> inference_inputs("/data/ct_001.nii.gz")
        ['/data/ct_001.nii.gz']
    """
    if isinstance(datalist, (list, tuple)):
        inputs = list(datalist)
    elif isinstance(datalist, (str, os.PathLike)):
        path = Path(datalist).expanduser()
        if path.suffix == ".json":
            inputs = list_test_images(path)
        else:
            volumes = path.is_dir() and sorted(  # not hidden files: the Decathlon's tars hold macOS "._x.nii.gz"
                str(p) for p in path.iterdir()
                if p.is_file() and p.name.endswith(NIFTI_SUFFIXES) and not p.name.startswith(".")
            )
            inputs = volumes or [str(path)]
    else:
        raise ValueError(f"--datalist must be a path or a list of paths, got {datalist!r}")
    if not inputs:
        raise ValueError(f"--datalist {datalist!r} names no input (an empty list, or a datalist without 'test' "
                         "images): pass NIfTI files, DICOM series folders or a folder of NIfTI files")
    return inputs


#: the earlier name, kept for bundles exported before it changed
test_inputs = list_test_images
