//! gRPC listeners (the server's agent API): HTTP/2 over TLS, served from tonic's `Routes` through
//! hyper's HTTP/2 connection builder (keep-alive pings, a stream limit), with a watchdog per
//! connection for what hyper has no setting for:
//!
//! - the 24-byte connection preface must arrive within [`Timeouts::http2_preface`] of the TLS
//!   handshake (hyper waits for it forever; gRPC-Go's equivalent is its 120 s
//!   `ConnectionTimeout`);
//! - a connection with no open stream for [`Timeouts::http2_idle`] gets a GOAWAY (gRPC-Go's
//!   `MaxConnectionIdle`). A client holding a stream (an agent's `SyncEntries`) is never idle,
//!   so only a connection that does nothing is closed; a client whose connection is closed
//!   dials again.
//!
//! Each request carries the connection's `TlsConnectInfo`, exactly as tonic's own server puts
//! it, so `Request::peer_certs` and `Request::remote_addr` work unchanged in the handlers.

use std::io;
use std::net::SocketAddr;
use std::pin::{Pin, pin};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::server::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tonic::service::Routes;
use tonic::transport::server::Connected;
use tower::ServiceExt;

use super::accept::{accept_loop, handshake};
use super::{ConnectionLimiter, HTTP2_MAX_STREAMS, Listener, Permit, Timeouts, TlsSource};

/// `PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n`.
const PREFACE_LEN: u64 = 24;

/// Serves `routes` on `listener` over TLS with `tls`'s current config until `cancel` fires;
/// then each connection gets a GOAWAY and [`Timeouts::close_grace`] to finish. A connection
/// whose client presented a certificate the TLS config verified stops counting against its
/// source address ([`Permit::release_address`]).
pub async fn serve_grpc(
    listener: Listener,
    tls: TlsSource,
    routes: Routes,
    cancel: CancellationToken,
) -> io::Result<()> {
    let limiter = listener.limiter.clone();
    let timeouts = listener.timeouts;
    let routes = routes.prepare();
    accept_loop(listener, cancel.clone(), move |stream, peer, permit| {
        let acceptor = tls();
        let (routes, limiter, cancel) = (routes.clone(), limiter.clone(), cancel.clone());
        async move {
            let Some(stream) = handshake(
                acceptor,
                stream,
                peer,
                &limiter,
                timeouts.tls_handshake,
                &cancel,
            )
            .await
            else {
                return;
            };
            let mut permit = permit;
            if stream.get_ref().1.peer_certificates().is_some() {
                // rustls verified the client's chain (the server: an agent, or another holder
                // of an SVID of the trust domain): no longer counted against its address.
                permit.release_address();
            }
            serve_connection(stream, peer, routes, permit, &limiter, timeouts, &cancel).await;
        }
    })
    .await;
    Ok(())
}

async fn serve_connection(
    stream: tokio_rustls::server::TlsStream<tokio::net::TcpStream>,
    peer: SocketAddr,
    routes: Routes,
    permit: Permit,
    limiter: &Arc<ConnectionLimiter>,
    timeouts: Timeouts,
    cancel: &CancellationToken,
) {
    let info = stream.connect_info();
    let received = Arc::new(AtomicU64::new(0));
    let io = Counted {
        inner: stream,
        received: received.clone(),
    };
    let activity = Arc::new(Activity::new(Instant::now()));
    let streams = activity.clone();
    let service = hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
        request.extensions_mut().insert(info.clone());
        let open = streams.open();
        let response = routes.clone().oneshot(request);
        async move {
            let response = response.await?;
            // The stream counts as open until its response body (a server stream's messages
            // included) has been sent or dropped.
            Ok::<_, std::convert::Infallible>(response.map(move |body| {
                body.map_frame(move |frame| {
                    let _ = &open;
                    frame
                })
            }))
        }
    });
    let mut builder = http2::Builder::new(TokioExecutor::new());
    builder
        .timer(TokioTimer::new())
        .keep_alive_interval(timeouts.http2_keepalive_interval)
        .keep_alive_timeout(timeouts.http2_keepalive_timeout)
        .max_concurrent_streams(HTTP2_MAX_STREAMS);
    let mut conn = pin!(builder.serve_connection(TokioIo::new(io), service));

    let start = Instant::now();
    let mut preface_seen = false;
    // Set once a GOAWAY went out: why, and when the connection is dropped if still open.
    let mut closing: Option<(&'static str, Instant)> = None;
    let result = loop {
        let wake = match closing {
            Some((_, deadline)) => deadline,
            None if !preface_seen => start + timeouts.http2_preface,
            None => activity.idle_deadline(timeouts.http2_idle, Instant::now()),
        };
        tokio::select! {
            r = conn.as_mut() => break match (r, closing) {
                // After our GOAWAY, however the peer hung up.
                (_, Some((why, _))) => why,
                (Ok(()), None) => "ok",
                (Err(e), None) => {
                    tracing::debug!(listener = limiter.listener(), %peer, error = %e, "connection ended with an error");
                    if e.is_timeout() { "keepalive_timeout" } else { "error" }
                }
            },
            () = cancel.cancelled(), if closing.is_none() => {
                conn.as_mut().graceful_shutdown();
                closing = Some(("ok", Instant::now() + timeouts.close_grace));
            }
            () = tokio::time::sleep_until(wake) => {
                let now = Instant::now();
                if let Some((why, deadline)) = closing {
                    if now >= deadline {
                        break why;
                    }
                } else if !preface_seen {
                    if received.load(Ordering::Relaxed) < PREFACE_LEN {
                        tracing::debug!(listener = limiter.listener(), %peer, "no HTTP/2 preface in time; closing");
                        break "preface_timeout";
                    }
                    preface_seen = true;
                } else if activity.idle_deadline(timeouts.http2_idle, now) <= now {
                    tracing::debug!(listener = limiter.listener(), %peer, "no open stream for the idle timeout; sending GOAWAY");
                    conn.as_mut().graceful_shutdown();
                    closing = Some(("idle_timeout", now + timeouts.close_grace));
                }
            }
        }
    };
    limiter.closed(result);
    drop(permit);
}

/// Open streams of one connection, and since when it has had none.
struct Activity(Mutex<(u64, Instant)>);

impl Activity {
    fn new(now: Instant) -> Self {
        Self(Mutex::new((0, now)))
    }

    fn open(self: &Arc<Self>) -> OpenStream {
        self.lock().0 += 1;
        OpenStream(self.clone())
    }

    /// When the idle timeout ends, if no stream opens before; with a stream open, a check a
    /// whole `idle` from `now`.
    fn idle_deadline(&self, idle: Duration, now: Instant) -> Instant {
        let (open, since) = *self.lock();
        if open > 0 { now + idle } else { since + idle }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, (u64, Instant)> {
        // Plain counter updates: a poisoned lock still holds consistent values.
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Held by a stream's response body.
struct OpenStream(Arc<Activity>);

impl Drop for OpenStream {
    fn drop(&mut self) {
        let mut state = self.0.lock();
        state.0 -= 1;
        if state.0 == 0 {
            state.1 = Instant::now();
        }
    }
}

/// The TLS stream, counting the bytes read from it (to see the preface arrive).
struct Counted<T> {
    inner: T,
    received: Arc<AtomicU64>,
}

impl<T: AsyncRead + Unpin> AsyncRead for Counted<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        let read = (buf.filled().len() - before) as u64;
        if read > 0 {
            self.received.fetch_add(read, Ordering::Relaxed);
        }
        polled
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Counted<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idle_deadline_follows_open_streams() {
        let idle = Duration::from_secs(60);
        let start = Instant::now();
        let a = Arc::new(Activity::new(start));
        assert_eq!(a.idle_deadline(idle, start), start + idle);
        let s1 = a.open();
        let s2 = a.open();
        // Streams open: never idle, whatever the time.
        let later = start + Duration::from_secs(1000);
        assert_eq!(a.idle_deadline(idle, later), later + idle);
        drop(s1);
        assert_eq!(a.idle_deadline(idle, later), later + idle);
        let before = Instant::now();
        drop(s2);
        let after = Instant::now();
        // The last stream's end starts the idle timeout.
        let deadline = a.idle_deadline(idle, later);
        assert!(deadline >= before + idle && deadline <= after + idle);
    }
}
