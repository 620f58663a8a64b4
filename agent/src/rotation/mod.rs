//! SVID minting and rotation. Every key is generated on the agent (see [`crate::csr`]) and only
//! its CSR goes to the server.
//!
//! - Workload X509-SVIDs: one loop (`workload`), generic over the key rotated: a fixed entry
//!   by its ID (`fixed`), pre-minted, or a template entry's instance by the ID rendered for a
//!   workload (`template`), minted on demand. Each SVID that is missing, whose entry changed,
//!   whose signer is tainted or that reached its refresh point is minted through
//!   `BatchMintX509SVID` in batches (`mint`); the loop wakes on every cache change, so a new
//!   entry is minted as soon as sync delivers it. A template instance the server refuses is
//!   withdrawn from the cache (`refused`).
//! - Pacing (`pacing`): full speed until the server first refuses for its signing limit, then
//!   400/s.
//! - The agent's own SVID (`agent_svid`): renewed through `RenewAgent` at its refresh point,
//!   replaced by attesting again when it expired or the agent was evicted, or lost.
//!
//! When is decided by `refresh_at` (`schedule`), a pure function of the certificate's
//! validity; the loops log and retry with backoff and never exit before cancellation. While the
//! agent's own SVID has expired the workload loop waits for a new one instead of asking the
//! server, which would refuse every call.

mod agent_svid;
mod fixed;
mod mint;
mod pacing;
mod refused;
mod schedule;
mod template;
mod workload;

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

pub(crate) use agent_svid::{AgentSvidRenewal, DEFAULT_EXIT_DELAY, renew_agent_svid};
pub(crate) use pacing::Pace;
pub(crate) use schedule::Backoff;
pub use workload::MAX_BATCH;

use crate::cache::Cache;
use crate::csr::KeyType;
use crate::identity::AgentIdentity;
use crate::ops::Metrics;
use crate::server_client::ServerConnection;
use fixed::FixedEntries;
use sigil_common::time::unix_now;
use template::TemplateInstances;
use workload::{Turns, rotate};

/// What both workload X509-SVID loops work with.
#[derive(Debug, Clone)]
pub(crate) struct Minting {
    pub(crate) connection: Arc<ServerConnection>,
    pub(crate) cache: Arc<Cache>,
    /// Minting waits while the agent SVID has expired.
    pub(crate) identity: Arc<AgentIdentity>,
    /// One per agent, shared by both loops.
    pub(crate) pace: Arc<Pace>,
    pub(crate) metrics: Arc<Metrics>,
    /// `workload_x509_svid_key_type`: each workload key's type.
    pub(crate) key_type: KeyType,
}

impl Minting {
    fn turns(&self) -> Turns<'_> {
        Turns {
            identity: &self.identity,
            pace: &self.pace,
            metrics: &self.metrics,
            clock: unix_now,
        }
    }
}

/// Keeps every cached fixed entry's X509-SVID fresh until `cancel` fires.
pub(crate) async fn rotate_workload_svids(m: Minting, cancel: CancellationToken) {
    let target = FixedEntries::new(&m);
    rotate(target, m.turns(), &cancel).await;
}

/// Mints and refreshes the X509-SVIDs of template entries that workloads ask for, and drops
/// those nobody asked for in [`crate::cache::rendered::IDLE`], until `cancel` fires.
pub(crate) async fn rotate_rendered_svids(m: Minting, cancel: CancellationToken) {
    let target = TemplateInstances::new(&m);
    rotate(target, m.turns(), &cancel).await;
}
