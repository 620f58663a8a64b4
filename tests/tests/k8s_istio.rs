//! deploy/istio/ (issue 18): what Istio's SPIRE integration needs, checked as k8s_deploy.rs
//! checks deploy/. The manifests pass the Kubernetes schemas offline and the real API server's
//! dry run (with deploy/, through the kustomization deploy/README.md tells users to write), the
//! agent config passes `sigil-agent validate`, the socket's path is the same from the agent's
//! config through the SPIFFE CSI driver to where Istio's proxies look for it, the CSI driver
//! holds no more privilege than its mounts need, and the template entry of deploy/README.md,
//! run as written against a real server, gives a real agent's workloads in a sidecar's and a
//! gateway's pod the ID Istio expects over a socket named `socket`.
//!
//! No Istio, Envoy, kubelet or CSI driver runs here: the Istio config is checked for what it
//! must say, the pod its `spire` injection template makes is checked as a pod.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use serde_json::{Value, json};
use sigil_testkit::go::kustomize_bin;
use sigil_testkit::k8s::{kube, kubectl_bin, psat_server_plugin};
use sigil_testkit::kubelet::{self, TestPod};
use sigil_testkit::{Agent, Server, ServerOptions, agent_bin, python, wait_for};

/// Where Istio's sidecar template and gateway mount the socket's directory in the pod.
const POD_SOCKET_DIR: &str = "/run/secrets/workload-spiffe-uds";
/// The socket's file name Istio's proxies look for there.
const SOCKET_FILE: &str = "socket";
/// The SPIFFE CSI driver's name, which pods' `csi` volumes ask for.
const CSI_DRIVER: &str = "csi.spiffe.io";

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

fn istio_dir() -> PathBuf {
    deploy_dir().join("istio")
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// `kubernetes-validate` from the same venv as `python()` (tests/requirements.txt).
fn kubernetes_validate() -> PathBuf {
    Path::new(&python()).with_file_name("kubernetes-validate")
}

fn stdout_ok(out: Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what} failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Runs `cmd` with `stdin`.
fn run_with_stdin(cmd: &mut Command, stdin: &str, what: &str) -> String {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    stdout_ok(child.wait_with_output().unwrap(), what)
}

/// The YAML documents of `yaml` as JSON (PyYAML, a dependency of kubernetes-validate).
fn yaml_documents(yaml: &str) -> Vec<Value> {
    let json = run_with_stdin(
        Command::new(python()).args([
            "-c",
            "import json, sys, yaml; print(json.dumps([d for d in yaml.safe_load_all(sys.stdin) if d]))",
        ]),
        yaml,
        "YAML to JSON",
    );
    let Value::Array(docs) = serde_json::from_str(&json).unwrap() else {
        panic!("not a list: {json}");
    };
    docs
}

/// The one YAML document of `path`.
fn yaml_file(path: &Path) -> Value {
    let mut docs = yaml_documents(&read(path));
    assert_eq!(docs.len(), 1, "{}", path.display());
    docs.remove(0)
}

/// deploy/README.md's "Istio" section.
fn istio_section() -> String {
    let readme = read(&deploy_dir().join("README.md"));
    let start = readme
        .find("\n## Istio\n")
        .expect("deploy/README.md has an Istio section");
    let rest = &readme[start + 1..];
    let end = rest[3..].find("\n## ").map_or(rest.len(), |i| i + 3);
    rest[..end].to_owned()
}

/// The `sh` code blocks of `text`, without their list indentation.
fn sh_blocks(text: &str) -> Vec<String> {
    let mut blocks = Vec::new();
    let mut current: Option<(usize, Vec<String>)> = None;
    for line in text.lines() {
        let trimmed = line.trim_start();
        let indent = line.len() - trimmed.len();
        match &mut current {
            None if trimmed == "```sh" => current = Some((indent, Vec::new())),
            Some(_) if trimmed == "```" => {
                let (_, lines) = current.take().unwrap();
                blocks.push(lines.join("\n") + "\n");
            }
            Some((indent, lines)) => lines.push(line.get(*indent..).unwrap_or("").to_owned()),
            None => {}
        }
    }
    blocks
}

/// The README's step 1, run as written up to its first `kubectl` line in a temp dir that has
/// `deploy/` (a link to this repository's): the directory of the user's kustomization.
fn users_kustomization(dir: &Path) -> PathBuf {
    let block = sh_blocks(&istio_section())
        .into_iter()
        .find(|b| b.contains("components:"))
        .expect("a block writing a kustomization with the Istio component");
    let setup: Vec<&str> = block
        .lines()
        .take_while(|l| !l.starts_with("kubectl "))
        .collect();
    std::os::unix::fs::symlink(deploy_dir().canonicalize().unwrap(), dir.join("deploy")).unwrap();
    let out = Command::new("sh")
        .args(["-euc", &setup.join("\n")])
        .current_dir(dir)
        .output()
        .unwrap();
    stdout_ok(out, "the README's step 1");
    let apply = block
        .lines()
        .find(|l| l.starts_with("kubectl apply -k "))
        .expect("kubectl apply -k <dir>");
    let target = dir.join(apply.trim_start_matches("kubectl apply -k ").trim());
    assert!(
        target.join("kustomization.yaml").exists(),
        "{}",
        target.display()
    );
    target
}

/// `kustomize build <dir>` with kustomize v5 (`go::kustomize_bin`): the Istio component needs
/// kustomize >= 3.7 (kubectl >= 1.21), newer than the kubectl built with the test API server.
fn kustomize(dir: &Path) -> String {
    let out = Command::new(kustomize_bin())
        .arg("build")
        .arg(dir)
        .output()
        .unwrap();
    stdout_ok(out, &format!("kustomize build {}", dir.display()))
}

/// The objects `kubectl apply -k` of the user's kustomization (deploy/ with the component) sends.
fn built_objects() -> Vec<Value> {
    let dir = tempfile::tempdir().unwrap();
    yaml_documents(&kustomize(&users_kustomization(dir.path())))
}

fn object<'a>(objects: &'a [Value], kind: &str, name: &str) -> &'a Value {
    objects
        .iter()
        .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name}"))
}

fn pod_spec<'a>(objects: &'a [Value], kind: &str, name: &str) -> &'a Value {
    &object(objects, kind, name)["spec"]["template"]["spec"]
}

fn container<'a>(pod: &'a Value, name: &str) -> &'a Value {
    pod["containers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no container {name}"))
}

/// The `hostPath` path of the volume that `container` mounts at `mount_path`.
fn host_path_at(pod: &Value, container: &Value, mount_path: &str) -> String {
    let mount = container["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["mountPath"] == mount_path)
        .unwrap_or_else(|| panic!("nothing mounted at {mount_path}"));
    let volume = pod["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == mount["name"])
        .unwrap();
    volume["hostPath"]["path"]
        .as_str()
        .unwrap_or_else(|| panic!("{mount_path} is not a hostPath: {volume}"))
        .to_owned()
}

/// The value after `flag` in `args` (`-flag value` or `--flag=value`).
fn arg(container: &Value, flag: &str) -> String {
    let args: Vec<&str> = container["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    args.iter()
        .position(|a| *a == flag)
        .map(|i| args[i + 1].to_owned())
        .or_else(|| {
            args.iter()
                .find_map(|a| a.strip_prefix(&format!("{flag}=")).map(str::to_owned))
        })
        .unwrap_or_else(|| panic!("no {flag} in {args:?}"))
}

/// `key = "value"` of an HCL config file.
fn hcl_string(conf: &str, key: &str) -> String {
    conf.lines()
        .find_map(|l| {
            l.trim()
                .strip_prefix(key)
                .and_then(|r| r.trim_start().strip_prefix('='))
        })
        .unwrap_or_else(|| panic!("no {key}"))
        .trim()
        .trim_matches('"')
        .to_owned()
}

/// istio-spire.yaml, and its `spire` injection template parsed.
fn istio_operator() -> (Value, Value) {
    let operator = yaml_file(&istio_dir().join("istio-spire.yaml"));
    let template = operator["spec"]["values"]["sidecarInjectorWebhook"]["templates"]["spire"]
        .as_str()
        .expect("a `spire` injection template");
    let mut docs = yaml_documents(template);
    (operator, docs.remove(0))
}

/// The pod Istio's `spire` template makes of example-workload.yaml's: the app container, and
/// the proxy container with the template's mounts and volumes (Istio's other sidecar parts,
/// which the template leaves alone, are not here).
fn injected_pod() -> Value {
    let (_, template) = istio_operator();
    let docs = yaml_documents(&read(&istio_dir().join("example-workload.yaml")));
    let deployment = docs.iter().find(|d| d["kind"] == "Deployment").unwrap();
    let mut spec = deployment["spec"]["template"]["spec"].clone();
    let proxy = template["spec"]["containers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "istio-proxy")
        .expect("the template changes istio-proxy");
    let mut proxy = proxy.clone();
    proxy["image"] = json!("docker.io/istio/proxyv2:1.24.0");
    spec["containers"].as_array_mut().unwrap().push(proxy);
    spec["volumes"] = template["spec"]["volumes"].clone();
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": "sleep-injected",
            "labels": deployment["spec"]["template"]["metadata"]["labels"],
            "annotations": deployment["spec"]["template"]["metadata"]["annotations"],
        },
        "spec": spec,
    })
}

#[test]
fn the_istio_files_pass_strict_schema_validation_with_the_kustomize_output_and_the_injected_pod() {
    // The component: exactly its two manifests, and the agent's config replaced.
    let component = yaml_file(&istio_dir().join("kustomization.yaml"));
    assert_eq!(component["kind"], "Component");
    assert_eq!(
        component["resources"],
        json!(["spiffe-csi-driver.yaml", "spiffe-csi-node.yaml"])
    );
    assert_eq!(
        component["configMapGenerator"],
        json!([{"name": "spire-agent", "behavior": "replace", "files": ["agent.conf"]}])
    );
    // Every YAML file here is one of those, or one of the two that are not for kubectl apply -k.
    let mut files: Vec<String> = std::fs::read_dir(istio_dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.ends_with(".yaml"))
        .collect();
    files.sort();
    assert_eq!(
        files,
        [
            "example-workload.yaml",
            "istio-spire.yaml",
            "kustomization.yaml",
            "spiffe-csi-driver.yaml",
            "spiffe-csi-node.yaml"
        ]
    );

    let dir = tempfile::tempdir().unwrap();
    let built = dir.path().join("built.yaml");
    std::fs::write(&built, kustomize(&users_kustomization(dir.path()))).unwrap();
    let pod = dir.path().join("injected-pod.json");
    std::fs::write(&pod, injected_pod().to_string()).unwrap();
    let out = Command::new(kubernetes_validate())
        .args(["-k", "1.35.0", "--strict"])
        .arg(istio_dir().join("spiffe-csi-driver.yaml"))
        .arg(istio_dir().join("spiffe-csi-node.yaml"))
        .arg(istio_dir().join("example-workload.yaml"))
        .arg(&built)
        .arg(&pod)
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "{} (pip install -r tests/requirements.txt): {e}",
                kubernetes_validate().display()
            )
        });
    let text = stdout_ok(out, "kubernetes-validate --strict");
    assert!(!text.contains("ERROR"), "{text}");
    for (file, kind) in [
        ("spiffe-csi-driver.yaml", "csidriver/csi.spiffe.io"),
        ("spiffe-csi-node.yaml", "daemonset/spiffe-csi-driver"),
        ("spiffe-csi-node.yaml", "serviceaccount/spiffe-csi-driver"),
        ("example-workload.yaml", "deployment/sleep"),
        ("built.yaml", "csidriver/csi.spiffe.io"),
        ("built.yaml", "daemonset/spiffe-csi-driver"),
        ("built.yaml", "daemonset/spire-agent"),
        ("injected-pod.json", "pod/sleep-injected"),
    ] {
        assert!(
            text.lines()
                .any(|l| l.contains(file) && l.contains(&format!("{kind} against"))),
            "{file} {kind}: {text}"
        );
    }
}

/// deploy/ with the component, the example workload and the injected pod, each dry-run by the
/// real API server (admin credentials): a v1.20 server accepts what the 1.35 schemas accept.
#[test]
fn the_real_api_server_accepts_the_component_the_example_and_the_injected_pod_in_a_dry_run() {
    let k = kube();
    let dir = tempfile::tempdir().unwrap();
    let built = kustomize(&users_kustomization(dir.path()));
    // What `kubectl apply -k` of the user's kustomization sends (kubectl >= 1.21 renders the
    // component itself; the test's kubectl is older).
    let text = run_with_stdin(
        Command::new(kubectl_bin())
            .arg("--kubeconfig")
            .arg(&k.admin_kubeconfig)
            .args(["apply", "--dry-run=server", "-f", "-"]),
        &built,
        "kubectl apply --dry-run=server -f <kustomize build of deploy/ + deploy/istio> (an API \
         server started by a real-apiserver.sh without --allow-privileged=true refuses the CSI \
         driver's privileged pod: `bash testkit/k8s/real-apiserver.sh stop`, then `start`)",
    );
    let objects = yaml_documents(&built);
    let accepted = text
        .lines()
        .filter(|l| l.ends_with("(server dry run)"))
        .count();
    assert_eq!(accepted, objects.len(), "{text}");
    for (kind, name) in [
        ("csidriver.storage.k8s.io", "csi.spiffe.io"),
        ("daemonset.apps", "spiffe-csi-driver"),
        ("serviceaccount", "spiffe-csi-driver"),
        ("daemonset.apps", "spire-agent"),
    ] {
        assert!(
            text.lines()
                .any(|l| l.starts_with(&format!("{kind}/{name} "))),
            "{kind}/{name} not accepted: {text}"
        );
    }

    // A user's namespace: the example workload, and its pod as Istio's template injects it.
    let ns = k.namespace("istio-example");
    let out = Command::new(kubectl_bin())
        .arg("--kubeconfig")
        .arg(&k.admin_kubeconfig)
        .args(["-n", &ns, "apply", "--dry-run=server", "-f"])
        .arg(istio_dir().join("example-workload.yaml"))
        .output()
        .unwrap();
    let text = stdout_ok(
        out,
        "kubectl apply --dry-run=server -f example-workload.yaml",
    );
    assert!(
        text.contains("serviceaccount/sleep created (server dry run)"),
        "{text}"
    );
    assert!(
        text.contains("deployment.apps/sleep created (server dry run)"),
        "{text}"
    );
    // The pod's service account must exist (the dry run above created nothing).
    k.service_account(&ns, "sleep");
    let text = run_with_stdin(
        Command::new(kubectl_bin())
            .arg("--kubeconfig")
            .arg(&k.admin_kubeconfig)
            .args(["-n", &ns, "apply", "--dry-run=server", "-f", "-"]),
        &injected_pod().to_string(),
        "kubectl apply --dry-run=server of the injected pod",
    );
    assert!(
        text.contains("pod/sleep-injected created (server dry run)"),
        "{text}"
    );
}

#[test]
fn the_istio_agent_config_is_deploy_agent_conf_with_the_socket_named_socket() {
    let path = istio_dir().join("agent.conf");
    let out = Command::new(agent_bin())
        .args(["validate", "-config"])
        .arg(&path)
        .output()
        .unwrap();
    let text = stdout_ok(out, "sigil-agent validate -config deploy/istio/agent.conf");
    assert!(text.contains("Configuration is valid"), "{text}");

    // The same settings as deploy/agent.conf, but for the socket's name.
    let settings = |conf: &str| -> Vec<String> {
        conf.lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(str::to_owned)
            .collect()
    };
    let base = read(&deploy_dir().join("agent.conf"));
    let istio = read(&path);
    let (base_settings, istio_settings) = (settings(&base), settings(&istio));
    assert_eq!(base_settings.len(), istio_settings.len());
    let differing: Vec<(&String, &String)> = base_settings
        .iter()
        .zip(&istio_settings)
        .filter(|(a, b)| a != b)
        .collect();
    assert_eq!(
        differing,
        [(
            &r#"socket_path = "/run/spire/sockets/agent.sock""#.to_owned(),
            &format!(r#"socket_path = "/run/spire/sockets/{SOCKET_FILE}""#)
        )]
    );
    assert!(!istio.contains("insecure_bootstrap"));

    // The agent's ConfigMap carries this file (and no other carries an agent.conf), and the
    // agent mounts it.
    let objects = built_objects();
    let carrying: Vec<&Value> = objects
        .iter()
        .filter(|o| o["kind"] == "ConfigMap" && o["data"]["agent.conf"].is_string())
        .collect();
    assert_eq!(carrying.len(), 1);
    assert_eq!(carrying[0]["data"]["agent.conf"].as_str().unwrap(), istio);
    let agent = pod_spec(&objects, "DaemonSet", "spire-agent");
    assert!(
        agent["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|v| v["configMap"]["name"] == carrying[0]["metadata"]["name"])
    );
}

#[test]
fn the_agent_socket_reaches_pods_where_istio_looks_for_it() {
    let objects = built_objects();
    let agent_conf = read(&istio_dir().join("agent.conf"));
    let socket_path = PathBuf::from(hcl_string(&agent_conf, "socket_path"));
    assert_eq!(socket_path.file_name().unwrap(), SOCKET_FILE);
    let socket_dir = socket_path.parent().unwrap().to_str().unwrap();

    // The node's directory: the agent's hostPath where it puts the socket is the CSI driver's
    // hostPath at its -workload-api-socket-dir, which it mounts read-only.
    let agent = pod_spec(&objects, "DaemonSet", "spire-agent");
    let node_dir = host_path_at(agent, container(agent, "spire-agent"), socket_dir);
    let csi = pod_spec(&objects, "DaemonSet", "spiffe-csi-driver");
    let driver = container(csi, "spiffe-csi-driver");
    let driver_dir = arg(driver, "-workload-api-socket-dir");
    assert_eq!(host_path_at(csi, driver, &driver_dir), node_dir);
    let mount = driver["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["mountPath"] == driver_dir.as_str())
        .unwrap();
    assert_eq!(mount["readOnly"], true);

    // The driver's CSI socket is where the registrar tells the kubelet to call it, under the
    // kubelet's plugin directory for this driver's name.
    let csi_socket = PathBuf::from(arg(driver, "-csi-socket-path"));
    let csi_socket_dir = csi_socket.parent().unwrap().to_str().unwrap();
    let plugin_dir = host_path_at(csi, driver, csi_socket_dir);
    assert_eq!(plugin_dir, format!("/var/lib/kubelet/plugins/{CSI_DRIVER}"));
    let registrar = container(csi, "node-driver-registrar");
    assert_eq!(
        arg(registrar, "--csi-address"),
        csi_socket.to_str().unwrap()
    );
    assert_eq!(host_path_at(csi, registrar, csi_socket_dir), plugin_dir);
    assert_eq!(
        arg(registrar, "--kubelet-registration-path"),
        format!(
            "{plugin_dir}/{}",
            csi_socket.file_name().unwrap().to_str().unwrap()
        )
    );
    assert_eq!(
        host_path_at(csi, registrar, "/registration"),
        "/var/lib/kubelet/plugins_registry"
    );
    let driver_object = object(&objects, "CSIDriver", CSI_DRIVER);
    assert_eq!(
        driver_object["spec"],
        json!({"attachRequired": false, "podInfoOnMount": true, "fsGroupPolicy": "None",
               "volumeLifecycleModes": ["Ephemeral"]})
    );

    // Istio's side: the sidecar template and the gateway mount that driver's volume read-only
    // where the proxy looks, and the trust domain is Sigil's.
    let (operator, template) = istio_operator();
    assert_eq!(operator["kind"], "IstioOperator");
    let server_conf = read(&deploy_dir().join("server.conf"));
    let trust_domain = hcl_string(&agent_conf, "trust_domain");
    assert_eq!(hcl_string(&server_conf, "trust_domain"), trust_domain);
    assert_eq!(operator["spec"]["meshConfig"]["trustDomain"], trust_domain);
    let csi_volume =
        json!({"name": "workload-socket", "csi": {"driver": CSI_DRIVER, "readOnly": true}});
    let proxy_mount =
        json!({"name": "workload-socket", "mountPath": POD_SOCKET_DIR, "readOnly": true});
    assert_eq!(template["spec"]["volumes"], json!([csi_volume]));
    assert_eq!(
        template["spec"]["containers"],
        json!([{"name": "istio-proxy", "volumeMounts": [proxy_mount]}])
    );
    let gateways = operator["spec"]["components"]["ingressGateways"]
        .as_array()
        .unwrap();
    assert_eq!(gateways.len(), 1);
    let overlays = gateways[0]["k8s"]["overlays"].as_array().unwrap();
    assert_eq!(overlays[0]["name"], "istio-ingressgateway");
    let patches = overlays[0]["patches"].as_array().unwrap();
    let patch = |path: &str| -> &Value {
        &patches
            .iter()
            .find(|p| p["path"] == path)
            .unwrap_or_else(|| panic!("no patch of {path}"))["value"]
    };
    assert_eq!(
        patch("spec.template.spec.volumes.[name:workload-socket]"),
        &csi_volume
    );
    assert_eq!(
        patch(
            "spec.template.spec.containers.[name:istio-proxy].volumeMounts.[name:workload-socket]"
        ),
        &proxy_mount
    );
    let init = &patch("spec.template.spec.initContainers")[0];
    assert!(
        init["command"]
            .to_string()
            .contains(&format!("{POD_SOCKET_DIR}/{SOCKET_FILE}")),
        "{init}"
    );
    assert_eq!(init["volumeMounts"], json!([proxy_mount]));

    // A workload asks for the template; the README tells users to.
    let workload = yaml_documents(&read(&istio_dir().join("example-workload.yaml")));
    let deployment = workload.iter().find(|d| d["kind"] == "Deployment").unwrap();
    assert_eq!(
        deployment["spec"]["template"]["metadata"]["annotations"]["inject.istio.io/templates"],
        "sidecar,spire"
    );
    let sa = workload
        .iter()
        .find(|d| d["kind"] == "ServiceAccount")
        .unwrap();
    assert_eq!(
        deployment["spec"]["template"]["spec"]["serviceAccountName"],
        sa["metadata"]["name"]
    );
    let section = istio_section();
    for text in [
        "inject.istio.io/templates: \"sidecar,spire\"",
        "istioctl install --skip-confirmation -f deploy/istio/istio-spire.yaml",
        "istioctl proxy-config secret",
        &format!("{POD_SOCKET_DIR}/{SOCKET_FILE}"),
    ] {
        assert!(section.contains(text), "deploy/README.md: no {text}");
    }
}

#[test]
fn the_csi_driver_has_no_api_access_and_only_the_privilege_its_mounts_need() {
    let objects = built_objects();
    // What the component adds to deploy/: no RBAC, nothing else.
    let base = yaml_documents(&kustomize(&deploy_dir()));
    let key = |o: &Value| format!("{}/{}", o["kind"], o["metadata"]["name"]);
    let base_keys: Vec<String> = base.iter().map(key).collect();
    let mut added: Vec<String> = objects
        .iter()
        .map(key)
        .filter(|k| !base_keys.contains(k) && !k.starts_with("\"ConfigMap\"/\"spire-agent-"))
        .collect();
    added.sort();
    assert_eq!(
        added,
        [
            r#""CSIDriver"/"csi.spiffe.io""#,
            r#""DaemonSet"/"spiffe-csi-driver""#,
            r#""ServiceAccount"/"spiffe-csi-driver""#
        ]
    );
    for o in &objects {
        let cluster_scoped = ["Namespace", "CSIDriver"].contains(&o["kind"].as_str().unwrap())
            || o["kind"].as_str().unwrap().starts_with("Cluster");
        if !cluster_scoped {
            assert_eq!(o["metadata"]["namespace"], "spire", "{}", o["metadata"]);
        }
        for s in o["subjects"].as_array().into_iter().flatten() {
            assert_ne!(s["name"], "spiffe-csi-driver", "{}", o["metadata"]);
        }
    }
    // Privileged pods are allowed in spire (the agent's hostPID already needs that level).
    assert_eq!(
        object(&objects, "Namespace", "spire")["metadata"]["labels"]["pod-security.kubernetes.io/enforce"],
        "privileged"
    );
    let sa = object(&objects, "ServiceAccount", "spiffe-csi-driver");
    assert_eq!(sa["automountServiceAccountToken"], false);

    let pod = pod_spec(&objects, "DaemonSet", "spiffe-csi-driver");
    assert_eq!(pod["serviceAccountName"], "spiffe-csi-driver");
    assert_eq!(pod["automountServiceAccountToken"], false);
    for host in ["hostPID", "hostNetwork", "hostIPC"] {
        assert_ne!(pod[host], true, "{host}");
    }
    assert_eq!(
        pod["securityContext"]["seccompProfile"]["type"],
        "RuntimeDefault"
    );
    let mut host_paths: Vec<&str> = pod["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| {
            v["hostPath"]["path"]
                .as_str()
                .expect("only hostPath volumes")
        })
        .collect();
    host_paths.sort_unstable();
    assert_eq!(
        host_paths,
        [
            "/run/spire/sockets",
            "/var/lib/kubelet/plugins/csi.spiffe.io",
            "/var/lib/kubelet/plugins_registry",
            "/var/lib/kubelet/pods"
        ]
    );
    let containers = pod["containers"].as_array().unwrap();
    assert_eq!(containers.len(), 2);
    assert!(pod["initContainers"].is_null());
    for c in containers {
        let who = c["name"].as_str().unwrap();
        let sc = &c["securityContext"];
        assert_eq!(sc["readOnlyRootFilesystem"], true, "{who}");
        assert_eq!(sc["capabilities"]["drop"], json!(["ALL"]), "{who}");
        assert!(sc["capabilities"]["add"].is_null(), "{who}");
        for limit in ["requests", "limits"] {
            for res in ["cpu", "memory"] {
                assert!(
                    c["resources"][limit][res].is_string(),
                    "{who} {limit}.{res}"
                );
            }
        }
        assert!(c["envFrom"].is_null(), "{who}");
        for e in c["env"].as_array().into_iter().flatten() {
            assert!(e["valueFrom"]["secretKeyRef"].is_null(), "{who}: {e}");
        }
        // Bidirectional propagation only for the driver, only into the kubelet's pods.
        for m in c["volumeMounts"].as_array().unwrap() {
            match m["mountPropagation"].as_str() {
                None => {}
                Some(p) => {
                    assert_eq!(
                        (who, m["mountPath"].as_str().unwrap(), p),
                        (
                            "spiffe-csi-driver",
                            "/var/lib/kubelet/pods",
                            "Bidirectional"
                        )
                    );
                }
            }
        }
    }
    // The driver is privileged (Bidirectional needs it); the registrar is not.
    assert_eq!(
        container(pod, "spiffe-csi-driver")["securityContext"]["privileged"],
        true
    );
    let registrar = &container(pod, "node-driver-registrar")["securityContext"];
    assert_ne!(registrar["privileged"], true);
    assert_eq!(registrar["allowPrivilegeEscalation"], false);
    assert_eq!(
        container(pod, "node-driver-registrar")["livenessProbe"]["httpGet"]["path"],
        "/healthz"
    );

    // It is the only privileged container of the deployment.
    let mut privileged = Vec::new();
    for o in &objects {
        let spec = &o["spec"]["template"]["spec"];
        for c in ["initContainers", "containers"]
            .iter()
            .filter_map(|k| spec[k].as_array())
            .flatten()
        {
            if c["securityContext"]["privileged"] == true {
                privileged.push(format!(
                    "{}/{}",
                    o["metadata"]["name"].as_str().unwrap(),
                    c["name"].as_str().unwrap()
                ));
            }
        }
    }
    assert_eq!(privileged, ["spiffe-csi-driver/spiffe-csi-driver"]);

    // The namespace's default deny covers it, and no policy opens anything for it.
    let deny = object(&objects, "NetworkPolicy", "default-deny-all");
    assert_eq!(deny["spec"]["podSelector"], json!({}));
    for p in objects.iter().filter(|o| o["kind"] == "NetworkPolicy") {
        assert_ne!(
            p["spec"]["podSelector"]["matchLabels"]["app"], "spiffe-csi-driver",
            "{}",
            p["metadata"]["name"]
        );
    }
}

/// deploy/README.md's step 2 (`$S entry create ...` lines) as the arguments of `sigil-server`,
/// split by `sh` as a user's shell splits them.
fn readme_entry_commands() -> Vec<Vec<String>> {
    let block = sh_blocks(&istio_section())
        .into_iter()
        .find(|b| b.contains("entry create -template"))
        .expect("the block creating the template entry");
    let joined = block.replace("\\\n", " ");
    let commands: Vec<&str> = joined
        .lines()
        .filter(|l| l.starts_with("$S entry create"))
        .collect();
    assert_eq!(commands.len(), 2, "{block}");
    commands
        .iter()
        .map(|line| {
            // $S prints its arguments, NUL-terminated.
            let out = Command::new("sh")
                .args(["-euc", &format!("S='printf %s\\0'\n{line}")])
                .output()
                .unwrap();
            stdout_ok(out, line)
                .split_terminator('\0')
                .map(str::to_owned)
                .collect()
        })
        .collect()
}

/// Runs `sigil-agent api fetch x509` as a process placed in `pod` (its container in the test
/// kubelet's answer, its PID in the fake procfs) against the agent's socket: the SVIDs' IDs and
/// each leaf's URI SANs.
fn fetch_as(agent: &Agent, proc_root: &Path, pod: &TestPod) -> (Vec<String>, Vec<Vec<String>>) {
    let socket = agent.socket.display().to_string();
    let args = [
        "api",
        "fetch",
        "x509",
        "-socketPath",
        &socket,
        "-output",
        "json",
    ];
    let mut child = kubelet::spawn_in_pod(proc_root, Some(pod), &agent_bin(), &args);
    drop(child.stdin.take());
    let out = child.wait_with_output().unwrap();
    let Ok(v) = serde_json::from_slice::<Value>(&out.stdout) else {
        return (Vec::new(), Vec::new());
    };
    let svids = v["svids"].as_array().cloned().unwrap_or_default();
    let ids = svids
        .iter()
        .map(|s| s["spiffe_id"].as_str().unwrap().to_owned())
        .collect();
    let uris = sigil_testkit::workload::leaf_uris(&v);
    (ids, uris)
}

/// The README's node alias and template entry, run as written against a real server that
/// attests agents of cluster `demo` with real PSATs; a real agent with its socket named
/// `socket` (as deploy/istio/agent.conf names it) serves a sidecar's pod and a gateway's pod,
/// both bound to its node in the real API server: each gets exactly the ID Istio expects.
#[test]
fn the_readme_template_entry_gives_istio_proxies_their_ns_sa_identity() {
    let k = kube();
    let ns = k.namespace("istio-agents");
    k.service_account(&ns, "spire-agent");
    let node = format!("{ns}-node");
    k.node(&node, &[]);
    k.pod(&ns, "agent-0", "spire-agent", &node, &[]);
    let proxy_pod = |ns: &str, name: &str, sa: &str, n: u8| {
        k.service_account(ns, sa);
        let mut pod = TestPod::new(ns, name, sa, n);
        pod.uid = k.pod(ns, name, sa, &node, &[("app", name)]);
        pod.node = node.clone();
        pod.container_name = "istio-proxy".into();
        pod
    };
    let app_ns = k.namespace("payments");
    let gateway_ns = k.namespace("istio-system");
    let sleep = proxy_pod(&app_ns, "sleep-5f4d47c948-njvpk", "sleep", 5);
    let gateway = proxy_pod(
        &gateway_ns,
        "istio-ingressgateway-5b45864fd4-lgrxs",
        "istio-ingressgateway-service-account",
        6,
    );

    // The server as deploy/server.conf has it: trust domain example.org, cluster demo.
    let server_conf = read(&deploy_dir().join("server.conf"));
    assert_eq!(hcl_string(&server_conf, "trust_domain"), "example.org");
    assert!(server_conf.contains("\"demo\" = {"), "cluster demo");
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(ServerOptions {
        extra_plugins: psat_server_plugin(
            "demo",
            &k.server_kubeconfig(dir.path()),
            &[&format!("{ns}:spire-agent")],
            &["spire-server"],
            &[],
            &[],
        ),
        ..ServerOptions::default()
    });
    let commands = readme_entry_commands();
    for args in &commands {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        server.cli_json(&args);
    }
    assert!(
        commands[1].contains(&"spiffe://example.org/ns/{k8s:ns}/sa/{k8s:sa}".to_owned()),
        "{commands:?}"
    );

    let token_path = dir.path().join("spire-agent");
    std::fs::write(
        &token_path,
        k.psat(&ns, "spire-agent", "agent-0", "spire-server"),
    )
    .unwrap();
    let mut agent = Agent::configure_psat(&server, "demo", &token_path);
    // The socket's name from deploy/istio/agent.conf; the k8s workload attestor on the test
    // kubelet and a fake procfs.
    let istio_socket = PathBuf::from(hcl_string(
        &read(&istio_dir().join("agent.conf")),
        "socket_path",
    ));
    let socket = agent
        .socket
        .with_file_name(istio_socket.file_name().unwrap());
    let port = kubelet::start(vec![sleep.clone(), gateway.clone()]);
    let proc_dir = tempfile::tempdir().unwrap();
    let proc_root = proc_dir.path();
    let conf = read(&agent.config);
    let old_socket = format!("socket_path = \"{}\"", agent.socket.display());
    assert!(conf.contains(&old_socket), "{conf}");
    let conf = conf
        .replacen(
            &old_socket,
            &format!("socket_path = \"{}\"", socket.display()),
            1,
        )
        .replacen(
            "  WorkloadAttestor \"unix\" {",
            &format!(
                "  WorkloadAttestor \"k8s\" {{\n    plugin_data {{\n      kubelet_read_only_port = {port}\n      proc_root = \"{}\"\n    }}\n  }}\n  WorkloadAttestor \"unix\" {{",
                proc_root.display()
            ),
            1,
        );
    std::fs::write(&agent.config, conf).unwrap();
    agent.socket = socket;
    agent.spawn(None);
    assert!(agent.socket.ends_with(SOCKET_FILE) && agent.socket.exists());

    for pod in [&sleep, &gateway] {
        let expected = format!(
            "spiffe://example.org/ns/{}/sa/{}",
            pod.namespace, pod.service_account
        );
        let (ids, uris) = wait_for(
            &format!("{}'s SVID", pod.name),
            Duration::from_secs(20),
            || {
                let found = fetch_as(&agent, proc_root, pod);
                (!found.0.is_empty()).then_some(found)
            },
        );
        assert_eq!(ids, std::slice::from_ref(&expected), "{}", agent.log());
        assert_eq!(uris, [vec![expected.clone()]]);
        // What Istio's proxy asks for over SDS: `default` and `ROOTCA` on the same socket.
        let fetched = fetch_sds_as(&agent, proc_root, pod, &["default", "ROOTCA"]);
        assert_eq!(fetched["code"], "OK", "{fetched}");
        let resources = fetched["resources"].as_array().unwrap();
        let default = resources.iter().find(|r| r["name"] == "default").unwrap();
        assert_eq!(default["kind"], "tls_certificate", "{fetched}");
        assert_eq!(default["spiffe_id"], expected.as_str(), "{fetched}");
        let rootca = resources.iter().find(|r| r["name"] == "ROOTCA").unwrap();
        assert_eq!(rootca["kind"], "validation_context", "{fetched}");
    }
}

/// FetchSecrets for `names` by the Go SDS client (go-control-plane), as a process of `pod`:
/// the `fetch` event it prints.
fn fetch_sds_as(agent: &Agent, proc_root: &Path, pod: &TestPod, names: &[&str]) -> Value {
    let mut child = Command::new(sigil_testkit::go::go_program("sds-client"))
        .arg("-socket")
        .arg(&agent.socket)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    // It dials only when told to, so it is in the pod before it connects.
    kubelet::place_in_pod(proc_root, child.id(), pod);
    let mut stdin = child.stdin.take().unwrap();
    writeln!(stdin, "fetch {}\nquit", names.join(" ")).unwrap();
    drop(stdin);
    let out = child.wait_with_output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|e| e["event"] == "fetch")
        .unwrap_or_else(|| panic!("no fetch event: {}", String::from_utf8_lossy(&out.stdout)))
}
