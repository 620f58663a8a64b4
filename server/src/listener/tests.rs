//! The listeners against real sockets, with timeouts shortened to fractions of a second: what
//! a silent, trickling, idle or surplus client gets, and that real clients are served.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use axum::Router;
use axum::routing::get;
use sigil_proto::TrustDomain;
use sigil_testkit::tls::{connect_from, tls_connect};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use super::*;
use crate::api::tls::ServerTls;
use crate::ca::Ca;
use crate::key_manager::MemoryKeyManager;
use crate::metrics::Metrics;

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

fn limiter(max: u64, per_address: u64, metrics: &Arc<Metrics>) -> Arc<ConnectionLimiter> {
    let limits = ConnectionLimits {
        max_connections: max,
        max_connections_per_address: per_address,
    };
    ConnectionLimiter::new(Endpoint::OidcDiscovery, limits, metrics.clone())
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
    sigil_testkit::tls::closed_after(stream, since, Duration::from_secs(10))
        .await
        .expect("the server closes the connection")
}

/// Waits (2 s at most) for `line` in the metrics: the server counts a close on its own task,
/// which may run after the client saw the connection end.
async fn metric_appears(metrics: &Metrics, line: &str) {
    for _ in 0..200 {
        if metrics.encode().contains(line) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("no {line} in:\n{}", metrics.encode());
}

#[tokio::test]
async fn http1_closes_silent_trickling_and_idle_connections() {
    let metrics = Metrics::new();
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
        "sigil_server_connections_closed_total{listener=\"oidc_discovery\",result=\"header_timeout\"} 3",
    )
    .await;
    cancel.cancel();
}

#[tokio::test]
async fn caps_refuse_surplus_connections_at_once_and_free_slots_on_close() {
    let metrics = Metrics::new();
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
    let mut other = connect_from("127.0.0.2", addr.port()).await.unwrap();
    other
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 1024];
    let n = other.read(&mut buf).await.unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"), "{:?}", &buf[..n]);

    // The listener is full now: a fourth address is refused too.
    let start = Instant::now();
    let mut fourth = connect_from("127.0.0.3", addr.port()).await.unwrap();
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

async fn serve_grpc_app(metrics: &Arc<Metrics>) -> (SocketAddr, CancellationToken) {
    let (ca, _) = Ca::new(
        crate::ca::CaConfig::new(TrustDomain::new("example.org").unwrap()),
        Arc::new(MemoryKeyManager::new()),
        None,
        SystemTime::now(),
    )
    .unwrap();
    let tls = Arc::new(ServerTls::new(Arc::new(ca)).unwrap());
    let limits = Endpoint::AgentApi.default_limits();
    let limiter = ConnectionLimiter::new(Endpoint::AgentApi, limits, metrics.clone());
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
        tls,
        tonic::service::Routes::from(app),
        cancel.clone(),
    ));
    (addr, cancel)
}

#[tokio::test]
async fn http2_closes_silent_trickling_and_streamless_connections() {
    let metrics = Metrics::new();
    let (addr, cancel) = serve_grpc_app(&metrics).await;

    // After the TLS handshake, nothing.
    let mut silent = tls_connect(addr.port(), b"h2").await;
    let start = Instant::now();
    let mut buf = [0u8; 1024];
    let silent_for = tokio::time::timeout(Duration::from_secs(10), async {
        while !matches!(silent.read(&mut buf).await, Ok(0) | Err(_)) {}
        start.elapsed()
    })
    .await
    .expect("closed");

    // The preface trickled a byte at a time, slower than the deadline allows.
    let mut trickle = tls_connect(addr.port(), b"h2").await;
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
            hyper_util::rt::TokioIo::new(tls_connect(addr.port(), b"h2").await),
        )
        .await
        .unwrap();
    let idle_conn = tokio::spawn(idle_conn);
    let (mut busy_client, busy_conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tls_connect(addr.port(), b"h2").await),
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
        let line = format!(
            "sigil_server_connections_closed_total{{listener=\"agent_api\",result=\"{result}\"}}"
        );
        metric_appears(&metrics, &line).await;
    }
    cancel.cancel();
}
