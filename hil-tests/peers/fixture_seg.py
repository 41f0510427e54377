"""A SEG's first segment read back onto an MR fixture's grid with highdicom (shared by
seg_dice.py and brain_correction.py): every frame is mapped to the source instance it
references, and the masks are stacked in the fixture's slice order (slice_NNN.dcm)."""
import json
import sys
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom


def mask_on_fixture(seg_path, fixture: Path):
    """Returns (mask as a bool array of the fixture's shape, the SEG as highdicom read it,
    the fixture's manifest)."""
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
    mask = np.zeros(shape, dtype=bool)
    for k, uid in enumerate(present):
        mask[uids.index(uid)] = masks[k, :, :, 0] > 0
    return mask, seg, manifest
