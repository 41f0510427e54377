#!/usr/bin/env python3
"""Build the T1 MRI fixtures under <repo>/fixtures/mr/ (gitignored): real brain MRIs from
Debian and PyPI packages, written as DICOM MR Image Storage series (one file per slice, real
geometry), each with an independent brain mask on the same grid.

* ``colin27-axial``, ``colin27-sagittal``: the Colin27 average (Holmes et al. 1998) of Debian's
  ``mricron-data`` (``templates/ch2.nii.gz``), re-sliced without interpolation; truth: the
  package's BET brain ``ch2bet.nii.gz`` above 0.
* ``colin27-oblique``: the same image resampled (trilinear; the mask nearest) onto slices
  tilted 20 degrees about the left-right axis.
* ``mni152-axial``: the MNI ICBM152 2009a symmetric T1 template of the ``nilearn`` wheel;
  truth: grey plus white matter above 0.5 (in the maps' 0-255 units; an approximation of the
  brain mask: no CSF, no brainstem below the maps).

Every folder holds ``slice_NNN.dcm`` (slice N at position N along the normal), ``truth.u8`` (the
mask, one byte per voxel in the order the appliance's label map uses: slices along the normal,
rows, columns), ``source.nii.gz`` (exactly the voxel values and geometry that were written, for
running other tools on the same input) and ``manifest.json``.

    python3 scripts/make_mr_fixtures.py [--out fixtures/mr] [--nilearn-wheel W] [--force]
"""
import argparse
import glob
import gzip
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np

VERSION = 2
REPO_ROOT = Path(__file__).resolve().parent.parent
MRICRON = Path("/usr/share/mricron/templates")
NILEARN_DATA = "nilearn/datasets/data/"
MNI = "mni_icbm152_{}_tal_nlin_sym_09a_converted.nii.gz"
OBLIQUE_DEGREES = 20.0


def load_nifti(data: bytes):
    import nibabel as nib
    image = nib.Nifti1Image.from_bytes(gzip.decompress(data))
    return np.asarray(image.get_fdata(dtype=np.float64)), image.affine


def nilearn_files(wheel: Path | None) -> dict:
    """The three MNI maps, read from the nilearn wheel (downloaded without its dependencies)."""
    if wheel is None:
        tmp = Path(tempfile.mkdtemp())
        subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
                        "nilearn==0.14.1", "-d", str(tmp)], check=True)
        wheel = next(tmp.glob("nilearn-*.whl"))
    with zipfile.ZipFile(wheel) as z:
        return {kind: z.read(NILEARN_DATA + MNI.format(kind)) for kind in ("t1", "gm", "wm")}


def lps(affine):
    """NIfTI's RAS affine as an LPS one."""
    return np.diag([-1.0, -1.0, 1.0, 1.0]) @ affine


def reslice(volume, truth, affine, order):
    """Re-slice without interpolation. `order` maps (column, row, slice) to NIfTI voxel axes,
    with a sign: (+a) runs along axis a, (-a) against it. Returns the DICOM-ordered arrays
    [slice, row, column] and the LPS geometry (row direction, column direction, normal,
    spacings, origin)."""
    L = lps(affine)
    shape = volume.shape
    perm = np.zeros((3, 3))
    offset = np.zeros(3)
    for u, (axis, sign) in enumerate(order):
        perm[axis, u] = sign
        if sign < 0:
            offset[axis] = shape[axis] - 1
    M = L[:3, :3] @ perm
    origin = L[:3, :3] @ offset + L[:3, 3]
    # Array indexed [column, row, slice], then transposed to [slice, row, column].
    axes = [axis for axis, _ in order]
    flips = [u for u, (_, sign) in enumerate(order) if sign < 0]

    def arrange(a):
        a = np.transpose(a, axes)
        for u in flips:
            a = np.flip(a, u)
        return np.ascontiguousarray(np.transpose(a, (2, 1, 0)))
    return arrange(volume), arrange(truth), geometry(M, origin)


def geometry(M, origin):
    spacing = np.linalg.norm(M, axis=0)
    directions = M / spacing
    return {"row_direction": directions[:, 0].tolist(), "column_direction": directions[:, 1].tolist(),
            "normal": directions[:, 2].tolist(), "spacing": spacing.tolist(), "origin": origin.tolist()}


def oblique(volume, truth, affine, degrees):
    """Resample onto an axial grid of the same size and 1 mm voxels, tilted about the
    left-right axis and centred on the volume's centre: trilinear for the image, nearest
    for the mask, 0 outside."""
    L = lps(affine)
    t = np.radians(degrees)
    row = np.array([1.0, 0.0, 0.0])
    column = np.array([0.0, np.cos(t), np.sin(t)])
    normal = np.cross(row, column)
    nc, nr, ns = volume.shape
    centre = L[:3, :3] @ ((np.array(volume.shape) - 1) / 2) + L[:3, 3]
    origin = centre - ((nc - 1) / 2) * row - ((nr - 1) / 2) * column - ((ns - 1) / 2) * normal
    M = np.stack([row, column, normal], axis=1)
    s, r, c = np.meshgrid(np.arange(ns), np.arange(nr), np.arange(nc), indexing="ij")
    points = origin[:, None] + M @ np.stack([c.ravel(), r.ravel(), s.ravel()]).astype(np.float64)
    index = np.linalg.solve(L[:3, :3], points - L[:3, 3][:, None])
    image = trilinear(volume, index).reshape(ns, nr, nc)
    nearest = np.rint(index).astype(np.int64)
    inside = np.all((nearest >= 0) & (nearest < np.array(volume.shape)[:, None]), axis=0)
    mask = np.zeros(nearest.shape[1], dtype=truth.dtype)
    n = nearest[:, inside]
    mask[inside] = truth[n[0], n[1], n[2]]
    return np.rint(image), mask.reshape(ns, nr, nc), geometry(M, origin)


def trilinear(volume, index):
    lo = np.floor(index).astype(np.int64)
    frac = index - lo
    out = np.zeros(index.shape[1])
    shape = np.array(volume.shape)[:, None]
    for corner in range(8):
        bits = np.array([(corner >> a) & 1 for a in range(3)])[:, None]
        at = lo + bits
        weight = np.prod(np.where(bits, frac, 1 - frac), axis=0)
        ok = np.all((at >= 0) & (at < shape), axis=0)
        a = at[:, ok]
        out[ok] += weight[ok] * volume[a[0], a[1], a[2]]
    return out


def write_series(dest: Path, name: str, pixels, truth, geo, patient: str, description: str):
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import PYDICOM_ROOT_UID, ExplicitVRLittleEndian, MRImageStorage, generate_uid
    import nibabel as nib

    if not np.all(pixels == np.rint(pixels)) or pixels.min() < 0 or pixels.max() > 65535:
        raise SystemExit(f"{name}: pixel values must be integers in 0..65535")
    pixels = pixels.astype(np.uint16)

    def uid(*parts):
        return generate_uid(prefix=PYDICOM_ROOT_UID, entropy_srcs=["radiant-edge-mr", name, *parts])

    dest.mkdir(parents=True)
    ns, nr, nc = pixels.shape
    row, column, normal = (np.array(geo[k]) for k in ("row_direction", "column_direction", "normal"))
    sc, sr, ss = geo["spacing"]
    origin = np.array(geo["origin"])
    study, series, frame = uid("study"), uid("series"), uid("for")
    date, time = "20261201", "090000"
    slices = []
    for s in range(ns):
        position = origin + s * ss * normal
        sop = uid("slice", str(s))
        fm = FileMetaDataset()
        fm.MediaStorageSOPClassUID = MRImageStorage
        fm.MediaStorageSOPInstanceUID = sop
        fm.TransferSyntaxUID = ExplicitVRLittleEndian
        fm.ImplementationClassUID = uid("implementation")
        fm.ImplementationVersionName = f"RE_MR_FIXTURES_{VERSION}"
        ds = Dataset()
        ds.file_meta = fm
        ds.SpecificCharacterSet = "ISO_IR 100"
        ds.SOPClassUID = MRImageStorage
        ds.SOPInstanceUID = sop
        ds.InstanceCreationDate, ds.InstanceCreationTime = date, time
        ds.ImageType = ["DERIVED", "SECONDARY", "OTHER"]
        ds.StudyDate = ds.SeriesDate = ds.AcquisitionDate = ds.ContentDate = date
        ds.StudyTime = ds.SeriesTime = ds.AcquisitionTime = ds.ContentTime = time
        ds.AccessionNumber = name[:16]
        ds.Modality = "MR"
        ds.Manufacturer = "Radiant Edge fixtures"
        ds.InstitutionName = "Radiant Edge Test Lab"
        ds.ReferringPhysicianName = ""
        ds.StudyDescription = "MR Brain"
        ds.SeriesDescription = description
        ds.ManufacturerModelName = "make_mr_fixtures.py"
        ds.PatientName = patient
        # One patient per source volume: the three Colin27 acquisitions are one person's
        # (learning splits its held-out cases by patient, never by series or slice).
        ds.PatientID = patient.split("^")[-1].upper()[:16]
        ds.PatientBirthDate = ""
        ds.PatientSex = "O"
        ds.BodyPartExamined = "BRAIN"
        # MR Image module (PS3.3 C.8.3.1): a template, not an acquisition.
        ds.ScanningSequence = "GR"
        ds.SequenceVariant = "NONE"
        ds.ScanOptions = ""
        ds.MRAcquisitionType = "3D"
        ds.RepetitionTime = ""
        ds.EchoTime = ""
        ds.EchoTrainLength = ""
        ds.MagneticFieldStrength = ""
        ds.SliceThickness = f"{ss:.6g}"
        ds.SpacingBetweenSlices = f"{ss:.6g}"
        ds.PatientPosition = "HFS"
        ds.StudyInstanceUID = study
        ds.SeriesInstanceUID = series
        ds.StudyID = "1"
        ds.SeriesNumber = 1
        ds.AcquisitionNumber = 1
        ds.InstanceNumber = s + 1
        ds.ImagePositionPatient = [f"{v:.6f}" for v in position]
        ds.ImageOrientationPatient = [f"{v:.8f}" for v in list(row) + list(column)]
        ds.FrameOfReferenceUID = frame
        ds.PositionReferenceIndicator = ""
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows, ds.Columns = nr, nc
        ds.PixelSpacing = [f"{sr:.6g}", f"{sc:.6g}"]
        ds.BitsAllocated = ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = 0
        ds.PixelData = np.ascontiguousarray(pixels[s]).astype("<u2").tobytes()
        ds["PixelData"].VR = "OW"
        file = f"slice_{s:03d}.dcm"
        ds.save_as(dest / file, enforce_file_format=True)
        slices.append({"file": file, "size": (dest / file).stat().st_size})
    (dest / "truth.u8").write_bytes(np.ascontiguousarray(truth).astype(np.uint8).tobytes())
    # The NIfTI of exactly what was written: array [column, row, slice], RAS affine.
    M = np.stack([row * sc, column * sr, normal * ss], axis=1)
    affine = np.diag([-1.0, -1.0, 1.0, 1.0]) @ np.block([[M, origin[:, None]], [np.zeros((1, 3)), np.ones((1, 1))]])
    image = nib.Nifti1Image(np.transpose(pixels, (2, 1, 0)).astype(np.int16), affine)
    image.header.set_xyzt_units("mm")
    nib.save(image, str(dest / "source.nii.gz"))
    manifest = {"name": name, "description": description, "study_instance_uid": study,
                "series_instance_uid": series, "shape": [ns, nr, nc], "geometry": geo,
                "truth_voxels": int(np.count_nonzero(truth)), "slices": slices}
    (dest / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=REPO_ROOT / "fixtures" / "mr")
    ap.add_argument("--nilearn-wheel", type=Path)
    ap.add_argument("--force", action="store_true")
    args = ap.parse_args()
    stamp = args.out / ".stamp"
    if not args.force and stamp.exists() and stamp.read_text().strip() == str(VERSION):
        print(f"mr fixtures up to date in {args.out} (version {VERSION})")
        return
    build = Path(tempfile.mkdtemp(prefix="mr-fixtures-", dir=args.out.parent if args.out.parent.exists() else None))
    ch2, affine = load_nifti((MRICRON / "ch2.nii.gz").read_bytes())
    ch2bet, _ = load_nifti((MRICRON / "ch2bet.nii.gz").read_bytes())
    brain = (ch2bet > 0).astype(np.uint8)
    # Axial: columns run right to left (+x in LPS), rows anterior to posterior, slices feet
    # to head. Sagittal: columns anterior to posterior, rows head to feet, slices right to left.
    series = [
        ("colin27-axial", reslice(ch2, brain, affine, [(0, -1), (1, -1), (2, 1)]), "Colin27", "T1 axial (Colin27, mricron-data)"),
        ("colin27-sagittal", reslice(ch2, brain, affine, [(1, -1), (2, -1), (0, 1)]), "Colin27", "T1 sagittal (Colin27, mricron-data)"),
        ("colin27-oblique", oblique(ch2, brain, affine, OBLIQUE_DEGREES), "Colin27", f"T1 oblique {OBLIQUE_DEGREES:g} deg (Colin27, mricron-data)"),
    ]
    mni = nilearn_files(args.nilearn_wheel)
    t1, mni_affine = load_nifti(mni["t1"])
    gm, _ = load_nifti(mni["gm"])
    wm, _ = load_nifti(mni["wm"])
    matter = ((gm + wm) > 0.5).astype(np.uint8)
    series.append(("mni152-axial", reslice(t1, matter, mni_affine, [(0, -1), (1, -1), (2, 1)]), "MNI152", "T1 axial (MNI ICBM152 2009a, nilearn)"))
    for name, (pixels, truth, geo), patient, description in series:
        write_series(build / name, name, pixels, truth, geo, f"Template^{patient}", description)
        print(f"mr fixtures: {name} {pixels.shape[0]} slices of {pixels.shape[1]}x{pixels.shape[2]}")
    (build / ".stamp").write_text(f"{VERSION}\n")
    if args.out.exists():
        shutil.rmtree(args.out)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(str(build), str(args.out))


if __name__ == "__main__":
    main()
