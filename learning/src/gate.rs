//! The validation gate (champion/challenger): whether a fine-tuned candidate head may replace
//! the champion. Learning must never make the model worse, so a candidate is accepted only if
//! - on the site's held-out cases its mean Dice over the labels beats the champion's by more
//!   than `min_local_gain` (strictly better: a tie keeps the champion), no label's Dice and,
//!   where both heads have one, not the AUROC is lower than the champion's by more than
//!   `reference_margin` (a gain on one label cannot pay for a loss on another). Held-out
//!   cases without any pixel label (study labels only) measure no Dice: the candidate must
//!   then beat the champion's AUROC by more than `min_local_gain`, and nothing else counts
//!   as better locally;
//! - on the reference validation set every label's Dice, and the AUROC where defined, is
//!   within `reference_margin` of the baseline's (a reference set without pixel labels
//!   cannot guard the Dice, and refuses). The caller chooses the baseline; the
//!   appliance passes the global head the federation shipped, so that a chain of accepted
//!   candidates cannot drift away from it margin by margin.
//!
//! The decision lists every condition that failed, so a refusal says why.

use crate::evaluate::Scores;
use serde::Serialize;

#[derive(Debug, Clone, PartialEq)]
pub struct GateConfig {
    /// The candidate's mean local Dice must exceed the champion's by more than this.
    pub min_local_gain: f64,
    /// Largest drop allowed on the reference set (Dice per label, AUROC).
    pub reference_margin: f64,
}

impl Default for GateConfig {
    fn default() -> Self {
        GateConfig {
            min_local_gain: 0.0,
            reference_margin: 0.02,
        }
    }
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
    let (champion, candidate) = (mean_dice(champion_local), mean_dice(candidate_local));
    let local_dice_measured =
        champion_local.segmentation_cases > 0 && candidate_local.segmentation_cases > 0;
    if local_dice_measured {
        local_dice_conditions(
            (champion, candidate),
            champion_local,
            candidate_local,
            config,
            &mut reasons,
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
    reference_conditions(
        baseline_reference,
        candidate_reference,
        config,
        &mut reasons,
    );
    Decision {
        accepted: reasons.is_empty(),
        reasons,
        local_dice_measured,
        local_champion: champion,
        local_candidate: candidate,
        local_champion_per_label: champion_local.dice.clone(),
        local_candidate_per_label: candidate_local.dice.clone(),
        local_auroc_champion: champion_local.auroc,
        local_auroc_candidate: candidate_local.auroc,
        reference_baseline: baseline_reference.dice.clone(),
        reference_candidate: candidate_reference.dice.clone(),
        reference_auroc_baseline: baseline_reference.auroc,
        reference_auroc_candidate: candidate_reference.auroc,
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
    }
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
/// `candidate` their means): a mean gain, no label's Dice and not the AUROC lower by more
/// than the margin.
fn local_dice_conditions(
    (champion, candidate): (f64, f64),
    champion_local: &Scores,
    candidate_local: &Scores,
    config: &GateConfig,
    reasons: &mut Vec<String>,
) {
    if !(candidate > champion + config.min_local_gain) {
        reasons.push(format!(
            "local held-out mean Dice {candidate:.4} does not beat the champion's {champion:.4} \
             by more than {}",
            config.min_local_gain
        ));
    }
    for (label, (before, after)) in champion_local
        .dice
        .iter()
        .zip(&candidate_local.dice)
        .enumerate()
    {
        if !(*after >= before - config.reference_margin) {
            reasons.push(format!(
                "local held-out Dice of label {} fell from {before:.4} to {after:.4}, more \
                 than the margin {}",
                label + 1,
                config.reference_margin
            ));
        }
    }
    if let (Some(before), Some(after)) = (champion_local.auroc, candidate_local.auroc) {
        if !(after >= before - config.reference_margin) {
            reasons.push(format!(
                "local held-out AUROC {after:.4} is below the champion's {before:.4} by more \
                 than {}",
                config.reference_margin
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scores(dice: &[f64], auroc: Option<f64>) -> Scores {
        Scores {
            segmentation_cases: 1,
            overlaps: Vec::new(),
            dice: dice.to_vec(),
            study_probabilities: Vec::new(),
            auroc,
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
            &GateConfig::default(),
        );
        assert!(d.accepted, "{:?}", d.reasons);
        assert!((d.local_candidate - 0.75).abs() < 1e-12);
    }

    #[test]
    fn a_tie_a_local_loss_or_forgetting_the_reference_set_is_refused_with_each_reason() {
        let c = GateConfig::default();
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
            &scores(&[f64::NAN], None),
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
            ..scores(&[f64::NAN, f64::NAN], auroc)
        }
    }

    #[test]
    fn held_out_cases_without_pixel_labels_are_compared_on_auroc_alone() {
        let c = GateConfig::default();
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
}
