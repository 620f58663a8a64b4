//! Pruning at scale (issue #7 item 5): `stale` expired registration entries, as many expired
//! attested nodes and as many expired join tokens are pruned by the server's scheduled run
//! while this process, as an agent, keeps creating an entry parented to itself and waiting
//! for it on its SyncEntries stream. Figures: the prune run's time (from the server's INFO
//! line), and create / create-to-sync latency p99 during that run against idle.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use sigil_proto::sigil::admin::v1 as admin;
use sigil_proto::sigil::agent::v1 as agentpb;
use sigil_testkit::{sqlite3, unix_now};

use crate::PROPAGATION_P99_MS;
use crate::mint::{BenchAgent, entry, selector};
use crate::procs::{self, TRUST_DOMAIN};
use crate::report::{Figure, Target};
use crate::stats::{millis, percentile};

/// Entries per `BatchCreateEntry` while loading.
const LOAD_BATCH: usize = 10_000;
/// The stale rows expire this long after the restarted server's start-up prune run, and its
/// next run (30 s after start) prunes them all at once.
const EXPIRE_AFTER_START: Duration = Duration::from_secs(12);
/// Longest wait for the prune run's INFO line.
const PRUNE_TIMEOUT: Duration = Duration::from_secs(300);

/// One create: its latency and the time until it arrived on the sync stream.
struct Sample {
    started: Instant,
    create: Duration,
    sync: Duration,
}

/// `elapsed_ms` of the first "pruned stale rows" line with `entries=<stale>` or more.
fn prune_run_ms(log: &str) -> Option<u64> {
    strip_ansi(log)
        .lines()
        .filter(|l| l.contains("pruned stale rows"))
        .find_map(|l| {
            let field = |name: &str| -> Option<u64> {
                let at = l.find(&format!("{name}="))? + name.len() + 1;
                l[at..]
                    .split(|c: char| !c.is_ascii_digit())
                    .next()?
                    .parse()
                    .ok()
            };
            (field("entries")? > 0)
                .then(|| field("elapsed_ms"))
                .flatten()
        })
}

/// The log without ANSI colour sequences (`ESC [ ... m`), which the server may write.
fn strip_ansi(log: &str) -> String {
    let mut out = String::with_capacity(log.len());
    let mut chars = log.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c == 'm' {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

pub(crate) async fn run(stale: usize) -> anyhow::Result<Vec<Figure>> {
    let mut server = procs::start_server().await?;
    let db = server.db_path();
    let mut admin = procs::admin_client(&server).await?;
    for start in (0..stale).step_by(LOAD_BATCH) {
        let entries = (start..stale.min(start + LOAD_BATCH))
            .map(|i| {
                entry(
                    &format!("/bench/stale/{i}"),
                    &format!("spiffe://{TRUST_DOMAIN}/bench/node/{}", i % 100),
                    vec![selector("bench", format!("stale:{i}"))],
                )
            })
            .collect();
        admin
            .batch_create_entry(admin::BatchCreateEntryRequest { entries })
            .await
            .context("loading stale entries")?;
    }
    // Expiry and the expired nodes and tokens are written into the file while the server is
    // down: no API makes an expired node or token, and this way all expire at one moment.
    server.stop();
    let expires_at = unix_now() + EXPIRE_AFTER_START.as_secs() as i64;
    sqlite3(
        &db,
        &format!(
            "UPDATE registered_entries SET expires_at = {expires_at} \
             WHERE spiffe_id LIKE 'spiffe://{TRUST_DOMAIN}/bench/stale/%';\n\
             WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {stale}) \
             INSERT INTO attested_nodes (spiffe_id, attestation_type, cert_serial, \
             cert_expires_at, new_cert_serial, banned, created_at, updated_at) \
             SELECT 'spiffe://{TRUST_DOMAIN}/spire/agent/join_token/stale-' || i, 'join_token', \
             '01', {expires_at}, NULL, 0, 0, 0 FROM n;\n\
             WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {stale}) \
             INSERT INTO join_tokens (token_hash, expires_at) \
             SELECT 'stale-' || i, {expires_at} FROM n;"
        ),
    );
    procs::spawn_server(&mut server).await?;
    let expired_at = Instant::now() + EXPIRE_AFTER_START;

    let agent = BenchAgent::attest(&server).await?;
    let mut stream = agent
        .connection
        .client()
        .sync_entries(agentpb::SyncEntriesRequest { since_revision: 0 })
        .await
        .context("SyncEntries")?
        .into_inner();
    let mut admin = procs::admin_client(&server).await?;
    let mut samples = Vec::new();
    let deadline = Instant::now() + EXPIRE_AFTER_START + PRUNE_TIMEOUT;
    let mut prune = None;
    for i in 0.. {
        let started = Instant::now();
        let created = admin
            .batch_create_entry(admin::BatchCreateEntryRequest {
                entries: vec![entry(
                    &format!("/bench/live/{i}"),
                    &agent.agent_id,
                    vec![selector("bench", format!("live:{i}"))],
                )],
            })
            .await
            .context("creating an entry during pruning")?
            .into_inner();
        let create = started.elapsed();
        let id = created
            .entries
            .first()
            .map(|e| e.id.clone())
            .context("no entry created")?;
        loop {
            let msg = tokio::time::timeout(Duration::from_secs(60), stream.message())
                .await
                .context("no sync message within 60 s")??
                .context("sync stream ended")?;
            if msg.upserts.iter().any(|e| e.id == id) {
                break;
            }
        }
        samples.push(Sample {
            started,
            create,
            sync: started.elapsed(),
        });
        if let Some(ms) = prune_run_ms(&server.log()) {
            prune = Some((Instant::now(), Duration::from_millis(ms)));
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "no prune run within {PRUNE_TIMEOUT:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (seen, took) = prune.context("no prune run")?;
    // The run ended before `seen` (at most one sample earlier) and began `took` before that.
    let during_from = seen
        .checked_sub(took + Duration::from_millis(200))
        .unwrap_or(seen);
    let (mut idle_create, mut idle_sync, mut busy_create, mut busy_sync) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for s in &samples {
        if s.started + s.sync < expired_at {
            idle_create.push(s.create);
            idle_sync.push(s.sync);
        } else if s.started + s.sync >= during_from {
            busy_create.push(s.create);
            busy_sync.push(s.sync);
        }
    }
    server.stop();

    let label = if stale >= 1000 {
        format!("{}k", stale / 1000)
    } else {
        stale.to_string()
    };
    let mut figures = vec![Figure::new(
        &format!("prune {label} stale entries + nodes + tokens: run time"),
        took.as_secs_f64(),
        "s",
        Target::None,
        "the server's scheduled prune run (elapsed_ms of its INFO line), batches of one transaction each",
    )];
    for (what, idle, busy) in [
        ("create", &mut idle_create, &mut busy_create),
        ("create-to-sync", &mut idle_sync, &mut busy_sync),
    ] {
        let note = format!(
            "{} samples idle, {} during the prune run (one create at a time, parented to a syncing agent)",
            idle.len(),
            busy.len()
        );
        for (when, samples) in [("idle", idle), ("during prune", busy)] {
            let name = format!("prune {label}: {what} p99, {when}");
            // "Without stalling sync": an entry still reaches the agent within the
            // propagation target (issue #6) while the prune runs.
            let target = if what == "create-to-sync" && when == "during prune" {
                Target::Below(PROPAGATION_P99_MS)
            } else {
                Target::None
            };
            match percentile(samples, 99.0) {
                Some(p) => figures.push(Figure::new(&name, millis(p), "ms", target, &note)),
                None => figures.push(Figure::skipped(
                    &name,
                    "ms",
                    Target::None,
                    "no sample fell in this window (the run was shorter than one create)",
                )),
            }
        }
    }
    Ok(figures)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prune_run_ms_reads_the_info_line_with_entries() {
        let log = "2026-01-01T00:00:00Z  INFO sigil_server::pruning: pruned stale rows entries=0 attested_nodes=3 join_tokens=0 entry_events=0 elapsed_ms=4\n\
                   2026-01-01T00:00:30Z  INFO sigil_server::pruning: pruned stale rows entries=100000 attested_nodes=100000 join_tokens=100000 entry_events=0 elapsed_ms=5321\n";
        assert_eq!(prune_run_ms(log), Some(5321));
        assert_eq!(prune_run_ms("nothing"), None);
        let colored = "\u{1b}[32m INFO\u{1b}[0m pruned stale rows \u{1b}[3mentries\u{1b}[0m\u{1b}[2m=\u{1b}[0m7 \u{1b}[3melapsed_ms\u{1b}[0m\u{1b}[2m=\u{1b}[0m12";
        assert_eq!(prune_run_ms(colored), Some(12));
    }
}
