//! Signing a mint batch off the async runtime, spread over the cores: a large batch neither
//! stalls the runtime's workers nor leaves a core idle. Results keep the request order; an
//! item that cannot be signed is an error naming its entry.

use std::sync::Arc;
use std::time::Duration;

use sigil_proto::SpiffeId;
use sigil_proto::sigil::agent::v1 as pb;
use tonic::Status;

use crate::api::ca_status;
use crate::ca::{Ca, JwtSvid};

/// Signs every `(entry, SPIFFE ID, csr)` off the async runtime (see [`spread_over_cores`]).
/// Results keep the request order.
pub(super) async fn sign_batch(
    ca: Arc<Ca>,
    jobs: Vec<(sigil_proto::RegistrationEntry, SpiffeId, Vec<u8>)>,
) -> Vec<Result<pb::X509svidResult, Status>> {
    spread_over_cores(jobs, move |(entry, id, csr)| {
        let svid = ca
            .sign_x509_svid_csr(&csr, &id, entry.x509_svid_ttl, &entry.dns_names)
            .map_err(|e| {
                Status::invalid_argument(format!(
                    "entry {:?}: {}",
                    entry.id,
                    ca_status(e).message()
                ))
            })?;
        Ok(pb::X509svidResult {
            entry_id: entry.id,
            svid_chain: svid.chain,
            expires_at: svid.expires_at,
        })
    })
    .await
}

/// One authorized BatchMintJWTSVID item: the entry's ID and JWT-SVID TTL, the SPIFFE ID to
/// mint and the audience.
pub(super) struct JwtJob {
    pub(super) entry_id: String,
    pub(super) jwt_svid_ttl: Option<Duration>,
    pub(super) id: SpiffeId,
    pub(super) audience: Vec<String>,
}

/// Signs every [`JwtJob`] off the async runtime (see [`spread_over_cores`]). Results keep
/// the request order.
pub(super) async fn sign_jwt_batch(ca: Arc<Ca>, jobs: Vec<JwtJob>) -> Vec<Result<JwtSvid, Status>> {
    spread_over_cores(jobs, move |job| {
        ca.sign_jwt_svid(&job.id, &job.audience, job.jwt_svid_ttl)
            .map_err(|e| {
                Status::invalid_argument(format!(
                    "entry {:?}: {}",
                    job.entry_id,
                    ca_status(e).message()
                ))
            })
    })
    .await
}

/// Runs `sign` on every job off the async runtime, in one chunk per core, so a large batch
/// neither stalls the runtime's workers nor leaves a core idle. Results keep the job order.
async fn spread_over_cores<J, R, F>(jobs: Vec<J>, sign: F) -> Vec<Result<R, Status>>
where
    J: Send + 'static,
    R: Send + 'static,
    F: Fn(J) -> Result<R, Status> + Send + Sync + 'static,
{
    if jobs.is_empty() {
        return Vec::new();
    }
    let total = jobs.len();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let chunk = total.div_ceil(cores);
    let sign = Arc::new(sign);
    let mut handles = Vec::new();
    let mut jobs = jobs.into_iter();
    loop {
        let part: Vec<_> = jobs.by_ref().take(chunk).collect();
        if part.is_empty() {
            break;
        }
        let sign = sign.clone();
        handles.push(tokio::task::spawn_blocking(move || {
            part.into_iter().map(|j| sign(j)).collect::<Vec<_>>()
        }));
    }
    let mut out = Vec::with_capacity(total);
    for h in handles {
        match h.await {
            Ok(part) => out.extend(part),
            Err(e) => {
                tracing::error!(error = %e, "signing task failed");
                out.push(Err(Status::internal("signing failure")));
            }
        }
    }
    out
}
