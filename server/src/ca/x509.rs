//! X.509 templates: the self-signed CA certificate and X509-SVID leaves (spec digest §2.3/2.4,
//! the profile SPIRE issues), and the CSR checks of the CSR signing flow.

use std::fmt;
use std::sync::Arc;

use rcgen::string::{Ia5String, PrintableString};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, DnValue,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyUsagePurpose, SanType, SerialNumber,
};
use ring::rand::{SecureRandom as _, SystemRandom};
use rustls::pki_types::CertificateDer;
use time::OffsetDateTime;
use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::ca::upstream::UpstreamAuthority;
use crate::ca::{CaError, CaSubject};
use crate::key_manager::{RcgenKey, SigningKey};
use sigil_proto::{SpiffeId, TrustDomain};

/// NotBefore is set this far in the past to absorb clock skew between hosts (SPIRE's
/// `NotBeforeCushion`).
pub const NOT_BEFORE_CUSHION_SECS: i64 = 10;

/// OID of the X.520 serialNumber attribute SPIRE puts in the CA subject.
const OID_SERIAL_NUMBER: &[u64] = &[2, 5, 4, 5];

/// A CA certificate with its signing key, ready to issue leaves.
pub struct X509Authority {
    cert_der: Vec<u8>,
    /// Built once: the issuer DN, the SKI (pre-specified from the certificate, so every
    /// leaf's AKI equals it) and the key.
    issuer: Issuer<'static, RcgenKey>,
    not_after: i64,
    /// Certificates sent after each leaf: empty for a self-signed CA; for an intermediate,
    /// itself and the upstream chain.
    chain: Vec<Vec<u8>>,
    rng: SystemRandom,
}

impl X509Authority {
    /// Creates a self-signed CA for `trust_domain`, valid from `now - cushion` to `now + ttl`.
    pub fn create(
        trust_domain: &TrustDomain,
        subject: &CaSubject,
        key: &Arc<SigningKey>,
        now: i64,
        ttl_secs: i64,
    ) -> Result<Self, CaError> {
        let rng = SystemRandom::new();
        let params = ca_params(
            trust_domain,
            subject,
            &rng,
            now,
            now.saturating_add(ttl_secs),
        )?;
        let cert = params.self_signed(&key.rcgen_key())?;
        Self::load(cert.der().to_vec(), key)
    }

    /// Creates an intermediate CA for `trust_domain` over `key`, signed by `upstream`: the
    /// same profile as the self-signed CA plus an AKI naming the upstream key, and a NotAfter
    /// capped at the upstream's so no leaf outlives its chain.
    pub fn create_intermediate(
        trust_domain: &TrustDomain,
        subject: &CaSubject,
        key: &Arc<SigningKey>,
        upstream: &UpstreamAuthority,
        now: i64,
        ttl_secs: i64,
    ) -> Result<Self, CaError> {
        let rng = SystemRandom::new();
        let not_after = now.saturating_add(ttl_secs).min(upstream.not_after());
        if not_after <= now {
            return Err(CaError::Upstream(
                "the upstream certificate has expired".into(),
            ));
        }
        let mut params = ca_params(trust_domain, subject, &rng, now, not_after)?;
        params.use_authority_key_identifier_extension = true;
        let cert = params.signed_by(&key.rcgen_key(), upstream.issuer())?;
        Self::load_intermediate(cert.der().to_vec(), key, upstream)
    }

    /// Rebuilds an authority from its certificate and key (after a restart). The key must be
    /// the certificate's.
    pub fn load(cert_der: Vec<u8>, key: &Arc<SigningKey>) -> Result<Self, CaError> {
        let (_, cert) = X509Certificate::from_der(&cert_der)
            .map_err(|e| CaError::Journal(format!("CA certificate does not parse: {e}")))?;
        if cert.public_key().raw != key.public_key() {
            return Err(CaError::Journal(format!(
                "key {:?} does not match the CA certificate",
                key.id()
            )));
        }
        let not_after = cert.validity().not_after.timestamp();
        let issuer =
            Issuer::from_ca_cert_der(&CertificateDer::from(cert_der.as_slice()), key.rcgen_key())?;
        Ok(Self {
            cert_der,
            issuer,
            not_after,
            chain: Vec::new(),
            rng: SystemRandom::new(),
        })
    }

    /// Rebuilds an intermediate signed by `upstream` (after a restart). Refused when
    /// `upstream` did not sign it (the operator changed the upstream CA).
    pub fn load_intermediate(
        cert_der: Vec<u8>,
        key: &Arc<SigningKey>,
        upstream: &UpstreamAuthority,
    ) -> Result<Self, CaError> {
        if !upstream.issued(&cert_der) {
            return Err(CaError::Upstream(
                "the intermediate CA was not signed by the configured upstream CA".into(),
            ));
        }
        let mut authority = Self::load(cert_der, key)?;
        authority.chain = std::iter::once(authority.cert_der.clone())
            .chain(upstream.chain().iter().cloned())
            .collect();
        Ok(authority)
    }

    /// Certificates that follow every leaf this authority signs (empty for a self-signed CA).
    pub fn chain(&self) -> &[Vec<u8>] {
        &self.chain
    }

    pub fn cert_der(&self) -> &[u8] {
        &self.cert_der
    }

    pub fn not_after(&self) -> i64 {
        self.not_after
    }

    /// Issues an X509-SVID leaf for `spiffe_id` over `public_key_spki_der`. Returns the DER and
    /// the serial as hex.
    pub fn sign_leaf(
        &self,
        spiffe_id: &SpiffeId,
        public_key_spki_der: &[u8],
        not_before: i64,
        not_after: i64,
        dns_names: &[String],
    ) -> Result<(Vec<u8>, String), CaError> {
        let public_key = rcgen::SubjectPublicKeyInfo::from_der(public_key_spki_der)
            .map_err(|e| CaError::InvalidPublicKey(e.to_string()))?;
        let serial = random_serial(&self.rng)?;

        let mut subject = DistinguishedName::new();
        subject.push(DnType::CountryName, printable("US")?);
        subject.push(DnType::OrganizationName, printable("SPIRE")?);
        if let Some(first) = dns_names.first() {
            subject.push(DnType::CommonName, DnValue::Utf8String(first.clone()));
        }
        let mut sans = Vec::with_capacity(1 + dns_names.len());
        sans.push(SanType::URI(ia5(&spiffe_id.to_string())?));
        for name in dns_names {
            let dns = Ia5String::try_from(name.as_str())
                .map_err(|_| CaError::InvalidDnsName(name.clone()))?;
            sans.push(SanType::DnsName(dns));
        }

        let mut params = CertificateParams::default();
        params.not_before = datetime(not_before)?;
        params.not_after = datetime(not_after)?;
        params.serial_number = Some(SerialNumber::from_slice(&serial));
        params.distinguished_name = subject;
        params.subject_alt_names = sans;
        // ExplicitNoCa: a critical BasicConstraints with cA=FALSE, which the Rust and Python
        // clients require, and rcgen then also writes the SKI.
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
            KeyUsagePurpose::KeyAgreement,
        ];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        let cert = params.signed_by(&public_key, &self.issuer)?;
        Ok((cert.der().to_vec(), serial_hex(&serial)))
    }
}

impl fmt::Debug for X509Authority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("X509Authority")
            .field("key_id", &self.issuer.key().key().id())
            .field("not_after", &self.not_after)
            .field("chain", &self.chain.len())
            .finish_non_exhaustive()
    }
}

/// Parses a PKCS#10 CSR, checks its self-signature and that any URI SAN it asks for is
/// `spiffe_id`, and returns its public key (SPKI DER). Other requested names are ignored: the
/// server decides the identity.
pub fn csr_public_key(csr_der: &[u8], spiffe_id: &SpiffeId) -> Result<Vec<u8>, CaError> {
    let (rest, csr) = X509CertificationRequest::from_der(csr_der)
        .map_err(|e| CaError::CsrMalformed(e.to_string()))?;
    if !rest.is_empty() {
        return Err(CaError::CsrMalformed("trailing bytes".into()));
    }
    csr.verify_signature().map_err(|_| CaError::CsrSignature)?;
    let expected = spiffe_id.to_string();
    for ext in csr.requested_extensions().into_iter().flatten() {
        if let ParsedExtension::SubjectAlternativeName(san) = ext {
            for name in &san.general_names {
                if let GeneralName::URI(uri) = name
                    && *uri != expected
                {
                    return Err(CaError::CsrIdMismatch {
                        requested: (*uri).to_owned(),
                        expected,
                    });
                }
            }
        }
    }
    Ok(csr.certification_request_info.subject_pki.raw.to_vec())
}

/// The CA certificate template shared by the self-signed and the intermediate CA (SPIRE's):
/// CA:TRUE, keyCertSign + cRLSign, URI SAN `spiffe://<td>`, a random serial.
fn ca_params(
    trust_domain: &TrustDomain,
    subject: &CaSubject,
    rng: &SystemRandom,
    now: i64,
    not_after: i64,
) -> Result<CertificateParams, CaError> {
    let serial = random_serial(rng)?;
    let mut params = CertificateParams::default();
    params.not_before = datetime(now - NOT_BEFORE_CUSHION_SECS)?;
    params.not_after = datetime(not_after)?;
    params.distinguished_name = ca_subject(subject, &serial)?;
    params.serial_number = Some(SerialNumber::from_slice(&serial));
    params.subject_alt_names = vec![SanType::URI(ia5(&trust_domain.id_string())?)];
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    Ok(params)
}

/// The CA subject: `ca_subject` plus a serialNumber attribute, as SPIRE does. rcgen holds one
/// value per attribute type, so only the first country and organization are used.
fn ca_subject(subject: &CaSubject, serial: &[u8; 16]) -> Result<DistinguishedName, CaError> {
    let mut dn = DistinguishedName::new();
    if let Some(c) = subject.country.first() {
        dn.push(DnType::CountryName, printable(c)?);
    }
    if let Some(o) = subject.organization.first() {
        dn.push(DnType::OrganizationName, string_value(o));
    }
    if !subject.common_name.is_empty() {
        dn.push(DnType::CommonName, string_value(&subject.common_name));
    }
    dn.push(
        DnType::CustomDnType(OID_SERIAL_NUMBER.to_vec()),
        printable(&serial_decimal(serial))?,
    );
    Ok(dn)
}

/// PrintableString where the characters allow it (what Go's x509 writes), UTF8String otherwise.
fn string_value(s: &str) -> DnValue {
    match PrintableString::try_from(s) {
        Ok(p) => DnValue::PrintableString(p),
        Err(_) => DnValue::Utf8String(s.to_owned()),
    }
}

fn printable(s: &str) -> Result<DnValue, CaError> {
    PrintableString::try_from(s)
        .map(DnValue::PrintableString)
        .map_err(|_| CaError::InvalidSubject(s.to_owned()))
}

fn ia5(s: &str) -> Result<Ia5String, CaError> {
    Ia5String::try_from(s).map_err(|_| CaError::InvalidSubject(s.to_owned()))
}

/// A random positive 128-bit serial (RFC 5280 §4.1.2.2 allows up to 20 octets).
fn random_serial(rng: &SystemRandom) -> Result<[u8; 16], CaError> {
    let mut serial = [0u8; 16];
    rng.fill(&mut serial).map_err(|_| CaError::Random)?;
    if serial == [0u8; 16] {
        // Zero is not a valid serial; the odds are 2^-128 but the fix costs nothing.
        serial[15] = 1;
    }
    Ok(serial)
}

/// Hex of the serial as DER encodes it (no leading zero bytes).
fn serial_hex(serial: &[u8]) -> String {
    let start = serial
        .iter()
        .position(|&b| b != 0)
        .unwrap_or(serial.len().saturating_sub(1));
    hex::encode(&serial[start..])
}

fn serial_decimal(serial: &[u8; 16]) -> String {
    u128::from_be_bytes(*serial).to_string()
}

fn datetime(unix: i64) -> Result<OffsetDateTime, CaError> {
    OffsetDateTime::from_unix_timestamp(unix).map_err(|_| CaError::TimeOutOfRange(unix))
}

/// The input space of the `csr` fuzz target (fuzz/), run in CI as a property test: arbitrary
/// bytes and byte edits of valid CSRs never panic CSR handling, and what is signed carries the
/// CSR's own key (issue #7 item 4).
#[cfg(test)]
mod proptests {
    use std::sync::{Arc, LazyLock};
    use std::time::SystemTime;

    use proptest::prelude::*;

    use super::*;
    use crate::ca::{Ca, CaConfig};
    use crate::key_manager::MemoryKeyManager;

    struct Fixture {
        ca: Ca,
        id: SpiffeId,
        /// Valid CSRs: P-256 with the matching URI SAN, and with none.
        seeds: Vec<Vec<u8>>,
    }

    static FIXTURE: LazyLock<Fixture> = LazyLock::new(|| {
        let td = TrustDomain::new("example.org").unwrap();
        let (ca, _) = Ca::new(
            CaConfig::new(td),
            Arc::new(MemoryKeyManager::new()),
            None,
            SystemTime::now(),
        )
        .unwrap();
        let id = SpiffeId::new("spiffe://example.org/fuzz").unwrap();
        let seeds = [Some(id.to_string()), None]
            .into_iter()
            .map(|uri| {
                let key = rcgen::KeyPair::generate().unwrap();
                let mut params = CertificateParams::new(vec!["x.example.org".to_owned()]).unwrap();
                if let Some(uri) = uri {
                    params
                        .subject_alt_names
                        .push(SanType::URI(uri.try_into().unwrap()));
                }
                params.serialize_request(&key).unwrap().der().to_vec()
            })
            .collect();
        Fixture { ca, id, seeds }
    });

    fn check(csr: &[u8]) {
        let f = &*FIXTURE;
        let key = csr_public_key(csr, &f.id);
        let signed = f.ca.sign_x509_svid_csr(csr, &f.id, None, &[]);
        if let Ok(svid) = signed {
            let (_, cert) = X509Certificate::from_der(&svid.chain[0]).unwrap();
            assert_eq!(key.ok(), Some(cert.public_key().raw.to_vec()));
        }
    }

    proptest! {
        #[test]
        fn arbitrary_der_never_panics(csr in prop::collection::vec(any::<u8>(), 0..600)) {
            check(&csr);
        }

        #[test]
        fn edited_valid_csr_never_panics(
            seed in 0usize..2,
            edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>(), 0u8..3), 1..4),
            truncate in prop::option::of(any::<prop::sample::Index>()),
        ) {
            let mut csr = FIXTURE.seeds[seed].clone();
            for (at, byte, op) in &edits {
                let i = at.index(csr.len());
                match op {
                    0 => csr[i] = *byte,
                    1 => csr.insert(i, *byte),
                    _ => { csr.remove(i); }
                }
            }
            if let Some(t) = truncate {
                csr.truncate(t.index(csr.len() + 1));
            }
            check(&csr);
        }
    }

    #[test]
    fn the_seeds_are_signed() {
        for csr in &FIXTURE.seeds {
            FIXTURE
                .ca
                .sign_x509_svid_csr(csr, &FIXTURE.id, None, &[])
                .unwrap();
        }
    }
}
