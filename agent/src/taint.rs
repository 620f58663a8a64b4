//! Which SVIDs a tainted authority signed. The server marks an authority tainted in the bundle
//! it pushes (`localauthority ... taint`); the agent then re-mints right away every X509-SVID
//! whose chain it signed (its own SVID included) and drops the JWT-SVIDs it signed, instead
//! of waiting for their refresh point.
//!
//! An X.509 chain is affected when one of its certificates is a tainted authority, or was
//! issued by one: its Authority Key Identifier equals a tainted certificate's Subject Key
//! Identifier. That covers a leaf signed by a tainted CA and an intermediate signed by a
//! tainted upstream root. Every certificate Sigil issues carries both identifiers.

use std::collections::HashSet;

use x509_parser::extensions::ParsedExtension;
use x509_parser::prelude::{FromDer, X509Certificate};

use sigil_proto::Bundle;

/// The tainted authorities of one bundle, indexed for the checks.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct TaintedAuthorities {
    certs: HashSet<Vec<u8>>,
    /// Subject Key Identifiers of the tainted certificates.
    key_ids: HashSet<Vec<u8>>,
    jwt_key_ids: HashSet<String>,
}

impl TaintedAuthorities {
    pub fn from_bundle(bundle: &Bundle) -> Self {
        let mut tainted = Self::default();
        for der in &bundle.tainted_x509_authorities {
            if let Some(ski) = key_identifier(der, Which::Subject) {
                tainted.key_ids.insert(ski);
            }
            tainted.certs.insert(der.clone());
        }
        tainted.jwt_key_ids = bundle
            .jwt_authorities
            .iter()
            .filter(|a| a.tainted)
            .map(|a| a.key_id.clone())
            .collect();
        tainted
    }

    pub fn is_empty(&self) -> bool {
        self.certs.is_empty() && self.jwt_key_ids.is_empty()
    }

    /// True when a tainted authority is in `chain` (DER, leaf first) or signed one of its
    /// certificates.
    pub fn affects_chain(&self, chain: &[Vec<u8>]) -> bool {
        if self.certs.is_empty() {
            return false;
        }
        chain.iter().any(|der| {
            self.certs.contains(der)
                || key_identifier(der, Which::Authority)
                    .is_some_and(|aki| self.key_ids.contains(&aki))
        })
    }

    /// True when the JWS header of `token` names a tainted key.
    pub fn affects_jwt(&self, token: &str) -> bool {
        !self.jwt_key_ids.is_empty()
            && jwt_kid(token).is_some_and(|kid| self.jwt_key_ids.contains(&kid))
    }
}

enum Which {
    Subject,
    Authority,
}

fn key_identifier(der: &[u8], which: Which) -> Option<Vec<u8>> {
    let (_, cert) = X509Certificate::from_der(der).ok()?;
    cert.extensions()
        .iter()
        .find_map(|ext| match (ext.parsed_extension(), &which) {
            (ParsedExtension::SubjectKeyIdentifier(ski), Which::Subject) => Some(ski.0.to_vec()),
            (ParsedExtension::AuthorityKeyIdentifier(aki), Which::Authority) => {
                aki.key_identifier.as_ref().map(|k| k.0.to_vec())
            }
            _ => None,
        })
}

/// The `kid` of a compact JWS header, read without verifying (the token came from our own
/// server over an authenticated channel).
fn jwt_kid(token: &str) -> Option<String> {
    use base64::Engine as _;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;

    #[derive(serde::Deserialize)]
    struct Header {
        kid: Option<String>,
    }
    let header = URL_SAFE_NO_PAD.decode(token.split('.').next()?).ok()?;
    serde_json::from_slice::<Header>(&header).ok()?.kid
}

#[cfg(test)]
mod tests {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};

    use super::*;
    use sigil_proto::{JwtAuthority, TrustDomain};

    struct TestCa {
        der: Vec<u8>,
        issuer: Issuer<'static, KeyPair>,
    }

    fn ca(name: &str, parent: Option<&TestCa>) -> TestCa {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        params.use_authority_key_identifier_extension = parent.is_some();
        let cert = match parent {
            Some(p) => params.signed_by(&key, &p.issuer).unwrap(),
            None => params.self_signed(&key).unwrap(),
        };
        let der = cert.der().to_vec();
        let issuer = Issuer::from_ca_cert_der(&der.as_slice().into(), key).unwrap();
        TestCa { der, issuer }
    }

    fn leaf(issuer: &TestCa) -> Vec<u8> {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(vec!["w".to_owned()]).unwrap();
        params.use_authority_key_identifier_extension = true;
        params
            .signed_by(&key, &issuer.issuer)
            .unwrap()
            .der()
            .to_vec()
    }

    fn bundle(tainted: &[&TestCa], jwt: &[(&str, bool)]) -> Bundle {
        let mut b = Bundle::new(TrustDomain::new("example.org").unwrap());
        b.tainted_x509_authorities = tainted.iter().map(|c| c.der.clone()).collect();
        b.jwt_authorities = jwt
            .iter()
            .map(|(kid, tainted)| JwtAuthority {
                key_id: (*kid).to_owned(),
                public_key: vec![1],
                expires_at: 0,
                tainted: *tainted,
            })
            .collect();
        b
    }

    #[test]
    fn leaves_signed_by_a_tainted_ca_are_affected() {
        let old = ca("old", None);
        let new = ca("new", None);
        let tainted = TaintedAuthorities::from_bundle(&bundle(&[&old], &[]));
        assert!(tainted.affects_chain(&[leaf(&old)]));
        assert!(!tainted.affects_chain(&[leaf(&new)]));
        assert!(!TaintedAuthorities::from_bundle(&bundle(&[], &[])).affects_chain(&[leaf(&old)]));
        assert!(TaintedAuthorities::from_bundle(&bundle(&[], &[])).is_empty());
    }

    #[test]
    fn intermediates_count_too() {
        let root = ca("root", None);
        let other_root = ca("other root", None);
        let intermediate = ca("intermediate", Some(&root));
        let chain = vec![leaf(&intermediate), intermediate.der.clone()];
        // A tainted root that signed the intermediate.
        let by_root = TaintedAuthorities::from_bundle(&bundle(&[&root], &[]));
        assert!(by_root.affects_chain(&chain));
        // The tainted intermediate itself.
        let by_intermediate = TaintedAuthorities::from_bundle(&bundle(&[&intermediate], &[]));
        assert!(by_intermediate.affects_chain(&chain));
        let unrelated = TaintedAuthorities::from_bundle(&bundle(&[&other_root], &[]));
        assert!(!unrelated.affects_chain(&chain));
    }

    #[test]
    fn jwt_by_kid() {
        use base64::Engine as _;
        let token = |kid: &str| {
            let header = base64::engine::general_purpose::URL_SAFE_NO_PAD
                .encode(format!(r#"{{"alg":"ES256","kid":"{kid}","typ":"JWT"}}"#));
            format!("{header}.e30.sig")
        };
        let tainted =
            TaintedAuthorities::from_bundle(&bundle(&[], &[("old", true), ("new", false)]));
        assert!(tainted.affects_jwt(&token("old")));
        assert!(!tainted.affects_jwt(&token("new")));
        assert!(!tainted.affects_jwt("garbage"));
    }
}
