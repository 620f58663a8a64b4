//! deploy/ and the `Notifier "k8sbundle"`: the manifests pass the Kubernetes schemas offline
//! (`kubernetes-validate --strict`) and a real API server's dry run, their config files pass our
//! own `validate` commands, the zero-trust checklist holds, and a real server publishes its bundle
//! into a ConfigMap of the real API server, follows a CA rotation, and keeps serving when RBAC
//! forbids the write.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use sigil_testkit::k8s::{kube, kubectl_bin};
use sigil_testkit::{Server, ServerOptions, agent_bin, pem_certs, python, server_bin, wait_for};
use x509_parser::prelude::{FromDer, X509Certificate};

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

/// `kubernetes-validate` from the same venv as `python()` (tests/requirements.txt).
fn kubernetes_validate() -> PathBuf {
    Path::new(&python()).with_file_name("kubernetes-validate")
}

/// Every manifest file in deploy/ (the kustomization itself is not a Kubernetes object).
fn manifest_files() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(deploy_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.extension().is_some_and(|e| e == "yaml")
                && p.file_name().is_some_and(|n| n != "kustomization.yaml")
        })
        .collect();
    files.sort();
    files
}

fn stdout_ok(out: std::process::Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what} failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The objects `kubectl apply -k deploy/` would send, as JSON. PyYAML (a dependency of
/// kubernetes-validate, in the tests' venv) converts them offline.
fn built_objects() -> Vec<Value> {
    let out = Command::new(kubectl_bin())
        .arg("kustomize")
        .arg(deploy_dir())
        .output()
        .unwrap();
    let yaml = stdout_ok(out, "kubectl kustomize");
    let mut child = Command::new(python())
        .args([
            "-c",
            "import json, sys, yaml; print(json.dumps([d for d in yaml.safe_load_all(sys.stdin) if d]))",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), yaml.as_bytes()).unwrap();
    let json = stdout_ok(child.wait_with_output().unwrap(), "YAML to JSON");
    let Value::Array(objects) = serde_json::from_str(&json).unwrap() else {
        panic!("not a list: {json}");
    };
    objects
}

fn object<'a>(objects: &'a [Value], kind: &str, name: &str) -> &'a Value {
    objects
        .iter()
        .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name} in deploy/"))
}

#[test]
fn every_manifest_is_in_the_kustomization_and_passes_strict_schema_validation() {
    let kustomization = std::fs::read_to_string(deploy_dir().join("kustomization.yaml")).unwrap();
    let files = manifest_files();
    assert!(files.len() >= 8, "{files:?}");
    for f in &files {
        let name = f.file_name().unwrap().to_str().unwrap();
        assert!(
            kustomization.contains(&format!("  - {name}\n")),
            "{name} is not listed in kustomization.yaml"
        );
    }
    for conf in ["server.conf", "agent.conf"] {
        assert!(
            kustomization.contains(&format!("      - {conf}\n")),
            "{conf} is not generated into a ConfigMap"
        );
    }

    // Each file on its own, then the kustomize output (which adds the generated ConfigMaps).
    let dir = tempfile::tempdir().unwrap();
    let built = dir.path().join("built.yaml");
    let out = Command::new(kubectl_bin())
        .arg("kustomize")
        .arg(deploy_dir())
        .output()
        .unwrap();
    std::fs::write(&built, stdout_ok(out, "kubectl kustomize")).unwrap();
    let mut all = files;
    all.push(built);
    let out = Command::new(kubernetes_validate())
        .args(["-k", "1.35.0", "--strict"])
        .args(&all)
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "{} (pip install -r tests/requirements.txt): {e}",
                kubernetes_validate().display()
            )
        });
    let text = stdout_ok(out, "kubernetes-validate --strict");
    assert!(!text.contains("ERROR"), "{text}");
    for kind in [
        "namespace/spire",
        "statefulset/spire-server",
        "daemonset/spire-agent",
        "networkpolicy/default-deny-all",
        "configmap/spire-bundle",
    ] {
        assert!(text.contains(&format!("{kind} against")), "{kind}: {text}");
    }
}

/// Each object of the kustomization, dry-run by the real API server (admin credentials): a
/// v1.20 server must accept what the 1.35 schemas accept.
#[test]
fn the_real_api_server_accepts_every_manifest_in_a_server_dry_run() {
    let k = kube();
    let out = Command::new(kubectl_bin())
        .arg("--kubeconfig")
        .arg(&k.admin_kubeconfig)
        .args(["apply", "--dry-run=server", "-k"])
        .arg(deploy_dir())
        .output()
        .unwrap();
    let text = stdout_ok(out, "kubectl apply --dry-run=server -k deploy/");
    let objects = built_objects();
    let accepted = text
        .lines()
        .filter(|l| l.ends_with("(server dry run)"))
        .count();
    assert_eq!(accepted, objects.len(), "{text}");
    for o in &objects {
        let kind = o["kind"].as_str().unwrap().to_lowercase();
        let name = o["metadata"]["name"].as_str().unwrap();
        assert!(
            text.lines().any(|l| {
                (l.starts_with(&format!("{kind}/")) || l.starts_with(&format!("{kind}.")))
                    && l.contains(&format!("/{name} "))
            }),
            "{kind}/{name} not accepted: {text}"
        );
    }
}

#[test]
fn the_shipped_configs_pass_our_own_validate_commands_and_are_what_the_config_maps_carry() {
    for (bin, conf) in [(server_bin(), "server.conf"), (agent_bin(), "agent.conf")] {
        let path = deploy_dir().join(conf);
        let out = Command::new(&bin)
            .args(["validate", "-config"])
            .arg(&path)
            .output()
            .unwrap();
        let text = stdout_ok(out, &format!("{} validate {conf}", bin.display()));
        assert!(text.contains("Configuration is valid"), "{text}");
    }
    // The generated ConfigMaps carry exactly these files, and the workloads mount them.
    let objects = built_objects();
    for (workload_kind, workload, conf) in [
        ("StatefulSet", "spire-server", "server.conf"),
        ("DaemonSet", "spire-agent", "agent.conf"),
    ] {
        let file = std::fs::read_to_string(deploy_dir().join(conf)).unwrap();
        let cm = objects
            .iter()
            .find(|o| o["kind"] == "ConfigMap" && o["data"][conf].is_string())
            .unwrap_or_else(|| panic!("no ConfigMap carries {conf}"));
        assert_eq!(cm["data"][conf].as_str().unwrap(), file);
        let spec = &object(&objects, workload_kind, workload)["spec"]["template"]["spec"];
        let mounted = spec["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|v| v["configMap"]["name"] == cm["metadata"]["name"]);
        assert!(mounted, "{workload} does not mount {conf}");
        let args = spec["containers"][0]["args"].to_string();
        assert!(
            args.contains(&format!("/run/spire/config/{conf}")),
            "{args}"
        );
    }
    // The agent bootstraps from the published bundle, never blindly.
    let agent_conf = std::fs::read_to_string(deploy_dir().join("agent.conf")).unwrap();
    assert!(agent_conf.contains("trust_bundle_path = \"/run/spire/bundle/bundle.crt\""));
    assert!(!agent_conf.contains("insecure_bootstrap"));
}

/// The seed's zero-trust checklist, applied to Sigil's own deployment.
#[test]
fn the_deployment_meets_the_zero_trust_checklist() {
    let objects = built_objects();
    for o in &objects {
        if o["kind"] != "Namespace" && !o["kind"].as_str().unwrap().starts_with("Cluster") {
            assert_eq!(o["metadata"]["namespace"], "spire", "{}", o["metadata"]);
        }
    }

    // Default deny, both directions, every pod.
    let deny = object(&objects, "NetworkPolicy", "default-deny-all");
    assert_eq!(deny["spec"]["podSelector"], serde_json::json!({}));
    assert_eq!(
        deny["spec"]["policyTypes"],
        serde_json::json!(["Ingress", "Egress"])
    );
    assert!(deny["spec"]["ingress"].is_null() && deny["spec"]["egress"].is_null());
    // Then exactly the allowed paths.
    let policies: Vec<&Value> = objects
        .iter()
        .filter(|o| o["kind"] == "NetworkPolicy")
        .collect();
    let allows = |selector: &str, direction: &str, port: u16, peer: Option<&str>| {
        policies.iter().any(|p| {
            let spec = &p["spec"];
            let applies = match spec["podSelector"]["matchLabels"]["app"].as_str() {
                Some(app) => app == selector,
                None => spec["podSelector"] == serde_json::json!({}),
            };
            applies
                && spec[direction].as_array().is_some_and(|rules| {
                    rules.iter().any(|r| {
                        let peers = if direction == "ingress" { "from" } else { "to" };
                        let port_ok = r["ports"]
                            .as_array()
                            .is_some_and(|ps| ps.iter().any(|p| p["port"] == port));
                        let peer_ok = match peer {
                            Some(app) => r[peers].as_array().is_some_and(|ps| {
                                ps.iter()
                                    .any(|p| p["podSelector"]["matchLabels"]["app"] == app)
                            }),
                            None => true,
                        };
                        port_ok && peer_ok
                    })
                })
        })
    };
    assert!(allows("spire-agent", "egress", 8081, Some("spire-server")));
    assert!(allows("spire-server", "ingress", 8081, Some("spire-agent")));
    assert!(allows("spire-server", "egress", 443, None));
    assert!(allows("spire-server", "egress", 6443, None));
    assert!(allows("spire-server", "egress", 53, None));
    assert!(allows("spire-agent", "egress", 53, None));
    assert!(!allows("spire-server", "egress", 8081, None));
    let dns = object(&objects, "NetworkPolicy", "allow-dns-egress");
    let dns_to = &dns["spec"]["egress"][0]["to"][0];
    assert_eq!(
        dns_to["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"],
        "kube-system"
    );
    let protocols: Vec<&str> = dns["spec"]["egress"][0]["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["protocol"].as_str().unwrap())
        .collect();
    assert_eq!(protocols, ["UDP", "TCP"]);

    // Every container of both workloads.
    for (kind, name) in [
        ("StatefulSet", "spire-server"),
        ("DaemonSet", "spire-agent"),
    ] {
        let pod = &object(&objects, kind, name)["spec"]["template"]["spec"];
        let containers: Vec<&Value> = ["initContainers", "containers"]
            .iter()
            .filter_map(|k| pod[k].as_array())
            .flatten()
            .collect();
        assert!(!containers.is_empty());
        for c in containers {
            let who = format!("{name}/{}", c["name"]);
            let sc = &c["securityContext"];
            assert_eq!(sc["allowPrivilegeEscalation"], false, "{who}");
            assert_eq!(sc["readOnlyRootFilesystem"], true, "{who}");
            assert_eq!(
                sc["capabilities"]["drop"],
                serde_json::json!(["ALL"]),
                "{who}"
            );
            assert!(sc["capabilities"]["add"].is_null(), "{who}");
            assert_ne!(sc["privileged"], true, "{who}");
            let seccomp = if sc["seccompProfile"].is_null() {
                &pod["securityContext"]["seccompProfile"]
            } else {
                &sc["seccompProfile"]
            };
            assert_eq!(seccomp["type"], "RuntimeDefault", "{who}");
            for limit in ["requests", "limits"] {
                for res in ["cpu", "memory"] {
                    assert!(
                        c["resources"][limit][res].is_string(),
                        "{who} {limit}.{res}"
                    );
                }
            }
            // No secret in an environment variable.
            assert!(c["envFrom"].is_null(), "{who}");
            for e in c["env"].as_array().into_iter().flatten() {
                assert!(
                    e["valueFrom"]["secretKeyRef"].is_null(),
                    "{who}: {e} reads a Secret into the environment"
                );
                let n = e["name"].as_str().unwrap().to_uppercase();
                assert!(
                    !["TOKEN", "PASSWORD", "SECRET", "KEY"]
                        .iter()
                        .any(|s| n.contains(s)),
                    "{who}: {n}"
                );
            }
            assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/live", "{who}");
            assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/ready", "{who}");
        }
    }

    // The server runs as the distroless non-root user on a persistent volume.
    let server = object(&objects, "StatefulSet", "spire-server");
    let pod = &server["spec"]["template"]["spec"];
    assert_eq!(server["spec"]["replicas"], 1);
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(pod["securityContext"]["runAsUser"], 65532);
    assert_eq!(
        pod["containers"][0]["securityContext"]["runAsNonRoot"],
        true
    );
    assert_ne!(pod["hostPID"], true);
    assert_ne!(pod["hostNetwork"], true);
    assert_eq!(
        server["spec"]["volumeClaimTemplates"][0]["metadata"]["name"],
        "spire-data"
    );
    let service = object(&objects, "Service", "spire-server");
    assert_eq!(service["spec"]["ports"][0]["port"], 8081);

    // The agent: hostPID and the socket hostPath (what it cannot drop), the projected token.
    let agent = &object(&objects, "DaemonSet", "spire-agent")["spec"]["template"]["spec"];
    assert_eq!(agent["hostPID"], true);
    assert_ne!(agent["hostNetwork"], true);
    let volumes = agent["volumes"].as_array().unwrap();
    assert!(
        volumes
            .iter()
            .any(|v| v["hostPath"]["path"] == "/run/spire/sockets")
    );
    let token = volumes
        .iter()
        .find_map(|v| v["projected"]["sources"][0]["serviceAccountToken"].as_object())
        .expect("projected token volume");
    assert_eq!(token["audience"], "spire-server");
    assert_eq!(token["expirationSeconds"], 7200);
    assert_eq!(token["path"], "spire-agent");
    assert!(
        volumes
            .iter()
            .any(|v| v["configMap"]["name"] == "spire-bundle")
    );
    let node_name = agent["containers"][0]["env"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "MY_NODE_NAME")
        .expect("MY_NODE_NAME");
    assert_eq!(
        node_name["valueFrom"]["fieldRef"]["fieldPath"],
        "spec.nodeName"
    );

    // RBAC: the bundle ConfigMap is the only one the server may write, and it may not create.
    let role = object(&objects, "Role", "spire-server-bundle");
    assert_eq!(role["rules"].as_array().unwrap().len(), 1);
    assert_eq!(
        role["rules"][0]["resourceNames"],
        serde_json::json!(["spire-bundle"])
    );
    assert_eq!(
        role["rules"][0]["verbs"],
        serde_json::json!(["get", "update", "patch"])
    );
    let cm = object(&objects, "ConfigMap", "spire-bundle");
    assert!(cm["data"].is_null(), "spire-bundle must ship empty");
    // The server reads what PSAT validation and the pod cache need, and nothing else.
    let server_role = object(&objects, "ClusterRole", "spire-server");
    assert_eq!(
        server_role["rules"],
        serde_json::json!([
            {"apiGroups": ["authentication.k8s.io"], "resources": ["tokenreviews"], "verbs": ["create"]},
            {"apiGroups": [""], "resources": ["pods", "nodes"], "verbs": ["get"]},
            {"apiGroups": [""], "resources": ["pods"], "verbs": ["list", "watch"]},
        ])
    );
    let agent_role = object(&objects, "ClusterRole", "spire-agent");
    assert_eq!(
        agent_role["rules"][0]["resources"],
        serde_json::json!(["pods", "nodes", "nodes/proxy"])
    );
    assert_eq!(agent_role["rules"][0]["verbs"], serde_json::json!(["get"]));
}

/// A server with `Notifier "k8sbundle"` writing into `ns` with `kubeconfig`.
fn server_with_notifier(ca_ttl: &str, ns: &str, kubeconfig: &Path) -> Server {
    Server::start(ServerOptions {
        ca_ttl: ca_ttl.into(),
        x509_svid_ttl: "5s".into(),
        jwt_svid_ttl: "5s".into(),
        extra_plugins: format!(
            "Notifier \"k8sbundle\" {{\n    plugin_data {{\n      namespace = \"{ns}\"\n      kube_config_file_path = \"{}\"\n    }}\n  }}",
            kubeconfig.display()
        ),
        ..Default::default()
    })
}

/// The PEM in `ns/spire-bundle` key `bundle.crt`, if any.
fn published_bundle(ns: &str) -> Option<String> {
    let k = kube();
    let (ok, out, _) = k.try_kubectl(
        &[
            "-n",
            ns,
            "get",
            "configmap",
            "spire-bundle",
            "-o",
            "jsonpath={.data.bundle\\.crt}",
        ],
        "",
    );
    (ok && !out.trim().is_empty()).then_some(out)
}

#[test]
fn the_bundle_config_map_receives_the_bundle_and_follows_a_ca_rotation() {
    let k = kube();
    let ns = k.namespace("bundle");
    let dir = tempfile::tempdir().unwrap();
    // The server's least-privilege identity, as in the cluster.
    let kubeconfig = k.server_kubeconfig(dir.path());
    let server = server_with_notifier("60s", &ns, &kubeconfig);

    let first = wait_for(
        "the bundle in the ConfigMap",
        Duration::from_secs(20),
        || published_bundle(&ns),
    );
    let certs = pem_certs(&first);
    assert_eq!(certs.len(), 1, "{first}");
    for der in &certs {
        let (_, cert) = X509Certificate::from_der(der).expect("a certificate");
        assert!(cert.is_ca());
    }
    assert_eq!(certs, pem_certs(&server.cli_ok(&["bundle", "show"])));

    // ca_ttl 60 s: the next CA joins the bundle at 30 s remaining; the ConfigMap follows.
    let rotated = wait_for(
        "the rotated bundle in the ConfigMap",
        Duration::from_secs(60),
        || published_bundle(&ns).filter(|pem| pem_certs(pem).len() == 2),
    );
    let rotated = pem_certs(&rotated);
    assert!(rotated.contains(&certs[0]), "the old CA stays trusted");
    assert_eq!(rotated, pem_certs(&server.cli_ok(&["bundle", "show"])));
    assert!(server.log().contains("trust bundle published"));
}

#[test]
fn a_server_that_may_not_write_the_config_map_keeps_serving_and_logs_the_403() {
    let k = kube();
    let ns = k.namespace("bundle-denied");
    k.service_account(&ns, "no-rights");
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = k.kubeconfig_for(&ns, "no-rights", dir.path());
    let server = server_with_notifier("24h", &ns, &kubeconfig);

    wait_for("the 403 in the log", Duration::from_secs(20), || {
        let log = server.log();
        (log.contains("cannot publish the trust bundle") && log.contains("403")).then_some(())
    });
    // Still serving: healthy, and the admin API answers.
    assert!(server.cli(&["healthcheck"]).status.success());
    assert_eq!(pem_certs(&server.cli_ok(&["bundle", "show"])).len(), 1);
    assert_eq!(published_bundle(&ns), None);
    // The credential never reaches the log.
    let kc = std::fs::read_to_string(&kubeconfig).unwrap();
    let token = kc
        .split("token: ")
        .nth(1)
        .and_then(|t| t.split('}').next())
        .unwrap()
        .trim();
    assert!(token.len() > 20);
    assert!(!server.log().contains(token));
}
