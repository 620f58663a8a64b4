//! The federated bundles this server holds, in memory and in the datastore.
//!
//! Every writer (the admin API's `bundle set/delete`, the bundle endpoint poller) goes through
//! [`FederatedBundles`], which writes the datastore first and then publishes the whole set on a
//! `watch` channel, so agent sync streams push it at once; writes made elsewhere (another
//! replica) are followed through the datastore's change feed ([`FederatedBundles::follow`]).
//! Our own trust domain's bundle lives in the same table but belongs to the CA: it is refused
//! here.

use std::collections::BTreeMap;
use std::sync::Arc;

use sigil_proto::{Bundle, RegistrationEntry, TrustDomain};
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::{Mutex, watch};
use tokio_util::sync::CancellationToken;

use super::FederationError;
use super::config::FederatesWith;
use crate::datastore::{Change, Datastore};

/// Every federated bundle, by trust domain.
pub type BundleSet = Arc<BTreeMap<TrustDomain, Arc<Bundle>>>;

/// What `bundle delete` does to the entries that federate with the trust domain (SPIRE's
/// `-mode`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DeleteMode {
    /// Refuse while any entry federates with it.
    #[default]
    Restrict,
    /// Delete those entries.
    Delete,
    /// Remove the trust domain from their `federates_with`.
    Dissociate,
}

impl std::str::FromStr for DeleteMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "restrict" => Ok(Self::Restrict),
            "delete" => Ok(Self::Delete),
            "dissociate" => Ok(Self::Dissociate),
            other => Err(format!(
                "unknown mode {other:?}: use restrict, delete or dissociate"
            )),
        }
    }
}

/// Whether a bundle fetched from an endpoint replaces the stored one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refreshed {
    /// Stored (new content, sequence not behind).
    Updated,
    /// Same content as stored.
    Unchanged,
}

/// The federated bundle set: datastore rows plus a `watch` of the whole set.
#[derive(Debug)]
pub struct FederatedBundles {
    datastore: Datastore,
    own: TrustDomain,
    tx: watch::Sender<BundleSet>,
    /// Serialises writers so the published set always equals the datastore's.
    write: Mutex<()>,
}

impl FederatedBundles {
    /// Loads every stored bundle except our own.
    pub async fn load(datastore: Datastore, own: TrustDomain) -> Result<Self, FederationError> {
        let set: BTreeMap<TrustDomain, Arc<Bundle>> = datastore
            .list_bundles()
            .await?
            .into_iter()
            .filter(|b| b.trust_domain != own)
            .map(|b| (b.trust_domain.clone(), Arc::new(b)))
            .collect();
        Ok(Self {
            datastore,
            own,
            tx: watch::Sender::new(Arc::new(set)),
            write: Mutex::new(()),
        })
    }

    /// The current set, and every later one.
    pub fn subscribe(&self) -> watch::Receiver<BundleSet> {
        self.tx.subscribe()
    }

    pub fn current(&self) -> BundleSet {
        self.tx.borrow().clone()
    }

    pub fn fetch(&self, trust_domain: &TrustDomain) -> Option<Arc<Bundle>> {
        self.tx.borrow().get(trust_domain).cloned()
    }

    /// Stores `bundle` as given (the operator's `bundle set`), replacing any bundle of its
    /// trust domain whatever its sequence.
    pub async fn set(&self, bundle: Bundle) -> Result<(), FederationError> {
        self.check(&bundle)?;
        let _guard = self.write.lock().await;
        self.store(bundle).await
    }

    /// Creates (`create`) or replaces a federation relationship in the datastore, with
    /// `bundle` (if given) in the same transaction, then publishes that bundle.
    pub async fn write_relationship(
        &self,
        relationship: &FederatesWith,
        bundle: Option<Bundle>,
        create: bool,
    ) -> Result<(), FederationError> {
        if relationship.trust_domain == self.own {
            return Err(FederationError::OwnTrustDomain(self.own.clone()));
        }
        if let Some(b) = &bundle {
            self.check(b)?;
        }
        let _guard = self.write.lock().await;
        if create {
            self.datastore
                .create_federation_relationship(relationship, bundle.as_ref())
                .await?;
        } else {
            self.datastore
                .update_federation_relationship(relationship, bundle.as_ref())
                .await?;
        }
        if let Some(bundle) = bundle {
            tracing::info!(trust_domain = %bundle.trust_domain, "federated bundle stored with a federation relationship");
            self.tx.send_modify(|set| {
                Arc::make_mut(set).insert(bundle.trust_domain.clone(), Arc::new(bundle));
            });
        }
        Ok(())
    }

    /// Stores a bundle fetched from `trust_domain`'s endpoint: it must be of that trust domain
    /// and its sequence must not go behind the stored one.
    pub async fn refresh(
        &self,
        trust_domain: &TrustDomain,
        bundle: Bundle,
    ) -> Result<Refreshed, FederationError> {
        if &bundle.trust_domain != trust_domain {
            return Err(FederationError::WrongTrustDomain {
                expected: trust_domain.clone(),
                found: bundle.trust_domain,
            });
        }
        self.check(&bundle)?;
        let _guard = self.write.lock().await;
        let stored = self.fetch(trust_domain);
        match check_sequence(stored.as_deref(), &bundle)? {
            Refreshed::Unchanged => Ok(Refreshed::Unchanged),
            Refreshed::Updated => {
                self.store(bundle).await?;
                Ok(Refreshed::Updated)
            }
        }
    }

    /// Deletes the bundle of `trust_domain`, handling the entries that federate with it as
    /// `mode` says; returns those entries (deleted or dissociated). The entries change first,
    /// so a failure leaves the bundle in place and the command can be retried.
    pub async fn delete(
        &self,
        trust_domain: &TrustDomain,
        mode: DeleteMode,
    ) -> Result<Vec<RegistrationEntry>, FederationError> {
        if trust_domain == &self.own {
            return Err(FederationError::OwnTrustDomain(self.own.clone()));
        }
        let _guard = self.write.lock().await;
        if self.fetch(trust_domain).is_none() {
            return Err(FederationError::NotFound(trust_domain.clone()));
        }
        let ids = self
            .datastore
            .list_entry_ids_federating_with(trust_domain)
            .await?;
        let affected = match mode {
            _ if ids.is_empty() => Vec::new(),
            DeleteMode::Restrict => {
                return Err(FederationError::InUse {
                    trust_domain: trust_domain.clone(),
                    entries: ids.len(),
                });
            }
            DeleteMode::Delete => self.datastore.delete_entries(&ids).await?,
            DeleteMode::Dissociate => {
                let mut entries = Vec::with_capacity(ids.len());
                for id in &ids {
                    if let Some(mut e) = self.datastore.fetch_entry(id).await? {
                        e.federates_with.retain(|td| td != trust_domain);
                        entries.push(e);
                    }
                }
                self.datastore.update_entries(entries).await?
            }
        };
        self.datastore.delete_bundle(trust_domain).await?;
        self.tx.send_modify(|set| {
            Arc::make_mut(set).remove(trust_domain);
        });
        tracing::info!(trust_domain = %trust_domain, ?mode, entries = affected.len(), "federated bundle deleted");
        Ok(affected)
    }

    /// Follows bundle writes made elsewhere (another replica's poller, `bundle set` or
    /// `federation create` on PostgreSQL) through the datastore's change feed, until
    /// `cancel` fires.
    pub async fn follow(self: Arc<Self>, cancel: CancellationToken) -> anyhow::Result<()> {
        let mut changes = self.datastore.subscribe_changes();
        loop {
            let reload = tokio::select! {
                () = cancel.cancelled() => return Ok(()),
                change = changes.recv() => match change {
                    Ok(Change::Bundle(td)) if td != self.own => Some(td),
                    Ok(Change::Resync) | Err(RecvError::Lagged(_)) => None,
                    Ok(_) => continue,
                    Err(RecvError::Closed) => return Ok(()),
                },
            };
            if let Err(e) = self.reload(reload.as_ref()).await {
                tracing::warn!(error = %e, "cannot read federated bundles changed elsewhere");
            }
        }
    }

    /// Reads `trust_domain`'s bundle (every bundle when `None`) from the datastore again and
    /// publishes it if it differs from the one held.
    async fn reload(&self, trust_domain: Option<&TrustDomain>) -> Result<(), FederationError> {
        let _guard = self.write.lock().await;
        let stored: BTreeMap<TrustDomain, Arc<Bundle>> = match trust_domain {
            Some(td) => self
                .datastore
                .fetch_bundle(td)
                .await?
                .map(|b| (td.clone(), Arc::new(b)))
                .into_iter()
                .collect(),
            None => self
                .datastore
                .list_bundles()
                .await?
                .into_iter()
                .filter(|b| b.trust_domain != self.own)
                .map(|b| (b.trust_domain.clone(), Arc::new(b)))
                .collect(),
        };
        self.tx.send_if_modified(|set| {
            let next: BTreeMap<TrustDomain, Arc<Bundle>> = match trust_domain {
                Some(td) => {
                    let mut next = (**set).clone();
                    match stored.get(td) {
                        Some(b) => next.insert(td.clone(), b.clone()),
                        None => next.remove(td),
                    };
                    next
                }
                None => stored,
            };
            if **set == next {
                return false;
            }
            *set = Arc::new(next);
            true
        });
        Ok(())
    }

    fn check(&self, bundle: &Bundle) -> Result<(), FederationError> {
        if bundle.trust_domain == self.own {
            return Err(FederationError::OwnTrustDomain(self.own.clone()));
        }
        if bundle.x509_authorities.is_empty() {
            return Err(FederationError::NoX509Authority(
                bundle.trust_domain.clone(),
            ));
        }
        Ok(())
    }

    async fn store(&self, bundle: Bundle) -> Result<(), FederationError> {
        self.datastore.set_bundle(&bundle).await?;
        tracing::info!(
            trust_domain = %bundle.trust_domain,
            sequence = bundle.sequence,
            x509_authorities = bundle.x509_authorities.len(),
            jwt_authorities = bundle.jwt_authorities.len(),
            "federated bundle stored"
        );
        self.tx.send_modify(|set| {
            Arc::make_mut(set).insert(bundle.trust_domain.clone(), Arc::new(bundle));
        });
        Ok(())
    }
}

/// Whether a fetched bundle may replace `stored`: a sequence behind the stored one is refused
/// (an old or replayed document); the same content is no change. A bundle set by hand with
/// `-format pem` has sequence 0, so any served sequence follows it.
pub fn check_sequence(
    stored: Option<&Bundle>,
    fetched: &Bundle,
) -> Result<Refreshed, FederationError> {
    let Some(stored) = stored else {
        return Ok(Refreshed::Updated);
    };
    if fetched.sequence < stored.sequence {
        return Err(FederationError::SequenceBehind {
            trust_domain: fetched.trust_domain.clone(),
            stored: stored.sequence,
            fetched: fetched.sequence,
        });
    }
    if same_content(stored, fetched) {
        Ok(Refreshed::Unchanged)
    } else {
        Ok(Refreshed::Updated)
    }
}

/// Equal authorities, sequence and hint; JWT key expiries are not served and so not compared.
fn same_content(a: &Bundle, b: &Bundle) -> bool {
    let keys = |x: &Bundle| {
        x.jwt_authorities
            .iter()
            .map(|k| (k.key_id.clone(), k.public_key.clone()))
            .collect::<Vec<_>>()
    };
    a.sequence == b.sequence
        && a.refresh_hint == b.refresh_hint
        && a.x509_authorities == b.x509_authorities
        && keys(a) == keys(b)
}

#[cfg(test)]
mod tests {
    use sigil_proto::SpiffeId;

    use crate::datastore::tests::store;

    use super::*;

    fn td(s: &str) -> TrustDomain {
        TrustDomain::new(s).unwrap()
    }

    fn bundle(name: &str, sequence: u64, cert: u8) -> Bundle {
        let mut b = Bundle::new(td(name));
        b.x509_authorities = vec![vec![0x30, cert]];
        b.sequence = sequence;
        b
    }

    async fn holder() -> (tempfile::TempDir, Datastore, FederatedBundles) {
        let (dir, ds) = store().await;
        // Our own bundle in the same table must stay invisible and untouchable.
        ds.set_bundle(&bundle("td", 1, 1)).await.unwrap();
        let f = FederatedBundles::load(ds.clone(), td("td")).await.unwrap();
        (dir, ds, f)
    }

    #[tokio::test]
    async fn set_publishes_and_refuses_own_and_empty() {
        let (_dir, ds, f) = holder().await;
        assert!(f.current().is_empty(), "own bundle is not federated");
        let mut rx = f.subscribe();
        f.set(bundle("other.org", 0, 2)).await.unwrap();
        assert!(rx.has_changed().unwrap());
        assert_eq!(rx.borrow_and_update().len(), 1);

        let own = f.set(bundle("td", 9, 9)).await;
        assert!(matches!(own, Err(FederationError::OwnTrustDomain(_))));
        assert_eq!(
            ds.fetch_bundle(&td("td")).await.unwrap().unwrap().sequence,
            1
        );
        let empty = f.set(Bundle::new(td("x.org"))).await;
        assert!(matches!(empty, Err(FederationError::NoX509Authority(_))));
        assert!(!rx.has_changed().unwrap(), "refused writes publish nothing");
        assert!(matches!(
            f.delete(&td("td"), DeleteMode::Delete).await,
            Err(FederationError::OwnTrustDomain(_))
        ));

        // A restart loads what was stored.
        let again = FederatedBundles::load(ds, td("td")).await.unwrap();
        assert_eq!(
            again.current().keys().collect::<Vec<_>>(),
            vec![&td("other.org")]
        );
    }

    /// A second holder on the same datastore (as a replica) follows writes made through the
    /// first: stored, replaced, deleted.
    #[tokio::test]
    async fn follows_writes_made_elsewhere() {
        let (_dir, ds, f) = holder().await;
        let other = Arc::new(FederatedBundles::load(ds, td("td")).await.unwrap());
        let cancel = tokio_util::sync::CancellationToken::new();
        let following = tokio::spawn(other.clone().follow(cancel.clone()));
        let mut rx = other.subscribe();
        let wait = |rx: &mut watch::Receiver<BundleSet>, want: Option<u8>| {
            let mut rx = rx.clone();
            async move {
                let got = tokio::time::timeout(
                    std::time::Duration::from_secs(5),
                    rx.wait_for(|set| {
                        set.get(&td("o.org")).map(|b| b.x509_authorities[0][1]) == want
                    }),
                )
                .await;
                assert!(got.is_ok(), "never saw {want:?}");
            }
        };
        f.set(bundle("o.org", 0, 2)).await.unwrap();
        wait(&mut rx, Some(2)).await;
        f.set(bundle("o.org", 0, 3)).await.unwrap();
        wait(&mut rx, Some(3)).await;
        f.delete(&td("o.org"), DeleteMode::Restrict).await.unwrap();
        wait(&mut rx, None).await;
        assert!(other.current().is_empty(), "own bundle never joins");
        cancel.cancel();
        following.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn refresh_checks_trust_domain_and_sequence() {
        let (_dir, _ds, f) = holder().await;
        let other = td("other.org");
        assert_eq!(
            f.refresh(&other, bundle("other.org", 3, 2)).await.unwrap(),
            Refreshed::Updated
        );
        assert_eq!(
            f.refresh(&other, bundle("other.org", 3, 2)).await.unwrap(),
            Refreshed::Unchanged
        );
        assert!(matches!(
            f.refresh(&other, bundle("other.org", 2, 5)).await,
            Err(FederationError::SequenceBehind {
                stored: 3,
                fetched: 2,
                ..
            })
        ));
        assert!(matches!(
            f.refresh(&other, bundle("evil.org", 9, 5)).await,
            Err(FederationError::WrongTrustDomain { .. })
        ));
        assert_eq!(f.fetch(&other).unwrap().sequence, 3);
        assert!(f.fetch(&td("evil.org")).is_none());
        assert_eq!(
            f.refresh(&other, bundle("other.org", 4, 6)).await.unwrap(),
            Refreshed::Updated
        );
        assert_eq!(
            f.fetch(&other).unwrap().x509_authorities,
            vec![vec![0x30, 6]]
        );
    }

    #[test]
    fn sequence_rules() {
        let stored = bundle("o.org", 5, 1);
        assert_eq!(check_sequence(None, &stored).unwrap(), Refreshed::Updated);
        assert_eq!(
            check_sequence(Some(&stored), &stored).unwrap(),
            Refreshed::Unchanged
        );
        // Same sequence, different keys: a server that does not bump it still gets through.
        assert_eq!(
            check_sequence(Some(&stored), &bundle("o.org", 5, 2)).unwrap(),
            Refreshed::Updated
        );
        assert!(check_sequence(Some(&stored), &bundle("o.org", 4, 1)).is_err());
        let mut hinted = stored.clone();
        hinted.refresh_hint = Some(60);
        assert_eq!(
            check_sequence(Some(&stored), &hinted).unwrap(),
            Refreshed::Updated
        );
    }

    async fn federating_entry(ds: &Datastore, id: &str, with: &[&str]) -> String {
        let e = RegistrationEntry {
            federates_with: with.iter().map(|t| td(t)).collect(),
            ..RegistrationEntry::new(
                SpiffeId::new(&format!("spiffe://td/{id}")).unwrap(),
                SpiffeId::new("spiffe://td/spire/agent/a").unwrap(),
                vec!["unix:uid:1".parse().unwrap()],
            )
        };
        ds.create_entries(vec![e]).await.unwrap().remove(0).id
    }

    #[tokio::test]
    async fn delete_modes() {
        let (_dir, ds, f) = holder().await;
        f.set(bundle("other.org", 0, 2)).await.unwrap();
        let a = federating_entry(&ds, "a", &["other.org", "third.org"]).await;
        let b = federating_entry(&ds, "b", &["other.org"]).await;
        let c = federating_entry(&ds, "c", &["third.org"]).await;
        let other = td("other.org");

        match f.delete(&other, DeleteMode::Restrict).await {
            Err(FederationError::InUse { entries, .. }) => assert_eq!(entries, 2),
            r => panic!("restrict must refuse: {r:?}"),
        }
        assert!(f.fetch(&other).is_some());

        let affected = f.delete(&other, DeleteMode::Dissociate).await.unwrap();
        assert_eq!(affected.len(), 2);
        assert!(f.fetch(&other).is_none());
        assert!(ds.fetch_bundle(&other).await.unwrap().is_none());
        let a_now = ds.fetch_entry(&a).await.unwrap().unwrap();
        assert_eq!(a_now.federates_with, vec![td("third.org")]);
        assert!(
            ds.fetch_entry(&b)
                .await
                .unwrap()
                .unwrap()
                .federates_with
                .is_empty()
        );

        f.set(bundle("third.org", 0, 3)).await.unwrap();
        let affected = f
            .delete(&td("third.org"), DeleteMode::Delete)
            .await
            .unwrap();
        let mut ids: Vec<_> = affected.into_iter().map(|e| e.id).collect();
        ids.sort();
        let mut want = vec![a, c];
        want.sort();
        assert_eq!(ids, want);
        assert!(
            ds.fetch_entry(&b).await.unwrap().is_some(),
            "unrelated entry stays"
        );

        assert!(matches!(
            f.delete(&other, DeleteMode::Restrict).await,
            Err(FederationError::NotFound(_))
        ));
        // Unused: restrict deletes.
        f.set(bundle("free.org", 0, 4)).await.unwrap();
        assert!(
            f.delete(&td("free.org"), DeleteMode::Restrict)
                .await
                .unwrap()
                .is_empty()
        );
        assert!(
            ds.fetch_bundle(&td("td")).await.unwrap().is_some(),
            "own bundle untouched"
        );
    }
}
