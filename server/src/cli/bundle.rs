//! `bundle set|list|delete|count`: federated bundles, spelled as SPIRE spells them.
//! (`bundle show`, our own bundle, lives in `misc`.)

use std::io::Read;
use std::path::PathBuf;

use clap::Args;
use sigil_proto::sigil::admin::v1 as admin;
use sigil_proto::sigil::common::v1 as common;
use sigil_proto::{Bundle, TrustDomain};

use super::OutputArgs;
use super::client::{CliError, CliResult, connect, fail};
use super::output::print_count;
use super::types::bundle::{
    BatchDeleteFederatedBundleResponse, BatchSetFederatedBundleResponse, Bundle as BundleJson,
    DeleteResult, ListFederatedBundlesResponse, SetResult,
};
use super::types::{self, Status};

#[derive(Args, Debug)]
pub(super) struct BundleSetArgs {
    /// SPIFFE ID of the trust domain (`spiffe://other.org`).
    #[arg(long = "id")]
    id: String,
    /// Bundle file; standard input when absent.
    #[arg(long = "path")]
    path: Option<PathBuf>,
    /// The format of the bundle data: `pem` (X.509 authorities only) or `spiffe` (SPIFFE
    /// bundle JSON).
    #[arg(long = "format", default_value = "pem", value_parser = ["pem", "spiffe"])]
    format: String,
    #[command(flatten)]
    out: OutputArgs,
}

#[derive(Args, Debug)]
pub(super) struct BundleListArgs {
    /// Only this trust domain's bundle (`spiffe://other.org`).
    #[arg(long = "id")]
    id: Option<String>,
    /// `pem` (X.509 authorities) or `spiffe` (SPIFFE bundle JSON); pretty output only.
    #[arg(long = "format", default_value = "pem", value_parser = ["pem", "spiffe"])]
    format: String,
    #[command(flatten)]
    out: OutputArgs,
}

#[derive(Args, Debug)]
pub(super) struct BundleDeleteArgs {
    /// SPIFFE ID of the trust domain (`spiffe://other.org`).
    #[arg(long = "id")]
    id: String,
    /// What to do with entries that federate with it: `restrict` (refuse), `delete` them, or
    /// `dissociate` them.
    #[arg(long = "mode", default_value = "restrict", value_parser = ["restrict", "delete", "dissociate"])]
    mode: String,
    #[command(flatten)]
    out: OutputArgs,
}

#[derive(Args, Debug)]
pub(super) struct BundleCountArgs {
    #[command(flatten)]
    out: OutputArgs,
}

/// The trust domain of `-id`: SPIRE takes a SPIFFE ID; a bare name is accepted too, but a
/// path is refused (it names a workload, not a trust domain).
pub(super) fn parse_id(id: &str) -> Result<TrustDomain, CliError> {
    let td = TrustDomain::new(id).map_err(|e| CliError(format!("invalid -id {id:?}: {e}")))?;
    let bare = id.strip_prefix("spiffe://").unwrap_or(id);
    if bare != td.as_str() {
        return fail(format!(
            "invalid -id {id:?}: expected a trust domain ID like spiffe://{td}"
        ));
    }
    Ok(td)
}

/// Parses a bundle file in `format` for `trust_domain`. An empty or garbled document is an
/// error, as is a PEM file without certificates.
pub(super) fn parse_bundle(
    trust_domain: TrustDomain,
    data: &[u8],
    format: &str,
) -> Result<Bundle, CliError> {
    let bundle = match format {
        "spiffe" => {
            let text = std::str::from_utf8(data)
                .map_err(|_| CliError("the bundle is not UTF-8 text".into()))?;
            Bundle::from_spiffe_json(trust_domain, text)
                .map_err(|e| CliError(format!("invalid SPIFFE bundle: {e}")))?
        }
        _ => {
            let blocks =
                pem::parse_many(data).map_err(|e| CliError(format!("invalid PEM: {e}")))?;
            let mut bundle = Bundle::new(trust_domain);
            for block in blocks {
                if block.tag() != "CERTIFICATE" {
                    return fail(format!("unexpected PEM block {:?}", block.tag()));
                }
                bundle.x509_authorities.push(block.into_contents());
            }
            bundle
        }
    };
    if bundle.x509_authorities.is_empty() {
        return fail("the bundle holds no X.509 authority");
    }
    // Rendering parses every certificate and key, so garbage inside valid PEM is caught here.
    bundle
        .to_spiffe_json()
        .map_err(|e| CliError(format!("invalid bundle: {e}")))?;
    Ok(bundle)
}

pub(super) async fn set(a: BundleSetArgs) -> CliResult {
    let td = parse_id(&a.id)?;
    let data = match &a.path {
        Some(p) => {
            std::fs::read(p).map_err(|e| CliError(format!("cannot read {}: {e}", p.display())))?
        }
        None => {
            let mut buf = Vec::new();
            std::io::stdin().read_to_end(&mut buf)?;
            buf
        }
    };
    let bundle = parse_bundle(td, &data, &a.format)?;
    let mut client = connect(&a.out.socket_path).await?;
    client
        .set_federated_bundle(admin::SetFederatedBundleRequest {
            bundle: Some(common::Bundle::from(&bundle)),
        })
        .await?;
    if a.out.json() {
        types::print(&BatchSetFederatedBundleResponse {
            results: vec![SetResult {
                bundle: BundleJson::from(&bundle),
                status: Status::ok(),
            }],
        });
    } else {
        println!("bundle set.");
    }
    Ok(())
}

pub(super) async fn list(a: BundleListArgs) -> CliResult {
    let td = a.id.as_deref().map(parse_id).transpose()?;
    let mut client = connect(&a.out.socket_path).await?;
    let bundles = client
        .list_federated_bundles(admin::ListFederatedBundlesRequest {
            trust_domain: td.as_ref().map(ToString::to_string).unwrap_or_default(),
        })
        .await?
        .into_inner()
        .bundles;
    let bundles = bundles
        .iter()
        .map(|wire| Bundle::try_from(wire).map_err(|e| CliError(e.to_string())))
        .collect::<Result<Vec<_>, _>>()?;
    if a.out.json() {
        // SPIRE: `GetFederatedBundle`'s bundle with -id, else `ListFederatedBundlesResponse`.
        match (&td, bundles.first()) {
            (Some(_), Some(b)) => types::print(&BundleJson::from(b)),
            (Some(td), None) => return fail(format!("no federated bundle for {td}")),
            (None, _) => types::print(&ListFederatedBundlesResponse {
                bundles: bundles.iter().map(BundleJson::from).collect(),
                next_page_token: String::new(),
            }),
        }
        return Ok(());
    }
    let spiffe = a.format == "spiffe";
    for bundle in &bundles {
        let body = render(bundle, spiffe)?;
        if td.is_some() {
            print!("{body}");
        } else {
            // SPIRE's banner between bundles.
            let rule = "*".repeat(40);
            print!(
                "{rule}\n* {}\n{rule}\n{body}\n",
                bundle.trust_domain.id_string()
            );
        }
    }
    Ok(())
}

fn render(bundle: &Bundle, spiffe: bool) -> Result<String, CliError> {
    if spiffe {
        let json = bundle
            .to_spiffe_json()
            .map_err(|e| CliError(e.to_string()))?;
        Ok(format!("{json}\n"))
    } else {
        Ok(bundle.x509_authorities_pem())
    }
}

pub(super) async fn delete(a: BundleDeleteArgs) -> CliResult {
    let td = parse_id(&a.id)?;
    let mode = match a.mode.as_str() {
        "delete" => admin::BundleDeleteMode::Delete,
        "dissociate" => admin::BundleDeleteMode::Dissociate,
        _ => admin::BundleDeleteMode::Restrict,
    };
    let mut client = connect(&a.out.socket_path).await?;
    client
        .delete_federated_bundle(admin::DeleteFederatedBundleRequest {
            trust_domain: td.to_string(),
            mode: mode.into(),
        })
        .await?;
    if a.out.json() {
        types::print(&BatchDeleteFederatedBundleResponse {
            results: vec![DeleteResult {
                status: Status::ok(),
                trust_domain: td.to_string(),
            }],
        });
    } else {
        println!("bundle deleted.");
    }
    Ok(())
}

pub(super) async fn count(a: BundleCountArgs) -> CliResult {
    let mut client = connect(&a.out.socket_path).await?;
    let n = client
        .count_bundles(admin::CountBundlesRequest {})
        .await?
        .into_inner()
        .count;
    print_count(&a.out, n, "bundle", "bundles");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert_pem() -> String {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.self_signed(&key).unwrap().pem()
    }

    fn td() -> TrustDomain {
        TrustDomain::new("other.org").unwrap()
    }

    #[test]
    fn id_is_a_trust_domain_id_or_name() {
        assert_eq!(parse_id("spiffe://other.org").unwrap(), td());
        assert_eq!(parse_id("other.org").unwrap(), td());
        assert!(parse_id("spiffe://other.org/workload").is_err());
        assert!(parse_id("spiffe://Other Org").is_err());
        assert!(parse_id("").is_err());
    }

    #[test]
    fn pem_bundle_parses_and_garbage_is_refused() {
        let pem = cert_pem();
        let two = format!("{pem}{pem}");
        let b = parse_bundle(td(), two.as_bytes(), "pem").unwrap();
        assert_eq!(b.x509_authorities.len(), 2);
        assert_eq!(b.trust_domain, td());

        assert!(parse_bundle(td(), b"", "pem").is_err(), "empty");
        assert!(parse_bundle(td(), b"hello", "pem").is_err(), "no PEM");
        let bogus = "-----BEGIN CERTIFICATE-----\naGVsbG8=\n-----END CERTIFICATE-----\n";
        assert!(
            parse_bundle(td(), bogus.as_bytes(), "pem").is_err(),
            "not DER"
        );
        let key = "-----BEGIN PRIVATE KEY-----\naGVsbG8=\n-----END PRIVATE KEY-----\n";
        assert!(
            parse_bundle(td(), key.as_bytes(), "pem").is_err(),
            "wrong block"
        );
    }

    #[test]
    fn spiffe_bundle_round_trips_and_garbage_is_refused() {
        let b = parse_bundle(td(), cert_pem().as_bytes(), "pem").unwrap();
        let mut with_seq = b;
        with_seq.sequence = 7;
        with_seq.refresh_hint = Some(60);
        let json = with_seq.to_spiffe_json().unwrap();
        let parsed = parse_bundle(td(), json.as_bytes(), "spiffe").unwrap();
        assert_eq!(parsed, with_seq);

        assert!(parse_bundle(td(), b"{}", "spiffe").is_err(), "no keys");
        assert!(
            parse_bundle(td(), br#"{"keys":[]}"#, "spiffe").is_err(),
            "empty"
        );
        assert!(parse_bundle(td(), b"not json", "spiffe").is_err());
    }
}
