"""Regenerate medstack's sample data: ``python data_samples/make_samples.py [--out FOLDER]``.

Deterministic: every rerun writes byte-identical files (seeded phantom, name-based UIDs, fixed dates, gzip
with mtime 0). All samples show the same phantom anatomy (``medstack.testing.phantom``, seed 0), which
is fixed in world space, so they overlay in RAS millimetres whatever their grid. See ``README.md``.
"""

from __future__ import annotations

import argparse
import gzip
import shutil
import sys
import uuid
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
SEED = 0
PATIENT_ID = "MEDSTACK^PHANTOM"
STUDY_UID = f"2.25.{uuid.uuid5(uuid.NAMESPACE_URL, 'https://medstack/data_samples/study').int}"

CT_SHAPE = (64, 128, 128)  # (D, H, W): 64 axial slices of 128 x 128
T1_SHAPE = (128, 80, 96)  # NIfTI (x, y, z) = (96, 80, 128), 1 mm isotropic
T2_SHAPE = (44, 120, 120)  # NIfTI (x, y, z) = (120, 120, 44), 0.9 x 0.9 x 3 mm


def _rotation_x(degrees: float) -> np.ndarray:
    c, s = np.cos(np.deg2rad(degrees)), np.sin(np.deg2rad(degrees))
    rot = np.eye(4)
    rot[1:3, 1:3] = [[c, -s], [s, c]]
    return rot


def _rotation_z(degrees: float) -> np.ndarray:
    c, s = np.cos(np.deg2rad(degrees)), np.sin(np.deg2rad(degrees))
    rot = np.eye(4)
    rot[0:2, 0:2] = [[c, -s], [s, c]]
    return rot


def geometries() -> dict[str, np.ndarray]:
    """The voxel-to-RAS affine of each sample grid."""
    from medstack.testing import axis_code_affine, center_affine

    # CT, head-first supine, scanned cranio-caudally: i -> L, j -> P (IOP [1,0,0, 0,1,0]), k -> I, so
    # slice d = 0 (InstanceNumber 1) is the most superior one and ImagePositionPatient z decreases.
    ct = center_affine(axis_code_affine("LPI", (0.7, 0.7, 2.5)), CT_SHAPE)
    t1 = center_affine(axis_code_affine("RAS", (1.0, 1.0, 1.0)), T1_SHAPE)
    # T2: DICOM-like LPS axes, slab tilted 12 degrees about R-L and 5 degrees about S-I (oblique axial).
    t2_axes = _rotation_z(5.0) @ _rotation_x(12.0) @ axis_code_affine("LPS", (0.9, 0.9, 3.0))
    t2 = center_affine(t2_axes, T2_SHAPE, center=(0.0, -2.0, 1.0))
    return {"ct": ct, "t1": t1, "t2": t2}


def _write_nifti(path: Path, array_dhw: np.ndarray, affine: np.ndarray) -> None:
    """NIfTI-1 with sform and qform code 1 (scanner), mm units, gzip without a timestamp."""
    import nibabel as nib

    img = nib.Nifti1Image(np.ascontiguousarray(array_dhw.transpose(2, 1, 0)), affine)
    img.set_sform(affine, code=1)
    img.set_qform(affine, code=1)
    img.header.set_xyzt_units("mm", "sec")
    img.header["descrip"] = b"medstack phantom (seed 0)"
    path.write_bytes(gzip.compress(img.to_bytes(), compresslevel=9, mtime=0))


def _mr_to_int16(data: np.ndarray) -> np.ndarray:
    return np.clip(np.round(data), 0, np.iinfo(np.int16).max).astype(np.int16)


def make_samples(out: Path) -> list[Path]:
    """Write every sample under ``out`` (its ``dicom/`` and ``nifti/`` folders are replaced)."""
    from medstack.testing import phantom, write_dicom_series, write_localizer

    for sub in ("dicom", "nifti"):
        shutil.rmtree(out / sub, ignore_errors=True)
    geo = geometries()

    ct = phantom(CT_SHAPE, geo["ct"], seed=SEED, kind="ct")
    files = write_dicom_series(
        ct,
        out / "dicom" / "ct_phantom",
        study_uid=STUDY_UID,
        series_number=2,
        series_description="CT PHANTOM 2.5mm",
        modality="CT",
        rescale_slope=1.0,
        rescale_intercept=-1024.0,
        shuffle_names=True,
        instance_number_order="position",
        patient_id=PATIENT_ID,
        seed=SEED,
        file_prefix="IM",
    )
    files += write_localizer(
        out / "dicom" / "localizer",
        plane="coronal",
        n_slices=3,
        shape_hw=(128, 128),
        pixel_spacing=1.4,
        slice_gap=10.0,
        study_uid=STUDY_UID,
        series_number=1,
        modality="CT",
        patient_id=PATIENT_ID,
        seed=SEED,
        file_prefix="IM",
    )

    nifti = out / "nifti"
    nifti.mkdir(parents=True)
    t1 = phantom(T1_SHAPE, geo["t1"], seed=SEED, kind="mr")
    t2 = phantom(T2_SHAPE, geo["t2"], seed=SEED, kind="mr_t2")
    label = phantom(T1_SHAPE, geo["t1"], seed=SEED, kind="label")
    for name, vol in (
        ("mr_t1", t1.replace(data=_mr_to_int16(t1.data))),
        ("mr_t2", t2.replace(data=_mr_to_int16(t2.data))),
        ("mr_label", label),
    ):
        path = nifti / f"{name}.nii.gz"
        _write_nifti(path, np.asarray(vol.data[0]), np.asarray(vol.affine))
        files.append(path)
    return files


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=HERE, help="output folder (default: this script's folder)")
    args = parser.parse_args(argv)
    try:
        import medstack.testing  # noqa: F401
    except ImportError:  # run from a source checkout without installing medstack
        sys.path.insert(0, str(HERE.parent))
    files = make_samples(args.out)
    total = sum(f.stat().st_size for f in files)
    sys.stdout.write(f"wrote {len(files)} files, {total / 2**20:.2f} MiB, under {args.out}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
