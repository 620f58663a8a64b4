//! `sigil-server run`: builds every component from the one typed config, runs them until
//! SIGTERM/SIGINT or the first failure, then drains.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::Context;
use sigil_common::listener::Listener;
use sigil_common::ops::{self, OpsPaths};
use sigil_common::supervisor::{self, Supervisor};
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use crate::activity::{self, Activity};
use crate::api::admin::{self, AdminApi};
use crate::api::agent::{self, AgentApi};
use crate::ca::upstream::UpstreamAuthority;
use crate::ca::{Ca, CaConfig, ReplicaId};
use crate::ca_store;
pub(crate) use crate::ca_store::persist;
use crate::config::{LogFormat, ServerConfig, file_checks};
use crate::console::{self, samples::Samples};
use crate::datastore::{DatabaseType, Datastore};
use crate::federation::FederatedBundles;
use crate::federation::peers::Peers;
use crate::k8s_pods::{PodCache, PodCaches, watch_pods};
use crate::key_manager::{DiskKeyManager, KeyManager, KeyManagerConfig, MemoryKeyManager};
use crate::listener::{self, Endpoint};
use crate::metrics::Metrics;
use crate::node_attestation::k8s_psat::{self, K8sPsatAttestor};
use crate::notifier::K8sBundlePublisher;
use crate::oidc_discovery::{self, Discovery};
use crate::ops::{DATASTORE_PROBE_PERIOD, Readiness, probe_datastore};

/// How long in-flight requests get to finish after a shutdown signal.
const DRAIN_GRACE: Duration = Duration::from_secs(10);

/// `upstream` is the `UpstreamAuthority` the CLI loaded from `config.upstream_authority` (its
/// files are read before start-up so a bad one is a config error).
pub async fn run(config: ServerConfig, upstream: Option<UpstreamAuthority>) -> anyhow::Result<()> {
    let log_control = sigil_common::logging::init(
        "sigil_server",
        config.log_level.as_filter(),
        config.log_format == LogFormat::Json,
    );
    for warning in &config.warnings {
        tracing::warn!("{warning}");
    }
    tracing::info!(trust_domain = %config.trust_domain, data_dir = %config.data_dir.display(), "starting sigil-server");
    // First, so the datastore and every listener count against the raised limit.
    let caps = listener::plan(&config.connection_limits, &config.listeners());

    create_private_dir(&config.data_dir)
        .with_context(|| format!("cannot create data_dir {}", config.data_dir.display()))?;
    file_checks::check_config_files(&config)?;
    check_writable(&config.data_dir)
        .with_context(|| format!("data_dir {} is not writable", config.data_dir.display()))?;
    let datastore = match config.datastore.database_type {
        DatabaseType::Sqlite3 => {
            Datastore::open(&config.datastore.connection_string, &config.data_dir).await
        }
        DatabaseType::Postgres => {
            Datastore::open_postgres(&config.datastore.connection_string).await
        }
    }
    .context("cannot open the datastore")?;
    file_checks::check_datastore_file(datastore.path(), config.allow_insecure_file_permissions)?;
    let key_manager: Arc<dyn KeyManager> = match &config.key_manager {
        KeyManagerConfig::Memory => Arc::new(MemoryKeyManager::new()),
        KeyManagerConfig::Disk { keys_path } => Arc::new(
            DiskKeyManager::open(keys_path)
                .with_context(|| format!("cannot load keys from {}", keys_path.display()))?,
        ),
    };
    let replica_id = ReplicaId::load_or_create(&config.data_dir)
        .context("cannot read or create the replica ID")?;
    let journal = ca_store::load_journal(&datastore, &replica_id).await?;
    let (ca, _journal) = Ca::new(
        CaConfig {
            upstream: upstream.map(Arc::new),
            ..config.ca.clone()
        },
        key_manager,
        journal,
        SystemTime::now(),
    )
    .context("cannot start the CA")?;
    let ca = Arc::new(ca.with_replica_id(replica_id.clone()));
    persist(&datastore, &ca).await?;
    tracing::info!(replica_id = %replica_id, "CA journal and trust bundle stored");

    // Only the client is built here (a bad kubeconfig is a start-up error); the API server is
    // first contacted by the running task, which retries until it answers.
    let bundle_publisher = match &config.bundle_publisher {
        Some(c) => Some(
            K8sBundlePublisher::new(c)
                .await
                .context("Notifier \"k8sbundle\": cannot build the Kubernetes client")?,
        ),
        None => None,
    };
    // One Kubernetes client per cluster, built once, before anything binds: the attestor's
    // TokenReviews and the cluster's pod watch use it.
    let psat_clients = match &config.node_attestors.k8s_psat {
        Some(psat) => k8s_psat::clients(psat)
            .await
            .context("NodeAttestor \"k8s_psat\": cannot build the Kubernetes client")?,
        None => BTreeMap::new(),
    };
    let psat_attestor = config
        .node_attestors
        .k8s_psat
        .as_ref()
        .map(|psat| K8sPsatAttestor::new(config.trust_domain.clone(), psat, &psat_clients));
    let pod_watches: Vec<(Arc<PodCache>, kube::Client)> = psat_clients
        .into_iter()
        .map(|(cluster, client)| (Arc::new(PodCache::new(cluster)), client))
        .collect();
    let pod_caches = PodCaches::new(pod_watches.iter().map(|(cache, _)| cache.clone()));

    let metrics = Metrics::new();
    let readiness = Arc::new(Readiness::default());
    let mut tasks = Supervisor::new();
    let cancel = tasks.token().clone();
    let limiter = |e: Endpoint| listener::limiter(e, &caps, &metrics);

    // Bind everything before serving anything, so a port or socket clash fails start-up
    // cleanly: every TCP listener first, the admin socket last, so a server that cannot start
    // never touches the socket path (another server may be serving there).
    let agent_listener = Listener::bind(config.bind_address, limiter(Endpoint::AgentApi))
        .await
        .with_context(|| format!("cannot bind the agent API on {}", config.bind_address))?;
    let ops_server = match &config.health {
        Some(h) => {
            let paths = OpsPaths {
                live: h.live_path.clone(),
                ready: h.ready_path.clone(),
            };
            let router = ops::router(&paths, readiness.clone(), metrics.clone());
            Some(
                ops::bind(h.bind, router, limiter(Endpoint::Health), cancel.clone())
                    .await
                    .with_context(|| format!("cannot bind {}", h.bind))?,
            )
        }
        None => None,
    };

    // `telemetry { Prometheus { host, port } }`: metrics on their own listener as SPIRE does.
    let metrics_server = match config.metrics {
        Some(addr) => {
            let router = ops::metrics_router(metrics.clone());
            Some(
                ops::bind(addr, router, limiter(Endpoint::Metrics), cancel.clone())
                    .await
                    .with_context(|| format!("cannot bind {addr}"))?,
            )
        }
        None => None,
    };

    let oidc_server = match &config.oidc_discovery {
        Some(c) => {
            let discovery = Arc::new(Discovery::new(
                c,
                ca.subscribe(),
                config.ca.jwt_issuer.clone(),
                config.ca.ca_ttl,
            ));
            Some(
                oidc_discovery::bind(
                    c,
                    discovery,
                    limiter(Endpoint::OidcDiscovery),
                    cancel.clone(),
                )
                .await
                .context("cannot start the OIDC discovery endpoint")?,
            )
        }
        None => None,
    };

    let federation = Arc::new(
        FederatedBundles::load(datastore.clone(), config.trust_domain.clone())
            .await
            .context("cannot load the federated bundles")?,
    );
    let peers = Arc::new(Peers::new(
        config.trust_domain.clone(),
        config
            .federation
            .iter()
            .flat_map(|f| f.federates_with.iter().cloned())
            .collect(),
        datastore.clone(),
        federation.clone(),
        cancel.clone(),
    ));
    let bundle_endpoint = match config
        .federation
        .as_ref()
        .and_then(|f| f.bundle_endpoint.as_ref())
    {
        Some(c) => Some(
            crate::federation::endpoint::bind(
                c,
                ca.clone(),
                limiter(Endpoint::BundleEndpoint),
                cancel.clone(),
            )
            .await
            .context("cannot start the bundle endpoint")?,
        ),
        None => None,
    };

    let activity = Arc::new(Activity::default());
    let samples = Arc::new(Samples::default());
    let console_server = match &config.console {
        Some(c) => Some(
            console::bind(
                c,
                console::Sources {
                    trust_domain: config.trust_domain.clone(),
                    datastore: datastore.clone(),
                    ca: ca.clone(),
                    federation: federation.clone(),
                    peer_statuses: peers.statuses(),
                    activity: activity.clone(),
                    samples: samples.clone(),
                },
                limiter(Endpoint::Console),
                cancel.clone(),
            )
            .await
            .context("cannot start the web console")?,
        ),
        None => None,
    };

    let admin_listener = admin::bind_socket(&config.socket_path).with_context(|| {
        format!(
            "cannot bind the admin socket {}",
            config.socket_path.display()
        )
    })?;

    let api = AdminApi::new(
        datastore.clone(),
        ca.clone(),
        config.trust_domain.clone(),
        metrics.clone(),
    )
    .with_federation(federation.clone(), peers.clone())
    .with_readiness(readiness.clone())
    .with_pod_caches(pod_caches.clone())
    .with_log_control(log_control)
    .with_activity(activity.clone())
    .with_audit_log(config.audit_log_enabled);
    let pruner = crate::pruning::Pruner::new(datastore.clone());
    let c = cancel.clone();
    tasks.spawn("admin API", async move {
        admin::serve(admin_listener, api, c)
            .await
            .context("admin API failed")
    });
    tracing::info!(socket = %config.socket_path.display(), "admin API listening");
    let mut agent_api = AgentApi::new(
        datastore.clone(),
        ca.clone(),
        config.trust_domain.clone(),
        metrics.clone(),
    )
    .with_agent_ttl(config.agent_api.agent_ttl)
    .with_rate_limits(config.agent_api.rate_limit)
    .with_activity(activity.clone())
    .with_federated_bundles(federation.subscribe())
    .with_pod_caches(pod_caches)
    .with_audit_log(config.audit_log_enabled);
    if let Some(attestor) = psat_attestor {
        agent_api = agent_api.with_attestor(Arc::new(attestor));
    }
    let c = cancel.clone();
    tasks.spawn("agent API", async move {
        agent::serve(agent_listener, agent_api, c)
            .await
            .context("agent API failed")
    });
    tracing::info!(address = %config.bind_address, "agent API listening");
    if let Some(server) = ops_server {
        tasks.spawn("health endpoint", async move {
            server.await.context("health endpoint failed")
        });
    }
    if let Some(server) = metrics_server {
        tasks.spawn("metrics endpoint", async move {
            server.await.context("metrics endpoint failed")
        });
    }
    if let Some(server) = oidc_server {
        tasks.spawn("OIDC discovery endpoint", async move {
            server.await.context("OIDC discovery endpoint failed")
        });
    }
    tasks.spawn("federation peers", peers.clone().run());
    tasks.spawn(
        "federated bundles",
        federation.clone().follow(cancel.clone()),
    );
    tasks.spawn(
        "entry revision follower",
        activity::follow_revisions(
            activity.clone(),
            datastore.entry_revisions(),
            cancel.clone(),
        ),
    );
    if let Some(server) = console_server {
        tasks.spawn("web console", async move {
            server.await.context("web console failed")
        });
        tasks.spawn(
            "console sampler",
            samples.run(metrics.clone(), activity.clone(), cancel.clone()),
        );
    }
    if let Some(server) = bundle_endpoint {
        tasks.spawn("bundle endpoint", async move {
            server.await.context("bundle endpoint failed")
        });
    }
    for (cache, client) in pod_watches {
        let c = cancel.clone();
        tasks.spawn("k8s pod watch", async move {
            // Made inside the task's span, so lines carry both.
            let span = tracing::info_span!("pods", cluster = %cache.cluster());
            watch_pods(client, cache, c).instrument(span).await
        });
    }
    tasks.spawn("pruner", pruner.run(cancel.clone()));
    tasks.spawn(
        "datastore probe",
        probe_datastore(
            datastore.clone(),
            readiness.clone(),
            DATASTORE_PROBE_PERIOD,
            cancel.clone(),
        ),
    );
    tasks.spawn(
        "CA rotation",
        rotate_forever(
            ca.clone(),
            datastore.clone(),
            metrics.clone(),
            cancel.clone(),
        ),
    );

    // The other replicas' CAs reach our bundle (and so the agents, the Workload API, OIDC and
    // federation) through the datastore's change feed; entry changes wake the agents' sync
    // streams through it too (`Datastore::entry_revisions`).
    tasks.spawn(
        "replica follower",
        ca_store::follow_changes(
            datastore.clone(),
            ca.clone(),
            ca_store::BUNDLE_REFRESH,
            cancel.clone(),
        ),
    );

    if let Some(publisher) = bundle_publisher {
        tasks.spawn(
            "k8sbundle notifier",
            publisher.run(ca.subscribe(), cancel.clone()),
        );
    }

    readiness.set(true);
    tracing::info!("sigil-server ready");
    let signal = supervisor::cancel_on_signal(cancel.clone());
    let outcome = tasks.wait().await;
    readiness.set(false);
    signal.abort();
    tasks.drain(DRAIN_GRACE).await;
    datastore.close().await;
    let _ = std::fs::remove_file(&config.socket_path);
    tracing::info!("sigil-server stopped");
    outcome
}

/// How long a rotation that failed (a CA failure, or a journal the datastore would not take)
/// waits before it is tried again.
const ROTATION_RETRY: Duration = Duration::from_secs(10);

/// Prepares, activates and prunes CA and JWT keys exactly when the rotation rules say, sleeping
/// in between. Each rotation is stored before it takes effect (`ca_store::commit`); a failure
/// changes nothing, is logged and retried after [`ROTATION_RETRY`], and the CA keeps signing
/// with what it has.
async fn rotate_forever(
    ca: Arc<Ca>,
    datastore: Datastore,
    metrics: Arc<Metrics>,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    let mut retry = false;
    loop {
        let now = SystemTime::now();
        let wait = if retry {
            ROTATION_RETRY
        } else {
            ca.next_rotation_check(now)
                .duration_since(now)
                .unwrap_or_default()
                .clamp(Duration::from_millis(100), Duration::from_secs(60))
        };
        tokio::select! {
            () = cancel.cancelled() => return Ok(()),
            () = tokio::time::sleep(wait) => {}
        }
        let rotated =
            ca_store::commit(&datastore, &ca, |ca| ca.plan_rotation(SystemTime::now())).await;
        retry = rotated.is_err();
        match rotated {
            Ok(Some(())) => {
                metrics.ca_rotations.inc();
                tracing::info!(sequence = ca.bundle().sequence, "CA authorities rotated");
            }
            Ok(None) => {}
            Err(e) => {
                tracing::error!(error = %e, "CA rotation failed; nothing changed, will retry")
            }
        }
    }
}

/// Fails clearly on a read-only or inaccessible data dir, where SQLite would only say
/// "unable to open database file".
fn check_writable(dir: &std::path::Path) -> std::io::Result<()> {
    let probe = dir.join(format!(".sigil-write-probe-{}", std::process::id()));
    std::fs::File::create(&probe)?;
    std::fs::remove_file(&probe)
}

fn create_private_dir(dir: &std::path::Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}
