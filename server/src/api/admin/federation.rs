//! Federation relationships (SPIRE's `trustdomain/v1`): created, updated and deleted in the
//! datastore at run time, polled beside the config file's `federates_with`, and refreshed on
//! demand.
//!
//! As SPIRE: our own trust domain is refused; an `https_spiffe` relationship without a bundle
//! to authenticate its endpoint is accepted with a warning (the poller reports "no bundle
//! held" until one is set); deleting a relationship stops its polling and leaves its bundle
//! (`bundle delete` removes that). Unlike SPIRE, a trust domain the config file names is
//! refused rather than stored and silently overridden. Create, update, delete and refresh are
//! audited with the trust domain as target.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use sigil_proto::sigil::admin::v1 as pb;
use sigil_proto::sigil::common::v1 as common;
use sigil_proto::{Bundle, SpiffeId};
use tonic::Status;

use super::bundles::{federation_status, parse_trust_domain};
use crate::api::{audit, datastore_status, invalid_field};
use crate::datastore::Datastore;
use crate::federation::config::{EndpointProfile, FederatesWith, check_url};
use crate::federation::peers::{Peers, RefreshError};
use crate::federation::status::PeerStatus;
use crate::federation::{FederatedBundles, FederationError};

pub(super) struct Federation {
    datastore: Datastore,
    bundles: Option<Arc<FederatedBundles>>,
    peers: Option<Arc<Peers>>,
}

impl Federation {
    pub(super) fn new(datastore: Datastore) -> Self {
        Self {
            datastore,
            bundles: None,
            peers: None,
        }
    }

    pub(super) fn set(&mut self, bundles: Arc<FederatedBundles>, peers: Arc<Peers>) {
        self.bundles = Some(bundles);
        self.peers = Some(peers);
    }

    fn enabled(&self) -> Result<(&FederatedBundles, &Peers), Status> {
        match (&self.bundles, &self.peers) {
            (Some(b), Some(p)) => Ok((b, p)),
            _ => Err(Status::unimplemented(
                "federation is not enabled on this server",
            )),
        }
    }

    pub(super) async fn create(
        &self,
        req: pb::CreateFederationRelationshipRequest,
    ) -> Result<pb::FederationRelationship, Status> {
        self.write(req.relationship, true).await
    }

    pub(super) async fn update(
        &self,
        req: pb::UpdateFederationRelationshipRequest,
    ) -> Result<pb::FederationRelationship, Status> {
        self.write(req.relationship, false).await
    }

    async fn write(
        &self,
        wire: Option<pb::FederationRelationship>,
        create: bool,
    ) -> Result<pb::FederationRelationship, Status> {
        let (bundles, peers) = self.enabled()?;
        let wire = wire.ok_or_else(|| Status::invalid_argument("relationship is required"))?;
        audit::record(|t| t.trust_domain = Some(wire.trust_domain.clone()));
        let (relationship, bundle) = parse(&wire)?;
        let td = &relationship.trust_domain;
        if peers.configured(td) {
            return Err(Status::failed_precondition(format!(
                "{td} is in the config file's federates_with, which overrides relationships kept in the datastore; change it there"
            )));
        }
        if let (EndpointProfile::HttpsSpiffe { endpoint_spiffe_id }, None) =
            (&relationship.profile, &bundle)
            && bundles.fetch(endpoint_spiffe_id.trust_domain()).is_none()
        {
            tracing::warn!(trust_domain = %td, endpoint_spiffe_id = %endpoint_spiffe_id, "no bundle held for the endpoint SPIFFE ID's trust domain: the endpoint cannot be authenticated until one is set");
        }
        bundles
            .write_relationship(&relationship, bundle, create)
            .await
            .map_err(|e| match e {
                FederationError::OwnTrustDomain(ref own) if own == td => {
                    Status::invalid_argument(format!(
                        "unable to create federation relationship for server trust domain {td}"
                    ))
                }
                e => federation_status(e),
            })?;
        tracing::info!(trust_domain = %td, url = %relationship.url, created = create, "federation relationship stored");
        // Polled at once here; other replicas follow through the change feed.
        peers.reconcile().await.map_err(datastore_status)?;
        Ok(to_wire(&relationship, bundles))
    }

    pub(super) async fn delete(
        &self,
        req: pb::DeleteFederationRelationshipRequest,
    ) -> Result<pb::DeleteFederationRelationshipResponse, Status> {
        audit::record(|t| t.trust_domain = Some(req.trust_domain.clone()));
        let (_, peers) = self.enabled()?;
        let td = parse_trust_domain(&req.trust_domain)?;
        self.datastore
            .delete_federation_relationship(&td)
            .await
            .map_err(datastore_status)?;
        tracing::info!(trust_domain = %td, "federation relationship deleted");
        peers.reconcile().await.map_err(datastore_status)?;
        Ok(pb::DeleteFederationRelationshipResponse {})
    }

    pub(super) async fn list(
        &self,
        _: pb::ListFederationRelationshipsRequest,
    ) -> Result<pb::ListFederationRelationshipsResponse, Status> {
        let (bundles, _) = self.enabled()?;
        let relationships = self
            .datastore
            .list_federation_relationships()
            .await
            .map_err(datastore_status)?
            .iter()
            .map(|r| to_wire(r, bundles))
            .collect();
        Ok(pb::ListFederationRelationshipsResponse { relationships })
    }

    pub(super) async fn get(
        &self,
        req: pb::GetFederationRelationshipRequest,
    ) -> Result<pb::GetFederationRelationshipResponse, Status> {
        let (bundles, peers) = self.enabled()?;
        let td = parse_trust_domain(&req.trust_domain)?;
        let relationship = self
            .datastore
            .fetch_federation_relationship(&td)
            .await
            .map_err(datastore_status)?
            .ok_or_else(|| {
                let hint = if peers.configured(&td) {
                    " (it is in the config file's federates_with)"
                } else {
                    ""
                };
                Status::not_found(format!(
                    "no federation relationship with {td} in the datastore{hint}"
                ))
            })?;
        Ok(pb::GetFederationRelationshipResponse {
            relationship: Some(to_wire(&relationship, bundles)),
            status: peers.statuses().get(&td).as_ref().map(status_to_wire),
        })
    }

    pub(super) async fn refresh(
        &self,
        req: pb::RefreshFederatedBundleRequest,
    ) -> Result<pb::RefreshFederatedBundleResponse, Status> {
        audit::record(|t| t.trust_domain = Some(req.trust_domain.clone()));
        let (bundles, peers) = self.enabled()?;
        let td = parse_trust_domain(&req.trust_domain)?;
        let before = bundles.fetch(&td);
        peers.refresh(&td).await.map_err(|e| match e {
            RefreshError::NotManaged(_) => Status::not_found(e.to_string()),
            RefreshError::Stopped(_) => Status::aborted(e.to_string()),
            RefreshError::Failed(m) => Status::internal(format!("failed to refresh bundle: {m}")),
        })?;
        Ok(pb::RefreshFederatedBundleResponse {
            updated: bundles.fetch(&td) != before,
            status: peers.statuses().get(&td).as_ref().map(status_to_wire),
        })
    }
}

/// Checks a relationship from a request: a trust domain, an https URL, a profile (with a
/// SPIFFE ID for https_spiffe), and an optional bundle of the trust domain that
/// authenticates the endpoint.
fn parse(wire: &pb::FederationRelationship) -> Result<(FederatesWith, Option<Bundle>), Status> {
    let invalid = |m: String| Status::invalid_argument(m);
    if wire.trust_domain.is_empty() {
        return Err(invalid("trust domain is required".into()));
    }
    let trust_domain = parse_trust_domain(&wire.trust_domain)?;
    if wire.bundle_endpoint_url.is_empty() {
        return Err(invalid("bundle endpoint URL is required".into()));
    }
    check_url(&wire.bundle_endpoint_url)
        .map_err(|m| invalid(format!("invalid bundle endpoint URL: {m}")))?;
    let profile = match &wire.bundle_endpoint_profile {
        None => return Err(invalid("bundle endpoint profile is required".into())),
        Some(pb::federation_relationship::BundleEndpointProfile::HttpsWeb(_)) => {
            EndpointProfile::HttpsWeb
        }
        Some(pb::federation_relationship::BundleEndpointProfile::HttpsSpiffe(p)) => {
            if p.endpoint_spiffe_id.is_empty() {
                return Err(invalid(
                    "endpoint SPIFFE ID is required if 'https_spiffe' endpoint profile is set"
                        .into(),
                ));
            }
            EndpointProfile::HttpsSpiffe {
                endpoint_spiffe_id: SpiffeId::new(&p.endpoint_spiffe_id).map_err(|e| {
                    invalid(format!(
                        "cannot parse bundle endpoint SPIFFE ID {:?}: {e}",
                        p.endpoint_spiffe_id
                    ))
                })?,
            }
        }
    };
    let bundle = match &wire.trust_domain_bundle {
        None => None,
        Some(b) => {
            let bundle = Bundle::try_from(b).map_err(invalid_field)?;
            bundle
                .to_spiffe_json()
                .map_err(|e| invalid(format!("invalid trust domain bundle: {e}")))?;
            let expected = match &profile {
                EndpointProfile::HttpsSpiffe { endpoint_spiffe_id } => {
                    endpoint_spiffe_id.trust_domain()
                }
                EndpointProfile::HttpsWeb => &trust_domain,
            };
            if &bundle.trust_domain != expected {
                return Err(invalid(format!(
                    "the trust domain bundle is for {}, not {expected}",
                    bundle.trust_domain
                )));
            }
            Some(bundle)
        }
    };
    Ok((
        FederatesWith {
            trust_domain,
            url: wire.bundle_endpoint_url.clone(),
            profile,
        },
        bundle,
    ))
}

fn to_wire(r: &FederatesWith, bundles: &FederatedBundles) -> pb::FederationRelationship {
    use pb::federation_relationship::BundleEndpointProfile as P;
    pb::FederationRelationship {
        trust_domain: r.trust_domain.to_string(),
        bundle_endpoint_url: r.url.clone(),
        bundle_endpoint_profile: Some(match &r.profile {
            EndpointProfile::HttpsWeb => P::HttpsWeb(pb::HttpsWebProfile {}),
            EndpointProfile::HttpsSpiffe { endpoint_spiffe_id } => {
                P::HttpsSpiffe(pb::HttpsSpiffeProfile {
                    endpoint_spiffe_id: endpoint_spiffe_id.to_string(),
                })
            }
        }),
        trust_domain_bundle: bundles
            .fetch(&r.trust_domain)
            .map(|b| common::Bundle::from(b.as_ref())),
    }
}

fn unix(t: Option<SystemTime>) -> i64 {
    t.and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

fn status_to_wire(s: &PeerStatus) -> pb::FederationPeerStatus {
    pb::FederationPeerStatus {
        source: s.source.as_str().into(),
        bundle_endpoint_url: s.url.clone(),
        last_refresh: unix(s.last_refresh),
        last_success: unix(s.last_success),
        next_refresh: unix(s.next_refresh),
        last_error: s.last_error.clone().unwrap_or_default(),
    }
}
