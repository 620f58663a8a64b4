//! The `sigil-server` command line: `run` starts the server; every other command is a client
//! of the admin API on the server's Unix socket. SPIRE's spelling is accepted verbatim
//! (`entry create -spiffeID ... -selector k8s:ns:payments`).

mod agent;
mod bundle;
pub(crate) mod client;
mod entry;
mod federation;
mod localauthority;
mod logger;
mod misc;
mod output;
mod spire_only;
mod types;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, CommandFactory, Parser, Subcommand};

use crate::ca::upstream::UpstreamAuthority;
use crate::config::{ConfigError, ServerConfig, ServerOverrides, SharedFlags};

/// SPIRE's default admin socket, the server's default, so commands work without `-socketPath`.
pub use crate::config::DEFAULT_SOCKET_PATH;

/// Exit code for bad configuration or usage (sysexits EX_USAGE), before anything starts.
pub const EXIT_USAGE: u8 = 64;

#[derive(Parser, Debug)]
#[command(
    name = "sigil-server",
    version,
    about = "Sigil SPIFFE server",
    propagate_version = true
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Runs the server.
    Run(RunArgs),
    /// Checks a configuration file and exits.
    Validate(ConfigArgs),
    /// Checks that the server is up and serving.
    Healthcheck(misc::HealthcheckArgs),
    /// Manages registration entries.
    #[command(subcommand)]
    Entry(entry::EntryCommand),
    /// Manages join tokens.
    #[command(subcommand)]
    Token(misc::TokenCommand),
    /// Shows our trust bundle; manages federated bundles.
    #[command(subcommand)]
    Bundle(misc::BundleCommand),
    /// Mints an X.509-SVID.
    #[command(subcommand)]
    X509(misc::X509Command),
    /// Mints a JWT-SVID.
    #[command(subcommand)]
    Jwt(misc::JwtCommand),
    /// Manages attested agents.
    #[command(subcommand)]
    Agent(agent::AgentCommand),
    /// Operator control of the local authorities: prepare, activate, taint, revoke.
    #[command(subcommand)]
    Localauthority(localauthority::LocalAuthorityCommand),
    /// Gets, sets or resets the server's log level at run time.
    #[command(subcommand)]
    Logger(logger::LoggerCommand),
    /// Manages federation relationships kept in the datastore.
    #[command(subcommand)]
    Federation(federation::FederationCommand),
}

#[derive(Args, Debug)]
struct ConfigArgs {
    /// Path to the HCL configuration file.
    #[arg(long = "config", default_value = "conf/server/server.conf")]
    config: PathBuf,
    /// Expand $VARIABLES in the configuration file.
    #[arg(long = "expandEnv")]
    expand_env: bool,
}

#[derive(Args, Debug)]
struct RunArgs {
    #[command(flatten)]
    config: ConfigArgs,
    /// The trust domain that this server belongs to (overrides the config file).
    #[arg(long = "trustDomain")]
    trust_domain: Option<String>,
    /// A directory the server can use for its runtime data (overrides the config file).
    #[arg(long = "dataDir")]
    data_dir: Option<String>,
    /// DEBUG, INFO, WARN or ERROR (overrides the config file).
    #[arg(long = "logLevel")]
    log_level: Option<String>,
    /// `text` or `json` (overrides the config file).
    #[arg(long = "logFormat")]
    log_format: Option<String>,
    /// IP address or DNS name of the server's agent API (overrides the config file).
    #[arg(long = "bindAddress")]
    bind_address: Option<String>,
    /// Port number of the server's agent API (overrides the config file).
    #[arg(long = "serverPort")]
    server_port: Option<String>,
    /// Path to bind the admin API socket to (overrides the config file).
    #[arg(long = "socketPath")]
    socket_path: Option<String>,
}

impl RunArgs {
    fn overrides(&self) -> ServerOverrides {
        ServerOverrides {
            shared: SharedFlags {
                trust_domain: self.trust_domain.clone(),
                data_dir: self.data_dir.clone(),
                socket_path: self.socket_path.clone(),
                log_level: self.log_level.clone(),
                log_format: self.log_format.clone(),
                expand_env: self.config.expand_env,
            },
            bind_address: self.bind_address.clone(),
            server_port: self.server_port.clone(),
        }
    }
}

/// Output format shared by the client commands (`-output json` for machines).
#[derive(Args, Debug, Clone)]
pub(crate) struct OutputArgs {
    /// Path to the server's admin socket.
    #[arg(long = "socketPath", default_value = DEFAULT_SOCKET_PATH)]
    pub socket_path: PathBuf,
    /// `pretty` (default) or `json`: SPIRE's JSON (protojson of its API types).
    #[arg(long = "output", default_value = "pretty", value_parser = ["pretty", "json"])]
    pub output: String,
}

impl OutputArgs {
    pub(crate) fn json(&self) -> bool {
        self.output == "json"
    }
}

pub fn main() -> ExitCode {
    let args = sigil_common::cli_args::spire_style(std::env::args_os(), &Cli::command());
    if let Some(refusal) = sigil_common::cli_args::spire_only_flag(&args, spire_only::FLAGS) {
        eprintln!("Error: {refusal}");
        return ExitCode::from(EXIT_USAGE);
    }
    let cli = match Cli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(e) => {
            let code = if e.use_stderr() { EXIT_USAGE } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    match cli.command {
        Command::Run(args) => run(args),
        Command::Validate(args) => validate(args),
        command => client_command(command),
    }
}

fn load_config(
    path: &std::path::Path,
    overrides: &ServerOverrides,
) -> Result<ServerConfig, ExitCode> {
    ServerConfig::load(path, overrides).map_err(|e: ConfigError| {
        eprintln!("Error: {e}");
        ExitCode::from(EXIT_USAGE)
    })
}

fn run(args: RunArgs) -> ExitCode {
    let config = match load_config(&args.config.config, &args.overrides()) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let upstream = match load_upstream(&config) {
        Ok(u) => u,
        Err(code) => return code,
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("Error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(crate::run::run(config, upstream)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %format!("{e:#}"), "server stopped");
            eprintln!("Error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Reads and checks the `UpstreamAuthority "disk"` files: unusable ones are a config error.
fn load_upstream(config: &ServerConfig) -> Result<Option<UpstreamAuthority>, ExitCode> {
    let Some(disk) = &config.upstream_authority else {
        return Ok(None);
    };
    UpstreamAuthority::load(disk, sigil_common::time::unix_now())
        .map(Some)
        .map_err(|e| {
            eprintln!("Error: plugins.UpstreamAuthority.disk: {e}");
            ExitCode::from(EXIT_USAGE)
        })
}

fn validate(args: ConfigArgs) -> ExitCode {
    let overrides = ServerOverrides {
        shared: SharedFlags {
            expand_env: args.expand_env,
            ..SharedFlags::default()
        },
        ..ServerOverrides::default()
    };
    match load_config(&args.config, &overrides).and_then(|c| load_upstream(&c).map(|_| c)) {
        Ok(config) => {
            for warning in &config.warnings {
                eprintln!("Warning: {warning}");
            }
            println!("Configuration is valid.");
            ExitCode::SUCCESS
        }
        Err(code) => code,
    }
}

fn client_command(command: Command) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("Error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        match command {
            Command::Healthcheck(a) => misc::healthcheck(a).await,
            Command::Entry(c) => entry::execute(c).await,
            Command::Token(c) => misc::token(c).await,
            Command::Bundle(c) => misc::bundle(c).await,
            Command::X509(c) => misc::x509(c).await,
            Command::Jwt(c) => misc::jwt(c).await,
            Command::Agent(c) => agent::execute(c).await,
            Command::Localauthority(c) => localauthority::execute(c).await,
            Command::Logger(c) => logger::execute(c).await,
            Command::Federation(c) => federation::execute(c).await,
            Command::Run(_) | Command::Validate(_) => unreachable!("handled before the runtime"),
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("Error: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every flag of every command has a help line (`--help` is useless otherwise).
    #[test]
    fn every_flag_has_a_help_line() {
        let missing = sigil_common::cli_args::flags_without_help(&Cli::command());
        assert!(missing.is_empty(), "flags without a help line: {missing:?}");
    }
}
