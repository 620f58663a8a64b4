//! What one caller is served over SDS, from one cache snapshot: the SVIDs and bundles it may
//! ask for, shared with the snapshot (an open stream holds a few pointers, not copies; the PEM
//! Envoy takes is made only for the resources a response carries). Compared between snapshots:
//! a stream may have news exactly when its view changed.

use std::collections::BTreeMap;
use std::sync::Arc;

use sigil_proto::{Bundle, Selector, TrustDomain};

use crate::cache::{CachedX509Svid, Snapshot};
use crate::workload_api::RequestError;
use crate::workload_api::issued::{Issued, issued_x509_svids};

/// A caller's SVIDs and bundles.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct WorkloadView {
    /// In snapshot order: the first is the caller's default SVID.
    pub svids: Vec<ViewSvid>,
    /// Our own trust domain.
    pub trust_domain: TrustDomain,
    /// Our own bundle and the federated bundles the caller's entries federate with.
    pub bundles: BTreeMap<TrustDomain, Arc<Bundle>>,
}

/// One X509-SVID under the SPIFFE ID it was issued for.
#[derive(Debug)]
pub(super) struct ViewSvid {
    pub spiffe_id: String,
    pub svid: Arc<CachedX509Svid>,
}

impl PartialEq for ViewSvid {
    fn eq(&self, other: &Self) -> bool {
        // A renewal installs a new certificate; the same one is usually the same allocation.
        self.spiffe_id == other.spiffe_id
            && (Arc::ptr_eq(&self.svid, &other.svid) || self.svid.chain == other.svid.chain)
    }
}

impl Eq for ViewSvid {}

impl WorkloadView {
    /// The caller's view, or `None` while its entries match but no SVID is minted yet (SPIRE
    /// holds the stream until they are). A caller with no matching entry gets our own bundle
    /// and nothing else, as SPIRE's SDS does (bundles are public: the bundle endpoint serves
    /// them too); an SVID that expired and could not be renewed fails the call.
    pub(super) fn build(
        snapshot: &Snapshot,
        selectors: &[Selector],
    ) -> Result<Option<Arc<Self>>, RequestError> {
        let own = &snapshot.bundle;
        let mut view = Self {
            svids: Vec::new(),
            trust_domain: own.trust_domain.clone(),
            bundles: BTreeMap::from([(own.trust_domain.clone(), own.clone())]),
        };
        let issued = match issued_x509_svids(snapshot, selectors) {
            Ok(issued) => issued,
            Err(RequestError::NoIdentity) => return Ok(Some(Arc::new(view))),
            Err(other) => return Err(other),
        };
        Issued::want(snapshot, &issued.wanted, selectors);
        if issued.svids.is_empty() {
            return Ok(None);
        }
        view.svids = issued
            .svids
            .iter()
            .map(|issued| ViewSvid {
                spiffe_id: issued.spiffe_id.to_string(),
                svid: issued.svid.clone(),
            })
            .collect();
        for td in &issued.federates_with {
            if let Some(bundle) = snapshot.federated.get(*td) {
                view.bundles
                    .insert(bundle.trust_domain.clone(), bundle.clone());
            }
        }
        Ok(Some(Arc::new(view)))
    }

    /// The caller's default SVID (SPIRE's: the first).
    pub(super) fn default_svid(&self) -> Option<&ViewSvid> {
        self.svids.first()
    }
}
