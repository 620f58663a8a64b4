//! The SyncEntries stream: a paged snapshot of the agent's authorized entries, then every
//! change pushed as it commits, the bundle when it changes, and a periodic full resync.

use sigil_proto::entry::entries_digest;
use sigil_proto::limits::SYNC_PAGE_BYTES;

use super::*;

/// One agent's SyncEntries stream: a producer task feeding the response channel.
pub(super) struct SyncStream {
    pub(super) datastore: Datastore,
    pub(super) ca: Arc<Ca>,
    pub(super) authorization: Arc<AuthorizationCache>,
    pub(super) revisions: watch::Receiver<i64>,
    pub(super) metrics: Arc<Metrics>,
    pub(super) activity: Arc<Activity>,
    pub(super) agent: AgentIdentity,
    pub(super) tx: mpsc::Sender<Result<pb::SyncEntriesResponse, Status>>,
    /// What the agent holds: entry ID → revision.
    pub(super) known: HashMap<String, i64>,
    /// The revision the agent has been brought up to.
    pub(super) revision: i64,
    pub(super) fallback: Duration,
    /// The federated bundle set; `None` when federation is off.
    pub(super) federated: Option<watch::Receiver<BundleSet>>,
    /// Trust domains the agent's authorized entries federate with.
    pub(super) federates_with: BTreeSet<TrustDomain>,
    /// The federated bundles last sent; `None` before the first send.
    pub(super) sent_federated: Option<BTreeMap<TrustDomain, Arc<Bundle>>>,
    /// Pods that leave the agent's node, for a `k8s_psat` agent.
    pub(super) gone_pods: Option<GonePods>,
    /// The server's shutdown: the stream ends with `Unavailable` at once instead of holding the
    /// drain until the agent notices the connection closing.
    pub(super) shutdown: CancellationToken,
}

/// Keeps `connected_agents` right however the stream ends.
struct ConnectedGuard(Arc<Metrics>);

impl Drop for ConnectedGuard {
    fn drop(&mut self) {
        self.0.connected_agents.dec();
    }
}

/// Keeps the agent's open-stream count in [`Activity`] right however the stream ends.
struct OpenGuard(Arc<Activity>, SpiffeId);

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.sync_stream(&self.1, false);
    }
}

impl SyncStream {
    pub(super) async fn run(mut self, since: i64) {
        self.metrics.connected_agents.inc();
        let _guard = ConnectedGuard(self.metrics.clone());
        let agent_id = self.agent.id.clone();
        self.activity.sync_stream(&agent_id, true);
        let _open = OpenGuard(self.activity.clone(), agent_id.clone());
        tracing::debug!(agent_id = %agent_id, since, "sync stream opened");
        match self.stream(since).await {
            Ok(()) | Err(StreamError::Closed) => {
                tracing::debug!(agent_id = %agent_id, "sync stream closed")
            }
            Err(StreamError::Status(status)) => {
                tracing::info!(agent_id = %agent_id, reason = %status.message(), "sync stream ended");
                let _ = self.tx.send(Err(status)).await;
            }
        }
    }

    async fn stream(&mut self, since: i64) -> Result<(), StreamError> {
        let mut bundles = self.ca.subscribe();
        let bundle = bundles.borrow_and_update().clone();
        let mut revisions_open = true;
        let mut revisions = self.revisions.clone();
        revisions.borrow_and_update();

        let resumed = if since > 0 {
            self.resume(since, &bundle).await?
        } else {
            false
        };
        if !resumed {
            self.snapshot(Some(&bundle)).await?;
        }
        let mut federated = self.federated.clone();
        if let Some(f) = federated.as_mut() {
            f.borrow_and_update();
        }
        let mut gone_pods = self.gone_pods.take();
        self.sync_federated().await?;

        let mut fallback = tokio::time::interval(self.fallback);
        fallback.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut resnapshot = tokio::time::interval_at(
            tokio::time::Instant::now() + RESNAPSHOT_EVERY,
            RESNAPSHOT_EVERY,
        );
        // The stream lives no longer than the SVID it was opened with.
        let svid_left = self
            .agent
            .svid_expires
            .duration_since(SystemTime::now())
            .unwrap_or_default();
        let svid_expired = tokio::time::sleep(svid_left);
        tokio::pin!(svid_expired);
        loop {
            let mut full = false;
            tokio::select! {
                () = self.tx.closed() => return Ok(()),
                () = self.shutdown.cancelled() => {
                    return Err(Status::unavailable(sigil_proto::SERVER_SHUTTING_DOWN).into());
                }
                () = &mut svid_expired => {
                    return Err(Status::unauthenticated(
                        "the agent SVID this stream was opened with has expired",
                    )
                    .into());
                }
                changed = async {
                    if revisions_open { revisions.changed().await } else { std::future::pending().await }
                } => {
                    // Without the admin API's sender, the fallback tick carries on alone.
                    revisions_open = changed.is_ok();
                }
                _ = fallback.tick() => {}
                _ = resnapshot.tick() => full = true,
                changed = async {
                    match federated.as_mut() {
                        Some(f) => f.changed().await,
                        None => std::future::pending().await,
                    }
                } => {
                    if changed.is_err() {
                        // The holder is gone (shutdown): stop watching it.
                        federated = None;
                    } else if let Some(f) = federated.as_mut() {
                        f.borrow_and_update();
                    }
                }
                uids = async {
                    match gone_pods.as_mut() {
                        Some(g) => g.next().await,
                        None => std::future::pending().await,
                    }
                } => {
                    // Only this: no entry or node changed.
                    self.send(pb::SyncEntriesResponse {
                        revision: self.revision,
                        gone_pod_uids: uids,
                        ..Default::default()
                    })
                    .await?;
                    continue;
                }
                changed = bundles.changed() => {
                    if changed.is_err() {
                        return Err(Status::unavailable(sigil_proto::SERVER_SHUTTING_DOWN).into());
                    }
                    let bundle = bundles.borrow_and_update().clone();
                    let msg = pb::SyncEntriesResponse {
                        revision: self.revision,
                        bundle: Some(common::Bundle::from(bundle.as_ref())),
                        ..Default::default()
                    };
                    self.send(msg).await?;
                }
            }
            // Checked on every wake-up: an evicted or banned agent loses its stream.
            let node = node_status(&self.datastore, &self.agent.id).await?;
            self.agent.selectors = node.selectors;
            if full {
                self.snapshot(None).await?;
            } else {
                self.catch_up().await?;
            }
            self.sync_federated().await?;
        }
    }

    /// Sends the federated bundles of the trust domains the agent's entries federate with,
    /// when that set differs from what was last sent (or nothing was sent yet). The message
    /// replaces the agent's whole set, so a bundle no longer needed is dropped there too.
    ///
    /// Only those trust domains, as SPIRE does: an agent holds no foreign trust it cannot hand
    /// to any of its workloads.
    async fn sync_federated(&mut self) -> Result<(), StreamError> {
        let Some(federated) = &self.federated else {
            return Ok(());
        };
        let all = federated.borrow().clone();
        let wanted: BTreeMap<TrustDomain, Arc<Bundle>> = self
            .federates_with
            .iter()
            .filter_map(|td| all.get(td).map(|b| (td.clone(), b.clone())))
            .collect();
        if self.sent_federated.as_ref() == Some(&wanted) {
            return Ok(());
        }
        self.send(pb::SyncEntriesResponse {
            revision: self.revision,
            federated_bundles: Some(pb::FederatedBundles {
                bundles: wanted
                    .values()
                    .map(|b| common::Bundle::from(b.as_ref()))
                    .collect(),
            }),
            ..Default::default()
        })
        .await?;
        self.sent_federated = Some(wanted);
        Ok(())
    }

    async fn authorized(&self) -> Result<Arc<AuthorizedEntries>, Status> {
        self.authorization
            .authorized(&self.agent.id, &self.agent.selectors)
            .await
            .map_err(authorization_status)
    }

    /// A full snapshot in pages; the first page carries `snapshot_start` (and the bundle when
    /// given), the last `snapshot_end` and the revision. Earlier pages carry revision 0: a
    /// snapshot cut short brings the agent up to nothing.
    async fn snapshot(&mut self, bundle: Option<&Arc<Bundle>>) -> Result<(), StreamError> {
        let authorized = self.authorized().await?;
        let entries: Vec<common::RegistrationEntry> = authorized
            .sorted()
            .into_iter()
            .map(common::RegistrationEntry::from)
            .collect();
        let pages = pages(&entries);
        let last = pages.len().saturating_sub(1);
        if pages.is_empty() {
            self.send(pb::SyncEntriesResponse {
                snapshot_start: true,
                snapshot_end: true,
                revision: authorized.revision,
                bundle: bundle.map(|b| common::Bundle::from(b.as_ref())),
                ..Default::default()
            })
            .await?;
        }
        for (i, page) in pages.into_iter().enumerate() {
            self.send(pb::SyncEntriesResponse {
                upserts: page.to_vec(),
                snapshot_start: i == 0,
                snapshot_end: i == last,
                revision: if i == last { authorized.revision } else { 0 },
                bundle: if i == 0 {
                    bundle.map(|b| common::Bundle::from(b.as_ref()))
                } else {
                    None
                },
                ..Default::default()
            })
            .await?;
        }
        self.known = authorized_revisions(&authorized);
        self.federates_with = federates_with(&authorized);
        self.revision = authorized.revision;
        Ok(())
    }

    /// Sends what changed since the agent's revision. Decided per agent by diffing its
    /// authorized set against what it holds: that covers the changed entries themselves and
    /// also entries whose authorization changed through an ancestor (a deleted node alias takes
    /// its descendants along without an event of their own).
    async fn catch_up(&mut self) -> Result<(), StreamError> {
        let latest = self
            .datastore
            .latest_entry_revision()
            .await
            .map_err(datastore_status)?;
        if latest == self.revision {
            return Ok(());
        }
        let authorized = self.authorized().await?;
        let upserts: Vec<common::RegistrationEntry> = authorized
            .sorted()
            .into_iter()
            .filter(|e| self.known.get(&e.id) != Some(&e.revision))
            .map(common::RegistrationEntry::from)
            .collect();
        let mut deleted: Vec<String> = self
            .known
            .keys()
            .filter(|id| !authorized.contains(id))
            .cloned()
            .collect();
        deleted.sort();
        self.send_changes(upserts, deleted, authorized.revision, None)
            .await?;
        self.known = authorized_revisions(&authorized);
        self.federates_with = federates_with(&authorized);
        self.revision = authorized.revision;
        Ok(())
    }

    /// Resumes from `since` with only the changes after it, if the change feed still holds
    /// them all. Returns false when a snapshot is needed instead.
    ///
    /// The agent's holdings are unknown here, so it gets what [`resume_changes`] finds; an
    /// entry that lost authorization only through an ancestor is dropped at the next full
    /// snapshot.
    async fn resume(&mut self, since: i64, bundle: &Arc<Bundle>) -> Result<bool, StreamError> {
        let latest = self
            .datastore
            .latest_entry_revision()
            .await
            .map_err(datastore_status)?;
        if since > latest {
            // A revision from another database (or a restored one): start over.
            return Ok(false);
        }
        if since < latest {
            let first = self
                .datastore
                .list_entry_events(since, 1)
                .await
                .map_err(datastore_status)?;
            if first.first().map(|e| e.revision) != Some(since + 1) {
                // Events after `since` were pruned.
                return Ok(false);
            }
        }
        let authorized = self.authorized().await?;
        let mut touched = HashSet::new();
        let mut after = since;
        while after < authorized.revision {
            let events = self
                .datastore
                .list_entry_events(after, EVENT_BATCH)
                .await
                .map_err(datastore_status)?;
            let Some(last) = events.last() else { break };
            after = last.revision;
            touched.extend(events.into_iter().map(|e| e.entry_id));
        }
        let (upserts, deleted) = resume_changes(since, &authorized, touched);
        let digest = entries_digest(
            authorized
                .sorted()
                .into_iter()
                .map(|e| (e.id.as_str(), e.revision)),
        );
        self.send_changes(
            upserts,
            deleted,
            authorized.revision,
            Some((bundle, digest)),
        )
        .await?;
        self.known = authorized_revisions(&authorized);
        self.federates_with = federates_with(&authorized);
        self.revision = authorized.revision;
        Ok(true)
    }

    /// Live changes in pages; only the last page carries the new revision, so a stream cut
    /// mid-way resumes from the old one. Nothing is sent when nothing changed, except on a
    /// resume, which always delivers the bundle (first page) and the digest of the whole set
    /// (last page).
    async fn send_changes(
        &self,
        upserts: Vec<common::RegistrationEntry>,
        deleted: Vec<String>,
        revision: i64,
        resume: Option<(&Arc<Bundle>, [u8; 32])>,
    ) -> Result<(), StreamError> {
        let mut messages: Vec<pb::SyncEntriesResponse> = pages(&upserts)
            .into_iter()
            .map(|page| pb::SyncEntriesResponse {
                upserts: page.to_vec(),
                revision: self.revision,
                ..Default::default()
            })
            .collect();
        messages.extend(
            deleted
                .chunks(SYNC_PAGE)
                .map(|page| pb::SyncEntriesResponse {
                    deleted_ids: page.to_vec(),
                    revision: self.revision,
                    ..Default::default()
                }),
        );
        if messages.is_empty() && resume.is_none() {
            return Ok(());
        }
        if !messages.is_empty()
            && let Some(delay) = self
                .activity
                .propagated(self.revision, revision, Instant::now())
        {
            self.metrics
                .entry_propagation_seconds
                .observe(delay.as_secs_f64());
        }
        if messages.is_empty() {
            messages.push(pb::SyncEntriesResponse::default());
        }
        if let Some((bundle, _)) = resume {
            messages[0].bundle = Some(common::Bundle::from(bundle.as_ref()));
        }
        if let Some(last) = messages.last_mut() {
            last.revision = revision;
            if let Some((_, digest)) = resume {
                last.entries_digest = digest.to_vec();
            }
        }
        for m in messages {
            self.send(m).await?;
        }
        Ok(())
    }

    async fn send(&self, msg: pb::SyncEntriesResponse) -> Result<(), StreamError> {
        self.activity.synced(&self.agent.id);
        self.tx.send(Ok(msg)).await.map_err(|_| StreamError::Closed)
    }
}

/// Splits entries into sync pages of at most [`SYNC_PAGE`] entries and, unless one entry alone
/// is bigger, [`SYNC_PAGE_BYTES`] encoded bytes, so every message stays far under the agent
/// API's message limit however many entries an agent is authorized for.
fn pages(entries: &[common::RegistrationEntry]) -> Vec<&[common::RegistrationEntry]> {
    let mut pages = Vec::new();
    let (mut start, mut bytes) = (0, 0);
    for (i, e) in entries.iter().enumerate() {
        let size = prost::Message::encoded_len(e);
        if i > start && (i - start == SYNC_PAGE || bytes + size > SYNC_PAGE_BYTES) {
            pages.push(&entries[start..i]);
            (start, bytes) = (i, 0);
        }
        bytes += size;
    }
    if start < entries.len() {
        pages.push(&entries[start..]);
    }
    pages
}

/// Why a sync step stopped: the receiver left, or the stream must end with a status.
enum StreamError {
    Closed,
    Status(Status),
}

impl From<Status> for StreamError {
    fn from(s: Status) -> Self {
        Self::Status(s)
    }
}

/// What an agent resuming from `since` lacks: every authorized entry whose revision is newer
/// than `since`, and the deletion of every entry an event after `since` `touched` that is no
/// longer authorized.
///
/// Upserts go by the entries' own revisions, not by the events: the set is read after its
/// `revision`, so it can hold an entry committed in between, whose event lies past the ones
/// read. Everything in the set then counts as held by the agent, so such an entry must go now.
fn resume_changes(
    since: i64,
    authorized: &AuthorizedEntries,
    touched: HashSet<String>,
) -> (Vec<common::RegistrationEntry>, Vec<String>) {
    let upserts = authorized
        .sorted()
        .into_iter()
        .filter(|e| e.revision > since)
        .map(common::RegistrationEntry::from)
        .collect();
    let mut deleted: Vec<String> = touched
        .into_iter()
        .filter(|id| !authorized.contains(id))
        .collect();
    deleted.sort();
    (upserts, deleted)
}

fn federates_with(a: &AuthorizedEntries) -> BTreeSet<TrustDomain> {
    a.sorted()
        .into_iter()
        .flat_map(|e| e.federates_with.iter().cloned())
        .collect()
}

fn authorized_revisions(a: &AuthorizedEntries) -> HashMap<String, i64> {
    a.sorted()
        .into_iter()
        .map(|e| (e.id.clone(), e.revision))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(id: usize, dns_bytes: usize) -> common::RegistrationEntry {
        common::RegistrationEntry {
            id: format!("e{id}"),
            dns_names: vec!["d".repeat(dns_bytes)],
            ..Default::default()
        }
    }

    #[test]
    fn resume_sends_what_changed_after_since_even_past_the_sets_revision() {
        let at = |id: &str, revision: i64| {
            let mut e = crate::datastore::tests::entry(
                &format!("spiffe://td/{id}"),
                "spiffe://td/spire/agent/a",
                &["unix:uid:1"],
            );
            e.id = id.into();
            e.revision = revision;
            e
        };
        // Read at revision 2, the set also holds `late`, committed (revision 3) just after.
        let authorized =
            AuthorizedEntries::new(2, [at("held", 1), at("changed", 2), at("late", 3)]);
        let touched = HashSet::from(["changed".to_owned(), "gone".to_owned()]);
        let (upserts, deleted) = resume_changes(1, &authorized, touched);
        let ids: Vec<&str> = upserts.iter().map(|e| e.id.as_str()).collect();
        assert_eq!(ids, ["changed", "late"]);
        assert_eq!(deleted, ["gone"]);
    }

    #[test]
    fn pages_are_bounded_by_count_and_bytes() {
        assert!(pages(&[]).is_empty());
        let small: Vec<_> = (0..SYNC_PAGE * 2 + 1).map(|i| entry(i, 10)).collect();
        let sizes: Vec<usize> = pages(&small).iter().map(|p| p.len()).collect();
        assert_eq!(sizes, [SYNC_PAGE, SYNC_PAGE, 1]);

        // ~1 MiB entries: four fit under the byte bound only if their sum stays under it.
        let big: Vec<_> = (0..10).map(|i| entry(i, 1 << 20)).collect();
        let split = pages(&big);
        assert!(split.len() > 2, "{}", split.len());
        for page in &split {
            let bytes: usize = page.iter().map(prost::Message::encoded_len).sum();
            assert!(bytes <= SYNC_PAGE_BYTES, "{bytes}");
            assert!(!page.is_empty());
        }
        let total: usize = split.iter().map(|p| p.len()).sum();
        assert_eq!(total, big.len(), "every entry once");
        // One entry bigger than a page still goes, alone.
        let huge = [entry(0, SYNC_PAGE_BYTES + 1), entry(1, 1)];
        assert_eq!(
            pages(&huge).iter().map(|p| p.len()).collect::<Vec<_>>(),
            [1, 1]
        );
    }
}
