//! The results: one row per figure (value, unit, target, verdict), printed as a table and
//! written as JSON. Targets are the issues' (#6; #17 for the pod check); they are reported, never
//! asserted.

use std::fmt::Write as _;
use std::path::Path;

use serde::Serialize;

/// What a figure is compared against.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
#[serde(tag = "kind", content = "bound", rename_all = "snake_case")]
pub(crate) enum Target {
    /// No target: the figure is information (a raw limit, a peer's rate).
    None,
    /// Met when value >= bound.
    AtLeast(f64),
    /// Met when value < bound.
    Below(f64),
    /// Met when value <= bound (a count whose target is exactly 0).
    AtMost(f64),
}

impl Target {
    fn text(self, unit: &str) -> String {
        match self {
            Self::None => "-".into(),
            Self::AtLeast(b) => format!(">= {} {unit}", number(b)),
            Self::Below(b) => format!("< {} {unit}", number(b)),
            Self::AtMost(b) => format!("<= {} {unit}", number(b)),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Verdict {
    Met,
    Missed,
    #[serde(rename = "n.a.")]
    NotApplicable,
}

impl Verdict {
    fn text(self) -> &'static str {
        match self {
            Self::Met => "met",
            Self::Missed => "missed",
            Self::NotApplicable => "n.a.",
        }
    }
}

/// One row of the table.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub(crate) struct Figure {
    pub name: String,
    /// `None` when the figure could not be measured in this run (see `note`).
    pub value: Option<f64>,
    pub unit: String,
    pub target: Target,
    pub verdict: Verdict,
    /// How it was measured, or why it is missing.
    pub note: String,
}

impl Figure {
    pub(crate) fn new(name: &str, value: f64, unit: &str, target: Target, note: &str) -> Self {
        let verdict = match target {
            Target::None => Verdict::NotApplicable,
            Target::AtLeast(b) if value >= b => Verdict::Met,
            Target::Below(b) if value < b => Verdict::Met,
            Target::AtMost(b) if value <= b => Verdict::Met,
            _ => Verdict::Missed,
        };
        Self {
            name: name.into(),
            value: Some(value),
            unit: unit.into(),
            target,
            verdict,
            note: note.into(),
        }
    }

    /// A figure this run could not measure (e.g. cfssl is not installed).
    pub(crate) fn skipped(name: &str, unit: &str, target: Target, why: &str) -> Self {
        Self {
            name: name.into(),
            value: None,
            unit: unit.into(),
            target,
            verdict: Verdict::NotApplicable,
            note: why.into(),
        }
    }
}

/// Everything one run produced.
#[derive(Debug, Serialize)]
pub(crate) struct Report {
    /// Unix seconds.
    pub generated_at: u64,
    pub quick: bool,
    pub machine: Machine,
    pub figures: Vec<Figure>,
}

#[derive(Debug, Serialize)]
pub(crate) struct Machine {
    pub cores: usize,
    pub cpu: String,
    /// The build profile of the measured binaries (`debug` figures are not comparable).
    pub profile: String,
    /// 1-minute load average when the run started: a busy machine gives noisy figures.
    pub load_average: String,
}

impl Report {
    /// The table: figure, value, unit, target, verdict.
    pub(crate) fn table(&self) -> String {
        let rows: Vec<[String; 5]> = self
            .figures
            .iter()
            .map(|f| {
                [
                    f.name.clone(),
                    f.value.map_or_else(|| "-".into(), number),
                    f.unit.clone(),
                    f.target.text(&f.unit),
                    f.verdict.text().into(),
                ]
            })
            .collect();
        let header = ["figure", "value", "unit", "target", "verdict"].map(String::from);
        let mut widths = header.clone().map(|h| h.len());
        for row in &rows {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(cell.chars().count());
            }
        }
        let mut out = String::new();
        for row in std::iter::once(&header).chain(&rows) {
            let line: Vec<String> = row
                .iter()
                .zip(widths)
                .enumerate()
                .map(|(i, (cell, w))| {
                    // Numbers right-aligned, text left-aligned.
                    if i == 1 {
                        format!("{cell:>w$}")
                    } else {
                        format!("{cell:<w$}")
                    }
                })
                .collect();
            let _ = writeln!(out, "{}", line.join("  ").trim_end());
        }
        out
    }

    pub(crate) fn write_json(&self, path: &Path) -> anyhow::Result<()> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(path, serde_json::to_vec_pretty(self)?)?;
        Ok(())
    }
}

/// A figure with about four significant digits, no exponent.
pub(crate) fn number(v: f64) -> String {
    let a = v.abs();
    if a >= 1000.0 || v == v.trunc() && a < 1e15 {
        format!("{v:.0}")
    } else if a >= 10.0 {
        format!("{v:.1}")
    } else if a >= 0.1 {
        format!("{v:.3}")
    } else {
        format!("{v:.4}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verdicts_follow_the_target() {
        assert_eq!(
            Figure::new("a", 0.8, "ratio", Target::AtLeast(0.7), "").verdict,
            Verdict::Met
        );
        assert_eq!(
            Figure::new("a", 0.5, "ratio", Target::AtLeast(0.7), "").verdict,
            Verdict::Missed
        );
        assert_eq!(
            Figure::new("b", 2.0, "ms", Target::Below(2.0), "").verdict,
            Verdict::Missed
        );
        assert_eq!(
            Figure::new("b", 1.9, "ms", Target::Below(2.0), "").verdict,
            Verdict::Met
        );
        assert_eq!(
            Figure::new("c", 0.0, "requests", Target::AtMost(0.0), "").verdict,
            Verdict::Met
        );
        assert_eq!(
            Figure::new("c", 0.5, "requests", Target::AtMost(0.0), "").verdict,
            Verdict::Missed
        );
        assert_eq!(
            Figure::new("c", 1.0, "/s", Target::None, "").verdict,
            Verdict::NotApplicable
        );
    }

    #[test]
    fn table_has_a_row_per_figure_and_json_round_trips() {
        let report = Report {
            generated_at: 1,
            quick: true,
            machine: Machine {
                cores: 2,
                cpu: "x".into(),
                profile: "debug".into(),
                load_average: "0.5".into(),
            },
            figures: vec![
                Figure::new("mint ratio", 0.734, "ratio", Target::AtLeast(0.7), ""),
                Figure::skipped("cfssl signs", "signs/s", Target::None, "not installed"),
            ],
        };
        let table = report.table();
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 3);
        assert!(lines[1].starts_with("mint ratio"));
        assert!(lines[1].contains("0.734") && lines[1].contains(">= 0.700 ratio"));
        assert!(lines[1].ends_with("met"));
        assert!(lines[2].ends_with("n.a."));
        let json: serde_json::Value = serde_json::to_value(&report).unwrap();
        assert_eq!(json["figures"][0]["verdict"], "met");
        assert_eq!(json["figures"][0]["target"]["kind"], "at_least");
        assert_eq!(json["figures"][1]["verdict"], "n.a.");
        assert!(json["figures"][1]["value"].is_null());
    }

    #[test]
    fn numbers_are_readable() {
        assert_eq!(number(41234.56), "41235");
        assert_eq!(number(12.345), "12.3");
        assert_eq!(number(0.7), "0.700");
        assert_eq!(number(3.0), "3");
        assert_eq!(number(0.01234), "0.0123");
    }
}
