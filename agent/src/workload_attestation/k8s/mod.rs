//! The `k8s` workload attestor (SPIRE's plugin of the same name): PID → cgroups → pod UID and
//! container ID → the kubelet's pod list → `k8s:*` selectors.

pub mod cgroup;
pub mod kubelet;
#[cfg(test)]
mod test_kubelet;
