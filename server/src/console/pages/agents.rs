//! The agents page: every attested node, paged in SPIFFE ID order, with its attestation type,
//! selectors, SVID expiry, whether it is banned, and (from this replica's record) its last
//! sync and whether its sync stream is held here. An evicted agent is deleted from the
//! datastore: the agents evicted lately through this replica (and not attested since) are
//! listed after them, from its record.

use std::sync::Arc;

use axum::extract::{Query, State};
use axum::response::{Html, IntoResponse, Response};
use maud::html;
use serde::Deserialize;

use super::{PageError, layout, percent_encode, when};
use crate::console::Sources;
use crate::datastore::NodeFilter;

/// Agents per page.
pub const PAGE_SIZE: u32 = 100;
/// Evictions looked at (the newest) for the "evicted" rows.
const EVICTED_SHOWN: usize = 100;

#[derive(Clone, Debug, Default, Deserialize)]
pub(crate) struct Page {
    /// The last SPIFFE ID of the previous page.
    #[serde(default)]
    after: String,
}

/// `GET /agents`.
pub(crate) async fn page(
    State(s): State<Arc<Sources>>,
    Query(p): Query<Page>,
) -> Result<Html<String>, Response> {
    let filter = NodeFilter::default();
    let after = (!p.after.is_empty()).then_some(p.after.as_str());
    let (nodes, next) = s
        .datastore
        .list_attested_nodes(&filter, PAGE_SIZE, after)
        .await
        .map_err(|e| PageError(e).into_response())?;
    let total = s
        .datastore
        .count_attested_nodes(&filter)
        .await
        .map_err(|e| PageError(e).into_response())?;
    let replica = s.ca.replica_id().as_str().to_owned();
    // Evicted lately and not back: those of the record with no node now (an agent that
    // attested again is listed above).
    let mut evicted = Vec::new();
    for (id, at) in s.activity.evictions().into_iter().take(EVICTED_SHOWN) {
        let back = s
            .datastore
            .fetch_attested_node(&id)
            .await
            .map_err(|e| PageError(e).into_response())?;
        if back.is_none() {
            evicted.push((id, at));
        }
    }
    Ok(layout(
        "/agents",
        "Agents",
        None,
        html! {
            p #agent-count { (total) " attested agent" @if total != 1 { "s" } }
            table #agents {
                thead { tr { th { "SPIFFE ID" } th { "Attestation" } th { "Selectors" } th { "SVID expires" } th { "Last sync" } th { "Connected replica" } th { "Status" } } }
                tbody {
                    @for n in &nodes {
                        @let sync = s.activity.agent_sync(&n.spiffe_id);
                        tr data-agent-id=(n.spiffe_id) {
                            td { (n.spiffe_id) }
                            td { (n.attestation_type) }
                            td { @for sel in &n.selectors { span.selector { (sel) } " " } }
                            td { (when(n.cert_expires_at)) }
                            td { (sync.map_or_else(|| "— (not on this replica since it started)".to_owned(), |s| when(s.last_sync))) }
                            td {
                                @if sync.is_some_and(|s| s.open_streams > 0) {
                                    code { (replica) } " (this replica)"
                                } @else { "— (none here)" }
                            }
                            td {
                                @if n.banned { span.state.revoked { "banned" } }
                                @else { span.state.active { "attested" } }
                            }
                        }
                    }
                }
            }
            @if let Some(next) = next {
                p { a #next-page href={ "/agents?after=" (percent_encode(&next)) } { "Next page →" } }
            }
            h2 { "Evicted lately" }
            @if evicted.is_empty() {
                p #no-evicted { "No agent evicted through this replica since it started (and not attested again)." }
            } @else {
                table #evicted {
                    thead { tr { th { "SPIFFE ID" } th { "Evicted" } th { "Status" } } }
                    tbody {
                        @for (id, at) in &evicted {
                            tr data-agent-id=(id) {
                                td { (id) }
                                td { (when(*at)) }
                                td { span.state.tainted { "evicted" } }
                            }
                        }
                    }
                }
            }
            p.note { "An evicted agent is deleted from the datastore: it is listed here from this replica's record until it attests again." }
        },
    ))
}
