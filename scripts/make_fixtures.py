#!/usr/bin/env python3
"""Build the DICOM test fixtures under <repo>/fixtures/ (gitignored).

This script owns everything below ``fixtures/``:

* ``fixtures/pydicom/``   - a curated selection of the sample files shipped
  with the pip packages ``pydicom`` and ``pydicom-data``, plus
  ``manifest.json`` describing each copied file.
* ``fixtures/ct-series/`` - a 108-slice CT Image Storage series generated
  from the InVesalius example project ``Cranium.inv3`` (Debian package
  ``invesalius-examples``), plus ``manifest.json``.
* ``fixtures/ct-series-lesion/`` - the same series with one synthetic
  haemorrhage-like lesion implanted (a smooth-edged sphere, LESION below),
  under its own patient, study, series and SOP Instance UIDs, plus
  ``manifest.json`` (which also records the lesion).
* ``fixtures/.stamp``     - written last; when it carries the current
  FIXTURES_VERSION and every file listed in the manifests is present with
  the recorded size, the script exits immediately.

Output is deterministic: the same inputs give byte-identical files.
Normally run through ``scripts/fixtures.sh``, which installs the inputs.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import shutil
import struct
import sys
from collections import Counter
from pathlib import Path

# Bump whenever the selection rules or the generated content change.
FIXTURES_VERSION = 2

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO_ROOT / "fixtures"
CRANIUM_INV3 = Path("/usr/share/doc/invesalius-examples/examples/Cranium.inv3")

MAX_FILE_SIZE = 20 * 1000 * 1000

# The lesion implanted into fixtures/ct-series-lesion: a sphere in patient
# coordinates (LPS, mm; the series is centred on x = y = 0, slice i at
# z = 1.5 i), in the right hemisphere of the middle slices, well inside the
# intracranial space (about 30 mm from its boundary). Every voxel gains
# delta_hu * p, where p falls smoothly (half a sine) from 1 at
# radius - edge to 0 at radius + edge; p = 0.5 on the sphere itself, which is
# the lesion's exact extent. Brain here is about 25 HU, so the lesion reads
# about 90 HU, like acute blood. The same profile is used by
# models/reference/train_head_ct.py.
LESION = {
    "shape": "sphere",
    "centre_mm": [-26.0, 12.0, 81.0],
    "radius_mm": 12.0,
    "delta_hu": 65.0,
    "edge_mm": 1.5,
}

# The two CT series: directory name -> what differs between them.
CT_SERIES = {
    "ct-series": {
        "uid_root": "radiant-edge-fixtures/cranium/",
        "patient_name": "Anonymous^Cranium",
        "patient_id": "RE-CT-0001",
        "accession": "RE-ACC-0001",
        "study_description": "Head CT (InVesalius Cranium example)",
        "series_suffix": "",
        "lesion": None,
    },
    "ct-series-lesion": {
        "uid_root": "radiant-edge-fixtures/cranium-lesion/",
        "patient_name": "Anonymous^CraniumLesion",
        "patient_id": "RE-CT-0002",
        "accession": "RE-ACC-0002",
        "study_description": "Head CT (Cranium example, synthetic lesion)",
        "series_suffix": " + synthetic lesion",
        "lesion": LESION,
    },
}

# SOP Class UID -> fixture category.
CATEGORIES = {
    "1.2.840.10008.5.1.4.1.1.2": "ct",
    "1.2.840.10008.5.1.4.1.1.2.1": "enhanced_ct",
    "1.2.840.10008.5.1.4.1.1.4": "mr",
    "1.2.840.10008.5.1.4.1.1.4.1": "enhanced_mr",
    "1.2.840.10008.5.1.4.1.1.1": "cr",
    "1.2.840.10008.5.1.4.1.1.1.1": "dx",
    "1.2.840.10008.5.1.4.1.1.1.1.1": "dx",
    "1.2.840.10008.5.1.4.1.1.7": "sc",
    "1.2.840.10008.5.1.4.1.1.7.1": "sc",
    "1.2.840.10008.5.1.4.1.1.7.2": "sc",
    "1.2.840.10008.5.1.4.1.1.7.3": "sc",
    "1.2.840.10008.5.1.4.1.1.7.4": "sc",
    "1.2.840.10008.5.1.4.1.1.66.4": "seg",
    "1.2.840.10008.5.1.4.1.1.88.11": "sr",
    "1.2.840.10008.5.1.4.1.1.88.22": "sr",
    "1.2.840.10008.5.1.4.1.1.88.33": "sr",
    "1.2.840.10008.5.1.4.1.1.88.34": "sr",
}

# Transfer syntaxes a fixture may use.
TRANSFER_SYNTAXES = {
    "1.2.840.10008.1.2": "implicit_le",
    "1.2.840.10008.1.2.1": "explicit_le",
    "1.2.840.10008.1.2.2": "explicit_be",
    "1.2.840.10008.1.2.1.99": "deflated",
    "1.2.840.10008.1.2.5": "rle",
    "1.2.840.10008.1.2.4.50": "jpeg_baseline",
    "1.2.840.10008.1.2.4.51": "jpeg_extended",
    "1.2.840.10008.1.2.4.57": "jpeg_lossless",
    "1.2.840.10008.1.2.4.70": "jpeg_lossless_sv1",
    "1.2.840.10008.1.2.4.80": "jpeg_ls_lossless",
    "1.2.840.10008.1.2.4.81": "jpeg_ls_near_lossless",
    "1.2.840.10008.1.2.4.90": "jpeg2000_lossless",
    "1.2.840.10008.1.2.4.91": "jpeg2000",
}

# Sample files that are deliberately broken or documented (pydicom's
# test_files/README.txt) as inconsistent; the receiving appliance should get
# known-good data only.
BROKEN_NAME_PARTS = ("bad", "invalid", "no_meta", "truncated", "too_short")
EXCLUDED_FILES = {
    "JPEG-lossy.dcm": "corrupt JPEG stream (JPGExtended.dcm is the fixed copy)",
    "JPEG2000-embedded-sequence-delimiter.dcm": "codestream deliberately corrupted",
    "GDCMJ2K_TextGBR.dcm": "non-conformant JPEG 2000 pixel data (JP2 header)",
    "J2K_pixelrep_mismatch.dcm": "J2K signedness contradicts Pixel Representation",
    "MR_small_padded.dcm": "Pixel Data deliberately padded past Rows*Columns",
    "explicit_VR-UN.dcm": "standard attributes encoded with VR UN (gdcmconv bug)",
}

# Of several files sharing a SOP Instance UID only one can be kept; these win
# over the source order so that more transfer syntaxes stay covered.
PREFERRED = {
    "MR_small_implicit.dcm",            # implicit VR LE for an MR image
    "emri_small_jpeg_ls_lossless.dcm",  # the only JPEG-LS file with full UIDs
    "liver.dcm",                        # multi-frame SEG (liver_1frame: same UID)
    "SC_rgb_rle.dcm",                   # RLE (UID shared with SC_rgb_jpeg_gdcm)
    "SC_rgb_small_odd_big_endian.dcm",  # explicit VR big endian
    "SC_rgb_jpeg_dcmtk.dcm",            # ordinary YBR_FULL JPEG baseline
    "SC_rgb_dcmtk_ebcr_dcmd.dcm",       # plain RGB explicit VR LE (dciodvfy-clean)
}

# Explicit VRs that use a 2-byte reserved field and a 4-byte length.
LONG_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV",
            b"UC", b"UN", b"UR", b"UT", b"UV"}


# --------------------------------------------------------------------------
# helpers

def parse_dataset_offset(path: Path) -> tuple[int, int]:
    """Return (offset from group length, offset found by walking the meta).

    Both are the byte offset of the first element after the file meta group.
    Raises ValueError when the preamble/"DICM" or (0002,0000) is missing.
    """
    with open(path, "rb") as f:
        head = f.read(128 * 1024)
    if len(head) < 144 or head[128:132] != b"DICM":
        raise ValueError("no 128-byte preamble + 'DICM'")
    group, elem = struct.unpack_from("<HH", head, 132)
    if (group, elem) != (2, 0) or head[136:138] != b"UL":
        raise ValueError("file meta does not start with (0002,0000) UL")
    by_length = 144 + struct.unpack_from("<I", head, 140)[0]
    pos = 132
    while pos + 8 <= len(head):
        group, elem = struct.unpack_from("<HH", head, pos)
        if group != 2:
            break
        vr = head[pos + 4:pos + 6]
        if vr in LONG_VRS:
            pos += 12 + struct.unpack_from("<I", head, pos + 8)[0]
        else:
            pos += 8 + struct.unpack_from("<H", head, pos + 6)[0]
    return by_length, pos


def sample_sources() -> list[tuple[str, Path]]:
    """(source, path) of every sample file, pydicom first, sorted by name."""
    import pydicom

    test_files = Path(pydicom.__file__).parent / "data" / "test_files"
    found = [("pydicom", p) for p in sorted(test_files.iterdir()) if p.is_file()]
    # pydicom-data installs its files as the `data_store` module; find them
    # through the distribution's file list rather than a hard-coded path.
    dist = importlib.metadata.distribution("pydicom-data")
    data_files = sorted(
        Path(dist.locate_file(f)) for f in (dist.files or [])
        if f.suffix == ".dcm" and "data" in f.parts)
    if not data_files:
        raise SystemExit("pydicom-data is installed but ships no .dcm files?")
    found += [("pydicom-data", p) for p in data_files]
    return found


def inspect_sample(source: str, path: Path) -> dict | str:
    """Return manifest fields for an acceptable sample, or a rejection reason."""
    import warnings
    import pydicom

    name = path.name
    if name in EXCLUDED_FILES:
        return EXCLUDED_FILES[name]
    if any(part in name.lower() for part in BROKEN_NAME_PARTS):
        return "name marks a deliberately broken file"
    size = path.stat().st_size
    if size > MAX_FILE_SIZE:
        return f"larger than 20 MB ({size} bytes)"
    try:
        by_length, walked = parse_dataset_offset(path)
    except ValueError as exc:
        return f"not a Part 10 file: {exc}"
    if by_length != walked:
        return f"(0002,0000) says {by_length - 144}, meta really ends at {walked}"
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            ds = pydicom.dcmread(path)
            for elem in ds.iterall():  # force conversion of every value
                _ = elem.value
    except Exception as exc:  # noqa: BLE001 - any failure means "unreadable"
        return f"pydicom cannot read it: {type(exc).__name__}: {exc}"
    meta = ds.file_meta
    sop_class = str(ds.get("SOPClassUID", ""))
    if sop_class not in CATEGORIES:
        return f"SOP class {sop_class or '(none)'} not wanted"
    ts = str(meta.get("TransferSyntaxUID", ""))
    if ts not in TRANSFER_SYNTAXES:
        return f"transfer syntax {ts or '(none)'} not wanted"
    if (str(meta.get("MediaStorageSOPClassUID", "")) != sop_class
            or meta.get("MediaStorageSOPInstanceUID") != ds.get("SOPInstanceUID")):
        return "file meta SOP class/instance UID differ from the dataset"
    if caught:
        return f"pydicom warns: {str(caught[0].message)[:80]}"
    uids = [ds.get(k) for k in ("SOPInstanceUID", "StudyInstanceUID",
                                "SeriesInstanceUID")]
    if not all(u and pydicom.uid.UID(u).is_valid for u in uids):
        return "missing or malformed SOP/Study/Series Instance UID"
    if not ds.get("Modality"):
        return "type 1 Modality missing"
    category = CATEGORIES[sop_class]
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if category in ("ct", "mr") and frames != 1:
        return "multi-frame CT/MR (only single-frame wanted)"
    return {
        "file": name,
        "source": source,
        "sop_class_uid": sop_class,
        "sop_instance_uid": str(uids[0]),
        "study_instance_uid": str(uids[1]),
        "series_instance_uid": str(uids[2]),
        "transfer_syntax_uid": ts,
        "modality": str(ds.get("Modality", "")),
        "category": category,
        "dataset_offset": by_length,
        "size": size,
        "_path": path,
    }


def choose_samples(candidates: list[dict]) -> tuple[list[dict], list[tuple[str, str]]]:
    """Keep the first file of each SOP Instance UID (SC: of each transfer syntax).

    Many samples are one instance re-encoded in several transfer syntaxes
    under the same SOP Instance UID, which the appliance would treat as the
    same instance, so only the first is kept. "First" is source order (pydicom,
    then pydicom-data, by name) with PREFERRED files moved to the front.
    Secondary Capture files only serve as transfer syntax carriers, so one
    per transfer syntax is enough.
    """
    ordered = sorted(candidates, key=lambda c: c["file"] not in PREFERRED)
    chosen: list[dict] = []
    dropped: list[tuple[str, str]] = []
    by_uid: dict[str, str] = {}
    sc_ts: set[str] = set()
    for cand in ordered:
        uid, ts = cand["sop_instance_uid"], cand["transfer_syntax_uid"]
        if uid in by_uid:
            dropped.append((cand["file"], f"same SOP Instance UID as {by_uid[uid]}"))
        elif cand["category"] == "sc" and ts in sc_ts:
            dropped.append((cand["file"], "SC: transfer syntax already covered"))
        else:
            by_uid[uid] = cand["file"]
            if cand["category"] == "sc":
                sc_ts.add(ts)
            chosen.append(cand)
    chosen.sort(key=candidates.index)
    return chosen, dropped


def build_pydicom_fixtures(dest: Path) -> tuple[list[dict], list[tuple[str, str]]]:
    """Copy the selected sample files into dest and write its manifest."""
    candidates, rejected = [], []
    for source, path in sample_sources():
        result = inspect_sample(source, path)
        if isinstance(result, str):
            rejected.append((f"{source}:{path.name}", result))
        else:
            candidates.append(result)
    chosen, dropped = choose_samples(candidates)
    rejected += [(f"dup:{name}", why) for name, why in dropped]

    dest.mkdir(parents=True)
    names = set()
    for entry in chosen:
        path = entry.pop("_path")
        if entry["file"] in names:
            entry["file"] = "pdd_" + entry["file"]
        names.add(entry["file"])
        shutil.copyfile(path, dest / entry["file"])
    write_json(dest / "manifest.json", chosen)
    return chosen, rejected


# --------------------------------------------------------------------------
# CT series from the InVesalius project

def load_cranium(inv3: Path):
    """Return (volume[z, y, x] int16, project metadata dict) from a .inv3.

    A .inv3 file is a gzip-compressed tar holding ``main.plist`` (project
    metadata: matrix shape/dtype/file name, voxel spacing, window) and the
    volume as a raw C-order array (``matrix.dat``), besides masks/surfaces.
    """
    import plistlib
    import tarfile
    import numpy as np

    with tarfile.open(inv3, "r:gz") as tar:
        members = {Path(m.name).name: m for m in tar.getmembers() if m.isfile()}
        meta = plistlib.loads(tar.extractfile(members["main.plist"]).read())
        matrix = meta["matrix"]
        raw = tar.extractfile(members[matrix["filename"]]).read()
    shape = tuple(matrix["shape"])
    # InVesalius writes numpy memmaps in machine byte order (little endian).
    volume = np.frombuffer(raw, dtype=np.dtype(matrix["dtype"]).newbyteorder("<"))
    if volume.size != np.prod(shape):
        raise SystemExit(f"{inv3}: matrix.dat holds {volume.size} values, "
                         f"shape {shape} expects {np.prod(shape)}")
    return volume.reshape(shape), meta


def lesion_increment(lesion: dict, shape: tuple[int, int, int],
                     spacing: tuple[float, float, float],
                     origin: tuple[float, float, float]):
    """HU added to each voxel of a [z, y, x] volume by ``lesion``, and its mask.

    Returns (increment float64 [z, y, x], label bool [z, y, x]); the label is
    the sphere itself (distance to the centre <= radius).
    """
    import numpy as np

    n_slices, rows, cols = shape
    sx, sy, sz = spacing
    cx, cy, cz = lesion["centre_mm"]
    z = (origin[2] + np.arange(n_slices) * sz - cz)[:, None, None]
    y = (origin[1] + np.arange(rows) * sy - cy)[None, :, None]
    x = (origin[0] + np.arange(cols) * sx - cx)[None, None, :]
    dist = np.sqrt(x * x + y * y + z * z)
    edge = (dist - lesion["radius_mm"]) / lesion["edge_mm"]
    profile = 0.5 * (1.0 - np.sin(0.5 * np.pi * np.clip(edge, -1.0, 1.0)))
    return lesion["delta_hu"] * profile, dist <= lesion["radius_mm"]


def build_ct_series(dest: Path, inv3: Path, variant: dict) -> dict:
    """Write one CT Image Storage file per slice of the Cranium volume.

    ``variant`` (a CT_SERIES value) names the UID namespace, the patient and
    study identification and the lesion to implant, if any.
    """
    import numpy as np
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import (PYDICOM_ROOT_UID, CTImageStorage, ExplicitVRLittleEndian,
                             generate_uid)

    volume, meta = load_cranium(inv3)
    if volume.ndim != 3 or volume.dtype.kind != "i":
        raise SystemExit(f"{inv3}: unexpected volume {volume.shape} {volume.dtype}")
    n_slices, rows, cols = volume.shape
    # plist spacing is (x, y, z) in mm.
    sx, sy, sz = (float(v) for v in meta["spacing"])

    def uid(*parts: str) -> str:
        # Deterministic: the UID is a hash of the entropy sources under a fixed
        # root, so every run gives the same UIDs. (With prefix=None pydicom
        # ignores entropy_srcs and returns a random 2.25 UUID UID.)
        return generate_uid(prefix=PYDICOM_ROOT_UID,
                            entropy_srcs=[variant["uid_root"], *parts])

    study_uid, series_uid, for_uid = uid("study"), uid("series"), uid("for")
    # The volume was stored by InVesalius flipped vertically (anterior at the
    # bottom row); flip back so row direction +y (posterior) matches
    # ImageOrientationPatient [1,0,0,0,1,0]. Slice 0 is the most inferior one
    # (teeth), so z increases with the slice index (feet -> head).
    volume = np.flip(volume, axis=1)
    origin = (-(cols - 1) * sx / 2, -(rows - 1) * sy / 2, 0.0)
    date, time = "20120914", "151208"

    lesion = variant["lesion"]
    if lesion is not None:
        increment, label = lesion_increment(lesion, volume.shape, (sx, sy, sz), origin)
        info = np.iinfo(np.int16)
        volume = np.clip(volume + np.rint(increment), info.min, info.max).astype(np.int16)
        lesion = dict(lesion, label_voxels=int(label.sum()),
                      label_ml=round(float(label.sum()) * sx * sy * sz / 1000, 4))

    dest.mkdir(parents=True)
    slices = []
    for i in range(n_slices):
        pixels = np.ascontiguousarray(volume[i]).astype("<i2")
        sop_uid = uid(f"slice/{i}")
        z = origin[2] + i * sz

        fm = FileMetaDataset()
        fm.MediaStorageSOPClassUID = CTImageStorage
        fm.MediaStorageSOPInstanceUID = sop_uid
        fm.TransferSyntaxUID = ExplicitVRLittleEndian
        fm.ImplementationClassUID = uid("implementation")
        fm.ImplementationVersionName = f"RE_FIXTURES_{FIXTURES_VERSION}"

        ds = Dataset()
        ds.file_meta = fm
        # SOP Common
        ds.SpecificCharacterSet = "ISO_IR 100"
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = sop_uid
        ds.InstanceCreationDate, ds.InstanceCreationTime = date, time
        # General Image / CT Image
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.StudyDate = ds.SeriesDate = ds.AcquisitionDate = ds.ContentDate = date
        ds.StudyTime = ds.SeriesTime = ds.AcquisitionTime = ds.ContentTime = time
        ds.AccessionNumber = variant["accession"]
        ds.Modality = "CT"
        ds.Manufacturer = "Radiant Edge fixtures"
        ds.InstitutionName = "Radiant Edge Test Lab"
        ds.ReferringPhysicianName = ""
        ds.StudyDescription = variant["study_description"]
        ds.SeriesDescription = str(meta.get("name", "Cranium")) + variant["series_suffix"]
        ds.ManufacturerModelName = "make_fixtures.py"
        # Patient
        ds.PatientName = variant["patient_name"]
        ds.PatientID = variant["patient_id"]
        ds.PatientBirthDate = ""
        ds.PatientSex = "O"
        ds.BodyPartExamined = "HEAD"
        ds.SliceThickness = f"{sz:g}"
        ds.KVP = ""
        ds.PatientPosition = "HFS"
        # Study / Series / Frame of Reference
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = series_uid
        ds.StudyID = "1"
        ds.SeriesNumber = 1
        ds.AcquisitionNumber = 1
        ds.InstanceNumber = i + 1
        # Image Plane
        ds.ImagePositionPatient = [f"{origin[0]:.4f}", f"{origin[1]:.4f}", f"{z:.4f}"]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.FrameOfReferenceUID = for_uid
        ds.PositionReferenceIndicator = ""
        ds.SliceLocation = f"{z:.4f}"
        # Image Pixel
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows, ds.Columns = rows, cols
        ds.PixelSpacing = [f"{sy:.7g}", f"{sx:.7g}"]  # row spacing, column spacing
        ds.BitsAllocated = ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = 1  # stored values are signed HU
        ds.WindowCenter = f"{float(meta.get('window_level', 40)):g}"
        ds.WindowWidth = f"{float(meta.get('window_width', 400)):g}"
        ds.RescaleIntercept = "0"
        ds.RescaleSlope = "1"
        ds.RescaleType = "HU"
        ds.PixelData = pixels.tobytes()
        ds["PixelData"].VR = "OW"

        name = f"slice_{i:03d}.dcm"
        ds.save_as(dest / name, enforce_file_format=True)
        offset, walked = parse_dataset_offset(dest / name)
        assert offset == walked, name
        slices.append({"file": name, "sop_instance_uid": sop_uid,
                       "instance_number": i + 1, "dataset_offset": offset,
                       "size": (dest / name).stat().st_size})

    manifest = {
        "source": str(inv3),
        "study_instance_uid": study_uid,
        "series_instance_uid": series_uid,
        "frame_of_reference_uid": for_uid,
        "sop_class_uid": str(CTImageStorage),
        "transfer_syntax_uid": str(ExplicitVRLittleEndian),
        "rows": rows, "columns": cols,
        "pixel_spacing_mm": [sy, sx], "slice_spacing_mm": sz,
        "slices": slices,
    }
    if lesion is not None:
        manifest["lesion"] = lesion
    write_json(dest / "manifest.json", manifest)
    return manifest


# --------------------------------------------------------------------------
# driver

def write_json(path: Path, obj) -> None:
    path.write_text(json.dumps(obj, indent=2) + "\n")


def is_complete(out: Path) -> bool:
    """True when the stamp matches FIXTURES_VERSION and all files are there."""
    try:
        stamp = json.loads((out / ".stamp").read_text())
        if stamp.get("version") != FIXTURES_VERSION:
            return False
        samples = json.loads((out / "pydicom" / "manifest.json").read_text())
        expected = [(out / "pydicom" / e["file"], e["size"]) for e in samples]
        for name in CT_SERIES:
            series = json.loads((out / name / "manifest.json").read_text())
            expected += [(out / name / s["file"], s["size"]) for s in series["slices"]]
        return all(p.stat().st_size == size for p, size in expected)
    except (OSError, ValueError, KeyError, TypeError):
        return False


def replace_dir(build: Path, final: Path) -> None:
    if final.exists():
        shutil.rmtree(final)
    build.rename(final)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT,
                        help="fixtures directory (default: <repo>/fixtures)")
    parser.add_argument("--inv3", type=Path, default=CRANIUM_INV3,
                        help="InVesalius project to build the CT series from")
    parser.add_argument("--force", action="store_true", help="rebuild even if complete")
    args = parser.parse_args()
    out: Path = args.out

    if not args.force and is_complete(out):
        print(f"fixtures up to date in {out} (version {FIXTURES_VERSION})")
        return 0

    import numpy
    import pydicom

    out.mkdir(parents=True, exist_ok=True)
    (out / ".stamp").unlink(missing_ok=True)
    for name in ("pydicom", *CT_SERIES):
        shutil.rmtree(out / f".build-{name}", ignore_errors=True)

    samples, rejected = build_pydicom_fixtures(out / ".build-pydicom")
    replace_dir(out / ".build-pydicom", out / "pydicom")
    built = {}
    for name, variant in CT_SERIES.items():
        built[name] = build_ct_series(out / f".build-{name}", args.inv3, variant)
        replace_dir(out / f".build-{name}", out / name)

    write_json(out / ".stamp", {
        "version": FIXTURES_VERSION,
        "pydicom": pydicom.__version__,
        "pydicom-data": importlib.metadata.version("pydicom-data"),
        "numpy": numpy.__version__,
    })

    # Summary.
    print(f"fixtures/pydicom: {len(samples)} files")
    for (cat, ts), n in sorted(Counter(
            (s["category"], TRANSFER_SYNTAXES[s["transfer_syntax_uid"]])
            for s in samples).items()):
        print(f"  {cat:12} {ts:22} {n}")
    print(f"  skipped {len(rejected)} sample files (not wanted, broken or duplicate)")
    if os.environ.get("FIXTURES_VERBOSE"):
        for name, why in rejected:
            print(f"    {name}: {why}")
    for name, series in built.items():
        print(f"fixtures/{name}: {len(series['slices'])} CT slices "
              f"{series['rows']}x{series['columns']}, explicit_le, "
              f"spacing {series['pixel_spacing_mm']} x {series['slice_spacing_mm']} mm")
        if "lesion" in series:
            lesion = series["lesion"]
            print(f"  lesion: {lesion['shape']} r={lesion['radius_mm']} mm at "
                  f"{lesion['centre_mm']} mm, +{lesion['delta_hu']} HU, "
                  f"{lesion['label_ml']} ml")
    return 0


if __name__ == "__main__":
    sys.exit(main())
