//! No size cliffs (issue #6 item 3): a server bulk-loaded with 100k entries through the admin
//! API lists them all through the real CLI (text and JSON) in bounded memory; an agent
//! authorized for 10k entries syncs and mints them all; the admin API's message limit refuses
//! an oversized request with a clear error.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use sigil_proto::limits::{ADMIN_API_MAX_MESSAGE, MAX_ENTRY_BYTES};
use sigil_proto::sigil::admin::v1 as admin;
use sigil_proto::sigil::admin::v1::admin_client::AdminClient;
use sigil_proto::sigil::common::v1 as common;
use sigil_testkit::net::counter_sum;
use sigil_testkit::rt;
use sigil_testkit::{Server, ServerOptions, attested_agent, http_get, server_bin, wait_for};
use tonic::transport::Channel;

/// Entries per `BatchCreateEntry` while loading.
const LOAD_BATCH: usize = 10_000;
/// Bound on the CLI's peak RSS while listing: one page at a time, whatever the total.
const CLI_RSS_LIMIT_KIB: u64 = 64 * 1024;

/// An admin client allowed to send up to `max_send` bytes (to reach the server's limit).
async fn admin_client(socket: &Path, max_send: usize) -> AdminClient<Channel> {
    sigil_testkit::admin::admin_client(socket)
        .await
        .unwrap()
        .max_encoding_message_size(max_send)
}

fn entry(
    spiffe_id: String,
    parent: &str,
    selectors: &[(&str, String)],
) -> common::RegistrationEntry {
    common::RegistrationEntry {
        spiffe_id,
        parent_id: parent.to_owned(),
        selectors: selectors
            .iter()
            .map(|(t, v)| common::Selector {
                r#type: (*t).to_owned(),
                value: v.clone(),
            })
            .collect(),
        ..Default::default()
    }
}

/// Creates `count` entries, `LOAD_BATCH` per call, entry `i` built by `make(i)`.
fn bulk_load(server: &Server, count: usize, make: impl Fn(usize) -> common::RegistrationEntry) {
    rt().block_on(async {
        let mut client = admin_client(&server.socket, ADMIN_API_MAX_MESSAGE).await;
        for start in (0..count).step_by(LOAD_BATCH) {
            let entries = (start..count.min(start + LOAD_BATCH)).map(&make).collect();
            client
                .batch_create_entry(admin::BatchCreateEntryRequest { entries })
                .await
                .unwrap();
        }
    });
}

/// Peak RSS (VmHWM, KiB) of a live process, if it is still there.
fn peak_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Runs the server CLI with stdout into `out`; returns the highest peak RSS (KiB) seen while
/// it ran. VmHWM only grows, so the last reading before exit is the peak up to then.
fn cli_to_file(server: &Server, args: &[&str], out: &Path) -> u64 {
    let mut child = Command::new(server_bin())
        .args(args)
        .arg("-socketPath")
        .arg(&server.socket)
        .stdout(File::create(out).unwrap())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut peak = 0;
    loop {
        if let Some(kib) = peak_rss_kib(child.id()) {
            peak = peak.max(kib);
        }
        if let Some(status) = child.try_wait().unwrap() {
            assert!(status.success(), "sigil-server {args:?}: {status}");
            return peak;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn lines_starting(path: &Path, prefix: &str) -> usize {
    BufReader::new(File::open(path).unwrap())
        .lines()
        .filter(|l| l.as_ref().unwrap().starts_with(prefix))
        .count()
}

#[test]
fn cli_lists_100k_entries_in_bounded_memory() {
    const COUNT: usize = 100_000;
    let server = Server::start(ServerOptions::default());
    let parent = format!("spiffe://{}/node", server.options.trust_domain);
    let td = server.options.trust_domain.clone();
    bulk_load(&server, COUNT, |i| {
        entry(
            format!("spiffe://{td}/w/{i}"),
            &parent,
            &[
                ("unix", format!("uid:{i}")),
                ("k8s", format!("ns:{}", i % 10)),
            ],
        )
    });
    let count = server.cli_json(&["entry", "count"]);
    assert_eq!(count["count"], COUNT as u64);
    // One INFO line per batch, not per entry.
    let log = server.log();
    // The level may be wrapped in colour codes.
    let info = |what: &str| {
        log.lines()
            .filter(|l| l.contains("INFO") && l.contains(what))
            .count()
    };
    assert_eq!(info("registration entries created"), COUNT / LOAD_BATCH);
    assert_eq!(info("entry created"), 0, "per-entry lines are DEBUG only");

    let dir = tempfile::tempdir().unwrap();
    let text: PathBuf = dir.path().join("show.txt");
    let rss = cli_to_file(&server, &["entry", "show"], &text);
    assert_eq!(lines_starting(&text, "Entry ID "), COUNT);
    assert!(
        rss > 0 && rss < CLI_RSS_LIMIT_KIB,
        "text listing peak RSS {rss} KiB"
    );

    let json_path = dir.path().join("show.json");
    let rss = cli_to_file(&server, &["entry", "show", "-output", "json"], &json_path);
    assert!(
        rss > 0 && rss < CLI_RSS_LIMIT_KIB,
        "JSON listing peak RSS {rss} KiB"
    );
    let listed: serde_json::Value =
        serde_json::from_reader(BufReader::new(File::open(&json_path).unwrap())).unwrap();
    let listed = listed["entries"]
        .as_array()
        .expect("SPIRE's ListEntriesResponse");
    assert_eq!(listed.len(), COUNT);
    let mut ids: Vec<&str> = listed.iter().map(|e| e["id"].as_str().unwrap()).collect();
    ids.dedup();
    assert_eq!(ids.len(), COUNT, "every entry once, in ID order");

    // With a selector filter matching a tenth of them: paged the same way.
    let tenth = dir.path().join("tenth.txt");
    let rss = cli_to_file(&server, &["entry", "show", "-selector", "k8s:ns:1"], &tenth);
    assert_eq!(lines_starting(&tenth, "Entry ID "), COUNT / 10);
    assert!(
        rss < CLI_RSS_LIMIT_KIB,
        "filtered listing peak RSS {rss} KiB"
    );
}

/// Sum of `sigil_agent_x509_svids_minted_total{result="ok"}` on the agent's `/metrics`.
fn svids_minted(health_port: u16) -> u64 {
    let Some((200, body)) = http_get(health_port, "/metrics") else {
        return 0;
    };
    counter_sum(&body, "sigil_agent_x509_svids_minted_total", "\"ok\"")
}

#[test]
fn agent_syncs_and_mints_10k_entries() {
    const COUNT: usize = 10_000;
    let server = Server::start(ServerOptions::default());
    let (mut agent, agent_id) = attested_agent(&server, false);
    let td = server.options.trust_domain.clone();
    bulk_load(&server, COUNT, |i| {
        entry(
            format!("spiffe://{td}/svc/{i}"),
            &agent_id,
            &[("unix", format!("uid:{}", 100_000 + i))],
        )
    });
    // 10k entries are 20 sync pages or more: the agent applies them all and mints each one.
    let minted = wait_for("10k SVIDs minted", Duration::from_secs(240), || {
        let n = svids_minted(agent.health_port);
        (n >= COUNT as u64).then_some(n)
    });
    assert_eq!(minted, COUNT as u64, "one SVID per entry");
    let log = agent.log();
    assert!(!log.contains("message length too large"), "{log}");
    agent.stop();
}

#[test]
fn admin_message_limits_refuse_clearly() {
    let server = Server::start(ServerOptions::default());
    let parent = format!("spiffe://{}/node", server.options.trust_domain);
    let td = server.options.trust_domain.clone();
    rt().block_on(async {
        let mut client = admin_client(&server.socket, 2 * ADMIN_API_MAX_MESSAGE).await;

        // One entry just over the entry limit: refused by name, while one at it is taken.
        let sized = |value_len: usize| {
            entry(
                format!("spiffe://{td}/big"),
                &parent,
                &[("unix", "uid:1".to_owned()), ("big", "v".repeat(value_len))],
            )
        };
        let mut n = MAX_ENTRY_BYTES - prost::Message::encoded_len(&sized(0));
        let at_limit = loop {
            let e = sized(n);
            let len = prost::Message::encoded_len(&e);
            if len == MAX_ENTRY_BYTES {
                break e;
            }
            // Length prefixes grow a byte at a time; step until the size lands on the limit.
            n = n + MAX_ENTRY_BYTES - len;
        };
        let over = sized(n + 1);
        assert_eq!(prost::Message::encoded_len(&over), MAX_ENTRY_BYTES + 1);
        let err = client
            .batch_create_entry(admin::BatchCreateEntryRequest {
                entries: vec![over],
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err}");
        assert!(err.message().contains("bytes"), "{err}");
        client
            .batch_create_entry(admin::BatchCreateEntryRequest {
                entries: vec![at_limit],
            })
            .await
            .unwrap();

        // A request over the message limit: refused before it is decoded, saying why.
        let fat = entry(
            format!("spiffe://{td}/fat"),
            &parent,
            &[("unix", "uid:2".to_owned())],
        );
        let per = MAX_ENTRY_BYTES / 2;
        let entries: Vec<_> = (0..ADMIN_API_MAX_MESSAGE / per + 1)
            .map(|_| common::RegistrationEntry {
                hint: "x".repeat(per),
                ..fat.clone()
            })
            .collect();
        let err = client
            .batch_create_entry(admin::BatchCreateEntryRequest { entries })
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::OutOfRange, "{err}");
        assert!(err.message().contains("too large"), "{err}");
        // Nothing was created, and the server still serves.
        let count = client
            .count_entries(admin::CountEntriesRequest::default())
            .await
            .unwrap()
            .into_inner()
            .count;
        assert_eq!(count, 1);
    });
}
