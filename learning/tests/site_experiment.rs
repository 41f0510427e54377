//! The site experiment (issue item 5): a site whose scanner differs from the training data
//! sends labelled cases in batches; after each batch the head is fine-tuned and the gate
//! decides, on the site's own held-out cases and on the package's reference validation set,
//! whether the candidate replaces the champion. Learning must help the site without
//! forgetting the reference set, and a batch with wrong labels must not get through.
//!
//! The site (`common::build_site`): lesions of +25 HU where training had +50 to +80, and a
//! scanner that reads 8 HU high everywhere (a calibration drift beyond the usual +-4 HU
//! tolerance for water). It labels 16 training cases, sent in 4 batches of 4, and keeps 8
//! held-out cases that are never trained on.
//!
//! Protocol: the champion starts as the shipped head. After each batch the candidate is
//! fine-tuned from the champion, with FedProx toward the shipped (global) head, on every
//! labelled case the site has sent so far (the gate judges heads, not labels: a batch whose
//! candidate lost still teaches the next one). The gate compares the candidate with the
//! champion on the held-out cases, and with the shipped head on the reference set. The
//! protocol runs twice: with the fine-tuning tests' FedProx weight (mu 0.01), where every
//! candidate forgets too much of the reference set's lesions (measured, printed, not
//! asserted), and with mu 1, where the gate accepts an update. Then two poisoned batches of
//! 4 cases (lesion labels moved onto healthy brain; lesion and background swapped; images
//! untouched) are each fine-tuned alone on top of the mu-1 champion; the gate must refuse
//! both.
//!
//! Each arm runs twice: on whole cases (every pixel's features, as the appliance kept them
//! until 2026-12-02) and on cases kept as the appliance keeps them now (a class-balanced sample
//! of the package's `samples_per_class` pixels a class, drawn once per case, with the study
//! classifier fitted and every head scored on whole cases). Whole cases with two more
//! fine-tune seeds measure what another pixel draw alone changes; every sampled candidate's
//! lesion Dice must lie within that range, give or take 0.01.
//!
//! Run `cargo test --release -p learning --test site_experiment -- --nocapture` for the tables.

mod common;

use common::{build_site, fine_tune_config, SiteSpec};
use learning::case::Case;
use learning::evaluate::{self, Scores};
use learning::finetune::{
    fine_tune, fine_tune_from_samples, FineTuneConfig, StudyExample, TrainingSet,
};
use learning::gate::{self, GateConfig};
use learning::sampled::sample_dense;
use learning::validation::ReferenceSet;
use models::head::Head;
use models::package::Package;
use onnx_backends::TractBackend;
use radiant_core::Cancel;
use std::time::Instant;
use test_support::repo_root;

const BATCHES: usize = 4;
const BATCH_CASES: usize = 4;
/// FedProx weight of the arm expected to pass the gate (see the module doc).
const STRONG_MU: f64 = 1.0;
/// Extra site cases from which the poisoned batch is made (its first 4 with a lesion).
const SPARE_CASES: usize = 8;

fn row(name: &str, local: &Scores, reference: &Scores, seconds: f64, decision: &str) -> String {
    let auroc = |a: Option<f64>| a.map_or("-".to_string(), |a| format!("{a:.3}"));
    format!(
        "| {name} | {:.4} | {:.4} | {} | {:.4} | {:.4} | {} | {seconds:.1} | {decision} |",
        local.dice[0],
        local.dice[1],
        auroc(local.auroc),
        reference.dice[0],
        reference.dice[1],
        auroc(reference.auroc),
    )
}

/// The same case with its lesion labels moved onto healthy brain: the lesion's pixels become
/// intracranial space, and the same shape, shifted in-plane by at least 8 pixels (31 mm) to a
/// place where every pixel is intracranial space, becomes lesion. The image is untouched.
fn mislabelled(case: &Case, columns: usize) -> Case {
    let lesion: Vec<usize> = (0..case.labels.len())
        .filter(|p| case.labels[*p] == 2)
        .collect();
    assert!(!lesion.is_empty(), "{}: no lesion to move", case.id);
    let rows = case.plane / columns;
    let shifted = |p: usize, di: isize, dj: isize| {
        let (z, i, j) = (p / case.plane, (p % case.plane) / columns, p % columns);
        let (i, j) = (i as isize + di, j as isize + dj);
        (i >= 0 && j >= 0 && (i as usize) < rows && (j as usize) < columns)
            .then(|| z * case.plane + i as usize * columns + j as usize)
    };
    let offsets = (-24isize..=24)
        .flat_map(|di| (-24isize..=24).map(move |dj| (di, dj)))
        .filter(|(di, dj)| di.abs().max(dj.abs()) >= 8);
    for (di, dj) in offsets {
        let target: Option<Vec<usize>> = lesion.iter().map(|p| shifted(*p, di, dj)).collect();
        if let Some(target) = target.filter(|t| t.iter().all(|q| case.labels[*q] == 1)) {
            let mut out = case.clone();
            out.id = format!("{}-mislabelled", case.id);
            lesion.iter().for_each(|p| out.labels[*p] = 1);
            target.iter().for_each(|q| out.labels[*q] = 2);
            return out;
        }
    }
    panic!("{}: no healthy brain to move the lesion onto", case.id);
}

/// Lesion and background swapped: what a label export with the wrong segment order gives.
fn swapped(case: &Case) -> Case {
    let mut out = case.clone();
    out.id = format!("{}-swapped", case.id);
    out.labels.iter_mut().for_each(|l| {
        *l = match *l {
            0 => 2,
            2 => 0,
            other => other,
        }
    });
    out
}

/// A case's sampling seed, from its id (the appliance seeds with the case's row id).
fn seed_of(id: &str) -> u64 {
    id.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    })
}

/// One run of the protocol with FedProx weight `mu`.
struct Arm {
    table: Vec<String>,
    /// Each batch's candidate: site and reference scores.
    candidates: Vec<(Scores, Scores)>,
    accepted: usize,
    champion: Head,
    champion_local: Scores,
    champion_reference: Scores,
}

fn header() -> Vec<String> {
    vec![
        "| head | site Dice intracranial | site Dice lesion | site AUROC | reference Dice \
         intracranial | reference Dice lesion | reference AUROC | fine-tune s | gate |"
            .to_string(),
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |".to_string(),
    ]
}

fn verdict(decision: &gate::Decision) -> String {
    if decision.accepted {
        "accepted".to_string()
    } else {
        format!("refused: {}", decision.reasons.join("; "))
    }
}

/// How the training cases are kept between their arrival and a fine-tune.
#[derive(Clone, Copy)]
enum Keep {
    /// Whole: every pixel's features (what the appliance kept before 2026-12-02).
    Whole,
    /// A class-balanced sample of at most this many pixels of each class, drawn once per case
    /// (what the appliance keeps); the study classifier still sees every pixel.
    Sampled(usize),
}

struct Setting<'a> {
    shipped: &'a Head,
    site_train: &'a [Case],
    site_test: &'a [Case],
    reference: &'a [Case],
    baseline_reference: &'a Scores,
    keep: Keep,
    /// The fine-tune's seed (pixel draws and batch order).
    seed: u64,
}

impl Setting<'_> {
    /// Fine-tune `champion` on `cases`, score the candidate and ask the gate.
    fn try_update(
        &self,
        champion: &Head,
        champion_local: &Scores,
        cases: Vec<Case>,
        mu: f64,
    ) -> (Head, Scores, Scores, f64, gate::Decision) {
        let config = FineTuneConfig {
            mu,
            seed: self.seed,
            ..fine_tune_config()
        };
        let t = Instant::now();
        let (candidate, _) = match self.keep {
            Keep::Whole => {
                fine_tune(champion, self.shipped, &TrainingSet { cases }, &config).unwrap()
            }
            Keep::Sampled(per_class) => {
                let (features, classes) = (self.shipped.features, self.shipped.classes);
                // One draw per case, fixed when the case arrives (its id seeds it).
                let pixels = cases
                    .iter()
                    .map(|c| sample_dense(c, features, classes, per_class, seed_of(&c.id)).unwrap())
                    .collect();
                let mut examples = |head: &Head| -> Result<Option<Vec<StudyExample>>, String> {
                    let mut out = Vec::new();
                    for case in &cases {
                        out.extend(StudyExample::of(head, case)?);
                    }
                    Ok(Some(out))
                };
                fine_tune_from_samples(
                    champion,
                    self.shipped,
                    &TrainingSet { cases: pixels },
                    &mut examples,
                    &config,
                    |_, _| {},
                    &Cancel::new(),
                )
                .unwrap()
            }
        };
        let seconds = t.elapsed().as_secs_f64();
        let local = evaluate::score(&candidate, self.site_test).unwrap();
        let on_reference = evaluate::score(&candidate, self.reference).unwrap();
        let decision = gate::decide(
            champion_local,
            &local,
            self.baseline_reference,
            &on_reference,
            &GateConfig::default(),
        );
        (candidate, local, on_reference, seconds, decision)
    }

    fn run(&self, mu: f64) -> Arm {
        let shipped_local = evaluate::score(self.shipped, self.site_test).unwrap();
        let mut arm = Arm {
            table: header(),
            candidates: Vec::new(),
            accepted: 0,
            champion: self.shipped.clone(),
            champion_local: shipped_local.clone(),
            champion_reference: self.baseline_reference.clone(),
        };
        arm.table.push(row(
            "shipped",
            &shipped_local,
            self.baseline_reference,
            0.0,
            "-",
        ));
        let mut pool: Vec<Case> = Vec::new();
        for (b, batch) in self.site_train.chunks(BATCH_CASES).enumerate() {
            pool.extend_from_slice(batch);
            let (candidate, local, on_reference, seconds, decision) =
                self.try_update(&arm.champion, &arm.champion_local, pool.clone(), mu);
            arm.table.push(row(
                &format!("batch {} ({} cases)", b + 1, pool.len()),
                &local,
                &on_reference,
                seconds,
                &verdict(&decision),
            ));
            arm.candidates.push((local.clone(), on_reference.clone()));
            if decision.accepted {
                arm.accepted += 1;
                arm.champion = candidate;
                arm.champion_local = local;
                arm.champion_reference = on_reference;
            }
        }
        arm
    }
}

#[test]
fn site_updates_pass_the_gate_and_improve_the_site_and_mislabelled_batches_are_refused() {
    let began = Instant::now();
    let package = Package::open(&repo_root().join("models/reference/head-ct")).unwrap();
    let mut site = build_site(&SiteSpec {
        seed: 20261201,
        train_cases: BATCHES * BATCH_CASES + SPARE_CASES,
        test_cases: 8,
        lesion_hu: 25.0,
        hu_offset: 8.0,
    });
    let spare = site.train.split_off(BATCHES * BATCH_CASES);
    let mut backend = TractBackend::load(&package.backbone_path()).unwrap();
    let reference = ReferenceSet::load(&package)
        .unwrap()
        .expect("the reference package ships a validation set")
        .cases(&mut backend, package.manifest.backbone.features)
        .unwrap();
    let baseline_reference = evaluate::score(&site.head, &reference).unwrap();
    let setting = |keep: Keep, seed: u64| Setting {
        shipped: &site.head,
        site_train: &site.train,
        site_test: &site.test,
        reference: &reference,
        baseline_reference: &baseline_reference,
        keep,
        seed,
    };
    let weak_mu = fine_tune_config().mu;
    let samples_per_class = package.manifest.head.samples_per_class;

    // Whole cases, then cases kept as the appliance keeps them (a sample of each, drawn once),
    // both with the fine-tune seed of the tests; whole cases with two other seeds measure
    // what a different pixel draw alone changes (the noise the sampled figures are held to).
    // Each: the fine-tuning tests' FedProx weight, then a 100 times stronger pull.
    let mut arms: Vec<(String, Keep, Arm, Arm)> = Vec::new();
    for (name, keep, seed) in [
        ("whole cases".to_string(), Keep::Whole, 7),
        (
            format!("sampled cases ({samples_per_class} pixels a class)"),
            Keep::Sampled(samples_per_class),
            7,
        ),
        ("whole cases, fine-tune seed 8".to_string(), Keep::Whole, 8),
        ("whole cases, fine-tune seed 9".to_string(), Keep::Whole, 9),
    ] {
        let arm = setting(keep, seed);
        arms.push((name, keep, arm.run(weak_mu), arm.run(STRONG_MU)));
    }

    // Two poisoned batches of 4 spare cases with a lesion, fine-tuned alone on top of the
    // strong arm's champion: lesion labels moved onto healthy brain, and lesion and
    // background swapped. Whole and sampled.
    let columns = package.manifest.input.size[1];
    let lesioned: Vec<&Case> = spare
        .iter()
        .filter(|c| c.finding == Some(true))
        .take(BATCH_CASES)
        .collect();
    assert_eq!(lesioned.len(), BATCH_CASES);
    let mut poison_tables = Vec::new();
    let mut poison_decisions = Vec::new();
    for (name, keep, _, strong) in &arms[..2] {
        let mut table = header();
        for (poison, cases) in [
            (
                "lesions moved onto healthy brain",
                lesioned.iter().map(|c| mislabelled(c, columns)).collect(),
            ),
            (
                "lesion and background swapped",
                lesioned.iter().map(|c| swapped(c)).collect::<Vec<_>>(),
            ),
        ] {
            let (_, local, on_reference, seconds, decision) = setting(*keep, 7).try_update(
                &strong.champion,
                &strong.champion_local,
                cases,
                STRONG_MU,
            );
            table.push(row(
                poison,
                &local,
                &on_reference,
                seconds,
                &verdict(&decision),
            ));
            poison_decisions.push((format!("{name}: {poison}"), decision));
        }
        poison_tables.push(format!(
            "Poisoned batches on the mu {STRONG_MU} champion, {name}:\n{}",
            table.join("\n")
        ));
    }

    // Sampled against whole: each candidate's site and reference lesion Dice.
    let mut comparison = vec![
        "| mu | batch | site lesion Dice: whole, seed 7 / 8 / 9 | sampled | reference lesion \
         Dice: whole, seed 7 / 8 / 9 | sampled |"
            .to_string(),
        "| --- | --- | --- | --- | --- | --- |".to_string(),
    ];
    // Per mu and batch: how far the sampled candidate lies outside the whole-case seeds' range.
    let mut outside = Vec::new();
    for (mu, pick) in [(weak_mu, 0usize), (STRONG_MU, 1)] {
        let arm_of = |i: usize| if pick == 0 { &arms[i].2 } else { &arms[i].3 };
        for batch in 0..BATCHES {
            let mut cells = Vec::new();
            for which in [0usize, 1] {
                let value = |i: usize| {
                    let (local, on_reference) = &arm_of(i).candidates[batch];
                    [local, on_reference][which].dice[1]
                };
                let whole: Vec<f64> = [0, 2, 3].iter().map(|i| value(*i)).collect();
                let (low, high) = whole
                    .iter()
                    .fold((f64::MAX, f64::MIN), |(l, h), v| (l.min(*v), h.max(*v)));
                let sampled = value(1);
                outside.push((
                    mu,
                    batch + 1,
                    which,
                    (low - sampled).max(sampled - high).max(0.0),
                ));
                cells.push(format!(
                    "{:.4} / {:.4} / {:.4} | {sampled:.4}",
                    whole[0], whole[1], whole[2]
                ));
            }
            comparison.push(format!("| {mu} | {} | {} |", batch + 1, cells.join(" | ")));
        }
    }

    let mut summary = String::new();
    for (name, _, weak, strong) in &arms[..2] {
        summary.push_str(&format!(
            "{name}, FedProx mu {weak_mu}:\n{}\n\n{name}, FedProx mu {STRONG_MU}:\n{}\n\n",
            weak.table.join("\n"),
            strong.table.join("\n"),
        ));
    }
    summary.push_str(&format!(
        "{}\n\nSampled against whole cases (lesion Dice of each batch's candidate):\n{}\n\n\
         (site: {} held-out cases; reference set: {} cases; total {:.1} s)",
        poison_tables.join("\n\n"),
        comparison.join("\n"),
        site.test.len(),
        reference.len(),
        began.elapsed().as_secs_f64()
    ));
    eprintln!("{summary}");

    let shipped_local = evaluate::score(&site.head, &site.test).unwrap();
    for (_, _, weak, strong) in &arms[..2] {
        assert!(strong.accepted >= 1, "no update accepted\n{summary}");
        // Measured: site lesion Dice 0.6842 -> 0.7549 (whole), -> 0.7563 (sampled); the
        // threshold leaves slack for other CPUs' float sums.
        assert!(
            strong.champion_local.dice[1] > shipped_local.dice[1] + 0.04,
            "{summary}"
        );
        check_reference_kept(&baseline_reference, weak, &site.head, &summary);
        check_reference_kept(&baseline_reference, strong, &site.head, &summary);
    }
    for (name, decision) in &poison_decisions {
        assert!(!decision.accepted, "{name} accepted\n{summary}");
    }
    // Keeping a sample learns as well as keeping every pixel: every sampled candidate's lesion
    // Dice lies within the whole-case seeds' range, give or take 0.01.
    for (mu, batch, which, beyond) in outside {
        assert!(
            beyond <= 0.01,
            "mu {mu}, batch {batch}: the sampled candidate's {} lesion Dice lies {beyond:.4} \
             outside the whole-case seeds' range\n{summary}",
            ["site", "reference"][which]
        );
    }
}

/// An arm's champion kept the reference set's Dice within the gate's margin, and moved from
/// the shipped head exactly when an update was accepted.
fn check_reference_kept(baseline: &Scores, arm: &Arm, shipped: &Head, summary: &str) {
    {
        let arm = &arm;
        for (label, (before, after)) in baseline
            .dice
            .iter()
            .zip(&arm.champion_reference.dice)
            .enumerate()
        {
            assert!(
                *after >= before - GateConfig::default().reference_margin,
                "reference Dice of label {} fell from {before} to {after}\n{summary}",
                label + 1
            );
        }
        assert_eq!(
            arm.champion.distance(shipped).unwrap() == 0.0,
            arm.accepted == 0
        );
    }
}
