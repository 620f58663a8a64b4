//! Envoy SDS on a real agent (issue 18): how fast a change reaches an open SDS stream, and what
//! each open stream costs the agent. The bench process is the workload (`unix:uid`).
//!
//! - after entry create: `BatchCreateEntry` acknowledged -> a wildcard SDS stream (no resource
//!   names, opened before) holds the new SVID; sync and minting included, as in the Workload
//!   API's propagation row.
//! - after rotation: an entry with a 10 s X.509 TTL rotates every ~5 s; for each new SVID, the
//!   time from a FetchX509SVID stream getting it to an SDS stream (`default`) getting it. Both
//!   are pushed from the same cache change, so this is SDS's push delay on top of the Workload
//!   API's (which is the cache change itself, give or take a wake-up). Where the SDS stream gets
//!   it first the sample is 0: on a busy machine either task may wake first.
//! - 1,000 streams: agent RSS before and with 1,000 SDS streams open, each having had its
//!   first response (10 connections of 100 streams), from the same caller, which by then holds
//!   the SVIDs of every entry created above.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use prost::Message as _;
use sigil_agent::workload_api::client::connect;
use sigil_proto::envoy::config::core::v3::data_source::Specifier;
use sigil_proto::envoy::extensions::transport_sockets::tls::v3::{Secret, secret};
use sigil_proto::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};
use sigil_proto::envoy::service::secret::v3::secret_discovery_service_client::SecretDiscoveryServiceClient;
use sigil_proto::sigil::admin::v1 as admin;
use sigil_proto::workload::X509svidRequest;
use sigil_testkit::Server;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Streaming;
use tonic::transport::Channel;

use crate::mint::entry;
use crate::procs::{self, TRUST_DOMAIN};
use crate::report::{Figure, Target};
use crate::stats::rss_mib;
use crate::workload::uid_selector;

/// Issue 18's target for both push rows, p99.
pub(crate) const PUSH_P99_MS: f64 = 50.0;
const SECRET: &str = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret";
const STREAMS: usize = 1000;
const TIMEOUT: Duration = Duration::from_secs(60);

/// How many samples each row takes.
#[derive(Clone, Copy, Debug)]
pub struct SdsSize {
    pub creates: usize,
    pub rotations: usize,
}

/// The SDS rows.
pub(crate) async fn run(size: &SdsSize) -> anyhow::Result<Vec<Figure>> {
    let server = procs::start_server().await?;
    let (token, agent_id) = procs::join_token(&server).await?;
    let mut rotating = entry("/bench/sds/rotating", &agent_id, vec![uid_selector()]);
    rotating.x509_svid_ttl = 10;
    let mut admin = procs::admin_client(&server).await?;
    admin
        .batch_create_entry(admin::BatchCreateEntryRequest {
            entries: vec![rotating],
        })
        .await
        .context("BatchCreateEntry")?;
    let (agent, _ready) = procs::start_agent(&server, &token).await?;
    crate::workload::wait_for_svids(&agent.socket, 1).await?;
    let pid = procs::agent_pid(&agent)?;

    let mut figures = Vec::new();
    let mut rotation = after_rotation(&agent.socket, size.rotations).await?;
    figures.extend(crate::latency_figures(
        "SDS push after rotation",
        &mut rotation,
        Target::Below(PUSH_P99_MS),
        "an SVID with a 10 s TTL rotating: its arrival on an SDS stream (`default`) after its \
         arrival on a FetchX509SVID stream of the same agent (0 where SDS got it first)",
    )?);
    let mut created = after_create(&server, &agent.socket, &agent_id, size.creates).await?;
    figures.extend(crate::latency_figures(
        &format!("SDS push after entry create, {} entries", created.len()),
        &mut created,
        Target::Below(PUSH_P99_MS),
        "BatchCreateEntry acknowledged -> a wildcard SDS stream holds the new SVID (sync and \
         mint included)",
    )?);
    let (before, during) = streams_memory(&agent.socket, pid).await?;
    figures.push(Figure::new(
        "SDS: agent RSS per open stream",
        (during - before) * 1024.0 / STREAMS as f64,
        "KiB",
        Target::None,
        &format!(
            "{STREAMS} StreamSecrets (`default`, `ROOTCA`) over 10 connections, each with its \
             first response, from a caller holding {} SVIDs; agent RSS {before:.1} MiB before, \
             {during:.1} MiB with them open",
            size.creates + 1
        ),
    ));
    Ok(figures)
}

/// An Envoy-like stream: the first request sent, the rest through the returned sender.
async fn open(
    client: &mut SecretDiscoveryServiceClient<Channel>,
    names: &[&str],
) -> anyhow::Result<(mpsc::Sender<DiscoveryRequest>, Streaming<DiscoveryResponse>)> {
    let (tx, rx) = mpsc::channel(4);
    tx.send(DiscoveryRequest {
        resource_names: names.iter().map(|n| (*n).to_owned()).collect(),
        type_url: SECRET.into(),
        ..DiscoveryRequest::default()
    })
    .await?;
    let stream = client
        .stream_secrets(ReceiverStream::new(rx))
        .await
        .context("StreamSecrets")?
        .into_inner();
    Ok((tx, stream))
}

async fn sds_client(socket: &Path) -> anyhow::Result<SecretDiscoveryServiceClient<Channel>> {
    Ok(SecretDiscoveryServiceClient::new(
        sigil_common::uds::channel(socket).await?,
    ))
}

async fn next(stream: &mut Streaming<DiscoveryResponse>) -> anyhow::Result<DiscoveryResponse> {
    tokio::time::timeout(TIMEOUT, stream.message())
        .await
        .context("no SDS response in time")?
        .context("StreamSecrets")?
        .context("StreamSecrets ended")
}

/// Sends the ACK of `response`.
async fn ack(
    tx: &mpsc::Sender<DiscoveryRequest>,
    names: &[&str],
    response: &DiscoveryResponse,
) -> anyhow::Result<()> {
    tx.send(DiscoveryRequest {
        version_info: response.version_info.clone(),
        response_nonce: response.nonce.clone(),
        resource_names: names.iter().map(|n| (*n).to_owned()).collect(),
        type_url: SECRET.into(),
        ..DiscoveryRequest::default()
    })
    .await?;
    Ok(())
}

/// The TLS certificates in a response: name -> leaf chain PEM.
fn certificates(response: &DiscoveryResponse) -> anyhow::Result<HashMap<String, Vec<u8>>> {
    let mut out = HashMap::new();
    for any in &response.resources {
        let secret = Secret::decode(any.value.as_slice())?;
        if let Some(secret::Type::TlsCertificate(tls)) = secret.r#type
            && let Some(Specifier::InlineBytes(chain)) =
                tls.certificate_chain.and_then(|c| c.specifier)
        {
            out.insert(secret.name, chain);
        }
    }
    Ok(out)
}

/// The first certificate of a PEM chain, as DER.
fn leaf_der(chain_pem: &[u8]) -> anyhow::Result<Vec<u8>> {
    let first = pem::parse_many(chain_pem)?
        .into_iter()
        .next()
        .context("empty chain")?;
    Ok(first.into_contents())
}

async fn after_rotation(socket: &Path, rotations: usize) -> anyhow::Result<Vec<Duration>> {
    eprintln!("sigil-bench: SDS push after rotation ({rotations} rotations, ~5 s each)");
    let mut workload = connect(socket).await?;
    let mut x509 = workload
        .fetch_x509svid(X509svidRequest {})
        .await?
        .into_inner();
    let mut client = sds_client(socket).await?;
    let names = ["default"];
    let (tx, mut sds) = open(&mut client, &names).await?;
    let first = next(&mut sds).await?;
    ack(&tx, &names, &first).await?;
    x509.message().await?.context("first FetchX509SVID")?;

    // Arrival times of each leaf on each stream; the Workload API's read by its own task.
    let x509_seen: Arc<Mutex<HashMap<Vec<u8>, Instant>>> = Arc::default();
    let x509_task = {
        let seen = x509_seen.clone();
        tokio::spawn(async move {
            while let Ok(Some(response)) = x509.message().await {
                let leaf = response.svids[0].x509_svid.clone();
                let mut seen = seen.lock().unwrap_or_else(PoisonError::into_inner);
                seen.entry(leaf).or_insert_with(Instant::now);
            }
        })
    };
    let mut sds_seen: HashMap<Vec<u8>, Instant> = HashMap::new();
    while sds_seen.len() < rotations {
        let response = tokio::time::timeout(Duration::from_secs(30), sds.message())
            .await
            .context("no rotation within 30 s")??
            .context("StreamSecrets ended")?;
        let arrived = Instant::now();
        ack(&tx, &names, &response).await?;
        let chain = certificates(&response)?
            .remove("default")
            .context("no default")?;
        sds_seen.insert(leaf_der(&chain)?, arrived);
    }
    // Let the Workload API stream see the last one too, then stop it.
    tokio::time::sleep(Duration::from_millis(200)).await;
    x509_task.abort();
    let x509_seen = x509_seen.lock().unwrap_or_else(PoisonError::into_inner);
    let samples: Vec<Duration> = sds_seen
        .iter()
        .filter_map(|(leaf, at)| {
            // The Workload API message holds the chain as concatenated DER, leaf first.
            let workload_at = x509_seen
                .iter()
                .find(|(chain, _)| chain.starts_with(leaf))
                .map(|(_, t)| *t)?;
            Some(at.saturating_duration_since(workload_at))
        })
        .collect();
    anyhow::ensure!(!samples.is_empty(), "no rotation seen on both streams");
    Ok(samples)
}

async fn after_create(
    server: &Server,
    socket: &Path,
    parent: &str,
    n: usize,
) -> anyhow::Result<Vec<Duration>> {
    eprintln!("sigil-bench: SDS push after entry create ({n} entries)");
    let mut client = sds_client(socket).await?;
    let (tx, mut sds) = open(&mut client, &[]).await?;
    let first = next(&mut sds).await?;
    ack(&tx, &[], &first).await?;
    let mut admin = procs::admin_client(server).await?;
    let run = std::process::id();
    let mut samples = Vec::with_capacity(n);
    for i in 0..n {
        let path = format!("/bench/sds/{run}/{i}");
        let want = format!("spiffe://{TRUST_DOMAIN}{path}");
        admin
            .batch_create_entry(admin::BatchCreateEntryRequest {
                entries: vec![entry(&path, parent, vec![uid_selector()])],
            })
            .await
            .context("BatchCreateEntry")?;
        let acked = Instant::now();
        loop {
            let response = next(&mut sds).await?;
            ack(&tx, &[], &response).await?;
            if certificates(&response)?.contains_key(&want) {
                samples.push(acked.elapsed());
                break;
            }
        }
    }
    Ok(samples)
}

/// Agent RSS (MiB) before and with [`STREAMS`] SDS streams open.
async fn streams_memory(socket: &Path, pid: u32) -> anyhow::Result<(f64, f64)> {
    eprintln!("sigil-bench: {STREAMS} SDS streams");
    let mut warm = sds_client(socket).await?;
    for _ in 0..20 {
        let (_tx, mut stream) = open(&mut warm, &["default"]).await?;
        next(&mut stream).await?;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = rss_mib(pid)?;
    let mut held = Vec::with_capacity(STREAMS);
    for _ in 0..STREAMS / 100 {
        let client = sds_client(socket).await?;
        let opened = futures::future::try_join_all((0..100).map(|_| {
            let mut client = client.clone();
            async move {
                let names = ["default", "ROOTCA"];
                let (tx, mut stream) = open(&mut client, &names).await?;
                let first = next(&mut stream).await?;
                ack(&tx, &names, &first).await?;
                anyhow::Ok((tx, stream))
            }
        }))
        .await?;
        held.extend(opened);
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let during = rss_mib(pid)?;
    drop(held);
    Ok((before, during))
}
