//! sigil-agent: attests its node to sigil-server, syncs the registration entries it is
//! authorized for, pre-mints and rotates their SVIDs, and serves the SPIFFE Workload API.
#![forbid(unsafe_code)]

pub mod cache;
pub mod cli;
pub mod config;
pub mod csr;
pub mod delegated_identity;
pub mod endpoints;
pub mod helper;
pub mod identity;
pub mod logger_api;
pub mod node_attestation;
pub mod ops;
pub mod procfs;
pub mod rotation;
pub mod run;
pub mod sds;
pub mod server_client;
pub mod svid_store;
pub mod sync;
pub mod taint;
pub mod workload_api;
pub mod workload_attestation;
