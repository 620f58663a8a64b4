//! Join tokens: single-use secrets an operator hands to an agent for its first attestation.
//!
//! Only the token's SHA-256 is stored, so a copy of the database reveals no usable token. The
//! lookup is by that hash: comparing hashes of a high-entropy secret leaks nothing useful
//! through timing, so no constant-time comparison is needed.

use ring::digest;

use super::{Datastore, DatastoreError, PRUNE_BATCH, is_unique_violation};

impl Datastore {
    /// Stores a join token valid until `expires_at` (Unix seconds, inclusive).
    pub async fn create_join_token(
        &self,
        token: &str,
        expires_at: i64,
    ) -> Result<(), DatastoreError> {
        let hash = token_hash(token)?;
        let result = on_pool!(&self.pool, p => {
            sqlx::query("INSERT INTO join_tokens (token_hash, expires_at) VALUES ($1, $2)")
                .bind(&hash)
                .bind(expires_at)
                .execute(p)
                .await
                .map(|_| ())
        });
        match result {
            Ok(()) => Ok(()),
            // Never echo the token itself.
            Err(e) if is_unique_violation(&e) => {
                Err(DatastoreError::AlreadyExists("join token".into()))
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Consumes a join token: deletes it and returns its expiry if it exists and has not
    /// expired at `now`, else `None`. One statement, so of two concurrent takes only one wins.
    pub async fn take_join_token(
        &self,
        token: &str,
        now: i64,
    ) -> Result<Option<i64>, DatastoreError> {
        let hash = token_hash(token)?;
        let expires_at: Option<i64> = on_pool!(&self.pool, p => {
            sqlx::query_scalar(
                "DELETE FROM join_tokens WHERE token_hash = $1 AND expires_at >= $2 \
                 RETURNING expires_at",
            )
            .bind(&hash)
            .bind(now)
            .fetch_optional(p)
            .await?
        });
        Ok(expires_at)
    }

    /// Deletes the tokens that expired before `now`; returns how many. Works in batches, one
    /// short write transaction each.
    pub async fn prune_join_tokens(&self, now: i64) -> Result<u64, DatastoreError> {
        self.prune_in_batches(|tx| {
            Box::pin(async move {
                let deleted = on_tx!(&mut *tx, c => {
                    sqlx::query(
                        "DELETE FROM join_tokens WHERE token_hash IN \
                         (SELECT token_hash FROM join_tokens WHERE expires_at < $1 LIMIT $2)",
                    )
                    .bind(now)
                    .bind(PRUNE_BATCH)
                    .execute(&mut **c)
                    .await?
                    .rows_affected()
                });
                Ok((deleted, Vec::new()))
            })
        })
        .await
    }
}

/// SHA-256 of the token, hex.
fn token_hash(token: &str) -> Result<String, DatastoreError> {
    if token.is_empty() {
        return Err(DatastoreError::InvalidArgument(
            "join token is empty".into(),
        ));
    }
    Ok(hex::encode(digest::digest(
        &digest::SHA256,
        token.as_bytes(),
    )))
}

#[cfg(test)]
mod tests {
    use super::super::tests::on_both_backends;
    use super::*;

    on_both_backends!(
        prune_works_through_more_than_one_batch,
        single_use,
        expired_token_is_refused_and_pruned,
        concurrent_takes_only_one_wins,
        only_the_hash_is_stored
    );

    async fn single_use(ds: Datastore) {
        ds.create_join_token("secret-token", 100).await.unwrap();
        assert!(matches!(
            ds.create_join_token("secret-token", 100).await,
            Err(DatastoreError::AlreadyExists(m)) if !m.contains("secret")
        ));
        assert_eq!(ds.take_join_token("other", 50).await.unwrap(), None);
        assert_eq!(
            ds.take_join_token("secret-token", 100).await.unwrap(),
            Some(100)
        );
        assert_eq!(ds.take_join_token("secret-token", 50).await.unwrap(), None);
    }

    async fn expired_token_is_refused_and_pruned(ds: Datastore) {
        ds.create_join_token("t", 100).await.unwrap();
        assert_eq!(ds.take_join_token("t", 101).await.unwrap(), None);
        assert_eq!(ds.prune_join_tokens(100).await.unwrap(), 0);
        assert_eq!(ds.prune_join_tokens(101).await.unwrap(), 1);
        assert_eq!(ds.take_join_token("t", 0).await.unwrap(), None);
    }

    async fn concurrent_takes_only_one_wins(ds: Datastore) {
        for round in 0..20 {
            let token = format!("t{round}");
            ds.create_join_token(&token, 100).await.unwrap();
            let (a, b) = tokio::join!(ds.take_join_token(&token, 0), ds.take_join_token(&token, 0));
            let wins = [a.unwrap(), b.unwrap()]
                .iter()
                .filter(|r| r.is_some())
                .count();
            assert_eq!(wins, 1, "round {round}");
        }
    }

    async fn only_the_hash_is_stored(ds: Datastore) {
        ds.create_join_token("raw-token-value", 100).await.unwrap();
        let sql = "SELECT token_hash FROM join_tokens";
        let stored: String =
            on_pool!(&ds.pool, p => sqlx::query_scalar(sql).fetch_one(p).await.unwrap());
        assert_eq!(stored.len(), 64);
        assert!(!stored.contains("raw-token-value"));
        assert!(matches!(
            ds.create_join_token("", 1).await,
            Err(DatastoreError::InvalidArgument(_))
        ));
    }

    async fn prune_works_through_more_than_one_batch(ds: Datastore) {
        let n = PRUNE_BATCH + 7;
        for i in 0..n {
            ds.create_join_token(&format!("old-{i}"), 10).await.unwrap();
        }
        ds.create_join_token("fresh", 1000).await.unwrap();
        assert_eq!(ds.prune_join_tokens(11).await.unwrap(), n as u64);
        assert_eq!(ds.prune_join_tokens(11).await.unwrap(), 0);
        assert_eq!(ds.take_join_token("fresh", 11).await.unwrap(), Some(1000));
    }
}
