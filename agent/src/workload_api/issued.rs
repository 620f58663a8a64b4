//! The X509-SVIDs a caller is issued, from one cache snapshot: what FetchX509SVID sends and
//! SDS serves as TLS certificates, decided once for both.

use std::collections::BTreeSet;
use std::sync::Arc;

use sigil_common::time::unix_now;
use sigil_proto::{Selector, SpiffeId, TrustDomain};

use super::handler::RequestError;
use crate::cache::{CachedX509Svid, Identity, RenderedKey, Snapshot, pod_uid};

/// One issued SVID, under the SPIFFE ID it was minted for (a template entry's rendered ID).
pub(crate) struct IssuedSvid<'a> {
    pub identity: &'a Arc<Identity>,
    pub spiffe_id: SpiffeId,
    pub svid: &'a Arc<CachedX509Svid>,
}

/// What a caller is issued. No `Debug`: it reaches private keys.
pub(crate) struct Issued<'a> {
    /// In snapshot order: the first is the caller's default identity. Empty while entries
    /// match but no SVID is minted yet.
    pub svids: Vec<IssuedSvid<'a>>,
    /// Template instances the caller is entitled to, minted or not; each use refreshes their
    /// demand ([`Issued::want`]).
    pub wanted: Vec<RenderedKey>,
    /// The trust domains the caller's entries federate with.
    pub federates_with: BTreeSet<&'a TrustDomain>,
}

impl Issued<'_> {
    /// Template SVIDs are minted on demand: each call records (or refreshes) the demand, with
    /// the caller's pod (the server signs an instance for a named pod), so a stream keeps its
    /// SVIDs alive while it is open.
    pub(crate) fn want(snapshot: &Snapshot, wanted: &[RenderedKey], selectors: &[Selector]) {
        if wanted.is_empty() {
            return;
        }
        let now = unix_now();
        let pod = pod_uid(selectors);
        for key in wanted {
            snapshot.demand.want(key.clone(), pod, now);
        }
    }
}

/// The X509-SVIDs of the fixed entries matching `selectors`, then those of the template
/// entries under the IDs rendered for them. An instance the server refused is wanted (it is
/// asked for again) but not issued. `NoIdentity` when nothing matches (or all that matches was
/// refused), as when a caller's entries are deleted; `SvidUnavailable` when an SVID expired and
/// could not be renewed. A pure function of its arguments.
pub(crate) fn issued_x509_svids<'a>(
    snapshot: &'a Snapshot,
    selectors: &[Selector],
) -> Result<Issued<'a>, RequestError> {
    let fixed = snapshot.matching(selectors);
    let rendered: Vec<(&Arc<Identity>, SpiffeId)> = snapshot.matching_templates(selectors);
    if fixed.is_empty() && rendered.is_empty() {
        return Err(RequestError::NoIdentity);
    }
    let mut issued = Issued {
        svids: Vec::new(),
        wanted: Vec::new(),
        federates_with: BTreeSet::new(),
    };
    let mut entitled = fixed.len();
    for identity in fixed {
        let Some(spiffe_id) = identity.entry.spiffe_id.fixed() else {
            continue;
        };
        if let Some(svid) = &identity.svid {
            issued.push(identity, spiffe_id.clone(), svid);
        } else if let Some(why) = snapshot.expired(&identity.entry.id, spiffe_id) {
            // Never an expired SVID: the cache withdrew it and says why.
            return Err(RequestError::SvidUnavailable(why.clone()));
        }
    }
    for (identity, spiffe_id) in rendered {
        let key = RenderedKey {
            entry_id: identity.entry.id.clone(),
            spiffe_id,
        };
        let svid = snapshot.rendered.get(&key);
        issued.wanted.push(key.clone());
        if snapshot.refused.contains(&key) {
            continue;
        }
        entitled += 1;
        if let Some(svid) = svid {
            issued.push(identity, key.spiffe_id, svid);
        } else if let Some(why) = snapshot.expired(&key.entry_id, &key.spiffe_id) {
            return Err(RequestError::SvidUnavailable(why.clone()));
        }
    }
    if entitled == 0 {
        return Err(RequestError::NoIdentity);
    }
    Ok(issued)
}

impl<'a> Issued<'a> {
    fn push(
        &mut self,
        identity: &'a Arc<Identity>,
        spiffe_id: SpiffeId,
        svid: &'a Arc<CachedX509Svid>,
    ) {
        self.federates_with
            .extend(identity.entry.federates_with.iter());
        self.svids.push(IssuedSvid {
            identity,
            spiffe_id,
            svid,
        });
    }
}
