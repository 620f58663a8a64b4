//! End-to-end: the real agent's k8s workload attestor (fake `/proc` via `proc_root`, a test
//! kubelet on the read-only port) feeding identity-template and fixed k8s entries.

use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Child, Output};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use sigil_testkit::k8s::{Kube, kube, psat_server_plugin};
use sigil_testkit::kubelet::{self, TestPod};
use sigil_testkit::{Agent, Server, ServerOptions, agent_bin, wait_for};

/// Adds `WorkloadAttestor "k8s"` (read-only port, fake proc root) to the agent's config.
fn with_k8s_attestor(agent: &Agent, kubelet_port: u16, proc_root: &Path) {
    let conf = std::fs::read_to_string(&agent.config).unwrap();
    let k8s = format!(
        "  WorkloadAttestor \"k8s\" {{\n    plugin_data {{\n      kubelet_read_only_port = {kubelet_port}\n      proc_root = \"{}\"\n    }}\n  }}\n  WorkloadAttestor \"unix\" {{",
        proc_root.display()
    );
    let conf = conf.replacen("  WorkloadAttestor \"unix\" {", &k8s, 1);
    std::fs::write(&agent.config, conf).unwrap();
}

/// Runs `sigil-agent api fetch <args>` as a process placed in `pod` (or with `cgroup` text)
/// before it talks to the agent: `exec` keeps the PID the fake cgroup is written for.
/// A server accepting PSATs of `ns`'s `spire-agent` service account for `cluster`, with the
/// node alias `spiffe://example.org/k8s-cluster/<cluster>` on that cluster's selector.
fn psat_server_with_alias(k: &Kube, ns: &str, cluster: &str, dir: &Path) -> (Server, String) {
    let server = Server::start(ServerOptions {
        extra_plugins: psat_server_plugin(
            cluster,
            &k.server_kubeconfig(dir),
            &[&format!("{ns}:spire-agent")],
            &["spire-server"],
            &[],
            &[],
        ),
        ..ServerOptions::default()
    });
    let alias = format!("spiffe://example.org/k8s-cluster/{cluster}");
    server.cli_json(&[
        "entry",
        "create",
        "-node",
        "-spiffeID",
        &alias,
        "-selector",
        &format!("k8s_psat:cluster:{cluster}"),
    ]);
    (server, alias)
}

fn fetch_as(agent: &Agent, proc_root: &Path, pod: Option<&TestPod>, args: &str) -> Output {
    let socket = agent.socket.display().to_string();
    let mut argv = vec!["api", "fetch"];
    argv.extend(args.split_whitespace());
    argv.extend(["-socketPath", &socket, "-output", "json"]);
    let mut child = kubelet::spawn_in_pod(proc_root, pod, &agent_bin(), &argv);
    drop(child.stdin.take());
    child.wait_with_output().unwrap()
}

/// Starts `sigil-agent api watch` as a process placed in `pod`: its stdout lines arrive on the
/// receiver, then `None` when the stream ends.
fn watch_as(
    agent: &Agent,
    proc_root: &Path,
    pod: &TestPod,
) -> (Child, mpsc::Receiver<Option<String>>) {
    let socket = agent.socket.display().to_string();
    let mut child = kubelet::spawn_in_pod(
        proc_root,
        Some(pod),
        &agent_bin(),
        &["api", "watch", "-socketPath", &socket],
    );
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(Some(line)).is_err() {
                return;
            }
        }
        let _ = tx.send(None);
    });
    (child, rx)
}

/// Reads `lines` until one contains `text`, within `timeout`.
fn wait_line(lines: &mpsc::Receiver<Option<String>>, text: &str, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match lines.recv_timeout(left) {
            Ok(Some(line)) if line.contains(text) => return,
            Ok(Some(_)) => {}
            Ok(None) => panic!("the stream ended before printing {text:?}"),
            Err(_) => panic!("no line with {text:?} within {timeout:?}"),
        }
    }
}

/// The URI SANs of each returned X509-SVID leaf.
fn leaf_uris(out: &Output) -> Vec<Vec<String>> {
    sigil_testkit::workload::leaf_uris(&serde_json::from_slice(&out.stdout).unwrap())
}

fn ids(out: &Output) -> Vec<String> {
    let v: serde_json::Value = match serde_json::from_slice(&out.stdout) {
        Ok(v) => v,
        Err(_) => return Vec::new(),
    };
    // `api fetch x509` prints one message; `api fetch jwt` two, as SPIRE: [{svids}, {bundles}].
    let svids = if v.is_array() {
        &v[0]["svids"]
    } else {
        &v["svids"]
    };
    svids
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s["spiffe_id"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn templates_and_fixed_k8s_entries_follow_pod_selectors() {
    let server = Server::start(ServerOptions::default());
    let payments = TestPod::new("payments", "checkout-7d9f", "checkout-service", 1);
    let web = TestPod::new("web", "frontend-1", "frontend", 2);
    let port = kubelet::start(vec![payments.clone(), web.clone()]);
    let proc_dir = tempfile::tempdir().unwrap();
    let proc_root = proc_dir.path();

    let token = server.join_token();
    let agent_id = server.join_token_agent_id(&token);
    server.cli_json(&[
        "entry",
        "create",
        "-template",
        "-spiffeID",
        "spiffe://example.org/ns/{k8s:ns}/sa/{k8s:sa}",
        "-parentID",
        &agent_id,
        "-selector",
        "k8s:ns",
    ]);
    server.cli_json(&[
        "entry",
        "create",
        "-spiffeID",
        "spiffe://example.org/ns/payments/sa/checkout-service",
        "-parentID",
        &agent_id,
        "-selector",
        "k8s:ns:payments",
        "-selector",
        "k8s:sa:checkout-service",
        "-hint",
        "checkout",
    ]);
    let mut agent = Agent::configure(&server);
    with_k8s_attestor(&agent, port, proc_root);
    agent.spawn(Some(&token));

    let pay_id = "spiffe://example.org/ns/payments/sa/checkout-service".to_owned();
    let web_id = "spiffe://example.org/ns/web/sa/frontend".to_owned();
    // The payments pod: the fixed checkout-service entry and its rendered template ID (the
    // same text, two entries).
    let pay = wait_for("the payments pod's SVIDs", Duration::from_secs(20), || {
        let out = fetch_as(&agent, proc_root, Some(&payments), "x509");
        let found = ids(&out);
        (found.len() == 2).then_some(found)
    });
    assert_eq!(pay, [pay_id.clone(), pay_id.clone()], "{}", agent.log());
    // The web pod: only its own rendered ID; never checkout-service.
    let web_out = wait_for("the web pod's SVID", Duration::from_secs(20), || {
        let out = fetch_as(&agent, proc_root, Some(&web), "x509");
        (!ids(&out).is_empty()).then_some(out)
    });
    assert_eq!(ids(&web_out), std::slice::from_ref(&web_id));
    // The certificates themselves carry the rendered IDs.
    assert_eq!(leaf_uris(&web_out), [vec![web_id.clone()]]);
    let pay_out = fetch_as(&agent, proc_root, Some(&payments), "x509");
    assert_eq!(leaf_uris(&pay_out), [vec![pay_id.clone()], vec![pay_id]]);

    // JWT-SVIDs carry the rendered IDs too.
    let jwt = fetch_as(&agent, proc_root, Some(&web), "jwt -audience payments");
    assert!(
        jwt.status.success(),
        "{}",
        String::from_utf8_lossy(&jwt.stderr)
    );
    assert_eq!(ids(&jwt), [web_id]);

    // A process in no pod gets nothing.
    let none = fetch_as(&agent, proc_root, None, "x509");
    assert!(!none.status.success());
    assert!(ids(&none).is_empty());
}

/// The seed's story on a Kubernetes node: the agent attests with a real PSAT (real API server), and
/// both the checkout-service entry and an identity template hang off a node alias on the cluster
/// selector, as an operator would register them once for every node. The workload pods exist in
/// the API too, bound to the agent's node with the UIDs the test kubelet reports: the server
/// signs a template instance via the alias only for such a pod (issue 17), which the agent names
/// in its mint request (`pod_uid`: the pod of the workload that asked).
#[test]
fn psat_node_alias_serves_checkout_service_and_templates_to_the_right_pods() {
    let k = kube();
    let ns = k.namespace("seed");
    k.service_account(&ns, "spire-agent");
    let node = format!("{ns}-node");
    k.node(&node, &[]);
    k.pod(&ns, "agent-0", "spire-agent", &node, &[]);
    // The workloads' namespaces, and their pods bound to the agent's node.
    let pay_ns = k.namespace("payments");
    let shop_ns = k.namespace("shop");
    let api_pod = |ns: &str, name: &str, n: u8| {
        k.service_account(ns, "checkout-service");
        let mut pod = TestPod::new(ns, name, "checkout-service", n);
        pod.uid = k.pod(ns, name, "checkout-service", &node, &[("app", name)]);
        pod.node = node.clone();
        pod
    };
    let payments = api_pod(&pay_ns, "checkout-7d9f", 3);
    let other = api_pod(&shop_ns, "checkout-1", 4);
    let dir = tempfile::tempdir().unwrap();
    let cluster = "demo";
    let (server, alias) = psat_server_with_alias(k, &ns, cluster, dir.path());
    let checkout = "spiffe://example.org/ns/payments/sa/checkout-service";
    server.cli_json(&[
        "entry",
        "create",
        "-spiffeID",
        checkout,
        "-parentID",
        &alias,
        "-selector",
        &format!("k8s:ns:{pay_ns}"),
        "-selector",
        "k8s:sa:checkout-service",
    ]);
    server.cli_json(&[
        "entry",
        "create",
        "-template",
        "-spiffeID",
        "spiffe://example.org/pods/{k8s:ns}/{k8s:pod-name}",
        "-parentID",
        &alias,
        "-selector",
        "k8s:ns",
    ]);

    let port = kubelet::start(vec![payments.clone(), other.clone()]);
    let proc_dir = tempfile::tempdir().unwrap();
    let proc_root = proc_dir.path();
    let token_path = dir.path().join("spire-agent");
    std::fs::write(
        &token_path,
        k.psat(&ns, "spire-agent", "agent-0", "spire-server"),
    )
    .unwrap();
    let mut agent = Agent::configure_psat(&server, cluster, &token_path);
    with_k8s_attestor(&agent, port, proc_root);
    agent.spawn(None);

    let mut pay = wait_for("the payments pod's SVIDs", Duration::from_secs(20), || {
        let found = ids(&fetch_as(&agent, proc_root, Some(&payments), "x509"));
        (found.len() == 2).then_some(found)
    });
    pay.sort();
    assert_eq!(
        pay,
        [
            checkout.to_owned(),
            format!("spiffe://example.org/pods/{pay_ns}/checkout-7d9f")
        ],
        "{}",
        agent.log()
    );
    // Same service account name in another namespace: its own rendered ID, never checkout-service.
    let out = wait_for("the other pod's SVID", Duration::from_secs(20), || {
        let out = fetch_as(&agent, proc_root, Some(&other), "x509");
        (!ids(&out).is_empty()).then_some(out)
    });
    let other_id = format!("spiffe://example.org/pods/{shop_ns}/checkout-1");
    assert_eq!(ids(&out), std::slice::from_ref(&other_id));
    assert_eq!(leaf_uris(&out), [vec![other_id]]);
}

/// A pod deleted in the API while its workload streams X509-SVIDs (issue 17): the server tells
/// the agent on the sync stream, and the agent stops serving that pod the identity within a few
/// seconds (the stream ends with "no identity issued", its only identity gone; asking again
/// gives nothing), while the other replica on the node, which still exists, keeps the same
/// rendered ID, on its open stream and on a new call.
#[test]
fn a_deleted_pod_stops_getting_its_identity_while_a_live_replica_keeps_it() {
    const BOUND: Duration = Duration::from_secs(10);
    let k = kube();
    let ns = k.namespace("gone");
    k.service_account(&ns, "spire-agent");
    k.service_account(&ns, "web");
    let node = format!("{ns}-node");
    k.node(&node, &[]);
    k.pod(&ns, "agent-0", "spire-agent", &node, &[]);
    let replica = |name: &str, n: u8| {
        let mut pod = TestPod::new(&ns, name, "web", n);
        pod.uid = k.pod(&ns, name, "web", &node, &[("app", "web")]);
        pod.node = node.clone();
        pod
    };
    let doomed = replica("web-1", 5);
    let live = replica("web-2", 6);
    let dir = tempfile::tempdir().unwrap();
    let cluster = "gone";
    let (server, alias) = psat_server_with_alias(k, &ns, cluster, dir.path());
    server.cli_json(&[
        "entry",
        "create",
        "-template",
        "-spiffeID",
        "spiffe://example.org/ns/{k8s:ns}/sa/{k8s:sa}",
        "-parentID",
        &alias,
        "-selector",
        "k8s:ns",
    ]);

    let port = kubelet::start(vec![doomed.clone(), live.clone()]);
    let proc_dir = tempfile::tempdir().unwrap();
    let proc_root = proc_dir.path();
    let token_path = dir.path().join("spire-agent");
    std::fs::write(
        &token_path,
        k.psat(&ns, "spire-agent", "agent-0", "spire-server"),
    )
    .unwrap();
    let mut agent = Agent::configure_psat(&server, cluster, &token_path);
    with_k8s_attestor(&agent, port, proc_root);
    agent.spawn(None);

    // Both replicas render one ID, and get it.
    let web_id = format!("spiffe://example.org/ns/{ns}/sa/web");
    for pod in [&doomed, &live] {
        let found = wait_for("a replica's SVID", Duration::from_secs(20), || {
            let found = ids(&fetch_as(&agent, proc_root, Some(pod), "x509"));
            (!found.is_empty()).then_some(found)
        });
        assert_eq!(found, std::slice::from_ref(&web_id), "{}", agent.log());
    }
    let (mut doomed_watch, doomed_lines) = watch_as(&agent, proc_root, &doomed);
    let (mut live_watch, live_lines) = watch_as(&agent, proc_root, &live);
    wait_line(&doomed_lines, &web_id, BOUND);
    wait_line(&live_lines, &web_id, BOUND);

    // Timed from the delete call: `kubectl delete --wait` returns once the pod is gone.
    let deleted = Instant::now();
    k.delete_pod(&ns, "web-1");
    loop {
        let left = BOUND.saturating_sub(deleted.elapsed());
        match doomed_lines.recv_timeout(left) {
            Ok(Some(line)) => assert!(
                !line.contains(&web_id),
                "the deleted pod was sent its identity again: {line}"
            ),
            Ok(None) => break,
            Err(_) => panic!(
                "the deleted pod's stream still open {BOUND:?} after the deletion\n{}",
                agent.log()
            ),
        }
    }
    let took = deleted.elapsed();
    let status = doomed_watch.wait().unwrap();
    let mut stderr = String::new();
    doomed_watch
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert!(!status.success());
    assert!(stderr.contains("no identity issued"), "{stderr}");
    eprintln!("the deleted pod's stream ended {took:?} after the deletion");

    // Asking again as the deleted pod (its process may run on until killed): nothing.
    let out = fetch_as(&agent, proc_root, Some(&doomed), "x509");
    assert!(
        ids(&out).is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no identity issued"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // The live replica: its stream is still open, and a new call still gets the ID.
    assert!(
        live_watch.try_wait().unwrap().is_none(),
        "the live replica's stream ended"
    );
    assert_eq!(
        ids(&fetch_as(&agent, proc_root, Some(&live), "x509")),
        std::slice::from_ref(&web_id)
    );
    live_watch.kill().unwrap();
    live_watch.wait().unwrap();
}
