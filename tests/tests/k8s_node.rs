//! Issue 21: deploy/ on a real node. `testkit/k8s/real-node.sh` runs a one-node cluster on this
//! machine (kube-apiserver, controllers, scheduler, kube-proxy and a kubelet running pods with
//! containerd and runc, all v1.20.2 from Debian's source); `kubectl apply -k` of deploy/ (through
//! the small DNS overlay in testkit/k8s/node-overlay) starts the server StatefulSet and the agent
//! DaemonSet from images built on this machine. The agent attests with the token the kubelet
//! projected; workloads are attested through the real kubelet's `/pods` and their real container
//! cgroups; the zero-trust example runs as pods; restarts of a workload, the agent and the server
//! are timed.
//!
//! Runs when `scripts/test-k8s-node` has started the node (it sets `SIGIL_K8S_NODE=1`, and then a
//! missing node fails the test); prints SKIPPED otherwise.

use std::path::Path;
use std::time::{Duration, Instant};

use sigil_testkit::k8s::{Kube, kubectl_bin, node};
use sigil_testkit::pem_certs;
use x509_parser::prelude::*;

const TRUST_DOMAIN: &str = "example.org";
/// deploy/server.conf's and agent.conf's cluster name.
const CLUSTER: &str = "demo";
/// The node alias of SPIRE's Kubernetes guides: every agent of the cluster.
const ALIAS: &str = "spiffe://example.org/k8s-cluster/demo";
const CHECKOUT: &str = "spiffe://example.org/ns/payments/sa/checkout-service";
const PAYMENT_PROCESSOR: &str = "spiffe://example.org/ns/payments/sa/payment-processor";
const STOREFRONT: &str = "spiffe://example.org/ns/payments/sa/storefront";
/// One template for every service account of `payments` not named by its own entry.
const TEMPLATE: &str = "spiffe://example.org/ns/{k8s:ns}/sa/{k8s:sa}";
const SOCKET: &str = "/run/spire/sockets/agent.sock";
/// Generous bound for anything the cluster does (image start, restarts, probes).
const PATIENCE: Duration = Duration::from_secs(120);

fn node_or_skip() -> Option<Kube> {
    let required = std::env::var_os("SIGIL_K8S_NODE").is_some();
    match node() {
        Some(k) => Some(k),
        None if required => panic!(
            "SIGIL_K8S_NODE is set but the one-node cluster does not answer (real-node.sh start)"
        ),
        None => {
            eprintln!(
                "SKIPPED: no one-node cluster (scripts/test-k8s-node starts one and runs this test)"
            );
            None
        }
    }
}

/// `sigil-server <args>` inside the server's pod, as SPIRE's guides run `spire-server`.
fn server_cli(k: &Kube, args: &[&str]) -> String {
    let mut all = vec![
        "-n",
        "spire",
        "exec",
        "spire-server-0",
        "--",
        "/usr/local/bin/sigil-server",
    ];
    all.extend(args);
    k.kubectl(&all)
}

/// `entry create` under the node alias, with `-template` when the SPIFFE ID is one.
fn under_alias(k: &Kube, spiffe_id: &str, selectors: &[&str]) {
    let mut args = vec![
        "entry",
        "create",
        "-parentID",
        ALIAS,
        "-spiffeID",
        spiffe_id,
    ];
    if spiffe_id.contains('{') {
        args.push("-template");
    }
    for s in selectors {
        args.extend(["-selector", s]);
    }
    server_cli(k, &args);
}

/// The SVIDs a pod's process gets from the Workload API through the socket mounted from the
/// node: `sigil-agent api fetch x509` run in the pod (writing them to its /tmp), their SPIFFE IDs
/// (the default SVID first) or why not.
fn fetch_all(k: &Kube, ns: &str, pod: &str) -> Result<Vec<String>, String> {
    let (ok, out, err) = k.try_kubectl(
        &[
            "-n",
            ns,
            "exec",
            pod,
            "--",
            "sigil-agent",
            "api",
            "fetch",
            "x509",
            "-socketPath",
            SOCKET,
            "-timeout",
            "5s",
            "-write",
            "/tmp",
        ],
        "",
    );
    if !ok {
        return Err(format!("{out}{err}"));
    }
    let ids: Vec<String> = out
        .lines()
        .filter_map(|l| l.strip_prefix("SPIFFE ID:"))
        .map(|id| id.trim().to_owned())
        .collect();
    if ids.is_empty() { Err(out) } else { Ok(ids) }
}

/// The default SVID's SPIFFE ID from [`fetch_all`].
fn fetch(k: &Kube, ns: &str, pod: &str) -> Result<String, String> {
    fetch_all(k, ns, pod).map(|mut ids| ids.swap_remove(0))
}

/// Polls [`fetch`] until it answers `id`; the time it took.
fn wait_for_identity(k: &Kube, ns: &str, pod: &str, id: &str) -> Duration {
    let start = Instant::now();
    let mut last = Err(String::new());
    while start.elapsed() < PATIENCE {
        last = fetch(k, ns, pod);
        if last.as_deref() == Ok(id) {
            return start.elapsed();
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    panic!(
        "{ns}/{pod} never got {id}; last answer: {last:?}\n{}",
        sigil_logs(k)
    );
}

/// The SVID [`fetch`] wrote in the pod, checked by openssl against the bundle the agent served
/// with it and by x509-parser for its URI SAN: an independent verifier's view of the identity.
fn verify_written_svid(k: &Kube, ns: &str, pod: &str, id: &str) {
    let dir = tempfile::tempdir().unwrap();
    for name in ["svid.0.pem", "bundle.0.pem"] {
        let pem = k.kubectl(&["-n", ns, "exec", pod, "--", "cat", &format!("/tmp/{name}")]);
        std::fs::write(dir.path().join(name), pem + "\n").unwrap();
    }
    let svid = dir.path().join("svid.0.pem");
    let out = std::process::Command::new("openssl")
        .arg("verify")
        .arg("-CAfile")
        .arg(dir.path().join("bundle.0.pem"))
        .arg(&svid)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "openssl verify of {ns}/{pod}'s SVID: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(uri_sans(&svid), vec![id.to_owned()]);
}

fn uri_sans(pem_file: &Path) -> Vec<String> {
    let der = &pem_certs(&std::fs::read_to_string(pem_file).unwrap())[0];
    sigil_testkit::workload::uri_sans(der)
}

/// A workload pod: busybox plus the example's binaries, the agent's socket directory mounted
/// read-only from the node (deploy/README's workload recipe), idle until told to stop.
fn workload_pod(k: &Kube, ns: &str, name: &str, sa: &str, labels: &str) {
    k.apply(&format!(
        r#"apiVersion: v1
kind: Pod
metadata: {{name: {name}, namespace: {ns}, labels: {{{labels}}}}}
spec:
  serviceAccountName: {sa}
  securityContext: {{runAsUser: 1000, runAsGroup: 1000, runAsNonRoot: true}}
  containers:
  - name: main
    image: sigil-workload:dev
    imagePullPolicy: Never
    command: ["sh", "-c", "trap 'exit 3' TERM; while true; do sleep 1; done"]
    env: [{{name: SPIFFE_ENDPOINT_SOCKET, value: "unix://{SOCKET}"}}]
    securityContext: {{allowPrivilegeEscalation: false, capabilities: {{drop: [ALL]}}}}
    volumeMounts: [{{name: spire-agent-socket, mountPath: /run/spire/sockets, readOnly: true}}]
  volumes: [{{name: spire-agent-socket, hostPath: {{path: /run/spire/sockets, type: Directory}}}}]
"#
    ));
}

/// The SPIRE guide's workload: pod `checkout` of service account `checkout-service` in `ns`.
fn checkout_pod(k: &Kube, ns: &str) {
    workload_pod(k, ns, "checkout", "checkout-service", "app: checkout");
}

fn wait_ready(k: &Kube, ns: &str, what: &str) {
    k.kubectl(&[
        "-n",
        ns,
        "wait",
        "--for=condition=Ready",
        what,
        &format!("--timeout={}s", PATIENCE.as_secs()),
    ]);
}

fn rollout(k: &Kube, what: &str) {
    k.kubectl(&[
        "-n",
        "spire",
        "rollout",
        "status",
        what,
        &format!("--timeout={}s", PATIENCE.as_secs()),
    ]);
}

fn bundle(k: &Kube) -> String {
    k.kubectl(&[
        "-n",
        "spire",
        "get",
        "configmap",
        "spire-bundle",
        "-o",
        "jsonpath={.data.bundle\\.crt}",
    ])
}

/// Seconds with two decimals (milliseconds below a second), for the table the test prints
/// (README "A real node").
fn secs(d: Duration) -> String {
    if d < Duration::from_secs(1) {
        format!("{:.1} ms", d.as_secs_f64() * 1000.0)
    } else {
        format!("{:.2} s", d.as_secs_f64())
    }
}

#[test]
fn deploy_runs_on_a_real_node_and_identities_follow_restarts() {
    let Some(k) = node_or_skip() else { return };
    let (ok, _, _) = k.try_kubectl(&["get", "namespace", "spire"], "");
    assert!(
        !ok,
        "namespace spire exists: start a fresh node (real-node.sh start)"
    );
    let mut times: Vec<(String, Duration)> = Vec::new();

    // kubectl apply -k: the server and the agent become Ready, the agent attested with the
    // kubelet-projected token, the bundle ConfigMap published.
    let overlay = Path::new(env!("CARGO_MANIFEST_DIR")).join("../testkit/k8s/node-overlay");
    let t = Instant::now();
    k.kubectl(&["apply", "-k", overlay.to_str().unwrap()]);
    rollout(&k, "statefulset/spire-server");
    rollout(&k, "daemonset/spire-agent");
    times.push((
        "kubectl apply -k -> server and agent pods Ready".into(),
        t.elapsed(),
    ));
    let published = bundle(&k);
    let ca = &pem_certs(&published)[0];
    let (_, ca) = X509Certificate::from_der(ca).unwrap();
    assert!(ca.is_ca(), "the published bundle holds the CA");
    let node_uid = k.uid("node", None, "sigil-node-1");
    let agents = server_cli(&k, &["agent", "list"]);
    let agent_id = format!("spiffe://{TRUST_DOMAIN}/spire/agent/k8s_psat/{CLUSTER}/{node_uid}");
    assert!(agents.contains(&agent_id), "{agents}");
    assert!(agents.contains("k8s_psat"), "{agents}");
    let selectors = server_cli(&k, &["agent", "show", "-spiffeID", &agent_id]);
    for s in [
        "k8s_psat:agent_ns:spire",
        "k8s_psat:agent_sa:spire-agent",
        "k8s_psat:agent_node_name:sigil-node-1",
        &format!("k8s_psat:agent_node_uid:{node_uid}"),
    ] {
        assert!(selectors.contains(s), "{s} missing from {selectors}");
    }

    // SPIRE's registration, through `kubectl exec` into the server pod, and a template.
    server_cli(
        &k,
        &[
            "entry",
            "create",
            "-node",
            "-spiffeID",
            ALIAS,
            "-selector",
            "k8s_psat:cluster:demo",
        ],
    );
    under_alias(
        &k,
        CHECKOUT,
        &["k8s:ns:payments", "k8s:sa:checkout-service"],
    );
    for sa in ["payment-processor", "storefront"] {
        under_alias(&k, TEMPLATE, &["k8s:ns:payments", &format!("k8s:sa:{sa}")]);
    }
    for ns in ["payments", "storefront"] {
        k.kubectl(&["create", "namespace", ns]);
        for sa in ["checkout-service", "payment-processor", "storefront"] {
            k.kubectl(&["-n", ns, "create", "serviceaccount", sa]);
        }
    }

    // The SPIRE guide's pod gets its SVID; the same service account in another namespace, nothing.
    let t = Instant::now();
    checkout_pod(&k, "payments");
    checkout_pod(&k, "storefront");
    wait_ready(&k, "payments", "pod/checkout");
    wait_ready(&k, "storefront", "pod/checkout");
    wait_for_identity(&k, "payments", "checkout", CHECKOUT);
    times.push(("new pod created -> its SVID fetched".into(), t.elapsed()));
    verify_written_svid(&k, "payments", "checkout", CHECKOUT);
    let other = fetch(&k, "storefront", "checkout");
    assert!(
        other
            .as_ref()
            .is_err_and(|e| e.contains("PermissionDenied") || e.contains("no identity")),
        "a pod of namespace storefront got {other:?}"
    );

    // The zero-trust example as pods: payment-processor (its identity from the template) behind
    // a Service; checkout-service calls it over SVID mTLS; storefront is refused.
    k.apply(
        "apiVersion: v1\nkind: Service\nmetadata: {name: payment-processor, namespace: payments}\n\
         spec: {selector: {app: payment-processor}, ports: [{port: 8443, targetPort: 8443}]}\n",
    );
    k.apply(
        r#"apiVersion: v1
kind: Pod
metadata: {name: payment-processor, namespace: payments, labels: {app: payment-processor}}
spec:
  serviceAccountName: payment-processor
  securityContext: {runAsUser: 1000, runAsGroup: 1000, runAsNonRoot: true}
  containers:
  - name: main
    image: sigil-workload:dev
    imagePullPolicy: Never
    command: ["payment-processor", "--listen", "0.0.0.0:8443"]
    env: [{name: SPIFFE_ENDPOINT_SOCKET, value: "unix:///run/spire/sockets/agent.sock"}]
    ports: [{containerPort: 8443}]
    readinessProbe: {tcpSocket: {port: 8443}, periodSeconds: 1}
    securityContext: {allowPrivilegeEscalation: false, readOnlyRootFilesystem: true, capabilities: {drop: [ALL]}}
    volumeMounts: [{name: spire-agent-socket, mountPath: /run/spire/sockets, readOnly: true}]
  volumes: [{name: spire-agent-socket, hostPath: {path: /run/spire/sockets, type: Directory}}]
"#,
    );
    workload_pod(
        &k,
        "payments",
        "storefront",
        "storefront",
        "app: storefront",
    );
    wait_ready(&k, "payments", "pod/payment-processor");
    wait_ready(&k, "payments", "pod/storefront");
    let service = k.kubectl(&[
        "-n",
        "payments",
        "get",
        "service",
        "payment-processor",
        "-o",
        "jsonpath={.spec.clusterIP}",
    ]);
    let call_at = |pod: &str, server: &str| {
        k.try_kubectl(
            &[
                "-n",
                "payments",
                "exec",
                pod,
                "--",
                "checkout-service",
                "--server",
                server,
            ],
            "",
        )
    };
    let payments = format!("{service}:8443");
    let call = |pod: &str| call_at(pod, &payments);
    // kube-proxy programs the Service a moment after the pod is Ready (until then: refused).
    wait_until(&k, || call("checkout").0);
    let (ok, out, err) = call("checkout");
    assert!(
        ok && out.contains("allowed"),
        "checkout -> payment-processor: {out}{err}"
    );
    assert!(out.contains(PAYMENT_PROCESSOR), "{out}");
    wait_for_identity(&k, "payments", "storefront", STOREFRONT);
    let (ok, out, _) = call("storefront");
    assert!(
        !ok && out.contains("refused"),
        "storefront -> payment-processor: {out}"
    );

    // deploy/'s NetworkPolicies let only agent pods reach the server's port 8081. Nothing on this
    // node enforces them (the CNI bridge plugin has no policy engine): say what a workload reached.
    let (_, out, _) = call_at("checkout", "10.97.0.81:8081");
    // A TLS handshake started (whatever its end) means the TCP connection was let through.
    if out.contains("handshake") || out.contains("presented") {
        eprintln!(
            "NetworkPolicy enforced on this node: no (a workload pod reached spire-server:8081)"
        );
    } else {
        eprintln!("NetworkPolicy: a workload pod did not reach spire-server:8081: {out}");
    }

    // A pod restarted (its container exits; the kubelet starts it again in the same pod).
    let t = Instant::now();
    k.kubectl(&["-n", "payments", "exec", "checkout", "--", "kill", "1"]);
    wait_until(&k, || {
        k.kubectl(&[
            "-n",
            "payments",
            "get",
            "pod",
            "checkout",
            "-o",
            "jsonpath={.status.containerStatuses[0].restartCount}",
        ]) == "1"
    });
    wait_ready(&k, "payments", "pod/checkout");
    wait_for_identity(&k, "payments", "checkout", CHECKOUT);
    times.push((
        "container restarted -> its SVID fetched".into(),
        t.elapsed(),
    ));

    // A pod deleted and created again under the same name (a new UID, a new cgroup).
    delete_timed(&k, "payments", "checkout", "workload", None, &mut times);
    let t = Instant::now();
    checkout_pod(&k, "payments");
    wait_ready(&k, "payments", "pod/checkout");
    wait_for_identity(&k, "payments", "checkout", CHECKOUT);
    times.push((
        "workload pod created again (same name) -> its SVID fetched".into(),
        t.elapsed(),
    ));
    verify_written_svid(&k, "payments", "checkout", CHECKOUT);

    // The agent pod restarted: the DaemonSet's new pod re-attests with a fresh projected token.
    let agent_pod = k.kubectl(&[
        "-n",
        "spire",
        "get",
        "pod",
        "-l",
        "app=spire-agent",
        "-o",
        "jsonpath={.items[0].metadata.name}",
    ]);
    let t = Instant::now();
    delete_timed(
        &k,
        "spire",
        &agent_pod,
        "agent",
        Some("sigil-agent stopped"),
        &mut times,
    );
    rollout(&k, "daemonset/spire-agent");
    times.push((
        "agent pod deleted -> the new agent Ready".into(),
        t.elapsed(),
    ));
    wait_for_identity(&k, "payments", "checkout", CHECKOUT);
    times.push((
        "agent pod deleted -> workload SVID fetched again".into(),
        t.elapsed(),
    ));

    // The server pod restarted: same CA from its volume, agents reconnect, new entries flow.
    let t = Instant::now();
    delete_timed(
        &k,
        "spire",
        "spire-server-0",
        "server",
        Some("sigil-server stopped"),
        &mut times,
    );
    rollout(&k, "statefulset/spire-server");
    wait_ready(&k, "spire", "pod/spire-server-0");
    times.push((
        "server pod deleted -> the new server Ready".into(),
        t.elapsed(),
    ));
    assert_eq!(
        bundle(&k),
        published,
        "the server kept its CA across the restart"
    );
    let t = Instant::now();
    under_alias(
        &k,
        "spiffe://example.org/ns/payments/sa/checkout-service/v2",
        &[
            "k8s:ns:payments",
            "k8s:sa:checkout-service",
            "k8s:pod-label:app:checkout",
        ],
    );
    wait_until(&k, || {
        fetch_all(&k, "payments", "checkout")
            .is_ok_and(|ids| ids.iter().any(|id| id.ends_with("/sa/checkout-service/v2")))
    });
    times.push((
        "after the server restart: entry created -> at the workload".into(),
        t.elapsed(),
    ));
    let (ok, out, err) = call("checkout");
    assert!(
        ok && out.contains("allowed"),
        "after every restart: {out}{err}"
    );

    eprintln!("\n| On the one-node cluster (real-node.sh) | time |\n|---|---|");
    for (what, d) in &times {
        eprintln!("| {what} | {} |", secs(*d));
    }
}

/// Deletes pod `<ns>/<pod>` and records when it was gone, and for Sigil's own pods (`stopped`:
/// the last line they log) how long the process took from SIGTERM to that line, by its own log's
/// timestamps. The kubelet v1.20 removes a deleted pod only once its garbage collection, every
/// minute, has cleaned up the pod's sandbox, so the first time says more about the kubelet.
fn delete_timed(
    k: &Kube,
    ns: &str,
    pod: &str,
    what: &str,
    stopped: Option<&str>,
    times: &mut Vec<(String, Duration)>,
) {
    // A controller's new pod may take the name at once: the old one is known by its UID.
    let uid = k.uid("pod", Some(ns), pod);
    let follow = stopped.map(|_| LogFollow::start(k, ns, pod));
    let t = Instant::now();
    k.kubectl(&["-n", ns, "delete", "pod", pod, "--wait=false"]);
    // (`kubectl wait --for=delete` would wait for whichever pod has the name by then.)
    wait_until(k, || {
        let (found, now_uid, _) = k.try_kubectl(
            &[
                "-n",
                ns,
                "get",
                "pod",
                pod,
                "-o",
                "jsonpath={.metadata.uid}",
            ],
            "",
        );
        !found || now_uid != uid
    });
    times.push((
        format!("{what} pod deleted -> pod gone (kubelet)"),
        t.elapsed(),
    ));
    if let (Some(follow), Some(stopped)) = (follow, stopped) {
        let took = follow.stop_took(stopped);
        times.push((
            format!("{what}: SIGTERM -> process stopped (its log)"),
            took,
        ));
    }
}

/// A pod's own log from now on (`kubectl logs -f`), for the time its process took to stop.
struct LogFollow(std::process::Child);

impl LogFollow {
    fn start(k: &Kube, ns: &str, pod: &str) -> Self {
        let child = std::process::Command::new(kubectl_bin())
            .env("KUBECONFIG", &k.admin_kubeconfig)
            .args(["-n", ns, "logs", "-f", pod, "--since=1s"])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("kubectl logs -f");
        // Following before the delete: the stream must be open when SIGTERM comes.
        std::thread::sleep(Duration::from_millis(500));
        Self(child)
    }

    /// From "shutdown signal received" (SIGTERM) to `stopped`, by the log's own timestamps.
    fn stop_took(mut self, stopped: &str) -> Duration {
        let _ = self.0.kill();
        let out = self.0.wait_with_output().expect("kubectl logs -f output");
        let text = String::from_utf8_lossy(&out.stdout);
        let at = |message: &str| {
            text.lines()
                .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
                .find(|v| v["message"] == message)
                .and_then(|v| humantime::parse_rfc3339(v["timestamp"].as_str()?).ok())
                .unwrap_or_else(|| panic!("no {message:?} in the pod's last log lines:\n{text}"))
        };
        at(stopped)
            .duration_since(at("shutdown signal received"))
            .expect("stopped after the signal")
    }
}

/// The server's and the agent's logs, for a failure message.
fn sigil_logs(k: &Kube) -> String {
    ["app=spire-server", "app=spire-agent"]
        .iter()
        .map(|app| {
            let (_, out, err) = k.try_kubectl(&["-n", "spire", "logs", "-l", app, "--tail=60"], "");
            format!("--- {app} ---\n{out}{err}")
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn wait_until(k: &Kube, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(
            start.elapsed() < PATIENCE,
            "gave up after {PATIENCE:?}\n{}",
            sigil_logs(k)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}
