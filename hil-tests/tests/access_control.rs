//! Access control is on by default: wrong called AE, unknown calling AE, a known AE from the
//! wrong host, the association limit and the disk floor each get the A-ASSOCIATE-RJ that names
//! them (PS3.8 section 9.3.4); unsupported SOP classes and transfer syntaxes lose only their
//! presentation context.

use dicom_ul::pdu::{Pdu, PresentationContextResultReason};
use hil_tests::appliance::{set, set_dicom, set_peers, Appliance};
use hil_tests::peers::echoscu;
use hil_tests::raw::{RawScu, CT_IMAGE_STORAGE, EXPLICIT_VR_LE, IMPLICIT_VR_LE, VERIFICATION};

fn rejection(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn a_wrong_called_ae_title_is_rejected_as_called_ae_not_recognized() {
    let app = Appliance::start(&|_| {});
    let out = echoscu("ECHOSCU", "NOT-RADIANT", app.port);
    assert!(!out.status.success());
    let log = rejection(&out);
    assert!(log.contains("Rejected Permanent"), "{log}");
    assert!(log.contains("Called AE Title Not Recognized"), "{log}");
    assert_eq!(
        app.expect_metric("radiant_rejects_total{reason=\"called_ae_title\"}"),
        1.0
    );
}

#[test]
fn an_unknown_calling_ae_title_is_rejected_as_calling_ae_not_recognized() {
    let app = Appliance::start(&|_| {});
    let out = echoscu("INTRUDER", &app.ae_title, app.port);
    assert!(!out.status.success());
    assert!(
        rejection(&out).contains("Calling AE Title Not Recognized"),
        "{}",
        rejection(&out)
    );
    assert!(app.log().contains("association refused"));
}

#[test]
fn a_known_calling_ae_from_another_host_is_rejected() {
    let app = Appliance::start(&|c| set_peers(c, &[("ECHOSCU", Some("127.0.0.2"))]));
    let out = echoscu("ECHOSCU", &app.ae_title, app.port);
    assert!(!out.status.success());
    assert!(
        rejection(&out).contains("Calling AE Title Not Recognized"),
        "{}",
        rejection(&out)
    );
    assert_eq!(
        app.expect_metric("radiant_rejects_total{reason=\"calling_host\"}"),
        1.0
    );

    let allowed = Appliance::start(&|c| set_peers(c, &[("ECHOSCU", Some("127.0.0.1"))]));
    assert!(echoscu("ECHOSCU", &allowed.ae_title, allowed.port)
        .status
        .success());
}

#[test]
fn unsupported_sop_class_and_transfer_syntax_lose_only_their_context() {
    let app = Appliance::start(&|_| {});
    let mut scu = RawScu::connect(app.port);
    let worklist_find = "1.2.840.10008.5.1.4.31";
    let jpeg_xl = "1.2.840.10008.1.2.4.110";
    let reply = scu.associate(
        "STORESCU",
        &app.ae_title,
        &[
            (1, VERIFICATION, &[IMPLICIT_VR_LE]),
            (3, worklist_find, &[IMPLICIT_VR_LE]),
            (5, CT_IMAGE_STORAGE, &[jpeg_xl]),
            (7, CT_IMAGE_STORAGE, &[jpeg_xl, EXPLICIT_VR_LE]),
        ],
    );
    let Some(Pdu::AssociationAC(ac)) = reply else {
        panic!("association should be accepted: {reply:?}");
    };
    let reason = |id: u8| {
        ac.presentation_contexts
            .iter()
            .find(|pc| pc.id == id)
            .map(|pc| (pc.reason.clone(), pc.transfer_syntax.clone()))
            .expect("every proposed context is answered")
    };
    assert_eq!(reason(1).0, PresentationContextResultReason::Acceptance);
    assert_eq!(
        reason(3).0,
        PresentationContextResultReason::AbstractSyntaxNotSupported
    );
    assert_eq!(
        reason(5).0,
        PresentationContextResultReason::TransferSyntaxesNotSupported
    );
    assert_eq!(
        reason(7),
        (
            PresentationContextResultReason::Acceptance,
            EXPLICIT_VR_LE.to_string()
        )
    );
    assert_eq!(scu.echo(1, 1).map(|r| r.status), Some(0));
    assert!(matches!(scu.release(), Some(Pdu::ReleaseRP)));
}

#[test]
fn over_the_association_limit_a_caller_gets_a_transient_local_limit_rejection() {
    let app = Appliance::start(&|c| set_dicom(c, "max_associations", 1i64));
    // The start-up probe's connection may still hold the one slot for a moment.
    let mut holder = None;
    hil_tests::wait_until(std::time::Duration::from_secs(5), || {
        let mut scu = RawScu::connect(app.port);
        let ok = matches!(
            scu.associate(
                "STORESCU",
                &app.ae_title,
                &[(1, VERIFICATION, &[IMPLICIT_VR_LE])]
            ),
            Some(Pdu::AssociationAC(_))
        );
        if ok {
            holder = Some(scu);
        }
        ok
    });
    let mut holder = holder.expect("the first association is accepted");
    let out = echoscu("ECHOSCU", &app.ae_title, app.port);
    assert!(!out.status.success());
    let log = rejection(&out);
    assert!(log.contains("Rejected Transient"), "{log}");
    assert!(log.contains("Local Limit Exceeded"), "{log}");
    assert!(matches!(holder.release(), Some(Pdu::ReleaseRP)));
    assert!(hil_tests::wait_until(
        std::time::Duration::from_secs(5),
        || { echoscu("ECHOSCU", &app.ae_title, app.port).status.success() }
    ));
}

#[test]
fn below_the_disk_floor_associations_are_refused_and_readiness_says_why() {
    // A floor no test machine reaches: 1 EiB. Retention is off: with it on, such a floor is
    // refused at start (its high watermark could never come before the floor).
    let app = Appliance::start(&|c| {
        set(c, "storage", "min_free_mb", 1i64 << 40);
        set(c, "retention", "enabled", false);
    });
    let out = echoscu("ECHOSCU", &app.ae_title, app.port);
    assert!(!out.status.success());
    let log = rejection(&out);
    assert!(log.contains("Rejected Transient"), "{log}");
    assert!(log.contains("Temporary Congestion"), "{log}");
    let (status, body) = app.http("/health/ready");
    assert_eq!(status, 503);
    assert!(body.contains("below the floor"), "{body}");
    assert_eq!(app.http("/health/live").0, 200);
    assert_eq!(
        app.expect_metric("radiant_rejects_total{reason=\"disk_floor\"}"),
        1.0
    );
}
