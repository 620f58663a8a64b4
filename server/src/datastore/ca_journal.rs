//! The CA journal: one opaque blob the CA persists (its key and certificate history).

use super::{Datastore, DatastoreError, unix_now};

impl Datastore {
    /// The stored journal, if the CA ever saved one.
    pub async fn fetch_ca_journal(&self) -> Result<Option<Vec<u8>>, DatastoreError> {
        let data: Option<Vec<u8>> = on_pool!(&self.pool, p => {
            sqlx::query_scalar("SELECT data FROM ca_journal WHERE id = 1")
                .fetch_optional(p)
                .await?
        });
        Ok(data)
    }

    /// Replaces the journal.
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
}

#[cfg(test)]
mod tests {
    use super::super::Datastore;
    use super::super::tests::on_both_backends;

    on_both_backends!(set_and_replace);

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
}
