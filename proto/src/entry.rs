//! Registration entries: which workloads (by selectors, under which parent) get which identity.

use sha2::{Digest, Sha256};

use crate::id_template::IdTemplate;
use crate::selector::Selector;
use crate::spiffe_id::SpiffeId;
use crate::trust_domain::TrustDomain;

/// A registration entry as the server stores it and agents cache it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RegistrationEntry {
    /// Opaque unique ID (a UUID unless the operator chose one with `-entryID`).
    pub id: String,
    /// The identity for a fixed entry. For a template entry this is only the trust domain's
    /// own ID (`spiffe://<td>`), which no CA signs as a leaf, so code that forgets `template`
    /// fails closed; the identity is `template` rendered over the workload's selectors.
    pub spiffe_id: SpiffeId,
    /// Set for an identity-template entry (`entry create -template`).
    pub template: Option<IdTemplate>,
    /// The agent (or node alias, or another workload for nested entries) allowed to obtain it.
    pub parent_id: SpiffeId,
    /// Canonical (sorted, de-duplicated) and never empty.
    pub selectors: Vec<Selector>,
    /// Seconds; 0 means the server default.
    pub x509_svid_ttl: u32,
    /// Seconds; 0 means the server default.
    pub jwt_svid_ttl: u32,
    pub dns_names: Vec<String>,
    pub federates_with: Vec<TrustDomain>,
    pub admin: bool,
    pub downstream: bool,
    pub hint: String,
    /// Unix seconds after which the entry is pruned; `None` means never.
    pub expires_at: Option<i64>,
    /// Bumped on every change; agents sync by revision.
    pub revision: i64,
    /// Unix seconds.
    pub created_at: i64,
}

impl RegistrationEntry {
    /// The SPIFFE ID as an operator wrote it: the fixed ID, or the template text.
    pub fn spiffe_id_text(&self) -> String {
        match &self.template {
            Some(t) => t.to_string(),
            None => self.spiffe_id.to_string(),
        }
    }

    /// True if this entry's identity is in the reserved namespace (see
    /// [`SpiffeId::is_reserved`]): the fixed ID, or every instance of the template. Such an
    /// entry is refused on create and update and, if one was stored before that check existed,
    /// never served.
    pub fn is_reserved(&self) -> bool {
        match &self.template {
            Some(t) => t.is_reserved(),
            None => self.spiffe_id.is_reserved(),
        }
    }

    /// True if `id` is what this entry may be minted for: the fixed ID, or any instance of
    /// the template.
    pub fn allows(&self, id: &SpiffeId) -> bool {
        match &self.template {
            Some(t) => t.matches(id),
            None => *id == self.spiffe_id,
        }
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
