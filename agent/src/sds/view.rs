//! What one caller is served over SDS, from one cache snapshot, in the form Envoy takes it
//! (PEM). Compared between snapshots: a stream has news exactly when its view changed.

use std::collections::BTreeMap;
use std::sync::Arc;

use sigil_proto::bundle::pem_encode;
use sigil_proto::{Selector, TrustDomain};
use zeroize::Zeroizing;

use crate::cache::Snapshot;
use crate::workload_api::RequestError;
use crate::workload_api::issued::{Issued, issued_x509_svids};

/// A caller's SVIDs and bundles. No `Debug`: it holds private keys.
#[derive(PartialEq, Eq)]
pub(super) struct WorkloadView {
    /// In snapshot order: the first is the caller's default SVID.
    pub svids: Vec<SvidPem>,
    /// Our own trust domain.
    pub trust_domain: TrustDomain,
    /// Our own bundle and the federated bundles the caller's entries federate with, as PEM
    /// CA certificates.
    pub bundles: BTreeMap<TrustDomain, Vec<u8>>,
}

/// One X509-SVID as Envoy takes it.
#[derive(PartialEq, Eq)]
pub(super) struct SvidPem {
    pub spiffe_id: String,
    /// The leaf, then any intermediates.
    pub chain: Vec<u8>,
    /// PKCS#8, wiped on drop.
    pub key: Zeroizing<Vec<u8>>,
}

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
            bundles: BTreeMap::from([(
                own.trust_domain.clone(),
                own.x509_authorities_pem().into_bytes(),
            )]),
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
            .map(|issued| SvidPem {
                spiffe_id: issued.spiffe_id.to_string(),
                chain: issued
                    .svid
                    .chain
                    .iter()
                    .map(|der| pem_encode("CERTIFICATE", der))
                    .collect::<String>()
                    .into_bytes(),
                key: Zeroizing::new(
                    pem_encode("PRIVATE KEY", &issued.svid.private_key_pkcs8).into_bytes(),
                ),
            })
            .collect();
        for td in &issued.federates_with {
            if let Some(bundle) = snapshot.federated.get(*td) {
                view.bundles.insert(
                    bundle.trust_domain.clone(),
                    bundle.x509_authorities_pem().into_bytes(),
                );
            }
        }
        Ok(Some(Arc::new(view)))
    }

    /// The caller's default SVID (SPIRE's: the first).
    pub(super) fn default_svid(&self) -> Option<&SvidPem> {
        self.svids.first()
    }
}
