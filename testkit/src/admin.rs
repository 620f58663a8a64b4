//! Driving the server's admin API straight over its Unix socket, for tests that need more than
//! the CLI gives: bulk loads, exact gRPC codes, writes racing a kill; and the benchmark's loads.
//!
//! [`uds_channel`] is the binaries' own Unix-socket gRPC channel (`sigil_common::uds`), for the
//! admin API and the Workload API alike.

use std::collections::BTreeMap;
use std::path::Path;

use sigil_proto::limits::ADMIN_API_MAX_MESSAGE;
use sigil_proto::sigil::admin::v1::admin_client::AdminClient;
use sigil_proto::sigil::common::v1 as common;
use tonic::transport::Channel;

/// A gRPC channel over the Unix socket at `socket` (the admin API or the Workload API).
pub async fn uds_channel(socket: &Path) -> Result<Channel, tonic::transport::Error> {
    sigil_common::uds::channel(socket).await
}

/// An admin API client on the server socket `socket`, taking replies as large as the server
/// sends.
pub async fn admin_client(socket: &Path) -> Result<AdminClient<Channel>, tonic::transport::Error> {
    Ok(AdminClient::new(uds_channel(socket).await?)
        .max_decoding_message_size(ADMIN_API_MAX_MESSAGE))
}

/// Batch `b` of a load named `load`: `size` entries `spiffe://example.org/{load}/b{b}/{i}` under
/// the node `spiffe://example.org/node`, entry `i` selecting `unix:uid:{i}`.
pub fn entry_batch(load: &str, b: usize, size: usize) -> Vec<common::RegistrationEntry> {
    (0..size)
        .map(|i| common::RegistrationEntry {
            spiffe_id: format!("spiffe://example.org/{load}/b{b}/{i}"),
            parent_id: "spiffe://example.org/node".to_owned(),
            selectors: vec![common::Selector {
                r#type: "unix".to_owned(),
                value: format!("uid:{i}"),
            }],
            ..Default::default()
        })
        .collect()
}

/// How many entries of each batch the SPIFFE IDs `ids` (one per line, from [`entry_batch`])
/// hold, read back by an independent client (`sqlite3`, `psql`).
pub fn entries_per_batch(ids: &str) -> BTreeMap<usize, usize> {
    let mut per_batch = BTreeMap::new();
    for id in ids.lines() {
        let b: usize = id
            .split('/')
            .nth(4)
            .and_then(|s| s.strip_prefix('b'))
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("not an entry of a batch load: {id}"));
        *per_batch.entry(b).or_default() += 1;
    }
    per_batch
}
