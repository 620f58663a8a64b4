//! Serving an axum app over TLS, for the HTTPS endpoints (OIDC discovery, the federation bundle
//! endpoint). axum has no TLS listener of its own; this small one keeps rustls as the only TLS
//! stack (axum-server would bring its own).
//!
//! Each handshake runs in its own task, bounded by [`HANDSHAKE_TIMEOUT`], so a slow or silent
//! client cannot stall the others; finished streams reach axum through [`TlsListener`].

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_util::sync::CancellationToken;

const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves `app` on `listener` over TLS until `cancel` fires. `acceptor` is called for every
/// connection, so a certificate rotated behind it is presented at once. `name` labels log lines.
pub async fn serve_tls(
    listener: TcpListener,
    acceptor: impl Fn() -> TlsAcceptor + Send + 'static,
    app: Router,
    cancel: CancellationToken,
    name: &'static str,
) -> io::Result<()> {
    let local = listener.local_addr()?;
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(accept(listener, acceptor, tx, cancel.clone(), name));
    axum::serve(TlsListener { rx, local }, app)
        .with_graceful_shutdown(async move { cancel.cancelled().await })
        .await
}

async fn accept(
    listener: TcpListener,
    acceptor: impl Fn() -> TlsAcceptor,
    tx: mpsc::Sender<(TlsStream<TcpStream>, SocketAddr)>,
    cancel: CancellationToken,
    name: &'static str,
) {
    loop {
        let (tcp, peer) = tokio::select! {
            () = cancel.cancelled() => return,
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(endpoint = name, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        // Small responses go out at once rather than waiting on Nagle and a delayed ACK.
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(endpoint = name, %peer, error = %e, "cannot set TCP_NODELAY");
        }
        let acceptor = acceptor();
        let tx = tx.clone();
        tokio::spawn(async move {
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(tls)) => {
                    let _ = tx.send((tls, peer)).await;
                }
                Ok(Err(e)) => {
                    tracing::debug!(endpoint = name, %peer, error = %e, "TLS handshake failed")
                }
                Err(_) => tracing::debug!(endpoint = name, %peer, "TLS handshake timed out"),
            }
        });
    }
}

struct TlsListener {
    rx: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local: SocketAddr,
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.rx.recv().await {
            Some(conn) => conn,
            // The acceptor stopped (shutdown): wait for graceful shutdown to end serving.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        Ok(self.local)
    }
}
