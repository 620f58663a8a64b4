//! Operator control of the local authorities, SPIRE's `localauthority` API: prepare a new
//! authority now, activate it, taint the old one so agents re-mint what it signed right away,
//! and revoke it (removed from the bundle and the journal, its key destroyed).
//!
//! SPIRE's rules and messages, with one difference: SPIRE keeps a single old authority, we
//! keep every old one until it expires, so an ID is looked up among all of them.
//!
//! Authority IDs: an X.509 CA is named by its Subject Key Identifier in lowercase hex (as SPIRE
//! prints it), a JWT key by its `kid`. Each operation is worked out on a copy of the CA state
//! into a [`Pending`] change under a new bundle sequence; the caller stores its journal, then
//! applies it (`crate::ca_store::commit`), before answering the operator.

use std::fmt;
use std::time::SystemTime;

use x509_parser::extensions::ParsedExtension;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::ca::authorities::{
    Entry, JWT_KEY_IDS, Record, X509_KEY_IDS, free_key_id, live_key_ids, new_jwt_entry,
    new_x509_entry,
};
use crate::ca::rotation::AuthorityStatus;
use crate::ca::{Ca, CaError, Pending, unix};
use crate::key_manager::KeyManager;

/// Which kind of authority an operation is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthorityKind {
    X509,
    Jwt,
}

impl fmt::Display for AuthorityKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::X509 => "X.509",
            Self::Jwt => "JWT",
        })
    }
}

/// What the operator sees of one authority.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuthorityState {
    /// SKI hex (X.509) or `kid` (JWT).
    pub authority_id: String,
    pub status: AuthorityStatus,
    /// Unix seconds: the X.509 certificate's NotBefore; a JWT key's creation.
    pub not_before: i64,
    /// Unix seconds.
    pub expires_at: i64,
    pub tainted: bool,
    /// For an intermediate: the SKI hex of the upstream CA that signed it.
    pub upstream_authority_id: Option<String>,
}

/// Why an operation was refused. Every variant but `Ca` is the operator's mistake, and
/// nothing changed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LocalAuthorityError {
    #[error("no authority ID provided")]
    NoAuthorityId,
    #[error("no {0} authority found with authority ID {1:?}")]
    NotFound(AuthorityKind, String),
    #[error("no prepared {0} authority found")]
    NoPrepared(AuthorityKind),
    #[error("unexpected authority ID {0:?}: only the prepared authority can be activated")]
    NotPrepared(String),
    #[error("unable to {0} current local authority")]
    Current(&'static str),
    #[error("only Old local authorities can be tainted")]
    TaintPrepared,
    #[error("unable to revoke a prepared authority")]
    RevokePrepared,
    #[error("authority {0:?} is already tainted")]
    AlreadyTainted(String),
    #[error("it is not possible to revoke an untainted authority: taint {0:?} first")]
    Untainted(String),
    #[error(
        "local authority can't be {0} if there is an upstream authority (SPIRE's taint_upstream / revoke_upstream commands are not supported)"
    )]
    Upstream(&'static str),
    #[error(transparent)]
    Ca(#[from] CaError),
}

impl LocalAuthorityError {
    /// True when the operator asked for something the rules refuse (as opposed to a failure
    /// of the CA itself).
    pub fn is_invalid_request(&self) -> bool {
        !matches!(self, Self::Ca(_))
    }
}

/// An X.509 authority's ID: its Subject Key Identifier, lowercase hex. A certificate without
/// one (never ours) is named by nothing, so no operation can reach it by mistake.
pub fn x509_authority_id(cert_der: &[u8]) -> String {
    X509Certificate::from_der(cert_der)
        .ok()
        .and_then(|(_, cert)| {
            cert.extensions()
                .iter()
                .find_map(|ext| match ext.parsed_extension() {
                    ParsedExtension::SubjectKeyIdentifier(ski) => Some(hex::encode(ski.0)),
                    _ => None,
                })
        })
        .unwrap_or_default()
}

/// The SKI hex of the CA that signed `cert_der` (its Authority Key Identifier).
fn issuer_key_id(cert_der: &[u8]) -> Option<String> {
    let (_, cert) = X509Certificate::from_der(cert_der).ok()?;
    cert.extensions()
        .iter()
        .find_map(|ext| match ext.parsed_extension() {
            ParsedExtension::AuthorityKeyIdentifier(aki) => {
                aki.key_identifier.as_ref().map(|k| hex::encode(k.0))
            }
            _ => None,
        })
}

/// An authority revoked while this process ran, as it was just before, and when (Unix seconds).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RevokedAuthority {
    pub kind: AuthorityKind,
    pub state: AuthorityState,
    pub revoked_at: i64,
}

/// Revocations remembered for display.
const REVOKED_KEPT: usize = 64;

impl Ca {
    /// Remembers a revocation that was stored and applied, for display (the journal keeps no
    /// trace of a revoked authority).
    pub fn record_revoked(&self, kind: AuthorityKind, state: AuthorityState, now: i64) {
        let mut revoked = self.revoked.lock().unwrap_or_else(|e| e.into_inner());
        revoked.push(RevokedAuthority {
            kind,
            state,
            revoked_at: now,
        });
        let excess = revoked.len().saturating_sub(REVOKED_KEPT);
        revoked.drain(..excess);
    }

    /// The authorities revoked since this process started, oldest first.
    pub fn revoked(&self) -> Vec<RevokedAuthority> {
        self.revoked
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Every authority of `kind`, in journal order (oldest first).
    pub fn authorities(&self, kind: AuthorityKind) -> Vec<AuthorityState> {
        let state = self.lock_state();
        match kind {
            AuthorityKind::X509 => state.x509.iter().map(x509_state).collect(),
            AuthorityKind::Jwt => state
                .jwt
                .iter()
                .map(|e| authority_state(&e.record))
                .collect(),
        }
    }

    /// Creates a new prepared authority now, replacing any prepared one. Published in the
    /// bundle at once; it signs only once activated.
    pub fn prepare_authority(
        &self,
        kind: AuthorityKind,
        now: SystemTime,
    ) -> Result<Pending<AuthorityState>, LocalAuthorityError> {
        let now = unix(now);
        let config = &self.config;
        let km = &*self.key_manager;
        self.plan(|state| match kind {
            AuthorityKind::X509 => {
                let i = prepare(&mut state.x509, X509_KEY_IDS, |key_id| {
                    new_x509_entry(config, km, key_id, now)
                })?;
                Ok(x509_state(&state.x509[i]))
            }
            AuthorityKind::Jwt => {
                let i = prepare(&mut state.jwt, JWT_KEY_IDS, |key_id| {
                    new_jwt_entry(config, km, key_id, now)
                })?;
                Ok(authority_state(&state.jwt[i].record))
            }
        })
    }

    /// Makes the prepared authority `authority_id` the signing one; the active one becomes
    /// old (still in the bundle until it expires, or until tainted and revoked).
    pub fn activate_authority(
        &self,
        kind: AuthorityKind,
        authority_id: &str,
    ) -> Result<Pending<AuthorityState>, LocalAuthorityError> {
        self.plan(|state| match kind {
            AuthorityKind::X509 => {
                let i = activate(&mut state.x509, kind, authority_id)?;
                Ok(x509_state(&state.x509[i]))
            }
            AuthorityKind::Jwt => {
                let i = activate(&mut state.jwt, kind, authority_id)?;
                Ok(authority_state(&state.jwt[i].record))
            }
        })
    }

    /// Marks the old authority `authority_id` tainted: it stays trusted, and agents re-mint
    /// every SVID it signed (X.509) or drop the JWT-SVIDs it signed (JWT).
    pub fn taint_authority(
        &self,
        kind: AuthorityKind,
        authority_id: &str,
    ) -> Result<Pending<AuthorityState>, LocalAuthorityError> {
        self.refuse_with_upstream(kind, "tainted")?;
        self.plan(|state| match kind {
            AuthorityKind::X509 => {
                let i = taint(&mut state.x509, kind, authority_id)?;
                Ok(x509_state(&state.x509[i]))
            }
            AuthorityKind::Jwt => {
                let i = taint(&mut state.jwt, kind, authority_id)?;
                Ok(authority_state(&state.jwt[i].record))
            }
        })
    }

    /// Removes the tainted authority `authority_id` from the bundle and the journal, and
    /// destroys its private key if the key manager still holds it.
    ///
    /// The key is destroyed while planning, before the journal is stored: the authority is old
    /// and never signs again, so if storing then fails it stays listed (tainted, keyless) and
    /// a second `revoke` completes it.
    pub fn revoke_authority(
        &self,
        kind: AuthorityKind,
        authority_id: &str,
    ) -> Result<Pending<AuthorityState>, LocalAuthorityError> {
        self.refuse_with_upstream(kind, "revoked")?;
        let km = &*self.key_manager;
        self.plan(|state| match kind {
            AuthorityKind::X509 => {
                let removed = revoke(&mut state.x509, kind, authority_id)?;
                let public_key = X509Certificate::from_der(&removed.record.cert_der)
                    .map(|(_, c)| c.public_key().raw.to_vec())
                    .unwrap_or_default();
                destroy_key(km, &state.x509, &removed.record.key_id, &public_key)?;
                Ok(x509_state(&removed))
            }
            AuthorityKind::Jwt => {
                let removed = revoke(&mut state.jwt, kind, authority_id)?;
                destroy_key(
                    km,
                    &state.jwt,
                    &removed.record.key_id,
                    &removed.record.public_key,
                )?;
                Ok(authority_state(&removed.record))
            }
        })
    }

    /// With an upstream authority our X.509 CAs are intermediates: SPIRE handles those with
    /// separate upstream commands, which we do not have.
    fn refuse_with_upstream(
        &self,
        kind: AuthorityKind,
        verb: &'static str,
    ) -> Result<(), LocalAuthorityError> {
        if kind == AuthorityKind::X509 && self.config.upstream.is_some() {
            return Err(LocalAuthorityError::Upstream(verb));
        }
        Ok(())
    }
}

fn authority_state<R: Record>(record: &R) -> AuthorityState {
    let slot = record.slot();
    AuthorityState {
        authority_id: record.authority_id(),
        status: slot.status,
        not_before: slot.issued_at,
        expires_at: slot.not_after,
        tainted: record.tainted(),
        upstream_authority_id: None,
    }
}

fn x509_state<A>(entry: &Entry<crate::ca::journal::X509AuthorityRecord, A>) -> AuthorityState {
    let mut state = authority_state(&entry.record);
    if let Ok((_, cert)) = X509Certificate::from_der(&entry.record.cert_der) {
        state.not_before = cert.validity().not_before.timestamp();
    }
    if entry.record.upstream_signed {
        state.upstream_authority_id = issuer_key_id(&entry.record.cert_der);
    }
    state
}

fn find<R: Record, A>(
    entries: &[Entry<R, A>],
    kind: AuthorityKind,
    authority_id: &str,
) -> Result<usize, LocalAuthorityError> {
    if authority_id.is_empty() {
        return Err(LocalAuthorityError::NoAuthorityId);
    }
    entries
        .iter()
        .position(|e| e.record.authority_id() == authority_id)
        .ok_or_else(|| LocalAuthorityError::NotFound(kind, authority_id.to_owned()))
}

/// Drops any prepared authority and creates a new one, in a key slot neither the active nor
/// the dropped prepared authority uses (the stored journal still needs both until this change
/// commits). Returns its index.
fn prepare<R: Record, A>(
    entries: &mut Vec<Entry<R, A>>,
    key_ids: [&str; 3],
    create: impl FnOnce(&str) -> Result<Entry<R, A>, CaError>,
) -> Result<usize, LocalAuthorityError> {
    let committed = live_key_ids(entries);
    entries.retain(|e| e.record.slot().status != AuthorityStatus::Prepared);
    let entry = create(free_key_id(&committed, entries, key_ids))?;
    entries.push(entry);
    Ok(entries.len() - 1)
}

fn activate<R: Record, A>(
    entries: &mut [Entry<R, A>],
    kind: AuthorityKind,
    authority_id: &str,
) -> Result<usize, LocalAuthorityError> {
    if authority_id.is_empty() {
        return Err(LocalAuthorityError::NoAuthorityId);
    }
    let prepared = entries
        .iter()
        .position(|e| e.record.slot().status == AuthorityStatus::Prepared)
        .ok_or(LocalAuthorityError::NoPrepared(kind))?;
    if entries[prepared].record.authority_id() != authority_id {
        return Err(LocalAuthorityError::NotPrepared(authority_id.to_owned()));
    }
    for e in entries.iter_mut() {
        if e.record.slot().status == AuthorityStatus::Active {
            e.record.set_status(AuthorityStatus::Old);
            e.live = None;
        }
    }
    entries[prepared].record.set_status(AuthorityStatus::Active);
    Ok(prepared)
}

fn taint<R: Record, A>(
    entries: &mut [Entry<R, A>],
    kind: AuthorityKind,
    authority_id: &str,
) -> Result<usize, LocalAuthorityError> {
    let i = find(entries, kind, authority_id)?;
    let record = &mut entries[i].record;
    match record.slot().status {
        AuthorityStatus::Active => Err(LocalAuthorityError::Current("taint")),
        AuthorityStatus::Prepared => Err(LocalAuthorityError::TaintPrepared),
        AuthorityStatus::Old if record.tainted() => {
            Err(LocalAuthorityError::AlreadyTainted(authority_id.to_owned()))
        }
        AuthorityStatus::Old => {
            record.set_tainted();
            tracing::warn!(%kind, authority_id, "local authority tainted");
            Ok(i)
        }
    }
}

fn revoke<R: Record, A>(
    entries: &mut Vec<Entry<R, A>>,
    kind: AuthorityKind,
    authority_id: &str,
) -> Result<Entry<R, A>, LocalAuthorityError> {
    let i = find(entries, kind, authority_id)?;
    let record = &entries[i].record;
    match record.slot().status {
        AuthorityStatus::Active => Err(LocalAuthorityError::Current("revoke")),
        AuthorityStatus::Prepared => Err(LocalAuthorityError::RevokePrepared),
        AuthorityStatus::Old if !record.tainted() => {
            Err(LocalAuthorityError::Untainted(authority_id.to_owned()))
        }
        AuthorityStatus::Old => {
            tracing::warn!(%kind, authority_id, "local authority revoked");
            Ok(entries.remove(i))
        }
    }
}

/// The key manager has no delete: a revoked authority's key is destroyed by generating a
/// fresh key over its slot, when no live authority uses that slot and it still holds the
/// revoked key (the slot may already have been reused).
fn destroy_key<R: Record, A>(
    km: &dyn KeyManager,
    remaining: &[Entry<R, A>],
    key_id: &str,
    public_key: &[u8],
) -> Result<(), CaError> {
    let in_use = remaining
        .iter()
        .any(|e| e.live.is_some() && e.record.key_id() == key_id);
    if in_use {
        return Ok(());
    }
    if let Some(key) = km.fetch(key_id)?
        && key.public_key() == public_key
    {
        km.generate(key_id, key.key_type())?;
        tracing::info!(key_id, "revoked authority's private key destroyed");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::{Duration, UNIX_EPOCH};

    use x509_parser::prelude::{FromDer, X509Certificate};

    use super::AuthorityKind::{Jwt, X509};
    use super::*;
    use crate::ca::{CaConfig, CaJournal};
    use crate::key_manager::{DiskKeyManager, KeyManager, MemoryKeyManager, SigningKey};
    use sigil_proto::{SpiffeId, TrustDomain};

    const T0: i64 = 1_800_000_000;
    const DAY: u64 = 86_400;

    fn at(secs: i64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(u64::try_from(secs).unwrap())
    }

    fn config() -> CaConfig {
        CaConfig {
            ca_ttl: Duration::from_secs(DAY),
            ..CaConfig::new(TrustDomain::new("example.org").unwrap())
        }
    }

    fn ca_with(km: Arc<dyn KeyManager>) -> Ca {
        Ca::new(config(), km, None, at(T0)).unwrap().0
    }

    fn ca() -> Ca {
        ca_with(Arc::new(MemoryKeyManager::new()))
    }

    fn one(ca: &Ca, kind: AuthorityKind, status: AuthorityStatus) -> AuthorityState {
        let found: Vec<_> = ca
            .authorities(kind)
            .into_iter()
            .filter(|a| a.status == status)
            .collect();
        assert_eq!(found.len(), 1, "{kind} {status:?}: {found:?}");
        found[0].clone()
    }

    /// The SKI hex of the CA that signed a fresh X509-SVID.
    fn signer_of_new_svid(ca: &Ca) -> String {
        let spki = SigningKey::generate("w", crate::key_manager::KeyType::EcP256)
            .unwrap()
            .public_key()
            .to_vec();
        let id = SpiffeId::new("spiffe://example.org/w").unwrap();
        let svid = ca.sign_x509_svid(&id, &spki, None, &[]).unwrap();
        issuer_key_id(&svid.chain[0]).unwrap()
    }

    fn kid_of_new_jwt(ca: &Ca) -> String {
        let id = SpiffeId::new("spiffe://example.org/w").unwrap();
        let svid = ca.sign_jwt_svid(&id, &["a".into()], None).unwrap();
        jsonwebtoken::decode_header(&svid.token)
            .unwrap()
            .kid
            .unwrap()
    }

    #[test]
    fn x509_authority_id_is_the_ski_hex() {
        let ca = ca();
        let bundle = ca.bundle();
        let (_, cert) = X509Certificate::from_der(&bundle.x509_authorities[0]).unwrap();
        let id = x509_authority_id(&bundle.x509_authorities[0]);
        assert_eq!(id.len(), 40, "{id}");
        assert!(
            id.chars()
                .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
        );
        assert_eq!(one(&ca, X509, AuthorityStatus::Active).authority_id, id);
        assert_eq!(signer_of_new_svid(&ca), id);
        assert_eq!(
            one(&ca, X509, AuthorityStatus::Active).expires_at,
            cert.validity().not_after.timestamp()
        );
    }

    #[test]
    fn full_x509_cycle_prepare_activate_taint_revoke() {
        let ca = ca();
        let old = one(&ca, X509, AuthorityStatus::Active);
        let seq0 = ca.bundle().sequence;

        let (prepared, journal) = ca
            .apply(ca.prepare_authority(X509, at(T0 + 10)).unwrap())
            .unwrap();
        assert_eq!(prepared.status, AuthorityStatus::Prepared);
        assert_eq!(journal.bundle_sequence, seq0 + 1);
        assert_eq!(ca.bundle().sequence, seq0 + 1);
        assert_eq!(ca.bundle().x509_authorities.len(), 2);
        // Prepared is published but does not sign yet.
        assert_eq!(signer_of_new_svid(&ca), old.authority_id);

        let (active, _) = ca
            .apply(ca.activate_authority(X509, &prepared.authority_id).unwrap())
            .unwrap();
        assert_eq!(active.status, AuthorityStatus::Active);
        assert_eq!(active.authority_id, prepared.authority_id);
        assert_eq!(signer_of_new_svid(&ca), prepared.authority_id);
        assert_eq!(
            one(&ca, X509, AuthorityStatus::Old).authority_id,
            old.authority_id
        );

        let (tainted, journal) = ca
            .apply(ca.taint_authority(X509, &old.authority_id).unwrap())
            .unwrap();
        assert!(tainted.tainted);
        assert!(journal.x509_authorities.iter().any(|r| r.tainted));
        let bundle = ca.bundle();
        assert_eq!(bundle.sequence, seq0 + 3);
        assert_eq!(bundle.x509_authorities.len(), 2, "tainted stays trusted");
        assert_eq!(bundle.tainted_x509_authorities.len(), 1);
        assert_eq!(
            x509_authority_id(&bundle.tainted_x509_authorities[0]),
            old.authority_id
        );

        let (revoked, journal) = ca
            .apply(ca.revoke_authority(X509, &old.authority_id).unwrap())
            .unwrap();
        assert_eq!(revoked.authority_id, old.authority_id);
        let bundle = ca.bundle();
        assert_eq!(bundle.sequence, seq0 + 4);
        assert_eq!(bundle.x509_authorities.len(), 1);
        assert!(bundle.tainted_x509_authorities.is_empty());
        assert_eq!(journal.x509_authorities.len(), 1);
        assert_eq!(journal, ca.journal());
    }

    #[test]
    fn full_jwt_cycle_and_taint_is_published() {
        let ca = ca();
        let old = one(&ca, Jwt, AuthorityStatus::Active);
        assert_eq!(kid_of_new_jwt(&ca), old.authority_id);
        let (prepared, _) = ca
            .apply(ca.prepare_authority(Jwt, at(T0 + 10)).unwrap())
            .unwrap();
        ca.apply(ca.activate_authority(Jwt, &prepared.authority_id).unwrap())
            .unwrap();
        assert_eq!(kid_of_new_jwt(&ca), prepared.authority_id);
        ca.apply(ca.taint_authority(Jwt, &old.authority_id).unwrap())
            .unwrap();
        let bundle = ca.bundle();
        let published = bundle.jwt_authority(&old.authority_id).unwrap();
        assert!(published.tainted);
        assert!(
            !bundle
                .jwt_authority(&prepared.authority_id)
                .unwrap()
                .tainted
        );
        ca.apply(ca.revoke_authority(Jwt, &old.authority_id).unwrap())
            .unwrap();
        let bundle = ca.bundle();
        assert!(bundle.jwt_authority(&old.authority_id).is_none());
        assert_eq!(bundle.jwt_authorities.len(), 1);
    }

    /// Every refusal leaves the state, the bundle and its sequence untouched.
    #[test]
    fn refusals_change_nothing() {
        let ca = ca();
        let active = one(&ca, X509, AuthorityStatus::Active).authority_id;
        let jwt_active = one(&ca, Jwt, AuthorityStatus::Active).authority_id;
        let check =
            |r: Result<Pending<AuthorityState>, LocalAuthorityError>, want: &str, ca: &Ca| {
                let before = ca.journal();
                let err = r.unwrap_err();
                assert!(err.is_invalid_request(), "{err}");
                assert!(err.to_string().contains(want), "{err} !~ {want}");
                assert_eq!(ca.journal(), before);
            };
        let before = ca.bundle();
        check(
            ca.activate_authority(X509, "abc"),
            "no prepared X.509 authority found",
            &ca,
        );
        check(
            ca.activate_authority(X509, ""),
            "no authority ID provided",
            &ca,
        );
        check(
            ca.taint_authority(X509, &active),
            "unable to taint current local authority",
            &ca,
        );
        check(
            ca.taint_authority(Jwt, &jwt_active),
            "unable to taint current",
            &ca,
        );
        check(
            ca.taint_authority(X509, "00ff"),
            "no X.509 authority found",
            &ca,
        );
        check(
            ca.revoke_authority(Jwt, "nope"),
            "no JWT authority found",
            &ca,
        );
        check(
            ca.revoke_authority(X509, &active),
            "unable to revoke current",
            &ca,
        );
        check(
            ca.taint_authority(X509, ""),
            "no authority ID provided",
            &ca,
        );

        let (prepared, _) = ca
            .apply(ca.prepare_authority(X509, at(T0 + 10)).unwrap())
            .unwrap();
        let after_prepare = ca.bundle();
        check(
            ca.taint_authority(X509, &prepared.authority_id),
            "only Old local authorities can be tainted",
            &ca,
        );
        check(
            ca.revoke_authority(X509, &prepared.authority_id),
            "unable to revoke a prepared authority",
            &ca,
        );
        check(
            ca.activate_authority(X509, &active),
            "only the prepared authority",
            &ca,
        );
        ca.apply(ca.activate_authority(X509, &prepared.authority_id).unwrap())
            .unwrap();
        check(
            ca.revoke_authority(X509, &active),
            "not possible to revoke an untainted authority",
            &ca,
        );
        ca.apply(ca.taint_authority(X509, &active).unwrap())
            .unwrap();
        check(ca.taint_authority(X509, &active), "already tainted", &ca);
        assert_eq!(after_prepare.sequence, before.sequence + 1);
    }

    #[test]
    fn prepare_replaces_a_prepared_authority() {
        let ca = ca();
        let (first, _) = ca
            .apply(ca.prepare_authority(X509, at(T0 + 10)).unwrap())
            .unwrap();
        let (second, _) = ca
            .apply(ca.prepare_authority(X509, at(T0 + 20)).unwrap())
            .unwrap();
        assert_ne!(first.authority_id, second.authority_id);
        assert_eq!(one(&ca, X509, AuthorityStatus::Prepared), second);
        assert_eq!(ca.bundle().x509_authorities.len(), 2);
    }

    #[test]
    fn automatic_rotation_keeps_working_alongside() {
        let ca = ca();
        let first = one(&ca, X509, AuthorityStatus::Active);
        // The operator prepares early; at the prepare threshold rotation adds nothing, and at
        // the activate threshold it activates the operator's prepared authority.
        let (prepared, _) = ca
            .apply(ca.prepare_authority(X509, at(T0 + 100)).unwrap())
            .unwrap();
        let half = T0 + i64::try_from(DAY / 2).unwrap();
        let jwt_only = ca
            .rotate(at(half))
            .unwrap()
            .expect("the JWT key is prepared");
        assert_eq!(jwt_only.x509_authorities.len(), 2);
        let activate = T0 + i64::try_from(DAY - DAY / 6).unwrap();
        ca.rotate(at(activate)).unwrap().expect("activated");
        assert_eq!(
            one(&ca, X509, AuthorityStatus::Active).authority_id,
            prepared.authority_id
        );
        // A tainted old authority is pruned when it expires, like any old one.
        ca.apply(ca.taint_authority(X509, &first.authority_id).unwrap())
            .unwrap();
        let expiry = first.expires_at;
        ca.rotate(at(expiry)).unwrap().expect("pruned");
        assert!(
            ca.authorities(X509)
                .iter()
                .all(|a| a.authority_id != first.authority_id)
        );
        assert!(ca.bundle().tainted_x509_authorities.is_empty());

        // After a manual activation the new active gets a full lifetime before rotation.
        let ca2 = ca_with(Arc::new(MemoryKeyManager::new()));
        let (p, _) = ca2
            .apply(ca2.prepare_authority(X509, at(T0 + 1000)).unwrap())
            .unwrap();
        ca2.apply(ca2.activate_authority(X509, &p.authority_id).unwrap())
            .unwrap();
        assert!(ca2.rotate(at(T0 + 1001)).unwrap().is_none());
        let next = ca2.next_rotation_check(at(T0 + 1001));
        assert!(next > at(T0 + 1001));
    }

    #[test]
    fn taint_survives_a_restart_and_revoke_destroys_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let keys = dir.path().join("keys.json");
        let km = Arc::new(DiskKeyManager::open(&keys).unwrap());
        let ca = ca_with(km.clone());
        let old = one(&ca, X509, AuthorityStatus::Active);
        let old_key_id = ca.journal().x509_authorities[0].key_id.clone();
        let old_public = km
            .fetch(&old_key_id)
            .unwrap()
            .unwrap()
            .public_key()
            .to_vec();
        let (prepared, _) = ca
            .apply(ca.prepare_authority(X509, at(T0 + 10)).unwrap())
            .unwrap();
        ca.apply(ca.activate_authority(X509, &prepared.authority_id).unwrap())
            .unwrap();
        let (_, journal) = ca
            .apply(ca.taint_authority(X509, &old.authority_id).unwrap())
            .unwrap();
        let bytes = journal.to_bytes().unwrap();
        let bundle = ca.bundle();
        drop(ca);

        let km = Arc::new(DiskKeyManager::open(&keys).unwrap());
        let journal = CaJournal::from_bytes(&bytes).unwrap();
        let (ca, _) = Ca::new(config(), km.clone(), Some(journal), at(T0 + 20)).unwrap();
        assert_eq!(*ca.bundle(), *bundle, "taint and sequence survive");
        assert!(ca.authorities(X509).iter().any(|a| a.tainted));

        // Two slots: the old CA's key is still in its slot until revoked.
        assert_eq!(
            km.fetch(&old_key_id).unwrap().unwrap().public_key(),
            old_public.as_slice()
        );
        ca.apply(ca.revoke_authority(X509, &old.authority_id).unwrap())
            .unwrap();
        let after = km.fetch(&old_key_id).unwrap();
        assert!(after.is_none_or(|k| k.public_key() != old_public.as_slice()));
        // The active CA still signs.
        assert_eq!(signer_of_new_svid(&ca), prepared.authority_id);
    }
}
