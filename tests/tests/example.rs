//! End-to-end test of the zero-trust example (`examples/zero-trust`): the real sigil-server and
//! sigil-agent (unix attestation by binary path), `payment-processor` and `checkout-service`
//! with only Workload API material, and a Python client on py-spiffe-tls.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use sigil_testkit::{Agent, Server, ServerOptions, bin_dir, free_port, python, wait_for};

const TD: &str = "example.org";
const PAYMENT_PROCESSOR: &str = "spiffe://example.org/ns/payments/sa/payment-processor";
const CHECKOUT: &str = "spiffe://example.org/ns/payments/sa/checkout-service";
const STOREFRONT: &str = "spiffe://example.org/ns/shop/sa/storefront";
const REPORTING: &str = "spiffe://example.org/ns/analytics/sa/reporting";

fn uid() -> u32 {
    nix::unistd::geteuid().as_raw()
}

fn example_bin(name: &str) -> PathBuf {
    let path = bin_dir().join(name);
    assert!(
        path.exists(),
        "{} is missing: `cargo build --workspace --bins` first",
        path.display()
    );
    path
}

/// A started process, killed on drop, with its stdout and stderr in one file.
struct Proc {
    child: Option<Child>,
    log: PathBuf,
}

impl Proc {
    fn spawn(mut cmd: Command, log: PathBuf) -> Proc {
        let file = std::fs::File::create(&log).expect("log file");
        let child = cmd
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("log fd"))
            .stderr(file)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
        Proc {
            child: Some(child),
            log,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    fn terminate(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM);
            sigil_testkit::wait_child(&mut child, Duration::from_secs(10));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// An agent attested with a join token whose unix attestor also yields `unix:path` selectors.
fn path_attesting_agent(server: &Server) -> (Agent, String) {
    let token = server
        .cli_ok(&["token", "generate", "-ttl", "600"])
        .trim()
        .strip_prefix("Token: ")
        .expect("token output")
        .to_owned();
    let mut agent = Agent::configure(server);
    let conf = std::fs::read_to_string(&agent.config).expect("agent.conf");
    let unix = "WorkloadAttestor \"unix\" {\n    plugin_data {}\n  }";
    assert!(conf.contains(unix), "harness agent.conf changed:\n{conf}");
    let conf = conf.replace(
        unix,
        "WorkloadAttestor \"unix\" {\n    plugin_data {\n      discover_workload_path = true\n    }\n  }",
    );
    std::fs::write(&agent.config, conf).expect("write agent.conf");
    agent.spawn(Some(&token));
    (
        agent,
        format!("spiffe://{TD}/spire/agent/join_token/{token}"),
    )
}

/// Registers `spiffe_id` for processes of this user running the binary at `path`.
fn register_path(server: &Server, parent: &str, spiffe_id: &str, path: &Path) {
    let uid = format!("unix:uid:{}", uid());
    let path = format!("unix:path:{}", path.display());
    server.cli_json(&[
        "entry",
        "create",
        "-spiffeID",
        spiffe_id,
        "-parentID",
        parent,
        "-selector",
        &uid,
        "-selector",
        &path,
    ]);
}

fn endpoint(agent: &Agent) -> String {
    format!("unix://{}", agent.socket.display())
}

fn run(mut cmd: Command) -> Output {
    cmd.output().unwrap_or_else(|e| panic!("run {cmd:?}: {e}"))
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// `key=value` from a checkout-service call line's `[server <id> serial=.. ca=..]`.
fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    let start = line.find(&format!(" {key}="))? + key.len() + 2;
    line[start..].split([' ', ']']).next()
}

/// The allowed call keeps succeeding while payment-processor's SVID rotates and the CA rotates
/// under both services (checked from the certificates the server actually presented); another
/// identity, another route and another server are each refused, and say why; a Python client
/// on py-spiffe-tls completes mTLS with the Rust server and is refused by identity.
#[test]
fn zero_trust_example_allows_checkout_across_rotations_and_refuses_the_rest() {
    // ca_ttl 30 s: the next CA joins the bundle 15 s into the first's life and signs from
    // 25 s. X509-SVIDs live 20 s and carry a NotBefore 10 s in the past, so the agent renews
    // them every ~5 s (shorter TTLs make it re-mint continuously: see the report).
    let server = Server::start(ServerOptions {
        ca_ttl: "30s".into(),
        x509_svid_ttl: "20s".into(),
        health: false,
        ..Default::default()
    });
    let (agent, agent_id) = path_attesting_agent(&server);
    let work = tempfile::tempdir().expect("temp dir");

    // A second copy of checkout-service is a different workload: another path, another ID.
    let checkout = example_bin("checkout-service");
    let storefront = work.path().join("storefront");
    std::fs::copy(&checkout, &storefront).expect("copy checkout-service");
    let py = python();
    let py_real = run({
        let mut c = Command::new(&py);
        c.args([
            "-c",
            "import os, sys, spiffetls; print(os.path.realpath(sys.executable))",
        ]);
        c
    });
    assert!(
        py_real.status.success(),
        "{py} lacks py-spiffe-tls (pip install -r tests/requirements.txt): {}",
        text(&py_real)
    );
    let py_real = PathBuf::from(String::from_utf8_lossy(&py_real.stdout).trim());

    let payment_processor = example_bin("payment-processor");
    register_path(&server, &agent_id, PAYMENT_PROCESSOR, &payment_processor);
    register_path(&server, &agent_id, CHECKOUT, &checkout);
    register_path(&server, &agent_id, STOREFRONT, &storefront);
    register_path(&server, &agent_id, REPORTING, &py_real);

    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let mut pp = Proc::spawn(
        {
            let mut c = Command::new(&payment_processor);
            c.args(["--listen", &addr])
                .env("SPIFFE_ENDPOINT_SOCKET", endpoint(&agent));
            c
        },
        work.path().join("payment-processor.log"),
    );
    wait_for(
        "payment-processor to listen",
        Duration::from_secs(30),
        || {
            assert!(
                pp.exited().is_none(),
                "payment-processor exited:\n{}",
                pp.log()
            );
            pp.log()
                .contains("payment-processor listening")
                .then_some(())
        },
    );
    assert!(pp.log().contains(PAYMENT_PROCESSOR), "{}", pp.log());

    let checkout_cmd = |exe: &Path, extra: &[&str]| {
        let mut c = Command::new(exe);
        c.args(["--server", &addr])
            .args(extra)
            .env("SPIFFE_ENDPOINT_SOCKET", endpoint(&agent));
        c
    };

    // The loop: one call (one handshake) every 200 ms until both rotations have been seen.
    let mut looping = Proc::spawn(
        checkout_cmd(&checkout, &["--repeat", "1000", "--interval", "200ms"]),
        work.path().join("checkout-loop.log"),
    );

    // Meanwhile, the refusals.
    let out = run(checkout_cmd(
        &checkout,
        &["--method", "GET", "--path", "/v1/refunds"],
    ));
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    assert!(
        text(&out).contains("-> 403 refused: forbidden: route GET /v1/refunds"),
        "{}",
        text(&out)
    );
    let out = run(checkout_cmd(&storefront, &["--spiffe-id", STOREFRONT]));
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    assert!(
        text(&out).contains(&format!(
            "-> 403 refused: forbidden: identity {STOREFRONT} may not call POST /v1/payments"
        )),
        "{}",
        text(&out)
    );
    let impostor = "spiffe://example.org/ns/payments/sa/payment-processor-v2";
    let out = run(checkout_cmd(&checkout, &["--server-id", impostor]));
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains(&format!(
            "refused server identity: it presented {PAYMENT_PROCESSOR}, expected {impostor}"
        )),
        "{}",
        text(&out)
    );
    let out = run({
        let mut c = Command::new(&py);
        c.arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../examples/zero-trust/python/reporting_client.py"
        ))
        .arg(&addr)
        .env("SPIFFE_ENDPOINT_SOCKET", endpoint(&agent));
        c
    });
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    assert!(
        text(&out).contains(&format!(
            "[python {REPORTING}] POST /v1/payments -> 403 refused: forbidden: identity {REPORTING} may not call POST /v1/payments"
        )),
        "{}",
        text(&out)
    );

    // Both rotations, seen in the SVIDs payment-processor presented to the looping client: a
    // serial change within the first CA, then a leaf from another CA; and a few calls after.
    let calls = |log: &str| -> Vec<String> {
        log.lines()
            .filter(|l| l.starts_with('['))
            .map(str::to_owned)
            .collect()
    };
    let (serials, cas) = wait_for(
        "an SVID rotation and a CA rotation under the calls",
        Duration::from_secs(45),
        || {
            assert!(
                looping.exited().is_none(),
                "checkout loop exited:\n{}",
                looping.log()
            );
            let calls = calls(&looping.log());
            let ca_of = |l: &String| field(l, "ca").map(str::to_owned);
            let first_ca = calls.first().and_then(ca_of)?;
            let rotated_at = calls
                .iter()
                .position(|l| ca_of(l).as_ref() != Some(&first_ca))?;
            let before: BTreeSet<&str> = calls[..rotated_at]
                .iter()
                .filter_map(|l| field(l, "serial"))
                .collect();
            (before.len() >= 2 && calls.len() >= rotated_at + 5).then(|| {
                let serials: BTreeSet<String> = calls
                    .iter()
                    .filter_map(|l| field(l, "serial"))
                    .map(str::to_owned)
                    .collect();
                let cas: BTreeSet<String> = calls.iter().filter_map(ca_of).collect();
                (serials, cas)
            })
        },
    );
    looping.terminate();
    let log = looping.log();
    let calls = calls(&log);
    for line in &calls {
        assert!(
            line.contains("-> 200 allowed: payment pay-")
                && line.contains(&format!("accepted for {CHECKOUT}"))
                && line.contains(&format!("[server {PAYMENT_PROCESSOR} ")),
            "a call failed across rotations: {line}\n{log}"
        );
    }
    assert!(serials.len() >= 3, "{serials:?}");
    assert_eq!(cas.len(), 2, "{cas:?}");

    // payment-processor logged one line per request, with the verdict; the checkout-service's
    // own SVID rotated too (several client serials on the allowed calls).
    pp.terminate();
    let pp_log = pp.log();
    let allowed: Vec<&str> = pp_log
        .lines()
        .filter(|l| l.contains(&format!("peer={CHECKOUT}")) && l.contains("verdict=allow"))
        .collect();
    assert!(allowed.len() >= calls.len(), "{pp_log}");
    let client_serials: BTreeSet<&str> = allowed
        .iter()
        .filter_map(|l| field(l, "peer_serial"))
        .collect();
    assert!(client_serials.len() >= 2, "{client_serials:?}\n{pp_log}");
    for (peer, route, verdict) in [
        (CHECKOUT, "GET /v1/refunds", "deny-route"),
        (STOREFRONT, "POST /v1/payments", "deny-identity"),
        (REPORTING, "POST /v1/payments", "deny-identity"),
    ] {
        assert!(
            pp_log.lines().any(|l| l.contains(&format!("peer={peer}"))
                && l.contains(&format!("route={route}"))
                && l.contains(&format!("verdict={verdict}"))
                && l.contains("status=403")),
            "no {verdict} line for {peer} {route}:\n{pp_log}"
        );
    }
    drop(agent);
}
