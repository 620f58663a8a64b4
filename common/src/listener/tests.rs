//! The listeners against real sockets, with timeouts shortened to fractions of a second: what
//! a silent, trickling, idle or surplus client gets, and that real clients are served.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::routing::get;
use rustls::ClientConfig;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_util::sync::CancellationToken;

use super::*;
use crate::tls::SpiffeServerVerifier;

fn short() -> Timeouts {
    Timeouts {
        tls_handshake: Duration::from_millis(500),
        header_read: Duration::from_millis(500),
        http2_preface: Duration::from_millis(500),
        http2_keepalive_interval: Duration::from_secs(30),
        http2_keepalive_timeout: Duration::from_secs(20),
        http2_idle: Duration::from_millis(800),
        close_grace: Duration::from_millis(500),
    }
}

fn limiter(max: u64, per_address: u64, metrics: &ConnectionMetrics) -> Arc<ConnectionLimiter> {
    let limits = ConnectionLimits {
        max_connections: max,
        max_connections_per_address: per_address,
    };
    ConnectionLimiter::new("oidc_discovery", limits, metrics.clone())
}

async fn serve_plain(limiter: Arc<ConnectionLimiter>) -> (SocketAddr, CancellationToken) {
    let listener = Listener::bind("127.0.0.1:0".parse().unwrap(), limiter)
        .await
        .unwrap()
        .with_timeouts(short());
    let addr = listener.local_addr().unwrap();
    let app = Router::new().route("/", get(|| async { "ok" }));
    let cancel = CancellationToken::new();
    tokio::spawn(serve_http(listener, None, app, cancel.clone()));
    (addr, cancel)
}

/// Reads until the server closes (EOF or reset); how long that took from `since`.
async fn closed_after(stream: &mut TcpStream, since: Instant) -> Duration {
    let mut buf = [0u8; 4096];
    let within = Duration::from_secs(10);
    tokio::time::timeout(within, async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await
    .expect("the server closes the connection");
    since.elapsed()
}

/// Waits (2 s at most) for `line` in the metrics: the server counts a close on its own task,
/// which may run after the client saw the connection end.
async fn metric_appears(metrics: &ConnectionMetrics, line: &str) {
    for _ in 0..200 {
        if metrics.encode().contains(line) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("no {line} in:\n{}", metrics.encode());
}

async fn connect_from(source: &str, addr: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(format!("{source}:0").parse().unwrap()).unwrap();
    socket.connect(addr).await.unwrap()
}

#[tokio::test]
async fn http1_closes_silent_trickling_and_idle_connections() {
    let metrics = ConnectionMetrics::default();
    let (addr, cancel) = serve_plain(limiter(100, 100, &metrics)).await;

    // Silent after connecting.
    let start = Instant::now();
    let mut silent = TcpStream::connect(addr).await.unwrap();
    let silent = tokio::spawn(async move { closed_after(&mut silent, start).await });

    // Slowloris: a header line every 100 ms, never the blank line that ends the head.
    let mut trickle = TcpStream::connect(addr).await.unwrap();
    let trickle = tokio::spawn(async move {
        let start = Instant::now();
        trickle.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
        for i in 0..100 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let line = format!("X-Trickle-{i}: a\r\n");
            if trickle.write_all(line.as_bytes()).await.is_err() {
                break;
            }
            let mut probe = [0u8; 1];
            if let Ok(Ok(0) | Err(_)) =
                tokio::time::timeout(Duration::from_millis(1), trickle.read(&mut probe)).await
            {
                break;
            }
        }
        start.elapsed()
    });

    // Keep-alive: one request answered, then nothing.
    let mut idle = TcpStream::connect(addr).await.unwrap();
    idle.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 1024];
    let n = idle.read(&mut buf).await.unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"), "{:?}", &buf[..n]);
    let answered = Instant::now();
    let idle_for = closed_after(&mut idle, answered).await;

    for (what, took) in [
        ("silent", silent.await.unwrap()),
        ("trickling", trickle.await.unwrap()),
        ("idle keep-alive", idle_for),
    ] {
        assert!(
            took >= Duration::from_millis(400) && took < Duration::from_secs(3),
            "{what}: closed after {took:?}"
        );
    }
    metric_appears(
        &metrics,
        "sigil_connections_closed_total{listener=\"oidc_discovery\",result=\"header_timeout\"} 3",
    )
    .await;
    cancel.cancel();
}

#[tokio::test]
async fn caps_refuse_surplus_connections_at_once_and_free_slots_on_close() {
    let metrics = ConnectionMetrics::default();
    let l = limiter(3, 2, &metrics);
    let (addr, cancel) = serve_plain(l.clone()).await;
    let mut held = vec![
        TcpStream::connect(addr).await.unwrap(),
        TcpStream::connect(addr).await.unwrap(),
    ];
    // Wait until both are admitted (the accept loop runs on its own task).
    while l.open() < 2 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // A third from the same address: closed at once, long before any timeout.
    let start = Instant::now();
    let mut surplus = TcpStream::connect(addr).await.unwrap();
    assert!(closed_after(&mut surplus, start).await < Duration::from_millis(300));

    // Another source address is still served.
    let mut other = connect_from("127.0.0.2", addr).await;
    other
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 1024];
    let n = other.read(&mut buf).await.unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"), "{:?}", &buf[..n]);

    // The listener is full now: a fourth address is refused too.
    let start = Instant::now();
    let mut fourth = connect_from("127.0.0.3", addr).await;
    assert!(closed_after(&mut fourth, start).await < Duration::from_millis(300));

    // Closing one frees its slot.
    held.pop();
    while l.open() > 2 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut again = TcpStream::connect(addr).await.unwrap();
    again
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let n = again.read(&mut buf).await.unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"), "{:?}", &buf[..n]);

    let text = metrics.encode();
    assert!(text.contains("result=\"refused_address_cap\"} 1"), "{text}");
    assert!(
        text.contains("result=\"refused_listener_cap\"} 1"),
        "{text}"
    );
    cancel.cancel();
}

/// A TLS client that accepts any server certificate: these tests are about connections, not
/// identities.
async fn tls_connect(addr: SocketAddr) -> tokio_rustls::client::TlsStream<TcpStream> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(SpiffeServerVerifier::any_certificate()))
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let tcp = TcpStream::connect(addr).await.unwrap();
    tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("sigil-server").unwrap(), tcp)
        .await
        .unwrap()
}

/// A self-signed server certificate, offering HTTP/2.
fn tls_source() -> TlsSource {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let cert = rcgen::CertificateParams::new(vec!["sigil-server".to_owned()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![CertificateDer::from(cert.der().to_vec())],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        )
        .unwrap();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    Arc::new(move || acceptor.clone())
}

async fn serve_grpc_app(metrics: &ConnectionMetrics) -> (SocketAddr, CancellationToken) {
    let limits = ConnectionLimits {
        max_connections: 16_384,
        max_connections_per_address: 1_024,
    };
    let limiter = ConnectionLimiter::new("agent_api", limits, metrics.clone());
    let listener = Listener::bind("127.0.0.1:0".parse().unwrap(), limiter)
        .await
        .unwrap()
        .with_timeouts(short());
    let addr = listener.local_addr().unwrap();
    // A quick answer, and a response body that never ends (a server stream).
    let app = Router::new().route("/quick", get(|| async { "ok" })).route(
        "/stream",
        get(|| async {
            axum::body::Body::from_stream(futures::stream::pending::<
                Result<axum::body::Bytes, std::io::Error>,
            >())
        }),
    );
    let cancel = CancellationToken::new();
    tokio::spawn(serve_grpc(
        listener,
        tls_source(),
        tonic::service::Routes::from(app),
        cancel.clone(),
    ));
    (addr, cancel)
}

#[tokio::test]
async fn http2_closes_silent_trickling_and_streamless_connections() {
    let metrics = ConnectionMetrics::default();
    let (addr, cancel) = serve_grpc_app(&metrics).await;

    // After the TLS handshake, nothing.
    let mut silent = tls_connect(addr).await;
    let start = Instant::now();
    let mut buf = [0u8; 1024];
    let silent_for = tokio::time::timeout(Duration::from_secs(10), async {
        while !matches!(silent.read(&mut buf).await, Ok(0) | Err(_)) {}
        start.elapsed()
    })
    .await
    .expect("closed");

    // The preface trickled a byte at a time, slower than the deadline allows.
    let mut trickle = tls_connect(addr).await;
    let start = Instant::now();
    let trickle_for = tokio::time::timeout(Duration::from_secs(10), async {
        for b in b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" {
            if trickle.write_all(&[*b]).await.is_err() || trickle.flush().await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        while !matches!(trickle.read(&mut buf).await, Ok(0) | Err(_)) {}
        start.elapsed()
    })
    .await
    .expect("closed");

    for (what, took) in [("silent", silent_for), ("trickling", trickle_for)] {
        assert!(
            took >= Duration::from_millis(400) && took < Duration::from_secs(3),
            "{what}: closed after {took:?}"
        );
    }

    // A real HTTP/2 client (it answers pings) that opens no stream gets a GOAWAY at the idle
    // timeout; one holding a stream open is kept.
    let (mut idle_client, idle_conn) =
        hyper::client::conn::http2::handshake::<_, _, http_body_util::Empty<axum::body::Bytes>>(
            hyper_util::rt::TokioExecutor::new(),
            hyper_util::rt::TokioIo::new(tls_connect(addr).await),
        )
        .await
        .unwrap();
    let idle_conn = tokio::spawn(idle_conn);
    let (mut busy_client, busy_conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tls_connect(addr).await),
    )
    .await
    .unwrap();
    let busy_conn = tokio::spawn(busy_conn);
    let request = |path: &str| {
        hyper::Request::get(format!("http://sigil-server{path}"))
            .body(http_body_util::Empty::<axum::body::Bytes>::new())
            .unwrap()
    };
    let stream = busy_client.send_request(request("/stream")).await.unwrap();
    assert_eq!(stream.status(), 200);
    let start = Instant::now();
    tokio::time::timeout(Duration::from_secs(10), idle_conn)
        .await
        .expect("the idle connection is closed")
        .unwrap()
        .unwrap();
    let idle_for = start.elapsed();
    assert!(idle_for < Duration::from_secs(3), "{idle_for:?}");
    assert!(idle_client.ready().await.is_err());
    // Past the idle timeout, the busy connection still serves.
    let quick = busy_client.send_request(request("/quick")).await.unwrap();
    assert_eq!(quick.status(), 200);
    assert!(!busy_conn.is_finished());
    drop(stream);

    for result in ["preface_timeout", "idle_timeout"] {
        let line =
            format!("sigil_connections_closed_total{{listener=\"agent_api\",result=\"{result}\"}}");
        metric_appears(&metrics, &line).await;
    }
    cancel.cancel();
}
