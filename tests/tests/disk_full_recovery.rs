//! Issue 15 item 2: the server recovers by itself after its datastore's disk was full, with
//! the real binary on a real full filesystem (a 3 MiB tmpfs over its data dir; needs root).
//!
//! While the disk is full: writes fail with a clear error, `healthcheck` and `/ready` say
//! unhealthy, and `localauthority x509 prepare` is refused with nothing changed. Once space
//! returns (the tmpfs grown, no restart): `/ready` and `healthcheck` are healthy again within
//! seconds, and entry create and delete succeed. After a restart, the authorities are what the
//! CLI last reported, and the database passes `PRAGMA integrity_check`.

use std::time::{Duration, Instant};

use sigil_proto::sigil::admin::v1 as admin;
use sigil_testkit::admin::{admin_client, entry_batch};
use sigil_testkit::rt;
use sigil_testkit::tmpfs::Tmpfs;
use sigil_testkit::verify::sqlite_integrity;
use sigil_testkit::{Server, ServerOptions, http_get, wait_for};

/// Creates `size` entries in one call; `Err(status)` as the client saw it.
fn create(server: &Server, load: &str, b: usize, size: usize) -> Result<(), tonic::Status> {
    rt().block_on(async {
        let mut client = admin_client(&server.socket).await.unwrap();
        client
            .batch_create_entry(admin::BatchCreateEntryRequest {
                entries: entry_batch(load, b, size),
            })
            .await
            .map(|_| ())
    })
}

/// Fills the disk: batches of 50 entries until one fails, then single entries until one
/// fails too (so what is left is less than one small write). Returns the last error.
fn fill(server: &Server) -> tonic::Status {
    let started = Instant::now();
    let mut b = 0;
    for size in [50, 1] {
        loop {
            b += 1;
            assert!(
                started.elapsed() < Duration::from_secs(300),
                "3 MiB never filled"
            );
            if let Err(status) = create(server, "fill", b, size) {
                eprintln!(
                    "full after {b} calls ({size} per call): {:?} {}",
                    status.code(),
                    status.message()
                );
                if size == 1 {
                    return status;
                }
                break;
            }
        }
    }
    unreachable!()
}

/// Runs `localauthority <kind> prepare` until the full disk refuses it: each one that
/// succeeds is persisted and shown; the refusal must be clean (the full disk named, "not
/// made", nothing "applied") and change nothing. Returns what `show` reports after it.
fn prepare_until_refused(server: &Server, kind: &str) -> serde_json::Value {
    for round in 0..200 {
        let before = server.cli_json(&["localauthority", kind, "show"]);
        let out = server.cli(&["localauthority", kind, "prepare"]);
        let after = server.cli_json(&["localauthority", kind, "show"]);
        if out.status.success() {
            assert_ne!(
                after, before,
                "{kind} prepare succeeded and changed nothing"
            );
            continue;
        }
        let stderr = String::from_utf8_lossy(&out.stderr).to_lowercase();
        assert!(
            stderr.contains("full") && stderr.contains("not made") && !stderr.contains("applied"),
            "not a clean refusal: {stderr}"
        );
        assert_eq!(after, before, "a refused {kind} prepare half-happened");
        eprintln!("{kind} prepare refused after {round} that fitted: {stderr}");
        return after;
    }
    panic!("{kind} prepare never refused on a full disk");
}

fn healthy(server: &Server) -> bool {
    server.cli(&["healthcheck"]).status.success()
}

fn ready(server: &Server) -> Option<u16> {
    http_get(server.health_port, "/ready").map(|(status, _)| status)
}

fn x509_authorities(server: &Server) -> serde_json::Value {
    server.cli_json(&["localauthority", "x509", "show"])
}

fn entry_id(server: &Server, spiffe_id: &str) -> String {
    let shown = server.cli_json(&["entry", "show", "-spiffeID", spiffe_id]);
    shown["entries"][0]["id"]
        .as_str()
        .unwrap_or_else(|| panic!("no entry {spiffe_id}: {shown}"))
        .to_owned()
}

/// A server on a 3 MiB tmpfs data dir whose keys file lives outside it, so that `prepare`
/// gets its new key and the full disk stops it where it must not half-happen: storing the CA
/// journal. `None` when the tmpfs cannot be mounted (not root).
fn server_with_keys_outside_a_small_tmpfs() -> Option<(Server, Tmpfs)> {
    let mut server = Server::start(ServerOptions::default());
    assert!(server.stop().success());
    let keys = server.dir.path().join("keys.json");
    let conf = std::fs::read_to_string(&server.config).unwrap();
    let data_keys = format!("{}/keys.json", server.data_dir().display());
    assert!(conf.contains(&data_keys), "{conf}");
    std::fs::write(
        &server.config,
        conf.replace(&data_keys, &keys.display().to_string()),
    )
    .unwrap();
    let fs = Tmpfs::mount(&server.data_dir(), "3m")?;
    server.spawn();
    Some((server, fs))
}

#[test]
fn full_disk_is_reported_refused_cleanly_and_recovered_from_without_restart() {
    let Some((mut server, fs)) = server_with_keys_outside_a_small_tmpfs() else {
        return;
    };
    let db = server.db_path();
    server.cli_ok(&[
        "entry",
        "create",
        "-spiffeID",
        "spiffe://example.org/before",
        "-parentID",
        "spiffe://example.org/node",
        "-selector",
        "unix:uid:1",
    ]);
    assert_eq!(ready(&server), Some(200));

    // Full: a clear error, then unhealthy on both health surfaces.
    let err = fill(&server);
    let message = err.message().to_lowercase();
    assert!(
        message.contains("full") || message.contains("space"),
        "not a clear error: {:?} {}",
        err.code(),
        err.message()
    );
    let since = Instant::now();
    wait_for(
        "healthcheck and /ready to report the full disk",
        Duration::from_secs(20),
        || (!healthy(&server) && ready(&server) == Some(503)).then_some(()),
    );
    eprintln!("unhealthy {:?} after the disk filled", since.elapsed());
    let out = server.cli(&["healthcheck"]);
    let said = String::from_utf8_lossy(&out.stderr).to_lowercase();
    assert!(
        said.contains("datastore") && said.contains("no space"),
        "unclear healthcheck: {said}"
    );
    let body = http_get(server.health_port, "/ready").unwrap().1;
    assert!(body.contains("datastore"), "unclear /ready: {body}");

    // A local authority change is refused whole (one that still fits in the space SQLite
    // reuses commits, whole, until one does not), and nothing of it is applied.
    let before = prepare_until_refused(&server, "x509");

    // Space comes back; no restart.
    fs.remount("size=64m");
    let since = Instant::now();
    wait_for(
        "healthcheck and /ready to recover",
        Duration::from_secs(20),
        || (healthy(&server) && ready(&server) == Some(200)).then_some(()),
    );
    eprintln!("healthy {:?} after space returned", since.elapsed());
    // Every pooled connection serves writes again: more calls than the pool has connections.
    for i in 0..30 {
        create(&server, "after", i, 5)
            .unwrap_or_else(|s| panic!("create {i} after recovery: {s:?}"));
    }
    let id = entry_id(&server, "spiffe://example.org/before");
    server.cli_ok(&["entry", "delete", "-entryID", &id]);
    assert_eq!(x509_authorities(&server), before);
    let prepared = server.cli_json(&["localauthority", "x509", "prepare"]);
    assert!(prepared["prepared_authority"]["authority_id"].is_string());
    let reported = x509_authorities(&server);
    assert_ne!(reported, before);

    // What the CLI last reported is what a restart finds.
    server.restart();
    assert_eq!(x509_authorities(&server), reported);
    assert_eq!(
        server.cli_json(&["entry", "show", "-spiffeID", "spiffe://example.org/before"]),
        serde_json::json!({"entries": [], "next_page_token": ""}),
        "the delete was persisted"
    );
    assert!(server.stop().success());
    assert_eq!(sqlite_integrity(&db), "ok");
}

/// A change refused during the full disk is not in the journal either: after space returns and
/// the server restarts, both kinds of authority are what the CLI showed after the refusal.
#[test]
fn local_authority_refused_on_full_disk_is_absent_after_restart() {
    let Some((mut server, fs)) = server_with_keys_outside_a_small_tmpfs() else {
        return;
    };
    fill(&server);
    let x509 = prepare_until_refused(&server, "x509");
    let jwt = prepare_until_refused(&server, "jwt");
    assert_eq!(x509_authorities(&server), x509);
    fs.remount("size=64m");
    server.restart();
    assert_eq!(x509_authorities(&server), x509);
    assert_eq!(server.cli_json(&["localauthority", "jwt", "show"]), jwt);
}
