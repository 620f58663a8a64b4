//! A tonic channel to a gRPC server on a Unix socket: the agent's Workload API and the server's
//! admin API, dialled by the binaries' CLIs, the tests and the benchmarks.

use std::io;
use std::path::Path;

use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;
use tonic::transport::{Channel, Endpoint};

/// Connects to the gRPC server listening on the Unix socket `path` (a missing socket is an
/// error now, not a retry loop). The channel re-dials `path` if its connection breaks.
pub async fn channel(path: &Path) -> Result<Channel, tonic::transport::Error> {
    channel_checked(path, |_| Ok(())).await
}

/// [`channel`], with `check` vetting the process at the other end of each connection before a
/// byte is sent (its peer credentials, say): an error from `check` fails the connection.
pub async fn channel_checked<F>(path: &Path, check: F) -> Result<Channel, tonic::transport::Error>
where
    F: Fn(&UnixStream) -> io::Result<()> + Clone + Send + Sync + 'static,
{
    let path = path.to_path_buf();
    // The URI is required by tonic but unused: the connector always dials the socket.
    Endpoint::from_static("http://localhost")
        .connect_with_connector(tower::service_fn(move |_| {
            let (path, check) = (path.clone(), check.clone());
            async move {
                let stream = UnixStream::connect(path).await?;
                check(&stream)?;
                Ok::<_, io::Error>(TokioIo::new(stream))
            }
        }))
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_missing_socket_fails_at_once_and_a_refused_peer_too() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("api.sock");
        assert!(channel(&socket).await.is_err());

        let _listener = tokio::net::UnixListener::bind(&socket).unwrap();
        let refused = channel_checked(&socket, |_| Err(io::Error::other("not ours"))).await;
        assert!(refused.is_err());
    }
}
