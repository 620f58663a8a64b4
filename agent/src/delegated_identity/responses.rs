//! The Delegated Identity API's messages, built from one cache snapshot: the SVIDs of the
//! workload a delegate acts for (what the Workload API would issue it: [`issued_x509_svids`]),
//! and every bundle the agent holds.

use std::collections::HashMap;

use sigil_proto::spire::api::agent::delegatedidentity::v1::{
    SubscribeToJwtBundlesResponse, SubscribeToX509BundlesResponse, SubscribeToX509sviDsResponse,
    X509svidWithKey,
};
use sigil_proto::spire::api::types;
use sigil_proto::{Bundle, Selector, SpiffeId};

use super::handler::DelegatedError;
use crate::cache::{Snapshot, token_times};
use crate::workload_api::RequestError;
use crate::workload_api::issued::{Issued, issued_x509_svids};

/// The X509-SVIDs of the workload with `selectors`, with their keys, and the federated trust
/// domains their entries use. A workload that matches no entry gets a message with no SVID
/// (SPIRE's answer: the delegate learns that there is nothing, and the stream stays open for
/// entries to come); `Ok(None)` while entries match but no SVID is minted yet. SPIRE's admin
/// and downstream entries are never sent.
pub(super) fn x509_svids(
    snapshot: &Snapshot,
    selectors: &[Selector],
) -> Result<Option<SubscribeToX509sviDsResponse>, DelegatedError> {
    let issued = match issued_x509_svids(snapshot, selectors) {
        Ok(issued) => issued,
        Err(RequestError::NoIdentity) => return Ok(Some(SubscribeToX509sviDsResponse::default())),
        Err(other) => return Err(other.into()),
    };
    Issued::want(snapshot, &issued.wanted, selectors);
    if issued.svids.is_empty() {
        return Ok(None);
    }
    let x509_svids = issued
        .svids
        .iter()
        .filter(|s| !s.identity.entry.admin && !s.identity.entry.downstream)
        .map(|s| X509svidWithKey {
            x509_svid: Some(types::X509svid {
                cert_chain: s.svid.chain.clone(),
                id: Some(spiffe_id(&s.spiffe_id)),
                expires_at: s.svid.expires_at,
                hint: s.identity.entry.hint.clone(),
            }),
            x509_svid_key: s.svid.private_key_pkcs8.to_vec(),
        })
        .collect();
    // Sorted by name, as SPIRE sorts them; only those the agent holds a bundle for.
    let federates_with = issued
        .federates_with
        .iter()
        .filter(|td| snapshot.federated.contains_key(**td))
        .map(|td| td.id_string())
        .collect();
    Ok(Some(SubscribeToX509sviDsResponse {
        x509_svids,
        federates_with,
    }))
}

/// Our own bundle and every federated bundle the agent holds, as SPIRE's bundle streams send
/// them (not only those of some workload's entries).
fn all_bundles(snapshot: &Snapshot) -> impl Iterator<Item = &Bundle> {
    std::iter::once(snapshot.bundle.as_ref()).chain(snapshot.federated.values().map(|b| b.as_ref()))
}

/// Every bundle's X.509 authorities, concatenated DER, by trust domain ID.
pub(super) fn x509_bundles(snapshot: &Snapshot) -> SubscribeToX509BundlesResponse {
    SubscribeToX509BundlesResponse {
        ca_certificates: all_bundles(snapshot)
            .map(|b| (b.trust_domain.id_string(), b.x509_authorities_concat()))
            .collect(),
    }
}

/// Every bundle's JWT authorities as a JWKS document, by trust domain ID.
pub(super) fn jwt_bundles(
    snapshot: &Snapshot,
) -> Result<SubscribeToJwtBundlesResponse, DelegatedError> {
    let mut bundles = HashMap::new();
    for bundle in all_bundles(snapshot) {
        let jwks = bundle.to_jwks_json().map_err(RequestError::Bundle)?;
        bundles.insert(bundle.trust_domain.id_string(), jwks.into_bytes());
    }
    Ok(SubscribeToJwtBundlesResponse { bundles })
}

/// A minted JWT-SVID with the times read from its claims.
pub(super) fn jwt_svid(token: String, id: &SpiffeId, hint: &str) -> types::Jwtsvid {
    let times = token_times(&token);
    types::Jwtsvid {
        id: Some(spiffe_id(id)),
        expires_at: times.map_or(0, |t| t.exp),
        issued_at: times.and_then(|t| t.iat).unwrap_or(0),
        hint: hint.to_owned(),
        token,
    }
}

/// A SPIFFE ID as SPIRE's API types carry it.
fn spiffe_id(id: &SpiffeId) -> types::Spiffeid {
    types::Spiffeid {
        trust_domain: id.trust_domain().as_str().to_owned(),
        path: id.path().to_owned(),
    }
}
