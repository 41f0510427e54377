#!/usr/bin/env python3
"""Edit a SEG written by the appliance the way a radiologist's tool (or a broken one) would,
for the labelled-case tests. Every edit gives the copy new SOP Instance and Series UIDs: the
originals with ".SUFFIX" appended (SUFFIX, the optional last argument, defaults to one per mode).

  edit_seg.py correct IN OUT   clear segment 2 on the frame where it is largest; prints the
                               number of pixels removed
  edit_seg.py rotate IN OUT    swap row and column directions (the rotated-mask defect)
  edit_seg.py unknown IN OUT   make segment 2 a "mass" (SCT 4147007), which the model lacks
  edit_seg.py orphan IN OUT    reference a series the appliance does not hold
"""
import sys

import numpy as np
import pydicom


def main():
    mode, src, dst = sys.argv[1:4]
    modes = ["correct", "rotate", "unknown", "orphan"]
    suffix = sys.argv[4] if len(sys.argv) > 4 else str(modes.index(mode) + 1 if mode in modes else 0)
    ds = pydicom.dcmread(src)
    ds.SOPInstanceUID = ds.SOPInstanceUID + "." + suffix
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.SeriesInstanceUID = ds.SeriesInstanceUID + "." + suffix
    ds.SeriesDescription = "corrected " + mode
    out = ""
    if mode == "correct":
        plane = ds.Rows * ds.Columns
        bits = np.unpackbits(np.frombuffer(ds.PixelData, dtype=np.uint8), bitorder="little")
        frames = [
            i for i, f in enumerate(ds.PerFrameFunctionalGroupsSequence)
            if f.SegmentIdentificationSequence[0].ReferencedSegmentNumber == 2
        ]
        largest = max(frames, key=lambda i: bits[i * plane:(i + 1) * plane].sum())
        removed = int(bits[largest * plane:(largest + 1) * plane].sum())
        bits[largest * plane:(largest + 1) * plane] = 0
        ds.PixelData = np.packbits(bits, bitorder="little").tobytes()
        out = str(removed)
    elif mode == "rotate":
        o = [float(v) for v in ds.SharedFunctionalGroupsSequence[0].PlaneOrientationSequence[0].ImageOrientationPatient]
        ds.SharedFunctionalGroupsSequence[0].PlaneOrientationSequence[0].ImageOrientationPatient = o[3:] + o[:3]
    elif mode == "unknown":
        segment = ds.SegmentSequence[1]
        segment.SegmentLabel = "mass"
        code = segment.SegmentedPropertyTypeCodeSequence[0]
        code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = "4147007", "SCT", "Mass"
    elif mode == "orphan":
        ds.ReferencedSeriesSequence[0].SeriesInstanceUID = "1.2.3.4.5.6.7.8.9"
    else:
        sys.exit(f"unknown mode {mode}")
    ds.save_as(dst, enforce_file_format=True)
    print(out)


if __name__ == "__main__":
    main()
