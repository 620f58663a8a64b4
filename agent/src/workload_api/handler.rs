//! The `SpiffeWorkloadAPI` service: per-call header check, caller attestation, and the
//! responses built from the latest cache snapshot (digest §5.3–§5.5, SPIRE's
//! `pkg/agent/endpoints/workload/handler.go` choices).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use sigil_common::time::unix_now;
use sigil_proto::bundle::BundleError;
use sigil_proto::workload::spiffe_workload_api_server::SpiffeWorkloadApi;
use sigil_proto::workload::{
    JwtBundlesRequest, JwtBundlesResponse, Jwtsvid, JwtsvidRequest, JwtsvidResponse,
    ValidateJwtsvidRequest, ValidateJwtsvidResponse, X509BundlesRequest, X509BundlesResponse,
    X509svid, X509svidRequest, X509svidResponse,
};
use sigil_proto::{Bundle, Selector, SpiffeId, SpiffeIdError, TrustDomain};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};
use tracing::debug;

use super::issued::{Issued, issued_x509_svids};
use super::jwt::{JwtSvidValidationError, to_prost_struct, validate_jwt_svid};
use super::responses::{Built, X509ResponseCache};
use super::stream::{self, StreamSource};
use crate::cache::{Identity, JwtSvidCache, MintError, Snapshot, SvidUnavailable, pod_uid};
use crate::endpoints::{Caller, CallerError, LatestStream, LimitError, PeerError, caller};
use crate::taint::TaintedAuthorities;
use crate::workload_attestation::WorkloadAttestor;

/// The metadata key every Workload API request must carry with the value `true`.
pub const SECURITY_HEADER: &str = "workload.spiffe.io";

/// Why a request failed. Converted to a gRPC status in exactly one place
/// (`From<RequestError> for Status`); the workload sees the short message, the log the detail.
#[derive(Debug, thiserror::Error)]
pub(crate) enum RequestError {
    #[error("security header missing from request")]
    MissingSecurityHeader,
    #[error("{0}")]
    Caller(#[from] CallerError),
    /// The connection's process is gone or changed since the stream began.
    #[error("could not verify existence of the original caller: {0}")]
    Peer(#[source] PeerError),
    #[error("{0}")]
    TooManyStreams(#[source] LimitError),
    #[error("stream ended: the client did not read an update within {0:?}")]
    SlowReader(Duration),
    #[error("no identity issued")]
    NoIdentity,
    #[error("audience must be specified")]
    MissingAudience,
    #[error("svid must be specified")]
    MissingSvid,
    #[error("requested SPIFFE ID is invalid: {0}")]
    BadSpiffeId(#[source] SpiffeIdError),
    #[error("could not fetch JWT-SVID")]
    Mint(#[source] MintError),
    #[error("{0}")]
    InvalidJwtSvid(#[source] JwtSvidValidationError),
    #[error("X509-SVID not yet available")]
    SvidNotReady,
    #[error("could not encode bundle")]
    Bundle(#[source] BundleError),
    #[error("agent is shutting down")]
    ShuttingDown,
    /// The SVID expired (or cannot be minted) and the agent could not renew it: the message
    /// says which and why (see `crate::cache::expiry`).
    #[error("{0}")]
    SvidUnavailable(SvidUnavailable),
}

impl From<MintError> for RequestError {
    fn from(err: MintError) -> Self {
        match err {
            MintError::Withheld(why) => Self::SvidUnavailable(why),
            other => Self::Mint(other),
        }
    }
}

impl From<RequestError> for Status {
    fn from(err: RequestError) -> Self {
        use RequestError as E;
        let message = err.to_string();
        match err {
            E::MissingSecurityHeader
            | E::MissingAudience
            | E::MissingSvid
            | E::BadSpiffeId(_)
            | E::InvalidJwtSvid(_) => Self::invalid_argument(message),
            E::NoIdentity => Self::permission_denied(message),
            E::Caller(CallerError::Peer(_)) | E::Peer(_) => Self::unauthenticated(message),
            E::TooManyStreams(_) | E::SlowReader(_) => Self::resource_exhausted(message),
            E::Caller(_)
            | E::Mint(_)
            | E::SvidNotReady
            | E::Bundle(_)
            | E::ShuttingDown
            | E::SvidUnavailable(_) => Self::unavailable(message),
        }
    }
}

/// Handler settings (from the agent config).
#[derive(Clone, Debug)]
pub(crate) struct HandlerConfig {
    pub allow_unauthenticated_verifiers: bool,
    pub allowed_foreign_jwt_claims: Vec<String>,
    pub svid_wait: Duration,
}

pub(crate) struct Handler {
    pub cache_rx: watch::Receiver<Arc<Snapshot>>,
    pub attestors: Arc<Vec<Box<dyn WorkloadAttestor>>>,
    pub jwt_svids: JwtSvidCache,
    pub config: Arc<HandlerConfig>,
    pub cancel: CancellationToken,
    pub x509_responses: Arc<X509ResponseCache>,
}

impl Handler {
    fn check_header<T>(request: &Request<T>) -> Result<(), RequestError> {
        let mut values = request.metadata().get_all(SECURITY_HEADER).iter();
        match (values.next(), values.next()) {
            (Some(v), None) if v == "true" => Ok(()),
            _ => Err(RequestError::MissingSecurityHeader),
        }
    }

    /// Header check and attestation, logging why a request is refused.
    async fn caller<T>(&self, request: &Request<T>, method: &str) -> Result<Caller, Status> {
        let result = match Self::check_header(request) {
            Ok(()) => caller::attest(request, &self.attestors)
                .await
                .map_err(RequestError::from),
            Err(e) => Err(e),
        };
        result.map_err(|err| {
            debug!(method, error = %error_chain(&err), "workload API request refused");
            err.into()
        })
    }

    fn snapshot(&self) -> Arc<Snapshot> {
        self.cache_rx.borrow().clone()
    }

    /// A server stream fed from the cache ([`stream::spawn`]).
    fn spawn_stream<T, F>(
        &self,
        caller: Caller,
        method: &'static str,
        build: F,
    ) -> Result<LatestStream<T>, RequestError>
    where
        T: Clone + PartialEq + Send + Sync + 'static,
        F: Fn(&Arc<Snapshot>, &[Selector]) -> Result<Option<Arc<T>>, RequestError> + Send + 'static,
    {
        let source = StreamSource {
            cache_rx: self.cache_rx.clone(),
            cancel: self.cancel.clone(),
            svid_wait: self.config.svid_wait,
        };
        stream::spawn(&source, caller, method, build)
    }
}

#[tonic::async_trait]
impl SpiffeWorkloadApi for Handler {
    type FetchX509SVIDStream = LatestStream<X509svidResponse>;
    type FetchX509BundlesStream = LatestStream<X509BundlesResponse>;
    type FetchJWTBundlesStream = LatestStream<JwtBundlesResponse>;

    async fn fetch_x509svid(
        &self,
        request: Request<X509svidRequest>,
    ) -> Result<Response<Self::FetchX509SVIDStream>, Status> {
        let caller = self.caller(&request, "FetchX509SVID").await?;
        // No identity at all: answer at once, without a message.
        let snapshot = self.snapshot();
        let identities = snapshot.matching(&caller.selectors);
        let rendered = snapshot.matching_templates(&caller.selectors);
        if identities.is_empty() && rendered.is_empty() {
            debug!(pid = caller.pid, "FetchX509SVID: no identity issued");
            return Err(RequestError::NoIdentity.into());
        }
        if tracing::enabled!(tracing::Level::DEBUG) {
            let ids: Vec<String> = identities
                .iter()
                .map(|i| i.entry.spiffe_id.to_string())
                .chain(rendered.iter().map(|(_, id)| id.to_string()))
                .collect();
            debug!(pid = caller.pid, spiffe_id = %ids.join(","), "FetchX509SVID");
        }
        let responses = self.x509_responses.clone();
        let build = move |snapshot: &Arc<Snapshot>, selectors: &[Selector]| {
            cached_x509_svid_response(&responses, snapshot, selectors)
        };
        Ok(Response::new(
            self.spawn_stream(caller, "FetchX509SVID", build)
                .map_err(Status::from)?,
        ))
    }

    async fn fetch_x509_bundles(
        &self,
        request: Request<X509BundlesRequest>,
    ) -> Result<Response<Self::FetchX509BundlesStream>, Status> {
        let caller = self.caller(&request, "FetchX509Bundles").await?;
        let allow = self.config.allow_unauthenticated_verifiers;
        let build = move |snapshot: &Arc<Snapshot>, selectors: &[Selector]| {
            let bundles = visible_bundles(snapshot, selectors, allow)?;
            Ok(Some(Arc::new(X509BundlesResponse {
                crl: Vec::new(),
                bundles: bundles
                    .into_iter()
                    .map(|(td, b)| (td.id_string(), b.x509_authorities_concat()))
                    .collect(),
            })))
        };
        Ok(Response::new(
            self.spawn_stream(caller, "FetchX509Bundles", build)
                .map_err(Status::from)?,
        ))
    }

    async fn fetch_jwtsvid(
        &self,
        request: Request<JwtsvidRequest>,
    ) -> Result<Response<JwtsvidResponse>, Status> {
        Self::check_header(&request)?;
        let req = request.get_ref();
        if req.audience.is_empty() {
            return Err(RequestError::MissingAudience.into());
        }
        let wanted = match req.spiffe_id.as_str() {
            "" => None,
            id => Some(SpiffeId::new(id).map_err(RequestError::BadSpiffeId)?),
        };
        let caller = self.caller(&request, "FetchJWTSVID").await?;
        let snapshot = self.snapshot();
        // Fixed entries under their own ID, then template entries under the ID rendered for
        // this workload.
        let identities: Vec<(&Arc<Identity>, SpiffeId)> = snapshot
            .matching(&caller.selectors)
            .into_iter()
            .filter_map(|i| Some((i, i.entry.spiffe_id.fixed()?.clone())))
            .chain(snapshot.matching_templates(&caller.selectors))
            .filter(|(_, id)| wanted.as_ref().is_none_or(|w| w == id))
            .collect();
        if identities.is_empty() {
            debug!(pid = caller.pid, "FetchJWTSVID: no identity issued");
            return Err(RequestError::NoIdentity.into());
        }
        let now = unix_now();
        // Fixed entries too: the server checks an entry that names a pod against it.
        let pod = pod_uid(&caller.selectors);
        self.jwt_svids
            .drop_tainted(&TaintedAuthorities::from_bundle(&snapshot.bundle));
        let mut svids = Vec::with_capacity(identities.len());
        for (identity, spiffe_id) in identities {
            let entry = &identity.entry;
            let token = self
                .jwt_svids
                .fetch(entry, &spiffe_id, pod, &req.audience, now)
                .await
                .map_err(|e| {
                    debug!(pid = caller.pid, %spiffe_id, error = %e, "JWT-SVID mint failed");
                    RequestError::from(e)
                })?;
            debug!(pid = caller.pid, %spiffe_id, "FetchJWTSVID");
            svids.push(Jwtsvid {
                spiffe_id: spiffe_id.to_string(),
                svid: token,
                hint: entry.hint.clone(),
            });
        }
        Ok(Response::new(JwtsvidResponse { svids }))
    }

    async fn fetch_jwt_bundles(
        &self,
        request: Request<JwtBundlesRequest>,
    ) -> Result<Response<Self::FetchJWTBundlesStream>, Status> {
        let caller = self.caller(&request, "FetchJWTBundles").await?;
        let allow = self.config.allow_unauthenticated_verifiers;
        let build = move |snapshot: &Arc<Snapshot>, selectors: &[Selector]| {
            let mut bundles = BTreeMap::new();
            for (td, bundle) in visible_bundles(snapshot, selectors, allow)? {
                let jwks = bundle.to_jwks_json().map_err(RequestError::Bundle)?;
                bundles.insert(td.id_string(), jwks.into_bytes());
            }
            Ok(Some(Arc::new(JwtBundlesResponse {
                bundles: bundles.into_iter().collect(),
            })))
        };
        Ok(Response::new(
            self.spawn_stream(caller, "FetchJWTBundles", build)
                .map_err(Status::from)?,
        ))
    }

    async fn validate_jwtsvid(
        &self,
        request: Request<ValidateJwtsvidRequest>,
    ) -> Result<Response<ValidateJwtsvidResponse>, Status> {
        Self::check_header(&request)?;
        let req = request.get_ref();
        if req.audience.is_empty() {
            return Err(RequestError::MissingAudience.into());
        }
        if req.svid.is_empty() {
            return Err(RequestError::MissingSvid.into());
        }
        let caller = self.caller(&request, "ValidateJWTSVID").await?;
        let snapshot = self.snapshot();
        // Validation needs no identity: a caller without one still sees our own bundle.
        let bundles: BTreeMap<TrustDomain, &Bundle> =
            visible_bundles(&snapshot, &caller.selectors, true)?
                .into_iter()
                .map(|(td, b)| (td.clone(), b))
                .collect();
        let validated = validate_jwt_svid(
            &req.svid,
            &req.audience,
            &snapshot.bundle.trust_domain,
            &bundles,
            &self.config.allowed_foreign_jwt_claims,
            unix_now(),
        )
        .map_err(|e| {
            debug!(pid = caller.pid, error = %e, "ValidateJWTSVID: invalid token");
            RequestError::InvalidJwtSvid(e)
        })?;
        debug!(pid = caller.pid, spiffe_id = %validated.spiffe_id, "ValidateJWTSVID");
        Ok(Response::new(ValidateJwtsvidResponse {
            spiffe_id: validated.spiffe_id.to_string(),
            claims: Some(to_prost_struct(&validated.claims)),
        }))
    }
}

/// The `FetchX509SVID` message for a caller, reused from `cache` when built from the same
/// snapshot for the same selectors (see [`build_x509_svid_response`]).
fn cached_x509_svid_response(
    cache: &X509ResponseCache,
    snapshot: &Arc<Snapshot>,
    selectors: &[Selector],
) -> Result<Option<Arc<X509svidResponse>>, RequestError> {
    let built = cache.get_or_build(snapshot, selectors, || {
        build_x509_svid_response(snapshot, selectors)
    })?;
    want_rendered(snapshot, &built, selectors);
    Ok(built.response.clone())
}

fn want_rendered(snapshot: &Snapshot, built: &Built, selectors: &[Selector]) {
    Issued::want(snapshot, &built.wanted, selectors);
}

/// The `FetchX509SVID` message for a caller, built afresh: every matching identity whose SVID
/// is minted. `Ok(None)` when identities match but none has an SVID yet.
#[cfg(test)]
fn x509_svid_response(
    snapshot: &Snapshot,
    selectors: &[Selector],
) -> Result<Option<X509svidResponse>, RequestError> {
    let built = build_x509_svid_response(snapshot, selectors)?;
    want_rendered(snapshot, &built, selectors);
    Ok(built.response.map(Arc::unwrap_or_clone))
}

/// The FetchX509SVID message for what the caller is issued ([`issued_x509_svids`]), and the
/// template instances wanted. A pure function of its arguments, which is what lets
/// [`X509ResponseCache`] reuse it.
fn build_x509_svid_response(
    snapshot: &Snapshot,
    selectors: &[Selector],
) -> Result<Built, RequestError> {
    let issued = issued_x509_svids(snapshot, selectors)?;
    if issued.svids.is_empty() {
        return Ok(Built {
            response: None,
            wanted: issued.wanted,
        });
    }
    let bundle = snapshot.bundle.x509_authorities_concat();
    let svids = issued
        .svids
        .iter()
        .map(|issued| X509svid {
            // Equal to the leaf's URI SAN: the cache checks it when the SVID is installed.
            spiffe_id: issued.spiffe_id.to_string(),
            x509_svid: issued.svid.chain.concat(),
            x509_svid_key: issued.svid.private_key_pkcs8.to_vec(),
            bundle: bundle.clone(),
            hint: issued.identity.entry.hint.clone(),
        })
        .collect();
    let federated_bundles = issued
        .federates_with
        .iter()
        .filter_map(|td| snapshot.federated.get(*td))
        .map(|b| (b.trust_domain.id_string(), b.x509_authorities_concat()))
        .collect();
    Ok(Built {
        response: Some(Arc::new(X509svidResponse {
            svids,
            crl: Vec::new(),
            federated_bundles,
        })),
        wanted: issued.wanted,
    })
}

/// Our own bundle plus the federated bundles the caller's entries federate with. A caller
/// with no identity gets `NoIdentity`, or only our own bundle when `allow_unauthenticated`.
fn visible_bundles<'a>(
    snapshot: &'a Snapshot,
    selectors: &[Selector],
    allow_unauthenticated: bool,
) -> Result<Vec<(&'a TrustDomain, &'a Bundle)>, RequestError> {
    let identities: Vec<&Arc<Identity>> = snapshot
        .matching(selectors)
        .into_iter()
        .chain(
            snapshot
                .matching_templates(selectors)
                .into_iter()
                .map(|(i, _)| i),
        )
        .collect();
    if identities.is_empty() && !allow_unauthenticated {
        return Err(RequestError::NoIdentity);
    }
    let own = &snapshot.bundle;
    let mut out = vec![(&own.trust_domain, own.as_ref())];
    let federates_with: BTreeSet<&TrustDomain> = identities
        .iter()
        .flat_map(|i| i.entry.federates_with.iter())
        .collect();
    for td in federates_with {
        if let Some(bundle) = snapshot.federated.get(td) {
            out.push((&bundle.trust_domain, bundle.as_ref()));
        }
    }
    Ok(out)
}

/// The error and its sources on one line, for the log.
pub(crate) fn error_chain(err: &dyn std::error::Error) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

#[cfg(test)]
mod template_tests {
    use super::*;
    use crate::cache::Cache;
    use crate::cache::RenderedKey;
    use crate::cache::testing::{TestCa, entry, selectors, template_entry};

    #[test]
    fn template_svids_are_requested_then_served_under_the_rendered_id() {
        let ca = TestCa::new("example.org");
        let cache = Cache::new(ca.bundle(None));
        cache.replace_entries(vec![
            template_entry(
                "t",
                "spiffe://example.org/ns/{k8s:ns}/sa/{k8s:sa}",
                &["k8s:ns"],
                1,
            ),
            entry("fixed", "spiffe://example.org/fixed", &["k8s:sa:api"], 2),
        ]);
        cache
            .set_svid("fixed", ca.svid("spiffe://example.org/fixed"))
            .unwrap();
        let pod = selectors(&["k8s:ns:payments", "k8s:sa:api"]);
        let id = "spiffe://example.org/ns/payments/sa/api";
        let key = RenderedKey {
            entry_id: "t".into(),
            spiffe_id: SpiffeId::new(id).unwrap(),
        };

        // First call: only the fixed SVID, and the rendered ID is now wanted.
        let first = x509_svid_response(&cache.snapshot(), &pod)
            .unwrap()
            .unwrap();
        let ids: Vec<&str> = first.svids.iter().map(|s| s.spiffe_id.as_str()).collect();
        assert_eq!(ids, ["spiffe://example.org/fixed"]);
        assert_eq!(cache.demand().keys(), std::slice::from_ref(&key));

        // Once rotation installed it, it is served too.
        assert!(
            cache
                .set_rendered_svids(vec![(key, ca.svid(id))])
                .is_empty()
        );
        let next = x509_svid_response(&cache.snapshot(), &pod)
            .unwrap()
            .unwrap();
        let ids: Vec<&str> = next.svids.iter().map(|s| s.spiffe_id.as_str()).collect();
        assert_eq!(ids, ["spiffe://example.org/fixed", id]);

        // Another namespace's pod does not get this pod's SVID, and with only the template
        // matching it waits (no message yet) rather than failing.
        let other = selectors(&["k8s:ns:web", "k8s:sa:web"]);
        assert_eq!(x509_svid_response(&cache.snapshot(), &other).unwrap(), None);
        assert_eq!(cache.demand().keys().len(), 2);
        // No match at all: no identity.
        assert!(matches!(
            x509_svid_response(&cache.snapshot(), &selectors(&["unix:uid:1"])),
            Err(RequestError::NoIdentity)
        ));
    }
}

#[cfg(test)]
mod response_cache_tests {
    use super::*;
    use crate::cache::Cache;
    use crate::cache::testing::{TestCa, entry, selectors};

    fn ids(response: &Option<X509svidResponse>) -> Vec<String> {
        response
            .as_ref()
            .map(|r| r.svids.iter().map(|s| s.spiffe_id.clone()).collect())
            .unwrap_or_default()
    }

    fn fetch(
        responses: &X509ResponseCache,
        cache: &Cache,
        who: &[Selector],
    ) -> Result<Option<X509svidResponse>, RequestError> {
        cached_x509_svid_response(responses, &cache.snapshot(), who)
            .map(|r| r.map(Arc::unwrap_or_clone))
    }

    #[test]
    fn same_snapshot_and_selectors_reuse_one_build() {
        let ca = TestCa::new("example.org");
        let cache = Cache::new(ca.bundle(None));
        cache.replace_entries(vec![entry(
            "a",
            "spiffe://example.org/a",
            &["unix:uid:1"],
            1,
        )]);
        cache
            .set_svid("a", ca.svid("spiffe://example.org/a"))
            .unwrap();
        let responses = X509ResponseCache::default();
        let snapshot = cache.snapshot();
        let who = selectors(&["unix:uid:1"]);
        let builds = std::cell::Cell::new(0);
        let build = || {
            builds.set(builds.get() + 1);
            build_x509_svid_response(&snapshot, &who)
        };
        let first = responses.get_or_build(&snapshot, &who, build).unwrap();
        let again = responses
            .get_or_build(&snapshot, &who, || {
                builds.set(builds.get() + 1);
                build_x509_svid_response(&snapshot, &who)
            })
            .unwrap();
        assert!(Arc::ptr_eq(&first, &again));
        assert_eq!(builds.get(), 1);
    }

    #[test]
    fn every_change_shows_on_the_next_call() {
        let ca = TestCa::new("example.org");
        let cache = Cache::new(ca.bundle(None));
        let who = selectors(&["unix:uid:1", "unix:user:web"]);
        cache.replace_entries(vec![entry(
            "a",
            "spiffe://example.org/a",
            &["unix:uid:1"],
            1,
        )]);
        let responses = X509ResponseCache::default();
        // Matching entry, no SVID yet: nothing to send.
        assert_eq!(fetch(&responses, &cache, &who).unwrap(), None);

        cache
            .set_svid("a", ca.svid("spiffe://example.org/a"))
            .unwrap();
        let first = fetch(&responses, &cache, &who).unwrap();
        assert_eq!(ids(&first), ["spiffe://example.org/a"]);

        // New entry.
        cache.upsert_entries(vec![entry(
            "b",
            "spiffe://example.org/b",
            &["unix:user:web"],
            2,
        )]);
        cache
            .set_svid("b", ca.svid("spiffe://example.org/b"))
            .unwrap();
        let got = fetch(&responses, &cache, &who).unwrap();
        assert_eq!(
            ids(&got),
            ["spiffe://example.org/a", "spiffe://example.org/b"]
        );

        // Rotated SVID.
        cache
            .set_svid("a", ca.svid("spiffe://example.org/a"))
            .unwrap();
        let rotated = fetch(&responses, &cache, &who).unwrap().unwrap();
        assert_ne!(
            rotated.svids[0].x509_svid,
            first.as_ref().unwrap().svids[0].x509_svid
        );
        assert_ne!(
            *rotated.svids[0].x509_svid_key,
            *first.as_ref().unwrap().svids[0].x509_svid_key
        );

        // New bundle (a tainted authority, a new CA): served at once.
        let new_ca = TestCa::new("example.org");
        let mut bundle = ca.bundle(None);
        bundle.x509_authorities.push(new_ca.der());
        bundle.tainted_x509_authorities.push(ca.der());
        cache.set_bundle(bundle);
        let got = fetch(&responses, &cache, &who).unwrap().unwrap();
        assert_eq!(got.svids[0].bundle, [ca.der(), new_ca.der()].concat());

        // Deleted entries.
        cache.remove_entries(["b"]);
        assert_eq!(
            ids(&fetch(&responses, &cache, &who).unwrap()),
            ["spiffe://example.org/a"]
        );
        cache.remove_entries(["a"]);
        assert!(matches!(
            fetch(&responses, &cache, &who),
            Err(RequestError::NoIdentity)
        ));
    }

    #[test]
    fn other_selectors_never_get_a_cached_response() {
        let ca = TestCa::new("example.org");
        let cache = Cache::new(ca.bundle(None));
        cache.replace_entries(vec![
            entry("a", "spiffe://example.org/a", &["unix:uid:1"], 1),
            entry("b", "spiffe://example.org/b", &["unix:uid:2"], 2),
        ]);
        cache
            .set_svid("a", ca.svid("spiffe://example.org/a"))
            .unwrap();
        cache
            .set_svid("b", ca.svid("spiffe://example.org/b"))
            .unwrap();
        let responses = X509ResponseCache::default();
        let uid1 = selectors(&["unix:uid:1"]);
        let uid2 = selectors(&["unix:uid:2"]);
        assert_eq!(
            ids(&fetch(&responses, &cache, &uid1).unwrap()),
            ["spiffe://example.org/a"]
        );
        assert_eq!(
            ids(&fetch(&responses, &cache, &uid2).unwrap()),
            ["spiffe://example.org/b"]
        );
        // More selectors is another key too, even when it matches a superset.
        let both = selectors(&["unix:uid:1", "unix:uid:2"]);
        assert_eq!(ids(&fetch(&responses, &cache, &both).unwrap()).len(), 2);
        assert!(matches!(
            fetch(&responses, &cache, &selectors(&["unix:uid:3"])),
            Err(RequestError::NoIdentity)
        ));
        assert_eq!(
            ids(&fetch(&responses, &cache, &uid1).unwrap()),
            ["spiffe://example.org/a"]
        );
    }

    #[test]
    fn a_cached_response_still_refreshes_template_demand() {
        use crate::cache::rendered::IDLE;
        use crate::cache::testing::template_entry;

        let ca = TestCa::new("example.org");
        let cache = Cache::new(ca.bundle(None));
        cache.replace_entries(vec![template_entry(
            "t",
            "spiffe://example.org/ns/{k8s:ns}",
            &["k8s:ns"],
            1,
        )]);
        let responses = X509ResponseCache::default();
        let pod = selectors(&["k8s:ns:payments"]);
        assert_eq!(fetch(&responses, &cache, &pod).unwrap(), None);
        assert_eq!(cache.demand().keys().len(), 1);
        let later = unix_now() + IDLE.as_secs() as i64 + 60;
        assert_eq!(cache.demand().forget_idle(later, IDLE).len(), 1);
        assert!(cache.demand().keys().is_empty());
        // Same snapshot, same selectors: a cache hit, and the demand is back.
        assert_eq!(fetch(&responses, &cache, &pod).unwrap(), None);
        assert_eq!(cache.demand().keys().len(), 1);
    }
}
