//! SR read (`pacs_bridge::objects::sr_read::decode_findings`): the findings a radiologist's
//! SR states, from a Part 10 file that came over the network.
//!
//! Properties: `decode_findings` returns a report or a typed `SrReadError`, never panics,
//! never allocates beyond `MAX_SR_BYTES` and its content-tree bounds; a report it returns has
//! valid UIDs, at most `MAX_CONTENT_ITEMS` findings each with a Yes/No/Present/Absent value,
//! and `finding` answers for each of its concepts (a value or a `Contradiction`) consistently
//! with the statements.

use pacs_bridge::objects::sr_read::{self, MAX_CONTENT_ITEMS};
use pacs_bridge::uids::is_valid_uid;

fn main() {
    afl::fuzz!(|data: &[u8]| {
        check(data);
    });
}

fn check(data: &[u8]) {
    let report = sr_read::decode_findings(data);
    if radiant_fuzz::show_results() {
        eprintln!("{report:?}");
    }
    let Ok(report) = report else {
        return;
    };
    for uid in [
        &report.sop_instance_uid,
        &report.study_uid,
        &report.series_uid,
    ] {
        assert!(is_valid_uid(uid), "invalid UID {uid:?} read as valid");
    }
    assert!(report.evidence_series.iter().all(|u| is_valid_uid(u)));
    assert!(report.findings.len() <= MAX_CONTENT_ITEMS);
    assert_eq!(
        report.verified,
        report.verification_flag.as_deref() == Some("VERIFIED")
    );
    for f in &report.findings {
        let presence = f
            .presence()
            .expect("only Yes/No/Present/Absent are findings");
        match report.finding(&f.concept) {
            Ok(stated) => assert_eq!(stated, Some(presence)),
            Err(contradiction) => assert_eq!(contradiction.0.value, f.concept.value),
        }
    }
}
