//! Test fixtures shared by the cache and Workload API tests: a CA that issues X509-SVIDs with
//! the digest's profile (BC and KU present, as the Rust and Python clients require), a JWT
//! signing key, and registration entries.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use futures::future::BoxFuture;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose, SanType,
};
use sigil_proto::{Bundle, JwtAuthority, RegistrationEntry, Selector, SpiffeId, TrustDomain};
use zeroize::Zeroizing;

use crate::cache::{CachedX509Svid, JwtSvidMinter, MintError, Outage};

pub(crate) fn now() -> i64 {
    sigil_common::time::unix_now()
}

/// A self-signed root CA for one trust domain.
pub(crate) struct TestCa {
    pub td: TrustDomain,
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl TestCa {
    pub(crate) fn new(td: &str) -> Self {
        let td = TrustDomain::new(td).unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params.subject_alt_names = vec![SanType::URI(td.id_string().try_into().unwrap())];
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CountryName, "US");
        dn.push(DnType::OrganizationName, "SPIFFE");
        params.distinguished_name = dn;
        let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        Self { td, issuer }
    }

    pub(crate) fn der(&self) -> Vec<u8> {
        self.issuer.der().to_vec()
    }

    /// A bundle holding this CA and, if given, a JWT authority.
    pub(crate) fn bundle(&self, jwt: Option<&TestJwtKey>) -> Bundle {
        let mut bundle = Bundle::new(self.td.clone());
        bundle.x509_authorities.push(self.der());
        if let Some(key) = jwt {
            bundle.jwt_authorities.push(key.authority());
        }
        bundle
    }

    /// A leaf X509-SVID for `spiffe_id`, valid for an hour.
    pub(crate) fn svid(&self, spiffe_id: &str) -> CachedX509Svid {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.subject_alt_names = vec![SanType::URI(spiffe_id.try_into().unwrap())];
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CountryName, "US");
        dn.push(DnType::OrganizationName, "SPIRE");
        params.distinguished_name = dn;
        let not_before = SystemTime::now() - Duration::from_secs(10);
        let not_after = SystemTime::now() + Duration::from_secs(3600);
        params.not_before = not_before.into();
        params.not_after = not_after.into();
        params.use_authority_key_identifier_extension = true;
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        CachedX509Svid {
            chain: vec![cert.der().to_vec()],
            private_key_pkcs8: Zeroizing::new(key.serialize_der()),
            expires_at: now() + 3600,
        }
    }
}

/// A P-256 JWT signing key.
pub(crate) struct TestJwtKey {
    pub kid: String,
    key: KeyPair,
}

impl TestJwtKey {
    pub(crate) fn new(kid: &str) -> Self {
        Self {
            kid: kid.to_owned(),
            key: KeyPair::generate().unwrap(),
        }
    }

    pub(crate) fn authority(&self) -> JwtAuthority {
        JwtAuthority {
            key_id: self.kid.clone(),
            public_key: rcgen::PublicKeyData::subject_public_key_info(&self.key),
            expires_at: 0,
            tainted: false,
        }
    }

    /// Signs `claims` as ES256 with this key's `kid` and `typ: JWT`.
    pub(crate) fn sign(&self, claims: &serde_json::Value) -> String {
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
        header.kid = Some(self.kid.clone());
        header.typ = Some("JWT".into());
        let key = jsonwebtoken::EncodingKey::from_ec_der(&self.key.serialize_der());
        jsonwebtoken::encode(&header, claims, &key).unwrap()
    }
}

/// A minter that signs JWT-SVIDs locally, as the server would, with a 5-minute lifetime.
pub(crate) struct TestMinter {
    pub key: TestJwtKey,
    pub minted: std::sync::atomic::AtomicUsize,
    pub fail: bool,
    /// Set: the server is down since this Unix time (minting fails, `outage` says so).
    pub down_since: std::sync::Mutex<Option<i64>>,
    /// How often the cache reported a token served past its half-life.
    pub past_half_life: std::sync::atomic::AtomicUsize,
    /// The pod UID of each mint asked for, in order.
    pub pods: std::sync::Mutex<Vec<Option<String>>>,
}

impl TestMinter {
    pub(crate) fn new(key: TestJwtKey) -> Self {
        Self {
            key,
            minted: Default::default(),
            fail: false,
            down_since: Default::default(),
            past_half_life: Default::default(),
            pods: Default::default(),
        }
    }
}

impl JwtSvidMinter for TestMinter {
    fn mint<'a>(
        &'a self,
        _entry: &'a RegistrationEntry,
        spiffe_id: &'a SpiffeId,
        pod_uid: Option<&'a str>,
        audience: &'a [String],
    ) -> BoxFuture<'a, Result<String, MintError>> {
        Box::pin(async move {
            self.pods.lock().unwrap().push(pod_uid.map(str::to_owned));
            if self.fail || self.down_since.lock().unwrap().is_some() {
                return Err(MintError::Unavailable("server unreachable".into()));
            }
            self.minted
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let iat = now();
            Ok(self.key.sign(&serde_json::json!({
                "sub": spiffe_id.to_string(),
                "aud": audience,
                "iat": iat,
                "exp": iat + 300,
            })))
        })
    }

    fn outage(&self, _now: i64) -> Option<Outage> {
        let since = (*self.down_since.lock().unwrap())?;
        Some(Outage::ServerUnreachable { since })
    }

    fn served_past_half_life(&self) {
        self.past_half_life
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }
}

pub(crate) fn selectors(list: &[&str]) -> Vec<Selector> {
    let mut v: Vec<Selector> = list.iter().map(|s| s.parse().unwrap()).collect();
    sigil_proto::selector::canonicalize(&mut v);
    v
}

/// A registration entry with the given selectors, created at `created_at`.
pub(crate) fn entry(id: &str, spiffe_id: &str, sel: &[&str], created_at: i64) -> RegistrationEntry {
    RegistrationEntry {
        id: id.to_owned(),
        revision: 1,
        created_at,
        ..RegistrationEntry::new(
            SpiffeId::new(spiffe_id).unwrap(),
            SpiffeId::new("spiffe://example.org/spire/agent/join_token/t").unwrap(),
            selectors(sel),
        )
    }
}

/// An identity-template entry.
pub(crate) fn template_entry(
    id: &str,
    template: &str,
    sel: &[&str],
    created_at: i64,
) -> RegistrationEntry {
    let template: sigil_proto::IdTemplate = template.parse().unwrap();
    RegistrationEntry {
        spiffe_id: template.into(),
        ..entry(id, "spiffe://example.org/unused", sel, created_at)
    }
}

/// Federated bundles map from test CAs.
pub(crate) fn federated(cas: &[&TestCa]) -> BTreeMap<TrustDomain, Bundle> {
    cas.iter()
        .map(|ca| (ca.td.clone(), ca.bundle(None)))
        .collect()
}
