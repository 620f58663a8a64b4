//! Issue #15 item 6: slow, half-open and surplus connections against the real `sigil-server`.
//!
//! - Half-open and trickling clients on the OIDC endpoint (HTTP/1.1 over TLS) and on the agent
//!   API (HTTP/2 over TLS) are closed at the header-read / preface timeout (10 s), and an
//!   HTTP/2 client that opens no stream at the idle timeout (60 s).
//! - Under a 512-descriptor limit, a flood of connections to the OIDC endpoint leaves the agent
//!   API (an agent attests and its workload gets an SVID), the admin API and the datastore
//!   (`entry create`, persisted) working.
//! - The per-address cap refuses a source's surplus connections at once while another source
//!   address is served, and agents with SVIDs sharing one address are not refused.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::pki_types::ServerName;
use sigil_testkit::tls::{any_server_connector, closed_after, connect_from, tls_connect};
use sigil_testkit::{
    Server, ServerOptions, attested_agent, free_port, http_get, multi_thread_rt, register_uid,
    self_signed_serving_cert, server_bin, sqlite3, wait_for,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The server's timeouts (see `sigil_common::listener::Timeouts`).
const HEADER_READ: Duration = Duration::from_secs(10);
const HTTP2_IDLE: Duration = Duration::from_secs(60);

/// `sigil_server_open_connections{listener=...}` from the server's `/metrics`.
fn open_connections(server: &Server, listener: &str) -> u64 {
    let (_, text) = http_get(server.health_port, "/metrics").expect("/metrics answers");
    let prefix = format!("sigil_server_open_connections{{listener=\"{listener}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .map_or(0, |v| v.trim().parse().unwrap())
}

fn counter(server: &Server, listener: &str, result: &str) -> u64 {
    let (_, text) = http_get(server.health_port, "/metrics").expect("/metrics answers");
    let prefix = format!("{{listener=\"{listener}\",result=\"{result}\"}} ");
    text.lines()
        .filter(|l| l.starts_with("sigil_server_connections"))
        .find_map(|l| {
            l.split_once(&prefix)
                .map(|(_, v)| v.trim().parse().unwrap())
        })
        .unwrap_or(0)
}

/// Runs an admin CLI command that must succeed within 30 s; its stdout.
fn cli_within(server: &Server, args: &[&str]) -> String {
    let mut child = std::process::Command::new(server_bin())
        .args(args)
        .arg("-socketPath")
        .arg(&server.socket)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run sigil-server CLI");
    let start = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if start.elapsed() > Duration::from_secs(30) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("sigil-server {args:?}: no answer from the admin API within 30 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "sigil-server {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// A log line without its terminal colours.
fn plain(line: &str) -> String {
    let mut out = String::new();
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // CSI: ESC [ parameters final-letter.
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

fn oidc_block(port: u16, tls: Option<(&std::path::Path, &std::path::Path)>) -> String {
    let tls = tls.map_or(String::new(), |(cert, key)| {
        format!(
            "  tls_cert_file = \"{}\"\n  tls_key_file = \"{}\"\n",
            cert.display(),
            key.display()
        )
    });
    format!("oidc_discovery {{\n  bind_address = \"127.0.0.1\"\n  bind_port = {port}\n{tls}}}\n")
}

/// (a) Connections that complete a TLS handshake and then say nothing, or trickle their
/// request head (HTTP/1.1) or HTTP/2 preface a byte every 500 ms, on the OIDC endpoint and on
/// the agent API: every one is closed 10 s after the handshake, none before. An HTTP/2 client
/// that completes its handshake, answers pings and opens no stream gets a GOAWAY at 60 s.
#[test]
fn half_open_and_trickling_connections_are_closed_at_the_timeouts() {
    const N: usize = 20;
    let certs = tempfile::tempdir().unwrap();
    let (cert, key) = self_signed_serving_cert(certs.path(), "localhost", "DNS:localhost");
    let oidc_port = free_port();
    let server = Server::start(ServerOptions {
        extra_top: oidc_block(oidc_port, Some((&cert, &key))),
        ..Default::default()
    });
    let agent_port = server.bind_port;
    let before = (
        open_connections(&server, "oidc_discovery"),
        open_connections(&server, "agent_api"),
    );
    let rt = multi_thread_rt();
    let mut tasks = Vec::new();
    for i in 0..4 * N {
        tasks.push(rt.spawn(async move {
            let kind = i % 4;
            let (port, alpn, head): (u16, &[u8], &[u8]) = match kind {
                0 | 1 => (
                    oidc_port,
                    b"http/1.1",
                    b"GET /.well-known/openid-configuration HTTP/1.1\r\nHost: localhost\r\n",
                ),
                _ => (agent_port, b"h2", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"),
            };
            let mut stream = tls_connect(port, alpn).await;
            let handshaken = Instant::now();
            if kind % 2 == 1 {
                // Trickle, and keep trickling header lines after the head's first line: a
                // slowloris never finishes.
                let bytes = head.iter().copied().chain(b"X-Slow: 1\r\n".repeat(100));
                let trickle = async {
                    for b in bytes {
                        if stream.write_all(&[b]).await.is_err() || stream.flush().await.is_err() {
                            return;
                        }
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                };
                let _ = tokio::time::timeout(Duration::from_secs(30), trickle).await;
            }
            let took = closed_after(stream, handshaken, Duration::from_secs(30)).await;
            (kind, took)
        }));
    }
    // An HTTP/2 client that opens no stream.
    let idle = rt.spawn(async move {
        let stream = tls_connect(agent_port, b"h2").await;
        let (_client, conn) = hyper::client::conn::http2::handshake::<
            _,
            _,
            http_body_util::Empty<hyper::body::Bytes>,
        >(
            hyper_util::rt::TokioExecutor::new(),
            hyper_util::rt::TokioIo::new(stream),
        )
        .await
        .expect("HTTP/2 handshake");
        let start = Instant::now();
        tokio::time::timeout(Duration::from_secs(120), conn)
            .await
            .expect("the server closes an HTTP/2 connection with no stream")
            .expect("closed cleanly (GOAWAY)");
        start.elapsed()
    });

    std::thread::sleep(Duration::from_secs(5));
    let during = (
        open_connections(&server, "oidc_discovery"),
        open_connections(&server, "agent_api"),
    );
    let names = [
        "OIDC silent",
        "OIDC trickling",
        "agent API silent",
        "agent API trickling",
    ];
    let mut range = [(Duration::MAX, Duration::ZERO); 4];
    for task in tasks {
        let (kind, took) = rt.block_on(task).unwrap();
        let took = took.unwrap_or_else(|| panic!("{}: still open after 30 s", names[kind]));
        range[kind] = (range[kind].0.min(took), range[kind].1.max(took));
        assert!(
            took >= HEADER_READ - Duration::from_millis(500)
                && took < HEADER_READ + Duration::from_secs(5),
            "{}: closed {took:?} after the handshake",
            names[kind]
        );
    }
    assert!(
        during.0 >= before.0 + 2 * N as u64 && during.1 >= before.1 + 2 * N as u64,
        "all held at 5 s: before {before:?}, during {during:?}"
    );
    let after = wait_for("the connections to be gone", Duration::from_secs(5), || {
        let now = (
            open_connections(&server, "oidc_discovery"),
            open_connections(&server, "agent_api"),
        );
        // The idle HTTP/2 connection is still open.
        (now.0 == before.0 && now.1 == before.1 + 1).then_some(now)
    });
    let idle_for = rt.block_on(idle).unwrap();
    assert!(
        idle_for >= HTTP2_IDLE - Duration::from_secs(1)
            && idle_for < HTTP2_IDLE + Duration::from_secs(10),
        "the idle HTTP/2 connection was closed after {idle_for:?}"
    );
    assert!(counter(&server, "oidc_discovery", "header_timeout") >= 2 * N as u64);
    assert!(counter(&server, "agent_api", "preface_timeout") >= 2 * N as u64);
    assert!(counter(&server, "agent_api", "idle_timeout") >= 1);
    for (name, (first, last)) in names.iter().zip(range) {
        println!("{name}: {N} closed {first:?} to {last:?} after the handshake");
    }
    println!(
        "open connections (oidc_discovery, agent_api): before {before:?}, 5 s in {during:?}, after {after:?}; idle HTTP/2 closed after {idle_for:?}"
    );
}

/// (b) The server runs under a 512-descriptor limit (soft and hard, so it cannot raise it).
/// A client keeps 600 connections open to the OIDC endpoint, reconnecting whatever the server
/// closes. Meanwhile the admin API creates an entry, an agent attests over the agent API and its
/// workload gets an X509-SVID, and the entry is in the database file.
#[test]
fn an_oidc_flood_under_a_low_descriptor_limit_leaves_the_apis_and_the_datastore_working() {
    const FLOOD: usize = 600;
    const FD_LIMIT: u64 = 512;
    // Room for our own side of the flood.
    let (_, hard) =
        nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE).unwrap();
    nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE, hard, hard).unwrap();
    assert!(hard > 2 * FLOOD as u64, "hard descriptor limit {hard}");

    let oidc_port = free_port();
    let server = Server::start(ServerOptions {
        extra_top: oidc_block(oidc_port, None),
        nofile_limit: Some(FD_LIMIT),
        ..Default::default()
    });

    let rt = multi_thread_rt();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flood = {
        let stop = stop.clone();
        rt.spawn(async move {
            let mut held: Vec<TcpStream> = Vec::new();
            let mut opened = 0u64;
            let mut probe = [0u8; 1];
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                // Drop the ones the server closed (EOF or reset), then top up to FLOOD. The
                // kernel picks each source port on connect, avoiding ports whose previous
                // connection is still in TIME_WAIT.
                held.retain(|s| {
                    matches!(s.try_read(&mut probe), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
                });
                while held.len() < FLOOD {
                    match TcpStream::connect(("127.0.0.1", oidc_port)).await {
                        Ok(s) => {
                            opened += 1;
                            held.push(s);
                        }
                        Err(_) => break,
                    }
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            opened
        })
    };
    // The flood in full swing, whatever the machine's speed: over a thousand connections
    // refused before the APIs are tried.
    wait_for("a thousand refusals", Duration::from_secs(60), || {
        (counter(&server, "oidc_discovery", "refused_listener_cap") > 1000).then_some(())
    });
    // Read later, once the APIs have been checked: the metrics listener is no part of them.
    let oidc_open = || open_connections(&server, "oidc_discovery");

    // The admin API answers (bounded: a server out of descriptors never accepts the call).
    let token = cli_within(&server, &["token", "generate", "-ttl", "600"]);
    assert!(token.starts_with("Token: "), "{token}");
    // The agent API (attestation, then minting through sync) and the datastore.
    let (agent, agent_id) = attested_agent(&server, false);
    let uid = nix::unistd::getuid().as_raw();
    let entry_id = register_uid(
        &server,
        "spiffe://example.org/survivor",
        &agent_id,
        uid,
        &[],
    );
    // The agent API: the agent attested above; now its workload's SVID comes through sync.
    agent.wait_for_ids(
        "the workload's SVID during the flood",
        &["spiffe://example.org/survivor"],
        Duration::from_secs(60),
    );

    let oidc_open = oidc_open();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let opened = rt.block_on(flood).unwrap();
    let persisted = sqlite3(
        &server.db_path(),
        &format!("SELECT count(*) FROM registered_entries WHERE id = '{entry_id}'"),
    );
    assert_eq!(persisted, "1", "entry {entry_id} in the database file");
    let caps_line = plain(
        server
            .log()
            .lines()
            .find(|l| l.contains("lowered them to fit"))
            .expect("the lowered caps are logged at start"),
    );
    assert!(caps_line.contains("fd_limit=512"), "{caps_line}");
    let refused = counter(&server, "oidc_discovery", "refused_listener_cap");
    let log = server.log();
    for bad in ["unable to open database file", "Too many open files"] {
        assert!(!log.contains(bad), "{bad:?} in the server log");
    }
    // The refusals were logged, but a handful of lines, not one per connection.
    let refusal_lines = log
        .lines()
        .filter(|l| l.contains("connections refused"))
        .count();
    assert!(refused > 1000, "{refused} refused");
    assert!(
        (1..=20).contains(&refusal_lines),
        "{refusal_lines} refusal lines for {refused} refusals"
    );
    println!(
        "{caps_line}\nflood: {opened} connections opened, {oidc_open} held by the OIDC listener, {refused} refused, {refusal_lines} log lines"
    );
}

/// (c) With `max_connections_per_ip = 4` on the OIDC listener, a fifth connection from
/// 127.0.0.1 is closed at once while 127.0.0.2 gets the discovery document. On the agent API,
/// with `max_connections_per_ip = 2`, a third connection without an SVID from one address is
/// refused, while three agents with SVIDs, all from 127.0.0.1, stay connected.
#[test]
fn the_per_address_cap_refuses_one_source_while_others_are_served() {
    let oidc_port = free_port();
    let server = Server::start(ServerOptions {
        extra_server: "connection_limits {\n    oidc_discovery { max_connections_per_ip = 4 }\n    agent_api { max_connections_per_ip = 2 }\n  }".into(),
        extra_top: oidc_block(oidc_port, None),
        ..Default::default()
    });
    let rt = multi_thread_rt();
    rt.block_on(async {
        let mut held = Vec::new();
        for _ in 0..4 {
            held.push(connect_from("127.0.0.1", oidc_port).await.unwrap());
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        let start = Instant::now();
        let surplus = connect_from("127.0.0.1", oidc_port).await.unwrap();
        let took = closed_after(surplus, start, Duration::from_secs(5))
            .await
            .expect("the fifth connection from 127.0.0.1 is closed");
        assert!(took < Duration::from_secs(1), "closed after {took:?}");

        let mut other = connect_from("127.0.0.2", oidc_port).await.unwrap();
        other
            .write_all(b"GET /.well-known/openid-configuration HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut answer = String::new();
        other.read_to_string(&mut answer).await.unwrap();
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert!(answer.contains("jwks_uri"), "{answer}");
        // The held ones are still open: refusing the surplus did not touch them.
        let mut probe = [0u8; 1];
        for s in &held {
            assert!(matches!(s.try_read(&mut probe), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock));
        }
    });
    assert!(counter(&server, "oidc_discovery", "refused_address_cap") >= 1);

    // Agents with SVIDs from one address, beyond its cap of 2.
    let agents: Vec<_> = (0..3).map(|_| attested_agent(&server, false)).collect();
    let agent_api_open = open_connections(&server, "agent_api");
    assert!(
        agent_api_open >= 3,
        "{agent_api_open} agent API connections"
    );
    rt.block_on(async {
        // Two connections without an SVID from 127.0.0.2 (TLS done, nothing sent: each is
        // held until its preface deadline), then a third: refused before any TLS.
        let connector = any_server_connector(b"h2");
        let mut unauthenticated = Vec::new();
        for _ in 0..2 {
            let tcp = connect_from("127.0.0.2", server.bind_port).await.unwrap();
            let tls = connector
                .connect(ServerName::try_from("localhost").unwrap(), tcp)
                .await
                .expect("TLS within the cap");
            unauthenticated.push(tls);
        }
        let tcp = connect_from("127.0.0.2", server.bind_port).await.unwrap();
        let refused = connector
            .connect(ServerName::try_from("localhost").unwrap(), tcp)
            .await;
        assert!(
            refused.is_err(),
            "a third connection without an SVID from 127.0.0.2"
        );
        // 127.0.0.3 is another address.
        let tcp = connect_from("127.0.0.3", server.bind_port).await.unwrap();
        connector
            .connect(ServerName::try_from("localhost").unwrap(), tcp)
            .await
            .expect("TLS from another address");
    });
    assert!(counter(&server, "agent_api", "refused_address_cap") >= 1);
    // The agents were never refused: still connected and serving.
    for (agent, _) in &agents {
        assert_eq!(
            http_get(agent.health_port, "/ready").map(|(code, _)| code),
            Some(200)
        );
    }
    assert!(open_connections(&server, "agent_api") >= 3);
}
