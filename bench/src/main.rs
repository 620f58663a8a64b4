//! sigil-bench: measures Sigil against the signing limit of this machine (issue #6). Starts
//! the built `sigil-server` and `sigil-agent` (from the same target directory as this binary)
//! on loopback, prints one table and writes it as JSON to `<target>/bench/results.json`.
//!
//! `sigil-bench all` is the full run; `--quick` is the CI size (1k entries, short windows).
//! Targets are issue #6's; the table reports met/missed, nothing asserts them.
#![forbid(unsafe_code)]

mod cfssl;
mod console;
mod mint;
mod pod_check;
mod procs;
mod prune;
mod raw;
mod report;
mod scale;
mod sds;
mod spire;
mod stats;
mod workload;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use clap::{Parser, Subcommand};

use crate::console::ConsoleSize;
use crate::pod_check::PodCheckSize;
use crate::report::{Figure, Machine, Report, Target};
use crate::scale::ScaleSize;
use crate::sds::SdsSize;
use crate::spire::SpireSize;
use crate::stats::{millis, percentile};

#[derive(Debug, Parser)]
#[command(
    name = "sigil-bench",
    about = "Benchmarks sigil-server and sigil-agent on loopback"
)]
struct Args {
    #[command(subcommand)]
    command: Group,
    /// CI size: 1k entries, short measurement windows.
    #[arg(long, global = true)]
    quick: bool,
    /// Where to write the JSON results (default `<target>/bench/results.json`).
    #[arg(long, global = true)]
    json: Option<PathBuf>,
    /// Directory holding sigil-server and sigil-agent (default: this binary's directory).
    #[arg(long, global = true)]
    bin_dir: Option<PathBuf>,
}

/// Which figures to produce.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Subcommand)]
enum Group {
    /// Every figure.
    All,
    /// The raw signing limit only.
    Raw,
    /// Raw limit, then X.509 and JWT mint throughput and the ratio to the raw limit.
    Mint,
    /// Raw limit, mint throughput and cfssl side by side.
    Cfssl,
    /// Workload API latency and propagation.
    Workload,
    /// Entries at scale, agent sync and footprint.
    Scale,
    /// Pruning of stale entries, nodes and tokens while an agent syncs and entries are created.
    Prune,
    /// Templated mints with and without the pod check, and the server's pod cache as pods are
    /// created (on the test kit's kube-apiserver; "n.a." rows without one).
    Templates,
    /// Envoy SDS: push after rotation and after entry create, memory per open stream.
    Sds,
    /// The web console with many entries: entries page load, search p99 server-side.
    Console,
    /// SPIRE v1.13.3 and Sigil side by side (entry create rate, propagation, agent minting,
    /// Workload API, start-up); skipped, with no rows, when SPIRE is not built
    /// (`scripts/spire-peer.sh`).
    Spire,
}

impl Group {
    fn includes(self, other: Self) -> bool {
        match (self, other) {
            (Self::All, _) | (_, Self::Raw) => true,
            (Self::Cfssl, Self::Mint) => true,
            (a, b) => a == b,
        }
    }
}

/// How big and how long each measurement is.
#[derive(Clone, Debug)]
pub struct Size {
    pub quick: bool,
    /// Each raw-limit path is timed this long.
    pub raw_window: Duration,
    /// Entries the bench (as an agent) mints for.
    pub mint_entries: usize,
    /// Each throughput figure is timed this long.
    pub mint_window: Duration,
    /// Each latency figure is timed this long.
    pub latency_window: Duration,
    pub propagation_entries: usize,
    pub scale: ScaleSize,
    /// Expired entries (and as many expired nodes and join tokens) pruned in one run.
    pub prune_stale: usize,
    pub pod_check: PodCheckSize,
    pub sds: SdsSize,
    pub spire: SpireSize,
    pub console: ConsoleSize,
}

/// `BatchMintX509SVID` calls (of 500 requests) in flight at once.
const X509_CONCURRENCY: usize = 4;
/// Issue #6's propagation target: entry created -> on the agent, p99 (ms). Sync must keep it
/// during a prune run too.
pub const PROPAGATION_P99_MS: f64 = 200.0;
/// `BatchMintJWTSVID` calls in flight at once (as for X.509).
const JWT_BATCH_CONCURRENCY: usize = 4;
/// `MintJWTSVID` calls in flight at once.
const JWT_CONCURRENCY: usize = 16;
/// HTTP clients posting to cfssl, as the issue measured it.
const CFSSL_CONCURRENCY: usize = 8;
/// FetchJWTSVID clients.
const JWT_CLIENTS: usize = 10;

impl Size {
    fn new(quick: bool) -> Self {
        if quick {
            Self {
                quick,
                raw_window: Duration::from_secs(1),
                mint_entries: 1000,
                mint_window: Duration::from_secs(3),
                latency_window: Duration::from_secs(2),
                propagation_entries: 10,
                scale: ScaleSize {
                    entries: vec![1000],
                    agent_entries: 1000,
                    cached_svids: 100,
                    queries: 50,
                },
                prune_stale: 10_000,
                pod_check: PodCheckSize {
                    rounds: 300,
                    pods: 500,
                },
                sds: SdsSize {
                    creates: 10,
                    rotations: 3,
                },
                console: ConsoleSize {
                    entries: 1000,
                    requests: 20,
                },
                spire: SpireSize {
                    loads: vec![2000],
                    agents: vec![1000],
                    propagation: 10,
                    latency_window: Duration::from_secs(2),
                },
            }
        } else {
            Self {
                quick,
                raw_window: Duration::from_secs(3),
                mint_entries: 10_000,
                mint_window: Duration::from_secs(10),
                latency_window: Duration::from_secs(5),
                propagation_entries: 100,
                scale: ScaleSize {
                    entries: vec![100_000, 1_000_000],
                    agent_entries: 10_000,
                    cached_svids: 1000,
                    queries: 200,
                },
                prune_stale: 100_000,
                pod_check: PodCheckSize {
                    rounds: 3000,
                    pods: 10_000,
                },
                sds: SdsSize {
                    creates: 100,
                    rotations: 20,
                },
                console: ConsoleSize {
                    entries: 100_000,
                    requests: 200,
                },
                spire: SpireSize {
                    loads: vec![100_000, 1_000_000],
                    agents: vec![1000, 10_000],
                    propagation: 100,
                    latency_window: Duration::from_secs(5),
                },
            }
        }
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("sigil-bench: starting the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sigil-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    let exe = std::env::current_exe().context("locating this binary")?;
    // <target>/<profile>/sigil-bench: the servers are built next to it.
    let profile_dir = exe
        .parent()
        .context("this binary has no directory")?
        .to_path_buf();
    let bin_dir = args.bin_dir.clone().unwrap_or_else(|| profile_dir.clone());
    let json = match args.json.clone() {
        Some(p) => p,
        None => profile_dir
            .parent()
            .context("no target directory above this binary")?
            .join("bench")
            .join("results.json"),
    };
    let size = Size::new(args.quick);
    let machine = machine(&profile_dir);
    eprintln!(
        "sigil-bench: {} run, binaries from {}, {} cores, load {}",
        if size.quick { "quick" } else { "full" },
        bin_dir.display(),
        machine.cores,
        machine.load_average
    );
    // The test kit starts the binaries; it takes them from here.
    sigil_testkit::binaries::use_bin_dir(bin_dir);

    let mut figures = Vec::new();
    let csrs = tokio::task::spawn_blocking(|| raw::csrs(1000)).await??;
    let raw = {
        let csrs = csrs.clone();
        let window = size.raw_window;
        tokio::task::spawn_blocking(move || raw::measure(window, &csrs)).await??
    };
    figures.extend(raw_figures(&raw));
    let group = args.command;
    if group.includes(Group::Mint) {
        let x509_rate = mint_figures(&size, &raw, &csrs, &mut figures).await?;
        if group.includes(Group::Cfssl) {
            figures.extend(cfssl_figures(&size, &csrs, x509_rate).await?);
        }
    }
    if group.includes(Group::Workload) {
        figures.extend(workload_figures(&size).await?);
    }
    if group.includes(Group::Scale) {
        eprintln!("sigil-bench: scale");
        figures.extend(scale::run(&size.scale).await?);
    }
    if group.includes(Group::Prune) {
        eprintln!("sigil-bench: prune");
        figures.extend(prune::run(size.prune_stale).await?);
    }
    if group.includes(Group::Templates) {
        eprintln!("sigil-bench: templates (pod check, pod cache)");
        figures.extend(pod_check::run(&size.pod_check, &csrs).await?);
    }
    if group.includes(Group::Sds) {
        eprintln!("sigil-bench: SDS");
        figures.extend(sds::run(&size.sds).await?);
    }
    if group.includes(Group::Console) {
        eprintln!("sigil-bench: console");
        figures.extend(console::run(&size.console).await?);
    }
    if group.includes(Group::Spire) {
        eprintln!("sigil-bench: SPIRE side by side");
        figures.extend(spire::run(&size.spire).await?);
    }

    let report = Report {
        generated_at: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        quick: size.quick,
        machine,
        figures,
    };
    print!("{}", report.table());
    report
        .write_json(&json)
        .with_context(|| format!("writing {}", json.display()))?;
    eprintln!("sigil-bench: results written to {}", json.display());
    Ok(())
}

fn raw_figures(raw: &raw::RawLimit) -> Vec<Figure> {
    vec![
        Figure::new(
            "raw: ring ECDSA P-256 sign, 1 core",
            raw.p256_sign,
            "signs/s",
            Target::None,
            "ring EcdsaKeyPair::sign over 400 bytes, per CPU-second of one thread, this run",
        ),
        Figure::new(
            "raw: X.509-SVID from CSR, 1 core",
            raw.x509_svid_csr,
            "SVIDs/s",
            Target::None,
            "sigil_server::ca::Ca::sign_x509_svid_csr (CSR parse + verify + rcgen sign), per CPU-second of one thread",
        ),
        Figure::new(
            "raw: JWT-SVID sign, 1 core",
            raw.jwt_svid,
            "SVIDs/s",
            Target::None,
            "sigil_server::ca::Ca::sign_jwt_svid, per CPU-second of one thread",
        ),
    ]
}

/// X.509 and JWT mint throughput and their ratio to the raw limit × cores used; returns the
/// X.509 rate for the cfssl comparison.
async fn mint_figures(
    size: &Size,
    raw: &raw::RawLimit,
    csrs: &[Vec<u8>],
    figures: &mut Vec<Figure>,
) -> anyhow::Result<f64> {
    eprintln!("sigil-bench: mint throughput");
    let server = procs::start_server().await?;
    let bench = mint::BenchAgent::attest(&server).await?;
    let ids = mint::register(&server, &bench.agent_id, "mint", size.mint_entries, |i| {
        mint::selector("bench", format!("mint:{i}"))
    })
    .await?;
    let x509 = mint::x509(
        &server,
        &bench,
        &ids,
        csrs,
        X509_CONCURRENCY,
        size.mint_window,
    )
    .await?;
    let jwt = mint::jwt_batch(
        &server,
        &bench,
        &ids,
        JWT_BATCH_CONCURRENCY,
        size.mint_window,
    )
    .await?;
    let jwt_unary = mint::jwt(&server, &bench, &ids, JWT_CONCURRENCY, size.mint_window).await?;
    figures.extend([
        Figure::new(
            "mint: X.509-SVIDs/s (BatchMintX509SVID)",
            x509.per_second,
            "SVIDs/s",
            Target::None,
            "agent API over mTLS, 4 batches of 500 CSRs in flight, CSRs made before the window",
        ),
        Figure::new(
            "mint: X.509 server cores used",
            x509.cores_used,
            "cores",
            Target::None,
            &format!(
                "sigil-server CPU seconds (/proc/<pid>/stat) / wall seconds over the window; \
                 the bench client used {:.2} cores",
                x509.client_cores_used
            ),
        ),
        Figure::new(
            "mint: X.509 / (raw x cores used)",
            ratio(x509.per_second, raw.x509_svid_csr * x509.cores_used),
            "ratio",
            Target::AtLeast(0.7),
            "X.509-SVIDs/s over raw X.509-SVID-from-CSR/s per core x server cores used",
        ),
        Figure::new(
            "mint: JWT-SVIDs/s (BatchMintJWTSVID)",
            jwt.per_second,
            "SVIDs/s",
            Target::None,
            &format!(
                "agent API over mTLS, {JWT_BATCH_CONCURRENCY} batches of {} requests in flight",
                mint::BATCH
            ),
        ),
        Figure::new(
            "mint: JWT server cores used",
            jwt.cores_used,
            "cores",
            Target::None,
            &format!(
                "sigil-server CPU seconds / wall seconds over the window; the bench client used \
                 {:.2} cores",
                jwt.client_cores_used
            ),
        ),
        Figure::new(
            "mint: JWT / (raw sign x cores used)",
            ratio(jwt.per_second, raw.p256_sign * jwt.cores_used),
            "ratio",
            Target::AtLeast(0.7),
            "JWT-SVIDs/s over raw ring P-256 sign/s per core x server cores used",
        ),
        Figure::new(
            "mint: JWT-SVIDs/s (MintJWTSVID)",
            jwt_unary.per_second,
            "SVIDs/s",
            Target::None,
            &format!(
                "agent API over mTLS, {JWT_CONCURRENCY} unary calls in flight; the server used \
                 {:.2} cores (ratio {:.2})",
                jwt_unary.cores_used,
                ratio(jwt_unary.per_second, raw.p256_sign * jwt_unary.cores_used)
            ),
        ),
    ]);
    Ok(x509.per_second)
}

async fn cfssl_figures(
    size: &Size,
    csrs: &[Vec<u8>],
    sigil_x509: f64,
) -> anyhow::Result<Vec<Figure>> {
    const SIGNS: &str = "cfssl: signs/s (8 HTTP clients)";
    const CORES: &str = "cfssl: cores used";
    const RATIO: &str = "Sigil X.509 mint / cfssl";
    if !cfssl::available() {
        let why = "cfssl is not installed (apt-get install golang-cfssl)";
        eprintln!("sigil-bench: {why}: skipping the cfssl rows");
        return Ok(vec![
            Figure::skipped(SIGNS, "signs/s", Target::None, why),
            Figure::skipped(CORES, "cores", Target::None, why),
            Figure::skipped(RATIO, "ratio", Target::None, why),
        ]);
    }
    eprintln!("sigil-bench: cfssl");
    let rate = cfssl::measure(csrs, CFSSL_CONCURRENCY, size.mint_window).await?;
    Ok(vec![
        Figure::new(
            SIGNS,
            rate.per_second,
            "signs/s",
            Target::None,
            "cfssl serve, P-256 CA, POST /api/v1/cfssl/sign, keep-alive HTTP/1.1",
        ),
        Figure::new(
            CORES,
            rate.cores_used,
            "cores",
            Target::None,
            "cfssl CPU seconds / wall seconds over the window",
        ),
        Figure::new(
            RATIO,
            ratio(sigil_x509, rate.per_second),
            "ratio",
            Target::None,
            "the issue expects X.509 minting several times ahead of cfssl",
        ),
    ])
}

/// Workload API latency at 1, 10 and 100 clients, FetchJWTSVID latency, and propagation.
async fn workload_figures(size: &Size) -> anyhow::Result<Vec<Figure>> {
    eprintln!("sigil-bench: Workload API latency");
    let server = procs::start_server().await?;
    let (token, agent_id) = procs::join_token(&server).await?;
    mint::register(&server, &agent_id, "workload", 1, |_| {
        workload::uid_selector()
    })
    .await?;
    let (agent, _ready) = procs::start_agent(&server, &token).await?;
    workload::wait_for_svids(&agent.socket, 1).await?;
    let mut figures = Vec::new();
    let agent_pid = procs::agent_pid(&agent)?;
    for clients in [1, 10, 100] {
        let load =
            workload::x509_latency(&agent.socket, agent_pid, clients, size.latency_window).await?;
        let mut samples = load.samples.clone();
        let target = if clients == 100 {
            Target::Below(2.0)
        } else {
            Target::None
        };
        figures.extend(latency_figures(
            &format!(
                "FetchX509SVID, {clients} client{}",
                if clients == 1 { "" } else { "s" }
            ),
            &mut samples,
            target,
            "one-shot: open the stream, read the first response; cached SVID",
        )?);
        if clients == 100 {
            figures.extend(workload::cpu_figures("FetchX509SVID", clients, &load));
        }
    }
    let load =
        workload::jwt_latency(&agent.socket, agent_pid, JWT_CLIENTS, size.latency_window).await?;
    let mut samples = load.samples;
    figures.extend(latency_figures(
        "FetchJWTSVID, 10 clients",
        &mut samples,
        Target::None,
        "audience `bench`; the first call of each client (not counted) fills the cache",
    )?);
    eprintln!("sigil-bench: propagation");
    let mut samples =
        workload::propagation(&server, &agent.socket, &agent_id, size.propagation_entries).await?;
    figures.extend(latency_figures(
        &format!("propagation, {} entries", samples.len()),
        &mut samples,
        Target::Below(PROPAGATION_P99_MS),
        "BatchCreateEntry acknowledged -> a streaming FetchX509SVID response holds the new SVID",
    )?);
    Ok(figures)
}

/// p50 and p99 rows; `p99_target` applies to the p99 row.
fn latency_figures(
    what: &str,
    samples: &mut [Duration],
    p99_target: Target,
    note: &str,
) -> anyhow::Result<[Figure; 2]> {
    let n = samples.len();
    let p50 = percentile(samples, 50.0).with_context(|| format!("{what}: no samples"))?;
    let p99 = percentile(samples, 99.0).with_context(|| format!("{what}: no samples"))?;
    let note = format!("{note}; {n} calls");
    Ok([
        Figure::new(
            &format!("{what}: p50"),
            millis(p50),
            "ms",
            Target::None,
            &note,
        ),
        Figure::new(
            &format!("{what}: p99"),
            millis(p99),
            "ms",
            p99_target,
            &note,
        ),
    ])
}

fn ratio(a: f64, b: f64) -> f64 {
    if b > 0.0 { a / b } else { f64::NAN }
}

/// What the figures were measured on.
fn machine(profile_dir: &std::path::Path) -> Machine {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown".into());
    let load_average = std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().map(str::to_owned))
        .unwrap_or_else(|| "unknown".into());
    Machine {
        cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
        cpu,
        profile: profile_dir
            .file_name()
            .map_or_else(|| "unknown".into(), |n| n.to_string_lossy().into_owned()),
        load_average,
    }
}
