//! The federated trust domains we poll, and one poller each: the config file's
//! `federates_with` plus the relationships in the datastore (`federation create`), the config
//! file winning for a trust domain named in both (as SPIRE: static relationships override
//! dynamic ones).
//!
//! The set is read again whenever the datastore's change feed announces a relationship change
//! (made through this server or, on PostgreSQL, any replica) or may have lost one; a poller
//! whose relationship changed is restarted, so it polls the new endpoint at once.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use sigil_proto::TrustDomain;
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::{Mutex, mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use super::FederatedBundles;
use super::config::FederatesWith;
use super::poller::{self, PollOutcome, RefreshRequest};
use super::status::{PeerStatuses, Source};
use crate::datastore::{Change, Datastore, DatastoreError};

/// Refresh requests queued per poller (more wait for a slot).
const REQUEST_QUEUE: usize = 16;
/// How soon a failed read of the relationships is tried again.
const RETRY: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum RefreshError {
    #[error("no federation relationship with trust domain {0:?}")]
    NotManaged(TrustDomain),
    #[error("the relationship with {0} changed during the refresh; try again")]
    Stopped(TrustDomain),
    #[error("{0}")]
    Failed(String),
}

struct Running {
    target: FederatesWith,
    source: Source,
    requests: mpsc::Sender<RefreshRequest>,
    cancel: CancellationToken,
}

pub struct Peers {
    own: TrustDomain,
    configured: Vec<FederatesWith>,
    datastore: Datastore,
    bundles: Arc<FederatedBundles>,
    statuses: Arc<PeerStatuses>,
    running: Mutex<BTreeMap<TrustDomain, Running>>,
    cancel: CancellationToken,
}

impl Peers {
    /// Pollers are children of `cancel`.
    pub fn new(
        own: TrustDomain,
        configured: Vec<FederatesWith>,
        datastore: Datastore,
        bundles: Arc<FederatedBundles>,
        cancel: CancellationToken,
    ) -> Self {
        Self {
            own,
            configured,
            datastore,
            bundles,
            statuses: Arc::default(),
            running: Mutex::default(),
            cancel,
        }
    }

    /// Every polled peer's status.
    pub fn statuses(&self) -> Arc<PeerStatuses> {
        self.statuses.clone()
    }

    /// Whether the config file names `trust_domain` (its relationship then wins).
    pub fn configured(&self, trust_domain: &TrustDomain) -> bool {
        self.configured
            .iter()
            .any(|f| &f.trust_domain == trust_domain)
    }

    /// Starts the pollers and follows relationship changes until cancelled.
    pub async fn run(self: Arc<Self>) -> anyhow::Result<()> {
        let mut changes = self.datastore.subscribe_changes();
        loop {
            let failed = self.reconcile().await.is_err();
            loop {
                let reload = tokio::select! {
                    () = self.cancel.cancelled() => return Ok(()),
                    () = tokio::time::sleep(RETRY), if failed => true,
                    change = changes.recv() => match change {
                        Ok(Change::FederationRelationship(_) | Change::Resync)
                        | Err(RecvError::Lagged(_)) => true,
                        Ok(_) => false,
                        Err(RecvError::Closed) => {
                            self.cancel.cancelled().await;
                            return Ok(());
                        }
                    },
                };
                if reload {
                    break;
                }
            }
        }
    }

    /// Brings the running pollers in line with the config file and the datastore. When the
    /// datastore cannot be read, the config file's pollers still start and the datastore's
    /// keep running as they are.
    pub async fn reconcile(&self) -> Result<(), DatastoreError> {
        let stored = self.datastore.list_federation_relationships().await;
        let mut running = self.running.lock().await;
        let mut wanted: BTreeMap<TrustDomain, (FederatesWith, Source)> = BTreeMap::new();
        match &stored {
            Ok(list) => {
                for r in list {
                    wanted.insert(r.trust_domain.clone(), (r.clone(), Source::Datastore));
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot read the federation relationships; polling the last known set");
                for (td, r) in running.iter() {
                    if r.source == Source::Datastore {
                        wanted.insert(td.clone(), (r.target.clone(), Source::Datastore));
                    }
                }
            }
        }
        for r in &self.configured {
            if let Some((_, Source::Datastore)) = wanted.get(&r.trust_domain) {
                tracing::warn!(trust_domain = %r.trust_domain, "a federation relationship in the datastore is overridden by the config file's federates_with");
            }
            wanted.insert(r.trust_domain.clone(), (r.clone(), Source::Config));
        }
        if wanted.remove(&self.own).is_some() {
            tracing::warn!(trust_domain = %self.own, "not polling our own trust domain's bundle endpoint");
        }
        running.retain(|td, r| {
            let keep = wanted
                .get(td)
                .is_some_and(|(t, s)| *t == r.target && *s == r.source)
                && !r.requests.is_closed();
            if !keep {
                r.cancel.cancel();
                if !wanted.contains_key(td) {
                    tracing::info!(trust_domain = %td, "federated trust domain no longer polled");
                    self.statuses.forget(td);
                }
            }
            keep
        });
        for (td, (target, source)) in wanted {
            if running.contains_key(&td) {
                continue;
            }
            tracing::info!(trust_domain = %td, url = %target.url, source = source.as_str(), "polling a federated bundle endpoint");
            self.statuses.track(&td, source, &target.url);
            let (requests, rx) = mpsc::channel(REQUEST_QUEUE);
            let cancel = self.cancel.child_token();
            let span = tracing::info_span!("task", name = "federation poller", trust_domain = %td);
            tokio::spawn(
                poller::poll_forever(
                    target.clone(),
                    self.bundles.clone(),
                    self.statuses.clone(),
                    rx,
                    cancel.clone(),
                )
                .instrument(span),
            );
            running.insert(
                td,
                Running {
                    target,
                    source,
                    requests,
                    cancel,
                },
            );
        }
        stored.map(|_| ())
    }

    /// Polls `trust_domain` at once (after reading the relationships again, so one just
    /// created elsewhere is found) and waits for the result.
    pub async fn refresh(&self, trust_domain: &TrustDomain) -> Result<(), RefreshError> {
        if let Err(e) = self.reconcile().await {
            tracing::warn!(error = %e, "cannot read the federation relationships");
        }
        let requests = self
            .running
            .lock()
            .await
            .get(trust_domain)
            .map(|r| r.requests.clone())
            .ok_or_else(|| RefreshError::NotManaged(trust_domain.clone()))?;
        let (reply, answer) = oneshot::channel::<PollOutcome>();
        let stopped = || RefreshError::Stopped(trust_domain.clone());
        requests.send(reply).await.map_err(|_| stopped())?;
        answer
            .await
            .map_err(|_| stopped())?
            .map(|_| ())
            .map_err(RefreshError::Failed)
    }
}

impl Drop for Peers {
    fn drop(&mut self) {
        for r in self.running.get_mut().values() {
            r.cancel.cancel();
        }
    }
}

#[cfg(test)]
mod tests {
    use sigil_proto::SpiffeId;

    use super::*;
    use crate::datastore::tests::store;
    use crate::federation::config::EndpointProfile;

    fn rel(td: &str, url: &str) -> FederatesWith {
        FederatesWith {
            trust_domain: TrustDomain::new(td).unwrap(),
            url: url.into(),
            profile: EndpointProfile::HttpsSpiffe {
                endpoint_spiffe_id: SpiffeId::new(&format!("spiffe://{td}/spire/server")).unwrap(),
            },
        }
    }

    /// The config file wins over the datastore; created, updated and deleted relationships are
    /// followed through the change feed; our own trust domain is never polled.
    #[tokio::test]
    async fn follows_the_datastore_and_the_config_wins() {
        let (_dir, ds) = store().await;
        let own = TrustDomain::new("td").unwrap();
        let bundles = Arc::new(
            FederatedBundles::load(ds.clone(), own.clone())
                .await
                .unwrap(),
        );
        let cancel = CancellationToken::new();
        let peers = Arc::new(Peers::new(
            own,
            vec![
                rel("cfg.org", "https://127.0.0.1:1"),
                rel("td", "https://x"),
            ],
            ds.clone(),
            bundles,
            cancel.clone(),
        ));
        let run = tokio::spawn(peers.clone().run());
        let statuses = peers.statuses();
        let wait_for = |want: Vec<(&'static str, Source, &'static str)>| {
            let statuses = statuses.clone();
            async move {
                let mut rx = statuses.subscribe();
                let view = |m: &super::super::status::StatusMap| {
                    m.iter()
                        .map(|(td, s)| (td.to_string(), s.source, s.url.clone()))
                        .collect::<Vec<_>>()
                };
                let want: Vec<_> = want
                    .into_iter()
                    .map(|(t, s, u)| (t.to_owned(), s, u.to_owned()))
                    .collect();
                let reached = tokio::time::timeout(
                    std::time::Duration::from_secs(5),
                    rx.wait_for(|m| view(m) == want),
                )
                .await
                .is_ok();
                assert!(
                    reached,
                    "statuses never became {want:?}: {:?}",
                    view(&statuses.snapshot())
                );
            }
        };
        wait_for(vec![("cfg.org", Source::Config, "https://127.0.0.1:1")]).await;

        ds.create_federation_relationship(&rel("cfg.org", "https://127.0.0.1:2"), None)
            .await
            .unwrap();
        ds.create_federation_relationship(&rel("dyn.org", "https://127.0.0.1:3"), None)
            .await
            .unwrap();
        wait_for(vec![
            ("cfg.org", Source::Config, "https://127.0.0.1:1"),
            ("dyn.org", Source::Datastore, "https://127.0.0.1:3"),
        ])
        .await;
        ds.update_federation_relationship(&rel("dyn.org", "https://127.0.0.1:4"), None)
            .await
            .unwrap();
        wait_for(vec![
            ("cfg.org", Source::Config, "https://127.0.0.1:1"),
            ("dyn.org", Source::Datastore, "https://127.0.0.1:4"),
        ])
        .await;
        // Nothing listens there: the refresh reports the poll's error.
        let err = peers
            .refresh(&TrustDomain::new("dyn.org").unwrap())
            .await
            .unwrap_err();
        assert!(
            err.to_string().contains("no bundle held for dyn.org"),
            "{err}"
        );
        assert!(matches!(
            peers.refresh(&TrustDomain::new("none.org").unwrap()).await,
            Err(RefreshError::NotManaged(_))
        ));
        ds.delete_federation_relationship(&TrustDomain::new("dyn.org").unwrap())
            .await
            .unwrap();
        wait_for(vec![("cfg.org", Source::Config, "https://127.0.0.1:1")]).await;
        cancel.cancel();
        run.await.unwrap().unwrap();
    }
}
