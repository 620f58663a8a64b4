//! PostgreSQL fault tests (issue #7 item 3), with real processes on a throwaway cluster:
//! - a replica killed with SIGKILL during a 10k-entry batch load: every acknowledged batch is
//!   in the database, no batch is partial, and the load finishes through the other replica;
//! - PostgreSQL stopped and started again while a server is writing: the server reconnects by
//!   itself, every acknowledged batch is there and none is partial.
//!
//! The database is read back with `psql`, a reader independent of Sigil. Agent failover across
//! a killed replica, with a workload fetching throughout, is `tests/tests/replicas.rs`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sigil_proto::sigil::admin::v1 as admin;
use sigil_testkit::admin::{admin_client, entries_per_batch, entry_batch};
use sigil_testkit::rt;
use sigil_testkit::{Server, ServerOptions, wait_for};

/// 20 batches of 500: the 10k-entry load.
const BATCH: usize = 500;
const BATCHES: usize = 20;

/// Entries per batch of `load`, read with `psql`.
fn batches_present(url: &str, load: &str) -> BTreeMap<usize, usize> {
    let out = Command::new("psql")
        .args([url, "-XAtq", "-c"])
        .arg(format!(
            "SELECT spiffe_id FROM registered_entries WHERE spiffe_id LIKE 'spiffe://example.org/{load}/%'"
        ))
        .output()
        .expect("psql (Debian's postgresql package, installed by .ci/run)");
    assert!(
        out.status.success(),
        "psql: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    entries_per_batch(&String::from_utf8(out.stdout).unwrap())
}

/// Every acknowledged batch is complete and no batch present is partial.
fn assert_whole(present: &BTreeMap<usize, usize>, acked: &BTreeSet<usize>, size: usize) {
    for b in acked {
        assert_eq!(
            present.get(b),
            Some(&size),
            "acknowledged batch {b} lost or partial"
        );
    }
    for (b, n) in present {
        assert_eq!(*n, size, "batch {b} is partial ({n} entries)");
    }
}

/// Sends batches `range` of `load` through `socket` until one fails; records what was
/// acknowledged.
fn writer(
    socket: &Path,
    load: &'static str,
    size: usize,
    range: std::ops::Range<usize>,
    acked: Arc<Mutex<BTreeSet<usize>>>,
) -> std::thread::JoinHandle<()> {
    let socket = socket.to_path_buf();
    std::thread::spawn(move || {
        rt().block_on(async {
            let Ok(mut client) = admin_client(&socket).await else {
                return;
            };
            for b in range {
                let req = admin::BatchCreateEntryRequest {
                    entries: entry_batch(load, b, size),
                };
                match client.batch_create_entry(req).await {
                    Ok(resp) => {
                        assert_eq!(resp.into_inner().entries.len(), size);
                        acked.lock().unwrap().insert(b);
                    }
                    // The server died: whatever was in flight is unacknowledged.
                    Err(_) => return,
                }
            }
        })
    })
}

#[test]
fn kill9_a_replica_during_a_10k_batch_load_loses_no_acknowledged_batch() {
    let url = sigil_testkit::postgres::database("faults");
    let mut a = Server::start(ServerOptions {
        postgres: Some(url.clone()),
        ..ServerOptions::default()
    });
    let b = a.start_replica();

    let acked = Arc::new(Mutex::new(BTreeSet::new()));
    let load = writer(&a.socket, "load", BATCH, 0..BATCHES, acked.clone());
    wait_for(
        "3 batches acknowledged by A",
        Duration::from_secs(120),
        || (acked.lock().unwrap().len() >= 3).then_some(()),
    );
    // Mid-batch, most likely: a 500-entry batch takes far longer than this pause.
    std::thread::sleep(Duration::from_millis(30));
    a.kill9();
    load.join().unwrap();

    let acked_by_a = acked.lock().unwrap().clone();
    let present = batches_present(&url, "load");
    assert_whole(&present, &acked_by_a, BATCH);
    eprintln!(
        "A acknowledged {} batches before SIGKILL; {} present",
        acked_by_a.len(),
        present.len()
    );

    // The load finishes through B: whatever A did not commit is sent again.
    let rest: Vec<usize> = (0..BATCHES).filter(|b| !present.contains_key(b)).collect();
    let acked_by_b = Arc::new(Mutex::new(BTreeSet::new()));
    for b_index in rest {
        writer(
            &b.socket,
            "load",
            BATCH,
            b_index..b_index + 1,
            acked_by_b.clone(),
        )
        .join()
        .unwrap();
    }
    let present = batches_present(&url, "load");
    assert_eq!(present.len(), BATCHES);
    assert_whole(&present, &(0..BATCHES).collect(), BATCH);
    let listed: usize = b
        .cli_ok(&["entry", "count"])
        .split_whitespace()
        .find_map(|w| w.parse().ok())
        .unwrap();
    assert_eq!(listed, BATCH * BATCHES, "B serves the whole load");
}

#[test]
fn postgres_restarted_under_load_loses_nothing_and_the_server_reconnects() {
    let cluster = sigil_testkit::postgres::Cluster::start().expect("a private throwaway cluster");
    let url = cluster.create_database("restart").unwrap();
    let server = Server::start(ServerOptions {
        postgres: Some(url.clone()),
        ..ServerOptions::default()
    });

    // Small batches, one client per batch so that a batch refused while PostgreSQL is down
    // does not end the load: the writer keeps going until told to stop.
    const SIZE: usize = 20;
    let acked = Arc::new(Mutex::new(BTreeSet::new()));
    let refused = Arc::new(Mutex::new(0usize));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = {
        let (acked, refused, stop) = (acked.clone(), refused.clone(), stop.clone());
        let socket = server.socket.clone();
        std::thread::spawn(move || {
            rt().block_on(async {
                let mut client = admin_client(&socket).await.unwrap();
                let mut b = 0;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let req = admin::BatchCreateEntryRequest {
                        entries: entry_batch("restart", b, SIZE),
                    };
                    match client.batch_create_entry(req).await {
                        Ok(_) => {
                            acked.lock().unwrap().insert(b);
                        }
                        Err(_) => {
                            *refused.lock().unwrap() += 1;
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                    }
                    b += 1;
                }
            })
        })
    };
    wait_for("writes before the restart", Duration::from_secs(60), || {
        (acked.lock().unwrap().len() >= 5).then_some(())
    });
    cluster.stop().unwrap();
    wait_for(
        "a write refused while PostgreSQL is down",
        Duration::from_secs(60),
        || (*refused.lock().unwrap() > 0).then_some(()),
    );
    let before = acked.lock().unwrap().len();
    cluster.start_again().unwrap();
    wait_for("writes after the restart", Duration::from_secs(60), || {
        (acked.lock().unwrap().len() >= before + 5).then_some(())
    });
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    load.join().unwrap();

    let acked = acked.lock().unwrap().clone();
    let present = batches_present(&url, "restart");
    assert_whole(&present, &acked, SIZE);
    // The server is healthy and serves every entry (it was never restarted). Readiness
    // follows the datastore write probe, which runs every 5 s: healthy within two periods.
    wait_for("healthy again", Duration::from_secs(12), || {
        server.cli(&["healthcheck"]).status.success().then_some(())
    });
    let listed: usize = server
        .cli_ok(&["entry", "count"])
        .split_whitespace()
        .find_map(|w| w.parse().ok())
        .unwrap();
    assert_eq!(listed, present.values().sum::<usize>());
}
