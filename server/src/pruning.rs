//! Scheduled pruning of stale rows (SPIRE prunes expired nodes, join tokens and entries too):
//! attested nodes whose agent SVID expired, expired join tokens, registration entries past
//! their `expires_at` (`-entryExpiry`), and entry events old enough that no agent needs them.
//!
//! Every run is a handful of indexed deletes that the datastore works through in batches, one
//! short write transaction each, so agents' syncs and admin writes interleave with a large
//! prune instead of waiting behind it. Pruned entries get `Delete` events, which the
//! datastore's change feed announces, so connected agents drop them at once.
//!
//! Entry events: a connected agent's stream diffs its authorized set against what it holds
//! ([`crate::api::agent`]), so it needs no events; only an agent *resuming* after a reconnect
//! reads the events after its revision, and when those were pruned it gets a full snapshot
//! instead (correct, only larger). Events are kept for [`EVENT_RETENTION`], so reconnects
//! after a restart or a network blip stay cheap.

use std::collections::VecDeque;
use std::time::Duration;

use sigil_common::time::unix_now;
use tokio_util::sync::CancellationToken;

use crate::datastore::{Datastore, DatastoreError};

/// How often stale rows are pruned (the first run is at start-up). Half a minute: an entry
/// past `entryExpiry` leaves the agents soon after (SVIDs already issued live out their TTL
/// anyway), while an idle run costs a few indexed queries that find nothing.
pub const PRUNE_EVERY: Duration = Duration::from_secs(30);
/// How long entry events are kept for resuming agents (see the module docs).
pub const EVENT_RETENTION: Duration = Duration::from_secs(3600);

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PruningError {
    #[error("pruning {what}: {source}")]
    Datastore {
        what: &'static str,
        source: DatastoreError,
    },
}

/// What one run deleted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PruneCounts {
    pub entries: u64,
    pub attested_nodes: u64,
    pub join_tokens: u64,
    pub entry_events: u64,
}

impl PruneCounts {
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

/// Prunes on a schedule; see the module docs.
pub struct Pruner {
    datastore: Datastore,
    every: Duration,
    event_retention: i64,
    /// `(unix seconds, latest entry revision)` seen at each run, oldest first: events below a
    /// revision that was already the latest [`EVENT_RETENTION`] ago may go.
    marks: VecDeque<(i64, i64)>,
}

impl std::fmt::Debug for Pruner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pruner")
            .field("every", &self.every)
            .field("event_retention", &self.event_retention)
            .finish_non_exhaustive()
    }
}

impl Pruner {
    pub fn new(datastore: Datastore) -> Self {
        Self {
            datastore,
            every: PRUNE_EVERY,
            event_retention: EVENT_RETENTION.as_secs() as i64,
            marks: VecDeque::new(),
        }
    }

    /// Overrides the schedule (tests, benchmarks).
    pub fn with_schedule(mut self, every: Duration, event_retention: Duration) -> Self {
        self.every = every;
        self.event_retention = event_retention.as_secs() as i64;
        self
    }

    /// One run at `now` (Unix seconds): everything stale before `now` is deleted. Logs one
    /// INFO line with the counts when anything was pruned.
    pub async fn prune_once(&mut self, now: i64) -> Result<PruneCounts, PruningError> {
        let started = std::time::Instant::now();
        let ds = &self.datastore;
        let err = |what| move |source| PruningError::Datastore { what, source };
        let mut counts = PruneCounts {
            entries: ds
                .prune_entries(now)
                .await
                .map_err(err("registration entries"))?,
            attested_nodes: ds
                .prune_attested_nodes(now)
                .await
                .map_err(err("attested nodes"))?,
            join_tokens: ds
                .prune_join_tokens(now)
                .await
                .map_err(err("join tokens"))?,
            entry_events: 0,
        };
        let latest = ds
            .latest_entry_revision()
            .await
            .map_err(err("entry events"))?;
        if let Some(horizon) = event_horizon(&mut self.marks, now, latest, self.event_retention) {
            counts.entry_events = ds
                .prune_entry_events(horizon)
                .await
                .map_err(err("entry events"))?;
        }
        if !counts.is_empty() {
            tracing::info!(
                entries = counts.entries,
                attested_nodes = counts.attested_nodes,
                join_tokens = counts.join_tokens,
                entry_events = counts.entry_events,
                elapsed_ms = started.elapsed().as_millis() as u64,
                "pruned stale rows"
            );
        }
        Ok(counts)
    }

    /// Prunes every [`PRUNE_EVERY`] until `cancel` fires. A failed run is logged and retried
    /// at the next tick: pruning is housekeeping, never a reason to stop the server.
    pub async fn run(mut self, cancel: CancellationToken) -> anyhow::Result<()> {
        let mut tick = tokio::time::interval(self.every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = cancel.cancelled() => return Ok(()),
                _ = tick.tick() => {}
            }
            if let Err(e) = self.prune_once(unix_now()).await {
                tracing::warn!(error = %e, "pruning failed; retrying at the next run");
            }
        }
    }
}

/// Records `(now, latest)` and returns the revision below which events may be pruned: the
/// latest revision of the newest mark at least `retention` old (older marks are dropped).
/// `None` until a mark is that old, e.g. during the first `retention` after a start.
fn event_horizon(
    marks: &mut VecDeque<(i64, i64)>,
    now: i64,
    latest: i64,
    retention: i64,
) -> Option<i64> {
    if marks.back().is_none_or(|&(_, r)| r != latest) {
        marks.push_back((now, latest));
    }
    let mut horizon = None;
    while let Some(&(at, revision)) = marks.front() {
        if now - at < retention {
            break;
        }
        horizon = Some(revision);
        marks.pop_front();
    }
    // Keep the horizon's mark: the next run may use it again.
    if let Some(h) = horizon
        && marks.front().is_none_or(|&(_, r)| r != h)
    {
        marks.push_front((now - retention, h));
    }
    horizon
}

#[cfg(test)]
mod tests {
    use sigil_proto::{RegistrationEntry, Selector, SpiffeId, TrustDomain};

    use super::*;

    #[test]
    fn event_horizon_waits_for_the_retention() {
        let mut marks = VecDeque::new();
        // Revision 10 at t=0, 20 at t=100, 30 at t=200; retention 150.
        assert_eq!(event_horizon(&mut marks, 0, 10, 150), None);
        assert_eq!(event_horizon(&mut marks, 100, 20, 150), None);
        assert_eq!(event_horizon(&mut marks, 149, 20, 150), None);
        // At 150, revision 10 was the latest 150 s ago.
        assert_eq!(event_horizon(&mut marks, 150, 20, 150), Some(10));
        assert_eq!(event_horizon(&mut marks, 200, 30, 150), Some(10));
        // At 250, revision 20 (seen at 100) is old enough.
        assert_eq!(event_horizon(&mut marks, 250, 30, 150), Some(20));
        // Quiet for long: the latest revision itself becomes the horizon, and stays.
        assert_eq!(event_horizon(&mut marks, 10_000, 30, 150), Some(30));
        assert_eq!(event_horizon(&mut marks, 10_060, 30, 150), Some(30));
        assert!(marks.len() <= 2, "{marks:?}");
    }

    struct Fixture {
        _dir: tempfile::TempDir,
        ds: Datastore,
        td: TrustDomain,
        /// What wakes agents' sync streams.
        revisions: tokio::sync::watch::Receiver<i64>,
        pruner: Pruner,
    }

    async fn fixture() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let ds = Datastore::open("datastore.sqlite3", dir.path())
            .await
            .unwrap();
        let revisions = ds.entry_revisions();
        let pruner = Pruner::new(ds.clone()).with_schedule(PRUNE_EVERY, Duration::from_secs(600));
        Fixture {
            _dir: dir,
            ds,
            td: TrustDomain::new("example.org").unwrap(),
            revisions,
            pruner,
        }
    }

    fn entry(td: &TrustDomain, path: &str, expires_at: Option<i64>) -> RegistrationEntry {
        RegistrationEntry {
            expires_at,
            ..RegistrationEntry::new(
                SpiffeId::from_path(td, path).unwrap(),
                SpiffeId::from_path(td, "/spire/agent/x").unwrap(),
                vec![Selector::from_parts("unix", "uid:1").unwrap()],
            )
        }
    }

    #[tokio::test]
    async fn prunes_what_expired_before_now_and_nothing_else() {
        let mut f = fixture().await;
        let now = unix_now();
        let created =
            f.ds.create_entries(vec![
                entry(&f.td, "/expired", Some(now - 10)),
                entry(&f.td, "/later", Some(now + 3600)),
                entry(&f.td, "/forever", None),
            ])
            .await
            .unwrap();
        f.ds.create_join_token("old", now - 1).await.unwrap();
        for (name, expires) in [("gone", now - 1), ("live", now + 600)] {
            f.ds.create_attested_node(crate::datastore::AttestedNode {
                spiffe_id: SpiffeId::from_path(&f.td, &format!("/spire/agent/x/{name}")).unwrap(),
                attestation_type: "join_token".into(),
                selectors: vec![],
                cert_serial: "01".into(),
                cert_expires_at: expires,
                new_cert_serial: None,
                banned: false,
                created_at: 0,
                updated_at: 0,
            })
            .await
            .unwrap();
        }
        f.ds.create_join_token("fresh", now + 600).await.unwrap();

        let counts = f.pruner.prune_once(now).await.unwrap();
        assert_eq!(counts.entries, 1);
        assert_eq!(counts.join_tokens, 1);
        assert_eq!(counts.attested_nodes, 1);
        let node =
            |name: &str| SpiffeId::from_path(&f.td, &format!("/spire/agent/x/{name}")).unwrap();
        assert!(
            f.ds.fetch_attested_node(&node("gone"))
                .await
                .unwrap()
                .is_none()
        );
        assert!(
            f.ds.fetch_attested_node(&node("live"))
                .await
                .unwrap()
                .is_some()
        );
        assert!(f.ds.fetch_entry(&created[0].id).await.unwrap().is_none());
        assert!(f.ds.fetch_entry(&created[1].id).await.unwrap().is_some());
        assert!(f.ds.fetch_entry(&created[2].id).await.unwrap().is_some());
        assert!(f.ds.take_join_token("fresh", now).await.unwrap().is_some());
        // Agents were told: the published revision is the pruning's Delete event.
        let latest = f.ds.latest_entry_revision().await.unwrap();
        assert_eq!(*f.revisions.borrow(), latest);
        let events = f.ds.list_entry_events(latest - 1, 10).await.unwrap();
        assert_eq!(events.last().unwrap().entry_id, created[0].id);

        // An hour later the second entry has expired too; a second run finds only it.
        let counts = f.pruner.prune_once(now + 3601).await.unwrap();
        assert_eq!(counts.entries, 1);
        assert!(f.ds.fetch_entry(&created[1].id).await.unwrap().is_none());
        // Nothing stale left: an empty run.
        let counts = f.pruner.prune_once(now + 3602).await.unwrap();
        assert_eq!(
            (counts.entries, counts.join_tokens, counts.attested_nodes),
            (0, 0, 0)
        );
    }

    #[tokio::test]
    async fn events_go_only_after_the_retention() {
        let mut f = fixture().await;
        let now = unix_now();
        f.ds.create_entries(vec![entry(&f.td, "/a", None), entry(&f.td, "/b", None)])
            .await
            .unwrap();
        let first = f.ds.latest_entry_revision().await.unwrap();
        assert_eq!(f.pruner.prune_once(now).await.unwrap().entry_events, 0);
        f.ds.create_entries(vec![entry(&f.td, "/c", None)])
            .await
            .unwrap();
        // Within the retention (600 s): every event is kept.
        assert_eq!(
            f.pruner.prune_once(now + 599).await.unwrap().entry_events,
            0
        );
        assert_eq!(f.ds.list_entry_events(0, 10).await.unwrap().len(), 3);
        // Past it: the events below the revision that was the latest 600 s ago go.
        let counts = f.pruner.prune_once(now + 600).await.unwrap();
        assert_eq!(counts.entry_events, (first - 1) as u64);
        let kept: Vec<i64> =
            f.ds.list_entry_events(0, 10)
                .await
                .unwrap()
                .iter()
                .map(|e| e.revision)
                .collect();
        assert_eq!(kept.first(), Some(&first));
    }
}
