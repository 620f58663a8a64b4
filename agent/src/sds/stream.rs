//! The xDS state-of-the-world protocol of one SDS stream, as Envoy speaks it and SPIRE answers
//! it: every response carries a `version_info` and a fresh `nonce`; a request that answers the
//! last nonce with that version is an ACK and gets nothing; one with `error_detail` is a NACK,
//! logged once, and the rejected version is not sent again until something changes; a request
//! for a stale nonce is ignored; a new list of resource names is answered at once. No I/O
//! here: the handler feeds requests and view changes in and sends what comes out.

use std::collections::BTreeSet;

use rand::RngCore as _;
use sigil_proto::envoy::config::core::v3::Node;
use sigil_proto::envoy::config::core::v3::node::UserAgentVersionType;
use sigil_proto::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};
use tonic::Status;
use tracing::{debug, warn};

use super::config::SdsConfig;
use super::resources::{Validation, resources, secret_type_url};
use super::view::WorkloadView;

/// Longest Envoy error message we log (the rest is cut).
const MAX_LOGGED_ERROR: usize = 1024;

/// The node metadata key with which an Envoy overrides `disable_spiffe_cert_validation`.
const DISABLE_SPIFFE_VALIDATION_KEY: &str = "disable_spiffe_cert_validation";

/// One stream's protocol state.
#[derive(Debug, Default)]
pub(super) struct StreamState {
    /// Counts the views the stream has seen; "0" before the first.
    version: u64,
    /// The nonce of the last response sent; requests must answer it.
    last_nonce: Option<String>,
    /// The resource names last asked for; `None` before the first request.
    names: Option<Vec<String>>,
    /// The last node sent (Envoy may send it on the first request only).
    node: Option<Node>,
    /// The nonce already reported as rejected (a NACK repeated is logged once).
    nacked: Option<String>,
}

impl StreamState {
    /// Takes a request: `Ok(true)` when it must be answered now (the first request, or a new
    /// list of names); an ACK, a NACK or a stale request is answered with nothing.
    pub(super) fn on_request(&mut self, request: DiscoveryRequest) -> Result<bool, Status> {
        check_type_url(&request.type_url)?;
        let DiscoveryRequest {
            version_info,
            node,
            resource_names,
            response_nonce,
            error_detail,
            ..
        } = request;
        if let Some(last_nonce) = &self.last_nonce {
            if *last_nonce != response_nonce {
                debug!(
                    nonce = %response_nonce,
                    expected = %last_nonce,
                    "SDS request for a stale nonce ignored"
                );
                return Ok(false);
            }
            if let Some(error) = &error_detail
                && self.nacked.as_ref() != Some(&response_nonce)
            {
                let message: String = error.message.chars().take(MAX_LOGGED_ERROR).collect();
                warn!(
                    resource_names = ?resource_names,
                    version = %self.version,
                    error = %message,
                    "Envoy rejected the secrets sent; keeping that version until something changes"
                );
                self.nacked = Some(response_nonce);
            } else if error_detail.is_none() && version_info != self.version.to_string() {
                debug!(
                    version = %version_info,
                    expected = %self.version,
                    "SDS client answered with another version"
                );
            }
        }
        if node.is_some() {
            self.node = node;
        }
        let changed = self
            .names
            .as_ref()
            .is_none_or(|old| name_set(old) != name_set(&resource_names));
        self.names = Some(resource_names);
        Ok(changed)
    }

    /// A new view: `true` when a response is due (something was asked for already).
    pub(super) fn on_new_view(&mut self) -> bool {
        self.version += 1;
        self.names.is_some()
    }

    /// The response to send for the names last asked for, under a fresh nonce.
    pub(super) fn response(
        &mut self,
        view: &WorkloadView,
        config: &SdsConfig,
    ) -> Result<DiscoveryResponse, Status> {
        let names = self.names.as_deref().unwrap_or_default();
        let validation = validation(self.node.as_ref(), config);
        let resources = resources(view, names, config, validation)?;
        let nonce = nonce();
        self.last_nonce = Some(nonce.clone());
        Ok(DiscoveryResponse {
            version_info: self.version.to_string(),
            resources,
            type_url: secret_type_url(),
            nonce,
        })
    }
}

/// SDS serves one type; an empty type URL is taken to mean it.
pub(super) fn check_type_url(type_url: &str) -> Result<(), Status> {
    if type_url.is_empty() || type_url == secret_type_url() {
        return Ok(());
    }
    Err(Status::invalid_argument(format!(
        "unsupported type_url {type_url:?}: this SDS server serves only {:?}",
        secret_type_url()
    )))
}

fn name_set(names: &[String]) -> BTreeSet<&str> {
    names.iter().map(String::as_str).collect()
}

/// How bundles go to this Envoy: its node metadata overrides the config (SPIRE: a value that
/// is neither a bool nor a string Go's `ParseBool` takes is ignored); an Envoy before 1.18
/// has no SPIFFE validator.
pub(super) fn validation(node: Option<&Node>, config: &SdsConfig) -> Validation {
    let mut disabled = config.disable_spiffe_cert_validation;
    if let Some(value) = node
        .and_then(|n| n.metadata.as_ref())
        .and_then(|m| m.fields.get(DISABLE_SPIFFE_VALIDATION_KEY))
        .and_then(|v| v.kind.as_ref())
    {
        use prost_types::value::Kind;
        let parsed = match value {
            Kind::BoolValue(b) => Some(*b),
            Kind::StringValue(s) => parse_go_bool(s),
            _ => None,
        };
        disabled = parsed.unwrap_or(disabled);
    }
    if disabled || !supports_spiffe_validator(node) {
        Validation::TrustedCa
    } else {
        Validation::Spiffe
    }
}

fn supports_spiffe_validator(node: Option<&Node>) -> bool {
    let version = node.and_then(|n| match &n.user_agent_version_type {
        Some(UserAgentVersionType::UserAgentBuildVersion(build)) => build.version.as_ref(),
        _ => None,
    });
    match version {
        Some(v) => (v.major_number == 1 && v.minor_number > 17) || v.major_number > 1,
        // An Envoy that does not say is taken to be recent (SPIRE does the same).
        None => true,
    }
}

/// Go's `strconv.ParseBool`, which SPIRE applies to the metadata value.
fn parse_go_bool(s: &str) -> Option<bool> {
    match s {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Some(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Some(false),
        _ => None,
    }
}

/// 16 random hex digits.
fn nonce() -> String {
    let mut bytes = [0u8; 8];
    rand::rng().fill_bytes(&mut bytes);
    hex::encode(bytes)
}
