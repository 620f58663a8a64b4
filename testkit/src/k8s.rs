//! A real Kubernetes API server for tests, driven by `testkit/k8s/real-apiserver.sh` (kube-apiserver
//! v1.20.2 + etcd on 127.0.0.1:6443, built once per machine under `$SIGIL_K8S`).
//!
//! The first test that asks for [`kube()`] starts it unless one already answers; `scripts/test`
//! starts it before the suite and stops it afterwards. Tests share one API server, so each test
//! creates its own namespace (see [`Kube::namespace`]) and never relies on objects it did not make,
//! except the script's fixtures (namespace `spire`, SAs `spire-agent`/`spire-server`, node `node-1`,
//! pod `spire-agent-0`, and the `spire-server-node-attestor` ClusterRole: what the server's
//! attestor, pod cache and bundle notifier need).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};

/// The shared API server.
#[derive(Debug)]
pub struct Kube {
    /// Where the script keeps its state (`$SIGIL_K8S`, default `/var/tmp/sigil-k8s`).
    pub home: PathBuf,
    /// Admin kubeconfig (system:masters); tests use it to arrange the world, never for Sigil.
    pub admin_kubeconfig: PathBuf,
    /// The API server's CA certificate.
    pub ca: PathBuf,
    /// `https://127.0.0.1:6443`.
    pub url: String,
}

/// The kubectl built from the API server's own source by `real-apiserver.sh build` (v1.20.2): the
/// tests use no other, so they need nothing a machine image happens to ship.
pub fn kubectl_bin() -> PathBuf {
    home().join("bin/kubectl")
}

/// Where the scripts keep their state: `$SIGIL_K8S`, default `/var/tmp/sigil-k8s`.
fn home() -> PathBuf {
    PathBuf::from(std::env::var("SIGIL_K8S").unwrap_or_else(|_| "/var/tmp/sigil-k8s".into()))
}

/// Path of the script carried in this repository.
pub fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("k8s/real-apiserver.sh")
}

/// The API server, started on first use.
pub fn kube() -> &'static Kube {
    static KUBE: OnceLock<Kube> = OnceLock::new();
    KUBE.get_or_init(|| {
        let kube = Kube::at_home();
        if !kube.ready() {
            let out = Command::new("bash")
                .arg(script())
                .arg("start")
                .output()
                .expect("run real-apiserver.sh");
            assert!(
                out.status.success(),
                "real-apiserver.sh start failed (needs curl, openssl, python3, apt-get): {}",
                String::from_utf8_lossy(&out.stderr)
            );
            assert!(
                kube.ready(),
                "the API server did not become ready; see {}/run/logs",
                kube.home.display()
            );
        } else {
            // Started by another test process, maybe with an older copy of the script.
            let out = Command::new("bash")
                .arg(script())
                .arg("fixtures")
                .output()
                .expect("run real-apiserver.sh fixtures");
            assert!(
                out.status.success(),
                "real-apiserver.sh fixtures failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        kube
    })
}

/// The one-node cluster of `real-node.sh` (kube-apiserver, controllers, scheduler, kube-proxy and a
/// kubelet running pods with containerd and runc) if it answers; its admin, like [`kube`]'s.
pub fn node() -> Option<Kube> {
    let home = home();
    let node = Kube {
        admin_kubeconfig: home.join("node/admin.kubeconfig"),
        ca: home.join("node/pki/ca.crt"),
        url: "https://10.88.0.1:6444".into(),
        home,
    };
    (node.admin_kubeconfig.exists() && node.try_kubectl(&["get", "--raw", "/readyz"], "").0)
        .then_some(node)
}

/// The API server if one already answers (started by `scripts/test` or by
/// `real-apiserver.sh start`), without starting it: for the benchmark, which reports its
/// Kubernetes rows as "n.a." instead of building and starting one.
pub fn running() -> Option<&'static Kube> {
    Kube::at_home().ready().then(kube)
}

impl Kube {
    /// The shared API server, whose state the script keeps under [`home`].
    fn at_home() -> Self {
        let home = home();
        Self {
            admin_kubeconfig: home.join("run/kubeconfig"),
            ca: home.join("run/pki/ca.crt"),
            url: "https://127.0.0.1:6443".into(),
            home,
        }
    }

    fn ready(&self) -> bool {
        self.admin_kubeconfig.exists()
            && Command::new("curl")
                .args(["-sf", "--max-time", "2", "--cacert"])
                .arg(&self.ca)
                .args(["-H", "Authorization: Bearer admin-token-0123456789"])
                .arg(format!("{}/readyz", self.url))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
    }

    /// Runs kubectl as admin; panics with its stderr on failure.
    pub fn kubectl(&self, args: &[&str]) -> String {
        self.kubectl_stdin(args, "")
    }

    /// Runs kubectl as admin with `stdin`; panics with its stderr on failure.
    pub fn kubectl_stdin(&self, args: &[&str], stdin: &str) -> String {
        let (ok, stdout, stderr) = self.try_kubectl(args, stdin);
        assert!(ok, "kubectl {args:?} failed: {stderr}");
        stdout
    }

    /// Runs kubectl as admin: (success, stdout, stderr).
    pub fn try_kubectl(&self, args: &[&str], stdin: &str) -> (bool, String, String) {
        let mut child = Command::new(kubectl_bin())
            .env("KUBECONFIG", &self.admin_kubeconfig)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("kubectl built by real-apiserver.sh build");
        child
            .stdin
            .take()
            .expect("piped stdin")
            .write_all(stdin.as_bytes())
            .expect("write kubectl stdin");
        let out = child.wait_with_output().expect("kubectl output");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).trim().to_string(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// `kubectl apply -f -` of `yaml`.
    pub fn apply(&self, yaml: &str) {
        self.kubectl_stdin(&["apply", "-f", "-"], yaml);
    }

    /// A fresh namespace named `<prefix>-<pid>-<n>`, so tests and reruns never collide.
    pub fn namespace(&self, prefix: &str) -> String {
        static N: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "{prefix}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        self.kubectl(&["create", "namespace", &name]);
        name
    }

    /// A service account (no automounted token: the test server has no controllers).
    pub fn service_account(&self, ns: &str, name: &str) {
        self.apply(&format!(
            "apiVersion: v1\nkind: ServiceAccount\nmetadata: {{name: {name}, namespace: {ns}}}\nautomountServiceAccountToken: false\n"
        ));
    }

    /// A pod of service account `sa` scheduled on `node`; returns its UID. It stays Pending.
    pub fn pod(
        &self,
        ns: &str,
        name: &str,
        sa: &str,
        node: &str,
        labels: &[(&str, &str)],
    ) -> String {
        let labels: Vec<String> = labels
            .iter()
            .map(|(k, v)| format!("{k:?}: {v:?}"))
            .collect();
        self.apply(&format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: {ns}, labels: {{{}}}}}\n\
             spec:\n  serviceAccountName: {sa}\n  automountServiceAccountToken: false\n  nodeName: {node}\n  \
             containers: [{{name: main, image: example.invalid/main:none}}]\n",
            labels.join(", ")
        ));
        self.uid("pod", Some(ns), name)
    }

    /// Deletes a pod at once (there is no kubelet to confirm a graceful stop).
    pub fn delete_pod(&self, ns: &str, name: &str) {
        self.kubectl(&[
            "-n",
            ns,
            "delete",
            "pod",
            name,
            "--grace-period=0",
            "--force",
            "--wait=true",
        ]);
    }

    /// A node with `labels`; returns its UID.
    pub fn node(&self, name: &str, labels: &[(&str, &str)]) -> String {
        let labels: Vec<String> = labels
            .iter()
            .map(|(k, v)| format!("{k:?}: {v:?}"))
            .collect();
        self.apply(&format!(
            "apiVersion: v1\nkind: Node\nmetadata: {{name: {name}, labels: {{{}}}}}\n",
            labels.join(", ")
        ));
        self.uid("node", None, name)
    }

    /// `.metadata.uid` of an object.
    pub fn uid(&self, kind: &str, ns: Option<&str>, name: &str) -> String {
        let mut args = vec!["get", kind, name, "-o", "jsonpath={.metadata.uid}"];
        if let Some(ns) = ns {
            args.extend(["-n", ns]);
        }
        self.kubectl(&args)
    }

    /// A projected service account token for `ns/sa`, bound to pod `pod`, for `audience`: what the
    /// kubelet writes into an agent pod's projected volume.
    pub fn psat(&self, ns: &str, sa: &str, pod: &str, audience: &str) -> String {
        let uid = self.uid("pod", Some(ns), pod);
        self.token_request(
            ns,
            sa,
            serde_json::json!({
                "audiences": [audience],
                "boundObjectRef": {"kind": "Pod", "apiVersion": "v1", "name": pod, "uid": uid},
            }),
        )
    }

    /// A token for `ns/sa` from the TokenRequest API (`POST .../serviceaccounts/<sa>/token`, the
    /// call the kubelet makes for a projected volume) with `spec`.
    pub fn token_request(&self, ns: &str, sa: &str, spec: serde_json::Value) -> String {
        let request = serde_json::json!({
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenRequest",
            "spec": spec,
        });
        let path = format!("/api/v1/namespaces/{ns}/serviceaccounts/{sa}/token");
        let out = self.kubectl_stdin(&["create", "--raw", &path, "-f", "-"], &request.to_string());
        let answer: serde_json::Value = serde_json::from_str(&out).expect("TokenRequest JSON");
        answer["status"]["token"]
            .as_str()
            .expect("status.token in the TokenRequest answer")
            .to_owned()
    }

    /// A kubeconfig (written to `dir`) that authenticates as service account `ns/sa` with its own
    /// token, as a pod of that account would in-cluster. Its rights are only what RBAC grants it.
    pub fn kubeconfig_for(&self, ns: &str, sa: &str, dir: &Path) -> PathBuf {
        self.kubeconfig_at(ns, sa, dir, &self.url)
    }

    /// [`Kube::kubeconfig_for`] reaching the API server at `url` (e.g. through a
    /// [`crate::proxy::CuttableProxy`] on 127.0.0.1, which its certificate also names).
    pub fn kubeconfig_at(&self, ns: &str, sa: &str, dir: &Path, url: &str) -> PathBuf {
        let token = self.token_request(ns, sa, serde_json::json!({"expirationSeconds": 3600}));
        let path = dir.join(format!("kubeconfig-{ns}-{sa}"));
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: local\n  cluster: {{server: \"{url}\", certificate-authority: \"{}\"}}\n\
             users:\n- name: sa\n  user: {{token: {token}}}\ncontexts:\n- name: local\n  context: {{cluster: local, user: sa}}\ncurrent-context: local\n",
            self.ca.display()
        );
        std::fs::write(&path, text).expect("write kubeconfig");
        path
    }

    /// The least-privilege kubeconfig of `spire/spire-server` (bound to the attestor ClusterRole).
    pub fn server_kubeconfig(&self, dir: &Path) -> PathBuf {
        self.kubeconfig_for("spire", "spire-server", dir)
    }
}

/// The server's `NodeAttestor "k8s_psat"` block for one cluster, for
/// [`crate::ServerOptions::extra_plugins`].
pub fn psat_server_plugin(
    cluster: &str,
    kubeconfig: &Path,
    allow: &[&str],
    audience: &[&str],
    node_label_keys: &[&str],
    pod_label_keys: &[&str],
) -> String {
    let list = |items: &[&str]| format!("{items:?}");
    format!(
        r#"NodeAttestor "k8s_psat" {{
    plugin_data {{
      clusters = {{
        "{cluster}" = {{
          service_account_allow_list = {allow}
          audience = {audience}
          kube_config_file = "{kubeconfig}"
          allowed_node_label_keys = {node}
          allowed_pod_label_keys = {pod}
        }}
      }}
    }}
  }}"#,
        allow = list(allow),
        audience = list(audience),
        kubeconfig = kubeconfig.display(),
        node = list(node_label_keys),
        pod = list(pod_label_keys),
    )
}

/// A tiny plain-HTTP stand-in for an API server that answers every TokenReview with `status`
/// (JSON of a `TokenReviewStatus`), for what the real one cannot produce quickly (an expired
/// token). Other paths get 404. The listener thread lives until the test process ends.
#[derive(Debug)]
pub struct FakeApiServer {
    pub port: u16,
}

impl FakeApiServer {
    pub fn start(status: serde_json::Value) -> Self {
        let review = serde_json::json!({
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenReview",
            "metadata": {},
            "spec": {},
            "status": status,
        })
        .to_string();
        let port = crate::net::serve_json("fake API server", move |request_line| {
            if request_line.contains("/tokenreviews") {
                ("201 Created", review.clone())
            } else {
                (
                    "404 Not Found",
                    r#"{"kind":"Status","apiVersion":"v1","status":"Failure","code":404,"reason":"NotFound","message":"not found"}"#.to_owned(),
                )
            }
        });
        Self { port }
    }

    /// A kubeconfig (in `dir`) pointing at this fake over plain HTTP.
    pub fn kubeconfig(&self, dir: &Path) -> PathBuf {
        let path = dir.join("kubeconfig-fake");
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster: {{server: \"http://127.0.0.1:{}\"}}\n\
             users:\n- name: u\n  user: {{token: fake-server-credential}}\ncontexts:\n- name: fake\n  context: {{cluster: fake, user: u}}\ncurrent-context: fake\n",
            self.port
        );
        std::fs::write(&path, text).expect("write kubeconfig");
        path
    }
}
