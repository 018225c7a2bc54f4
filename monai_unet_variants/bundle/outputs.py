"""Outputs that are complete, checked and never clobber each other.

- ``claim_training_folders``: a training run locks its ``ckpt_dir`` and ``output_dir`` (a second run writing there
  is refused while the first one lives) and refuses to start afresh over an earlier run's checkpoints unless told
  to resume or overwrite.
- ``output_names``: one output name per input, unique even when two inputs share a file name (``siteA/ct.nii.gz``
  and ``siteB/ct.nii.gz``) or a NIfTI file and a DICOM folder share a stem.
- ``SegmentationWriter``: ``SaveImaged`` whose files are written through ``atomic_write`` and read back before
  they replace anything; a case that cannot be written is reported, and the run fails at its end naming every case
  without output (or at once, with ``keep_going=False``).
"""

from __future__ import annotations

import fcntl
import gzip
import logging
import os
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

import numpy as np
from monai.transforms import SaveImaged

from .checkpoints import LATEST_CHECKPOINT, OutputError, atomic_write, refuse_existing
from .dicom import dicom_source

__all__ = ["OutputsReport", "SegmentationWriter", "claim_training_folders", "output_names"]

logger = logging.getLogger("monai_unet_variants.bundle")
LOCK_FILE = ".training.lock"
_LOCKS: dict[str, IO[str]] = {}  # folder -> its open, locked file, held until the process ends


def _lock(folder: Path, what: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    key = str(folder.resolve())
    if key in _LOCKS:
        return
    path = folder / LOCK_FILE
    handle = open(path, "a+")
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.seek(0)
        holder = handle.read().strip() or "another process"
        handle.close()
        raise RuntimeError(
            f"{what} {folder} is in use by a training run that is still going ({holder}): two runs writing one "
            f"folder replace each other's checkpoints and mix their logs. Give this run its own folder "
            f"(--ckpt_dir and --output_dir), or wait for the other one"
        ) from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"pid {os.getpid()}")
    handle.flush()
    _LOCKS[key] = handle


def _continues_from(handlers: Sequence[Any], files: Sequence[Path]) -> bool:
    """Whether one of the trainer's handlers loads one of ``files`` at the start (fine-tuning from ``model.pt``, as
    MONAI Label's training does, or resuming)."""
    from monai.handlers import CheckpointLoader

    wanted = {str(p.resolve()) for p in files}
    return any(isinstance(h, CheckpointLoader) and getattr(h, "enabled", True)
               and str(Path(h.load_path).resolve()) in wanted for h in handlers)


def claim_training_folders(ckpt_dir: str | os.PathLike, output_dir: str | os.PathLike, resume: Any = False,
                           overwrite: Any = False, handlers: Sequence[Any] = ()) -> bool:
    """Lock ``ckpt_dir`` and ``output_dir`` for this training run, and refuse a fresh start over an earlier run.

    A fresh start in a ``ckpt_dir`` that already holds ``model.pt`` or ``checkpoint_latest.pt`` would replace them,
    whatever the new run is worth: it is refused unless ``overwrite`` is true, or the run continues from them
    (``resume``, or a handler of ``handlers`` that loads one of them: MONAI Label fine-tunes its bundle's
    ``model.pt`` that way). Under ``torch.distributed`` only rank 0 claims the folders (the others write nothing
    there). The locks last as long as the process.

    Args:
        ckpt_dir: the checkpoints' folder.
        output_dir: the logs' folder.
        resume: the run's ``--resume`` (text or boolean).
        overwrite: the run's ``--overwrite`` (text or boolean).
        handlers: the trainer's handlers. Defaults to ``()``.

    Returns:
        ``True`` (a config can call it in ``initialize``).
    """
    from ..options import as_bool
    from .training_options import _rank

    resume, overwrite = as_bool(resume, "resume"), as_bool(overwrite, "overwrite")
    if _rank() > 0:
        return True
    ckpt, out = Path(ckpt_dir), Path(output_dir)
    _lock(ckpt, "--ckpt_dir")
    if out.resolve() != ckpt.resolve():
        _lock(out, "--output_dir")
    earlier = [p for p in (ckpt / "model.pt", ckpt / LATEST_CHECKPOINT) if p.is_file()]
    if earlier and not resume and not overwrite and not _continues_from(handlers, earlier):
        raise FileExistsError(
            f"{' and '.join(str(p) for p in earlier)} exist from an earlier run: --resume true continues that run, "
            "--overwrite true starts afresh and replaces them, or give this run its own --ckpt_dir"
        )
    return True


def _stem(path: str) -> str:
    name = Path(path.rstrip("/\\")).name
    for ext in (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd", ".dcm"):
        if name.lower().endswith(ext):
            return name[: -len(ext)]
    return name


def output_names(inputs: Sequence[Any], postfix: str = "seg", ext: str = ".nii.gz") -> dict[str, str]:
    """A unique output file name for every input path (a NIfTI file or a DICOM series folder; a volume read from a
    multi-frame DICOM file is named as the folder or file that the datalist gave).

    The name is ``<stem>_<postfix><ext>``, the stem being the file name without its extension or the folder's
    name. Where stems collide: a DICOM folder that collides with a file gets ``_dicom`` (``ct.nii.gz`` and ``ct/``
    -> ``ct_seg.nii.gz``, ``ct_dicom_seg.nii.gz``); inputs still colliding get the nearest parent folders that tell
    them apart in front (``siteA/ct.nii.gz``, ``siteB/ct.nii.gz`` -> ``siteA_ct_seg.nii.gz``, ``siteB_ct_seg.nii.gz``);
    anything still equal (the same path twice) gets its position in the list.

    Examples::

        >>> names = output_names(["/a/siteA/ct.nii.gz", "/a/siteB/ct.nii.gz", "/a/x/liver.nii"])
        >>> [names[p] for p in sorted(names)]
        ['siteA_ct_seg.nii.gz', 'siteB_ct_seg.nii.gz', 'liver_seg.nii.gz']
    """
    paths = list(dict.fromkeys(str(p["image"] if isinstance(p, Mapping) else p) for p in inputs))
    # a volume read from a multi-frame DICOM file is named as its input (the folder or file of the datalist)
    given = {p: str(source[0]) if (source := dicom_source(p)) is not None else p for p in paths}
    dicom = {p for p in paths if Path(given[p]).is_dir() or given[p] != p}
    names = {p: _stem(given[p]) for p in paths}

    def clashes() -> list[list[str]]:
        groups: dict[str, list[str]] = {}
        for p in paths:
            groups.setdefault(names[p], []).append(p)
        return [g for g in groups.values() if len(g) > 1]

    for group in clashes():
        if any(p in dicom for p in group) and not all(p in dicom for p in group):
            for p in group:
                if p in dicom:
                    names[p] += "_dicom"
    base = dict(names)
    parents = {p: [x for x in Path(given[p].rstrip("/\\")).parent.parts[::-1] if x.strip("/\\")] for p in paths}
    depth = dict.fromkeys(paths, 0)
    while True:  # a colliding input takes one more parent folder each round, until it stands apart
        for p in paths:
            names[p] = "_".join([*reversed(parents[p][: depth[p]]), base[p]])
        deeper = [p for group in clashes() for p in group if depth[p] < len(parents[p])]
        if not deeper:
            break
        for p in deeper:
            depth[p] += 1
    for group in clashes():
        for i, p in enumerate(group[1:], start=2):
            names[p] = f"{names[p]}_{i}"
    return {p: f"{names[p]}_{postfix}{ext}" for p in paths}


class SegmentationWriter(SaveImaged):
    """``SaveImaged`` for label maps whose files are complete, checked and uniquely named.

    Every output goes through ``atomic_write``: written to a temporary file in the output folder, fsync-ed, read
    back (a NIfTI header with the label map's shape), then renamed; a failure (a full disk, a read-only or missing
    folder, a file in the folder's place) leaves no partial file and is reported with the path and the operating
    system's reason. The output name comes from ``output_names(inputs)``. An existing output is replaced only with
    ``overwrite=True`` (the bundle checks all of them before the first case runs: ``check_outputs``). With
    ``skip_existing=True`` a run picks up where an earlier one into the same folder stopped: ``pending`` leaves out the
    inputs whose outputs all exist (complete, as every write is atomic) and the rest run, replacing what a case cut
    short left of its outputs (a NIfTI file without its DICOM SEG or overlay).

    Args:
        keys: the label map's key.
        output_dir: the folder of the outputs.
        inputs: every input of the run (paths or ``{"image": path}``), for the names. Defaults to ``()`` (names from
            each input's own file name only).
        output_postfix: added to the name. Defaults to ``"seg"``.
        overwrite: replace existing outputs. Defaults to ``False``.
        skip_existing: leave out the inputs whose outputs exist already (``pending``); not with ``overwrite``.
            Defaults to ``False``.
        keep_going: after a case that cannot be written, go on with the others (the run fails at its end, naming
            every case without output, through ``OutputsReport``) instead of failing at once. Defaults to ``True``.
        dicom_seg: for a DICOM input (a series folder, or a multi-frame Enhanced CT), also write a DICOM
            Segmentation object over the source series (``<stem>_seg.dcm`` beside the NIfTI file;
            ``dicom_seg.write_dicom_seg``, needs highdicom); a NIfTI input keeps NIfTI output. Defaults to ``False``.
        algorithm: the algorithm's name in a DICOM SEG (the bundle's). Defaults to ``"monai-unet-variants"``.
        overlays: also draw ``<stem>_overlay.png`` beside each output: the written label map over its input's axial
            slice with the most foreground (``visualize.overlay_png``, needs matplotlib), to look through a run's
            results without a viewer. Defaults to ``False``.
        kwargs: ``SaveImaged``'s other arguments (``output_dtype``, ``print_log``, ...); ``output_ext`` is
            ``.nii.gz``.
    """

    def __init__(self, keys: Any, output_dir: str, inputs: Sequence[Any] = (), output_postfix: str = "seg",
                 overwrite: bool = False, keep_going: bool = True, dicom_seg: bool = False,
                 algorithm: str = "monai-unet-variants", overlays: bool = False, skip_existing: bool = False,
                 **kwargs: Any) -> None:
        kwargs.pop("output_ext", None)
        kwargs.pop("separate_folder", None)
        super().__init__(keys, output_dir=output_dir, output_postfix=output_postfix, output_ext=".nii.gz",
                         separate_folder=False, **kwargs)
        self.out_dir = Path(output_dir)
        self.postfix = output_postfix
        self.set_inputs(inputs)
        self.overwrite = bool(overwrite)
        self.skip_existing = bool(skip_existing)
        if self.overwrite and self.skip_existing:
            raise ValueError("--overwrite true replaces existing outputs, --skip_existing true keeps them and skips "
                             "their inputs: choose one")
        self.skipped: list[str] = []
        self._leftovers: set[Path] = set()  # outputs of inputs cut short in an earlier run, replaced in this one
        self.keep_going = bool(keep_going)
        self.dicom_seg = bool(dicom_seg)
        self.algorithm = algorithm
        self.overlays = bool(overlays)
        self.dtype = np.dtype(kwargs.get("output_dtype", np.uint8))
        self.print_log = kwargs.get("print_log", True)
        self.written: list[Path] = []
        self.failed: list[str] = []

    def set_inputs(self, inputs: Sequence[Any]) -> None:
        """Every input of the run, so that their output names are unique (``OutputsReport`` passes them)."""
        self.names = output_names(inputs, self.postfix)

    def target(self, source: str) -> Path:
        return self.out_dir / self.names.get(source, output_names([source], self.postfix)[source])

    def seg_target(self, source: str) -> Path | None:
        """The DICOM SEG file of input ``source``: ``None`` unless ``dicom_seg`` and ``source`` is DICOM (a series
        folder, or the volume of an Enhanced CT: ``dicom.dicom_source``)."""
        if not (self.dicom_seg and dicom_source(source) is not None):
            return None
        nifti = self.target(source)
        return nifti.with_name(nifti.name.removesuffix(".nii.gz") + ".dcm")

    def overlay_target(self, source: str) -> Path | None:
        """The overlay picture of input ``source``: ``None`` unless ``overlays``."""
        if not self.overlays:
            return None
        nifti = self.target(source)
        return nifti.with_name(nifti.name.removesuffix(".nii.gz") + "_overlay.png")

    def outputs_of(self, source: str) -> list[Path]:
        """Every file this run writes for input ``source``: the NIfTI label map, its DICOM SEG and overlay picture
        where asked for."""
        return [p for p in (self.target(source), self.seg_target(source), self.overlay_target(source)) if p]

    def pending(self, inputs: Sequence[Any]) -> list:
        """The inputs still to run: all of them, or with ``skip_existing`` those without all of their outputs (logged:
        how many are skipped). Output names come from every input, as in the run that wrote the existing ones."""
        if not self.skip_existing:
            return list(inputs)
        self.set_inputs(inputs)
        todo, self.skipped = [], []
        for item in inputs:
            source = str(item["image"] if isinstance(item, Mapping) else item)
            outputs = self.outputs_of(source)
            if all(p.exists() for p in outputs):
                self.skipped.append(source)
            else:
                todo.append(item)
                self._leftovers.update(p for p in outputs if p.exists())
        if self.skipped:
            logger.info(f"--skip_existing: {len(self.skipped)} of {len(inputs)} input(s) have all their outputs in "
                        f"{self.out_dir} already (e.g. {self.skipped[0]}): skipped; {len(todo)} to run")
        return todo

    def _may_replace(self, path: Path) -> bool:
        return self.overwrite or path in self._leftovers

    def check_outputs(self) -> bool:
        """Refuse to start when an output of this run exists already (unless ``overwrite``), or when a DICOM SEG or
        overlay pictures are asked for without highdicom or matplotlib installed."""
        if self.overlays:
            try:
                import matplotlib  # noqa: F401
            except ImportError as err:
                raise ImportError("--overlays true draws pictures with matplotlib, which is not installed: pip install "
                                  "matplotlib (part of monai-unet-variants[bundle])") from err
        if self.dicom_seg:
            try:
                import highdicom  # noqa: F401
            except ImportError as err:
                raise ImportError("--dicom_seg true writes DICOM SEG objects with highdicom, which is not installed: "
                                  "pip install highdicom (part of monai-unet-variants[bundle])") from err
            plain = [src for src in self.names if dicom_source(src) is None]
            if plain:
                logger.info(f"--dicom_seg: {len(plain)} input(s) are not DICOM series (e.g. {plain[0]}): NIfTI output "
                            "only for them")
        self._check_folder()
        skipped = set(self.skipped)
        paths = [p for source in self.names if source not in skipped for p in self.outputs_of(source)]
        existing = [p for p in paths if p.exists() and not self._may_replace(p)]
        if existing:
            shown = ", ".join(str(p) for p in existing[:5]) + (" ..." if len(existing) > 5 else "")
            raise FileExistsError(f"{len(existing)} output(s) exist already ({shown}): --overwrite true replaces "
                                  "them, --skip_existing true keeps them and runs the other inputs, or write to "
                                  "another --output_dir")
        return True

    def _check_folder(self) -> None:
        """Create the output folder and write (then remove) an empty file in it, so that a folder that cannot be
        made or written (a file in its place, no permission, a read-only mount) stops the run before the first case
        is computed, not after every case."""
        try:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            probe = self.out_dir / f".write-test-{os.getpid()}.tmp"
            probe.touch()
            probe.unlink()
        except OSError as err:
            raise OutputError(err.errno or 5, f"--output_dir {self.out_dir} cannot be written "
                                              f"({err.strerror or err}): no case was run; choose a folder this "
                                              "process can write to") from err

    def _write_one(self, array: np.ndarray, affine: np.ndarray, path: Path) -> None:
        import nibabel as nib

        image = nib.Nifti1Image(array.astype(self.dtype), affine)
        image.header.set_xyzt_units("mm", "sec")
        image.set_qform(affine, code=1)
        image.set_sform(affine, code=1)
        data = image.to_bytes()

        def write(f: IO[bytes]) -> None:
            with gzip.GzipFile(fileobj=f, mode="wb", compresslevel=6, mtime=0) as gz:
                gz.write(data)

        def verify(tmp: Path) -> None:
            if tmp.stat().st_size == 0:
                raise OSError(5, "the written file is empty")
            try:
                back = nib.load(str(tmp))
                shape = back.shape
            except Exception as err:  # any reader failure means the file is not what was written
                raise OSError(5, f"the written file cannot be read back ({err})") from err
            if tuple(shape) != tuple(array.shape):
                raise OSError(5, f"the written file has shape {shape}, not {array.shape}")

        refuse_existing(path, self._may_replace(path))
        atomic_write(path, write, verify, suffix=".nii.gz")

    def __call__(self, data: Mapping[Hashable, Any]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            label = d[key]
            meta = getattr(label, "meta", {})
            source = str(meta.get("filename_or_obj", f"case_{len(self.written) + len(self.failed)}"))
            path = self.target(source)
            array = np.asarray(label.detach().cpu() if hasattr(label, "detach") else label)
            array = array[0] if array.ndim == 4 else array
            affine = np.asarray(getattr(label, "affine", np.eye(4)), dtype=np.float64)
            seg = self.seg_target(source)
            try:
                self._write_one(array, affine, path)
            except OutputError as err:
                self._failed(source, f"no output: {err}", err)
                continue
            if seg is not None:
                try:
                    self._write_seg(array, affine, source, seg)
                except OutputError as err:
                    self._failed(source, f"{path} was written, its DICOM SEG was not: {err}", err)
                    continue
            picture = self.overlay_target(source)
            if picture is not None:
                try:
                    self._draw(source, path, picture)
                except OutputError as err:
                    self._failed(source, f"{path} was written, its overlay picture was not: {err}", err)
                    continue
            self.written.append(path)
            if self.print_log:
                also = [f"the DICOM SEG {seg}"] * (seg is not None) + [f"the overlay {picture}"] * (picture is not None)
                logger.info(f"wrote {path}" + "".join(f" and {a}" for a in also))
        return d

    def _failed(self, source: str, what: str, err: OutputError) -> None:
        """Record a case whose output is missing or incomplete; raise at once unless ``keep_going``."""
        self.failed.append(f"{source}: {what}")
        logger.error(f"{source}: {what}")
        if not self.keep_going:
            raise err

    def _draw(self, source: str, path: Path, picture: Path) -> None:
        from ..visualize import overlay_png

        refuse_existing(picture, self._may_replace(picture))
        overlay_png(source, path, picture, title=f"{Path(source.rstrip('/')).name}: {self.algorithm}")

    def _write_seg(self, array: np.ndarray, affine: np.ndarray, source: str, path: Path) -> None:
        from .dicom_seg import write_dicom_seg

        try:
            write_dicom_seg(array, affine, dicom_source(source)[1], path, algorithm=self.algorithm,
                            overwrite=self._may_replace(path))
        except ValueError as err:  # a label map off the series' grid: no SEG rather than a misplaced one
            raise OutputError(5, f"cannot write the DICOM SEG {path}: {err}") from err


class OutputsReport:
    """The outputs of an inference run: before the first case, every input's output name (unique) and the check
    that none exists yet (unless overwriting); at the end, a failure if any case has no output or an incomplete one (a
    NIfTI file without its DICOM SEG), one line per case with its path and reason.

    Args:
        writer: the run's ``SegmentationWriter``.
        inputs: every input of the run (paths or ``{"image": path}``).
    """

    def __init__(self, writer: SegmentationWriter, inputs: Sequence[Any] = ()) -> None:
        self.writer = writer
        self.inputs = list(inputs)

    def _start(self, engine: Any) -> None:
        if self.inputs:
            self.writer.set_inputs(self.inputs)
        self.writer.check_outputs()

    def attach(self, engine: Any) -> None:
        from ignite.engine import Events

        engine.add_event_handler(Events.STARTED, self._start)
        engine.add_event_handler(Events.COMPLETED, self)

    def __call__(self, engine: Any) -> None:
        if self.writer.failed:
            lines = "\n  ".join(self.writer.failed)
            raise OutputError(5, f"{len(self.writer.failed)} case(s) have no output or an incomplete one; the other "
                                 f"{len(self.writer.written)} were written:\n  {lines}")
        skipped = f" ({len(self.writer.skipped)} input(s) skipped: written before)" if self.writer.skipped else ""
        engine.logger.info(f"wrote {len(self.writer.written)} segmentation(s) to {self.writer.out_dir}{skipped}")
