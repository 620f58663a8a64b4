//! Federation relationships created at run time (SPIRE's `federated_trust_domains`): the
//! trust domain, its bundle endpoint and how to authenticate it. A bundle given with one is
//! stored in `bundles` in the same transaction, as SPIRE does; deleting a relationship leaves
//! that bundle in place (SPIRE too: `bundle delete` removes it).

use sigil_proto::{Bundle, SpiffeId, TrustDomain};

use super::{Change, Datastore, DatastoreError, bundles, unix_now};
use crate::federation::config::{EndpointProfile, FederatesWith};

type Row = (String, String, String, String);

impl Datastore {
    /// Every relationship, in trust-domain order.
    pub async fn list_federation_relationships(
        &self,
    ) -> Result<Vec<FederatesWith>, DatastoreError> {
        let rows: Vec<Row> = on_pool!(&self.pool, p => {
            sqlx::query_as(
                "SELECT trust_domain, bundle_endpoint_url, bundle_endpoint_profile, \
                 endpoint_spiffe_id FROM federation_relationships ORDER BY trust_domain",
            )
            .fetch_all(p)
            .await?
        });
        rows.into_iter().map(decode).collect()
    }

    /// The relationship with `trust_domain`, if any.
    pub async fn fetch_federation_relationship(
        &self,
        trust_domain: &TrustDomain,
    ) -> Result<Option<FederatesWith>, DatastoreError> {
        let row: Option<Row> = on_pool!(&self.pool, p => {
            sqlx::query_as(
                "SELECT trust_domain, bundle_endpoint_url, bundle_endpoint_profile, \
                 endpoint_spiffe_id FROM federation_relationships WHERE trust_domain = $1",
            )
            .bind(trust_domain.as_str())
            .fetch_optional(p)
            .await?
        });
        row.map(decode).transpose()
    }

    /// Creates a relationship and stores `bundle` (if given) in one transaction;
    /// `AlreadyExists` if one exists for the trust domain.
    pub async fn create_federation_relationship(
        &self,
        relationship: &FederatesWith,
        bundle: Option<&Bundle>,
    ) -> Result<(), DatastoreError> {
        self.write_federation_relationship(relationship, bundle, true)
            .await
    }

    /// Replaces a relationship and stores `bundle` (if given; otherwise the stored one stays)
    /// in one transaction; `NotFound` if there is none for the trust domain.
    pub async fn update_federation_relationship(
        &self,
        relationship: &FederatesWith,
        bundle: Option<&Bundle>,
    ) -> Result<(), DatastoreError> {
        self.write_federation_relationship(relationship, bundle, false)
            .await
    }

    async fn write_federation_relationship(
        &self,
        r: &FederatesWith,
        bundle: Option<&Bundle>,
        create: bool,
    ) -> Result<(), DatastoreError> {
        let td = r.trust_domain.as_str();
        let (profile, endpoint_id) = match &r.profile {
            EndpointProfile::HttpsWeb => ("https_web", String::new()),
            EndpointProfile::HttpsSpiffe { endpoint_spiffe_id } => {
                ("https_spiffe", endpoint_spiffe_id.to_string())
            }
        };
        let now = unix_now();
        let mut tx = self.begin_write().await?;
        let exists: i64 = on_tx!(&mut tx, c => {
            sqlx::query_scalar("SELECT COUNT(*) FROM federation_relationships WHERE trust_domain = $1")
                .bind(td)
                .fetch_one(&mut **c)
                .await?
        });
        match (create, exists > 0) {
            (true, true) => {
                return Err(DatastoreError::AlreadyExists(format!(
                    "federation relationship with {td}"
                )));
            }
            (false, false) => {
                return Err(DatastoreError::NotFound(format!(
                    "federation relationship with {td}"
                )));
            }
            _ => {}
        }
        let sql = if create {
            "INSERT INTO federation_relationships (trust_domain, bundle_endpoint_url, \
             bundle_endpoint_profile, endpoint_spiffe_id, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $5)"
        } else {
            "UPDATE federation_relationships SET bundle_endpoint_url = $2, \
             bundle_endpoint_profile = $3, endpoint_spiffe_id = $4, updated_at = $5 \
             WHERE trust_domain = $1"
        };
        on_tx!(&mut tx, c => {
            sqlx::query(sql)
                .bind(td)
                .bind(&r.url)
                .bind(profile)
                .bind(&endpoint_id)
                .bind(now)
                .execute(&mut **c)
                .await?
                .rows_affected()
        });
        let mut changes = vec![Change::FederationRelationship(r.trust_domain.clone())];
        if let Some(bundle) = bundle {
            bundles::upsert(&mut tx, bundle).await?;
            changes.push(Change::Bundle(bundle.trust_domain.clone()));
        }
        self.commit(tx, changes).await
    }

    /// Deletes the relationship with `trust_domain` (its bundle stays); `NotFound` if none.
    pub async fn delete_federation_relationship(
        &self,
        trust_domain: &TrustDomain,
    ) -> Result<(), DatastoreError> {
        self.delete_by_trust_domain(
            "DELETE FROM federation_relationships WHERE trust_domain = $1",
            trust_domain,
            || format!("federation relationship with {trust_domain}"),
            Change::FederationRelationship(trust_domain.clone()),
        )
        .await
    }
}

fn decode((td, url, profile, endpoint_id): Row) -> Result<FederatesWith, DatastoreError> {
    let corrupt = |what: &str, e: &dyn std::fmt::Display| {
        DatastoreError::Corrupt(format!("federation relationship {td:?}: {what}: {e}"))
    };
    let trust_domain = TrustDomain::new(&td).map_err(|e| corrupt("trust domain", &e))?;
    let profile = match profile.as_str() {
        "https_web" => EndpointProfile::HttpsWeb,
        "https_spiffe" => EndpointProfile::HttpsSpiffe {
            endpoint_spiffe_id: SpiffeId::new(&endpoint_id)
                .map_err(|e| corrupt("endpoint SPIFFE ID", &e))?,
        },
        other => return Err(corrupt("profile", &other)),
    };
    Ok(FederatesWith {
        trust_domain,
        url,
        profile,
    })
}

#[cfg(test)]
mod tests {
    use super::super::tests::on_both_backends;
    use super::*;

    on_both_backends!(create_update_delete);

    fn web(td: &str, url: &str) -> FederatesWith {
        FederatesWith {
            trust_domain: TrustDomain::new(td).unwrap(),
            url: url.into(),
            profile: EndpointProfile::HttpsWeb,
        }
    }

    async fn create_update_delete(ds: Datastore) {
        let td = TrustDomain::new("other.org").unwrap();
        let mut changes = ds.subscribe_changes();
        let a = web("other.org", "https://a.example");
        ds.create_federation_relationship(&a, None).await.unwrap();
        assert!(matches!(
            ds.create_federation_relationship(&a, None).await,
            Err(DatastoreError::AlreadyExists(_))
        ));
        assert_eq!(ds.fetch_bundle(&td).await.unwrap(), None);

        let mut bundle = Bundle::new(td.clone());
        bundle.x509_authorities = vec![vec![0x30, 1]];
        let b = FederatesWith {
            url: "https://b.example".into(),
            profile: EndpointProfile::HttpsSpiffe {
                endpoint_spiffe_id: SpiffeId::new("spiffe://other.org/spire/server").unwrap(),
            },
            ..a.clone()
        };
        ds.update_federation_relationship(&b, Some(&bundle))
            .await
            .unwrap();
        assert_eq!(
            ds.fetch_federation_relationship(&td).await.unwrap(),
            Some(b.clone())
        );
        assert_eq!(ds.fetch_bundle(&td).await.unwrap(), Some(bundle.clone()));
        assert!(matches!(
            ds.update_federation_relationship(&web("none.org", "https://x"), None)
                .await,
            Err(DatastoreError::NotFound(_))
        ));
        ds.create_federation_relationship(&web("a.org", "https://c.example"), None)
            .await
            .unwrap();
        let listed = ds.list_federation_relationships().await.unwrap();
        assert_eq!(listed, vec![web("a.org", "https://c.example"), b]);

        ds.delete_federation_relationship(&td).await.unwrap();
        assert_eq!(ds.fetch_federation_relationship(&td).await.unwrap(), None);
        assert_eq!(
            ds.fetch_bundle(&td).await.unwrap(),
            Some(bundle),
            "the bundle outlives the relationship"
        );
        assert!(matches!(
            ds.delete_federation_relationship(&td).await,
            Err(DatastoreError::NotFound(_))
        ));
        // Every write announced itself (replicas follow through the change feed).
        let mut seen = Vec::new();
        while let Ok(Ok(c)) =
            tokio::time::timeout(std::time::Duration::from_secs(2), changes.recv()).await
        {
            seen.push(c);
            if seen.len() == 5 {
                break;
            }
        }
        assert_eq!(
            seen,
            vec![
                Change::FederationRelationship(td.clone()),
                Change::FederationRelationship(td.clone()),
                Change::Bundle(td.clone()),
                Change::FederationRelationship(TrustDomain::new("a.org").unwrap()),
                Change::FederationRelationship(td),
            ]
        );
    }
}
