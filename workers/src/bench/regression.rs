//! Rounds, medians and the regression check (pure, so it is unit-tested).
//!
//! Each stage compared with a raw baseline gives a ratio per round; its figure is the
//! median over the rounds with the spread (min and max). The baseline file keeps the
//! last figures; a new run prints each figure's change against it, and a ratio that
//! fell below `baseline × (1 − tolerance)` is a regression. Comparing ratios, not
//! rates, cancels most of the machine's noise: the raw stages of the same round ran on
//! the same machine minutes before.

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::Stage;
use crate::error::{Error, Result};

/// How far a ratio may fall below its baseline before it counts as a regression,
/// unless `--tolerance` says.
pub const DEFAULT_TOLERANCE: f64 = 0.2;

/// One figure over the rounds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Figure {
    /// The stage, e.g. `relay`.
    pub stage: String,
    /// Its raw baseline, e.g. `raw_produce` (none for a raw stage).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub baseline: Option<String>,
    /// Median messages per second.
    pub messages_per_second: f64,
    /// Median ratio to the baseline.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ratio: Option<f64>,
    /// Lowest and highest ratio (or rate, for a raw stage) of the rounds.
    pub min: f64,
    pub max: f64,
}

/// The figures kept in the repository.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Baseline {
    /// Messages per stage and rounds of the run that made it.
    pub messages: usize,
    pub rounds: usize,
    pub figures: Vec<Figure>,
}

impl Baseline {
    /// Reads a baseline file.
    pub fn read(path: &Path) -> Result<Baseline> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
            context: format!("reading the bench baseline {}", path.display()),
            source,
        })?;
        serde_json::from_str(&text)
            .map_err(|e| Error::Bench(format!("the bench baseline {}: {e}", path.display())))
    }

    /// Writes it as pretty JSON.
    pub fn write(&self, path: &Path) -> Result<()> {
        let text = serde_json::to_string_pretty(self)
            .map_err(|e| Error::Bench(format!("encoding the bench baseline: {e}")))?;
        std::fs::write(path, text + "\n").map_err(|source| Error::Io {
            context: format!("writing the bench baseline {}", path.display()),
            source,
        })
    }
}

/// The median of `values` (the mean of the middle two for an even count; 0 for none).
pub fn median(values: &[f64]) -> f64 {
    let mut v: Vec<f64> = values.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

fn rounded(value: f64, digits: i32) -> f64 {
    let scale = 10f64.powi(digits);
    (value * scale).round() / scale
}

/// Each stage's figure over `rounds` (every round has the same stages in the same
/// order).
pub fn figures(rounds: &[Vec<Stage>]) -> Vec<Figure> {
    let Some(first) = rounds.first() else {
        return Vec::new();
    };
    first
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let of = |f: fn(&Stage) -> Option<f64>| -> Vec<f64> {
                rounds.iter().filter_map(|r| r.get(i).and_then(f)).collect()
            };
            let rates = of(|s| Some(s.messages_per_second));
            let ratios = of(|s| s.ratio);
            // Rates to a tenth of a message per second, ratios to four digits.
            let (spread, digits) = if ratios.is_empty() {
                (&rates, 1)
            } else {
                (&ratios, 4)
            };
            Figure {
                stage: s.name.to_string(),
                baseline: s.baseline.map(str::to_string),
                messages_per_second: rounded(median(&rates), 1),
                ratio: (!ratios.is_empty()).then(|| rounded(median(&ratios), 4)),
                min: rounded(spread.iter().copied().fold(f64::INFINITY, f64::min), digits),
                max: rounded(
                    spread.iter().copied().fold(f64::NEG_INFINITY, f64::max),
                    digits,
                ),
            }
        })
        .collect()
}

/// One ratio against its baseline.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    pub stage: String,
    pub before: f64,
    pub now: f64,
    /// `now / before`.
    pub change: f64,
    /// Whether `now` fell below `before × (1 − tolerance)`.
    pub regressed: bool,
}

/// The change of every ratio figure found in both `baseline` and `now`.
pub fn compare(baseline: &Baseline, now: &[Figure], tolerance: f64) -> Vec<Change> {
    now.iter()
        .filter_map(|f| {
            let now_ratio = f.ratio?;
            let before = baseline
                .figures
                .iter()
                .find(|b| b.stage == f.stage)?
                .ratio?;
            Some(Change {
                stage: f.stage.clone(),
                before,
                now: now_ratio,
                change: if before > 0.0 {
                    now_ratio / before
                } else {
                    f64::INFINITY
                },
                regressed: now_ratio < before * (1.0 - tolerance),
            })
        })
        .collect()
}

/// The error of a check that found regressions, naming each.
pub fn regressions_error(changes: &[Change], tolerance: f64) -> Option<Error> {
    let regressed: Vec<String> = changes
        .iter()
        .filter(|c| c.regressed)
        .map(|c| {
            format!(
                "{} {:.2} × its raw baseline, was {:.2} ({:+.0} %)",
                c.stage,
                c.now,
                c.before,
                (c.change - 1.0) * 100.0
            )
        })
        .collect();
    (!regressed.is_empty()).then(|| {
        Error::Bench(format!(
            "regression beyond the {:.0} % tolerance: {}",
            tolerance * 100.0,
            regressed.join("; ")
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stage(name: &'static str, rate: f64, ratio: Option<f64>) -> Stage {
        Stage {
            name,
            messages: 1000,
            seconds: 1000.0 / rate,
            messages_per_second: rate,
            baseline: ratio.map(|_| "raw_produce"),
            ratio,
        }
    }

    #[test]
    fn medians_of_odd_and_even_counts() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        assert_eq!(median(&[]), 0.0);
    }

    #[test]
    fn a_figure_is_the_median_of_the_rounds_with_their_spread() {
        let rounds = vec![
            vec![
                stage("raw_produce", 200.0, None),
                stage("relay", 180.0, Some(0.9)),
            ],
            vec![
                stage("raw_produce", 250.0, None),
                stage("relay", 150.0, Some(0.6)),
            ],
            vec![
                stage("raw_produce", 230.0, None),
                stage("relay", 190.0, Some(0.83)),
            ],
        ];
        let f = figures(&rounds);
        assert_eq!(f[0].stage, "raw_produce");
        assert_eq!((f[0].messages_per_second, f[0].ratio), (230.0, None));
        assert_eq!((f[0].min, f[0].max), (200.0, 250.0));
        assert_eq!(f[1].ratio, Some(0.83));
        assert_eq!((f[1].min, f[1].max), (0.6, 0.9));
        assert_eq!(f[1].baseline.as_deref(), Some("raw_produce"));
    }

    #[test]
    fn a_baseline_made_faster_than_the_run_fails_the_check_naming_the_stage() {
        let now = figures(&[vec![
            stage("raw_produce", 200.0, None),
            stage("relay", 180.0, Some(0.9)),
            stage("consume", 100.0, Some(0.7)),
        ]]);
        let mut faster = Baseline {
            messages: 1000,
            rounds: 1,
            figures: now.clone(),
        };
        assert!(
            regressions_error(&compare(&faster, &now, 0.2), 0.2).is_none(),
            "a run equal to its baseline passes"
        );
        faster.figures[1].ratio = Some(1.5);
        let changes = compare(&faster, &now, 0.2);
        assert_eq!(changes.len(), 2, "raw stages have no ratio to compare");
        assert!(changes[0].regressed && !changes[1].regressed);
        let error = regressions_error(&changes, 0.2)
            .expect("a regression")
            .to_string();
        assert!(
            error.contains("relay 0.90 × its raw baseline, was 1.50 (-40 %)")
                && error.contains("20 % tolerance"),
            "{error}"
        );
    }

    #[test]
    fn a_drop_within_the_tolerance_is_not_a_regression() {
        let now = figures(&[vec![stage("relay", 180.0, Some(0.85))]]);
        let before = Baseline {
            messages: 1000,
            rounds: 3,
            figures: figures(&[vec![stage("relay", 190.0, Some(1.0))]]),
        };
        let changes = compare(&before, &now, 0.2);
        assert!(!changes[0].regressed);
        assert!((changes[0].change - 0.85).abs() < 1e-9);
    }
}
