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

use sigil_testkit::k8s::{Kube, node};
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

/// The SVID a pod's process gets from the Workload API through the socket mounted from the node:
/// `sigil-agent api fetch x509` run in the pod, the SVID's SPIFFE ID (first one) or why not.
fn fetch(k: &Kube, ns: &str, pod: &str) -> Result<String, String> {
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
    out.lines()
        .find_map(|l| l.strip_prefix("SPIFFE ID:"))
        .map(|id| id.trim().to_owned())
        .ok_or(out)
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
    panic!("{ns}/{pod} never got {id}; last answer: {last:?}");
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
    let (_, cert) = X509Certificate::from_der(der).unwrap();
    let san = cert.subject_alternative_name().unwrap().expect("a SAN");
    san.value
        .general_names
        .iter()
        .filter_map(|n| match n {
            GeneralName::URI(u) => Some(u.to_string()),
            _ => None,
        })
        .collect()
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

/// Seconds with two decimals, for the table the test prints (README "A real node").
fn secs(d: Duration) -> String {
    format!("{:.2} s", d.as_secs_f64())
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
    server_cli(
        &k,
        &[
            "entry",
            "create",
            "-parentID",
            ALIAS,
            "-spiffeID",
            CHECKOUT,
            "-selector",
            "k8s:ns:payments",
            "-selector",
            "k8s:sa:checkout-service",
        ],
    );
    for sa in ["payment-processor", "storefront"] {
        server_cli(
            &k,
            &[
                "entry",
                "create",
                "-template",
                "-parentID",
                ALIAS,
                "-spiffeID",
                TEMPLATE,
                "-selector",
                "k8s:ns:payments",
                "-selector",
                &format!("k8s:sa:{sa}"),
            ],
        );
    }
    for ns in ["payments", "storefront"] {
        k.kubectl(&["create", "namespace", ns]);
        for sa in ["checkout-service", "payment-processor", "storefront"] {
            k.kubectl(&["-n", ns, "create", "serviceaccount", sa]);
        }
    }

    // The SPIRE guide's pod gets its SVID; the same service account in another namespace, nothing.
    let t = Instant::now();
    workload_pod(
        &k,
        "payments",
        "checkout",
        "checkout-service",
        "app: checkout",
    );
    workload_pod(
        &k,
        "storefront",
        "checkout",
        "checkout-service",
        "app: checkout",
    );
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
    wait_until(|| call("checkout").0);
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
    wait_until(|| {
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
    let t = Instant::now();
    k.kubectl(&["-n", "payments", "delete", "pod", "checkout", "--wait=true"]);
    workload_pod(
        &k,
        "payments",
        "checkout",
        "checkout-service",
        "app: checkout",
    );
    wait_ready(&k, "payments", "pod/checkout");
    wait_for_identity(&k, "payments", "checkout", CHECKOUT);
    times.push((
        "pod deleted and recreated -> its SVID fetched".into(),
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
    delete_timed(&k, &agent_pod, "agent", &mut times);
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
    delete_timed(&k, "spire-server-0", "server", &mut times);
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
    server_cli(
        &k,
        &[
            "entry",
            "create",
            "-parentID",
            ALIAS,
            "-spiffeID",
            "spiffe://example.org/ns/payments/sa/checkout-service/v2",
            "-selector",
            "k8s:ns:payments",
            "-selector",
            "k8s:sa:checkout-service",
            "-selector",
            "k8s:pod-label:app:checkout",
        ],
    );
    wait_until(|| {
        let (_, out, _) = k.try_kubectl(
            &[
                "-n",
                "payments",
                "exec",
                "checkout",
                "--",
                "sigil-agent",
                "api",
                "fetch",
                "x509",
                "-socketPath",
                SOCKET,
                "-timeout",
                "5s",
            ],
            "",
        );
        out.contains("/sa/checkout-service/v2")
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

/// Deletes pod `spire/<pod>` and records when its container stopped (SIGTERM answered) and when
/// the pod was gone: the kubelet v1.20 finishes a deletion only once its garbage collection,
/// every minute, has removed the pod's sandbox, so that second time says more about the kubelet.
fn delete_timed(k: &Kube, pod: &str, what: &str, times: &mut Vec<(String, Duration)>) {
    let t = Instant::now();
    k.kubectl(&["-n", "spire", "delete", "pod", pod, "--wait=false"]);
    wait_until(|| {
        let (found, state, _) = k.try_kubectl(
            &[
                "-n",
                "spire",
                "get",
                "pod",
                pod,
                "-o",
                "jsonpath={.status.containerStatuses[0].state.terminated.reason}",
            ],
            "",
        );
        !found || !state.is_empty()
    });
    times.push((
        format!("{what} pod deleted -> its container stopped"),
        t.elapsed(),
    ));
    k.kubectl(&[
        "-n",
        "spire",
        "wait",
        "--for=delete",
        &format!("pod/{pod}"),
        &format!("--timeout={}s", PATIENCE.as_secs()),
    ]);
    times.push((
        format!("{what} pod deleted -> pod gone (kubelet)"),
        t.elapsed(),
    ));
}

fn wait_until(mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < PATIENCE, "gave up after {PATIENCE:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
}
