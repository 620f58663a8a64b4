//! Envoy SDS v3 on the agent's Workload API socket, end to end: the real `sigil-server` and
//! `sigil-agent`, and as the workload an independent client on go-control-plane's Envoy API
//! types and grpc-go (`tests/go/cmd/sds-client`) that speaks SDS as Envoy does: a Node with
//! user agent `envoy` on each stream's first request, ACKs and NACKs with version and nonce, no
//! `workload.spiffe.io` header. The test drives it line by line (see the program's doc) and
//! asserts on the JSON line it prints per response: names, kinds, the leaf's SPIFFE ID and
//! serial, key/certificate match, and which validation contexts the chain verifies against
//! (crypto/x509, Envoy's SPIFFE validator semantics: the bundle of the leaf's trust domain).
//!
//! The workload is the Go process itself: the agent discovers workload paths and entries select
//! `unix:path:` of a copy of the binary in the test's temp dir, so a copy at another path (and
//! this test process) is a caller with no entry.
//!
//! Also the example's Envoy bootstraps (`examples/zero-trust/envoy`), checked without an Envoy
//! binary by `tests/go/cmd/envoy-validate` (go-control-plane's validation), and their SDS
//! secret names fetched from the real agent.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sigil_testkit::go::go_program;
use sigil_testkit::{Agent, Server, ServerOptions, multi_thread_rt, pem_certs, wait_for};

const SECRET_TYPE: &str = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret";
const SPIFFE_VALIDATOR: &str = "envoy.tls.cert_validator.spiffe";
const SPIFFE_VALIDATOR_TYPE: &str =
    "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.SPIFFECertValidatorConfig";
const WEB: &str = "spiffe://example.org/web";
/// How long a stream must stay silent after an ACK or a NACK.
const QUIET: Duration = Duration::from_secs(2);
/// A response that is due at once (a new subscription, a first response for a minted SVID).
const PROMPT: Duration = Duration::from_secs(5);
/// A first response while the SVID is minted, or a push after a change on the server.
const PUSH: Duration = Duration::from_secs(30);

/// A running `sds-client`: command lines on its stdin, one JSON event per line from its stdout
/// (read on a thread). Events that arrive while the test waits for another are kept in order.
struct SdsClient {
    child: Child,
    stdin: ChildStdin,
    events: Receiver<Value>,
    pending: VecDeque<Value>,
}

impl SdsClient {
    /// Starts the program at `binary` on `agent`'s socket, with `flags` (`-envoy-version`,
    /// `-metadata`).
    fn start(binary: &Path, agent: &Agent, flags: &[&str]) -> Self {
        let mut child = Command::new(binary)
            .arg("-socket")
            .arg(&agent.socket)
            .args(flags)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", binary.display()));
        let stdout = child.stdout.take().expect("piped stdout");
        let stdin = child.stdin.take().expect("piped stdin");
        let (tx, events) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let event = serde_json::from_str(&line).unwrap_or_else(
                    |e| json!({"event": "garbage", "line": line, "error": e.to_string()}),
                );
                if tx.send(event).is_err() {
                    break;
                }
            }
        });
        Self {
            child,
            stdin,
            events,
            pending: VecDeque::new(),
        }
    }

    /// Sends one command and waits until the client has carried it out.
    fn cmd(&mut self, line: &str) {
        let line = line.trim();
        writeln!(self.stdin, "{line}").expect("write to sds-client");
        self.stdin.flush().expect("flush to sds-client");
        let deadline = Instant::now() + Duration::from_secs(40);
        loop {
            let event = self
                .recv_until(deadline)
                .unwrap_or_else(|| panic!("sds-client did not carry out `{line}` in time"));
            if event["event"] == "done" && event["cmd"] == line {
                assert!(event.get("error").is_none(), "sds-client `{line}`: {event}");
                return;
            }
            self.pending.push_back(event);
        }
    }

    fn recv_until(&mut self, deadline: Instant) -> Option<Value> {
        let left = deadline.saturating_duration_since(Instant::now());
        match self.events.recv_timeout(left) {
            Ok(event) => Some(event),
            Err(RecvTimeoutError::Timeout) => None,
            Err(RecvTimeoutError::Disconnected) => {
                panic!("sds-client exited: {:?}", self.child.try_wait())
            }
        }
    }

    /// The first event (kept or new) that `pred` accepts, within `timeout`.
    fn next_matching(&mut self, timeout: Duration, pred: impl Fn(&Value) -> bool) -> Option<Value> {
        if let Some(i) = self.pending.iter().position(&pred) {
            return self.pending.remove(i);
        }
        let deadline = Instant::now() + timeout;
        while let Some(event) = self.recv_until(deadline) {
            if pred(&event) {
                return Some(event);
            }
            self.pending.push_back(event);
        }
        None
    }

    /// The next event on `stream` (a response, or how it ended) within `timeout`.
    fn next(&mut self, stream: &str, timeout: Duration) -> Value {
        self.next_matching(timeout, |e| e["stream"] == stream)
            .unwrap_or_else(|| panic!("nothing on stream {stream} within {timeout:?}"))
    }

    /// The next response on `stream` within `timeout`.
    fn response(&mut self, stream: &str, timeout: Duration) -> Value {
        let event = self.next(stream, timeout);
        assert_eq!(event["event"], "response", "stream {stream}: {event}");
        event
    }

    /// How `stream` ended, within `timeout`.
    fn ended(&mut self, stream: &str, timeout: Duration) -> Value {
        let event = self.next(stream, timeout);
        assert_eq!(event["event"], "error", "stream {stream}: {event}");
        event
    }

    /// Asserts that nothing arrives on `stream` for `time`.
    fn quiet(&mut self, stream: &str, time: Duration) {
        if let Some(event) = self.next_matching(time, |e| e["stream"] == stream) {
            panic!("stream {stream} should stay silent for {time:?}, got {event}");
        }
    }

    fn open(&mut self, stream: &str, names: &[&str]) {
        self.cmd(&format!("open {stream} {}", names.join(" ")));
    }

    fn ack(&mut self, stream: &str) {
        self.cmd(&format!("ack {stream}"));
    }

    fn nack(&mut self, stream: &str, message: &str) {
        self.cmd(&format!("nack {stream} {message}"));
    }

    /// Sends a request as given: `nonce` and `type_url` (`-`: the last nonce, the Secret type).
    fn request(&mut self, stream: &str, nonce: &str, type_url: &str, names: &[&str]) {
        self.cmd(&format!(
            "request {stream} {nonce} {type_url} {}",
            names.join(" ")
        ));
    }

    fn subscribe(&mut self, stream: &str, names: &[&str]) {
        self.cmd(&format!("subscribe {stream} {}", names.join(" ")));
    }

    /// FetchSecrets for `names`: `code` OK with `version_info` and `resources`, or the error.
    fn fetch(&mut self, names: &[&str]) -> Value {
        self.cmd(&format!("fetch {}", names.join(" ")));
        self.next_matching(Duration::ZERO, |e| e["event"] == "fetch")
            .expect("a fetch result")
    }

    /// DeltaSecrets: its status code and message.
    fn delta(&mut self) -> Value {
        self.cmd("delta");
        self.next_matching(Duration::ZERO, |e| e["event"] == "delta")
            .expect("a delta result")
    }
}

impl Drop for SdsClient {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An agent whose unix workload attestor discovers workload paths (`unix:path` selectors),
/// attested with a fresh join token; and its SPIFFE ID.
fn path_agent(server: &Server) -> (Agent, String) {
    let token = server.join_token();
    let mut agent = Agent::configure(server);
    agent.discover_workload_path();
    agent.spawn(Some(&token));
    let id = server.join_token_agent_id(&token);
    (agent, id)
}

/// A copy of the sds-client program at `dir/name`: a workload of its own (`unix:path`).
fn workload_binary(dir: &Path, name: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::copy(go_program("sds-client"), &path).expect("copy sds-client");
    path
}

/// Registers `spiffe_id` under `parent` for the program at `binary`; returns the entry ID.
fn register_path(
    server: &Server,
    spiffe_id: &str,
    parent: &str,
    binary: &Path,
    extra: &[&str],
) -> String {
    sigil_testkit::register(
        server,
        spiffe_id,
        parent,
        &format!("unix:path:{}", binary.display()),
        extra,
    )
}

/// Sets `bundle_json` (SPIFFE format) as the federated bundle of `td_id` on `server`.
fn set_bundle(server: &Server, td_id: &str, bundle_json: &str) {
    let path = server.dir.path().join("federated.json");
    std::fs::write(&path, bundle_json).expect("write bundle");
    let out = server.cli_ok(&[
        "bundle",
        "set",
        "-id",
        td_id,
        "-path",
        path.to_str().expect("UTF-8 path"),
        "-format",
        "spiffe",
    ]);
    assert_eq!(out.trim(), "bundle set.");
}

fn version(response: &Value) -> &str {
    response["version_info"].as_str().expect("version_info")
}

/// The resource names of a response, sorted.
fn names(response: &Value) -> Vec<String> {
    let mut names: Vec<String> = response["resources"]
        .as_array()
        .expect("resources")
        .iter()
        .map(|r| r["name"].as_str().unwrap_or_default().to_owned())
        .collect();
    names.sort();
    names
}

fn resource<'a>(response: &'a Value, name: &str) -> &'a Value {
    response["resources"]
        .as_array()
        .expect("resources")
        .iter()
        .find(|r| r["name"] == name)
        .unwrap_or_else(|| panic!("no resource {name:?} in {response}"))
}

/// `secret` is an X.509-SVID for `spiffe_id` whose PKCS#8 key matches its leaf and whose chain
/// verifies against exactly the validation contexts `verified_by`; returns the leaf's serial.
fn assert_svid(secret: &Value, spiffe_id: &str, verified_by: &[&str]) -> String {
    assert_eq!(secret["any_type_url"], SECRET_TYPE, "{secret}");
    assert_eq!(secret["valid"], "ok", "Envoy's ValidateAll: {secret}");
    assert_eq!(secret["kind"], "tls_certificate", "{secret}");
    assert_eq!(secret["spiffe_id"], spiffe_id, "{secret}");
    assert_eq!(secret["key_pkcs8"], true, "{secret}");
    assert_eq!(secret["key_matches"], true, "{secret}");
    assert_eq!(secret["verified_by"], json!(verified_by), "{secret}");
    assert!(secret.get("error").is_none(), "{secret}");
    secret["serial"].as_str().expect("serial").to_owned()
}

/// `secret` is a validation context for Envoy's SPIFFE validator holding exactly the trust
/// domains `domains` (name, number of CA certificates), in that order.
fn assert_spiffe_validation(secret: &Value, domains: &[(&str, usize)]) {
    assert_eq!(secret["any_type_url"], SECRET_TYPE, "{secret}");
    assert_eq!(secret["valid"], "ok", "Envoy's ValidateAll: {secret}");
    assert_eq!(secret["kind"], "validation_context", "{secret}");
    assert_eq!(secret["validator"], "spiffe", "{secret}");
    assert_eq!(
        secret["custom_validator_name"], SPIFFE_VALIDATOR,
        "{secret}"
    );
    assert_eq!(
        secret["typed_config_type_url"], SPIFFE_VALIDATOR_TYPE,
        "{secret}"
    );
    assert_eq!(secret["spiffe_config_valid"], "ok", "{secret}");
    let names: Vec<&str> = domains.iter().map(|(name, _)| *name).collect();
    assert_eq!(secret["trust_domains"], json!(names), "{secret}");
    for (name, certs) in domains {
        assert_eq!(secret["bundle_certs"][name], *certs, "{name}: {secret}");
    }
    assert!(secret.get("error").is_none(), "{secret}");
}

/// The number of CA certificates in `server`'s own bundle.
fn bundle_certs(server: &Server) -> usize {
    pem_certs(&server.cli_ok(&["bundle", "show"])).len()
}

/// A Workload API call from this test process without the `workload.spiffe.io` header.
fn workload_api_without_header(agent: &Agent) -> tonic::Status {
    multi_thread_rt().block_on(async {
        let channel = sigil_testkit::admin::uds_channel(&agent.socket)
            .await
            .expect("a channel to the agent");
        let mut raw =
            sigil_proto::workload::spiffe_workload_api_client::SpiffeWorkloadApiClient::new(
                channel,
            );
        raw.fetch_jwtsvid(sigil_proto::workload::JwtsvidRequest {
            audience: vec!["a".into()],
            spiffe_id: String::new(),
        })
        .await
        .expect_err("refused without the header")
    })
}

#[test]
fn default_and_rootca_on_one_stream_ack_nack_and_a_new_subscription() {
    let server = Server::start(ServerOptions::default());
    let (agent, agent_id) = path_agent(&server);
    let dir = tempfile::tempdir().unwrap();
    let envoy = workload_binary(dir.path(), "envoy");
    register_path(&server, WEB, &agent_id, &envoy, &[]);
    let own_certs = bundle_certs(&server);

    let mut c = SdsClient::start(&envoy, &agent, &[]);
    c.open("s1", &["default", "ROOTCA"]);
    let first = c.response("s1", PUSH);
    assert_eq!(first["type_url"], SECRET_TYPE, "{first}");
    assert!(!version(&first).is_empty(), "{first}");
    assert!(!first["nonce"].as_str().unwrap().is_empty(), "{first}");
    assert_eq!(names(&first), ["ROOTCA", "default"]);
    let serial = assert_svid(resource(&first, "default"), WEB, &["ROOTCA"]);
    assert_spiffe_validation(resource(&first, "ROOTCA"), &[("example.org", own_certs)]);

    // ACK: nothing more. NACK: logged by the agent, nothing re-sent while nothing changes.
    c.ack("s1");
    c.quiet("s1", QUIET);
    c.nack("s1", "rejected on purpose by the test");
    c.quiet("s1", QUIET);

    // New names under a stale nonce: ignored.
    c.request(
        "s1",
        "0123456789abcdef",
        "-",
        &["default", "ROOTCA", "spiffe://example.org"],
    );
    c.quiet("s1", QUIET);

    // New names on the same stream: answered at once, same version (nothing else changed).
    c.subscribe("s1", &["default", "ROOTCA", "spiffe://example.org"]);
    let renamed = c.response("s1", PROMPT);
    assert_eq!(version(&renamed), version(&first), "{renamed}");
    assert_ne!(renamed["nonce"], first["nonce"]);
    assert_eq!(
        names(&renamed),
        ["ROOTCA", "default", "spiffe://example.org"]
    );
    assert_eq!(
        assert_svid(
            resource(&renamed, "default"),
            WEB,
            &["ROOTCA", "spiffe://example.org"]
        ),
        serial
    );
    assert_spiffe_validation(
        resource(&renamed, "spiffe://example.org"),
        &[("example.org", own_certs)],
    );
    c.ack("s1");

    // The SPIFFE ID as a name: that SVID, under that name.
    c.open("by-id", &[WEB, "ROOTCA"]);
    let by_id = c.response("by-id", PROMPT);
    assert_eq!(names(&by_id), ["ROOTCA", WEB]);
    assert_eq!(assert_svid(resource(&by_id, WEB), WEB, &["ROOTCA"]), serial);

    // Another resource type on the stream: refused, the stream ends.
    c.request(
        "by-id",
        "-",
        "type.googleapis.com/envoy.config.cluster.v3.Cluster",
        &["default"],
    );
    let ended = c.ended("by-id", PROMPT);
    assert_eq!(ended["code"], "InvalidArgument", "{ended}");

    // FetchSecrets: the same resources; its version is a digest of the content.
    let fetched = c.fetch(&["default", "ROOTCA"]);
    assert_eq!(fetched["code"], "OK", "{fetched}");
    assert_eq!(fetched["type_url"], SECRET_TYPE, "{fetched}");
    assert!(!version(&fetched).is_empty(), "{fetched}");
    assert_eq!(
        assert_svid(resource(&fetched, "default"), WEB, &["ROOTCA"]),
        serial
    );
    let again = c.fetch(&["default", "ROOTCA"]);
    assert_eq!(version(&again), version(&fetched));

    // DeltaSecrets is not implemented.
    let delta = c.delta();
    assert_eq!(delta["code"], "Unimplemented", "{delta}");

    // All of the above without the `workload.spiffe.io` header, which the Workload API on the
    // same socket still requires.
    let refused = workload_api_without_header(&agent);
    assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{refused:?}");

    // An Envoy older than 1.18 (no SPIFFE validator), or one that turns it off in its Node
    // metadata, gets the bundle as trusted_ca; for the latter ALL is an error.
    for flags in [
        &["-envoy-version", "1.17.4"][..],
        &["-metadata", "disable_spiffe_cert_validation:bool=true"][..],
        &["-metadata", "disable_spiffe_cert_validation=true"][..],
    ] {
        let mut plain = SdsClient::start(&envoy, &agent, flags);
        plain.open("s", &["default", "ROOTCA"]);
        let r = plain.response("s", PROMPT);
        let root = resource(&r, "ROOTCA");
        assert_eq!(root["validator"], "trusted_ca", "{flags:?}: {root}");
        assert_eq!(root["ca_certs"], own_certs, "{flags:?}: {root}");
        assert_eq!(root["valid"], "ok", "{flags:?}: {root}");
        assert_svid(resource(&r, "default"), WEB, &["ROOTCA"]);
        if flags[0] == "-metadata" {
            plain.open("all", &["ALL"]);
            let ended = plain.ended("all", PROMPT);
            assert_ne!(ended["code"], "OK", "{flags:?}: {ended}");
        }
    }

    // A caller with no entry (the same program at another path): the bundle, but no SVID.
    let stranger = workload_binary(dir.path(), "stranger");
    let mut s = SdsClient::start(&stranger, &agent, &[]);
    s.open("roots", &["ROOTCA"]);
    let roots = s.response("roots", PROMPT);
    assert_eq!(names(&roots), ["ROOTCA"]);
    assert_spiffe_validation(resource(&roots, "ROOTCA"), &[("example.org", own_certs)]);
    s.open("mine", &["default"]);
    let ended = s.ended("mine", PROMPT);
    assert_eq!(ended["code"], "InvalidArgument", "{ended}");
    let message = ended["message"].as_str().unwrap();
    assert!(
        message.starts_with("workload is not authorized for the requested identities [")
            && message.contains("\"default\""),
        "{message}"
    );
    let fetched = s.fetch(&["default"]);
    assert_eq!(fetched["code"], "InvalidArgument", "{fetched}");
    // Nor another workload's SPIFFE ID.
    let fetched = s.fetch(&[WEB]);
    assert_eq!(fetched["code"], "InvalidArgument", "{fetched}");
    assert!(
        fetched["message"].as_str().unwrap().contains(WEB),
        "{fetched}"
    );
}

#[test]
fn all_has_a_trust_domain_per_bundle_and_a_federated_bundle_is_pushed() {
    let server = Server::start(ServerOptions::default());
    let bank = Server::start(ServerOptions {
        trust_domain: "bank.test".into(),
        ..ServerOptions::default()
    });
    let (agent, agent_id) = path_agent(&server);
    let dir = tempfile::tempdir().unwrap();
    let envoy = workload_binary(dir.path(), "envoy");
    let own_certs = bundle_certs(&server);
    let bank_json = bank.cli_ok(&["bundle", "show", "-format", "spiffe"]);
    // A federated bundle no entry of this workload federates with: never handed to it.
    set_bundle(&server, "spiffe://other.test", &bank_json);
    register_path(
        &server,
        WEB,
        &agent_id,
        &envoy,
        &["-federatesWith", "spiffe://bank.test"],
    );

    let mut c = SdsClient::start(&envoy, &agent, &[]);
    c.open("s1", &["default", "ROOTCA"]);
    let first = c.response("s1", PUSH);
    assert_svid(resource(&first, "default"), WEB, &["ROOTCA"]);
    c.ack("s1");
    // ALL on a second stream: bank.test's bundle has not arrived yet.
    c.open("s2", &["ALL"]);
    let all = c.response("s2", PROMPT);
    assert_eq!(all["type_url"], SECRET_TYPE, "{all}");
    assert_eq!(names(&all), ["ALL"]);
    assert_spiffe_validation(resource(&all, "ALL"), &[("example.org", own_certs)]);
    c.ack("s2");

    // It arrives: pushed on the ALL stream, one trust domain per bundle, sorted by name.
    set_bundle(&server, "spiffe://bank.test", &bank_json);
    let pushed = c.response("s2", PUSH);
    assert_ne!(version(&pushed), version(&all), "{pushed}");
    let bank_certs = bundle_certs(&bank);
    assert_spiffe_validation(
        resource(&pushed, "ALL"),
        &[("bank.test", bank_certs), ("example.org", own_certs)],
    );
    c.ack("s2");
    // Nothing the first stream holds changed: it is sent nothing.
    c.quiet("s1", QUIET);
    // The workload's SVID verifies against ALL (its own trust domain's bundle in it).
    let fetched = c.fetch(&["default", "ALL"]);
    assert_eq!(fetched["code"], "OK", "{fetched}");
    assert_svid(resource(&fetched, "default"), WEB, &["ALL"]);
    // A trust domain ID as a name: that bundle alone.
    let fetched = c.fetch(&["spiffe://bank.test"]);
    assert_spiffe_validation(
        resource(&fetched, "spiffe://bank.test"),
        &[("bank.test", bank_certs)],
    );

    // bank.test prepares a new CA: its bundle grows, and the change is pushed too.
    bank.cli_ok(&["localauthority", "x509", "prepare"]);
    let grown = wait_for("bank.test's prepared CA", PUSH, || {
        (bundle_certs(&bank) > bank_certs)
            .then(|| bank.cli_ok(&["bundle", "show", "-format", "spiffe"]))
    });
    set_bundle(&server, "spiffe://bank.test", &grown);
    let pushed_again = c.response("s2", PUSH);
    assert_ne!(version(&pushed_again), version(&pushed));
    assert_spiffe_validation(
        resource(&pushed_again, "ALL"),
        &[("bank.test", bank_certs + 1), ("example.org", own_certs)],
    );
}

#[test]
fn pushes_when_the_svid_rotates_and_when_an_entry_is_deleted() {
    let server = Server::start(ServerOptions::default());
    let (agent, agent_id) = path_agent(&server);
    let dir = tempfile::tempdir().unwrap();
    let envoy = workload_binary(dir.path(), "envoy");
    const A: &str = "spiffe://example.org/a";
    const B: &str = "spiffe://example.org/b";
    // 10 s SVIDs (the server's floor is 5 s): rotated at about half-life.
    let a = register_path(&server, A, &agent_id, &envoy, &["-x509SVIDTTL", "10"]);
    let b = register_path(&server, B, &agent_id, &envoy, &[]);

    let mut c = SdsClient::start(&envoy, &agent, &[]);
    c.open("rot", &[A, "ROOTCA"]);
    let first = c.response("rot", PUSH);
    let serial = assert_svid(resource(&first, A), A, &["ROOTCA"]);
    c.ack("rot");
    let rotated = c.response("rot", PUSH);
    assert_ne!(version(&rotated), version(&first), "{rotated}");
    let new_serial = assert_svid(resource(&rotated, A), A, &["ROOTCA"]);
    assert_ne!(new_serial, serial, "{rotated}");
    assert!(
        resource(&rotated, A)["not_after"].as_str() > resource(&first, A)["not_after"].as_str(),
        "{rotated}\n{first}"
    );
    c.ack("rot");

    // A wildcard stream gets both SVIDs and the bundle, named by ID (once both are minted:
    // B's may come a moment after A's).
    c.open("wild", &[]);
    let deadline = Instant::now() + PUSH;
    let wild = loop {
        let r = c.response("wild", deadline.saturating_duration_since(Instant::now()));
        c.ack("wild");
        if names(&r).len() == 3 {
            break r;
        }
    };
    assert_eq!(names(&wild), ["spiffe://example.org", A, B]);
    assert_spiffe_validation(
        resource(&wild, "spiffe://example.org"),
        &[("example.org", bundle_certs(&server))],
    );
    // `default` is one of the two.
    c.open("def", &["default"]);
    let default = c.response("def", PROMPT);
    let first_id = resource(&default, "default")["spiffe_id"]
        .as_str()
        .expect("a SPIFFE ID")
        .to_owned();
    assert!(first_id == A || first_id == B, "{default}");
    c.ack("def");

    // Its entry deleted, `default` becomes the other SVID and the wildcard stream drops it
    // (rotations of A's SVID may come in between).
    let (deleted, kept, entry) = if first_id == A { (A, B, a) } else { (B, A, b) };
    server.cli_ok(&["entry", "delete", "-entryID", &entry]);
    let deadline = Instant::now() + PUSH;
    loop {
        let r = c.response("def", deadline.saturating_duration_since(Instant::now()));
        c.ack("def");
        if resource(&r, "default")["spiffe_id"] == kept {
            assert_svid(resource(&r, "default"), kept, &[]);
            break;
        }
    }
    let deadline = Instant::now() + PUSH;
    loop {
        let r = c.response("wild", deadline.saturating_duration_since(Instant::now()));
        c.ack("wild");
        if !names(&r).iter().any(|n| n == deleted) {
            assert_eq!(names(&r), ["spiffe://example.org", kept]);
            break;
        }
    }
}

/// The example's Envoy bootstraps.
fn envoy_examples() -> [PathBuf; 2] {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/zero-trust/envoy");
    [
        dir.join("checkout-service-envoy.yaml"),
        dir.join("payment-processor-envoy.yaml"),
    ]
}

fn envoy_validate(files: &[&Path]) -> std::process::Output {
    Command::new(go_program("envoy-validate"))
        .args(files)
        .output()
        .expect("run envoy-validate")
}

#[test]
fn envoy_example_bootstraps_validate_and_broken_copies_are_refused() {
    let [checkout, payment] = envoy_examples();
    let out = envoy_validate(&[&checkout, &payment]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(stdout.lines().filter(|l| l.starts_with("ok ")).count(), 2);

    // Each broken copy is refused, saying why.
    let dir = tempfile::tempdir().unwrap();
    let payment_text = std::fs::read_to_string(&payment).unwrap();
    let checkout_text = std::fs::read_to_string(&checkout).unwrap();
    let without = |text: &str, needle: &str| -> String {
        let kept: Vec<&str> = text.lines().filter(|l| !l.contains(needle)).collect();
        assert!(
            kept.len() < text.lines().count(),
            "{needle} not in the file"
        );
        kept.join("\n")
    };
    for (name, text, why) in [
        (
            "rbac-principal-without-name.yaml",
            without(&payment_text, "principal_name:"),
            "Principal.Identifier: value is required",
        ),
        (
            "sds-without-api-type.yaml",
            without(&checkout_text, "api_type: GRPC"),
            "api_type is not set",
        ),
        (
            "sds-cluster-misspelt.yaml",
            checkout_text.replace("cluster_name: sigil_agent }", "cluster_name: sigil-agent }"),
            "cluster \"sigil-agent\"",
        ),
        (
            "unknown-field.yaml",
            payment_text.replace(
                "require_client_certificate:",
                "require_client_certificates:",
            ),
            "unknown field \"require_client_certificates\"",
        ),
    ] {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        let out = envoy_validate(&[&path]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{name}: {stderr}");
        assert!(stderr.contains(why), "{name}: {stderr}");
    }
}

#[test]
fn the_example_sidecars_secret_names_are_served_by_the_agent() {
    let server = Server::start(ServerOptions::default());
    let (agent, agent_id) = path_agent(&server);
    let dir = tempfile::tempdir().unwrap();
    let envoy = workload_binary(dir.path(), "envoy");
    for file in envoy_examples() {
        let text = std::fs::read_to_string(&file).unwrap();
        assert!(
            text.contains("pipe: { path: /tmp/spire-agent/public/api.sock }"),
            "{}: the agent's default socket",
            file.display()
        );
        // The SDS secret names: the sidecar's SPIFFE ID and ALL.
        let names: Vec<&str> = text
            .lines()
            .filter_map(|l| l.trim().trim_start_matches("- ").strip_prefix("name: "))
            .filter(|n| n.starts_with("spiffe://") || *n == "ALL")
            .collect();
        assert_eq!(names.len(), 2, "{}: {names:?}", file.display());
        let id = names.iter().find(|n| n.starts_with("spiffe://")).unwrap();
        register_path(&server, id, &agent_id, &envoy, &[]);
        let mut c = SdsClient::start(&envoy, &agent, &[]);
        let fetched = wait_for("the sidecar's SVID", PUSH, || {
            let f = c.fetch(&names);
            (f["code"] == "OK").then_some(f)
        });
        assert_svid(resource(&fetched, id), id, &["ALL"]);
        assert_spiffe_validation(
            resource(&fetched, "ALL"),
            &[("example.org", bundle_certs(&server))],
        );
    }
}
