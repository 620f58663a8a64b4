//! The overview: trust domain, the local authorities on a timeline with their state, the
//! bundle's sequence number, federation peers and the replicas sharing the datastore.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::extract::State;
use axum::response::{Html, Response};
use maud::{Markup, html};
use sigil_common::time::unix_now;
use sigil_proto::TrustDomain;

use super::{PageError, layout, or_dash, when};
use crate::ca::CaJournal;
use crate::ca::local_authority::{AuthorityKind, AuthorityState};
use crate::ca::rotation::AuthorityStatus;
use crate::console::Sources;
use crate::federation::status::PeerStatus;

/// One authority as the page shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuthorityRow {
    pub kind: AuthorityKind,
    pub authority_id: String,
    /// `prepared`, `active`, `old` or `revoked`.
    pub state: &'static str,
    pub tainted: bool,
    pub not_before: i64,
    pub not_after: i64,
}

impl AuthorityRow {
    fn new(kind: AuthorityKind, a: &AuthorityState, revoked: bool) -> Self {
        Self {
            kind,
            authority_id: a.authority_id.clone(),
            state: if revoked {
                "revoked"
            } else {
                match a.status {
                    AuthorityStatus::Prepared => "prepared",
                    AuthorityStatus::Active => "active",
                    AuthorityStatus::Old => "old",
                }
            },
            tainted: a.tainted,
            not_before: a.not_before,
            not_after: a.expires_at,
        }
    }
}

/// The federation poller's view of a peer (`crate::federation::status`). Unknown fields show
/// as "—".
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PollerStatus {
    /// Unix seconds of the last poll, successful or not.
    pub last_refresh: Option<i64>,
    /// Unix seconds of the last poll that stored (or confirmed) a bundle.
    pub last_success: Option<i64>,
    /// Unix seconds of the next poll (`None` while one runs).
    pub next_refresh: Option<i64>,
    /// The last poll's error, if it failed.
    pub last_error: Option<String>,
}

impl From<&PeerStatus> for PollerStatus {
    fn from(p: &PeerStatus) -> Self {
        let secs = |t: Option<SystemTime>| {
            t.and_then(|t| t.duration_since(UNIX_EPOCH).ok())
                .and_then(|d| i64::try_from(d.as_secs()).ok())
        };
        Self {
            last_refresh: secs(p.last_refresh),
            last_success: secs(p.last_success),
            next_refresh: secs(p.next_refresh),
            last_error: p.last_error.clone(),
        }
    }
}

/// One federation peer: from the config, the stored bundles, or both.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Peer {
    /// The bundle endpoint URL and where the relationship comes from (the config file or the
    /// datastore), when one is polled.
    endpoint: Option<(String, &'static str)>,
    /// The stored bundle's sequence number and X.509 authority count.
    bundle: Option<(u64, usize)>,
    poller: PollerStatus,
}

/// One replica whose CA journal is in the datastore.
struct Replica {
    id: String,
    updated_at: i64,
    /// Unix seconds: the last NotAfter of its authorities (it is dropped after that).
    live_until: Option<i64>,
}

/// `GET /`.
pub(crate) async fn page(State(s): State<Arc<Sources>>) -> Result<Html<String>, Response> {
    let mut rows = Vec::new();
    for kind in [AuthorityKind::X509, AuthorityKind::Jwt] {
        rows.extend(
            s.ca.authorities(kind)
                .iter()
                .map(|a| AuthorityRow::new(kind, a, false)),
        );
    }
    rows.extend(
        s.ca.revoked()
            .iter()
            .map(|r| AuthorityRow::new(r.kind, &r.state, true)),
    );
    let bundle = s.ca.bundle();
    let peers = peers(&s);
    let replicas = replicas(&s)
        .await
        .map_err(|e| axum::response::IntoResponse::into_response(PageError(e)))?;
    let now = unix_now();
    Ok(layout(
        "/",
        "Overview",
        None,
        html! {
            dl.facts {
                dt { "Trust domain" } dd #trust-domain { (s.trust_domain) }
                dt { "Bundle sequence" } dd #bundle-sequence { (bundle.sequence) }
                dt { "This replica" } dd { code { (s.ca.replica_id().as_str()) } }
            }
            h2 { "Authorities" }
            (timeline(&rows, now))
            table #authorities {
                thead { tr { th { "Kind" } th { "Authority ID" } th { "State" } th { "Tainted" } th { "Not before" } th { "Not after" } } }
                tbody {
                    @for r in &rows {
                        tr data-authority-id=(r.authority_id) {
                            td { (r.kind) }
                            td { code { (r.authority_id) } }
                            td { span class={ "state " (r.state) } { (r.state) } }
                            td { @if r.tainted { span.state.tainted { "tainted" } } @else { "no" } }
                            td { (when(r.not_before)) }
                            td { (when(r.not_after)) }
                        }
                    }
                }
            }
            p.note { "Revoked authorities are listed while this replica runs; the CA journal keeps no trace of them." }
            h2 { "Federation" }
            @if peers.is_empty() {
                p { "No federated trust domain." }
            } @else {
                table #peers {
                    thead { tr { th { "Trust domain" } th { "Bundle endpoint" } th { "Bundle sequence" } th { "X.509 authorities" } th { "Last refresh" } th { "Last success" } th { "Next refresh" } th { "Last error" } } }
                    tbody {
                        @for (td, p) in &peers {
                            tr {
                                td { (td) }
                                td {
                                    @match &p.endpoint {
                                        Some((url, source)) => { code { (url) } " (" (source) ")" }
                                        None => { "— (stored bundle only)" }
                                    }
                                }
                                td { (or_dash(p.bundle.map(|b| b.0))) }
                                td { (or_dash(p.bundle.map(|b| b.1))) }
                                td { (p.poller.last_refresh.map_or_else(|| "—".to_owned(), when)) }
                                td { (p.poller.last_success.map_or_else(|| "—".to_owned(), when)) }
                                td { (p.poller.next_refresh.map_or_else(|| "—".to_owned(), when)) }
                                td { (or_dash(p.poller.last_error.as_deref())) }
                            }
                        }
                    }
                }
            }
            h2 { "Replicas" }
            table #replicas {
                thead { tr { th { "Replica ID" } th { "Journal written" } th { "Authorities valid until" } } }
                tbody {
                    @for r in &replicas {
                        tr {
                            td {
                                code { (r.id) }
                                @if r.id == s.ca.replica_id().as_str() { " (this replica)" }
                            }
                            td { (when(r.updated_at)) }
                            td { (r.live_until.map_or_else(|| "—".to_owned(), when)) }
                        }
                    }
                }
            }
        },
    ))
}

/// The polled peers (the config file's and the datastore's relationships) and the stored
/// bundles, by trust domain.
fn peers(s: &Sources) -> BTreeMap<TrustDomain, Peer> {
    let mut peers: BTreeMap<TrustDomain, Peer> = BTreeMap::new();
    for (td, status) in s.peer_statuses.snapshot().iter() {
        let peer = peers.entry(td.clone()).or_default();
        peer.endpoint = Some((status.url.clone(), status.source.as_str()));
        peer.poller = PollerStatus::from(status);
    }
    for (td, bundle) in s.federation.current().iter() {
        peers.entry(td.clone()).or_default().bundle =
            Some((bundle.sequence, bundle.x509_authorities.len()));
    }
    peers
}

/// The replicas whose journals are stored (those with every authority expired are dropped
/// by the replicas themselves).
async fn replicas(s: &Sources) -> Result<Vec<Replica>, crate::datastore::DatastoreError> {
    Ok(s.datastore
        .list_replica_journals()
        .await?
        .into_iter()
        .map(|j| {
            let live_until = CaJournal::from_bytes(&j.data).ok().and_then(|journal| {
                journal
                    .x509_authorities
                    .iter()
                    .map(|a| a.not_after)
                    .chain(journal.jwt_keys.iter().map(|k| k.not_after))
                    .max()
            });
            Replica {
                id: j.replica_id,
                updated_at: j.updated_at,
                live_until,
            }
        })
        .collect())
}

/// The authorities as bars on one time axis (inline SVG, no script), with a line at `now`.
fn timeline(rows: &[AuthorityRow], now: i64) -> Markup {
    const WIDTH: f64 = 900.0;
    const ROW: f64 = 22.0;
    const LABEL: f64 = 130.0;
    let start = rows
        .iter()
        .map(|r| r.not_before)
        .chain([now])
        .min()
        .unwrap_or(now);
    let end = rows
        .iter()
        .map(|r| r.not_after)
        .chain([now])
        .max()
        .unwrap_or(now);
    let span = (end - start).max(1) as f64;
    let x = |t: i64| LABEL + (t - start) as f64 / span * (WIDTH - LABEL - 10.0);
    let height = ROW * rows.len() as f64 + 24.0;
    html! {
        svg.timeline viewBox={ "0 0 " (WIDTH) " " (height) } role="img" aria-label="Authorities over time" {
            @for (i, r) in rows.iter().enumerate() {
                @let y = 4.0 + ROW * i as f64;
                text x="0" y=(y + 14.0) class="label" { (r.kind) " " (r.authority_id.get(..8).unwrap_or(&r.authority_id)) }
                rect x=(x(r.not_before)) y=(y) width=((x(r.not_after) - x(r.not_before)).max(2.0)) height=(ROW - 6.0)
                    class={ "bar " (r.state) @if r.tainted { " tainted" } } {
                    title { (r.kind) " " (r.authority_id) ": " (r.state) @if r.tainted { ", tainted" } " · " (when(r.not_before)) " → " (when(r.not_after)) }
                }
            }
            line x1=(x(now)) x2=(x(now)) y1="0" y2=(height - 18.0) class="now" {}
            text x=(x(now)) y=(height - 4.0) class="now-label" { "now" }
        }
    }
}
