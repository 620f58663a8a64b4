//! The `k8s_psat` node attestor: the payload is SPIRE's JSON `{"cluster": ..., "token": ...}`
//! with the projected service account token the kubelet writes into the agent's pod.
//!
//! The token file is read again for every attestation: the kubelet rotates it, and a
//! re-attestation after eviction must present the current one.
//!
//! Configured by `NodeAttestor "k8s_psat" { plugin_data { cluster token_path } }`.

use std::path::{Path, PathBuf};

use futures::future::BoxFuture;
use serde::Serialize;
use sigil_common::hcl::{Block, ConfigError};
use zeroize::Zeroizing;

use super::{NodeAttestationError, NodeAttestor};

/// Where Kubernetes projects the agent's service account token for `k8s_psat` (SPIRE's default).
pub(crate) const DEFAULT_PSAT_TOKEN_PATH: &str = "/var/run/secrets/tokens/spire-agent";

/// `NodeAttestor "k8s_psat"` on the agent side.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct K8sPsatConfig {
    /// The cluster name, as configured on the server.
    pub cluster: String,
    /// The projected service account token (default [`DEFAULT_PSAT_TOKEN_PATH`]).
    pub token_path: PathBuf,
}

impl K8sPsatConfig {
    /// Reads the plugin's `plugin_data`, which it needs (`cluster` is required).
    pub(crate) fn from_plugin_data(mut data: Block<'_>) -> Result<Self, ConfigError> {
        let cluster = data
            .string("cluster")?
            .filter(|c| !c.is_empty())
            .ok_or_else(|| data.missing("cluster"))?;
        let token_path = data
            .optional_path("token_path")?
            .unwrap_or_else(|| PathBuf::from(DEFAULT_PSAT_TOKEN_PATH));
        data.finish()?;
        Ok(Self {
            cluster,
            token_path,
        })
    }
}

#[derive(Debug, Clone)]
pub struct K8sPsatAttestor {
    cluster: String,
    token_path: PathBuf,
}

#[derive(Serialize)]
struct Payload<'a> {
    cluster: &'a str,
    token: &'a str,
}

impl K8sPsatAttestor {
    pub fn new(config: &K8sPsatConfig) -> Self {
        Self {
            cluster: config.cluster.clone(),
            token_path: config.token_path.clone(),
        }
    }

    /// The token as the kubelet last wrote it, trimmed.
    fn read_token(path: &Path) -> Result<Zeroizing<String>, NodeAttestationError> {
        let raw = Zeroizing::new(std::fs::read_to_string(path).map_err(|e| {
            NodeAttestationError::Payload(format!(
                "cannot read the service account token {}: {e}",
                path.display()
            ))
        })?);
        let token = Zeroizing::new(raw.trim().to_owned());
        if token.is_empty() {
            return Err(NodeAttestationError::Payload(format!(
                "the service account token file {} is empty",
                path.display()
            )));
        }
        Ok(token)
    }
}

impl NodeAttestor for K8sPsatAttestor {
    fn attestation_type(&self) -> &'static str {
        "k8s_psat"
    }

    fn payload(&self) -> BoxFuture<'_, Result<Zeroizing<Vec<u8>>, NodeAttestationError>> {
        Box::pin(async move {
            let token = Self::read_token(&self.token_path)?;
            let payload = serde_json::to_vec(&Payload {
                cluster: &self.cluster,
                token: &token,
            })
            .map_err(|e| NodeAttestationError::Payload(format!("encoding the payload: {e}")))?;
            Ok(Zeroizing::new(payload))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attestor(dir: &Path) -> K8sPsatAttestor {
        K8sPsatAttestor::new(&K8sPsatConfig {
            cluster: "prod".into(),
            token_path: dir.join("spire-agent"),
        })
    }

    #[tokio::test]
    async fn payload_is_spire_json_with_the_current_token() {
        let dir = tempfile::tempdir().unwrap();
        let a = attestor(dir.path());
        assert_eq!(a.attestation_type(), "k8s_psat");
        std::fs::write(dir.path().join("spire-agent"), "first.token\n").unwrap();
        let p: serde_json::Value = serde_json::from_slice(&a.payload().await.unwrap()).unwrap();
        assert_eq!(
            p,
            serde_json::json!({"cluster": "prod", "token": "first.token"})
        );

        // The kubelet rotated the token: the next payload carries the new one.
        std::fs::write(dir.path().join("spire-agent"), "second.token").unwrap();
        let p: serde_json::Value = serde_json::from_slice(&a.payload().await.unwrap()).unwrap();
        assert_eq!(p["token"], "second.token");
    }

    #[tokio::test]
    async fn missing_or_empty_token_file_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let a = attestor(dir.path());
        let missing = a.payload().await.unwrap_err().to_string();
        assert!(
            missing.contains("cannot read the service account token"),
            "{missing}"
        );
        assert!(missing.contains("spire-agent"), "{missing}");

        std::fs::write(dir.path().join("spire-agent"), " \n").unwrap();
        let empty = a.payload().await.unwrap_err().to_string();
        assert!(empty.contains("is empty"), "{empty}");
    }
}
