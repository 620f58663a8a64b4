//! The agent API (`sigil.agent.v1.Agent`) on `bind_address`, over TLS (see [`super::tls`]).
//!
//! AttestAgent needs no client certificate; every other RPC authenticates the caller by its
//! agent X.509-SVID ([`AgentApi::authenticate`]) and authorizes entries by SPIRE's rule
//! ([`super::authorization`]).
//!
//! Renewal follows SPIRE: RenewAgent records the new SVID's serial as the node's
//! `new_cert_serial` and the old SVID keeps working until the agent first presents the new
//! one, which then becomes `cert_serial`; from then on the old SVID is refused. A lost
//! RenewAgent response therefore never locks an agent out.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use sigil_proto::sigil::agent::v1 as pb;
use sigil_proto::sigil::agent::v1::agent_server::{Agent, AgentServer};
use sigil_proto::sigil::common::v1 as common;
use sigil_proto::{Bundle, Selector, SpiffeId, TrustDomain};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

use super::authorization::{AuthorizationCache, AuthorizationError, AuthorizedEntries};
use super::tls::{self, ServerTls, TlsError};
use super::{ca_status, datastore_status};
use crate::ca::Ca;
use crate::datastore::{AttestedNode, Datastore};
use crate::metrics::{Metrics, ResultLabel, RpcLabels};
use crate::node_attestation::join_token::JoinTokenAttestor;
use crate::node_attestation::{AttestationError, NodeAttestor};

/// gRPC message limit, both ways: a full page of entries or a 1000-CSR batch fits well inside.
const MAX_MESSAGE_SIZE: usize = 16 << 20;
/// Largest BatchMintX509SVID batch.
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

#[derive(Debug, thiserror::Error)]
pub enum AgentApiError {
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("agent API transport: {0}")]
    Transport(#[from] tonic::transport::Error),
}

/// Who called: an attested, unbanned agent presenting its current SVID.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentIdentity {
    pub id: SpiffeId,
    /// The node selectors recorded at attestation.
    pub selectors: Vec<Selector>,
}

pub struct AgentApi {
    datastore: Datastore,
    ca: Arc<Ca>,
    trust_domain: TrustDomain,
    metrics: Arc<Metrics>,
    attestors: HashMap<&'static str, Arc<dyn NodeAttestor>>,
    authorization: Arc<AuthorizationCache>,
    /// The latest entry revision, bumped by the admin API after each committed change.
    revisions: watch::Receiver<i64>,
    attest_limiter: RateLimiter,
    /// How often sync streams check for changes without a push ([`FALLBACK_TICK`]).
    sync_fallback: Duration,
    /// Lifetime of agent SVIDs (`agent_ttl`); `None` = the CA's default X.509-SVID TTL.
    agent_ttl: Option<Duration>,
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
    /// `revisions` is [`super::admin::AdminApi::entry_revisions`]: it wakes sync streams
    /// when entries change. The `join_token` attestor is always available.
    pub fn new(
        datastore: Datastore,
        ca: Arc<Ca>,
        trust_domain: TrustDomain,
        metrics: Arc<Metrics>,
        revisions: watch::Receiver<i64>,
    ) -> Self {
        let join_token: Arc<dyn NodeAttestor> = Arc::new(JoinTokenAttestor::new(
            trust_domain.clone(),
            datastore.clone(),
        ));
        AgentApi {
            authorization: Arc::new(AuthorizationCache::new(
                datastore.clone(),
                trust_domain.clone(),
            )),
            attestors: HashMap::from([(join_token.name(), join_token)]),
            datastore,
            ca,
            trust_domain,
            metrics,
            revisions,
            attest_limiter: RateLimiter::new(ATTEST_RATE_PER_SEC, ATTEST_BURST),
            sync_fallback: FALLBACK_TICK,
            agent_ttl: None,
        }
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

    /// Authenticates the caller by the agent SVID it presented in the TLS handshake (already
    /// verified against the bundle by rustls): an agent ID of our trust domain, an attested
    /// node that is not banned, and the node's current (or just renewed) serial.
    pub async fn authenticate<T>(&self, req: &Request<T>) -> Result<AgentIdentity, Status> {
        let certs = req
            .peer_certs()
            .filter(|c| !c.is_empty())
            .ok_or_else(|| Status::unauthenticated("an agent X.509-SVID is required"))?;
        let presented = PresentedSvid::parse(&certs[0])?;
        if presented.id.trust_domain() != &self.trust_domain || !presented.id.is_agent_id() {
            return Err(Status::permission_denied(format!(
                "{} is not an agent ID of trust domain {}",
                presented.id, self.trust_domain
            )));
        }
        let node = self.current_node(&presented.id).await?;
        if presented.serial != node.cert_serial {
            if node.new_cert_serial.as_deref() != Some(presented.serial.as_str()) {
                return Err(Status::permission_denied(
                    "agent SVID is not the current one; renew or attest again",
                ));
            }
            // First call with the renewed SVID: it becomes the node's only accepted one.
            self.datastore
                .update_attested_node_serial(
                    &presented.id,
                    &presented.serial,
                    node.cert_expires_at,
                    None,
                )
                .await
                .map_err(datastore_status)?;
        }
        Ok(AgentIdentity {
            id: presented.id,
            selectors: node.selectors,
        })
    }

    /// The attested node, refusing evicted and banned agents.
    async fn current_node(&self, id: &SpiffeId) -> Result<AttestedNode, Status> {
        node_status(&self.datastore, id).await
    }

    async fn authorized(&self, agent: &AgentIdentity) -> Result<Arc<AuthorizedEntries>, Status> {
        self.authorization
            .authorized(&agent.id, &agent.selectors)
            .await
            .map_err(authorization_status)
    }

    fn count<T>(&self, method: &'static str, r: &Result<T, Status>) {
        let result = match r {
            Ok(_) => "ok",
            Err(s) => code_label(s.code()),
        };
        self.metrics
            .agent_requests
            .get_or_create(&RpcLabels { method, result })
            .inc();
    }

    fn count_signed(&self, n: usize, ok: bool) {
        self.metrics
            .x509_svids_signed
            .get_or_create(&ResultLabel {
                result: if ok { "ok" } else { "error" },
            })
            .inc_by(n as u64);
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

    async fn attest(
        &self,
        req: Request<pb::AttestAgentRequest>,
    ) -> Result<pb::AttestAgentResponse, Status> {
        if let Some(ip) = req.remote_addr().map(|a: SocketAddr| a.ip())
            && !self.attest_limiter.allow(ip, Instant::now())
        {
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
        if req.csr.is_empty() {
            return Err(Status::invalid_argument("a CSR is required"));
        }
        let attested = attestor.attest(&req.payload).await.map_err(|e| match e {
            AttestationError::InvalidPayload(m) => Status::invalid_argument(m),
            AttestationError::Denied(m) => Status::permission_denied(m),
            AttestationError::Internal(m) => {
                tracing::error!(attestation_type = attestor.name(), error = %m, "node attestation failed");
                Status::internal("node attestation could not be completed")
            }
        })?;
        let agent_id = attested.agent_id;
        if let Some(existing) = self
            .datastore
            .fetch_attested_node(&agent_id)
            .await
            .map_err(datastore_status)?
            && existing.banned
        {
            tracing::warn!(agent_id = %agent_id, "banned agent tried to attest");
            return Err(Status::permission_denied("agent is banned"));
        }
        let svid = self
            .ca
            .sign_x509_svid_csr(&req.csr, &agent_id, self.agent_ttl, &[])
            .map_err(ca_status)?;
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

/// What the presented leaf says.
struct PresentedSvid {
    id: SpiffeId,
    /// Hex, no leading zero bytes (as the CA records it).
    serial: String,
}

impl PresentedSvid {
    fn parse(der: &[u8]) -> Result<Self, Status> {
        let bad = |why: &str| Status::unauthenticated(format!("invalid agent SVID: {why}"));
        let (_, cert) =
            X509Certificate::from_der(der).map_err(|_| bad("not an X.509 certificate"))?;
        let san = cert
            .subject_alternative_name()
            .map_err(|_| bad("malformed subjectAltName"))?
            .ok_or_else(|| bad("no URI SAN"))?;
        let mut uris = san.value.general_names.iter().filter_map(|n| match n {
            GeneralName::URI(u) => Some(*u),
            _ => None,
        });
        let (Some(uri), None) = (uris.next(), uris.next()) else {
            return Err(bad("an X.509-SVID carries exactly one URI SAN"));
        };
        let id = SpiffeId::new(uri).map_err(|e| bad(&e.to_string()))?;
        let raw = cert.tbs_certificate.raw_serial();
        let start = raw
            .iter()
            .position(|&b| b != 0)
            .unwrap_or(raw.len().saturating_sub(1));
        Ok(PresentedSvid {
            id,
            serial: hex::encode(&raw[start..]),
        })
    }
}

async fn node_status(datastore: &Datastore, id: &SpiffeId) -> Result<AttestedNode, Status> {
    match datastore
        .fetch_attested_node(id)
        .await
        .map_err(datastore_status)?
    {
        None => Err(Status::permission_denied(
            "agent is not attested or was evicted",
        )),
        Some(n) if n.banned => Err(Status::permission_denied("agent is banned")),
        Some(n) => Ok(n),
    }
}

fn authorization_status(e: AuthorizationError) -> Status {
    match e {
        AuthorizationError::Datastore(e) => datastore_status(e),
    }
}

fn code_label(code: tonic::Code) -> &'static str {
    match code {
        tonic::Code::InvalidArgument => "invalid_argument",
        tonic::Code::NotFound => "not_found",
        tonic::Code::PermissionDenied => "permission_denied",
        tonic::Code::Unauthenticated => "unauthenticated",
        tonic::Code::ResourceExhausted => "resource_exhausted",
        _ => "error",
    }
}

fn ttl(seconds: u32) -> Option<Duration> {
    (seconds != 0).then(|| Duration::from_secs(seconds.into()))
}

#[tonic::async_trait]
impl Agent for AgentApi {
    async fn attest_agent(
        &self,
        req: Request<pb::AttestAgentRequest>,
    ) -> Result<Response<pb::AttestAgentResponse>, Status> {
        let r = self.attest(req).await;
        self.count("AttestAgent", &r);
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
        let r = async {
            let agent = self.authenticate(&req).await?;
            let req = req.into_inner();
            if req.csr.is_empty() {
                return Err(Status::invalid_argument("a CSR is required"));
            }
            let svid = self
                .ca
                .sign_x509_svid_csr(&req.csr, &agent.id, self.agent_ttl, &[])
                .map_err(ca_status)?;
            self.count_signed(1, true);
            let node = self.current_node(&agent.id).await?;
            // The old SVID stays valid until the agent presents this one (see the module docs).
            self.datastore
                .update_attested_node_serial(
                    &agent.id,
                    &node.cert_serial,
                    svid.expires_at.max(node.cert_expires_at),
                    Some(&svid.serial),
                )
                .await
                .map_err(datastore_status)?;
            tracing::info!(agent_id = %agent.id, serial = %svid.serial, "agent SVID renewed");
            Ok(pb::RenewAgentResponse {
                svid_chain: svid.chain,
            })
        }
        .await;
        self.count("RenewAgent", &r);
        r.map(Response::new)
    }

    type SyncEntriesStream = ReceiverStream<Result<pb::SyncEntriesResponse, Status>>;

    async fn sync_entries(
        &self,
        req: Request<pb::SyncEntriesRequest>,
    ) -> Result<Response<Self::SyncEntriesStream>, Status> {
        let r = self.authenticate(&req).await;
        self.count("SyncEntries", &r);
        let agent = r?;
        let since = req.into_inner().since_revision;
        let (tx, rx) = mpsc::channel(4);
        let sync = SyncStream {
            datastore: self.datastore.clone(),
            ca: self.ca.clone(),
            authorization: self.authorization.clone(),
            revisions: self.revisions.clone(),
            metrics: self.metrics.clone(),
            agent,
            tx,
            known: HashMap::new(),
            revision: 0,
            fallback: self.sync_fallback,
        };
        tokio::spawn(sync.run(since));
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn batch_mint_x509svid(
        &self,
        req: Request<pb::BatchMintX509svidRequest>,
    ) -> Result<Response<pb::BatchMintX509svidResponse>, Status> {
        let r = async {
            let agent = self.authenticate(&req).await?;
            let req = req.into_inner();
            if req.requests.len() > MAX_MINT_BATCH {
                return Err(Status::invalid_argument(format!(
                    "a batch holds at most {MAX_MINT_BATCH} requests"
                )));
            }
            let authorized = self.authorized(&agent).await?;
            let mut jobs = Vec::with_capacity(req.requests.len());
            for r in req.requests {
                let entry = self.check_authorized(&agent, &authorized, &r.entry_id)?;
                if r.csr.is_empty() {
                    return Err(Status::invalid_argument(format!(
                        "entry {:?}: a CSR is required",
                        r.entry_id
                    )));
                }
                jobs.push((entry.clone(), r.csr));
            }
            let svids = sign_batch(self.ca.clone(), jobs).await;
            self.count_signed(svids.iter().filter(|s| s.is_ok()).count(), true);
            let failed = svids.iter().filter(|s| s.is_err()).count();
            if failed > 0 {
                self.count_signed(failed, false);
            }
            let svids = svids.into_iter().collect::<Result<Vec<_>, _>>()?;
            tracing::debug!(agent_id = %agent.id, count = svids.len(), "X.509-SVIDs minted");
            Ok(pb::BatchMintX509svidResponse { svids })
        }
        .await;
        self.count("BatchMintX509SVID", &r);
        r.map(Response::new)
    }

    async fn mint_jwtsvid(
        &self,
        req: Request<pb::MintJwtsvidRequest>,
    ) -> Result<Response<pb::MintJwtsvidResponse>, Status> {
        let r = async {
            let agent = self.authenticate(&req).await?;
            let req = req.into_inner();
            if req.audience.is_empty() || req.audience.iter().any(String::is_empty) {
                return Err(Status::invalid_argument(
                    "at least one non-empty audience is required",
                ));
            }
            let authorized = self.authorized(&agent).await?;
            let entry = self.check_authorized(&agent, &authorized, &req.entry_id)?;
            let signed =
                self.ca
                    .sign_jwt_svid(&entry.spiffe_id, &req.audience, ttl(entry.jwt_svid_ttl));
            self.metrics
                .jwt_svids_signed
                .get_or_create(&ResultLabel {
                    result: crate::metrics::result_of(&signed),
                })
                .inc();
            let svid = signed.map_err(ca_status)?;
            Ok(pb::MintJwtsvidResponse {
                token: svid.token,
                expires_at: svid.expires_at,
            })
        }
        .await;
        self.count("MintJWTSVID", &r);
        r.map(Response::new)
    }
}

/// Signs every `(entry, csr)` off the async runtime, in one chunk per core. Results keep the
/// request order.
async fn sign_batch(
    ca: Arc<Ca>,
    jobs: Vec<(sigil_proto::RegistrationEntry, Vec<u8>)>,
) -> Vec<Result<pb::X509svidResult, Status>> {
    if jobs.is_empty() {
        return Vec::new();
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let chunk = jobs.len().div_ceil(cores);
    let mut handles = Vec::new();
    let mut jobs = jobs.into_iter();
    loop {
        let part: Vec<_> = jobs.by_ref().take(chunk).collect();
        if part.is_empty() {
            break;
        }
        let ca = ca.clone();
        handles.push(tokio::task::spawn_blocking(move || {
            part.into_iter()
                .map(|(entry, csr)| {
                    let svid = ca
                        .sign_x509_svid_csr(
                            &csr,
                            &entry.spiffe_id,
                            ttl(entry.x509_svid_ttl),
                            &entry.dns_names,
                        )
                        .map_err(|e| {
                            Status::invalid_argument(format!(
                                "entry {:?}: {}",
                                entry.id,
                                ca_status(e).message()
                            ))
                        })?;
                    Ok(pb::X509svidResult {
                        entry_id: entry.id,
                        svid_chain: svid.chain,
                        expires_at: svid.expires_at,
                    })
                })
                .collect::<Vec<_>>()
        }));
    }
    let mut out = Vec::new();
    for h in handles {
        match h.await {
            Ok(part) => out.extend(part),
            Err(e) => {
                tracing::error!(error = %e, "signing task failed");
                out.push(Err(Status::internal("signing failure")));
            }
        }
    }
    out
}

/// One agent's SyncEntries stream: a producer task feeding the response channel.
struct SyncStream {
    datastore: Datastore,
    ca: Arc<Ca>,
    authorization: Arc<AuthorizationCache>,
    revisions: watch::Receiver<i64>,
    metrics: Arc<Metrics>,
    agent: AgentIdentity,
    tx: mpsc::Sender<Result<pb::SyncEntriesResponse, Status>>,
    /// What the agent holds: entry ID → revision.
    known: HashMap<String, i64>,
    /// The revision the agent has been brought up to.
    revision: i64,
    fallback: Duration,
}

/// Keeps `connected_agents` right however the stream ends.
struct ConnectedGuard(Arc<Metrics>);

impl Drop for ConnectedGuard {
    fn drop(&mut self) {
        self.0.connected_agents.dec();
    }
}

impl SyncStream {
    async fn run(mut self, since: i64) {
        self.metrics.connected_agents.inc();
        let _guard = ConnectedGuard(self.metrics.clone());
        let agent_id = self.agent.id.clone();
        tracing::debug!(agent_id = %agent_id, since, "sync stream opened");
        match self.stream(since).await {
            Ok(()) | Err(StreamError::Closed) => {
                tracing::debug!(agent_id = %agent_id, "sync stream closed")
            }
            Err(StreamError::Status(status)) => {
                tracing::info!(agent_id = %agent_id, reason = %status.message(), "sync stream ended");
                let _ = self.tx.send(Err(status)).await;
            }
        }
    }

    async fn stream(&mut self, since: i64) -> Result<(), StreamError> {
        let mut bundles = self.ca.subscribe();
        let bundle = bundles.borrow_and_update().clone();
        let mut revisions_open = true;
        let mut revisions = self.revisions.clone();
        revisions.borrow_and_update();

        let resumed = if since > 0 {
            self.resume(since, &bundle).await?
        } else {
            false
        };
        if !resumed {
            self.snapshot(Some(&bundle)).await?;
        }

        let mut fallback = tokio::time::interval(self.fallback);
        fallback.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut resnapshot = tokio::time::interval_at(
            tokio::time::Instant::now() + RESNAPSHOT_EVERY,
            RESNAPSHOT_EVERY,
        );
        loop {
            let mut full = false;
            tokio::select! {
                () = self.tx.closed() => return Ok(()),
                changed = async {
                    if revisions_open { revisions.changed().await } else { std::future::pending().await }
                } => {
                    // Without the admin API's sender, the fallback tick carries on alone.
                    revisions_open = changed.is_ok();
                }
                _ = fallback.tick() => {}
                _ = resnapshot.tick() => full = true,
                changed = bundles.changed() => {
                    if changed.is_err() {
                        return Err(Status::unavailable("the server is shutting down").into());
                    }
                    let bundle = bundles.borrow_and_update().clone();
                    let msg = pb::SyncEntriesResponse {
                        revision: self.revision,
                        bundle: Some(common::Bundle::from(bundle.as_ref())),
                        ..Default::default()
                    };
                    self.send(msg).await?;
                }
            }
            // Checked on every wake-up: an evicted or banned agent loses its stream.
            let node = node_status(&self.datastore, &self.agent.id).await?;
            self.agent.selectors = node.selectors;
            if full {
                self.snapshot(None).await?;
            } else {
                self.catch_up().await?;
            }
        }
    }

    async fn authorized(&self) -> Result<Arc<AuthorizedEntries>, Status> {
        self.authorization
            .authorized(&self.agent.id, &self.agent.selectors)
            .await
            .map_err(authorization_status)
    }

    /// A full snapshot in pages; the first page carries `snapshot_start` (and the bundle when
    /// given), the last `snapshot_end` and the revision. Earlier pages carry revision 0: a
    /// snapshot cut short brings the agent up to nothing.
    async fn snapshot(&mut self, bundle: Option<&Arc<Bundle>>) -> Result<(), StreamError> {
        let authorized = self.authorized().await?;
        let entries: Vec<common::RegistrationEntry> = authorized
            .sorted()
            .into_iter()
            .map(common::RegistrationEntry::from)
            .collect();
        let pages = entries.chunks(SYNC_PAGE).collect::<Vec<_>>();
        let last = pages.len().saturating_sub(1);
        if pages.is_empty() {
            self.send(pb::SyncEntriesResponse {
                snapshot_start: true,
                snapshot_end: true,
                revision: authorized.revision,
                bundle: bundle.map(|b| common::Bundle::from(b.as_ref())),
                ..Default::default()
            })
            .await?;
        }
        for (i, page) in pages.into_iter().enumerate() {
            self.send(pb::SyncEntriesResponse {
                upserts: page.to_vec(),
                snapshot_start: i == 0,
                snapshot_end: i == last,
                revision: if i == last { authorized.revision } else { 0 },
                bundle: if i == 0 {
                    bundle.map(|b| common::Bundle::from(b.as_ref()))
                } else {
                    None
                },
                ..Default::default()
            })
            .await?;
        }
        self.known = authorized_revisions(&authorized);
        self.revision = authorized.revision;
        Ok(())
    }

    /// Sends what changed since the agent's revision. Decided per agent by diffing its
    /// authorized set against what it holds: that covers the changed entries themselves and
    /// also entries whose authorization changed through an ancestor (a deleted node alias takes
    /// its descendants along without an event of their own).
    async fn catch_up(&mut self) -> Result<(), StreamError> {
        let latest = self
            .datastore
            .latest_entry_revision()
            .await
            .map_err(datastore_status)?;
        if latest == self.revision {
            return Ok(());
        }
        let authorized = self.authorized().await?;
        let upserts: Vec<common::RegistrationEntry> = authorized
            .sorted()
            .into_iter()
            .filter(|e| self.known.get(&e.id) != Some(&e.revision))
            .map(common::RegistrationEntry::from)
            .collect();
        let mut deleted: Vec<String> = self
            .known
            .keys()
            .filter(|id| !authorized.contains(id))
            .cloned()
            .collect();
        deleted.sort();
        self.send_changes(upserts, deleted, authorized.revision, None)
            .await?;
        self.known = authorized_revisions(&authorized);
        self.revision = authorized.revision;
        Ok(())
    }

    /// Resumes from `since` with only the changes after it, if the change feed still holds
    /// them all. Returns false when a snapshot is needed instead.
    ///
    /// The agent's holdings are unknown here, so each changed entry is an upsert when
    /// authorized and a deletion otherwise; an entry that lost authorization only through an
    /// ancestor is dropped at the next full snapshot.
    async fn resume(&mut self, since: i64, bundle: &Arc<Bundle>) -> Result<bool, StreamError> {
        let latest = self
            .datastore
            .latest_entry_revision()
            .await
            .map_err(datastore_status)?;
        if since > latest {
            // A revision from another database (or a restored one): start over.
            return Ok(false);
        }
        if since < latest {
            let first = self
                .datastore
                .list_entry_events(since, 1)
                .await
                .map_err(datastore_status)?;
            if first.first().map(|e| e.revision) != Some(since + 1) {
                // Events after `since` were pruned.
                return Ok(false);
            }
        }
        let authorized = self.authorized().await?;
        let mut touched = HashSet::new();
        let mut after = since;
        while after < authorized.revision {
            let events = self
                .datastore
                .list_entry_events(after, EVENT_BATCH)
                .await
                .map_err(datastore_status)?;
            let Some(last) = events.last() else { break };
            after = last.revision;
            touched.extend(
                events
                    .into_iter()
                    .filter(|e| e.revision <= authorized.revision)
                    .map(|e| e.entry_id),
            );
        }
        let mut touched: Vec<String> = touched.into_iter().collect();
        touched.sort();
        let (up, deleted): (Vec<String>, Vec<String>) =
            touched.into_iter().partition(|id| authorized.contains(id));
        let upserts = up
            .iter()
            .filter_map(|id| authorized.get(id))
            .map(common::RegistrationEntry::from)
            .collect();
        self.send_changes(upserts, deleted, authorized.revision, Some(bundle))
            .await?;
        self.known = authorized_revisions(&authorized);
        self.revision = authorized.revision;
        Ok(true)
    }

    /// Live changes in pages; only the last page carries the new revision, so a stream cut
    /// mid-way resumes from the old one. Nothing is sent when nothing changed (unless there is
    /// a bundle to deliver).
    async fn send_changes(
        &self,
        upserts: Vec<common::RegistrationEntry>,
        deleted: Vec<String>,
        revision: i64,
        bundle: Option<&Arc<Bundle>>,
    ) -> Result<(), StreamError> {
        let mut messages: Vec<pb::SyncEntriesResponse> = upserts
            .chunks(SYNC_PAGE)
            .map(|page| pb::SyncEntriesResponse {
                upserts: page.to_vec(),
                revision: self.revision,
                ..Default::default()
            })
            .collect();
        messages.extend(
            deleted
                .chunks(SYNC_PAGE)
                .map(|page| pb::SyncEntriesResponse {
                    deleted_ids: page.to_vec(),
                    revision: self.revision,
                    ..Default::default()
                }),
        );
        if messages.is_empty() && bundle.is_none() {
            return Ok(());
        }
        if messages.is_empty() {
            messages.push(pb::SyncEntriesResponse::default());
        }
        if let Some(b) = bundle {
            messages[0].bundle = Some(common::Bundle::from(b.as_ref()));
        }
        if let Some(last) = messages.last_mut() {
            last.revision = revision;
        }
        for m in messages {
            self.send(m).await?;
        }
        Ok(())
    }

    async fn send(&self, msg: pb::SyncEntriesResponse) -> Result<(), StreamError> {
        self.tx.send(Ok(msg)).await.map_err(|_| StreamError::Closed)
    }
}

/// Why a sync step stopped: the receiver left, or the stream must end with a status.
enum StreamError {
    Closed,
    Status(Status),
}

impl From<Status> for StreamError {
    fn from(s: Status) -> Self {
        StreamError::Status(s)
    }
}

fn authorized_revisions(a: &AuthorizedEntries) -> HashMap<String, i64> {
    a.sorted()
        .into_iter()
        .map(|e| (e.id.clone(), e.revision))
        .collect()
}

/// A token bucket per source IP. Hand-written: the workspace has no rate-limiting crate and
/// this is a dozen lines; `allow` is a pure function of `now`, so it is tested without sleeping.
struct RateLimiter {
    per_sec: f64,
    burst: f64,
    buckets: Mutex<HashMap<IpAddr, (f64, Instant)>>,
}

/// Past this many tracked addresses, the full (idle) buckets are dropped.
const MAX_TRACKED_IPS: usize = 10_000;

impl RateLimiter {
    fn new(per_sec: f64, burst: f64) -> Self {
        RateLimiter {
            per_sec,
            burst,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    fn allow(&self, ip: IpAddr, now: Instant) -> bool {
        // Each call updates one bucket in one step, so a poisoned map is still consistent.
        let mut buckets = self.buckets.lock().unwrap_or_else(PoisonError::into_inner);
        if buckets.len() >= MAX_TRACKED_IPS {
            let (per_sec, burst) = (self.per_sec, self.burst);
            buckets.retain(|_, (tokens, at)| {
                *tokens + now.saturating_duration_since(*at).as_secs_f64() * per_sec < burst
            });
        }
        let (tokens, at) = buckets.entry(ip).or_insert((self.burst, now));
        *tokens = (*tokens + now.saturating_duration_since(*at).as_secs_f64() * self.per_sec)
            .min(self.burst);
        *at = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Serves the agent API on `listener` (bound to `bind_address`) until `cancel` fires. Issues
/// the server's SVID and keeps it (and the trusted bundle) current in the background.
pub async fn serve(
    listener: TcpListener,
    api: AgentApi,
    cancel: CancellationToken,
) -> Result<(), AgentApiError> {
    let tls = Arc::new(ServerTls::new(api.ca.clone())?);
    tokio::spawn(tls.clone().refresh_forever(cancel.clone()));
    let incoming = tls::incoming(listener, tls, cancel.clone());
    tonic::transport::Server::builder()
        .add_service(
            AgentServer::new(api)
                .max_decoding_message_size(MAX_MESSAGE_SIZE)
                .max_encoding_message_size(MAX_MESSAGE_SIZE),
        )
        .serve_with_incoming_shutdown(incoming, cancel.cancelled_owned())
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use hyper_util::rt::TokioIo;
    use rcgen::{CertificateParams, KeyPair, PKCS_ECDSA_P256_SHA256};
    use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
    use rustls::crypto::CryptoProvider;
    use rustls::pki_types::{
        CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime,
    };
    use rustls::{ClientConfig, DigitallySignedStruct, SignatureScheme};
    use sigil_proto::RegistrationEntry;
    use sigil_proto::sigil::agent::v1::agent_client::AgentClient;
    use tokio::net::TcpStream;
    use tokio_rustls::TlsConnector;
    use tonic::Code;
    use tonic::transport::{Channel, Endpoint};

    use super::*;
    use crate::key_manager::MemoryKeyManager;

    /// Checks the server's SVID as an agent would: chains to a bundle root (x509-parser's
    /// signature check, an implementation independent of rustls' webpki) and names
    /// `spiffe://<td>/spire/server`.
    #[derive(Debug)]
    struct SpiffeServerVerifier {
        roots: Vec<Vec<u8>>,
        expected: String,
        provider: Arc<CryptoProvider>,
    }

    impl ServerCertVerifier for SpiffeServerVerifier {
        fn verify_server_cert(
            &self,
            end_entity: &CertificateDer<'_>,
            _intermediates: &[CertificateDer<'_>],
            _server_name: &ServerName<'_>,
            _ocsp: &[u8],
            _now: UnixTime,
        ) -> Result<ServerCertVerified, rustls::Error> {
            let fail = |m: &str| rustls::Error::General(m.to_owned());
            let (_, leaf) = X509Certificate::from_der(end_entity).map_err(|_| fail("bad cert"))?;
            if !leaf.validity().is_valid() {
                return Err(fail("expired"));
            }
            let chained = self.roots.iter().any(|r| {
                X509Certificate::from_der(r)
                    .map(|(_, root)| leaf.verify_signature(Some(root.public_key())).is_ok())
                    .unwrap_or(false)
            });
            if !chained {
                return Err(fail("not signed by the bundle"));
            }
            if uri_sans(end_entity) != [self.expected.clone()] {
                return Err(fail("not the server's SPIFFE ID"));
            }
            Ok(ServerCertVerified::assertion())
        }

        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls12_signature(
                message,
                cert,
                dss,
                &self.provider.signature_verification_algorithms,
            )
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls13_signature(
                message,
                cert,
                dss,
                &self.provider.signature_verification_algorithms,
            )
        }

        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            self.provider
                .signature_verification_algorithms
                .supported_schemes()
        }
    }

    fn uri_sans(der: &[u8]) -> Vec<String> {
        let (_, cert) = X509Certificate::from_der(der).unwrap();
        let Some(san) = cert.subject_alternative_name().unwrap() else {
            return vec![];
        };
        san.value
            .general_names
            .iter()
            .filter_map(|n| match n {
                GeneralName::URI(u) => Some(u.to_string()),
                _ => None,
            })
            .collect()
    }

    fn serial(der: &[u8]) -> String {
        PresentedSvid::parse(der).unwrap().serial
    }

    /// A key and a CSR for it, as the agent makes them.
    fn key_and_csr() -> (KeyPair, Vec<u8>) {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
        let csr = CertificateParams::new(Vec::<String>::new())
            .unwrap()
            .serialize_request(&key)
            .unwrap()
            .der()
            .to_vec();
        (key, csr)
    }

    struct Harness {
        _dir: tempfile::TempDir,
        ds: Datastore,
        ca: Arc<Ca>,
        td: TrustDomain,
        addr: SocketAddr,
        revisions: watch::Sender<i64>,
        cancel: CancellationToken,
    }

    impl Drop for Harness {
        fn drop(&mut self) {
            self.cancel.cancel();
        }
    }

    /// An attested agent: its ID, SVID and key, and a client presenting them.
    struct TestAgent {
        id: SpiffeId,
        chain: Vec<Vec<u8>>,
        key: KeyPair,
        client: AgentClient<Channel>,
    }

    impl Harness {
        async fn start() -> Harness {
            let dir = tempfile::tempdir().unwrap();
            let ds = Datastore::open("datastore.sqlite3", dir.path())
                .await
                .unwrap();
            let td = TrustDomain::new("example.org").unwrap();
            let (ca, _) = Ca::new(
                crate::ca::CaConfig::new(td.clone()),
                Arc::new(MemoryKeyManager::new()),
                None,
                SystemTime::now(),
            )
            .unwrap();
            let ca = Arc::new(ca);
            let (revisions, rx) = watch::channel(0);
            let mut api = AgentApi::new(ds.clone(), ca.clone(), td.clone(), Metrics::new(), rx);
            // Far beyond any test: a change that arrives was pushed, not polled.
            api.sync_fallback = Duration::from_secs(3600);
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let cancel = CancellationToken::new();
            tokio::spawn(serve(listener, api, cancel.clone()));
            Harness {
                _dir: dir,
                ds,
                ca,
                td,
                addr,
                revisions,
                cancel,
            }
        }

        async fn client(&self, identity: Option<(&[Vec<u8>], &KeyPair)>) -> AgentClient<Channel> {
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let verifier = Arc::new(SpiffeServerVerifier {
                roots: self.ca.bundle().x509_authorities.clone(),
                expected: self.td.server_id().to_string(),
                provider: provider.clone(),
            });
            let builder = ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .unwrap()
                .dangerous()
                .with_custom_certificate_verifier(verifier);
            let mut config = match identity {
                Some((chain, key)) => builder
                    .with_client_auth_cert(
                        chain
                            .iter()
                            .map(|c| CertificateDer::from(c.clone()))
                            .collect(),
                        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
                    )
                    .unwrap(),
                None => builder.with_no_client_auth(),
            };
            config.alpn_protocols = vec![b"h2".to_vec()];
            let connector = TlsConnector::from(Arc::new(config));
            let addr = self.addr;
            let channel = Endpoint::from_static("http://sigil-server")
                .connect_with_connector(tower::service_fn(move |_| {
                    let connector = connector.clone();
                    async move {
                        let tcp = TcpStream::connect(addr).await?;
                        let name = ServerName::try_from("sigil-server").unwrap();
                        let tls = connector.connect(name, tcp).await?;
                        Ok::<_, std::io::Error>(TokioIo::new(tls))
                    }
                }))
                .await
                .unwrap();
            AgentClient::new(channel)
        }

        async fn join_token(&self) -> String {
            let token = uuid::Uuid::new_v4().to_string();
            let exp = SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap()
                .as_secs() as i64
                + 600;
            self.ds.create_join_token(&token, exp).await.unwrap();
            token
        }

        async fn attest(&self) -> TestAgent {
            let token = self.join_token().await;
            let (key, csr) = key_and_csr();
            let resp = self
                .client(None)
                .await
                .attest_agent(pb::AttestAgentRequest {
                    attestation_type: "join_token".into(),
                    payload: token.into_bytes(),
                    csr,
                })
                .await
                .unwrap()
                .into_inner();
            let chain = resp.svid_chain;
            let client = self.client(Some((&chain, &key))).await;
            TestAgent {
                id: SpiffeId::new(&resp.spiffe_id).unwrap(),
                chain,
                key,
                client,
            }
        }

        fn id(&self, path: &str) -> SpiffeId {
            SpiffeId::from_path(&self.td, path).unwrap()
        }

        async fn create(
            &self,
            path: &str,
            parent: &SpiffeId,
            selectors: &[&str],
        ) -> RegistrationEntry {
            let entry = RegistrationEntry {
                id: String::new(),
                spiffe_id: self.id(path),
                parent_id: parent.clone(),
                selectors: selectors
                    .iter()
                    .map(|s| {
                        let (t, v) = s.split_once(':').unwrap();
                        Selector::from_parts(t, v).unwrap()
                    })
                    .collect(),
                x509_svid_ttl: 0,
                jwt_svid_ttl: 0,
                dns_names: vec!["svc.example.org".into()],
                federates_with: vec![],
                admin: false,
                downstream: false,
                hint: String::new(),
                expires_at: None,
                revision: 0,
                created_at: 0,
            };
            let created = self.ds.create_entries(vec![entry]).await.unwrap().remove(0);
            self.publish().await;
            created
        }

        /// What the admin API does after a commit.
        async fn publish(&self) {
            let r = self.ds.latest_entry_revision().await.unwrap();
            self.revisions.send_replace(r);
        }
    }

    async fn next(
        stream: &mut tonic::Streaming<pb::SyncEntriesResponse>,
    ) -> pb::SyncEntriesResponse {
        // A hang guard only: the 1 h fallback tick is far beyond it.
        tokio::time::timeout(Duration::from_secs(30), stream.message())
            .await
            .expect("no sync message")
            .unwrap()
            .expect("stream ended")
    }

    /// Reads a whole snapshot; returns the SPIFFE ID paths and the revision.
    async fn snapshot(
        stream: &mut tonic::Streaming<pb::SyncEntriesResponse>,
    ) -> (Vec<String>, i64) {
        let first = next(stream).await;
        assert!(first.snapshot_start);
        assert!(
            first.bundle.is_some(),
            "the bundle comes in the first message"
        );
        let mut msg = first;
        let mut paths = Vec::new();
        loop {
            paths.extend(
                msg.upserts
                    .iter()
                    .map(|e| SpiffeId::new(&e.spiffe_id).unwrap().path().to_owned()),
            );
            if msg.snapshot_end {
                paths.sort();
                return (paths, msg.revision);
            }
            msg = next(stream).await;
        }
    }

    #[tokio::test]
    async fn attestation_issues_an_agent_svid_and_records_the_node() {
        let h = Harness::start().await;
        let token = h.join_token().await;
        let (_key, csr) = key_and_csr();
        let mut anon = h.client(None).await;
        let resp = anon
            .attest_agent(pb::AttestAgentRequest {
                attestation_type: "join_token".into(),
                payload: token.clone().into_bytes(),
                csr: csr.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        let want = format!("spiffe://example.org/spire/agent/join_token/{token}");
        assert_eq!(resp.spiffe_id, want);
        assert_eq!(uri_sans(&resp.svid_chain[0]), std::slice::from_ref(&want));
        assert!(!resp.bundle.unwrap().x509_authorities.is_empty());
        let node =
            h.ds.fetch_attested_node(&SpiffeId::new(&want).unwrap())
                .await
                .unwrap()
                .expect("node recorded");
        assert_eq!(node.attestation_type, "join_token");
        assert_eq!(node.cert_serial, serial(&resp.svid_chain[0]));

        let reuse = anon
            .attest_agent(pb::AttestAgentRequest {
                attestation_type: "join_token".into(),
                payload: token.into_bytes(),
                csr: csr.clone(),
            })
            .await
            .unwrap_err();
        assert_eq!(reuse.code(), Code::PermissionDenied);
        assert!(
            reuse.message().contains("already used"),
            "{}",
            reuse.message()
        );

        let unknown = anon
            .attest_agent(pb::AttestAgentRequest {
                attestation_type: "x509pop".into(),
                payload: b"x".to_vec(),
                csr,
            })
            .await
            .unwrap_err();
        assert_eq!(unknown.code(), Code::InvalidArgument);
    }

    #[tokio::test]
    async fn calls_without_an_agent_svid_are_refused() {
        let h = Harness::start().await;
        let mut anon = h.client(None).await;
        let err = anon
            .sync_entries(pb::SyncEntriesRequest { since_revision: 0 })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::Unauthenticated);
        let err = anon
            .renew_agent(pb::RenewAgentRequest {
                csr: key_and_csr().1,
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::Unauthenticated);
    }

    #[tokio::test]
    async fn sync_sends_the_authorized_snapshot_then_pushes_changes() {
        let h = Harness::start().await;
        let mut agent = h.attest().await;
        let other = h.attest().await;
        // Give the node a selector so a node alias applies.
        let mut node = h.ds.fetch_attested_node(&agent.id).await.unwrap().unwrap();
        node.selectors = vec![Selector::from_parts("k8s_psat", "cluster:c1").unwrap()];
        h.ds.create_attested_node(node).await.unwrap();
        let server = h.td.server_id();
        h.create("/own", &agent.id, &["unix:uid:1"]).await;
        h.create("/alias", &server, &["k8s_psat:cluster:c1"]).await;
        h.create("/other-alias", &server, &["k8s_psat:cluster:c2"])
            .await;
        h.create("/under-alias", &h.id("/alias"), &["unix:uid:2"])
            .await;
        h.create("/theirs", &other.id, &["unix:uid:1"]).await;

        let mut stream = agent
            .client
            .sync_entries(pb::SyncEntriesRequest { since_revision: 0 })
            .await
            .unwrap()
            .into_inner();
        let (paths, revision) = snapshot(&mut stream).await;
        assert_eq!(paths, ["/alias", "/own", "/under-alias"]);
        assert_eq!(revision, h.ds.latest_entry_revision().await.unwrap());

        // Someone else's entry is not pushed; ours is.
        h.create("/theirs-too", &other.id, &["unix:uid:3"]).await;
        let created = h.create("/new", &agent.id, &["unix:uid:3"]).await;
        let mut msg = next(&mut stream).await;
        if msg.upserts.is_empty() {
            msg = next(&mut stream).await;
        }
        let ids: Vec<_> = msg.upserts.iter().map(|e| e.id.clone()).collect();
        assert_eq!(ids, std::slice::from_ref(&created.id));
        assert!(msg.deleted_ids.is_empty());

        h.ds.delete_entries(std::slice::from_ref(&created.id))
            .await
            .unwrap();
        h.publish().await;
        let msg = next(&mut stream).await;
        assert_eq!(msg.deleted_ids, std::slice::from_ref(&created.id));
        assert_eq!(msg.revision, h.ds.latest_entry_revision().await.unwrap());

        // Resuming from that revision sends no snapshot, only what changed after it.
        let resumed_at = msg.revision;
        let later = h.create("/later", &agent.id, &["unix:uid:4"]).await;
        let mut resumed = agent
            .client
            .sync_entries(pb::SyncEntriesRequest {
                since_revision: resumed_at,
            })
            .await
            .unwrap()
            .into_inner();
        let msg = next(&mut resumed).await;
        assert!(!msg.snapshot_start);
        assert!(msg.bundle.is_some());
        assert_eq!(
            msg.upserts.iter().map(|e| e.id.clone()).collect::<Vec<_>>(),
            [later.id]
        );

        // An evicted agent's open stream ends at the next wake-up.
        h.ds.delete_attested_node(&agent.id).await.unwrap();
        h.create("/wake", &other.id, &["unix:uid:5"]).await;
        let end = loop {
            match tokio::time::timeout(Duration::from_secs(30), stream.message())
                .await
                .expect("stream not ended")
            {
                Ok(Some(_)) => continue,
                Ok(None) => panic!("stream ended without a status"),
                Err(s) => break s,
            }
        };
        assert_eq!(end.code(), Code::PermissionDenied);
    }

    #[tokio::test]
    async fn mint_signs_authorized_entries_only() {
        let h = Harness::start().await;
        let mut agent = h.attest().await;
        let other = h.attest().await;
        let mine = h.create("/web", &agent.id, &["unix:uid:1"]).await;
        let theirs = h.create("/db", &other.id, &["unix:uid:1"]).await;

        let (_k, csr) = key_and_csr();
        let resp = agent
            .client
            .batch_mint_x509svid(pb::BatchMintX509svidRequest {
                requests: vec![pb::X509svidRequest {
                    entry_id: mine.id.clone(),
                    csr: csr.clone(),
                }],
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(resp.svids.len(), 1);
        let chain = &resp.svids[0].svid_chain;
        assert_eq!(uri_sans(&chain[0]), ["spiffe://example.org/web"]);
        let (_, leaf) = X509Certificate::from_der(&chain[0]).unwrap();
        let bundle = h.ca.bundle();
        let (_, root) = X509Certificate::from_der(&bundle.x509_authorities[0]).unwrap();
        leaf.verify_signature(Some(root.public_key())).unwrap();

        // A forged request for another agent's entry, in an otherwise valid batch.
        let err = agent
            .client
            .batch_mint_x509svid(pb::BatchMintX509svidRequest {
                requests: vec![
                    pb::X509svidRequest {
                        entry_id: mine.id.clone(),
                        csr: csr.clone(),
                    },
                    pb::X509svidRequest {
                        entry_id: theirs.id.clone(),
                        csr,
                    },
                ],
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::PermissionDenied);
        assert!(err.message().contains(&theirs.id), "{}", err.message());

        let jwt = agent
            .client
            .mint_jwtsvid(pb::MintJwtsvidRequest {
                entry_id: mine.id.clone(),
                audience: vec!["db".into()],
            })
            .await
            .unwrap()
            .into_inner();
        assert!(!jwt.token.is_empty());
        let err = agent
            .client
            .mint_jwtsvid(pb::MintJwtsvidRequest {
                entry_id: theirs.id,
                audience: vec!["db".into()],
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::PermissionDenied);
        let err = agent
            .client
            .mint_jwtsvid(pb::MintJwtsvidRequest {
                entry_id: mine.id,
                audience: vec![],
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
    }

    #[tokio::test]
    async fn evicted_and_banned_agents_are_refused() {
        let h = Harness::start().await;
        let mut evicted = h.attest().await;
        h.ds.delete_attested_node(&evicted.id).await.unwrap();
        let err = evicted
            .client
            .renew_agent(pb::RenewAgentRequest {
                csr: key_and_csr().1,
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::PermissionDenied);
        assert!(err.message().contains("evicted"), "{}", err.message());
        let err = evicted
            .client
            .sync_entries(pb::SyncEntriesRequest { since_revision: 0 })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::PermissionDenied);

        let mut banned = h.attest().await;
        h.ds.set_attested_node_banned(&banned.id, true)
            .await
            .unwrap();
        let err = banned
            .client
            .sync_entries(pb::SyncEntriesRequest { since_revision: 0 })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::PermissionDenied);
        assert!(err.message().contains("banned"), "{}", err.message());
    }

    #[tokio::test]
    async fn renewal_replaces_the_svid_after_first_use() {
        let h = Harness::start().await;
        let mut agent = h.attest().await;
        let old_serial = serial(&agent.chain[0]);
        let (new_key, csr) = key_and_csr();
        let renewed = agent
            .client
            .renew_agent(pb::RenewAgentRequest { csr })
            .await
            .unwrap()
            .into_inner()
            .svid_chain;
        assert_eq!(uri_sans(&renewed[0]), [agent.id.to_string()]);
        assert_ne!(serial(&renewed[0]), old_serial);

        // Until the new SVID is used, the old one still works (a lost response must not lock
        // the agent out).
        agent.client.sync_entries(full()).await.unwrap();
        let mut renewed_client = h.client(Some((&renewed, &new_key))).await;
        renewed_client.sync_entries(full()).await.unwrap();
        let node = h.ds.fetch_attested_node(&agent.id).await.unwrap().unwrap();
        assert_eq!(node.cert_serial, serial(&renewed[0]));
        assert_eq!(node.new_cert_serial, None);

        let mut old_client = h.client(Some((&agent.chain, &agent.key))).await;
        let err = old_client.sync_entries(full()).await.unwrap_err();
        assert_eq!(err.code(), Code::PermissionDenied);
    }

    fn full() -> pb::SyncEntriesRequest {
        pb::SyncEntriesRequest { since_revision: 0 }
    }

    #[test]
    fn attestation_rate_limit_per_address() {
        let limiter = RateLimiter::new(1.0, 3.0);
        let t0 = Instant::now();
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        assert!((0..3).all(|_| limiter.allow(a, t0)), "burst allowed");
        assert!(!limiter.allow(a, t0));
        assert!(limiter.allow(b, t0), "other addresses are unaffected");
        assert!(!limiter.allow(a, t0 + Duration::from_millis(500)));
        assert!(limiter.allow(a, t0 + Duration::from_millis(1600)));
    }
}
