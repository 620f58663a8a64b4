//! The small results: `spire.api.types.JoinToken` (`token generate`), `JWTSVID` in
//! `MintJWTSVIDResponse` (`jwt mint`), `x509 mint`'s result, and `AuthorityState` with the
//! `localauthority` responses, as SPIRE's CLI prints them with `-output json`.

use serde::Serialize;

use super::{SpiffeId, int64};

/// `spire.api.types.JoinToken`.
#[derive(Serialize, Debug)]
pub(in crate::cli) struct JoinToken {
    #[serde(with = "int64")]
    pub expires_at: i64,
    pub value: String,
}

/// `MintJWTSVIDResponse`.
#[derive(Serialize, Debug)]
pub(in crate::cli) struct MintJwtSvidResponse {
    pub svid: JwtSvid,
}

/// `spire.api.types.JWTSVID`.
#[derive(Serialize, Debug)]
pub(in crate::cli) struct JwtSvid {
    #[serde(with = "int64")]
    pub expires_at: i64,
    pub hint: String,
    pub id: SpiffeId,
    #[serde(with = "int64")]
    pub issued_at: i64,
    pub token: String,
}

/// `x509 mint`'s result (a Go struct in SPIRE, not a protobuf message): DER as base64, the
/// key as PKCS#8.
#[derive(Serialize, Debug)]
pub(in crate::cli) struct X509MintResult {
    pub private_key: String,
    pub root_cas: Vec<String>,
    pub x509_svid: Vec<String>,
}

/// `localauthority.v1.AuthorityState`.
#[derive(Serialize, Debug, Clone)]
pub(in crate::cli) struct AuthorityState {
    pub authority_id: String,
    #[serde(with = "int64")]
    pub expires_at: i64,
    pub upstream_authority_subject_key_id: String,
}

/// `Get{X509,JWT}AuthorityStateResponse`: each state absent when there is none.
#[derive(Serialize, Debug)]
pub(in crate::cli) struct AuthorityStateResponse {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub active: Option<AuthorityState>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub old: Option<AuthorityState>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prepared: Option<AuthorityState>,
}
