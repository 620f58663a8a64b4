//! SPIRE's agent logger API (`spire.api.agent.logger.v1.Logger`) on the agent's admin socket:
//! the agent's log level read, changed and reset at run time. Only the agent's own user (or
//! root) may call: the socket is already private ([`sigil_common::private_socket`]), and each
//! call's peer credentials are checked again.

use sigil_common::logging::LogControl;
use sigil_proto::spire::api::agent::logger::v1 as pb;
use sigil_proto::spire::api::agent::logger::v1::logger_server::{
    Logger as LoggerApi, LoggerServer,
};
use sigil_proto::spire::api::types::{LogLevel, Logger as ApiLogger};
use tonic::{Request, Response, Status};

use crate::endpoints::Peer;

/// The service, changing the level through `control`.
pub fn service(control: LogControl) -> LoggerServer<Logger> {
    LoggerServer::new(Logger {
        control,
        owner: nix::unistd::geteuid().as_raw(),
    })
}

pub struct Logger {
    control: LogControl,
    /// The agent's effective UID.
    owner: u32,
}

impl Logger {
    fn authorize<T>(&self, method: &str, req: &Request<T>) -> Result<(), Status> {
        let uid = req.extensions().get::<Peer>().map(|p| p.uid);
        if matches!(uid, Some(u) if u == self.owner || u == 0) {
            return Ok(());
        }
        tracing::warn!(method, peer_uid = ?uid, "logger call refused: caller is not the agent's user");
        Err(Status::permission_denied(
            "the logger service is only for the agent's own user",
        ))
    }
}

#[tonic::async_trait]
impl LoggerApi for Logger {
    async fn get_logger(
        &self,
        req: Request<pb::GetLoggerRequest>,
    ) -> Result<Response<ApiLogger>, Status> {
        self.authorize("GetLogger", &req)?;
        Ok(Response::new(self.control.logger()))
    }

    async fn set_log_level(
        &self,
        req: Request<pb::SetLogLevelRequest>,
    ) -> Result<Response<ApiLogger>, Status> {
        self.authorize("SetLogLevel", &req)?;
        let level = LogLevel::try_from(req.get_ref().new_level)
            .map_err(|_| Status::invalid_argument("invalid new_level"))?;
        let logger = self.control.set(level).map_err(Status::invalid_argument)?;
        tracing::info!(new_level = level.as_str_name(), "log level changed");
        Ok(Response::new(logger))
    }

    async fn reset_log_level(
        &self,
        req: Request<pb::ResetLogLevelRequest>,
    ) -> Result<Response<ApiLogger>, Status> {
        self.authorize("ResetLogLevel", &req)?;
        let logger = self.control.reset().map_err(Status::internal)?;
        tracing::info!("log level reset to the launch level");
        Ok(Response::new(logger))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A call whose connection has no peer (no credentials) is refused before anything
    /// changes; the level stays as launched.
    #[tokio::test]
    async fn a_caller_without_credentials_is_refused() {
        let control = sigil_common::logging::init("sigil_agent", "info", false);
        let logger = Logger {
            control: control.clone(),
            owner: nix::unistd::geteuid().as_raw(),
        };
        let refused = logger
            .set_log_level(Request::new(pb::SetLogLevelRequest {
                new_level: LogLevel::Debug as i32,
            }))
            .await
            .unwrap_err();
        assert_eq!(refused.code(), tonic::Code::PermissionDenied);
        assert_eq!(control.logger().current_level, LogLevel::Info as i32);
    }
}
