//! JWT-SVIDs on top of mTLS, as the SPIFFE JWT-SVID spec's bearer-token use: the client sends
//! `Authorization: Bearer <JWT-SVID>` with the server's SPIFFE ID as audience; the server checks
//! it twice, offline against the JWT bundles the Workload API gives it
//! (`JwtSvid::parse_and_validate`) and through the agent (`ValidateJWTSVID`), and requires its
//! subject to be the mTLS peer, so a token replayed by another workload is worth nothing.

use spiffe::{JwtBundleSet, JwtSvid, SpiffeId, WorkloadApiClient};

/// What went wrong getting or checking a JWT-SVID. The texts are the Go services' (tests match
/// both stacks with the same words).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum JwtError {
    #[error("connecting to the Workload API: {0}")]
    Connect(#[source] spiffe::WorkloadApiError),
    #[error("fetching a JWT-SVID: {0}")]
    Fetch(#[source] spiffe::WorkloadApiError),
    #[error("fetching JWT bundles: {0}")]
    Bundles(#[source] spiffe::WorkloadApiError),
    #[error("local validation: {0}")]
    Local(#[source] spiffe::JwtSvidError),
    #[error("the Workload API's validation: {0}")]
    Remote(#[source] spiffe::WorkloadApiError),
    #[error("local validation says {local}, the Workload API {remote}")]
    Disagree { local: SpiffeId, remote: SpiffeId },
}

/// A Workload API connection for JWT-SVIDs (`SPIFFE_ENDPOINT_SOCKET`).
pub struct Jwts {
    client: WorkloadApiClient,
}

impl Jwts {
    pub async fn connect() -> Result<Self, JwtError> {
        let client = WorkloadApiClient::connect_env()
            .await
            .map_err(JwtError::Connect)?;
        Ok(Self { client })
    }

    /// A JWT-SVID for `audience`, of `subject` (one of our SVIDs' IDs).
    pub async fn fetch(&self, audience: &str, subject: &SpiffeId) -> Result<String, JwtError> {
        self.client
            .fetch_jwt_token([audience], Some(subject))
            .await
            .map_err(JwtError::Fetch)
    }

    /// Validates `token` for `audience`, offline and through the agent; both must accept it and
    /// agree on the subject, which is returned.
    pub async fn validate(&self, token: &str, audience: &str) -> Result<SpiffeId, JwtError> {
        let bundles: JwtBundleSet = self
            .client
            .fetch_jwt_bundles()
            .await
            .map_err(JwtError::Bundles)?;
        let local =
            JwtSvid::parse_and_validate(token, &bundles, &[audience]).map_err(JwtError::Local)?;
        let remote = self
            .client
            .validate_jwt_token(audience, token)
            .await
            .map_err(JwtError::Remote)?;
        if local.spiffe_id() != remote.spiffe_id() {
            return Err(JwtError::Disagree {
                local: local.spiffe_id().clone(),
                remote: remote.spiffe_id().clone(),
            });
        }
        Ok(local.spiffe_id().clone())
    }
}
