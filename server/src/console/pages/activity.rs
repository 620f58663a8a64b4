//! The activity page: four small live charts drawn by the console's script from
//! `/api/samples` (the server's own metrics, sampled once a second).

use maud::html;

use super::layout;
use crate::console::samples::{KEPT, P99_WINDOW};

/// The charts: the sample field each draws, its title and unit.
const CHARTS: [(&str, &str, &str); 4] = [
    ("svids_signed_per_second", "SVIDs signed", "per second"),
    ("open_sync_streams", "Open sync streams", "on this replica"),
    ("propagation_p99_ms", "Entry propagation p99", "ms"),
    (
        "rate_limited_per_second",
        "Rate-limit refusals",
        "per second",
    ),
];

/// `GET /activity`.
pub(crate) async fn page() -> axum::response::Html<String> {
    layout(
        "/activity",
        "Activity",
        Some("activity"),
        html! {
            p.note {
                "The last " (KEPT / 60) " minutes, one sample a second. Propagation: from an entry change's publication on the datastore's change feed (just after its commit) to its first send on an agent's sync stream, on this replica; p99 over the last " (P99_WINDOW.as_secs()) " s."
            }
            div.charts {
                @for (field, title, unit) in CHARTS {
                    figure.chart data-field=(field) {
                        figcaption { (title) " " small { "(" (unit) ")" } " " output data-latest=(field) { "—" } }
                        svg viewBox="0 0 300 100" preserveAspectRatio="none" role="img" aria-label=(title) {
                            polyline points="" {}
                        }
                    }
                }
            }
        },
    )
}
