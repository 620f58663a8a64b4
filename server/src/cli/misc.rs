//! `healthcheck`, `token generate`, `bundle show`, `x509 mint` and `jwt mint`.

use std::io::Write;
use std::path::{Path, PathBuf};

use clap::{Args, Subcommand};
use sigil_proto::bundle::pem_encode;
use sigil_proto::sigil::admin::v1 as admin;
use sigil_proto::{Bundle, SpiffeId};

use super::OutputArgs;
use super::client::{CliError, CliResult, connect, fail};
use super::types;
use super::types::svid::{JoinToken, JwtSvid, MintJwtSvidResponse, X509MintResult};

#[derive(Args, Debug)]
pub(super) struct HealthcheckArgs {
    /// Path to the server's admin socket.
    #[arg(long = "socketPath", default_value = super::DEFAULT_SOCKET_PATH)]
    socket_path: PathBuf,
    /// SPIRE's less stringent check: not supported, refused (the check is always a real API
    /// call).
    #[arg(long = "shallow")]
    shallow: bool,
    /// Also prints the server's trust domain.
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
    /// Additional SPIFFE ID to assign the token owner: an entry for the agent that uses the
    /// token.
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
        types::print(&JoinToken {
            expires_at: t.expires_at,
            value: t.token,
        });
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
    /// `pem` (X.509 authorities) or `spiffe` (SPIFFE bundle JSON); pretty output only.
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
    if a.out.json() {
        types::print(&types::bundle::Bundle::from(&bundle));
    } else if a.format == "spiffe" {
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
    /// SPIFFE ID of the X509-SVID.
    #[arg(long = "spiffeID")]
    spiffe_id: String,
    /// TTL such as `1h` or seconds (default: the server's default X.509-SVID TTL).
    #[arg(long = "ttl")]
    ttl: Option<String>,
    /// DNS name that will be included in the SVID; repeat for several.
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
        for (what, f) in [
            ("X509-SVID", "svid.pem"),
            ("Private key", "key.pem"),
            ("Root CAs", "bundle.pem"),
        ] {
            println!("{what} written to {}", dir.join(f).display());
        }
    } else if a.out.json() {
        types::print(&X509MintResult {
            private_key: types::base64(&key.serialize_der()),
            root_cas: svid.bundle.iter().map(|d| types::base64(d)).collect(),
            x509_svid: svid.svid_chain.iter().map(|d| types::base64(d)).collect(),
        });
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
    /// SPIFFE ID of the JWT-SVID.
    #[arg(long = "spiffeID")]
    spiffe_id: String,
    /// An audience; repeat for several.
    #[arg(long = "audience", required = true)]
    audience: Vec<String>,
    /// TTL such as `5m` or seconds (default: the server's default JWT-SVID TTL).
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
        println!("JWT-SVID written to {}", path.display());
    } else if a.out.json() {
        types::print(&MintJwtSvidResponse {
            svid: JwtSvid {
                expires_at: t.expires_at,
                hint: String::new(),
                id: types::SpiffeId::from_text(&id.to_string()),
                issued_at: issued_at(&t.token),
                token: t.token,
            },
        });
    } else {
        println!("{}", t.token);
    }
    Ok(())
}

/// The `iat` claim of a JWT the server just signed (0 if it cannot be read).
fn issued_at(token: &str) -> i64 {
    use base64::Engine as _;
    token
        .split('.')
        .nth(1)
        .and_then(|p| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(p)
                .ok()
        })
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .and_then(|claims| claims["iat"].as_i64())
        .unwrap_or(0)
}
