//! `entry create` acknowledged (the CLI exited 0) -> a FetchX509SVID stream opened before
//! delivers a response holding the new entry's SVID, through each system's own CLI and agent.
//!
//! Entries are created one after the other; the next one waits until the previous SVID
//! arrived or [`SPACING`] passed, whichever is first, so a system that propagates in batches
//! (SPIRE: a 5 s server cache reload, then the agent's 5 s sync) is not timed one batch
//! interval per entry in a row. Each sample is its own entry's ack-to-arrival time.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::load::entry_create;
use crate::procs::TRUST_DOMAIN;
use crate::workload::x509_stream;

/// Longest wait for the next create while the previous SVID has not arrived.
pub(crate) const SPACING: Duration = Duration::from_millis(250);
/// How long the last entry's SVID may take.
const ARRIVAL_TIMEOUT: Duration = Duration::from_secs(120);

/// `n` samples: for each new entry (`parent`, `unix:uid` of this process), its CLI's exit to
/// the stream holding its SVID.
pub(crate) async fn measure(
    cli: &Path,
    server_socket: &Path,
    agent_socket: &Path,
    parent: &str,
    n: usize,
) -> anyhow::Result<Vec<Duration>> {
    let mut stream = x509_stream(agent_socket).await?;
    let seen: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let reader = {
        let seen = Arc::clone(&seen);
        tokio::spawn(async move {
            while let Some(response) = stream.message().await? {
                let now = Instant::now();
                let mut seen = seen.lock().expect("seen lock");
                for svid in response.svids {
                    seen.entry(svid.spiffe_id).or_insert(now);
                }
            }
            anyhow::Ok(())
        })
    };
    let arrived = |id: &str| seen.lock().expect("seen lock").get(id).copied();
    let selector = format!("unix:uid:{}", nix::unistd::getuid().as_raw());
    let run = std::process::id();
    let mut acked = Vec::with_capacity(n);
    for i in 0..n {
        let id = format!("spiffe://{TRUST_DOMAIN}/bench/spire-propagation/{run}/{i}");
        entry_create(
            cli,
            server_socket,
            &[
                "-parentID",
                parent,
                "-spiffeID",
                &id,
                "-selector",
                &selector,
            ],
        )
        .await?;
        let at = Instant::now();
        while arrived(&id).is_none() && at.elapsed() < SPACING {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        acked.push((id, at));
    }
    let mut samples = Vec::with_capacity(n);
    for (id, at) in acked {
        let arrival = loop {
            if let Some(t) = arrived(&id) {
                break t;
            }
            anyhow::ensure!(!reader.is_finished(), "the FetchX509SVID stream ended");
            anyhow::ensure!(
                at.elapsed() < ARRIVAL_TIMEOUT,
                "no SVID for {id} within {ARRIVAL_TIMEOUT:?}"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        };
        samples.push(arrival.saturating_duration_since(at));
    }
    reader.abort();
    Ok(samples)
}
