//! The CA's persisted state: every authority the bundle publishes, with its status and the id
//! of its private key in the key manager. The run loop stores it through the datastore
//! (`set_ca_journal`) whenever [`Ca::rotate`](super::Ca::rotate) returns a new one.

use serde::{Deserialize, Serialize};

use crate::ca::CaError;
use crate::ca::rotation::{AuthorityStatus, Slot};

/// JSON-encodable record of the CA's authorities.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CaJournal {
    #[serde(default)]
    pub x509_authorities: Vec<X509AuthorityRecord>,
    #[serde(default)]
    pub jwt_keys: Vec<JwtKeyRecord>,
    /// The bundle's `spiffe_sequence`, so it keeps increasing across restarts.
    #[serde(default)]
    pub bundle_sequence: u64,
    /// The UpstreamAuthority's roots this replica publishes, so the bundle of all replicas can
    /// be built from their journals alone. Absent in journals written before replicas.
    #[serde(default, with = "base64_der_list")]
    pub upstream_roots: Vec<Vec<u8>>,
}

/// One X.509 CA certificate.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct X509AuthorityRecord {
    #[serde(with = "base64_der")]
    pub cert_der: Vec<u8>,
    /// The private key's id in the key manager.
    pub key_id: String,
    pub status: AuthorityStatus,
    /// Unix seconds when it was created (the certificate's NotBefore is backdated from this).
    pub issued_at: i64,
    /// Unix seconds; the certificate's NotAfter.
    pub not_after: i64,
    #[serde(default)]
    pub tainted: bool,
    /// An intermediate signed by the UpstreamAuthority: sent in chains, not in the bundle.
    /// Absent in journals written before upstream authorities existed (all self-signed).
    #[serde(default)]
    pub upstream_signed: bool,
}

/// One JWT signing key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JwtKeyRecord {
    /// The JWS `kid` and the bundle's key id.
    pub kid: String,
    /// SubjectPublicKeyInfo DER.
    #[serde(with = "base64_der")]
    pub public_key: Vec<u8>,
    /// The private key's id in the key manager.
    pub key_id: String,
    pub status: AuthorityStatus,
    pub issued_at: i64,
    pub not_after: i64,
    #[serde(default)]
    pub tainted: bool,
}

impl CaJournal {
    pub fn to_bytes(&self) -> Result<Vec<u8>, CaError> {
        serde_json::to_vec(self).map_err(|e| CaError::Journal(e.to_string()))
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<Self, CaError> {
        serde_json::from_slice(bytes).map_err(|e| CaError::Journal(e.to_string()))
    }
}

impl X509AuthorityRecord {
    pub fn slot(&self) -> Slot {
        Slot {
            status: self.status,
            issued_at: self.issued_at,
            not_after: self.not_after,
        }
    }
}

impl JwtKeyRecord {
    pub fn slot(&self) -> Slot {
        Slot {
            status: self.status,
            issued_at: self.issued_at,
            not_after: self.not_after,
        }
    }
}

/// DER as standard base64 in JSON (certificates and public keys only: nothing secret).
mod base64_der {
    use base64::Engine as _;
    use base64::engine::general_purpose::STANDARD;
    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(der: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&STANDARD.encode(der))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let s = String::deserialize(d)?;
        STANDARD.decode(s).map_err(serde::de::Error::custom)
    }
}

/// A list of DER blobs, each as standard base64.
mod base64_der_list {
    use base64::Engine as _;
    use base64::engine::general_purpose::STANDARD;
    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(ders: &[Vec<u8>], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(ders.iter().map(|der| STANDARD.encode(der)))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Vec<u8>>, D::Error> {
        Vec::<String>::deserialize(d)?
            .iter()
            .map(|s| STANDARD.decode(s).map_err(serde::de::Error::custom))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_through_json() {
        let j = CaJournal {
            x509_authorities: vec![X509AuthorityRecord {
                cert_der: vec![0x30, 0x01, 0xff],
                key_id: "x509-CA-A".into(),
                status: AuthorityStatus::Active,
                issued_at: 10,
                not_after: 70,
                tainted: false,
                upstream_signed: false,
            }],
            jwt_keys: vec![JwtKeyRecord {
                kid: "k".into(),
                public_key: vec![1, 2, 3],
                key_id: "JWT-Signer-A".into(),
                status: AuthorityStatus::Old,
                issued_at: 0,
                not_after: 60,
                tainted: true,
            }],
            bundle_sequence: 4,
            upstream_roots: vec![vec![0x30, 0x02]],
        };
        let bytes = j.to_bytes().unwrap();
        let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(v["x509_authorities"][0]["status"], "active");
        assert_eq!(v["x509_authorities"][0]["cert_der"], "MAH/");
        assert_eq!(v["upstream_roots"][0], "MAI=");
        let old = CaJournal::from_bytes(b"{\"bundle_sequence\":3}").unwrap();
        assert!(old.upstream_roots.is_empty());
        assert_eq!(CaJournal::from_bytes(&bytes).unwrap(), j);
        assert!(matches!(
            CaJournal::from_bytes(b"{\"jwt_keys\":7}"),
            Err(CaError::Journal(_))
        ));
    }
}
