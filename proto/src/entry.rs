//! Registration entries: which workloads (by selectors, under which parent) get which identity.
//!
//! An entry names its identity as one [`EntrySpiffeId`]: a fixed SPIFFE ID or a template,
//! never both, so no code can read a template entry's ID as if it were fixed. TTLs that mean
//! "the server's default" are `None`. [`RegistrationEntry::new`] makes an entry from what
//! every entry needs; struct update (`..RegistrationEntry::new(..)`) sets the rest.

use std::fmt;
use std::time::Duration;

use sha2::{Digest, Sha256};

use crate::id_template::IdTemplate;
use crate::selector::Selector;
use crate::spiffe_id::SpiffeId;
use crate::trust_domain::TrustDomain;

/// The identity a registration entry gives. Displays as the operator wrote it: the SPIFFE ID,
/// or the template's text.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum EntrySpiffeId {
    /// One fixed SPIFFE ID (a workload ID: it has a path).
    Fixed(SpiffeId),
    /// An identity template (`entry create -template`): each workload gets the template
    /// rendered over its selectors.
    Template(IdTemplate),
}

impl EntrySpiffeId {
    /// The trust domain the identity is in.
    pub fn trust_domain(&self) -> &TrustDomain {
        match self {
            Self::Fixed(id) => id.trust_domain(),
            Self::Template(t) => t.trust_domain(),
        }
    }

    /// The fixed SPIFFE ID; `None` for a template.
    pub fn fixed(&self) -> Option<&SpiffeId> {
        match self {
            Self::Fixed(id) => Some(id),
            Self::Template(_) => None,
        }
    }

    /// The template; `None` for a fixed SPIFFE ID.
    pub fn template(&self) -> Option<&IdTemplate> {
        match self {
            Self::Fixed(_) => None,
            Self::Template(t) => Some(t),
        }
    }

    /// True if the identity is in the reserved namespace (see [`SpiffeId::is_reserved`]):
    /// the fixed ID, or every instance of the template.
    pub fn is_reserved(&self) -> bool {
        match self {
            Self::Fixed(id) => id.is_reserved(),
            Self::Template(t) => t.is_reserved(),
        }
    }

    /// True if `id` is this identity: the fixed ID, or any instance of the template.
    pub fn allows(&self, id: &SpiffeId) -> bool {
        match self {
            Self::Fixed(fixed) => id == fixed,
            Self::Template(t) => t.matches(id),
        }
    }
}

impl fmt::Display for EntrySpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Fixed(id) => id.fmt(f),
            Self::Template(t) => t.fmt(f),
        }
    }
}

impl From<SpiffeId> for EntrySpiffeId {
    fn from(id: SpiffeId) -> Self {
        Self::Fixed(id)
    }
}

impl From<IdTemplate> for EntrySpiffeId {
    fn from(t: IdTemplate) -> Self {
        Self::Template(t)
    }
}

/// A registration entry as the server stores it and agents cache it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RegistrationEntry {
    /// Opaque unique ID (a UUID unless the operator chose one with `-entryID`); empty until
    /// the datastore assigns one.
    pub id: String,
    /// The identity the entry gives.
    pub spiffe_id: EntrySpiffeId,
    /// The agent (or node alias, or another workload for nested entries) allowed to obtain it.
    pub parent_id: SpiffeId,
    /// Canonical (sorted, de-duplicated) and never empty.
    pub selectors: Vec<Selector>,
    /// Lifetime of the X.509-SVIDs; `None` means the server's default (never zero).
    pub x509_svid_ttl: Option<Duration>,
    /// Lifetime of the JWT-SVIDs; `None` means the server's default (never zero).
    pub jwt_svid_ttl: Option<Duration>,
    /// DNS names added to the X.509-SVID.
    pub dns_names: Vec<String>,
    /// Trust domains whose bundles the entry's workloads receive.
    pub federates_with: Vec<TrustDomain>,
    /// SPIRE's admin flag, as stored; it grants nothing, and new entries cannot set it.
    pub admin: bool,
    /// SPIRE's downstream flag, as stored; it grants nothing, and new entries cannot set it.
    pub downstream: bool,
    /// Passed to workloads to tell their identities apart; may be empty.
    pub hint: String,
    /// Unix seconds after which the entry is pruned; `None` means never.
    pub expires_at: Option<i64>,
    /// Bumped on every change; agents sync by revision. 0 until stored.
    pub revision: i64,
    /// Unix seconds; 0 until stored.
    pub created_at: i64,
}

impl RegistrationEntry {
    /// An entry giving `spiffe_id` to the workloads under `parent_id` with `selectors`; every
    /// other field empty or the server's default, and no ID, revision or creation time yet
    /// (the datastore assigns them).
    pub fn new(
        spiffe_id: impl Into<EntrySpiffeId>,
        parent_id: SpiffeId,
        selectors: Vec<Selector>,
    ) -> Self {
        Self {
            id: String::new(),
            spiffe_id: spiffe_id.into(),
            parent_id,
            selectors,
            x509_svid_ttl: None,
            jwt_svid_ttl: None,
            dns_names: Vec::new(),
            federates_with: Vec::new(),
            admin: false,
            downstream: false,
            hint: String::new(),
            expires_at: None,
            revision: 0,
            created_at: 0,
        }
    }

    /// True if this entry's identity is in the reserved namespace (see
    /// [`EntrySpiffeId::is_reserved`]). Such an entry is refused on create and update and, if
    /// one was stored before that check existed, never served.
    pub fn is_reserved(&self) -> bool {
        self.spiffe_id.is_reserved()
    }

    /// True if `id` is what this entry may be minted for: the fixed ID, or any instance of
    /// the template.
    pub fn allows(&self, id: &SpiffeId) -> bool {
        self.spiffe_id.allows(id)
    }
}

/// The digest of a set of entries that a resumed sync compares (`entries_digest` in
/// `agent.proto`): SHA-256 over the (ID, revision) pairs in ID order, each ID length-prefixed.
/// Both sides hash what they hold, so any missing, extra or outdated entry shows.
pub fn entries_digest<'a>(entries: impl IntoIterator<Item = (&'a str, i64)>) -> [u8; 32] {
    let mut pairs: Vec<(&str, i64)> = entries.into_iter().collect();
    pairs.sort_unstable();
    let mut hash = Sha256::new();
    for (id, revision) in pairs {
        hash.update((id.len() as u64).to_be_bytes());
        hash.update(id.as_bytes());
        hash.update(revision.to_be_bytes());
    }
    hash.finalize().into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_entry_gives_either_a_fixed_id_or_a_template() {
        let fixed = SpiffeId::new("spiffe://example.org/web").unwrap();
        let template: IdTemplate = "spiffe://example.org/ns/{k8s:ns}".parse().unwrap();
        let parent = SpiffeId::new("spiffe://example.org/spire/agent/x").unwrap();
        let selectors = vec![Selector::new("k8s:ns:a").unwrap()];

        let e = RegistrationEntry::new(fixed.clone(), parent.clone(), selectors.clone());
        assert_eq!(e.spiffe_id.fixed(), Some(&fixed));
        assert_eq!(e.spiffe_id.template(), None);
        assert_eq!(e.spiffe_id.to_string(), "spiffe://example.org/web");
        assert!(e.allows(&fixed));
        assert!(!e.allows(&SpiffeId::new("spiffe://example.org/db").unwrap()));
        assert_eq!(
            (e.x509_svid_ttl, e.jwt_svid_ttl),
            (None, None),
            "server defaults"
        );
        assert_eq!((e.id.as_str(), e.revision, e.expires_at), ("", 0, None));

        let t = RegistrationEntry::new(template.clone(), parent, selectors);
        assert_eq!(
            t.spiffe_id.fixed(),
            None,
            "no ID to read as if it were fixed"
        );
        assert_eq!(t.spiffe_id.template(), Some(&template));
        assert_eq!(t.spiffe_id.to_string(), "spiffe://example.org/ns/{k8s:ns}");
        assert_eq!(t.spiffe_id.trust_domain().as_str(), "example.org");
        assert!(t.allows(&SpiffeId::new("spiffe://example.org/ns/a").unwrap()));
        assert!(!t.allows(&SpiffeId::new("spiffe://example.org").unwrap()));
        assert!(!t.is_reserved());
    }
}

#[cfg(test)]
mod digest_tests {
    use super::entries_digest;

    #[test]
    fn digest_ignores_order_and_sees_every_difference() {
        let a = entries_digest([("a", 1), ("b", 2)]);
        assert_eq!(
            a,
            entries_digest([("b", 2), ("a", 1)]),
            "order does not matter"
        );
        assert_ne!(a, entries_digest([("a", 1)]), "a missing entry");
        assert_ne!(
            a,
            entries_digest([("a", 1), ("b", 2), ("c", 3)]),
            "an extra entry"
        );
        assert_ne!(a, entries_digest([("a", 1), ("b", 3)]), "an outdated entry");
    }
}
