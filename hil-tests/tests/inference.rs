//! The reference model on real inputs: DICOM series -> volume -> tract and ONNX Runtime.
//! Both backends must agree, and both must reproduce what the training script computed with
//! numpy and Python onnxruntime (`models/reference/expected.json`).
//!
//! Tolerances: backbone features within 1e-4 (absolute) between tract and ONNX Runtime; label
//! counts on the model grid within 3 pixels and probabilities within 1e-3 of the Python
//! reference (float summation order differs between runtimes).

use hil_tests::repo_root;
use models::backbone::Backend;
use models::infer::{self, Inference, Model};
use models::package::Package;
use models::InferError;
use onnx_backends::{OrtBackend, OrtDevice, TractBackend};
use pacs_bridge::volume::{build, Limits, SeriesVolume};
use std::path::PathBuf;

fn package() -> Package {
    Package::open(&repo_root().join("models/reference/head-ct"))
        .expect("reference package verifies")
}

fn series(name: &str) -> SeriesVolume {
    let dir = test_support::fixtures::fixtures().join(name);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "dcm"))
        .collect();
    files.sort();
    build(&files, &Limits::default()).expect("fixture series forms a volume")
}

fn tract() -> Box<dyn Backend> {
    Box::new(TractBackend::load(&package().backbone_path()).unwrap())
}

fn ort() -> Box<dyn Backend> {
    let p = package();
    let b = &p.manifest.backbone;
    Box::new(
        OrtBackend::load(
            &p.backbone_path(),
            &hil_tests::ort_library(),
            &b.input,
            &b.output,
            OrtDevice::Cpu,
        )
        .unwrap(),
    )
}

fn run(backend: Box<dyn Backend>, name: &str) -> Inference {
    let mut model = Model::new(package(), backend).unwrap();
    infer::run(&mut model, &series(name).volume).unwrap()
}

fn expected() -> serde_json::Value {
    serde_json::from_str(
        &std::fs::read_to_string(repo_root().join("models/reference/expected.json")).unwrap(),
    )
    .unwrap()
}

#[test]
fn tract_and_onnx_runtime_give_the_same_backbone_features_on_real_slices() {
    let p = package();
    let volume = series("ct-series-lesion").volume;
    let spec = &p.manifest.input;
    let input = models::preprocess::tensor(&volume, spec, 40..56);
    let shape = [16, spec.channels.len(), spec.size[0], spec.size[1]];
    let a = tract().run(&input, shape).unwrap();
    let b = ort().run(&input, shape).unwrap();
    assert_eq!(a.len(), b.len());
    let worst = a
        .iter()
        .zip(&b)
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, f32::max);
    assert!(worst <= 1e-4, "largest difference {worst}");
}

#[test]
fn both_backends_reproduce_the_python_reference_on_both_fixture_series() {
    let expected = expected();
    for name in ["ct-series", "ct-series-lesion"] {
        let want = &expected["series"][name];
        for (backend_name, backend) in [("tract", tract()), ("ort", ort())] {
            let got = run(backend, name);
            for label in &got.labels {
                let count = want["label_counts"][label.value.to_string()]
                    .as_u64()
                    .unwrap();
                assert!(
                    label.model_pixels.abs_diff(count) <= 3,
                    "{name} {backend_name} {}: {} model pixels, Python says {count}",
                    label.name,
                    label.model_pixels
                );
            }
            let p = got.finding_probability.unwrap();
            let want_p = want["study_lesion_probability"].as_f64().unwrap();
            assert!(
                (p - want_p).abs() < 1e-3,
                "{name} {backend_name}: {p} vs {want_p}"
            );
            let m = f64::from(got.max_label_probability);
            assert!((m - want["max_lesion_probability"].as_f64().unwrap()).abs() < 1e-3);
        }
    }
}

#[test]
fn the_implanted_lesion_is_found_where_it_was_put() {
    let lesion = run(tract(), "ct-series-lesion");
    let healthy = run(tract(), "ct-series");
    assert!(lesion.finding_probability > healthy.finding_probability);
    assert!(lesion.finding_probability.unwrap() > 0.9);
    // The lesion voxels on the source grid lie around the implanted centre.
    let s = series("ct-series-lesion");
    let v = &s.volume;
    let centre = expected()["series"]["ct-series-lesion"]["implanted_lesion"]["centre_mm"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect::<Vec<_>>();
    let (mut sum, mut n) = ([0.0f64; 3], 0usize);
    for (index, label) in lesion.label_map.iter().enumerate() {
        if *label == 2 {
            let (z, rest) = (index / (v.rows * v.columns), index % (v.rows * v.columns));
            let p = v.position(
                (rest % v.columns) as f64,
                (rest / v.columns) as f64,
                z as f64,
            );
            for k in 0..3 {
                sum[k] += p[k];
            }
            n += 1;
        }
    }
    assert!(n > 0);
    let dist: f64 = (0..3)
        .map(|k| (sum[k] / n as f64 - centre[k]).powi(2))
        .sum::<f64>()
        .sqrt();
    assert!(
        dist < 20.0,
        "lesion centroid {dist:.1} mm from the implanted centre"
    );
    assert_eq!(lesion.label_map.len(), v.voxels.len());
}

#[test]
fn a_series_the_model_cannot_take_is_refused_with_the_reason() {
    let mut model = Model::new(package(), tract()).unwrap();
    let mr = build(
        &[test_support::fixtures::pydicom("MR_small_implicit.dcm")],
        &Limits::default(),
    )
    .unwrap();
    let err = infer::run(&mut model, &mr.volume).unwrap_err();
    assert!(matches!(err, InferError::WrongModality { .. }), "{err}");
    let one = build(
        &[test_support::fixtures::pydicom("CT_small.dcm")],
        &Limits::default(),
    )
    .unwrap();
    let err = infer::run(&mut model, &one.volume).unwrap_err();
    assert!(
        matches!(err, InferError::TooFewSlices { min: 8, found: 1 }),
        "{err}"
    );
}

#[test]
fn a_missing_onnx_runtime_library_is_a_clear_error() {
    let p = package();
    let b = &p.manifest.backbone;
    // The environment is loaded once per process; only a fresh process sees this error, so the
    // check runs through the CLI.
    let out = std::process::Command::new(hil_tests::appliance::binary())
        .args(["infer"])
        .arg(test_support::fixtures::ct_series_dir())
        .args(["--model"])
        .arg(&p.dir)
        .args([
            "--backend",
            "ort",
            "--ort-library",
            "/nonexistent/libonnxruntime.so",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cannot load ONNX Runtime from /nonexistent"),
        "{err} ({})",
        b.input
    );
}
