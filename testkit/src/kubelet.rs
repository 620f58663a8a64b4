//! A test kubelet: answers `GET /pods` on 127.0.0.1 with a PodList built from [`TestPod`]s, as
//! the kubelet's read-only port does, plus a fake procfs entry placing a PID in a pod's
//! container (cgroup v2, systemd driver, containerd).

use std::path::Path;

/// One pod with one running container.
#[derive(Clone, Debug)]
pub struct TestPod {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub service_account: String,
    pub node: String,
    pub labels: Vec<(String, String)>,
    pub container_name: String,
    pub image: String,
    /// 64 hex characters.
    pub container_id: String,
}

impl TestPod {
    /// A pod with a derived UID and container ID (`n` keeps them distinct).
    pub fn new(namespace: &str, name: &str, service_account: &str, n: u8) -> Self {
        Self {
            namespace: namespace.into(),
            name: name.into(),
            uid: format!("1234abcd-0000-4000-8000-{n:012x}"),
            service_account: service_account.into(),
            node: "node-1".into(),
            labels: vec![("app".into(), name.into())],
            container_name: "main".into(),
            image: "registry.example/app:1".into(),
            container_id: format!("{n:02x}").repeat(32),
        }
    }

    fn json(&self) -> serde_json::Value {
        let labels: serde_json::Map<String, serde_json::Value> = self
            .labels
            .iter()
            .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
            .collect();
        serde_json::json!({
            "metadata": {"name": self.name, "namespace": self.namespace, "uid": self.uid, "labels": labels},
            "spec": {
                "serviceAccountName": self.service_account,
                "nodeName": self.node,
                "containers": [{"name": self.container_name, "image": self.image}],
            },
            "status": {"containerStatuses": [{
                "name": self.container_name,
                "image": self.image,
                "imageID": format!("{}@sha256:{}", self.image, "0".repeat(64)),
                "containerID": format!("containerd://{}", self.container_id),
            }]},
        })
    }
}

/// Starts the test kubelet on a free port; it serves until the process exits.
pub fn start(pods: Vec<TestPod>) -> u16 {
    let body = serde_json::json!({
        "kind": "PodList",
        "apiVersion": "v1",
        "items": pods.iter().map(TestPod::json).collect::<Vec<_>>(),
    })
    .to_string();
    crate::net::serve_json("test kubelet", move |request_line| {
        if request_line.starts_with("GET /pods") {
            ("200 OK", body.clone())
        } else {
            ("404 Not Found", String::new())
        }
    })
}

/// Writes `<proc_root>/<pid>/cgroup` placing `pid` in `pod`'s container.
pub fn place_in_pod(proc_root: &Path, pid: u32, pod: &TestPod) {
    let uid = pod.uid.replace('-', "_");
    write_cgroup(
        proc_root,
        pid,
        &format!(
            "0::/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{uid}.slice/cri-containerd-{}.scope\n",
            pod.container_id
        ),
    );
}

/// Starts `program args` as a process of `pod` (or, with `None`, of no pod: a host session),
/// stdin, stdout and stderr piped. It is held (a shell waiting on its stdin) until its cgroup
/// is written to the fake procfs, then execs `program`, so that it never calls the agent from
/// anywhere else.
///
/// # Panics
/// If it cannot be started.
pub fn spawn_in_pod(
    proc_root: &Path,
    pod: Option<&TestPod>,
    program: &Path,
    args: &[&str],
) -> std::process::Child {
    use std::io::Write as _;
    use std::process::{Command, Stdio};
    let mut child = Command::new("sh")
        .args(["-c", "read _; exec \"$0\" \"$@\""])
        .arg(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn a process for the pod");
    match pod {
        Some(pod) => place_in_pod(proc_root, child.id(), pod),
        None => write_cgroup(proc_root, child.id(), "0::/user.slice/session-1.scope\n"),
    }
    child
        .stdin
        .as_mut()
        .expect("piped stdin")
        .write_all(b"\n")
        .expect("release the process");
    child
}

/// Writes an arbitrary cgroup file for `pid`.
pub fn write_cgroup(proc_root: &Path, pid: u32, text: &str) {
    let dir = proc_root.join(pid.to_string());
    std::fs::create_dir_all(&dir).expect("fake proc dir");
    std::fs::write(dir.join("cgroup"), text).expect("fake cgroup");
}
