//! The measured processes: the test kit's [`Server`] and [`Agent`] (`sigil-testkit`), configured
//! for the benchmark (log level INFO, so per-request debug logging is not part of what we
//! measure; the signing rate limit off) and started with their start-up timed: from exec until
//! the admin API answers `Health` (server) or `/ready` answers 200 (agent), polled every 5 ms.
//! The kit kills both on drop.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use sigil_proto::sigil::admin::v1 as admin;
use sigil_proto::sigil::admin::v1::admin_client::AdminClient;
use sigil_proto::{Bundle, TrustDomain};
use sigil_testkit::net::counter_sum;
use sigil_testkit::{Agent, AgentOptions, Server, ServerOptions, http_get};
use tonic::transport::Channel;

pub(crate) const TRUST_DOMAIN: &str = "bench.example";
const START_TIMEOUT: Duration = Duration::from_secs(120);
const POLL: Duration = Duration::from_millis(5);

/// Writes the server's config (SQLite datastore, disk key manager, join_token attestor) and
/// starts it; returns once the admin API answers.
pub(crate) async fn start_server() -> anyhow::Result<Server> {
    start_server_with_plugins(String::new()).await
}

/// [`start_server`] with `plugins` (HCL) added to its `plugins { }` block, e.g. a `k8s_psat`
/// node attestor.
pub(crate) async fn start_server_with_plugins(plugins: String) -> anyhow::Result<Server> {
    Ok(start_server_timed_with(plugins, String::new()).await?.0)
}

/// [`start_server`] with `server` (HCL) added to its `server { }` block, e.g. a `console`.
pub(crate) async fn start_server_with_server_block(server: String) -> anyhow::Result<Server> {
    Ok(start_server_timed_with(String::new(), server).await?.0)
}

/// [`start_server`], and how long it took until the admin API answered.
pub(crate) async fn start_server_timed() -> anyhow::Result<(Server, Duration)> {
    start_server_timed_with(String::new(), String::new()).await
}

async fn start_server_timed_with(
    plugins: String,
    server: String,
) -> anyhow::Result<(Server, Duration)> {
    let mut server = Server::configure(ServerOptions {
        trust_domain: TRUST_DOMAIN.into(),
        log_level: "INFO".into(),
        health: false,
        // The mint benchmarks drive ~50k signings/s from one agent: far beyond SPIRE's 500/s.
        extra_server: format!("ratelimit {{\n    signing = false\n  }}\n{server}"),
        extra_plugins: plugins,
        ..ServerOptions::default()
    });
    let took = spawn_server(&mut server).await?;
    Ok((server, took))
}

/// Starts the (stopped) server; returns how long it took until the admin API answered.
pub(crate) async fn spawn_server(server: &mut Server) -> anyhow::Result<Duration> {
    let start = Instant::now();
    server.launch();
    loop {
        if let Some(status) = server.exited() {
            anyhow::bail!("sigil-server exited with {status}; log:\n{}", server.log());
        }
        if let Ok(mut admin) = admin_client(server).await
            && admin.health(admin::HealthRequest {}).await.is_ok()
        {
            return Ok(start.elapsed());
        }
        anyhow::ensure!(
            start.elapsed() < START_TIMEOUT,
            "sigil-server not healthy after {START_TIMEOUT:?}; log:\n{}",
            server.log()
        );
        tokio::time::sleep(POLL).await;
    }
}

/// A client on the server's admin socket.
pub(crate) async fn admin_client(server: &Server) -> anyhow::Result<AdminClient<Channel>> {
    sigil_testkit::admin::admin_client(&server.socket)
        .await
        .with_context(|| format!("connecting to {}", server.socket.display()))
}

/// A join token valid for a day and the agent SPIFFE ID it attests to.
pub(crate) async fn join_token(server: &Server) -> anyhow::Result<(String, String)> {
    let token = admin_client(server)
        .await?
        .create_join_token(admin::CreateJoinTokenRequest {
            ttl: 24 * 60 * 60,
            spiffe_id: String::new(),
        })
        .await
        .context("CreateJoinToken")?
        .into_inner()
        .token;
    let agent_id = server.join_token_agent_id(&token);
    Ok((token, agent_id))
}

pub(crate) async fn bundle(server: &Server) -> anyhow::Result<Bundle> {
    let bundle = admin_client(server)
        .await?
        .get_bundle(admin::GetBundleRequest {})
        .await
        .context("GetBundle")?
        .into_inner()
        .bundle
        .context("GetBundle returned no bundle")?;
    Bundle::try_from(&bundle).map_err(|e| anyhow::anyhow!("invalid bundle: {e}"))
}

pub(crate) fn trust_domain() -> anyhow::Result<TrustDomain> {
    TrustDomain::new(TRUST_DOMAIN).context("trust domain")
}

/// The running server's PID.
pub(crate) fn server_pid(server: &Server) -> anyhow::Result<u32> {
    server.pid().context("sigil-server is not running")
}

/// Writes the agent's config (join_token attestor, unix workload attestor, trust from the
/// server's bundle) and starts it with `token`; returns it and how long it took until `/ready`
/// answered 200 (attestation and the first full sync applied).
pub(crate) async fn start_agent(server: &Server, token: &str) -> anyhow::Result<(Agent, Duration)> {
    let mut agent = Agent::configure_with(
        server,
        &AgentOptions {
            log_level: "INFO".into(),
            ..AgentOptions::default()
        },
    );
    let start = Instant::now();
    agent.launch(Some(token));
    loop {
        if let Some(status) = agent.exited() {
            anyhow::bail!("sigil-agent exited with {status}; log:\n{}", agent.log());
        }
        let port = agent.health_port;
        let ready = tokio::task::spawn_blocking(move || http_get(port, "/ready")).await?;
        if ready.is_some_and(|(code, _)| code == 200) {
            return Ok((agent, start.elapsed()));
        }
        anyhow::ensure!(
            start.elapsed() < START_TIMEOUT,
            "sigil-agent not ready after {START_TIMEOUT:?}; log:\n{}",
            agent.log()
        );
        tokio::time::sleep(POLL).await;
    }
}

/// The running agent's PID.
pub(crate) fn agent_pid(agent: &Agent) -> anyhow::Result<u32> {
    agent.pid().context("sigil-agent is not running")
}

/// Workload X.509-SVIDs the agent has minted so far (`sigil_agent_x509_svids_minted_total`
/// with `result="ok"` on `/metrics`).
pub(crate) async fn svids_minted(agent: &Agent) -> anyhow::Result<u64> {
    let port = agent.health_port;
    let (code, body) = tokio::task::spawn_blocking(move || http_get(port, "/metrics"))
        .await?
        .context("GET /metrics")?;
    anyhow::ensure!(code == 200, "GET /metrics: {code}");
    Ok(counter_sum(
        &body,
        "sigil_agent_x509_svids_minted_total",
        "\"ok\"",
    ))
}
