//! `spire.api.types.FederationRelationship` and the `federation` commands' responses
//! (`trustdomain.v1`), as SPIRE's `federation ... -output json` prints them; and the `-data`
//! file SPIRE's `federation create|update` read.

use serde::{Deserialize, Serialize};
use sigil_proto::Bundle as SigilBundle;
use sigil_proto::sigil::admin::v1 as pb;

use super::Status;
use super::bundle::Bundle;

/// `spire.api.types.FederationRelationship`. Fields in alphabetical order; one of the two
/// profiles is present.
#[derive(Serialize, Debug)]
pub(in crate::cli) struct FederationRelationship {
    pub bundle_endpoint_url: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub https_spiffe: Option<HttpsSpiffeProfile>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub https_web: Option<HttpsWebProfile>,
    pub trust_domain: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trust_domain_bundle: Option<Bundle>,
}

#[derive(Serialize, Debug)]
pub(in crate::cli) struct HttpsSpiffeProfile {
    pub endpoint_spiffe_id: String,
}

#[derive(Serialize, Debug)]
pub(in crate::cli) struct HttpsWebProfile {}

impl From<&pb::FederationRelationship> for FederationRelationship {
    fn from(r: &pb::FederationRelationship) -> Self {
        use pb::federation_relationship::BundleEndpointProfile as P;
        let (https_spiffe, https_web) = match &r.bundle_endpoint_profile {
            Some(P::HttpsSpiffe(p)) => (
                Some(HttpsSpiffeProfile {
                    endpoint_spiffe_id: p.endpoint_spiffe_id.clone(),
                }),
                None,
            ),
            Some(P::HttpsWeb(_)) => (None, Some(HttpsWebProfile {})),
            None => (None, None),
        };
        Self {
            bundle_endpoint_url: r.bundle_endpoint_url.clone(),
            https_spiffe,
            https_web,
            trust_domain: r.trust_domain.clone(),
            trust_domain_bundle: r
                .trust_domain_bundle
                .as_ref()
                .and_then(|b| SigilBundle::try_from(b).ok())
                .map(|b| Bundle::from(&b)),
        }
    }
}

/// `ListFederationRelationshipsResponse`: every relationship, in one page.
#[derive(Serialize, Debug)]
pub(in crate::cli) struct ListFederationRelationshipsResponse {
    pub federation_relationships: Vec<FederationRelationship>,
    pub next_page_token: String,
}

/// `BatchCreateFederationRelationshipResponse` and `BatchUpdate...Response`: one result per
/// relationship, without it when it failed.
#[derive(Serialize, Debug)]
pub(in crate::cli) struct BatchFederationRelationshipResponse {
    pub results: Vec<BatchResult>,
}

#[derive(Serialize, Debug)]
pub(in crate::cli) struct BatchResult {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub federation_relationship: Option<FederationRelationship>,
    pub status: Status,
}

/// `BatchDeleteFederationRelationshipResponse`.
#[derive(Serialize, Debug)]
pub(in crate::cli) struct BatchDeleteFederationRelationshipResponse {
    pub results: Vec<DeleteResult>,
}

#[derive(Serialize, Debug)]
pub(in crate::cli) struct DeleteResult {
    pub status: Status,
    pub trust_domain: String,
}

/// A `-data` file: `{"federationRelationships": [...]}` with SPIRE's camelCase keys.
#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
pub(in crate::cli) struct DataFile {
    #[serde(rename = "federationRelationships", default)]
    pub federation_relationships: Vec<RelationshipConfig>,
}

/// One relationship from flags or a `-data` file. `trustDomainBundle` is a PEM string or a
/// SPIFFE bundle object, per `trustDomainBundleFormat`.
#[derive(Deserialize, Debug, Default, Clone)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(in crate::cli) struct RelationshipConfig {
    #[serde(default)]
    pub trust_domain: String,
    #[serde(default, rename = "bundleEndpointURL")]
    pub bundle_endpoint_url: String,
    #[serde(default)]
    pub bundle_endpoint_profile: String,
    #[serde(default, rename = "endpointSPIFFEID")]
    pub endpoint_spiffe_id: String,
    #[serde(default)]
    pub trust_domain_bundle: Option<serde_json::Value>,
    #[serde(default)]
    pub trust_domain_bundle_format: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relationship_prints_as_spire_does() {
        let r = pb::FederationRelationship {
            trust_domain: "o.org".into(),
            bundle_endpoint_url: "https://o.org".into(),
            bundle_endpoint_profile: Some(
                pb::federation_relationship::BundleEndpointProfile::HttpsSpiffe(
                    pb::HttpsSpiffeProfile {
                        endpoint_spiffe_id: "spiffe://o.org/spire/server".into(),
                    },
                ),
            ),
            trust_domain_bundle: None,
        };
        assert_eq!(
            serde_json::to_string(&FederationRelationship::from(&r)).unwrap(),
            r#"{"bundle_endpoint_url":"https://o.org","https_spiffe":{"endpoint_spiffe_id":"spiffe://o.org/spire/server"},"trust_domain":"o.org"}"#
        );
        let web = pb::FederationRelationship {
            bundle_endpoint_profile: Some(
                pb::federation_relationship::BundleEndpointProfile::HttpsWeb(
                    pb::HttpsWebProfile {},
                ),
            ),
            ..r
        };
        let failed = BatchFederationRelationshipResponse {
            results: vec![
                BatchResult {
                    federation_relationship: Some(FederationRelationship::from(&web)),
                    status: Status::ok(),
                },
                BatchResult {
                    federation_relationship: None,
                    status: Status {
                        code: 6,
                        message: "already exists".into(),
                    },
                },
            ],
        };
        assert_eq!(
            serde_json::to_string(&failed).unwrap(),
            r#"{"results":[{"federation_relationship":{"bundle_endpoint_url":"https://o.org","https_web":{},"trust_domain":"o.org"},"status":{"code":0,"message":"OK"}},{"status":{"code":6,"message":"already exists"}}]}"#
        );
    }

    #[test]
    fn data_file_reads_spire_keys() {
        let f: DataFile = serde_json::from_str(
            r#"{"federationRelationships":[{"trustDomain":"o.org","bundleEndpointURL":"https://o","bundleEndpointProfile":"https_spiffe","endpointSPIFFEID":"spiffe://o.org/s","trustDomainBundle":"PEM","trustDomainBundleFormat":"pem"}]}"#,
        )
        .unwrap();
        let r = &f.federation_relationships[0];
        assert_eq!(r.bundle_endpoint_url, "https://o");
        assert_eq!(r.endpoint_spiffe_id, "spiffe://o.org/s");
        assert_eq!(r.trust_domain_bundle, Some(serde_json::json!("PEM")));
        assert!(
            serde_json::from_str::<DataFile>(r#"{"federationRelationships":[{"bogus":1}]}"#)
                .is_err()
        );
    }
}
