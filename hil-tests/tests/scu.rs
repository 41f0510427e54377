//! Our C-STORE SCU (`pacs_bridge::scu`) against real peers: DCMTK `storescp`, Orthanc and the
//! appliance's own SCP. What must stay true: every file the peer accepts arrives with the
//! dataset bytes we sent (or re-encoded only when the peer insists on another native syntax);
//! refusals, silences and aborts come back as typed errors that say whether a retry can help,
//! within the configured timeouts; one file the peer cannot take does not stop the others.

use dicom_ul::pdu::Pdu;
use hil_tests::appliance::{self, Appliance};
use hil_tests::fixtures::{self, CtSeries};
use hil_tests::peers::{
    files_below, start_orthanc, start_storescp_bit_preserving, start_storescp_with,
};
use hil_tests::raw::{self, RawScu};
use hil_tests::{free_port, http_get, wait_until};
use pacs_bridge::scu::{self, Delivered, Destination, ScuConfig, ScuError, StoreFailure};
use std::io::Read;
use std::net::TcpListener;
use std::path::PathBuf;
use std::time::{Duration, Instant};

const EXPLICIT_VR_LE: &str = "1.2.840.10008.1.2.1";
const IMPLICIT_VR_LE: &str = "1.2.840.10008.1.2";

fn to(ae_title: &str, port: u16) -> Destination {
    Destination {
        ae_title: ae_title.into(),
        host: "127.0.0.1".into(),
        port,
        tls: None,
    }
}

fn config(calling_ae: &str) -> ScuConfig {
    let mut config = ScuConfig::new(calling_ae);
    config.connect_timeout = Duration::from_secs(5);
    config.io_timeout = Duration::from_secs(30);
    config
}

/// Panics with every failure unless all outcomes are plain successes.
fn assert_all_stored(outcomes: &[scu::StoreOutcome], expected: usize) {
    assert_eq!(outcomes.len(), expected);
    let failures: Vec<String> = outcomes
        .iter()
        .filter(|o| !matches!(o.result, Ok(Delivered::Success)))
        .map(|o| match &o.result {
            Ok(d) => format!("{}: {d:?}", o.file.display()),
            Err(e) => format!("{e}"),
        })
        .collect();
    assert!(failures.is_empty(), "not stored:\n{}", failures.join("\n"));
}

#[test]
fn the_ct_series_reaches_dcmtk_with_the_dataset_bytes_of_the_source_files() {
    let storescp = start_storescp_bit_preserving();
    let series = CtSeries::load();
    let paths = series.paths();
    let outcomes = scu::send(&to("STORESCP", storescp.port), &config("RADIANT"), &paths)
        .expect("association with storescp");
    assert_all_stored(&outcomes, 108);
    let received = files_below(&storescp.storage_dir());
    assert_eq!(received.len(), 108);
    for (slice, path) in series.slices.iter().zip(&paths) {
        let outcome = outcomes.iter().find(|o| &o.file == path).unwrap();
        assert_eq!(
            outcome.sop_instance_uid.as_deref(),
            Some(slice.sop_instance_uid.as_str())
        );
        assert_eq!(outcome.transfer_syntax.as_deref(), Some(EXPLICIT_VR_LE));
        let stored = received
            .iter()
            .find(|p| p.to_string_lossy().ends_with(&slice.sop_instance_uid))
            .unwrap_or_else(|| panic!("storescp did not store {}", slice.file));
        assert!(
            fixtures::dataset_of(stored) == fixtures::dataset_of(path),
            "{}: dataset bytes differ from the source",
            slice.file
        );
    }
}

#[test]
fn the_ct_series_sent_to_orthanc_is_all_there() {
    let orthanc = start_orthanc("RADIANT", 1);
    let series = CtSeries::load();
    let outcomes = scu::send(
        &to("ORTHANC", orthanc.port),
        &config("RADIANT"),
        &series.paths(),
    )
    .expect("association with Orthanc");
    assert_all_stored(&outcomes, 108);
    let (status, body) = http_get(orthanc.http_port, "/instances").expect("GET /instances");
    assert_eq!(status, 200, "{body}");
    let instances: Vec<serde_json::Value> = serde_json::from_str(&body).expect("JSON list");
    assert_eq!(instances.len(), 108);
    let (_, body) = http_get(orthanc.http_port, "/studies").expect("GET /studies");
    let studies: Vec<serde_json::Value> = serde_json::from_str(&body).expect("JSON list");
    assert_eq!(studies.len(), 1);
}

/// SEG and SR (what the appliance sends back) and the CT series, through our own SCP: stored
/// with the source's dataset bytes, as one association.
#[test]
fn our_scp_stores_what_our_scu_sends_unchanged() {
    let app = Appliance::start(&|_| {});
    let series = CtSeries::load();
    let mut paths = series.paths();
    let results: Vec<fixtures::TestFile> = fixtures::test_files()
        .into_iter()
        .filter(|f| f.category == "seg" || f.category == "sr")
        .collect();
    assert!(results.iter().any(|f| f.category == "seg"));
    paths.extend(results.iter().map(|f| f.path()));
    let outcomes = scu::send(&to(&app.ae_title, app.port), &config("PACS"), &paths)
        .unwrap_or_else(|e| panic!("association with the appliance: {e}\n{}", app.log()));
    assert_all_stored(&outcomes, paths.len());
    for outcome in &outcomes {
        let uid = outcome
            .sop_instance_uid
            .as_deref()
            .expect("UID from the meta group");
        let stored = app
            .stored_path(uid)
            .unwrap_or_else(|| panic!("{} not in the index", outcome.file.display()));
        assert!(
            fixtures::dataset_of(&stored) == fixtures::dataset_of(&outcome.file),
            "{}: stored dataset differs from the source",
            outcome.file.display()
        );
    }
}

#[test]
fn an_unknown_calling_ae_title_is_a_permanent_rejection() {
    let app = Appliance::start(&|_| {});
    let paths = CtSeries::load().paths();
    let err = scu::send(
        &to(&app.ae_title, app.port),
        &config("STRANGER"),
        &paths[..1],
    )
    .expect_err("the appliance must refuse an unknown caller");
    assert!(
        matches!(
            err,
            ScuError::Rejected {
                permanent: true,
                ..
            }
        ),
        "{err}"
    );
    assert!(!err.is_transient());
    assert!(err.to_string().contains("calling AE title"), "{err}");
}

#[test]
fn a_wrong_called_ae_title_is_a_permanent_rejection() {
    let app = Appliance::start(&|_| {});
    let paths = CtSeries::load().paths();
    let err = scu::send(&to("NOT-RADIANT", app.port), &config("PACS"), &paths[..1])
        .expect_err("the appliance must refuse a wrong called AE title");
    assert!(
        matches!(
            err,
            ScuError::Rejected {
                permanent: true,
                ..
            }
        ),
        "{err}"
    );
    assert!(!err.is_transient());
    assert!(err.to_string().contains("called AE title"), "{err}");
}

/// The appliance at its association limit answers with rejected-transient (local limit
/// exceeded): the outbox must try again later, not give up.
#[test]
fn a_busy_peer_is_a_transient_rejection() {
    let app = Appliance::start(&|c| appliance::set_dicom(c, "max_associations", 1i64));
    // Hold the only slot with an accepted association (retrying while the start-up probe's
    // connection may still hold it).
    let mut _holder = None;
    let held = wait_until(Duration::from_secs(10), || {
        let mut raw = RawScu::connect(app.port);
        let contexts: &[(u8, &str, &[&str])] = &[(1, raw::CT_IMAGE_STORAGE, &[EXPLICIT_VR_LE])];
        match raw.associate("PACS", &app.ae_title, contexts) {
            Some(Pdu::AssociationAC(_)) => {
                _holder = Some(raw);
                true
            }
            _ => false,
        }
    });
    assert!(held, "could not take the appliance's only association slot");
    let paths = CtSeries::load().paths();
    let err = scu::send(&to(&app.ae_title, app.port), &config("PACS"), &paths[..1])
        .expect_err("the appliance must refuse an association over its limit");
    assert!(
        matches!(
            err,
            ScuError::Rejected {
                permanent: false,
                ..
            }
        ),
        "{err}"
    );
    assert!(err.is_transient());
}

#[test]
fn a_closed_port_is_a_transient_connection_error() {
    let port = free_port();
    let paths = CtSeries::load().paths();
    let err = scu::send(&to("ANY", port), &config("RADIANT"), &paths[..1])
        .expect_err("nothing listens there");
    assert!(matches!(err, ScuError::Connect { .. }), "{err}");
    assert!(err.is_transient());
}

/// A peer that accepts TCP and then says nothing must not hang the sender: the wait for
/// A-ASSOCIATE-AC ends at `io_timeout` with a transient error.
#[test]
fn a_silent_peer_is_a_transient_timeout_within_the_configured_timeout() {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().unwrap().port();
    let silent = std::thread::spawn(move || {
        let (mut conn, _) = listener.accept().expect("accept");
        // Read (and ignore) whatever arrives until the sender gives up.
        let mut sink = Vec::new();
        let _ = conn.read_to_end(&mut sink);
    });
    let mut config = config("RADIANT");
    config.io_timeout = Duration::from_millis(1500);
    let paths = CtSeries::load().paths();
    let started = Instant::now();
    let err = scu::send(&to("SILENT", port), &config, &paths[..1]).expect_err("no answer");
    let waited = started.elapsed();
    assert!(
        matches!(
            err,
            ScuError::Timeout {
                awaiting: "A-ASSOCIATE-AC",
                ..
            }
        ),
        "{err}"
    );
    assert!(err.is_transient());
    assert!(
        waited >= Duration::from_millis(1400) && waited < Duration::from_secs(4),
        "gave up after {waited:?}"
    );
    silent.join().unwrap();
}

/// DCMTK `storescp --sleep-after` answers the first C-STORE and then sleeps: the wait for the
/// next C-STORE-RSP ends at `io_timeout`; the first file stays delivered, the file in flight and
/// those after it fail transiently.
#[test]
fn a_peer_that_stops_answering_mid_association_fails_the_rest_transiently_in_time() {
    let storescp = start_storescp_with(&["--sleep-after", "20"]);
    let paths = CtSeries::load().paths();
    let mut config = config("RADIANT");
    config.io_timeout = Duration::from_millis(1500);
    let started = Instant::now();
    let outcomes = scu::send(&to("STORESCP", storescp.port), &config, &paths[..3])
        .expect("association accepted");
    let waited = started.elapsed();
    assert!(waited < Duration::from_secs(5), "gave up after {waited:?}");
    assert_eq!(outcomes.len(), 3);
    assert!(
        matches!(outcomes[0].result, Ok(Delivered::Success)),
        "{:?}",
        outcomes[0].result
    );
    for outcome in &outcomes[1..] {
        match &outcome.result {
            Err(failure @ StoreFailure::Association { source, .. }) => {
                assert!(failure.is_transient(), "{failure}");
                assert!(
                    matches!(
                        **source,
                        ScuError::Timeout {
                            awaiting: "C-STORE-RSP",
                            ..
                        }
                    ),
                    "{source}"
                );
            }
            other => panic!("expected a lost association, got {other:?}"),
        }
    }
}

/// DCMTK `storescp --abort-after` aborts after receiving the C-STORE-RQ: transient.
#[test]
fn a_peer_abort_is_a_transient_failure_of_the_files_not_yet_stored() {
    let storescp = start_storescp_with(&["--abort-after"]);
    let paths = CtSeries::load().paths();
    let outcomes = scu::send(
        &to("STORESCP", storescp.port),
        &config("RADIANT"),
        &paths[..2],
    )
    .expect("association accepted");
    assert_eq!(outcomes.len(), 2);
    for outcome in &outcomes {
        match &outcome.result {
            Err(failure @ StoreFailure::Association { source, .. }) => {
                assert!(failure.is_transient(), "{failure}");
                assert!(
                    matches!(**source, ScuError::Aborted { .. } | ScuError::Closed { .. }),
                    "{source}"
                );
            }
            other => panic!("expected an aborted association, got {other:?}"),
        }
    }
}

/// Nuclear Medicine Image Storage: a class the appliance does not accept (pacs_bridge::uids).
const NM_IMAGE_STORAGE: &str = "1.2.840.10008.5.1.4.1.1.20";
const CT_IMAGE_STORAGE: &str = "1.2.840.10008.5.1.4.1.1.2";

/// A copy of a CT slice relabelled as NM (meta group and dataset): the UIDs have the same
/// padded length, so the file stays well formed.
fn as_nm(dir: &std::path::Path, ct: &std::path::Path) -> PathBuf {
    let mut bytes = std::fs::read(ct).expect("read CT slice");
    let from = [CT_IMAGE_STORAGE.as_bytes(), b"\0"].concat();
    let to = NM_IMAGE_STORAGE.as_bytes();
    assert_eq!(from.len(), to.len());
    let mut replaced = 0;
    let mut i = 0;
    while i + from.len() <= bytes.len() {
        if bytes[i..i + from.len()] == from[..] {
            bytes[i..i + from.len()].copy_from_slice(to);
            replaced += 1;
            i += from.len();
        } else {
            i += 1;
        }
    }
    assert!(replaced >= 2, "SOP class found {replaced} times");
    let path = dir.join("nm.dcm");
    std::fs::write(&path, bytes).expect("write NM copy");
    path
}

#[test]
fn a_sop_class_the_peer_does_not_accept_fails_permanently_while_the_others_are_stored() {
    let app = Appliance::start(&|_| {});
    let tmp = tempfile::tempdir().unwrap();
    let ct = CtSeries::load().paths();
    let paths = vec![ct[0].clone(), as_nm(tmp.path(), &ct[1]), ct[2].clone()];
    let outcomes = scu::send(&to(&app.ae_title, app.port), &config("PACS"), &paths)
        .expect("association with the appliance");
    assert_eq!(outcomes.len(), 3);
    assert_eq!(outcomes[0].result.as_ref().ok(), Some(&Delivered::Success));
    assert_eq!(outcomes[2].result.as_ref().ok(), Some(&Delivered::Success));
    match &outcomes[1].result {
        Err(failure @ StoreFailure::NotAccepted { sop_class, .. }) => {
            assert_eq!(sop_class, NM_IMAGE_STORAGE);
            assert!(!failure.is_transient(), "{failure}");
        }
        other => panic!("expected no accepted context for NM, got {other:?}"),
    }
    assert_eq!(
        outcomes[1].status, None,
        "the NM file must not have been sent"
    );
    for i in [0, 2] {
        assert!(app
            .stored_path(outcomes[i].sop_instance_uid.as_deref().unwrap())
            .is_some());
    }
}

/// A peer that takes Implicit VR Little Endian only (`storescp +xi`) gets the explicit VR CT
/// re-encoded: same instance, same pixel bytes, the implicit syntax in what it wrote.
#[test]
fn a_peer_that_accepts_only_implicit_vr_gets_the_dataset_re_encoded() {
    let storescp = start_storescp_with(&["+xi", "-B"]);
    let series = CtSeries::load();
    let paths = series.paths()[..4].to_vec();
    let outcomes = scu::send(&to("STORESCP", storescp.port), &config("RADIANT"), &paths)
        .expect("association with storescp");
    assert_all_stored(&outcomes, 4);
    let received = files_below(&storescp.storage_dir());
    for (slice, path) in series.slices.iter().zip(&paths) {
        let outcome = outcomes.iter().find(|o| &o.file == path).unwrap();
        assert_eq!(outcome.transfer_syntax.as_deref(), Some(IMPLICIT_VR_LE));
        let stored = received
            .iter()
            .find(|p| p.to_string_lossy().ends_with(&slice.sop_instance_uid))
            .unwrap_or_else(|| panic!("storescp did not store {}", slice.file));
        let sent = fixtures::dataset_of(stored);
        let source = fixtures::dataset_of(path);
        let identity = pacs_bridge::dataset::inspect(
            &sent,
            pacs_bridge::uids::Encoding::ImplicitLittle,
            sent.len(),
        )
        .expect("the re-encoded dataset parses as implicit VR");
        assert_eq!(
            identity.sop_instance_uid.as_deref(),
            Some(slice.sop_instance_uid.as_str())
        );
        // Pixel Data is the last element; its value bytes are the same in both little-endian
        // syntaxes (256 x 256 x 16 bit).
        let pixels = 256 * 256 * 2;
        assert!(sent.len() > pixels && source.len() > pixels);
        assert!(
            sent[sent.len() - pixels..] == source[source.len() - pixels..],
            "{}: pixel bytes changed in re-encoding",
            slice.file
        );
    }
}

#[test]
fn a_file_that_is_not_part10_fails_permanently_and_the_others_are_stored() {
    let storescp = start_storescp_bit_preserving();
    let tmp = tempfile::tempdir().unwrap();
    let junk = tmp.path().join("junk.dcm");
    std::fs::write(&junk, b"not DICOM at all").unwrap();
    let missing = tmp.path().join("missing.dcm");
    let ct = CtSeries::load().paths();
    let paths = vec![junk, ct[0].clone(), missing];
    let outcomes = scu::send(&to("STORESCP", storescp.port), &config("RADIANT"), &paths)
        .expect("association with storescp");
    assert_eq!(outcomes[1].result.as_ref().ok(), Some(&Delivered::Success));
    for i in [0, 2] {
        match &outcomes[i].result {
            Err(failure @ StoreFailure::File { path, .. }) => {
                assert_eq!(path, &paths[i]);
                assert!(!failure.is_transient());
            }
            other => panic!("expected a file failure, got {other:?}"),
        }
    }
    assert!(wait_until(Duration::from_secs(5), || files_below(
        &storescp.storage_dir()
    )
    .len()
        == 1));
}
