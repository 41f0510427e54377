//! The validation gate (champion/challenger): whether a fine-tuned candidate head may replace
//! the champion. Learning must never make the model worse, so a candidate is accepted only if
//! - the site has at least `min_holdout_cases` held-out cases with pixel labels, and a paired
//!   bootstrap over them (both heads scored on the same resampled cases, [`BOOTSTRAP_RESAMPLES`]
//!   resamples, a fixed seed so a decision can be reproduced) shows, at `confidence`, an
//!   improvement of the mean Dice over the labels by more than `min_local_gain` (the lower
//!   bound of the gain above it: a tie, or a gain that rests on one case, keeps the champion)
//!   and non-inferiority on every label (the lower bound of each label's change at least
//!   `-local_margin`: a gain on one label cannot pay for a loss on another); where both heads
//!   have a local AUROC, it is not lower than the champion's by more than `local_margin`.
//!   Held-out cases without any pixel label (study labels only) measure no Dice: the
//!   candidate must then beat the champion's AUROC by more than `min_local_gain`, and nothing
//!   else counts as better locally;
//! - on the reference validation set every label's Dice, and the AUROC where defined, is
//!   within `reference_margin` of the baseline's (a reference set without pixel labels
//!   cannot guard the Dice, and refuses). The caller chooses the baseline; the
//!   appliance passes the global head the federation shipped, so that a chain of accepted
//!   candidates cannot drift away from it margin by margin.
//!
//! The decision lists every condition that failed, so a refusal says why.

use crate::evaluate::{Overlap, Scores};
use radiant_core::rng::SplitMix64;
use serde::Serialize;

/// Resamples of the paired bootstrap.
pub const BOOTSTRAP_RESAMPLES: usize = 2000;
/// Its seed: the same scores always get the same decision.
const BOOTSTRAP_SEED: u64 = 0x6a7e_b007;

#[derive(Debug, Clone, PartialEq)]
pub struct GateConfig {
    /// The lower bound of the candidate's mean local Dice gain must exceed this.
    pub min_local_gain: f64,
    /// Largest drop allowed on the reference set (Dice per label, AUROC).
    pub reference_margin: f64,
    /// Held-out cases with pixel labels needed before any candidate can be accepted.
    pub min_holdout_cases: usize,
    /// Confidence of the one-sided bootstrap bounds (0.5 to 0.999).
    pub confidence: f64,
    /// Largest drop of one label's local Dice (its lower bound) and of the local AUROC.
    pub local_margin: f64,
}

impl Default for GateConfig {
    fn default() -> Self {
        GateConfig {
            min_local_gain: 0.0,
            reference_margin: 0.02,
            min_holdout_cases: 5,
            confidence: 0.95,
            local_margin: 0.02,
        }
    }
}

/// A paired bootstrap of candidate minus champion over the held-out cases.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Bootstrap {
    pub cases: usize,
    pub resamples: usize,
    pub confidence: f64,
    /// Mean Dice over the labels: the change on the cases as they are, and its lower bound.
    pub mean_change: f64,
    pub mean_lower: f64,
    /// Per label (index 0 is label 1): the change and its lower bound.
    pub label_changes: Vec<f64>,
    pub label_lowers: Vec<f64>,
}

fn pooled_dice(per_case: &[Vec<Overlap>], picks: &[usize], labels: usize) -> Vec<f64> {
    let mut pooled = vec![Overlap::default(); labels];
    for &c in picks {
        for (sum, o) in pooled.iter_mut().zip(&per_case[c]) {
            sum.add(o);
        }
    }
    pooled.iter().map(Overlap::dice).collect()
}

/// Candidate minus champion, per label and on the mean over labels, on the held-out cases
/// and on [`BOOTSTRAP_RESAMPLES`] resamples of them (the same resampled cases for both); the
/// lower bounds are the `1 - confidence` quantiles. `None` unless both list the same number
/// (at least one) of cases with the same labels.
pub fn paired_bootstrap(
    champion: &[Vec<Overlap>],
    candidate: &[Vec<Overlap>],
    confidence: f64,
) -> Option<Bootstrap> {
    let n = champion.len();
    let labels = champion.first()?.len();
    if n == 0
        || candidate.len() != n
        || labels == 0
        || champion.iter().chain(candidate).any(|c| c.len() != labels)
    {
        return None;
    }
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    let all: Vec<usize> = (0..n).collect();
    let (a, b) = (
        pooled_dice(champion, &all, labels),
        pooled_dice(candidate, &all, labels),
    );
    let label_changes: Vec<f64> = b.iter().zip(&a).map(|(b, a)| b - a).collect();
    let mean_change = mean(&b) - mean(&a);
    let mut rng = SplitMix64::new(BOOTSTRAP_SEED);
    let mut means = Vec::with_capacity(BOOTSTRAP_RESAMPLES);
    let mut per_label = vec![Vec::with_capacity(BOOTSTRAP_RESAMPLES); labels];
    let mut picks = vec![0; n];
    for _ in 0..BOOTSTRAP_RESAMPLES {
        picks.iter_mut().for_each(|p| *p = rng.below(n));
        let (a, b) = (
            pooled_dice(champion, &picks, labels),
            pooled_dice(candidate, &picks, labels),
        );
        means.push(mean(&b) - mean(&a));
        for (k, list) in per_label.iter_mut().enumerate() {
            list.push(b[k] - a[k]);
        }
    }
    let lower = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        let q = (1.0 - confidence).clamp(0.0, 1.0);
        v[((q * (v.len() - 1) as f64).floor() as usize).min(v.len() - 1)]
    };
    Some(Bootstrap {
        cases: n,
        resamples: BOOTSTRAP_RESAMPLES,
        confidence,
        mean_change,
        mean_lower: lower(&mut means),
        label_changes,
        label_lowers: per_label.iter_mut().map(lower).collect(),
    })
}

/// What the gate measured and decided.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Decision {
    pub accepted: bool,
    /// Every failed condition, in words; empty when accepted.
    pub reasons: Vec<String>,
    /// Did the local held-out cases measure Dice? `false`: none had pixel labels, the local
    /// comparison was on AUROC alone, and the local Dice fields are NaN.
    pub local_dice_measured: bool,
    /// Mean Dice over the labels on the local held-out cases.
    pub local_champion: f64,
    pub local_candidate: f64,
    /// Dice per label on the local held-out cases.
    pub local_champion_per_label: Vec<f64>,
    pub local_candidate_per_label: Vec<f64>,
    pub local_auroc_champion: Option<f64>,
    pub local_auroc_candidate: Option<f64>,
    /// Dice per label on the reference set.
    pub reference_baseline: Vec<f64>,
    pub reference_candidate: Vec<f64>,
    pub reference_auroc_baseline: Option<f64>,
    pub reference_auroc_candidate: Option<f64>,
    /// The paired bootstrap the local Dice conditions were decided on, when there was one.
    pub bootstrap: Option<Bootstrap>,
}

/// Mean Dice over the labels: what "better on local data" compares (NaN for scores that
/// measured no Dice).
pub fn mean_dice(scores: &Scores) -> f64 {
    if scores.dice.is_empty() {
        return 0.0;
    }
    scores.dice.iter().sum::<f64>() / scores.dice.len() as f64
}

/// Decide on a candidate from its scores and the champion's on the local held-out cases, and
/// its scores and the baseline's on the reference set.
pub fn decide(
    champion_local: &Scores,
    candidate_local: &Scores,
    baseline_reference: &Scores,
    candidate_reference: &Scores,
    config: &GateConfig,
) -> Decision {
    let mut reasons = Vec::new();
    let local = local_part(champion_local, candidate_local, config, &mut reasons);
    reference_conditions(
        baseline_reference,
        candidate_reference,
        config,
        &mut reasons,
    );
    local.into_decision(decision(reasons, baseline_reference, candidate_reference))
}

/// The gate for a model whose package ships no reference validation set (a contract-2
/// model): the local conditions of [`decide`] alone, on held-out cases that must carry pixel
/// labels (no study classifier there to fall back on).
pub fn decide_without_reference(
    champion_local: &Scores,
    candidate_local: &Scores,
    config: &GateConfig,
) -> Decision {
    let mut reasons = Vec::new();
    let local = local_part(champion_local, candidate_local, config, &mut reasons);
    if !local.dice_measured {
        reasons.clear();
        reasons.push(
            "no local held-out case has pixel labels: nothing shows the candidate is better"
                .to_string(),
        );
    }
    let none = Scores {
        segmentation_cases: 0,
        overlaps: Vec::new(),
        per_case: Vec::new(),
        dice: Vec::new(),
        study_probabilities: Vec::new(),
        auroc: None,
    };
    local.into_decision(decision(reasons, &none, &none))
}

/// What the local conditions found.
struct LocalPart {
    dice_measured: bool,
    champion: f64,
    candidate: f64,
    champion_per_label: Vec<f64>,
    candidate_per_label: Vec<f64>,
    auroc_champion: Option<f64>,
    auroc_candidate: Option<f64>,
    bootstrap: Option<Bootstrap>,
}

impl LocalPart {
    fn into_decision(self, base: Decision) -> Decision {
        Decision {
            local_dice_measured: self.dice_measured,
            local_champion: self.champion,
            local_candidate: self.candidate,
            local_champion_per_label: self.champion_per_label,
            local_candidate_per_label: self.candidate_per_label,
            local_auroc_champion: self.auroc_champion,
            local_auroc_candidate: self.auroc_candidate,
            bootstrap: self.bootstrap,
            ..base
        }
    }
}

/// The local conditions: on Dice (enough cases, the paired bootstrap) when both heads'
/// held-out scores measured it, else on the AUROC.
fn local_part(
    champion_local: &Scores,
    candidate_local: &Scores,
    config: &GateConfig,
    reasons: &mut Vec<String>,
) -> LocalPart {
    let (champion, candidate) = (mean_dice(champion_local), mean_dice(candidate_local));
    let dice_measured =
        champion_local.segmentation_cases > 0 && candidate_local.segmentation_cases > 0;
    let mut bootstrap = None;
    if dice_measured {
        bootstrap = local_dice_conditions(
            (champion, candidate),
            champion_local,
            candidate_local,
            config,
            reasons,
        );
    } else {
        match (champion_local.auroc, candidate_local.auroc) {
            // NaN never beats anything: it takes the refusing arm.
            (Some(before), Some(after)) if after > before + config.min_local_gain => {}
            (Some(before), Some(after)) => reasons.push(format!(
                "local held-out AUROC {after:.4} does not beat the champion's {before:.4} by \
                 more than {} (AUROC only: no local held-out case has pixel labels)",
                config.min_local_gain
            )),
            _ => reasons.push(
                "no local held-out case has pixel labels and the AUROC is undefined (both \
                 study outcomes are needed): nothing shows the candidate is better"
                    .to_string(),
            ),
        }
    }
    LocalPart {
        dice_measured,
        champion,
        candidate,
        champion_per_label: champion_local.dice.clone(),
        candidate_per_label: candidate_local.dice.clone(),
        auroc_champion: champion_local.auroc,
        auroc_candidate: candidate_local.auroc,
        bootstrap,
    }
}

/// A decision from its failed conditions and the reference scores, with no local figures.
fn decision(
    reasons: Vec<String>,
    baseline_reference: &Scores,
    candidate_reference: &Scores,
) -> Decision {
    Decision {
        accepted: reasons.is_empty(),
        reasons,
        local_dice_measured: false,
        local_champion: f64::NAN,
        local_candidate: f64::NAN,
        local_champion_per_label: Vec::new(),
        local_candidate_per_label: Vec::new(),
        local_auroc_champion: None,
        local_auroc_candidate: None,
        reference_baseline: baseline_reference.dice.clone(),
        reference_candidate: candidate_reference.dice.clone(),
        reference_auroc_baseline: baseline_reference.auroc,
        reference_auroc_candidate: candidate_reference.auroc,
        bootstrap: None,
    }
}

/// The gate for a signed federated global head at a site with no local held-out case: there
/// is nothing local to compare on, so only the reference-set conditions of [`decide`] apply.
/// Never used for a site's own fine-tunes (they always have held-out cases to beat).
pub fn decide_on_reference_only(
    baseline_reference: &Scores,
    candidate_reference: &Scores,
    config: &GateConfig,
) -> Decision {
    let mut reasons = Vec::new();
    reference_conditions(
        baseline_reference,
        candidate_reference,
        config,
        &mut reasons,
    );
    decision(reasons, baseline_reference, candidate_reference)
}

/// The reference-set conditions: same labels, every label's Dice and the AUROC at most the
/// margin below the baseline's, and a reference set that measures Dice at all.
fn reference_conditions(
    baseline_reference: &Scores,
    candidate_reference: &Scores,
    config: &GateConfig,
    reasons: &mut Vec<String>,
) {
    if baseline_reference.dice.len() != candidate_reference.dice.len() {
        reasons.push(format!(
            "reference scores for {} labels, the baseline has {}",
            candidate_reference.dice.len(),
            baseline_reference.dice.len()
        ));
    }
    if baseline_reference.segmentation_cases == 0 || candidate_reference.segmentation_cases == 0 {
        reasons.push(
            "the reference set has no case with pixel labels: it cannot guard the Dice".to_string(),
        );
    } else {
        for (label, (before, after)) in baseline_reference
            .dice
            .iter()
            .zip(&candidate_reference.dice)
            .enumerate()
        {
            if !(*after >= before - config.reference_margin) {
                reasons.push(format!(
                    "reference Dice of label {} fell from {before:.4} to {after:.4}, more than \
                     the margin {}",
                    label + 1,
                    config.reference_margin
                ));
            }
        }
    }
    if let (Some(before), Some(after)) = (baseline_reference.auroc, candidate_reference.auroc) {
        if !(after >= before - config.reference_margin) {
            reasons.push(format!(
                "reference AUROC fell from {before:.4} to {after:.4}, more than the margin {}",
                config.reference_margin
            ));
        }
    }
}

/// The local conditions when both heads' held-out scores measured Dice (`champion` and
/// `candidate` their means): enough cases, then the paired bootstrap's lower bounds; the
/// bootstrap, when the scores pair.
fn local_dice_conditions(
    (champion, candidate): (f64, f64),
    champion_local: &Scores,
    candidate_local: &Scores,
    config: &GateConfig,
    reasons: &mut Vec<String>,
) -> Option<Bootstrap> {
    let cases = candidate_local.segmentation_cases;
    if cases < config.min_holdout_cases {
        reasons.push(format!(
            "{cases} local held-out cases with pixel labels; at least {} are needed before a \
             head can replace the champion",
            config.min_holdout_cases
        ));
    }
    let paired = champion_local.per_case.len() == champion_local.segmentation_cases
        && candidate_local.per_case.len() == cases
        && champion_local.segmentation_cases == cases;
    let bootstrap = if paired {
        paired_bootstrap(
            &champion_local.per_case,
            &candidate_local.per_case,
            config.confidence,
        )
    } else {
        None
    };
    let confidence = config.confidence;
    match &bootstrap {
        None => reasons.push(
            "the local held-out scores do not pair case by case: no bootstrap, no decision"
                .to_string(),
        ),
        Some(b) => {
            // NaN never passes: the comparisons are written to fail on it.
            if !(b.mean_lower > config.min_local_gain) {
                reasons.push(format!(
                    "local held-out mean Dice {candidate:.4} does not beat the champion's \
                     {champion:.4} with {confidence} confidence: the lower bound of the gain is \
                     {:+.4}, not above {} (paired bootstrap over {} cases)",
                    b.mean_lower, config.min_local_gain, b.cases
                ));
            }
            for (label, (change, lower)) in b.label_changes.iter().zip(&b.label_lowers).enumerate()
            {
                if !(*lower >= -config.local_margin) {
                    reasons.push(format!(
                        "local held-out Dice of label {} changed by {change:+.4}; its lower bound \
                         at {confidence} confidence is {lower:+.4}, below -{} (paired bootstrap \
                         over {} cases)",
                        label + 1,
                        config.local_margin,
                        b.cases
                    ));
                }
            }
        }
    }
    if let (Some(before), Some(after)) = (champion_local.auroc, candidate_local.auroc) {
        if !(after >= before - config.local_margin) {
            reasons.push(format!(
                "local held-out AUROC {after:.4} is below the champion's {before:.4} by more \
                 than {}",
                config.local_margin
            ));
        }
    }
    bootstrap
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::evaluate::Overlap;

    /// Scores on held-out cases whose Dice per label are given case by case (overlaps of a
    /// million pixels each).
    fn cases(per_case_dice: &[&[f64]], auroc: Option<f64>) -> Scores {
        let per_case: Vec<Vec<Overlap>> = per_case_dice
            .iter()
            .map(|d| {
                d.iter()
                    .map(|d| Overlap {
                        intersection: (d * 1e6).round() as u64,
                        predicted: 1_000_000,
                        reference: 1_000_000,
                    })
                    .collect()
            })
            .collect();
        let labels = per_case.first().map_or(0, Vec::len);
        let mut overlaps = vec![Overlap::default(); labels];
        for case in &per_case {
            for (sum, o) in overlaps.iter_mut().zip(case) {
                sum.add(o);
            }
        }
        Scores {
            segmentation_cases: per_case.len(),
            dice: overlaps.iter().map(Overlap::dice).collect(),
            overlaps,
            per_case,
            study_probabilities: Vec::new(),
            auroc,
        }
    }

    /// One case.
    fn scores(dice: &[f64], auroc: Option<f64>) -> Scores {
        cases(&[dice], auroc)
    }

    /// The default gate, except that one held-out case is enough.
    fn one_case() -> GateConfig {
        GateConfig {
            min_holdout_cases: 1,
            ..GateConfig::default()
        }
    }

    #[test]
    fn without_local_cases_only_the_reference_set_decides() {
        let config = GateConfig::default();
        let base = scores(&[0.98, 0.93], Some(1.0));
        let d = decide_on_reference_only(&base, &scores(&[0.975, 0.92], Some(0.99)), &config);
        assert!(d.accepted, "{:?}", d.reasons);
        assert!(!d.local_dice_measured);
        let d = decide_on_reference_only(&base, &scores(&[0.98, 0.90], Some(1.0)), &config);
        assert!(!d.accepted);
        assert!(
            d.reasons[0].contains("reference Dice of label 2"),
            "{:?}",
            d.reasons
        );
        let d = decide_on_reference_only(&base, &scores(&[0.98, 0.93], Some(0.9)), &config);
        assert!(!d.accepted);
        assert!(d.reasons[0].contains("reference AUROC"), "{:?}", d.reasons);
    }

    #[test]
    fn a_candidate_better_locally_and_within_the_margin_on_the_reference_set_is_accepted() {
        let d = decide(
            &scores(&[0.9, 0.3], None),
            &scores(&[0.9, 0.6], None),
            &scores(&[0.98, 0.88], Some(0.95)),
            &scores(&[0.975, 0.87], Some(0.94)),
            &one_case(),
        );
        assert!(d.accepted, "{:?}", d.reasons);
        assert!((d.local_candidate - 0.75).abs() < 1e-12);
    }

    #[test]
    fn a_tie_a_local_loss_or_forgetting_the_reference_set_is_refused_with_each_reason() {
        let c = one_case();
        let tie = decide(
            &scores(&[0.9, 0.5], None),
            &scores(&[0.9, 0.5], None),
            &scores(&[0.9, 0.8], None),
            &scores(&[0.9, 0.8], None),
            &c,
        );
        assert!(!tie.accepted);
        assert_eq!(tie.reasons.len(), 1, "{:?}", tie.reasons);
        assert!(
            tie.reasons[0].contains("does not beat"),
            "{:?}",
            tie.reasons
        );

        // Better locally, but label 2 and the AUROC fell on the reference set.
        let forgot = decide(
            &scores(&[0.9, 0.3], None),
            &scores(&[0.9, 0.7], None),
            &scores(&[0.98, 0.88], Some(0.95)),
            &scores(&[0.97, 0.80], Some(0.90)),
            &c,
        );
        assert!(!forgot.accepted);
        assert_eq!(forgot.reasons.len(), 2, "{:?}", forgot.reasons);
        assert!(
            forgot.reasons[0].contains("label 2"),
            "{:?}",
            forgot.reasons
        );
        assert!(forgot.reasons[1].contains("AUROC"), "{:?}", forgot.reasons);

        // A better mean bought with a loss on one label.
        let traded = decide(
            &scores(&[0.95, 0.40], None),
            &scores(&[0.90, 0.60], None),
            &scores(&[0.9, 0.8], None),
            &scores(&[0.9, 0.8], None),
            &c,
        );
        assert!(!traded.accepted);
        assert_eq!(traded.reasons.len(), 1, "{:?}", traded.reasons);
        assert!(
            traded.reasons[0].contains("local held-out Dice of label 1"),
            "{:?}",
            traded.reasons
        );

        // A gain that is not larger than the configured minimum.
        let small = decide(
            &scores(&[0.5], None),
            &scores(&[0.505], None),
            &scores(&[0.5], None),
            &scores(&[0.5], None),
            &GateConfig {
                min_local_gain: 0.01,
                ..c.clone()
            },
        );
        assert!(!small.accepted);

        // NaN scores never pass.
        let nan = decide(
            &scores(&[0.5], None),
            &Scores {
                dice: vec![f64::NAN],
                per_case: Vec::new(),
                ..scores(&[0.5], None)
            },
            &scores(&[0.5], None),
            &scores(&[0.5], None),
            &c,
        );
        assert!(!nan.accepted);
    }

    /// Held-out scores of a set without pixel labels, as `evaluate::score` gives them.
    fn study_only(auroc: Option<f64>) -> Scores {
        Scores {
            segmentation_cases: 0,
            dice: vec![f64::NAN, f64::NAN],
            per_case: Vec::new(),
            ..scores(&[0.0, 0.0], auroc)
        }
    }

    #[test]
    fn held_out_cases_without_pixel_labels_are_compared_on_auroc_alone() {
        let c = one_case();
        let reference = scores(&[0.9, 0.8], Some(0.9));
        let decide_local = |champion: &Scores, candidate: &Scores| {
            decide(champion, candidate, &reference, &reference, &c)
        };
        // Dice a stale pooling would have called perfect cannot buy acceptance.
        let perfect_looking = Scores {
            segmentation_cases: 0,
            ..scores(&[1.0, 1.0], Some(0.80))
        };
        let d = decide_local(&study_only(Some(0.85)), &perfect_looking);
        assert!(!d.accepted);
        assert!(!d.local_dice_measured);
        assert_eq!(d.reasons.len(), 1, "{:?}", d.reasons);
        assert!(d.reasons[0].contains("AUROC only"), "{:?}", d.reasons);

        // A better AUROC is what counts; the NaN Dice fails no condition.
        let d = decide_local(&study_only(Some(0.80)), &study_only(Some(0.85)));
        assert!(d.accepted, "{:?}", d.reasons);
        assert!(d.local_candidate.is_nan());

        // A tie keeps the champion, as with Dice.
        assert!(!decide_local(&study_only(Some(0.8)), &study_only(Some(0.8))).accepted);

        // Neither Dice nor AUROC: nothing to compare, refused.
        let d = decide_local(&study_only(None), &study_only(None));
        assert!(!d.accepted);
        assert!(d.reasons[0].contains("nothing shows"), "{:?}", d.reasons);

        // A reference set without pixel labels cannot guard the Dice.
        let d = decide(
            &scores(&[0.5], None),
            &scores(&[0.6], None),
            &study_only(Some(0.9)),
            &study_only(Some(0.9)),
            &c,
        );
        assert!(!d.accepted);
        assert_eq!(d.reasons.len(), 1, "{:?}", d.reasons);
        assert!(d.reasons[0].contains("reference set"), "{:?}", d.reasons);
    }

    #[test]
    fn fewer_held_out_cases_than_the_minimum_accept_nothing() {
        let better: Vec<&[f64]> = vec![&[0.9, 0.8]; 4];
        let worse: Vec<&[f64]> = vec![&[0.9, 0.5]; 4];
        let reference = scores(&[0.9, 0.8], None);
        let d = decide(
            &cases(&worse, None),
            &cases(&better, None),
            &reference,
            &reference,
            &GateConfig::default(),
        );
        assert!(!d.accepted);
        assert!(
            d.reasons[0].contains("4 local held-out cases with pixel labels; at least 5"),
            "{:?}",
            d.reasons
        );
        // The same gain on five cases is accepted.
        let better: Vec<&[f64]> = vec![&[0.9, 0.8]; 5];
        let worse: Vec<&[f64]> = vec![&[0.9, 0.5]; 5];
        let d = decide(
            &cases(&worse, None),
            &cases(&better, None),
            &reference,
            &reference,
            &GateConfig::default(),
        );
        assert!(d.accepted, "{:?}", d.reasons);
        let b = d.bootstrap.expect("figures");
        assert_eq!((b.cases, b.resamples), (5, BOOTSTRAP_RESAMPLES));
        assert!((b.mean_change - 0.15).abs() < 1e-9 && (b.mean_lower - 0.15).abs() < 1e-9);
    }

    #[test]
    fn a_gain_that_rests_on_one_case_or_on_noise_is_refused_and_a_steady_one_accepted() {
        let reference = scores(&[0.9, 0.8], None);
        let gate = |champion: &[&[f64]], candidate: &[&[f64]]| {
            decide(
                &cases(champion, None),
                &cases(candidate, None),
                &reference,
                &reference,
                &GateConfig::default(),
            )
        };
        // Equal on seven cases, far better on one (a mislabelled case, say): the mean rises
        // by 0.05, but a resample without that case shows no gain.
        let mut champion: Vec<&[f64]> = vec![&[0.9, 0.6]; 8];
        let mut candidate = champion.clone();
        candidate[3] = &[0.9, 1.0];
        champion[3] = &[0.9, 0.2];
        let d = gate(&champion, &candidate);
        assert!(!d.accepted);
        assert!(d.reasons[0].contains("does not beat"), "{:?}", d.reasons);
        let b = d.bootstrap.unwrap();
        assert!(b.mean_change > 0.04 && b.mean_lower <= 0.0, "{b:?}");

        // Better on half the cases, worse on the other half, a small gain on the mean.
        let up: &[f64] = &[0.9, 0.8];
        let down: &[f64] = &[0.9, 0.5];
        let champion: Vec<&[f64]> = (0..10)
            .map(|i| if i % 2 == 0 { down } else { up })
            .collect();
        let candidate: Vec<&[f64]> = (0..10)
            .map(|i| {
                if i % 2 == 0 {
                    &[0.9, 0.82][..]
                } else {
                    &[0.9, 0.5][..]
                }
            })
            .collect();
        assert!(!gate(&champion, &candidate).accepted);

        // The same small gain on every case.
        let champion: Vec<&[f64]> = vec![&[0.9, 0.6]; 10];
        let candidate: Vec<&[f64]> = vec![&[0.9, 0.62]; 10];
        let d = gate(&champion, &candidate);
        assert!(d.accepted, "{:?}", d.reasons);

        // A gain on one label paid for by a steady loss on the other: non-inferiority fails.
        let champion: Vec<&[f64]> = vec![&[0.9, 0.6]; 10];
        let candidate: Vec<&[f64]> = vec![&[0.85, 0.75]; 10];
        let d = gate(&champion, &candidate);
        assert!(!d.accepted);
        assert!(
            d.reasons[0].contains("local held-out Dice of label 1"),
            "{:?}",
            d.reasons
        );
    }

    #[test]
    fn the_bootstrap_is_reproducible_and_refuses_unpaired_scores() {
        let a: Vec<Vec<Overlap>> = (0..7)
            .map(|i| {
                vec![Overlap {
                    intersection: 50 + i,
                    predicted: 100,
                    reference: 100,
                }]
            })
            .collect();
        let b: Vec<Vec<Overlap>> = a
            .iter()
            .map(|c| {
                vec![Overlap {
                    intersection: c[0].intersection + 3,
                    ..c[0]
                }]
            })
            .collect();
        assert_eq!(
            paired_bootstrap(&a, &b, 0.95),
            paired_bootstrap(&a, &b, 0.95)
        );
        assert!(paired_bootstrap(&a, &b[..6], 0.95).is_none());
        assert!(paired_bootstrap(&[], &[], 0.95).is_none());
    }
}
