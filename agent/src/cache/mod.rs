//! The agent's in-memory state: the registration entries it is authorized for, their
//! X509-SVIDs, and the trust bundles. Sync and rotation write it through [`Cache`]; every write
//! publishes a new immutable [`Snapshot`] on a `watch` channel that Workload API streams read.
//! Data flows one way: writers never read from the streams, streams never write.
//!
//! The bundle of our own trust domain is held here and nowhere else in memory: the server link
//! reads it through a [`TrustBundle`] to verify servers.
//!
//! JWT-SVIDs are not kept here: they are minted by the server on demand (see [`jwt`]).
//!
//! An X509-SVID that expires before rotation replaced it is withdrawn, never served (see
//! [`expiry`]); so is a template instance the server no longer signs, for a pod that left the
//! node or one it refused (see [`withdrawn`]).

pub mod expiry;
pub mod jwt;
pub mod rendered;
pub mod withdrawn;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fmt;
use std::sync::Arc;

use sigil_proto::id_template::{RenderError, template_selectors_match};
use sigil_proto::{Bundle, EntrySpiffeId, RegistrationEntry, Selector, SpiffeId, TrustDomain};
use tokio::sync::watch;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};
use zeroize::Zeroizing;

pub use expiry::{Outage, SvidKind, SvidUnavailable, watch_expiry};
pub use jwt::{JwtSvidCache, JwtSvidMinter, MintError, TokenTimes, token_times};
pub use rendered::{RenderedKey, TemplateDemand, pod_uid};

/// Why a write was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CacheError {
    #[error("no registration entry {0:?} in the cache")]
    UnknownEntry(String),
    #[error("entry {0:?} is not a template entry giving {1}")]
    NotAnInstance(String, String),
    #[error("entry {0:?} is a template entry: its X509-SVIDs are per rendered SPIFFE ID")]
    TemplateEntry(String),
    #[error("X509-SVID chain is empty")]
    EmptyChain,
    #[error("X509-SVID leaf is not a valid certificate: {0}")]
    BadCertificate(String),
    #[error("X509-SVID leaf has URI SAN {found:?}, entry wants {expected}")]
    SpiffeIdMismatch {
        expected: String,
        found: Option<String>,
    },
}

/// An X509-SVID as the Workload API hands it out.
pub struct CachedX509Svid {
    /// DER certificates, leaf first, then any intermediates (never the root).
    pub chain: Vec<Vec<u8>>,
    /// PKCS#8 DER of the leaf's private key; wiped on drop.
    pub private_key_pkcs8: Zeroizing<Vec<u8>>,
    /// The leaf's `notAfter`, Unix seconds.
    pub expires_at: i64,
}

impl fmt::Debug for CachedX509Svid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CachedX509Svid")
            .field("chain_len", &self.chain.len())
            .field("private_key_pkcs8", &"<redacted>")
            .field("expires_at", &self.expires_at)
            .finish()
    }
}

/// A registration entry and, once minted, its current X509-SVID.
#[derive(Debug)]
pub struct Identity {
    pub entry: RegistrationEntry,
    pub svid: Option<Arc<CachedX509Svid>>,
}

/// Entry positions in [`Snapshot::identities`], rebuilt only when the entry set changes
/// (SVID and bundle writes reuse it).
#[derive(Debug, Default)]
struct EntryIndex {
    /// Each entry is filed under its first (smallest) selector only: a workload can match an
    /// entry only if it has that selector, so matching looks at a handful of candidates per
    /// workload selector instead of every entry.
    by_first_selector: HashMap<Selector, Vec<usize>>,
    by_id: HashMap<String, usize>,
    /// Identity-template entries: matched by key prefix (see
    /// [`sigil_proto::id_template::template_selectors_match`]), so not indexable by exact
    /// selector; there are few of them (one per template, not one per workload).
    templates: Vec<usize>,
}

impl EntryIndex {
    fn build(identities: &[Arc<Identity>]) -> Self {
        let mut index = Self::default();
        for (pos, identity) in identities.iter().enumerate() {
            index.by_id.insert(identity.entry.id.clone(), pos);
            if identity.entry.spiffe_id.template().is_some() {
                index.templates.push(pos);
                continue;
            }
            // An entry without selectors would match every workload; the server never stores
            // one, and we refuse to hand it out if it ever arrives.
            if let Some(first) = identity.entry.selectors.iter().min() {
                index
                    .by_first_selector
                    .entry(first.clone())
                    .or_default()
                    .push(pos);
            }
        }
        index
    }
}

/// One immutable view of the cache. Cloning the `Arc`s is all a write costs.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// Ordered by entry `created_at`, then `id`, so the default identity (`svids[0]`) is stable.
    pub identities: Vec<Arc<Identity>>,
    /// The bundle of our own trust domain.
    pub bundle: Arc<Bundle>,
    /// Bundles of federated trust domains.
    pub federated: BTreeMap<TrustDomain, Arc<Bundle>>,
    /// X509-SVIDs of template entries, minted on demand per rendered ID.
    pub rendered: Arc<BTreeMap<RenderedKey, Arc<CachedX509Svid>>>,
    /// Shared by every snapshot of one cache: the Workload API records here which rendered
    /// IDs workloads ask for, rotation mints them. The one write path from readers, kept
    /// out of the snapshot data itself.
    pub demand: Arc<TemplateDemand>,
    /// X509-SVIDs withdrawn because they expired before rotation replaced them, by entry and
    /// SPIFFE ID (a fixed entry under its own ID): why each is not served. A key is here only
    /// while that SVID is missing from `identities` / `rendered`.
    pub expired: Arc<BTreeMap<RenderedKey, SvidUnavailable>>,
    /// Pods the server said left this node, by UID, with when it said so (Unix seconds): a
    /// workload in one of them is given no template instance (see [`withdrawn`]).
    pub gone_pods: Arc<BTreeMap<String, i64>>,
    /// Template instances the server refused to sign: not served until it signs them again
    /// (see [`withdrawn`]). A key is here only while it is missing from `rendered`.
    pub refused: Arc<BTreeSet<RenderedKey>>,
    index: Arc<EntryIndex>,
}

impl Snapshot {
    fn empty(bundle: Bundle) -> Self {
        Self {
            identities: Vec::new(),
            bundle: Arc::new(bundle),
            federated: BTreeMap::new(),
            rendered: Arc::default(),
            demand: Arc::default(),
            expired: Arc::default(),
            gone_pods: Arc::default(),
            refused: Arc::default(),
            index: Arc::default(),
        }
    }

    /// Why the X509-SVID of `entry_id` under `spiffe_id` is not served, if it expired (see
    /// [`expiry`]).
    pub fn expired(&self, entry_id: &str, spiffe_id: &SpiffeId) -> Option<&SvidUnavailable> {
        if self.expired.is_empty() {
            return None;
        }
        self.expired.get(&RenderedKey {
            entry_id: entry_id.to_owned(),
            spiffe_id: spiffe_id.clone(),
        })
    }

    /// The identities a workload with `selectors` is entitled to: those whose entry selectors
    /// are all among the workload's (SPIRE's subset rule). In snapshot order; of entries
    /// sharing a non-empty hint only the first is kept.
    pub fn matching(&self, selectors: &[Selector]) -> Vec<&Arc<Identity>> {
        let workload: HashSet<&Selector> = selectors.iter().collect();
        let mut positions: Vec<usize> = Vec::new();
        for selector in &workload {
            let Some(candidates) = self.index.by_first_selector.get(*selector) else {
                continue;
            };
            for &pos in candidates {
                let entry = &self.identities[pos].entry;
                if entry.selectors.iter().all(|s| workload.contains(s)) {
                    positions.push(pos);
                }
            }
        }
        // Each entry is filed under exactly one selector and `workload` has no duplicates, so
        // no position appears twice.
        positions.sort_unstable();
        let mut hints = HashSet::new();
        positions
            .into_iter()
            .map(|pos| &self.identities[pos])
            .filter(|identity| {
                let hint = identity.entry.hint.as_str();
                hint.is_empty() || hints.insert(hint)
            })
            .collect()
    }

    /// The identity-template entries a workload with `selectors` matches, each with the SPIFFE
    /// ID rendered for it. Entries whose template does not render (a placeholder without
    /// exactly one valid value, or an instance in the reserved namespace `/spire/*`, which
    /// the server would refuse to sign anyway) give nothing; nor does any template to a
    /// workload whose pod the server said left this node. In snapshot order.
    pub fn matching_templates(&self, selectors: &[Selector]) -> Vec<(&Arc<Identity>, SpiffeId)> {
        if pod_uid(selectors).is_some_and(|uid| self.gone_pods.contains_key(uid)) {
            return Vec::new();
        }
        self.index
            .templates
            .iter()
            .map(|&pos| &self.identities[pos])
            .filter(|identity| template_selectors_match(&identity.entry.selectors, selectors))
            .filter_map(|identity| {
                let template = identity.entry.spiffe_id.template()?;
                match template.render(selectors) {
                    Ok(id) => Some((identity, id)),
                    Err(RenderError::Reserved(id)) => {
                        // A workload whose selector values steer the template into the
                        // server's or agents' namespace: an attack or a template to fix.
                        tracing::warn!(entry_id = %identity.entry.id, template = %template, spiffe_id = %id, "template entry would give this workload a reserved SPIFFE ID; refused");
                        None
                    }
                    Err(err) => {
                        tracing::debug!(entry_id = %identity.entry.id, error = %err, "template entry gives this workload no ID");
                        None
                    }
                }
            })
            .collect()
    }

    /// The identity of one entry.
    pub fn identity(&self, entry_id: &str) -> Option<&Arc<Identity>> {
        self.index
            .by_id
            .get(entry_id)
            .map(|&pos| &self.identities[pos])
    }
}

/// The trust bundle of our own trust domain, read where the cache holds it (the one place the
/// agent holds it in memory): what the server link verifies servers with.
#[derive(Debug, Clone)]
pub struct TrustBundle(watch::Receiver<Arc<Snapshot>>);

impl TrustBundle {
    /// The bundle of the latest snapshot.
    pub fn current(&self) -> Arc<Bundle> {
        self.0.borrow().bundle.clone()
    }
}

/// The writer side. Share it (`Arc<Cache>`) between sync and rotation; every method publishes
/// one new snapshot.
pub struct Cache {
    tx: watch::Sender<Arc<Snapshot>>,
}

impl fmt::Debug for Cache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let snapshot = self.tx.borrow();
        f.debug_struct("Cache")
            .field("entries", &snapshot.identities.len())
            .field("trust_domain", &snapshot.bundle.trust_domain)
            .field("federated", &snapshot.federated.len())
            .finish()
    }
}

impl Cache {
    /// An empty cache for the trust domain of `bundle`.
    pub fn new(bundle: Bundle) -> Self {
        let (tx, _) = watch::channel(Arc::new(Snapshot::empty(bundle)));
        Self { tx }
    }

    /// A receiver whose current value is the latest snapshot.
    pub fn subscribe(&self) -> watch::Receiver<Arc<Snapshot>> {
        self.tx.subscribe()
    }

    /// A reader of the trust bundle alone (see [`TrustBundle`]).
    pub fn trust_bundle(&self) -> TrustBundle {
        TrustBundle(self.tx.subscribe())
    }

    /// What workloads asked of template entries (shared with every snapshot).
    pub fn demand(&self) -> Arc<TemplateDemand> {
        self.tx.borrow().demand.clone()
    }

    /// The latest snapshot.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.tx.borrow().clone()
    }

    /// Makes the entry set exactly `entries`, keeping the SVIDs of entries whose identity is
    /// unchanged.
    pub fn replace_entries(&self, entries: Vec<RegistrationEntry>) {
        self.tx.send_modify(|current| {
            // Keyed by ID so a duplicate in `entries` cannot yield two identities (last wins).
            let by_id: BTreeMap<String, Arc<Identity>> = entries
                .into_iter()
                .map(|entry| (entry.id.clone(), carry_svid(current, entry)))
                .collect();
            *current = Arc::new(with_identities(current, by_id.into_values().collect()));
        });
    }

    /// Adds entries or replaces those with the same ID.
    pub fn upsert_entries(&self, entries: Vec<RegistrationEntry>) {
        self.tx.send_modify(|current| {
            let mut by_id: BTreeMap<String, Arc<Identity>> = current
                .identities
                .iter()
                .map(|identity| (identity.entry.id.clone(), identity.clone()))
                .collect();
            for entry in entries {
                by_id.insert(entry.id.clone(), carry_svid(current, entry));
            }
            *current = Arc::new(with_identities(current, by_id.into_values().collect()));
        });
    }

    /// Removes entries by ID; unknown IDs are ignored.
    pub fn remove_entries<I, S>(&self, entry_ids: I)
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let gone: HashSet<String> = entry_ids
            .into_iter()
            .map(|s| s.as_ref().to_owned())
            .collect();
        self.tx.send_modify(|current| {
            let next = current
                .identities
                .iter()
                .filter(|identity| !gone.contains(&identity.entry.id))
                .cloned()
                .collect();
            *current = Arc::new(with_identities(current, next));
        });
    }

    /// Installs the X509-SVID of one entry (first issue or rotation).
    pub fn set_svid(&self, entry_id: &str, svid: CachedX509Svid) -> Result<(), CacheError> {
        let mut rejected = self.set_svids(vec![(entry_id.to_owned(), svid)]);
        match rejected.pop() {
            Some((_, err)) => Err(err),
            None => Ok(()),
        }
    }

    /// Installs several X509-SVIDs in one snapshot. Each leaf must carry its entry's SPIFFE ID
    /// as URI SAN (the Workload API's `spiffe_id` field must equal it); SVIDs that fail are
    /// returned with the reason and the others are still installed.
    pub fn set_svids(&self, svids: Vec<(String, CachedX509Svid)>) -> Vec<(String, CacheError)> {
        let mut rejected = Vec::new();
        self.tx.send_if_modified(|current| {
            let mut identities = current.identities.clone();
            let mut expired = current.expired.clone();
            let mut changed = false;
            for (entry_id, svid) in svids {
                let Some(&pos) = current.index.by_id.get(&entry_id) else {
                    rejected.push((entry_id.clone(), CacheError::UnknownEntry(entry_id)));
                    continue;
                };
                let entry = &identities[pos].entry;
                let Some(spiffe_id) = entry.spiffe_id.fixed() else {
                    rejected.push((entry_id.clone(), CacheError::TemplateEntry(entry_id)));
                    continue;
                };
                if let Err(err) = check_leaf(&svid, spiffe_id) {
                    rejected.push((entry_id, err));
                    continue;
                }
                let key = RenderedKey {
                    entry_id: entry.id.clone(),
                    spiffe_id: spiffe_id.clone(),
                };
                if expired.contains_key(&key) {
                    Arc::make_mut(&mut expired).remove(&key);
                }
                identities[pos] = Arc::new(Identity {
                    entry: entry.clone(),
                    svid: Some(Arc::new(svid)),
                });
                changed = true;
            }
            if changed {
                *current = Arc::new(Snapshot {
                    identities,
                    expired,
                    ..Snapshot::clone(current)
                });
            }
            changed
        });
        rejected
    }

    /// Installs X509-SVIDs of template entries, each under the ID rendered for a workload.
    /// The entry must be a template of which the ID is an instance, and the leaf must carry
    /// that ID; SVIDs that fail are returned with the reason.
    pub fn set_rendered_svids(
        &self,
        svids: Vec<(RenderedKey, CachedX509Svid)>,
    ) -> Vec<(RenderedKey, CacheError)> {
        let mut rejected = Vec::new();
        self.tx.send_if_modified(|current| {
            let mut rendered = (*current.rendered).clone();
            let mut expired = current.expired.clone();
            let mut refused = current.refused.clone();
            let mut changed = false;
            for (key, svid) in svids {
                let instance = current.identity(&key.entry_id).is_some_and(|i| {
                    i.entry
                        .spiffe_id
                        .template()
                        .is_some_and(|t| t.matches(&key.spiffe_id))
                });
                if !instance {
                    let err =
                        CacheError::NotAnInstance(key.entry_id.clone(), key.spiffe_id.to_string());
                    rejected.push((key, err));
                    continue;
                }
                if let Err(err) = check_leaf(&svid, &key.spiffe_id) {
                    rejected.push((key, err));
                    continue;
                }
                if expired.contains_key(&key) {
                    Arc::make_mut(&mut expired).remove(&key);
                }
                if refused.contains(&key) {
                    Arc::make_mut(&mut refused).remove(&key);
                }
                rendered.insert(key, Arc::new(svid));
                changed = true;
            }
            if changed {
                *current = Arc::new(Snapshot {
                    rendered: Arc::new(rendered),
                    expired,
                    refused,
                    ..Snapshot::clone(current)
                });
            }
            changed
        });
        rejected
    }

    /// Drops rendered SVIDs nobody uses any more, and what was recorded of them.
    pub fn remove_rendered(&self, keys: &[RenderedKey]) {
        self.tx.send_if_modified(|current| {
            let known = |k: &RenderedKey| {
                current.rendered.contains_key(k)
                    || current.expired.contains_key(k)
                    || current.refused.contains(k)
            };
            if !keys.iter().any(known) {
                return false;
            }
            let mut rendered = (*current.rendered).clone();
            let mut expired = (*current.expired).clone();
            let mut refused = (*current.refused).clone();
            for k in keys {
                rendered.remove(k);
                expired.remove(k);
                refused.remove(k);
            }
            *current = Arc::new(Snapshot {
                rendered: Arc::new(rendered),
                expired: Arc::new(expired),
                refused: Arc::new(refused),
                ..Snapshot::clone(current)
            });
            true
        });
    }

    /// Replaces our own trust domain's bundle.
    pub fn set_bundle(&self, bundle: Bundle) {
        self.tx.send_modify(|current| {
            *current = Arc::new(Snapshot {
                bundle: Arc::new(bundle),
                ..Snapshot::clone(current)
            });
        });
    }

    /// Replaces the whole set of federated bundles.
    pub fn set_federated_bundles(&self, bundles: BTreeMap<TrustDomain, Bundle>) {
        self.tx.send_modify(|current| {
            *current = Arc::new(Snapshot {
                federated: bundles
                    .into_iter()
                    .map(|(td, b)| (td, Arc::new(b)))
                    .collect(),
                ..Snapshot::clone(current)
            });
        });
    }
}

/// The new identity for `entry`, keeping the current SVID only while it still names the same
/// SPIFFE ID (rotation re-mints SVIDs whose entry changed in other ways).
fn carry_svid(current: &Snapshot, entry: RegistrationEntry) -> Arc<Identity> {
    let svid = current
        .identity(&entry.id)
        .filter(|old| old.entry.spiffe_id == entry.spiffe_id)
        .and_then(|old| old.svid.clone());
    Arc::new(Identity { entry, svid })
}

/// A snapshot with a new entry set, sorted and re-indexed, and the current bundles.
fn with_identities(current: &Snapshot, mut identities: Vec<Arc<Identity>>) -> Snapshot {
    identities
        .sort_by(|a, b| (a.entry.created_at, &a.entry.id).cmp(&(b.entry.created_at, &b.entry.id)));
    let index = Arc::new(EntryIndex::build(&identities));
    // Rendered SVIDs survive only while their entry is still a template they instantiate.
    let still_valid = |key: &RenderedKey| {
        index.by_id.get(&key.entry_id).is_some_and(|&pos| {
            identities[pos]
                .entry
                .spiffe_id
                .template()
                .is_some_and(|t| t.matches(&key.spiffe_id))
        })
    };
    let rendered = if current.rendered.keys().all(still_valid) {
        current.rendered.clone()
    } else {
        Arc::new(
            current
                .rendered
                .iter()
                .filter(|(k, _)| still_valid(k))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        )
    };
    // An expiry record lives while its entry still gives that ID and has no SVID for it.
    let still_withdrawn = |key: &RenderedKey| {
        index.by_id.get(&key.entry_id).is_some_and(|&pos| {
            let identity = &identities[pos];
            match &identity.entry.spiffe_id {
                EntrySpiffeId::Template(t) => {
                    t.matches(&key.spiffe_id) && !rendered.contains_key(key)
                }
                EntrySpiffeId::Fixed(id) => *id == key.spiffe_id && identity.svid.is_none(),
            }
        })
    };
    let expired = if current.expired.keys().all(still_withdrawn) {
        current.expired.clone()
    } else {
        Arc::new(
            current
                .expired
                .iter()
                .filter(|(k, _)| still_withdrawn(k))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        )
    };
    // A refusal record lives while its entry is still a template it instantiates.
    let refused = if current.refused.iter().all(still_valid) {
        current.refused.clone()
    } else {
        Arc::new(
            current
                .refused
                .iter()
                .filter(|k| still_valid(k))
                .cloned()
                .collect(),
        )
    };
    Snapshot {
        identities,
        bundle: current.bundle.clone(),
        federated: current.federated.clone(),
        rendered,
        demand: current.demand.clone(),
        expired,
        gone_pods: current.gone_pods.clone(),
        refused,
        index,
    }
}

/// Checks that the leaf's single URI SAN is `expected`.
fn check_leaf(svid: &CachedX509Svid, expected: &SpiffeId) -> Result<(), CacheError> {
    let leaf = svid.chain.first().ok_or(CacheError::EmptyChain)?;
    let (_, cert) =
        X509Certificate::from_der(leaf).map_err(|e| CacheError::BadCertificate(e.to_string()))?;
    let san = cert
        .subject_alternative_name()
        .map_err(|e| CacheError::BadCertificate(e.to_string()))?;
    let uris: Vec<&str> = san
        .map(|ext| {
            ext.value
                .general_names
                .iter()
                .filter_map(|name| match name {
                    GeneralName::URI(uri) => Some(*uri),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    let expected_str = expected.to_string();
    match uris.as_slice() {
        [uri] if *uri == expected_str => Ok(()),
        _ => Err(CacheError::SpiffeIdMismatch {
            expected: expected_str,
            found: (uris.len() == 1).then(|| uris[0].to_owned()),
        }),
    }
}

#[cfg(test)]
pub(crate) mod testing;
#[cfg(test)]
mod tests;
