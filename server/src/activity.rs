//! What the agent API saw lately, kept in memory for the web console: the instances of each
//! template entry minted lately, each agent's last sync and open streams on this replica, the
//! agents evicted lately through this replica's admin API (an evicted agent is deleted from the
//! datastore, so nothing else remembers it), and when each entry revision was published (for
//! the propagation histogram). Small and bounded;
//! no secret is kept (SPIFFE IDs, entry IDs and times only). Lost on restart, per replica.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use sigil_common::time::unix_now;
use sigil_proto::SpiffeId;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// Instances kept per template entry.
pub const INSTANCES_PER_ENTRY: usize = 10;
/// Template entries with a record; the one minted least lately is dropped beyond it.
pub const ENTRIES_TRACKED: usize = 4096;
/// Agents with a sync record; the one synced least lately is dropped beyond it.
pub const AGENTS_TRACKED: usize = 65_536;
/// Entry revisions remembered with their publication time.
pub const REVISIONS_TRACKED: usize = 4096;
/// Propagation delays remembered for the console's p99.
pub const DELAYS_TRACKED: usize = 8192;
/// Evictions remembered, newest first.
pub const EVICTIONS_TRACKED: usize = 1024;

/// One agent's sync streams on this replica.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AgentSync {
    /// Unix seconds of the last message sent on one of its streams.
    pub last_sync: i64,
    /// Streams open now.
    pub open_streams: u32,
}

/// One instance of a template entry minted lately.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Instance {
    pub spiffe_id: SpiffeId,
    /// Unix seconds.
    pub minted_at: i64,
}

#[derive(Debug, Default)]
struct Inner {
    instances: HashMap<String, (i64, VecDeque<Instance>)>,
    agents: HashMap<SpiffeId, AgentSync>,
    revisions: VecDeque<(i64, Instant)>,
    delays: VecDeque<(Instant, Duration)>,
    evictions: VecDeque<(SpiffeId, i64)>,
}

/// The record, shared by the agent API (writes) and the console (reads).
#[derive(Debug, Default)]
pub struct Activity {
    inner: Mutex<Inner>,
}

impl Activity {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves only counters half-updated: carry on.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// An instance of template entry `entry_id` was minted.
    pub fn instance_minted(&self, entry_id: &str, spiffe_id: &SpiffeId) {
        let now = unix_now();
        let mut inner = self.lock();
        if !inner.instances.contains_key(entry_id) && inner.instances.len() >= ENTRIES_TRACKED {
            let oldest = inner
                .instances
                .iter()
                .min_by_key(|(_, (at, _))| *at)
                .map(|(id, _)| id.clone());
            if let Some(id) = oldest {
                inner.instances.remove(&id);
            }
        }
        let (at, list) = inner.instances.entry(entry_id.to_owned()).or_default();
        *at = now;
        list.retain(|i| &i.spiffe_id != spiffe_id);
        list.push_front(Instance {
            spiffe_id: spiffe_id.clone(),
            minted_at: now,
        });
        list.truncate(INSTANCES_PER_ENTRY);
    }

    /// The instances of `entry_id` minted lately, newest first.
    pub fn instances(&self, entry_id: &str) -> Vec<Instance> {
        self.lock()
            .instances
            .get(entry_id)
            .map(|(_, l)| l.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// `agent` was evicted (its node record deleted) through the admin API.
    pub fn agent_evicted(&self, agent: &SpiffeId) {
        let now = unix_now();
        let mut inner = self.lock();
        inner.evictions.retain(|(id, _)| id != agent);
        inner.evictions.push_front((agent.clone(), now));
        inner.evictions.truncate(EVICTIONS_TRACKED);
    }

    /// The agents evicted lately, newest first, with when (Unix seconds).
    pub fn evictions(&self) -> Vec<(SpiffeId, i64)> {
        self.lock().evictions.iter().cloned().collect()
    }

    /// A sync stream of `agent` opened (`open`) or closed.
    pub fn sync_stream(&self, agent: &SpiffeId, open: bool) {
        let now = unix_now();
        let mut inner = self.lock();
        if !inner.agents.contains_key(agent) && inner.agents.len() >= AGENTS_TRACKED {
            let oldest = inner
                .agents
                .iter()
                .filter(|(_, s)| s.open_streams == 0)
                .min_by_key(|(_, s)| s.last_sync)
                .map(|(id, _)| id.clone());
            if let Some(id) = oldest {
                inner.agents.remove(&id);
            }
        }
        let sync = inner.agents.entry(agent.clone()).or_default();
        sync.last_sync = now;
        if open {
            sync.open_streams += 1;
        } else {
            sync.open_streams = sync.open_streams.saturating_sub(1);
        }
    }

    /// A message went to `agent` on a sync stream.
    pub fn synced(&self, agent: &SpiffeId) {
        if let Some(sync) = self.lock().agents.get_mut(agent) {
            sync.last_sync = unix_now();
        }
    }

    /// `agent`'s sync streams on this replica, if it opened one since start.
    pub fn agent_sync(&self, agent: &SpiffeId) -> Option<AgentSync> {
        self.lock().agents.get(agent).copied()
    }

    /// The datastore's change feed published entry revision `revision` (just after its
    /// commit).
    pub fn revision_published(&self, revision: i64, at: Instant) {
        let mut inner = self.lock();
        if inner.revisions.back().is_some_and(|(r, _)| *r >= revision) {
            return;
        }
        inner.revisions.push_back((revision, at));
        while inner.revisions.len() > REVISIONS_TRACKED {
            inner.revisions.pop_front();
        }
    }

    /// How long ago the earliest remembered revision in `(after, upto]` was published: the
    /// propagation delay of a sync message that carries the changes up to `upto` to an agent
    /// that held `after`, remembered for [`Activity::propagation_p99`]. `None` when none is
    /// remembered (a snapshot, or too old).
    pub fn propagated(&self, after: i64, upto: i64, now: Instant) -> Option<Duration> {
        let mut inner = self.lock();
        let delay = inner
            .revisions
            .iter()
            .find(|(r, _)| *r > after && *r <= upto)
            .map(|(_, at)| now.saturating_duration_since(*at))?;
        inner.delays.push_back((now, delay));
        while inner.delays.len() > DELAYS_TRACKED {
            inner.delays.pop_front();
        }
        Some(delay)
    }

    /// The 99th percentile of the propagation delays of the last `window` (nearest rank);
    /// `None` when there were none.
    pub fn propagation_p99(&self, window: Duration, now: Instant) -> Option<Duration> {
        let mut recent: Vec<Duration> = self
            .lock()
            .delays
            .iter()
            .filter(|(at, _)| now.saturating_duration_since(*at) <= window)
            .map(|(_, d)| *d)
            .collect();
        if recent.is_empty() {
            return None;
        }
        recent.sort_unstable();
        let rank = (recent.len() * 99).div_ceil(100).max(1);
        Some(recent[rank - 1])
    }
}

/// Records when each entry revision is published on `revisions` (the datastore's change
/// feed), until `cancel` fires or the feed closes.
pub async fn follow_revisions(
    activity: std::sync::Arc<Activity>,
    mut revisions: watch::Receiver<i64>,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    loop {
        tokio::select! {
            () = cancel.cancelled() => return Ok(()),
            changed = revisions.changed() => {
                if changed.is_err() {
                    return Ok(());
                }
            }
        }
        let revision = *revisions.borrow_and_update();
        activity.revision_published(revision, Instant::now());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> SpiffeId {
        SpiffeId::new(s).unwrap()
    }

    #[test]
    fn instances_are_bounded_newest_first_and_unique() {
        let a = Activity::default();
        for i in 0..(INSTANCES_PER_ENTRY + 5) {
            a.instance_minted("e1", &id(&format!("spiffe://td/w/{i}")));
        }
        a.instance_minted("e1", &id("spiffe://td/w/14"));
        let got = a.instances("e1");
        assert_eq!(got.len(), INSTANCES_PER_ENTRY);
        assert_eq!(got[0].spiffe_id, id("spiffe://td/w/14"));
        assert_eq!(got[1].spiffe_id, id("spiffe://td/w/13"));
        assert!(a.instances("e2").is_empty());
    }

    #[test]
    fn evictions_are_bounded_newest_first_and_unique() {
        let a = Activity::default();
        let id = |n: usize| SpiffeId::new(&format!("spiffe://td/agent/{n}")).unwrap();
        for n in 0..EVICTIONS_TRACKED + 5 {
            a.agent_evicted(&id(n));
        }
        a.agent_evicted(&id(EVICTIONS_TRACKED + 2));
        let got = a.evictions();
        assert_eq!(got.len(), EVICTIONS_TRACKED);
        assert_eq!(got[0].0, id(EVICTIONS_TRACKED + 2));
        assert_eq!(got[1].0, id(EVICTIONS_TRACKED + 4));
        assert_eq!(
            got.iter()
                .filter(|(i, _)| *i == id(EVICTIONS_TRACKED + 2))
                .count(),
            1
        );
    }

    #[test]
    fn streams_are_counted() {
        let a = Activity::default();
        let agent = id("spiffe://td/spire/agent/x");
        assert_eq!(a.agent_sync(&agent), None);
        a.sync_stream(&agent, true);
        a.sync_stream(&agent, true);
        a.sync_stream(&agent, false);
        assert_eq!(a.agent_sync(&agent).unwrap().open_streams, 1);
    }

    #[test]
    fn propagation_is_from_the_first_new_revision() {
        let a = Activity::default();
        let t0 = Instant::now();
        a.revision_published(5, t0);
        a.revision_published(6, t0 + Duration::from_millis(10));
        a.revision_published(6, t0 + Duration::from_millis(20));
        let now = t0 + Duration::from_millis(30);
        assert_eq!(a.propagated(4, 6, now), Some(Duration::from_millis(30)));
        assert_eq!(a.propagated(5, 6, now), Some(Duration::from_millis(20)));
        assert_eq!(a.propagated(6, 6, now), None);
        let window = Duration::from_secs(60);
        assert_eq!(
            a.propagation_p99(window, now),
            Some(Duration::from_millis(30))
        );
        assert_eq!(a.propagation_p99(window, now + 2 * window), None);
    }
}
