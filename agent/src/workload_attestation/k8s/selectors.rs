//! The `k8s` selectors of a pod and one of its containers, named exactly as SPIRE names them
//! so that existing registration entries keep matching.

use sigil_proto::Selector;

use super::kubelet::{ContainerStatus, Pod};

/// Pod-level selectors plus the container-level ones for `container`. Images come from the
/// pod's status (what actually runs, with resolved digests), as in SPIRE. A value that is not
/// a valid selector (an empty field) is dropped.
pub fn selectors(pod: &Pod, container: &ContainerStatus) -> Vec<Selector> {
    let meta = &pod.metadata;
    let status = &pod.status;
    let mut values = vec![
        format!("sa:{}", pod.spec.service_account_name),
        format!("ns:{}", meta.namespace),
        format!("node-name:{}", pod.spec.node_name),
        format!("pod-uid:{}", meta.uid),
        format!("pod-name:{}", meta.name),
        format!("pod-image-count:{}", status.container_statuses.len()),
        format!(
            "pod-init-image-count:{}",
            status.init_container_statuses.len()
        ),
    ];
    for c in &status.container_statuses {
        values.push(format!("pod-image:{}", c.image));
        values.push(format!("pod-image:{}", c.image_id));
    }
    for c in &status.init_container_statuses {
        values.push(format!("pod-init-image:{}", c.image));
        values.push(format!("pod-init-image:{}", c.image_id));
    }
    for (key, value) in &meta.labels {
        values.push(format!("pod-label:{key}:{value}"));
    }
    for owner in &meta.owner_references {
        values.push(format!("pod-owner:{}:{}", owner.kind, owner.name));
        values.push(format!("pod-owner-uid:{}:{}", owner.kind, owner.uid));
    }
    values.push(format!("container-name:{}", container.name));
    values.push(format!("container-image:{}", container.image));
    values.push(format!("container-image:{}", container.image_id));

    let mut out: Vec<Selector> = values
        .iter()
        .filter(|v| !v.ends_with(':'))
        .filter_map(|v| Selector::from_parts("k8s", v).ok())
        .collect();
    sigil_proto::selector::canonicalize(&mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::super::kubelet::PodList;
    use super::super::test_kubelet::PODS;
    use super::*;

    #[test]
    fn checkout_container_selectors() {
        let list: PodList = serde_json::from_str(PODS).unwrap();
        let pod = &list.items[0];
        let got: Vec<String> = selectors(pod, &pod.status.container_statuses[0])
            .iter()
            .map(ToString::to_string)
            .collect();
        let want = [
            "k8s:container-image:docker.io/library/checkout:2",
            "k8s:container-image:docker.io/library/checkout@sha256:1111",
            "k8s:container-name:checkout",
            "k8s:node-name:node-1",
            "k8s:ns:payments",
            "k8s:pod-image-count:2",
            "k8s:pod-image:docker.io/envoyproxy/envoy:v1",
            "k8s:pod-image:docker.io/envoyproxy/envoy@sha256:2222",
            "k8s:pod-image:docker.io/library/checkout:2",
            "k8s:pod-image:docker.io/library/checkout@sha256:1111",
            "k8s:pod-init-image-count:1",
            "k8s:pod-init-image:docker.io/library/migrate:1",
            "k8s:pod-init-image:docker.io/library/migrate@sha256:3333",
            "k8s:pod-label:app:checkout",
            "k8s:pod-label:tier:backend",
            "k8s:pod-name:checkout-service-7d9f8",
            "k8s:pod-owner-uid:ReplicaSet:5f0c6e2a-0d1b-4c3e-9f8a-7b6c5d4e3f2a",
            "k8s:pod-owner:ReplicaSet:checkout-service-7d9f8",
            "k8s:pod-uid:2c48913c-b29f-11e7-9350-020968147796",
            "k8s:sa:checkout-service",
        ];
        assert_eq!(got, want);
    }

    #[test]
    fn empty_fields_are_dropped() {
        let list: PodList = serde_json::from_str(PODS).unwrap();
        let mut pod = list.items[1].clone();
        pod.spec.node_name.clear();
        let got: Vec<String> = selectors(&pod, &pod.status.container_statuses[0])
            .iter()
            .map(ToString::to_string)
            .collect();
        assert!(
            !got.iter().any(|s| s.starts_with("k8s:node-name")),
            "{got:?}"
        );
        assert!(got.contains(&"k8s:ns:other".to_owned()));
        assert!(got.contains(&"k8s:pod-init-image-count:0".to_owned()));
    }
}
