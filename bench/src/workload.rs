//! The bench process as a workload of a real sigil-agent (registered by `unix:uid`): Workload
//! API latency with 1..N concurrent clients, and propagation from `entry create` to a
//! streaming client holding the new SVID.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use sigil_agent::workload_api::client::{WorkloadApiClient, connect};
use sigil_proto::sigil::admin::v1 as admin;
use sigil_proto::workload::{JwtsvidRequest, X509svidRequest, X509svidResponse};
use tonic::Streaming;

use sigil_testkit::Server;

use crate::mint::{entry, selector};
use crate::procs::{self, TRUST_DOMAIN};
use crate::report::{Figure, Target};
use crate::stats::cpu_seconds;

/// How long a workload waits for an SVID the agent has not minted yet.
const SVID_TIMEOUT: Duration = Duration::from_secs(60);

/// The selector the agent's unix attestor gives this process.
pub(crate) fn uid_selector() -> sigil_proto::sigil::common::v1::Selector {
    selector("unix", format!("uid:{}", nix::unistd::getuid().as_raw()))
}

/// One FetchX509SVID response (the first message of the stream).
async fn fetch_x509(client: &mut WorkloadApiClient) -> anyhow::Result<X509svidResponse> {
    let mut stream = client
        .fetch_x509svid(X509svidRequest {})
        .await
        .context("FetchX509SVID")?
        .into_inner();
    stream
        .message()
        .await
        .context("FetchX509SVID stream")?
        .context("FetchX509SVID stream ended without a response")
}

/// Polls FetchX509SVID until the response holds at least `n` SVIDs; returns how many it holds.
pub(crate) async fn wait_for_svids(socket: &Path, n: usize) -> anyhow::Result<usize> {
    let start = Instant::now();
    loop {
        let last = match connect(socket).await {
            Ok(mut client) => match fetch_x509(&mut client).await {
                Ok(r) if r.svids.len() >= n => return Ok(r.svids.len()),
                Ok(r) => format!("{} SVIDs", r.svids.len()),
                Err(e) => format!("{e:#}"),
            },
            Err(e) => e.to_string(),
        };
        anyhow::ensure!(
            start.elapsed() < SVID_TIMEOUT,
            "the workload did not get {n} X.509-SVIDs within {SVID_TIMEOUT:?} (last: {last})"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// What one closed-loop latency run measured.
#[derive(Debug)]
pub(crate) struct Load {
    /// Every timed call's latency.
    pub samples: Vec<Duration>,
    /// CPU seconds the agent used during the timed window.
    pub agent_cpu: f64,
    /// CPU seconds this process (the clients) used during the timed window.
    pub client_cpu: f64,
}

impl Load {
    /// Agent CPU per call, µs: independent of how many calls queue (closed loop).
    pub(crate) fn agent_us_per_call(&self) -> f64 {
        per_call_us(self.agent_cpu, self.samples.len())
    }

    /// Client CPU per call, µs.
    pub(crate) fn client_us_per_call(&self) -> f64 {
        per_call_us(self.client_cpu, self.samples.len())
    }
}

/// Agent and client CPU per call: the cost that, with `clients` calls in flight on a few
/// cores, sets the closed-loop latency (≈ clients × per-call CPU ÷ cores).
pub(crate) fn cpu_figures(what: &str, clients: usize, load: &Load) -> [Figure; 2] {
    let note = format!(
        "CPU time (/proc/<pid>/stat) over the timed window / {} calls",
        load.samples.len()
    );
    [
        Figure::new(
            &format!("{what} agent CPU per call, {clients} clients"),
            load.agent_us_per_call(),
            "µs",
            Target::None,
            &note,
        ),
        Figure::new(
            &format!("{what} client CPU per call, {clients} clients"),
            load.client_us_per_call(),
            "µs",
            Target::None,
            &format!("{note}; the bench process: tonic client, connection, decoding"),
        ),
    ]
}

fn per_call_us(cpu: f64, calls: usize) -> f64 {
    if calls == 0 {
        f64::NAN
    } else {
        cpu * 1e6 / calls as f64
    }
}

/// `clients` connections each repeat a one-shot FetchX509SVID (open the stream, read the first
/// response, drop it) for `window`; returns every call's latency and the CPU the agent
/// (`agent_pid`) and the clients used meanwhile. Each connection's first call is a warm-up and
/// not counted.
pub(crate) async fn x509_latency(
    socket: &Path,
    agent_pid: u32,
    clients: usize,
    window: Duration,
) -> anyhow::Result<Load> {
    latency(
        socket,
        agent_pid,
        clients,
        window,
        |mut client| async move {
            let r = fetch_x509(&mut client).await?;
            anyhow::ensure!(!r.svids.is_empty(), "FetchX509SVID returned no SVID");
            Ok(client)
        },
    )
    .await
}

/// As [`x509_latency`] for FetchJWTSVID (audience `bench`; the agent caches the JWT-SVID).
pub(crate) async fn jwt_latency(
    socket: &Path,
    agent_pid: u32,
    clients: usize,
    window: Duration,
) -> anyhow::Result<Load> {
    latency(
        socket,
        agent_pid,
        clients,
        window,
        |mut client| async move {
            let r = client
                .fetch_jwtsvid(JwtsvidRequest {
                    audience: vec!["bench".into()],
                    spiffe_id: String::new(),
                })
                .await
                .context("FetchJWTSVID")?
                .into_inner();
            anyhow::ensure!(!r.svids.is_empty(), "FetchJWTSVID returned no SVID");
            Ok(client)
        },
    )
    .await
}

async fn latency<F, Fut>(
    socket: &Path,
    agent_pid: u32,
    clients: usize,
    window: Duration,
    call: F,
) -> anyhow::Result<Load>
where
    F: Fn(WorkloadApiClient) -> Fut,
    Fut: Future<Output = anyhow::Result<WorkloadApiClient>>,
{
    let mut connected = Vec::with_capacity(clients);
    for _ in 0..clients {
        let client = connect(socket).await?;
        connected.push(call(client).await?);
    }
    let agent_before = cpu_seconds(agent_pid)?;
    let client_before = cpu_seconds(std::process::id())?;
    let deadline = Instant::now() + window;
    let loops = connected.into_iter().map(|mut client| {
        let call = &call;
        async move {
            let mut samples = Vec::new();
            while Instant::now() < deadline {
                let start = Instant::now();
                client = call(client).await?;
                samples.push(start.elapsed());
            }
            anyhow::Ok(samples)
        }
    });
    let samples = futures::future::try_join_all(loops)
        .await?
        .into_iter()
        .flatten()
        .collect();
    Ok(Load {
        samples,
        agent_cpu: cpu_seconds(agent_pid)? - agent_before,
        client_cpu: cpu_seconds(std::process::id())? - client_before,
    })
}

/// A FetchX509SVID stream on `socket` whose first response has been read.
pub(crate) async fn x509_stream(socket: &Path) -> anyhow::Result<Streaming<X509svidResponse>> {
    let mut stream = connect(socket)
        .await?
        .fetch_x509svid(X509svidRequest {})
        .await
        .context("FetchX509SVID")?
        .into_inner();
    stream.message().await?.context("first response")?;
    Ok(stream)
}

/// For each of `n` new entries selecting this process: the time from `BatchCreateEntry`
/// returning to a FetchX509SVID stream (opened before) delivering a response that holds the
/// entry's SVID. A response already waiting when the call returns counts as zero.
pub(crate) async fn propagation(
    server: &Server,
    socket: &Path,
    parent: &str,
    n: usize,
) -> anyhow::Result<Vec<Duration>> {
    let mut stream = x509_stream(socket).await?;
    let mut admin = procs::admin_client(server).await?;
    let run = std::process::id();
    let mut samples = Vec::with_capacity(n);
    for i in 0..n {
        let path = format!("/bench/propagation/{run}/{i}");
        let want = format!("spiffe://{TRUST_DOMAIN}{path}");
        admin
            .batch_create_entry(admin::BatchCreateEntryRequest {
                entries: vec![entry(&path, parent, vec![uid_selector()])],
            })
            .await
            .context("BatchCreateEntry")?;
        let acked = Instant::now();
        loop {
            let response = tokio::time::timeout(SVID_TIMEOUT, stream.message())
                .await
                .with_context(|| format!("no SVID for {want} within {SVID_TIMEOUT:?}"))?
                .context("FetchX509SVID stream")?
                .context("FetchX509SVID stream ended")?;
            if response.svids.iter().any(|s| s.spiffe_id == want) {
                samples.push(acked.elapsed());
                break;
            }
        }
    }
    Ok(samples)
}
