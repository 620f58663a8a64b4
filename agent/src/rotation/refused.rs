//! Template instances the server refuses to sign. The server refuses a whole mint call for one
//! instance it will not sign (`PermissionDenied`: the pod named left this node, or never ran
//! here, or the entry no longer reaches this agent), so a refused batch is halved until each
//! refused instance stands alone, and what the server signs meanwhile is installed as usual.
//! An instance refused for its pod is asked for again for the other pods that want it (the
//! replicas of one service account render one ID): the server may have seen a pod go before
//! this agent did. Refused for every pod, it is withdrawn from the cache (a refused identity
//! must not keep being served) with one WARN, and asked for again after the loop's
//! `ENTRY_RETRY`.
//!
//! Any other error while halving ends the call with that error, as if the batch had failed:
//! the loop backs off or paces as for any batch, and mints again what this call installed.

use std::future::Future;

use tonic::{Code, Status};
use tracing::{debug, warn};

use super::mint::Ask;
use super::workload::{ENTRY_RETRY, Outcome};
use crate::cache::{Cache, RenderedKey, TemplateDemand};
use crate::ops::Metrics;

/// How many pods one refused instance is tried for in one turn.
const PODS_TRIED: usize = 3;

/// What handling a refusal needs besides the minting call.
#[derive(Debug, Clone, Copy)]
pub(super) struct Refusals<'a> {
    pub(super) cache: &'a Cache,
    pub(super) demand: &'a TemplateDemand,
    pub(super) metrics: &'a Metrics,
}

impl Refusals<'_> {
    /// Mints `asked` through `mint`, isolating the instances the server refuses (see the
    /// module docs); those are in the outcome's `failed`.
    pub(super) async fn mint<F, Fut>(
        &self,
        asked: Vec<Ask<RenderedKey>>,
        mint: F,
    ) -> Result<Outcome<RenderedKey>, Status>
    where
        F: Fn(Vec<Ask<RenderedKey>>) -> Fut,
        Fut: Future<Output = Result<Outcome<RenderedKey>, Status>>,
    {
        let mut outcome = Outcome {
            minted: Vec::new(),
            failed: Vec::new(),
        };
        // Parts of the batch the server refused as a whole.
        let mut refused = Vec::new();
        match mint(asked.clone()).await {
            Err(status) if status.code() == Code::PermissionDenied => {
                refused.push((asked, status));
            }
            other => return other,
        }
        while let Some((mut part, status)) = refused.pop() {
            if part.len() <= 1 {
                if let Some(ask) = part.pop() {
                    self.alone(ask, status, &mint, &mut outcome).await?;
                }
                continue;
            }
            let second = part.split_off(part.len() / 2);
            for half in [part, second] {
                match mint(half.clone()).await {
                    Ok(o) => merge(&mut outcome, o),
                    Err(status) if status.code() == Code::PermissionDenied => {
                        refused.push((half, status));
                    }
                    Err(status) => return Err(status),
                }
            }
        }
        Ok(outcome)
    }

    /// One instance the server refused, for the pod it named: asked for the other pods that
    /// want it, the one that asked last first; withdrawn when refused for each.
    async fn alone<F, Fut>(
        &self,
        mut ask: Ask<RenderedKey>,
        mut status: Status,
        mint: &F,
        outcome: &mut Outcome<RenderedKey>,
    ) -> Result<(), Status>
    where
        F: Fn(Vec<Ask<RenderedKey>>) -> Fut,
        Fut: Future<Output = Result<Outcome<RenderedKey>, Status>>,
    {
        let mut tried = Vec::new();
        loop {
            if let Some(pod) = ask.pod_uid.take() {
                self.demand.refused_for(&ask.key, &pod);
                tried.push(pod);
            }
            let next = self
                .demand
                .pods_for(&ask.key)
                .into_iter()
                .find(|p| !tried.contains(p));
            let Some(pod) = next.filter(|_| tried.len() < PODS_TRIED) else {
                break;
            };
            ask.pod_uid = Some(pod);
            match mint(vec![ask.clone()]).await {
                Ok(o) => {
                    merge(outcome, o);
                    return Ok(());
                }
                Err(s) if s.code() == Code::PermissionDenied => status = s,
                Err(s) => return Err(s),
            }
        }
        self.metrics.svid_mint(false, 1);
        let key = ask.key;
        let pods = tried.join(",");
        if self.cache.refuse_rendered(&key) {
            warn!(entry_id = %key.entry_id, spiffe_id = %key.spiffe_id, pod_uid = %pods, error = %status.message(), "server refused a template X509-SVID; no longer served, asking again every {ENTRY_RETRY:?}");
        } else {
            debug!(entry_id = %key.entry_id, spiffe_id = %key.spiffe_id, pod_uid = %pods, error = %status.message(), "server still refuses a template X509-SVID");
        }
        outcome.failed.push(key);
        Ok(())
    }
}

fn merge(outcome: &mut Outcome<RenderedKey>, more: Outcome<RenderedKey>) {
    outcome.minted.extend(more.minted);
    outcome.failed.extend(more.failed);
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use sigil_proto::SpiffeId;

    use super::*;
    use crate::cache::testing::{TestCa, template_entry};
    use crate::rotation::workload::Minted;

    const NS_SA: &str = "spiffe://example.org/ns/{k8s:ns}/sa/{k8s:sa}";

    fn key(id: &str) -> RenderedKey {
        RenderedKey {
            entry_id: "t".into(),
            spiffe_id: SpiffeId::new(&format!("spiffe://example.org/ns/a/sa/{id}")).unwrap(),
        }
    }

    /// A server that refuses every call holding one of the pods in `refused` (one refusal
    /// refuses the call, as sigil-server does) and signs the others into `cache`; it
    /// records each call's pods.
    struct Server<'a> {
        ca: TestCa,
        cache: &'a Cache,
        refused: Vec<&'static str>,
        calls: Mutex<Vec<Vec<String>>>,
    }

    impl Server<'_> {
        async fn mint(&self, asked: Vec<Ask<RenderedKey>>) -> Result<Outcome<RenderedKey>, Status> {
            let pods: Vec<String> = asked
                .iter()
                .map(|a| a.pod_uid.clone().unwrap_or_default())
                .collect();
            self.calls.lock().unwrap().push(pods.clone());
            if let Some(pod) = pods.iter().find(|p| self.refused.contains(&p.as_str())) {
                return Err(Status::permission_denied(format!("pod {pod} is gone")));
            }
            let svids = asked
                .iter()
                .map(|a| (a.key.clone(), self.ca.svid(&a.key.spiffe_id.to_string())))
                .collect();
            assert!(self.cache.set_rendered_svids(svids).is_empty());
            let minted = Minted {
                revision: 1,
                expires_at: 0,
                refresh_at: 0,
            };
            Ok(Outcome {
                minted: asked.into_iter().map(|a| (a.key, minted)).collect(),
                failed: Vec::new(),
            })
        }
    }

    fn ask(id: &str, demand: &TemplateDemand) -> Ask<RenderedKey> {
        Ask {
            key: key(id),
            revision: 1,
            pod_uid: demand.pod_for(&key(id)),
        }
    }

    /// Four instances in one batch: `gone` wanted only by a deleted pod, `replicas` wanted by
    /// a deleted pod (which asked last) and a live one, two others by live pods. The server
    /// refuses the batch; the agent keeps every instance a live pod wants and withdraws
    /// `gone`, which it had been serving.
    #[tokio::test]
    async fn a_refused_instance_is_withdrawn_and_the_rest_of_the_batch_minted() {
        let ca = TestCa::new("example.org");
        let cache = Cache::new(ca.bundle(None));
        cache.replace_entries(vec![template_entry("t", NS_SA, &["k8s:ns"], 1)]);
        let demand = cache.demand();
        demand.want(key("api"), Some("api-1"), 100);
        demand.want(key("web"), Some("web-1"), 100);
        demand.want(key("replicas"), Some("live"), 100);
        demand.want(key("replicas"), Some("deleted"), 110);
        demand.want(key("gone"), Some("deleted-too"), 100);
        let g = key("gone").spiffe_id.to_string();
        assert!(
            cache
                .set_rendered_svids(vec![(key("gone"), ca.svid(&g))])
                .is_empty()
        );
        let server = Server {
            ca,
            cache: &cache,
            refused: vec!["deleted", "deleted-too"],
            calls: Mutex::new(Vec::new()),
        };
        let metrics = Metrics::new();
        let refusals = Refusals {
            cache: &cache,
            demand: &demand,
            metrics: &metrics,
        };
        let asked = ["api", "replicas", "web", "gone"]
            .iter()
            .map(|id| ask(id, &demand))
            .collect();

        let outcome = refusals.mint(asked, |a| server.mint(a)).await.unwrap();

        let mut minted: Vec<RenderedKey> = outcome.minted.into_iter().map(|(k, _)| k).collect();
        minted.sort();
        let mut want = vec![key("api"), key("replicas"), key("web")];
        want.sort();
        assert_eq!(minted, want);
        assert_eq!(outcome.failed, [key("gone")]);
        let snapshot = cache.snapshot();
        let mut served: Vec<RenderedKey> = snapshot.rendered.keys().cloned().collect();
        served.sort();
        assert_eq!(served, want, "the refused instance is no longer served");
        assert!(snapshot.refused.contains(&key("gone")));
        // `replicas` was asked for the live pod after the deleted one was refused.
        let calls = server.calls.lock().unwrap().clone();
        assert!(calls.contains(&vec!["live".to_owned()]), "{calls:?}");
        assert_eq!(demand.pods_for(&key("replicas")), ["live"]);
    }

    #[tokio::test]
    async fn other_errors_end_the_call() {
        let ca = TestCa::new("example.org");
        let cache = Cache::new(ca.bundle(None));
        let demand = cache.demand();
        let metrics = Metrics::new();
        let refusals = Refusals {
            cache: &cache,
            demand: &demand,
            metrics: &metrics,
        };
        let err = refusals
            .mint(vec![ask("api", &demand)], |_| async {
                Err(Status::unavailable("down"))
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::Unavailable);
    }
}
