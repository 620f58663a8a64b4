//! Feeds a [`PodCache`] from the cluster's API: kube's `watcher` lists every pod bound to a node
//! (quorum read, pages of 500), then watches from that list's resource version, resuming a
//! watch that ended cleanly (its timeout) without a new list. Any error the watcher reports
//! marks the cache broken and starts over with a fresh list after a short backoff, so the cache
//! is fresh again only once a complete list has replaced it.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures::StreamExt as _;
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::runtime::watcher::{self, Event, watcher};
use tokio_util::sync::CancellationToken;

use super::{PodCache, PodFacts, Relisted, STALE_AFTER};

/// Only pods bound to a node and not terminated: an agent may be signed only for those. A pod
/// that terminates leaves the selection, which the API reports as its deletion.
const FIELD_SELECTOR: &str = "spec.nodeName!=,status.phase!=Succeeded,status.phase!=Failed";
/// The API server ends each watch after this long and it is resumed; kube ends a watch that
/// stays silent 5 s longer, so a connection that hangs without an error is noticed in 30 s.
const WATCH_TIMEOUT_SECS: u32 = 25;
/// First wait after a failure; it doubles up to [`RETRY_MAX`] while the API stays away.
const RETRY_MIN: Duration = Duration::from_millis(500);
const RETRY_MAX: Duration = Duration::from_secs(8);

/// Keeps `cache` following the pods of the cluster `client` reaches, until `cancel` fires.
/// Never fails: an unreachable or forbidding API leaves the cache stale (logged) and is tried
/// again.
pub async fn watch_pods(
    client: kube::Client,
    cache: Arc<PodCache>,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    let api: Api<Pod> = Api::all(client);
    let config = watcher::Config::default()
        .fields(FIELD_SELECTOR)
        .timeout(WATCH_TIMEOUT_SECS);
    let mut retry = RETRY_MIN;
    let mut reported_stale = false;
    loop {
        let broke = tokio::select! {
            () = cancel.cancelled() => return Ok(()),
            broke = follow(&api, &config, &cache, &mut retry, &mut reported_stale) => broke,
        };
        let now = SystemTime::now();
        if cache.broken(now) {
            tracing::warn!(error = %broke, "the Kubernetes pod watch failed; retrying (template instances are refused if it stays broken for {}s)", STALE_AFTER.as_secs());
        } else {
            tracing::debug!(error = %broke, "the Kubernetes pod watch failed again");
        }
        if !reported_stale && let Err(stale) = cache.view(now) {
            reported_stale = true;
            tracing::error!(error = %broke, "{stale}: template instances and pod-bound entries are refused until the API answers");
        }
        tokio::select! {
            () = cancel.cancelled() => return Ok(()),
            () = tokio::time::sleep(retry) => {}
        }
        retry = (retry * 2).min(RETRY_MAX);
    }
}

/// Follows one watcher from its first list until it reports an error, which is returned.
async fn follow(
    api: &Api<Pod>,
    config: &watcher::Config,
    cache: &PodCache,
    retry: &mut Duration,
    reported_stale: &mut bool,
) -> String {
    let mut events = std::pin::pin!(watcher(api.clone(), config.clone()));
    // The list in progress (between `Init` and `InitDone`).
    let mut listing: HashMap<String, PodFacts> = HashMap::new();
    while let Some(event) = events.next().await {
        match event {
            Err(e) => return e.to_string(),
            Ok(Event::Init) => listing.clear(),
            Ok(Event::InitApply(pod)) => {
                if let Some(facts) = PodFacts::from_pod(pod) {
                    listing.insert(facts.uid.clone(), facts);
                }
            }
            Ok(Event::InitDone) => {
                let pods = listing.len();
                match cache.relisted(std::mem::take(&mut listing)) {
                    Relisted::First => tracing::info!(pods, "pod cache listed"),
                    Relisted::Recovered => {
                        tracing::info!(pods, "the Kubernetes pod watch is back: pod cache relisted")
                    }
                    Relisted::Again => tracing::debug!(pods, "pod cache relisted"),
                }
                *retry = RETRY_MIN;
                *reported_stale = false;
            }
            Ok(Event::Apply(pod)) => {
                let uid = pod.metadata.uid.clone().unwrap_or_default();
                cache.apply(PodFacts::from_pod(pod), &uid);
            }
            Ok(Event::Delete(pod)) => {
                cache.delete(pod.metadata.uid.as_deref().unwrap_or_default());
            }
        }
    }
    "the watch stream ended".to_owned()
}
