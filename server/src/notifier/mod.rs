//! Notifiers: components that tell the outside world about CA events, as SPIRE's `Notifier`
//! plugins do. Each one subscribes to the CA's bundle channel and runs until cancelled.
//!
//! - [`k8sbundle`]: `Notifier "k8sbundle"`, the trust bundle as PEM in a Kubernetes ConfigMap,
//!   so agents in the cluster bootstrap with `trust_bundle_path` instead of
//!   `insecure_bootstrap`.

pub mod k8sbundle;

pub use k8sbundle::{K8sBundleConfig, K8sBundleError, K8sBundlePublisher};
