//! `logger get|set|reset [-socketPath <admin socket>]`: the running agent's log level, through
//! SPIRE's agent logger API on its admin socket ([`crate::logger_api`]), with `spire-agent
//! logger`'s flags, default socket and output.

use std::io::Write;
use std::path::PathBuf;

use clap::{Args, Subcommand};
use sigil_common::logger_output;
use sigil_proto::spire::api::agent::logger::v1 as pb;
use sigil_proto::spire::api::agent::logger::v1::logger_client::LoggerClient;

use super::CliError;

/// `spire-agent logger`'s default `-socketPath`.
const DEFAULT_ADMIN_SOCKET_PATH: &str = "/tmp/spire-agent/private/admin.sock";

#[derive(Debug, Subcommand)]
pub(super) enum LoggerCommand {
    /// Gets the logger details.
    Get(LoggerArgs),
    /// Sets the log level.
    Set(SetArgs),
    /// Resets the log level to the launch level.
    Reset(LoggerArgs),
}

#[derive(Debug, Args)]
pub(super) struct LoggerArgs {
    /// Path to the agent's admin socket (`admin_socket_path`).
    #[arg(long = "socketPath", default_value = DEFAULT_ADMIN_SOCKET_PATH)]
    socket_path: PathBuf,
    /// `pretty` (default) or `json` (SPIRE's `spire.api.types.Logger`).
    #[arg(long = "output", default_value = "pretty", value_parser = ["pretty", "json"])]
    output: String,
}

#[derive(Debug, Args)]
pub(super) struct SetArgs {
    /// The new log level, one of (panic, fatal, error, warn, info, debug, trace).
    #[arg(long = "level")]
    level: Option<String>,
    #[command(flatten)]
    args: LoggerArgs,
}

pub(super) async fn execute(
    command: LoggerCommand,
    out: &mut (dyn Write + Send),
) -> Result<(), CliError> {
    let rpc = |what| move |status| CliError::Rpc { what, status };
    let (logger, args) = match command {
        LoggerCommand::Get(args) => {
            let logger = client(&args)
                .await?
                .get_logger(pb::GetLoggerRequest {})
                .await
                .map_err(rpc("error fetching logger"))?;
            (logger, args)
        }
        LoggerCommand::Set(SetArgs { level, args }) => {
            let level =
                logger_output::parse_level_flag(level.as_deref()).map_err(CliError::Usage)?;
            let logger = client(&args)
                .await?
                .set_log_level(pb::SetLogLevelRequest {
                    new_level: level as i32,
                })
                .await
                .map_err(rpc("failed to set log level"))?;
            (logger, args)
        }
        LoggerCommand::Reset(args) => {
            let logger = client(&args)
                .await?
                .reset_log_level(pb::ResetLogLevelRequest {})
                .await
                .map_err(rpc("failed to reset logger"))?;
            (logger, args)
        }
    };
    let logger = logger.into_inner();
    if args.output == "json" {
        writeln!(out, "{}", logger_output::json(&logger))?;
    } else {
        writeln!(out, "{}", logger_output::pretty(&logger))?;
    }
    Ok(())
}

async fn client(args: &LoggerArgs) -> Result<LoggerClient<tonic::transport::Channel>, CliError> {
    let channel = sigil_common::uds::channel(&args.socket_path)
        .await
        .map_err(|e| {
            CliError::Usage(format!(
                "cannot connect to the admin socket {}: {e}",
                args.socket_path.display()
            ))
        })?;
    Ok(LoggerClient::new(channel))
}
