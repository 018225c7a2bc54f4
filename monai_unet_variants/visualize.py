"""Overlay pictures of segmentations on CT, for people who would rather look than read.

    python -m monai_unet_variants.visualize --image CT.nii.gz --pred CT_seg.nii.gz [--label GT.nii.gz] --out overlay.png

The axial slice with the most labelled voxels (ground truth if given, else prediction) is shown in a
soft-tissue window, with pancreas in orange and tumour in cyan; images are re-oriented to RAS first so
that every input reads the same way. The prediction and the label are checked against the CT as training checks a
label (whole numbers 0, 1, 2, the CT's shape and voxel grid): a wrong file stops with its name instead of being drawn.
Needs matplotlib (``pip install monai-unet-variants[bundle]``).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["overlay_png", "pyplot", "save_figure"]

COLOURS = {1: (1.0, 0.55, 0.0), 2: (0.0, 0.9, 1.0)}


def _load_checked(image: str | Path, labels: Sequence[str | Path]) -> list[np.ndarray]:
    """The CT and its label maps as RAS arrays, each label map checked against the CT first as training checks a
    case (``CheckCased``: one channel, whole numbers 0, 1, 2, the CT's shape and voxel grid), so that the
    prediction of another scan, or an image passed as a label map, stops with the file named instead of being
    drawn over the wrong anatomy."""
    from monai.transforms import EnsureChannelFirst, LoadImage, Orientation

    from .bundle.checks import CheckCased, nifti_reader

    load, ras = LoadImage(image_only=True, reader=nifti_reader()), Orientation("RAS")
    ct = EnsureChannelFirst()(load(str(image)))
    maps = [EnsureChannelFirst()(load(str(path))) for path in labels]
    check = CheckCased(keys=("image", "label"), allow_non_ct=True)
    for lab in maps:
        check({"image": ct, "label": lab})
    return [np.asarray(ras(v)[0]) for v in (ct, *maps)]


def pyplot() -> Any:
    """matplotlib's ``pyplot`` on its file-only ``Agg`` backend (no display needed), or ``None`` where matplotlib is
    not installed: every picture of the package is drawn through it."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


def save_figure(fig: Any, out: str | Path, dpi: int = 90) -> Path:
    """Save a matplotlib figure to ``out`` in the format its suffix names (``.png`` when it has none), complete or
    absent (``atomic_write``: a picture cut short by a full disk is not left behind), and close it; return the path."""
    import matplotlib.pyplot as plt

    from .bundle.checkpoints import atomic_write

    out = Path(out)
    kind = out.suffix.lstrip(".").lower() or "png"  # as matplotlib reads the name: .png, .pdf, .svg, .jpg
    try:
        return atomic_write(out, lambda f: fig.savefig(f, format=kind, dpi=dpi), suffix=out.suffix or ".png")
    finally:
        plt.close(fig)


def _rgba(label_slice: np.ndarray, alpha: float) -> np.ndarray:
    out = np.zeros(label_slice.shape + (4,))
    for value, colour in COLOURS.items():
        out[label_slice == value] = colour + (alpha,)
    return out


def overlay_png(
    image: str | Path,
    pred: str | Path,
    out: str | Path,
    label: str | Path | None = None,
    window: Sequence[float] = (-160, 240),
    title: str | None = None,
) -> Path:
    """Write a PNG with the CT slice, the ground truth (if given) and the prediction; return its path."""
    plt = pyplot()
    if plt is None:  # pragma: no cover - depends on the environment
        raise ImportError("overlay pictures need matplotlib: pip install 'monai-unet-variants[bundle]'")
    from matplotlib.patches import Patch

    ct, seg, *rest = _load_checked(image, [pred] + ([label] if label else []))
    seg = seg.astype(np.int16)
    gt = rest[0].astype(np.int16) if rest else None
    ref = gt if gt is not None else seg
    k = int(np.argmax((ref > 0).sum(axis=(0, 1)))) if ref.any() else ct.shape[2] // 2
    ct_slice = np.clip(ct[:, :, k], *window)
    # RAS array (axis 0 towards the patient's right, axis 1 anterior) -> radiological display: anterior at the
    # top, the patient's right on the left of the picture
    show = lambda a: np.swapaxes(a, 0, 1)[::-1, ::-1]  # noqa: E731
    panels = [("CT", None)] + ([("ground truth", gt)] if gt is not None else []) + [("prediction", seg)]
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 4.3))
    for ax, (name, lab) in zip(np.atleast_1d(axes), panels, strict=True):
        ax.imshow(show(ct_slice), cmap="gray", interpolation="nearest")
        if lab is not None:
            ax.imshow(show(_rgba(lab[:, :, k], 0.55)), interpolation="nearest")
        ax.set_title(f"{name} (slice {k})")
        ax.axis("off")
    handles = [Patch(color=COLOURS[1], label="pancreas"), Patch(color=COLOURS[2], label="tumour")]
    fig.legend(handles=handles, loc="lower center", ncol=2, frameon=False)
    if title:
        fig.suptitle(title)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    return save_figure(fig, out)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Overlay a segmentation on a CT slice and save it as PNG.")
    parser.add_argument("--image", required=True, help="CT volume (NIfTI file or DICOM series folder)")
    parser.add_argument("--pred", required=True, help="predicted label volume (NIfTI)")
    parser.add_argument("--label", default=None, help="ground-truth label volume (optional)")
    parser.add_argument("--out", default="overlay.png")
    parser.add_argument("--title", default=None)
    args = parser.parse_args(argv)
    path = overlay_png(args.image, args.pred, args.out, args.label, title=args.title)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
