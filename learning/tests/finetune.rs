//! Fine-tuning the head: the fine-tuned head computes through the inference path what candle
//! computed; one seed gives one set of weights; it learns a simulated site; FedProx holds it
//! near the global head; it can be cancelled; bad input is a typed error. Cases with a study
//! label alone (no pixel labels) teach and score the study classifier only.
//!
//! Data: the simulated site of `common` (the real head CT with implanted lesions, backbone on
//! tract). Its lesions are fainter (+25 HU) than the training data's (+50 to +80 HU).

mod common;

use common::{build_site, fine_tune_config as config, SiteSpec};
use learning::case::Case;
use learning::evaluate;
use learning::finetune::{
    candle_probabilities, fine_tune, fine_tune_with, ClassifierOutcome, FineTuneError,
    SegmentationOutcome, TrainingSet,
};
use models::head::Head;
use radiant_core::Cancel;
use std::sync::OnceLock;
use std::time::Instant;
use test_support::repo_root;

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

/// The bits of every weight.
fn bits(h: &Head) -> Vec<u32> {
    h.parameters().iter().map(|x| x.to_bits()).collect()
}

/// The bits of the segmentation MLP's weights (all but the study classifier's).
fn segmentation_bits(h: &Head) -> Vec<u32> {
    [&h.w1, &h.b1, &h.w2, &h.b2]
        .iter()
        .flat_map(|w| w.iter().map(|x| x.to_bits()))
        .collect()
}

/// The case with its pixel labels dropped: a study label alone, as an SR gives it.
fn study_label_only(case: &Case) -> Case {
    Case {
        id: format!("{}-study-only", case.id),
        labels: Vec::new(),
        ..case.clone()
    }
}

/// `cases` with the pixel labels of every odd-numbered one dropped.
fn every_other_study_only(cases: &[Case]) -> Vec<Case> {
    cases
        .iter()
        .enumerate()
        .map(|(i, c)| {
            if i % 2 == 1 {
                study_label_only(c)
            } else {
                c.clone()
            }
        })
        .collect()
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
    let shipped =
        std::fs::read(repo_root().join("models/reference/head-ct/head.safetensors")).unwrap();
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
        &Cancel::new(),
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
    let cancel = Cancel::new();
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
                cancel.cancel();
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
    let raised = Cancel::new();
    raised.cancel();
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
    wild.optimizer = learning::finetune::Optimizer::Sgd { momentum: 0.0 };
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

#[test]
fn a_mixed_set_trains_the_segmentation_on_its_pixel_labelled_cases_alone_and_the_classifier_on_all()
{
    let fx = fixture();
    let mut c = config();
    c.epochs = 3;
    let mixed = TrainingSet {
        cases: every_other_study_only(&fx.train.cases),
    };
    let (a, report) = fine_tune(&fx.head, &fx.head, &mixed, &c).unwrap();
    let segmented = fx.train.cases.len().div_ceil(2);
    assert_eq!(
        report.segmentation,
        SegmentationOutcome::Trained { cases: segmented }
    );
    assert_eq!(report.epoch_losses.len(), c.epochs);
    assert!(
        matches!(report.classifier, ClassifierOutcome::Trained { cases, .. } if cases == fx.train.cases.len()),
        "{:?}",
        report.classifier
    );
    // Deterministic for a seed, as a fully labelled set is.
    let (b, _) = fine_tune(&fx.head, &fx.head, &mixed, &c).unwrap();
    assert_eq!(bits(&a), bits(&b));

    // The study-only cases add nothing to the segmentation MLP: the same bits as fine-tuning
    // on the pixel-labelled cases alone. The classifier saw twice the cases, so it differs.
    let labelled = TrainingSet {
        cases: mixed
            .cases
            .iter()
            .filter(|c| c.has_pixel_labels())
            .cloned()
            .collect(),
    };
    assert_eq!(labelled.cases.len(), segmented);
    let (alone, alone_report) = fine_tune(&fx.head, &fx.head, &labelled, &c).unwrap();
    assert_eq!(segmentation_bits(&a), segmentation_bits(&alone));
    assert_eq!(report.samples_per_class, alone_report.samples_per_class);
    assert_ne!(bits(&a), bits(&alone));
}

#[test]
fn a_study_label_only_set_trains_the_classifier_and_keeps_the_segmentation_bit_identical() {
    let fx = fixture();
    let study_only = TrainingSet {
        cases: fx.train.cases.iter().map(study_label_only).collect(),
    };
    let mut epochs_reported = 0;
    let (tuned, report) = fine_tune_with(
        &fx.head,
        &fx.head,
        &study_only,
        &config(),
        |_, _| epochs_reported += 1,
        &Cancel::new(),
    )
    .unwrap();
    assert!(
        matches!(&report.segmentation, SegmentationOutcome::Kept(why) if why.contains("pixel labels")),
        "{:?}",
        report.segmentation
    );
    assert_eq!(epochs_reported, 0);
    assert!(report.epoch_losses.is_empty());
    assert_eq!(report.steps, 0);
    assert_eq!(report.samples_per_class, vec![0; fx.head.classes]);
    assert_eq!(segmentation_bits(&tuned), segmentation_bits(&fx.head));

    let ClassifierOutcome::Trained {
        cases,
        loss_before,
        loss_after,
    } = report.classifier
    else {
        panic!("classifier kept: {:?}", report.classifier);
    };
    assert_eq!(cases, study_only.cases.len());
    assert!(loss_after < loss_before, "{loss_before} -> {loss_after}");
    assert_ne!((tuned.cls_w, tuned.cls_b), (fx.head.cls_w, fx.head.cls_b));
    // The reported losses are the mean logistic losses of the heads as inference runs them.
    let loss = |head: &Head| {
        let sum: f64 = study_only
            .cases
            .iter()
            .map(|case| {
                let inputs = evaluate::study_inputs(head, case);
                let p = head.classify(inputs.max_probability, inputs.ml);
                if case.finding == Some(true) {
                    -p.ln()
                } else {
                    -(1.0 - p).ln()
                }
            })
            .sum();
        sum / study_only.cases.len() as f64
    };
    for (reported, head) in [(loss_before, &fx.head), (loss_after, &tuned)] {
        let measured = loss(head);
        assert!(
            (f64::from(reported) - measured).abs() < 1e-4,
            "reported {reported}, measured {measured}"
        );
    }
}

#[test]
fn scoring_pools_dice_over_pixel_labelled_cases_only_and_auroc_over_every_study_label() {
    let fx = fixture();
    let mixed = every_other_study_only(&fx.test);
    let labelled: Vec<Case> = mixed
        .iter()
        .filter(|c| c.has_pixel_labels())
        .cloned()
        .collect();
    let on_mixed = evaluate::score(&fx.head, &mixed).unwrap();
    let on_labelled = evaluate::score(&fx.head, &labelled).unwrap();
    let on_full = evaluate::score(&fx.head, &fx.test).unwrap();
    assert_eq!(on_mixed.segmentation_cases, labelled.len());
    assert_eq!(on_full.segmentation_cases, fx.test.len());
    assert_eq!(on_mixed.overlaps, on_labelled.overlaps);
    assert_eq!(on_mixed.dice, on_labelled.dice);
    assert_ne!(on_mixed.overlaps, on_full.overlaps);
    // Dropping pixel labels changes nothing the study classifier sees.
    assert_eq!(on_mixed.study_probabilities, on_full.study_probabilities);
    assert_eq!(on_mixed.auroc, on_full.auroc);
    assert!(on_mixed.auroc.is_some());

    // No pixel label at all: no Dice, and certainly not a perfect one.
    let study_only: Vec<Case> = fx.test.iter().map(study_label_only).collect();
    let none = evaluate::score(&fx.head, &study_only).unwrap();
    assert_eq!(none.segmentation_cases, 0);
    assert_eq!(none.dice.len(), fx.head.classes - 1);
    assert!(none.dice.iter().all(|d| d.is_nan()), "{:?}", none.dice);
    assert_eq!(none.auroc, on_full.auroc);
}

#[test]
fn a_case_without_any_label_and_a_set_with_nothing_to_learn_are_typed_errors() {
    let fx = fixture();
    let c = config();
    let mut unlabelled = study_label_only(&fx.train.cases[1]);
    unlabelled.finding = None;
    let set = TrainingSet {
        cases: vec![fx.train.cases[0].clone(), unlabelled.clone()],
    };
    let err = fine_tune(&fx.head, &fx.head, &set, &c).unwrap_err();
    assert!(
        matches!(&err, FineTuneError::Case { index: 1, reason, .. } if reason.contains("no label at all")),
        "{err}"
    );
    assert!(matches!(
        evaluate::score(&fx.head, &set.cases),
        Err(evaluate::EvalError::Case { index: 1, .. })
    ));

    // Study labels only, all positive: the segmentation has no pixels, the classifier no
    // negative case, and the start head is no candidate.
    let positives = TrainingSet {
        cases: fx
            .train
            .cases
            .iter()
            .filter(|c| c.finding == Some(true))
            .map(study_label_only)
            .collect(),
    };
    assert!(!positives.cases.is_empty());
    assert!(matches!(
        fine_tune(&fx.head, &fx.head, &positives, &c),
        Err(FineTuneError::NothingToTrain { .. })
    ));
}
