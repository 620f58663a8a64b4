//! The agent API (`sigil.agent.v1.Agent`) on `bind_address`, over TLS (see `super::tls`).
//!
//! AttestAgent needs no client certificate; every other RPC is from an agent authenticated by
//! its X.509-SVID before the handler runs (`authentication`, in the one middleware layer
//! with the per-RPC metric: `crate::api::middleware`), and authorizes entries by SPIRE's rule
//! (`super::authorization`). Signing a batch is spread over the cores (`signing`).

mod authentication;
pub mod config;
mod gone_pods;
mod instances;
mod rate_limit;
mod signing;
mod sync;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use sigil_common::listener::{self, Listener, TlsSource};
use sigil_proto::sigil::agent::v1 as pb;
use sigil_proto::sigil::agent::v1::agent_server::{Agent, AgentServer};
use sigil_proto::sigil::common::v1 as common;
use sigil_proto::{Bundle, EntrySpiffeId, SpiffeId, TrustDomain};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};
use tower::Layer as _;

use super::audit;
use super::authorization::{AuthorizationCache, AuthorizationError, AuthorizedEntries};
use super::middleware::{RpcLayer, code_label};
use super::tls::{ServerTls, TlsError};
use super::{ca_status, datastore_status};
use crate::activity::Activity;
use crate::ca::Ca;
use crate::datastore::{AttestedNode, Datastore};
use crate::federation::BundleSet;
use crate::k8s_pods::PodCaches;
use crate::metrics::{LimitLabel, Metrics, ResultLabel};
use crate::node_attestation::join_token::JoinTokenAttestor;
use crate::node_attestation::{AttestationError, NodeAttestor};

pub use authentication::AgentIdentity;
use authentication::{AgentAuthenticator, caller, node_status};
pub use config::{AgentApiConfig, RateLimitConfig};
use gone_pods::GonePods;
use rate_limit::RateLimiter;
use signing::{JwtJob, sign_batch, sign_jwt_batch};
use sync::SyncStream;

/// Every RPC of the service, by its gRPC name (the middleware's metric labels).
const METHODS: &[&str] = &[
    "AttestAgent",
    "RenewAgent",
    "SyncEntries",
    "BatchMintX509SVID",
    "MintJWTSVID",
    "BatchMintJWTSVID",
];

/// The RPCs that change nothing and sign nothing: no audit line (see `crate::api::audit`).
const READ_ONLY: &[&str] = &["SyncEntries"];

/// Both directions; the agent uses the same value (see `sigil_proto::limits`).
const MAX_MESSAGE_SIZE: usize = sigil_proto::limits::AGENT_API_MAX_MESSAGE;
/// Largest BatchMintX509SVID or BatchMintJWTSVID batch.
const MAX_MINT_BATCH: usize = 1000;
/// Most entries (or deleted IDs) in one SyncEntries message.
const SYNC_PAGE: usize = 500;
/// Entry events read per datastore round trip when resuming.
const EVENT_BATCH: u32 = 1000;
/// Safety net under the pushed revision signal.
const FALLBACK_TICK: Duration = Duration::from_secs(5);
/// A full snapshot is re-sent this often, repairing any drift in an agent's cache.
const RESNAPSHOT_EVERY: Duration = Duration::from_secs(5 * 60);
/// SPIRE's node attestation limit: one per second per source IP, with a small burst.
const ATTEST_RATE_PER_SEC: f64 = 1.0;
const ATTEST_BURST: f64 = 5.0;
/// SPIRE's signing limit: 500 SVIDs per second (every item of a batch counts).
pub const SIGN_RATE_PER_SEC: f64 = 500.0;
/// A full bucket holds the largest batch, so any valid batch can pass, and two of the agent's
/// batches of 500: an agent's start-up burst goes through before pacing applies.
pub const SIGN_BURST: f64 = 1000.0;
const _: () = assert!(SIGN_BURST >= MAX_MINT_BATCH as f64);

#[derive(Debug, thiserror::Error)]
pub enum AgentApiError {
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("agent API listener: {0}")]
    Serve(std::io::Error),
}

pub struct AgentApi {
    datastore: Datastore,
    ca: Arc<Ca>,
    trust_domain: TrustDomain,
    metrics: Arc<Metrics>,
    /// What the console shows of recent activity (template instances, agents' syncs).
    activity: Arc<Activity>,
    attestors: HashMap<&'static str, Arc<dyn NodeAttestor>>,
    authorization: Arc<AuthorizationCache>,
    /// The latest entry revision, from the datastore's change feed: wakes sync streams.
    revisions: watch::Receiver<i64>,
    /// `None` when `ratelimit { attestation = false }`.
    attest_limiter: Option<RateLimiter<IpAddr>>,
    /// Per calling agent's SPIFFE ID, not per IP: the ID is authenticated (an IP is shared
    /// by every agent behind one NAT or node, and agents on one host share 127.0.0.1), and
    /// the budget follows the agent across address changes. `None` when
    /// `ratelimit { signing = false }`.
    sign_limiter: Option<RateLimiter<SpiffeId>>,
    /// How often sync streams check for changes without a push ([`FALLBACK_TICK`]).
    sync_fallback: Duration,
    /// Lifetime of agent SVIDs (`agent_ttl`); `None` = the CA's default X.509-SVID TTL.
    agent_ttl: Option<Duration>,
    /// Federated bundles to push to agents, when federation is on.
    federated: Option<watch::Receiver<BundleSet>>,
    /// The pods of each `k8s_psat` cluster: what template instances via a node alias are
    /// checked against (`instances`), and whose removals reach the nodes' agents.
    pod_caches: PodCaches,
    /// Fires when the server shuts down ([`serve`]'s token): sync streams never end by
    /// themselves, so they end then, and agents go on to another replica or the next server.
    shutdown: CancellationToken,
    /// `audit_log_enabled`: see `crate::api::audit`.
    audit_log: bool,
}

impl std::fmt::Debug for AgentApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentApi")
            .field("trust_domain", &self.trust_domain)
            .field("attestors", &self.attestors.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl AgentApi {
    /// Sync streams wake on the datastore's [`Datastore::entry_revisions`] when entries change.
    /// The `join_token` attestor is always available.
    pub fn new(
        datastore: Datastore,
        ca: Arc<Ca>,
        trust_domain: TrustDomain,
        metrics: Arc<Metrics>,
    ) -> Self {
        let join_token: Arc<dyn NodeAttestor> = Arc::new(JoinTokenAttestor::new(
            trust_domain.clone(),
            datastore.clone(),
        ));
        Self {
            authorization: Arc::new(AuthorizationCache::new(
                datastore.clone(),
                trust_domain.clone(),
            )),
            attestors: HashMap::from([(join_token.name(), join_token)]),
            revisions: datastore.entry_revisions(),
            datastore,
            ca,
            trust_domain,
            metrics,
            activity: Arc::default(),
            attest_limiter: Some(RateLimiter::new(ATTEST_RATE_PER_SEC, ATTEST_BURST)),
            sign_limiter: Some(RateLimiter::new(SIGN_RATE_PER_SEC, SIGN_BURST)),
            sync_fallback: FALLBACK_TICK,
            agent_ttl: None,
            federated: None,
            pod_caches: PodCaches::default(),
            shutdown: CancellationToken::new(),
            audit_log: false,
        }
    }

    /// Writes an audit line for every call that changes state or signs
    /// (`audit_log_enabled`).
    pub fn with_audit_log(mut self, on: bool) -> Self {
        self.audit_log = on;
        self
    }

    /// Records recent activity here (shared with the web console).
    pub fn with_activity(mut self, activity: Arc<Activity>) -> Self {
        self.activity = activity;
        self
    }

    /// Checks template instances (and pod-bound fixed entries) reached through a node alias
    /// against these pod caches; without them no such instance is signed.
    pub fn with_pod_caches(mut self, caches: PodCaches) -> Self {
        self.pod_caches = caches;
        self
    }

    /// Pushes federated bundles to agents from this set (see [`crate::federation`]).
    pub fn with_federated_bundles(mut self, federated: watch::Receiver<BundleSet>) -> Self {
        self.federated = Some(federated);
        self
    }

    /// Turns the attestation and signing limits on or off (SPIRE's `ratelimit` block; both
    /// are on by default).
    pub fn with_rate_limits(mut self, limits: RateLimitConfig) -> Self {
        if !limits.attestation {
            self.attest_limiter = None;
        }
        if !limits.signing {
            self.sign_limiter = None;
        }
        self
    }

    /// Takes `n` signings from the agent's budget, or refuses the whole call before anything
    /// is signed.
    fn check_sign_rate(&self, agent: &AgentIdentity, n: usize) -> Result<(), Status> {
        let Some(limiter) = &self.sign_limiter else {
            return Ok(());
        };
        limiter.take(&agent.id, n, Instant::now()).map_err(|wait| {
            self.metrics
                .rate_limited
                .get_or_create(&LimitLabel { limit: "signing" })
                .inc();
            tracing::warn!(agent_id = %agent.id, count = n, "signing rate limit exceeded");
            Status::resource_exhausted(format!(
                "signing rate limit exceeded for this agent ({SIGN_RATE_PER_SEC} SVIDs per \
                 second, bursts of {SIGN_BURST}); nothing was signed; retry in {:.1}s",
                wait.as_secs_f64().max(0.1)
            ))
        })
    }

    /// Sets the lifetime of agent SVIDs (SPIRE's `agent_ttl`).
    pub fn with_agent_ttl(mut self, ttl: Duration) -> Self {
        self.agent_ttl = Some(ttl);
        self
    }

    /// Adds (or replaces) a node attestor, e.g. `k8s_psat`.
    pub fn with_attestor(mut self, attestor: Arc<dyn NodeAttestor>) -> Self {
        self.attestors.insert(attestor.name(), attestor);
        self
    }

    async fn authorized(&self, agent: &AgentIdentity) -> Result<Arc<AuthorizedEntries>, Status> {
        self.authorization
            .authorized(&agent.id, &agent.selectors)
            .await
            .map_err(authorization_status)
    }

    fn count_signed(&self, n: usize, ok: bool) {
        self.metrics
            .x509_svids_signed
            .get_or_create(&ResultLabel {
                result: if ok { "ok" } else { "error" },
            })
            .inc_by(n as u64);
    }

    fn count_jwt_signed<T>(&self, signed: &[Result<T, Status>]) {
        let ok = signed.iter().filter(|s| s.is_ok()).count();
        for (n, result) in [(ok, "ok"), (signed.len() - ok, "error")] {
            if n > 0 {
                self.metrics
                    .jwt_svids_signed
                    .get_or_create(&ResultLabel { result })
                    .inc_by(n as u64);
            }
        }
    }

    /// Refuses the whole call when any requested entry is outside the authorized set, naming it.
    fn check_authorized<'a>(
        &self,
        agent: &AgentIdentity,
        authorized: &'a AuthorizedEntries,
        entry_id: &str,
    ) -> Result<&'a sigil_proto::RegistrationEntry, Status> {
        authorized.get(entry_id).ok_or_else(|| {
            // A forged or stale request: an operator wants to see this.
            tracing::warn!(agent_id = %agent.id, entry_id, "agent asked for an entry it is not authorized for");
            Status::permission_denied(format!(
                "entry {entry_id:?} does not exist or is not authorized for this agent"
            ))
        })
    }

    /// The SPIFFE ID to mint for `entry`: the requested one, which for a template entry must
    /// be an instance of the template and for a fixed entry must be empty or the entry's ID,
    /// and never in the reserved namespace (every agent API mint goes through here; an entry
    /// stored before that check existed is refused here too, not only left out of the
    /// authorized set).
    fn requested_id(
        &self,
        agent: &AgentIdentity,
        entry: &sigil_proto::RegistrationEntry,
        requested: &str,
    ) -> Result<SpiffeId, Status> {
        let refuse = |why: &str| {
            tracing::warn!(agent_id = %agent.id, entry_id = %entry.id, requested, "agent asked for an ID the entry does not give: {why}");
            Status::permission_denied(format!(
                "entry {:?} does not give the SPIFFE ID {requested:?}: {why}",
                entry.id
            ))
        };
        let id = if requested.is_empty() {
            match &entry.spiffe_id {
                EntrySpiffeId::Template(_) => {
                    return Err(refuse("a template entry needs the rendered SPIFFE ID"));
                }
                EntrySpiffeId::Fixed(id) => id.clone(),
            }
        } else {
            SpiffeId::new(requested).map_err(|_| refuse("not a valid SPIFFE ID"))?
        };
        if let Err(reserved) = id.check_not_reserved() {
            return Err(refuse(&reserved.to_string()));
        }
        if !entry.allows(&id) {
            return Err(refuse(match entry.spiffe_id {
                EntrySpiffeId::Template(_) => "not an instance of the entry's template",
                EntrySpiffeId::Fixed(_) => "not the entry's SPIFFE ID",
            }));
        }
        Ok(id)
    }

    /// Refuses `id` under `entry` unless the agent owns the entry or the Kubernetes API vouches
    /// for the pod `pod_uid` on the agent's node (see `instances`).
    fn check_instance(
        &self,
        agent: &AgentIdentity,
        entry: &sigil_proto::RegistrationEntry,
        id: &SpiffeId,
        pod_uid: &str,
    ) -> Result<(), Status> {
        instances::check(
            &self.pod_caches,
            agent,
            entry,
            id,
            pod_uid,
            SystemTime::now(),
        )
        .map(|()| {
            if matches!(entry.spiffe_id, EntrySpiffeId::Template(_)) {
                self.activity.instance_minted(&entry.id, id);
            }
        })
        .map_err(|refusal| {
            tracing::warn!(agent_id = %agent.id, entry_id = %entry.id, spiffe_id = %id, pod_uid, "mint refused: {refusal}");
            let message = format!(
                "entry {:?} does not give {id} to this agent: {refusal}",
                entry.id
            );
            // A pod cache not (or no longer) in step with the API judges nothing about the
            // request: Unavailable, so the agent keeps serving what it holds and retries,
            // instead of withdrawing valid SVIDs as it does on a refusal.
            if matches!(refusal, instances::Refusal::Cache(_)) {
                Status::unavailable(message)
            } else {
                Status::permission_denied(message)
            }
        })
    }

    /// What a mint batch will sign, each item checked before any is signed (one refusal
    /// refuses the whole call): its entry must be authorized for the agent and give the SPIFFE
    /// ID asked for for that pod (`ids`: the item's entry ID, requested ID and pod UID); `job`
    /// checks the rest of the item and makes what is signed. The audit target is the batch's
    /// size and, once every item passed, their entry and SPIFFE IDs.
    async fn batch_jobs<T, J>(
        &self,
        agent: &AgentIdentity,
        items: Vec<T>,
        ids: impl Fn(&T) -> (&String, &String, &String),
        job: impl Fn(T, &sigil_proto::RegistrationEntry, SpiffeId) -> Result<J, Status>,
    ) -> Result<Vec<J>, Status> {
        audit::record(|t| t.count = Some(items.len() as u64));
        check_batch_len(items.len())?;
        let authorized = self.authorized(agent).await?;
        let mut signed_for = Vec::with_capacity(items.len());
        let jobs = items
            .into_iter()
            .map(|item| {
                let (entry_id, requested, pod_uid) = ids(&item);
                let entry = self.check_authorized(agent, &authorized, entry_id)?;
                let id = self.requested_id(agent, entry, requested)?;
                self.check_instance(agent, entry, &id, pod_uid)?;
                signed_for.push((entry.id.clone(), id.clone()));
                job(item, entry, id)
            })
            .collect::<Result<Vec<_>, _>>()?;
        audit::record(|t| {
            t.entry_ids = Some(audit::list(signed_for.iter().map(|(entry, _)| entry)));
            t.spiffe_ids = Some(audit::list(signed_for.iter().map(|(_, id)| id)));
        });
        Ok(jobs)
    }

    async fn attest(
        &self,
        req: Request<pb::AttestAgentRequest>,
    ) -> Result<pb::AttestAgentResponse, Status> {
        if let Some(ip) = req.remote_addr().map(|a: SocketAddr| a.ip())
            && let Some(limiter) = &self.attest_limiter
            && !limiter.allow(&ip, Instant::now())
        {
            self.metrics
                .rate_limited
                .get_or_create(&LimitLabel {
                    limit: "attestation",
                })
                .inc();
            tracing::warn!(peer = %ip, "node attestation rate limit exceeded");
            return Err(Status::resource_exhausted(
                "too many attestation attempts from this address; retry later",
            ));
        }
        let req = req.into_inner();
        let attestor = self
            .attestors
            .get(req.attestation_type.as_str())
            .ok_or_else(|| {
                Status::invalid_argument(format!(
                    "unknown attestation type {:?}",
                    req.attestation_type
                ))
            })?;
        audit::record(|t| t.attestation_type = Some(attestor.name().to_owned()));
        if req.csr.is_empty() {
            return Err(Status::invalid_argument("a CSR is required"));
        }
        let attested = attestor.attest(&req.payload).await.map_err(|e| match e {
            AttestationError::InvalidPayload(m) => Status::invalid_argument(m),
            AttestationError::Denied(m) => Status::permission_denied(m),
            AttestationError::Unverifiable(m) => Status::internal(m),
            AttestationError::Internal(m) => {
                tracing::error!(attestation_type = attestor.name(), error = %m, "node attestation failed");
                Status::internal("node attestation could not be completed")
            }
        })?;
        let agent_id = attested.agent_id;
        // Only now: a join token the attestor refused is in no one's agent ID.
        audit::record(|t| t.agent_id = Some(agent_id.to_string()));
        if let Some(existing) = self
            .datastore
            .fetch_attested_node(&agent_id)
            .await
            .map_err(datastore_status)?
        {
            if existing.banned {
                tracing::warn!(agent_id = %agent_id, "banned agent tried to attest");
                return Err(Status::permission_denied("agent is banned"));
            }
            // SPIRE's rule: only attestors whose evidence renews itself (PSAT) may attest an
            // existing node again; anything else must be evicted first.
            if !attested.can_reattest {
                tracing::warn!(agent_id = %agent_id, attestation_type = attestor.name(), "attestation for an already attested node refused");
                return Err(Status::already_exists(
                    "this node is already attested and its attestor does not allow re-attestation; evict it first",
                ));
            }
        }
        let svid = self
            .ca
            .sign_x509_svid_csr(&req.csr, &agent_id, self.agent_ttl, &[])
            .map_err(ca_status)?;
        audit_svid(&svid);
        self.count_signed(1, true);
        self.datastore
            .create_attested_node(AttestedNode {
                spiffe_id: agent_id.clone(),
                attestation_type: attestor.name().to_owned(),
                selectors: attested.selectors,
                cert_serial: svid.serial.clone(),
                cert_expires_at: svid.expires_at,
                new_cert_serial: None,
                banned: false,
                created_at: 0,
                updated_at: 0,
            })
            .await
            .map_err(datastore_status)?;
        self.authorization.forget(&agent_id);
        // The join token is spent by now, so the agent ID that embeds it is no secret any more.
        tracing::info!(agent_id = %agent_id, attestation_type = attestor.name(), serial = %svid.serial, "agent attested");
        Ok(pb::AttestAgentResponse {
            spiffe_id: agent_id.to_string(),
            svid_chain: svid.chain,
            bundle: Some(common::Bundle::from(self.ca.bundle().as_ref())),
        })
    }
}

/// The audit target of an agent SVID signed: its serial and expiry.
fn audit_svid(svid: &crate::ca::X509Svid) {
    audit::record(|t| {
        t.serial = Some(svid.serial.clone());
        t.expires_at = Some(svid.expires_at);
    });
}

fn authorization_status(e: AuthorizationError) -> Status {
    match e {
        AuthorizationError::Datastore(e) => datastore_status(e),
    }
}

#[tonic::async_trait]
impl Agent for AgentApi {
    async fn attest_agent(
        &self,
        req: Request<pb::AttestAgentRequest>,
    ) -> Result<Response<pb::AttestAgentResponse>, Status> {
        let r = self.attest(req).await;
        self.metrics
            .node_attestations
            .get_or_create(&ResultLabel {
                result: match &r {
                    Ok(_) => "ok",
                    Err(s) => code_label(s.code()),
                },
            })
            .inc();
        r.map(Response::new)
    }

    async fn renew_agent(
        &self,
        req: Request<pb::RenewAgentRequest>,
    ) -> Result<Response<pb::RenewAgentResponse>, Status> {
        let agent = caller(&req)?;
        let req = req.into_inner();
        if req.csr.is_empty() {
            return Err(Status::invalid_argument("a CSR is required"));
        }
        self.check_sign_rate(&agent, 1)?;
        let svid = self
            .ca
            .sign_x509_svid_csr(&req.csr, &agent.id, self.agent_ttl, &[])
            .map_err(ca_status)?;
        audit_svid(&svid);
        self.count_signed(1, true);
        let node = node_status(&self.datastore, &agent.id).await?;
        // The old SVID stays valid until the agent presents this one (see `authentication`).
        self.datastore
            .update_attested_node_serial(
                &agent.id,
                &node.cert_serial,
                svid.expires_at.max(node.cert_expires_at),
                Some(&svid.serial),
            )
            .await
            .map_err(datastore_status)?;
        tracing::debug!(agent_id = %agent.id, serial = %svid.serial, "agent SVID renewed");
        Ok(Response::new(pb::RenewAgentResponse {
            svid_chain: svid.chain,
        }))
    }

    type SyncEntriesStream = ReceiverStream<Result<pb::SyncEntriesResponse, Status>>;

    async fn sync_entries(
        &self,
        req: Request<pb::SyncEntriesRequest>,
    ) -> Result<Response<Self::SyncEntriesStream>, Status> {
        let agent = caller(&req)?;
        let since = req.into_inner().since_revision;
        let (tx, rx) = mpsc::channel(4);
        let sync = SyncStream {
            datastore: self.datastore.clone(),
            ca: self.ca.clone(),
            authorization: self.authorization.clone(),
            revisions: self.revisions.clone(),
            metrics: self.metrics.clone(),
            activity: self.activity.clone(),
            tx,
            known: HashMap::new(),
            revision: 0,
            fallback: self.sync_fallback,
            federated: self.federated.clone(),
            federates_with: BTreeSet::new(),
            sent_federated: None,
            gone_pods: GonePods::for_agent(&self.pod_caches, &agent),
            shutdown: self.shutdown.clone(),
            agent,
        };
        tokio::spawn(sync.run(since));
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn batch_mint_x509svid(
        &self,
        req: Request<pb::BatchMintX509svidRequest>,
    ) -> Result<Response<pb::BatchMintX509svidResponse>, Status> {
        let agent = caller(&req)?;
        let jobs = self
            .batch_jobs(
                &agent,
                req.into_inner().requests,
                |r| (&r.entry_id, &r.spiffe_id, &r.pod_uid),
                |r, entry, id| {
                    if r.csr.is_empty() {
                        return Err(Status::invalid_argument(format!(
                            "entry {:?}: a CSR is required",
                            r.entry_id
                        )));
                    }
                    Ok((entry.clone(), id, r.csr))
                },
            )
            .await?;
        self.check_sign_rate(&agent, jobs.len())?;
        let svids = sign_batch(self.ca.clone(), jobs).await;
        self.count_signed(svids.iter().filter(|s| s.is_ok()).count(), true);
        let failed = svids.iter().filter(|s| s.is_err()).count();
        if failed > 0 {
            self.count_signed(failed, false);
        }
        let svids = svids.into_iter().collect::<Result<Vec<_>, _>>()?;
        tracing::debug!(agent_id = %agent.id, count = svids.len(), "X.509-SVIDs minted");
        Ok(Response::new(pb::BatchMintX509svidResponse { svids }))
    }

    async fn mint_jwtsvid(
        &self,
        req: Request<pb::MintJwtsvidRequest>,
    ) -> Result<Response<pb::MintJwtsvidResponse>, Status> {
        let agent = caller(&req)?;
        let req = req.into_inner();
        if req.audience.is_empty() || req.audience.iter().any(String::is_empty) {
            return Err(Status::invalid_argument(
                "at least one non-empty audience is required",
            ));
        }
        let authorized = self.authorized(&agent).await?;
        let entry = self.check_authorized(&agent, &authorized, &req.entry_id)?;
        let id = self.requested_id(&agent, entry, &req.spiffe_id)?;
        audit::record(|t| {
            t.entry_id = Some(entry.id.clone());
            t.spiffe_id = Some(id.to_string());
            t.audience = Some(audit::list(&req.audience));
        });
        self.check_instance(&agent, entry, &id, &req.pod_uid)?;
        self.check_sign_rate(&agent, 1)?;
        let signed = self
            .ca
            .sign_jwt_svid(&id, &req.audience, entry.jwt_svid_ttl);
        self.metrics
            .jwt_svids_signed
            .get_or_create(&ResultLabel {
                result: crate::metrics::result_of(&signed),
            })
            .inc();
        let svid = signed.map_err(ca_status)?;
        audit::record(|t| t.expires_at = Some(svid.expires_at));
        Ok(Response::new(pb::MintJwtsvidResponse {
            token: svid.token,
            expires_at: svid.expires_at,
        }))
    }

    async fn batch_mint_jwtsvid(
        &self,
        req: Request<pb::BatchMintJwtsvidRequest>,
    ) -> Result<Response<pb::BatchMintJwtsvidResponse>, Status> {
        let agent = caller(&req)?;
        let jobs = self
            .batch_jobs(
                &agent,
                req.into_inner().requests,
                |r| (&r.entry_id, &r.spiffe_id, &r.pod_uid),
                |r, entry, id| {
                    if r.audience.is_empty() || r.audience.iter().any(String::is_empty) {
                        return Err(Status::invalid_argument(format!(
                            "entry {:?}: at least one non-empty audience is required",
                            r.entry_id
                        )));
                    }
                    Ok(JwtJob {
                        entry_id: r.entry_id,
                        jwt_svid_ttl: entry.jwt_svid_ttl,
                        id,
                        audience: r.audience,
                    })
                },
            )
            .await?;
        // Every audience asked for, once.
        audit::record(|t| {
            let audiences: BTreeSet<&String> = jobs.iter().flat_map(|j| &j.audience).collect();
            t.audience = Some(audit::list(audiences));
        });
        self.check_sign_rate(&agent, jobs.len())?;
        let signed = sign_jwt_batch(self.ca.clone(), jobs).await;
        self.count_jwt_signed(&signed);
        let svids = signed
            .into_iter()
            .map(|s| {
                s.map(|svid| pb::MintJwtsvidResponse {
                    token: svid.token,
                    expires_at: svid.expires_at,
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        tracing::debug!(agent_id = %agent.id, count = svids.len(), "JWT-SVIDs minted");
        Ok(Response::new(pb::BatchMintJwtsvidResponse { svids }))
    }
}

/// Refuses a mint batch over [`MAX_MINT_BATCH`] before any work is done.
fn check_batch_len(len: usize) -> Result<(), Status> {
    if len > MAX_MINT_BATCH {
        return Err(Status::invalid_argument(format!(
            "a batch holds at most {MAX_MINT_BATCH} requests"
        )));
    }
    Ok(())
}

/// Serves the agent API on `listener` (bound to `bind_address`, with its connection caps)
/// until `cancel` fires. Issues the server's SVID and keeps it (and the trusted bundle) current
/// in the background.
pub async fn serve(
    listener: Listener,
    mut api: AgentApi,
    cancel: CancellationToken,
) -> Result<(), AgentApiError> {
    api.shutdown = cancel.clone();
    let tls = Arc::new(ServerTls::new(api.ca.clone())?);
    // In the agent API task's span.
    let refresh = tls.clone().refresh_forever(cancel.clone());
    tokio::spawn(tracing::Instrument::in_current_span(refresh));
    let layer = RpcLayer::new(
        AgentAuthenticator::new(api.datastore.clone(), api.trust_domain.clone()),
        api.metrics.agent_requests.clone(),
    )
    .with_audit_log(api.audit_log);
    let service = AgentServer::new(api)
        .max_decoding_message_size(MAX_MESSAGE_SIZE)
        .max_encoding_message_size(MAX_MESSAGE_SIZE);
    let routes = tonic::service::Routes::new(layer.layer(service));
    let acceptor: TlsSource = Arc::new(move || tokio_rustls::TlsAcceptor::from(tls.config()));
    listener::serve_grpc(listener, acceptor, routes, cancel)
        .await
        .map_err(AgentApiError::Serve)
}
