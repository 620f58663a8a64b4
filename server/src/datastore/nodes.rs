//! Attested nodes: the agents the server has attested, their selectors and current SVID.

use sigil_proto::selector::canonicalize;
use sigil_proto::{Selector, SpiffeId};
use sqlx::{ColumnIndex, Decode, Row, Type};

use super::selectors::{self, NODE_SELECTORS, SelectorMatch};
use super::sql::Sql;
use super::{
    Change, Datastore, DatastoreError, PRUNE_BATCH, Tx, finish_page, page_bounds, unix_now,
};

/// The columns [`node_from_row`] reads, from `attested_nodes n`.
macro_rules! node_columns {
    () => {
        "n.spiffe_id, n.attestation_type, n.cert_serial, n.cert_expires_at, n.new_cert_serial, \
         n.banned, n.created_at, n.updated_at"
    };
}

/// An agent the server has attested.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AttestedNode {
    /// The agent's SPIFFE ID (`spiffe://<td>/spire/agent/...`).
    pub spiffe_id: SpiffeId,
    /// The node attestor that vouched for it, e.g. `join_token`, `k8s_psat`.
    pub attestation_type: String,
    /// Node selectors from attestation, canonical order.
    pub selectors: Vec<Selector>,
    /// Serial number of the agent's current X509-SVID.
    pub cert_serial: String,
    /// Unix seconds when that SVID expires.
    pub cert_expires_at: i64,
    /// Serial of an SVID issued but not yet used by the agent (rotation in progress).
    pub new_cert_serial: Option<String>,
    /// A banned agent gets no SVIDs and may not attest again until evicted.
    pub banned: bool,
    /// Unix seconds, set by the datastore.
    pub created_at: i64,
    /// Unix seconds, set by the datastore.
    pub updated_at: i64,
}

/// Which nodes to list or count; every set field must match (AND).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeFilter {
    pub attestation_type: Option<String>,
    pub banned: Option<bool>,
    /// Nodes that can (or cannot) attest again with the same ID: [`can_reattest`].
    pub can_reattest: Option<bool>,
    /// Nodes whose SVID expires before this time (Unix seconds).
    pub expires_before: Option<i64>,
    /// A non-empty selector set and how nodes' selectors must relate to it.
    pub selectors: Option<(Vec<Selector>, SelectorMatch)>,
}

impl Datastore {
    /// Stores a newly attested node, or replaces a re-attested one (keeping its `created_at`).
    /// Sets `created_at`/`updated_at` and canonicalizes the selectors. A banned node is not
    /// replaced: `Banned`, until it is evicted with [`delete_attested_node`](Self::delete_attested_node).
    pub async fn create_attested_node(
        &self,
        mut node: AttestedNode,
    ) -> Result<AttestedNode, DatastoreError> {
        canonicalize(&mut node.selectors);
        let now = unix_now();
        let id = node.spiffe_id.to_string();
        let mut tx = self.begin_write().await?;
        let existing: Option<(bool, i64)> = on_tx!(&mut tx, c => {
            sqlx::query_as("SELECT banned, created_at FROM attested_nodes WHERE spiffe_id = $1")
                .bind(&id)
                .fetch_optional(&mut **c)
                .await?
        });
        node.created_at = now;
        node.updated_at = now;
        if let Some((banned, created_at)) = existing {
            if banned {
                return Err(DatastoreError::Banned(id));
            }
            node.created_at = created_at;
            on_tx!(&mut tx, c => {
                sqlx::query("DELETE FROM attested_nodes WHERE spiffe_id = $1")
                    .bind(&id)
                    .execute(&mut **c)
                    .await?.rows_affected()
            });
        }
        on_tx!(&mut tx, c => {
            sqlx::query(
                "INSERT INTO attested_nodes (spiffe_id, attestation_type, cert_serial, \
                 cert_expires_at, new_cert_serial, banned, created_at, updated_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
            )
            .bind(&id)
            .bind(&node.attestation_type)
            .bind(&node.cert_serial)
            .bind(node.cert_expires_at)
            .bind(&node.new_cert_serial)
            .bind(node.banned)
            .bind(node.created_at)
            .bind(node.updated_at)
            .execute(&mut **c)
            .await?.rows_affected()
        });
        selectors::insert(&mut tx, NODE_SELECTORS, &id, &node.selectors).await?;
        self.commit(tx, vec![Change::AttestedNode(node.spiffe_id.clone())])
            .await?;
        Ok(node)
    }

    /// The node with this SPIFFE ID, if any.
    pub async fn fetch_attested_node(
        &self,
        spiffe_id: &SpiffeId,
    ) -> Result<Option<AttestedNode>, DatastoreError> {
        let mut tx = self.begin_read().await?;
        let node = fetch_in(&mut tx, &spiffe_id.to_string()).await?;
        tx.commit().await?;
        Ok(node)
    }

    /// One page of the nodes matching `filter`, in SPIFFE ID order, and the token of the next
    /// page if there is one. `page_size` must be positive; the caller caps it.
    pub async fn list_attested_nodes(
        &self,
        filter: &NodeFilter,
        page_size: u32,
        page_token: Option<&str>,
    ) -> Result<(Vec<AttestedNode>, Option<String>), DatastoreError> {
        let (limit, after) = page_bounds(page_size, page_token)?;
        let mut sql = Sql::new(concat!(
            "SELECT ",
            node_columns!(),
            " FROM attested_nodes n WHERE n.spiffe_id > "
        ));
        sql.bind(after);
        push_filter(&mut sql, filter)?;
        sql.push(" ORDER BY n.spiffe_id LIMIT ");
        sql.bind(limit);
        let mut tx = self.begin_read().await?;
        let nodes = query_nodes(&mut tx, sql).await?;
        tx.commit().await?;
        Ok(finish_page(nodes, page_size, |n| n.spiffe_id.to_string()))
    }

    /// How many nodes match `filter`.
    pub async fn count_attested_nodes(&self, filter: &NodeFilter) -> Result<u64, DatastoreError> {
        let mut sql = Sql::new("SELECT COUNT(*) FROM attested_nodes n WHERE 1 = 1");
        push_filter(&mut sql, filter)?;
        let count: i64 = on_pool!(&self.pool, p => sql.query().fetch_one(p).await?.try_get(0)?);
        Ok(u64::try_from(count).unwrap_or(0))
    }

    /// Records a new SVID for the node (after renewal or at rotation).
    pub async fn update_attested_node_serial(
        &self,
        spiffe_id: &SpiffeId,
        cert_serial: &str,
        cert_expires_at: i64,
        new_cert_serial: Option<&str>,
    ) -> Result<AttestedNode, DatastoreError> {
        let mut tx = self.begin_write().await?;
        let done = on_tx!(&mut tx, c => {
            sqlx::query(
                "UPDATE attested_nodes SET cert_serial = $1, cert_expires_at = $2, \
                 new_cert_serial = $3, updated_at = $4 WHERE spiffe_id = $5",
            )
            .bind(cert_serial)
            .bind(cert_expires_at)
            .bind(new_cert_serial)
            .bind(unix_now())
            .bind(spiffe_id.to_string())
            .execute(&mut **c)
            .await?
            .rows_affected()
        });
        self.updated_node(tx, spiffe_id, done).await
    }

    /// Bans or un-bans a node.
    pub async fn set_attested_node_banned(
        &self,
        spiffe_id: &SpiffeId,
        banned: bool,
    ) -> Result<AttestedNode, DatastoreError> {
        let mut tx = self.begin_write().await?;
        let done = on_tx!(&mut tx, c => {
            sqlx::query("UPDATE attested_nodes SET banned = $1, updated_at = $2 WHERE spiffe_id = $3")
                .bind(banned)
                .bind(unix_now())
                .bind(spiffe_id.to_string())
                .execute(&mut **c)
                .await?
                .rows_affected()
        });
        self.updated_node(tx, spiffe_id, done).await
    }

    /// Evicts a node and returns it as it was: it must attest again to get SVIDs.
    pub async fn delete_attested_node(
        &self,
        spiffe_id: &SpiffeId,
    ) -> Result<AttestedNode, DatastoreError> {
        let id = spiffe_id.to_string();
        let mut tx = self.begin_write().await?;
        let node = fetch_in(&mut tx, &id)
            .await?
            .ok_or_else(|| not_found(spiffe_id))?;
        // Selectors go with the row (ON DELETE CASCADE).
        on_tx!(&mut tx, c => {
            sqlx::query("DELETE FROM attested_nodes WHERE spiffe_id = $1")
                .bind(&id)
                .execute(&mut **c)
                .await?.rows_affected()
        });
        self.commit(tx, vec![Change::AttestedNode(spiffe_id.clone())])
            .await?;
        Ok(node)
    }

    /// Deletes the nodes whose SVID expired before `now` (Unix seconds), except banned ones
    /// (deleting those would let them attest again). Returns how many. Works in batches, one
    /// short write transaction each.
    pub async fn prune_attested_nodes(&self, now: i64) -> Result<u64, DatastoreError> {
        self.prune_in_batches(|tx| {
            Box::pin(async move {
                let pruned: Vec<String> = on_tx!(&mut *tx, c => {
                    sqlx::query_scalar(
                        "DELETE FROM attested_nodes WHERE spiffe_id IN \
                         (SELECT spiffe_id FROM attested_nodes \
                          WHERE cert_expires_at < $1 AND NOT banned LIMIT $2) \
                         RETURNING spiffe_id",
                    )
                    .bind(now)
                    .bind(PRUNE_BATCH)
                    .fetch_all(&mut **c)
                    .await?
                });
                // A row that no longer parses is still pruned; it just has no change to announce.
                let changes = pruned
                    .iter()
                    .filter_map(|id| SpiffeId::new(id).ok())
                    .map(Change::AttestedNode)
                    .collect();
                Ok((pruned.len() as u64, changes))
            })
        })
        .await
    }

    /// Re-reads a node after a single-statement update, in its transaction, and commits;
    /// `NotFound` (and nothing committed) if nothing was updated.
    async fn updated_node(
        &self,
        mut tx: Tx,
        spiffe_id: &SpiffeId,
        rows_affected: u64,
    ) -> Result<AttestedNode, DatastoreError> {
        if rows_affected == 0 {
            return Err(not_found(spiffe_id));
        }
        let node = fetch_in(&mut tx, &spiffe_id.to_string())
            .await?
            .ok_or_else(|| not_found(spiffe_id))?;
        self.commit(tx, vec![Change::AttestedNode(spiffe_id.clone())])
            .await?;
        Ok(node)
    }
}

/// The one attestation type whose agents cannot attest again: a join token is single-use. Every
/// other attestor Sigil has (`k8s_psat`) can present its evidence again.
const NON_REATTESTABLE: &str = "join_token";

/// Whether an agent attested with `attestation_type` can attest again with the same ID
/// (SPIRE's `can_reattest`, which it stores; Sigil derives it from the attestor).
pub fn can_reattest(attestation_type: &str) -> bool {
    attestation_type != NON_REATTESTABLE
}

fn not_found(spiffe_id: &SpiffeId) -> DatastoreError {
    DatastoreError::NotFound(format!("attested node {spiffe_id}"))
}

/// Appends the filter's conditions (`AND ...`) to a query over `attested_nodes n`.
fn push_filter(sql: &mut Sql, filter: &NodeFilter) -> Result<(), DatastoreError> {
    if let Some(t) = &filter.attestation_type {
        sql.push(" AND n.attestation_type = ").bind(t.as_str());
    }
    if let Some(banned) = filter.banned {
        sql.push(" AND n.banned = ").bind(banned);
    }
    if let Some(can) = filter.can_reattest {
        // Not a column: it follows from the attestor (see `can_reattest`).
        sql.push(if can {
            " AND n.attestation_type <> "
        } else {
            " AND n.attestation_type = "
        })
        .bind(NON_REATTESTABLE);
    }
    if let Some(before) = filter.expires_before {
        sql.push(" AND n.cert_expires_at < ").bind(before);
    }
    if let Some((given, mode)) = &filter.selectors {
        let mut given = given.clone();
        canonicalize(&mut given);
        if given.is_empty() {
            return Err(DatastoreError::InvalidArgument(
                "selector filter is empty".into(),
            ));
        }
        selectors::push_match(sql, NODE_SELECTORS, "n.spiffe_id", &given, *mode);
    }
    Ok(())
}

async fn fetch_in(tx: &mut Tx, spiffe_id: &str) -> Result<Option<AttestedNode>, DatastoreError> {
    let mut sql = Sql::new(concat!(
        "SELECT ",
        node_columns!(),
        " FROM attested_nodes n WHERE n.spiffe_id = "
    ));
    sql.bind(spiffe_id);
    Ok(query_nodes(tx, sql).await?.pop())
}

/// Runs a query over `node_columns!()` and attaches the nodes' selectors.
async fn query_nodes(tx: &mut Tx, sql: Sql) -> Result<Vec<AttestedNode>, DatastoreError> {
    let mut nodes = on_tx!(tx, c => {
        let rows = sql.query().fetch_all(&mut **c).await?;
        rows.iter()
            .map(node_from_row)
            .collect::<Result<Vec<_>, _>>()?
    });
    let ids: Vec<String> = nodes.iter().map(|n| n.spiffe_id.to_string()).collect();
    let mut selectors = selectors::load(tx, NODE_SELECTORS, &ids).await?;
    for (node, id) in nodes.iter_mut().zip(&ids) {
        // A node may have no selectors (e.g. join-token attestation).
        node.selectors = selectors.remove(id).unwrap_or_default();
    }
    Ok(nodes)
}

/// Parses a node row (without its selectors), from either backend.
fn node_from_row<'r, R>(row: &'r R) -> Result<AttestedNode, DatastoreError>
where
    R: Row,
    &'static str: ColumnIndex<R>,
    String: Decode<'r, R::Database> + Type<R::Database>,
    i64: Decode<'r, R::Database> + Type<R::Database>,
    bool: Decode<'r, R::Database> + Type<R::Database>,
{
    let id: String = row.try_get("spiffe_id")?;
    Ok(AttestedNode {
        spiffe_id: SpiffeId::new(&id)
            .map_err(|e| DatastoreError::Corrupt(format!("attested node {id:?}: {e}")))?,
        attestation_type: row.try_get("attestation_type")?,
        selectors: Vec::new(),
        cert_serial: row.try_get("cert_serial")?,
        cert_expires_at: row.try_get("cert_expires_at")?,
        new_cert_serial: row.try_get("new_cert_serial")?,
        banned: row.try_get("banned")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::super::tests::{on_both_backends, scalar};
    use super::*;

    on_both_backends!(
        prune_works_through_more_than_one_batch,
        create_fetch_round_trip_and_reattestation,
        banned_node_cannot_reattest_until_evicted,
        update_serial,
        list_filters_and_pages,
        prune_keeps_banned_and_unexpired
    );

    pub(crate) fn node(spiffe_id: &str) -> AttestedNode {
        AttestedNode {
            spiffe_id: SpiffeId::new(spiffe_id).unwrap(),
            attestation_type: "join_token".into(),
            selectors: Vec::new(),
            cert_serial: "01".into(),
            cert_expires_at: 1000,
            new_cert_serial: None,
            banned: false,
            created_at: 0,
            updated_at: 0,
        }
    }

    fn id(s: &str) -> SpiffeId {
        SpiffeId::new(s).unwrap()
    }

    fn sels(list: &[&str]) -> Vec<Selector> {
        list.iter().map(|s| s.parse().unwrap()).collect()
    }

    async fn create_fetch_round_trip_and_reattestation(ds: Datastore) {
        let mut n = node("spiffe://td/spire/agent/k8s_psat/c/1");
        n.attestation_type = "k8s_psat".into();
        n.selectors = sels(&["k8s_psat:cluster:c", "k8s_psat:agent_ns:spire"]);
        n.new_cert_serial = Some("02".into());
        let stored = ds.create_attested_node(n.clone()).await.unwrap();
        assert!(stored.created_at > 0 && stored.updated_at == stored.created_at);
        assert_eq!(
            stored.selectors,
            sels(&["k8s_psat:agent_ns:spire", "k8s_psat:cluster:c"])
        );
        let expected = AttestedNode {
            selectors: stored.selectors.clone(),
            created_at: stored.created_at,
            updated_at: stored.updated_at,
            ..n.clone()
        };
        assert_eq!(stored, expected);
        assert_eq!(
            ds.fetch_attested_node(&n.spiffe_id).await.unwrap(),
            Some(expected)
        );
        assert_eq!(
            ds.fetch_attested_node(&id("spiffe://td/spire/agent/x"))
                .await
                .unwrap(),
            None
        );

        // Re-attestation replaces selectors and serial.
        let mut again = n.clone();
        again.selectors = sels(&["k8s_psat:cluster:c"]);
        again.cert_serial = "03".into();
        again.new_cert_serial = None;
        let replaced = ds.create_attested_node(again).await.unwrap();
        assert_eq!(replaced.created_at, stored.created_at);
        let fetched = ds.fetch_attested_node(&n.spiffe_id).await.unwrap().unwrap();
        assert_eq!(fetched, replaced);
        assert_eq!(fetched.selectors, sels(&["k8s_psat:cluster:c"]));
        assert_eq!(fetched.cert_serial, "03");
        assert_eq!(
            ds.count_attested_nodes(&NodeFilter::default())
                .await
                .unwrap(),
            1
        );
    }

    async fn banned_node_cannot_reattest_until_evicted(ds: Datastore) {
        let n = node("spiffe://td/spire/agent/a");
        ds.create_attested_node(n.clone()).await.unwrap();
        let banned = ds
            .set_attested_node_banned(&n.spiffe_id, true)
            .await
            .unwrap();
        assert!(banned.banned);
        let err = ds.create_attested_node(n.clone()).await.unwrap_err();
        assert!(matches!(err, DatastoreError::Banned(_)), "{err}");
        assert!(
            ds.fetch_attested_node(&n.spiffe_id)
                .await
                .unwrap()
                .unwrap()
                .banned
        );

        let evicted = ds.delete_attested_node(&n.spiffe_id).await.unwrap();
        assert_eq!(evicted, banned);
        assert!(
            ds.fetch_attested_node(&n.spiffe_id)
                .await
                .unwrap()
                .is_none()
        );
        assert!(matches!(
            ds.delete_attested_node(&n.spiffe_id).await,
            Err(DatastoreError::NotFound(_))
        ));
        assert!(!ds.create_attested_node(n).await.unwrap().banned);
    }

    async fn update_serial(ds: Datastore) {
        let n = node("spiffe://td/spire/agent/a");
        ds.create_attested_node(n.clone()).await.unwrap();
        let updated = ds
            .update_attested_node_serial(&n.spiffe_id, "0a", 2000, Some("0b"))
            .await
            .unwrap();
        assert_eq!(
            (
                updated.cert_serial.as_str(),
                updated.cert_expires_at,
                updated.new_cert_serial.as_deref()
            ),
            ("0a", 2000, Some("0b"))
        );
        assert_eq!(
            ds.fetch_attested_node(&n.spiffe_id).await.unwrap(),
            Some(updated)
        );
        let unknown = id("spiffe://td/spire/agent/x");
        assert!(matches!(
            ds.update_attested_node_serial(&unknown, "1", 1, None).await,
            Err(DatastoreError::NotFound(_))
        ));
        assert!(matches!(
            ds.set_attested_node_banned(&unknown, true).await,
            Err(DatastoreError::NotFound(_))
        ));
    }

    async fn list_filters_and_pages(ds: Datastore) {
        for i in 0..7 {
            let mut n = node(&format!("spiffe://td/spire/agent/n{i}"));
            n.cert_expires_at = 100 * i;
            n.selectors = sels(&[
                &format!("t:i:{i}"),
                if i % 2 == 0 { "t:even" } else { "t:odd" },
            ]);
            if i == 6 {
                n.attestation_type = "k8s_psat".into();
            }
            ds.create_attested_node(n).await.unwrap();
        }
        ds.set_attested_node_banned(&id("spiffe://td/spire/agent/n1"), true)
            .await
            .unwrap();

        let mut seen = Vec::new();
        let mut token = None;
        loop {
            let (page, next) = ds
                .list_attested_nodes(&NodeFilter::default(), 3, token.as_deref())
                .await
                .unwrap();
            seen.extend(page.into_iter().map(|n| n.spiffe_id.path().to_owned()));
            token = next;
            if token.is_none() {
                break;
            }
        }
        let want: Vec<String> = (0..7).map(|i| format!("/spire/agent/n{i}")).collect();
        assert_eq!(seen, want);

        let paths = |nodes: Vec<AttestedNode>| -> Vec<String> {
            nodes
                .into_iter()
                .map(|n| n.spiffe_id.path().to_owned())
                .collect()
        };
        let cases = [
            (
                NodeFilter {
                    banned: Some(true),
                    ..NodeFilter::default()
                },
                vec!["n1"],
            ),
            (
                NodeFilter {
                    attestation_type: Some("k8s_psat".into()),
                    ..NodeFilter::default()
                },
                vec!["n6"],
            ),
            (
                NodeFilter {
                    expires_before: Some(200),
                    ..NodeFilter::default()
                },
                vec!["n0", "n1"],
            ),
            (
                NodeFilter {
                    selectors: Some((sels(&["t:odd"]), SelectorMatch::Superset)),
                    banned: Some(false),
                    ..NodeFilter::default()
                },
                vec!["n3", "n5"],
            ),
            (
                NodeFilter {
                    selectors: Some((sels(&["t:even", "t:i:2"]), SelectorMatch::Exact)),
                    ..NodeFilter::default()
                },
                vec!["n2"],
            ),
            (
                NodeFilter {
                    can_reattest: Some(true),
                    ..NodeFilter::default()
                },
                vec!["n6"],
            ),
            (
                NodeFilter {
                    can_reattest: Some(false),
                    expires_before: Some(300),
                    banned: Some(false),
                    ..NodeFilter::default()
                },
                vec!["n0", "n2"],
            ),
        ];
        for (filter, want) in cases {
            let want: Vec<String> = want.iter().map(|n| format!("/spire/agent/{n}")).collect();
            assert_eq!(
                paths(ds.list_attested_nodes(&filter, 100, None).await.unwrap().0),
                want,
                "{filter:?}"
            );
            assert_eq!(
                ds.count_attested_nodes(&filter).await.unwrap(),
                want.len() as u64
            );
        }
    }

    async fn prune_keeps_banned_and_unexpired(ds: Datastore) {
        for (name, expires) in [("old", 10), ("banned", 10), ("new", 1000)] {
            let mut n = node(&format!("spiffe://td/spire/agent/{name}"));
            n.cert_expires_at = expires;
            n.selectors = sels(&["t:x"]);
            ds.create_attested_node(n).await.unwrap();
        }
        ds.set_attested_node_banned(&id("spiffe://td/spire/agent/banned"), true)
            .await
            .unwrap();
        assert_eq!(
            ds.prune_attested_nodes(10).await.unwrap(),
            0,
            "cert_expires_at < now only"
        );
        assert_eq!(ds.prune_attested_nodes(500).await.unwrap(), 1);
        assert!(
            ds.fetch_attested_node(&id("spiffe://td/spire/agent/old"))
                .await
                .unwrap()
                .is_none()
        );
        assert_eq!(
            ds.count_attested_nodes(&NodeFilter::default())
                .await
                .unwrap(),
            2
        );
        let selectors = scalar(&ds, "SELECT COUNT(*) FROM node_selectors").await;
        assert_eq!(selectors, 2, "pruned node's selectors went with it");
    }

    /// The next change; a guard against a hang, not a timing assertion.
    async fn next(rx: &mut tokio::sync::broadcast::Receiver<Change>) -> Change {
        tokio::time::timeout(std::time::Duration::from_secs(30), rx.recv())
            .await
            .expect("no change within 30 s")
            .unwrap()
    }

    async fn prune_works_through_more_than_one_batch(ds: Datastore) {
        let n = PRUNE_BATCH + 3;
        let mut changes = ds.subscribe_changes();
        for i in 0..n {
            let mut old = node(&format!("spiffe://td/spire/agent/old{i}"));
            old.cert_expires_at = 10;
            ds.create_attested_node(old).await.unwrap();
        }
        let new = ds
            .create_attested_node(node("spiffe://td/spire/agent/new"))
            .await
            .unwrap();
        // On PostgreSQL changes arrive through the listener, in commit order: skip the creations.
        while next(&mut changes).await != Change::AttestedNode(new.spiffe_id.clone()) {}
        assert_eq!(ds.prune_attested_nodes(11).await.unwrap(), n as u64);
        assert_eq!(
            ds.count_attested_nodes(&NodeFilter::default())
                .await
                .unwrap(),
            1
        );
        // Each pruned node is announced (on PostgreSQL through the listener, asynchronously).
        let mut announced = std::collections::HashSet::new();
        while announced.len() < n as usize {
            if let Change::AttestedNode(id) = next(&mut changes).await {
                assert!(id.path().starts_with("/spire/agent/old"), "{id}");
                announced.insert(id);
            }
        }
    }
}
