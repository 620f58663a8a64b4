//! The SDS resources a request names, built from a caller's view: SPIRE's names and shapes
//! (`pkg/agent/endpoints/sdsv3`), with every requested name served (SPIRE serves only one of
//! a trust domain ID, `ROOTCA` and `ALL` per response and refuses the others).

use std::collections::BTreeSet;

use prost::Name as _;
use prost_types::Any;
use sigil_proto::bundle::pem_encode;
use sigil_proto::envoy::config::core::v3::{DataSource, TypedExtensionConfig, data_source};
use sigil_proto::envoy::extensions::transport_sockets::tls::v3::spiffe_cert_validator_config::TrustDomain as ValidatorTrustDomain;
use sigil_proto::envoy::extensions::transport_sockets::tls::v3::{
    CertificateValidationContext, Secret, SpiffeCertValidatorConfig, TlsCertificate, secret,
};
use sigil_proto::{Bundle, TrustDomain};
use tonic::Status;
use zeroize::Zeroizing;

use super::config::SdsConfig;
use super::view::{ViewSvid, WorkloadView};

/// The type URL of every SDS resource.
pub(super) fn secret_type_url() -> String {
    Secret::type_url()
}

/// Envoy's name for its SPIFFE certificate validator extension.
const SPIFFE_VALIDATOR: &str = "envoy.tls.cert_validator.spiffe";

/// How bundles are handed to this Envoy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Validation {
    /// As configuration of Envoy's SPIFFE validator: a peer is checked against the bundle of
    /// its own trust domain only (Envoy 1.18 and later).
    Spiffe,
    /// As plain CA certificates (`disable_spiffe_cert_validation`, or an older Envoy).
    TrustedCa,
}

/// Why a request cannot be answered.
#[derive(Debug, thiserror::Error)]
pub(super) enum ResourceError {
    /// SPIRE's wording, with the names quoted as Go's `%q` prints a list.
    #[error("workload is not authorized for the requested identities [{}]", quoted(.0))]
    NotAuthorized(Vec<String>),
    #[error(
        "{0:?} needs Envoy's SPIFFE certificate validator, which is disabled \
         (disable_spiffe_cert_validation) or too new for this Envoy (before 1.18)"
    )]
    AllNeedsSpiffeValidator(String),
}

impl From<ResourceError> for Status {
    fn from(err: ResourceError) -> Self {
        Self::invalid_argument(err.to_string())
    }
}

fn quoted(names: &[String]) -> String {
    names
        .iter()
        .map(|n| format!("{n:?}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// The resources `names` asks for; every SVID and every bundle under its own name when
/// `names` is empty (SPIRE: the default names are not included then). Any name the caller is
/// not entitled to fails the whole request, as in SPIRE.
pub(super) fn resources(
    view: &WorkloadView,
    names: &[String],
    config: &SdsConfig,
    validation: Validation,
) -> Result<Vec<Any>, ResourceError> {
    let all = names.iter().all(String::is_empty);
    let mut wanted: BTreeSet<&str> = names
        .iter()
        .map(String::as_str)
        .filter(|n| !n.is_empty())
        .collect();
    let mut out = Vec::new();
    let mut take = |name: &str| all || wanted.remove(name);

    for (td, bundle) in &view.bundles {
        let id = td.id_string();
        if take(&id) {
            out.push(validation_context(&id, td, bundle, validation));
        }
    }
    if !all && take(&config.default_bundle_name) {
        let own = &view.trust_domain;
        out.push(validation_context(
            &config.default_bundle_name,
            own,
            &view.bundles[own],
            validation,
        ));
    }
    if !all && take(&config.default_all_bundles_name) {
        if validation != Validation::Spiffe {
            return Err(ResourceError::AllNeedsSpiffeValidator(
                config.default_all_bundles_name.clone(),
            ));
        }
        out.push(spiffe_validation_context(
            &config.default_all_bundles_name,
            view.bundles.iter().map(|(td, b)| (td, b.as_ref())),
        ));
    }
    for svid in &view.svids {
        if take(&svid.spiffe_id) {
            out.push(tls_certificate(&svid.spiffe_id, svid));
        }
    }
    if let Some(default) = view.default_svid()
        && !all
        && take(&config.default_svid_name)
    {
        out.push(tls_certificate(&config.default_svid_name, default));
    }
    if !wanted.is_empty() {
        return Err(ResourceError::NotAuthorized(
            wanted.into_iter().map(str::to_owned).collect(),
        ));
    }
    Ok(out)
}

fn inline(bytes: &[u8]) -> Option<DataSource> {
    Some(DataSource {
        specifier: Some(data_source::Specifier::InlineBytes(bytes.to_vec())),
    })
}

fn secret(name: &str, kind: secret::Type) -> Any {
    Any::from_msg(&Secret {
        name: name.to_owned(),
        r#type: Some(kind),
    })
    .expect("encoding into a Vec cannot fail")
}

fn tls_certificate(name: &str, svid: &ViewSvid) -> Any {
    let chain: String = svid
        .svid
        .chain
        .iter()
        .map(|der| pem_encode("CERTIFICATE", der))
        .collect();
    let key = Zeroizing::new(pem_encode("PRIVATE KEY", &svid.svid.private_key_pkcs8));
    secret(
        name,
        secret::Type::TlsCertificate(TlsCertificate {
            certificate_chain: inline(chain.as_bytes()),
            private_key: inline(key.as_bytes()),
        }),
    )
}

/// One trust domain's bundle, for the SPIFFE validator or as CA certificates.
fn validation_context(
    name: &str,
    td: &TrustDomain,
    bundle: &Bundle,
    validation: Validation,
) -> Any {
    match validation {
        Validation::Spiffe => spiffe_validation_context(name, [(td, bundle)]),
        Validation::TrustedCa => secret(
            name,
            secret::Type::ValidationContext(CertificateValidationContext {
                trusted_ca: inline(bundle.x509_authorities_pem().as_bytes()),
                custom_validator_config: None,
            }),
        ),
    }
}

/// Envoy's SPIFFE validator configured with one trust domain per bundle, ordered by name.
fn spiffe_validation_context<'a>(
    name: &str,
    bundles: impl IntoIterator<Item = (&'a TrustDomain, &'a Bundle)>,
) -> Any {
    let mut trust_domains: Vec<ValidatorTrustDomain> = bundles
        .into_iter()
        .map(|(td, bundle)| ValidatorTrustDomain {
            name: td.as_str().to_owned(),
            trust_bundle: inline(bundle.x509_authorities_pem().as_bytes()),
        })
        .collect();
    trust_domains.sort_by(|a, b| a.name.cmp(&b.name));
    let config = SpiffeCertValidatorConfig { trust_domains };
    secret(
        name,
        secret::Type::ValidationContext(CertificateValidationContext {
            trusted_ca: None,
            custom_validator_config: Some(TypedExtensionConfig {
                name: SPIFFE_VALIDATOR.to_owned(),
                typed_config: Some(
                    Any::from_msg(&config).expect("encoding into a Vec cannot fail"),
                ),
            }),
        }),
    )
}
