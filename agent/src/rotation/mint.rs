//! One `BatchMintX509SVID` call for either kind of workload SVID: a fresh key and CSR for each
//! SVID, named with the pod it is minted for, the server's answers matched to the requests,
//! what it signed installed in the cache, the outcome counted.

use std::hash::Hash;

use sigil_proto::SpiffeId;
use sigil_proto::sigil::agent::v1::{BatchMintX509svidRequest, X509svidRequest};
use tracing::warn;

use super::schedule::{fresh_refresh_at, random_jitter};
use super::workload::{Minted, Outcome};
use crate::cache::{CacheError, CachedX509Svid, RenderedKey};
use crate::csr::{KeyType, new_key_and_csr};
use crate::ops::Metrics;
use crate::server_client::ServerConnection;
use crate::svid_store::leaf_facts;
use sigil_common::time::unix_now;

/// What names a workload X509-SVID to the server.
pub(crate) trait SvidKey: Clone + Eq + Hash + Send + Sync {
    /// The entry it is minted for.
    fn entry_id(&self) -> &str;
    /// The SPIFFE ID asked for; `None` for the entry's own.
    fn spiffe_id(&self) -> Option<&SpiffeId>;
}

/// A fixed entry's SVID, by entry ID.
impl SvidKey for String {
    fn entry_id(&self) -> &str {
        self
    }

    fn spiffe_id(&self) -> Option<&SpiffeId> {
        None
    }
}

/// A template entry's SVID for one rendered ID.
impl SvidKey for RenderedKey {
    fn entry_id(&self) -> &str {
        &self.entry_id
    }

    fn spiffe_id(&self) -> Option<&SpiffeId> {
        Some(&self.spiffe_id)
    }
}

/// One X509-SVID to mint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Ask<K> {
    pub(crate) key: K,
    /// The entry revision it is minted for.
    pub(crate) revision: i64,
    /// The pod it is minted for (see `X509SVIDRequest.pod_uid`), if any.
    pub(crate) pod_uid: Option<String>,
}

/// Mints `batch` in one call and hands what the server signed to `install`, which returns the
/// SVIDs it refused. Answers are matched to requests by position: the server answers in
/// request order, and one entry may appear several times (template instances).
pub(crate) async fn mint_and_install<K: SvidKey>(
    connection: &ServerConnection,
    metrics: &Metrics,
    key_type: KeyType,
    batch: Vec<Ask<K>>,
    install: impl FnOnce(Vec<(K, CachedX509Svid)>) -> Vec<(K, CacheError)>,
) -> Result<Outcome<K>, tonic::Status> {
    let mut keys = Vec::with_capacity(batch.len());
    let mut requests = Vec::with_capacity(batch.len());
    for Ask {
        key,
        revision,
        pod_uid,
    } in batch
    {
        let (private_key, csr) =
            new_key_and_csr(key_type).map_err(|e| tonic::Status::internal(e.to_string()))?;
        requests.push(X509svidRequest {
            entry_id: key.entry_id().to_owned(),
            csr,
            spiffe_id: key.spiffe_id().map(ToString::to_string).unwrap_or_default(),
            pod_uid: pod_uid.unwrap_or_default(),
        });
        keys.push((key, private_key, revision));
    }
    let response = crate::server_client::bounded(
        connection
            .client()
            .batch_mint_x509svid(BatchMintX509svidRequest { requests }),
    )
    .await?
    .into_inner();

    let mut installs = Vec::with_capacity(keys.len());
    let mut minted = Vec::with_capacity(keys.len());
    let mut failed = Vec::new();
    let mut results = response.svids.into_iter();
    for (key, private_key, revision) in keys {
        let result = results.next().filter(|r| r.entry_id == key.entry_id());
        let facts = result
            .as_ref()
            .and_then(|r| r.svid_chain.first())
            .and_then(|leaf| leaf_facts(leaf).ok());
        let (Some(result), Some(facts)) = (result, facts) else {
            warn!(entry_id = %key.entry_id(), spiffe_id = key.spiffe_id().map(display), "server returned no usable X509-SVID; will retry");
            failed.push(key);
            continue;
        };
        minted.push((
            key.clone(),
            Minted {
                revision,
                expires_at: facts.not_after,
                refresh_at: fresh_refresh_at(
                    facts.not_before,
                    facts.not_after,
                    unix_now(),
                    random_jitter(),
                ),
            },
        ));
        installs.push((
            key,
            CachedX509Svid {
                chain: result.svid_chain,
                private_key_pkcs8: private_key,
                expires_at: facts.not_after,
            },
        ));
    }
    for (key, err) in install(installs) {
        warn!(entry_id = %key.entry_id(), spiffe_id = key.spiffe_id().map(display), error = %err, "X509-SVID not installed; will retry");
        minted.retain(|(k, _)| k != &key);
        failed.push(key);
    }
    metrics.svid_mint(true, minted.len());
    metrics.svid_mint(false, failed.len());
    Ok(Outcome { minted, failed })
}
