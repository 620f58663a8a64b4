//! The CA's local authorities (SPIRE's `localauthority/v1`): show, prepare, activate, taint
//! and revoke the X.509 and JWT authorities. A change is stored before it takes effect
//! ([`crate::ca_store::commit`]), and before the operator hears it is done.

use std::sync::Arc;
use std::time::SystemTime;

use sigil_proto::sigil::admin::v1 as pb;
use tonic::Status;

use crate::api::{audit, datastore_status};
use crate::ca::Ca;
use crate::ca::local_authority::{AuthorityKind, AuthorityState, LocalAuthorityError};
use crate::ca::rotation::AuthorityStatus;
use crate::ca_store::{self, CommitError};
use crate::datastore::{Datastore, DatastoreError};

pub(super) struct LocalAuthorities {
    datastore: Datastore,
    ca: Arc<Ca>,
}

impl LocalAuthorities {
    pub(super) fn new(datastore: Datastore, ca: Arc<Ca>) -> Self {
        Self { datastore, ca }
    }

    pub(super) async fn call(
        &self,
        req: pb::LocalAuthorityRequest,
    ) -> Result<pb::LocalAuthorityResponse, Status> {
        let kind = match pb::AuthorityKind::try_from(req.kind) {
            Ok(pb::AuthorityKind::X509) => AuthorityKind::X509,
            Ok(pb::AuthorityKind::Jwt) => AuthorityKind::Jwt,
            Err(_) => return Err(Status::invalid_argument("invalid authority kind")),
        };
        let id = req.authority_id.as_str();
        let op = pb::LocalAuthorityOp::try_from(req.op);
        audit::record(|t| {
            t.authority_kind = Some(audit_kind(kind).to_owned());
            t.authority_op = op.ok().map(|op| audit_op(op).to_owned());
            t.authority_id = (!id.is_empty()).then(|| id.to_owned());
        });
        let op = match op {
            Ok(pb::LocalAuthorityOp::Show) => {
                audit::read_only();
                return Ok(pb::LocalAuthorityResponse {
                    authority: None,
                    authorities: self
                        .ca
                        .authorities(kind)
                        .iter()
                        .map(authority_state_pb)
                        .collect(),
                });
            }
            Ok(op) => op,
            Err(_) => return Err(Status::invalid_argument("invalid operation")),
        };
        // Stored before it takes effect, and before the operator hears it is done: a
        // change the datastore cannot take is refused whole, and a restart cannot undo one.
        let state = ca_store::commit(&self.datastore, &self.ca, |ca| {
            match op {
                pb::LocalAuthorityOp::Prepare => ca.prepare_authority(kind, SystemTime::now()),
                pb::LocalAuthorityOp::Activate => ca.activate_authority(kind, id),
                pb::LocalAuthorityOp::Taint => ca.taint_authority(kind, id),
                pb::LocalAuthorityOp::Revoke => ca.revoke_authority(kind, id),
                pb::LocalAuthorityOp::Show => unreachable!("answered above"),
            }
            .map(Some)
        })
        .await
        .map_err(|e| match e {
            CommitError::Refused(e) => local_authority_status(e),
            CommitError::NotStored(e) => {
                tracing::error!(error = %e, "cannot store the CA journal; the change was not made");
                not_stored_status(e)
            }
        })?
        .ok_or_else(|| Status::internal("the change planned nothing"))?;
        // PREPARE names the authority it made.
        audit::record(|t| t.authority_id = Some(state.authority_id.clone()));
        tracing::info!(%kind, op = req.op, authority_id = %state.authority_id, "local authority changed");
        if op == pb::LocalAuthorityOp::Revoke {
            self.ca
                .record_revoked(kind, state.clone(), sigil_common::time::unix_now());
        }
        Ok(pb::LocalAuthorityResponse {
            authority: Some(authority_state_pb(&state)),
            authorities: Vec::new(),
        })
    }
}

/// An authority kind as the audit line names it.
fn audit_kind(kind: AuthorityKind) -> &'static str {
    match kind {
        AuthorityKind::X509 => "x509",
        AuthorityKind::Jwt => "jwt",
    }
}

/// An operation as the audit line names it (the CLI's subcommand).
fn audit_op(op: pb::LocalAuthorityOp) -> &'static str {
    match op {
        pb::LocalAuthorityOp::Show => "show",
        pb::LocalAuthorityOp::Prepare => "prepare",
        pb::LocalAuthorityOp::Activate => "activate",
        pb::LocalAuthorityOp::Taint => "taint",
        pb::LocalAuthorityOp::Revoke => "revoke",
    }
}

fn authority_state_pb(a: &AuthorityState) -> pb::AuthorityState {
    let status = match a.status {
        AuthorityStatus::Active => pb::AuthorityStatus::Active,
        AuthorityStatus::Prepared => pb::AuthorityStatus::Prepared,
        AuthorityStatus::Old => pb::AuthorityStatus::Old,
    };
    pb::AuthorityState {
        authority_id: a.authority_id.clone(),
        expires_at: a.expires_at,
        status: status.into(),
        tainted: a.tainted,
        upstream_authority_subject_key_id: a.upstream_authority_id.clone().unwrap_or_default(),
    }
}

/// A change whose journal the datastore would not take: the operator is told why, and that
/// nothing changed.
fn not_stored_status(e: DatastoreError) -> Status {
    let status = datastore_status(e);
    let message = match status.code() {
        tonic::Code::ResourceExhausted | tonic::Code::Unavailable => status.message(),
        _ => "the datastore failed",
    };
    Status::new(
        status.code(),
        format!(
            "{} (the change was not made)",
            message.trim_end_matches("; nothing was written")
        ),
    )
}

fn local_authority_status(e: LocalAuthorityError) -> Status {
    match e {
        LocalAuthorityError::Upstream(_) => Status::failed_precondition(e.to_string()),
        LocalAuthorityError::Ca(e) => {
            tracing::error!(error = %e, "local authority operation failed");
            Status::internal(format!("CA failure: {e}"))
        }
        e => Status::invalid_argument(e.to_string()),
    }
}
