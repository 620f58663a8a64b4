//! The admin API (`sigil.admin.v1.Admin`) on the server's Unix socket, for the CLI: one gRPC
//! service whose RPCs are answered by resource, as SPIRE splits its server APIs:
//!
//! - `entries`: registration entries;
//! - `agents`: attested agents; `join_tokens`: tokens for new ones;
//! - `bundles`: the trust domain's bundle and federated bundles;
//! - `federation`: federation relationships kept in the datastore;
//! - `local_authorities`: the CA's authorities;
//! - `mint`: SVIDs minted for the operator;
//! - `health`: whether the server can serve;
//! - `logger`: the log level, changed at run time.
//!
//! Who may call (`socket`: the server's own user) and the per-RPC metric are one layer in
//! front of them all (`crate::api::middleware`).

mod agents;
mod bundles;
mod entries;
mod federation;
mod health;
mod join_tokens;
mod local_authorities;
mod logger;
mod mint;
mod socket;

use std::sync::Arc;
use std::time::Duration;

use sigil_common::allocator::ReleaseWhenQuiet;
use sigil_common::logging::LogControl;
use sigil_proto::limits::ADMIN_API_MAX_MESSAGE;
use sigil_proto::sigil::admin::v1 as pb;
use sigil_proto::sigil::admin::v1::admin_server::{Admin, AdminServer};
use sigil_proto::sigil::common::v1 as common;
use sigil_proto::spire::api::types as spire_types;
use sigil_proto::{SpiffeId, TrustDomain};
use tokio::net::UnixListener;
use tokio_stream::wrappers::UnixListenerStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};
use tower::Layer as _;

use super::middleware::RpcLayer;
use crate::ca::Ca;
use crate::datastore::{Datastore, SelectorMatch};
use crate::federation::FederatedBundles;
use crate::federation::peers::Peers;
use crate::k8s_pods::PodCaches;
use crate::metrics::Metrics;
use crate::ops::Readiness;

pub use socket::bind_socket;

/// Free memory is given back to the system this long after the last admin call.
const RELEASE_MEMORY_AFTER: Duration = Duration::from_secs(1);

/// Largest page a caller may ask for; bigger lists are paged.
const MAX_PAGE_SIZE: u32 = 1000;
const DEFAULT_PAGE_SIZE: u32 = 500;

pub struct AdminApi {
    entries: entries::Entries,
    agents: agents::Agents,
    join_tokens: join_tokens::JoinTokens,
    bundles: bundles::Bundles,
    federation: federation::Federation,
    local_authorities: local_authorities::LocalAuthorities,
    mint: mint::Mint,
    health: health::Health,
    logger: logger::Logger,
    metrics: Arc<Metrics>,
    /// `audit_log_enabled`: see `crate::api::audit`.
    audit_log: bool,
    /// Set by [`serve`]: a batch of 10k entries leaves tens of MB of freed request and
    /// response memory resident until trimmed.
    release_memory: Option<ReleaseWhenQuiet>,
}

impl AdminApi {
    pub fn new(
        datastore: Datastore,
        ca: Arc<Ca>,
        trust_domain: TrustDomain,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            entries: entries::Entries::new(datastore.clone(), trust_domain.clone()),
            agents: agents::Agents::new(datastore.clone(), trust_domain.clone()),
            join_tokens: join_tokens::JoinTokens::new(datastore.clone(), trust_domain.clone()),
            bundles: bundles::Bundles::new(ca.clone(), datastore.clone()),
            federation: federation::Federation::new(datastore.clone()),
            local_authorities: local_authorities::LocalAuthorities::new(
                datastore.clone(),
                ca.clone(),
            ),
            mint: mint::Mint::new(ca, trust_domain.clone(), metrics.clone()),
            health: health::Health::new(datastore, trust_domain),
            logger: logger::Logger::default(),
            metrics,
            audit_log: false,
            release_memory: None,
        }
    }

    /// Writes an audit line for every call that changes state or signs
    /// (`audit_log_enabled`).
    pub fn with_audit_log(mut self, on: bool) -> Self {
        self.audit_log = on;
        self
    }

    /// `Health` reports the datastore write probe's last result from `readiness`.
    pub fn with_readiness(mut self, readiness: Arc<Readiness>) -> Self {
        self.health.set_readiness(readiness);
        self
    }

    /// The server vouches for pods of these `k8s_psat` clusters (see [`crate::k8s_pods`]):
    /// template entries over `k8s:` facts may then hang off node aliases.
    pub fn with_pod_caches(mut self, caches: PodCaches) -> Self {
        self.entries.set_vouches_for_pods(!caches.is_empty());
        self
    }

    /// Evictions are recorded in `activity` (the web console lists them).
    pub fn with_activity(mut self, activity: Arc<crate::activity::Activity>) -> Self {
        self.agents.set_activity(activity);
        self
    }

    /// `GetLogger`, `SetLogLevel` and `ResetLogLevel` change the level through `control`.
    pub fn with_log_control(mut self, control: LogControl) -> Self {
        self.logger.set_control(control);
        self
    }

    /// Serves `bundle set/list/delete` from (and into) `federation`, and the `federation`
    /// commands through `peers`.
    pub fn with_federation(mut self, federation: Arc<FederatedBundles>, peers: Arc<Peers>) -> Self {
        self.bundles.set_federation(federation.clone());
        self.federation.set(federation, peers);
        self
    }
}

/// Implements [`Admin`] from a table of its RPCs, each answered by the resource that owns it,
/// and lists their gRPC names in `METHODS` (the middleware's metric labels).
macro_rules! rpcs {
    ($($name:literal $rpc:ident($req:ty) -> $resp:ty => $resource:ident.$call:ident;)*) => {
        /// Every RPC of the service, by its gRPC name.
        const METHODS: &[&str] = &[$($name),*];

        #[tonic::async_trait]
        impl Admin for AdminApi {
            $(
                async fn $rpc(&self, req: Request<$req>) -> Result<Response<$resp>, Status> {
                    let answer = self.$resource.$call(req.into_inner()).await.map(Response::new);
                    if let Some(release) = &self.release_memory {
                        release.nudge();
                    }
                    answer
                }
            )*
        }
    };
}

rpcs! {
    "BatchCreateEntry" batch_create_entry(pb::BatchCreateEntryRequest) -> pb::BatchCreateEntryResponse => entries.batch_create;
    "BatchUpdateEntry" batch_update_entry(pb::BatchUpdateEntryRequest) -> pb::BatchUpdateEntryResponse => entries.batch_update;
    "BatchDeleteEntry" batch_delete_entry(pb::BatchDeleteEntryRequest) -> pb::BatchDeleteEntryResponse => entries.batch_delete;
    "GetEntry" get_entry(pb::GetEntryRequest) -> common::RegistrationEntry => entries.get;
    "ListEntries" list_entries(pb::ListEntriesRequest) -> pb::ListEntriesResponse => entries.list;
    "CountEntries" count_entries(pb::CountEntriesRequest) -> pb::CountEntriesResponse => entries.count;
    "CreateJoinToken" create_join_token(pb::CreateJoinTokenRequest) -> pb::CreateJoinTokenResponse => join_tokens.create;
    "GetBundle" get_bundle(pb::GetBundleRequest) -> pb::GetBundleResponse => bundles.get;
    "MintX509SVID" mint_x509svid(pb::MintX509svidRequest) -> pb::MintX509svidResponse => mint.x509_svid;
    "MintJWTSVID" mint_jwtsvid(pb::MintJwtsvidRequest) -> pb::MintJwtsvidResponse => mint.jwt_svid;
    "ListAgents" list_agents(pb::ListAgentsRequest) -> pb::ListAgentsResponse => agents.list;
    "GetAgent" get_agent(pb::GetAgentRequest) -> common::AttestedNode => agents.get;
    "EvictAgent" evict_agent(pb::EvictAgentRequest) -> pb::EvictAgentResponse => agents.evict;
    "BanAgent" ban_agent(pb::BanAgentRequest) -> pb::BanAgentResponse => agents.ban;
    "Health" health(pb::HealthRequest) -> pb::HealthResponse => health.check;
    "SetFederatedBundle" set_federated_bundle(pb::SetFederatedBundleRequest) -> pb::SetFederatedBundleResponse => bundles.set_federated;
    "ListFederatedBundles" list_federated_bundles(pb::ListFederatedBundlesRequest) -> pb::ListFederatedBundlesResponse => bundles.list_federated;
    "DeleteFederatedBundle" delete_federated_bundle(pb::DeleteFederatedBundleRequest) -> pb::DeleteFederatedBundleResponse => bundles.delete_federated;
    "CountBundles" count_bundles(pb::CountBundlesRequest) -> pb::CountBundlesResponse => bundles.count;
    "LocalAuthority" local_authority(pb::LocalAuthorityRequest) -> pb::LocalAuthorityResponse => local_authorities.call;
    "CountAgents" count_agents(pb::CountAgentsRequest) -> pb::CountAgentsResponse => agents.count;
    "GetLogger" get_logger(pb::GetLoggerRequest) -> spire_types::Logger => logger.get;
    "SetLogLevel" set_log_level(pb::SetLogLevelRequest) -> spire_types::Logger => logger.set;
    "ResetLogLevel" reset_log_level(pb::ResetLogLevelRequest) -> spire_types::Logger => logger.reset;
    "CreateFederationRelationship" create_federation_relationship(pb::CreateFederationRelationshipRequest) -> pb::FederationRelationship => federation.create;
    "UpdateFederationRelationship" update_federation_relationship(pb::UpdateFederationRelationshipRequest) -> pb::FederationRelationship => federation.update;
    "DeleteFederationRelationship" delete_federation_relationship(pb::DeleteFederationRelationshipRequest) -> pb::DeleteFederationRelationshipResponse => federation.delete;
    "ListFederationRelationships" list_federation_relationships(pb::ListFederationRelationshipsRequest) -> pb::ListFederationRelationshipsResponse => federation.list;
    "GetFederationRelationship" get_federation_relationship(pb::GetFederationRelationshipRequest) -> pb::GetFederationRelationshipResponse => federation.get;
    "RefreshFederatedBundle" refresh_federated_bundle(pb::RefreshFederatedBundleRequest) -> pb::RefreshFederatedBundleResponse => federation.refresh;
}

/// The RPCs that change nothing and sign nothing: no audit line (see `crate::api::audit`).
/// `LocalAuthority` is audited unless its operation is SHOW (its handler says so).
const READ_ONLY: &[&str] = &[
    "GetEntry",
    "ListEntries",
    "CountEntries",
    "GetBundle",
    "ListAgents",
    "GetAgent",
    "Health",
    "ListFederatedBundles",
    "CountBundles",
    "CountAgents",
    "GetLogger",
    "ListFederationRelationships",
    "GetFederationRelationship",
];

/// Serves the admin API until `cancel` fires.
pub async fn serve(
    listener: UnixListener,
    mut api: AdminApi,
    cancel: CancellationToken,
) -> Result<(), tonic::transport::Error> {
    // The quiet period outlasts sending the answer: its memory is freed by then too.
    api.release_memory = Some(ReleaseWhenQuiet::spawn(RELEASE_MEMORY_AFTER));
    let layer = RpcLayer::new(
        socket::OwnerOnly::server_user(),
        api.metrics.admin_requests.clone(),
    )
    .with_audit_log(api.audit_log);
    let service = AdminServer::new(api)
        .max_decoding_message_size(ADMIN_API_MAX_MESSAGE)
        .max_encoding_message_size(ADMIN_API_MAX_MESSAGE);
    tonic::transport::Server::builder()
        .add_service(layer.layer(service))
        .serve_with_incoming_shutdown(UnixListenerStream::new(listener), cancel.cancelled_owned())
        .await
}

/// A page size from a request: 0 asks for the default, and no page is larger than
/// [`MAX_PAGE_SIZE`].
fn page_size(asked: u32) -> u32 {
    match asked {
        0 => DEFAULT_PAGE_SIZE,
        n => n.min(MAX_PAGE_SIZE),
    }
}

/// A match mode from a request (selectors or trust domains).
fn selector_match(mode: i32) -> Result<SelectorMatch, Status> {
    Ok(match pb::SelectorMatch::try_from(mode) {
        Ok(pb::SelectorMatch::Exact) => SelectorMatch::Exact,
        Ok(pb::SelectorMatch::Subset) => SelectorMatch::Subset,
        Ok(pb::SelectorMatch::Superset) => SelectorMatch::Superset,
        Ok(pb::SelectorMatch::Any) => SelectorMatch::Any,
        Err(_) => return Err(Status::invalid_argument("invalid match mode")),
    })
}

/// A SPIFFE ID from a request, which must be in our trust domain.
fn parse_our_id(trust_domain: &TrustDomain, field: &str, s: &str) -> Result<SpiffeId, Status> {
    let id =
        SpiffeId::new(s).map_err(|e| Status::invalid_argument(format!("invalid {field}: {e}")))?;
    if id.trust_domain() != trust_domain {
        return Err(Status::invalid_argument(format!(
            "invalid {field}: {id} is not in trust domain {trust_domain}"
        )));
    }
    Ok(id)
}

/// [`parse_our_id`] for an ID a workload is to hold (a mint, a join token's alias entry):
/// never one in the reserved namespace, as SPIRE's `VerifyTrustDomainWorkloadID`.
fn parse_workload_id(trust_domain: &TrustDomain, field: &str, s: &str) -> Result<SpiffeId, Status> {
    let id = parse_our_id(trust_domain, field, s)?;
    id.check_not_reserved()
        .map_err(|e| Status::invalid_argument(format!("invalid {field}: {id}: {e}")))?;
    Ok(id)
}

/// An SVID TTL from a request, in seconds: 0 (the server's default) or at least the floor.
fn check_ttl(field: &str, seconds: u64) -> Result<(), Status> {
    crate::ca::config::check_svid_ttl(seconds)
        .map_err(|m| Status::invalid_argument(format!("invalid {field}: {m}")))
}

/// A TTL from a request: `None` (0) means the server's default.
fn ttl(seconds: u32) -> Option<Duration> {
    (seconds != 0).then(|| Duration::from_secs(seconds.into()))
}

/// An admin API served on a socket in a temp dir, over a fresh SQLite datastore, for the CLI's
/// tests.
#[cfg(test)]
pub(crate) mod testing {
    use std::path::PathBuf;
    use std::time::SystemTime;

    use super::*;
    use crate::ca::CaConfig;
    use crate::key_manager::MemoryKeyManager;

    pub(crate) struct TestAdmin {
        pub socket: PathBuf,
        pub datastore: Datastore,
        pub metrics: Arc<Metrics>,
        cancel: CancellationToken,
        served: tokio::task::JoinHandle<Result<(), tonic::transport::Error>>,
        _dir: tempfile::TempDir,
    }

    impl TestAdmin {
        pub(crate) async fn start() -> Self {
            let dir = tempfile::tempdir().unwrap();
            let datastore = Datastore::open("datastore.sqlite3", dir.path())
                .await
                .unwrap();
            let td = TrustDomain::new("example.org").unwrap();
            let (ca, _) = Ca::new(
                CaConfig::new(td.clone()),
                Arc::new(MemoryKeyManager::new()),
                None,
                SystemTime::now(),
            )
            .unwrap();
            let socket = dir.path().join("admin").join("api.sock");
            let listener = bind_socket(&socket).unwrap();
            let cancel = CancellationToken::new();
            let metrics = Metrics::new();
            let api = AdminApi::new(datastore.clone(), Arc::new(ca), td, metrics.clone());
            let served = tokio::spawn(serve(listener, api, cancel.clone()));
            Self {
                socket,
                datastore,
                metrics,
                cancel,
                served,
                _dir: dir,
            }
        }

        pub(crate) async fn stop(self) {
            self.cancel.cancel();
            self.served.await.unwrap().unwrap();
        }
    }
}

#[cfg(test)]
mod tests {
    use tonic::codegen::http::Extensions;

    use super::*;
    use crate::api::middleware::Authorize;
    use crate::metrics::RpcLabels;

    /// Through a real socket and client: the owner check lets the server's own user through
    /// and the middleware counts each call by method and outcome; a caller whose credentials
    /// cannot be read is refused.
    #[tokio::test]
    async fn calls_pass_the_owner_check_and_are_counted() {
        let admin = testing::TestAdmin::start().await;
        let metrics = admin.metrics.clone();
        let mut client = crate::cli::client::connect(&admin.socket).await.unwrap();
        let health = client.health(pb::HealthRequest {}).await.unwrap();
        assert_eq!(health.into_inner().trust_domain, "example.org");
        let missing = client
            .get_entry(pb::GetEntryRequest { id: "none".into() })
            .await
            .unwrap_err();
        assert_eq!(missing.code(), tonic::Code::NotFound);
        let count = |method, result| {
            metrics
                .admin_requests
                .get_or_create(&RpcLabels { method, result })
                .get()
        };
        assert_eq!(count("Health", "ok"), 1);
        assert_eq!(count("GetEntry", "not_found"), 1);

        let refused = socket::OwnerOnly::server_user()
            .authorize("Health", &mut Extensions::new())
            .await
            .unwrap_err();
        assert_eq!(refused.code(), tonic::Code::PermissionDenied);
        admin.stop().await;
    }

    /// The metric's method labels are the wire contract's RPC names, every one of them.
    #[test]
    fn methods_are_the_rpcs_of_the_proto() {
        let proto = include_str!("../../../../proto/proto/sigil/admin/v1/admin.proto");
        assert_eq!(METHODS, super::super::middleware::proto_rpcs(proto));
    }

    /// A misspelt name would leave its RPC audited (the safe side) and the list wrong.
    #[test]
    fn read_only_rpcs_are_rpcs() {
        for m in READ_ONLY {
            assert!(METHODS.contains(m), "{m} is not an RPC of the admin API");
        }
    }
}
