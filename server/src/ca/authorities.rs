//! The authorities the CA holds — current, next, old — loaded from the journal and rotated.
//!
//! One job: the CA's [`State`], every X.509 CA and JWT key with its journal record and, for the
//! active and prepared ones, the live signer. It is rebuilt from the journal at start
//! ([`State::load`]), moved along by the rotation rule ([`State::rotate`]) and turned back
//! into the published bundle and the journal. Both kinds of authority go through the same
//! generic code by way of the small [`Record`] trait; which key-manager slot a new one takes
//! ([`free_key_id`]) is decided here too, for rotation and for the operator's `prepare`
//! (`super::local_authority`). Kept apart from `Ca` itself, which signs from the active
//! authority and publishes each change once its journal is stored.

use std::sync::Arc;

use crate::ca::journal::{JwtKeyRecord, X509AuthorityRecord};
use crate::ca::jwt::{self, JwtSigner};
use crate::ca::rotation::{self, Action, AuthorityStatus, Slot};
use crate::ca::upstream::UpstreamAuthority;
use crate::ca::x509::X509Authority;
use crate::ca::{CaConfig, CaError, CaJournal, local_authority, secs};
use crate::key_manager::KeyManager;
use sigil_proto::{Bundle, JwtAuthority};

/// Key-manager ids of the X.509 CA slots and the JWT key slots, named as SPIRE names its two.
/// A new authority goes in the first slot no signing (active or prepared) authority of the
/// stored journal uses, so its key never overwrites one the journal still needs: a change
/// whose journal then fails to commit leaves the stored CA whole. The third slot is used only
/// when the operator prepares again over a prepared authority; the keys file never grows past
/// three keys of each kind.
pub(super) const X509_KEY_IDS: [&str; 3] = ["x509-CA-A", "x509-CA-B", "x509-CA-C"];
pub(super) const JWT_KEY_IDS: [&str; 3] = ["JWT-Signer-A", "JWT-Signer-B", "JWT-Signer-C"];

/// Every authority, with the live signer of the active and prepared ones.
#[derive(Clone, Debug)]
pub(super) struct State {
    pub(super) x509: Vec<Entry<X509AuthorityRecord, X509Authority>>,
    pub(super) jwt: Vec<Entry<JwtKeyRecord, JwtSigner>>,
    pub(super) sequence: u64,
}

#[derive(Debug)]
pub(super) struct Entry<R, A> {
    pub(super) record: R,
    /// `None` for old authorities and for those whose key the key manager no longer has.
    pub(super) live: Option<Arc<A>>,
}

// By hand: a derive would require `A: Clone`, but only the `Arc` is cloned.
impl<R: Clone, A> Clone for Entry<R, A> {
    fn clone(&self) -> Self {
        Self {
            record: self.record.clone(),
            live: self.live.clone(),
        }
    }
}

/// What rotation needs from a journal record, for both kinds of authority.
pub(super) trait Record {
    fn slot(&self) -> Slot;
    fn set_status(&mut self, status: AuthorityStatus);
    fn key_id(&self) -> &str;
    /// The ID the operator names it by (`-authorityID`).
    fn authority_id(&self) -> String;
    fn tainted(&self) -> bool;
    fn set_tainted(&mut self);
}

impl Record for X509AuthorityRecord {
    fn slot(&self) -> Slot {
        Self::slot(self)
    }
    fn set_status(&mut self, status: AuthorityStatus) {
        self.status = status;
    }
    fn key_id(&self) -> &str {
        &self.key_id
    }
    fn authority_id(&self) -> String {
        local_authority::x509_authority_id(&self.cert_der)
    }
    fn tainted(&self) -> bool {
        self.tainted
    }
    fn set_tainted(&mut self) {
        self.tainted = true;
    }
}

impl Record for JwtKeyRecord {
    fn slot(&self) -> Slot {
        Self::slot(self)
    }
    fn set_status(&mut self, status: AuthorityStatus) {
        self.status = status;
    }
    fn key_id(&self) -> &str {
        &self.key_id
    }
    fn authority_id(&self) -> String {
        self.kid.clone()
    }
    fn tainted(&self) -> bool {
        self.tainted
    }
    fn set_tainted(&mut self) {
        self.tainted = true;
    }
}

impl State {
    /// Loads a journal, reattaching each active or prepared authority to its key. One whose
    /// key is missing or different (memory key manager after a restart) becomes old: it stays
    /// in the bundle until it expires but never signs again.
    ///
    /// With an upstream authority, only intermediates it signed are resumed; a self-signed CA
    /// (or an intermediate of another upstream) becomes old, so a new intermediate takes over
    /// at once. Without one, intermediates become old.
    pub(super) fn load(
        km: &dyn KeyManager,
        journal: CaJournal,
        upstream: Option<&UpstreamAuthority>,
    ) -> Result<Self, CaError> {
        let mut x509 = Vec::with_capacity(journal.x509_authorities.len());
        for mut record in journal.x509_authorities {
            let mut live = None;
            if record.status != AuthorityStatus::Old {
                let resumed = match (upstream, record.upstream_signed) {
                    (None, false) => km
                        .fetch(&record.key_id)?
                        .map(|key| X509Authority::load(record.cert_der.clone(), &key)),
                    (Some(upstream), true) => km.fetch(&record.key_id)?.map(|key| {
                        X509Authority::load_intermediate(record.cert_der.clone(), &key, upstream)
                    }),
                    (None, true) => Some(Err(CaError::Upstream(
                        "intermediate CA without an UpstreamAuthority configured".into(),
                    ))),
                    (Some(_), false) => Some(Err(CaError::Upstream(
                        "self-signed CA replaced by an upstream-signed intermediate".into(),
                    ))),
                };
                match resumed {
                    Some(Ok(authority)) => live = Some(Arc::new(authority)),
                    Some(Err(e)) => {
                        tracing::warn!(key_id = %record.key_id, error = %e, "X.509 CA not resumed")
                    }
                    None => {
                        tracing::warn!(key_id = %record.key_id, "X.509 CA key is gone; keeping its certificate until it expires")
                    }
                }
                if live.is_none() {
                    record.status = AuthorityStatus::Old;
                }
            }
            x509.push(Entry { record, live });
        }
        let mut jwt = Vec::with_capacity(journal.jwt_keys.len());
        for mut record in journal.jwt_keys {
            let mut live = None;
            if record.status != AuthorityStatus::Old {
                match km.fetch(&record.key_id)? {
                    Some(key) if key.public_key() == record.public_key.as_slice() => {
                        live = Some(Arc::new(JwtSigner::new(
                            record.kid.clone(),
                            key,
                            record.not_after,
                        )?));
                    }
                    _ => {
                        tracing::warn!(key_id = %record.key_id, kid = %record.kid, "JWT key is gone; keeping it in the bundle until it expires")
                    }
                }
                if live.is_none() {
                    record.status = AuthorityStatus::Old;
                }
            }
            jwt.push(Entry { record, live });
        }
        Ok(Self {
            x509,
            jwt,
            sequence: journal.bundle_sequence,
        })
    }

    /// Applies the rotation rule to both kinds of authority. Returns whether anything changed.
    pub(super) fn rotate(
        &mut self,
        config: &CaConfig,
        km: &dyn KeyManager,
        now: i64,
    ) -> Result<bool, CaError> {
        let x509_changed = rotate_entries(&mut self.x509, now, X509_KEY_IDS, |key_id| {
            new_x509_entry(config, km, key_id, now)
        })?;
        let jwt_changed = rotate_entries(&mut self.jwt, now, JWT_KEY_IDS, |key_id| {
            new_jwt_entry(config, km, key_id, now)
        })?;
        Ok(x509_changed || jwt_changed)
    }

    pub(super) fn active_x509(&self) -> Result<Arc<X509Authority>, CaError> {
        active(&self.x509)
    }

    pub(super) fn active_jwt(&self) -> Result<Arc<JwtSigner>, CaError> {
        active(&self.jwt)
    }

    /// The X.509 part is every self-signed CA (until it expires) plus the upstream roots:
    /// intermediates are sent in chains, never trusted on their own.
    pub(super) fn bundle(&self, config: &CaConfig) -> Bundle {
        let mut bundle = Bundle::new(config.trust_domain.clone());
        bundle.x509_authorities = self
            .x509
            .iter()
            .filter(|e| !e.record.upstream_signed)
            .map(|e| e.record.cert_der.clone())
            .chain(
                config
                    .upstream
                    .iter()
                    .flat_map(|u| u.roots().iter().cloned()),
            )
            .collect();
        bundle.jwt_authorities = self
            .jwt
            .iter()
            .map(|e| JwtAuthority {
                key_id: e.record.kid.clone(),
                public_key: e.record.public_key.clone(),
                expires_at: e.record.not_after,
                tainted: e.record.tainted,
            })
            .collect();
        bundle.tainted_x509_authorities = self
            .x509
            .iter()
            .filter(|e| e.record.tainted)
            .map(|e| e.record.cert_der.clone())
            .collect();
        bundle.sequence = self.sequence;
        bundle
    }

    pub(super) fn journal(&self, config: &CaConfig) -> CaJournal {
        CaJournal {
            x509_authorities: self.x509.iter().map(|e| e.record.clone()).collect(),
            jwt_keys: self.jwt.iter().map(|e| e.record.clone()).collect(),
            bundle_sequence: self.sequence,
            upstream_roots: config
                .upstream
                .iter()
                .flat_map(|u| u.roots().iter().cloned())
                .collect(),
        }
    }
}

/// A new prepared X.509 CA in key slot `key_id` (self-signed, or an intermediate of the
/// upstream authority).
pub(super) fn new_x509_entry(
    config: &CaConfig,
    km: &dyn KeyManager,
    key_id: &str,
    now: i64,
) -> Result<Entry<X509AuthorityRecord, X509Authority>, CaError> {
    let ttl = secs(config.ca_ttl);
    let key = km.generate(key_id, config.key_type)?;
    let authority = match &config.upstream {
        Some(upstream) => X509Authority::create_intermediate(
            &config.trust_domain,
            &config.ca_subject,
            &key,
            upstream,
            now,
            ttl,
        )?,
        None => X509Authority::create(&config.trust_domain, &config.ca_subject, &key, now, ttl)?,
    };
    tracing::info!(
        key_id,
        not_after = authority.not_after(),
        upstream_signed = config.upstream.is_some(),
        "X.509 CA prepared"
    );
    let record = X509AuthorityRecord {
        cert_der: authority.cert_der().to_vec(),
        key_id: key_id.to_owned(),
        status: AuthorityStatus::Prepared,
        issued_at: now,
        not_after: authority.not_after(),
        tainted: false,
        upstream_signed: config.upstream.is_some(),
    };
    Ok(Entry {
        record,
        live: Some(Arc::new(authority)),
    })
}

/// A new prepared JWT key in key slot `key_id`.
pub(super) fn new_jwt_entry(
    config: &CaConfig,
    km: &dyn KeyManager,
    key_id: &str,
    now: i64,
) -> Result<Entry<JwtKeyRecord, JwtSigner>, CaError> {
    let ttl = secs(config.ca_ttl);
    let key = km.generate(key_id, config.jwt_key_type)?;
    let not_after = now.saturating_add(ttl);
    let kid = jwt::random_kid()?;
    tracing::info!(key_id, kid = %kid, not_after, "JWT key prepared");
    let record = JwtKeyRecord {
        kid: kid.clone(),
        public_key: key.public_key().to_vec(),
        key_id: key_id.to_owned(),
        status: AuthorityStatus::Prepared,
        issued_at: now,
        not_after,
        tainted: false,
    };
    Ok(Entry {
        record,
        live: Some(Arc::new(JwtSigner::new(kid, key, not_after)?)),
    })
}

/// The key slots the signing (active and prepared) authorities of `entries` use.
pub(super) fn live_key_ids<R: Record, A>(entries: &[Entry<R, A>]) -> Vec<String> {
    entries
        .iter()
        .filter(|e| e.live.is_some())
        .map(|e| e.record.key_id().to_owned())
        .collect()
}

/// A key slot for a new authority: the first that neither a signing authority of `entries`
/// nor one of `committed` (the state the change is worked out from, as stored) uses, so the
/// new key overwrites nothing the stored journal needs. Of three slots one is free unless a
/// single change prepares twice; then the first slot `entries` does not need is used.
pub(super) fn free_key_id<'a, R: Record, A>(
    committed: &[String],
    entries: &[Entry<R, A>],
    key_ids: [&'a str; 3],
) -> &'a str {
    let busy = live_key_ids(entries);
    let unused = |id: &&&str, also: &[String]| {
        !busy.iter().any(|b| b == **id) && !also.iter().any(|b| b == **id)
    };
    key_ids
        .iter()
        .find(|id| unused(id, committed))
        .or_else(|| key_ids.iter().find(|id| unused(id, &[])))
        .copied()
        .unwrap_or(key_ids[0])
}

fn active<R: Record, A>(entries: &[Entry<R, A>]) -> Result<Arc<A>, CaError> {
    entries
        .iter()
        .find(|e| e.record.slot().status == AuthorityStatus::Active)
        .and_then(|e| e.live.clone())
        .ok_or(CaError::NoActiveAuthority)
}

/// Applies [`rotation::decide`] until nothing is due (a prepared authority that was itself
/// overdue can need a second pass). `create` makes a prepared authority in the given key slot.
fn rotate_entries<R: Record, A>(
    entries: &mut Vec<Entry<R, A>>,
    now: i64,
    key_ids: [&str; 3],
    mut create: impl FnMut(&str) -> Result<Entry<R, A>, CaError>,
) -> Result<bool, CaError> {
    let mut changed = false;
    let committed = live_key_ids(entries);
    // Each pass either settles or moves a fresh authority in; three passes always suffice.
    for _ in 0..3 {
        let slots: Vec<Slot> = entries.iter().map(|e| e.record.slot()).collect();
        let actions = rotation::decide(now, &slots);
        if actions.is_empty() {
            break;
        }
        changed = true;
        let mut index = 0;
        entries.retain(|_| {
            let keep = !actions.contains(&Action::Prune(index));
            index += 1;
            keep
        });
        for action in actions {
            match action {
                Action::Prune(_) => {}
                Action::Prepare => {
                    let entry = create(free_key_id(&committed, entries, key_ids))?;
                    entries.push(entry);
                }
                Action::Activate => {
                    for e in entries.iter_mut() {
                        match e.record.slot().status {
                            AuthorityStatus::Active => {
                                e.record.set_status(AuthorityStatus::Old);
                                e.live = None;
                            }
                            AuthorityStatus::Prepared => {
                                e.record.set_status(AuthorityStatus::Active)
                            }
                            AuthorityStatus::Old => {}
                        }
                    }
                }
            }
        }
    }
    Ok(changed)
}
