//! SQLite fault tests (issue #7 item 3), with real processes:
//! - the server killed with SIGKILL mid-write 20 times while a client bulk-creates entries
//!   through the admin API: after each kill `PRAGMA integrity_check` (the `sqlite3` CLI, an
//!   independent reader) says ok, every acknowledged batch is there and no batch is partial;
//! - the data dir on a full disk (a small tmpfs): writes get a clear gRPC error, earlier
//!   entries stay, the database is not corrupted;
//! - the data dir read-only (the tmpfs remounted `ro`): the server refuses to start with a
//!   clear error, or refuses writes with one, and the database is not corrupted.
//!
//! The mounts need root; without it those tests print why and return.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sigil_proto::sigil::admin::v1 as admin;
use sigil_proto::sigil::common::v1 as common;
use sigil_testkit::admin::{admin_client, entries_per_batch, entry_batch};
use sigil_testkit::rt;
use sigil_testkit::tmpfs::server_on_tmpfs;
use sigil_testkit::verify::sqlite_integrity;
use sigil_testkit::{Process, Server, ServerOptions, server_bin, sqlite3, wait_for};

/// Entries per BatchCreateEntry call in the kill loop.
const BATCH: usize = 50;
const KILLS: usize = 20;

/// Entries per batch of `round`, read straight from the file.
fn batches_present(db: &Path, round: usize) -> BTreeMap<usize, usize> {
    entries_per_batch(&sqlite3(
        db,
        &format!(
            "SELECT spiffe_id FROM registered_entries WHERE spiffe_id LIKE 'spiffe://example.org/r{round}/%';"
        ),
    ))
}

/// Batch `b` of round `round`.
fn batch(round: usize, b: usize) -> Vec<common::RegistrationEntry> {
    entry_batch(&format!("r{round}"), b, BATCH)
}

#[test]
fn kill9_mid_write_loses_no_acknowledged_entry_and_no_batch_is_partial() {
    let mut server = Server::start(ServerOptions::default());
    let db = server.db_path();
    let mut total_acked = 0;
    for round in 0..KILLS {
        let acked = Arc::new(Mutex::new(BTreeSet::new()));
        let writer = {
            let acked = acked.clone();
            let socket = server.socket.clone();
            std::thread::spawn(move || {
                rt().block_on(async {
                    let Ok(mut client) = admin_client(&socket).await else {
                        return;
                    };
                    for b in 0.. {
                        let req = admin::BatchCreateEntryRequest {
                            entries: batch(round, b),
                        };
                        match client.batch_create_entry(req).await {
                            Ok(resp) => {
                                assert_eq!(resp.into_inner().entries.len(), BATCH);
                                acked.lock().unwrap().insert(b);
                            }
                            // The server died: whatever was in flight is unacknowledged.
                            Err(_) => return,
                        }
                    }
                })
            })
        };
        // Kill at a different point each round: after 1 to 5 acknowledged batches, plus
        // 0 to 60 ms, so some kills land inside a transaction and some between two.
        let after = 1 + round % 5;
        wait_for("batches acknowledged", Duration::from_secs(60), || {
            (acked.lock().unwrap().len() >= after).then_some(())
        });
        std::thread::sleep(Duration::from_millis((round as u64 * 13) % 61));
        server.kill9();
        writer.join().unwrap();

        // The file as the crash left it (WAL included), before the server touches it again.
        assert_eq!(sqlite_integrity(&db), "ok", "round {round}");
        server.spawn();
        let present = batches_present(&db, round);
        let acked = acked.lock().unwrap().clone();
        for b in &acked {
            assert_eq!(
                present.get(b),
                Some(&BATCH),
                "round {round}: acknowledged batch {b} lost or partial"
            );
        }
        for (b, n) in &present {
            assert_eq!(
                *n, BATCH,
                "round {round}: batch {b} is partial ({n} entries)"
            );
        }
        total_acked += acked.len();
        eprintln!(
            "round {round}: {} batches acknowledged, {} present",
            acked.len(),
            present.len()
        );
    }
    let count: usize = sqlite3(&db, "SELECT COUNT(*) FROM registered_entries;")
        .parse()
        .unwrap();
    assert!(count >= total_acked * BATCH);
    // The server still serves what was written across all the crashes.
    let listed: usize = server
        .cli_ok(&["entry", "count"])
        .split_whitespace()
        .find_map(|w| w.parse().ok())
        .unwrap();
    assert_eq!(listed, count);
}

/// Creates one batch; `Err(status)` as the client saw it.
fn create(server: &Server, round: usize, b: usize) -> Result<(), tonic::Status> {
    rt().block_on(async {
        let mut client = admin_client(&server.socket).await.unwrap();
        client
            .batch_create_entry(admin::BatchCreateEntryRequest {
                entries: batch(round, b),
            })
            .await
            .map(|_| ())
    })
}

#[test]
fn disk_full_gives_a_clear_error_and_no_corruption() {
    let Some((server, _fs)) = server_on_tmpfs(ServerOptions::default(), "3m") else {
        return;
    };
    let db = server.db_path();
    let mut acked = Vec::new();
    let started = Instant::now();
    let err = loop {
        match create(&server, 0, acked.len()) {
            Ok(()) => acked.push(acked.len()),
            Err(status) => break status,
        }
        assert!(
            started.elapsed() < Duration::from_secs(300),
            "3 MiB never filled"
        );
    };
    eprintln!(
        "disk full after {} batches: {:?} {}",
        acked.len(),
        err.code(),
        err.message()
    );
    assert!(!acked.is_empty());
    let message = err.message().to_lowercase();
    assert!(
        message.contains("full") || message.contains("space"),
        "not a clear error: {:?} {}",
        err.code(),
        err.message()
    );
    // Still full: a second write fails the same way rather than corrupting anything.
    assert!(create(&server, 0, 100_000).is_err());
    // The server survives a full disk and still serves reads (its health while full, and its
    // recovery, are tested in disk_full_recovery.rs).
    server.cli_ok(&["entry", "count"]);
    let mut server = server;
    server.stop();
    assert_eq!(sqlite_integrity(&db), "ok");
    let present = batches_present(&db, 0);
    for b in &acked {
        assert_eq!(present.get(b), Some(&BATCH), "acknowledged batch {b}");
    }
    assert!(present.values().all(|&n| n == BATCH), "{present:?}");
}

#[test]
fn read_only_data_dir_gives_a_clear_error_and_no_corruption() {
    let Some((mut server, fs)) = server_on_tmpfs(ServerOptions::default(), "64m") else {
        return;
    };
    let db = server.db_path();
    create(&server, 0, 0).unwrap();
    assert!(server.stop().success());
    fs.remount("ro");

    // Start on the read-only dir: a non-zero exit naming the problem, or (if it starts) a
    // clear error for a write.
    let log = server.dir.path().join("read-only-start.log");
    let mut command = Command::new(server_bin());
    command.args(["run", "-config"]).arg(&server.config);
    let mut child = Process::spawn(command, &log);
    let exited = wait_for(
        "the server to exit or become healthy",
        Duration::from_secs(30),
        || {
            if let Some(status) = child.exited() {
                return Some(Some(status));
            }
            server
                .cli(&["healthcheck"])
                .status
                .success()
                .then_some(None)
        },
    );
    let output = std::fs::read_to_string(&log).unwrap_or_default();
    match exited {
        Some(status) => {
            assert!(!status.success(), "{output}");
            let lower = output.to_lowercase();
            assert!(
                lower.contains("read-only") || lower.contains("readonly"),
                "no clear error at start:\n{output}"
            );
        }
        None => {
            let err = create(&server, 0, 1).unwrap_err();
            let lower = err.message().to_lowercase();
            assert!(
                lower.contains("read-only") || lower.contains("readonly"),
                "not a clear error: {:?} {}",
                err.code(),
                err.message()
            );
            child.stop(Duration::from_secs(20));
        }
    }
    fs.remount("rw");
    assert_eq!(sqlite_integrity(&db), "ok");
    assert_eq!(batches_present(&db, 0).get(&0), Some(&BATCH));
}
