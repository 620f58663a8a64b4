//! The admin API client the CLI commands share: a tonic channel over the Unix socket, and one
//! place that turns a gRPC status into the single line a person reads.

use std::fmt;
use std::io;
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};

use sigil_proto::limits::ADMIN_API_MAX_MESSAGE;
use sigil_proto::sigil::admin::v1::admin_client::AdminClient;
use tonic::transport::Channel;

/// A CLI failure: printed as one line on stderr, exit code 1.
#[derive(Debug)]
pub(crate) struct CliError(pub String);

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<tonic::Status> for CliError {
    fn from(s: tonic::Status) -> Self {
        let message = s.message();
        Self(match s.code() {
            tonic::Code::Unavailable => format!("server unavailable: {message}"),
            _ if message.is_empty() => format!("{:?}", s.code()),
            _ => message.to_owned(),
        })
    }
}

impl From<std::io::Error> for CliError {
    fn from(e: std::io::Error) -> Self {
        Self(e.to_string())
    }
}

pub(crate) fn fail<T>(message: impl Into<String>) -> Result<T, CliError> {
    Err(CliError(message.into()))
}

pub(crate) type CliResult = Result<(), CliError>;

/// Connects to the admin socket; a missing socket is a clear error rather than a retry loop.
/// The process serving it must run as root or as our own user ([`check_server`]) before a
/// single byte is sent.
pub(crate) async fn connect(socket_path: &Path) -> Result<AdminClient<Channel>, CliError> {
    let path = socket_path.to_owned();
    // Why the check refused the server, if it did (tonic keeps only a generic error).
    let refused: Arc<Mutex<Option<String>>> = Arc::default();
    let refusal = refused.clone();
    let check = move |stream: &tokio::net::UnixStream| {
        check_server(stream, &path).map_err(|why| {
            *refusal.lock().unwrap_or_else(PoisonError::into_inner) = Some(why.clone());
            io::Error::new(io::ErrorKind::PermissionDenied, why)
        })
    };
    let channel = sigil_common::uds::channel_checked(socket_path, check)
        .await
        .map_err(|e| {
            if let Some(why) = refused.lock().unwrap_or_else(PoisonError::into_inner).take() {
                return CliError(why);
            }
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

/// Whether the process at the other end of `stream` may receive our requests: it must run as
/// root or as our own effective user (its credentials from `SO_PEERCRED`, fixed when it
/// created its socket). Anyone else (a socket another user planted at the path, or put in a
/// directory they control) would read the entries, join tokens and SVIDs we send and could
/// answer anything: we refuse before sending a byte.
fn check_server(stream: &tokio::net::UnixStream, path: &Path) -> Result<(), String> {
    let ours = sigil_common::fs_checks::euid();
    let peer = stream.peer_cred().map_err(|e| {
        format!(
            "cannot tell who serves {}: {e}; refusing to use it",
            path.display()
        )
    })?;
    if peer.uid() == 0 || peer.uid() == ours {
        return Ok(());
    }
    let pid = peer
        .pid()
        .map(|p| format!(" (pid {p})"))
        .unwrap_or_default();
    Err(format!(
        "refusing to talk to {}: the process serving it{pid} runs as uid {}, not as root or as uid {ours} (this user); another user may have put a socket there",
        path.display(),
        peer.uid()
    ))
}
