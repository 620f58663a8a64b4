//! `sigil-bench spire`: SPIRE (v1.13.3, built by `scripts/spire-peer.sh`) and Sigil measured
//! side by side in one run, the same workload driven through each system's own CLI, agent and
//! Workload API socket by the same client code (this process):
//!
//! 1. entries created per second through the CLI (`entry create -data`, 10k entries a file)
//!    and the server's RSS at each size;
//! 2. `entry create` acknowledged -> a streaming FetchX509SVID holds the new SVID;
//! 3. one agent authorized for N entries: time until every SVID is minted, its RSS, the
//!    server's CPU-seconds meanwhile;
//! 4. FetchX509SVID and FetchJWTSVID at 1, 10 and 100 clients: calls per agent CPU-second, p99;
//! 5. server and agent start-up to ready.
//!
//! SPIRE runs twice, with its default full-reload entry cache and with
//! `experimental { events_based_cache = true }`; the Workload API figures (agent-side only)
//! are taken once, with the default. Each row is Sigil's advantage over one SPIRE mode
//! ([`table`]).

mod load;
mod peer;
mod propagation;
mod system;
mod table;

use std::time::{Duration, Instant};

use anyhow::Context as _;

use self::load::{FILE_ENTRIES, Parents};
use self::peer::SpireBins;
use self::system::{System, SystemAgent, SystemServer};
use self::table::{Better, Table};
use crate::procs::TRUST_DOMAIN;
use crate::report::Figure;
use crate::scale::count_label;
use crate::stats::{cpu_seconds, millis, percentile, rss_mib};
use crate::workload::{self, Load, wait_for_svids};

/// A system's whole entry load (every size together) stops after this long; its rows then
/// say how far it got.
const LOAD_CAP: Duration = Duration::from_secs(600);
/// How long an agent may take to hold an SVID for every entry it is authorized for.
const MINT_TIMEOUT: Duration = Duration::from_secs(600);
/// Workload API clients in turn.
const CLIENTS: [usize; 3] = [1, 10, 100];

#[derive(Clone, Debug)]
pub struct SpireSize {
    /// The server is loaded to each of these sizes in turn (within [`LOAD_CAP`]).
    pub loads: Vec<usize>,
    /// One agent is authorized for each of these entry counts (the first entries of the load).
    pub agents: Vec<usize>,
    /// Entries whose propagation is timed.
    pub propagation: usize,
    /// Each Workload API figure is timed this long.
    pub latency_window: Duration,
}

/// Every comparison row, or none (after one "SKIPPED" line) when SPIRE is not built.
pub(crate) async fn run(size: &SpireSize) -> anyhow::Result<Vec<Figure>> {
    let Some(bins) = SpireBins::find() else {
        return Ok(Vec::new());
    };
    let mut table = Table::default();
    for system in [System::Sigil, System::Spire, System::SpireEvents] {
        eprintln!("sigil-bench: SPIRE comparison: {}", system.label());
        measure(system, size, &bins, &mut table)
            .await
            .with_context(|| format!("measuring {}", system.label()))?;
    }
    Ok(table.figures(issue_target))
}

/// Issue 20's targets (§4): Sigil ahead on every row; at least 3x on the time until a 10k-entry
/// agent holds every SVID, on Workload API calls per agent CPU-second and on server RSS at
/// 100k entries; propagation p99 at least 50x lower.
fn issue_target(metric: &str) -> f64 {
    if metric.starts_with("agent with 10k entries: every SVID held")
        || metric.ends_with("calls per agent CPU-second")
        || metric == "server RSS at 100k entries"
    {
        3.0
    } else if metric == "propagation p99" {
        50.0
    } else {
        1.0
    }
}

async fn measure(
    system: System,
    size: &SpireSize,
    bins: &SpireBins,
    table: &mut Table,
) -> anyhow::Result<()> {
    let (server, startup) = SystemServer::start(system, bins).await?;
    table.put(
        system,
        "server start-up",
        "ms",
        Better::Lower,
        "exec until ready, empty SQLite datastore (Sigil: the admin API answers Health; SPIRE: \
         its health listener's /ready answers 200)",
        Ok(millis(startup)),
    );
    let mut agents = Vec::new();
    for &n in &size.agents {
        let (token, id) = server.join_token().await?;
        agents.push((token, id, n));
    }
    let parents = Parents {
        agents: agents.iter().map(|(_, id, n)| (id.clone(), *n)).collect(),
    };
    load_entries(system, &server, size, &parents, table).await?;
    for (token, _, n) in &agents {
        mint_all(system, &server, token, *n, table).await?;
    }

    // The workload agent: this process is its workload (one entry, then the propagated ones).
    let (token, agent_id) = server.join_token().await?;
    let uid = format!("unix:uid:{}", nix::unistd::getuid().as_raw());
    let workload_id = format!("spiffe://{TRUST_DOMAIN}/bench/spire-workload");
    load::entry_create(
        &server.cli(),
        server.socket(),
        &[
            "-parentID",
            &agent_id,
            "-spiffeID",
            &workload_id,
            "-selector",
            &uid,
        ],
    )
    .await?;
    let (agent, ready) = server.start_agent(&token, 1).await?;
    table.put(
        system,
        "agent start-up",
        "ms",
        Better::Lower,
        "exec until the agent's /ready answers 200 (join-token attestation, first sync)",
        Ok(millis(ready)),
    );
    wait_for_svids(agent.socket(), 1).await?;
    if system != System::SpireEvents {
        workload_api(system, &agent, size.latency_window, table).await?;
    }
    let mut samples = propagation::measure(
        &server.cli(),
        server.socket(),
        agent.socket(),
        &agent_id,
        size.propagation,
    )
    .await?;
    let how = format!(
        "`entry create` (CLI) exit -> a FetchX509SVID stream opened before holds the SVID; {} \
         entries, the next created once the last arrived or after {} ms",
        samples.len(),
        propagation::SPACING.as_millis()
    );
    for p in [50.0, 99.0] {
        let v = percentile(&mut samples, p).context("no propagation samples")?;
        table.put(
            system,
            &format!("propagation p{p:.0}"),
            "ms",
            Better::Lower,
            &how,
            Ok(millis(v)),
        );
    }
    Ok(())
}

/// Loads the server to each size through its CLI (`entry create -data`, [`FILE_ENTRIES`] a
/// file, files written before their call's clock starts) until [`LOAD_CAP`] is spent.
async fn load_entries(
    system: System,
    server: &SystemServer,
    size: &SpireSize,
    parents: &Parents,
    table: &mut Table,
) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("entries.json");
    let file_arg = file.to_str().context("temp path is not UTF-8")?;
    let cli = server.cli();
    let (mut loaded, mut spent) = (0, Duration::ZERO);
    for &target in &size.loads {
        let (rate, rss) = if spent >= LOAD_CAP {
            let why = format!(
                "not attempted: {loaded} entries took the whole {} s load limit",
                LOAD_CAP.as_secs()
            );
            (Err(why.clone()), Err(why))
        } else {
            let (from, before) = (loaded, spent);
            while loaded < target && spent < LOAD_CAP {
                let end = target.min(loaded + FILE_ENTRIES);
                load::write_file(&file, loaded, end, parents)?;
                spent += load::entry_create(&cli, server.socket(), &["-data", file_arg])
                    .await
                    .with_context(|| format!("creating entries {loaded}..{end}"))?;
                loaded = end;
            }
            let rate = (loaded - from) as f64 / (spent - before).as_secs_f64();
            tokio::time::sleep(RSS_SETTLE).await;
            let rss = rss_mib(server.pid()?)?;
            eprintln!(
                "sigil-bench: {}: {loaded} entries, {rate:.0}/s, server RSS {rss:.0} MiB",
                system.label()
            );
            if loaded >= target {
                (Ok(rate), Ok(rss))
            } else {
                let short = format!(
                    "reached {loaded} entries within the {} s load limit ({rate:.0} entries/s, \
                     RSS {rss:.0} MiB)",
                    LOAD_CAP.as_secs()
                );
                (Err(short.clone()), Err(short))
            }
        };
        let label = count_label(target);
        let how = format!(
            "`entry create -data`, {} entries a file (one BatchCreateEntry), CLI wall time",
            count_label(FILE_ENTRIES)
        );
        let (rate_what, rss_what) = (
            format!("entries created/s, to {label}"),
            format!("server RSS at {label} entries"),
        );
        table.put(system, &rate_what, "entries/s", Better::Higher, &how, rate);
        let how = format!(
            "VmRSS of the server {} s after the load (either may give freed memory back: \
             Sigil trims 1 s after the last admin call, Go's scavenger returns it gradually)",
            RSS_SETTLE.as_secs()
        );
        table.put(system, &rss_what, "MiB", Better::Lower, &how, rss);
    }
    Ok(())
}

/// How long after a load the servers' RSS is read: the same wait for both.
const RSS_SETTLE: Duration = Duration::from_secs(3);

/// Starts an agent authorized for `n` entries and waits until it holds an SVID for each.
async fn mint_all(
    system: System,
    server: &SystemServer,
    token: &str,
    n: usize,
    table: &mut Table,
) -> anyhow::Result<()> {
    let server_pid = server.pid()?;
    let cpu_before = cpu_seconds(server_pid)?;
    let start = Instant::now();
    let (agent, _) = server.start_agent(token, n).await?;
    loop {
        let held = agent.svids_held().await?;
        if held >= n as u64 {
            break;
        }
        anyhow::ensure!(
            start.elapsed() < MINT_TIMEOUT,
            "the agent holds {held} of {n} SVIDs after {MINT_TIMEOUT:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let took = start.elapsed();
    let server_cpu = cpu_seconds(server_pid)? - cpu_before;
    let rss = rss_mib(agent.pid()?)?;
    let label = count_label(n);
    let held = "Sigil: sigil_agent_x509_svids_minted_total; SPIRE: lru_cache_svid_map_size, \
                x509_svid_cache_max_size = max(entries, 1000) so it holds one SVID per entry";
    table.put(
        system,
        &format!("agent with {label} entries: every SVID held"),
        "ms",
        Better::Lower,
        &format!("agent exec until it holds an SVID for every entry ({held})"),
        Ok(millis(took)),
    );
    table.put(
        system,
        &format!("agent with {label} entries: agent RSS"),
        "MiB",
        Better::Lower,
        "VmRSS of the agent holding every SVID",
        Ok(rss),
    );
    table.put(
        system,
        &format!("agent with {label} entries: server CPU"),
        "s",
        Better::Lower,
        "server CPU-seconds (/proc/<pid>/stat) from agent exec until every SVID is held",
        Ok(server_cpu),
    );
    Ok(())
}

/// FetchX509SVID and FetchJWTSVID at each client count: calls per agent CPU-second and p99.
async fn workload_api(
    system: System,
    agent: &SystemAgent,
    window: Duration,
    table: &mut Table,
) -> anyhow::Result<()> {
    let (socket, pid) = (agent.socket(), agent.pid()?);
    for clients in CLIENTS {
        let x509 = workload::x509_latency(socket, pid, clients, window).await?;
        put_load(system, "FetchX509SVID", clients, x509, table)?;
        let jwt = workload::jwt_latency(socket, pid, clients, window).await?;
        put_load(system, "FetchJWTSVID", clients, jwt, table)?;
    }
    Ok(())
}

fn put_load(
    system: System,
    call: &str,
    clients: usize,
    mut load: Load,
    table: &mut Table,
) -> anyhow::Result<()> {
    let what = if call == "FetchX509SVID" {
        "one-shot: open the stream, read the first response"
    } else {
        "audience `bench`, cached by the agent after each client's first call"
    };
    let how = format!(
        "closed loop, {clients} connection(s) each repeating the call ({what}), the first call \
         of each not counted; {} calls",
        load.samples.len()
    );
    let clients = match clients {
        1 => "1 client".to_owned(),
        n => format!("{n} clients"),
    };
    let per_cpu = if load.agent_cpu > 0.0 {
        Ok(load.samples.len() as f64 / load.agent_cpu)
    } else {
        Err("the agent used no measurable CPU (10 ms ticks)".to_owned())
    };
    table.put(
        system,
        &format!("{call}, {clients}: calls per agent CPU-second"),
        "calls/CPU-s",
        Better::Higher,
        &how,
        per_cpu,
    );
    let p99 = percentile(&mut load.samples, 99.0).with_context(|| format!("{call}: no calls"))?;
    table.put(
        system,
        &format!("{call}, {clients}: p99"),
        "ms",
        Better::Lower,
        &how,
        Ok(millis(p99)),
    );
    Ok(())
}
