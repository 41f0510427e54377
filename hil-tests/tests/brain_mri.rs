//! A published 3D network on real MRIs, through DICOM: deepbet (contract 2, ONNX Runtime on the
//! CPU) segments T1 MRIs from Debian and PyPI packages, written as DICOM series in axial,
//! sagittal and oblique acquisitions (scripts/make_mr_fixtures.py) and sent by DCMTK; the SEG
//! and SR reach Orthanc, validate with dciodvfy, and the SEG that Orthanc holds, read back by
//! highdicom onto the source grid, matches the independent brain masks as closely as deepbet's
//! own pipeline does on the same images (0.936 on Colin27, 0.971 on MNI152; within 0.01).

use hil_tests::appliance::{set_destination, Appliance};
use hil_tests::peers::{orthanc_series, start_orthanc_at, storescu};
use hil_tests::{http_get_bytes, repo_root, wait_until};
use std::time::Duration;
use test_support::fixtures::{mr_series, mr_series_dir};

/// Fixture series and the Dice deepbet's own PyTorch pipeline reaches on it.
const SERIES: [(&str, f64); 4] = [
    ("colin27-axial", 0.936),
    ("colin27-sagittal", 0.936),
    ("colin27-oblique", 0.936),
    ("mni152-axial", 0.971),
];

#[test]
fn deepbet_masks_of_real_t1_mris_sent_by_dcmtk_reach_orthanc_and_match_the_independent_masks() {
    let orthanc_port = hil_tests::free_port();
    let orthanc_http = hil_tests::free_port();
    let app = Appliance::start_with_deepbet(&|c| {
        set_destination(c, "pacs", "ORTHANC", orthanc_port);
    });
    let orthanc = start_orthanc_at(&app.ae_title, app.port, orthanc_port, orthanc_http);
    let mut studies = Vec::new();
    for (name, _) in SERIES {
        let manifest: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(mr_series_dir(name).join("manifest.json")).unwrap(),
        )
        .unwrap();
        let files = mr_series(name);
        let out = storescu("STORESCU", &app.ae_title, app.port, &[], &files);
        assert!(
            out.status.success(),
            "storescu {name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        studies.push(manifest["study_instance_uid"].as_str().unwrap().to_string());
    }
    let results = |modality: &str| {
        orthanc_series(&orthanc)
            .into_iter()
            .filter(|(_, m, _)| m == modality)
            .count()
    };
    let arrived = wait_until(Duration::from_secs(300), || {
        results("SEG") == SERIES.len() && results("SR") == SERIES.len()
    });
    assert!(
        arrived,
        "Orthanc holds {:?}; outbox {:?}\n{}",
        orthanc_series(&orthanc)
            .iter()
            .map(|(_, m, _)| m.clone())
            .collect::<Vec<_>>(),
        app.outbox(),
        app.log()
    );
    let held = orthanc_series(&orthanc);
    let dir = tempfile::tempdir().unwrap();
    for ((name, reference), study) in SERIES.iter().zip(&studies) {
        // One SEG and one SR under the study that was sent, each valid.
        let mut seg_path = None;
        for modality in ["SEG", "SR"] {
            let objects: Vec<_> = held
                .iter()
                .filter(|(uid, m, _)| uid == study && m == modality)
                .collect();
            assert_eq!(objects.len(), 1, "{name}: one {modality} series");
            assert_eq!(objects[0].2.len(), 1, "{name}: one {modality} instance");
            let (status, bytes) = http_get_bytes(
                orthanc.http_port,
                &format!("/instances/{}/file", objects[0].2[0]),
            )
            .unwrap();
            assert_eq!(status, 200);
            test_support::dciodvfy::assert_valid_bytes(&bytes, &format!("{name} {modality}"));
            if modality == "SEG" {
                let path = dir.path().join(format!("{name}.seg.dcm"));
                std::fs::write(&path, &bytes).unwrap();
                seg_path = Some(path);
            }
        }
        let out = std::process::Command::new("python3")
            .arg(repo_root().join("hil-tests/peers/seg_dice.py"))
            .arg(seg_path.unwrap())
            .arg(mr_series_dir(name))
            .output()
            .expect("python3 with highdicom");
        assert!(
            out.status.success(),
            "{name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let read: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let dice = read["dice"].as_f64().unwrap();
        eprintln!("{name}: Dice {dice:.4} against the independent mask ({read})");
        assert!(
            dice >= reference - 0.01,
            "{name}: Dice {dice:.4}, deepbet's own pipeline reaches {reference}"
        );
        assert_eq!(read["segment_labels"], serde_json::json!(["brain"]));
        // The job recorded both stages and ran on ONNX Runtime.
        let job = &app.jobs(study)[0];
        assert_eq!(job["result"]["backend"], "ort-cpu", "{name}");
        let stages: Vec<_> = job["result"]["timings"]["stages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["stage"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(stages, ["bbox", "brain"], "{name}");
    }
}
