//! Issue 19: a SPIRE deployment's entries move to Sigil with SPIRE's own output. A real
//! `spire-server` (v1.13.3, built from the Go module proxy by `scripts/spire-peer.sh`; the
//! test says it skipped when that build is absent) holds entries made through its CLI;
//! `spire-server entry show -output json > e.json; sigil-server entry create -data e.json`
//! gives Sigil the same entries, IDs included, and both servers then print the same JSON
//! (but for `created_at` and `revision_number`) and the same `entry show` text.

use std::collections::BTreeSet;

use serde_json::Value;
use sigil_testkit::spire::{SpireServer, spire_bin};
use sigil_testkit::verify::self_signed_p256;
use sigil_testkit::{Server, ServerOptions, shown_entries};

/// An entry as both servers print it, less what each server stamps itself: `created_at`, and
/// `revision_number`, which Sigil takes from its change feed (README, "Differences from SPIRE").
fn portable(e: &Value) -> Value {
    let mut e = e.clone();
    let obj = e.as_object_mut().unwrap();
    obj.remove("created_at");
    assert!(obj.remove("revision_number").is_some_and(|r| r.is_string()));
    e
}

fn by_id(entries: &[Value]) -> Vec<Value> {
    let mut entries: Vec<Value> = entries.iter().map(portable).collect();
    entries.sort_by_key(|e| e["id"].as_str().unwrap().to_owned());
    entries
}

/// `entry show` text: the `Found N entries` line and the set of entry blocks (SPIRE sorts
/// them by SPIFFE ID, Sigil by entry ID), less their `Revision` lines (see `portable`). The
/// labels' padding is dropped: Sigil pads them as SPIRE 1.15 does (24 columns), SPIRE 1.13 to 17.
fn text_blocks(text: &str) -> (String, BTreeSet<String>) {
    let (first, rest) = text.split_once('\n').unwrap();
    let blocks = rest
        .split("\n\n")
        .map(|b| {
            b.trim()
                .lines()
                .filter(|l| !l.starts_with("Revision "))
                .map(|l| match l.split_once(" : ") {
                    Some((label, value)) => format!("{}: {value}", label.trim_end()),
                    None => l.to_owned(),
                })
                .collect::<Vec<_>>()
                .join("\n")
        })
        .filter(|b| !b.is_empty())
        .collect();
    (first.to_owned(), blocks)
}

#[test]
fn spire_entries_migrate_to_sigil_with_spires_own_output() {
    let Some(spire) = spire_bin("spire-server") else {
        return;
    };
    let spire = SpireServer::start(&spire, "example.org", "WARN", "");
    let dir = tempfile::tempdir().unwrap();

    // A federated trust domain's bundle, which `-federatesWith` needs on both servers.
    let (partner_pem, partner_key) = (dir.path().join("partner.pem"), dir.path().join("p.key"));
    self_signed_p256(&partner_pem, &partner_key, "/CN=partner", 30, &[]);
    let partner = partner_pem.to_str().unwrap();
    let set_partner = [
        "bundle",
        "set",
        "-id",
        "spiffe://partner.test",
        "-path",
        partner,
    ];
    spire.cli_ok(&set_partner);

    // Entries as a SPIRE operator makes them: a node alias, Kubernetes workloads under it with
    // DNS names, hints, TTLs and an expiry, and a join-token agent's Unix workload that
    // federates.
    let td = "spiffe://example.org";
    let create = |args: &[&str]| {
        let mut all = vec!["entry", "create"];
        all.extend_from_slice(args);
        spire.cli_ok(&all);
    };
    create(&[
        "-node",
        "-parentID",
        &format!("{td}/spire/server"),
        "-spiffeID",
        &format!("{td}/k8s-cluster/demo"),
        "-selector",
        "k8s_psat:cluster:demo",
    ]);
    create(&[
        "-parentID",
        &format!("{td}/k8s-cluster/demo"),
        "-spiffeID",
        &format!("{td}/ns/payments/sa/checkout"),
        "-selector",
        "k8s:ns:payments",
        "-selector",
        "k8s:sa:checkout",
        "-dns",
        "checkout.payments.svc",
        "-dns",
        "checkout.payments.svc.cluster.local",
        "-hint",
        "checkout",
        "-x509SVIDTTL",
        "3600",
        "-jwtSVIDTTL",
        "300",
        "-entryExpiry",
        "4102444800",
    ]);
    create(&[
        "-parentID",
        &format!("{td}/k8s-cluster/demo"),
        "-spiffeID",
        &format!("{td}/ns/ledger/sa/default"),
        "-selector",
        "k8s:ns:ledger",
    ]);
    create(&[
        "-parentID",
        &format!("{td}/spire/agent/join_token/5e0b2a9c"),
        "-spiffeID",
        &format!("{td}/batch/nightly"),
        "-selector",
        "unix:uid:1000",
        "-selector",
        "unix:gid:1000",
        "-federatesWith",
        "spiffe://partner.test",
    ]);
    let exported = spire.cli_ok(&["entry", "show", "-output", "json"]);
    let spire_json: Value = serde_json::from_str(&exported).unwrap();
    assert_eq!(shown_entries(&spire_json).len(), 4, "{spire_json}");
    let spire_text = spire.cli_ok(&["entry", "show"]);

    // The migration, as README's "Migrating entries from SPIRE" says.
    let sigil = Server::start(ServerOptions::default());
    let file = sigil.dir.path().join("e.json");
    std::fs::write(&file, &exported).unwrap();
    sigil.cli_ok(&set_partner);
    sigil.cli_ok(&["entry", "create", "-data", file.to_str().unwrap()]);

    let sigil_json: Value =
        serde_json::from_str(&sigil.cli_ok(&["entry", "show", "-output", "json"])).unwrap();
    assert_eq!(
        by_id(&shown_entries(&sigil_json)),
        by_id(&shown_entries(&spire_json)),
        "Sigil's entry show -output json after the migration is SPIRE's"
    );
    assert_eq!(sigil_json["next_page_token"], "");
    assert_eq!(
        text_blocks(&sigil.cli_ok(&["entry", "show"])),
        text_blocks(&spire_text),
        "Sigil's entry show text after the migration is SPIRE's"
    );

    // The same file again is refused whole (the IDs exist), and nothing is added.
    let again = sigil.cli(&["entry", "create", "-data", file.to_str().unwrap()]);
    assert!(!again.status.success(), "a second import must be refused");
    let count = sigil.cli_ok(&["entry", "count"]);
    assert!(count.contains('4'), "{count}");
}
