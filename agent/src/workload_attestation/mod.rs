//! Workload attestation: from the PID of a Workload API caller to the selectors that decide
//! which registration entries it is entitled to. Each attestor reports what it can see; the
//! Workload API runs all configured attestors and unions their selectors.

pub mod k8s;
pub mod unix;

use std::fmt::Debug;

use futures::future::BoxFuture;
use sigil_proto::Selector;

use crate::procfs::Credentials;

pub use k8s::{K8sAttestor, K8sAttestorConfig, K8sError, KubeletEndpoint, KubeletTls};
pub use unix::{UnixAttestor, UnixAttestorConfig};

/// Why a workload could not be attested. Details go to the log; workloads only learn that
/// attestation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AttestationError {
    #[error("process {pid} not found")]
    NoProcess { pid: i32 },
    #[error("reading {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("malformed {path}: {reason}")]
    Malformed { path: String, reason: String },
    /// The PID was reused by another process while we looked at it.
    #[error("process {pid} changed during attestation (PID reused)")]
    PidReused { pid: i32 },
    #[error("workload binary is {size} bytes, above the {limit}-byte limit for hashing")]
    TooLarge { size: u64, limit: u64 },
    #[error("attestor task failed: {0}")]
    Task(String),
    #[error("k8s: {0}")]
    K8s(#[source] K8sError),
}

/// Turns a PID into selectors. One per mechanism (`unix`, `k8s`...).
pub trait WorkloadAttestor: Send + Sync + Debug {
    fn attest(&self, pid: i32) -> BoxFuture<'_, Result<Vec<Selector>, AttestationError>>;

    /// Attests `pid`, a process pinned by the caller ([`crate::endpoints::BoundProcess`])
    /// whose user and group IDs are `pinned` and are checked again after attesting. An
    /// attestor that needs nothing else uses them rather than reading procfs again; by
    /// default, [`WorkloadAttestor::attest`].
    fn attest_pinned<'a>(
        &'a self,
        pid: i32,
        pinned: &'a Credentials,
    ) -> BoxFuture<'a, Result<Vec<Selector>, AttestationError>> {
        let _ = pinned;
        self.attest(pid)
    }
}

/// Runs every attestor and returns the canonical union of their selectors; any failure fails
/// the whole attestation (a partial view could match a less specific entry). The process is
/// pinned, with the user and group IDs `pinned`, which the caller checks again afterwards
/// ([`WorkloadAttestor::attest_pinned`]).
pub async fn attest_all(
    attestors: &[Box<dyn WorkloadAttestor>],
    pid: i32,
    pinned: &Credentials,
) -> Result<Vec<Selector>, AttestationError> {
    let results =
        futures::future::join_all(attestors.iter().map(|a| a.attest_pinned(pid, pinned))).await;
    let mut selectors = Vec::new();
    for result in results {
        selectors.extend(result?);
    }
    sigil_proto::selector::canonicalize(&mut selectors);
    Ok(selectors)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Fixed(Result<Vec<&'static str>, ()>);

    impl WorkloadAttestor for Fixed {
        fn attest(&self, pid: i32) -> BoxFuture<'_, Result<Vec<Selector>, AttestationError>> {
            let result = match &self.0 {
                Ok(list) => Ok(list.iter().map(|s| s.parse().unwrap()).collect()),
                Err(()) => Err(AttestationError::NoProcess { pid }),
            };
            Box::pin(async move { result })
        }
    }

    fn root() -> Credentials {
        Credentials {
            uids: vec![0; 4],
            gids: vec![0; 4],
            groups: Vec::new(),
        }
    }

    #[tokio::test]
    async fn unions_and_canonicalizes() {
        let attestors: Vec<Box<dyn WorkloadAttestor>> = vec![
            Box::new(Fixed(Ok(vec!["unix:uid:1", "k8s:ns:a"]))),
            Box::new(Fixed(Ok(vec!["unix:uid:1"]))),
        ];
        let got = attest_all(&attestors, 1, &root()).await.unwrap();
        let got: Vec<String> = got.iter().map(ToString::to_string).collect();
        assert_eq!(got, ["k8s:ns:a", "unix:uid:1"]);
    }

    #[tokio::test]
    async fn one_failure_fails_all() {
        let attestors: Vec<Box<dyn WorkloadAttestor>> = vec![
            Box::new(Fixed(Ok(vec!["unix:uid:1"]))),
            Box::new(Fixed(Err(()))),
        ];
        assert!(matches!(
            attest_all(&attestors, 7, &root()).await,
            Err(AttestationError::NoProcess { pid: 7 })
        ));
    }
}
