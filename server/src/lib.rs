//! sigil-server: a SPIFFE workload-identity issuer. Holds registration entries, runs the CA,
//! attests node agents and serves the admin API (Unix socket), the agent API (mTLS) and the
//! operational endpoints.
#![forbid(unsafe_code)]

pub mod activity;
pub mod api;
pub mod ca;
pub mod ca_store;
pub mod cli;
pub mod config;
pub mod console;
pub mod datastore;
pub mod federation;
pub mod k8s_pods;
pub mod key_manager;
pub mod kubernetes;
pub mod listener;
pub mod metrics;
pub mod node_attestation;
pub mod notifier;
pub mod oidc_discovery;
pub mod ops;
pub mod pruning;
pub mod run;
