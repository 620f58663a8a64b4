//! The comparison rows: each metric measured on Sigil and on SPIRE (in one or both of its
//! cache modes) becomes one row per SPIRE mode, named `vs <SPIRE mode>: <metric>`, whose value
//! is Sigil's advantage (> 1: Sigil better) and whose note holds both measured values and the
//! settings.

use super::system::System;
use crate::report::{Figure, Target, number};

/// Which way is better for a metric.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Better {
    Higher,
    Lower,
}

#[derive(Debug)]
struct Metric {
    what: String,
    unit: &'static str,
    better: Better,
    how: String,
    /// A value, or why there is none (e.g. SPIRE did not reach the size in time).
    values: Vec<(System, Result<f64, String>)>,
}

/// Metrics in the order they were first measured.
#[derive(Debug, Default)]
pub(crate) struct Table {
    metrics: Vec<Metric>,
}

impl Table {
    /// Records `system`'s `value` of metric `what` (the first call for `what` fixes its unit,
    /// direction and description).
    pub(crate) fn put(
        &mut self,
        system: System,
        what: &str,
        unit: &'static str,
        better: Better,
        how: &str,
        value: Result<f64, String>,
    ) {
        let metric = match self.metrics.iter_mut().position(|m| m.what == what) {
            Some(i) => &mut self.metrics[i],
            None => {
                self.metrics.push(Metric {
                    what: what.to_owned(),
                    unit,
                    better,
                    how: how.to_owned(),
                    values: Vec::new(),
                });
                self.metrics.last_mut().expect("just pushed")
            }
        };
        metric.values.push((system, value));
    }

    /// One row per metric and SPIRE mode that measured it; `target(metric)` is the advantage
    /// the row is compared against.
    pub(crate) fn figures(&self, target: impl Fn(&str) -> f64) -> Vec<Figure> {
        let mut rows = Vec::new();
        for m in &self.metrics {
            let sigil = m.values.iter().find(|(s, _)| *s == System::Sigil);
            for (system, spire) in m.values.iter().filter(|(s, _)| *s != System::Sigil) {
                let name = format!("vs {}: {}", system.label(), m.what);
                let setting = system.settings();
                let how = format!(
                    "{}; {setting}; value: Sigil's advantage, > 1 = Sigil better",
                    m.how
                );
                match (sigil.map(|(_, v)| v), spire) {
                    (Some(Ok(a)), Ok(b)) => {
                        let advantage = match m.better {
                            Better::Higher => ratio(*a, *b),
                            Better::Lower => ratio(*b, *a),
                        };
                        let note = format!(
                            "Sigil {} {unit}, {} {} {unit}; {how}",
                            number(*a),
                            system.label(),
                            number(*b),
                            unit = m.unit
                        );
                        let target = Target::AtLeast(target(&m.what));
                        rows.push(Figure::new(&name, advantage, "x", target, &note));
                    }
                    (sigil, spire) => {
                        // What was measured stays in the note: one side's value, the other's why.
                        let why = [
                            sigil.map(|v| match v {
                                Ok(v) => format!("Sigil {} {}", number(*v), m.unit),
                                Err(e) => format!("Sigil: {e}"),
                            }),
                            spire
                                .as_ref()
                                .err()
                                .map(|e| format!("{}: {e}", system.label())),
                        ];
                        let why: Vec<String> = why.into_iter().flatten().collect();
                        let why = if why.is_empty() {
                            "Sigil was not measured".to_owned()
                        } else {
                            why.join("; ")
                        };
                        rows.push(Figure::skipped(
                            &name,
                            "x",
                            Target::AtLeast(target(&m.what)),
                            &format!("{why}; {how}"),
                        ));
                    }
                }
            }
        }
        rows
    }
}

fn ratio(a: f64, b: f64) -> f64 {
    if b > 0.0 { a / b } else { f64::NAN }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn advantage_points_the_same_way_for_rates_and_costs() {
        let mut t = Table::default();
        t.put(System::Sigil, "rate", "1/s", Better::Higher, "h", Ok(300.0));
        t.put(System::Spire, "rate", "1/s", Better::Higher, "h", Ok(100.0));
        t.put(System::Sigil, "time", "ms", Better::Lower, "h", Ok(10.0));
        t.put(System::Spire, "time", "ms", Better::Lower, "h", Ok(50.0));
        t.put(
            System::SpireEvents,
            "time",
            "ms",
            Better::Lower,
            "h",
            Ok(5.0),
        );
        let rows = t.figures(|_| 1.0);
        let names: Vec<&str> = rows.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(
            names,
            ["vs SPIRE: rate", "vs SPIRE: time", "vs SPIRE events: time"]
        );
        assert_eq!(rows[0].value, Some(3.0));
        assert_eq!(rows[1].value, Some(5.0));
        assert_eq!(rows[2].value, Some(0.5));
        assert_eq!(rows[0].target, Target::AtLeast(1.0));
        assert!(
            rows[1].note.starts_with("Sigil 10 ms, SPIRE 50 ms; h;"),
            "{}",
            rows[1].note
        );
    }

    #[test]
    fn a_missing_value_is_a_skipped_row_saying_why() {
        let mut t = Table::default();
        t.put(System::Sigil, "rss", "MiB", Better::Lower, "h", Ok(30.0));
        t.put(
            System::Spire,
            "rss",
            "MiB",
            Better::Lower,
            "h",
            Err("reached 400k".into()),
        );
        let rows = t.figures(|_| 1.0);
        assert_eq!(rows[0].value, None);
        assert!(
            rows[0]
                .note
                .starts_with("Sigil 30 MiB; SPIRE: reached 400k; h"),
            "{}",
            rows[0].note
        );
    }
}
