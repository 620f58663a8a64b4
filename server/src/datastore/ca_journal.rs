//! CA journals: one opaque blob per server replica (its key and certificate history), and the
//! trust domain's bundle built from all of them.
//!
//! `ca_journal` (one row, id = 1) is the journal of the single server that came before
//! replicas: the first replica to start after the upgrade claims it (see
//! [`Datastore::fetch_replica_journal`]).

use sigil_proto::{Bundle, TrustDomain};

use super::bundles::{decode, encode};
use super::{Change, Datastore, DatastoreError, unix_now};

/// One replica's stored journal.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplicaJournal {
    pub replica_id: String,
    pub data: Vec<u8>,
    /// Unix seconds of its last write.
    pub updated_at: i64,
}

/// What [`Datastore::store_replica_journal`]'s caller computes from every journal.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JournalUnion {
    /// The trust domain's bundle to store.
    pub bundle: Bundle,
    /// Replicas whose journals are to be deleted (every authority expired: gone for good).
    pub drop_replicas: Vec<String>,
}

/// `(replica_id, data, updated_at)` as read from `ca_journals`.
type JournalRow = (String, Vec<u8>, i64);

impl Datastore {
    /// The pre-replica journal, if the single server ever saved one and no replica claimed it.
    pub async fn fetch_ca_journal(&self) -> Result<Option<Vec<u8>>, DatastoreError> {
        let data: Option<Vec<u8>> = on_pool!(&self.pool, p => {
            sqlx::query_scalar("SELECT data FROM ca_journal WHERE id = 1")
                .fetch_optional(p)
                .await?
        });
        Ok(data)
    }

    /// Replaces the pre-replica journal (kept for tools and tests reading an old database).
    pub async fn set_ca_journal(&self, data: &[u8]) -> Result<(), DatastoreError> {
        on_pool!(&self.pool, p => {
            sqlx::query(
                "INSERT INTO ca_journal (id, data, updated_at) VALUES (1, $1, $2) \
                 ON CONFLICT (id) DO UPDATE SET data = excluded.data, updated_at = excluded.updated_at",
            )
            .bind(data)
            .bind(unix_now())
            .execute(p)
            .await?.rows_affected()
        });
        Ok(())
    }

    /// The journal of `replica_id`. A replica without one claims the pre-replica journal, in
    /// one transaction so that exactly one replica gets it: after an upgrade, the server that
    /// restarts with the old data directory resumes its CA.
    pub async fn fetch_replica_journal(
        &self,
        replica_id: &str,
    ) -> Result<Option<Vec<u8>>, DatastoreError> {
        let mut tx = self.begin_write().await?;
        let own: Option<Vec<u8>> = on_tx!(&mut tx, c => {
            sqlx::query_scalar("SELECT data FROM ca_journals WHERE replica_id = $1")
                .bind(replica_id)
                .fetch_optional(&mut **c)
                .await?
        });
        if own.is_some() {
            self.commit(tx, Vec::new()).await?;
            return Ok(own);
        }
        let legacy: Option<Vec<u8>> = on_tx!(&mut tx, c => {
            sqlx::query_scalar("DELETE FROM ca_journal WHERE id = 1 RETURNING data")
                .fetch_optional(&mut **c)
                .await?
        });
        if let Some(data) = &legacy {
            on_tx!(&mut tx, c => {
                sqlx::query(
                    "INSERT INTO ca_journals (replica_id, data, updated_at) VALUES ($1, $2, $3)",
                )
                .bind(replica_id)
                .bind(data)
                .bind(unix_now())
                .execute(&mut **c)
                .await?
                .rows_affected()
            });
            tracing::info!(replica_id, "claimed the single-server CA journal");
        }
        self.commit(tx, Vec::new()).await?;
        Ok(legacy)
    }

    /// Every replica's journal, in replica-ID order.
    pub async fn list_replica_journals(&self) -> Result<Vec<ReplicaJournal>, DatastoreError> {
        let rows: Vec<JournalRow> = on_pool!(&self.pool, p => {
            sqlx::query_as("SELECT replica_id, data, updated_at FROM ca_journals ORDER BY replica_id")
                .fetch_all(p)
                .await?
        });
        Ok(rows.into_iter().map(replica_journal).collect())
    }

    /// Stores the journal of `replica_id`, then, in the same write transaction, reads every
    /// replica's journal and the stored bundle of `trust_domain`, lets `union` compute the new
    /// bundle from them, and stores it. Replicas persisting at once are serialized by the write
    /// lock, so the last bundle written always reflects every journal. Returns the stored
    /// bundle; every replica hears of it through the change feed.
    pub async fn store_replica_journal(
        &self,
        replica_id: &str,
        data: &[u8],
        trust_domain: &TrustDomain,
        union: impl FnOnce(Option<Bundle>, &[ReplicaJournal]) -> Result<JournalUnion, DatastoreError>,
    ) -> Result<Bundle, DatastoreError> {
        let now = unix_now();
        let mut tx = self.begin_write().await?;
        let previous: Option<String> = on_tx!(&mut tx, c => {
            sqlx::query(
                "INSERT INTO ca_journals (replica_id, data, updated_at) VALUES ($1, $2, $3) \
                 ON CONFLICT (replica_id) DO UPDATE SET data = excluded.data, updated_at = excluded.updated_at",
            )
            .bind(replica_id)
            .bind(data)
            .bind(now)
            .execute(&mut **c)
            .await?;
            sqlx::query_scalar("SELECT data FROM bundles WHERE trust_domain = $1")
                .bind(trust_domain.as_str())
                .fetch_optional(&mut **c)
                .await?
        });
        let previous = previous
            .map(|p| decode(trust_domain.clone(), &p))
            .transpose()?;
        let rows: Vec<JournalRow> = on_tx!(&mut tx, c => {
            sqlx::query_as("SELECT replica_id, data, updated_at FROM ca_journals ORDER BY replica_id")
                .fetch_all(&mut **c)
                .await?
        });
        let journals: Vec<ReplicaJournal> = rows.into_iter().map(replica_journal).collect();
        // A failed union returns before commit: the transaction rolls back on drop.
        let JournalUnion {
            bundle,
            drop_replicas,
        } = union(previous, &journals)?;
        if bundle.trust_domain != *trust_domain {
            return Err(DatastoreError::InvalidArgument(format!(
                "union bundle is for {}, not {trust_domain}",
                bundle.trust_domain
            )));
        }
        let encoded = encode(&bundle)?;
        on_tx!(&mut tx, c => {
            sqlx::query(
                "INSERT INTO bundles (trust_domain, data, updated_at) VALUES ($1, $2, $3) \
                 ON CONFLICT (trust_domain) DO UPDATE \
                 SET data = excluded.data, updated_at = excluded.updated_at",
            )
            .bind(trust_domain.as_str())
            .bind(&encoded)
            .bind(now)
            .execute(&mut **c)
            .await?;
            for id in drop_replicas.iter().filter(|id| *id != replica_id) {
                sqlx::query("DELETE FROM ca_journals WHERE replica_id = $1")
                    .bind(id)
                    .execute(&mut **c)
                    .await?;
            }
        });
        self.commit(tx, vec![Change::Bundle(trust_domain.clone())])
            .await?;
        Ok(bundle)
    }
}

fn replica_journal((replica_id, data, updated_at): JournalRow) -> ReplicaJournal {
    ReplicaJournal {
        replica_id,
        data,
        updated_at,
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::on_both_backends;
    use super::*;

    on_both_backends!(
        set_and_replace,
        the_first_replica_claims_the_single_server_journal,
        store_computes_the_union_in_the_same_transaction,
        a_failed_union_changes_nothing
    );

    fn td() -> TrustDomain {
        TrustDomain::new("example.org").unwrap()
    }

    async fn set_and_replace(ds: Datastore) {
        assert_eq!(ds.fetch_ca_journal().await.unwrap(), None);
        ds.set_ca_journal(&[0, 1, 2, 255]).await.unwrap();
        assert_eq!(
            ds.fetch_ca_journal().await.unwrap(),
            Some(vec![0, 1, 2, 255])
        );
        ds.set_ca_journal(b"second").await.unwrap();
        assert_eq!(
            ds.fetch_ca_journal().await.unwrap(),
            Some(b"second".to_vec())
        );
    }

    async fn the_first_replica_claims_the_single_server_journal(ds: Datastore) {
        ds.set_ca_journal(b"old").await.unwrap();
        assert_eq!(
            ds.fetch_replica_journal("a").await.unwrap(),
            Some(b"old".to_vec())
        );
        assert_eq!(ds.fetch_ca_journal().await.unwrap(), None);
        assert_eq!(ds.fetch_replica_journal("b").await.unwrap(), None);
        assert_eq!(
            ds.fetch_replica_journal("a").await.unwrap(),
            Some(b"old".to_vec())
        );
    }

    async fn store_computes_the_union_in_the_same_transaction(ds: Datastore) {
        // Each "journal" is one byte, the union's sequence the sum of them: shows that the
        // closure saw every journal, its own write included, and the previous bundle.
        let sum = |previous: Option<Bundle>, journals: &[ReplicaJournal]| {
            let mut bundle = Bundle::new(td());
            bundle.sequence = previous.map_or(0, |b| b.sequence * 100)
                + journals.iter().map(|j| u64::from(j.data[0])).sum::<u64>();
            Ok(JournalUnion {
                bundle,
                drop_replicas: vec!["a".to_owned(), "gone".to_owned()],
            })
        };
        let stored = ds
            .store_replica_journal("a", &[1], &td(), sum)
            .await
            .unwrap();
        assert_eq!(stored.sequence, 1);
        let stored = ds
            .store_replica_journal("b", &[2], &td(), sum)
            .await
            .unwrap();
        // Previous 1 × 100, plus a = 1 and b = 2.
        assert_eq!(stored.sequence, 103);
        assert_eq!(ds.fetch_bundle(&td()).await.unwrap(), Some(stored));
        let ids: Vec<String> = ds
            .list_replica_journals()
            .await
            .unwrap()
            .into_iter()
            .map(|j| j.replica_id)
            .collect();
        // "a" was dropped by b's write; a replica never drops its own journal.
        assert_eq!(ids, vec!["b".to_owned()]);
    }

    async fn a_failed_union_changes_nothing(ds: Datastore) {
        let err = ds
            .store_replica_journal("a", b"x", &td(), |_, _| {
                Err(DatastoreError::Corrupt("no".into()))
            })
            .await
            .unwrap_err();
        assert!(matches!(err, DatastoreError::Corrupt(_)), "{err}");
        assert!(ds.list_replica_journals().await.unwrap().is_empty());
        assert_eq!(ds.fetch_bundle(&td()).await.unwrap(), None);
    }
}
