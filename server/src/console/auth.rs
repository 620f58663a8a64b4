//! The console's credentials, either of which lets a request in:
//!
//! - the token in `token_file` (mode 0600 or tighter, refused at start otherwise, whatever
//!   `allow_insecure_file_permissions` says), sent as `Authorization: Bearer <token>`, or as
//!   the password of HTTP Basic (any user name) so that a browser's own prompt works;
//!   compared in constant time;
//! - over TLS with `admin_ids` set, the client X.509-SVID of the connection (its chain
//!   verified against the trust domain's bundle in the handshake, see
//!   [`super::tls`]) when its leaf's one URI SAN is one of `admin_ids` and it has not expired
//!   since the handshake.
//!
//! Anything else (another SPIFFE ID without the token included) gets 401 with an empty body.

use std::fmt;
use std::path::Path;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::Response;
use base64::Engine as _;
use sha2::{Digest, Sha256};
use sigil_common::fs_checks::{Access, check_file};
use sigil_common::listener::PeerCertificates;
use sigil_common::tls::leaf_spiffe_id;
use sigil_proto::SpiffeId;
use subtle::ConstantTimeEq;
use x509_parser::prelude::{FromDer, X509Certificate};
use zeroize::Zeroizing;

use super::ConsoleError;

/// The shortest token accepted: 128 bits as hex.
pub const MIN_TOKEN_LEN: usize = 32;

/// The console's bearer token; never printed.
pub struct Token(Zeroizing<Vec<u8>>);

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(..)")
    }
}

impl Token {
    /// Reads `path` (checked first: owned by us or root, mode 0600 or tighter); the token is
    /// its content with surrounding whitespace trimmed, at least [`MIN_TOKEN_LEN`] bytes.
    pub fn load(path: &Path) -> Result<Self, ConsoleError> {
        check_file(path, "console token_file", Access::OwnerOnly)?;
        let bad = |message: String| ConsoleError::Token {
            path: path.display().to_string(),
            message,
        };
        let raw = Zeroizing::new(std::fs::read(path).map_err(|e| bad(e.to_string()))?);
        let token = raw.trim_ascii();
        if token.len() < MIN_TOKEN_LEN {
            return Err(bad(format!(
                "the token is {} bytes; at least {MIN_TOKEN_LEN} are needed (e.g. `openssl rand -hex 32`)",
                token.len()
            )));
        }
        if !token.iter().all(|b| b.is_ascii_graphic()) {
            return Err(bad(
                "the token must be printable ASCII without spaces".to_owned()
            ));
        }
        Ok(Self(Zeroizing::new(token.to_vec())))
    }

    /// Whether `given` is the token, in time independent of where they differ (both are
    /// hashed first, so their lengths do not show either).
    pub fn matches(&self, given: &[u8]) -> bool {
        let want = Sha256::digest(&*self.0);
        let got = Sha256::digest(given);
        want.ct_eq(&got).into()
    }

    /// Whether an `Authorization` header value carries the token.
    fn authorizes(&self, value: &HeaderValue) -> bool {
        let value = value.as_bytes();
        if let Some(token) = strip_scheme(value, b"bearer ") {
            return self.matches(token.trim_ascii());
        }
        if let Some(basic) = strip_scheme(value, b"basic ") {
            let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(basic.trim_ascii())
            else {
                return false;
            };
            let decoded = Zeroizing::new(decoded);
            return match decoded.iter().position(|b| *b == b':') {
                Some(colon) => self.matches(&decoded[colon + 1..]),
                None => false,
            };
        }
        false
    }
}

fn strip_scheme<'a>(value: &'a [u8], scheme: &[u8]) -> Option<&'a [u8]> {
    (value.len() >= scheme.len() && value[..scheme.len()].eq_ignore_ascii_case(scheme))
        .then(|| &value[scheme.len()..])
}

/// Who may open the console: the token's holder, and the holders of SVIDs with these IDs.
#[derive(Debug)]
pub struct Credentials {
    token: Token,
    admin_ids: Vec<SpiffeId>,
}

impl Credentials {
    pub fn new(token: Token, admin_ids: Vec<SpiffeId>) -> Self {
        Self { token, admin_ids }
    }

    /// Whether the verified client chain's leaf names an admin and is still valid (TLS checked
    /// it at the handshake; a keep-alive connection may outlive it).
    fn admits(&self, certs: &PeerCertificates) -> bool {
        let Some(leaf) = certs.0.first() else {
            return false;
        };
        let valid = X509Certificate::from_der(leaf).is_ok_and(|(_, c)| c.validity().is_valid());
        if !valid {
            return false;
        }
        match leaf_spiffe_id(leaf) {
            Ok(Some(id)) if self.admin_ids.contains(&id) => {
                tracing::debug!(spiffe_id = %id, "console: admin SVID");
                true
            }
            _ => false,
        }
    }
}

/// The middleware: the request goes on only with an admin SVID or the token.
pub(super) async fn require_credentials(
    State(credentials): State<Arc<Credentials>>,
    request: Request,
    next: Next,
) -> Response {
    let by_svid = request
        .extensions()
        .get::<PeerCertificates>()
        .is_some_and(|certs| credentials.admits(certs));
    let authorized = by_svid
        || request
            .headers()
            .get(header::AUTHORIZATION)
            .is_some_and(|v| credentials.token.authorizes(v));
    if authorized {
        return next.run(request).await;
    }
    let mut response = Response::new(Body::empty());
    *response.status_mut() = StatusCode::UNAUTHORIZED;
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Basic realm=\"sigil console\", charset=\"UTF-8\""),
    );
    response
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn token_file(dir: &Path, text: &str, mode: u32) -> std::path::PathBuf {
        let path = dir.join("token");
        std::fs::write(&path, text).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        path
    }

    #[test]
    fn loads_a_private_token_and_matches_only_it() {
        let dir = tempfile::tempdir().unwrap();
        let secret = "0123456789abcdef0123456789abcdef";
        let token = Token::load(&token_file(dir.path(), &format!("{secret}\n"), 0o600)).unwrap();
        assert!(token.matches(secret.as_bytes()));
        assert!(!token.matches(b"0123456789abcdef0123456789abcdee"));
        assert!(!token.matches(b""));
        let header = |s: &str| HeaderValue::from_str(s).unwrap();
        assert!(token.authorizes(&header(&format!("Bearer {secret}"))));
        assert!(token.authorizes(&header(&format!("bearer {secret}"))));
        let basic = base64::engine::general_purpose::STANDARD.encode(format!("me:{secret}"));
        assert!(token.authorizes(&header(&format!("Basic {basic}"))));
        assert!(!token.authorizes(&header(secret)));
        assert!(!token.authorizes(&header("Bearer nope")));
        assert_eq!(format!("{token:?}"), "Token(..)");
    }

    #[test]
    fn refuses_an_open_file_and_a_short_token() {
        let dir = tempfile::tempdir().unwrap();
        let open = token_file(dir.path(), "0123456789abcdef0123456789abcdef", 0o644);
        let e = Token::load(&open).unwrap_err().to_string();
        assert!(e.contains("chmod 600"), "{e}");
        let short = token_file(dir.path(), "short", 0o600);
        let e = Token::load(&short).unwrap_err().to_string();
        assert!(e.contains("at least 32"), "{e}");
    }
}
