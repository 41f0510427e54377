//! Metrics for heads on labelled cases: Dice per label on model-grid label maps, AUROC of
//! study-level probabilities, and [`score`], which runs a head over cases exactly as inference
//! does (argmax labels, maximum last-label probability, last-label volume, study probability).
//! Dice counts only the cases with pixel labels, AUROC every case with a study label; a set
//! without any pixel label has no Dice (NaN, never a perfect 1).

use crate::case::Case;
use models::head::Head;
use thiserror::Error;

#[derive(Debug, Error, PartialEq)]
pub enum EvalError {
    #[error("{predicted} predicted labels against {reference} reference labels")]
    LengthMismatch { predicted: usize, reference: usize },
    #[error("AUROC is undefined with {positives} positive and {negatives} negative cases")]
    OneClass { positives: usize, negatives: usize },
    #[error("score {index} is not finite ({value})")]
    NonFinite { index: usize, value: f64 },
    #[error("case {index} ({id}): {reason}")]
    Case {
        index: usize,
        id: String,
        reason: String,
    },
}

/// Pixel counts behind one label's Dice; sums over cases give the pooled Dice.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Overlap {
    pub intersection: u64,
    pub predicted: u64,
    pub reference: u64,
}

impl Overlap {
    /// `2 |P ∩ R| / (|P| + |R|)`; 1 when both are empty (nothing to find, nothing found).
    pub fn dice(&self) -> f64 {
        let denominator = self.predicted + self.reference;
        if denominator == 0 {
            1.0
        } else {
            2.0 * self.intersection as f64 / denominator as f64
        }
    }

    pub fn add(&mut self, other: &Overlap) {
        self.intersection += other.intersection;
        self.predicted += other.predicted;
        self.reference += other.reference;
    }
}

/// Overlap of every label `1..classes` (index 0 is label 1) between two label maps of the same
/// grid. Labels at or above `classes` count for no label.
pub fn overlaps(
    predicted: &[u8],
    reference: &[u8],
    classes: usize,
) -> Result<Vec<Overlap>, EvalError> {
    if predicted.len() != reference.len() {
        return Err(EvalError::LengthMismatch {
            predicted: predicted.len(),
            reference: reference.len(),
        });
    }
    let labels = classes.saturating_sub(1);
    let mut out = vec![Overlap::default(); labels];
    let slot = |label: u8| usize::from(label).checked_sub(1).filter(|i| *i < labels);
    for (p, r) in predicted.iter().zip(reference) {
        let (sp, sr) = (slot(*p), slot(*r));
        if let Some(i) = sp {
            out[i].predicted += 1;
        }
        if let Some(i) = sr {
            out[i].reference += 1;
            if sp == Some(i) {
                out[i].intersection += 1;
            }
        }
    }
    Ok(out)
}

/// Dice of every label `1..classes` (index 0 is label 1).
pub fn dice_per_label(
    predicted: &[u8],
    reference: &[u8],
    classes: usize,
) -> Result<Vec<f64>, EvalError> {
    Ok(overlaps(predicted, reference, classes)?
        .iter()
        .map(Overlap::dice)
        .collect())
}

/// Area under the ROC curve of `scores` for the cases marked `positive`: the probability that
/// a random positive scores above a random negative, ties counting one half (Mann-Whitney U
/// with mid-ranks).
pub fn auroc(scores: &[f64], positive: &[bool]) -> Result<f64, EvalError> {
    if scores.len() != positive.len() {
        return Err(EvalError::LengthMismatch {
            predicted: scores.len(),
            reference: positive.len(),
        });
    }
    if let Some((index, value)) = scores.iter().enumerate().find(|(_, s)| !s.is_finite()) {
        return Err(EvalError::NonFinite {
            index,
            value: *value,
        });
    }
    let positives = positive.iter().filter(|p| **p).count();
    let negatives = positive.len() - positives;
    if positives == 0 || negatives == 0 {
        return Err(EvalError::OneClass {
            positives,
            negatives,
        });
    }
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|a, b| scores[*a].total_cmp(&scores[*b]));
    // Sum of the (1-based, mid-) ranks of the positives.
    let mut rank_sum = 0f64;
    let mut i = 0;
    while i < order.len() {
        let mut j = i + 1;
        while j < order.len() && scores[order[j]] == scores[order[i]] {
            j += 1;
        }
        let mid_rank = (i + 1 + j) as f64 / 2.0;
        rank_sum += mid_rank * order[i..j].iter().filter(|k| positive[**k]).count() as f64;
        i = j;
    }
    let (p, n) = (positives as f64, negatives as f64);
    Ok((rank_sum - p * (p + 1.0) / 2.0) / (p * n))
}

/// What the study classifier sees of a case, computed as inference computes it.
#[derive(Debug, Clone, PartialEq)]
pub struct StudyInputs {
    /// Argmax label of every pixel `[slices, plane]`.
    pub labels: Vec<u8>,
    /// Largest probability of the last label over all pixels.
    pub max_probability: f32,
    /// Pixels labelled with the last label times the pixel volume.
    pub ml: f64,
}

/// Run `head` over a case (which must fit it: [`Case::check`]) like `infer::run` does.
pub fn study_inputs(head: &Head, case: &Case) -> StudyInputs {
    let classes = head.classes;
    let last = classes - 1;
    let mut labels = Vec::with_capacity(case.slices * case.plane);
    let mut max_probability = 0f32;
    let per_slice = head.features * case.plane;
    for z in 0..case.slices {
        let features = &case.features[z * per_slice..(z + 1) * per_slice];
        let probs = head.probabilities(features, 1, case.plane);
        for p in probs.chunks_exact(classes) {
            // The same argmax as infer::run: the first maximum wins.
            let (arg, _) =
                p.iter().enumerate().fold(
                    (0, f32::MIN),
                    |best, (c, v)| if *v > best.1 { (c, *v) } else { best },
                );
            labels.push(arg as u8);
            max_probability = max_probability.max(p[last]);
        }
    }
    let count = labels.iter().filter(|l| usize::from(**l) == last).count();
    StudyInputs {
        labels,
        max_probability,
        ml: count as f64 * case.pixel_ml,
    }
}

/// A head's scores on a set of cases.
#[derive(Debug, Clone, PartialEq)]
pub struct Scores {
    /// Cases with pixel labels: those the overlaps and Dice are pooled over.
    pub segmentation_cases: usize,
    /// Pooled over the cases with pixel labels, per label `1..classes` (index 0 is label 1).
    pub overlaps: Vec<Overlap>,
    /// The same per case with pixel labels, in case order: what a paired bootstrap over the
    /// cases resamples.
    pub per_case: Vec<Vec<Overlap>>,
    /// Dice of each pooled overlap; NaN for every label when `segmentation_cases` is 0 (no
    /// Dice was measured, and an empty overlap's 1 would pretend a perfect score).
    pub dice: Vec<f64>,
    /// Study-level probability of every case, in case order; empty for a model without a
    /// study classifier.
    pub study_probabilities: Vec<f64>,
    /// AUROC over the cases with a study label; `None` unless both outcomes occur.
    pub auroc: Option<f64>,
}

/// What a head makes of one case.
#[derive(Debug, Clone, PartialEq)]
pub struct CaseScore {
    /// Overlap of every label; `None` for a case without pixel labels.
    pub overlaps: Option<Vec<Overlap>>,
    /// The study-level probability and the case's study label; `None` for a model without a
    /// study classifier.
    pub study: Option<(f64, Option<bool>)>,
}

/// Score `head` on one whole case (which must fit it, and not be a sample of a grid: Dice and
/// the study inputs are decided over every pixel).
pub fn score_case(head: &Head, case: &Case) -> Result<CaseScore, String> {
    case.check(head.features, head.classes)?;
    if case.class_counts.is_some() {
        return Err("it keeps a sample of its grid; scoring needs every pixel".into());
    }
    let inputs = study_inputs(head, case);
    let overlaps = if case.has_pixel_labels() {
        Some(overlaps(&inputs.labels, &case.labels, head.classes).map_err(|e| e.to_string())?)
    } else {
        None
    };
    let p = head.classify(inputs.max_probability, inputs.ml);
    Ok(CaseScore {
        overlaps,
        study: Some((p, case.finding)),
    })
}

/// A head's scores from its scores on each case ([`score_case`], or overlaps measured on a
/// contract-2 model's grid): Dice per label `1..=labels` pooled over the cases with pixel
/// labels, AUROC of the study probability over the cases with a study label.
pub fn scores_of(cases: Vec<CaseScore>, labels: usize) -> Result<Scores, EvalError> {
    let mut pooled = vec![Overlap::default(); labels];
    let mut per_case = Vec::new();
    let mut study_probabilities = Vec::new();
    let (mut scores, mut positive) = (Vec::new(), Vec::new());
    for case in cases {
        if let Some(case_overlaps) = case.overlaps {
            if case_overlaps.len() != labels {
                return Err(EvalError::LengthMismatch {
                    predicted: case_overlaps.len(),
                    reference: labels,
                });
            }
            for (sum, o) in pooled.iter_mut().zip(&case_overlaps) {
                sum.add(o);
            }
            per_case.push(case_overlaps);
        }
        if let Some((p, finding)) = case.study {
            study_probabilities.push(p);
            if let Some(finding) = finding {
                scores.push(p);
                positive.push(finding);
            }
        }
    }
    let auroc = match auroc(&scores, &positive) {
        Ok(a) => Some(a),
        Err(EvalError::OneClass { .. }) => None,
        Err(e) => return Err(e),
    };
    let dice = if per_case.is_empty() {
        vec![f64::NAN; labels]
    } else {
        pooled.iter().map(Overlap::dice).collect()
    };
    Ok(Scores {
        segmentation_cases: per_case.len(),
        dice,
        overlaps: pooled,
        per_case,
        study_probabilities,
        auroc,
    })
}

/// Score `head` on `cases` (all whole): Dice per label pooled over the cases with pixel
/// labels, and AUROC of the study probability over the cases with a study label.
pub fn score(head: &Head, cases: &[Case]) -> Result<Scores, EvalError> {
    let per_case = cases
        .iter()
        .enumerate()
        .map(|(index, case)| {
            score_case(head, case).map_err(|reason| EvalError::Case {
                index,
                id: case.id.clone(),
                reason,
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    scores_of(per_case, head.classes.saturating_sub(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dice_per_label_matches_hand_counts() {
        // label 1: predicted {0,1,2}, reference {1,2,3}: 2*2/(3+3) = 2/3.
        // label 2: predicted {4}, reference {4,5}: 2*1/(1+2) = 2/3.
        // label 3 (classes 4): absent from both: 1.
        let predicted = [1, 1, 1, 0, 2, 0, 0];
        let reference = [0, 1, 1, 1, 2, 2, 0];
        let d = dice_per_label(&predicted, &reference, 4).unwrap();
        assert_eq!(d.len(), 3);
        assert!((d[0] - 2.0 / 3.0).abs() < 1e-12, "{d:?}");
        assert!((d[1] - 2.0 / 3.0).abs() < 1e-12, "{d:?}");
        assert_eq!(d[2], 1.0);
        // Found nothing where there was something: 0.
        assert_eq!(dice_per_label(&[0, 0], &[1, 1], 2).unwrap(), vec![0.0]);
    }

    #[test]
    fn pooled_dice_sums_counts_not_ratios() {
        let mut sum = Overlap::default();
        // Case A: perfect on 1 pixel; case B: 0 of 9. Pooled 2*1/(1+10), not mean(1, 0).
        sum.add(&overlaps(&[1], &[1], 2).unwrap()[0]);
        sum.add(&overlaps(&[0; 9], &[1; 9], 2).unwrap()[0]);
        assert!((sum.dice() - 2.0 / 11.0).abs() < 1e-12);
    }

    #[test]
    fn label_maps_of_different_lengths_are_refused() {
        assert_eq!(
            dice_per_label(&[0, 1], &[0], 2),
            Err(EvalError::LengthMismatch {
                predicted: 2,
                reference: 1
            })
        );
    }

    #[test]
    fn auroc_matches_hand_computed_pairs_with_ties_counted_half() {
        // Positives 0.8, 0.4; negatives 0.4, 0.1, 0.6.
        // Pairs: 0.8 beats all 3; 0.4 ties 0.4 (1/2), beats 0.1, loses to 0.6: (3 + 1.5) / 6.
        let a = auroc(
            &[0.8, 0.4, 0.4, 0.1, 0.6],
            &[true, true, false, false, false],
        )
        .unwrap();
        assert!((a - 0.75).abs() < 1e-12, "{a}");
        assert_eq!(auroc(&[0.9, 0.1], &[true, false]).unwrap(), 1.0);
        assert_eq!(auroc(&[0.1, 0.9], &[true, false]).unwrap(), 0.0);
        // All tied: chance.
        assert_eq!(auroc(&[0.5; 4], &[true, false, true, false]).unwrap(), 0.5);
    }

    #[test]
    fn auroc_is_undefined_for_one_class_or_non_finite_scores() {
        assert_eq!(
            auroc(&[0.1, 0.2], &[true, true]),
            Err(EvalError::OneClass {
                positives: 2,
                negatives: 0
            })
        );
        assert!(matches!(
            auroc(&[f64::NAN, 0.2], &[true, false]),
            Err(EvalError::NonFinite { index: 0, .. })
        ));
        assert!(matches!(
            auroc(&[0.1], &[true, false]),
            Err(EvalError::LengthMismatch { .. })
        ));
    }
}
