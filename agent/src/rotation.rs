//! SVID minting and rotation. Every key is generated on the agent (P-256) and only its CSR
//! goes to the server.
//!
//! - Workload X509-SVIDs: each cached entry without an SVID, whose entry changed, or whose SVID
//!   reached its refresh point is minted through `BatchMintX509SVID` in batches. The loop wakes on
//!   every cache change, so a new entry is minted as soon as sync delivers it.
//! - The agent's own SVID is renewed through `RenewAgent` at its refresh point, replaced by
//!   attesting again when it expired or the agent was evicted, or lost (see [`agent_svid`]).
//!
//! When is decided by [`refresh_at`], a pure function of the certificate's validity; the
//! workload loops log and retry with backoff and never exit before cancellation. While the
//! agent's own SVID has expired they wait for a new one instead of asking the server, which
//! would refuse every call. A first issue is logged at INFO, a renewal at DEBUG (a 5 s TTL
//! renews every ~2.5 s).

mod agent_svid;

pub use agent_svid::{
    AgentIdentity, AgentSvidRenewal, DEFAULT_EXIT_DELAY, IdentityLost, renew_agent_svid,
};

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, LazyLock, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rand::Rng;
use sigil_proto::sigil::agent::v1::{BatchMintX509svidRequest, X509svidRequest};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};
use zeroize::Zeroizing;

use crate::cache::{Cache, CachedX509Svid, Identity, RenderedKey, Snapshot, TemplateDemand};
use crate::ops::Metrics;
use crate::server_client::ServerConnection;
use crate::svid_store::leaf_facts;
use crate::taint::TaintedAuthorities;

/// Largest `BatchMintX509SVID` batch.
pub const MAX_BATCH: usize = 500;
/// The refresh point moves by up to this fraction of the half-life either way, so SVIDs
/// minted together do not all come back together.
pub const JITTER: f64 = 0.1;
/// How long an entry the server would not sign waits before it is asked for again.
const ENTRY_RETRY: Duration = Duration::from_secs(10);
/// Upper bound on a rotation loop's sleep, so a clock jump is noticed.
const MAX_SLEEP: Duration = Duration::from_secs(60);
/// The agent's own signing pace once the server has refused a batch for its per-agent limit
/// (500 SVIDs/s, bursts of 1000 by default): the rest of a start-up or rotation wave of
/// thousands of entries is spread out rather than refused again. Until then the agent mints
/// at full speed, so a server with the limit raised or off is not held back. The margin
/// absorbs the gap between when a batch is paced here and when it reaches the server.
pub const PACE_PER_SEC: f64 = 400.0;
pub const PACE_BURST: f64 = 1000.0;
/// How long a batch the server refused for its rate limit waits before it is sent again,
/// through the pace the refusal engaged.
const RATE_LIMITED_RETRY: Duration = Duration::from_secs(1);

/// A token bucket that may go into debt: [`reserve`](Self::reserve) always succeeds and says
/// how long to wait first. A pure function of `now`. Hand-written: a dozen lines, and the
/// workspace has no rate-limiting crate.
#[derive(Debug)]
pub struct SigningPace {
    per_sec: f64,
    burst: f64,
    tokens: f64,
    at: Option<Instant>,
    /// False until the server first refuses: no wait at all before that.
    engaged: bool,
}

impl SigningPace {
    /// A pace in force from the start, with a full burst.
    pub fn new(per_sec: f64, burst: f64) -> Self {
        SigningPace {
            per_sec,
            burst,
            tokens: burst,
            at: None,
            engaged: true,
        }
    }

    /// A pace that waits for nothing until [`refused`](Self::refused) is called.
    pub fn after_first_refusal(per_sec: f64, burst: f64) -> Self {
        SigningPace {
            engaged: false,
            ..SigningPace::new(per_sec, burst)
        }
    }

    /// The server refused a batch for its rate limit at `now`: its budget for this agent is
    /// spent, so pace from an empty bucket on.
    pub fn refused(&mut self, now: Instant) {
        self.engaged = true;
        self.tokens = self.tokens.min(0.0);
        self.at = Some(now);
    }

    /// Reserves `n` signings at `now`; returns how long to wait before asking for them.
    pub fn reserve(&mut self, n: usize, now: Instant) -> Duration {
        if !self.engaged {
            return Duration::ZERO;
        }
        let elapsed = self
            .at
            .map_or(0.0, |at| now.saturating_duration_since(at).as_secs_f64());
        self.tokens = (self.tokens + elapsed * self.per_sec).min(self.burst) - n as f64;
        self.at = Some(now);
        if self.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-self.tokens / self.per_sec)
        }
    }
}

/// One pace per process: the server's budget is per agent (its SPIFFE ID), and both minting
/// loops draw from it.
static PACE: LazyLock<Mutex<SigningPace>> =
    LazyLock::new(|| Mutex::new(SigningPace::after_first_refusal(PACE_PER_SEC, PACE_BURST)));

/// Tells the pace the server refused a batch for its signing rate limit.
fn pace_refused() {
    PACE.lock()
        .unwrap_or_else(PoisonError::into_inner)
        .refused(Instant::now());
}

/// Waits until `n` more signings fit the agent's pace; false if `cancel` fired meanwhile.
async fn paced(n: usize, cancel: &CancellationToken) -> bool {
    // `reserve` updates the bucket in one step, so a poisoned lock still holds a valid one.
    let wait = PACE
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .reserve(n, Instant::now());
    if wait.is_zero() {
        return true;
    }
    debug!(
        count = n,
        wait_ms = wait.as_millis() as u64,
        "pacing X509-SVID minting under the server's signing limit"
    );
    tokio::select! {
        () = cancel.cancelled() => false,
        () = tokio::time::sleep(wait) => true,
    }
}

/// Why a key or CSR could not be made.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CsrError {
    #[error("generating a key or CSR: {0}")]
    Rcgen(#[from] rcgen::Error),
}

/// A fresh P-256 key (PKCS#8 DER, wiped on drop) and a PKCS#10 CSR (DER) for it. The server
/// takes only the public key from the CSR and sets the SPIFFE ID itself.
pub fn new_key_and_csr() -> Result<(Zeroizing<Vec<u8>>, Vec<u8>), CsrError> {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let csr = rcgen::CertificateParams::default().serialize_request(&key)?;
    Ok((Zeroizing::new(key.serialize_der()), csr.der().to_vec()))
}

/// Unix seconds at which a just-minted SVID is renewed. Its life is counted from `now`, not
/// from NotBefore: the server backdates NotBefore to absorb clock skew, and with short TTLs
/// half of the backdated window may already be over, which would re-mint in a tight loop.
pub fn fresh_refresh_at(not_before: i64, not_after: i64, now: i64, jitter: f64) -> i64 {
    refresh_at(not_before.max(now), not_after, jitter)
}

/// Unix seconds at which an SVID valid from `not_before` to `not_after` is renewed: at half of
/// its lifetime, moved by `jitter` (clamped to ±[`JITTER`]) times the half-life.
pub fn refresh_at(not_before: i64, not_after: i64, jitter: f64) -> i64 {
    let half = (not_after - not_before).max(0) as f64 / 2.0;
    let jitter = jitter.clamp(-JITTER, JITTER);
    not_before + (half + half * jitter).round() as i64
}

/// A random jitter in ±[`JITTER`].
pub fn random_jitter() -> f64 {
    rand::rng().random_range(-JITTER..=JITTER)
}

pub(crate) fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Exponential backoff with ±20 % jitter.
#[derive(Debug, Clone)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    pub fn new(min: Duration, max: Duration) -> Self {
        Backoff {
            min,
            max,
            next: min,
        }
    }

    /// 1 s doubling up to 30 s: what every agent loop uses against the server.
    pub fn server() -> Self {
        Backoff::new(Duration::from_secs(1), Duration::from_secs(30))
    }

    /// The next delay (the un-jittered delays double from `min` up to `max`).
    pub fn next_delay(&mut self) -> Duration {
        let base = self.next;
        self.next = (self.next * 2).min(self.max);
        base.mul_f64(rand::rng().random_range(0.8..=1.2))
    }

    pub fn reset(&mut self) {
        self.next = self.min;
    }
}

/// What the rotation loop remembers about an SVID it installed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Minted {
    revision: i64,
    expires_at: i64,
    refresh_at: i64,
}

/// The entries whose SVID must be minted now: none yet, entry changed since minting, signed by
/// an authority the bundle says is tainted, or past the refresh point. Entries in
/// `not_before_retry` are skipped until their time.
fn due(
    snapshot: &Snapshot,
    minted: &mut HashMap<String, Minted>,
    retry_at: &HashMap<String, i64>,
    now: i64,
) -> Vec<Arc<Identity>> {
    let tainted = TaintedAuthorities::from_bundle(&snapshot.bundle);
    let mut out = Vec::new();
    for identity in &snapshot.identities {
        // Template entries are not pre-minted: their ID depends on the workload.
        if identity.entry.spiffe_id.template().is_some() {
            continue;
        }
        let id = &identity.entry.id;
        if retry_at.get(id).is_some_and(|&at| now < at) {
            continue;
        }
        let Some(svid) = &identity.svid else {
            out.push(identity.clone());
            continue;
        };
        if tainted.affects_chain(&svid.chain) {
            info!(entry_id = %id, "X509-SVID signed by a tainted authority; re-minting now");
            out.push(identity.clone());
            continue;
        }
        let known = minted
            .get(id)
            .copied()
            .filter(|m| m.expires_at == svid.expires_at);
        let m = match known {
            Some(m) => m,
            // An SVID we did not mint in this process (none today; kept for safety): learn
            // its window from the leaf, or re-mint it if the leaf cannot be read.
            None => match svid.chain.first().map(|leaf| leaf_facts(leaf)) {
                Some(Ok(facts)) => {
                    let m = Minted {
                        revision: identity.entry.revision,
                        expires_at: svid.expires_at,
                        refresh_at: refresh_at(facts.not_before, facts.not_after, random_jitter()),
                    };
                    minted.insert(id.clone(), m);
                    m
                }
                _ => {
                    out.push(identity.clone());
                    continue;
                }
            },
        };
        if m.revision != identity.entry.revision || now >= m.refresh_at {
            out.push(identity.clone());
        }
    }
    out
}

/// Keeps every cached entry's X509-SVID fresh until `cancel` fires.
pub async fn rotate_workload_svids(
    connection: Arc<ServerConnection>,
    cache: Arc<Cache>,
    metrics: Arc<Metrics>,
    cancel: CancellationToken,
) {
    let mut changes = cache.subscribe();
    let mut minted: HashMap<String, Minted> = HashMap::new();
    let mut retry_at: HashMap<String, i64> = HashMap::new();
    let mut backoff = Backoff::server();
    loop {
        if !agent_svid_usable(&connection, &cancel).await {
            return;
        }
        changes.borrow_and_update();
        let snapshot = cache.snapshot();
        let now = unix_now();
        // Forget entries that left the cache.
        minted.retain(|id, _| snapshot.identity(id).is_some());
        retry_at.retain(|id, &mut at| snapshot.identity(id).is_some() && now < at);

        let due = due(&snapshot, &mut minted, &retry_at, now);
        let mut server_down = false;
        let mut rate_limited = false;
        for batch in due.chunks(MAX_BATCH) {
            if !paced(batch.len(), &cancel).await {
                return;
            }
            match mint_batch(&connection, &cache, batch, &metrics).await {
                Ok(outcome) => {
                    backoff.reset();
                    for (id, m) in outcome.minted {
                        minted.insert(id, m);
                    }
                    for id in outcome.failed {
                        retry_at.insert(id, now + ENTRY_RETRY.as_secs() as i64);
                    }
                }
                Err(status) if status.code() == tonic::Code::ResourceExhausted => {
                    info!(error = %status.message(), entries = batch.len(), "server's signing rate limit reached; pacing the rest");
                    pace_refused();
                    rate_limited = true;
                    break;
                }
                Err(status) => {
                    metrics.svid_mint(false, batch.len());
                    warn!(code = ?status.code(), error = %status.message(), entries = batch.len(), "cannot mint X509-SVIDs; server unreachable or failing, will retry");
                    server_down = true;
                    break;
                }
            }
        }

        let wait = if rate_limited {
            RATE_LIMITED_RETRY
        } else if server_down {
            backoff.next_delay()
        } else {
            next_wake(
                minted.values().map(|m| m.refresh_at),
                retry_at.values().copied(),
                unix_now(),
            )
        };
        tokio::select! {
            () = cancel.cancelled() => return,
            // While the server is down a cache change does not cut the backoff short.
            r = changes.changed(), if !server_down => {
                if r.is_err() { return; }
            }
            () = tokio::time::sleep(wait) => {}
        }
    }
}

/// Waits while the agent's own SVID has expired (the server would refuse every mint) until a
/// new one is in place; false if `cancel` fired meanwhile.
async fn agent_svid_usable(connection: &ServerConnection, cancel: &CancellationToken) -> bool {
    let Some(expired_at) = connection.identity_expired_at(unix_now()) else {
        return true;
    };
    debug!(
        expired_at = %crate::cache::expiry::rfc3339(expired_at),
        "agent SVID expired; X509-SVID minting waits for a new one"
    );
    tokio::select! {
        () = cancel.cancelled() => false,
        () = connection.identity_renewed() => true,
    }
}

/// How long to sleep until the earliest refresh or retry (unix seconds), at most [`MAX_SLEEP`].
fn next_wake(
    refresh_at: impl Iterator<Item = i64>,
    retry_at: impl Iterator<Item = i64>,
    now: i64,
) -> Duration {
    refresh_at
        .chain(retry_at)
        .min()
        .map(|at| Duration::from_secs((at - now).max(0) as u64))
        .unwrap_or(MAX_SLEEP)
        .min(MAX_SLEEP)
}

struct BatchOutcome {
    minted: Vec<(String, Minted)>,
    failed: Vec<String>,
}

async fn mint_batch(
    connection: &ServerConnection,
    cache: &Cache,
    batch: &[Arc<Identity>],
    metrics: &Metrics,
) -> Result<BatchOutcome, tonic::Status> {
    let first_issue: HashSet<&str> = batch
        .iter()
        .filter(|i| i.svid.is_none())
        .map(|i| i.entry.id.as_str())
        .collect();
    let mut keys: HashMap<String, (Zeroizing<Vec<u8>>, i64)> = HashMap::new();
    let mut requests = Vec::with_capacity(batch.len());
    for identity in batch {
        let (key, csr) = new_key_and_csr().map_err(|e| tonic::Status::internal(e.to_string()))?;
        keys.insert(identity.entry.id.clone(), (key, identity.entry.revision));
        requests.push(X509svidRequest {
            entry_id: identity.entry.id.clone(),
            csr,
            spiffe_id: String::new(),
        });
    }
    let response = connection
        .client()
        .batch_mint_x509svid(BatchMintX509svidRequest { requests })
        .await?
        .into_inner();

    let mut installs = Vec::new();
    let mut minted = Vec::new();
    for result in response.svids {
        let Some((key, revision)) = keys.remove(&result.entry_id) else {
            warn!(entry_id = %result.entry_id, "server returned an SVID for an entry not asked for");
            continue;
        };
        let window = result.svid_chain.first().map(|leaf| leaf_facts(leaf));
        let Some(Ok(facts)) = window else {
            warn!(entry_id = %result.entry_id, "server returned an unreadable X509-SVID");
            keys.insert(result.entry_id, (key, revision));
            continue;
        };
        minted.push((
            result.entry_id.clone(),
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
            result.entry_id,
            CachedX509Svid {
                chain: result.svid_chain,
                private_key_pkcs8: key,
                expires_at: facts.not_after,
            },
        ));
    }
    let mut failed: Vec<String> = keys.into_keys().collect();
    for (entry_id, err) in cache.set_svids(installs) {
        warn!(%entry_id, error = %err, "X509-SVID not installed");
        minted.retain(|(id, _)| id != &entry_id);
        failed.push(entry_id);
    }
    for entry_id in &failed {
        warn!(%entry_id, "server did not sign an X509-SVID for this entry; will retry");
    }
    metrics.svid_mint(true, minted.len());
    metrics.svid_mint(false, failed.len());
    let issued = minted
        .iter()
        .filter(|(id, _)| first_issue.contains(id.as_str()))
        .count();
    if issued > 0 {
        info!(
            count = issued,
            "issued X509-SVIDs for entries that had none"
        );
    }
    if minted.len() > issued {
        debug!(count = minted.len() - issued, "renewed X509-SVIDs");
    }
    Ok(BatchOutcome { minted, failed })
}

/// The rendered IDs of template entries whose X509-SVID must be minted now: wanted by a
/// workload and the entry still a template they instantiate, and none minted yet, entry
/// changed since minting, or past the refresh point; skipping those waiting for a retry.
fn due_rendered(
    snapshot: &Snapshot,
    wanted: &[RenderedKey],
    minted: &HashMap<RenderedKey, Minted>,
    retry_at: &HashMap<RenderedKey, i64>,
    now: i64,
) -> Vec<(Arc<Identity>, RenderedKey)> {
    let tainted = TaintedAuthorities::from_bundle(&snapshot.bundle);
    let mut out = Vec::new();
    for key in wanted {
        let Some(identity) = snapshot.identity(&key.entry_id) else {
            continue;
        };
        let instance = identity
            .entry
            .spiffe_id
            .template()
            .is_some_and(|t| t.matches(&key.spiffe_id));
        if !instance || retry_at.get(key).is_some_and(|&at| now < at) {
            continue;
        }
        let fresh = snapshot
            .rendered
            .get(key)
            .is_some_and(|svid| !tainted.affects_chain(&svid.chain))
            && minted
                .get(key)
                .is_some_and(|m| m.revision == identity.entry.revision && now < m.refresh_at);
        if !fresh {
            out.push((identity.clone(), key.clone()));
        }
    }
    out
}

/// Mints and refreshes the X509-SVIDs of template entries that workloads ask for (see
/// [`TemplateDemand`]), and drops those nobody asked for in [`crate::cache::rendered::IDLE`],
/// until `cancel` fires.
pub async fn rotate_rendered_svids(
    connection: Arc<ServerConnection>,
    cache: Arc<Cache>,
    metrics: Arc<Metrics>,
    cancel: CancellationToken,
) {
    let demand: Arc<TemplateDemand> = cache.demand();
    let mut changes = cache.subscribe();
    let mut minted: HashMap<RenderedKey, Minted> = HashMap::new();
    let mut retry_at: HashMap<RenderedKey, i64> = HashMap::new();
    let mut backoff = Backoff::server();
    loop {
        if !agent_svid_usable(&connection, &cancel).await {
            return;
        }
        changes.borrow_and_update();
        let now = unix_now();
        let idle = demand.forget_idle(now, crate::cache::rendered::IDLE);
        cache.remove_rendered(&idle);
        let snapshot = cache.snapshot();
        let wanted = demand.keys();
        minted.retain(|k, _| snapshot.rendered.contains_key(k));
        retry_at.retain(|k, &mut at| wanted.contains(k) && now < at);

        let due = due_rendered(&snapshot, &wanted, &minted, &retry_at, now);
        let mut server_down = false;
        let mut rate_limited = false;
        for batch in due.chunks(MAX_BATCH) {
            if !paced(batch.len(), &cancel).await {
                return;
            }
            match mint_rendered_batch(&connection, &cache, batch, &metrics).await {
                Ok(outcome) => {
                    backoff.reset();
                    minted.extend(outcome.minted);
                    for key in outcome.failed {
                        retry_at.insert(key, now + ENTRY_RETRY.as_secs() as i64);
                    }
                }
                Err(status) if status.code() == tonic::Code::ResourceExhausted => {
                    info!(error = %status.message(), count = batch.len(), "server's signing rate limit reached; pacing the rest");
                    pace_refused();
                    rate_limited = true;
                    break;
                }
                Err(status) => {
                    metrics.svid_mint(false, batch.len());
                    warn!(code = ?status.code(), error = %status.message(), count = batch.len(), "cannot mint template X509-SVIDs; will retry");
                    // A refusal (entry gone, not authorized) is retried per key, not in a loop.
                    if matches!(
                        status.code(),
                        tonic::Code::PermissionDenied | tonic::Code::InvalidArgument
                    ) {
                        for (_, key) in batch {
                            retry_at.insert(key.clone(), now + ENTRY_RETRY.as_secs() as i64);
                        }
                    } else {
                        server_down = true;
                        break;
                    }
                }
            }
        }

        let wait = if rate_limited {
            RATE_LIMITED_RETRY
        } else if server_down {
            backoff.next_delay()
        } else {
            next_wake(
                minted.values().map(|m| m.refresh_at),
                retry_at.values().copied(),
                unix_now(),
            )
        };
        tokio::select! {
            () = cancel.cancelled() => return,
            () = demand.added(), if !server_down => {}
            r = changes.changed(), if !server_down => {
                if r.is_err() { return; }
            }
            () = tokio::time::sleep(wait) => {}
        }
    }
}

struct RenderedOutcome {
    minted: Vec<(RenderedKey, Minted)>,
    failed: Vec<RenderedKey>,
}

/// One `BatchMintX509SVID` call for rendered IDs. Several IDs of one entry may share a batch,
/// so results are matched to requests by position (the server answers in request order).
async fn mint_rendered_batch(
    connection: &ServerConnection,
    cache: &Cache,
    batch: &[(Arc<Identity>, RenderedKey)],
    metrics: &Metrics,
) -> Result<RenderedOutcome, tonic::Status> {
    let mut keys = Vec::with_capacity(batch.len());
    let mut requests = Vec::with_capacity(batch.len());
    for (identity, key) in batch {
        let (private_key, csr) =
            new_key_and_csr().map_err(|e| tonic::Status::internal(e.to_string()))?;
        keys.push((key.clone(), private_key, identity.entry.revision));
        requests.push(X509svidRequest {
            entry_id: key.entry_id.clone(),
            csr,
            spiffe_id: key.spiffe_id.to_string(),
        });
    }
    let response = connection
        .client()
        .batch_mint_x509svid(BatchMintX509svidRequest { requests })
        .await?
        .into_inner();
    let mut installs = Vec::new();
    let mut minted = Vec::new();
    let mut failed = Vec::new();
    let mut results = response.svids.into_iter();
    for (key, private_key, revision) in keys {
        let result = results.next().filter(|r| r.entry_id == key.entry_id);
        let facts = result
            .as_ref()
            .and_then(|r| r.svid_chain.first())
            .and_then(|leaf| leaf_facts(leaf).ok());
        let (Some(result), Some(facts)) = (result, facts) else {
            warn!(entry_id = %key.entry_id, spiffe_id = %key.spiffe_id, "server returned no usable X509-SVID for this rendered ID; will retry");
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
    for (key, err) in cache.set_rendered_svids(installs) {
        warn!(entry_id = %key.entry_id, spiffe_id = %key.spiffe_id, error = %err, "template X509-SVID not installed");
        minted.retain(|(k, _)| k != &key);
        failed.push(key);
    }
    metrics.svid_mint(true, minted.len());
    metrics.svid_mint(false, failed.len());
    if !minted.is_empty() {
        debug!(count = minted.len(), "minted template X509-SVIDs");
    }
    Ok(RenderedOutcome { minted, failed })
}

#[cfg(test)]
mod tests {
    use sigil_proto::{RegistrationEntry, Selector, SpiffeId};

    use super::*;

    #[test]
    fn signing_pace_stays_under_the_servers_limit() {
        let mut pace = SigningPace::new(PACE_PER_SEC, PACE_BURST);
        let t0 = Instant::now();
        // The burst goes at once, then 400/s: a 10k-entry start-up takes 22.5 s.
        assert_eq!(pace.reserve(500, t0), Duration::ZERO);
        assert_eq!(pace.reserve(500, t0), Duration::ZERO);
        assert_eq!(pace.reserve(500, t0), Duration::from_millis(1250));
        // Asked again once that wait is over: the debt is paid, the next batch waits its own.
        let t1 = t0 + Duration::from_millis(1250);
        assert_eq!(pace.reserve(500, t1), Duration::from_millis(1250));
        // Idle for long: refill stops at the burst.
        let t2 = t1 + Duration::from_secs(3600);
        assert_eq!(pace.reserve(1000, t2), Duration::ZERO);
        assert!(pace.reserve(1, t2) > Duration::ZERO);
        // Never faster than the server's 500/s after its burst of 1000, even with no waits.
        let mut pace = SigningPace::new(PACE_PER_SEC, PACE_BURST);
        let mut at = t0;
        let mut sent = 0usize;
        for _ in 0..40 {
            at += pace.reserve(500, at);
            sent += 500;
            let allowed = 1000.0 + 500.0 * at.duration_since(t0).as_secs_f64();
            assert!(sent as f64 <= allowed, "{sent} sent by {at:?}");
        }
    }

    #[test]
    fn signing_pace_waits_for_nothing_until_the_server_refuses() {
        let mut pace = SigningPace::after_first_refusal(PACE_PER_SEC, PACE_BURST);
        let t0 = Instant::now();
        for _ in 0..20 {
            assert_eq!(pace.reserve(500, t0), Duration::ZERO);
        }
        // Refused: the server's bucket is empty, so the next batch waits its own refill.
        pace.refused(t0);
        assert_eq!(pace.reserve(400, t0), Duration::from_secs(1));
        let t1 = t0 + Duration::from_secs(1);
        assert_eq!(pace.reserve(200, t1), Duration::from_millis(500));
    }

    #[test]
    fn refresh_at_is_half_life_with_bounded_jitter() {
        // (not_before, not_after, jitter, expected)
        let table = [
            (1000, 4600, 0.0, 2800),   // 1 h SVID: half-life 1800 s
            (1000, 4600, 0.1, 2980),   // +10 % of the half-life
            (1000, 4600, -0.1, 2620),  // -10 %
            (1000, 4600, 0.5, 2980),   // clamped to +10 %
            (1000, 4600, -7.0, 2620),  // clamped to -10 %
            (0, 86_400, 0.05, 45_360), // 24 h
            (500, 500, 0.1, 500),      // zero lifetime: now
            (500, 400, 0.0, 500),      // inverted window: treated as zero
        ];
        for (nb, na, jitter, want) in table {
            assert_eq!(refresh_at(nb, na, jitter), want, "{nb} {na} {jitter}");
        }
    }

    #[test]
    fn a_fresh_svid_lives_from_now_not_from_its_backdated_not_before() {
        // A 6 s SVID whose NotBefore the server backdated by 10 s: renewed 3 s from now, not
        // "2 s ago" (which would re-mint at once, again and again).
        assert_eq!(fresh_refresh_at(990, 1006, 1000, 0.0), 1003);
        // Not backdated (or clocks ahead): the same as refresh_at.
        assert_eq!(
            fresh_refresh_at(1000, 4600, 990, 0.0),
            refresh_at(1000, 4600, 0.0)
        );
    }

    #[test]
    fn next_wake_is_the_earliest_deadline_capped() {
        let secs = |refresh: &[i64], retry: &[i64]| {
            next_wake(refresh.iter().copied(), retry.iter().copied(), 1000).as_secs()
        };
        assert_eq!(secs(&[1030, 1010], &[1020]), 10);
        assert_eq!(secs(&[1030], &[1005]), 5);
        assert_eq!(secs(&[900], &[]), 0, "overdue: now");
        assert_eq!(secs(&[], &[]), MAX_SLEEP.as_secs(), "nothing to do");
        assert_eq!(secs(&[100_000], &[]), MAX_SLEEP.as_secs(), "capped");
    }

    #[test]
    fn random_jitter_stays_in_bounds() {
        for _ in 0..1000 {
            let j = random_jitter();
            assert!((-JITTER..=JITTER).contains(&j));
        }
    }

    #[test]
    fn backoff_doubles_to_the_cap_and_resets() {
        let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(30));
        let delays: Vec<f64> = (0..8).map(|_| b.next_delay().as_secs_f64()).collect();
        let bases = [1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0];
        for (d, base) in delays.iter().zip(bases) {
            assert!(
                *d >= base * 0.8 - 1e-9 && *d <= base * 1.2 + 1e-9,
                "{d} vs {base}"
            );
        }
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(1200));
    }

    #[test]
    fn csr_is_parseable_and_key_is_p256() {
        use rcgen::PublicKeyData;
        let (key, csr) = new_key_and_csr().unwrap();
        let parsed = rcgen::CertificateSigningRequestParams::from_der(&csr.into()).unwrap();
        let key = rcgen::KeyPair::try_from(key.as_slice()).unwrap();
        assert_eq!(parsed.public_key.der_bytes(), key.der_bytes());
        assert!(key.is_compatible(&rcgen::PKCS_ECDSA_P256_SHA256));
    }

    fn entry(id: &str, revision: i64) -> RegistrationEntry {
        RegistrationEntry {
            id: id.into(),
            revision,
            ..RegistrationEntry::new(
                SpiffeId::new(&format!("spiffe://td/{id}")).unwrap(),
                SpiffeId::new("spiffe://td/spire/agent/x").unwrap(),
                vec![Selector::new("unix:uid:1").unwrap()],
            )
        }
    }

    fn cache_with_svid(id: &str) -> (Cache, i64) {
        let cache = Cache::new(sigil_proto::Bundle::new(
            sigil_proto::TrustDomain::new("td").unwrap(),
        ));
        cache.replace_entries(vec![entry(id, 1), entry("fresh", 1)]);
        let (cert, key) = crate::svid_store::tests::self_signed(&format!("spiffe://td/{id}"));
        let facts = leaf_facts(&cert).unwrap();
        cache
            .set_svid(
                id,
                CachedX509Svid {
                    chain: vec![cert],
                    private_key_pkcs8: key,
                    expires_at: facts.not_after,
                },
            )
            .unwrap();
        (cache, facts.not_after)
    }

    fn ids(v: &[Arc<Identity>]) -> Vec<&str> {
        v.iter().map(|i| i.entry.id.as_str()).collect()
    }

    #[test]
    fn due_selects_missing_changed_and_refresh_time_svids() {
        let (cache, expires_at) = cache_with_svid("a");
        let snapshot = cache.snapshot();
        let mut minted = HashMap::new();
        minted.insert(
            "a".to_string(),
            Minted {
                revision: 1,
                expires_at,
                refresh_at: 100,
            },
        );
        let none = HashMap::new();
        // Before the refresh point only the entry without an SVID is due.
        assert_eq!(ids(&due(&snapshot, &mut minted, &none, 99)), ["fresh"]);
        // At the refresh point both are.
        assert_eq!(
            ids(&due(&snapshot, &mut minted, &none, 100)),
            ["a", "fresh"]
        );
        // An entry waiting for a retry is skipped until then.
        let retry = HashMap::from([("fresh".to_string(), 200)]);
        assert!(due(&snapshot, &mut minted, &retry, 99).is_empty());
        // A changed entry (new revision) is re-minted at once.
        cache.upsert_entries(vec![entry("a", 2)]);
        let snapshot = cache.snapshot();
        assert_eq!(ids(&due(&snapshot, &mut minted, &retry, 99)), ["a"]);
    }

    #[test]
    fn due_includes_svids_signed_by_a_tainted_authority() {
        let (cache, expires_at) = cache_with_svid("a");
        let mut minted = HashMap::from([(
            "a".to_string(),
            Minted {
                revision: 1,
                expires_at,
                refresh_at: 100,
            },
        )]);
        let none = HashMap::new();
        assert_eq!(
            ids(&due(&cache.snapshot(), &mut minted, &none, 99)),
            ["fresh"]
        );
        // The test SVID is self-signed: tainting it taints the chain's own authority.
        let chain = cache
            .snapshot()
            .identity("a")
            .unwrap()
            .svid
            .as_ref()
            .unwrap()
            .chain
            .clone();
        let mut bundle = (*cache.snapshot().bundle).clone();
        bundle.tainted_x509_authorities = vec![chain[0].clone()];
        cache.set_bundle(bundle);
        assert_eq!(
            ids(&due(&cache.snapshot(), &mut minted, &none, 99)),
            ["a", "fresh"]
        );
    }

    #[test]
    fn due_rendered_mints_wanted_instances_only() {
        let cache = Cache::new(sigil_proto::Bundle::new(
            sigil_proto::TrustDomain::new("td").unwrap(),
        ));
        let template: sigil_proto::IdTemplate = "spiffe://td/ns/{k8s:ns}".parse().unwrap();
        let t = RegistrationEntry {
            spiffe_id: template.into(),
            ..entry("t", 1)
        };
        cache.replace_entries(vec![t, entry("fixed", 1)]);
        let key = |e: &str, id: &str| RenderedKey {
            entry_id: e.into(),
            spiffe_id: SpiffeId::new(id).unwrap(),
        };
        let a = key("t", "spiffe://td/ns/a");
        let wanted = vec![
            a.clone(),
            key("t", "spiffe://td/other/a"),
            key("fixed", "spiffe://td/fixed"),
            key("gone", "spiffe://td/ns/a"),
        ];
        let none: HashMap<RenderedKey, Minted> = HashMap::new();
        let no_retry: HashMap<RenderedKey, i64> = HashMap::new();
        let snapshot = cache.snapshot();
        let due_keys =
            |minted: &HashMap<RenderedKey, Minted>, retry: &HashMap<RenderedKey, i64>, now| {
                due_rendered(&snapshot, &wanted, minted, retry, now)
                    .into_iter()
                    .map(|(_, k)| k)
                    .collect::<Vec<_>>()
            };
        assert_eq!(due_keys(&none, &no_retry, 50), std::slice::from_ref(&a));
        let retry = HashMap::from([(a.clone(), 100)]);
        assert!(due_keys(&none, &retry, 50).is_empty());
        // Template entries are never pre-minted by the fixed-entry loop.
        let mut minted_fixed = HashMap::new();
        assert_eq!(
            ids(&due(&snapshot, &mut minted_fixed, &HashMap::new(), 50)),
            ["fixed"]
        );
    }
}
