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

import numpy as np

from fixture_seg import mask_on_fixture

seg_path, fixture = sys.argv[1], Path(sys.argv[2])
ours, seg, manifest = mask_on_fixture(seg_path, fixture)
shape = tuple(manifest["shape"])
truth = np.frombuffer((fixture / "truth.u8").read_bytes(), np.uint8).reshape(shape) > 0
dice = 2.0 * np.logical_and(ours, truth).sum() / (ours.sum() + truth.sum())
print(json.dumps({"dice": float(dice), "seg_voxels": int(ours.sum()), "truth_voxels": int(truth.sum()),
                  "frames": len(seg.PerFrameFunctionalGroupsSequence),
                  "segment_labels": [str(s.SegmentLabel) for s in seg.SegmentSequence]}))
