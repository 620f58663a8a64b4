//! Bundles and federation (SPIRE's `bundle/v1`): the trust domain's own bundle, and the
//! federated bundles of other trust domains: set, list, delete (with what happens to the
//! entries that federate with it) and count.

use std::sync::Arc;

use sigil_proto::sigil::admin::v1 as pb;
use sigil_proto::sigil::common::v1 as common;
use sigil_proto::{Bundle, TrustDomain};
use tonic::Status;

use crate::api::{audit, datastore_status, invalid_field};
use crate::ca::Ca;
use crate::datastore::Datastore;
use crate::federation::{DeleteMode, FederatedBundles, FederationError};

pub(super) struct Bundles {
    ca: Arc<Ca>,
    datastore: Datastore,
    /// Federated bundles; `None` only in tests that do not exercise them.
    federation: Option<Arc<FederatedBundles>>,
}

impl Bundles {
    pub(super) fn new(ca: Arc<Ca>, datastore: Datastore) -> Self {
        Self {
            ca,
            datastore,
            federation: None,
        }
    }

    /// Serves `bundle set/list/delete` from (and into) `federation`.
    pub(super) fn set_federation(&mut self, federation: Arc<FederatedBundles>) {
        self.federation = Some(federation);
    }

    fn federation(&self) -> Result<&FederatedBundles, Status> {
        self.federation
            .as_deref()
            .ok_or_else(|| Status::unimplemented("federation is not enabled on this server"))
    }

    pub(super) async fn get(
        &self,
        _: pb::GetBundleRequest,
    ) -> Result<pb::GetBundleResponse, Status> {
        Ok(pb::GetBundleResponse {
            bundle: Some(common::Bundle::from(self.ca.bundle().as_ref())),
        })
    }

    pub(super) async fn count(
        &self,
        _: pb::CountBundlesRequest,
    ) -> Result<pb::CountBundlesResponse, Status> {
        let count = self
            .datastore
            .count_bundles()
            .await
            .map_err(datastore_status)?;
        Ok(pb::CountBundlesResponse { count })
    }

    pub(super) async fn set_federated(
        &self,
        req: pb::SetFederatedBundleRequest,
    ) -> Result<pb::SetFederatedBundleResponse, Status> {
        let wire = req
            .bundle
            .ok_or_else(|| Status::invalid_argument("bundle is required"))?;
        audit::record(|t| t.trust_domain = Some(wire.trust_domain.clone()));
        let bundle = Bundle::try_from(&wire).map_err(invalid_field)?;
        // Rendering parses every certificate and JWT key: garbage is refused here.
        bundle
            .to_spiffe_json()
            .map_err(|e| Status::invalid_argument(format!("invalid bundle: {e}")))?;
        self.federation()?
            .set(bundle)
            .await
            .map_err(federation_status)?;
        Ok(pb::SetFederatedBundleResponse {})
    }

    pub(super) async fn list_federated(
        &self,
        req: pb::ListFederatedBundlesRequest,
    ) -> Result<pb::ListFederatedBundlesResponse, Status> {
        let federation = self.federation()?;
        let bundles = if req.trust_domain.is_empty() {
            federation
                .current()
                .values()
                .map(|b| common::Bundle::from(b.as_ref()))
                .collect()
        } else {
            let td = parse_trust_domain(&req.trust_domain)?;
            let bundle = federation
                .fetch(&td)
                .ok_or_else(|| federation_status(FederationError::NotFound(td)))?;
            vec![common::Bundle::from(bundle.as_ref())]
        };
        Ok(pb::ListFederatedBundlesResponse { bundles })
    }

    pub(super) async fn delete_federated(
        &self,
        req: pb::DeleteFederatedBundleRequest,
    ) -> Result<pb::DeleteFederatedBundleResponse, Status> {
        audit::record(|t| t.trust_domain = Some(req.trust_domain.clone()));
        let td = parse_trust_domain(&req.trust_domain)?;
        let (mode, name) = match pb::BundleDeleteMode::try_from(req.mode) {
            Ok(pb::BundleDeleteMode::Restrict) => (DeleteMode::Restrict, "restrict"),
            Ok(pb::BundleDeleteMode::Delete) => (DeleteMode::Delete, "delete"),
            Ok(pb::BundleDeleteMode::Dissociate) => (DeleteMode::Dissociate, "dissociate"),
            Err(_) => return Err(Status::invalid_argument("invalid mode")),
        };
        audit::record(|t| t.mode = Some(name.to_owned()));
        let affected = self
            .federation()?
            .delete(&td, mode)
            .await
            .map_err(federation_status)?;
        // The entries deleted or dissociated.
        audit::record(|t| {
            t.count = Some(affected.len() as u64);
            t.entry_ids =
                (!affected.is_empty()).then(|| audit::list(affected.iter().map(|e| &e.id)));
        });
        Ok(pb::DeleteFederatedBundleResponse {
            affected_entries: affected.len() as u64,
        })
    }
}

/// The one place federation errors become statuses.
pub(super) fn federation_status(e: FederationError) -> Status {
    match e {
        FederationError::Datastore(d) => datastore_status(d),
        FederationError::NotFound(_) => Status::not_found(e.to_string()),
        FederationError::InUse { .. } => Status::failed_precondition(e.to_string()),
        _ => Status::invalid_argument(e.to_string()),
    }
}

pub(super) fn parse_trust_domain(s: &str) -> Result<TrustDomain, Status> {
    TrustDomain::new(s)
        .map_err(|e| Status::invalid_argument(format!("invalid trust domain {s:?}: {e}")))
}
