//! `spire.api.types.Bundle` and the federated-bundle commands' responses (`bundle.v1`), as
//! SPIRE's `bundle show|list|set|delete -output json` prints them.

use serde::Serialize;
use sigil_proto::Bundle as SigilBundle;

use super::{Status, base64, int64, uint64};

/// `spire.api.types.Bundle`. Fields in alphabetical order: the order SPIRE prints them in.
#[derive(Serialize, Debug)]
pub(in crate::cli) struct Bundle {
    pub jwt_authorities: Vec<JwtKey>,
    #[serde(with = "int64")]
    pub refresh_hint: i64,
    #[serde(serialize_with = "uint64")]
    pub sequence_number: u64,
    pub trust_domain: String,
    /// SPIRE's WIT authorities: Sigil issues no WIT-SVIDs, so always empty.
    pub wit_authorities: Vec<JwtKey>,
    pub x509_authorities: Vec<X509Certificate>,
}

/// `spire.api.types.X509Certificate`: the DER certificate as base64.
#[derive(Serialize, Debug)]
pub(in crate::cli) struct X509Certificate {
    pub asn1: String,
    pub tainted: bool,
}

/// `spire.api.types.JWTKey`: the SubjectPublicKeyInfo DER as base64.
#[derive(Serialize, Debug)]
pub(in crate::cli) struct JwtKey {
    #[serde(with = "int64")]
    pub expires_at: i64,
    pub key_id: String,
    pub public_key: String,
    pub tainted: bool,
}

impl From<&SigilBundle> for Bundle {
    fn from(b: &SigilBundle) -> Self {
        Self {
            jwt_authorities: b
                .jwt_authorities
                .iter()
                .map(|k| JwtKey {
                    expires_at: k.expires_at,
                    key_id: k.key_id.clone(),
                    public_key: base64(&k.public_key),
                    tainted: k.tainted,
                })
                .collect(),
            refresh_hint: b
                .refresh_hint
                .map_or(0, |s| i64::try_from(s).unwrap_or(i64::MAX)),
            sequence_number: b.sequence,
            trust_domain: b.trust_domain.to_string(),
            wit_authorities: Vec::new(),
            x509_authorities: b
                .x509_authorities
                .iter()
                .map(|der| X509Certificate {
                    asn1: base64(der),
                    tainted: b.tainted_x509_authorities.contains(der),
                })
                .collect(),
        }
    }
}

/// `ListFederatedBundlesResponse`: every federated bundle, in one page.
#[derive(Serialize, Debug)]
pub(in crate::cli) struct ListFederatedBundlesResponse {
    pub bundles: Vec<Bundle>,
    pub next_page_token: String,
}

/// `BatchSetFederatedBundleResponse` of `bundle set`.
#[derive(Serialize, Debug)]
pub(in crate::cli) struct BatchSetFederatedBundleResponse {
    pub results: Vec<SetResult>,
}

#[derive(Serialize, Debug)]
pub(in crate::cli) struct SetResult {
    pub bundle: Bundle,
    pub status: Status,
}

/// `BatchDeleteFederatedBundleResponse` of `bundle delete`.
#[derive(Serialize, Debug)]
pub(in crate::cli) struct BatchDeleteFederatedBundleResponse {
    pub results: Vec<DeleteResult>,
}

#[derive(Serialize, Debug)]
pub(in crate::cli) struct DeleteResult {
    pub status: Status,
    pub trust_domain: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use sigil_proto::TrustDomain;

    #[test]
    fn bundle_prints_as_spire_does() {
        let mut b = SigilBundle::new(TrustDomain::new("td").unwrap());
        b.x509_authorities = vec![vec![1, 2, 3], vec![4]];
        b.tainted_x509_authorities = vec![vec![4]];
        b.sequence = 7;
        b.refresh_hint = Some(60);
        assert_eq!(
            serde_json::to_string(&Bundle::from(&b)).unwrap(),
            r#"{"jwt_authorities":[],"refresh_hint":"60","sequence_number":"7","trust_domain":"td","wit_authorities":[],"x509_authorities":[{"asn1":"AQID","tainted":false},{"asn1":"BA==","tainted":true}]}"#
        );
    }
}
