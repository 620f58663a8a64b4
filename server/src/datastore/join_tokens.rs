//! Join tokens: single-use secrets an operator hands to an agent for its first attestation.
//!
//! Only the token's SHA-256 is stored, so a copy of the database reveals no usable token. The
//! lookup is by that hash: comparing hashes of a high-entropy secret leaks nothing useful
//! through timing, so no constant-time comparison is needed.

use ring::digest;

use super::{Datastore, DatastoreError, is_unique_violation};

impl Datastore {
    /// Stores a join token valid until `expires_at` (Unix seconds, inclusive).
    pub async fn create_join_token(
        &self,
        token: &str,
        expires_at: i64,
    ) -> Result<(), DatastoreError> {
        let result = sqlx::query("INSERT INTO join_tokens (token_hash, expires_at) VALUES (?, ?)")
            .bind(token_hash(token)?)
            .bind(expires_at)
            .execute(&self.pool)
            .await;
        match result {
            Ok(_) => Ok(()),
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
        let expires_at: Option<i64> = sqlx::query_scalar(
            "DELETE FROM join_tokens WHERE token_hash = ? AND expires_at >= ? RETURNING expires_at",
        )
        .bind(token_hash(token)?)
        .bind(now)
        .fetch_optional(&self.pool)
        .await?;
        Ok(expires_at)
    }

    /// Deletes the tokens that expired before `now`; returns how many.
    pub async fn prune_join_tokens(&self, now: i64) -> Result<u64, DatastoreError> {
        let done = sqlx::query("DELETE FROM join_tokens WHERE expires_at < ?")
            .bind(now)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected())
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
    use super::super::tests::store;
    use super::*;

    #[tokio::test]
    async fn single_use() {
        let (_dir, ds) = store().await;
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

    #[tokio::test]
    async fn expired_token_is_refused_and_pruned() {
        let (_dir, ds) = store().await;
        ds.create_join_token("t", 100).await.unwrap();
        assert_eq!(ds.take_join_token("t", 101).await.unwrap(), None);
        assert_eq!(ds.prune_join_tokens(100).await.unwrap(), 0);
        assert_eq!(ds.prune_join_tokens(101).await.unwrap(), 1);
        assert_eq!(ds.take_join_token("t", 0).await.unwrap(), None);
    }

    #[tokio::test]
    async fn concurrent_takes_only_one_wins() {
        let (_dir, ds) = store().await;
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

    #[tokio::test]
    async fn only_the_hash_is_stored() {
        let (_dir, ds) = store().await;
        ds.create_join_token("raw-token-value", 100).await.unwrap();
        let stored: String = sqlx::query_scalar("SELECT token_hash FROM join_tokens")
            .fetch_one(&ds.pool)
            .await
            .unwrap();
        assert_eq!(stored.len(), 64);
        assert!(!stored.contains("raw-token-value"));
        assert!(matches!(
            ds.create_join_token("", 1).await,
            Err(DatastoreError::InvalidArgument(_))
        ));
    }
}
