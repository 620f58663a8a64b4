//! End-to-end tests of `sigil-agent` against a real `sigil-server`: join-token attestation,
//! entry sync and SVID minting checked through the Workload API CLI and `openssl verify`,
//! restart without re-attestation, an agent that outlives its server, and one that resumes after
//! an entry lost its authorization while it was away.

use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use sigil_testkit::verify::openssl_verify;
use sigil_testkit::{Agent, Server, ServerOptions, openssl, register_uid, wait_for};

fn token(server: &Server) -> String {
    server.cli_json(&["token", "generate"])["value"]
        .as_str()
        .expect("token value")
        .to_owned()
}

fn agent_ids(server: &Server) -> Vec<String> {
    sigil_testkit::listed_agent_ids(server)
}

fn verify_svid(dir: &std::path::Path) {
    let bundle = dir.join("bundle.0.pem");
    let svid = dir.join("svid.0.pem");
    let (ok, text) = openssl_verify(&bundle, &svid, &[]);
    assert!(ok, "openssl verify failed: {text}");
    let (_, text) = openssl(&[
        "x509",
        "-in",
        svid.to_str().unwrap(),
        "-noout",
        "-ext",
        "subjectAltName",
    ]);
    assert!(
        text.contains("URI:spiffe://example.org/e2e/workload"),
        "{text}"
    );
}

#[test]
fn agent_attests_serves_survives_restarts_and_server_outages() {
    let mut server = Server::start(ServerOptions::default());
    let token = token(&server);
    let mut agent = Agent::start(&server, Some(&token));
    let agents = agent_ids(&server);
    assert_eq!(agents.len(), 1, "one attested agent: {agents:?}");
    let agent_id = agents[0].clone();
    assert!(
        agent_id.starts_with("spiffe://example.org/spire/agent/join_token/"),
        "{agent_id}"
    );

    let uid = nix::unistd::getuid().as_raw();
    server.cli_ok(&[
        "entry",
        "create",
        "-spiffeID",
        "spiffe://example.org/e2e/workload",
        "-parentID",
        &agent_id,
        "-selector",
        &format!("unix:uid:{uid}"),
    ]);
    let dir = wait_for("the workload's X509-SVID", Duration::from_secs(30), || {
        agent.write_x509().ok()
    });
    verify_svid(dir.path());

    // Restart: the stored SVID is used, no token needed, same agent ID.
    let status = agent.stop();
    assert!(
        status.success(),
        "agent exited with {status}; log:\n{}",
        agent.log()
    );
    agent.spawn(None);
    assert_eq!(agent_ids(&server), vec![agent_id.clone()]);
    assert!(
        agent.log().contains("using the stored agent SVID"),
        "{}",
        agent.log()
    );
    let dir = wait_for("the SVID after restart", Duration::from_secs(30), || {
        agent.write_x509().ok()
    });
    verify_svid(dir.path());

    // Server down: the agent keeps serving what it has.
    server.kill9();
    let dir = agent
        .write_x509()
        .unwrap_or_else(|e| panic!("cached SVID served while the server is down: {e}"));
    verify_svid(dir.path());

    // Server back: the agent resumes (a new entry reaches the workload).
    server.spawn();
    server.cli_ok(&[
        "entry",
        "create",
        "-spiffeID",
        "spiffe://example.org/e2e/second",
        "-parentID",
        &agent_id,
        "-selector",
        &format!("unix:uid:{uid}"),
    ]);
    agent.wait_for_ids(
        "the second entry's SVID after the server restart",
        &["spiffe://example.org/e2e/second"],
        Duration::from_secs(60),
    );
}

#[test]
fn agent_without_svid_or_token_exits_with_a_clear_message() {
    let server = Server::start(ServerOptions::default());
    let agent = Agent::configure(&server);
    let out = std::process::Command::new(sigil_testkit::agent_bin())
        .args(["run", "-config"])
        .arg(&agent.config)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("no join token configured")
            && stderr.contains("sigil-server token generate"),
        "{stderr}"
    );

    let bad = std::process::Command::new(sigil_testkit::agent_bin())
        .args(["run", "-config", "/nonexistent/agent.conf"])
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(64), "bad config exits 64");
}

/// An entry that loses its authorization only through an ancestor (its parent entry deleted)
/// while the agent is away has no change event of its own, so a resume does not name it. The
/// server's digest of the agent's set shows the difference and the agent takes a full
/// snapshot, rather than keeping the entry until the periodic one minutes later.
#[test]
fn an_entry_orphaned_while_the_agent_was_away_leaves_it_on_resume() {
    let mut server = Server::start(ServerOptions::default());
    let token = token(&server);
    let agent = Agent::start(&server, Some(&token));
    let agent_id = agent_ids(&server)[0].clone();
    let uid = nix::unistd::getuid().as_raw();
    // A mid-level entry the workload does not match, one nested under it that it does, and
    // one of its own.
    let parent = register_uid(
        &server,
        "spiffe://example.org/e2e/parent",
        &agent_id,
        uid + 1,
        &[],
    );
    register_uid(
        &server,
        "spiffe://example.org/e2e/nested",
        "spiffe://example.org/e2e/parent",
        uid,
        &[],
    );
    register_uid(&server, "spiffe://example.org/e2e/own", &agent_id, uid, &[]);
    agent.wait_for_ids(
        "the nested entry's SVID",
        &[
            "spiffe://example.org/e2e/nested",
            "spiffe://example.org/e2e/own",
        ],
        Duration::from_secs(30),
    );

    // Away: stopped while its server crashes and comes back, and the parent is deleted
    // through the new process, which has no stream to it.
    agent.signal(Signal::SIGSTOP);
    server.kill9();
    server.spawn();
    server.cli_ok(&["entry", "delete", "-entryID", &parent]);
    agent.signal(Signal::SIGCONT);

    wait_for(
        "the orphaned entry to leave the workload",
        Duration::from_secs(30),
        || {
            let ids = agent.fetched_x509();
            (ids.contains("e2e/own") && !ids.contains("e2e/nested")).then_some(())
        },
    );
    assert!(
        agent.log().contains("a resumed sync left other entries"),
        "the agent resumed, found the difference and took a snapshot"
    );
}

/// A sync stream never ends by itself: at SIGTERM the server ends every one at once with
/// `Unavailable`, so the agent hears why and the drain does not wait on it (it held a server
/// pod's stop for seconds on a real node, tests/tests/k8s_node.rs).
#[test]
fn server_shutdown_ends_agent_sync_streams_with_a_reason() {
    let mut server = Server::start(ServerOptions::default());
    let token = token(&server);
    let agent = Agent::start(&server, Some(&token));
    wait_for("the agent's first sync", Duration::from_secs(20), || {
        agent
            .log()
            .contains("synced registration entries")
            .then_some(())
    });
    let status = server.stop();
    assert!(status.success(), "server exited with {status}");
    wait_for(
        "the agent to hear the server is shutting down",
        Duration::from_secs(10),
        || {
            agent
                .log()
                .contains("the server is shutting down")
                .then_some(())
        },
    );
    assert!(
        !server.log().contains("drain grace period elapsed"),
        "{}",
        server.log()
    );
}

/// After the server said it is shutting down, the agent retries its sync at most ~4 s apart
/// (SPIRE: every 5 s): a server back after 20 s is synced with within 6.5 s. With the usual
/// doubling back-off (1, 2, 4, 8, 16 s, each +-20 %) the try after the server's return would
/// come 7 s or more after it.
#[test]
fn agent_resyncs_within_seconds_of_a_restarted_server() {
    let mut server = Server::start(ServerOptions::default());
    let token = token(&server);
    let agent = Agent::start(&server, Some(&token));
    let restored = || {
        agent
            .log()
            .matches("connection to the server restored")
            .count()
    };
    wait_for("the agent's first sync", Duration::from_secs(20), || {
        agent
            .log()
            .contains("synced registration entries")
            .then_some(())
    });
    let before = restored();
    let status = server.stop();
    assert!(status.success(), "server exited with {status}");
    std::thread::sleep(Duration::from_secs(20));
    server.spawn();
    let back = Instant::now();
    wait_for(
        "the agent to sync with the restarted server",
        Duration::from_secs(30),
        || (restored() > before).then_some(()),
    );
    let took = back.elapsed();
    assert!(
        took < Duration::from_millis(6500),
        "the agent synced {took:?} after the server was back; log:\n{}",
        agent.log()
    );
}
