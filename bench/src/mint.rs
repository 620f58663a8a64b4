//! Mint throughput: the bench attests to the server as an agent (join token, `AttestAgent` with
//! its own CSR), registers entries parented to itself, then keeps several
//! `BatchMintX509SVID` (or `BatchMintJWTSVID`, or unary `MintJWTSVID`) calls in flight over the agent API's mTLS for a
//! window. CSRs are generated before the window opens. The server's CPU time over the window
//! (from `/proc/<pid>/stat`) says how many cores it used, so the rate can be compared with the
//! raw per-core limit.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use sigil_agent::config::JoinToken;
use sigil_agent::node_attestation::{self, JoinTokenAttestor};
use sigil_agent::server_client::ServerConnection;
use sigil_proto::sigil::admin::v1 as admin;
use sigil_proto::sigil::agent::v1 as agent;
use sigil_proto::sigil::common::v1 as common;

use sigil_testkit::Server;

use crate::procs::{self, TRUST_DOMAIN};
use crate::stats;

/// Requests per `BatchMintX509SVID`: sigil-agent's own batch size.
pub(crate) const BATCH: usize = sigil_agent::rotation::MAX_BATCH;

/// The bench acting as an attested agent.
pub(crate) struct BenchAgent {
    pub connection: Arc<ServerConnection>,
    pub agent_id: String,
}

impl BenchAgent {
    pub(crate) async fn attest(server: &Server) -> anyhow::Result<Self> {
        let (token, agent_id) = procs::join_token(server).await?;
        let bundle = procs::bundle(server).await?;
        let connection = ServerConnection::new(
            "127.0.0.1",
            server.bind_port,
            &procs::trust_domain()?,
            Some(&bundle),
            None,
        )?;
        let attestor = JoinTokenAttestor::new(JoinToken::new(token));
        let (svid, _bundle) = node_attestation::attest(&connection, &attestor)
            .await
            .context("AttestAgent")?;
        connection.identity().set(svid);
        Ok(Self {
            connection: Arc::new(connection),
            agent_id,
        })
    }
}

/// Registers `n` entries parented to `parent` (one selector each, `bench:<tag>:<i>`, SPIFFE ID
/// `/bench/<tag>/<i>`) in batches; returns their IDs.
pub(crate) async fn register(
    server: &Server,
    parent: &str,
    tag: &str,
    n: usize,
    selector: impl Fn(usize) -> common::Selector,
) -> anyhow::Result<Vec<String>> {
    let mut admin = procs::admin_client(server).await?;
    let mut ids = Vec::with_capacity(n);
    let batch = 10_000;
    for start in (0..n).step_by(batch) {
        let entries = (start..n.min(start + batch))
            .map(|i| entry(&format!("/bench/{tag}/{i}"), parent, vec![selector(i)]))
            .collect();
        let created = admin
            .batch_create_entry(admin::BatchCreateEntryRequest { entries })
            .await
            .context("BatchCreateEntry")?
            .into_inner();
        ids.extend(created.entries.into_iter().map(|e| e.id));
    }
    Ok(ids)
}

pub(crate) fn entry(
    path: &str,
    parent: &str,
    selectors: Vec<common::Selector>,
) -> common::RegistrationEntry {
    common::RegistrationEntry {
        spiffe_id: format!("spiffe://{TRUST_DOMAIN}{path}"),
        parent_id: parent.into(),
        selectors,
        ..Default::default()
    }
}

pub(crate) fn selector(kind: &str, value: String) -> common::Selector {
    common::Selector {
        r#type: kind.into(),
        value,
    }
}

/// Signing rate and what the server used to reach it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Throughput {
    pub per_second: f64,
    /// Server CPU seconds over the window divided by the window's wall time.
    pub cores_used: f64,
    /// The same for this process (the client): near 1 per client thread means the client,
    /// not the server, is the bottleneck.
    pub client_cores_used: f64,
}

/// `concurrency` tasks each keep one `BatchMintX509SVID` of [`BATCH`] requests in flight for
/// `window`. Every SVID asked for must come back.
pub(crate) async fn x509(
    server: &Server,
    bench: &BenchAgent,
    entry_ids: &[String],
    csrs: &[Vec<u8>],
    concurrency: usize,
    window: Duration,
) -> anyhow::Result<Throughput> {
    anyhow::ensure!(!entry_ids.is_empty() && !csrs.is_empty(), "nothing to mint");
    // Built before the window: the timed part is the RPC only.
    let batches: Vec<agent::BatchMintX509svidRequest> = entry_ids
        .chunks(BATCH)
        .enumerate()
        .map(|(b, ids)| agent::BatchMintX509svidRequest {
            requests: ids
                .iter()
                .enumerate()
                .map(|(i, id)| agent::X509svidRequest {
                    entry_id: id.clone(),
                    csr: csrs[(b * BATCH + i) % csrs.len()].clone(),
                    spiffe_id: String::new(),
                    pod_uid: String::new(),
                })
                .collect(),
        })
        .collect();
    let batches = Arc::new(batches);
    let work = move |client_no: usize, round: usize| {
        let batches = batches.clone();
        let connection = bench.connection.clone();
        async move {
            let request = batches[(client_no + round * concurrency) % batches.len()].clone();
            let want = request.requests.len();
            let got = connection
                .client()
                .batch_mint_x509svid(request)
                .await
                .context("BatchMintX509SVID")?
                .into_inner()
                .svids
                .len();
            anyhow::ensure!(got == want, "asked for {want} X.509-SVIDs, got {got}");
            Ok(got)
        }
    };
    drive(procs::server_pid(server)?, concurrency, window, work).await
}

/// `concurrency` tasks each keep one `BatchMintJWTSVID` of [`BATCH`] requests in flight for
/// `window`. Every JWT-SVID asked for must come back.
pub(crate) async fn jwt_batch(
    server: &Server,
    bench: &BenchAgent,
    entry_ids: &[String],
    concurrency: usize,
    window: Duration,
) -> anyhow::Result<Throughput> {
    anyhow::ensure!(!entry_ids.is_empty(), "nothing to mint");
    // Built before the window: the timed part is the RPC only.
    let batches: Vec<agent::BatchMintJwtsvidRequest> = entry_ids
        .chunks(BATCH)
        .map(|ids| agent::BatchMintJwtsvidRequest {
            requests: ids
                .iter()
                .map(|id| agent::MintJwtsvidRequest {
                    entry_id: id.clone(),
                    audience: vec!["bench".into()],
                    spiffe_id: String::new(),
                    pod_uid: String::new(),
                })
                .collect(),
        })
        .collect();
    let batches = Arc::new(batches);
    let work = move |client_no: usize, round: usize| {
        let batches = batches.clone();
        let connection = bench.connection.clone();
        async move {
            let request = batches[(client_no + round * concurrency) % batches.len()].clone();
            let want = request.requests.len();
            let svids = connection
                .client()
                .batch_mint_jwtsvid(request)
                .await
                .context("BatchMintJWTSVID")?
                .into_inner()
                .svids;
            anyhow::ensure!(
                svids.len() == want && svids.iter().all(|s| !s.token.is_empty()),
                "asked for {want} JWT-SVIDs, got {}",
                svids.len()
            );
            Ok(want)
        }
    };
    drive(procs::server_pid(server)?, concurrency, window, work).await
}

/// `concurrency` tasks each keep one `MintJWTSVID` in flight for `window`.
pub(crate) async fn jwt(
    server: &Server,
    bench: &BenchAgent,
    entry_ids: &[String],
    concurrency: usize,
    window: Duration,
) -> anyhow::Result<Throughput> {
    anyhow::ensure!(!entry_ids.is_empty(), "nothing to mint");
    let work = |client_no: usize, round: usize| {
        let request = agent::MintJwtsvidRequest {
            entry_id: entry_ids[(client_no + round * concurrency) % entry_ids.len()].clone(),
            audience: vec!["bench".into()],
            spiffe_id: String::new(),
            pod_uid: String::new(),
        };
        let connection = bench.connection.clone();
        async move {
            let token = connection
                .client()
                .mint_jwtsvid(request)
                .await
                .context("MintJWTSVID")?
                .into_inner()
                .token;
            anyhow::ensure!(!token.is_empty(), "MintJWTSVID returned no token");
            Ok(1)
        }
    };
    drive(procs::server_pid(server)?, concurrency, window, work).await
}

/// Runs `concurrency` loops of `work(loop_no, round)` (each returning how many items it did)
/// until `window` has passed; in-flight calls finish and count, and the wall time includes
/// them.
async fn drive<F, Fut>(
    server_pid: u32,
    concurrency: usize,
    window: Duration,
    work: F,
) -> anyhow::Result<Throughput>
where
    F: Fn(usize, usize) -> Fut,
    Fut: Future<Output = anyhow::Result<usize>>,
{
    // One warm-up round: connections, TLS handshakes and caches are not what we measure.
    futures::future::try_join_all((0..concurrency).map(|c| work(c, 0))).await?;
    let cpu_before = stats::cpu_seconds(server_pid)?;
    let client_before = stats::cpu_seconds(std::process::id())?;
    let start = Instant::now();
    let deadline = start + window;
    let loops = (0..concurrency).map(|c| {
        let work = &work;
        async move {
            let mut done = 0;
            let mut round = 1;
            while Instant::now() < deadline {
                done += work(c, round).await?;
                round += 1;
            }
            anyhow::Ok(done)
        }
    });
    let done: usize = futures::future::try_join_all(loops)
        .await?
        .into_iter()
        .sum();
    let wall = start.elapsed().as_secs_f64();
    let cpu = stats::cpu_seconds(server_pid)? - cpu_before;
    let client = stats::cpu_seconds(std::process::id())? - client_before;
    Ok(Throughput {
        per_second: done as f64 / wall,
        cores_used: cpu / wall,
        client_cores_used: client / wall,
    })
}
