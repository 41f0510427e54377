//! Intensity steps on a stage's resized input, in the order the manifest lists them. Floats
//! follow the reference implementations: statistics accumulate in f64 and are applied in f32,
//! percentiles interpolate linearly (NumPy's and PyTorch's default), standard deviations
//! divide by N − 1 (PyTorch's `std`).

use super::manifest::IntensityStep;
use crate::InferError;
use std::collections::HashMap;

/// The percentile windows computed so far, by stage name, for steps that reuse one.
pub type Windows = HashMap<String, (f32, f32)>;

/// Apply `steps` to `values` in place. A percentile window computed here is recorded under
/// `stage` in `windows`; one with `from` reads the named stage's window instead.
pub fn apply(
    values: &mut [f32],
    steps: &[IntensityStep],
    stage: &str,
    windows: &mut Windows,
) -> Result<(), InferError> {
    for step in steps {
        match step {
            IntensityStep::Window { center, width } => {
                let low = center - width / 2.0;
                values
                    .iter_mut()
                    .for_each(|v| *v = ((*v - low) / width).clamp(0.0, 1.0));
            }
            IntensityStep::Clip { min, max } => {
                values.iter_mut().for_each(|v| *v = v.clamp(*min, *max));
            }
            IntensityStep::PercentileWindow { low, high, from } => {
                let (p_low, p_high) = match from {
                    Some(name) => *windows.get(name).ok_or_else(|| {
                        InferError::Backend(format!(
                            "stage {stage}: no percentile window was computed in stage {name}"
                        ))
                    })?,
                    None => {
                        let window = percentiles(values, *low, *high);
                        windows.insert(stage.to_string(), window);
                        window
                    }
                };
                let range = p_high - p_low;
                if range.is_finite() && range > 0.0 {
                    values
                        .iter_mut()
                        .for_each(|v| *v = ((*v - p_low) / range).clamp(0.0, 1.0));
                } else {
                    // A constant image: everything at the low end.
                    values.iter_mut().for_each(|v| *v = 0.0);
                }
            }
            IntensityStep::Zscore {} => {
                let n = values.len() as f64;
                let mean = values.iter().map(|v| *v as f64).sum::<f64>() / n;
                let var = values
                    .iter()
                    .map(|v| (*v as f64 - mean).powi(2))
                    .sum::<f64>()
                    / (n - 1.0).max(1.0);
                let (mean, std) = (mean as f32, var.sqrt() as f32);
                if std > 0.0 && std.is_finite() {
                    values.iter_mut().for_each(|v| *v = (*v - mean) / std);
                } else {
                    values.iter_mut().for_each(|v| *v -= mean);
                }
            }
            IntensityStep::Standardise { mean, std } => {
                values.iter_mut().for_each(|v| *v = (*v - mean) / std);
            }
            IntensityStep::Affine { factor, offset } => {
                values.iter_mut().for_each(|v| *v = factor * *v + offset);
            }
        }
    }
    Ok(())
}

/// Percentiles `low` and `high` (0 to 100) of `values`, linear between order statistics.
pub fn percentiles(values: &[f32], low: f64, high: f64) -> (f32, f32) {
    let mut sorted: Vec<f32> = values.to_vec();
    sorted.sort_unstable_by(f32::total_cmp);
    let at = |q: f64| -> f32 {
        if sorted.is_empty() {
            return 0.0;
        }
        let position = q / 100.0 * (sorted.len() - 1) as f64;
        let lo = position.floor() as usize;
        let hi = (lo + 1).min(sorted.len() - 1);
        let fraction = position - lo as f64;
        (sorted[lo] as f64 + (sorted[hi] as f64 - sorted[lo] as f64) * fraction) as f32
    };
    (at(low), at(high))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_interpolate_linearly_like_numpy() {
        // numpy.quantile([0, 1, ..., 10], [0.005, 0.995]) = [0.05, 9.95]
        let v: Vec<f32> = (0..=10).map(|x| x as f32).collect();
        let (lo, hi) = percentiles(&v, 0.5, 99.5);
        assert!(
            (lo - 0.05).abs() < 1e-6 && (hi - 9.95).abs() < 1e-5,
            "{lo} {hi}"
        );
    }

    #[test]
    fn a_reused_window_comes_from_the_named_stage_and_zscore_uses_n_minus_one() {
        let mut windows = Windows::new();
        let mut first: Vec<f32> = (0..=10).map(|x| x as f32).collect();
        let steps = [IntensityStep::PercentileWindow {
            low: 0.0,
            high: 100.0,
            from: None,
        }];
        apply(&mut first, &steps, "one", &mut windows).unwrap();
        assert_eq!(windows["one"], (0.0, 10.0));
        let mut second = vec![5.0f32, 20.0, -3.0];
        let reuse = [
            IntensityStep::PercentileWindow {
                low: 0.0,
                high: 100.0,
                from: Some("one".into()),
            },
            IntensityStep::Zscore {},
            IntensityStep::Affine {
                factor: 2.0,
                offset: 1.0,
            },
        ];
        apply(&mut second, &reuse, "two", &mut windows).unwrap();
        // [0.5, 1, 0]: mean 0.5, std (N-1) 0.5 -> [0, 1, -1] -> [1, 3, -1]
        assert_eq!(second, vec![1.0, 3.0, -1.0]);
        let missing = [IntensityStep::PercentileWindow {
            low: 0.0,
            high: 100.0,
            from: Some("nope".into()),
        }];
        assert!(apply(&mut second, &missing, "three", &mut windows).is_err());
    }
}
