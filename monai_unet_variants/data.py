"""A small synthetic pancreas-CT data set, generated deterministically, in the Medical Segmentation
Decathlon Task07 layout (``dataset.json``, ``imagesTr/``, ``labelsTr/``, ``imagesTs/``) plus one test case
as a DICOM series.

Each case is a torso-like volume: air, a body outline with subcutaneous fat and muscle, liver, spleen,
kidneys, aorta, spine, bowel gas and a bent, elongated pancreas (label 1) holding a hypodense tumour
(label 2), in Hounsfield units with noise, anisotropic spacing (0.8 x 0.8 x 2.5 mm) and an LPS-style
affine (negative x/y axes in RAS world coordinates) as in NIfTI files converted from DICOM.

Command line::

    python -m monai_unet_variants.data --out ~/data/SyntheticPancreas        # 8 train + 2 test cases
    python -m monai_unet_variants.data --out DIR --num-train 16 --num-test 4 --shape 160 128 40
    python -m monai_unet_variants.data --out DIR --clinical --n 32 --workers 2   # 512 x 512 x 80-120, as real CT
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

__all__ = ["SAMPLE_VERSION", "clinical_shape", "default_sample_dir", "ensure_sample_data", "generate_case", "make_dataset", "write_dicom_series"]

SAMPLE_VERSION = "1"
SPACING = (0.8, 0.8, 2.5)
SHAPE = (150, 125, 32)
LABELS = {"0": "background", "1": "pancreas", "2": "cancer"}
#: clinical-size cases (``--clinical``): 512 x 512 in plane, 80-120 slices, at ``SPACING``
CLINICAL_IN_PLANE = (512, 512)
CLINICAL_SLICES = (80, 120)


def _affine(shape: Sequence[int], spacing: Sequence[float]) -> np.ndarray:
    """RAS world affine of a scan stored the DICOM way: i runs to the patient's left, j to posterior."""
    a = np.diag([-spacing[0], -spacing[1], spacing[2], 1.0])
    a[:3, 3] = [spacing[0] * (shape[0] - 1) / 2, spacing[1] * (shape[1] - 1) / 2 + 20.0, -spacing[2] * shape[2] / 2 - 300.0]
    return a


def _ellipsoid(grid: tuple[np.ndarray, ...], centre: Sequence[float], radii: Sequence[float]) -> np.ndarray:
    return sum(((g - c) / r) ** 2 for g, c, r in zip(grid, centre, radii, strict=True)) <= 1.0


def generate_case(seed: int, shape: Sequence[int] = SHAPE, spacing: Sequence[float] = SPACING) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One synthetic case: ``(image in HU as int16, label as uint8, affine)``, identical for the same seed."""
    rng = np.random.default_rng(seed)
    nx, ny, nz = shape
    # physical coordinates in mm, centred: x to the patient's left, y posterior, z superior
    x = (np.arange(nx) - (nx - 1) / 2) * spacing[0]
    y = (np.arange(ny) - (ny - 1) / 2) * spacing[1]
    z = (np.arange(nz) - (nz - 1) / 2) * spacing[2]
    gx, gy, gz = np.meshgrid(x, y, z, indexing="ij")
    hu = np.full(shape, -1000.0, dtype=np.float32)
    label = np.zeros(shape, dtype=np.uint8)

    half_w = 0.5 * nx * spacing[0] * rng.uniform(0.80, 0.88)
    half_h = 0.5 * ny * spacing[1] * rng.uniform(0.72, 0.80)
    taper = 1.0 + 0.05 * gz / max(1.0, abs(z).max())
    body_r = (gx / (half_w * taper)) ** 2 + (gy / (half_h * taper)) ** 2
    body = body_r <= 1.0
    fat_depth = rng.uniform(0.80, 0.88)
    hu[body] = -100.0  # subcutaneous fat
    inner = body_r <= fat_depth**2
    hu[inner] = 45.0  # muscle wall
    cavity = body_r <= (fat_depth - 0.08) ** 2
    hu[cavity] = -80.0 + 10 * rng.standard_normal()  # visceral fat

    def place(mask: np.ndarray, value: float) -> None:
        hu[mask & cavity] = value

    grid = (gx, gy, gz)
    # spine and aorta posterior, midline
    spine_c = (0.0, half_h * 0.62, 0.0)
    place(_ellipsoid(grid, spine_c, (14, 12, 1e4)), 500.0 + 80 * rng.standard_normal())
    place(_ellipsoid(grid, spine_c, (5, 4, 1e4)), 20.0)
    aorta_c = (rng.uniform(-6, 2), half_h * 0.30, 0.0)
    place(_ellipsoid(grid, aorta_c, (8, 8, 1e4)), 170.0)
    # liver (patient's right = negative x here), spleen (left), kidneys
    place(_ellipsoid(grid, (-half_w * 0.45, -2.0, 18.0), (half_w * 0.45, half_h * 0.62, 45.0)), 65.0)
    place(_ellipsoid(grid, (half_w * 0.55, half_h * 0.05, 25.0), (16, 22, 30)), 55.0)
    for side in (-1, 1):
        place(_ellipsoid(grid, (side * half_w * 0.42, half_h * 0.45, -12.0), (11, 16, 28)), 150.0)
    # bowel with gas, anterior
    for _ in range(3):
        c = (rng.uniform(-0.3, 0.4) * half_w, -half_h * rng.uniform(0.35, 0.6), rng.uniform(-25, 25))
        place(_ellipsoid(grid, c, (rng.uniform(6, 10),) * 2 + (rng.uniform(8, 14),)), -700.0)

    # pancreas: a tube around a bent curve from the head (patient's right, near the duodenum) to the tail
    t = np.linspace(0.0, 1.0, 60)
    head = np.array([-half_w * rng.uniform(0.18, 0.28), half_h * rng.uniform(-0.05, 0.08), rng.uniform(-12, -4)])
    tail = np.array([half_w * rng.uniform(0.40, 0.52), half_h * rng.uniform(0.05, 0.2), rng.uniform(4, 12)])
    bend = (head + tail) / 2 + np.array([0.0, -half_h * rng.uniform(0.2, 0.32), rng.uniform(-4, 4)])
    curve = ((1 - t) ** 2)[:, None] * head + (2 * (1 - t) * t)[:, None] * bend + (t**2)[:, None] * tail
    radius = 9.0 - 4.0 * t + rng.uniform(-1, 1)  # thick head, thin tail
    # the tube's distance, computed within its bounding box only (a clinical-size volume is 25 M voxels)
    reach = float(radius.max()) + max(spacing)
    box = tuple(
        slice(max(0, int(np.searchsorted(axis, lo - reach)) - 1), int(np.searchsorted(axis, hi + reach)) + 1)
        for axis, lo, hi in zip((x, y, z), curve.min(axis=0), curve.max(axis=0), strict=True)
    )
    bx, by, bz = gx[box], gy[box], gz[box]
    rel = np.full(bx.shape, np.inf, dtype=np.float32)
    for p, r in zip(curve, radius, strict=True):
        d = np.sqrt((bx - p[0]) ** 2 + (by - p[1]) ** 2 + ((bz - p[2]) * 1.3) ** 2)
        np.minimum(rel, d / r, out=rel)
    pancreas = np.zeros(shape, dtype=bool)
    pancreas[box] = rel <= 1.0
    pancreas &= cavity
    hu[pancreas] = 110.0 + 8 * rng.standard_normal()
    label[pancreas] = 1
    # hypodense tumour inside the pancreas
    k = int(rng.integers(5, 40))
    tumour_r = rng.uniform(4.5, 7.0)
    tumour = _ellipsoid(grid, curve[k], (tumour_r, tumour_r, tumour_r / 1.3)) & pancreas
    hu[tumour] = 45.0 + 5 * rng.standard_normal()
    label[tumour] = 2

    # partial-volume blur and noise
    from scipy.ndimage import gaussian_filter

    hu = gaussian_filter(hu, sigma=(0.8, 0.8, 0.4))
    hu += rng.normal(0.0, 12.0, size=shape).astype(np.float32)
    image = np.clip(np.round(hu), -1024, 3071).astype(np.int16)
    return image, label, _affine(shape, spacing)


def write_dicom_series(image: np.ndarray, affine: np.ndarray, folder: str | os.PathLike, seed: int = 0) -> list[Path]:
    """Write an int16 HU volume as a CT DICOM series (one file per slice) with the geometry of ``affine``.

    Slices are written from the highest to the lowest slice index, as scanners often store them, so a
    reader must sort by position rather than file name.
    """
    import pydicom
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    lps = np.diag([-1.0, -1.0, 1.0])
    spacing = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
    row_cos = lps @ affine[:3, 0] / spacing[0]  # direction of increasing column index (i)
    col_cos = lps @ affine[:3, 1] / spacing[1]  # direction of increasing row index (j)
    study, series, frame = (generate_uid(entropy_srcs=[f"muv-{seed}-{s}"]) for s in ("study", "series", "frame"))
    paths = []
    nz = image.shape[2]
    for number, k in enumerate(reversed(range(nz)), start=1):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=[f"muv-{seed}-slice-{k}"])
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        path = folder / f"IM{number:04d}.dcm"
        ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
        ds.Modality = "CT"
        ds.PatientName = f"Synthetic^Pancreas{seed}"
        ds.PatientID = f"MUV{seed:04d}"
        ds.StudyDate = ds.SeriesDate = "20260101"
        ds.SeriesDescription = "synthetic pancreas CT (monai-unet-variants)"
        ds.SeriesNumber = 1
        ds.InstanceNumber = number
        ds.ImageOrientationPatient = [float(v) for v in np.concatenate([row_cos, col_cos])]
        ds.ImagePositionPatient = [float(v) for v in lps @ (affine @ np.array([0, 0, k, 1.0]))[:3]]
        ds.SliceLocation = float(ds.ImagePositionPatient[2])
        ds.PixelSpacing = [float(spacing[1]), float(spacing[0])]  # row spacing (j), column spacing (i)
        ds.SliceThickness = float(spacing[2])
        ds.Rows, ds.Columns = image.shape[1], image.shape[0]
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 16, 15
        ds.PixelRepresentation = 1
        ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = 0, 1, "HU"
        ds.PixelData = np.ascontiguousarray(image[:, :, k].T).astype(np.int16).tobytes()
        if int(pydicom.__version__.split(".")[0]) >= 3:
            pydicom.dcmwrite(str(path), ds, enforce_file_format=True)
        else:  # pydicom 2 (the MONAI Label environment pins pydicom<3) takes the encoding from the dataset
            ds.is_little_endian, ds.is_implicit_VR = True, False
            pydicom.dcmwrite(str(path), ds, write_like_original=False)
        paths.append(path)
    return paths


def clinical_shape(seed: int) -> tuple[int, int, int]:
    """The shape of clinical-size case ``seed``: 512 x 512 in plane, 80-120 slices (drawn from the seed)."""
    return (*CLINICAL_IN_PLANE, int(np.random.default_rng([seed, 7]).integers(CLINICAL_SLICES[0], CLINICAL_SLICES[1] + 1)))


def _write_case(out: Path, i: int, seed: int, shape: Sequence[int], spacing: Sequence[float], is_train: bool,
                dicom: bool) -> dict | str:
    """Generate case ``i`` and write it (image, label, and optionally its DICOM series); its datalist entry."""
    import nibabel as nib

    name = f"pancreas_{i:03d}"
    image, label, affine = generate_case(seed, shape, spacing)
    img_path = out / ("imagesTr" if is_train else "imagesTs") / f"{name}.nii.gz"
    lbl_path = out / ("labelsTr" if is_train else "labelsTs") / f"{name}.nii.gz"
    for arr, path in ((image, img_path), (label, lbl_path)):
        nii = nib.Nifti1Image(arr, affine)
        nii.header.set_xyzt_units("mm", "sec")
        nii.set_qform(affine, code=1)
        nii.set_sform(affine, code=1)
        nib.save(nii, str(path))
    if dicom:
        write_dicom_series(image, affine, out / "dicomTs" / name, seed=seed)
    if is_train:
        return {"image": f"./imagesTr/{name}.nii.gz", "label": f"./labelsTr/{name}.nii.gz"}
    return f"./imagesTs/{name}.nii.gz"


def make_dataset(
    out_dir: str | os.PathLike,
    num_train: int = 8,
    num_test: int = 2,
    shape: Sequence[int] = SHAPE,
    spacing: Sequence[float] = SPACING,
    dicom: bool = True,
    progress: bool = True,
    clinical: bool = False,
    workers: int = 1,
) -> Path:
    """Write the synthetic set in the MSD Task07 layout and return its folder.

    Cases ``pancreas_000 .. pancreas_{num_train-1}`` are training cases (image and label); the next
    ``num_test`` are test images (their labels go to ``labelsTs/`` for checking inference). With ``dicom``,
    the first test case is also written as a DICOM series under ``dicomTs/<case>/``. With ``clinical``, every case
    has clinical size instead of ``shape``: 512 x 512 x 80-120 voxels (``clinical_shape``) at ``spacing``
    (0.8 x 0.8 x 2.5 mm by default), about 25 M voxels, 50 MB of int16 each. ``workers`` processes write cases at
    once (each needs about 1.5 GB at clinical size).
    """
    out = Path(out_dir)
    for sub in ("imagesTr", "labelsTr", "imagesTs", "labelsTs"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    jobs = [
        (out, i, 1000 + i, clinical_shape(1000 + i) if clinical else tuple(shape), tuple(spacing), i < num_train,
         dicom and i == num_train)
        for i in range(num_train + num_test)
    ]
    bar = None
    if progress:
        try:
            from tqdm import tqdm

            bar = tqdm(total=len(jobs), desc=f"synthetic pancreas CT{' (clinical size)' if clinical else ''}",
                       unit="case")
        except ImportError:
            pass
    from concurrent.futures import ProcessPoolExecutor
    from contextlib import nullcontext

    entries = []
    with ProcessPoolExecutor(workers) if workers > 1 else nullcontext() as pool:
        for entry in (pool.map if pool else map)(_write_case, *zip(*jobs, strict=True)):  # in case order
            entries.append(entry)
            if bar is not None:
                bar.update()
    if bar is not None:
        bar.close()
    training, test = entries[:num_train], entries[num_train:]
    meta = {
        "name": "SyntheticPancreasClinical" if clinical else "SyntheticPancreas",
        "description": "Synthetic pancreas and tumour CT, generated by monai_unet_variants.data (MSD Task07 layout)"
        + (", clinical size (512 x 512 x 80-120 voxels)" if clinical else ""),
        "reference": "monai-unet-variants",
        "licence": "CC0-1.0",
        "release": SAMPLE_VERSION,
        "tensorImageSize": "3D",
        "modality": {"0": "CT"},
        "labels": LABELS,
        "numTraining": len(training),
        "numTest": len(test),
        "training": training,
        "test": test,
    }
    (out / "dataset.json").write_text(json.dumps(meta, indent=2))
    return out


def default_sample_dir() -> Path:
    """Where the built-in sample lives: ``$MUV_SAMPLE_DIR`` or ``~/.cache/monai_unet_variants/sample_pancreas_v1``."""
    env = os.environ.get("MUV_SAMPLE_DIR")
    if env:
        return Path(env)
    base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return base / "monai_unet_variants" / f"sample_pancreas_v{SAMPLE_VERSION}"


def ensure_sample_data(out_dir: str | os.PathLike | None = None, **kwargs) -> Path:
    """Generate the sample set once (on first use) and return its folder; later calls only check it.

    Generation writes to a temporary sibling folder and renames it, so an interrupted run never leaves a
    half-written set behind.
    """
    out = Path(out_dir) if out_dir else default_sample_dir()
    if (out / "dataset.json").is_file():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + f".tmp-{os.getpid()}")
    make_dataset(tmp, **kwargs)
    try:
        os.replace(tmp, out)
    except OSError:  # another process won the race
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Generate the synthetic pancreas CT sample (MSD Task07 layout).")
    parser.add_argument("--out", default=str(default_sample_dir()), help="output folder (default: %(default)s)")
    parser.add_argument("--num-train", type=int, default=8)
    parser.add_argument("--num-test", type=int, default=2)
    parser.add_argument("--shape", type=int, nargs=3, default=list(SHAPE), help="voxels (x y z)")
    parser.add_argument("--no-dicom", action="store_true", help="skip the DICOM series")
    parser.add_argument("--clinical", action="store_true",
                        help="clinical-size cases: 512 x 512 x 80-120 voxels at 0.8 x 0.8 x 2.5 mm (--shape ignored)")
    parser.add_argument("--n", type=int, default=None, help="training cases (the same as --num-train)")
    parser.add_argument("--workers", type=int, default=1, help="processes writing cases at once (default 1)")
    args = parser.parse_args(argv)
    num_train = args.n if args.n is not None else args.num_train
    out = make_dataset(args.out, num_train, args.num_test, tuple(args.shape), dicom=not args.no_dicom,
                       clinical=args.clinical, workers=max(1, args.workers))
    print(f"wrote {num_train} training and {args.num_test} test cases to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
