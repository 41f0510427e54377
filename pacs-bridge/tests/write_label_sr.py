#!/usr/bin/env python3
"""Write the SR a radiologist's viewer sends back, with highdicom (a tool that is not ours).

usage: write_label_sr.py OUT {comprehensive|enhanced} {explicit|implicit|deflated} CT_SLICE...

A TID 1500 Measurement Report on the given CT slices, VERIFIED by a named Verifying Observer
(PS3.3 C.17.2), whose one measurement group holds the qualitative evaluation
"Hemorrhage (SCT 50960005): No (SCT 373067005)". The slices are the evidence (Current Requested
Procedure Evidence Sequence), so their series UID must come back from the reader.
"""
import sys

import highdicom as hd
import pydicom
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code


def main():
    out, flavour, syntax, slices = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]
    evidence = [pydicom.dcmread(p) for p in slices]
    observer = hd.sr.ObserverContext(
        observer_type=codes.DCM.Person,
        observer_identifying_attributes=hd.sr.PersonObserverIdentifyingAttributes(
            name="Reader^Rita"
        ),
    )
    group = hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(
            uid=hd.UID(), identifier="study-level review"
        ),
        qualitative_evaluations=[
            hd.sr.QualitativeEvaluation(
                name=Code("50960005", "SCT", "Hemorrhage"),
                value=Code("373067005", "SCT", "No"),
            )
        ],
    )
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_person_context=observer),
        procedure_reported=Code("24725-4", "LN", "CT Head"),
        imaging_measurements=[group],
    )
    cls = {"comprehensive": hd.sr.ComprehensiveSR, "enhanced": hd.sr.EnhancedSR}[flavour]
    sr = cls(
        evidence=evidence,
        content=report[0],
        series_instance_uid=hd.UID(),
        series_number=7,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="Some Viewer Inc.",
        is_complete=True,
        is_verified=True,
        verifying_observer_name="Reader^Rita",
        verifying_organization="Radiology",
        transfer_syntax_uid={
            "explicit": pydicom.uid.ExplicitVRLittleEndian,
            "implicit": pydicom.uid.ImplicitVRLittleEndian,
            "deflated": pydicom.uid.ExplicitVRLittleEndian,
        }[syntax],
    )
    if syntax == "deflated":
        # highdicom writes no deflated SR; pydicom deflates on save (PS3.5 A.5).
        sr.file_meta.TransferSyntaxUID = pydicom.uid.DeflatedExplicitVRLittleEndian
    sr.save_as(out)
    print(sr.SOPInstanceUID)


if __name__ == "__main__":
    main()
