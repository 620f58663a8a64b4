//! The web console at scale (issue 22): `entries` registration entries loaded through the
//! admin API, then the console's entries page loaded over HTTP on loopback (the first page
//! and the count of all entries: what an operator opening the page waits for) and searched
//! by SPIFFE ID prefix, selector, parent ID and hint. Search times are the server's own
//! (`Server-Timing: search;dur=`: the datastore queries behind the page).

use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use sigil_proto::sigil::admin::v1 as admin;
use sigil_testkit::free_port;
use sigil_testkit::net::http_exchange;

use crate::mint::{entry, selector};
use crate::procs::{self, TRUST_DOMAIN};
use crate::report::{Figure, Target};
use crate::stats::{millis, percentile};

/// Entries per `BatchCreateEntry` while loading.
const LOAD_BATCH: usize = 10_000;
/// Issue 22's bound on a search, server-side, p99.
pub(crate) const SEARCH_P99_MS: f64 = 50.0;
/// Parents (node aliases) the entries are spread over, and hints.
const PARENTS: usize = 100;

/// How big the run is.
#[derive(Clone, Debug)]
pub struct ConsoleSize {
    pub entries: usize,
    /// Page loads and searches of each kind timed.
    pub requests: usize,
}

/// The query string of request `i` of one kind of search.
type Query = Box<dyn Fn(usize) -> String>;

/// The searches, by kind.
fn searches(entries: usize) -> [(&'static str, Query); 4] {
    [
        (
            "SPIFFE ID prefix",
            Box::new(move |i| {
                let j = (i * 7919) % entries;
                format!(
                    "q=spiffe%3A%2F%2F{TRUST_DOMAIN}%2Fconsole%2Fns{}%2Fsvc{j}",
                    j % PARENTS
                )
            }),
        ),
        (
            "selector",
            Box::new(move |i| format!("selector=k8s%3Apod-name%3Apod-{}", (i * 7919) % entries)),
        ),
        (
            "parent ID",
            Box::new(|i| {
                format!(
                    "parent=spiffe%3A%2F%2F{TRUST_DOMAIN}%2Fconsole%2Fnode{}",
                    i % PARENTS
                )
            }),
        ),
        ("hint", Box::new(|i| format!("hint=hint-{}", i % PARENTS))),
    ]
}

/// One timed GET: the client's wall time and the server's `Server-Timing` search time.
fn get(port: u16, auth: &str, path: &str) -> anyhow::Result<(Duration, Duration, String)> {
    let started = Instant::now();
    let (status, head, body) = http_exchange(port, "GET", path, &[("Authorization", auth)])
        .with_context(|| format!("GET {path}"))?;
    let took = started.elapsed();
    anyhow::ensure!(status == 200, "GET {path}: HTTP {status}");
    let server = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("server-timing: search;dur=")
                .and_then(|v| v.trim().parse::<f64>().ok())
        })
        .context("no Server-Timing in the response")?;
    Ok((took, Duration::from_secs_f64(server / 1000.0), body))
}

fn p99(samples: &mut [Duration]) -> f64 {
    percentile(samples, 99.0).map_or(f64::NAN, millis)
}

pub(crate) async fn run(size: &ConsoleSize) -> anyhow::Result<Vec<Figure>> {
    let dir = tempfile::tempdir()?;
    let token = format!("{:064x}", rand::random::<u128>());
    let token_file = dir.path().join("console.token");
    std::fs::write(&token_file, &token)?;
    std::fs::set_permissions(&token_file, std::fs::Permissions::from_mode(0o600))?;
    let port = free_port();
    let server = procs::start_server_with_server_block(format!(
        "console {{\n bind_port = {port}\n token_file = \"{}\"\n}}\n",
        token_file.display()
    ))
    .await?;
    let mut admin = procs::admin_client(&server).await?;
    let loaded = Instant::now();
    for start in (0..size.entries).step_by(LOAD_BATCH) {
        let entries = (start..size.entries.min(start + LOAD_BATCH))
            .map(|i| {
                let mut e = entry(
                    &format!("/console/ns{}/svc{i}", i % PARENTS),
                    &format!("spiffe://{TRUST_DOMAIN}/console/node{}", i % PARENTS),
                    vec![
                        selector("k8s", format!("ns:ns{}", i % PARENTS)),
                        selector("k8s", format!("pod-name:pod-{i}")),
                    ],
                );
                e.hint = format!("hint-{}", i % PARENTS);
                e
            })
            .collect();
        admin
            .batch_create_entry(admin::BatchCreateEntryRequest { entries })
            .await
            .context("loading entries")?;
    }
    eprintln!(
        "sigil-bench: console: {} entries loaded in {:.1} s",
        size.entries,
        loaded.elapsed().as_secs_f64()
    );
    let (requests, entries) = (size.requests, size.entries);
    let auth = format!("Bearer {token}");
    let figures = tokio::task::spawn_blocking(move || -> anyhow::Result<Vec<Figure>> {
        let mut page = Vec::with_capacity(requests);
        for _ in 0..requests {
            let (took, _, body) = get(port, &auth, "/entries")?;
            anyhow::ensure!(
                body.contains(&format!("<span id=\"entry-total\">{entries}</span> matching entries")),
                "the page counts every entry"
            );
            page.push(took);
        }
        let mut figures = vec![Figure::new(
            &format!("console: entries page load, {entries} entries, p99"),
            p99(&mut page),
            "ms",
            Target::None,
            "GET /entries over loopback HTTP (first page of 50 + the count of all entries), whole response, client side",
        )];
        let mut all = Vec::new();
        for (kind, query) in searches(entries) {
            let mut server = Vec::with_capacity(requests);
            for i in 0..requests {
                let (_, search, body) = get(port, &auth, &format!("/entries?{}", query(i)))?;
                anyhow::ensure!(body.contains("data-entry-id"), "search {kind} {i} found nothing");
                server.push(search);
            }
            all.extend(server.iter().copied());
            figures.push(Figure::new(
                &format!("console: search by {kind}, {entries} entries, p99 server-side"),
                p99(&mut server),
                "ms",
                Target::Below(SEARCH_P99_MS),
                "Server-Timing: the datastore queries behind the page (page of 50 + count)",
            ));
        }
        figures.push(Figure::new(
            &format!("console: every search, {entries} entries, p99 server-side"),
            p99(&mut all),
            "ms",
            Target::Below(SEARCH_P99_MS),
            "all four kinds together",
        ));
        Ok(figures)
    })
    .await??;
    drop(server);
    Ok(figures)
}
