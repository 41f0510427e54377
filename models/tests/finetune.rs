//! Fine-tuning the head: the fine-tuned head computes through the inference path what candle
//! computed; one seed gives one set of weights; it learns a simulated site; FedProx holds it
//! near the global head; it can be cancelled; bad input is a typed error.
//!
//! Data: the real head CT of `fixtures/ct-series` (built by `scripts/fixtures.sh`). Its raw
//! pixels are read straight from the files (native little-endian int16, Pixel Data last, as
//! `scripts/make_fixtures.py` writes them; `models` parses no DICOM), lesions are implanted in
//! HU, and the reference backbone runs on tract, as inference does. The simulated site's
//! lesions are fainter (+25 HU) than the training data's (+50 to +80 HU).

use models::backend::{Backend, TractBackend};
use models::evaluate;
use models::finetune::{
    candle_probabilities, fine_tune, fine_tune_with, Case, FineTuneConfig, FineTuneError,
    TrainingSet,
};
use models::head::Head;
use models::package::Package;
use models::preprocess;
use models::volume::Volume;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;
use std::time::Instant;

const SLICES_PER_CASE: usize = 10;
const TRAIN_CASES: usize = 16;
const TEST_CASES: usize = 8;
/// HU added inside a lesion at the simulated site (training data: 50 to 80).
const SITE_LESION_HU: f32 = 25.0;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// The 108-slice head CT: raw int16 pixels (rescale 1, 0: HU), 0.957 mm pixels, 1.5 mm apart.
fn fixture_volume() -> Volume {
    let dir = repo().join("fixtures/ct-series");
    let (rows, columns) = (256usize, 256usize);
    let bytes = rows * columns * 2;
    let mut voxels = Vec::new();
    let mut slices = 0;
    while let Ok(file) = std::fs::read(dir.join(format!("slice_{slices:03}.dcm"))) {
        // The last element: (7FE0,0010) OW, 2 reserved bytes, 4-byte length, then the pixels.
        let header = &file[file.len() - bytes - 12..file.len() - bytes];
        assert_eq!(
            header,
            [
                &[0xE0, 0x7F, 0x10, 0x00, b'O', b'W', 0, 0][..],
                &(bytes as u32).to_le_bytes()
            ]
            .concat(),
            "slice {slices}: Pixel Data is not the last element"
        );
        voxels.extend(
            file[file.len() - bytes..]
                .chunks_exact(2)
                .map(|b| f32::from(i16::from_le_bytes([b[0], b[1]]))),
        );
        slices += 1;
    }
    assert!(
        slices >= 100,
        "fixtures/ct-series missing or short ({slices} slices): run scripts/fixtures.sh"
    );
    Volume {
        columns,
        rows,
        slices,
        spacing: [0.9570312, 0.9570312, 1.5],
        origin: [0.0; 3],
        row_direction: [1.0, 0.0, 0.0],
        column_direction: [0.0, 1.0, 0.0],
        normal: [0.0, 0.0, 1.0],
        voxels,
        modality: "CT".into(),
        frame_of_reference_uid: None,
    }
}

/// SplitMix64 for the test's own choices (lesion places and sizes).
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn uniform(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
    fn below(&mut self, n: usize) -> usize {
        ((u128::from(self.next()) * n as u128) >> 64) as usize
    }
}

struct Fixture {
    head: Head,
    train: TrainingSet,
    test: Vec<Case>,
}

fn backbone_features(
    backend: &mut TractBackend,
    package: &Package,
    volume: &Volume,
    slices: std::ops::Range<usize>,
) -> Vec<f32> {
    let spec = &package.manifest.input;
    let [rows, columns] = spec.size;
    let mut out = Vec::new();
    let mut start = slices.start;
    while start < slices.end {
        let end = (start + 16).min(slices.end);
        let input = preprocess::tensor(volume, spec, start..end);
        let shape = [end - start, spec.channels.len(), rows, columns];
        out.extend(backend.run(&input, shape).unwrap());
        start = end;
    }
    out
}

/// Cases of the simulated site, built once per test binary: blocks of slices of the real CT,
/// two thirds of them with one spherical lesion of +25 HU (radius 6 to 12 mm) implanted deep
/// in the intracranial space. Labels: intracranial space as the reference head finds it on the
/// clean scan, the lesion where a model pixel's sample point lies in the sphere.
fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let t = Instant::now();
        let package = Package::open(&repo().join("models/reference/head-ct")).unwrap();
        let head = Head::load(
            &std::fs::read(package.head_path()).unwrap(),
            &package.manifest,
        )
        .unwrap();
        let mut backend = TractBackend::load(&package.backbone_path()).unwrap();
        let clean = fixture_volume();
        let spec = package.manifest.input.clone();
        let [rows, columns] = spec.size;
        let plane = rows * columns;
        let f = head.features;

        // Intracranial space on the model grid: the reference head on the clean scan.
        let features = backbone_features(&mut backend, &package, &clean, 0..clean.slices);
        let probs = head.probabilities(&features, clean.slices, plane);
        let inside: Vec<bool> = probs
            .chunks_exact(head.classes)
            .map(|p| p[1] + p[2] > p[0])
            .collect();
        let area = |z: usize| {
            inside[z * plane..(z + 1) * plane]
                .iter()
                .filter(|b| **b)
                .count()
        };
        // Blocks whose middle slice has a large intracranial area.
        let starts: Vec<usize> = (0..clean.slices - SLICES_PER_CASE)
            .filter(|z| area(z + SLICES_PER_CASE / 2) > 600)
            .collect();
        assert!(starts.len() > 10, "too few brain slices: {}", starts.len());

        let pixel_ml = spec.spacing_mm * spec.spacing_mm * clean.spacing[2] / 1000.0;
        let mut rng = Rng(20261124);
        let mut cases = Vec::new();
        for index in 0..TRAIN_CASES + TEST_CASES {
            let first = starts[rng.below(starts.len())];
            let range = first..first + SLICES_PER_CASE;
            let mut volume = clean.clone();
            let mut labels: Vec<u8> = inside[range.start * plane..range.end * plane]
                .iter()
                .map(|b| u8::from(*b))
                .collect();
            let lesion = index % 3 != 2;
            if lesion {
                let radius_mm = 6.0 + 6.0 * rng.uniform();
                let mid = first + SLICES_PER_CASE / 2;
                // A centre whose model-grid neighbourhood (radius + 8 mm) is all intracranial.
                let reach = ((radius_mm + 8.0) / spec.spacing_mm).ceil() as isize;
                let centre = loop {
                    let p = rng.below(plane);
                    let (i, j) = ((p / columns) as isize, (p % columns) as isize);
                    let deep = (-reach..=reach).all(|di| {
                        (-reach..=reach).all(|dj| {
                            let (a, b) = (i + di, j + dj);
                            a >= 0
                                && b >= 0
                                && (a as usize) < rows
                                && (b as usize) < columns
                                && inside[mid * plane + a as usize * columns + b as usize]
                        })
                    });
                    if deep {
                        break (i as usize, j as usize);
                    }
                };
                let (cx, cy) = preprocess::source_index(&clean, &spec, centre.0, centre.1);
                let cz = mid as f64;
                let [sx, sy, sz] = clean.spacing;
                let dist = |x: f64, y: f64, z: f64| {
                    (((x - cx) * sx).powi(2) + ((y - cy) * sy).powi(2) + ((z - cz) * sz).powi(2))
                        .sqrt()
                };
                for z in range.clone() {
                    for y in 0..clean.rows {
                        for x in 0..clean.columns {
                            if dist(x as f64, y as f64, z as f64) <= radius_mm {
                                volume.voxels[(z * clean.rows + y) * clean.columns + x] +=
                                    SITE_LESION_HU;
                            }
                        }
                    }
                    for i in 0..rows {
                        for j in 0..columns {
                            let (x, y) = preprocess::source_index(&clean, &spec, i, j);
                            if dist(x, y, z as f64) <= radius_mm {
                                labels[(z - first) * plane + i * columns + j] = 2;
                            }
                        }
                    }
                }
            }
            let features = backbone_features(&mut backend, &package, &volume, range);
            assert_eq!(features.len(), SLICES_PER_CASE * f * plane);
            cases.push(Case {
                id: format!("site-case-{index}"),
                slices: SLICES_PER_CASE,
                plane,
                features,
                labels,
                finding: Some(lesion),
                pixel_ml,
            });
        }
        let test = cases.split_off(TRAIN_CASES);
        eprintln!(
            "fixture: {} training and {} held-out cases of {SLICES_PER_CASE} slices in {:.1} s",
            cases.len(),
            test.len(),
            t.elapsed().as_secs_f64()
        );
        Fixture {
            head,
            train: TrainingSet { cases },
            test,
        }
    })
}

fn config() -> FineTuneConfig {
    FineTuneConfig {
        seed: 7,
        epochs: 8,
        batch: 1024,
        learning_rate: 3e-3,
        mu: 0.01,
        class_weights: Some(vec![1.0, 1.0, 3.0]),
        pixels_per_class: 512,
        ..FineTuneConfig::default()
    }
}

#[test]
fn a_fine_tuned_head_read_back_from_safetensors_gives_candles_probabilities_within_1e_5() {
    let fx = fixture();
    let (tuned, _) = fine_tune(&fx.head, &fx.head, &fx.train, &config()).unwrap();
    // What a head version on disk is, and what inference loads.
    let bytes = tuned.to_safetensors().unwrap();
    let loaded =
        Head::from_safetensors(&bytes, tuned.features, tuned.hidden, tuned.classes).unwrap();
    assert_eq!(loaded, tuned);
    let mut worst = 0f32;
    for case in &fx.test {
        let rust = loaded.probabilities(&case.features, case.slices, case.plane);
        let candle = candle_probabilities(&tuned, &case.features, case.slices, case.plane).unwrap();
        assert_eq!(rust.len(), candle.len());
        for (a, b) in rust.iter().zip(&candle) {
            worst = worst.max((a - b).abs());
        }
    }
    assert!(worst <= 1e-5, "largest difference {worst:e}");
    eprintln!("inference path vs candle: largest difference {worst:e}");
}

#[test]
fn the_reference_head_survives_a_safetensors_round_trip() {
    let fx = fixture();
    let shipped = std::fs::read(repo().join("models/reference/head-ct/head.safetensors")).unwrap();
    let bytes = fx.head.to_safetensors().unwrap();
    let back = Head::from_safetensors(&bytes, 16, 16, 3).unwrap();
    assert_eq!(back, fx.head);
    // Same layout as train_head_ct.py writes: the very same bytes.
    assert_eq!(
        bytes, shipped,
        "to_safetensors differs from the shipped head's bytes"
    );
}

#[test]
fn the_same_seed_gives_bit_identical_weights_and_another_seed_does_not() {
    let fx = fixture();
    let mut c = config();
    c.epochs = 3;
    let (a, _) = fine_tune(&fx.head, &fx.head, &fx.train, &c).unwrap();
    let (b, _) = fine_tune(&fx.head, &fx.head, &fx.train, &c).unwrap();
    let bits = |h: &Head| {
        h.parameters()
            .iter()
            .map(|x| x.to_bits())
            .collect::<Vec<_>>()
    };
    assert_eq!(bits(&a), bits(&b));
    let bytes = a.to_safetensors().unwrap();
    assert_eq!(bytes, b.to_safetensors().unwrap());
    {
        use sha2::Digest;
        eprintln!(
            "seed {} head sha256 {:x}",
            c.seed,
            sha2::Sha256::digest(&bytes)
        );
    }
    c.seed += 1;
    let (other, _) = fine_tune(&fx.head, &fx.head, &fx.train, &c).unwrap();
    assert_ne!(bits(&a), bits(&other));
}

#[test]
fn fine_tuning_on_a_site_with_fainter_lesions_improves_held_out_lesion_dice() {
    let fx = fixture();
    let before = evaluate::score(&fx.head, &fx.test).unwrap();
    let t = Instant::now();
    let mut losses = Vec::new();
    let (tuned, report) = fine_tune_with(
        &fx.head,
        &fx.head,
        &fx.train,
        &config(),
        |epoch, loss| losses.push((epoch, loss)),
        &AtomicBool::new(false),
    )
    .unwrap();
    let seconds = t.elapsed().as_secs_f64();
    let after = evaluate::score(&tuned, &fx.test).unwrap();
    let summary = format!(
        "held-out Dice intracranial {:.4} -> {:.4}, lesion {:.4} -> {:.4}; AUROC {:?} -> {:?}; \
         fine-tune {seconds:.1} s, {} steps, samples per class {:?}, losses {:?}, classifier {:?}",
        before.dice[0],
        after.dice[0],
        before.dice[1],
        after.dice[1],
        before.auroc,
        after.auroc,
        report.steps,
        report.samples_per_class,
        report.epoch_losses,
        report.classifier,
    );
    eprintln!("{summary}");
    assert_eq!(losses.len(), config().epochs, "{summary}");
    assert!(after.dice[1] > before.dice[1] + 0.1, "{summary}");
    assert!(after.dice[0] > before.dice[0] - 0.02, "{summary}");
}

#[test]
fn a_larger_fedprox_mu_keeps_the_head_closer_to_the_global_head() {
    let fx = fixture();
    let mut distances = Vec::new();
    for mu in [0.0, 0.1, 10.0] {
        let mut c = config();
        c.epochs = 4;
        c.mu = mu;
        let (tuned, report) = fine_tune(&fx.head, &fx.head, &fx.train, &c).unwrap();
        let d = tuned.distance(&fx.head).unwrap();
        assert!((d - report.distance_to_global).abs() < 1e-9);
        distances.push((mu, d));
    }
    eprintln!("distance to global by mu: {distances:?}");
    assert!(
        distances.windows(2).all(|w| w[1].1 < w[0].1),
        "not decreasing: {distances:?}"
    );
}

#[test]
fn raising_the_cancel_flag_stops_the_fine_tune_at_the_next_step_with_a_typed_error() {
    let fx = fixture();
    let cancel = AtomicBool::new(false);
    let mut c = config();
    c.epochs = 1000;
    let t = Instant::now();
    let result = fine_tune_with(
        &fx.head,
        &fx.head,
        &fx.train,
        &c,
        |epoch, _| {
            if epoch == 2 {
                cancel.store(true, Ordering::Relaxed);
            }
        },
        &cancel,
    );
    assert!(
        matches!(result, Err(FineTuneError::Cancelled { epoch: 3, step: 0 })),
        "{result:?}"
    );
    assert!(t.elapsed().as_secs() < 60, "{:?}", t.elapsed());
    // Raised before the start: not one step.
    let raised = AtomicBool::new(true);
    let result = fine_tune_with(&fx.head, &fx.head, &fx.train, &c, |_, _| {}, &raised);
    assert!(matches!(
        result,
        Err(FineTuneError::Cancelled { epoch: 1, step: 0 })
    ));
}

#[test]
fn an_empty_set_wrong_shapes_and_bad_labels_are_typed_errors() {
    let fx = fixture();
    let c = config();
    assert!(matches!(
        fine_tune(&fx.head, &fx.head, &TrainingSet::default(), &c),
        Err(FineTuneError::EmptySet)
    ));

    let case = fx.train.cases[0].clone();
    // Features of a 15-feature backbone: one value short per pixel.
    let mut short = case.clone();
    short
        .features
        .truncate(case.slices * case.plane * (fx.head.features - 1));
    let err = fine_tune(
        &fx.head,
        &fx.head,
        &TrainingSet {
            cases: vec![case.clone(), short],
        },
        &c,
    )
    .unwrap_err();
    assert!(
        matches!(&err, FineTuneError::Case { index: 1, reason, .. } if reason.contains("16 features")),
        "{err}"
    );

    let mut bad_label = case.clone();
    bad_label.labels[5] = 7;
    let err = fine_tune(
        &fx.head,
        &fx.head,
        &TrainingSet {
            cases: vec![bad_label],
        },
        &c,
    )
    .unwrap_err();
    assert!(err.to_string().contains("label 7"), "{err}");

    let mut few_labels = case.clone();
    few_labels.labels.pop();
    assert!(matches!(
        fine_tune(
            &fx.head,
            &fx.head,
            &TrainingSet {
                cases: vec![few_labels]
            },
            &c
        ),
        Err(FineTuneError::Case { .. })
    ));

    // A global head of another shape.
    let mut other = fx.head.clone();
    other.hidden = 8;
    other.w1.truncate(8 * other.features);
    other.b1.truncate(8);
    other.w2 = vec![0.0; other.classes * 8];
    assert!(matches!(
        fine_tune(&fx.head, &other, &fx.train, &c),
        Err(FineTuneError::Head {
            which: "global",
            ..
        })
    ));

    // No lesion pixel anywhere: refusing beats forgetting the class.
    let mut no_lesion = case.clone();
    no_lesion.labels.iter_mut().for_each(|l| *l = (*l).min(1));
    assert!(matches!(
        fine_tune(
            &fx.head,
            &fx.head,
            &TrainingSet {
                cases: vec![no_lesion]
            },
            &c
        ),
        Err(FineTuneError::NoPixels { class: 2 })
    ));

    // A learning rate that blows up is reported, not returned as a head.
    let mut wild = c.clone();
    wild.learning_rate = 1e30;
    wild.optimizer = models::finetune::Optimizer::Sgd { momentum: 0.0 };
    assert!(matches!(
        fine_tune(&fx.head, &fx.head, &fx.train, &wild),
        Err(FineTuneError::NonFiniteLoss { .. })
    ));

    let mut zero_batch = c.clone();
    zero_batch.batch = 0;
    assert!(matches!(
        fine_tune(&fx.head, &fx.head, &fx.train, &zero_batch),
        Err(FineTuneError::Config(_))
    ));
    // Scoring refuses the same mismatches.
    let mut short = case.clone();
    short.features.pop();
    assert!(matches!(
        evaluate::score(&fx.head, &[case, short]),
        Err(evaluate::EvalError::Case { index: 1, .. })
    ));
}
