#!/usr/bin/env python3
"""Edit an SR written by the appliance the way a radiologist's reporting tool would when the
radiologist confirms or rejects its finding, for the labelled-case tests.

  edit_sr.py IN OUT yes|no [unverified]

Sets the value of every qualitative evaluation (a CODE content item whose value is SCT
373066001 "Yes" or 373067005 "No") to the given answer, marks the document COMPLETE and
VERIFIED by a named observer (unless "unverified"), and gives the copy new SOP Instance and
Series UIDs (the originals with a suffix per answer and flag appended).
"""
import sys

import pydicom
from pydicom.dataset import Dataset

YES = ("373066001", "SCT", "Yes")
NO = ("373067005", "SCT", "No")


def answer_all(items, answer) -> int:
    """Set every Yes/No CODE item below `items` to `answer`; returns how many."""
    changed = 0
    for item in items:
        if item.get("ValueType") == "CODE":
            code = item.ConceptCodeSequence[0]
            if (code.CodeValue, code.CodingSchemeDesignator) in ((YES[0], YES[1]), (NO[0], NO[1])):
                code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = answer
                changed += 1
        if "ContentSequence" in item:
            changed += answer_all(item.ContentSequence, answer)
    return changed


def main():
    src, dst, answer = sys.argv[1:4]
    verified = not (len(sys.argv) > 4 and sys.argv[4] == "unverified")
    ds = pydicom.dcmread(src)
    suffix = (".7" if answer == "yes" else ".8") + ("" if verified else "9")
    ds.SOPInstanceUID = ds.SOPInstanceUID + suffix
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.SeriesInstanceUID = ds.SeriesInstanceUID + suffix
    ds.SeriesDescription = "radiologist's answer"
    if answer_all(ds.ContentSequence, YES if answer == "yes" else NO) == 0:
        sys.exit("no qualitative evaluation in the SR")
    ds.CompletionFlag = "COMPLETE"
    if verified:
        ds.VerificationFlag = "VERIFIED"
        observer = Dataset()
        observer.VerifyingObserverName = "Radiologist^Test"
        observer.VerifyingOrganization = "Radiant Edge tests"
        observer.VerificationDateTime = "20261124100000"
        observer.VerifyingObserverIdentificationCodeSequence = []
        ds.VerifyingObserverSequence = [observer]
    else:
        ds.VerificationFlag = "UNVERIFIED"
    ds.save_as(dst, enforce_file_format=True)


if __name__ == "__main__":
    main()
