//! `WorkloadAttestor "k8s"`'s configuration: SPIRE's `plugin_data` keys and defaults
//! (`skip_kubelet_verification`, `node_name`, `node_name_env`, `kubelet_read_only_port`,
//! `kubelet_secure_port`, `kubelet_ca_path`, `token_path`), Sigil's `proc_root`, and how long
//! the attestor waits for a new container to appear (not configurable: tests shorten it).

use std::path::PathBuf;
use std::time::Duration;

use sigil_common::hcl::{Block, ConfigError};

use super::KubeletEndpoint;

const SERVICE_ACCOUNT_TOKEN: &str = "/var/run/secrets/kubernetes.io/serviceaccount/token";
const SERVICE_ACCOUNT_CA: &str = "/var/run/secrets/kubernetes.io/serviceaccount/ca.crt";

/// How the attestor reaches the kubelet and how long it waits for a new container to appear.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct K8sAttestorConfig {
    pub skip_kubelet_verification: bool,
    /// The node name, if given directly; otherwise read from `node_name_env`.
    pub node_name: Option<String>,
    pub node_name_env: String,
    /// 0 means the read-only port is not used.
    pub kubelet_read_only_port: u16,
    pub kubelet_secure_port: u16,
    pub kubelet_ca_path: PathBuf,
    pub token_path: PathBuf,
    /// Sigil-only: where the host's procfs is mounted (`/proc`; e.g. `/host/proc` for agents
    /// that see the host's processes through a mount).
    pub proc_root: PathBuf,
    /// Pod-list fetches before giving up on a container the kubelet has not listed yet.
    pub max_poll_attempts: u32,
    pub poll_retry_interval: Duration,
    /// How long a pod list is reused for new attestations.
    pub pod_list_cache_ttl: Duration,
}

impl Default for K8sAttestorConfig {
    /// SPIRE's defaults (the secure port 10250 with the pod's service account token and CA),
    /// `/proc`, and 10 attempts 250 ms apart (a container is usually in the kubelet's status
    /// well within that) with a 1 s pod-list cache.
    fn default() -> Self {
        Self {
            skip_kubelet_verification: false,
            node_name: None,
            node_name_env: "MY_NODE_NAME".to_owned(),
            kubelet_read_only_port: 0,
            kubelet_secure_port: 10250,
            kubelet_ca_path: PathBuf::from(SERVICE_ACCOUNT_CA),
            token_path: PathBuf::from(SERVICE_ACCOUNT_TOKEN),
            proc_root: PathBuf::from("/proc"),
            max_poll_attempts: 10,
            poll_retry_interval: Duration::from_millis(250),
            pod_list_cache_ttl: Duration::from_secs(1),
        }
    }
}

impl K8sAttestorConfig {
    /// Reads the plugin's `plugin_data`, if any, over the defaults.
    pub(crate) fn from_plugin_data(data: Option<Block<'_>>) -> Result<Self, ConfigError> {
        let mut out = Self::default();
        let Some(mut data) = data else {
            return Ok(out);
        };
        if let Some(skip) = data.bool("skip_kubelet_verification")? {
            out.skip_kubelet_verification = skip;
        }
        out.node_name = data.string("node_name")?.filter(|n| !n.is_empty());
        if let Some(env) = data.string("node_name_env")?.filter(|e| !e.is_empty()) {
            out.node_name_env = env;
        }
        if let Some(port) = data.port("kubelet_read_only_port")? {
            out.kubelet_read_only_port = port;
        }
        // SPIRE treats 0 as "use the default".
        if let Some(port) = data.port("kubelet_secure_port")?.filter(|&p| p != 0) {
            out.kubelet_secure_port = port;
        }
        if let Some(path) = data.optional_path("kubelet_ca_path")? {
            out.kubelet_ca_path = path;
        }
        if let Some(path) = data.optional_path("token_path")? {
            out.token_path = path;
        }
        if let Some(path) = data.optional_path("proc_root")? {
            out.proc_root = path;
        }
        data.finish()?;
        Ok(out)
    }

    /// SPIRE's choice: the read-only port when set, else the secure port on the node named by
    /// `node_name` or the `node_name_env` variable, which `env` looks up (the binary's edge
    /// passes the process environment).
    pub(crate) fn kubelet_endpoint(&self, env: impl Fn(&str) -> Option<String>) -> KubeletEndpoint {
        if self.kubelet_read_only_port != 0 {
            return KubeletEndpoint::read_only(self.kubelet_read_only_port);
        }
        let node_name = self
            .node_name
            .clone()
            .or_else(|| env(&self.node_name_env))
            .filter(|name| !name.is_empty());
        KubeletEndpoint::secure(
            node_name,
            self.kubelet_secure_port,
            self.token_path.clone(),
            self.kubelet_ca_path.clone(),
            self.skip_kubelet_verification,
        )
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use sigil_common::hcl::Document;

    use super::*;
    use crate::workload_attestation::KubeletTls;

    fn config(plugin_data: &str) -> K8sAttestorConfig {
        let doc = Document::parse("agent.conf", plugin_data).unwrap();
        K8sAttestorConfig::from_plugin_data(doc.root().block("plugin_data").unwrap()).unwrap()
    }

    #[test]
    fn k8s_proc_root_defaults_to_proc_and_is_configurable() {
        assert_eq!(config("").proc_root, Path::new("/proc"));
        let host = config(r#"    plugin_data { proc_root = "/host/proc" }"#);
        assert_eq!(host.proc_root, Path::new("/host/proc"));
    }

    #[test]
    fn kubelet_endpoint_follows_spire_keys() {
        let no_env = |_: &str| None;
        let ro = config("    plugin_data { kubelet_read_only_port = 10255 }");
        assert_eq!(
            ro.kubelet_endpoint(no_env),
            KubeletEndpoint::read_only(10255)
        );

        let named = config(
            r#"    plugin_data {
      node_name = "node-1"
      skip_kubelet_verification = true
    }"#,
        );
        let endpoint = named.kubelet_endpoint(no_env);
        assert_eq!((endpoint.host.as_str(), endpoint.port), ("node-1", 10250));
        assert_eq!(endpoint.tls, Some(KubeletTls::SkipVerification));

        // An unset node-name variable falls back to the local kubelet.
        let unset =
            config(r#"    plugin_data { node_name_env = "SIGIL_TEST_SURELY_UNSET_NODE_NAME" }"#);
        assert_eq!(unset.kubelet_endpoint(no_env).host, "127.0.0.1");
        // A set one names the node.
        let env = |name: &str| (name == "MY_NODE_NAME").then(|| "node-2".to_owned());
        assert_eq!(config("").kubelet_endpoint(env).host, "node-2");
    }
}
