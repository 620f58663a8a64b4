//! `healthcheck`, `token generate`, `bundle show`, `x509 mint`, `jwt mint` and `agent ...`.

use std::io::Write;
use std::path::{Path, PathBuf};

use clap::{Args, Subcommand};
use serde_json::json;
use sigil_proto::bundle::pem_encode;
use sigil_proto::sigil::admin::v1 as admin;
use sigil_proto::{Bundle, SpiffeId};

use super::OutputArgs;
use super::client::{CliError, CliResult, connect, fail};
use super::output::{print_json, timestamp};

#[derive(Args, Debug)]
pub(super) struct HealthcheckArgs {
    #[arg(long = "socketPath", default_value = super::DEFAULT_SOCKET_PATH)]
    socket_path: PathBuf,
    /// SPIRE's less stringent check: not supported, refused (the check is always a real API
    /// call).
    #[arg(long = "shallow")]
    shallow: bool,
    #[arg(long = "verbose")]
    verbose: bool,
}

pub(super) async fn healthcheck(a: HealthcheckArgs) -> CliResult {
    if a.shallow {
        return fail(
            "-shallow is not supported: the health check is always a full call to the server's \
             API, and a flag is never accepted and ignored",
        );
    }
    let unhealthy = |e: CliError| CliError(format!("server is unhealthy: {e}"));
    let mut client = connect(&a.socket_path).await.map_err(unhealthy)?;
    let health = client
        .health(admin::HealthRequest {})
        .await
        .map_err(|s| unhealthy(s.into()))?
        .into_inner();
    if !health.serving {
        return fail("server is unhealthy: not serving");
    }
    if a.verbose {
        println!("Trust domain: {}", health.trust_domain);
    }
    println!("Server is healthy.");
    Ok(())
}

#[derive(Subcommand, Debug)]
pub(super) enum TokenCommand {
    /// Generates a single-use join token for node attestation.
    Generate(TokenArgs),
}

#[derive(Args, Debug)]
pub(super) struct TokenArgs {
    /// Also register this SPIFFE ID for the agent that uses the token.
    #[arg(long = "spiffeID")]
    spiffe_id: Option<String>,
    /// Token TTL in seconds.
    #[arg(long = "ttl", default_value_t = 600)]
    ttl: u32,
    #[command(flatten)]
    out: OutputArgs,
}

pub(super) async fn token(c: TokenCommand) -> CliResult {
    let TokenCommand::Generate(a) = c;
    if let Some(id) = &a.spiffe_id {
        SpiffeId::new(id).map_err(|e| CliError(format!("invalid -spiffeID {id:?}: {e}")))?;
    }
    if a.ttl == 0 {
        return fail("-ttl must be greater than 0");
    }
    let mut client = connect(&a.out.socket_path).await?;
    let t = client
        .create_join_token(admin::CreateJoinTokenRequest {
            ttl: a.ttl,
            spiffe_id: a.spiffe_id.clone().unwrap_or_default(),
        })
        .await?
        .into_inner();
    if a.out.json() {
        print_json(&json!({ "value": t.token, "expires_at": t.expires_at }));
    } else {
        println!("Token: {}", t.token);
    }
    Ok(())
}

#[derive(Subcommand, Debug)]
pub(super) enum BundleCommand {
    /// Prints the server's trust bundle.
    Show(BundleShowArgs),
    /// Creates or replaces a federated bundle.
    Set(super::bundle::BundleSetArgs),
    /// Lists federated bundles.
    List(super::bundle::BundleListArgs),
    /// Deletes a federated bundle.
    Delete(super::bundle::BundleDeleteArgs),
    /// Counts bundles (ours included).
    Count(super::bundle::BundleCountArgs),
}

#[derive(Args, Debug)]
pub(super) struct BundleShowArgs {
    /// `pem` (X.509 authorities) or `spiffe` (SPIFFE bundle JSON).
    #[arg(long = "format", default_value = "pem", value_parser = ["pem", "spiffe"])]
    format: String,
    #[command(flatten)]
    out: OutputArgs,
}

pub(super) async fn bundle(c: BundleCommand) -> CliResult {
    let a = match c {
        BundleCommand::Show(a) => a,
        BundleCommand::Set(a) => return super::bundle::set(a).await,
        BundleCommand::List(a) => return super::bundle::list(a).await,
        BundleCommand::Delete(a) => return super::bundle::delete(a).await,
        BundleCommand::Count(a) => return super::bundle::count(a).await,
    };
    let mut client = connect(&a.out.socket_path).await?;
    let pb = client
        .get_bundle(admin::GetBundleRequest {})
        .await?
        .into_inner()
        .bundle
        .ok_or_else(|| CliError("server returned no bundle".into()))?;
    let bundle = Bundle::try_from(&pb).map_err(|e| CliError(e.to_string()))?;
    if a.format == "spiffe" || a.out.json() {
        let json = bundle
            .to_spiffe_json()
            .map_err(|e| CliError(e.to_string()))?;
        println!("{json}");
    } else {
        print!("{}", bundle.x509_authorities_pem());
    }
    Ok(())
}

#[derive(Subcommand, Debug)]
pub(super) enum X509Command {
    /// Mints an X.509-SVID; the private key is generated here and never sent.
    Mint(X509MintArgs),
}

#[derive(Args, Debug)]
pub(super) struct X509MintArgs {
    #[arg(long = "spiffeID")]
    spiffe_id: String,
    /// TTL such as `1h` or seconds (default: the server's default X.509-SVID TTL).
    #[arg(long = "ttl")]
    ttl: Option<String>,
    #[arg(long = "dns")]
    dns: Vec<String>,
    /// Directory to write `svid.pem`, `key.pem` and `bundle.pem` into.
    #[arg(long = "write")]
    write: Option<PathBuf>,
    #[command(flatten)]
    out: OutputArgs,
}

fn parse_duration_flag(value: &Option<String>) -> Result<u32, CliError> {
    let Some(v) = value else { return Ok(0) };
    let secs = match v.parse::<u64>() {
        Ok(s) => s,
        Err(_) => humantime::parse_duration(v)
            .map_err(|_| {
                CliError(format!(
                    "invalid -ttl {v:?}: expected a duration such as 1h"
                ))
            })?
            .as_secs(),
    };
    u32::try_from(secs).map_err(|_| CliError(format!("invalid -ttl {v:?}: too long")))
}

pub(super) async fn x509(c: X509Command) -> CliResult {
    let X509Command::Mint(a) = c;
    let id = SpiffeId::new(&a.spiffe_id)
        .map_err(|e| CliError(format!("invalid -spiffeID {:?}: {e}", a.spiffe_id)))?;
    let ttl = parse_duration_flag(&a.ttl)?;
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
        .map_err(|e| CliError(format!("cannot generate a key: {e}")))?;
    let mut params =
        rcgen::CertificateParams::new(Vec::<String>::new()).map_err(|e| CliError(e.to_string()))?;
    let uri =
        rcgen::string::Ia5String::try_from(id.to_string()).map_err(|e| CliError(e.to_string()))?;
    params.subject_alt_names = vec![rcgen::SanType::URI(uri)];
    let csr = params
        .serialize_request(&key)
        .map_err(|e| CliError(format!("cannot build the CSR: {e}")))?;
    let mut client = connect(&a.out.socket_path).await?;
    let svid = client
        .mint_x509svid(admin::MintX509svidRequest {
            csr: csr.der().to_vec(),
            spiffe_id: id.to_string(),
            ttl,
            dns_names: a.dns.clone(),
        })
        .await?
        .into_inner();
    let svid_pem: String = svid
        .svid_chain
        .iter()
        .map(|d| pem_encode("CERTIFICATE", d))
        .collect();
    let key_pem = pem_encode("PRIVATE KEY", &key.serialize_der());
    let bundle_pem: String = svid
        .bundle
        .iter()
        .map(|d| pem_encode("CERTIFICATE", d))
        .collect();
    if let Some(dir) = &a.write {
        write_file(&dir.join("svid.pem"), svid_pem.as_bytes(), 0o644)?;
        write_file(&dir.join("key.pem"), key_pem.as_bytes(), 0o600)?;
        write_file(&dir.join("bundle.pem"), bundle_pem.as_bytes(), 0o644)?;
        for f in ["svid.pem", "key.pem", "bundle.pem"] {
            println!("Wrote {}", dir.join(f).display());
        }
    } else if a.out.json() {
        print_json(
            &json!({ "svid": svid_pem, "key": key_pem, "bundle": bundle_pem, "expires_at": svid.expires_at }),
        );
    } else {
        println!("X509-SVID:\n{svid_pem}\nPrivate key:\n{key_pem}\nRoot CAs:\n{bundle_pem}");
    }
    Ok(())
}

/// Writes a file with its final mode from the start (a key is never world-readable, not
/// even briefly), via a temporary file renamed into place so a failure leaves nothing half-written.
fn write_file(path: &Path, data: &[u8], mode: u32) -> Result<(), CliError> {
    use std::os::unix::fs::OpenOptionsExt;
    let err = |e: std::io::Error| CliError(format!("cannot write {}: {e}", path.display()));
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .map_err(err)?;
    f.write_all(data).and_then(|_| f.sync_all()).map_err(err)?;
    std::fs::rename(&tmp, path).map_err(err)
}

#[derive(Subcommand, Debug)]
pub(super) enum JwtCommand {
    /// Mints a JWT-SVID.
    Mint(JwtMintArgs),
}

#[derive(Args, Debug)]
pub(super) struct JwtMintArgs {
    #[arg(long = "spiffeID")]
    spiffe_id: String,
    /// An audience; repeat for several.
    #[arg(long = "audience", required = true)]
    audience: Vec<String>,
    #[arg(long = "ttl")]
    ttl: Option<String>,
    /// File to write the token to.
    #[arg(long = "write")]
    write: Option<PathBuf>,
    #[command(flatten)]
    out: OutputArgs,
}

pub(super) async fn jwt(c: JwtCommand) -> CliResult {
    let JwtCommand::Mint(a) = c;
    let id = SpiffeId::new(&a.spiffe_id)
        .map_err(|e| CliError(format!("invalid -spiffeID {:?}: {e}", a.spiffe_id)))?;
    if a.audience.iter().any(String::is_empty) {
        return fail("-audience must not be empty");
    }
    let ttl = parse_duration_flag(&a.ttl)?;
    let mut client = connect(&a.out.socket_path).await?;
    let t = client
        .mint_jwtsvid(admin::MintJwtsvidRequest {
            spiffe_id: id.to_string(),
            audience: a.audience.clone(),
            ttl,
        })
        .await?
        .into_inner();
    if let Some(path) = &a.write {
        write_file(path, t.token.as_bytes(), 0o600)?;
        println!("Wrote {}", path.display());
    } else if a.out.json() {
        print_json(&json!({ "token": t.token, "expires_at": t.expires_at }));
    } else {
        println!("{}", t.token);
    }
    Ok(())
}

#[derive(Subcommand, Debug)]
pub(super) enum AgentCommand {
    /// Lists attested agents.
    List(AgentListArgs),
    /// Shows one attested agent.
    Show(AgentIdArgs),
    /// Deletes an agent's attestation: it must attest again.
    Evict(AgentIdArgs),
    /// Bans an agent: it can no longer renew, sync or re-attest with the same ID.
    Ban(AgentIdArgs),
}

#[derive(Args, Debug)]
pub(super) struct AgentListArgs {
    #[command(flatten)]
    out: OutputArgs,
}

#[derive(Args, Debug)]
pub(super) struct AgentIdArgs {
    #[arg(long = "spiffeID")]
    spiffe_id: String,
    #[command(flatten)]
    out: OutputArgs,
}

fn agent_json(n: &sigil_proto::sigil::common::v1::AttestedNode) -> serde_json::Value {
    json!({
        "spiffe_id": n.spiffe_id,
        "attestation_type": n.attestation_type,
        "selectors": n.selectors.iter().map(|s| format!("{}:{}", s.r#type, s.value)).collect::<Vec<_>>(),
        "serial_number": n.cert_serial,
        "expires_at": n.cert_expires_at,
        "banned": n.banned,
    })
}

fn print_agent(n: &sigil_proto::sigil::common::v1::AttestedNode) {
    println!("SPIFFE ID         : {}", n.spiffe_id);
    println!("Attestation type  : {}", n.attestation_type);
    println!("Expiration time   : {}", timestamp(n.cert_expires_at));
    println!("Serial number     : {}", n.cert_serial);
    println!("Banned            : {}", n.banned);
    for s in &n.selectors {
        println!("Selector          : {}:{}", s.r#type, s.value);
    }
    println!();
}

pub(super) async fn agent(c: AgentCommand) -> CliResult {
    match c {
        AgentCommand::List(a) => {
            let mut client = connect(&a.out.socket_path).await?;
            let mut agents = Vec::new();
            let mut page_token = String::new();
            loop {
                let page = client
                    .list_agents(admin::ListAgentsRequest {
                        page_size: 1000,
                        page_token,
                    })
                    .await?
                    .into_inner();
                agents.extend(page.agents);
                if page.next_page_token.is_empty() {
                    break;
                }
                page_token = page.next_page_token;
            }
            if a.out.json() {
                print_json(&serde_json::Value::Array(
                    agents.iter().map(agent_json).collect(),
                ));
            } else {
                println!(
                    "Found {} attested agent{}:\n",
                    agents.len(),
                    if agents.len() == 1 { "" } else { "s" }
                );
                agents.iter().for_each(print_agent);
            }
        }
        AgentCommand::Show(a) => {
            let mut client = connect(&a.out.socket_path).await?;
            let n = client
                .get_agent(admin::GetAgentRequest {
                    spiffe_id: a.spiffe_id.clone(),
                })
                .await?
                .into_inner();
            if a.out.json() {
                print_json(&agent_json(&n));
            } else {
                print_agent(&n);
            }
        }
        AgentCommand::Evict(a) => {
            let mut client = connect(&a.out.socket_path).await?;
            client
                .evict_agent(admin::EvictAgentRequest {
                    spiffe_id: a.spiffe_id.clone(),
                })
                .await?;
            println!("Agent evicted successfully");
        }
        AgentCommand::Ban(a) => {
            let mut client = connect(&a.out.socket_path).await?;
            client
                .ban_agent(admin::BanAgentRequest {
                    spiffe_id: a.spiffe_id.clone(),
                })
                .await?;
            println!("Agent banned successfully");
        }
    }
    Ok(())
}
