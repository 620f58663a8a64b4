//! The `k8s` workload attestor (SPIRE's plugin of the same name): PID → cgroups → pod UID and
//! container ID → the kubelet's pod list → `k8s:*` selectors. A process that is not in a
//! container gets no `k8s` selectors (other attestors may still describe it).

pub mod cgroup;
pub mod config;
pub mod kubelet;
pub mod selectors;
#[cfg(test)]
mod test_kubelet;

use std::fmt;
use std::sync::Arc;

use futures::future::BoxFuture;
use sigil_proto::Selector;
use tracing::debug;

use super::{AttestationError, WorkloadAttestor};
use cgroup::{CgroupError, PodContainer};
use kubelet::{ContainerStatus, KubeletClient, KubeletError, Pod};

pub use config::K8sAttestorConfig;
pub use kubelet::{KubeletEndpoint, KubeletTls};

#[derive(Debug, thiserror::Error)]
pub enum K8sError {
    #[error(transparent)]
    Cgroup(#[from] CgroupError),
    #[error(transparent)]
    Kubelet(#[from] KubeletError),
    #[error(
        "container {container_id} not found in the kubelet's pod list after {attempts} attempts"
    )]
    ContainerNotFound { container_id: String, attempts: u32 },
    #[error("container {container_id} is claimed by pods {first} and {second}")]
    AmbiguousContainer {
        container_id: String,
        first: String,
        second: String,
    },
}

impl From<K8sError> for AttestationError {
    fn from(e: K8sError) -> Self {
        match e {
            K8sError::Cgroup(CgroupError::NoProcess { pid }) => Self::NoProcess { pid },
            other => Self::K8s(other),
        }
    }
}

/// Attests Kubernetes workloads. Shares one kubelet client (and its cache) across calls.
pub struct K8sAttestor {
    config: K8sAttestorConfig,
    kubelet: Arc<KubeletClient>,
}

impl fmt::Debug for K8sAttestor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("K8sAttestor")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl K8sAttestor {
    /// `kubelet` is where `config` says the kubelet is
    /// ([`K8sAttestorConfig::kubelet_endpoint`]).
    pub fn new(config: K8sAttestorConfig, kubelet: KubeletEndpoint) -> Self {
        let kubelet = Arc::new(KubeletClient::new(kubelet, config.pod_list_cache_ttl));
        Self { config, kubelet }
    }

    async fn attest_pid(&self, pid: i32) -> Result<Vec<Selector>, K8sError> {
        // Two small procfs files, served from kernel memory: not worth a blocking task.
        let Some(located) = cgroup::locate(&self.config.proc_root, pid)? else {
            return Ok(Vec::new());
        };
        let attempts = self.config.max_poll_attempts.max(1);
        let mut searched = None;
        for attempt in 1..=attempts {
            let snapshot = self.kubelet.pods(searched).await?;
            if let Some((pod, container)) = find_container(&snapshot.pods, &located)? {
                return Ok(selectors::selectors(pod, container));
            }
            // The kubelet lists a container some time after it starts: ask again, for a list
            // newer than the one just searched.
            searched = Some(snapshot.fetched_at);
            if attempt < attempts {
                debug!(
                    pid,
                    container_id = %located.container_id,
                    attempt,
                    "container not in the kubelet's pod list yet; retrying"
                );
                tokio::time::sleep(self.config.poll_retry_interval).await;
            }
        }
        Err(K8sError::ContainerNotFound {
            container_id: located.container_id,
            attempts,
        })
    }
}

impl WorkloadAttestor for K8sAttestor {
    fn attest(&self, pid: i32) -> BoxFuture<'_, Result<Vec<Selector>, AttestationError>> {
        Box::pin(async move {
            if pid <= 0 {
                return Err(AttestationError::NoProcess { pid });
            }
            Ok(self.attest_pid(pid).await?)
        })
    }
}

/// The pod (restricted to the cgroup's pod UID when known) and container status whose
/// `containerID` (after `<runtime>://`) is the cgroup's container ID.
fn find_container<'a>(
    pods: &'a [Pod],
    located: &PodContainer,
) -> Result<Option<(&'a Pod, &'a ContainerStatus)>, K8sError> {
    let mut found: Option<(&Pod, &ContainerStatus)> = None;
    let candidates = pods.iter().filter(|pod| {
        located
            .pod_uid
            .as_ref()
            .is_none_or(|uid| *uid == pod.metadata.uid)
    });
    for pod in candidates {
        let statuses = pod
            .status
            .container_statuses
            .iter()
            .chain(&pod.status.init_container_statuses);
        for status in statuses {
            let id = status.container_id.split_once("://").map(|(_, id)| id);
            if id != Some(located.container_id.as_str()) {
                continue;
            }
            if let Some((other, _)) = found
                && other.metadata.uid != pod.metadata.uid
            {
                return Err(K8sError::AmbiguousContainer {
                    container_id: located.container_id.clone(),
                    first: pod_name(other),
                    second: pod_name(pod),
                });
            }
            found = Some((pod, status));
        }
    }
    Ok(found)
}

fn pod_name(pod: &Pod) -> String {
    format!("{}/{}", pod.metadata.namespace, pod.metadata.name)
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::time::Duration;

    use super::test_kubelet::{PODS, TestKubelet};
    use super::*;

    const CHECKOUT_UID: &str = "2c48913c-b29f-11e7-9350-020968147796";
    const CHECKOUT_CID: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
    const ENVOY_CID: &str = "2222222222222222222222222222222222222222222222222222222222222222";
    const MIGRATE_CID: &str = "3333333333333333333333333333333333333333333333333333333333333333";
    const WEB_UID: &str = "8e1f2a3b-1c2d-4e5f-8a9b-0c1d2e3f4a5b";
    const WEB_CID: &str = "4444444444444444444444444444444444444444444444444444444444444444";

    struct Fixture {
        kubelet: TestKubelet,
        proc_root: tempfile::TempDir,
        attestor: K8sAttestor,
    }

    async fn fixture(max_poll_attempts: u32) -> Fixture {
        let kubelet = TestKubelet::start().await;
        let proc_root = tempfile::tempdir().unwrap();
        let attestor = K8sAttestor::new(
            K8sAttestorConfig {
                proc_root: proc_root.path().to_owned(),
                max_poll_attempts,
                poll_retry_interval: Duration::from_millis(10),
                // Long enough that only the retry logic, never expiry, causes a second fetch.
                pod_list_cache_ttl: Duration::from_secs(600),
                ..K8sAttestorConfig::default()
            },
            kubelet.endpoint(),
        );
        Fixture {
            kubelet,
            proc_root,
            attestor,
        }
    }

    fn write_cgroup(proc_root: &Path, pid: i32, content: &str) {
        let dir = proc_root.join(pid.to_string());
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("cgroup"), content).unwrap();
    }

    fn strings(selectors: &[Selector]) -> Vec<String> {
        selectors.iter().map(ToString::to_string).collect()
    }

    #[tokio::test]
    async fn each_cgroup_shape_finds_its_pod() {
        let f = fixture(1).await;
        let uid_ = CHECKOUT_UID.replace('-', "_");
        let web_uid_ = WEB_UID.replace('-', "_");
        let cases = [
            (
                format!("11:memory:/kubepods/burstable/pod{CHECKOUT_UID}/{CHECKOUT_CID}\n"),
                "payments",
                "checkout",
            ),
            (
                format!(
                    "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{uid_}.slice/docker-{ENVOY_CID}.scope\n"
                ),
                "payments",
                "envoy",
            ),
            (
                format!(
                    "0::/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{uid_}.slice/cri-containerd-{CHECKOUT_CID}.scope\n"
                ),
                "payments",
                "checkout",
            ),
            (
                format!(
                    "1:name=systemd:/kubepods-besteffort-pod{uid_}.slice:cri-containerd:{MIGRATE_CID}\n"
                ),
                "payments",
                "migrate",
            ),
            (
                format!(
                    "0::/kubepods.slice/kubepods-burstable-pod{web_uid_}.slice/crio-{WEB_CID}.scope\n"
                ),
                "other",
                "web",
            ),
            (format!("0::/../crio-{WEB_CID}.scope\n"), "other", "web"),
            (
                format!(
                    "12:pids:/docker/{ENVOY_CID}/kubepods/besteffort/pod{WEB_UID}/{WEB_CID}\n\
                     0::/docker/{ENVOY_CID}/system.slice/containerd.service\n"
                ),
                "other",
                "web",
            ),
        ];
        for (pid, (cgroup, ns, container)) in (100..).zip(cases) {
            write_cgroup(f.proc_root.path(), pid, &cgroup);
            let got = strings(&f.attestor.attest(pid).await.unwrap());
            assert!(got.contains(&format!("k8s:ns:{ns}")), "{cgroup}: {got:?}");
            assert!(
                got.contains(&format!("k8s:container-name:{container}")),
                "{cgroup}: {got:?}"
            );
            assert_eq!(
                got.iter()
                    .filter(|s| s.starts_with("k8s:container-name:"))
                    .count(),
                1
            );
        }
        assert_eq!(f.kubelet.requests(), 1);
    }

    #[tokio::test]
    async fn process_outside_a_pod_gets_no_selectors() {
        let f = fixture(3).await;
        write_cgroup(
            f.proc_root.path(),
            7,
            "0::/user.slice/user-1000.slice/session-2.scope\n",
        );
        assert!(f.attestor.attest(7).await.unwrap().is_empty());
        assert_eq!(f.kubelet.requests(), 0);
    }

    #[tokio::test]
    async fn missing_process_is_no_process() {
        let f = fixture(1).await;
        assert!(matches!(
            f.attestor.attest(9).await,
            Err(AttestationError::NoProcess { pid: 9 })
        ));
        assert!(matches!(
            f.attestor.attest(-1).await,
            Err(AttestationError::NoProcess { pid: -1 })
        ));
    }

    #[tokio::test]
    async fn container_appearing_later_is_found_after_retries() {
        let f = fixture(5).await;
        let not_yet = PODS.replace(&format!("containerd://{CHECKOUT_CID}"), "");
        f.kubelet
            .set_bodies(vec![not_yet.clone(), not_yet, PODS.to_owned()]);
        write_cgroup(
            f.proc_root.path(),
            10,
            &format!("0::/kubepods/pod{CHECKOUT_UID}/{CHECKOUT_CID}\n"),
        );
        let got = strings(&f.attestor.attest(10).await.unwrap());
        assert!(got.contains(&"k8s:sa:checkout-service".to_owned()));
        assert_eq!(f.kubelet.requests(), 3);
    }

    #[tokio::test]
    async fn container_never_listed_is_an_error() {
        let f = fixture(4).await;
        write_cgroup(
            f.proc_root.path(),
            11,
            &format!("0::/kubepods/pod{CHECKOUT_UID}/{}\n", "9".repeat(64)),
        );
        let err = f.attestor.attest(11).await.unwrap_err();
        assert!(
            matches!(
                err,
                AttestationError::K8s(K8sError::ContainerNotFound { attempts: 4, .. })
            ),
            "{err}"
        );
        assert_eq!(f.kubelet.requests(), 4);
    }

    #[tokio::test]
    async fn search_is_restricted_to_the_pod_uid() {
        // The checkout container ID under the web pod's UID: not a match.
        let f = fixture(2).await;
        write_cgroup(
            f.proc_root.path(),
            12,
            &format!("0::/kubepods/pod{WEB_UID}/{CHECKOUT_CID}\n"),
        );
        assert!(matches!(
            f.attestor.attest(12).await,
            Err(AttestationError::K8s(K8sError::ContainerNotFound { .. }))
        ));
    }

    #[tokio::test]
    async fn hundred_concurrent_attestations_make_one_kubelet_call() {
        let f = fixture(1).await;
        write_cgroup(
            f.proc_root.path(),
            20,
            &format!("0::/kubepods/pod{CHECKOUT_UID}/{CHECKOUT_CID}\n"),
        );
        let attestor = Arc::new(f.attestor);
        let calls = (0..100).map(|_| {
            let attestor = attestor.clone();
            tokio::spawn(async move { attestor.attest(20).await.map(|s| s.len()) })
        });
        for call in futures::future::join_all(calls).await {
            assert_eq!(call.unwrap().unwrap(), 20);
        }
        assert_eq!(f.kubelet.requests(), 1);
    }

    #[tokio::test]
    async fn conflicting_cgroups_are_refused() {
        let f = fixture(1).await;
        write_cgroup(
            f.proc_root.path(),
            30,
            &format!(
                "1:cpu:/kubepods/pod{CHECKOUT_UID}/{CHECKOUT_CID}\n\
                 2:memory:/kubepods/pod{CHECKOUT_UID}/{ENVOY_CID}\n"
            ),
        );
        assert!(matches!(
            f.attestor.attest(30).await,
            Err(AttestationError::K8s(K8sError::Cgroup(
                CgroupError::MultipleContainerIds(..)
            )))
        ));
        assert_eq!(f.kubelet.requests(), 0);
    }

    #[tokio::test]
    async fn container_claimed_by_two_pods_is_refused() {
        let f = fixture(1).await;
        f.kubelet.set_body(&PODS.replace(
            &format!("cri-o://{WEB_CID}"),
            &format!("containerd://{CHECKOUT_CID}"),
        ));
        // No pod UID in the cgroup (cri-o with a cgroup namespace): every pod is a candidate.
        write_cgroup(
            f.proc_root.path(),
            31,
            &format!("0::/../crio-{CHECKOUT_CID}.scope\n"),
        );
        assert!(matches!(
            f.attestor.attest(31).await,
            Err(AttestationError::K8s(K8sError::AmbiguousContainer { .. }))
        ));
    }

    /// Through the real Workload API: this test process, placed in the checkout pod by a fake
    /// cgroup file, gets the entry for `payments/checkout-service` and not the one for `other`.
    #[tokio::test]
    async fn workload_api_serves_the_pod_entry() {
        use sigil_proto::workload::X509svidRequest;

        use crate::cache::testing::entry;
        use crate::workload_api::client::connect;
        use crate::workload_api::tests::{Harness, Options};

        let f = fixture(1).await;
        let pid = i32::try_from(std::process::id()).unwrap();
        write_cgroup(
            f.proc_root.path(),
            pid,
            &format!("0::/kubepods/pod{CHECKOUT_UID}/{CHECKOUT_CID}\n"),
        );
        let h = Harness::start(Options {
            attestor: Box::new(f.attestor),
            ..Options::default()
        })
        .await;
        h.cache.upsert_entries(vec![
            entry(
                "checkout",
                "spiffe://example.org/payments/checkout",
                &["k8s:ns:payments", "k8s:sa:checkout-service"],
                1,
            ),
            entry(
                "web",
                "spiffe://example.org/other/web",
                &["k8s:ns:other"],
                1,
            ),
        ]);
        for (id, spiffe_id) in [
            ("checkout", "spiffe://example.org/payments/checkout"),
            ("web", "spiffe://example.org/other/web"),
        ] {
            h.cache.set_svid(id, h.ca.svid(spiffe_id)).unwrap();
        }

        let mut client = connect(&h.socket).await.unwrap();
        let mut stream = client
            .fetch_x509svid(X509svidRequest {})
            .await
            .unwrap()
            .into_inner();
        let first = tokio::time::timeout(Duration::from_secs(20), stream.message())
            .await
            .expect("timed out")
            .unwrap()
            .expect("one message");
        let ids: Vec<&str> = first.svids.iter().map(|s| s.spiffe_id.as_str()).collect();
        assert_eq!(ids, ["spiffe://example.org/payments/checkout"]);
        drop(stream);
        h.stop().await;
    }
}
