#!/usr/bin/env python3
"""Dice of a brain-mask SEG against a fixture's independent mask, read with highdicom.

highdicom maps every frame of the SEG back to the source instance it references; the masks are
stacked in the fixture's slice order (slice_NNN.dcm) and compared with truth.u8 on that grid.
Prints one JSON object: dice, seg_voxels, truth_voxels, frames, segment_labels.

    python3 seg_dice.py SEG.dcm FIXTURE_DIR
"""
import json
import sys
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom

seg_path, fixture = sys.argv[1], Path(sys.argv[2])
manifest = json.loads((fixture / "manifest.json").read_text())
shape = tuple(manifest["shape"])
uids = [str(pydicom.dcmread(fixture / s["file"], stop_before_pixels=True).SOPInstanceUID)
        for s in manifest["slices"]]
seg = hd.seg.segread(seg_path)
referenced = {item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
              for item in seg.PerFrameFunctionalGroupsSequence}
unknown = referenced - set(uids)
if unknown:
    sys.exit(f"the SEG references {len(unknown)} instances that are not in the series")
present = [u for u in uids if u in referenced]
masks = seg.get_pixels_by_source_instance(source_sop_instance_uids=present,
                                          segment_numbers=[1], combine_segments=False)
ours = np.zeros(shape, dtype=bool)
for k, uid in enumerate(present):
    ours[uids.index(uid)] = masks[k, :, :, 0] > 0
truth = np.frombuffer((fixture / "truth.u8").read_bytes(), np.uint8).reshape(shape) > 0
dice = 2.0 * np.logical_and(ours, truth).sum() / (ours.sum() + truth.sum())
print(json.dumps({"dice": float(dice), "seg_voxels": int(ours.sum()), "truth_voxels": int(truth.sum()),
                  "frames": len(seg.PerFrameFunctionalGroupsSequence),
                  "segment_labels": [str(s.SegmentLabel) for s in seg.SegmentSequence]}))
