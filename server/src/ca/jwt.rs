//! JWT-SVID signing (spec digest §3.3): compact JWS with header `{"alg","kid","typ":"JWT"}`
//! and claims `sub`, `aud` (always an array), `exp`, `iat`, and `iss` when configured.
//!
//! The JWS is signed directly with ring rather than through jsonwebtoken: jsonwebtoken 11 has
//! no ring backend and its rust_crypto backend signs ES256 about 25x slower than ring
//! (TOOLING.md), and this is the hot path. Tests validate the tokens with jsonwebtoken.

use std::fmt;
use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::rand::{SecureRandom as _, SystemRandom};
use serde::Serialize;
use sigil_proto::SpiffeId;

use crate::ca::CaError;
use crate::key_manager::SigningKey;

/// A JWT signing key with its header encoded once.
pub struct JwtSigner {
    kid: String,
    key: Arc<SigningKey>,
    /// base64url of the JOSE header, identical for every token this key signs.
    header_b64: String,
    not_after: i64,
}

#[derive(Serialize)]
struct Header<'a> {
    alg: &'static str,
    kid: &'a str,
    typ: &'static str,
}

#[derive(Serialize)]
struct Claims<'a> {
    /// Written straight from the ID's parts (no intermediate string).
    #[serde(serialize_with = "serialize_display")]
    sub: &'a SpiffeId,
    aud: &'a [String],
    exp: i64,
    iat: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    iss: Option<&'a str>,
}

impl JwtSigner {
    pub fn new(kid: String, key: Arc<SigningKey>, not_after: i64) -> Result<Self, CaError> {
        let header = Header {
            alg: key.jws_alg(),
            kid: &kid,
            typ: "JWT",
        };
        let header_b64 = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&header)?);
        Ok(Self {
            kid,
            key,
            header_b64,
            not_after,
        })
    }

    pub fn kid(&self) -> &str {
        &self.kid
    }

    pub fn not_after(&self) -> i64 {
        self.not_after
    }

    pub fn key(&self) -> &Arc<SigningKey> {
        &self.key
    }

    /// Signs a token; the caller has checked the subject and the audience.
    pub fn sign(
        &self,
        sub: &SpiffeId,
        aud: &[String],
        iat: i64,
        exp: i64,
        iss: Option<&str>,
    ) -> Result<String, CaError> {
        // Sized for a typical token's claims: one allocation, no regrowth.
        let mut claims = Vec::with_capacity(CLAIMS_CAPACITY);
        serde_json::to_writer(
            &mut claims,
            &Claims {
                sub,
                aud,
                exp,
                iat,
                iss,
            },
        )?;
        let mut token = String::with_capacity(self.header_b64.len() + claims.len() * 4 / 3 + 140);
        token.push_str(&self.header_b64);
        token.push('.');
        URL_SAFE_NO_PAD.encode_string(&claims, &mut token);
        let signature = self.key.sign_jws(token.as_bytes())?;
        token.push('.');
        URL_SAFE_NO_PAD.encode_string(&signature, &mut token);
        Ok(token)
    }
}

/// Bytes reserved for a token's JSON claims: a SPIFFE ID, an audience or two and the times.
const CLAIMS_CAPACITY: usize = 256;

fn serialize_display<S: serde::Serializer>(
    value: &&SpiffeId,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    serializer.collect_str(value)
}

impl fmt::Debug for JwtSigner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JwtSigner")
            .field("kid", &self.kid)
            .field("key_id", &self.key.id())
            .field("not_after", &self.not_after)
            .finish()
    }
}

/// A fresh `kid`: base64url of 32 random bytes, unique per key.
pub fn random_kid() -> Result<String, CaError> {
    let mut bytes = [0u8; 32];
    SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| CaError::Random)?;
    Ok(URL_SAFE_NO_PAD.encode(bytes))
}
