//! End-to-end `k8s_psat` node attestation against the real kube-apiserver (see
//! `sigil_testkit::k8s`): the server validates real projected service account tokens with
//! TokenReview through its least-privilege kubeconfig; each refusal reaches the agent with its
//! reason and the server log with the detail; the token appears in neither log. An expired token,
//! which the real server cannot produce quickly, comes from a tiny fake API server.

use std::path::{Path, PathBuf};
use std::time::Duration;

use sigil_testkit::k8s::{FakeApiServer, kube, psat_server_plugin};
use sigil_testkit::{Agent, Server, ServerOptions, register_uid, uid, wait_for};

const CLUSTER: &str = "prod";

/// A namespace of its own with SA `spire-agent`, a node `<ns>-node` and pod `agent-0` on it.
struct World {
    ns: String,
    node: String,
    node_uid: String,
    pod_uid: String,
    dir: tempfile::TempDir,
}

impl World {
    fn new(prefix: &str) -> Self {
        let k = kube();
        let ns = k.namespace(prefix);
        k.service_account(&ns, "spire-agent");
        let node = format!("{ns}-node");
        let node_uid = k.node(&node, &[("zone", "z1"), ("hidden-node", "x")]);
        let pod_uid = k.pod(
            &ns,
            "agent-0",
            "spire-agent",
            &node,
            &[("app", "spire-agent"), ("hidden-pod", "y")],
        );
        Self {
            ns,
            node,
            node_uid,
            pod_uid,
            dir: tempfile::tempdir().expect("temp dir"),
        }
    }

    fn allow(&self) -> String {
        format!("{}:spire-agent", self.ns)
    }

    fn token(&self, audience: &str) -> String {
        kube().psat(&self.ns, "spire-agent", "agent-0", audience)
    }

    fn token_path(&self) -> PathBuf {
        self.dir.path().join("spire-agent")
    }

    /// A server trusting cluster [`CLUSTER`] through `kubeconfig`, allowing this world's SA.
    fn server_with(&self, kubeconfig: &Path) -> Server {
        Server::start(ServerOptions {
            extra_plugins: psat_server_plugin(
                CLUSTER,
                kubeconfig,
                &[&self.allow()],
                &["spire-server"],
                &["zone"],
                &["app"],
            ),
            ..ServerOptions::default()
        })
    }

    fn server(&self) -> Server {
        self.server_with(&kube().server_kubeconfig(self.dir.path()))
    }

    fn agent_id(&self, server: &Server) -> String {
        format!(
            "spiffe://{}/spire/agent/k8s_psat/{CLUSTER}/{}",
            server.options.trust_domain, self.node_uid
        )
    }
}

fn selectors(server: &Server, agent_id: &str) -> Vec<String> {
    let shown = server.cli_json(&["agent", "show", "-spiffeID", agent_id]);
    let mut selectors: Vec<String> = shown["selectors"]
        .as_array()
        .unwrap_or_else(|| panic!("no selectors in {shown}"))
        .iter()
        .map(|s| {
            format!(
                "{}:{}",
                s["type"].as_str().unwrap(),
                s["value"].as_str().unwrap()
            )
        })
        .collect();
    selectors.sort();
    selectors
}

fn assert_no_token_in_logs(server: &Server, agent: &Agent, token: &str) {
    assert!(!token.is_empty());
    assert!(
        !server.log().contains(token),
        "the server log holds the token"
    );
    assert!(
        !agent.log().contains(token),
        "the agent log holds the token"
    );
}

/// Runs an agent presenting `token` for `cluster`; it must exit refused. Returns its log.
fn refused(server: &Server, cluster: &str, token: &str, dir: &Path) -> String {
    let token_path = dir.join("refused-token");
    std::fs::write(&token_path, format!("{token}\n")).expect("write token");
    let mut agent = Agent::configure_psat(server, cluster, &token_path);
    let status = agent.run_to_exit(Duration::from_secs(60));
    let log = agent.log();
    assert!(!status.success(), "the agent attested; log:\n{log}");
    assert!(
        sigil_testkit::listed_agent_ids(server).is_empty(),
        "an agent was recorded"
    );
    assert_no_token_in_logs(server, &agent, token);
    log
}

#[test]
fn attests_with_a_real_psat_and_serves_entries_under_a_node_alias() {
    let world = World::new("psat-ok");
    let server = world.server();
    let token = world.token("spire-server");
    std::fs::write(world.token_path(), &token).unwrap();
    let mut agent = Agent::configure_psat(&server, CLUSTER, &world.token_path());
    agent.spawn(None);

    let agent_id = world.agent_id(&server);
    let agents = server.cli_json(&["agent", "list"]);
    assert_eq!(
        sigil_testkit::listed_agent_ids(&server),
        [agent_id.as_str()]
    );
    assert_eq!(
        agents["agents"][0]["attestation_type"], "k8s_psat",
        "{agents}"
    );
    assert_eq!(agents["agents"][0]["can_reattest"], true, "{agents}");
    let mut expected = vec![
        format!("k8s_psat:cluster:{CLUSTER}"),
        format!("k8s_psat:agent_ns:{}", world.ns),
        "k8s_psat:agent_sa:spire-agent".to_owned(),
        "k8s_psat:agent_pod_name:agent-0".to_owned(),
        format!("k8s_psat:agent_pod_uid:{}", world.pod_uid),
        format!("k8s_psat:agent_node_name:{}", world.node),
        format!("k8s_psat:agent_node_uid:{}", world.node_uid),
        // Only the allowed label keys; the pod is Pending (no kubelet), so no host IP.
        "k8s_psat:agent_node_label:zone:z1".to_owned(),
        "k8s_psat:agent_pod_label:app:spire-agent".to_owned(),
    ];
    expected.sort();
    assert_eq!(selectors(&server, &agent_id), expected);

    // A node alias over every agent of this namespace carries a workload entry to the agent.
    let alias = format!("spiffe://example.org/k8s/{}/agents", world.ns);
    server.cli_json(&[
        "entry",
        "create",
        "-node",
        "-spiffeID",
        &alias,
        "-selector",
        &format!("k8s_psat:agent_ns:{}", world.ns),
    ]);
    register_uid(
        &server,
        "spiffe://example.org/psat-workload",
        &alias,
        uid(),
        &[],
    );
    wait_for(
        "the workload SVID under the node alias",
        Duration::from_secs(20),
        || {
            let out = agent.cli(&["api", "fetch", "x509", "-output", "json"]);
            String::from_utf8_lossy(&out.stdout)
                .contains("spiffe://example.org/psat-workload")
                .then_some(())
        },
    );
    assert_no_token_in_logs(&server, &agent, &token);
}

#[test]
fn token_for_another_audience_is_refused() {
    let world = World::new("psat-aud");
    let server = world.server();
    let log = refused(
        &server,
        CLUSTER,
        &world.token("not-spire"),
        world.dir.path(),
    );
    assert!(log.contains("not authenticated"), "{log}");
    assert!(server.log().contains("k8s_psat attestation denied"));
}

#[test]
fn service_account_not_allow_listed_is_refused() {
    let world = World::new("psat-sa");
    let k = kube();
    k.service_account(&world.ns, "intruder");
    k.pod(&world.ns, "intruder-0", "intruder", &world.node, &[]);
    let token = k.psat(&world.ns, "intruder", "intruder-0", "spire-server");
    let server = world.server();
    let log = refused(&server, CLUSTER, &token, world.dir.path());
    let pair = format!("{}:intruder is not in the allow list", world.ns);
    assert!(log.contains(&pair), "{log}");
    assert!(server.log().contains(&pair));
}

#[test]
fn token_of_a_deleted_pod_is_refused() {
    let world = World::new("psat-del");
    let token = world.token("spire-server");
    kube().delete_pod(&world.ns, "agent-0");
    let server = world.server();
    let log = refused(&server, CLUSTER, &token, world.dir.path());
    // Whichever notices first refuses it: the API server's TokenReview (once its cache has
    // seen the deletion) or our pod GET.
    let ours = format!(
        "pod {}/agent-0 the token is bound to no longer exists",
        world.ns
    );
    assert!(
        log.contains(&ours) || log.contains("Token has been invalidated"),
        "{log}"
    );
    assert!(log.contains("PermissionDenied"), "{log}");
}

#[test]
fn token_of_a_pod_recreated_under_the_same_name_is_refused() {
    let world = World::new("psat-uid");
    let token = world.token("spire-server");
    let k = kube();
    k.delete_pod(&world.ns, "agent-0");
    let new_uid = k.pod(&world.ns, "agent-0", "spire-agent", &world.node, &[]);
    assert_ne!(new_uid, world.pod_uid);
    let server = world.server();
    let log = refused(&server, CLUSTER, &token, world.dir.path());
    assert!(log.contains("PermissionDenied"), "{log}");
    // As above: the API server's review or our UID comparison; both UIDs are named in a log
    // (the agent's for the review's error, the server's for ours).
    assert!(
        log.contains("was recreated") || log.contains("does not match claim"),
        "{log}"
    );
    let server_log = format!("{log}{}", server.log());
    assert!(
        server_log.contains(&world.pod_uid) && server_log.contains(&new_uid),
        "{server_log}"
    );
}

#[test]
fn unknown_cluster_is_refused() {
    let world = World::new("psat-cluster");
    let server = world.server();
    let log = refused(
        &server,
        "staging",
        &world.token("spire-server"),
        world.dir.path(),
    );
    assert!(
        log.contains("cluster \"staging\" is not configured"),
        "{log}"
    );
    assert!(server.log().contains("unconfigured cluster"));
}

#[test]
fn server_without_tokenreview_rbac_cannot_verify() {
    let world = World::new("psat-rbac");
    kube().service_account(&world.ns, "no-rights");
    let kubeconfig = kube().kubeconfig_for(&world.ns, "no-rights", world.dir.path());
    let server = world.server_with(&kubeconfig);
    let log = refused(
        &server,
        CLUSTER,
        &world.token("spire-server"),
        world.dir.path(),
    );
    assert!(log.contains("could not verify the token"), "{log}");
    assert!(!log.contains("PermissionDenied"), "{log}");
    let server_log = server.log();
    assert!(server_log.contains("tokenreviews"), "{server_log}");
    assert!(server_log.contains("forbidden"), "{server_log}");
}

#[test]
fn expired_token_is_refused_with_the_review_error() {
    let fake = FakeApiServer::start(serde_json::json!({
        "authenticated": false,
        "error": "[invalid bearer token, square/go-jose/jwt: validation failed, token is expired (exp)]",
        "user": {},
    }));
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(ServerOptions {
        extra_plugins: psat_server_plugin(
            CLUSTER,
            &fake.kubeconfig(dir.path()),
            &["spire:spire-agent"],
            &["spire-server"],
            &[],
            &[],
        ),
        ..ServerOptions::default()
    });
    let log = refused(
        &server,
        CLUSTER,
        "eyJhbGciOiJSUzI1NiJ9.expired-psat.c2ln",
        dir.path(),
    );
    assert!(log.contains("token is expired"), "{log}");
}

#[test]
fn reattests_after_eviction_with_the_rotated_token_file() {
    let world = World::new("psat-rot");
    let server = world.server();
    let first = world.token("spire-server");
    std::fs::write(world.token_path(), &first).unwrap();
    let mut agent = Agent::configure_psat(&server, CLUSTER, &world.token_path());
    agent.spawn(None);
    let agent_id = world.agent_id(&server);
    let pod_uid = |uid: &str| format!("k8s_psat:agent_pod_uid:{uid}");
    assert!(selectors(&server, &agent_id).contains(&pod_uid(&world.pod_uid)));

    // The pod is replaced: the first token is dead; the kubelet writes one for the new pod.
    let k = kube();
    k.delete_pod(&world.ns, "agent-0");
    let new_uid = k.pod(&world.ns, "agent-0", "spire-agent", &world.node, &[]);
    let second = world.token("spire-server");
    std::fs::write(world.token_path(), format!("{second}\n")).unwrap();

    server.cli_ok(&["agent", "evict", "-spiffeID", &agent_id]);
    wait_for(
        "re-attestation with the rotated token",
        Duration::from_secs(60),
        || {
            (sigil_testkit::listed_agent_ids(&server).len() == 1)
                .then(|| selectors(&server, &agent_id))
                .filter(|s| s.contains(&pod_uid(&new_uid)))
        },
    );
    // The server records the node before the agent hears back.
    wait_for(
        "the agent to log its re-attestation",
        Duration::from_secs(10),
        || {
            agent
                .log()
                .contains("re-attested after eviction")
                .then_some(())
        },
    );
    assert_no_token_in_logs(&server, &agent, &first);
    assert_no_token_in_logs(&server, &agent, &second);
}
