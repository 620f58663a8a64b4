//! Scheduled pruning (issue #7 item 5), with the real binaries: an entry past `-entryExpiry`
//! leaves `entry show` and the workload; 20k expired entries, 20k expired attested nodes and
//! 20k expired join tokens are all pruned while entries keep being created.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use sigil_proto::sigil::admin::v1 as admin;
use sigil_proto::sigil::common::v1 as common;
use sigil_testkit::admin::admin_client;
use sigil_testkit::rt;
use sigil_testkit::{
    Server, ServerOptions, attested_agent, register_uid, sqlite3, unix_now, wait_for,
};

/// The server prunes every 30 s (and at start); a margin on top.
const PRUNED_WITHIN: Duration = Duration::from_secs(90);

fn entry(spiffe_id: String, expires_at: i64) -> common::RegistrationEntry {
    common::RegistrationEntry {
        spiffe_id,
        parent_id: "spiffe://example.org/node".to_owned(),
        selectors: vec![common::Selector {
            r#type: "unix".to_owned(),
            value: "uid:1".to_owned(),
        }],
        expires_at,
        ..Default::default()
    }
}

fn count(db: &Path, sql: &str) -> usize {
    sqlite3(db, sql).parse().unwrap()
}

#[test]
fn expired_entry_leaves_entry_show_and_the_workload() {
    let server = Server::start(ServerOptions::default());
    let (agent, agent_id) = attested_agent(&server, false);
    let uid = nix::unistd::getuid().as_raw();
    let expiry = (unix_now() + 8).to_string();
    let expiring = register_uid(
        &server,
        "spiffe://example.org/expiring",
        &agent_id,
        uid,
        &["-entryExpiry", &expiry],
    );
    register_uid(&server, "spiffe://example.org/staying", &agent_id, uid, &[]);
    agent.wait_for_ids(
        "both SVIDs served",
        &[
            "spiffe://example.org/expiring",
            "spiffe://example.org/staying",
        ],
        Duration::from_secs(60),
    );

    wait_for("the expired entry pruned", PRUNED_WITHIN, || {
        (!server
            .cli_ok(&["entry", "show"])
            .contains("spiffe://example.org/expiring"))
        .then_some(())
    });
    assert!(
        !server
            .cli(&["entry", "show", "-entryID", &expiring])
            .status
            .success(),
        "entry show -entryID finds a pruned entry"
    );
    // Pruned entries reach the agent as deletions: the workload loses that SVID only.
    wait_for(
        "the workload to drop the pruned SVID",
        Duration::from_secs(30),
        || {
            let out = agent.fetched_x509();
            (!out.contains("spiffe://example.org/expiring")
                && out.contains("spiffe://example.org/staying"))
            .then_some(())
        },
    );
    assert!(server.log().contains("pruned stale rows"));
}

#[test]
fn twenty_thousand_stale_rows_are_pruned_while_entries_are_created() {
    const STALE: usize = 20_000;
    let server = Server::start(ServerOptions::default());
    let db = server.db_path();
    // Expiring a few seconds from now, so they are created live and go stale meanwhile.
    let expires_at = unix_now() + 5;
    rt().block_on(async {
        let mut client = admin_client(&server.socket).await.unwrap();
        for start in (0..STALE).step_by(5000) {
            let entries = (start..start + 5000)
                .map(|i| entry(format!("spiffe://example.org/stale/{i}"), expires_at))
                .collect();
            client
                .batch_create_entry(admin::BatchCreateEntryRequest { entries })
                .await
                .unwrap();
        }
    });
    // Expired nodes and tokens have no API that makes them: written straight into the file.
    sqlite3(
        &db,
        &format!(
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {STALE}) \
             INSERT INTO attested_nodes (spiffe_id, attestation_type, cert_serial, cert_expires_at, \
             new_cert_serial, banned, created_at, updated_at) \
             SELECT 'spiffe://example.org/spire/agent/join_token/stale-' || i, 'join_token', '01', \
             1000, NULL, 0, 1000, 1000 FROM n;"
        ),
    );
    sqlite3(
        &db,
        &format!(
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {STALE}) \
             INSERT INTO join_tokens (token_hash, expires_at) SELECT 'stale-' || i, 1000 FROM n;"
        ),
    );

    // Entries keep being created, one at a time, until everything stale is gone.
    let done = Arc::new(AtomicBool::new(false));
    let created = Arc::new(AtomicUsize::new(0));
    let writer = {
        let (done, created, socket) = (done.clone(), created.clone(), server.socket.clone());
        std::thread::spawn(move || {
            rt().block_on(async {
                let mut client = admin_client(&socket).await.unwrap();
                while !done.load(Ordering::Relaxed) {
                    let i = created.load(Ordering::Relaxed);
                    client
                        .batch_create_entry(admin::BatchCreateEntryRequest {
                            entries: vec![entry(format!("spiffe://example.org/live/{i}"), 0)],
                        })
                        .await
                        .expect("a create during pruning completes");
                    created.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
    };
    let stale = || {
        count(
            &db,
            &format!(
                "SELECT (SELECT COUNT(*) FROM registered_entries WHERE expires_at IS NOT NULL) \
                 + (SELECT COUNT(*) FROM attested_nodes WHERE cert_expires_at < {}) \
                 + (SELECT COUNT(*) FROM join_tokens WHERE expires_at < {});",
                unix_now(),
                unix_now()
            ),
        )
    };
    wait_for("every stale row pruned", PRUNED_WITHIN, || {
        (stale() == 0).then_some(())
    });
    done.store(true, Ordering::Relaxed);
    writer.join().unwrap();
    let live = created.load(Ordering::Relaxed);
    assert!(live > 0);
    assert_eq!(
        count(&db, "SELECT COUNT(*) FROM registered_entries;"),
        live,
        "only the live entries are left"
    );
    assert_eq!(count(&db, "SELECT COUNT(*) FROM attested_nodes;"), 0);
    assert_eq!(count(&db, "SELECT COUNT(*) FROM join_tokens;"), 0);
    let log = server.log();
    assert!(
        log.contains("pruned stale rows"),
        "no INFO line for the run"
    );
}
