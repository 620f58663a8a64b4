//! Minting SVIDs for the operator (SPIRE's `svid/v1` MintX509SVID / MintJWTSVID): an
//! X.509-SVID for a CSR, or a JWT-SVID, for any workload ID of the trust domain (never one in
//! the reserved namespace), with no registration entry.

use std::sync::Arc;
use std::time::Instant;

use sigil_proto::sigil::admin::v1 as pb;
use sigil_proto::{TrustDomain, convert};
use tonic::Status;

use super::{check_ttl, parse_workload_id, ttl};
use crate::api::{audit, ca_status};
use crate::ca::Ca;
use crate::metrics::{Metrics, ResultLabel, result_of};

pub(super) struct Mint {
    ca: Arc<Ca>,
    trust_domain: TrustDomain,
    metrics: Arc<Metrics>,
}

impl Mint {
    pub(super) fn new(ca: Arc<Ca>, trust_domain: TrustDomain, metrics: Arc<Metrics>) -> Self {
        Self {
            ca,
            trust_domain,
            metrics,
        }
    }

    pub(super) async fn x509_svid(
        &self,
        req: pb::MintX509svidRequest,
    ) -> Result<pb::MintX509svidResponse, Status> {
        audit::record(|t| {
            t.spiffe_id = Some(req.spiffe_id.clone());
            t.ttl = Some(req.ttl.into());
        });
        let id = parse_workload_id(&self.trust_domain, "spiffe_id", &req.spiffe_id)?;
        for d in &req.dns_names {
            convert::validate_dns_name(d).map_err(Status::invalid_argument)?;
        }
        if req.csr.is_empty() {
            return Err(Status::invalid_argument("a CSR is required"));
        }
        check_ttl("ttl", req.ttl.into())?;
        let started = Instant::now();
        let signed = self
            .ca
            .sign_x509_svid_csr(&req.csr, &id, ttl(req.ttl), &req.dns_names);
        self.metrics
            .x509_sign_seconds
            .observe(started.elapsed().as_secs_f64());
        self.metrics
            .x509_svids_signed
            .get_or_create(&ResultLabel {
                result: result_of(&signed),
            })
            .inc();
        let svid = signed.map_err(ca_status)?;
        audit::record(|t| {
            t.serial = Some(svid.serial.clone());
            t.expires_at = Some(svid.expires_at);
        });
        tracing::info!(spiffe_id = %id, serial = %svid.serial, "X.509-SVID minted");
        Ok(pb::MintX509svidResponse {
            svid_chain: svid.chain,
            bundle: self.ca.bundle().x509_authorities.clone(),
            expires_at: svid.expires_at,
        })
    }

    pub(super) async fn jwt_svid(
        &self,
        req: pb::MintJwtsvidRequest,
    ) -> Result<pb::MintJwtsvidResponse, Status> {
        audit::record(|t| {
            t.spiffe_id = Some(req.spiffe_id.clone());
            t.audience = Some(audit::list(&req.audience));
            t.ttl = Some(req.ttl.into());
        });
        let id = parse_workload_id(&self.trust_domain, "spiffe_id", &req.spiffe_id)?;
        if req.audience.is_empty() || req.audience.iter().any(String::is_empty) {
            return Err(Status::invalid_argument(
                "at least one non-empty audience is required",
            ));
        }
        check_ttl("ttl", req.ttl.into())?;
        let svid = self
            .ca
            .sign_jwt_svid(&id, &req.audience, ttl(req.ttl))
            .map_err(ca_status)?;
        audit::record(|t| t.expires_at = Some(svid.expires_at));
        tracing::info!(spiffe_id = %id, "JWT-SVID minted");
        Ok(pb::MintJwtsvidResponse {
            token: svid.token,
            expires_at: svid.expires_at,
        })
    }
}
