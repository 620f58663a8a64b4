//! `sigil-agent run`: loads or obtains the agent's identity, then runs sync, rotation, the
//! Workload API and the health endpoints until SIGTERM/SIGINT or the first failure, and drains.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use sigil_common::fs_checks::FsCheckError;
use sigil_common::ops::OpsPaths;
use sigil_common::supervisor::{self, Supervisor};
use sigil_common::time::unix_now;
use sigil_proto::{Bundle, TrustDomain};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::cache::{self, Cache};
use crate::config::{AgentConfig, LogFormat, NodeAttestorConfig};
use crate::delegated_identity;
use crate::identity::AgentIdentity;
use crate::node_attestation::{
    self, JoinTokenAttestor, K8sPsatAttestor, NodeAttestationError, NodeAttestor,
};
use crate::ops::{self, Metrics, Readiness};
use crate::rotation::{self, AgentSvidRenewal, Backoff, Minting, Pace};
use crate::server_client::{
    ServerConnection, ServerJwtMinter, TrustBundleSource, check_trust_anchors,
};
use crate::svid_store::{AgentSvid, KeyManagerConfig, SvidStore};
use crate::sync::{self, SyncContext};
use crate::workload_api::{self, WorkloadApiConfig};
use crate::workload_attestation::{K8sAttestor, UnixAttestor, WorkloadAttestor};

/// Refuses to start on a key or state file other users can reach (OpenSSH's StrictModes: each
/// finding names the path, its mode or owner and the fix), or logs each at WARN when
/// `allow_insecure_file_permissions = true`.
fn refuse_insecure_files(found: Vec<FsCheckError>, allow: bool) -> anyhow::Result<()> {
    if found.is_empty() {
        return Ok(());
    }
    if allow {
        for problem in &found {
            warn!(%problem, "allow_insecure_file_permissions = true: starting with a file other users can reach");
        }
        return Ok(());
    }
    let list: Vec<String> = found.iter().map(ToString::to_string).collect();
    bail!(
        "refusing to start: {}\n(to start anyway, at the risk of other users reading the agent's key or replacing its SVID or trust bundle, set allow_insecure_file_permissions = true in the agent block)",
        list.join("\n")
    )
}

/// How long in-flight work gets to finish after a shutdown signal.
const DRAIN_GRACE: Duration = Duration::from_secs(10);

pub async fn run(config: AgentConfig) -> anyhow::Result<()> {
    let log_control = sigil_common::logging::init(
        "sigil_agent",
        config.log_level.as_filter(),
        config.log_format == LogFormat::Json,
    );
    for warning in &config.warnings {
        tracing::warn!("{warning}");
    }
    info!(trust_domain = %config.trust_domain, data_dir = %config.data_dir.display(), "starting sigil-agent");
    let mut tasks = Supervisor::new();
    let cancel = tasks.token().clone();
    // From now on, so that a signal also stops a node attestation still retrying.
    let signal = supervisor::cancel_on_signal(cancel.clone());

    let store = match &config.key_manager {
        KeyManagerConfig::Memory => None,
        KeyManagerConfig::Disk { directory } => Some(
            SvidStore::open(&config.data_dir, directory).with_context(|| {
                format!("cannot prepare data_dir {}", config.data_dir.display())
            })?,
        ),
    };
    // With KeyManager "memory" nothing is kept on disk, so there is nothing to check.
    let insecure = store
        .as_ref()
        .map(SvidStore::insecure_files)
        .unwrap_or_default();
    refuse_insecure_files(insecure, config.allow_insecure_file_permissions)?;
    let bundle = initial_bundle(&config, store.as_ref())?;
    let insecure_bootstrap = bundle.is_none();
    let stored_svid = stored_svid(store.as_ref(), &config.trust_domain);
    // The trust bundle is held by the cache and the agent SVID by the identity, each once: the
    // link reads both. With insecure_bootstrap the cache holds no authority until attestation.
    let cache = Arc::new(Cache::new(
        bundle.unwrap_or_else(|| Bundle::new(config.trust_domain.clone())),
    ));
    let identity = Arc::new(AgentIdentity::new(stored_svid));
    let connection = Arc::new(
        ServerConnection::with_servers(
            config.servers.clone(),
            &config.trust_domain,
            cache.trust_bundle(),
            insecure_bootstrap,
            identity.clone(),
        )
        .context("cannot set up the connection to the server")?,
    );
    let attestor: Option<Arc<dyn NodeAttestor>> = match (&config.node_attestor, &config.join_token)
    {
        (NodeAttestorConfig::JoinToken, Some(token)) => {
            Some(Arc::new(JoinTokenAttestor::new(token.clone())))
        }
        (NodeAttestorConfig::JoinToken, None) => None,
        // The token file is read at each attestation, so re-attestation after an eviction
        // presents the kubelet's current token without operator action.
        (NodeAttestorConfig::K8sPsat(psat), _) => Some(Arc::new(K8sPsatAttestor::new(psat))),
    };

    if let Some(svid) = identity.current()
        && !insecure_bootstrap
    {
        info!(spiffe_id = %svid.spiffe_id, not_after = svid.not_after, "using the stored agent SVID; not re-attesting");
    } else {
        let Some(attestor) = &attestor else {
            bail!(
                "agent SVID expired or missing and no join token configured: generate one with `sigil-server token generate` and pass -joinToken"
            );
        };
        let Some((svid, new_bundle)) =
            attest_with_retry(&connection, attestor.as_ref(), &cancel).await?
        else {
            info!("shutdown requested before attestation completed");
            return Ok(());
        };
        if insecure_bootstrap {
            warn!("insecure_bootstrap: trusting the bundle returned by the server from now on");
        }
        info!(spiffe_id = %svid.spiffe_id, "attested as {}", svid.spiffe_id);
        check_trust_anchors(&new_bundle)?;
        if let Some(store) = &store {
            store
                .save_svid(&svid)
                .context("cannot persist the agent SVID")?;
            store
                .save_bundle(&new_bundle)
                .context("cannot persist the trust bundle")?;
        }
        cache.set_bundle(new_bundle);
        identity.set(svid);
    }

    let metrics = Metrics::new();
    let readiness = Arc::new(Readiness::default());
    let attestors = Arc::new(workload_attestors(&config)?);

    // Bind everything before serving anything, so a socket or port clash fails start-up.
    // SPIRE exposes no socket when both the Workload API and SDS are disabled.
    let serves_socket = !config.disable_workload_api || config.sds.is_some();
    let listener = if serves_socket {
        Some(workload_api::bind(&config.socket_path).with_context(|| {
            format!(
                "cannot bind the Workload API socket {}",
                config.socket_path.display()
            )
        })?)
    } else {
        None
    };
    let admin_listener = match &config.delegated_identity {
        Some(delegated) => Some(
            delegated_identity::bind(&delegated.socket_path).with_context(|| {
                format!(
                    "cannot bind the admin socket {}",
                    delegated.socket_path.display()
                )
            })?,
        ),
        None => None,
    };
    let ops_server = match &config.health {
        Some(h) => {
            let paths = OpsPaths {
                live: h.live_path.clone(),
                ready: h.ready_path.clone(),
            };
            Some(
                ops::bind(
                    h.bind,
                    &paths,
                    readiness.clone(),
                    metrics.clone(),
                    cancel.clone(),
                )
                .await
                .with_context(|| format!("cannot bind {}", h.bind))?,
            )
        }
        None => None,
    };

    // `telemetry { Prometheus { host, port } }`: metrics on their own listener, as SPIRE's.
    let metrics_server = match config.metrics {
        Some(addr) => Some(
            ops::bind_metrics(addr, metrics.clone(), cancel.clone())
                .await
                .with_context(|| format!("cannot bind {addr}"))?,
        ),
        None => None,
    };

    let api_config = WorkloadApiConfig {
        socket_path: config.socket_path.clone(),
        allow_unauthenticated_verifiers: config.allow_unauthenticated_verifiers,
        allowed_foreign_jwt_claims: config.allowed_foreign_jwt_claims.clone(),
        sds: config.sds.clone(),
        workload_api: !config.disable_workload_api,
        ..WorkloadApiConfig::default()
    };
    let minter = Arc::new(ServerJwtMinter::new(connection.clone(), metrics.clone()));
    if let (Some(listener), Some(delegated)) = (admin_listener, config.delegated_identity.clone()) {
        let (rx, a, m, c) = (
            cache.subscribe(),
            attestors.clone(),
            minter.clone(),
            cancel.clone(),
        );
        tasks.spawn("Delegated Identity API", async move {
            delegated_identity::serve_listener(listener, delegated, rx, a, m, log_control, c)
                .await
                .context("Delegated Identity API failed")
        });
    }
    if let Some(listener) = listener {
        let (rx, c) = (cache.subscribe(), cancel.clone());
        tasks.spawn("Workload API", async move {
            workload_api::serve_listener(listener, api_config, rx, attestors, minter, c)
                .await
                .context("Workload API failed")
        });
    }
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
    let ctx = SyncContext {
        connection: connection.clone(),
        cache: cache.clone(),
        identity: identity.clone(),
        store: store.clone(),
        readiness: readiness.clone(),
        metrics: metrics.clone(),
    };
    let (td, c) = (config.trust_domain.clone(), cancel.clone());
    tasks.spawn("entry sync", async move {
        sync::sync_forever(ctx, td, c).await;
        Ok(())
    });
    let minting = Minting {
        connection: connection.clone(),
        cache: cache.clone(),
        identity: identity.clone(),
        pace: Arc::new(Pace::default()),
        metrics: metrics.clone(),
        key_type: config.workload_x509_svid_key_type,
    };
    let (m, c) = (minting.clone(), cancel.clone());
    tasks.spawn("workload SVID rotation", async move {
        rotation::rotate_workload_svids(m, c).await;
        Ok(())
    });
    let c = cancel.clone();
    tasks.spawn("rendered SVID rotation", async move {
        rotation::rotate_rendered_svids(minting, c).await;
        Ok(())
    });
    {
        let (conn, cch, m, r, c) = (
            connection.clone(),
            cache.clone(),
            metrics.clone(),
            readiness.clone(),
            cancel.clone(),
        );
        tasks.spawn("SVID expiry watch", async move {
            let outage = move |now| conn.outage(now);
            cache::watch_expiry(cch, outage, m, r, c).await;
            Ok(())
        });
    }
    let renewal = AgentSvidRenewal {
        connection: connection.clone(),
        identity,
        cache: cache.clone(),
        store,
        attestor,
        metrics: metrics.clone(),
        readiness: readiness.clone(),
        exit_delay: config.lost_identity_exit_delay,
    };
    let c = cancel.clone();
    tasks.spawn("agent SVID renewal", async move {
        rotation::renew_agent_svid(renewal, c)
            .await
            .context("the agent lost its identity")
    });

    info!(socket = %config.socket_path.display(), "sigil-agent running");
    let outcome = tasks.wait().await;
    readiness.set(false);
    signal.abort();
    tasks.drain(DRAIN_GRACE).await;
    info!("sigil-agent stopped");
    outcome
}

/// The bundle to verify the server with: the one persisted from the server, else
/// `trust_bundle_path`; `None` only for `insecure_bootstrap` before first contact.
fn initial_bundle(
    config: &AgentConfig,
    store: Option<&SvidStore>,
) -> anyhow::Result<Option<Bundle>> {
    if let Some(store) = store {
        match store.load_bundle(&config.trust_domain) {
            Ok(Some(bundle)) => return Ok(Some(bundle)),
            Ok(None) => {}
            Err(e) => warn!(error = %e, "ignoring the stored trust bundle"),
        }
    }
    match &config.trust_bundle {
        TrustBundleSource::Path(path) => read_pem_bundle(path, &config.trust_domain).map(Some),
        TrustBundleSource::InsecureBootstrap => Ok(None),
    }
}

/// Reads a PEM file of CA certificates as our trust domain's bundle.
fn read_pem_bundle(path: &Path, trust_domain: &TrustDomain) -> anyhow::Result<Bundle> {
    let text = std::fs::read(path)
        .with_context(|| format!("cannot read trust_bundle_path {}", path.display()))?;
    let certs: Vec<Vec<u8>> = pem::parse_many(&text)
        .with_context(|| format!("trust_bundle_path {} is not PEM", path.display()))?
        .into_iter()
        .filter(|p| p.tag() == "CERTIFICATE")
        .map(|p| p.into_contents())
        .collect();
    if certs.is_empty() {
        bail!("trust_bundle_path {} holds no certificate", path.display());
    }
    let mut bundle = Bundle::new(trust_domain.clone());
    bundle.x509_authorities = certs;
    Ok(bundle)
}

/// The stored agent SVID if it is usable now and belongs to our trust domain.
fn stored_svid(store: Option<&SvidStore>, trust_domain: &TrustDomain) -> Option<AgentSvid> {
    let svid = match store?.load_svid() {
        Ok(svid) => svid?,
        Err(e) => {
            warn!(error = %e, "ignoring the stored agent SVID");
            return None;
        }
    };
    if svid.spiffe_id.trust_domain() != trust_domain {
        warn!(spiffe_id = %svid.spiffe_id, "stored agent SVID is for another trust domain; ignoring it");
        return None;
    }
    if !svid.is_valid_at(unix_now()) {
        info!(spiffe_id = %svid.spiffe_id, "stored agent SVID has expired");
        return None;
    }
    Some(svid)
}

/// Attests, retrying while the server is unreachable (it may be starting with us). A refusal
/// fails at once: a join token does not get better by retrying. `None` if cancelled.
async fn attest_with_retry(
    connection: &ServerConnection,
    attestor: &dyn NodeAttestor,
    cancel: &CancellationToken,
) -> anyhow::Result<Option<(AgentSvid, Bundle)>> {
    let mut backoff = Backoff::server();
    loop {
        let result = tokio::select! {
            () = cancel.cancelled() => return Ok(None),
            r = node_attestation::attest(connection, attestor) => r,
        };
        match result {
            Ok(pair) => return Ok(Some(pair)),
            Err(NodeAttestationError::Rpc(status))
                if matches!(
                    status.code(),
                    tonic::Code::Unavailable | tonic::Code::DeadlineExceeded | tonic::Code::Unknown
                ) =>
            {
                warn!(error = %status.message(), "server unreachable for node attestation; retrying");
            }
            Err(e) if attestor.attestation_type() == "join_token" => {
                return Err(e).context(
                    "node attestation failed (join tokens are single use: generate a new one with `sigil-server token generate` and pass it with -joinToken)",
                );
            }
            Err(e) => return Err(e).context("node attestation failed"),
        }
        tokio::select! {
            () = cancel.cancelled() => return Ok(None),
            () = tokio::time::sleep(backoff.next_delay()) => {}
        }
    }
}

fn workload_attestors(config: &AgentConfig) -> anyhow::Result<Vec<Box<dyn WorkloadAttestor>>> {
    let mut attestors: Vec<Box<dyn WorkloadAttestor>> = Vec::new();
    if let Some(unix) = &config.workload_attestors.unix {
        attestors.push(Box::new(UnixAttestor::new(unix.clone())));
    }
    if let Some(k8s) = &config.workload_attestors.k8s {
        // The node name may come from the environment: read here, at the config edge.
        let kubelet = k8s.kubelet_endpoint(|name| std::env::var(name).ok());
        attestors.push(Box::new(K8sAttestor::new(k8s.clone(), kubelet)));
    }
    if attestors.is_empty() {
        bail!("no supported WorkloadAttestor configured (configure WorkloadAttestor \"unix\")");
    }
    Ok(attestors)
}

#[cfg(test)]
mod tests {
    use crate::config::AgentOverrides;

    use super::*;

    fn config(k8s_block: &str) -> AgentConfig {
        let text = format!(
            r#"agent {{
  data_dir = "/var/lib/sigil-agent"
  server_address = "127.0.0.1"
  trust_domain = "example.org"
  trust_bundle_path = "/etc/sigil/bundle.crt"
}}
plugins {{
  NodeAttestor "join_token" {{}}
  KeyManager "memory" {{}}
  WorkloadAttestor "unix" {{}}
  WorkloadAttestor "k8s" {{
{k8s_block}
  }}
}}
"#
        );
        AgentConfig::parse(&text, "agent.conf", &AgentOverrides::default()).unwrap()
    }

    #[test]
    fn k8s_attestor_runs_alongside_unix() {
        let attestors = workload_attestors(&config("")).unwrap();
        let names: Vec<String> = attestors.iter().map(|a| format!("{a:?}")).collect();
        assert_eq!(names.len(), 2);
        assert!(names[0].starts_with("UnixAttestor"), "{names:?}");
        assert!(names[1].starts_with("K8sAttestor"), "{names:?}");
    }
}
