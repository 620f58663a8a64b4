//! The one way the server reaches a Kubernetes API: in-cluster credentials (the pod's service
//! account) by default, or a kubeconfig file when the plugin names one. Shared by the `k8s_psat`
//! node attestor and the `k8sbundle` notifier.

use std::path::Path;

use kube::config::{KubeConfigOptions, Kubeconfig};

#[derive(Debug, thiserror::Error)]
pub enum KubeClientError {
    #[error("reading kubeconfig {path}: {source}")]
    Kubeconfig {
        path: String,
        source: kube::config::KubeconfigError,
    },
    #[error("in-cluster Kubernetes credentials: {0}")]
    InCluster(kube::config::InClusterError),
    #[error("building the Kubernetes client: {0}")]
    Client(kube::Error),
}

/// A client for the API server named by `kubeconfig`, or for the cluster this pod runs in.
pub async fn client(kubeconfig: Option<&Path>) -> Result<kube::Client, KubeClientError> {
    let config = match kubeconfig {
        Some(path) => {
            let to_error = |source| KubeClientError::Kubeconfig {
                path: path.display().to_string(),
                source,
            };
            let file = Kubeconfig::read_from(path).map_err(to_error)?;
            kube::Config::from_custom_kubeconfig(file, &KubeConfigOptions::default())
                .await
                .map_err(to_error)?
        }
        None => kube::Config::incluster().map_err(KubeClientError::InCluster)?,
    };
    kube::Client::try_from(config).map_err(KubeClientError::Client)
}
