//! What goes into each file, in spiffe-helper's formats (`pkg/disk`):
//!
//! - the SVID file: the certificate chain as PEM `CERTIFICATE` blocks, leaf first (the leaf
//!   alone with `add_intermediates_to_bundle`);
//! - the key file: the PKCS#8 private key as one PEM `PRIVATE KEY` block;
//! - the bundle file: the X.509 authorities of the SVID's trust domain, then the intermediates
//!   (with `add_intermediates_to_bundle`), then every other trust domain's authorities (with
//!   `include_federated_domains`, in trust domain order); `omit_expired` drops expired
//!   certificates from the SVID and bundle files;
//! - a JWT-SVID file: the token, nothing else;
//! - the JWT bundle file: a JSON object from trust domain name (`example.org`) to the base64
//!   (standard alphabet) of that trust domain's JWKS.

use std::collections::BTreeMap;

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use sigil_proto::bundle::pem_encode;
use sigil_proto::workload::{Jwtsvid, X509svid, X509svidResponse};
use x509_parser::prelude::{FromDer, X509Certificate};
use zeroize::Zeroizing;

use super::config::X509Files;

/// Why a Workload API answer could not be turned into files.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RenderError {
    #[error("the Workload API answered with no SVID")]
    NoSvid,
    #[error("no SVID has the hint {0:?}")]
    NoHint(String),
    #[error("the response carries an invalid certificate: {0}")]
    BadCertificate(String),
    #[error("the JWT-SVID is not a JWT with an exp claim")]
    BadJwt,
}

/// The three X.509 files' contents, and which SVID they hold.
pub struct X509Contents {
    pub spiffe_id: String,
    pub svid: String,
    pub key: Zeroizing<String>,
    pub bundle: String,
}

impl std::fmt::Debug for X509Contents {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("X509Contents")
            .field("spiffe_id", &self.spiffe_id)
            .finish_non_exhaustive()
    }
}

/// The SVID spiffe-helper would pick: the one with `hint`, else the first (the default).
fn pick<'a, T>(
    svids: &'a [T],
    hint: Option<&str>,
    hint_of: impl Fn(&T) -> &str,
) -> Result<&'a T, RenderError> {
    match hint {
        None => svids.first().ok_or(RenderError::NoSvid),
        Some(hint) => svids
            .iter()
            .find(|s| hint_of(s) == hint)
            .ok_or_else(|| RenderError::NoHint(hint.to_owned())),
    }
}

/// The X.509 files for `response`; `now` is seconds since the epoch (for `omit_expired`).
pub fn x509_contents(
    response: &X509svidResponse,
    files: &X509Files,
    hint: Option<&str>,
    now: i64,
) -> Result<X509Contents, RenderError> {
    let svid: &X509svid = pick(&response.svids, hint, |s| &s.hint)?;
    let chain = split_der(&svid.x509_svid)?;
    let mut bundle = split_der(&svid.bundle)?;
    let mut certs = chain.clone();
    if files.add_intermediates_to_bundle {
        bundle.extend(chain.iter().skip(1));
        certs.truncate(1);
    }
    if files.include_federated_domains {
        let own = trust_domain_id(&svid.spiffe_id);
        // Trust domain order, as go-spiffe's bundle set lists them.
        let federated: BTreeMap<&str, &Vec<u8>> = response
            .federated_bundles
            .iter()
            .filter(|(td, _)| Some(td.as_str()) != own)
            .map(|(td, der)| (td.as_str(), der))
            .collect();
        for der in federated.values() {
            bundle.extend(split_der(der)?);
        }
    }
    Ok(X509Contents {
        spiffe_id: svid.spiffe_id.clone(),
        svid: pem_certs(&certs, files.omit_expired, now),
        key: Zeroizing::new(pem_encode("PRIVATE KEY", &svid.x509_svid_key)),
        bundle: pem_certs(&bundle, files.omit_expired, now),
    })
}

/// `spiffe://td` of a SPIFFE ID, as the federated bundles are keyed.
fn trust_domain_id(spiffe_id: &str) -> Option<&str> {
    let rest = spiffe_id.strip_prefix("spiffe://")?;
    let end = rest
        .find('/')
        .map_or(spiffe_id.len(), |i| i + "spiffe://".len());
    Some(&spiffe_id[..end])
}

fn pem_certs(certs: &[Cert<'_>], omit_expired: bool, now: i64) -> String {
    certs
        .iter()
        .filter(|c| !(omit_expired && c.not_after < now))
        .map(|c| pem_encode("CERTIFICATE", c.der))
        .collect()
}

#[derive(Clone, Copy)]
struct Cert<'a> {
    der: &'a [u8],
    not_after: i64,
}

/// Splits concatenated DER certificates.
fn split_der(mut der: &[u8]) -> Result<Vec<Cert<'_>>, RenderError> {
    let mut out = Vec::new();
    while !der.is_empty() {
        let (rest, cert) = X509Certificate::from_der(der)
            .map_err(|e| RenderError::BadCertificate(e.to_string()))?;
        out.push(Cert {
            der: &der[..der.len() - rest.len()],
            not_after: cert.validity().not_after.timestamp(),
        });
        der = rest;
    }
    Ok(out)
}

/// The JWT-SVID to write (by hint, else the first) and its `exp`, seconds since the epoch.
pub fn jwt_svid<'a>(
    svids: &'a [Jwtsvid],
    hint: Option<&str>,
) -> Result<(&'a str, i64), RenderError> {
    let svid = pick(svids, hint, |s| &s.hint)?;
    let exp = jwt_expiry(&svid.svid).ok_or(RenderError::BadJwt)?;
    Ok((&svid.svid, exp))
}

/// The `exp` claim of a compact JWT, read without checking the signature: the token comes
/// from the local agent over the Workload API, and only its refresh time is needed here.
fn jwt_expiry(token: &str) -> Option<i64> {
    let payload = token.split('.').nth(1)?;
    let bytes = URL_SAFE_NO_PAD.decode(payload).ok()?;
    let claims: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    claims.get("exp")?.as_i64()
}

/// The JWT bundle file: `{"<trust domain name>": "<base64 of its JWKS>"}`, keys sorted.
/// `bundles` is the Workload API's map, keyed by trust domain ID (`spiffe://example.org`).
pub fn jwt_bundles_json<'a>(
    bundles: impl IntoIterator<Item = (&'a String, &'a Vec<u8>)>,
) -> String {
    let by_name: BTreeMap<&str, String> = bundles
        .into_iter()
        .map(|(td, jwks)| {
            (
                td.strip_prefix("spiffe://").unwrap_or(td),
                STANDARD.encode(jwks),
            )
        })
        .collect();
    serde_json::to_string(&by_name).unwrap_or_else(|_| unreachable!("a map of strings serializes"))
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use sigil_common::testing::{ca, in_a_day, leaf};

    use super::*;

    fn files() -> X509Files {
        X509Files {
            svid: "svid.pem".to_owned(),
            key: "svid_key.pem".to_owned(),
            bundle: "bundle.pem".to_owned(),
            add_intermediates_to_bundle: false,
            include_federated_domains: false,
            omit_expired: false,
        }
    }

    #[test]
    fn trust_domain_ids() {
        assert_eq!(
            trust_domain_id("spiffe://example.org/web"),
            Some("spiffe://example.org")
        );
        assert_eq!(
            trust_domain_id("spiffe://example.org"),
            Some("spiffe://example.org")
        );
        assert_eq!(trust_domain_id("web"), None);
    }

    #[test]
    fn hints_pick_the_svid_and_a_missing_one_is_an_error() {
        let svids = [
            Jwtsvid {
                spiffe_id: "spiffe://td/a".to_owned(),
                svid: format!("h.{}.s", URL_SAFE_NO_PAD.encode(r#"{"exp":100}"#)),
                hint: "a".to_owned(),
            },
            Jwtsvid {
                spiffe_id: "spiffe://td/b".to_owned(),
                svid: format!("h.{}.s", URL_SAFE_NO_PAD.encode(r#"{"exp":200}"#)),
                hint: "b".to_owned(),
            },
        ];
        assert_eq!(jwt_svid(&svids, None).unwrap().1, 100);
        assert_eq!(jwt_svid(&svids, Some("b")).unwrap().1, 200);
        assert!(matches!(
            jwt_svid(&svids, Some("c")),
            Err(RenderError::NoHint(_))
        ));
        assert!(matches!(jwt_svid(&[], None), Err(RenderError::NoSvid)));
    }

    #[test]
    fn jwt_bundles_are_keyed_by_trust_domain_name_and_base64() {
        let mut m = HashMap::new();
        m.insert("spiffe://b.org".to_owned(), b"{\"keys\":[]}".to_vec());
        m.insert("spiffe://a.org".to_owned(), b"{}".to_vec());
        assert_eq!(
            jwt_bundles_json(&m),
            r#"{"a.org":"e30=","b.org":"eyJrZXlzIjpbXX0="}"#
        );
    }

    #[test]
    fn intermediates_and_federated_bundles_go_where_asked() {
        let (own, fed) = (ca(), ca());
        let mut chain = leaf(&own, &["spiffe://example.org/web"], in_a_day());
        chain.extend(&own.der);
        let key = vec![1, 2, 3];
        let response = X509svidResponse {
            svids: vec![X509svid {
                spiffe_id: "spiffe://example.org/web".to_owned(),
                x509_svid: chain,
                x509_svid_key: key,
                bundle: own.der.clone(),
                hint: String::new(),
            }],
            crl: Vec::new(),
            federated_bundles: [
                ("spiffe://other.org".to_owned(), fed.der),
                ("spiffe://example.org".to_owned(), own.der.clone()),
            ]
            .into(),
        };
        let count = |pem: &str| pem.matches("BEGIN CERTIFICATE").count();
        let plain = x509_contents(&response, &files(), None, 0).unwrap();
        assert_eq!((count(&plain.svid), count(&plain.bundle)), (2, 1));
        assert!(plain.key.starts_with("-----BEGIN PRIVATE KEY-----\n"));
        let all = X509Files {
            add_intermediates_to_bundle: true,
            include_federated_domains: true,
            ..files()
        };
        let moved = x509_contents(&response, &all, None, 0).unwrap();
        assert_eq!((count(&moved.svid), count(&moved.bundle)), (1, 3));
        // Everything has expired by the year 5000 (rcgen's default NotAfter is 4096).
        let omit = X509Files {
            omit_expired: true,
            ..files()
        };
        let expired = x509_contents(&response, &omit, None, 95_617_584_000).unwrap();
        assert_eq!((count(&expired.svid), count(&expired.bundle)), (0, 0));
        assert!(matches!(
            x509_contents(&response, &files(), Some("db"), 0),
            Err(RenderError::NoHint(_))
        ));
    }
}
