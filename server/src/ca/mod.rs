//! The CA: signs X509-SVIDs and JWT-SVIDs for the trust domain, keeps the current and next
//! authorities (SPIRE's *sign* / *manage current and next key* / *rotate on a timer* split) and
//! publishes the trust bundle.
//!
//! - [`config`]: [`CaConfig`], the CA's keys of the `server` block and their defaults.
//! - [`x509`]: certificate templates (self-signed CA, X509-SVID leaf) and the CSR checks.
//! - [`jwt`]: JWT-SVID signing, a compact JWS signed with ring.
//! - [`rotation`]: when to prepare, activate and prune authorities (pure functions of `now`).
//! - `authorities`: the authorities the CA holds (current, next, old) with their signers,
//!   loaded from the journal, rotated, and turned back into the bundle and the journal.
//! - [`upstream`]: UpstreamAuthority "disk", the operator's CA that signs ours as an
//!   intermediate.
//! - [`local_authority`]: the operator's prepare / activate / taint / revoke (SPIRE's
//!   `localauthority` API).
//! - [`journal`]: the persisted record of every authority, so a restart resumes the same CA.
//! - [`replica_id`]: one CA per server replica, each named by its [`ReplicaId`].
//! - [`bundle_union`]: the published bundle is the union of every replica's authorities
//!   ([`Ca::adopt_bundle`]).
//!
//! Signing reads the active authority lock-free (`ArcSwap`). A change (rotation, an operator's
//! `localauthority` command) is worked out on a copy of the state into a [`Pending`] change,
//! whose journal the caller stores first; only then does [`Ca::apply`] make it current, so a
//! change is persisted and in effect, or neither (see `crate::ca_store::commit`). The run loop
//! plans rotations ([`Ca::plan_rotation`]) at [`Ca::next_rotation_check`].

mod authorities;
pub mod bundle_union;
mod cert_signature;
pub mod config;
pub mod journal;
pub mod jwt;
pub mod local_authority;
pub mod replica_id;
pub mod rotation;
pub mod upstream;
pub mod x509;

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use tokio::sync::watch;

use crate::ca::authorities::State;
use crate::ca::jwt::JwtSigner;
use crate::ca::rotation::Slot;
use crate::ca::x509::X509Authority;
use crate::key_manager::{KeyManager, KeyManagerError};
use sigil_proto::{Bundle, SpiffeId};

pub use config::{CaConfig, CaSubject};
pub use journal::CaJournal;
pub use replica_id::ReplicaId;

/// Why the CA refused or failed to sign or rotate.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CaError {
    #[error("SPIFFE ID {id} is not in trust domain {trust_domain}")]
    ForeignTrustDomain { id: String, trust_domain: String },
    #[error("SPIFFE ID {0} has no path")]
    NoPath(String),
    #[error("JWT-SVID audience is empty")]
    EmptyAudience,
    #[error("invalid DNS name {0:?}")]
    InvalidDnsName(String),
    #[error("invalid subject value {0:?}")]
    InvalidSubject(String),
    #[error("invalid public key: {0}")]
    InvalidPublicKey(String),
    #[error("malformed CSR: {0}")]
    CsrMalformed(String),
    #[error("CSR signature does not verify")]
    CsrSignature,
    #[error("CSR asks for {requested}, not {expected}")]
    CsrIdMismatch { requested: String, expected: String },
    #[error("the signing authority has expired")]
    AuthorityExpired,
    #[error("no active authority")]
    NoActiveAuthority,
    #[error("invalid CA configuration: {0}")]
    InvalidConfig(&'static str),
    #[error("time {0} is out of range")]
    TimeOutOfRange(i64),
    #[error("random number generator failed")]
    Random,
    #[error("upstream authority: {0}")]
    Upstream(String),
    #[error("CA journal: {0}")]
    Journal(String),
    #[error("key manager: {0}")]
    KeyManager(#[from] KeyManagerError),
    #[error("certificate generation: {0}")]
    Certificate(#[from] rcgen::Error),
    #[error("JSON encoding: {0}")]
    Json(#[from] serde_json::Error),
}

impl CaError {
    /// True when the caller asked for something we refuse to sign (their fault, not ours):
    /// such errors are reported to the caller; the rest are logged as server failures.
    pub fn is_invalid_request(&self) -> bool {
        matches!(
            self,
            Self::ForeignTrustDomain { .. }
                | Self::NoPath(_)
                | Self::EmptyAudience
                | Self::InvalidDnsName(_)
                | Self::InvalidPublicKey(_)
                | Self::CsrMalformed(_)
                | Self::CsrSignature
                | Self::CsrIdMismatch { .. }
        )
    }
}

/// An issued X509-SVID.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct X509Svid {
    /// DER certificates, leaf first, then the intermediates when an upstream authority signs
    /// the CA (the roots are in the bundle).
    pub chain: Vec<Vec<u8>>,
    /// Unix seconds; the leaf's NotAfter.
    pub expires_at: i64,
    /// The leaf's serial number, hex.
    pub serial: String,
}

/// An issued JWT-SVID.
#[derive(Clone, PartialEq, Eq)]
pub struct JwtSvid {
    pub token: String,
    /// Unix seconds; the `exp` claim.
    pub expires_at: i64,
}

impl fmt::Debug for JwtSvid {
    /// The token is a bearer credential: never printed.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JwtSvid")
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

/// The trust domain's CA.
pub struct Ca {
    config: CaConfig,
    key_manager: Arc<dyn KeyManager>,
    x509_active: ArcSwap<X509Authority>,
    jwt_active: ArcSwap<JwtSigner>,
    state: Mutex<State>,
    /// Publishes our authorities plus `peers`: the bundle every consumer uses.
    bundle_tx: watch::Sender<Arc<Bundle>>,
    persistence: tokio::sync::Mutex<()>,
    replica_id: ReplicaId,
    /// The other replicas' authorities, from the last union adopted from the datastore.
    peers: Mutex<Bundle>,
    /// The journal sequence last stored in the datastore (0: none yet).
    persisted_sequence: AtomicU64,
    /// Authorities revoked while this process ran, for display ([`Ca::revoked`]).
    revoked: Mutex<Vec<local_authority::RevokedAuthority>>,
}

impl Ca {
    /// Builds the CA from `journal`. Authorities whose keys are still in the key manager are
    /// resumed as they were; those whose keys are gone stay in the bundle (public part only)
    /// until they expire, and a fresh authority is created and activated. Returns the journal
    /// to persist.
    pub fn new(
        config: CaConfig,
        key_manager: Arc<dyn KeyManager>,
        journal: Option<CaJournal>,
        now: SystemTime,
    ) -> Result<(Self, CaJournal), CaError> {
        if config.ca_ttl.as_secs() == 0 {
            return Err(CaError::InvalidConfig("ca_ttl must be at least one second"));
        }
        if config.ca_subject.country.len() > 1 || config.ca_subject.organization.len() > 1 {
            tracing::warn!("ca_subject: only the first country and organization are used");
        }
        let now = unix(now);
        if let Some(upstream) = &config.upstream
            && upstream.not_after() < now.saturating_add(secs(config.ca_ttl))
        {
            tracing::warn!(
                upstream_not_after = upstream.not_after(),
                "the upstream CA expires before ca_ttl runs out; intermediate CAs are capped at its NotAfter"
            );
        }
        let fresh = journal.is_none();
        let mut state = State::load(
            &*key_manager,
            journal.unwrap_or_default(),
            config.upstream.as_deref(),
        )?;
        let changed = state.rotate(&config, &*key_manager, now)?;
        if changed || fresh {
            state.sequence += 1;
        }
        let x509_active = state.active_x509()?;
        let jwt_active = state.active_jwt()?;
        let bundle = Arc::new(state.bundle(&config));
        let journal = state.journal(&config);
        let peers = Mutex::new(Bundle::new(config.trust_domain.clone()));
        let (bundle_tx, _) = watch::channel(bundle);
        tracing::info!(
            trust_domain = %config.trust_domain,
            x509_authorities = state.x509.len(),
            jwt_keys = state.jwt.len(),
            sequence = state.sequence,
            "CA ready"
        );
        let ca = Self {
            config,
            key_manager,
            x509_active: ArcSwap::new(x509_active),
            jwt_active: ArcSwap::new(jwt_active),
            state: Mutex::new(state),
            bundle_tx,
            persistence: tokio::sync::Mutex::new(()),
            replica_id: ReplicaId::single(),
            peers,
            persisted_sequence: AtomicU64::new(0),
            revoked: Mutex::default(),
        };
        Ok((ca, journal))
    }

    /// Names the replica this CA belongs to (the key of its journal in the datastore).
    pub fn with_replica_id(mut self, replica_id: ReplicaId) -> Self {
        self.replica_id = replica_id;
        self
    }

    pub fn replica_id(&self) -> &ReplicaId {
        &self.replica_id
    }

    pub fn config(&self) -> &CaConfig {
        &self.config
    }

    /// Signs an X509-SVID for `spiffe_id` over the given public key (SPKI DER). `ttl` defaults
    /// to `x509_svid_ttl`; NotAfter is capped by the CA's.
    pub fn sign_x509_svid(
        &self,
        spiffe_id: &SpiffeId,
        public_key_spki_der: &[u8],
        ttl: Option<Duration>,
        dns_names: &[String],
    ) -> Result<X509Svid, CaError> {
        self.sign_x509_svid_at(
            SystemTime::now(),
            spiffe_id,
            public_key_spki_der,
            ttl,
            dns_names,
        )
    }

    /// Signs an X509-SVID for the public key of a PKCS#10 CSR, after checking its signature.
    /// The identity is `spiffe_id`: a CSR asking for another URI SAN is refused, other names it
    /// asks for are ignored.
    pub fn sign_x509_svid_csr(
        &self,
        csr_der: &[u8],
        spiffe_id: &SpiffeId,
        ttl: Option<Duration>,
        dns_names: &[String],
    ) -> Result<X509Svid, CaError> {
        self.check_id(spiffe_id)?;
        let public_key = x509::csr_public_key(csr_der, spiffe_id)?;
        self.sign_x509_svid(spiffe_id, &public_key, ttl, dns_names)
    }

    /// Signs the server's own SVID, `spiffe://<td>/spire/server`, its TLS identity toward
    /// agents.
    pub fn sign_server_svid(
        &self,
        public_key_spki_der: &[u8],
        dns_names: &[String],
    ) -> Result<X509Svid, CaError> {
        let id = self.config.trust_domain.server_id();
        self.sign_x509_svid(&id, public_key_spki_der, None, dns_names)
    }

    pub(crate) fn sign_x509_svid_at(
        &self,
        now: SystemTime,
        spiffe_id: &SpiffeId,
        public_key_spki_der: &[u8],
        ttl: Option<Duration>,
        dns_names: &[String],
    ) -> Result<X509Svid, CaError> {
        self.check_id(spiffe_id)?;
        let now = unix(now);
        let authority = self.x509_active.load();
        let ttl = secs(ttl.unwrap_or(self.config.x509_svid_ttl));
        let not_after = now.saturating_add(ttl).min(authority.not_after());
        if not_after <= now {
            return Err(CaError::AuthorityExpired);
        }
        let not_before = now - x509::NOT_BEFORE_CUSHION_SECS;
        let (leaf, serial) = authority.sign_leaf(
            spiffe_id,
            public_key_spki_der,
            not_before,
            not_after,
            dns_names,
        )?;
        let mut chain = Vec::with_capacity(1 + authority.chain().len());
        chain.push(leaf);
        chain.extend(authority.chain().iter().cloned());
        Ok(X509Svid {
            chain,
            expires_at: not_after,
            serial,
        })
    }

    /// Signs a JWT-SVID for `spiffe_id` with every audience in `audience`. `ttl` defaults to
    /// `jwt_svid_ttl`; `exp` is capped by the JWT key's expiry.
    pub fn sign_jwt_svid(
        &self,
        spiffe_id: &SpiffeId,
        audience: &[String],
        ttl: Option<Duration>,
    ) -> Result<JwtSvid, CaError> {
        self.sign_jwt_svid_at(SystemTime::now(), spiffe_id, audience, ttl)
    }

    pub(crate) fn sign_jwt_svid_at(
        &self,
        now: SystemTime,
        spiffe_id: &SpiffeId,
        audience: &[String],
        ttl: Option<Duration>,
    ) -> Result<JwtSvid, CaError> {
        self.check_id(spiffe_id)?;
        if audience.is_empty() || audience.iter().any(String::is_empty) {
            return Err(CaError::EmptyAudience);
        }
        let now = unix(now);
        let signer = self.jwt_active.load();
        let ttl = secs(ttl.unwrap_or(self.config.jwt_svid_ttl));
        let exp = now.saturating_add(ttl).min(signer.not_after());
        if exp <= now {
            return Err(CaError::AuthorityExpired);
        }
        let token = signer.sign(
            spiffe_id,
            audience,
            now,
            exp,
            self.config.jwt_issuer.as_deref(),
        )?;
        Ok(JwtSvid {
            token,
            expires_at: exp,
        })
    }

    /// The current bundle: every unexpired X.509 CA and JWT key of this replica and of the
    /// other replicas (as last adopted).
    pub fn bundle(&self) -> Arc<Bundle> {
        self.bundle_tx.borrow().clone()
    }

    /// A receiver that sees every new bundle.
    pub fn subscribe(&self) -> watch::Receiver<Arc<Bundle>> {
        self.bundle_tx.subscribe()
    }

    /// The current journal.
    pub fn journal(&self) -> CaJournal {
        self.lock_state().journal(&self.config)
    }

    /// Adopts `union`, the bundle of every replica as stored in the datastore: the other
    /// replicas' authorities in it are published beside ours (ours always come from our own
    /// state). The sequence never goes back. Returns whether the published bundle changed.
    pub fn adopt_bundle(&self, union: &Bundle) -> bool {
        if union.trust_domain != self.config.trust_domain {
            return false;
        }
        let state = self.lock_state();
        let own = state.bundle(&self.config);
        let peers = bundle_union::peers_part(union, &own);
        let next_peers = peers.clone();
        *self.peers.lock().unwrap_or_else(PoisonError::into_inner) = next_peers;
        self.bundle_tx.send_if_modified(|current| {
            let next = bundle_union::merge(&own, &peers, union.sequence.max(current.sequence));
            if **current == next {
                return false;
            }
            *current = Arc::new(next);
            true
        })
    }

    /// Whether the journal changed since it was last stored ([`Ca::mark_persisted`]).
    pub fn needs_persist(&self) -> bool {
        self.lock_state().sequence != self.persisted_sequence.load(Ordering::Acquire)
    }

    /// Records that the journal with `bundle_sequence` is stored.
    pub fn mark_persisted(&self, bundle_sequence: u64) {
        self.persisted_sequence
            .store(bundle_sequence, Ordering::Release);
    }

    /// Works out every rotation step due at `now` (prepare, activate, prune), without applying
    /// it: `None` when nothing is due. Store the journal, then [`Ca::apply`].
    pub fn plan_rotation(&self, now: SystemTime) -> Result<Option<Pending<()>>, CaError> {
        let now = unix(now);
        let pending = self.plan(|next| next.rotate(&self.config, &*self.key_manager, now))?;
        Ok(pending.outcome.then(|| pending.with_outcome(())))
    }

    /// Runs `change` on a copy of the state and returns it as a [`Pending`] change under the
    /// next sequence; nothing is applied. A new authority's key is already in the key manager,
    /// in a slot the current state does not need ([`authorities::free_key_id`]).
    fn plan<T, E: From<CaError>>(
        &self,
        change: impl FnOnce(&mut State) -> Result<T, E>,
    ) -> Result<Pending<T>, E> {
        let state = self.lock_state();
        let mut next = state.clone();
        let outcome = change(&mut next)?;
        next.sequence = state.sequence + 1;
        let x509_active = next.active_x509()?;
        let jwt_active = next.active_jwt()?;
        let journal = next.journal(&self.config);
        Ok(Pending {
            next,
            x509_active,
            jwt_active,
            base: state.sequence,
            outcome,
            journal,
        })
    }

    /// The bundle sequence [`Ca::apply`] would publish `pending` under.
    pub fn sequence_after(&self, pending: &Pending<impl Sized>) -> u64 {
        pending
            .next
            .sequence
            .max(self.bundle_tx.borrow().sequence + 1)
    }

    /// Makes `pending` the current state: switches the signers and publishes the bundle. Call
    /// it once its journal is stored. Refused if the state changed since `pending` was worked
    /// out (callers hold [`Ca::lock_persistence`] from planning to applying, so it does not).
    pub fn apply<T>(&self, pending: Pending<T>) -> Result<(T, CaJournal), CaError> {
        let mut state = self.lock_state();
        if state.sequence != pending.base {
            return Err(CaError::Journal(format!(
                "the CA changed (sequence {} to {}) while a change was being stored",
                pending.base, state.sequence
            )));
        }
        *state = pending.next;
        self.x509_active.store(pending.x509_active);
        self.jwt_active.store(pending.jwt_active);
        let own = state.bundle(&self.config);
        let peers = self
            .peers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        // The caller adopts the stored union next (`Ca::adopt_bundle`), at this sequence or later.
        self.bundle_tx.send_modify(|current| {
            let sequence = state.sequence.max(current.sequence + 1);
            *current = Arc::new(bundle_union::merge(&own, &peers, sequence));
        });
        Ok((pending.outcome, pending.journal))
    }

    /// Held from planning a change to applying it (and while the journal is written), so
    /// concurrent writers (rotation, the admin API) neither plan from the same state nor store
    /// an older journal over a newer one.
    pub async fn lock_persistence(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.persistence.lock().await
    }

    /// When [`Ca::rotate`] next has something to do (never before `now`).
    pub fn next_rotation_check(&self, now: SystemTime) -> SystemTime {
        let now_s = unix(now);
        let state = self.lock_state();
        let x509: Vec<Slot> = state.x509.iter().map(|s| s.record.slot()).collect();
        let jwt: Vec<Slot> = state.jwt.iter().map(|s| s.record.slot()).collect();
        let at = rotation::next_check_at(now_s, &x509).min(rotation::next_check_at(now_s, &jwt));
        if at <= now_s {
            return now;
        }
        UNIX_EPOCH + Duration::from_secs(u64::try_from(at).unwrap_or(0))
    }

    fn check_id(&self, id: &SpiffeId) -> Result<(), CaError> {
        if id.trust_domain() != &self.config.trust_domain {
            return Err(CaError::ForeignTrustDomain {
                id: id.to_string(),
                trust_domain: self.config.trust_domain.to_string(),
            });
        }
        if !id.is_workload_id() {
            return Err(CaError::NoPath(id.to_string()));
        }
        Ok(())
    }

    fn lock_state(&self) -> std::sync::MutexGuard<'_, State> {
        // Rotation commits a whole new state in one assignment, so a poisoned lock still
        // guards a consistent value.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl fmt::Debug for Ca {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ca")
            .field("trust_domain", &self.config.trust_domain)
            .field("key_manager", &self.key_manager)
            .field("sequence", &self.bundle_tx.borrow().sequence)
            .finish_non_exhaustive()
    }
}

/// A change to the CA's authorities, worked out on a copy of its state and not yet in effect:
/// store its [`journal`](Pending::journal) first, then [`Ca::apply`] it. Dropped, it changes
/// nothing (a new authority's key stays in a slot the current state does not use).
#[derive(Debug)]
#[must_use = "a pending change does nothing until it is stored and applied"]
pub struct Pending<T> {
    next: State,
    x509_active: Arc<X509Authority>,
    jwt_active: Arc<JwtSigner>,
    /// The sequence of the state it was worked out from.
    base: u64,
    outcome: T,
    journal: CaJournal,
}

impl<T> Pending<T> {
    /// The journal to store before applying.
    pub fn journal(&self) -> &CaJournal {
        &self.journal
    }

    /// What the change did (the authority it touched, for an operator's command).
    pub fn outcome(&self) -> &T {
        &self.outcome
    }

    fn with_outcome<U>(self, outcome: U) -> Pending<U> {
        Pending {
            next: self.next,
            x509_active: self.x509_active,
            jwt_active: self.jwt_active,
            base: self.base,
            outcome,
            journal: self.journal,
        }
    }
}

fn unix(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_secs()).unwrap_or(i64::MAX),
    }
}

fn secs(d: Duration) -> i64 {
    i64::try_from(d.as_secs()).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests;
