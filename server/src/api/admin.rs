//! The admin API (`sigil.admin.v1.Admin`) on the server's Unix socket. Only the server's own
//! user (or root) may call it: the socket directory is 0700, and each call's peer credentials
//! are checked again here.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prost::Message as _;
use sigil_proto::fs_checks::{self, FsCheckError};
use sigil_proto::limits::{ADMIN_API_MAX_MESSAGE, MAX_ENTRY_BYTES};
use sigil_proto::sigil::admin::v1 as pb;
use sigil_proto::sigil::admin::v1::admin_server::{Admin, AdminServer};
use sigil_proto::sigil::common::v1 as common;
use sigil_proto::{
    Bundle, IdTemplate, RegistrationEntry, Selector, SpiffeId, TrustDomain, convert,
};
use tokio::net::UnixListener;
use tokio_stream::wrappers::UnixListenerStream;
use tokio_util::sync::CancellationToken;
use tonic::transport::server::UdsConnectInfo;
use tonic::{Request, Response, Status};

use super::{ca_status, datastore_status, invalid_field};
use crate::ca::Ca;
use crate::ca::local_authority::{AuthorityKind, AuthorityState, LocalAuthorityError};
use crate::ca::rotation::AuthorityStatus;
use crate::ca_store::{self, CommitError};
use crate::datastore::{AttestedNode, Datastore, EntryFilter, NodeFilter, SelectorMatch};
use crate::federation::{DeleteMode, FederatedBundles, FederationError};
use crate::metrics::{Metrics, ResultLabel, RpcLabels, result_of};
use crate::ops::Readiness;

/// Largest page a caller may ask for; bigger lists are paged.
const MAX_PAGE_SIZE: u32 = 1000;
const DEFAULT_PAGE_SIZE: u32 = 500;
/// A batch create/update larger than this is refused rather than held in one transaction.
const MAX_BATCH: usize = 50_000;
const DEFAULT_JOIN_TOKEN_TTL: u32 = 600;

pub struct AdminApi {
    datastore: Datastore,
    ca: Arc<Ca>,
    trust_domain: TrustDomain,
    metrics: Arc<Metrics>,
    /// The server's effective UID; callers must be this user or root.
    owner_uid: u32,
    /// Federated bundles; `None` only in tests that do not exercise them.
    federation: Option<Arc<FederatedBundles>>,
    /// Whether the datastore's write probe passes (`Health` fails while it does not); `None`
    /// in tests that do not run the probe.
    readiness: Option<Arc<Readiness>>,
}

impl AdminApi {
    pub fn new(
        datastore: Datastore,
        ca: Arc<Ca>,
        trust_domain: TrustDomain,
        metrics: Arc<Metrics>,
    ) -> Self {
        AdminApi {
            datastore,
            ca,
            trust_domain,
            metrics,
            owner_uid: nix::unistd::geteuid().as_raw(),
            federation: None,
            readiness: None,
        }
    }

    /// `Health` reports the datastore write probe's last result from `readiness`.
    pub fn with_readiness(mut self, readiness: Arc<Readiness>) -> Self {
        self.readiness = Some(readiness);
        self
    }

    /// Serves `bundle set/list/delete` from (and into) `federation`.
    pub fn with_federation(mut self, federation: Arc<FederatedBundles>) -> Self {
        self.federation = Some(federation);
        self
    }

    fn federation(&self) -> Result<&FederatedBundles, Status> {
        self.federation
            .as_deref()
            .ok_or_else(|| Status::unimplemented("federation is not enabled on this server"))
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

    fn authorize<T>(&self, method: &'static str, req: &Request<T>) -> Result<(), Status> {
        let uid = req
            .extensions()
            .get::<UdsConnectInfo>()
            .and_then(|i| i.peer_cred)
            .map(|c| c.uid());
        let allowed = matches!(uid, Some(u) if u == self.owner_uid || u == 0);
        if !allowed {
            tracing::warn!(method, peer_uid = ?uid, "admin API call refused: caller is not the server's user");
            return Err(Status::permission_denied(
                "the admin API is only for the server's own user",
            ));
        }
        Ok(())
    }

    fn count<T>(&self, method: &'static str, r: &Result<T, Status>) {
        let result = match r {
            Ok(_) => "ok",
            Err(s) => code_label(s.code()),
        };
        self.metrics
            .admin_requests
            .get_or_create(&RpcLabels { method, result })
            .inc();
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
        let entry = RegistrationEntry::try_from(e).map_err(invalid_field)?;
        for (field, ttl) in [
            ("x509_svid_ttl", entry.x509_svid_ttl),
            ("jwt_svid_ttl", entry.jwt_svid_ttl),
        ] {
            check_ttl(field, ttl)?;
        }
        if entry.spiffe_id.trust_domain() != &self.trust_domain {
            return Err(Status::invalid_argument(format!(
                "invalid spiffe_id: {} is not in trust domain {}",
                entry.spiffe_id_text(),
                self.trust_domain
            )));
        }
        Ok(entry)
    }

    fn parse_our_id(&self, field: &str, s: &str) -> Result<SpiffeId, Status> {
        let id = SpiffeId::new(s)
            .map_err(|e| Status::invalid_argument(format!("invalid {field}: {e}")))?;
        if id.trust_domain() != &self.trust_domain {
            return Err(Status::invalid_argument(format!(
                "invalid {field}: {id} is not in trust domain {}",
                self.trust_domain
            )));
        }
        Ok(id)
    }

    /// [`Self::parse_our_id`] for an ID a workload is to hold (a mint, a join token's alias
    /// entry): never one in the reserved namespace, as SPIRE's `VerifyTrustDomainWorkloadID`.
    fn parse_workload_id(&self, field: &str, s: &str) -> Result<SpiffeId, Status> {
        let id = self.parse_our_id(field, s)?;
        id.check_not_reserved()
            .map_err(|e| Status::invalid_argument(format!("invalid {field}: {id}: {e}")))?;
        Ok(id)
    }

    fn filter(&self, f: Option<pb::EntryFilter>) -> Result<EntryFilter, Status> {
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
            let mode = match pb::SelectorMatch::try_from(f.selector_match) {
                Ok(pb::SelectorMatch::Exact) => SelectorMatch::Exact,
                Ok(pb::SelectorMatch::Subset) => SelectorMatch::Subset,
                Ok(pb::SelectorMatch::Superset) => SelectorMatch::Superset,
                Ok(pb::SelectorMatch::Any) => SelectorMatch::Any,
                Err(_) => return Err(Status::invalid_argument("invalid selector_match")),
            };
            Some((set, mode))
        };
        Ok(EntryFilter {
            spiffe_id: spiffe_id_or_template(&f.by_spiffe_id)?,
            parent_id: id("by_parent_id", &f.by_parent_id)?,
            selectors,
            hint: (!f.by_hint.is_empty()).then_some(f.by_hint),
        })
    }

    fn ttl(seconds: u32) -> Option<Duration> {
        (seconds != 0).then(|| Duration::from_secs(seconds.into()))
    }
}

/// An SVID TTL from a request: 0 (the server's default) or at least the floor.
fn check_ttl(field: &str, seconds: u32) -> Result<(), Status> {
    crate::config::check_svid_ttl(seconds.into())
        .map_err(|m| Status::invalid_argument(format!("invalid {field}: {m}")))
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

/// A batch must hold at least one item and at most [`MAX_BATCH`].
fn check_batch(len: usize, what: &str) -> Result<(), Status> {
    if len == 0 || len > MAX_BATCH {
        return Err(Status::invalid_argument(format!(
            "a batch holds 1 to {MAX_BATCH} {what}"
        )));
    }
    Ok(())
}

fn code_label(code: tonic::Code) -> &'static str {
    match code {
        tonic::Code::InvalidArgument => "invalid_argument",
        tonic::Code::NotFound => "not_found",
        tonic::Code::AlreadyExists => "already_exists",
        tonic::Code::PermissionDenied => "permission_denied",
        _ => "error",
    }
}

fn now_unix() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

fn node_pb(n: &AttestedNode) -> common::AttestedNode {
    common::AttestedNode {
        spiffe_id: n.spiffe_id.to_string(),
        attestation_type: n.attestation_type.clone(),
        selectors: convert::selectors_to_pb(&n.selectors),
        cert_serial: n.cert_serial.clone(),
        cert_expires_at: n.cert_expires_at,
        banned: n.banned,
        created_at: n.created_at,
        updated_at: n.updated_at,
    }
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
        first_spiffe_id = %first.spiffe_id_text(),
        last_entry_id = %last.id,
        last_spiffe_id = %last.spiffe_id_text(),
        "registration entries {verb}"
    );
    for e in entries {
        tracing::debug!(entry_id = %e.id, spiffe_id = %e.spiffe_id_text(), parent_id = %e.parent_id, revision = e.revision, "entry {verb}");
    }
}

/// Runs one handler with authorization and the request counter around it.
macro_rules! handle {
    ($self:ident, $method:literal, $req:ident, $body:expr) => {{
        let r: Result<_, Status> = async {
            $self.authorize($method, &$req)?;
            let $req = $req.into_inner();
            $body
        }
        .await;
        $self.count($method, &r);
        r.map(Response::new)
    }};
}

#[tonic::async_trait]
impl Admin for AdminApi {
    async fn batch_create_entry(
        &self,
        req: Request<pb::BatchCreateEntryRequest>,
    ) -> Result<Response<pb::BatchCreateEntryResponse>, Status> {
        handle!(self, "BatchCreateEntry", req, {
            check_batch(req.entries.len(), "entries")?;
            let entries = req
                .entries
                .iter()
                .enumerate()
                .map(|(i, e)| {
                    self.parse_entry(e).map_err(|s| {
                        Status::invalid_argument(format!("entry {i}: {}", s.message()))
                    })
                })
                .collect::<Result<Vec<_>, _>>()?;
            let created = self
                .datastore
                .create_entries(entries)
                .await
                .map_err(datastore_status)?;
            let revision = self.committed_revision().await;
            log_batch("created", revision, &created);
            Ok(pb::BatchCreateEntryResponse {
                entries: created
                    .iter()
                    .map(common::RegistrationEntry::from)
                    .collect(),
            })
        })
    }

    async fn batch_update_entry(
        &self,
        req: Request<pb::BatchUpdateEntryRequest>,
    ) -> Result<Response<pb::BatchUpdateEntryResponse>, Status> {
        handle!(self, "BatchUpdateEntry", req, {
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
            let revision = self.committed_revision().await;
            log_batch("updated", revision, &updated);
            Ok(pb::BatchUpdateEntryResponse {
                entries: updated
                    .iter()
                    .map(common::RegistrationEntry::from)
                    .collect(),
            })
        })
    }

    async fn batch_delete_entry(
        &self,
        req: Request<pb::BatchDeleteEntryRequest>,
    ) -> Result<Response<pb::BatchDeleteEntryResponse>, Status> {
        handle!(self, "BatchDeleteEntry", req, {
            check_batch(req.ids.len(), "IDs")?;
            let deleted = self
                .datastore
                .delete_entries(&req.ids)
                .await
                .map_err(datastore_status)?;
            let revision = self.committed_revision().await;
            log_batch("deleted", revision, &deleted);
            Ok(pb::BatchDeleteEntryResponse {
                ids: deleted.into_iter().map(|e| e.id).collect(),
            })
        })
    }

    async fn get_entry(
        &self,
        req: Request<pb::GetEntryRequest>,
    ) -> Result<Response<common::RegistrationEntry>, Status> {
        handle!(self, "GetEntry", req, {
            match self
                .datastore
                .fetch_entry(&req.id)
                .await
                .map_err(datastore_status)?
            {
                Some(e) => Ok(common::RegistrationEntry::from(&e)),
                None => Err(Status::not_found(format!("no entry with ID {:?}", req.id))),
            }
        })
    }

    async fn list_entries(
        &self,
        req: Request<pb::ListEntriesRequest>,
    ) -> Result<Response<pb::ListEntriesResponse>, Status> {
        handle!(self, "ListEntries", req, {
            let filter = self.filter(req.filter)?;
            let size = match req.page_size {
                0 => DEFAULT_PAGE_SIZE,
                n => n.min(MAX_PAGE_SIZE),
            };
            let token = (!req.page_token.is_empty()).then_some(req.page_token.as_str());
            let (entries, next) = self
                .datastore
                .list_entries(&filter, size, token)
                .await
                .map_err(datastore_status)?;
            Ok(pb::ListEntriesResponse {
                entries: entries
                    .iter()
                    .map(common::RegistrationEntry::from)
                    .collect(),
                next_page_token: next.unwrap_or_default(),
            })
        })
    }

    async fn count_entries(
        &self,
        req: Request<pb::CountEntriesRequest>,
    ) -> Result<Response<pb::CountEntriesResponse>, Status> {
        handle!(self, "CountEntries", req, {
            let filter = self.filter(req.filter)?;
            let count = self
                .datastore
                .count_entries(&filter)
                .await
                .map_err(datastore_status)?;
            Ok(pb::CountEntriesResponse { count })
        })
    }

    async fn create_join_token(
        &self,
        req: Request<pb::CreateJoinTokenRequest>,
    ) -> Result<Response<pb::CreateJoinTokenResponse>, Status> {
        handle!(self, "CreateJoinToken", req, {
            let ttl = if req.ttl == 0 {
                DEFAULT_JOIN_TOKEN_TTL
            } else {
                req.ttl
            };
            let alias = (!req.spiffe_id.is_empty())
                .then(|| self.parse_workload_id("spiffe_id", &req.spiffe_id))
                .transpose()?;
            let token = uuid::Uuid::new_v4().to_string();
            let expires_at = now_unix() + i64::from(ttl);
            if let Some(spiffe_id) = alias {
                // SPIRE's `token generate -spiffeID`: an entry parented to the agent ID the token
                // will produce, selecting that agent by its own ID.
                let agent_id =
                    crate::node_attestation::join_token_agent_id(&self.trust_domain, &token)
                        .map_err(|e| Status::internal(e.to_string()))?;
                let selector = Selector::from_parts("spiffe_id", &agent_id.to_string())
                    .map_err(|e| Status::internal(e.to_string()))?;
                let entry = RegistrationEntry {
                    id: String::new(),
                    template: None,
                    spiffe_id,
                    parent_id: agent_id,
                    selectors: vec![selector],
                    x509_svid_ttl: 0,
                    jwt_svid_ttl: 0,
                    dns_names: vec![],
                    federates_with: vec![],
                    admin: false,
                    downstream: false,
                    hint: String::new(),
                    expires_at: None,
                    revision: 0,
                    created_at: 0,
                };
                self.datastore
                    .create_entries(vec![entry])
                    .await
                    .map_err(datastore_status)?;
            }
            self.datastore
                .create_join_token(&token, expires_at)
                .await
                .map_err(datastore_status)?;
            tracing::info!(expires_at, "join token created");
            Ok(pb::CreateJoinTokenResponse { token, expires_at })
        })
    }

    async fn get_bundle(
        &self,
        req: Request<pb::GetBundleRequest>,
    ) -> Result<Response<pb::GetBundleResponse>, Status> {
        handle!(self, "GetBundle", req, {
            let _ = req;
            Ok(pb::GetBundleResponse {
                bundle: Some(common::Bundle::from(self.ca.bundle().as_ref())),
            })
        })
    }

    async fn mint_x509svid(
        &self,
        req: Request<pb::MintX509svidRequest>,
    ) -> Result<Response<pb::MintX509svidResponse>, Status> {
        handle!(self, "MintX509SVID", req, {
            let id = self.parse_workload_id("spiffe_id", &req.spiffe_id)?;
            for d in &req.dns_names {
                convert::validate_dns_name(d).map_err(Status::invalid_argument)?;
            }
            if req.csr.is_empty() {
                return Err(Status::invalid_argument("a CSR is required"));
            }
            check_ttl("ttl", req.ttl)?;
            let started = std::time::Instant::now();
            let signed =
                self.ca
                    .sign_x509_svid_csr(&req.csr, &id, Self::ttl(req.ttl), &req.dns_names);
            self.metrics
                .x509_sign_seconds
                .observe(started.elapsed().as_secs_f64());
            self.metrics
                .x509_svids_signed
                .get_or_create(&ResultLabel {
                    result: result_of(&signed),
                })
                .inc();
            let svid = signed.map_err(ca_status)?;
            tracing::info!(spiffe_id = %id, serial = %svid.serial, "X.509-SVID minted");
            Ok(pb::MintX509svidResponse {
                svid_chain: svid.chain,
                bundle: self.ca.bundle().x509_authorities.clone(),
                expires_at: svid.expires_at,
            })
        })
    }

    async fn mint_jwtsvid(
        &self,
        req: Request<pb::MintJwtsvidRequest>,
    ) -> Result<Response<pb::MintJwtsvidResponse>, Status> {
        handle!(self, "MintJWTSVID", req, {
            let id = self.parse_workload_id("spiffe_id", &req.spiffe_id)?;
            if req.audience.is_empty() || req.audience.iter().any(String::is_empty) {
                return Err(Status::invalid_argument(
                    "at least one non-empty audience is required",
                ));
            }
            check_ttl("ttl", req.ttl)?;
            let svid = self
                .ca
                .sign_jwt_svid(&id, &req.audience, Self::ttl(req.ttl))
                .map_err(ca_status)?;
            tracing::info!(spiffe_id = %id, "JWT-SVID minted");
            Ok(pb::MintJwtsvidResponse {
                token: svid.token,
                expires_at: svid.expires_at,
            })
        })
    }

    async fn list_agents(
        &self,
        req: Request<pb::ListAgentsRequest>,
    ) -> Result<Response<pb::ListAgentsResponse>, Status> {
        handle!(self, "ListAgents", req, {
            let size = match req.page_size {
                0 => DEFAULT_PAGE_SIZE,
                n => n.min(MAX_PAGE_SIZE),
            };
            let token = (!req.page_token.is_empty()).then_some(req.page_token.as_str());
            let (nodes, next) = self
                .datastore
                .list_attested_nodes(&NodeFilter::default(), size, token)
                .await
                .map_err(datastore_status)?;
            Ok(pb::ListAgentsResponse {
                agents: nodes.iter().map(node_pb).collect(),
                next_page_token: next.unwrap_or_default(),
            })
        })
    }

    async fn get_agent(
        &self,
        req: Request<pb::GetAgentRequest>,
    ) -> Result<Response<common::AttestedNode>, Status> {
        handle!(self, "GetAgent", req, {
            let id = self.parse_our_id("spiffe_id", &req.spiffe_id)?;
            match self
                .datastore
                .fetch_attested_node(&id)
                .await
                .map_err(datastore_status)?
            {
                Some(n) => Ok(node_pb(&n)),
                None => Err(Status::not_found(format!("no attested agent {id}"))),
            }
        })
    }

    async fn evict_agent(
        &self,
        req: Request<pb::EvictAgentRequest>,
    ) -> Result<Response<pb::EvictAgentResponse>, Status> {
        handle!(self, "EvictAgent", req, {
            let id = self.parse_our_id("spiffe_id", &req.spiffe_id)?;
            self.datastore
                .delete_attested_node(&id)
                .await
                .map_err(datastore_status)?;
            tracing::info!(agent_id = %id, "agent evicted");
            Ok(pb::EvictAgentResponse {})
        })
    }

    async fn ban_agent(
        &self,
        req: Request<pb::BanAgentRequest>,
    ) -> Result<Response<pb::BanAgentResponse>, Status> {
        handle!(self, "BanAgent", req, {
            let id = self.parse_our_id("spiffe_id", &req.spiffe_id)?;
            self.datastore
                .set_attested_node_banned(&id, true)
                .await
                .map_err(datastore_status)?;
            tracing::info!(agent_id = %id, "agent banned");
            Ok(pb::BanAgentResponse {})
        })
    }

    async fn health(
        &self,
        req: Request<pb::HealthRequest>,
    ) -> Result<Response<pb::HealthResponse>, Status> {
        handle!(self, "Health", req, {
            let _ = req;
            // Healthy means able to serve: the last write probe committed, and a read now.
            if let Some(fault) = self.readiness.as_ref().and_then(|r| r.datastore_fault()) {
                return Err(Status::unavailable(format!(
                    "the datastore cannot take writes: {fault}"
                )));
            }
            self.datastore
                .count_entries(&EntryFilter::default())
                .await
                .map_err(datastore_status)?;
            Ok(pb::HealthResponse {
                serving: true,
                trust_domain: self.trust_domain.to_string(),
            })
        })
    }

    async fn set_federated_bundle(
        &self,
        req: Request<pb::SetFederatedBundleRequest>,
    ) -> Result<Response<pb::SetFederatedBundleResponse>, Status> {
        handle!(self, "SetFederatedBundle", req, {
            let wire = req
                .bundle
                .ok_or_else(|| Status::invalid_argument("bundle is required"))?;
            let bundle = Bundle::try_from(&wire).map_err(invalid_field)?;
            // Rendering parses every certificate and JWT key: garbage is refused here.
            bundle
                .to_spiffe_json()
                .map_err(|e| Status::invalid_argument(format!("invalid bundle: {e}")))?;
            self.federation()?
                .set(bundle)
                .await
                .map_err(federation_status)?;
            Ok(pb::SetFederatedBundleResponse {})
        })
    }

    async fn list_federated_bundles(
        &self,
        req: Request<pb::ListFederatedBundlesRequest>,
    ) -> Result<Response<pb::ListFederatedBundlesResponse>, Status> {
        handle!(self, "ListFederatedBundles", req, {
            let federation = self.federation()?;
            let bundles = if req.trust_domain.is_empty() {
                federation
                    .current()
                    .values()
                    .map(|b| common::Bundle::from(b.as_ref()))
                    .collect()
            } else {
                let td = parse_trust_domain(&req.trust_domain)?;
                let bundle = federation
                    .fetch(&td)
                    .ok_or_else(|| federation_status(FederationError::NotFound(td)))?;
                vec![common::Bundle::from(bundle.as_ref())]
            };
            Ok(pb::ListFederatedBundlesResponse { bundles })
        })
    }

    async fn delete_federated_bundle(
        &self,
        req: Request<pb::DeleteFederatedBundleRequest>,
    ) -> Result<Response<pb::DeleteFederatedBundleResponse>, Status> {
        handle!(self, "DeleteFederatedBundle", req, {
            let td = parse_trust_domain(&req.trust_domain)?;
            let mode = match pb::BundleDeleteMode::try_from(req.mode) {
                Ok(pb::BundleDeleteMode::Restrict) => DeleteMode::Restrict,
                Ok(pb::BundleDeleteMode::Delete) => DeleteMode::Delete,
                Ok(pb::BundleDeleteMode::Dissociate) => DeleteMode::Dissociate,
                Err(_) => return Err(Status::invalid_argument("invalid mode")),
            };
            let affected = self
                .federation()?
                .delete(&td, mode)
                .await
                .map_err(federation_status)?;
            Ok(pb::DeleteFederatedBundleResponse {
                affected_entries: affected.len() as u64,
            })
        })
    }

    async fn count_bundles(
        &self,
        req: Request<pb::CountBundlesRequest>,
    ) -> Result<Response<pb::CountBundlesResponse>, Status> {
        handle!(self, "CountBundles", req, {
            let _ = req;
            let count = self
                .datastore
                .count_bundles()
                .await
                .map_err(datastore_status)?;
            Ok(pb::CountBundlesResponse { count })
        })
    }

    async fn local_authority(
        &self,
        req: Request<pb::LocalAuthorityRequest>,
    ) -> Result<Response<pb::LocalAuthorityResponse>, Status> {
        handle!(self, "LocalAuthority", req, {
            let kind = match pb::AuthorityKind::try_from(req.kind) {
                Ok(pb::AuthorityKind::X509) => AuthorityKind::X509,
                Ok(pb::AuthorityKind::Jwt) => AuthorityKind::Jwt,
                Err(_) => return Err(Status::invalid_argument("invalid authority kind")),
            };
            let id = req.authority_id.as_str();
            let op = match pb::LocalAuthorityOp::try_from(req.op) {
                Ok(pb::LocalAuthorityOp::Show) => {
                    return Ok(pb::LocalAuthorityResponse {
                        authority: None,
                        authorities: self
                            .ca
                            .authorities(kind)
                            .iter()
                            .map(authority_state_pb)
                            .collect(),
                    });
                }
                Ok(op) => op,
                Err(_) => return Err(Status::invalid_argument("invalid operation")),
            };
            // Stored before it takes effect, and before the operator hears it is done: a
            // change the datastore cannot take is refused whole, and a restart cannot undo one.
            let state = ca_store::commit(&self.datastore, &self.ca, |ca| {
                match op {
                    pb::LocalAuthorityOp::Prepare => ca.prepare_authority(kind, SystemTime::now()),
                    pb::LocalAuthorityOp::Activate => ca.activate_authority(kind, id),
                    pb::LocalAuthorityOp::Taint => ca.taint_authority(kind, id),
                    pb::LocalAuthorityOp::Revoke => ca.revoke_authority(kind, id),
                    pb::LocalAuthorityOp::Show => unreachable!("answered above"),
                }
                .map(Some)
            })
            .await
            .map_err(|e| match e {
                CommitError::Refused(e) => local_authority_status(e),
                CommitError::NotStored(e) => {
                    tracing::error!(error = %e, "cannot store the CA journal; the change was not made");
                    not_stored_status(e)
                }
            })?
            .ok_or_else(|| Status::internal("the change planned nothing"))?;
            tracing::info!(%kind, op = req.op, authority_id = %state.authority_id, "local authority changed");
            Ok(pb::LocalAuthorityResponse {
                authority: Some(authority_state_pb(&state)),
                authorities: Vec::new(),
            })
        })
    }
}

/// The one place federation errors become statuses.
fn federation_status(e: FederationError) -> Status {
    match e {
        FederationError::Datastore(d) => datastore_status(d),
        FederationError::NotFound(_) => Status::not_found(e.to_string()),
        FederationError::InUse { .. } => Status::failed_precondition(e.to_string()),
        _ => Status::invalid_argument(e.to_string()),
    }
}

fn parse_trust_domain(s: &str) -> Result<TrustDomain, Status> {
    TrustDomain::new(s)
        .map_err(|e| Status::invalid_argument(format!("invalid trust domain {s:?}: {e}")))
}

fn authority_state_pb(a: &AuthorityState) -> pb::AuthorityState {
    let status = match a.status {
        AuthorityStatus::Active => pb::AuthorityStatus::Active,
        AuthorityStatus::Prepared => pb::AuthorityStatus::Prepared,
        AuthorityStatus::Old => pb::AuthorityStatus::Old,
    };
    pb::AuthorityState {
        authority_id: a.authority_id.clone(),
        expires_at: a.expires_at,
        status: status.into(),
        tainted: a.tainted,
        upstream_authority_subject_key_id: a.upstream_authority_id.clone().unwrap_or_default(),
    }
}

/// A change whose journal the datastore would not take: the operator is told why, and that
/// nothing changed.
fn not_stored_status(e: crate::datastore::DatastoreError) -> Status {
    let status = datastore_status(e);
    let message = match status.code() {
        tonic::Code::ResourceExhausted | tonic::Code::Unavailable => status.message(),
        _ => "the datastore failed",
    };
    Status::new(
        status.code(),
        format!(
            "{} (the change was not made)",
            message.trim_end_matches("; nothing was written")
        ),
    )
}

fn local_authority_status(e: LocalAuthorityError) -> Status {
    match e {
        LocalAuthorityError::Upstream(_) => Status::failed_precondition(e.to_string()),
        LocalAuthorityError::Ca(e) => {
            tracing::error!(error = %e, "local authority operation failed");
            Status::internal(format!("CA failure: {e}"))
        }
        e => Status::invalid_argument(e.to_string()),
    }
}

/// Binds the admin socket where no other user can take it over or read what clients send:
/// - its directory is created 0700 if missing; one that is a symbolic link, is owned by
///   another user, is writable by group or others, or has a parent another user owns is
///   refused ([`fs_checks::check_socket_dir`]; a parent anyone may write, as a Kubernetes
///   `emptyDir`, is a warning); a safe one is tightened to 0700 through a handle opened
///   without following links;
/// - an existing socket file is removed only when nothing answers on it
///   ([`fs_checks::remove_stale_socket`]): a running server's socket is never taken over;
/// - the socket itself is 0600.
///
/// The caller binds its TCP listeners first, so a port clash fails start-up before the socket
/// path is touched at all.
pub fn bind_socket(path: &Path) -> Result<UnixListener, FsCheckError> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};

    const WHAT: &str = "admin socket directory";
    let io_err = |path: &Path| {
        let path = path.to_owned();
        move |source| FsCheckError::Io { path, source }
    };
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    if std::fs::symlink_metadata(dir).is_err() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(io_err(dir))?;
    }
    for problem in fs_checks::check_socket_dir(dir, WHAT)? {
        tracing::warn!(%problem, "a parent of the admin socket directory is open to others (the CLI still refuses a socket served by anyone but root or this user)");
    }
    let flags = nix::fcntl::OFlag::O_DIRECTORY | nix::fcntl::OFlag::O_NOFOLLOW;
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(flags.bits())
        .open(dir)
        .and_then(|d| d.set_permissions(std::fs::Permissions::from_mode(0o700)))
        .map_err(io_err(dir))?;
    fs_checks::remove_stale_socket(path)?;
    let listener = UnixListener::bind(path).map_err(io_err(path))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(io_err(path))?;
    Ok(listener)
}

/// Serves the admin API until `cancel` fires.
pub async fn serve(
    listener: UnixListener,
    api: AdminApi,
    cancel: CancellationToken,
) -> Result<(), tonic::transport::Error> {
    tonic::transport::Server::builder()
        .add_service(
            AdminServer::new(api)
                .max_decoding_message_size(ADMIN_API_MAX_MESSAGE)
                .max_encoding_message_size(ADMIN_API_MAX_MESSAGE),
        )
        .serve_with_incoming_shutdown(UnixListenerStream::new(listener), cancel.cancelled_owned())
        .await
}
