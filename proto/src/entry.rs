//! Registration entries: which workloads (by selectors, under which parent) get which identity.

use crate::selector::Selector;
use crate::spiffe_id::SpiffeId;
use crate::trust_domain::TrustDomain;

/// A registration entry as the server stores it and agents cache it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RegistrationEntry {
    /// Opaque unique ID (a UUID unless the operator chose one with `-entryID`).
    pub id: String,
    pub spiffe_id: SpiffeId,
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
