//! Issue 20 §3: Sigil and a real SPIRE (v1.13.3, built by `scripts/spire-peer.sh`; the test
//! says it skipped when that build is absent) federate both ways. Trust domain `spire.test` is
//! a spire-server and a join-token spire-agent with the unix workload attestor; `sigil.test` is
//! a sigil-server and a sigil-agent. As SPIRE's federation tutorial does, each side bootstraps
//! the other's bundle with `bundle show -format spiffe` / `bundle set -format spiffe`, then
//! polls the other's `https_spiffe` bundle endpoint and follows its CA and JWT key rotation.
//! A Rust workload under sigil-agent (examples/zero-trust's checkout-service) and a go-spiffe
//! workload under spire-agent (tests/go's payment-processor) complete mTLS, each authorizing
//! the other's SPIFFE ID, and refuse any other; JWT-SVIDs minted by either agent validate
//! through the other agent's ValidateJWTSVID and go-spiffe's own validation against that
//! agent's JWT bundles (tests/go's jwt-tool).

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use serde_json::Value;
use sigil_testkit::binaries::workspace_bin;
use sigil_testkit::go::go_program;
use sigil_testkit::spire::{SpireAgent, SpireServer, spire_bin};
use sigil_testkit::{
    Process, Server, ServerOptions, attested_agent, free_port, register_uid, uid, wait_for,
};

const SIGIL_CHECKOUT: &str = "spiffe://sigil.test/ns/payments/sa/checkout-service";
const SPIRE_PAYMENTS: &str = "spiffe://spire.test/ns/payments/sa/payment-processor";
const SIGIL_PAYMENTS: &str = "spiffe://sigil.test/ns/payments/sa/payment-processor";
const SPIRE_CHECKOUT: &str = "spiffe://spire.test/ns/payments/sa/checkout-service";

/// A `federation {}` block as SPIRE's docs write it: our `https_spiffe` bundle endpoint
/// (refresh hint 5 s) and the other trust domain's, authenticated as its server's SPIFFE ID.
fn federation(own_port: u16, other: &str, other_port: u16) -> String {
    format!(
        r#"federation {{
  bundle_endpoint {{
    address = "127.0.0.1"
    port = {own_port}
    refresh_hint = "5s"
    profile "https_spiffe" {{}}
  }}
  federates_with "{other}" {{
    bundle_endpoint_url = "https://127.0.0.1:{other_port}"
    bundle_endpoint_profile "https_spiffe" {{
      endpoint_spiffe_id = "spiffe://{other}/spire/server"
    }}
  }}
}}"#
    )
}

/// The bundle of `trust_domain` a server holds, through its CLI (`cli`): `bundle list -id
/// spiffe://<trust_domain> -format spiffe`, the same command on SPIRE and Sigil.
fn holds(cli: impl Fn(&[&str]) -> String, trust_domain: &str) -> String {
    let id = format!("spiffe://{trust_domain}");
    cli(&["bundle", "list", "-id", &id, "-format", "spiffe"])
}

/// What a SPIFFE bundle document holds: the X.509 authorities (base64 DER) and the JWT key IDs.
fn keys(doc: &str) -> (BTreeSet<String>, BTreeSet<String>) {
    let doc: Value =
        serde_json::from_str(doc).unwrap_or_else(|e| panic!("not a SPIFFE bundle ({e}): {doc}"));
    let (mut x509, mut jwt) = (BTreeSet::new(), BTreeSet::new());
    for key in doc["keys"].as_array().expect("keys") {
        match key["use"].as_str() {
            Some("x509-svid") => {
                x509.insert(key["x5c"][0].as_str().expect("x5c").to_owned());
            }
            Some("jwt-svid") => {
                jwt.insert(key["kid"].as_str().expect("kid").to_owned());
            }
            other => panic!("key with use {other:?} in {doc}"),
        }
    }
    (x509, jwt)
}

fn lines_with(log: &str, needle: &str) -> String {
    log.lines()
        .filter(|l| l.contains(needle))
        .collect::<Vec<_>>()
        .join("\n")
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// `exe args` as a workload of the agent at `endpoint` (`SPIFFE_ENDPOINT_SOCKET`).
fn workload(exe: &Path, endpoint: &str, args: &[&str]) -> Output {
    Command::new(exe)
        .args(args)
        .env("SPIFFE_ENDPOINT_SOCKET", endpoint)
        .output()
        .unwrap_or_else(|e| panic!("run {}: {e}", exe.display()))
}

/// Runs a workload, asserts its exit code and that its output contains each of `wanted`.
fn expect(exe: &Path, endpoint: &str, args: &[&str], code: i32, wanted: &[&str]) -> String {
    let out = workload(exe, endpoint, args);
    let text = text(&out);
    assert_eq!(out.status.code(), Some(code), "{exe:?} {args:?}:\n{text}");
    for w in wanted {
        assert!(text.contains(w), "{exe:?} {args:?}: no {w:?} in:\n{text}");
    }
    text
}

/// tests/go's payment-processor under spire-agent, accepting only `client_id`; waits until it
/// listens.
fn go_payment_processor(agent: &SpireAgent, client_id: &str, log: &Path) -> (Process, String) {
    let addr = format!("127.0.0.1:{}", free_port());
    let mut cmd = Command::new(go_program("payment-processor"));
    cmd.args(["--listen", &addr, "--client-id", client_id])
        .env("SPIFFE_ENDPOINT_SOCKET", agent.endpoint());
    let mut pp = Process::spawn(cmd, log);
    pp.wait_until(
        "payment-processor to listen",
        Duration::from_secs(30),
        |p| {
            p.log()
                .contains("payment-processor (Go, go-spiffe) listening")
        },
    );
    (pp, addr)
}

/// Waits until a trust domain has rotated (more than one X.509 authority in `own`, its bundle)
/// and the other side's copy, `held`, has exactly its X.509 authorities and JWT keys.
fn follows(
    what: &str,
    own: impl Fn() -> String,
    held: impl Fn() -> String,
    log: impl Fn() -> String,
) {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let (own_doc, held_doc) = (own(), held());
        let ((own_x509, own_jwt), (held_x509, held_jwt)) = (keys(&own_doc), keys(&held_doc));
        if own_x509.len() > 1 && own_x509 == held_x509 && own_jwt == held_jwt {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}: the bundle\n{own_doc}\nis held as\n{held_doc}\nthe poller's log:\n{}",
            log()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

#[test]
fn sigil_and_spire_federate_both_ways_for_mtls_and_jwt() {
    let (Some(spire_server), Some(spire_agent)) =
        (spire_bin("spire-server"), spire_bin("spire-agent"))
    else {
        return;
    };
    let (sigil_port, spire_port) = (free_port(), free_port());
    // Each side's next CA joins its bundle halfway through the current one's life, and the
    // other side must pick it up from the bundle endpoint. SPIRE's CA lives 60 s (Sigil polls
    // every 5 s, SPIRE's refresh hint); Sigil's 3 minutes, since SPIRE's first scheduled poll
    // after the bootstrap comes a minute in, then every 15 s (a quarter of its 1-minute
    // floor on the hint).
    let sigil = Server::start(ServerOptions {
        trust_domain: "sigil.test".into(),
        ca_ttl: "3m".into(),
        x509_svid_ttl: "20s".into(),
        jwt_svid_ttl: "20s".into(),
        extra_server: federation(sigil_port, "spire.test", spire_port),
        ..ServerOptions::default()
    });
    let spire = SpireServer::start(
        &spire_server,
        "spire.test",
        "DEBUG",
        &format!(
            "ca_ttl = \"60s\"\ndefault_x509_svid_ttl = \"20s\"\ndefault_jwt_svid_ttl = \"20s\"\n{}",
            federation(spire_port, "sigil.test", sigil_port)
        ),
    );

    // Bootstrap, as SPIRE's federation tutorial: each side's `bundle show -format spiffe` goes
    // into the other's `bundle set -format spiffe`.
    let sigil_doc = sigil.cli_ok(&["bundle", "show", "-format", "spiffe"]);
    let path = spire.dir.path().join("sigil.test.json");
    std::fs::write(&path, &sigil_doc).unwrap();
    spire.cli_ok(&[
        "bundle",
        "set",
        "-format",
        "spiffe",
        "-id",
        "spiffe://sigil.test",
        "-path",
        path.to_str().unwrap(),
    ]);
    let spire_doc = spire.cli_ok(&["bundle", "show", "-format", "spiffe"]);
    assert!(!spire_doc.contains("spiffe_refresh_hint"), "{spire_doc}");
    let path = sigil.dir.path().join("spire.test.json");
    std::fs::write(&path, &spire_doc).unwrap();
    let out = sigil.cli_ok(&[
        "bundle",
        "set",
        "-format",
        "spiffe",
        "-id",
        "spiffe://spire.test",
        "-path",
        path.to_str().unwrap(),
    ]);
    assert_eq!(out.trim(), "bundle set.");
    // SPIRE's poller tried before the bootstrap, failed, and tries again a minute later
    // (bundleutil.MinimumRefreshHint). `federation refresh` has it fetch Sigil's endpoint now,
    // authenticated with the bundle just set, and fails if it cannot.
    spire.cli_ok(&["federation", "refresh", "-id", "spiffe://sigil.test"]);
    let held = holds(|a| spire.cli_ok(a), "sigil.test");
    assert_eq!(keys(&held), keys(&sigil_doc), "{held}");
    // Sigil's poller stores the document SPIRE's endpoint serves, with its refresh hint (the
    // CLI's `bundle show` carries none).
    wait_for(
        "Sigil polls SPIRE's endpoint",
        Duration::from_secs(30),
        || {
            holds(|a| sigil.cli_ok(a), "spire.test")
                .contains("\"spiffe_refresh_hint\": 5")
                .then_some(())
        },
    );

    // Two workloads per side (checkout-service and payment-processor, each picking its SVID by
    // path), every entry federating with the other trust domain.
    let spire_agent = SpireAgent::start(&spire_agent, &spire);
    let (sigil_agent, sigil_agent_id) = attested_agent(&sigil, false);
    for id in [SIGIL_CHECKOUT, SIGIL_PAYMENTS] {
        register_uid(
            &sigil,
            id,
            &sigil_agent_id,
            uid(),
            &["-federatesWith", "spiffe://spire.test"],
        );
    }
    let uid_selector = format!("unix:uid:{}", uid());
    for id in [SPIRE_CHECKOUT, SPIRE_PAYMENTS] {
        spire.cli_ok(&[
            "entry",
            "create",
            "-parentID",
            &spire_agent.spiffe_id,
            "-spiffeID",
            id,
            "-selector",
            &uid_selector,
            "-federatesWith",
            "spiffe://sigil.test",
        ]);
    }
    wait_for(
        "sigil-agent hands out spire.test's bundle",
        Duration::from_secs(30),
        || {
            let dir = sigil_agent.write_x509().ok()?;
            dir.path()
                .join("federated_bundle.0.0.pem")
                .exists()
                .then_some(())
        },
    );

    // mTLS: the Rust checkout-service (sigil.test) calls the go-spiffe payment-processor
    // (spire.test); each side authorizes exactly the other's ID.
    let work = tempfile::tempdir().unwrap();
    let checkout = workspace_bin("checkout-service");
    let (mut pp, addr) =
        go_payment_processor(&spire_agent, SIGIL_CHECKOUT, &work.path().join("pp.log"));
    let sigil_endpoint = sigil_agent.endpoint();
    // `checkout-service --server <addr> --server-id <id>` under sigil-agent: its exit code and
    // the lines it must print.
    let call = |server: &str, server_id: &str, code: i32, wanted: &[&str]| {
        expect(
            &checkout,
            &sigil_endpoint,
            &["--server", server, "--server-id", server_id],
            code,
            wanted,
        )
    };
    let allowed = [
        &format!("-> 200 allowed: payment pay-1 accepted for {SIGIL_CHECKOUT}") as &str,
        &format!("[server {SPIRE_PAYMENTS} "),
    ];
    call(&addr, SPIRE_PAYMENTS, 0, &allowed);
    // The client refuses a SPIRE server presenting another ID than the one it expects.
    let impostor = "spiffe://spire.test/ns/payments/sa/payment-processor-v2";
    call(
        &addr,
        impostor,
        1,
        &[&format!(
            "refused server identity: it presented {SPIRE_PAYMENTS}, expected {impostor}"
        )],
    );
    // A SPIRE server expecting another Sigil identity refuses ours at the handshake.
    let storefront = "spiffe://sigil.test/ns/shop/sa/storefront";
    let (mut strict, strict_addr) =
        go_payment_processor(&spire_agent, storefront, &work.path().join("strict.log"));
    call(&strict_addr, SPIRE_PAYMENTS, 1, &["-> failed: "]);
    strict.stop(Duration::from_secs(10));
    assert!(
        strict
            .log()
            .contains(&format!("unexpected ID \"{SIGIL_CHECKOUT}\"")),
        "{}",
        strict.log()
    );

    // And the other way: the go-spiffe checkout-service (spire.test) calls the Rust
    // payment-processor (sigil.test) told to allow it (`--client-id`); the Rust server refuses
    // another spire.test identity with a 403 naming it.
    let rust_addr = format!("127.0.0.1:{}", free_port());
    let mut rust_pp = Process::spawn(
        {
            let mut c = Command::new(workspace_bin("payment-processor"));
            c.args(["--listen", &rust_addr, "--client-id", SPIRE_CHECKOUT])
                .env("SPIFFE_ENDPOINT_SOCKET", &sigil_endpoint);
            c
        },
        &work.path().join("rust-pp.log"),
    );
    rust_pp.wait_until(
        "Rust payment-processor to listen",
        Duration::from_secs(30),
        |p| p.log().contains("payment-processor listening"),
    );
    let go_checkout = go_program("checkout-service");
    let spire_endpoint = spire_agent.endpoint();
    expect(
        &go_checkout,
        &spire_endpoint,
        &["--server", &rust_addr, "--server-id", SIGIL_PAYMENTS],
        0,
        &[
            &format!("-> 200 allowed: payment pay-1 accepted for {SPIRE_CHECKOUT}"),
            &format!("[server {SIGIL_PAYMENTS} "),
        ],
    );
    expect(
        &go_checkout,
        &spire_endpoint,
        &[
            "--server",
            &rust_addr,
            "--server-id",
            SIGIL_PAYMENTS,
            "--spiffe-id",
            SPIRE_PAYMENTS,
        ],
        3,
        &[&format!(
            "-> 403 refused: forbidden: identity {SPIRE_PAYMENTS} may not call POST /v1/payments"
        )],
    );
    rust_pp.stop(Duration::from_secs(10));

    // JWT-SVIDs across: minted by one agent for the other side's workload, validated by the
    // other agent's ValidateJWTSVID and by go-spiffe against that agent's JWT bundles (the
    // minter's keys as the other server polled them); another audience is refused.
    let jwt_tool = go_program("jwt-tool");
    for (minter, validator, subject, audience) in [
        (
            &spire_endpoint,
            &sigil_endpoint,
            SPIRE_PAYMENTS,
            SIGIL_CHECKOUT,
        ),
        (
            &sigil_endpoint,
            &spire_endpoint,
            SIGIL_CHECKOUT,
            SPIRE_PAYMENTS,
        ),
    ] {
        let token = expect(
            &jwt_tool,
            minter,
            &["fetch", "--audience", audience, "--spiffe-id", subject],
            0,
            &[],
        );
        let token = token.trim();
        let validated = expect(
            &jwt_tool,
            validator,
            &["validate", "--audience", audience, "--token", token],
            0,
            &[],
        );
        let validated: Value = serde_json::from_str(&validated).unwrap();
        assert_eq!(validated["spiffe_id"], subject, "{validated}");
        assert_eq!(validated["claims"]["aud"], serde_json::json!([audience]));
        expect(
            &jwt_tool,
            validator,
            &[
                "validate",
                "--audience",
                "spiffe://other.test/x",
                "--token",
                token,
            ],
            1,
            &["ValidateJWTSVID"],
        );
    }

    // Both CAs rotate: each side's stored copy of the other's bundle follows, X.509
    // authorities and JWT keys alike, polled from the bundle endpoint without restart.
    follows(
        "Sigil's rotation at SPIRE",
        || sigil.cli_ok(&["bundle", "show", "-format", "spiffe"]),
        || holds(|a| spire.cli_ok(a), "sigil.test"),
        || lines_with(&spire.log(), "sigil.test"),
    );
    follows(
        "SPIRE's rotation at Sigil",
        || spire.cli_ok(&["bundle", "show", "-format", "spiffe"]),
        || holds(|a| sigil.cli_ok(a), "spire.test"),
        || lines_with(&sigil.log(), "spire.test"),
    );

    // After both rotations the same call still succeeds.
    call(
        &addr,
        SPIRE_PAYMENTS,
        0,
        &["-> 200 allowed: payment pay-2 accepted for "],
    );
    pp.stop(Duration::from_secs(10));
}
