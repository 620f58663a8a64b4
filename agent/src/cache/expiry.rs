//! Expired SVIDs are never handed to a workload.
//!
//! When an X509-SVID reaches its NotAfter before rotation replaced it (the server unreachable,
//! the agent's own SVID expired, the server refusing to sign), [`watch_expiry`] withdraws it
//! from the cache. In its place the snapshot keeps why it is gone ([`SvidUnavailable`]), so the
//! Workload API answers `Unavailable` with that reason instead of the expired certificate, and
//! streams that carried it end with that status. Once rotation installs a fresh SVID the
//! record goes and workloads are served again.
//!
//! An SVID is withdrawn at the start of its NotAfter second, which is up to a second before it
//! stops verifying (NotAfter is inclusive): a timer that fires a few milliseconds late still
//! never hands out an expired one.
//!
//! The same task warns, once per SVID, when an SVID passes half its life (counted from when the
//! agent received it, as rotation counts it) while the server cannot be reached: rotation would
//! have replaced it by then, so the operator has until NotAfter to bring the server back.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use sigil_common::time::unix_now_ms;
use sigil_proto::SpiffeId;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use super::{Cache, CachedX509Svid, RenderedKey, Snapshot};
use crate::ops::{Metrics, Readiness};

/// Upper bound on the watcher's sleep, so a clock jump is noticed.
const MAX_SLEEP: Duration = Duration::from_secs(60);
/// While an SVID is past half its life, not yet renewed and the server still answers, look
/// again a tenth of its remaining life later, within these bounds: the server may go away
/// before rotation gets to it (or has just gone, unnoticed until the next dial fails).
const HALF_LIFE_POLL_MIN: Duration = Duration::from_secs(1);
const HALF_LIFE_POLL_MAX: Duration = Duration::from_secs(5);

/// Which kind of SVID a message is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SvidKind {
    X509,
    Jwt,
}

impl fmt::Display for SvidKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::X509 => "X509-SVID",
            Self::Jwt => "JWT-SVID",
        })
    }
}

/// Why the agent cannot get a fresh SVID from the server right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outage {
    /// No server could be reached since then (Unix seconds).
    ServerUnreachable { since: i64 },
    /// The agent's own SVID expired then (Unix seconds): the server accepts nothing from the
    /// agent until it attests again.
    AgentSvidExpired { at: i64 },
}

impl fmt::Display for Outage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::ServerUnreachable { since } => write!(
                f,
                "the server has been unreachable since {}",
                rfc3339(*since)
            ),
            Self::AgentSvidExpired { at } => write!(
                f,
                "the agent's own SVID expired at {} and the agent has not attested again",
                rfc3339(*at)
            ),
        }
    }
}

/// An SVID the agent will not hand out, and why. Its `Display` is what the workload reads.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct SvidUnavailable {
    pub kind: SvidKind,
    pub spiffe_id: SpiffeId,
    /// When the SVID the agent held expired (Unix seconds); `None` when it held none.
    pub expired_at: Option<i64>,
    /// What kept the agent from renewing it, when known.
    pub cause: Option<Outage>,
}

impl fmt::Display for SvidUnavailable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.expired_at {
            Some(at) => write!(
                f,
                "{} for {} expired at {}",
                self.kind,
                self.spiffe_id,
                rfc3339(at)
            )?,
            None => write!(f, "{} for {} cannot be minted", self.kind, self.spiffe_id)?,
        }
        match &self.cause {
            Some(cause) => write!(f, ": {cause}"),
            None if self.expired_at.is_some() => f.write_str(": it was not renewed in time"),
            None => Ok(()),
        }
    }
}

/// Unix seconds as RFC 3339 (UTC), as operators read them in logs.
pub(crate) fn rfc3339(unix: i64) -> String {
    let at = UNIX_EPOCH + Duration::from_secs(unix.max(0) as u64);
    humantime::format_rfc3339_seconds(at).to_string()
}

/// Whether an SVID whose NotAfter is `expires_at` is withdrawn at `now` (both Unix seconds):
/// from the start of its NotAfter second on.
pub fn is_expired(expires_at: i64, now: i64) -> bool {
    now >= expires_at
}

impl Cache {
    /// Withdraws every X509-SVID that [`is_expired`] at `now`, recording in the snapshot why
    /// (`cause`); returns what it withdrew. Publishes a snapshot only when something expired.
    pub fn withdraw_expired(&self, now: i64, cause: Option<Outage>) -> Vec<SvidUnavailable> {
        let mut withdrawn = Vec::new();
        self.tx.send_if_modified(|current| {
            let due = |svid: &Arc<CachedX509Svid>| is_expired(svid.expires_at, now);
            let any = current
                .identities
                .iter()
                .filter_map(|i| i.svid.as_ref())
                .any(due)
                || current.rendered.values().any(due);
            if !any {
                return false;
            }
            let mut expired = (*current.expired).clone();
            let mut identities = current.identities.clone();
            for identity in identities.iter_mut() {
                let (Some(svid), Some(spiffe_id)) = (
                    identity
                        .svid
                        .as_ref()
                        .filter(|s| is_expired(s.expires_at, now)),
                    identity.entry.spiffe_id.fixed(),
                ) else {
                    continue;
                };
                let record = SvidUnavailable {
                    kind: SvidKind::X509,
                    spiffe_id: spiffe_id.clone(),
                    expired_at: Some(svid.expires_at),
                    cause,
                };
                let key = RenderedKey {
                    entry_id: identity.entry.id.clone(),
                    spiffe_id: spiffe_id.clone(),
                };
                expired.insert(key, record.clone());
                withdrawn.push(record);
                *identity = Arc::new(super::Identity {
                    entry: identity.entry.clone(),
                    svid: None,
                });
            }
            let fixed_changed = !withdrawn.is_empty();
            let mut rendered = (*current.rendered).clone();
            rendered.retain(|key, svid| {
                if !is_expired(svid.expires_at, now) {
                    return true;
                }
                let record = SvidUnavailable {
                    kind: SvidKind::X509,
                    spiffe_id: key.spiffe_id.clone(),
                    expired_at: Some(svid.expires_at),
                    cause,
                };
                expired.insert(key.clone(), record.clone());
                withdrawn.push(record);
                false
            });
            if withdrawn.is_empty() {
                return false;
            }
            *current = Arc::new(Snapshot {
                identities: if fixed_changed {
                    identities
                } else {
                    current.identities.clone()
                },
                rendered: Arc::new(rendered),
                expired: Arc::new(expired),
                ..Snapshot::clone(current)
            });
            true
        });
        withdrawn
    }
}

/// What the watcher remembers of an SVID it has seen.
#[derive(Debug, Clone, Copy)]
struct Seen {
    expires_at: i64,
    /// When the watcher first saw it (Unix seconds): about when rotation installed it.
    arrived_at: i64,
    warned: bool,
}

/// Every X509-SVID of a snapshot with its key: fixed entries under their own ID, then the
/// rendered ones.
fn svids(snapshot: &Snapshot) -> impl Iterator<Item = (RenderedKey, &Arc<CachedX509Svid>)> {
    let fixed = snapshot.identities.iter().filter_map(|identity| {
        let svid = identity.svid.as_ref()?;
        Some((
            RenderedKey {
                entry_id: identity.entry.id.clone(),
                spiffe_id: identity.entry.spiffe_id.fixed()?.clone(),
            },
            svid,
        ))
    });
    fixed.chain(snapshot.rendered.iter().map(|(k, v)| (k.clone(), v)))
}

/// Withdraws X509-SVIDs as they expire and warns about those past half their life while the
/// server is unreachable, until `cancel` fires. `outage` says, for a Unix time, why the agent
/// cannot renew anything then (`None`: the server answers). Keeps the `expired_x509_svids`
/// gauge and the readiness count in step with the cache.
pub async fn watch_expiry(
    cache: Arc<Cache>,
    outage: impl Fn(i64) -> Option<Outage> + Send,
    metrics: Arc<Metrics>,
    readiness: Arc<Readiness>,
    cancel: CancellationToken,
) {
    let mut changes = cache.subscribe();
    let mut seen: HashMap<RenderedKey, Seen> = HashMap::new();
    loop {
        changes.borrow_and_update();
        let now_ms = unix_now_ms();
        let now = now_ms.div_euclid(1000);
        for record in cache.withdraw_expired(now, outage(now)) {
            warn!(
                spiffe_id = %record.spiffe_id,
                "{record}; withheld from workloads (they get Unavailable) until it is renewed"
            );
        }
        changes.borrow_and_update();
        let snapshot = cache.snapshot();

        let outage_now = outage(now);
        let mut wake_at: Option<i64> = None;
        let mut poll: Option<Duration> = None;
        let mut present = HashMap::with_capacity(seen.len());
        for (key, svid) in svids(&snapshot) {
            let mut s = match seen.remove(&key) {
                Some(s) if s.expires_at == svid.expires_at => s,
                _ => Seen {
                    expires_at: svid.expires_at,
                    arrived_at: now,
                    warned: false,
                },
            };
            let half = s.arrived_at + (s.expires_at - s.arrived_at).max(0) / 2;
            if now < half {
                wake_at = Some(wake_at.map_or(half, |w| w.min(half)));
            } else if !s.warned {
                match outage_now {
                    Some(cause) => {
                        s.warned = true;
                        metrics.svid_past_half_life("x509");
                        warn!(
                            spiffe_id = %key.spiffe_id,
                            entry_id = %key.entry_id,
                            expires_at = %rfc3339(s.expires_at),
                            "X509-SVID past half its life and not renewed: {cause}; workloads lose it at {} unless the agent reaches the server first",
                            rfc3339(s.expires_at)
                        );
                    }
                    None => {
                        let tenth = Duration::from_secs(((s.expires_at - now).max(0) / 10) as u64)
                            .clamp(HALF_LIFE_POLL_MIN, HALF_LIFE_POLL_MAX);
                        poll = Some(poll.map_or(tenth, |p| p.min(tenth)));
                    }
                }
            }
            wake_at = Some(wake_at.map_or(s.expires_at, |w| w.min(s.expires_at)));
            present.insert(key, s);
        }
        seen = present;
        let expired = snapshot.expired.len();
        metrics.expired_x509_svids.set(expired as i64);
        readiness.set_expired_svids(expired);

        let mut sleep = wake_at
            .map(|at| Duration::from_millis((at * 1000 - unix_now_ms()).max(0) as u64))
            .unwrap_or(MAX_SLEEP)
            .min(MAX_SLEEP);
        if let Some(poll) = poll {
            sleep = sleep.min(poll);
        }
        tokio::select! {
            () = cancel.cancelled() => return,
            r = changes.changed() => if r.is_err() { return },
            () = tokio::time::sleep(sleep) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::testing::{TestCa, entry, now, template_entry};

    fn cache_with(ca: &TestCa, expires_at: i64) -> Cache {
        let cache = Cache::new(ca.bundle(None));
        cache.replace_entries(vec![
            entry("a", "spiffe://example.org/a", &["unix:uid:1"], 1),
            entry("b", "spiffe://example.org/b", &["unix:uid:2"], 2),
        ]);
        let mut svid = ca.svid("spiffe://example.org/a");
        svid.expires_at = expires_at;
        cache.set_svid("a", svid).unwrap();
        cache
            .set_svid("b", ca.svid("spiffe://example.org/b"))
            .unwrap();
        cache
    }

    #[test]
    fn an_expired_svid_is_withdrawn_with_its_reason_and_a_fresh_one_clears_it() {
        let ca = TestCa::new("example.org");
        let t = now();
        let cache = cache_with(&ca, t + 5);
        let a = SpiffeId::new("spiffe://example.org/a").unwrap();
        let cause = Some(Outage::ServerUnreachable { since: t - 60 });

        // Before its NotAfter second nothing happens, and no snapshot is published.
        let mut rx = cache.subscribe();
        rx.borrow_and_update();
        assert!(cache.withdraw_expired(t + 4, cause).is_empty());
        assert!(!rx.has_changed().unwrap());

        // From the start of its NotAfter second it is gone, the other SVID stays.
        let withdrawn = cache.withdraw_expired(t + 5, cause);
        assert_eq!(withdrawn.len(), 1);
        let snapshot = cache.snapshot();
        assert!(snapshot.identity("a").unwrap().svid.is_none());
        assert!(snapshot.identity("b").unwrap().svid.is_some());
        let record = snapshot.expired("a", &a).unwrap();
        assert_eq!(record, &withdrawn[0]);
        let text = record.to_string();
        assert!(
            text.starts_with("X509-SVID for spiffe://example.org/a expired at "),
            "{text}"
        );
        assert!(
            text.contains("the server has been unreachable since "),
            "{text}"
        );

        // An entry change that keeps the ID keeps the record; a fresh SVID clears it.
        let mut changed = entry("a", "spiffe://example.org/a", &["unix:uid:1"], 1);
        changed.revision = 2;
        cache.upsert_entries(vec![changed]);
        assert!(cache.snapshot().expired("a", &a).is_some());
        cache
            .set_svid("a", ca.svid("spiffe://example.org/a"))
            .unwrap();
        assert!(cache.snapshot().expired("a", &a).is_none());
        assert!(cache.snapshot().expired.is_empty());
    }

    #[test]
    fn records_leave_with_their_entry() {
        let ca = TestCa::new("example.org");
        let t = now();
        let cache = cache_with(&ca, t);
        cache.withdraw_expired(t, None);
        assert_eq!(cache.snapshot().expired.len(), 1);
        cache.remove_entries(["a"]);
        assert!(cache.snapshot().expired.is_empty());
    }

    #[test]
    fn rendered_svids_expire_too() {
        let ca = TestCa::new("example.org");
        let cache = Cache::new(ca.bundle(None));
        cache.replace_entries(vec![template_entry(
            "t",
            "spiffe://example.org/ns/{k8s:ns}",
            &["k8s:ns"],
            1,
        )]);
        let id = SpiffeId::new("spiffe://example.org/ns/a").unwrap();
        let key = RenderedKey {
            entry_id: "t".into(),
            spiffe_id: id.clone(),
        };
        let mut svid = ca.svid("spiffe://example.org/ns/a");
        let t = now();
        svid.expires_at = t;
        assert!(
            cache
                .set_rendered_svids(vec![(key.clone(), svid)])
                .is_empty()
        );
        let cause = Some(Outage::AgentSvidExpired { at: t - 1 });
        assert_eq!(cache.withdraw_expired(t, cause).len(), 1);
        let snapshot = cache.snapshot();
        assert!(snapshot.rendered.is_empty());
        let text = snapshot.expired("t", &id).unwrap().to_string();
        assert!(text.contains("the agent's own SVID expired at"), "{text}");
        // Nobody wants it any more: the record goes with the demand.
        cache.remove_rendered(std::slice::from_ref(&key));
        assert!(cache.snapshot().expired.is_empty());
    }

    #[test]
    fn messages_say_what_and_why() {
        let id = SpiffeId::new("spiffe://example.org/w").unwrap();
        let never = SvidUnavailable {
            kind: SvidKind::Jwt,
            spiffe_id: id.clone(),
            expired_at: None,
            cause: Some(Outage::ServerUnreachable { since: 0 }),
        };
        assert_eq!(
            never.to_string(),
            "JWT-SVID for spiffe://example.org/w cannot be minted: the server has been unreachable since 1970-01-01T00:00:00Z"
        );
        let unexplained = SvidUnavailable {
            kind: SvidKind::X509,
            spiffe_id: id,
            expired_at: Some(60),
            cause: None,
        };
        assert_eq!(
            unexplained.to_string(),
            "X509-SVID for spiffe://example.org/w expired at 1970-01-01T00:01:00Z: it was not renewed in time"
        );
    }

    #[tokio::test]
    async fn the_watcher_withdraws_on_time_and_warns_once_past_half_life() {
        let ca = TestCa::new("example.org");
        let t = now();
        // Expires in 2 s: half-life (from arrival) is already near.
        let cache = Arc::new(cache_with(&ca, t + 2));
        let metrics = Metrics::new();
        let readiness = Arc::new(Readiness::default());
        let cancel = CancellationToken::new();
        let task = tokio::spawn(watch_expiry(
            cache.clone(),
            move |_| Some(Outage::ServerUnreachable { since: t }),
            metrics.clone(),
            readiness.clone(),
            cancel.clone(),
        ));
        let a = SpiffeId::new("spiffe://example.org/a").unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while cache.snapshot().expired("a", &a).is_none() {
            assert!(tokio::time::Instant::now() < deadline, "not withdrawn");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // Withdrawn no later than the start of its NotAfter second.
        assert!(unix_now_ms() < (t + 3) * 1000);
        tokio::time::sleep(Duration::from_millis(100)).await;
        let text = metrics.encode();
        assert!(
            text.contains("sigil_agent_svids_past_half_life_total{kind=\"x509\"} 1"),
            "{text}"
        );
        assert!(text.contains("sigil_agent_expired_x509_svids 1"), "{text}");
        readiness.set(true);
        assert!(!readiness.is_ready());
        cancel.cancel();
        task.await.unwrap();
    }
}
