//! The entries page: a paged list in ID order, searched on the server by SPIFFE ID prefix,
//! selector, parent ID and hint (indexed queries in the datastore). A template entry lists the
//! instances minted lately. While open, the page's script polls `/api/revision` and reloads
//! the rows (`/entries/rows`) when the entries' revision moves, so a change made with the CLI
//! shows within a second.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::{Query, State};
use axum::http::HeaderName;
use axum::response::{Html, IntoResponse, Response};
use maud::{Markup, html};
use serde::{Deserialize, Serialize};
use sigil_proto::{EntrySpiffeId, RegistrationEntry, Selector, SpiffeId};

use super::{PageError, layout, percent_encode, when};
use crate::console::Sources;
use crate::datastore::{DatastoreError, EntryFilter, SelectorMatch};

/// Entries per page.
pub const PAGE_SIZE: u32 = 50;

/// The search form's fields and the page token, as the query string carries them.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
pub struct Search {
    /// SPIFFE ID prefix.
    #[serde(default)]
    pub q: String,
    /// One selector (`type:value`) the entries must have.
    #[serde(default)]
    pub selector: String,
    #[serde(default)]
    pub parent: String,
    #[serde(default)]
    pub hint: String,
    /// The last entry ID of the previous page.
    #[serde(default)]
    pub after: String,
}

impl Search {
    fn filter(&self) -> Result<EntryFilter, DatastoreError> {
        let invalid = |what: &str, e: &dyn std::fmt::Display| {
            DatastoreError::InvalidArgument(format!("invalid {what}: {e}"))
        };
        let selectors = match self.selector.trim() {
            "" => None,
            s => {
                let selector = Selector::new(s).map_err(|e| invalid("selector", &e))?;
                Some((vec![selector], SelectorMatch::Superset))
            }
        };
        let parent_id = match self.parent.trim() {
            "" => None,
            p => Some(SpiffeId::new(p).map_err(|e| invalid("parent ID", &e))?),
        };
        let nonempty = |s: &str| (!s.trim().is_empty()).then(|| s.trim().to_owned());
        Ok(EntryFilter {
            spiffe_id_prefix: nonempty(&self.q),
            parent_id,
            selectors,
            hint: nonempty(&self.hint),
            ..EntryFilter::default()
        })
    }

    /// The query string of the page after `after`.
    fn next(&self, after: &str) -> String {
        let mut q = form_urlencoded(&[
            ("q", &self.q),
            ("selector", &self.selector),
            ("parent", &self.parent),
            ("hint", &self.hint),
        ]);
        if !q.is_empty() {
            q.push('&');
        }
        q.push_str("after=");
        q.push_str(&percent_encode(after));
        q
    }
}

fn form_urlencoded(pairs: &[(&str, &String)]) -> String {
    pairs
        .iter()
        .filter(|(_, v)| !v.is_empty())
        .map(|(k, v)| format!("{k}={}", percent_encode(v)))
        .collect::<Vec<_>>()
        .join("&")
}

/// One page of matching entries, the next page's token and how many match in all.
async fn search(
    s: &Sources,
    search: &Search,
) -> Result<(Vec<RegistrationEntry>, Option<String>, u64), DatastoreError> {
    let filter = search.filter()?;
    let after = (!search.after.is_empty()).then_some(search.after.as_str());
    let (entries, next) = s.datastore.list_entries(&filter, PAGE_SIZE, after).await?;
    let total = s.datastore.count_entries(&filter).await?;
    Ok((entries, next, total))
}

/// `Server-Timing` for the datastore's part of a response (`search;dur=<ms>`): what the
/// benchmark reads as the server-side search time.
fn server_timing(took: Duration) -> [(HeaderName, String); 1] {
    [(
        HeaderName::from_static("server-timing"),
        format!("search;dur={:.3}", took.as_secs_f64() * 1000.0),
    )]
}

/// `GET /entries`.
pub(crate) async fn page(
    State(s): State<Arc<Sources>>,
    Query(q): Query<Search>,
) -> Result<impl IntoResponse, Response> {
    let started = Instant::now();
    let (entries, next, total) = search(&s, &q)
        .await
        .map_err(|e| PageError(e).into_response())?;
    let timing = server_timing(started.elapsed());
    Ok((
        timing,
        layout(
            "/entries",
            "Entries",
            Some("entries"),
            html! {
                form.search method="get" action="/entries" {
                    label { "SPIFFE ID prefix " input name="q" type="search" value=(q.q) placeholder="spiffe://example.org/ns/"; }
                    label { "Selector " input name="selector" type="search" value=(q.selector) placeholder="k8s:ns:default"; }
                    label { "Parent ID " input name="parent" type="search" value=(q.parent); }
                    label { "Hint " input name="hint" type="search" value=(q.hint); }
                    button type="submit" { "Search" }
                }
                p #entry-count { span #entry-total { (total) } " matching entries" @if !q.after.is_empty() { " (a later page)" } }
                table #entries {
                    thead { tr { th { "Entry ID" } th { "SPIFFE ID" } th { "Parent ID" } th { "Selectors" } th { "Hint" } th { "Revision" } th { "Created" } } }
                    tbody #entry-rows { (rows_markup(&s, &entries)) }
                }
                @if let Some(next) = next {
                    p { a #next-page href={ "/entries?" (q.next(&next)) } { "Next page →" } }
                }
            },
        ),
    ))
}

/// The rows of one page: the body of `tbody#entry-rows`.
fn rows_markup(s: &Sources, entries: &[RegistrationEntry]) -> Markup {
    html! {
        @for e in entries {
            tr data-entry-id=(e.id) {
                td { code { (e.id) } }
                td {
                    (e.spiffe_id)
                    @if let EntrySpiffeId::Template(_) = e.spiffe_id {
                        " " span.state.template { "template" }
                        @let instances = s.activity.instances(&e.id);
                        @if instances.is_empty() {
                            div.instances { "No instance minted lately." }
                        } @else {
                            ul.instances {
                                @for i in &instances {
                                    li { (i.spiffe_id) " · " (when(i.minted_at)) }
                                }
                            }
                        }
                    }
                }
                td { (e.parent_id) }
                td { @for sel in &e.selectors { span.selector { (sel) } " " } }
                td { (e.hint) }
                td { (e.revision) }
                td { (when(e.created_at)) }
            }
        }
    }
}

/// The header of `/entries/rows` that carries how many entries match.
pub const TOTAL_HEADER: &str = "x-entry-total";

/// `GET /entries/rows`: the rows alone, for the live refresh, with how many entries match in
/// [`TOTAL_HEADER`].
pub(crate) async fn rows(
    State(s): State<Arc<Sources>>,
    Query(q): Query<Search>,
) -> Result<impl IntoResponse, Response> {
    let (entries, _, total) = search(&s, &q)
        .await
        .map_err(|e| PageError(e).into_response())?;
    Ok((
        [(HeaderName::from_static(TOTAL_HEADER), total.to_string())],
        Html(rows_markup(&s, &entries).into_string()),
    ))
}

#[derive(Debug, Serialize)]
pub(crate) struct Revision {
    revision: i64,
}

/// `GET /api/revision`: the latest entry revision of the datastore's change feed.
pub(crate) async fn revision(State(s): State<Arc<Sources>>) -> Json<Revision> {
    Json(Revision {
        revision: *s.datastore.entry_revisions().borrow(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_page_keeps_the_search() {
        let s = Search {
            q: "spiffe://td/a b".into(),
            hint: "h&1".into(),
            ..Search::default()
        };
        assert_eq!(
            s.next("id-1"),
            "q=spiffe%3A%2F%2Ftd%2Fa%20b&hint=h%261&after=id-1"
        );
        assert!(s.filter().unwrap().spiffe_id_prefix.is_some());
        let bad = Search {
            selector: "nocolon".into(),
            ..Search::default()
        };
        assert!(bad.filter().is_err());
    }
}
