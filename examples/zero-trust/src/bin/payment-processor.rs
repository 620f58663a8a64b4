//! `payment-processor`: an HTTPS service that accepts only SPIFFE mTLS, with its SVID and trust
//! bundle from the Workload API (`SPIFFE_ENDPOINT_SOCKET`), and authorizes each request by the
//! caller's SPIFFE ID: only `checkout-service` may `POST /v1/payments`.
#![forbid(unsafe_code)]

use std::convert::Infallible;
use std::io::IsTerminal;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use http::{Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use spiffe::SpiffeId;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tracing::{info, warn};

use sigil_example_zero_trust::policy::{PAYMENT_PROCESSOR_PATH, Policy, Verdict};
use sigil_example_zero_trust::tls::{PeerSvid, Pick, peer_svid, server_config, x509_source};

#[derive(Debug, Parser)]
#[command(about = "Payments API over SPIFFE mTLS; only checkout-service may POST /v1/payments")]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8443")]
    listen: SocketAddr,
    /// The SVID to serve with (default: the one whose path is /ns/payments/sa/payment-processor,
    /// else the Workload API's default SVID).
    #[arg(long)]
    spiffe_id: Option<SpiffeId>,
    /// How long to wait for a first SVID from the Workload API.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    startup_timeout: Duration,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let args = Args::parse();

    let pick = match args.spiffe_id {
        Some(id) => Pick::Exact(id),
        None => Pick::PreferPath(PAYMENT_PROCESSOR_PATH),
    };
    let source = x509_source(pick, args.startup_timeout).await?;
    let own = source
        .svid()
        .context("reading the current SVID")?
        .spiffe_id()
        .clone();
    let td = own.trust_domain().clone();

    let acceptor = TlsAcceptor::from(Arc::new(server_config(source.clone(), &td)?));
    let policy = Arc::new(Policy::new(&td));
    let listener = TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    info!(spiffe_id = %own, listen = %args.listen, allowed = %policy.allowed_caller(), "payment-processor listening");

    let payments = Arc::new(AtomicU64::new(0));
    let shutdown = shutdown_signal();
    tokio::pin!(shutdown);
    loop {
        let (tcp, remote) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    warn!(error = %e, "accept failed");
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let acceptor = acceptor.clone();
        let policy = Arc::clone(&policy);
        let payments = Arc::clone(&payments);
        tokio::spawn(async move {
            let tls = match acceptor.accept(tcp).await {
                Ok(tls) => tls,
                Err(e) => {
                    // A peer without an SVID of our trust domain never reaches the policy.
                    warn!(%remote, error = %e, "mTLS handshake refused");
                    return;
                }
            };
            let peer = match peer_svid(tls.get_ref().1) {
                Ok(p) => Arc::new(p),
                Err(e) => {
                    warn!(%remote, error = %e, "no SPIFFE ID after the handshake");
                    return;
                }
            };
            let service = service_fn(move |req| {
                handle(
                    Arc::clone(&policy),
                    Arc::clone(&peer),
                    Arc::clone(&payments),
                    req,
                )
            });
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tls), service)
                .await
            {
                warn!(%remote, error = %e, "connection ended with an error");
            }
        });
    }
    info!("payment-processor stopping");
    source.shutdown().await;
    Ok(())
}

/// One request: decide, log one line, answer.
async fn handle(
    policy: Arc<Policy>,
    peer: Arc<PeerSvid>,
    payments: Arc<AtomicU64>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let verdict = policy.decide(&peer.spiffe_id, &method, &path);
    let (status, body) = match verdict {
        Verdict::Allow => {
            // The order itself is opaque to the example; reading it proves the request got here.
            let order = match req.into_body().collect().await {
                Ok(b) => b.to_bytes(),
                Err(e) => {
                    warn!(peer = %peer.spiffe_id, error = %e, "reading the request body");
                    Bytes::new()
                }
            };
            let n = payments.fetch_add(1, Ordering::Relaxed) + 1;
            (
                StatusCode::OK,
                format!(
                    "payment pay-{n} accepted for {} ({} bytes of order)\n",
                    peer.spiffe_id,
                    order.len()
                ),
            )
        }
        Verdict::ForbiddenIdentity | Verdict::ForbiddenRoute => (
            StatusCode::FORBIDDEN,
            format!(
                "{}\n",
                policy.refusal(&verdict, &peer.spiffe_id, &method, &path)
            ),
        ),
    };
    info!(
        peer = %peer.spiffe_id,
        peer_serial = %peer.serial,
        route = %format!("{method} {path}"),
        %verdict,
        status = status.as_u16(),
        "request"
    );
    let response = Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "text/plain; charset=utf-8")
        .body(Full::new(Bytes::from(body)));
    // Invariant: a status from the list above and a constant header always build.
    Ok(response.expect("static response parts are valid"))
}

async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = term => {}
    }
}
