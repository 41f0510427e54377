#!/usr/bin/env python3
"""A radiologist's corrected brain mask for a deepbet result, written by a third-party tool
(highdicom) as the brain-learning test sends it back to the appliance.

The appliance's SEG is read back onto the fixture's grid (as seg_dice.py does), eroded by
ERODE voxels in 3D (6-neighbour steps: this site's convention of a tight brain mask, which
the shipped network does not follow), and written as a new BINARY SEG that references every
slice of the series, with segment "brain" (SCT 12738006) and new UIDs. Prints the number of
voxels the correction labels.

    python3 brain_correction.py OUR_SEG.dcm FIXTURE_DIR OUT.dcm ERODE
"""
import sys
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

from fixture_seg import mask_on_fixture


def erode(mask: np.ndarray, steps: int) -> np.ndarray:
    for _ in range(steps):
        inner = mask.copy()
        for axis in range(3):
            for shift in (1, -1):
                moved = np.roll(mask, shift, axis=axis)
                edge = [slice(None)] * 3
                edge[axis] = 0 if shift == 1 else -1
                moved[tuple(edge)] = False
                inner &= moved
        mask = inner
    return mask


def main():
    seg_path, fixture, out, steps = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3]), int(sys.argv[4])
    ours, _, manifest = mask_on_fixture(seg_path, fixture)
    sources = [pydicom.dcmread(fixture / s["file"]) for s in manifest["slices"]]
    corrected = erode(ours, steps)
    description = hd.seg.SegmentDescription(
        segment_number=1,
        segment_label="brain",
        segmented_property_category=codes.SCT.AnatomicalStructure,
        segmented_property_type=Code("12738006", "SCT", "Brain"),
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL,
    )
    result = hd.seg.Segmentation(
        source_images=sources,
        pixel_array=corrected,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[description],
        series_instance_uid=hd.UID(),
        series_number=90,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="Radiant Edge tests",
        manufacturer_model_name="brain_correction.py",
        software_versions="1",
        device_serial_number="1",
        series_description=f"brain mask, corrected (eroded {steps})",
    )
    result.save_as(out)
    print(int(corrected.sum()))


if __name__ == "__main__":
    main()
