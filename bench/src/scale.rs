//! Scale: a server batch-loaded through the admin API to each size in turn (load rate, RSS,
//! `entry show` by selector p99, start-up time with that datastore), then an agent authorized
//! for many entries (time to first full sync, time until every SVID is minted, RSS) and an
//! agent whose workload holds many cached SVIDs (RSS).

use std::time::{Duration, Instant};

use anyhow::Context as _;
use rand::Rng as _;
use sigil_proto::sigil::admin::v1 as admin;
use sigil_proto::sigil::common::v1 as common;

use crate::mint::{entry, register, selector};
use crate::procs::{self, TRUST_DOMAIN};
use crate::report::{Figure, Target};
use crate::stats::{self, millis, percentile};
use crate::workload::{uid_selector, wait_for_svids};

/// Entries per `BatchCreateEntry` while loading.
const LOAD_BATCH: usize = 10_000;
/// How long an agent may take to mint every SVID it is authorized for.
const MINT_ALL_TIMEOUT: Duration = Duration::from_secs(600);

#[derive(Clone, Debug)]
pub struct ScaleSize {
    /// The server is loaded to each of these sizes in turn.
    pub entries: Vec<usize>,
    /// Entries of the first size parented to the big agent.
    pub agent_entries: usize,
    /// SVIDs the second agent's workload (this process) holds.
    pub cached_svids: usize,
    /// `ListEntries` by selector calls per size.
    pub queries: usize,
}

/// Entry `i` of the load: one selector unique to it (`bench:id:<i>`) and one shared by a
/// thousandth of the entries; the first `agent_entries` are parented to the big agent.
fn load_entry(i: usize, agent_entries: usize, agent_id: &str) -> common::RegistrationEntry {
    let parent = if i < agent_entries {
        agent_id.to_owned()
    } else {
        format!("spiffe://{TRUST_DOMAIN}/bench/node/{}", i % 100)
    };
    entry(
        &format!("/bench/scale/{i}"),
        &parent,
        vec![
            selector("bench", format!("id:{i}")),
            selector("bench", format!("group:{}", i % 1000)),
        ],
    )
}

pub(crate) async fn run(size: &ScaleSize) -> anyhow::Result<Vec<Figure>> {
    let mut figures = Vec::new();
    let mut server = procs::start_server().await?;
    let (big_token, big_id) = procs::join_token(&server).await?;
    let (cache_token, cache_id) = procs::join_token(&server).await?;
    let mut loaded = 0;
    for &target in &size.entries {
        let label = count_label(target);
        let mut admin = procs::admin_client(&server).await?;
        let from = loaded;
        let start = Instant::now();
        while loaded < target {
            let end = target.min(loaded + LOAD_BATCH);
            let entries = (loaded..end)
                .map(|i| load_entry(i, size.agent_entries, &big_id))
                .collect();
            admin
                .batch_create_entry(admin::BatchCreateEntryRequest { entries })
                .await
                .with_context(|| format!("loading entries {loaded}..{end}"))?;
            loaded = end;
        }
        let rate = (target - from) as f64 / start.elapsed().as_secs_f64();
        figures.push(Figure::new(
            &format!("scale {label}: load rate"),
            rate,
            "entries/s",
            Target::None,
            "admin BatchCreateEntry, 10,000 entries per call, one caller",
        ));
        let target_rss = (target >= 1_000_000).then_some(Target::Below(1024.0));
        figures.push(Figure::new(
            &format!("scale {label}: server RSS"),
            stats::rss_mib(procs::server_pid(&server)?)?,
            "MiB",
            target_rss.unwrap_or(Target::None),
            "VmRSS of sigil-server after the load",
        ));
        let mut samples = Vec::with_capacity(size.queries);
        for _ in 0..size.queries {
            let i = rand::rng().random_range(0..target);
            let filter = admin::EntryFilter {
                by_selectors: vec![selector("bench", format!("id:{i}"))],
                selector_match: admin::SelectorMatch::Superset as i32,
                ..Default::default()
            };
            let start = Instant::now();
            let found = admin
                .list_entries(admin::ListEntriesRequest {
                    filter: Some(filter),
                    page_size: 0,
                    page_token: String::new(),
                })
                .await
                .context("ListEntries by selector")?
                .into_inner()
                .entries
                .len();
            samples.push(start.elapsed());
            anyhow::ensure!(
                found == 1,
                "ListEntries by bench:id:{i} found {found} entries"
            );
        }
        let p99 = percentile(&mut samples, 99.0).context("no queries")?;
        figures.push(Figure::new(
            &format!("scale {label}: entry show by selector p99"),
            millis(p99),
            "ms",
            if target >= 1_000_000 {
                Target::Below(50.0)
            } else {
                Target::None
            },
            "admin ListEntries, filter by one selector (superset match), sequential calls",
        ));
        for json in [false, true] {
            let (took, peak_mib) = cli_show_all(&server.socket, json, target).await?;
            let how = if json { "json" } else { "text" };
            figures.push(Figure::new(
                &format!("scale {label}: entry show all ({how})"),
                millis(took),
                "ms",
                Target::None,
                &format!(
                    "sigil-server entry show{}, every entry, output read to the end",
                    if json { " -output json" } else { "" }
                ),
            ));
            figures.push(Figure::new(
                &format!("scale {label}: entry show all ({how}) CLI peak RSS"),
                peak_mib,
                "MiB",
                Target::Below(64.0),
                "VmHWM of the CLI process, sampled every 5 ms until it exits",
            ));
        }
        server.stop();
        let startup = procs::spawn_server(&mut server).await?;
        figures.push(Figure::new(
            &format!("scale {label}: server start-up"),
            millis(startup),
            "ms",
            Target::None,
            "exec until the admin API answers Health, with this datastore",
        ));
    }

    // The big agent: authorized for the first `agent_entries` entries.
    let (mut big, ready) = procs::start_agent(&server, &big_token).await?;
    let agent_label = count_label(size.agent_entries);
    figures.push(Figure::new(
        &format!("agent {agent_label} entries: initial sync"),
        millis(ready),
        "ms",
        if size.agent_entries >= 10_000 {
            Target::Below(2000.0)
        } else {
            Target::None
        },
        "exec until /ready (attested, first full sync applied)",
    ));
    let start = Instant::now();
    while procs::svids_minted(&big).await? < size.agent_entries as u64 {
        anyhow::ensure!(
            start.elapsed() < MINT_ALL_TIMEOUT,
            "the agent did not mint {} SVIDs within {MINT_ALL_TIMEOUT:?}",
            size.agent_entries
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    figures.push(Figure::new(
        &format!("agent {agent_label} entries: every SVID minted"),
        millis(ready + start.elapsed()),
        "ms",
        Target::None,
        "exec until sigil_agent_x509_svids_minted_total reaches the entry count",
    ));
    figures.push(Figure::new(
        &format!("agent {agent_label} entries: agent RSS"),
        stats::rss_mib(procs::agent_pid(&big)?)?,
        "MiB",
        Target::None,
        "VmRSS of sigil-agent holding an SVID for every entry",
    ));
    big.stop();

    // The caching agent: this process is its workload, with `cached_svids` identities.
    register(&server, &cache_id, "cached", size.cached_svids, |_| {
        uid_selector()
    })
    .await?;
    let (cache_agent, _) = procs::start_agent(&server, &cache_token).await?;
    let held = wait_for_svids(&cache_agent.socket, size.cached_svids).await?;
    figures.push(Figure::new(
        &format!("agent RSS, {} cached SVIDs", count_label(held)),
        stats::rss_mib(procs::agent_pid(&cache_agent)?)?,
        "MiB",
        if held >= 1000 {
            Target::Below(50.0)
        } else {
            Target::None
        },
        "VmRSS of sigil-agent once this workload's FetchX509SVID holds every SVID",
    ));
    Ok(figures)
}

/// Runs `sigil-server entry show` (all entries, text or JSON) through the real CLI binary;
/// returns its wall time and peak RSS (MiB). The output is counted to check the listing is
/// complete. VmHWM only grows, so its last reading before exit is the peak up to then.
async fn cli_show_all(
    socket: &std::path::Path,
    json: bool,
    expected: usize,
) -> anyhow::Result<(Duration, f64)> {
    let mut cmd = tokio::process::Command::new(sigil_testkit::server_bin());
    cmd.args(["entry", "show", "-socketPath"]).arg(socket);
    if json {
        cmd.args(["-output", "json"]);
    }
    let start = Instant::now();
    let mut child = cmd
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .context("running sigil-server entry show")?;
    let pid = child.id().context("CLI exited at once")?;
    let stdout = child.stdout.take().context("CLI stdout")?;
    // One mark per entry: the text's `Entry ID` line; in JSON (SPIRE's, one line for the whole
    // listing) each entry's `spiffe_id` object. Counted over chunks, so a million entries need
    // no line buffer here.
    let mark: &'static [u8] = if json {
        b"\"spiffe_id\":{"
    } else {
        b"Entry ID "
    };
    let reader = tokio::spawn(async move {
        use tokio::io::AsyncReadExt as _;
        let mut stdout = stdout;
        let (mut listed, mut window) = (0usize, Vec::with_capacity(64 * 1024 + mark.len()));
        let mut chunk = vec![0u8; 64 * 1024];
        loop {
            let n = stdout.read(&mut chunk).await?;
            if n == 0 {
                break;
            }
            window.extend_from_slice(&chunk[..n]);
            listed += window.windows(mark.len()).filter(|w| *w == mark).count();
            // Keep a tail shorter than the mark: a mark split across chunks is counted once.
            let keep = mark.len() - 1;
            window.drain(..window.len().saturating_sub(keep));
        }
        anyhow::Ok(listed)
    });
    let mut peak_kib = 0u64;
    let status = loop {
        if let Some(kib) = peak_rss_kib(pid) {
            peak_kib = peak_kib.max(kib);
        }
        if let Some(status) = child.try_wait()? {
            break status;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    let listed = reader.await??;
    let took = start.elapsed();
    anyhow::ensure!(status.success(), "sigil-server entry show: {status}");
    anyhow::ensure!(
        listed == expected,
        "entry show listed {listed} entries, expected {expected}"
    );
    Ok((took, peak_kib as f64 / 1024.0))
}

/// Peak RSS (VmHWM, KiB) of a live process.
fn peak_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// 1000 -> "1k", 100000 -> "100k", 1000000 -> "1M".
pub(crate) fn count_label(n: usize) -> String {
    if n >= 1_000_000 && n.is_multiple_of(1_000_000) {
        format!("{}M", n / 1_000_000)
    } else if n >= 1000 && n.is_multiple_of(1000) {
        format!("{}k", n / 1000)
    } else {
        n.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels() {
        assert_eq!(count_label(1000), "1k");
        assert_eq!(count_label(100_000), "100k");
        assert_eq!(count_label(1_000_000), "1M");
        assert_eq!(count_label(1234), "1234");
    }

    #[test]
    fn load_entries_split_between_the_agent_and_other_nodes() {
        let agent = "spiffe://bench.example/spire/agent/join_token/t";
        assert_eq!(load_entry(9, 10, agent).parent_id, agent);
        let other = load_entry(10, 10, agent);
        assert_ne!(other.parent_id, agent);
        assert_eq!(other.selectors[0].value, "id:10");
        assert_eq!(other.spiffe_id, "spiffe://bench.example/bench/scale/10");
    }
}
