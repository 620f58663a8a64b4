//! Server outages longer than an SVID's life, with the real `sigil-server` and `sigil-agent`:
//!
//! - a workload SVID that expires while the server is down is never handed out: fetches and
//!   streams get `Unavailable` saying which SVID expired and since when the server has been
//!   unreachable (checked with the Rust `spiffe` client, py-spiffe and the agent CLI); the agent
//!   warns once when it passes half its life, counts it, and `/ready` is 503 until the server
//!   is back and a fresh SVID is served;
//! - a JWT-SVID is served from the agent's cache while the server cannot mint, past its
//!   half-life (one WARN, counted) until its `exp`, and never after;
//! - an agent whose own SVID expired and that cannot attest again (its join token was spent)
//!   says at ERROR what the operator must do, turns `/ready` to 503 and exits non-zero after
//!   `lost_identity_exit_delay`, even once the server is back.
//!
//! - the server answers nothing on a connection past the agent SVID it was opened with: its
//!   sync stream ends and its calls are refused, whatever the TLS handshake let through then.
//!
//! The `k8s_psat` agent that re-attests by itself is in `k8s_agent_expiry.rs`.

use std::process::Command;
use std::time::Duration;

use futures::StreamExt;
use sigil_testkit::{
    Agent, Server, ServerOptions, attested_agent, http_get, multi_thread_rt, python, register_uid,
    uid, unix_now, wait_for,
};

/// The leaf's NotAfter, Unix seconds.
fn not_after(leaf_der: &[u8]) -> i64 {
    let (_, cert) = x509_parser::parse_x509_certificate(leaf_der).expect("an X.509 leaf");
    cert.validity().not_after.timestamp()
}

fn ready(agent: &Agent) -> (u16, String) {
    http_get(agent.health_port, "/ready").expect("the health endpoint answers")
}

fn metrics(agent: &Agent) -> String {
    http_get(agent.health_port, "/metrics")
        .expect("the metrics endpoint answers")
        .1
}

/// One FetchX509SVID through the Rust `spiffe` client: the default SVID's leaf, or the error.
async fn fetch_leaf(socket: &std::path::Path) -> Result<Vec<u8>, String> {
    let client = spiffe::WorkloadApiClient::connect_to(format!("unix://{}", socket.display()))
        .await
        .map_err(|e| format!("connect: {e}"))?;
    client
        .fetch_x509_svid()
        .await
        .map(|svid| svid.leaf().as_bytes().to_vec())
        .map_err(|e| format!("{e} / {e:?}"))
}

/// One FetchJWTSVID for audience `a` through the Rust `spiffe` client: the token and its `exp`.
async fn fetch_jwt(socket: &std::path::Path) -> Result<(String, i64), String> {
    let client = spiffe::WorkloadApiClient::connect_to(format!("unix://{}", socket.display()))
        .await
        .map_err(|e| format!("connect: {e}"))?;
    client
        .fetch_jwt_svid(["a"], None)
        .await
        .map(|svid| (svid.token().to_owned(), svid.expiry().unix_timestamp()))
        .map_err(|e| format!("{e} / {e:?}"))
}

/// py-spiffe's `fetch_x509_svid`: `served <not_after>` or the exception it raised.
fn py_fetch(agent: &Agent) -> String {
    let script = r#"
import sys
from spiffe import WorkloadApiClient
try:
    svid = WorkloadApiClient(socket_path="unix://" + sys.argv[1]).fetch_x509_svid()
    print("served", int(svid.leaf.not_valid_after_utc.timestamp()))
except Exception as e:
    print("error", repr(e), str(e))
"#;
    let out = Command::new(python())
        .args(["-c", script, agent.socket.to_str().unwrap()])
        .output()
        .expect("python");
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn an_expired_workload_svid_is_withheld_with_the_reason_until_the_server_returns() {
    let mut server = Server::start(ServerOptions::default());
    let (agent, agent_id) = attested_agent(&server, false);
    let id = "spiffe://example.org/short-lived";
    // 6 s: above the 5 s floor, short enough to outlive during the test.
    register_uid(&server, id, &agent_id, uid(), &["-x509SVIDTTL", "6"]);
    agent.wait_for_ids("the short-lived SVID", &[id], Duration::from_secs(15));
    assert_eq!(ready(&agent).0, 200, "{}", ready(&agent).1);

    let rt = multi_thread_rt();
    // A stream open across the outage: every message it gets must be unexpired on arrival;
    // it must end with the reason once the SVID expired.
    let socket = agent.socket.clone();
    let stream = rt.spawn(async move {
        let client = spiffe::WorkloadApiClient::connect_to(format!("unix://{}", socket.display()))
            .await
            .unwrap();
        let mut stream = Box::pin(client.stream_x509_svids().await.unwrap());
        let mut received = Vec::new();
        loop {
            match tokio::time::timeout(Duration::from_secs(60), stream.next()).await {
                Ok(Some(Ok(svid))) => {
                    received.push((unix_now(), not_after(svid.leaf().as_bytes())));
                }
                Ok(Some(Err(e))) => return (received, format!("{e} / {e:?}")),
                Ok(None) => return (received, "stream ended without an error".to_owned()),
                Err(_) => return (received, "no message for 60 s".to_owned()),
            }
        }
    });

    server.kill9();
    let down_at = unix_now();
    // Until it expires every fetch is served an unexpired SVID; then Unavailable with why.
    let refusal = wait_for(
        "FetchX509SVID to be refused once the SVID expired",
        Duration::from_secs(20),
        || match rt.block_on(fetch_leaf(&agent.socket)) {
            Ok(leaf) => {
                let (now, na) = (unix_now(), not_after(&leaf));
                assert!(
                    now <= na,
                    "an expired X509-SVID was served: NotAfter {na}, now {now}"
                );
                std::thread::sleep(Duration::from_millis(100));
                None
            }
            Err(e) => Some(e),
        },
    );
    assert!(
        refusal.contains("Unavailable")
            && refusal.contains(&format!("X509-SVID for {id} expired at "))
            && refusal.contains("the server has been unreachable since "),
        "{refusal}"
    );

    // The agent CLI and py-spiffe are told the same.
    let out = agent.cli(&["api", "fetch", "x509"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("expired at") && stderr.contains("Unavailable"),
        "{stderr}"
    );
    let py = py_fetch(&agent);
    assert!(
        py.starts_with("error") && py.contains("expired at") && py.contains("unreachable since"),
        "{py}"
    );

    // The stream ended with the reason and never carried an expired SVID.
    let (received, end) = rt.block_on(stream).unwrap();
    assert!(!received.is_empty());
    for (at, na) in &received {
        assert!(at <= na, "stream message expired on arrival: {received:?}");
    }
    assert!(
        end.contains("Unavailable") && end.contains("expired at"),
        "{end}"
    );

    // Warned once at half-life, counted, and not ready while withheld; still live.
    let log = agent.log();
    let warnings = log
        .lines()
        .filter(|l| {
            l.contains("WARN")
                && l.contains(
                    "X509-SVID past half its life and not renewed: the server has been unreachable since",
                )
        })
        .count();
    assert_eq!(warnings, 1, "one half-life WARN per SVID; log:\n{log}");
    let m = metrics(&agent);
    assert!(
        m.contains("sigil_agent_svids_past_half_life_total{kind=\"x509\"} 1"),
        "{m}"
    );
    assert!(m.contains("sigil_agent_expired_x509_svids 1"), "{m}");
    let (code, body) = ready(&agent);
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("expired and are withheld"), "{body}");
    assert_eq!(http_get(agent.health_port, "/live").unwrap().0, 200);
    assert!(unix_now() - down_at < 30, "the outage check took too long");

    // The server returns: a fresh SVID is served again and the agent is ready.
    server.spawn();
    let leaf = wait_for(
        "a fresh SVID after the server returned",
        Duration::from_secs(60),
        || rt.block_on(fetch_leaf(&agent.socket)).ok(),
    );
    assert!(not_after(&leaf) >= unix_now());
    assert!(
        py_fetch(&agent).starts_with("served"),
        "{}",
        py_fetch(&agent)
    );
    wait_for("/ready 200", Duration::from_secs(10), || {
        (ready(&agent).0 == 200).then_some(())
    });
    assert!(metrics(&agent).contains("sigil_agent_expired_x509_svids 0"));
}

#[test]
fn a_jwt_svid_is_served_from_the_cache_until_exp_and_never_after() {
    let mut server = Server::start(ServerOptions::default());
    let (agent, agent_id) = attested_agent(&server, false);
    let id = "spiffe://example.org/jwt-short";
    register_uid(&server, id, &agent_id, uid(), &["-jwtSVIDTTL", "6"]);
    agent.wait_for_svid(Duration::from_secs(15));
    let rt = multi_thread_rt();
    let (token, exp) = rt.block_on(fetch_jwt(&agent.socket)).unwrap();

    server.kill9();
    // The server cannot mint: the cached token, past its half-life too, while it is valid;
    // from `exp` on, Unavailable with the reason.
    let refusal = wait_for(
        "FetchJWTSVID to be refused once the token expired",
        Duration::from_secs(20),
        || {
            let asked_at = unix_now();
            match rt.block_on(fetch_jwt(&agent.socket)) {
                Ok((t, e)) => {
                    assert_eq!(t, token, "a token the server minted while it was down?");
                    assert!(asked_at < e, "an expired JWT-SVID was served: exp {e}");
                    std::thread::sleep(Duration::from_millis(100));
                    None
                }
                Err(e) => Some(e),
            }
        },
    );
    assert!(unix_now() >= exp);
    assert!(
        refusal.contains(&format!("JWT-SVID for {id} expired at "))
            && refusal.contains("the server has been unreachable since "),
        "{refusal}"
    );
    let log = agent.log();
    assert!(
        log.lines().any(
            |l| l.contains("WARN") && l.contains("JWT-SVID past half its life and not renewed")
        ),
        "{log}"
    );
    assert!(
        metrics(&agent).contains("sigil_agent_svids_past_half_life_total{kind=\"jwt\"} 1"),
        "{}",
        metrics(&agent)
    );

    server.spawn();
    let (fresh, fresh_exp) = wait_for(
        "a fresh JWT-SVID after the server returned",
        Duration::from_secs(30),
        || rt.block_on(fetch_jwt(&agent.socket)).ok(),
    );
    assert_ne!(fresh, token);
    assert!(fresh_exp > unix_now());
}

#[test]
fn a_join_token_agent_whose_svid_expired_says_what_to_do_and_exits() {
    // Agent SVIDs live 6 s: the agent renews every ~3 s while the server is up.
    let mut server = Server::start(ServerOptions {
        extra_server: "agent_ttl = \"6s\"".into(),
        ..ServerOptions::default()
    });
    let token = server.join_token();
    let mut agent = Agent::configure(&server);
    agent.configure_agent_block("lost_identity_exit_delay = \"20s\"");
    agent.spawn(Some(&token));
    let agent_id = server.join_token_agent_id(&token);
    register_uid(&server, "spiffe://example.org/w", &agent_id, uid(), &[]);
    agent.wait_for_svid(Duration::from_secs(15));
    // It renews its own SVID while the server is up (at DEBUG: one line per renewal).
    wait_for("an agent SVID renewal", Duration::from_secs(15), || {
        agent
            .log()
            .lines()
            .any(|l| l.contains("DEBUG") && l.contains("agent SVID renewed"))
            .then_some(())
    });

    server.kill9();
    // Past agent_ttl the agent knows it cannot come back by itself.
    let (code, body) = wait_for(
        "/ready 503 once the agent SVID expired",
        Duration::from_secs(15),
        || {
            let (code, body) = ready(&agent);
            (code == 503).then_some((code, body))
        },
    );
    assert_eq!(code, 503);
    assert!(
        body.contains("cannot attest again") || body.contains("agent's own SVID expired"),
        "{body}"
    );
    let error_line = wait_for("the ERROR line", Duration::from_secs(5), || {
        agent
            .log()
            .lines()
            .find(|l| l.contains("ERROR") && l.contains("expired at"))
            .map(str::to_owned)
    });
    assert!(
        error_line.contains("generate a new one with `sigil-server token generate`")
            && error_line.contains("-joinToken")
            && error_line.contains("lost_identity_exit_delay"),
        "{error_line}"
    );
    assert_eq!(http_get(agent.health_port, "/live").unwrap().0, 200);

    // The server returns; the spent token cannot bring the agent back, and it does not try.
    server.spawn();
    let status = agent
        .wait_exit(Duration::from_secs(40))
        .unwrap_or_else(|| panic!("the agent did not exit; log:\n{}", agent.log()));
    assert!(!status.success(), "{status}");
    let log = agent.log();
    assert!(
        log.lines()
            .any(|l| l.contains("ERROR") && l.contains("exiting")),
        "{log}"
    );
    // Still the one agent; no new attestation was made with the spent token.
    assert_eq!(
        sigil_testkit::listed_agent_ids(&server),
        [agent_id.as_str()]
    );
    assert_eq!(
        server.log().matches("agent attested").count(),
        1,
        "{}",
        server.log()
    );
}

/// A client holding a copy of an agent's SVID keeps its mTLS connection open past the SVID's
/// NotAfter (TLS checks validity only at the handshake): the server ends its sync stream then,
/// and answers no further call on that connection.
#[test]
fn the_server_ends_a_connection_whose_agent_svid_expired() {
    use sigil_proto::sigil::agent::v1 as pb;
    use sigil_testkit::agent_link::server_connection;

    let server = Server::start(ServerOptions {
        extra_server: "agent_ttl = \"6s\"".into(),
        ..ServerOptions::default()
    });
    let (mut agent, _agent_id) = attested_agent(&server, false);
    let (svid, bundle) = agent.stored_credentials(&server);
    // The agent must not renew it (which would retire the copy) while the client uses it.
    agent.stop();
    let rt = multi_thread_rt();
    rt.block_on(async {
        let conn = server_connection(&server, &svid, &bundle);
        let mut client = conn.client();
        let mut stream = client
            .sync_entries(pb::SyncEntriesRequest { since_revision: 0 })
            .await
            .expect("the stream opens while the SVID is valid")
            .into_inner();
        stream
            .message()
            .await
            .expect("the first message")
            .expect("a snapshot");
        let left = svid.not_after - unix_now();
        assert!(left > 0, "the SVID is still valid");
        let ended = tokio::time::timeout(Duration::from_secs(left as u64 + 10), async {
            loop {
                match stream.message().await {
                    Ok(Some(_)) => continue,
                    Ok(None) => break None,
                    Err(status) => break Some(status),
                }
            }
        })
        .await
        .expect("the stream ends once the SVID has expired")
        .expect("with a status");
        assert!(unix_now() >= svid.not_after, "ended at expiry, not before");
        assert_eq!(ended.code(), tonic::Code::Unauthenticated, "{ended:?}");
        assert!(ended.message().contains("expired"), "{ended:?}");
        // A call on the same connection is refused too.
        let err = client
            .sync_entries(pb::SyncEntriesRequest { since_revision: 0 })
            .await
            .expect_err("no call past the SVID");
        assert!(
            err.code() == tonic::Code::Unauthenticated || err.code() == tonic::Code::Unavailable,
            "{err:?}"
        );
    });
}
