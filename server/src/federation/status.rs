//! Per-peer poll status: when each federated trust domain's endpoint was last polled, when it
//! will be next, and the last error. The pollers write it; `federation show` and the web
//! console read a snapshot (or follow it with [`PeerStatuses::subscribe`]).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::SystemTime;

use sigil_proto::TrustDomain;
use tokio::sync::watch;

/// Where a relationship comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// The config file's `federates_with`.
    Config,
    /// The datastore (`federation create`).
    Datastore,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Config => "config",
            Self::Datastore => "datastore",
        }
    }
}

/// One peer's status.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerStatus {
    pub source: Source,
    pub url: String,
    /// When the last poll ended, successful or not.
    pub last_refresh: Option<SystemTime>,
    /// When the last poll that stored (or confirmed) a bundle ended.
    pub last_success: Option<SystemTime>,
    /// When the next poll is due; `None` while one runs.
    pub next_refresh: Option<SystemTime>,
    /// Why the last poll failed; `None` when it succeeded.
    pub last_error: Option<String>,
}

impl PeerStatus {
    pub fn new(source: Source, url: String) -> Self {
        Self {
            source,
            url,
            last_refresh: None,
            last_success: None,
            next_refresh: None,
            last_error: None,
        }
    }
}

/// Every polled peer's status, by trust domain.
pub type StatusMap = Arc<BTreeMap<TrustDomain, PeerStatus>>;

/// The shared status of every poller.
#[derive(Debug)]
pub struct PeerStatuses {
    tx: watch::Sender<StatusMap>,
}

impl Default for PeerStatuses {
    fn default() -> Self {
        Self {
            tx: watch::Sender::new(StatusMap::default()),
        }
    }
}

impl PeerStatuses {
    pub fn snapshot(&self) -> StatusMap {
        self.tx.borrow().clone()
    }

    pub fn get(&self, trust_domain: &TrustDomain) -> Option<PeerStatus> {
        self.tx.borrow().get(trust_domain).cloned()
    }

    /// The current map, and every later one.
    pub fn subscribe(&self) -> watch::Receiver<StatusMap> {
        self.tx.subscribe()
    }

    /// Starts (or restarts, after a config change) tracking a peer: its previous times and
    /// error are kept when the URL and source are unchanged.
    pub(super) fn track(&self, trust_domain: &TrustDomain, source: Source, url: &str) {
        self.tx.send_modify(|map| {
            let map = Arc::make_mut(map);
            match map.get_mut(trust_domain) {
                Some(s) if s.source == source && s.url == url => {}
                _ => {
                    map.insert(
                        trust_domain.clone(),
                        PeerStatus::new(source, url.to_owned()),
                    );
                }
            }
        });
    }

    pub(super) fn forget(&self, trust_domain: &TrustDomain) {
        self.tx.send_modify(|map| {
            Arc::make_mut(map).remove(trust_domain);
        });
    }

    /// Changes one peer's status, if tracked.
    pub(super) fn update(&self, trust_domain: &TrustDomain, change: impl FnOnce(&mut PeerStatus)) {
        self.tx.send_if_modified(|map| {
            if !map.contains_key(trust_domain) {
                return false;
            }
            if let Some(s) = Arc::make_mut(map).get_mut(trust_domain) {
                change(s);
            }
            true
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn track_keeps_history_unless_the_peer_changes() {
        let s = PeerStatuses::default();
        let td = TrustDomain::new("o.org").unwrap();
        s.track(&td, Source::Datastore, "https://a");
        s.update(&td, |p| p.last_error = Some("boom".into()));
        s.track(&td, Source::Datastore, "https://a");
        assert_eq!(s.get(&td).unwrap().last_error.as_deref(), Some("boom"));
        s.track(&td, Source::Datastore, "https://b");
        assert_eq!(
            s.get(&td).unwrap(),
            PeerStatus::new(Source::Datastore, "https://b".into())
        );
        let other = TrustDomain::new("x.org").unwrap();
        s.update(&other, |p| p.last_error = Some("x".into()));
        assert!(s.get(&other).is_none(), "untracked peers are not added");
        s.forget(&td);
        assert!(s.snapshot().is_empty());
    }
}
