//! Orthanc as the hospital PACS: a study uploaded to it over REST and pushed to the appliance
//! with `/modalities/appliance/store` arrives whole, in Orthanc's own encoding, as one study.

use hil_tests::appliance::Appliance;
use hil_tests::fixtures::{self, CtSeries};
use hil_tests::peers::{orthanc_push, orthanc_upload, start_orthanc};
use hil_tests::wait_until;
use std::time::Duration;

#[test]
fn a_study_pushed_by_orthanc_arrives_complete_and_intact() {
    let app = Appliance::start(&|_| {});
    let orthanc = start_orthanc(&app.ae_title, app.port);
    let series = CtSeries::load();
    let studies = orthanc_upload(&orthanc, &series.paths());
    assert_eq!(studies.len(), 1);
    orthanc_push(&orthanc, &studies[0]);
    for (slice, path) in series.slices.iter().zip(series.paths()) {
        let stored = app
            .stored_path(&slice.sop_instance_uid)
            .unwrap_or_else(|| panic!("{} missing", slice.file));
        assert_eq!(
            fixtures::dataset_of(&stored),
            std::fs::read(path).unwrap()[slice.dataset_offset..]
        );
    }
    assert!(wait_until(Duration::from_secs(10), || {
        app.studies()
            .first()
            .map(|s| s["state"] == "complete")
            .unwrap_or(false)
    }));
    let study = &app.studies()[0];
    assert_eq!(study["calling_ae"], "ORTHANC");
    assert_eq!(study["instances"], 108);
    assert_eq!(study["study_uid"], series.study_instance_uid.as_str());
}
