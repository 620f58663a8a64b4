//! `Notifier "k8sbundle"`: keeps the trust domain's X.509 authorities, as PEM, in one key of a
//! ConfigMap (SPIRE's defaults: `spire/spire-bundle`, key `bundle.crt`). Agents mount that
//! ConfigMap and point `trust_bundle_path` at it.
//!
//! The bundle is written at start-up, on every bundle change and on a slow resync (someone may
//! have edited or deleted the ConfigMap). A write is a GET followed by a create (absent) or a
//! replace carrying the `resourceVersion` it read (present), so a concurrent writer makes the
//! replace fail with a conflict instead of being overwritten; conflicts are retried at once.
//! Any other API error is logged with its status and retried with backoff: the server keeps
//! serving, agents only lose the *next* bundle until the API answers again.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, ObjectMeta, PostParams};
use kube::core::Status;
use sigil_common::hcl::{Block, ConfigError};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::kubernetes::{self, KubeClientError};
use sigil_proto::Bundle;

/// How often the ConfigMap is re-checked when nothing changed.
const RESYNC_INTERVAL: Duration = Duration::from_secs(300);
/// Backoff after a failed write: doubles from the first delay up to the cap.
const BACKOFF_FIRST: Duration = Duration::from_secs(1);
const BACKOFF_CAP: Duration = Duration::from_secs(60);
/// Lost optimistic-concurrency races in a row before the write counts as failed.
const MAX_CONFLICTS: u32 = 5;

/// `Notifier "k8sbundle"`: which ConfigMap key the bundle is published to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct K8sBundleConfig {
    pub namespace: String,
    pub config_map: String,
    pub config_map_key: String,
    /// `None` means in-cluster credentials.
    pub kube_config_file_path: Option<PathBuf>,
}

impl K8sBundleConfig {
    /// Reads the plugin's `plugin_data`, if any, over SPIRE's defaults (`spire`,
    /// `spire-bundle`, `bundle.crt`, in-cluster credentials).
    pub(crate) fn from_plugin_data(data: Option<Block<'_>>) -> Result<Self, ConfigError> {
        let mut out = Self {
            namespace: "spire".to_owned(),
            config_map: "spire-bundle".to_owned(),
            config_map_key: "bundle.crt".to_owned(),
            kube_config_file_path: None,
        };
        if let Some(mut data) = data {
            if let Some(ns) = data.string("namespace")? {
                out.namespace = ns;
            }
            if let Some(cm) = data.string("config_map")? {
                out.config_map = cm;
            }
            if let Some(key) = data.string("config_map_key")? {
                out.config_map_key = key;
            }
            out.kube_config_file_path = data.optional_path("kube_config_file_path")?;
            data.finish()?;
        }
        Ok(out)
    }
}

/// Why publishing the bundle failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum K8sBundleError {
    #[error(transparent)]
    Client(#[from] KubeClientError),
    /// The API server answered with an error status (e.g. 403 when RBAC forbids the write).
    #[error("Kubernetes API answered {} {}: {}", .0.code, .0.reason, .0.message)]
    Api(Box<Status>),
    #[error("Kubernetes API unreachable: {0}")]
    Transport(kube::Error),
    #[error("lost {MAX_CONFLICTS} write races for the ConfigMap in a row")]
    Conflicts,
}

impl From<kube::Error> for K8sBundleError {
    fn from(e: kube::Error) -> Self {
        match e {
            kube::Error::Api(status) => Self::Api(status),
            other => Self::Transport(other),
        }
    }
}

impl K8sBundleError {
    /// RBAC and authentication failures need an operator; anything else may pass by itself.
    fn needs_operator(&self) -> bool {
        matches!(self, Self::Api(s) if s.is_forbidden() || s.code == 401)
    }
}

/// What a write did to the ConfigMap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Created,
    Updated,
    Unchanged,
}

/// What to send to the API server so that the ConfigMap holds `pem` under `key`.
#[derive(Debug, Clone, PartialEq)]
enum Plan {
    Unchanged,
    Create(ConfigMap),
    /// The existing object with the key set; its `resourceVersion` makes the replace conditional.
    Replace(ConfigMap),
}

/// The ConfigMap's target: namespace, name and key.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Target {
    namespace: String,
    name: String,
    key: String,
}

/// Decides the write from what the API server holds now (`None`: no such ConfigMap). Other keys
/// and metadata (labels, annotations, owner) are kept.
fn plan(existing: Option<ConfigMap>, target: &Target, pem: &str) -> Plan {
    match existing {
        None => Plan::Create(ConfigMap {
            metadata: ObjectMeta {
                name: Some(target.name.clone()),
                namespace: Some(target.namespace.clone()),
                ..ObjectMeta::default()
            },
            data: Some(BTreeMap::from([(target.key.clone(), pem.to_owned())])),
            ..ConfigMap::default()
        }),
        Some(mut cm) => {
            let data = cm.data.get_or_insert_with(BTreeMap::new);
            if data.get(&target.key).map(String::as_str) == Some(pem) {
                return Plan::Unchanged;
            }
            data.insert(target.key.clone(), pem.to_owned());
            Plan::Replace(cm)
        }
    }
}

/// The delay before retry number `failures` (1 for the first failure).
fn backoff(failures: u32) -> Duration {
    let factor = 1u32 << failures.saturating_sub(1).min(16);
    BACKOFF_FIRST.saturating_mul(factor).min(BACKOFF_CAP)
}

/// Publishes the bundle into one ConfigMap key.
pub struct K8sBundlePublisher {
    api: Api<ConfigMap>,
    target: Target,
}

impl std::fmt::Debug for K8sBundlePublisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("K8sBundlePublisher")
            .field("target", &self.target)
            .finish_non_exhaustive()
    }
}

impl K8sBundlePublisher {
    /// Builds the Kubernetes client (kubeconfig file, or in-cluster credentials). Talks to no
    /// API server yet, so an unreachable cluster does not stop the server from starting.
    pub async fn new(config: &K8sBundleConfig) -> Result<Self, K8sBundleError> {
        let client = kubernetes::client(config.kube_config_file_path.as_deref()).await?;
        Ok(Self {
            api: Api::namespaced(client, &config.namespace),
            target: Target {
                namespace: config.namespace.clone(),
                name: config.config_map.clone(),
                key: config.config_map_key.clone(),
            },
        })
    }

    /// Writes `pem` into the ConfigMap if it is not already there.
    pub async fn publish(&self, pem: &str) -> Result<Outcome, K8sBundleError> {
        let pp = PostParams::default();
        for _ in 0..MAX_CONFLICTS {
            let existing = self.api.get_opt(&self.target.name).await?;
            let result = match plan(existing, &self.target, pem) {
                Plan::Unchanged => return Ok(Outcome::Unchanged),
                Plan::Create(cm) => self.api.create(&pp, &cm).await.map(|_| Outcome::Created),
                Plan::Replace(cm) => self
                    .api
                    .replace(&self.target.name, &pp, &cm)
                    .await
                    .map(|_| Outcome::Updated),
            };
            match result {
                Ok(outcome) => return Ok(outcome),
                // Someone created or changed it between our GET and our write: read again.
                Err(kube::Error::Api(s)) if s.is_conflict() || s.is_already_exists() => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(K8sBundleError::Conflicts)
    }

    /// Publishes the current bundle, then every new one, until `cancel` fires. Never fails:
    /// API errors are logged and retried with backoff.
    pub async fn run(
        self,
        mut bundles: watch::Receiver<Arc<Bundle>>,
        cancel: CancellationToken,
    ) -> anyhow::Result<()> {
        let span = tracing::info_span!(
            "k8sbundle",
            namespace = %self.target.namespace,
            config_map = %self.target.name,
            key = %self.target.key,
        );
        async move {
            // The PEM last known to be in the ConfigMap; `None` forces a GET (start, resync).
            let mut published: Option<String> = None;
            let mut failures = 0u32;
            loop {
                let pem = bundles.borrow_and_update().x509_authorities_pem();
                let wait = if published.as_deref() == Some(pem.as_str()) {
                    RESYNC_INTERVAL
                } else {
                    match self.publish(&pem).await {
                        Ok(outcome) => {
                            if outcome != Outcome::Unchanged {
                                tracing::info!(?outcome, "trust bundle published");
                            }
                            published = Some(pem);
                            failures = 0;
                            RESYNC_INTERVAL
                        }
                        Err(e) => {
                            failures = failures.saturating_add(1);
                            let retry_in = backoff(failures);
                            if e.needs_operator() {
                                tracing::error!(error = %e, ?retry_in, "cannot publish the trust bundle; check the server's RBAC");
                            } else {
                                tracing::warn!(error = %e, ?retry_in, "cannot publish the trust bundle");
                            }
                            retry_in
                        }
                    }
                };
                tokio::select! {
                    () = cancel.cancelled() => return Ok(()),
                    changed = bundles.changed() => {
                        // The CA is gone: the server is shutting down.
                        if changed.is_err() {
                            return Ok(());
                        }
                    }
                    () = tokio::time::sleep(wait) => {
                        if failures == 0 {
                            published = None;
                        }
                    }
                }
            }
        }
        .instrument(span)
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target() -> Target {
        Target {
            namespace: "spire".into(),
            name: "spire-bundle".into(),
            key: "bundle.crt".into(),
        }
    }

    const PEM: &str = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";

    #[test]
    fn absent_config_map_is_created_with_the_key() {
        let Plan::Create(cm) = plan(None, &target(), PEM) else {
            panic!("expected a create");
        };
        assert_eq!(cm.metadata.name.as_deref(), Some("spire-bundle"));
        assert_eq!(cm.metadata.namespace.as_deref(), Some("spire"));
        assert_eq!(cm.metadata.resource_version, None);
        assert_eq!(
            cm.data,
            Some(BTreeMap::from([("bundle.crt".into(), PEM.into())]))
        );
    }

    #[test]
    fn existing_config_map_keeps_its_version_labels_and_other_keys() {
        let existing = ConfigMap {
            metadata: ObjectMeta {
                name: Some("spire-bundle".into()),
                namespace: Some("spire".into()),
                resource_version: Some("42".into()),
                labels: Some(BTreeMap::from([("app".into(), "spire".into())])),
                ..ObjectMeta::default()
            },
            data: Some(BTreeMap::from([
                ("bundle.crt".into(), "old".into()),
                ("other".into(), "kept".into()),
            ])),
            ..ConfigMap::default()
        };
        let Plan::Replace(cm) = plan(Some(existing.clone()), &target(), PEM) else {
            panic!("expected a replace");
        };
        assert_eq!(cm.metadata, existing.metadata);
        let data = cm.data.unwrap();
        assert_eq!(data["bundle.crt"], PEM);
        assert_eq!(data["other"], "kept");
    }

    #[test]
    fn empty_shipped_config_map_gets_the_key() {
        // deploy/ ships the ConfigMap without data so the server needs no `create` permission.
        let shipped = ConfigMap {
            metadata: ObjectMeta {
                name: Some("spire-bundle".into()),
                resource_version: Some("7".into()),
                ..ObjectMeta::default()
            },
            ..ConfigMap::default()
        };
        let Plan::Replace(cm) = plan(Some(shipped), &target(), PEM) else {
            panic!("expected a replace");
        };
        assert_eq!(cm.metadata.resource_version.as_deref(), Some("7"));
        assert_eq!(cm.data.unwrap()["bundle.crt"], PEM);
    }

    #[test]
    fn same_pem_is_not_rewritten() {
        let existing = ConfigMap {
            data: Some(BTreeMap::from([("bundle.crt".into(), PEM.into())])),
            ..ConfigMap::default()
        };
        assert_eq!(plan(Some(existing), &target(), PEM), Plan::Unchanged);
    }

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        assert_eq!(backoff(1), Duration::from_secs(1));
        assert_eq!(backoff(2), Duration::from_secs(2));
        assert_eq!(backoff(3), Duration::from_secs(4));
        assert_eq!(backoff(7), Duration::from_secs(60));
        assert_eq!(backoff(u32::MAX), Duration::from_secs(60));
    }

    #[test]
    fn forbidden_needs_an_operator_and_a_timeout_does_not() {
        let forbidden =
            K8sBundleError::Api(Box::new(Status::failure("no", "Forbidden").with_code(403)));
        assert!(forbidden.needs_operator());
        assert!(forbidden.to_string().contains("403"));
        let unavailable = K8sBundleError::Api(Box::new(
            Status::failure("busy", "ServiceUnavailable").with_code(503),
        ));
        assert!(!unavailable.needs_operator());
    }
}
