//! Fine-tuning the head: the fine-tuned head computes through the inference path what candle
//! computed; one seed gives one set of weights; it learns a simulated site; FedProx holds it
//! near the global head; it can be cancelled; bad input is a typed error.
//!
//! Data: the simulated site of `common` (the real head CT with implanted lesions, backbone on
//! tract). Its lesions are fainter (+25 HU) than the training data's (+50 to +80 HU).

mod common;

use common::{build_site, fine_tune_config as config, repo, SiteSpec};
use models::evaluate;
use models::finetune::{
    candle_probabilities, fine_tune, fine_tune_with, Case, FineTuneError, TrainingSet,
};
use models::head::Head;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;
use std::time::Instant;

struct Fixture {
    head: Head,
    train: TrainingSet,
    test: Vec<Case>,
}

/// The site, built once per test binary: 16 training and 8 held-out cases, lesions +25 HU.
fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let site = build_site(&SiteSpec {
            seed: 20261124,
            train_cases: 16,
            test_cases: 8,
            lesion_hu: 25.0,
            hu_offset: 0.0,
        });
        Fixture {
            head: site.head,
            train: TrainingSet { cases: site.train },
            test: site.test,
        }
    })
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
