//! The accept loop shared by every listener: admission against the caps, then one task per
//! connection; and the TLS handshake, bounded in time.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use super::{ConnectionLimiter, Listener, Permit};

/// Pause after a failed `accept` (typically EMFILE), so the loop does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Accepts until `cancel` fires, admits each connection against the listener's caps (closing
/// it at once when over one) and runs `serve` for it on its own task, in the caller's span.
/// Then stops listening and waits for the connections' tasks to end (they watch `cancel`
/// themselves).
pub(super) async fn accept_loop<F, Fut>(listener: Listener, cancel: CancellationToken, mut serve: F)
where
    F: FnMut(TcpStream, SocketAddr, Permit) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let Listener { tcp, limiter, .. } = listener;
    // Every connection task holds a sender; `recv` returns None once all have ended.
    let (alive, mut all_ended) = mpsc::channel::<()>(1);
    loop {
        let accepted = tokio::select! {
            biased;
            () = cancel.cancelled() => break,
            a = tcp.accept() => a,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                limiter.accept_failed(&e);
                tokio::select! {
                    () = cancel.cancelled() => break,
                    () = tokio::time::sleep(ACCEPT_BACKOFF) => continue,
                }
            }
        };
        let Ok(permit) = limiter.admit(peer.ip()) else {
            // Over a cap: closed here and now, before any byte is read (counted and logged by
            // the limiter).
            drop(stream);
            continue;
        };
        // Small responses go out at once rather than waiting on Nagle and a delayed ACK (gRPC
        // answers are several small writes: ~40 ms per unary call without it).
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(listener = limiter.listener(), %peer, error = %e, "cannot set TCP_NODELAY");
        }
        let task = serve(stream, peer, permit);
        let alive = alive.clone();
        tokio::spawn(
            async move {
                task.await;
                drop(alive);
            }
            .in_current_span(),
        );
    }
    drop(tcp);
    drop(alive);
    let _ = all_ended.recv().await;
}

/// Runs the TLS handshake within `timeout` (or until `cancel`). A failure is counted and
/// logged at debug: scanners and health checks of load balancers fail handshakes all day.
pub(super) async fn handshake(
    acceptor: TlsAcceptor,
    stream: TcpStream,
    peer: SocketAddr,
    limiter: &Arc<ConnectionLimiter>,
    timeout: Duration,
    cancel: &CancellationToken,
) -> Option<TlsStream<TcpStream>> {
    let outcome = tokio::select! {
        () = cancel.cancelled() => return None,
        r = tokio::time::timeout(timeout, acceptor.accept(stream)) => r,
    };
    match outcome {
        Ok(Ok(tls)) => Some(tls),
        Ok(Err(e)) => {
            tracing::debug!(listener = limiter.listener(), %peer, error = %e, "TLS handshake failed");
            limiter.closed("tls_failed");
            None
        }
        Err(_) => {
            tracing::debug!(listener = limiter.listener(), %peer, "TLS handshake timed out");
            limiter.closed("tls_timeout");
            None
        }
    }
}
