//! The pods that left one `k8s_psat` agent's node, for its sync stream: the agent drops the
//! template SVIDs it minted for them (`SyncEntriesResponse.gone_pod_uids`). Taken from the
//! cluster's pod cache, which publishes every removal of the cluster; each stream keeps its own
//! node's.

use tokio::sync::broadcast::Receiver;
use tokio::sync::broadcast::error::{RecvError, TryRecvError};

use super::{AgentIdentity, SYNC_PAGE};
use crate::k8s_pods::{GonePod, PodCaches};
use crate::node_attestation::k8s_psat::agent_node;

/// One agent's feed of removed pods.
pub(super) struct GonePods {
    removals: Receiver<GonePod>,
    node: String,
}

impl GonePods {
    /// The feed of the agent's node, if it is a `k8s_psat` agent of a watched cluster.
    pub(super) fn for_agent(caches: &PodCaches, agent: &AgentIdentity) -> Option<Self> {
        let node = agent_node(&agent.id, &agent.selectors)?;
        let cache = caches.get(&node.cluster)?;
        Some(Self {
            removals: cache.subscribe_gone(),
            node: node.node,
        })
    }

    /// The UIDs of the next pods that left this node: at least one, at most [`SYNC_PAGE`]
    /// (whatever else is already queued). Never returns once the cache is gone (shutdown).
    pub(super) async fn next(&mut self) -> Vec<String> {
        let mut uids = Vec::new();
        while uids.is_empty() {
            match self.removals.recv().await {
                Ok(gone) => self.keep(gone, &mut uids),
                Err(RecvError::Lagged(missed)) => self.lagged(missed),
                Err(RecvError::Closed) => std::future::pending::<()>().await,
            }
        }
        while uids.len() < SYNC_PAGE {
            match self.removals.try_recv() {
                Ok(gone) => self.keep(gone, &mut uids),
                Err(TryRecvError::Lagged(missed)) => self.lagged(missed),
                Err(TryRecvError::Empty | TryRecvError::Closed) => break,
            }
        }
        uids
    }

    fn keep(&self, gone: GonePod, uids: &mut Vec<String>) {
        if gone.node == self.node {
            uids.push(gone.uid);
        }
    }

    fn lagged(&self, missed: u64) {
        // The server still refuses to mint for those pods; only the agent's drop is late.
        tracing::warn!(node = %self.node, missed, "sync stream fell behind the cluster's pod removals; some were not passed on");
    }
}
