//! What the Kubernetes API says about one pod, kept small (a cluster of 10,000 pods holds only
//! these facts, never whole `Pod` objects), and the workload selectors those facts vouch for.
//!
//! The API vouches for the pod-level facts it stores: namespace, service account, name, UID,
//! labels and the node the pod is bound to. It knows nothing of what runs inside a container
//! (`k8s:container-*`, image digests the kubelet reports) or of Unix processes (`unix:*`):
//! selectors of those kinds come from the agent alone.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Pod;
use sigil_proto::Selector;

/// The selector type of workload selectors on Kubernetes.
const K8S: &str = "k8s";

/// The `k8s:<key>` selectors whose values the API vouches for (see [`PodFacts::selectors`]).
const VOUCHED_KEYS: &[&str] = &["ns", "sa", "pod-name", "pod-uid", "pod-label", "node-name"];

/// True if the API vouches for selectors of this type and value (or placeholder key): `k8s`
/// with a value starting with one of [`VOUCHED_KEYS`] (`ns`, `ns:payments`, `pod-label:app`,
/// `pod-label:app:web`), so that `pod-image` is not mistaken for `pod-...` anything.
pub fn is_vouched(kind: &str, value: &str) -> bool {
    let key = value.split(':').next().unwrap_or_default();
    kind == K8S && VOUCHED_KEYS.contains(&key)
}

/// A pod's lifecycle as far as signing cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PodPhase {
    /// Pending, Running or Unknown: its containers may run.
    Active,
    /// Succeeded or Failed: no container of it runs again.
    Terminated,
}

/// One pod as the API server stores it, reduced to what the mint checks read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodFacts {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub service_account: String,
    /// `spec.nodeName`: the node the pod is bound to. Never empty (unbound pods are not kept).
    pub node: String,
    pub labels: BTreeMap<String, String>,
    pub phase: PodPhase,
    /// `metadata.deletionTimestamp` is set: the pod is being torn down.
    pub deleting: bool,
}

impl PodFacts {
    /// The facts of `pod`, or `None` for a pod bound to no node (or missing its identity
    /// fields, which the API always sets).
    pub fn from_pod(pod: Pod) -> Option<Self> {
        let meta = pod.metadata;
        let spec = pod.spec.unwrap_or_default();
        let node = spec.node_name.filter(|n| !n.is_empty())?;
        let phase = match pod.status.and_then(|s| s.phase).as_deref() {
            Some("Succeeded" | "Failed") => PodPhase::Terminated,
            _ => PodPhase::Active,
        };
        Some(Self {
            namespace: meta.namespace.filter(|s| !s.is_empty())?,
            name: meta.name.filter(|s| !s.is_empty())?,
            uid: meta.uid.filter(|s| !s.is_empty())?,
            // The API's defaulting sets `default` when the pod names none.
            service_account: spec
                .service_account_name
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| "default".to_owned()),
            node,
            labels: meta.labels.unwrap_or_default(),
            phase,
            deleting: meta.deletion_timestamp.is_some(),
        })
    }

    /// The `k8s` workload selectors these facts vouch for, named as the agent's `k8s` workload
    /// attestor names them: `ns`, `sa`, `pod-name`, `pod-uid`, `node-name` and one
    /// `pod-label:<key>:<value>` per label. A value that is no valid selector is left out.
    pub fn selectors(&self) -> Vec<Selector> {
        let mut values = vec![
            format!("ns:{}", self.namespace),
            format!("sa:{}", self.service_account),
            format!("pod-name:{}", self.name),
            format!("pod-uid:{}", self.uid),
            format!("node-name:{}", self.node),
        ];
        values.extend(
            self.labels
                .iter()
                .map(|(k, v)| format!("pod-label:{k}:{v}")),
        );
        let mut selectors: Vec<Selector> = values
            .iter()
            .filter(|v| !v.ends_with(':'))
            .filter_map(|v| Selector::from_parts(K8S, v).ok())
            .collect();
        sigil_proto::selector::canonicalize(&mut selectors);
        selectors
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use k8s_openapi::api::core::v1::{PodSpec, PodStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};

    use super::*;

    /// A pod as the API returns it.
    pub(crate) fn pod(ns: &str, name: &str, uid: &str, node: &str, phase: &str) -> Pod {
        Pod {
            metadata: ObjectMeta {
                namespace: Some(ns.into()),
                name: Some(name.into()),
                uid: Some(uid.into()),
                labels: Some(BTreeMap::from([("app".into(), name.into())])),
                ..ObjectMeta::default()
            },
            spec: Some(PodSpec {
                node_name: Some(node.into()),
                service_account_name: Some("web".into()),
                ..PodSpec::default()
            }),
            status: Some(PodStatus {
                phase: Some(phase.into()),
                ..PodStatus::default()
            }),
        }
    }

    /// The facts of [`pod`] in phase Running.
    pub(crate) fn facts(ns: &str, name: &str, uid: &str, node: &str) -> PodFacts {
        PodFacts::from_pod(pod(ns, name, uid, node, "Running")).unwrap()
    }

    #[test]
    fn facts_keep_identity_binding_and_lifecycle() {
        let f = facts("shop", "web-1", "u1", "node-a");
        assert_eq!(
            (f.namespace.as_str(), f.name.as_str(), f.uid.as_str()),
            ("shop", "web-1", "u1")
        );
        assert_eq!(
            (f.service_account.as_str(), f.node.as_str()),
            ("web", "node-a")
        );
        assert_eq!((f.phase, f.deleting), (PodPhase::Active, false));

        for phase in ["Succeeded", "Failed"] {
            let f = PodFacts::from_pod(pod("shop", "web-1", "u1", "node-a", phase)).unwrap();
            assert_eq!(f.phase, PodPhase::Terminated, "{phase}");
        }
        let mut deleting = pod("shop", "web-1", "u1", "node-a", "Running");
        deleting.metadata.deletion_timestamp = Some(Time(Default::default()));
        assert!(PodFacts::from_pod(deleting).unwrap().deleting);

        // Not bound to a node: nothing to vouch for.
        assert_eq!(
            PodFacts::from_pod(pod("shop", "web-1", "u1", "", "Pending")),
            None
        );
        let mut unbound = pod("shop", "web-1", "u1", "x", "Pending");
        unbound.spec.as_mut().unwrap().node_name = None;
        assert_eq!(PodFacts::from_pod(unbound), None);
        // No service account named: the API's default.
        let mut no_sa = pod("shop", "web-1", "u1", "node-a", "Running");
        no_sa.spec.as_mut().unwrap().service_account_name = None;
        assert_eq!(
            PodFacts::from_pod(no_sa).unwrap().service_account,
            "default"
        );
    }

    #[test]
    fn selectors_are_the_k8s_attestors_pod_level_names() {
        let mut f = facts("shop", "web-1", "u1", "node-a");
        f.labels.insert("tier".into(), "front".into());
        f.labels.insert("empty".into(), String::new());
        let got: Vec<String> = f.selectors().iter().map(ToString::to_string).collect();
        assert_eq!(
            got,
            [
                "k8s:node-name:node-a",
                "k8s:ns:shop",
                "k8s:pod-label:app:web-1",
                "k8s:pod-label:tier:front",
                "k8s:pod-name:web-1",
                "k8s:pod-uid:u1",
                "k8s:sa:web",
            ]
        );
        for s in &got {
            let s = Selector::new(s).unwrap();
            assert!(is_vouched(s.kind(), s.value()), "{s}");
        }
    }

    #[test]
    fn only_pod_level_k8s_facts_are_vouched_for() {
        for (kind, value) in [
            ("k8s", "ns"),
            ("k8s", "ns:payments"),
            ("k8s", "pod-label:app"),
            ("k8s", "pod-label:app:web"),
            ("k8s", "pod-uid:x"),
            ("k8s", "node-name"),
        ] {
            assert!(is_vouched(kind, value), "{kind}:{value}");
        }
        for (kind, value) in [
            ("k8s", "container-name:main"),
            ("k8s", "container-image:x"),
            ("k8s", "pod-image:x"),
            ("k8s", "pod-image-count:1"),
            ("k8s", "pod-owner:ReplicaSet:x"),
            ("k8s", "nsx"),
            ("unix", "uid:0"),
            ("k8s_psat", "cluster:demo"),
        ] {
            assert!(!is_vouched(kind, value), "{kind}:{value}");
        }
    }
}
