//! `logger get|set|reset`: the running server's log level, through the admin socket (SPIRE's
//! `spire-server logger`).

use clap::{Args, Subcommand};
use sigil_common::logger_output;
use sigil_proto::sigil::admin::v1 as pb;

use super::OutputArgs;
use super::client::{CliError, CliResult, connect};

#[derive(Subcommand, Debug)]
pub(super) enum LoggerCommand {
    /// Gets the logger details.
    Get(OutputOnly),
    /// Sets the log level.
    Set(SetArgs),
    /// Resets the log level to the launch level.
    Reset(OutputOnly),
}

#[derive(Args, Debug)]
pub(super) struct OutputOnly {
    #[command(flatten)]
    out: OutputArgs,
}

#[derive(Args, Debug)]
pub(super) struct SetArgs {
    /// The new log level, one of (panic, fatal, error, warn, info, debug, trace).
    #[arg(long = "level")]
    level: Option<String>,
    #[command(flatten)]
    out: OutputArgs,
}

pub(super) async fn execute(c: LoggerCommand) -> CliResult {
    let (logger, out) = match c {
        LoggerCommand::Get(a) => {
            let mut client = connect(&a.out.socket_path).await?;
            let logger = client
                .get_logger(pb::GetLoggerRequest {})
                .await
                .map_err(|s| CliError(format!("error fetching logger: {}", CliError::from(s))))?;
            (logger, a.out)
        }
        LoggerCommand::Set(a) => {
            let level = logger_output::parse_level_flag(a.level.as_deref()).map_err(CliError)?;
            let mut client = connect(&a.out.socket_path).await?;
            let logger = client
                .set_log_level(pb::SetLogLevelRequest {
                    new_level: level as i32,
                })
                .await
                .map_err(|s| CliError(format!("failed to set log level: {}", CliError::from(s))))?;
            (logger, a.out)
        }
        LoggerCommand::Reset(a) => {
            let mut client = connect(&a.out.socket_path).await?;
            let logger = client
                .reset_log_level(pb::ResetLogLevelRequest {})
                .await
                .map_err(|s| CliError(format!("failed to reset logger: {}", CliError::from(s))))?;
            (logger, a.out)
        }
    };
    let logger = logger.into_inner();
    if out.json() {
        println!("{}", logger_output::json(&logger));
    } else {
        println!("{}", logger_output::pretty(&logger));
    }
    Ok(())
}
