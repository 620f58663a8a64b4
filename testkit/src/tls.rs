//! Connections for tests about connections rather than identities: TCP from a chosen loopback
//! source address (any address of 127/8 is loopback, and counts as another client), TLS that
//! accepts whatever certificate the server shows, and how long a server takes to close one.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::ClientConfig;
use rustls::pki_types::ServerName;
use sigil_common::tls::SpiffeServerVerifier;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

/// A TLS client that accepts any server certificate and offers `alpn` (`h2`, `http/1.1`).
pub fn any_server_connector(alpn: &[u8]) -> TlsConnector {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("the ring provider supports the default versions")
        .dangerous()
        // Checks only the handshake signatures: these tests are about connections.
        .with_custom_certificate_verifier(Arc::new(SpiffeServerVerifier::any_certificate()))
        .with_no_client_auth();
    config.alpn_protocols = vec![alpn.to_vec()];
    TlsConnector::from(Arc::new(config))
}

/// A TCP connection to `port` on 127.0.0.1 from `source` (any address of 127/8 is loopback).
pub async fn connect_from(source: &str, port: u16) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    let source: SocketAddr = format!("{source}:0")
        .parse()
        .map_err(std::io::Error::other)?;
    socket.bind(source)?;
    socket
        .connect(SocketAddr::from(([127, 0, 0, 1], port)))
        .await
}

/// A TLS connection to `port` on 127.0.0.1 offering `alpn`, whatever certificate the server
/// shows.
///
/// # Panics
/// If the connection or the handshake fails.
pub async fn tls_connect(port: u16, alpn: &[u8]) -> TlsStream<TcpStream> {
    let tcp = connect_from("127.0.0.1", port).await.expect("TCP connect");
    any_server_connector(alpn)
        .connect(ServerName::try_from("localhost").expect("a DNS name"), tcp)
        .await
        .expect("TLS handshake")
}

/// Reads (discarding) until the server closes the connection (EOF or reset); the time from
/// `since`. `None` if it is still open after `within`.
pub async fn closed_after(
    mut stream: impl AsyncRead + Unpin,
    since: Instant,
    within: Duration,
) -> Option<Duration> {
    let mut buf = [0u8; 4096];
    tokio::time::timeout(within, async {
        while !matches!(stream.read(&mut buf).await, Ok(0) | Err(_)) {}
    })
    .await
    .ok()?;
    Some(since.elapsed())
}
