#!/usr/bin/env python3
"""Read a SEG (and optionally an SR) written by the appliance with independent readers.

highdicom maps every frame of the SEG back to the source instance it references and returns
the binary mask per (source instance, segment); pydicom walks the SR's TID 1500 content tree.
Prints one JSON object on stdout:
  pixels[sop_instance_uid][segment]  -> pixel count
  indices[sop_instance_uid][segment] -> comma-joined flat pixel indices (row-major)
  segment_labels, and sr{referenced_seg, volumes_ml, probability, template,
  volumetric_groups (as highdicom's TID 1500 parser sees them)}.
"""
import json
import sys

import highdicom as hd
import numpy as np
import pydicom


def read_seg(path):
    seg = hd.seg.segread(path)
    numbers = [int(s.SegmentNumber) for s in seg.SegmentSequence]
    referenced = []
    for item in seg.PerFrameFunctionalGroupsSequence:
        uid = item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        if uid not in referenced:
            referenced.append(uid)
    pixels, indices = {}, {}
    # Single-frame sources: one mask per referenced instance, segments on the last axis.
    if "ReferencedFrameNumber" not in seg.PerFrameFunctionalGroupsSequence[0].DerivationImageSequence[0].SourceImageSequence[0]:
        masks = seg.get_pixels_by_source_instance(
            source_sop_instance_uids=referenced,
            segment_numbers=numbers,
            combine_segments=False,
        )
        for k, uid in enumerate(referenced):
            pixels[uid], indices[uid] = {}, {}
            for j, n in enumerate(numbers):
                m = masks[k, :, :, j]
                pixels[uid][str(n)] = int(m.sum())
                indices[uid][str(n)] = ",".join(str(i) for i in np.flatnonzero(m))
    return seg, pixels, indices


def read_sr(path):
    ds = pydicom.dcmread(path)
    out = {"volumes_ml": [], "template": ds.ContentTemplateSequence[0].TemplateIdentifier}

    def walk(items):
        for item in items:
            name = item.ConceptNameCodeSequence[0].CodeValue if "ConceptNameCodeSequence" in item else None
            if item.ValueType == "IMAGE" and name == "121191":
                out["referenced_seg"] = item.ReferencedSOPSequence[0].ReferencedSOPInstanceUID
            if item.ValueType == "NUM" and name == "118565006":
                out["volumes_ml"].append(float(item.MeasuredValueSequence[0].NumericValue))
            if item.ValueType == "NUM" and name == "P-FINDING":
                out["probability"] = float(item.MeasuredValueSequence[0].NumericValue)
            if "ContentSequence" in item:
                walk(item.ContentSequence)

    walk(ds.ContentSequence)
    # highdicom's own TID 1500 parser must accept the tree and find the volumetric groups.
    hd.sr.ComprehensiveSR.from_dataset(ds)
    parsed = hd.sr.MeasurementReport.from_sequence([ds])
    groups = parsed.get_volumetric_roi_measurement_groups()
    out["volumetric_groups"] = len(groups)
    return out


def main():
    seg, pixels, indices = read_seg(sys.argv[1])
    result = {
        "pixels": pixels,
        "indices": indices,
        "segment_labels": [s.SegmentLabel for s in seg.SegmentSequence],
    }
    if len(sys.argv) > 2:
        result["sr"] = read_sr(sys.argv[2])
    json.dump(result, sys.stdout)


if __name__ == "__main__":
    main()
