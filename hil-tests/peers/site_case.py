#!/usr/bin/env python3
"""A simulated site for the continual-learning tests: studies from a scanner whose lesions
read fainter than the training data's, and the radiologist's segmentation of each.

  site_case.py study OUT TAG DX DY DZ
      Write the Cranium head CT (as scripts/make_fixtures.py writes fixtures/ct-series) with
      new UIDs derived from TAG and one spherical lesion of +25 HU (the training data's are
      +50 to +80 HU) whose centre is the fixture lesion's moved by (DX, DY, DZ) mm. Prints
      the Study Instance UID.

  site_case.py label SEG STUDY OUT [mirror|swap]
      The radiologist's SEG for the site study in folder STUDY, written with highdicom the way
      a viewer's segmentation tool would: segment 1 (intracranial space) as the appliance's SEG
      had it, segment 2 (haemorrhage) the true lesion. Or the wrong labels of a broken tool:
      "mirror" draws the lesion in the healthy hemisphere; "swap" gives each segment the
      other's mask (a tool that mixed up its label table). Prints the number of lesion voxels
      labelled.
"""
import json
import sys
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
from pydicom.sr.codedict import codes

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
import make_fixtures  # noqa: E402

SITE_LESION_HU = 25.0


def study(out: Path, tag: str, dx: float, dy: float, dz: float) -> None:
    lesion = dict(make_fixtures.LESION, delta_hu=SITE_LESION_HU)
    c = lesion["centre_mm"]
    lesion["centre_mm"] = [c[0] + dx, c[1] + dy, c[2] + dz]
    variant = {
        "uid_root": f"radiant-edge-site/{tag}/",
        "patient_name": f"Anonymous^Site{tag}",
        "patient_id": f"RE-SITE-{tag}",
        "accession": f"RE-SITE-{tag}",
        "study_description": "Head CT (simulated site, faint lesion)",
        "series_suffix": " (site)",
        "lesion": lesion,
    }
    manifest = make_fixtures.build_ct_series(out, make_fixtures.CRANIUM_INV3, variant)
    print(manifest["study_instance_uid"])


def lesion_mask(manifest: dict, lesion: dict) -> np.ndarray:
    """The lesion sphere on the series grid [z, y, x], as build_ct_series implanted it."""
    rows, cols = manifest["rows"], manifest["columns"]
    sx, sy = manifest["pixel_spacing_mm"]
    sz = manifest["slice_spacing_mm"]
    origin = (-(cols - 1) * sx / 2, -(rows - 1) * sy / 2, 0.0)
    shape = (len(manifest["slices"]), rows, cols)
    return make_fixtures.lesion_increment(lesion, shape, (sx, sy, sz), origin)[1]


def label(seg_path: Path, study_dir: Path, out: Path, poison: str | None) -> None:
    manifest = json.loads((study_dir / "manifest.json").read_text())
    sources = [pydicom.dcmread(study_dir / s["file"]) for s in manifest["slices"]]
    ours = hd.seg.segread(seg_path)
    uids = [s.SOPInstanceUID for s in sources]
    intracranial = ours.get_pixels_by_source_instance(
        source_sop_instance_uids=uids, segment_numbers=[1], assert_missing_frames_are_empty=True
    )[..., 0].astype(bool)
    lesion = dict(manifest["lesion"])
    if poison == "mirror":
        c = lesion["centre_mm"]
        lesion["centre_mm"] = [-c[0], c[1], c[2]]
    truth = lesion_mask(manifest, lesion)
    mask = np.zeros(truth.shape + (2,), dtype=bool)
    # "overlap": the reader's tool paints the lesion over the brain it lies in, so the two
    # segments share the lesion's voxels (the same labels, written as many tools write them).
    mask[..., 0] = intracranial if poison == "overlap" else intracranial & ~truth
    mask[..., 1] = truth
    if poison == "swap":
        mask = mask[..., ::-1]
    algorithm = hd.seg.SegmentAlgorithmTypeValues.MANUAL
    segments = [
        hd.seg.SegmentDescription(
            segment_number=1,
            segment_label="intracranial space",
            segmented_property_category=codes.SCT.AnatomicalStructure,
            segmented_property_type=hd.sr.CodedConcept("12738006", "SCT", "Brain"),
            algorithm_type=algorithm,
        ),
        hd.seg.SegmentDescription(
            segment_number=2,
            segment_label="haemorrhage",
            segmented_property_category=hd.sr.CodedConcept(
                "49755003", "SCT", "Morphologically Altered Structure"
            ),
            segmented_property_type=hd.sr.CodedConcept("50960005", "SCT", "Hemorrhage"),
            algorithm_type=algorithm,
        ),
    ]
    seg = hd.seg.Segmentation(
        source_images=sources,
        pixel_array=mask.astype(np.uint8),
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=segments,
        series_instance_uid=hd.UID(),
        series_number=90,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="Radiant Edge tests",
        manufacturer_model_name="site_case.py",
        software_versions="1",
        device_serial_number="radiologist",
        series_description="radiologist " + (poison or "corrected"),
        omit_empty_frames=True,
    )
    seg.save_as(out)
    print(int(truth.sum()))


def main() -> None:
    mode = sys.argv[1]
    if mode == "study":
        out, tag, dx, dy, dz = sys.argv[2:7]
        study(Path(out), tag, float(dx), float(dy), float(dz))
    elif mode == "label":
        seg_path, study_dir, out = (Path(a) for a in sys.argv[2:5])
        poison = sys.argv[5] if len(sys.argv) > 5 else None
        if poison not in (None, "mirror", "swap", "overlap"):
            sys.exit(f"unknown poison {poison}")
        label(seg_path, study_dir, out, poison)
    else:
        sys.exit(f"unknown mode {mode}")


if __name__ == "__main__":
    main()
