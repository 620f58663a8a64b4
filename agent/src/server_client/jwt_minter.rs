//! [`ServerJwtMinter`]: the Workload API's JWT-SVIDs, minted by the server through
//! `MintJWTSVID`, with one retry on the next server when the connection is gone.

use std::sync::Arc;

use futures::future::BoxFuture;
use sigil_proto::sigil::agent::v1::MintJwtsvidRequest;
use sigil_proto::{RegistrationEntry, SpiffeId};
use tracing::warn;

use super::{ServerConnection, bounded, is_connection_failure};
use crate::cache::{JwtSvidMinter, MintError, Outage};
use crate::ops::Metrics;

/// Mints JWT-SVIDs through the server's `MintJWTSVID` (the Workload API's `JwtSvidCache` sits
/// in front of it).
#[derive(Debug, Clone)]
pub struct ServerJwtMinter {
    connection: Arc<ServerConnection>,
    metrics: Arc<Metrics>,
}

impl ServerJwtMinter {
    pub fn new(connection: Arc<ServerConnection>, metrics: Arc<Metrics>) -> Self {
        Self {
            connection,
            metrics,
        }
    }
}

impl JwtSvidMinter for ServerJwtMinter {
    fn mint<'a>(
        &'a self,
        entry: &'a RegistrationEntry,
        spiffe_id: &'a SpiffeId,
        pod_uid: Option<&'a str>,
        audience: &'a [String],
    ) -> BoxFuture<'a, Result<String, MintError>> {
        Box::pin(async move {
            let request = MintJwtsvidRequest {
                entry_id: entry.id.clone(),
                audience: audience.to_vec(),
                spiffe_id: spiffe_id.to_string(),
                pod_uid: pod_uid.unwrap_or_default().to_owned(),
            };
            let mut outcome = bounded(self.connection.client().mint_jwtsvid(request.clone())).await;
            if let Err(status) = &outcome
                && is_connection_failure(status.code())
            {
                // The server went away: one more try, on the next server.
                self.connection.fail_over();
                outcome = bounded(self.connection.client().mint_jwtsvid(request)).await;
            }
            match outcome {
                Ok(response) => Ok(response.into_inner().token),
                Err(status) => {
                    warn!(entry_id = %entry.id, code = ?status.code(), error = %status.message(), "JWT-SVID minting failed");
                    Err(match status.code() {
                        tonic::Code::PermissionDenied
                        | tonic::Code::InvalidArgument
                        | tonic::Code::NotFound => MintError::Refused(status.message().into()),
                        _ => MintError::Unavailable(status.message().into()),
                    })
                }
            }
        })
    }

    fn outage(&self, now: i64) -> Option<Outage> {
        self.connection.outage(now)
    }

    fn served_past_half_life(&self) {
        self.metrics.svid_past_half_life("jwt");
    }
}
