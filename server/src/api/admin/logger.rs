//! The server's log level at run time (SPIRE's `server/logger/v1`): get, set, reset to the level the
//! server was started with.

use sigil_common::logging::LogControl;
use sigil_proto::sigil::admin::v1 as pb;
use sigil_proto::spire::api::types::{LogLevel, Logger as ApiLogger};
use tonic::Status;

use crate::api::audit;

#[derive(Default)]
pub(super) struct Logger {
    /// Set by [`super::AdminApi::with_log_control`]; without it (unit tests) every call is
    /// `Unavailable`.
    control: Option<LogControl>,
}

impl Logger {
    pub(super) fn set_control(&mut self, control: LogControl) {
        self.control = Some(control);
    }

    fn control(&self) -> Result<&LogControl, Status> {
        self.control
            .as_ref()
            .ok_or_else(|| Status::unavailable("the log level cannot be changed in this process"))
    }

    pub(super) async fn get(&self, _: pb::GetLoggerRequest) -> Result<ApiLogger, Status> {
        Ok(self.control()?.logger())
    }

    pub(super) async fn set(&self, req: pb::SetLogLevelRequest) -> Result<ApiLogger, Status> {
        let level = LogLevel::try_from(req.new_level)
            .map_err(|_| Status::invalid_argument("invalid new_level"))?;
        let logger = self
            .control()?
            .set(level)
            .map_err(Status::invalid_argument)?;
        audit::record(|t| t.log_level = Some(level.as_str_name()));
        tracing::info!(new_level = level.as_str_name(), "log level changed");
        Ok(logger)
    }

    pub(super) async fn reset(&self, _: pb::ResetLogLevelRequest) -> Result<ApiLogger, Status> {
        let logger = self.control()?.reset().map_err(Status::internal)?;
        if let Ok(level) = LogLevel::try_from(logger.current_level) {
            audit::record(|t| t.log_level = Some(level.as_str_name()));
        }
        tracing::info!("log level reset to the launch level");
        Ok(logger)
    }
}
