//! The command tree, in SPIRE's spellings (see [`super`]), and the two commands that read the
//! configuration: `run` and `validate`. Bad configuration exits 64 before anything starts.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::config::{AgentConfig, AgentOverrides, JoinToken, SharedFlags};
use crate::helper::{HelperConfig, HelperFlags};
use crate::workload_api::DEFAULT_SOCKET_PATH;

#[derive(Debug, Parser)]
#[command(
    name = "sigil-agent",
    version,
    about = "Sigil agent: SPIFFE workload identity",
    after_help = format!(
        "The Workload API socket is {DEFAULT_SOCKET_PATH} unless -socketPath (or, for `api` \
         and `healthcheck`, SPIFFE_ENDPOINT_SOCKET) says otherwise."
    )
)]
pub(super) struct Cli {
    #[command(subcommand)]
    pub(super) command: Command,
}

#[derive(Debug, Subcommand)]
pub(super) enum Command {
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
    /// Keeps SVIDs and bundles in files for software that does not speak SPIFFE: a drop-in
    /// for spiffe-helper, with its flags and configuration file (also run as `spiffe-helper`
    /// through a link of that name).
    Helper(HelperArgs),
    /// Gets, sets or resets the running agent's log level through its admin socket
    /// (`admin_socket_path`).
    Logger {
        #[command(subcommand)]
        command: super::logger::LoggerCommand,
    },
}

/// `helper` flags: spiffe-helper's.
#[derive(Debug, Args)]
pub(super) struct HelperArgs {
    /// Path to spiffe-helper's HCL configuration file.
    #[arg(long = "config", default_value = "helper.conf")]
    pub(super) config: PathBuf,
    /// Overrides `daemon_mode`: `-daemon-mode=false` writes the files once and exits.
    #[arg(
        long = "daemon-mode",
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "true",
        value_parser = parse_go_bool
    )]
    pub(super) daemon_mode: Option<bool>,
    /// Prints the version and exits.
    #[arg(long = "version")]
    pub(super) version: bool,
}

/// A boolean as Go's `flag` package reads one (`strconv.ParseBool`).
fn parse_go_bool(s: &str) -> Result<bool, String> {
    match s {
        "1" | "t" | "T" | "true" | "TRUE" | "True" => Ok(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" => Ok(false),
        _ => Err(format!("{s:?} is not a boolean")),
    }
}

/// `sigil-agent helper` (or `spiffe-helper`): bad configuration exits 64 before anything
/// starts; a failed one-shot fetch exits 1.
pub(super) fn run_helper(args: &HelperArgs, env_socket: Option<&str>) -> ExitCode {
    if args.version {
        println!(
            "{} (sigil-agent helper, spiffe-helper compatible)",
            env!("CARGO_PKG_VERSION")
        );
        return ExitCode::SUCCESS;
    }
    sigil_common::logging::init("sigil_agent", "info", false);
    let flags = HelperFlags {
        daemon_mode: args.daemon_mode,
    };
    let config = match HelperConfig::load(&args.config, flags, env_socket) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    for warning in &config.warnings {
        tracing::warn!("{warning}");
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("starting the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(crate::helper::run::run(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %format!("{e:#}"), "sigil-agent helper failed");
            ExitCode::FAILURE
        }
    }
}

/// `validate` flags: the file and whether to expand `$VARIABLES` in it, as `run` reads it.
#[derive(Debug, Args)]
pub(super) struct ValidateArgs {
    /// Path to the HCL configuration file.
    #[arg(long = "config", default_value = "conf/agent/agent.conf")]
    pub(super) config: PathBuf,
    /// Expand $VARIABLES in the configuration file.
    #[arg(long = "expandEnv")]
    pub(super) expand_env: bool,
}

/// `run` flags, SPIRE's spellings; they override the config file.
#[derive(Debug, Args)]
pub(super) struct RunArgs {
    /// Path to the HCL configuration file.
    #[arg(long = "config", default_value = "conf/agent/agent.conf")]
    pub(super) config: PathBuf,
    /// Expand $VARIABLES in the configuration file.
    #[arg(long = "expandEnv")]
    pub(super) expand_env: bool,
    /// A directory the agent can use for its runtime data (overrides the config file).
    #[arg(long = "dataDir")]
    pub(super) data_dir: Option<String>,
    /// DEBUG, INFO, WARN or ERROR (overrides the config file).
    #[arg(long = "logLevel")]
    pub(super) log_level: Option<String>,
    /// `text` or `json` (overrides the config file).
    #[arg(long = "logFormat")]
    pub(super) log_format: Option<String>,
    /// IP address or DNS name of the server (overrides the config file).
    #[arg(long = "serverAddress")]
    pub(super) server_address: Option<String>,
    /// Port number of the server (overrides the config file).
    #[arg(long = "serverPort")]
    pub(super) server_port: Option<String>,
    #[arg(long = "socketPath", help = format!(
        "Path to bind the Workload API socket to (overrides the config file; default \
         {DEFAULT_SOCKET_PATH})"
    ))]
    pub(super) socket_path: Option<String>,
    /// The trust domain that this agent belongs to (overrides the config file).
    #[arg(long = "trustDomain")]
    pub(super) trust_domain: Option<String>,
    /// Path to the server's CA bundle, to bootstrap trust (overrides the config file).
    #[arg(long = "trustBundle")]
    pub(super) trust_bundle: Option<String>,
    /// A join token from `sigil-server token generate` (used once).
    #[arg(long = "joinToken", hide_env_values = true)]
    pub(super) join_token: Option<String>,
}

impl RunArgs {
    pub(super) fn overrides(&self) -> AgentOverrides {
        AgentOverrides {
            shared: SharedFlags {
                trust_domain: self.trust_domain.clone(),
                data_dir: self.data_dir.clone(),
                socket_path: self.socket_path.clone(),
                log_level: self.log_level.clone(),
                log_format: self.log_format.clone(),
                expand_env: self.expand_env,
            },
            server_address: self.server_address.clone(),
            server_port: self.server_port.clone(),
            trust_bundle: self.trust_bundle.clone(),
            join_token: self.join_token.clone().map(JoinToken::new),
        }
    }
}

/// Exit code for bad configuration (sysexits EX_USAGE), before anything binds.
pub const EXIT_USAGE: u8 = 64;

/// `sigil-agent validate`: parses the config exactly as `run` does and binds nothing. Exits 0
/// when valid, 64 (like `run`) with the error on `err` otherwise.
pub(super) fn validate_config(
    args: &ValidateArgs,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> ExitCode {
    let overrides = AgentOverrides {
        shared: SharedFlags {
            expand_env: args.expand_env,
            ..SharedFlags::default()
        },
        ..AgentOverrides::default()
    };
    // A failed write to stdout/stderr cannot be reported anywhere; the exit code still is.
    match AgentConfig::load(&args.config, &overrides) {
        Ok(config) => {
            for warning in &config.warnings {
                let _ = writeln!(err, "Warning: {warning}");
            }
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
pub(super) fn run_agent(args: &RunArgs) -> ExitCode {
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
pub(super) enum ApiCommand {
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
pub(super) enum FetchCommand {
    /// Fetches the X509-SVIDs of the calling workload.
    X509(FetchX509Args),
    /// Fetches JWT-SVIDs for an audience.
    Jwt(FetchJwtArgs),
    /// Fetches the JWT bundles (JWKS per trust domain).
    Jwtbundle(FetchJwtBundleArgs),
}

#[derive(Debug, Subcommand)]
pub(super) enum ValidateCommand {
    /// Validates a JWT-SVID through the Workload API.
    Jwt(ValidateJwtArgs),
}

#[derive(Debug, Clone, Args)]
pub(super) struct SocketArgs {
    #[arg(long = "socketPath", help = format!(
        "Path to the Workload API socket (default: SPIFFE_ENDPOINT_SOCKET, else \
         {DEFAULT_SOCKET_PATH})"
    ))]
    pub(super) socket_path: Option<PathBuf>,
}

#[derive(Debug, Clone, Args)]
pub(super) struct CallArgs {
    #[command(flatten)]
    pub(super) socket: SocketArgs,
    /// How long to wait for the answer.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    pub(super) timeout: Duration,
}

#[derive(Debug, Args)]
pub(super) struct FetchX509Args {
    #[command(flatten)]
    pub(super) call: CallArgs,
    /// Writes svid.N.pem, svid.N.key and bundle.N.pem into this directory.
    #[arg(long)]
    pub(super) write: Option<PathBuf>,
    /// `json` prints the response as JSON.
    #[arg(long)]
    pub(super) output: Option<OutputFormat>,
}

#[derive(Debug, Args)]
pub(super) struct FetchJwtArgs {
    #[command(flatten)]
    pub(super) call: CallArgs,
    /// Audience of the JWT-SVID (repeatable).
    #[arg(long, required = true)]
    pub(super) audience: Vec<String>,
    /// Only the JWT-SVID for this SPIFFE ID.
    #[arg(long = "spiffeID")]
    pub(super) spiffe_id: Option<String>,
    /// `json` prints the response as JSON.
    #[arg(long)]
    pub(super) output: Option<OutputFormat>,
}

#[derive(Debug, Args)]
pub(super) struct FetchJwtBundleArgs {
    #[command(flatten)]
    pub(super) call: CallArgs,
    /// `json` prints the response as JSON.
    #[arg(long)]
    pub(super) output: Option<OutputFormat>,
}

#[derive(Debug, Args)]
pub(super) struct ValidateJwtArgs {
    #[command(flatten)]
    pub(super) call: CallArgs,
    /// The audience the token must carry.
    #[arg(long)]
    pub(super) audience: String,
    /// The JWT-SVID to validate.
    #[arg(long)]
    pub(super) svid: String,
    /// `json` prints the response as JSON.
    #[arg(long)]
    pub(super) output: Option<OutputFormat>,
}

#[derive(Debug, Args)]
pub(super) struct HealthcheckArgs {
    #[command(flatten)]
    pub(super) call: CallArgs,
    /// SPIRE's less stringent check: not supported, refused (the check is always the
    /// Workload API answering).
    #[arg(long)]
    pub(super) shallow: bool,
    /// Prints details.
    #[arg(long)]
    pub(super) verbose: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(super) enum OutputFormat {
    Pretty,
    Json,
}

#[cfg(test)]
mod tests {
    use std::ffi::OsString;

    use clap::CommandFactory;
    use sigil_common::cli_args::spire_style;

    use super::*;

    fn helper_args(args: &[&str]) -> Result<HelperArgs, clap::Error> {
        let args = spire_style(
            ["sigil-agent", "helper"]
                .iter()
                .chain(args)
                .map(OsString::from),
            &Cli::command(),
        );
        match Cli::try_parse_from(args)?.command {
            Command::Helper(args) => Ok(args),
            other => panic!("not helper: {other:?}"),
        }
    }

    /// Every flag of every command has a help line, and `--help` names the default socket.
    #[test]
    fn every_flag_has_a_help_line() {
        let missing = sigil_common::cli_args::flags_without_help(&Cli::command());
        assert!(missing.is_empty(), "flags without a help line: {missing:?}");
        let help = Cli::command().render_help().to_string();
        assert!(help.contains(DEFAULT_SOCKET_PATH), "{help}");
    }

    #[test]
    fn helper_takes_spiffe_helpers_flags() {
        let args = helper_args(&[]).unwrap();
        assert_eq!(args.config, PathBuf::from("helper.conf"));
        assert_eq!(args.daemon_mode, None);
        let args = helper_args(&["-config", "/etc/h.conf", "-daemon-mode=false"]).unwrap();
        assert_eq!(args.config, PathBuf::from("/etc/h.conf"));
        assert_eq!(args.daemon_mode, Some(false));
        for (flag, want) in [
            ("-daemon-mode", true),
            ("-daemon-mode=true", true),
            ("-daemon-mode=0", false),
            ("-daemon-mode=F", false),
            ("--daemon-mode=t", true),
        ] {
            assert_eq!(
                helper_args(&[flag]).unwrap().daemon_mode,
                Some(want),
                "{flag}"
            );
        }
        assert!(helper_args(&["-version"]).unwrap().version);
        // Go's flag package stops at `false` and ignores it; here it is an error, not ignored.
        assert!(helper_args(&["-daemon-mode", "false"]).is_err());
        assert!(helper_args(&["-daemon-mode=maybe"]).is_err());
        assert!(helper_args(&["-cofig", "x"]).is_err());
    }

    #[test]
    fn run_flags_use_spire_spellings() {
        let args = spire_style(
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
            &Cli::command(),
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
        assert!(overrides.shared.expand_env);
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
        let args = spire_style(
            ["sigil-agent", "validate", "-config", path.to_str().unwrap()].map(OsString::from),
            &Cli::command(),
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
