//! The admin API client the CLI commands share: a tonic channel over the Unix socket, and one
//! place that turns a gRPC status into the single line a person reads.

use std::fmt;
use std::path::{Path, PathBuf};

use hyper_util::rt::TokioIo;
use sigil_proto::limits::ADMIN_API_MAX_MESSAGE;
use sigil_proto::sigil::admin::v1::admin_client::AdminClient;
use tonic::transport::{Channel, Endpoint};

/// A CLI failure: printed as one line on stderr, exit code 1.
#[derive(Debug)]
pub struct CliError(pub String);

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<tonic::Status> for CliError {
    fn from(s: tonic::Status) -> Self {
        let message = s.message();
        CliError(match s.code() {
            tonic::Code::Unavailable => format!("server unavailable: {message}"),
            _ if message.is_empty() => format!("{:?}", s.code()),
            _ => message.to_owned(),
        })
    }
}

impl From<std::io::Error> for CliError {
    fn from(e: std::io::Error) -> Self {
        CliError(e.to_string())
    }
}

pub fn fail<T>(message: impl Into<String>) -> Result<T, CliError> {
    Err(CliError(message.into()))
}

pub type CliResult = Result<(), CliError>;

/// Connects to the admin socket; a missing socket is a clear error rather than a retry loop.
pub async fn connect(socket_path: &Path) -> Result<AdminClient<Channel>, CliError> {
    let path: PathBuf = socket_path.to_owned();
    // The URI is required by tonic but unused: the connector dials the socket.
    let endpoint = Endpoint::from_static("http://sigil-server.admin");
    let channel = endpoint
        .connect_with_connector(tower::service_fn(move |_| {
            let path = path.clone();
            async move { tokio::net::UnixStream::connect(path).await.map(TokioIo::new) }
        }))
        .await
        .map_err(|e| {
            let source = std::error::Error::source(&e).map(|s| format!(": {s}")).unwrap_or_default();
            CliError(format!(
                "cannot connect to the server at {}{source} (is sigil-server running? use -socketPath)",
                socket_path.display()
            ))
        })?;
    // The server's own limits, so a refusal is the server's clear OUT_OF_RANGE.
    Ok(AdminClient::new(channel)
        .max_decoding_message_size(ADMIN_API_MAX_MESSAGE)
        .max_encoding_message_size(ADMIN_API_MAX_MESSAGE))
}
