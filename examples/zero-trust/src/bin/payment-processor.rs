//! `payment-processor`: an HTTPS service that accepts only SPIFFE mTLS, with its SVID and trust
//! bundle from the Workload API (`SPIFFE_ENDPOINT_SOCKET`), and authorizes each request by the
//! caller's SPIFFE ID: only `checkout-service` may `POST /v1/payments`. A request carrying
//! `Authorization: Bearer <JWT-SVID>` (audience: our SPIFFE ID) has it validated offline and by
//! the agent, and its subject must be the mTLS peer; a bad token gets 401. `--require-jwt` makes
//! the token mandatory.
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

use sigil_example_zero_trust::jwt::Jwts;
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
    /// The only identity allowed to `POST /v1/payments` (default:
    /// spiffe://<our trust domain>/ns/payments/sa/checkout-service). Handshakes are accepted
    /// from SVIDs of its trust domain.
    #[arg(long)]
    client_id: Option<SpiffeId>,
    /// Refuse requests without a JWT-SVID (`Authorization: Bearer`) with 401.
    #[arg(long)]
    require_jwt: bool,
    /// How long to wait for a first SVID from the Workload API.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    startup_timeout: Duration,
}

/// What every request is checked against.
struct Service {
    policy: Policy,
    /// Our SPIFFE ID: the audience a JWT-SVID must carry.
    own: SpiffeId,
    jwts: Jwts,
    require_jwt: bool,
    payments: AtomicU64,
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
    let policy = match args.client_id {
        Some(id) => Policy::allowing(id),
        None => Policy::new(own.trust_domain()),
    };
    let acceptor = TlsAcceptor::from(Arc::new(server_config(
        source.clone(),
        policy.allowed_caller().trust_domain(),
    )?));
    let jwts = Jwts::connect().await?;
    let listener = TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    info!(spiffe_id = %own, listen = %args.listen, allowed = %policy.allowed_caller(), "payment-processor listening");

    let service = Arc::new(Service {
        policy,
        own,
        jwts,
        require_jwt: args.require_jwt,
        payments: AtomicU64::new(0),
    });
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
        let service = Arc::clone(&service);
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
            let serve = service_fn(move |req| handle(Arc::clone(&service), Arc::clone(&peer), req));
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tls), serve)
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
    service: Arc<Service>,
    peer: Arc<PeerSvid>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let policy = &service.policy;
    let verdict = policy.decide(&peer.spiffe_id, &method, &path);
    let (status, body) = match verdict {
        Verdict::Allow => match service.bearer(&req, &peer.spiffe_id).await {
            Err(refusal) => (
                StatusCode::UNAUTHORIZED,
                format!("unauthorized: {refusal}\n"),
            ),
            Ok(jwt_note) => {
                // The order itself is opaque to the example; reading it proves the request got here.
                let order = match req.into_body().collect().await {
                    Ok(b) => b.to_bytes(),
                    Err(e) => {
                        warn!(peer = %peer.spiffe_id, error = %e, "reading the request body");
                        Bytes::new()
                    }
                };
                let n = service.payments.fetch_add(1, Ordering::Relaxed) + 1;
                (
                    StatusCode::OK,
                    format!(
                        "payment pay-{n} accepted for {} ({} bytes of order{jwt_note})\n",
                        peer.spiffe_id,
                        order.len()
                    ),
                )
            }
        },
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

impl Service {
    /// The request's JWT-SVID, if any, checked: valid for our audience and of the mTLS peer.
    /// Returns the note for the answer ("" without a token), or why it is refused.
    async fn bearer<B>(&self, req: &Request<B>, peer: &SpiffeId) -> Result<String, String> {
        let token = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        let Some(token) = token else {
            return if self.require_jwt {
                Err("a JWT-SVID (Authorization: Bearer) is required".to_owned())
            } else {
                Ok(String::new())
            };
        };
        let subject = self
            .jwts
            .validate(token, &self.own.to_string())
            .await
            .map_err(|e| format!("JWT-SVID: {e}"))?;
        if subject != *peer {
            return Err(format!(
                "JWT-SVID subject {subject} is not the mTLS peer {peer}"
            ));
        }
        Ok(format!(", JWT-SVID of {subject} valid"))
    }
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
