//! Workloads in pods over the real socket (issue 17): the pod UID goes with every mint, and a
//! pod the server says is gone, or an instance it refuses, stops being served to the streams
//! that hold it.

use futures::future::BoxFuture;
use sigil_proto::workload::{JwtsvidRequest, X509svidRequest, X509svidResponse};
use sigil_proto::{Selector, SpiffeId};
use tonic::Code;

use super::tests::{Harness, Options, bounded, me};
use crate::cache::RenderedKey;
use crate::cache::testing::{selectors, template_entry};
use crate::workload_attestation::{AttestationError, WorkloadAttestor};

const API: &str = "spiffe://example.org/ns/a/sa/api";

/// The test process, as if it ran in pod `pod-1` of namespace `a` under service account `api`.
#[derive(Debug)]
struct InPod;

impl WorkloadAttestor for InPod {
    fn attest(&self, _pid: i32) -> BoxFuture<'_, Result<Vec<Selector>, AttestationError>> {
        Box::pin(async {
            Ok(selectors(&[
                &me(),
                "k8s:ns:a",
                "k8s:sa:api",
                "k8s:pod-uid:pod-1",
            ]))
        })
    }
}

async fn in_pod() -> Harness {
    let h = Harness::start(Options {
        attestor: Box::new(InPod),
        ..Options::default()
    })
    .await;
    h.cache.upsert_entries(vec![template_entry(
        "t",
        "spiffe://example.org/ns/{k8s:ns}/sa/{k8s:sa}",
        &["k8s:ns"],
        2,
    )]);
    h
}

fn key() -> RenderedKey {
    RenderedKey {
        entry_id: "t".into(),
        spiffe_id: SpiffeId::new(API).unwrap(),
    }
}

fn ids(msg: &X509svidResponse) -> Vec<&str> {
    msg.svids.iter().map(|s| s.spiffe_id.as_str()).collect()
}

/// The instance the workload asks for is wanted for its pod; installed, it is streamed; the
/// pod gone, the stream sends an update without it, then ends with "no identity issued" once
/// its last entry goes, as when entries are deleted.
#[tokio::test]
async fn a_gone_pods_stream_loses_its_template_svid() {
    let h = in_pod().await;
    h.add_web();
    let mut c = h.client().await;
    let mut stream = c
        .fetch_x509svid(X509svidRequest {})
        .await
        .unwrap()
        .into_inner();
    let first = bounded(stream.message()).await.unwrap().unwrap();
    assert_eq!(ids(&first), ["spiffe://example.org/web"]);
    assert_eq!(h.cache.demand().pod_for(&key()).as_deref(), Some("pod-1"));

    h.cache.set_rendered_svids(vec![(key(), h.ca.svid(API))]);
    let both = bounded(stream.message()).await.unwrap().unwrap();
    assert_eq!(ids(&both), ["spiffe://example.org/web", API]);

    assert_eq!(h.cache.forget_pods(&["pod-1".into()], 100), [key()]);
    let without = bounded(stream.message()).await.unwrap().unwrap();
    assert_eq!(ids(&without), ["spiffe://example.org/web"]);

    h.cache.remove_entries(["web"]);
    let end = bounded(stream.message()).await.unwrap_err();
    assert_eq!(end.code(), Code::PermissionDenied);
    assert_eq!(end.message(), "no identity issued");
    h.stop().await;
}

/// An instance the server refused is no longer streamed: the only identity gone, the stream
/// ends with "no identity issued".
#[tokio::test]
async fn a_refused_instance_ends_a_stream_that_has_nothing_else() {
    let h = in_pod().await;
    h.cache.set_rendered_svids(vec![(key(), h.ca.svid(API))]);
    let mut c = h.client().await;
    let mut stream = c
        .fetch_x509svid(X509svidRequest {})
        .await
        .unwrap()
        .into_inner();
    let first = bounded(stream.message()).await.unwrap().unwrap();
    assert_eq!(ids(&first), [API]);
    assert!(h.cache.refuse_rendered(&key()));
    let end = bounded(stream.message()).await.unwrap_err();
    assert_eq!(end.code(), Code::PermissionDenied);
    assert_eq!(end.message(), "no identity issued");
    h.stop().await;
}

/// JWT-SVIDs name the caller's pod, for template and fixed entries alike; a gone pod gets only
/// its fixed entries' tokens.
#[tokio::test]
async fn jwt_svids_are_minted_for_the_callers_pod() {
    let h = in_pod().await;
    h.add_web();
    let mut c = h.client().await;
    let req = || JwtsvidRequest {
        audience: vec!["db".into()],
        spiffe_id: String::new(),
    };
    let all = c.fetch_jwtsvid(req()).await.unwrap().into_inner();
    let ids: Vec<&str> = all.svids.iter().map(|s| s.spiffe_id.as_str()).collect();
    assert_eq!(ids, ["spiffe://example.org/web", API]);
    assert_eq!(
        *h.minter.pods.lock().unwrap(),
        [Some("pod-1".to_owned()), Some("pod-1".to_owned())]
    );

    h.cache.forget_pods(&["pod-1".into()], 100);
    let left = c.fetch_jwtsvid(req()).await.unwrap().into_inner();
    let ids: Vec<&str> = left.svids.iter().map(|s| s.spiffe_id.as_str()).collect();
    assert_eq!(ids, ["spiffe://example.org/web"]);
    h.stop().await;
}
