//! A `k8s_psat` agent whose own SVID expires during a server outage attests again by itself
//! once the server is back, with the token the kubelet wrote meanwhile (checked by the real
//! kube-apiserver's TokenReview, see `sigil_testkit::k8s`), and serves SVIDs again: no restart,
//! no operator. Until then `/ready` says why it is not ready, and workload SVIDs that are still
//! valid keep being served.

use std::time::Duration;

use sigil_testkit::k8s::{kube, psat_server_plugin};
use sigil_testkit::{Agent, Server, ServerOptions, http_get, register_uid, uid, wait_for};

const CLUSTER: &str = "prod";

#[test]
fn a_psat_agent_whose_svid_expired_attests_again_and_serves_again() {
    let k = kube();
    let ns = k.namespace("psat-exp");
    k.service_account(&ns, "spire-agent");
    let node = format!("{ns}-node");
    let node_uid = k.node(&node, &[]);
    k.pod(&ns, "agent-0", "spire-agent", &node, &[]);
    let dir = tempfile::tempdir().unwrap();
    let token_path = dir.path().join("spire-agent");
    let first_token = k.psat(&ns, "spire-agent", "agent-0", "spire-server");
    std::fs::write(&token_path, &first_token).unwrap();

    // Agent SVIDs live 6 s, workload SVIDs the default hour.
    let mut server = Server::start(ServerOptions {
        extra_server: "agent_ttl = \"6s\"".into(),
        extra_plugins: psat_server_plugin(
            CLUSTER,
            &k.server_kubeconfig(dir.path()),
            &[&format!("{ns}:spire-agent")],
            &["spire-server"],
            &[],
            &[],
        ),
        ..ServerOptions::default()
    });
    let mut agent = Agent::configure_psat(&server, CLUSTER, &token_path);
    agent.spawn(None);
    let agent_id = format!("spiffe://example.org/spire/agent/k8s_psat/{CLUSTER}/{node_uid}");
    register_uid(
        &server,
        "spiffe://example.org/psat-w",
        &agent_id,
        uid(),
        &[],
    );
    agent.wait_for_svid(Duration::from_secs(20));

    server.kill9();
    let body = wait_for(
        "/ready 503 once the agent SVID expired",
        Duration::from_secs(20),
        || {
            let (code, body) = http_get(agent.health_port, "/ready")?;
            (code == 503).then_some(body)
        },
    );
    assert!(body.contains("the agent's own SVID expired at"), "{body}");
    // It tries to attest again while the server is still down, and keeps trying.
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        agent
            .log()
            .contains("agent SVID expired before it could be renewed; attesting again"),
        "{}",
        agent.log()
    );
    assert_eq!(http_get(agent.health_port, "/ready").unwrap().0, 503);
    // The workload's SVID is still valid: still served.
    assert!(
        agent.fetched_x509().contains("spiffe://example.org/psat-w"),
        "{}",
        agent.log()
    );

    // The kubelet rotated the projected token meanwhile; the server returns.
    let fresh_token = k.psat(&ns, "spire-agent", "agent-0", "spire-server");
    assert_ne!(fresh_token, first_token);
    std::fs::write(&token_path, &fresh_token).unwrap();
    server.spawn();
    wait_for(
        "the agent to attest again and be ready",
        Duration::from_secs(60),
        || {
            let ready = http_get(agent.health_port, "/ready").is_some_and(|(c, _)| c == 200);
            (ready
                && agent
                    .log()
                    .contains("re-attested after its SVID expired; agent SVID replaced"))
            .then_some(())
        },
    );
    assert!(
        server.log().matches("agent attested").count() >= 2,
        "{}",
        server.log()
    );
    assert_eq!(
        sigil_testkit::listed_agent_ids(&server),
        [agent_id.as_str()]
    );

    // Sync works again under the new SVID: a new entry reaches the workload.
    register_uid(
        &server,
        "spiffe://example.org/psat-after",
        &agent_id,
        uid(),
        &[],
    );
    agent.wait_for_ids(
        "the entry created after re-attestation",
        &[
            "spiffe://example.org/psat-w",
            "spiffe://example.org/psat-after",
        ],
        Duration::from_secs(30),
    );
    for token in [&first_token, &fresh_token] {
        assert!(!server.log().contains(token.as_str()));
        assert!(!agent.log().contains(token.as_str()));
    }
    assert!(agent.stop().success());
}
