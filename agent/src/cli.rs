//! The `sigil-agent` command line, with SPIRE's spellings: single-dash camelCase flags
//! (`-socketPath`, `-spiffeID`), normalized to clap's `--flag` before parsing, so both
//! `-flag value` and `-flag=value` work.
//!
//! `api fetch x509|jwt|jwtbundle`, `api validate jwt` and `api watch` are Workload API clients;
//! `healthcheck` checks that the Workload API answers; `run` is wired by the integrator.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use clap::{Args, Parser, Subcommand};
use sigil_proto::bundle::pem_encode;
use sigil_proto::workload::{
    JwtBundlesRequest, JwtsvidRequest, ValidateJwtsvidRequest, X509BundlesRequest, X509svidRequest,
    X509svidResponse,
};
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::config::{AgentConfig, AgentOverrides, JoinToken};
use crate::workload_api::DEFAULT_SOCKET_PATH;
use crate::workload_api::client::{ClientError, WorkloadApiClient, connect};

/// Why a command failed; printed as one line on stderr.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CliError {
    #[error(transparent)]
    Connect(#[from] ClientError),
    #[error("{what}: {} ({:?})", .status.message(), .status.code())]
    Rpc {
        what: &'static str,
        status: tonic::Status,
    },
    #[error("{what}: timed out after {after:?}")]
    Timeout { what: &'static str, after: Duration },
    #[error("{0}: the Workload API ended the stream without a response")]
    EmptyStream(&'static str),
    #[error("SPIFFE_ENDPOINT_SOCKET must be unix:///absolute/path, got {0:?}")]
    BadEndpoint(String),
    #[error("writing {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("writing output: {0}")]
    Output(#[from] std::io::Error),
    #[error("response carries an invalid certificate: {0}")]
    BadCertificate(String),
    #[error("`run` and `validate` are started from `main`, not from here")]
    RunNotWired,
    #[error(
        "-{0} is not supported: the health check is always the Workload API answering, and a \
         flag is never accepted and ignored"
    )]
    Unsupported(&'static str),
}

#[derive(Debug, Parser)]
#[command(
    name = "sigil-agent",
    version,
    about = "Sigil agent: SPIFFE workload identity"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Runs the agent.
    Run(RunArgs),
    /// Talks to a running agent's Workload API.
    Api {
        #[command(subcommand)]
        command: ApiCommand,
    },
    /// Checks that the agent's Workload API answers.
    Healthcheck(HealthcheckArgs),
    /// Validates the configuration file and exits (SPIRE's `spire-agent validate`).
    Validate(ValidateArgs),
}

/// `validate` flags: the file and whether to expand `$VARIABLES` in it, as `run` reads it.
#[derive(Debug, Args)]
struct ValidateArgs {
    /// Path to the HCL configuration file.
    #[arg(long = "config", default_value = "conf/agent/agent.conf")]
    config: PathBuf,
    /// Expand $VARIABLES in the configuration file.
    #[arg(long = "expandEnv")]
    expand_env: bool,
}

/// `run` flags, SPIRE's spellings; they override the config file.
#[derive(Debug, Args)]
struct RunArgs {
    /// Path to the HCL configuration file.
    #[arg(long = "config", default_value = "conf/agent/agent.conf")]
    config: PathBuf,
    /// Expand $VARIABLES in the configuration file.
    #[arg(long = "expandEnv")]
    expand_env: bool,
    #[arg(long = "dataDir")]
    data_dir: Option<String>,
    #[arg(long = "logLevel")]
    log_level: Option<String>,
    #[arg(long = "logFormat")]
    log_format: Option<String>,
    #[arg(long = "serverAddress")]
    server_address: Option<String>,
    #[arg(long = "serverPort")]
    server_port: Option<String>,
    #[arg(long = "socketPath")]
    socket_path: Option<String>,
    #[arg(long = "trustDomain")]
    trust_domain: Option<String>,
    #[arg(long = "trustBundle")]
    trust_bundle: Option<String>,
    /// A join token from `sigil-server token generate` (used once).
    #[arg(long = "joinToken", hide_env_values = true)]
    join_token: Option<String>,
}

impl RunArgs {
    fn overrides(&self) -> AgentOverrides {
        AgentOverrides {
            data_dir: self.data_dir.clone(),
            log_level: self.log_level.clone(),
            log_format: self.log_format.clone(),
            server_address: self.server_address.clone(),
            server_port: self.server_port.clone(),
            socket_path: self.socket_path.clone(),
            trust_domain: self.trust_domain.clone(),
            trust_bundle: self.trust_bundle.clone(),
            join_token: self.join_token.clone().map(JoinToken::new),
            expand_env: self.expand_env,
        }
    }
}

/// Exit code for bad configuration (sysexits EX_USAGE), before anything binds.
pub const EXIT_USAGE: u8 = 64;

/// `sigil-agent validate`: parses the config exactly as `run` does and binds nothing. Exits 0
/// when valid, 64 (like `run`) with the error on `err` otherwise.
fn validate_config(args: &ValidateArgs, out: &mut dyn Write, err: &mut dyn Write) -> ExitCode {
    let overrides = AgentOverrides {
        expand_env: args.expand_env,
        ..AgentOverrides::default()
    };
    // A failed write to stdout/stderr cannot be reported anywhere; the exit code still is.
    match AgentConfig::load(&args.config, &overrides) {
        Ok(_) => {
            let _ = writeln!(out, "Configuration is valid.");
            ExitCode::SUCCESS
        }
        Err(e) => {
            let _ = writeln!(err, "Error: {e}");
            ExitCode::from(EXIT_USAGE)
        }
    }
}

/// `sigil-agent run`: config errors exit 64 before anything starts; a runtime failure exits 1.
fn run_agent(args: &RunArgs) -> ExitCode {
    let config = match AgentConfig::load(&args.config, &args.overrides()) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("starting the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(crate::run::run(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %format!("{e:#}"), "sigil-agent failed");
            eprintln!("{e:#}");
            ExitCode::FAILURE
        }
    }
}

#[derive(Debug, Subcommand)]
enum ApiCommand {
    /// Fetches SVIDs or bundles.
    Fetch {
        #[command(subcommand)]
        command: FetchCommand,
    },
    /// Validates credentials.
    Validate {
        #[command(subcommand)]
        command: ValidateCommand,
    },
    /// Prints every X509-SVID update as it arrives.
    Watch(SocketArgs),
}

#[derive(Debug, Subcommand)]
enum FetchCommand {
    /// Fetches the X509-SVIDs of the calling workload.
    X509(FetchX509Args),
    /// Fetches JWT-SVIDs for an audience.
    Jwt(FetchJwtArgs),
    /// Fetches the JWT bundles (JWKS per trust domain).
    Jwtbundle(FetchJwtBundleArgs),
}

#[derive(Debug, Subcommand)]
enum ValidateCommand {
    /// Validates a JWT-SVID through the Workload API.
    Jwt(ValidateJwtArgs),
}

#[derive(Debug, Clone, Args)]
struct SocketArgs {
    /// Path to the Workload API socket.
    #[arg(long = "socketPath")]
    socket_path: Option<PathBuf>,
}

#[derive(Debug, Clone, Args)]
struct CallArgs {
    #[command(flatten)]
    socket: SocketArgs,
    /// How long to wait for the answer.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    timeout: Duration,
}

#[derive(Debug, Args)]
struct FetchX509Args {
    #[command(flatten)]
    call: CallArgs,
    /// Writes svid.N.pem, svid.N.key and bundle.N.pem into this directory.
    #[arg(long)]
    write: Option<PathBuf>,
    /// `json` prints the response as JSON.
    #[arg(long)]
    output: Option<OutputFormat>,
}

#[derive(Debug, Args)]
struct FetchJwtArgs {
    #[command(flatten)]
    call: CallArgs,
    /// Audience of the JWT-SVID (repeatable).
    #[arg(long, required = true)]
    audience: Vec<String>,
    /// Only the JWT-SVID for this SPIFFE ID.
    #[arg(long = "spiffeID")]
    spiffe_id: Option<String>,
    #[arg(long)]
    output: Option<OutputFormat>,
}

#[derive(Debug, Args)]
struct FetchJwtBundleArgs {
    #[command(flatten)]
    call: CallArgs,
    #[arg(long)]
    output: Option<OutputFormat>,
}

#[derive(Debug, Args)]
struct ValidateJwtArgs {
    #[command(flatten)]
    call: CallArgs,
    /// The audience the token must carry.
    #[arg(long)]
    audience: String,
    /// The JWT-SVID to validate.
    #[arg(long)]
    svid: String,
    #[arg(long)]
    output: Option<OutputFormat>,
}

#[derive(Debug, Args)]
struct HealthcheckArgs {
    #[command(flatten)]
    call: CallArgs,
    /// SPIRE's less stringent check: not supported, refused (the check is always the
    /// Workload API answering).
    #[arg(long)]
    shallow: bool,
    /// Prints details.
    #[arg(long)]
    verbose: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum OutputFormat {
    Pretty,
    Json,
}

/// Entry point of the binary.
pub fn main() -> ExitCode {
    let args = normalize_flags(std::env::args_os());
    let cli = match Cli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(2)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    match &cli.command {
        Command::Run(args) => return run_agent(args),
        Command::Validate(args) => {
            return validate_config(args, &mut std::io::stdout(), &mut std::io::stderr());
        }
        _ => {}
    }
    // The environment is read here, at the edge, and nowhere below.
    let env_socket = std::env::var("SPIFFE_ENDPOINT_SOCKET").ok();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("starting the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut stdout = std::io::stdout();
    match runtime.block_on(run(cli, env_socket.as_deref(), &mut stdout)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line: the error and its causes.
            let mut line = e.to_string();
            let mut last = String::new();
            let mut source = std::error::Error::source(&e);
            while let Some(s) = source {
                // Wrapped errors often repeat their cause's message; print it once.
                let text = s.to_string();
                if text != last {
                    line.push_str(&format!(": {text}"));
                }
                last = text;
                source = s.source();
            }
            eprintln!("{line}");
            ExitCode::FAILURE
        }
    }
}

/// Turns SPIRE's single-dash long flags (`-socketPath p`, `-write=dir`) into clap's
/// `--socketPath`; short flags (`-h`), values (`-1`) and everything after `--` are kept.
fn normalize_flags(args: impl IntoIterator<Item = OsString>) -> Vec<OsString> {
    let mut out = Vec::new();
    let mut passthrough = false;
    for arg in args {
        let converted = match arg.to_str() {
            Some("--") => {
                passthrough = true;
                None
            }
            Some(s) if !passthrough && is_single_dash_long(s) => {
                Some(OsString::from(format!("-{s}")))
            }
            _ => None,
        };
        out.push(converted.unwrap_or(arg));
    }
    out
}

fn is_single_dash_long(s: &str) -> bool {
    let mut chars = s.chars();
    chars.next() == Some('-')
        && chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric() || c == '=')
}

/// The socket to dial: `-socketPath`, else `SPIFFE_ENDPOINT_SOCKET`, else the default.
fn socket_path(args: &SocketArgs, env_socket: Option<&str>) -> Result<PathBuf, CliError> {
    if let Some(path) = &args.socket_path {
        return Ok(path.clone());
    }
    match env_socket.filter(|s| !s.is_empty()) {
        None => Ok(PathBuf::from(DEFAULT_SOCKET_PATH)),
        Some(uri) => {
            let path = uri
                .strip_prefix("unix://")
                .or_else(|| uri.strip_prefix("unix:"))
                .filter(|p| p.starts_with('/'))
                .ok_or_else(|| CliError::BadEndpoint(uri.to_owned()))?;
            Ok(PathBuf::from(path))
        }
    }
}

async fn run(
    cli: Cli,
    env_socket: Option<&str>,
    out: &mut (dyn Write + Send),
) -> Result<(), CliError> {
    match cli.command {
        // Handled by `main` before this runtime exists (it needs its own).
        Command::Run(_) | Command::Validate(_) => Err(CliError::RunNotWired),
        Command::Healthcheck(args) => healthcheck(args, env_socket, out).await,
        Command::Api { command } => match command {
            ApiCommand::Fetch {
                command: FetchCommand::X509(args),
            } => fetch_x509(args, env_socket, out).await,
            ApiCommand::Fetch {
                command: FetchCommand::Jwt(args),
            } => fetch_jwt(args, env_socket, out).await,
            ApiCommand::Fetch {
                command: FetchCommand::Jwtbundle(args),
            } => fetch_jwt_bundles(args, env_socket, out).await,
            ApiCommand::Validate {
                command: ValidateCommand::Jwt(args),
            } => validate_jwt(args, env_socket, out).await,
            ApiCommand::Watch(args) => watch(args, env_socket, out).await,
        },
    }
}

async fn client(args: &CallArgs, env_socket: Option<&str>) -> Result<WorkloadApiClient, CliError> {
    let path = socket_path(&args.socket, env_socket)?;
    within(args.timeout, "connecting to the Workload API", async {
        Ok(connect(&path).await?)
    })
    .await
}

/// Bounds a call by the command's `-timeout`.
async fn within<T>(
    after: Duration,
    what: &'static str,
    f: impl Future<Output = Result<T, CliError>>,
) -> Result<T, CliError> {
    tokio::time::timeout(after, f)
        .await
        .map_err(|_| CliError::Timeout { what, after })?
}

fn rpc(what: &'static str) -> impl Fn(tonic::Status) -> CliError {
    move |status| CliError::Rpc { what, status }
}

/// The first message of a Workload API stream: what the one-shot `fetch` commands print.
async fn first_message<T>(
    call: impl Future<Output = Result<tonic::Response<tonic::Streaming<T>>, tonic::Status>>,
    what: &'static str,
) -> Result<T, CliError> {
    let mut stream = call.await.map_err(rpc(what))?.into_inner();
    stream
        .message()
        .await
        .map_err(rpc(what))?
        .ok_or(CliError::EmptyStream(what))
}

async fn fetch_x509(
    args: FetchX509Args,
    env_socket: Option<&str>,
    out: &mut (dyn Write + Send),
) -> Result<(), CliError> {
    const WHAT: &str = "fetching X509-SVID";
    let mut client = client(&args.call, env_socket).await?;
    let started = Instant::now();
    let response = within(
        args.call.timeout,
        WHAT,
        first_message(client.fetch_x509svid(X509svidRequest {}), WHAT),
    )
    .await?;
    let elapsed = started.elapsed();
    if args.output == Some(OutputFormat::Json) {
        writeln!(out, "{}", x509_json(&response))?;
    } else {
        print_x509(&response, elapsed, out)?;
    }
    if let Some(dir) = &args.write {
        write_x509_files(&response, dir)?;
        if args.output != Some(OutputFormat::Json) {
            writeln!(
                out,
                "Writing SVID #0 to file {}.",
                dir.join("svid.0.pem").display()
            )?;
        }
    }
    Ok(())
}

fn print_x509(
    response: &X509svidResponse,
    elapsed: Duration,
    out: &mut (dyn Write + Send),
) -> Result<(), CliError> {
    let n = response.svids.len();
    writeln!(
        out,
        "Received {n} svid{} after {elapsed:?}",
        if n == 1 { "" } else { "s" }
    )?;
    for svid in &response.svids {
        writeln!(out)?;
        writeln!(out, "SPIFFE ID:\t\t{}", svid.spiffe_id)?;
        if !svid.hint.is_empty() {
            writeln!(out, "Hint:\t\t\t{}", svid.hint)?;
        }
        let chain = parse_validity(&svid.x509_svid)?;
        for (i, (not_before, not_after)) in chain.iter().enumerate() {
            let label = if i == 0 {
                "SVID".to_owned()
            } else {
                format!("Intermediate #{i}")
            };
            writeln!(out, "{label} Valid After:\t{not_before}")?;
            writeln!(out, "{label} Valid Until:\t{not_after}")?;
        }
        for (i, (not_before, not_after)) in parse_validity(&svid.bundle)?.iter().enumerate() {
            writeln!(out, "CA #{} Valid After:\t{not_before}", i + 1)?;
            writeln!(out, "CA #{} Valid Until:\t{not_after}", i + 1)?;
        }
    }
    for td in response.federated_bundles.keys() {
        writeln!(out, "Federated bundle:\t{td}")?;
    }
    Ok(())
}

/// (notBefore, notAfter) of each certificate in concatenated DER.
fn parse_validity(mut der: &[u8]) -> Result<Vec<(String, String)>, CliError> {
    let mut out = Vec::new();
    while !der.is_empty() {
        let (rest, cert) =
            X509Certificate::from_der(der).map_err(|e| CliError::BadCertificate(e.to_string()))?;
        out.push((
            cert.validity().not_before.to_string(),
            cert.validity().not_after.to_string(),
        ));
        der = rest;
    }
    Ok(out)
}

/// Splits concatenated DER certificates.
fn split_der(mut der: &[u8]) -> Result<Vec<&[u8]>, CliError> {
    let mut out = Vec::new();
    while !der.is_empty() {
        let (rest, _) =
            X509Certificate::from_der(der).map_err(|e| CliError::BadCertificate(e.to_string()))?;
        out.push(&der[..der.len() - rest.len()]);
        der = rest;
    }
    Ok(out)
}

fn pem_chain(der: &[u8]) -> Result<String, CliError> {
    Ok(split_der(der)?
        .into_iter()
        .map(|c| pem_encode("CERTIFICATE", c))
        .collect())
}

/// SPIRE's file layout: `svid.N.pem` (chain), `svid.N.key` (PKCS#8, 0600), `bundle.N.pem`,
/// `federated_bundle.N.M.pem`.
fn write_x509_files(response: &X509svidResponse, dir: &Path) -> Result<(), CliError> {
    let write = |name: String, contents: String, mode: u32| -> Result<(), CliError> {
        let path = dir.join(name);
        let err = |source| CliError::Write {
            path: path.clone(),
            source,
        };
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&path)
            .map_err(err)?;
        // `mode` applies only to new files; an existing key file must not stay readable.
        file.set_permissions(std::fs::Permissions::from_mode(mode))
            .map_err(err)?;
        file.write_all(contents.as_bytes()).map_err(err)
    };
    for (i, svid) in response.svids.iter().enumerate() {
        write(format!("svid.{i}.pem"), pem_chain(&svid.x509_svid)?, 0o644)?;
        let key = zeroize::Zeroizing::new(pem_encode("PRIVATE KEY", &svid.x509_svid_key));
        write(format!("svid.{i}.key"), key.to_string(), 0o600)?;
        write(format!("bundle.{i}.pem"), pem_chain(&svid.bundle)?, 0o644)?;
        for (j, der) in response.federated_bundles.values().enumerate() {
            write(
                format!("federated_bundle.{i}.{j}.pem"),
                pem_chain(der)?,
                0o644,
            )?;
        }
    }
    Ok(())
}

/// The response in protobuf-JSON shape (bytes as base64), as SPIRE's `-output json` prints.
fn x509_json(response: &X509svidResponse) -> serde_json::Value {
    let svids: Vec<_> = response
        .svids
        .iter()
        .map(|s| {
            serde_json::json!({
                "spiffe_id": s.spiffe_id,
                "hint": s.hint,
                "x509_svid": STANDARD.encode(&s.x509_svid),
                "x509_svid_key": STANDARD.encode(&s.x509_svid_key),
                "bundle": STANDARD.encode(&s.bundle),
            })
        })
        .collect();
    let federated: BTreeMap<_, _> = response
        .federated_bundles
        .iter()
        .map(|(td, der)| (td, STANDARD.encode(der)))
        .collect();
    serde_json::json!({ "svids": svids, "federated_bundles": federated })
}

async fn fetch_jwt(
    args: FetchJwtArgs,
    env_socket: Option<&str>,
    out: &mut (dyn Write + Send),
) -> Result<(), CliError> {
    const WHAT: &str = "fetching JWT-SVID";
    let mut client = client(&args.call, env_socket).await?;
    let request = JwtsvidRequest {
        audience: args.audience.clone(),
        spiffe_id: args.spiffe_id.clone().unwrap_or_default(),
    };
    let response = within(args.call.timeout, WHAT, async {
        Ok(client
            .fetch_jwtsvid(request)
            .await
            .map_err(rpc(WHAT))?
            .into_inner())
    })
    .await?;
    if args.output == Some(OutputFormat::Json) {
        let svids: Vec<_> = response
            .svids
            .iter()
            .map(|s| serde_json::json!({"spiffe_id": s.spiffe_id, "svid": s.svid, "hint": s.hint}))
            .collect();
        writeln!(out, "{}", serde_json::json!({ "svids": svids }))?;
        return Ok(());
    }
    for svid in &response.svids {
        writeln!(out, "token({}):\n\t{}", svid.spiffe_id, svid.svid)?;
    }
    Ok(())
}

async fn fetch_jwt_bundles(
    args: FetchJwtBundleArgs,
    env_socket: Option<&str>,
    out: &mut (dyn Write + Send),
) -> Result<(), CliError> {
    const WHAT: &str = "fetching JWT bundles";
    let mut client = client(&args.call, env_socket).await?;
    let response = within(
        args.call.timeout,
        WHAT,
        first_message(client.fetch_jwt_bundles(JwtBundlesRequest {}), WHAT),
    )
    .await?;
    let bundles: BTreeMap<_, _> = response.bundles.iter().collect();
    if args.output == Some(OutputFormat::Json) {
        let map: BTreeMap<_, serde_json::Value> = bundles
            .iter()
            .map(|(td, jwks)| (td, serde_json::from_slice(jwks).unwrap_or_default()))
            .collect();
        writeln!(out, "{}", serde_json::json!(map))?;
        return Ok(());
    }
    for (td, jwks) in bundles {
        writeln!(out, "bundle({td}):\n\t{}", String::from_utf8_lossy(jwks))?;
    }
    Ok(())
}

async fn validate_jwt(
    args: ValidateJwtArgs,
    env_socket: Option<&str>,
    out: &mut (dyn Write + Send),
) -> Result<(), CliError> {
    const WHAT: &str = "validating JWT-SVID";
    let mut client = client(&args.call, env_socket).await?;
    let request = ValidateJwtsvidRequest {
        audience: args.audience.clone(),
        svid: args.svid.clone(),
    };
    let response = within(args.call.timeout, WHAT, async {
        Ok(client
            .validate_jwtsvid(request)
            .await
            .map_err(rpc(WHAT))?
            .into_inner())
    })
    .await?;
    let claims = response
        .claims
        .as_ref()
        .map(struct_to_json)
        .unwrap_or_default();
    if args.output == Some(OutputFormat::Json) {
        writeln!(
            out,
            "{}",
            serde_json::json!({"spiffe_id": response.spiffe_id, "claims": claims})
        )?;
        return Ok(());
    }
    writeln!(out, "SVID is valid.")?;
    writeln!(out, "SPIFFE ID : {}", response.spiffe_id)?;
    writeln!(out, "Claims    : {claims}")?;
    Ok(())
}

async fn watch(
    args: SocketArgs,
    env_socket: Option<&str>,
    out: &mut (dyn Write + Send),
) -> Result<(), CliError> {
    const WHAT: &str = "watching X509-SVIDs";
    let path = socket_path(&args, env_socket)?;
    let mut client = connect(&path).await?;
    let mut started = Instant::now();
    let mut stream = client
        .fetch_x509svid(X509svidRequest {})
        .await
        .map_err(rpc(WHAT))?
        .into_inner();
    while let Some(response) = stream.message().await.map_err(rpc(WHAT))? {
        print_x509(&response, started.elapsed(), out)?;
        writeln!(out)?;
        out.flush()?;
        started = Instant::now();
    }
    Err(CliError::EmptyStream(WHAT))
}

async fn healthcheck(
    args: HealthcheckArgs,
    env_socket: Option<&str>,
    out: &mut (dyn Write + Send),
) -> Result<(), CliError> {
    const WHAT: &str = "Agent is unavailable";
    if args.shallow {
        return Err(CliError::Unsupported("shallow"));
    }
    let mut client = client(&args.call, env_socket).await?;
    let answer = within(args.call.timeout, WHAT, async {
        Ok(client
            .fetch_x509_bundles(X509BundlesRequest {})
            .await
            .map(|_| ()))
    })
    .await?;
    match answer {
        // Any answer from the handler (PermissionDenied for a caller without identity
        // included) means the Workload API is serving.
        Err(status)
            if status.code() == tonic::Code::Unavailable
                || status.code() == tonic::Code::Unknown =>
        {
            Err(CliError::Rpc { what: WHAT, status })
        }
        Ok(()) | Err(_) => {
            writeln!(out, "Agent is healthy.")?;
            if args.verbose {
                writeln!(
                    out,
                    "Workload API answered on {}",
                    socket_path(&args.call.socket, env_socket)?.display()
                )?;
            }
            Ok(())
        }
    }
}

fn struct_to_json(s: &prost_types::Struct) -> serde_json::Value {
    serde_json::Value::Object(
        s.fields
            .iter()
            .map(|(k, v)| (k.clone(), value_to_json(v)))
            .collect(),
    )
}

fn value_to_json(v: &prost_types::Value) -> serde_json::Value {
    use prost_types::value::Kind;
    match &v.kind {
        None | Some(Kind::NullValue(_)) => serde_json::Value::Null,
        Some(Kind::BoolValue(b)) => serde_json::Value::Bool(*b),
        Some(Kind::NumberValue(n)) => {
            // Claims like exp/iat are integers; print them without a fraction.
            if n.fract() == 0.0 && n.abs() < 9.0e15 {
                serde_json::Value::from(*n as i64)
            } else {
                serde_json::Value::from(*n)
            }
        }
        Some(Kind::StringValue(s)) => serde_json::Value::String(s.clone()),
        Some(Kind::ListValue(l)) => {
            serde_json::Value::Array(l.values.iter().map(value_to_json).collect())
        }
        Some(Kind::StructValue(s)) => struct_to_json(s),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::testing::entry;
    use crate::workload_api::tests::{Harness, Options, web_entry};

    fn parse(args: &[&str]) -> Cli {
        let args = normalize_flags(args.iter().map(OsString::from));
        Cli::try_parse_from(args).unwrap()
    }

    async fn run_args(args: &[&str]) -> (Result<(), CliError>, String) {
        let mut out = Vec::new();
        let result = run(parse(args), None, &mut out).await;
        (result, String::from_utf8(out).unwrap())
    }

    #[test]
    fn normalizes_spire_style_flags() {
        let got = normalize_flags(
            [
                "sigil-agent",
                "api",
                "fetch",
                "jwt",
                "-audience",
                "a",
                "-spiffeID=spiffe://x/y",
                "-h",
                "-1",
                "--",
                "-keep",
            ]
            .iter()
            .map(OsString::from),
        );
        let got: Vec<&str> = got.iter().map(|s| s.to_str().unwrap()).collect();
        assert_eq!(
            got,
            [
                "sigil-agent",
                "api",
                "fetch",
                "jwt",
                "--audience",
                "a",
                "--spiffeID=spiffe://x/y",
                "-h",
                "-1",
                "--",
                "-keep"
            ]
        );
        let cli = parse(&[
            "sigil-agent",
            "api",
            "fetch",
            "jwt",
            "-audience",
            "a",
            "-audience=b",
            "-socketPath",
            "/s",
        ]);
        let Command::Api {
            command:
                ApiCommand::Fetch {
                    command: FetchCommand::Jwt(args),
                },
        } = cli.command
        else {
            panic!("wrong command");
        };
        assert_eq!(args.audience, ["a", "b"]);
        assert_eq!(args.call.socket.socket_path, Some(PathBuf::from("/s")));
        assert_eq!(args.call.timeout, Duration::from_secs(5));
    }

    #[test]
    fn socket_path_precedence() {
        let none = SocketArgs { socket_path: None };
        let flag = SocketArgs {
            socket_path: Some("/flag.sock".into()),
        };
        assert_eq!(
            socket_path(&flag, Some("unix:///env.sock")).unwrap(),
            PathBuf::from("/flag.sock")
        );
        assert_eq!(
            socket_path(&none, Some("unix:///env.sock")).unwrap(),
            PathBuf::from("/env.sock")
        );
        assert_eq!(
            socket_path(&none, Some("unix:/env.sock")).unwrap(),
            PathBuf::from("/env.sock")
        );
        assert_eq!(
            socket_path(&none, None).unwrap(),
            PathBuf::from(DEFAULT_SOCKET_PATH)
        );
        for bad in ["tcp://127.0.0.1:1", "unix://host/x", "/bare/path"] {
            assert!(
                matches!(socket_path(&none, Some(bad)), Err(CliError::BadEndpoint(_))),
                "{bad}"
            );
        }
    }

    #[tokio::test]
    async fn fetch_x509_prints_and_writes_files() {
        let h = Harness::start(Options::default()).await;
        let mut web = web_entry();
        web.hint = "internal".into();
        h.cache.upsert_entries(vec![web]);
        h.cache
            .set_svid("web", h.ca.svid("spiffe://example.org/web"))
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let socket = h.socket.to_str().unwrap().to_owned();
        let write = dir.path().to_str().unwrap().to_owned();

        let (result, out) = run_args(&[
            "sigil-agent",
            "api",
            "fetch",
            "x509",
            "-socketPath",
            &socket,
            "-write",
            &write,
        ])
        .await;
        result.unwrap();
        assert!(out.starts_with("Received 1 svid after "), "{out}");
        assert!(
            out.contains("SPIFFE ID:\t\tspiffe://example.org/web"),
            "{out}"
        );
        assert!(out.contains("Hint:\t\t\tinternal"), "{out}");
        assert!(out.contains("SVID Valid Until:"), "{out}");
        assert!(out.contains("CA #1 Valid After:"), "{out}");

        let key = dir.path().join("svid.0.key");
        assert_eq!(
            std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert!(
            std::fs::read_to_string(&key)
                .unwrap()
                .starts_with("-----BEGIN PRIVATE KEY-----")
        );
        let pem = std::fs::read_to_string(dir.path().join("svid.0.pem")).unwrap();
        assert_eq!(pem.matches("BEGIN CERTIFICATE").count(), 1);
        let bundle = std::fs::read_to_string(dir.path().join("bundle.0.pem")).unwrap();
        assert_eq!(bundle, pem_encode("CERTIFICATE", &h.ca.der()));

        let (result, out) = run_args(&[
            "sigil-agent",
            "api",
            "fetch",
            "x509",
            "-socketPath",
            &socket,
            "-output",
            "json",
        ])
        .await;
        result.unwrap();
        let json: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(json["svids"][0]["spiffe_id"], "spiffe://example.org/web");
        h.stop().await;
    }

    #[tokio::test]
    async fn jwt_fetch_bundle_and_validate() {
        let h = Harness::start(Options::default()).await;
        h.cache.upsert_entries(vec![web_entry()]);
        let socket = h.socket.to_str().unwrap().to_owned();

        let (result, out) = run_args(&[
            "sigil-agent",
            "api",
            "fetch",
            "jwt",
            "-audience",
            "db",
            "-socketPath",
            &socket,
        ])
        .await;
        result.unwrap();
        let token = out.lines().nth(1).unwrap().trim().to_owned();
        assert_eq!(out.lines().next(), Some("token(spiffe://example.org/web):"));

        let (result, out) = run_args(&[
            "sigil-agent",
            "api",
            "validate",
            "jwt",
            "-audience",
            "db",
            "-svid",
            &token,
            "-socketPath",
            &socket,
        ])
        .await;
        result.unwrap();
        assert!(
            out.starts_with("SVID is valid.\nSPIFFE ID : spiffe://example.org/web\n"),
            "{out}"
        );
        assert!(out.contains("\"aud\":[\"db\"]"), "{out}");

        let (result, _) = run_args(&[
            "sigil-agent",
            "api",
            "validate",
            "jwt",
            "-audience",
            "x",
            "-svid",
            &token,
            "-socketPath",
            &socket,
        ])
        .await;
        let err = result.unwrap_err().to_string();
        assert!(
            err.starts_with("validating JWT-SVID: expected audience"),
            "{err}"
        );

        let (result, out) = run_args(&[
            "sigil-agent",
            "api",
            "fetch",
            "jwtbundle",
            "-socketPath",
            &socket,
        ])
        .await;
        result.unwrap();
        assert!(
            out.starts_with("bundle(spiffe://example.org):\n\t{\"keys\":[{"),
            "{out}"
        );
        h.stop().await;
    }

    #[tokio::test]
    async fn no_identity_is_a_clear_error() {
        let h = Harness::start(Options::default()).await;
        h.cache.upsert_entries(vec![entry(
            "x",
            "spiffe://example.org/x",
            &["unix:uid:4294967294"],
            1,
        )]);
        let socket = h.socket.to_str().unwrap().to_owned();
        let (result, _) = run_args(&[
            "sigil-agent",
            "api",
            "fetch",
            "x509",
            "-socketPath",
            &socket,
        ])
        .await;
        assert_eq!(
            result.unwrap_err().to_string(),
            "fetching X509-SVID: no identity issued (PermissionDenied)"
        );
        // The agent still counts as healthy: it answered.
        let (result, out) = run_args(&["sigil-agent", "healthcheck", "-socketPath", &socket]).await;
        result.unwrap();
        assert_eq!(out, "Agent is healthy.\n");
        h.stop().await;

        let (result, _) = run_args(&["sigil-agent", "healthcheck", "-socketPath", &socket]).await;
        assert!(result.is_err(), "nothing listening");
    }

    /// A flag that would be ignored is refused before anything is dialled.
    #[tokio::test]
    async fn healthcheck_shallow_is_refused() {
        let (result, out) = run_args(&[
            "sigil-agent",
            "healthcheck",
            "-shallow",
            "-socketPath",
            "/nonexistent/api.sock",
        ])
        .await;
        let err = result.unwrap_err().to_string();
        assert!(err.starts_with("-shallow is not supported"), "{err}");
        assert_eq!(out, "");
    }

    #[tokio::test]
    async fn watch_prints_each_update() {
        let h = Harness::start(Options::default()).await;
        h.cache.upsert_entries(vec![web_entry()]);
        h.cache
            .set_svid("web", h.ca.svid("spiffe://example.org/web"))
            .unwrap();
        let socket = h.socket.to_str().unwrap().to_owned();
        let cli = parse(&["sigil-agent", "api", "watch", "-socketPath", &socket]);
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let watcher = tokio::spawn(async move {
            let mut out = ChannelWriter(tx, Vec::new());
            run(cli, None, &mut out).await
        });
        let first = rx.recv().await.unwrap();
        assert!(first.starts_with("Received 1 svid after"), "{first}");
        h.cache
            .set_svid("web", h.ca.svid("spiffe://example.org/web"))
            .unwrap();
        let second = rx.recv().await.unwrap();
        assert!(second.starts_with("Received 1 svid after"), "{second}");
        h.cache.remove_entries(["web"]);
        let err = watcher.await.unwrap().unwrap_err();
        assert_eq!(
            err.to_string(),
            "watching X509-SVIDs: no identity issued (PermissionDenied)"
        );
        h.stop().await;
    }

    /// Sends each flushed chunk of output (one watch update) to the test.
    struct ChannelWriter(tokio::sync::mpsc::UnboundedSender<String>, Vec<u8>);

    impl Write for ChannelWriter {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.1.extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            let chunk = String::from_utf8_lossy(&std::mem::take(&mut self.1)).into_owned();
            let _ = self.0.send(chunk);
            Ok(())
        }
    }

    #[test]
    fn run_flags_use_spire_spellings() {
        let args = normalize_flags(
            [
                "sigil-agent",
                "run",
                "-config",
                "a.conf",
                "-joinToken",
                "tok",
                "-serverPort=9",
                "-trustBundle",
                "b.pem",
                "-expandEnv",
            ]
            .map(OsString::from),
        );
        let Command::Run(run) = Cli::try_parse_from(args).unwrap().command else {
            panic!("not run");
        };
        assert_eq!(run.config, PathBuf::from("a.conf"));
        let overrides = run.overrides();
        assert_eq!(
            overrides.join_token.as_ref().map(|t| t.expose()),
            Some("tok")
        );
        assert_eq!(overrides.server_port.as_deref(), Some("9"));
        assert_eq!(overrides.trust_bundle.as_deref(), Some("b.pem"));
        assert!(overrides.expand_env);
    }

    #[test]
    fn run_with_bad_config_exits_64_before_starting() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.conf");
        std::fs::write(&path, "agent { data_dir = 3 }").unwrap();
        let args = RunArgs {
            config: path,
            expand_env: false,
            data_dir: None,
            log_level: None,
            log_format: None,
            server_address: None,
            server_port: None,
            socket_path: None,
            trust_domain: None,
            trust_bundle: None,
            join_token: None,
        };
        assert_eq!(run_agent(&args), ExitCode::from(EXIT_USAGE));
        let missing = RunArgs {
            config: dir.path().join("missing.conf"),
            ..args
        };
        assert_eq!(run_agent(&missing), ExitCode::from(EXIT_USAGE));
    }
    #[test]
    fn validate_accepts_a_good_config_and_reports_a_bad_one_with_its_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.conf");
        let good = r#"agent {
  data_dir = "/var/lib/sigil-agent"
  server_address = "spire-server.spire"
  trust_domain = "example.org"
  trust_bundle_path = "/run/spire/bundle/bundle.crt"
}
plugins {
  NodeAttestor "k8s_psat" {
    plugin_data { cluster = "demo" }
  }
  KeyManager "memory" {}
  WorkloadAttestor "k8s" {
    plugin_data { node_name_env = "MY_NODE_NAME" }
  }
}
"#;
        std::fs::write(&path, good).unwrap();
        let args = normalize_flags(
            ["sigil-agent", "validate", "-config", path.to_str().unwrap()].map(OsString::from),
        );
        let Command::Validate(args) = Cli::try_parse_from(args).unwrap().command else {
            panic!("not validate");
        };
        let (mut out, mut err) = (Vec::new(), Vec::new());
        assert_eq!(
            validate_config(&args, &mut out, &mut err),
            ExitCode::SUCCESS
        );
        assert_eq!(String::from_utf8(out).unwrap(), "Configuration is valid.\n");
        assert!(err.is_empty());

        // The plugin is misspelled on line 8.
        std::fs::write(&path, good.replace("\"k8s_psat\"", "\"k8s_sat\"")).unwrap();
        let (mut out, mut err) = (Vec::new(), Vec::new());
        assert_eq!(
            validate_config(&args, &mut out, &mut err),
            ExitCode::from(EXIT_USAGE)
        );
        assert!(out.is_empty());
        let err = String::from_utf8(err).unwrap();
        assert!(
            err.contains("agent.conf:8:") && err.contains("k8s_sat"),
            "{err}"
        );
    }
}
