//! The relationships `federation create|update` send: from flags or from a `-data` JSON file
//! (`-` for standard input), checked and turned into requests as SPIRE's CLI does, with its
//! messages.

use std::io::Read;
use std::path::PathBuf;

use clap::Args;
use sigil_proto::sigil::admin::v1 as pb;
use sigil_proto::sigil::common::v1 as common;
use sigil_proto::{SpiffeId, TrustDomain};

use super::super::bundle::parse_bundle;
use super::super::client::{CliError, fail};
use super::super::types::federation::{DataFile, RelationshipConfig};

/// The relationship flags SPIRE's `federation create|update` take.
#[derive(Args, Debug)]
pub(in crate::cli) struct RelationshipArgs {
    /// Path to a file containing federation relationships in JSON format (`-`: standard
    /// input); the other relationship flags must then be omitted.
    #[arg(long = "data")]
    data: Option<String>,
    /// Name of the trust domain to federate with (e.g., example.org).
    #[arg(long = "trustDomain", default_value = "")]
    trust_domain: String,
    /// URL of the SPIFFE bundle endpoint that provides the trust bundle (must use the HTTPS
    /// protocol).
    #[arg(long = "bundleEndpointURL", default_value = "")]
    bundle_endpoint_url: String,
    /// Endpoint profile type (either "https_web" or "https_spiffe").
    #[arg(long = "bundleEndpointProfile", default_value = "")]
    bundle_endpoint_profile: String,
    /// SPIFFE ID of the SPIFFE bundle endpoint server. Only used for the 'https_spiffe'
    /// profile.
    #[arg(long = "endpointSpiffeID", default_value = "")]
    endpoint_spiffe_id: String,
    /// Path to the trust domain bundle data (optional).
    #[arg(long = "trustDomainBundlePath")]
    trust_domain_bundle_path: Option<PathBuf>,
    /// The format of the bundle data (optional): "pem" or "spiffe".
    #[arg(long = "trustDomainBundleFormat", default_value = "pem")]
    trust_domain_bundle_format: String,
}

impl RelationshipArgs {
    /// The relationships to send, in order; a file's item that does not parse names its index.
    pub(super) fn relationships(&self) -> Result<Vec<pb::FederationRelationship>, CliError> {
        let Some(path) = &self.data else {
            let config = RelationshipConfig {
                trust_domain: self.trust_domain.clone(),
                bundle_endpoint_url: self.bundle_endpoint_url.clone(),
                bundle_endpoint_profile: self.bundle_endpoint_profile.clone(),
                endpoint_spiffe_id: self.endpoint_spiffe_id.clone(),
                trust_domain_bundle: None,
                trust_domain_bundle_format: self.trust_domain_bundle_format.clone(),
            };
            let bundle = match &self.trust_domain_bundle_path {
                Some(p) => Some(std::fs::read(p).map_err(|e| {
                    CliError(format!("cannot read bundle file {}: {e}", p.display()))
                })?),
                None => None,
            };
            return Ok(vec![to_request(&config, bundle)?]);
        };
        if !(self.trust_domain.is_empty()
            && self.bundle_endpoint_url.is_empty()
            && self.bundle_endpoint_profile.is_empty()
            && self.endpoint_spiffe_id.is_empty()
            && self.trust_domain_bundle_path.is_none()
            && self.trust_domain_bundle_format == "pem")
        {
            return fail(
                "cannot use other flags to specify relationship fields when 'data' flag is set",
            );
        }
        let mut text = Vec::new();
        if path == "-" {
            std::io::stdin().read_to_end(&mut text)?;
        } else {
            text = std::fs::read(path).map_err(|e| CliError(format!("cannot read {path}: {e}")))?;
        }
        let file: DataFile = serde_json::from_slice(&text)
            .map_err(|e| CliError(format!("failed to parse JSON: {e}")))?;
        file.federation_relationships
            .iter()
            .enumerate()
            .map(|(i, r)| {
                embedded_bundle(r)
                    .and_then(|b| to_request(r, b))
                    .map_err(|e| CliError(format!("could not parse item {i}: {e}")))
            })
            .collect()
    }
}

/// The bytes of a `-data` item's `trustDomainBundle`: a PEM string or a SPIFFE bundle object.
fn embedded_bundle(r: &RelationshipConfig) -> Result<Option<Vec<u8>>, CliError> {
    let Some(raw) = &r.trust_domain_bundle else {
        return Ok(None);
    };
    match (r.trust_domain_bundle_format.as_str(), raw) {
        ("pem", serde_json::Value::String(pem)) => Ok(Some(pem.clone().into_bytes())),
        ("pem", _) => {
            fail("cannot parse bundle raw message: a \"pem\" bundle must be a JSON string")
        }
        ("spiffe", v) => Ok(Some(v.to_string().into_bytes())),
        (other, _) => fail(format!(
            "cannot parse bundle raw message: bundle format {other:?} is unsupported"
        )),
    }
}

fn to_request(
    r: &RelationshipConfig,
    bundle: Option<Vec<u8>>,
) -> Result<pb::FederationRelationship, CliError> {
    use pb::federation_relationship::BundleEndpointProfile as P;
    if r.trust_domain.is_empty() {
        return fail("trust domain is required");
    }
    if r.bundle_endpoint_url.is_empty() {
        return fail("bundle endpoint URL is required");
    }
    let (profile, bundle_td) = match r.bundle_endpoint_profile.as_str() {
        "https_web" => (
            P::HttpsWeb(pb::HttpsWebProfile {}),
            TrustDomain::new(&r.trust_domain)
                .map_err(|e| CliError(format!("invalid trust domain {:?}: {e}", r.trust_domain)))?,
        ),
        "https_spiffe" => {
            if r.endpoint_spiffe_id.is_empty() {
                return fail(
                    "endpoint SPIFFE ID is required if 'https_spiffe' endpoint profile is set",
                );
            }
            let id = SpiffeId::new(&r.endpoint_spiffe_id)
                .map_err(|e| CliError(format!("cannot parse bundle endpoint SPIFFE ID: {e}")))?;
            (
                P::HttpsSpiffe(pb::HttpsSpiffeProfile {
                    endpoint_spiffe_id: id.to_string(),
                }),
                id.trust_domain().clone(),
            )
        }
        other => return fail(format!("unknown bundle endpoint profile type: {other:?}")),
    };
    let trust_domain_bundle = match bundle {
        Some(data) => {
            if !matches!(r.trust_domain_bundle_format.as_str(), "pem" | "spiffe") {
                return fail(format!(
                    "bundle format {:?} is unsupported",
                    r.trust_domain_bundle_format
                ));
            }
            let b = parse_bundle(bundle_td, &data, &r.trust_domain_bundle_format)
                .map_err(|e| CliError(format!("cannot parse bundle file: {e}")))?;
            Some(common::Bundle::from(&b))
        }
        None => None,
    };
    Ok(pb::FederationRelationship {
        trust_domain: r.trust_domain.clone(),
        bundle_endpoint_url: r.bundle_endpoint_url.clone(),
        bundle_endpoint_profile: Some(profile),
        trust_domain_bundle,
    })
}
