//! HTTP/1.1 listeners (OIDC discovery, the bundle endpoint, health and metrics), plain or over
//! TLS, serving an axum `Router` through hyper's HTTP/1 connection builder with a timer, so its
//! header-read timeout runs: a request head must arrive within [`Timeouts::header_read`] of the
//! server starting to wait for it, which bounds a slowloris and an idle keep-alive connection
//! alike. Over TLS, the certificate chain a client presented (which the TLS config verified)
//! reaches the handler as the request extension [`PeerCertificates`].

use std::io;
use std::net::SocketAddr;
use std::pin::pin;
use std::sync::Arc;

use axum::Router;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use rustls::pki_types::CertificateDer;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::either::Either;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

use super::accept::{accept_loop, handshake};
use super::{ConnectionLimiter, Listener, Timeouts, TlsSource};

/// The chain the TLS client presented, leaf first, as its TLS config verified it; set on every
/// request of a connection whose client sent a certificate, absent otherwise.
#[derive(Clone, Debug)]
pub struct PeerCertificates(pub Arc<[CertificateDer<'static>]>);

/// Serves `app` on `listener` (over TLS when `tls` is given) until `cancel` fires; then
/// in-flight requests finish within [`Timeouts::close_grace`].
pub async fn serve_http(
    listener: Listener,
    tls: Option<TlsSource>,
    app: Router,
    cancel: CancellationToken,
) -> io::Result<()> {
    let limiter = listener.limiter.clone();
    let timeouts = listener.timeouts;
    let name = limiter.listener();
    let local = listener.local_addr()?;
    tracing::debug!(listener = name, address = %local, tls = tls.is_some(), "serving HTTP/1.1");
    accept_loop(listener, cancel.clone(), move |stream, peer, permit| {
        let acceptor = tls.as_ref().map(|source| source());
        let (app, limiter, cancel) = (app.clone(), limiter.clone(), cancel.clone());
        async move {
            let (io, peer_certs) = match acceptor {
                None => (Either::Left(stream), None),
                Some(acceptor) => {
                    match handshake(
                        acceptor,
                        stream,
                        peer,
                        &limiter,
                        timeouts.tls_handshake,
                        &cancel,
                    )
                    .await
                    {
                        Some(tls) => {
                            let certs = tls
                                .get_ref()
                                .1
                                .peer_certificates()
                                .filter(|c| !c.is_empty())
                                .map(|c| PeerCertificates(c.iter().cloned().collect()));
                            (Either::Right(tls), certs)
                        }
                        None => return,
                    }
                }
            };
            serve_connection(io, peer, peer_certs, app, &limiter, timeouts, &cancel).await;
            drop(permit);
        }
    })
    .await;
    Ok(())
}

async fn serve_connection<I>(
    io: I,
    peer: SocketAddr,
    peer_certs: Option<PeerCertificates>,
    app: Router,
    limiter: &Arc<ConnectionLimiter>,
    timeouts: Timeouts,
    cancel: &CancellationToken,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
        if let Some(certs) = &peer_certs {
            request.extensions_mut().insert(certs.clone());
        }
        app.clone().oneshot(request)
    });
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(timeouts.header_read)
        .keep_alive(true);
    let mut conn = pin!(builder.serve_connection(TokioIo::new(io), service));
    let outcome = tokio::select! {
        r = conn.as_mut() => Some(r),
        () = cancel.cancelled() => {
            // Shutting down: the request in flight (if any) is answered, then the connection
            // closes; an idle one closes at once.
            conn.as_mut().graceful_shutdown();
            tokio::time::timeout(timeouts.close_grace, conn.as_mut()).await.ok()
        }
    };
    let result = match outcome {
        Some(Ok(())) => "ok",
        Some(Err(e)) if e.is_timeout() => {
            tracing::debug!(listener = limiter.listener(), %peer, "no complete request head in time; closing");
            "header_timeout"
        }
        Some(Err(e)) => {
            tracing::debug!(listener = limiter.listener(), %peer, error = %e, "connection ended with an error");
            "error"
        }
        None => "error",
    };
    limiter.closed(result);
}
