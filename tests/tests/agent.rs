//! End-to-end tests of `sigil-agent` against a real `sigil-server`: join-token attestation,
//! entry sync and SVID minting checked through the Workload API CLI and `openssl verify`,
//! restart without re-attestation, and an agent that outlives its server.

use std::time::Duration;

use sigil_tests::{Agent, Server, ServerOptions, openssl, wait_for};

fn token(server: &Server) -> String {
    server.cli_json(&["token", "generate"])["value"]
        .as_str()
        .expect("token value")
        .to_owned()
}

fn agent_ids(server: &Server) -> Vec<String> {
    server
        .cli_json(&["agent", "list"])
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|n| n["spiffe_id"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// `api fetch x509 -write dir` into a fresh dir; `Some(dir)` once the workload gets an SVID.
fn fetch_x509(agent: &Agent) -> Option<tempfile::TempDir> {
    let out_dir = tempfile::tempdir().unwrap();
    let out = agent.cli(&[
        "api",
        "fetch",
        "x509",
        "-write",
        out_dir.path().to_str().unwrap(),
    ]);
    out.status.success().then_some(out_dir)
}

fn verify_svid(dir: &std::path::Path) {
    let bundle = dir.join("bundle.0.pem");
    let svid = dir.join("svid.0.pem");
    let (ok, text) = openssl(&[
        "verify",
        "-x509_strict",
        "-CAfile",
        bundle.to_str().unwrap(),
        svid.to_str().unwrap(),
    ]);
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
        fetch_x509(&agent)
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
        fetch_x509(&agent)
    });
    verify_svid(dir.path());

    // Server down: the agent keeps serving what it has.
    server.kill9();
    let dir = fetch_x509(&agent).expect("cached SVID served while the server is down");
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
    wait_for(
        "the second entry's SVID after the server restart",
        Duration::from_secs(60),
        || {
            let out = agent.cli(&["api", "fetch", "x509"]);
            String::from_utf8_lossy(&out.stdout)
                .contains("spiffe://example.org/e2e/second")
                .then_some(())
        },
    );
}

#[test]
fn agent_without_svid_or_token_exits_with_a_clear_message() {
    let server = Server::start(ServerOptions::default());
    let agent = Agent::configure(&server);
    let out = std::process::Command::new(sigil_tests::agent_bin())
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

    let bad = std::process::Command::new(sigil_tests::agent_bin())
        .args(["run", "-config", "/nonexistent/agent.conf"])
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(64), "bad config exits 64");
}
