//! Registration entries: batch create / update / delete, get, list and count (SPIRE's
//! `entry/v1`). Every entry a caller writes is parsed and checked here before the datastore
//! sees it; agents hear of a committed change from the datastore's change feed.

use prost::Message as _;
use sigil_proto::limits::MAX_ENTRY_BYTES;
use sigil_proto::sigil::admin::v1 as pb;
use sigil_proto::sigil::common::v1 as common;
use sigil_proto::{IdTemplate, RegistrationEntry, Selector, SpiffeId, TrustDomain, convert};
use tonic::Status;

use super::{check_ttl, page_size};
use crate::api::{audit, datastore_status, invalid_field};
use crate::datastore::{Datastore, EntryFilter};

/// A batch create/update larger than this is refused rather than held in one transaction.
const MAX_BATCH: usize = 50_000;

pub(super) struct Entries {
    datastore: Datastore,
    trust_domain: TrustDomain,
    /// The server watches the pods of at least one `k8s_psat` cluster (`crate::k8s_pods`).
    vouches_for_pods: bool,
}

impl Entries {
    pub(super) fn new(datastore: Datastore, trust_domain: TrustDomain) -> Self {
        Self {
            datastore,
            trust_domain,
            vouches_for_pods: false,
        }
    }

    pub(super) fn set_vouches_for_pods(&mut self, vouches: bool) {
        self.vouches_for_pods = vouches;
    }

    pub(super) async fn batch_create(
        &self,
        req: pb::BatchCreateEntryRequest,
    ) -> Result<pb::BatchCreateEntryResponse, Status> {
        audit_request(&req.entries);
        check_batch(req.entries.len(), "entries")?;
        let entries = req
            .entries
            .iter()
            .enumerate()
            .map(|(i, e)| {
                self.parse_entry(e)
                    .map_err(|s| Status::invalid_argument(format!("entry {i}: {}", s.message())))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let created = self
            .datastore
            .create_entries(entries)
            .await
            .map_err(datastore_status)?;
        audit::record(|t| t.entry_ids = Some(audit::list(created.iter().map(|e| &e.id))));
        log_batch("created", self.committed_revision().await, &created);
        Ok(pb::BatchCreateEntryResponse {
            entries: created
                .iter()
                .map(common::RegistrationEntry::from)
                .collect(),
        })
    }

    pub(super) async fn batch_update(
        &self,
        req: pb::BatchUpdateEntryRequest,
    ) -> Result<pb::BatchUpdateEntryResponse, Status> {
        audit_request(&req.entries);
        audit::record(|t| t.entry_ids = Some(audit::list(req.entries.iter().map(|e| &e.id))));
        check_batch(req.entries.len(), "entries")?;
        let entries = req
            .entries
            .iter()
            .map(|e| {
                if e.id.is_empty() {
                    return Err(Status::invalid_argument("an entry to update needs its id"));
                }
                self.parse_entry(e)
            })
            .collect::<Result<Vec<_>, _>>()?;
        let updated = self
            .datastore
            .update_entries(entries)
            .await
            .map_err(datastore_status)?;
        log_batch("updated", self.committed_revision().await, &updated);
        Ok(pb::BatchUpdateEntryResponse {
            entries: updated
                .iter()
                .map(common::RegistrationEntry::from)
                .collect(),
        })
    }

    pub(super) async fn batch_delete(
        &self,
        req: pb::BatchDeleteEntryRequest,
    ) -> Result<pb::BatchDeleteEntryResponse, Status> {
        audit::record(|t| {
            t.count = Some(req.ids.len() as u64);
            t.entry_ids = Some(audit::list(&req.ids));
        });
        check_batch(req.ids.len(), "IDs")?;
        let deleted = self
            .datastore
            .delete_entries(&req.ids)
            .await
            .map_err(datastore_status)?;
        log_batch("deleted", self.committed_revision().await, &deleted);
        Ok(pb::BatchDeleteEntryResponse {
            ids: deleted.into_iter().map(|e| e.id).collect(),
        })
    }

    pub(super) async fn get(
        &self,
        req: pb::GetEntryRequest,
    ) -> Result<common::RegistrationEntry, Status> {
        match self
            .datastore
            .fetch_entry(&req.id)
            .await
            .map_err(datastore_status)?
        {
            Some(e) => Ok(common::RegistrationEntry::from(&e)),
            None => Err(Status::not_found(format!("no entry with ID {:?}", req.id))),
        }
    }

    pub(super) async fn list(
        &self,
        req: pb::ListEntriesRequest,
    ) -> Result<pb::ListEntriesResponse, Status> {
        let filter = filter(req.filter)?;
        let token = (!req.page_token.is_empty()).then_some(req.page_token.as_str());
        let (entries, next) = self
            .datastore
            .list_entries(&filter, page_size(req.page_size), token)
            .await
            .map_err(datastore_status)?;
        Ok(pb::ListEntriesResponse {
            entries: entries
                .iter()
                .map(common::RegistrationEntry::from)
                .collect(),
            next_page_token: next.unwrap_or_default(),
        })
    }

    pub(super) async fn count(
        &self,
        req: pb::CountEntriesRequest,
    ) -> Result<pb::CountEntriesResponse, Status> {
        let count = self
            .datastore
            .count_entries(&filter(req.filter)?)
            .await
            .map_err(datastore_status)?;
        Ok(pb::CountEntriesResponse { count })
    }

    /// The entry revision after a committed change, for its audit line. (Agents hear of the
    /// change from the datastore's change feed, not from here.)
    async fn committed_revision(&self) -> Option<i64> {
        self.datastore
            .latest_entry_revision()
            .await
            .inspect_err(|e| tracing::warn!(error = %e, "cannot read the entry revision"))
            .ok()
    }

    /// Validates a wire entry and checks it belongs to our trust domain.
    fn parse_entry(&self, e: &common::RegistrationEntry) -> Result<RegistrationEntry, Status> {
        // Bounded so that any entry fits in one agent sync message.
        let size = e.encoded_len();
        if size > MAX_ENTRY_BYTES {
            return Err(Status::invalid_argument(format!(
                "entry is {size} bytes encoded, more than the {MAX_ENTRY_BYTES} allowed"
            )));
        }
        convert::check_supported(e).map_err(invalid_field)?;
        let entry = RegistrationEntry::try_from(e).map_err(invalid_field)?;
        for (field, ttl) in [
            ("x509_svid_ttl", entry.x509_svid_ttl),
            ("jwt_svid_ttl", entry.jwt_svid_ttl),
        ] {
            check_ttl(field, ttl.map_or(0, |d| d.as_secs()))?;
        }
        if entry.spiffe_id.trust_domain() != &self.trust_domain {
            return Err(Status::invalid_argument(format!(
                "invalid spiffe_id: {} is not in trust domain {}",
                entry.spiffe_id, self.trust_domain
            )));
        }
        self.check_template_parent(&entry)?;
        Ok(entry)
    }

    /// A template over `k8s:` facts that hangs off a node alias (or any parent but one agent)
    /// gives instances only for pods the Kubernetes API vouches for, through the pod cache of a
    /// `k8s_psat` cluster; without one, no agent could ever be signed an instance.
    fn check_template_parent(&self, entry: &RegistrationEntry) -> Result<(), Status> {
        let Some(template) = entry.spiffe_id.template() else {
            return Ok(());
        };
        if entry.parent_id.is_agent_id() || self.vouches_for_pods {
            return Ok(());
        }
        match template.placeholders().find(|p| p.starts_with("k8s:")) {
            Some(placeholder) => Err(Status::invalid_argument(format!(
                "template placeholder {{{placeholder}}} under parent {}: template instances via a \
                 node alias are only signed for pods the Kubernetes API vouches for, and this \
                 server has no k8s_psat cluster configured; parent the template to one agent ID \
                 instead",
                entry.parent_id
            ))),
            None => Ok(()),
        }
    }
}

fn filter(f: Option<pb::EntryFilter>) -> Result<EntryFilter, Status> {
    let f = f.unwrap_or_default();
    let id = |field, s: &str| {
        (!s.is_empty())
            .then(|| {
                SpiffeId::new(s)
                    .map_err(|e| Status::invalid_argument(format!("invalid {field}: {e}")))
            })
            .transpose()
    };
    let selectors = if f.by_selectors.is_empty() {
        None
    } else {
        let set: Vec<Selector> =
            convert::selectors_from_pb(&f.by_selectors).map_err(invalid_field)?;
        Some((set, super::selector_match(f.selector_match)?))
    };
    let federates_with = if f.by_federates_with.is_empty() {
        None
    } else {
        let set = f
            .by_federates_with
            .iter()
            .map(|td| {
                TrustDomain::new(td).map_err(|e| {
                    Status::invalid_argument(format!("invalid by_federates_with {td:?}: {e}"))
                })
            })
            .collect::<Result<_, _>>()?;
        Some((set, super::selector_match(f.federates_with_match)?))
    };
    Ok(EntryFilter {
        spiffe_id: spiffe_id_or_template(&f.by_spiffe_id)?,
        spiffe_id_prefix: None,
        parent_id: id("by_parent_id", &f.by_parent_id)?,
        selectors,
        hint: (!f.by_hint.is_empty()).then_some(f.by_hint),
        federates_with,
        downstream: f.by_downstream,
    })
}

/// An entry filter's SPIFFE ID: a fixed ID or a template's text, in canonical form.
fn spiffe_id_or_template(s: &str) -> Result<Option<String>, Status> {
    if s.is_empty() {
        return Ok(None);
    }
    match SpiffeId::new(s) {
        Ok(id) => Ok(Some(id.to_string())),
        Err(e) => match IdTemplate::new(s) {
            Ok(t) => Ok(Some(t.to_string())),
            Err(_) => Err(Status::invalid_argument(format!(
                "invalid by_spiffe_id: {e}"
            ))),
        },
    }
}

/// The audit target of a create or update batch: how many entries and their SPIFFE IDs, as
/// asked (never their parents: an entry may hang off the agent ID of an unused join token).
fn audit_request(entries: &[common::RegistrationEntry]) {
    audit::record(|t| {
        t.count = Some(entries.len() as u64);
        t.spiffe_ids = Some(audit::list(entries.iter().map(|e| &e.spiffe_id)));
    });
}

/// A batch must hold at least one item and at most [`MAX_BATCH`].
fn check_batch(len: usize, what: &str) -> Result<(), Status> {
    if len == 0 || len > MAX_BATCH {
        return Err(Status::invalid_argument(format!(
            "a batch holds 1 to {MAX_BATCH} {what}"
        )));
    }
    Ok(())
}

/// The audit trail of a committed entry batch: one INFO line per batch (a bulk load of a
/// million entries must not write a million INFO lines) saying how many, which revisions and
/// the entry revision once committed (the change feed position agents sync to) and the first
/// and last entry, then one DEBUG line per entry with its IDs.
fn log_batch(verb: &'static str, revision: Option<i64>, entries: &[RegistrationEntry]) {
    let (Some(first), Some(last)) = (entries.first(), entries.last()) else {
        return;
    };
    tracing::info!(
        count = entries.len(),
        revision,
        first_entry_id = %first.id,
        first_spiffe_id = %first.spiffe_id,
        last_entry_id = %last.id,
        last_spiffe_id = %last.spiffe_id,
        "registration entries {verb}"
    );
    for e in entries {
        tracing::debug!(entry_id = %e.id, spiffe_id = %e.spiffe_id, parent_id = %e.parent_id, revision = e.revision, "entry {verb}");
    }
}
