//! Trust bundles by trust domain: our own and federated ones.
//!
//! Stored in the datastore's own JSON encoding rather than the SPIFFE bundle format, which has
//! no place for a JWT authority's expiry and would re-parse every certificate on each read.

use super::{Change, Datastore, DatastoreError, Pool, Tx, unix_now};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde::{Deserialize, Serialize};
use sigil_proto::{Bundle, JwtAuthority, TrustDomain};

/// The stored form of a [`Bundle`] (without its trust domain, which is the row's key).
#[derive(Serialize, Deserialize)]
struct StoredBundle {
    /// Base64 DER certificates.
    x509_authorities: Vec<String>,
    jwt_authorities: Vec<StoredJwtAuthority>,
    sequence: u64,
    refresh_hint: Option<u64>,
    /// Base64 DER; absent in bundles stored before taint existed.
    #[serde(default)]
    tainted_x509_authorities: Vec<String>,
}

#[derive(Serialize, Deserialize)]
struct StoredJwtAuthority {
    key_id: String,
    /// Base64 DER SubjectPublicKeyInfo.
    public_key: String,
    expires_at: i64,
    #[serde(default)]
    tainted: bool,
}

impl Datastore {
    /// The bundle of `trust_domain`, if stored.
    pub async fn fetch_bundle(
        &self,
        trust_domain: &TrustDomain,
    ) -> Result<Option<Bundle>, DatastoreError> {
        let data: Option<String> = on_pool!(&self.pool, p => {
            sqlx::query_scalar("SELECT data FROM bundles WHERE trust_domain = $1")
                .bind(trust_domain.as_str())
                .fetch_optional(p)
                .await?
        });
        data.map(|d| decode(trust_domain.clone(), &d)).transpose()
    }

    /// Stores `bundle`, replacing any bundle of the same trust domain.
    pub async fn set_bundle(&self, bundle: &Bundle) -> Result<(), DatastoreError> {
        let mut tx = self.begin_write().await?;
        upsert(&mut tx, bundle).await?;
        self.commit(tx, vec![Change::Bundle(bundle.trust_domain.clone())])
            .await
    }

    /// Every stored bundle, in trust-domain order.
    pub async fn list_bundles(&self) -> Result<Vec<Bundle>, DatastoreError> {
        let rows: Vec<(String, String)> = on_pool!(&self.pool, p => {
            sqlx::query_as("SELECT trust_domain, data FROM bundles ORDER BY trust_domain")
                .fetch_all(p)
                .await?
        });
        rows.iter()
            .map(|(td, data)| {
                let td = TrustDomain::new(td).map_err(|e| {
                    DatastoreError::Corrupt(format!("bundle trust domain {td:?}: {e}"))
                })?;
                decode(td, data)
            })
            .collect()
    }

    /// Deletes the bundle of `trust_domain`; `NotFound` if there is none.
    pub async fn delete_bundle(&self, trust_domain: &TrustDomain) -> Result<(), DatastoreError> {
        self.delete_by_trust_domain(
            "DELETE FROM bundles WHERE trust_domain = $1",
            trust_domain,
            || format!("bundle for {trust_domain}"),
            Change::Bundle(trust_domain.clone()),
        )
        .await
    }

    /// Runs `delete` (one row keyed by `$1`, the trust domain) and publishes `change` in one
    /// transaction; `NotFound` (naming `what`) when no row went.
    pub(super) async fn delete_by_trust_domain(
        &self,
        delete: &'static str,
        trust_domain: &TrustDomain,
        what: impl FnOnce() -> String,
        change: Change,
    ) -> Result<(), DatastoreError> {
        let mut tx = self.begin_write().await?;
        let done = on_tx!(&mut tx, c => {
            sqlx::query(delete)
                .bind(trust_domain.as_str())
                .execute(&mut **c)
                .await?
                .rows_affected()
        });
        if done == 0 {
            return Err(DatastoreError::NotFound(what()));
        }
        self.commit(tx, vec![change]).await
    }

    /// The IDs of the entries whose `federates_with` names `trust_domain`, in ID order.
    pub async fn list_entry_ids_federating_with(
        &self,
        trust_domain: &TrustDomain,
    ) -> Result<Vec<String>, DatastoreError> {
        // `federates_with` is a JSON list of trust domain names; each backend has its own JSON
        // functions.
        let ids = match &self.pool {
            Pool::Sqlite(p) => {
                sqlx::query_scalar(
                    "SELECT e.id FROM registered_entries e WHERE EXISTS \
                     (SELECT 1 FROM json_each(e.federates_with) f WHERE f.value = $1) \
                     ORDER BY e.id",
                )
                .bind(trust_domain.as_str())
                .fetch_all(p)
                .await?
            }
            Pool::Postgres(p) => {
                sqlx::query_scalar(
                    "SELECT e.id FROM registered_entries e WHERE EXISTS \
                     (SELECT 1 FROM json_array_elements_text(e.federates_with::json) f \
                      WHERE f = $1) ORDER BY e.id",
                )
                .bind(trust_domain.as_str())
                .fetch_all(p)
                .await?
            }
        };
        Ok(ids)
    }

    /// How many bundles are stored, our own included.
    pub async fn count_bundles(&self) -> Result<u64, DatastoreError> {
        let n: i64 = on_pool!(&self.pool, p => {
            sqlx::query_scalar("SELECT COUNT(*) FROM bundles")
                .fetch_one(p)
                .await?
        });
        Ok(u64::try_from(n).unwrap_or(0))
    }
}

/// Stores `bundle` inside `tx`, replacing any bundle of the same trust domain; the caller
/// commits with [`Change::Bundle`].
pub(super) async fn upsert(tx: &mut Tx, bundle: &Bundle) -> Result<(), DatastoreError> {
    let data = encode(bundle)?;
    on_tx!(tx, c => {
        sqlx::query(
            "INSERT INTO bundles (trust_domain, data, updated_at) VALUES ($1, $2, $3) \
             ON CONFLICT (trust_domain) DO UPDATE \
             SET data = excluded.data, updated_at = excluded.updated_at",
        )
        .bind(bundle.trust_domain.as_str())
        .bind(&data)
        .bind(unix_now())
        .execute(&mut **c)
        .await?
        .rows_affected()
    });
    Ok(())
}

pub(super) fn encode(bundle: &Bundle) -> Result<String, DatastoreError> {
    let stored = StoredBundle {
        x509_authorities: bundle
            .x509_authorities
            .iter()
            .map(|der| STANDARD.encode(der))
            .collect(),
        jwt_authorities: bundle
            .jwt_authorities
            .iter()
            .map(|a| StoredJwtAuthority {
                key_id: a.key_id.clone(),
                public_key: STANDARD.encode(&a.public_key),
                expires_at: a.expires_at,
                tainted: a.tainted,
            })
            .collect(),
        sequence: bundle.sequence,
        refresh_hint: bundle.refresh_hint,
        tainted_x509_authorities: bundle
            .tainted_x509_authorities
            .iter()
            .map(|der| STANDARD.encode(der))
            .collect(),
    };
    serde_json::to_string(&stored)
        .map_err(|e| DatastoreError::InvalidArgument(format!("bundle cannot be encoded: {e}")))
}

pub(super) fn decode(trust_domain: TrustDomain, data: &str) -> Result<Bundle, DatastoreError> {
    let corrupt = |e: &dyn std::fmt::Display| {
        DatastoreError::Corrupt(format!("bundle for {trust_domain}: {e}"))
    };
    let stored: StoredBundle = serde_json::from_str(data).map_err(|e| corrupt(&e))?;
    let x509_authorities = stored
        .x509_authorities
        .iter()
        .map(|b| STANDARD.decode(b).map_err(|e| corrupt(&e)))
        .collect::<Result<_, _>>()?;
    let jwt_authorities = stored
        .jwt_authorities
        .into_iter()
        .map(|a| {
            Ok(JwtAuthority {
                public_key: STANDARD.decode(&a.public_key).map_err(|e| corrupt(&e))?,
                key_id: a.key_id,
                expires_at: a.expires_at,
                tainted: a.tainted,
            })
        })
        .collect::<Result<_, DatastoreError>>()?;
    let tainted_x509_authorities = stored
        .tainted_x509_authorities
        .iter()
        .map(|b| STANDARD.decode(b).map_err(|e| corrupt(&e)))
        .collect::<Result<_, _>>()?;
    Ok(Bundle {
        trust_domain: trust_domain.clone(),
        x509_authorities,
        jwt_authorities,
        sequence: stored.sequence,
        refresh_hint: stored.refresh_hint,
        tainted_x509_authorities,
    })
}

#[cfg(test)]
mod tests {
    use super::super::tests::on_both_backends;
    use super::*;

    on_both_backends!(round_trip_upsert_list_delete);

    fn bundle(td: &str, sequence: u64) -> Bundle {
        Bundle {
            trust_domain: TrustDomain::new(td).unwrap(),
            x509_authorities: vec![vec![0x30, 0x82, 1, 2], vec![0x30, 3]],
            jwt_authorities: vec![JwtAuthority {
                key_id: "kid-1".into(),
                public_key: vec![0x30, 0x59, 9],
                expires_at: 1_900_000_000,
                tainted: true,
            }],
            sequence,
            refresh_hint: Some(300),
            tainted_x509_authorities: vec![vec![0x30, 3]],
        }
    }

    async fn round_trip_upsert_list_delete(ds: Datastore) {
        let own = bundle("example.org", 1);
        let td = own.trust_domain.clone();
        assert_eq!(ds.fetch_bundle(&td).await.unwrap(), None);
        ds.set_bundle(&own).await.unwrap();
        assert_eq!(ds.fetch_bundle(&td).await.unwrap(), Some(own.clone()));

        let mut next = bundle("example.org", 2);
        next.refresh_hint = None;
        next.jwt_authorities.clear();
        ds.set_bundle(&next).await.unwrap();
        assert_eq!(ds.fetch_bundle(&td).await.unwrap(), Some(next.clone()));

        let federated = bundle("another.org", 5);
        ds.set_bundle(&federated).await.unwrap();
        assert_eq!(
            ds.list_bundles().await.unwrap(),
            vec![federated.clone(), next]
        );

        ds.delete_bundle(&td).await.unwrap();
        assert_eq!(ds.list_bundles().await.unwrap(), vec![federated]);
        assert!(matches!(
            ds.delete_bundle(&td).await,
            Err(DatastoreError::NotFound(_))
        ));
    }
}
