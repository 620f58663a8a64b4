//! CI smoke run of the benchmark (issue #6): `sigil-bench all --quick` must produce every
//! figure, each finite and positive (a count whose target is 0 may be 0, a difference may be
//! negative), and write JSON that parses. No target is asserted: the figures of a busy CI
//! machine say nothing about Sigil's speed. The pod check rows (issue 17) need the test kit's
//! kube-apiserver, which the test starts as the Kubernetes tests do. Where SPIRE is built
//! (`scripts/spire-peer.sh`), `all` includes the SPIRE side-by-side rows (issue 20), each a
//! finite positive ratio; without it, none.

use std::process::Command;

use sigil_testkit::bin_dir;

#[test]
fn quick_benchmark_produces_every_figure() {
    let bench = bin_dir().join("sigil-bench");
    assert!(
        bench.exists(),
        "{} is missing: `cargo build --workspace --bins` builds it",
        bench.display()
    );
    // Without it the pod check rows would be "n.a.".
    sigil_testkit::k8s::kube();
    let dir = tempfile::tempdir().expect("temp dir");
    let json = dir.path().join("results.json");
    let out = Command::new(&bench)
        .args(["all", "--quick", "--json"])
        .arg(&json)
        .output()
        .expect("run sigil-bench");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "sigil-bench all --quick failed ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&json).expect("results.json written"))
            .expect("results.json is JSON");
    let figures = report["figures"].as_array().expect("a figures array");
    let names: Vec<&str> = figures
        .iter()
        .map(|f| f["name"].as_str().expect("a name"))
        .collect();
    // One row per figure the brief lists, in the quick sizes.
    for expected in [
        "raw: ring ECDSA P-256 sign, 1 core",
        "raw: X.509-SVID from CSR, 1 core",
        "mint: X.509-SVIDs/s (BatchMintX509SVID)",
        "mint: X.509 / (raw x cores used)",
        "mint: JWT-SVIDs/s (MintJWTSVID)",
        "mint: JWT / (raw sign x cores used)",
        "cfssl: signs/s (8 HTTP clients)",
        "Sigil X.509 mint / cfssl",
        "FetchX509SVID, 1 client: p99",
        "FetchX509SVID, 10 clients: p99",
        "FetchX509SVID, 100 clients: p50",
        "FetchX509SVID, 100 clients: p99",
        "FetchJWTSVID, 10 clients: p99",
        "propagation, 10 entries: p99",
        "scale 1k: load rate",
        "scale 1k: server RSS",
        "scale 1k: entry show by selector p99",
        "scale 1k: server start-up",
        "agent 1k entries: initial sync",
        "agent 1k entries: agent RSS",
        "agent RSS, 100 cached SVIDs",
        "prune 10k stale entries + nodes + tokens: run time",
        "prune 10k: create p99, idle",
        "prune 10k: create p99, during prune",
        "prune 10k: create-to-sync p99, idle",
        "prune 10k: create-to-sync p99, during prune",
        "pod check: X.509 mint, agent-parented: p99",
        "pod check: X.509 mint, via node alias: p99",
        "pod check: X.509 p99 added by the check",
        "pod check: JWT mint, agent-parented: p99",
        "pod check: JWT mint, via node alias: p99",
        "pod check: JWT p99 added by the check",
        "pod check: API requests per mint",
        "pod cache 500 pods: server RSS before",
        "pod cache 500 pods: server RSS after",
        "pod cache 500 pods: API requests by the server",
        "pod cache 500 pods: create to mintable p99",
        "SDS push after rotation: p99",
        "SDS push after entry create, 10 entries: p99",
        "SDS: agent RSS per open stream",
    ] {
        assert!(
            names.contains(&expected),
            "no {expected:?} figure in {names:?}"
        );
    }
    // The SPIRE rows: Sigil's advantage over each SPIRE mode, in the quick sizes.
    let spire_rows = [
        "vs SPIRE: server start-up",
        "vs SPIRE events: server start-up",
        "vs SPIRE: entries created/s, to 2k",
        "vs SPIRE events: server RSS at 2k entries",
        "vs SPIRE: agent with 1k entries: every SVID held",
        "vs SPIRE: agent with 1k entries: agent RSS",
        "vs SPIRE events: agent with 1k entries: server CPU",
        "vs SPIRE: agent start-up",
        "vs SPIRE: FetchX509SVID, 100 clients: calls per agent CPU-second",
        "vs SPIRE: FetchJWTSVID, 1 client: p99",
        "vs SPIRE: propagation p99",
        "vs SPIRE events: propagation p50",
    ];
    if sigil_testkit::spire::spire_bin("spire-server").is_some() {
        for expected in spire_rows {
            assert!(
                names.contains(&expected),
                "no {expected:?} figure in {names:?}"
            );
        }
    } else {
        assert!(
            !names.iter().any(|n| n.starts_with("vs SPIRE")),
            "SPIRE rows without SPIRE: {names:?}"
        );
    }
    // cfssl rows are skipped (value null, verdict n.a.) only where cfssl is not installed.
    let cfssl = Command::new("cfssl").arg("version").output().is_ok();
    for f in figures {
        let name = f["name"].as_str().unwrap_or_default();
        if !cfssl && (name.starts_with("cfssl") || name.contains("/ cfssl")) {
            assert!(f["value"].is_null(), "{name}: {f}");
            assert_eq!(f["verdict"], "n.a.", "{name}");
            continue;
        }
        let value = f["value"]
            .as_f64()
            .unwrap_or_else(|| panic!("{name}: no value: {f}"));
        // A difference of two noisy percentiles may be negative; a count whose target is 0, zero.
        let in_range = if name.contains("added by the check") {
            true
        } else if name.starts_with("SDS push after rotation") {
            // One stream's arrival after another's, both pushed from the same cache change:
            // 0 where the SDS stream woke first (bench/src/sds.rs).
            value >= 0.0
        } else if f["unit"] == "requests" {
            value >= 0.0
        } else {
            value > 0.0
        };
        assert!(value.is_finite() && in_range, "{name}: {value}");
        assert!(
            ["met", "missed", "n.a."].contains(&f["verdict"].as_str().unwrap_or_default()),
            "{name}: {f}"
        );
        assert!(stdout.contains(name), "the table has no row {name:?}");
    }
}
