//! The `sigil-agent` command line, with SPIRE's spellings: single-dash camelCase flags
//! (`-socketPath`, `-spiffeID`), normalized to clap's `--flag` before parsing, so both
//! `-flag value` and `-flag=value` work.
//!
//! - `commands`: the command tree, and `run` and `validate`, which read the configuration;
//!   `run` is wired in [`crate::run`].
//! - `api`: `api fetch x509|jwt|jwtbundle`, `api validate jwt`, `api watch` and `healthcheck`,
//!   the Workload API clients.
//! - `logger`: `logger get|set|reset`, the running agent's log level over its admin socket.
//! - `render`: what those print and write.

mod api;
mod commands;
mod logger;
mod render;

use std::ffi::{OsStr, OsString};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{CommandFactory, Parser};

pub use commands::EXIT_USAGE;

use crate::workload_api::client::ClientError;
use commands::{ApiCommand, Cli, Command, FetchCommand, ValidateCommand};

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
    #[error("{0}")]
    Usage(String),
    #[error("`run`, `validate` and `helper` are started from `main`, not from here")]
    RunNotWired,
    #[error(
        "-{0} is not supported: the health check is always the Workload API answering, and a \
         flag is never accepted and ignored"
    )]
    Unsupported(&'static str),
}

/// Entry point of the binary.
pub fn main() -> ExitCode {
    let mut args: Vec<OsString> = std::env::args_os().collect();
    // Multi-call: run through a link named `spiffe-helper`, this is `sigil-agent helper`.
    let invoked_as = args
        .first()
        .map(|a| Path::new(a).file_name().map(OsStr::to_os_string));
    if invoked_as == Some(Some(OsString::from(crate::helper::SPIFFE_HELPER_NAME))) {
        args.insert(1, OsString::from("helper"));
    }
    let args = sigil_common::cli_args::spire_style(args, &Cli::command());
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
    // The environment is read here, at the edge, and nowhere below.
    let env_socket = std::env::var("SPIFFE_ENDPOINT_SOCKET").ok();
    match &cli.command {
        Command::Run(args) => return commands::run_agent(args),
        Command::Validate(args) => {
            return commands::validate_config(args, &mut std::io::stdout(), &mut std::io::stderr());
        }
        Command::Helper(args) => return commands::run_helper(args, env_socket.as_deref()),
        _ => {}
    }
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

async fn run(
    cli: Cli,
    env_socket: Option<&str>,
    out: &mut (dyn Write + Send),
) -> Result<(), CliError> {
    match cli.command {
        // Handled by `main` before this runtime exists (it needs its own).
        Command::Run(_) | Command::Validate(_) | Command::Helper(_) => Err(CliError::RunNotWired),
        Command::Healthcheck(args) => api::healthcheck(args, env_socket, out).await,
        Command::Api { command } => match command {
            ApiCommand::Fetch {
                command: FetchCommand::X509(args),
            } => api::fetch_x509(args, env_socket, out).await,
            ApiCommand::Fetch {
                command: FetchCommand::Jwt(args),
            } => api::fetch_jwt(args, env_socket, out).await,
            ApiCommand::Fetch {
                command: FetchCommand::Jwtbundle(args),
            } => api::fetch_jwt_bundles(args, env_socket, out).await,
            ApiCommand::Validate {
                command: ValidateCommand::Jwt(args),
            } => api::validate_jwt(args, env_socket, out).await,
            ApiCommand::Watch(args) => api::watch(args, env_socket, out).await,
        },
        Command::Logger { command } => logger::execute(command, out).await,
    }
}

#[cfg(test)]
mod tests {
    use std::ffi::OsString;

    use sigil_common::cli_args::spire_style;

    use super::*;

    pub(super) fn parse(args: &[&str]) -> Cli {
        let args = spire_style(args.iter().map(OsString::from), &Cli::command());
        Cli::try_parse_from(args).unwrap()
    }

    pub(super) async fn run_args(args: &[&str]) -> (Result<(), CliError>, String) {
        let mut out = Vec::new();
        let result = run(parse(args), None, &mut out).await;
        (result, String::from_utf8(out).unwrap())
    }

    #[test]
    fn normalizes_spire_style_flags() {
        let got = spire_style(
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
            &Cli::command(),
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
}
