//! Files mode, end to end: `sigil-agent helper` (and the same binary run as `spiffe-helper`
//! through a link) against a real server and agent, with spiffe-helper's configuration file.
//! Checked with independent verifiers: `openssl verify` for the chain, rcgen and x509-parser
//! for key/certificate pairs, jsonwebtoken for the JWT-SVID against the JWT bundle file.
//!
//! The X.509-SVIDs live 6 s (above the server's 5 s floor), so the agent renews them about
//! every 3 s and a test sees many renewals in half a minute.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{DecodingKey, Validation};
use rcgen::PublicKeyData as _;
use sigil_testkit::verify::openssl_verify;
use sigil_testkit::{
    Agent, Process, Server, ServerOptions, agent_bin, attested_agent, free_port, http_get, openssl,
    pem_certs, register_uid, run_to_exit, uid, wait_for,
};
use x509_parser::pem::Pem;
use x509_parser::prelude::{FromDer, X509Certificate};

const ID: &str = "spiffe://example.org/files";

/// A server, an agent, and an entry for this test's uid whose X.509-SVIDs live 6 s.
fn world() -> (Server, Agent) {
    let server = Server::start(ServerOptions::default());
    let (agent, agent_id) = attested_agent(&server, false);
    register_uid(&server, ID, &agent_id, uid(), &["-x509SVIDTTL", "6"]);
    agent.wait_for_ids("the files SVID", &[ID], Duration::from_secs(20));
    (server, agent)
}

/// A temp dir with `certs/` and `helper.conf` = `agent_address` (when given), the X.509 keys
/// on `certs/`, then `extra`.
fn helper_dir(agent_socket: Option<&Path>, extra: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("certs")).unwrap();
    let conf = dir.path().join("helper.conf");
    let address = agent_socket
        .map(|s| format!("agent_address = \"{}\"\n", s.display()))
        .unwrap_or_default();
    std::fs::write(
        &conf,
        format!(
            "{address}cert_dir = \"{}\"\nsvid_file_name = \"svid.pem\"\n\
             svid_key_file_name = \"svid_key.pem\"\nsvid_bundle_file_name = \"bundle.pem\"\n{extra}",
            dir.path().join("certs").display()
        ),
    )
    .unwrap();
    (dir, conf)
}

/// `sigil-agent` reached through a link named `spiffe-helper` in `dir`.
fn spiffe_helper_link(dir: &Path) -> PathBuf {
    let link = dir.join("spiffe-helper");
    std::os::unix::fs::symlink(agent_bin(), &link).unwrap();
    link
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o7777
}

/// The leaf's SPKI and the private key's public key, DER; `Err` says what did not parse (a
/// partial file).
fn pair(cert_pem: &str, key_pem: &str) -> Result<(Vec<u8>, Vec<u8>), String> {
    let pem = Pem::iter_from_buffer(cert_pem.as_bytes())
        .next()
        .ok_or("no certificate")?
        .map_err(|e| format!("certificate PEM: {e}"))?;
    let (_, cert) =
        X509Certificate::from_der(&pem.contents).map_err(|e| format!("certificate: {e}"))?;
    let spki = cert.public_key().raw.to_vec();
    let key = rcgen::KeyPair::from_pem(key_pem).map_err(|e| format!("key: {e}"))?;
    Ok((spki, key.subject_public_key_info()))
}

/// A whole PEM file: at least one block, each of them parsing.
fn whole_pem(text: &str) -> Result<usize, String> {
    let mut n = 0;
    for pem in Pem::iter_from_buffer(text.as_bytes()) {
        pem.map_err(|e| format!("PEM: {e}"))?;
        n += 1;
    }
    if n == 0 || !text.ends_with("-----\n") {
        return Err(format!("not a whole PEM file: {text:?}"));
    }
    Ok(n)
}

fn lines(path: &Path, word: &str) -> usize {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter(|l| *l == word)
        .count()
}

/// A shell script that records `started` in its first argument, then one `usr1` line per
/// SIGUSR1, and exits once its parent (the helper) is gone.
const COUNTER: &str = r#"#!/bin/sh
out="$1"
trap 'echo usr1 >> "$out"' USR1
echo started >> "$out"
parent=$PPID
while kill -0 "$parent" 2>/dev/null; do sleep 0.1; done
"#;

#[test]
fn helper_keeps_files_current_signals_on_each_renewal_and_never_shows_a_torn_pair() {
    let (_server, agent) = world();
    let work = tempfile::tempdir().unwrap();
    let counter = work.path().join("counter.sh");
    std::fs::write(&counter, COUNTER).unwrap();
    std::fs::set_permissions(&counter, std::fs::Permissions::from_mode(0o755)).unwrap();
    let cmd_log = work.path().join("cmd.log");
    // A process the helper did not start, known by its PID file.
    let pid_log = work.path().join("pid.log");
    let pid_file = work.path().join("app.pid");
    let test_pid = std::process::id();
    let mut app = Process::spawn(
        {
            let mut c = Command::new("/bin/sh");
            c.arg("-c").arg(format!(
                "trap 'echo usr1 >> {log}' USR1; echo $$ > {pid}.tmp; mv {pid}.tmp {pid}; \
                 while kill -0 {test_pid} 2>/dev/null; do sleep 0.1; done",
                log = pid_log.display(),
                pid = pid_file.display()
            ));
            c
        },
        &work.path().join("app.out"),
    );
    wait_for("the PID file", Duration::from_secs(5), || {
        pid_file.exists().then_some(())
    });

    let health_port = free_port();
    let (dir, conf) = helper_dir(
        Some(&agent.socket),
        &format!(
            "cmd = \"{}\"\ncmd_args = \"{}\"\nrenew_signal = \"SIGUSR1\"\npid_file_name = \"{}\"\n\
             jwt_svids = [{{jwt_audience = \"payments\", jwt_extra_audiences = [\"audit\"], jwt_svid_file_name = \"payments.token\"}}]\n\
             jwt_bundle_file_name = \"jwt_bundle.json\"\n\
             health_checks {{\n  listener_enabled = true\n  bind_port = {health_port}\n}}\n",
            counter.display(),
            cmd_log.display(),
            pid_file.display()
        ),
    );
    let certs = dir.path().join("certs");
    let link = spiffe_helper_link(dir.path());
    let mut command = Command::new(&link);
    command.arg("-config").arg(&conf);
    let mut helper = Process::spawn(command, &dir.path().join("helper.log"));

    let (cert, key, bundle) = (
        certs.join("svid.pem"),
        certs.join("svid_key.pem"),
        certs.join("bundle.pem"),
    );
    wait_for("the X.509 files", Duration::from_secs(20), || {
        (key.exists() && cert.exists() && bundle.exists()).then_some(())
    });
    assert_eq!(mode(&key), 0o600, "the key file");
    assert_eq!(mode(&cert), 0o644);
    assert_eq!(mode(&bundle), 0o644);
    let (ok, text) = openssl_verify(&bundle, &cert, &[]);
    assert!(ok, "{text}");
    let (spki, public) = pair(
        &std::fs::read_to_string(&cert).unwrap(),
        &std::fs::read_to_string(&key).unwrap(),
    )
    .unwrap();
    assert_eq!(spki, public, "the key matches the certificate");
    let leaf = std::fs::read(&cert).unwrap();
    let pem = Pem::iter_from_buffer(&leaf).next().unwrap().unwrap();
    let (_, parsed) = X509Certificate::from_der(&pem.contents).unwrap();
    assert!(
        format!("{:?}", parsed.subject_alternative_name()).contains(ID),
        "the SVID is {ID}"
    );

    // The JWT-SVID: a JWT for both audiences, signed by a key of the JWT bundle file.
    let token_path = certs.join("payments.token");
    let jwks_path = certs.join("jwt_bundle.json");
    wait_for("the JWT files", Duration::from_secs(20), || {
        (token_path.exists() && jwks_path.exists()).then_some(())
    });
    assert_eq!(mode(&token_path), 0o600);
    assert_eq!(mode(&jwks_path), 0o600);
    let bundles: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&jwks_path).unwrap()).unwrap();
    let jwks = STANDARD
        .decode(bundles["example.org"].as_str().expect("example.org's JWKS"))
        .unwrap();
    let set: JwkSet = serde_json::from_slice(&jwks).expect("a JWKS");
    let token = std::fs::read_to_string(&token_path).unwrap();
    let header = jsonwebtoken::decode_header(&token).unwrap();
    let jwk = set
        .find(header.kid.as_deref().unwrap())
        .expect("the token's key in the file");
    let mut validation = Validation::new(header.alg);
    validation.set_audience(&["payments"]);
    let claims = jsonwebtoken::decode::<serde_json::Value>(
        &token,
        &DecodingKey::from_jwk(jwk).unwrap(),
        &validation,
    )
    .unwrap()
    .claims;
    assert_eq!(claims["sub"], ID);
    assert_eq!(claims["aud"], serde_json::json!(["payments", "audit"]));

    // spiffe-helper's health listener: ready once every file is written, with the statuses.
    let (code, body) = wait_for("/ready", Duration::from_secs(10), || {
        http_get(health_port, "/ready").filter(|(code, _)| *code == 200)
    });
    let body: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["status"], "OK", "{code} {body}");
    let statuses = &body["health"]["file_write_statuses"];
    assert_eq!(statuses["x509_write_status"], "written", "{body}");
    assert_eq!(
        statuses["jwt_write_status"][token_path.to_str().unwrap()],
        "written",
        "{body}"
    );
    assert_eq!(http_get(health_port, "/live").unwrap().0, 200);

    // A reader racing the writer over many renewals.
    let stop = Arc::new(AtomicBool::new(false));
    let reader = {
        let stop = stop.clone();
        std::thread::spawn(move || race(&certs, &stop))
    };
    const RENEWALS: usize = 6;
    let started = Instant::now();
    let (cmd_base, pid_base) = (lines(&cmd_log, "usr1"), lines(&pid_log, "usr1"));
    wait_for(
        "six more renewals signalled to cmd and to the PID file's process",
        Duration::from_secs(60),
        || {
            (lines(&cmd_log, "usr1") >= cmd_base + RENEWALS
                && lines(&pid_log, "usr1") >= pid_base + RENEWALS)
                .then_some(())
        },
    );
    stop.store(true, Ordering::Relaxed);
    let report = reader.join().unwrap();
    assert!(
        report.versions >= RENEWALS,
        "the reader saw {} versions in {:?}",
        report.versions,
        started.elapsed()
    );
    assert!(report.reads > 100, "{report:?}");
    eprintln!("{report:?}");
    let (ok, text) = openssl_verify(&bundle, &cert, &[]);
    assert!(ok, "{text}");
    assert!(
        helper.exited().is_none(),
        "the helper keeps running: {}",
        helper.log()
    );
    let status = helper.stop(Duration::from_secs(10));
    assert!(status.success(), "SIGTERM: {status}\n{}", helper.log());
    // One signal per update: the PID file's process got every one (the last may have been in
    // flight at SIGTERM); cmd was started by the first and signalled by each one since.
    std::thread::sleep(Duration::from_millis(300));
    let updates = helper.log().matches("X.509-SVID files updated").count();
    let (to_pid, to_cmd) = (lines(&pid_log, "usr1"), lines(&cmd_log, "usr1"));
    assert!(
        (updates - 1..=updates).contains(&to_pid),
        "{updates} updates, {to_pid} signals to the PID file's process"
    );
    assert!(
        (updates - 2..=updates - 1).contains(&to_cmd),
        "{updates} updates, {to_cmd} signals to cmd"
    );
    assert_eq!(lines(&cmd_log, "started"), 1, "cmd started once");
    app.kill();
}

#[derive(Debug, Default)]
struct RaceReport {
    reads: usize,
    versions: usize,
    /// Naive reads whose two opens straddled a swap of `..data` (allowed to mismatch).
    straddled: usize,
    straddled_mismatched: usize,
}

/// Reads as two kinds of readers until `stop`, asserting the documented guarantees (see the
/// helper's `files` module): every file read by its usual path is whole; a reader that
/// resolves `..data` once gets a matching pair, always; a reader that opens `svid.pem` then
/// `svid_key.pem` gets a matching pair unless `..data` was swapped between its opens.
fn race(certs: &Path, stop: &AtomicBool) -> RaceReport {
    let mut report = RaceReport::default();
    let mut seen = std::collections::BTreeSet::new();
    let data = certs.join("..data");
    while !stop.load(Ordering::Relaxed) {
        // The naive reader.
        let before = std::fs::read_link(&data).unwrap();
        let cert = std::fs::read_to_string(certs.join("svid.pem")).unwrap();
        let key = std::fs::read_to_string(certs.join("svid_key.pem")).unwrap();
        let bundle = std::fs::read_to_string(certs.join("bundle.pem")).unwrap();
        let after = std::fs::read_link(&data).unwrap();
        whole_pem(&cert).unwrap();
        whole_pem(&key).unwrap();
        whole_pem(&bundle).unwrap();
        let (spki, public) = pair(&cert, &key).unwrap();
        if before == after {
            assert_eq!(spki, public, "a torn pair without a swap between the opens");
        } else {
            report.straddled += 1;
            report.straddled_mismatched += usize::from(spki != public);
        }
        // The reader that resolves ..data once.
        let version = certs.join(std::fs::read_link(&data).unwrap());
        let cert = std::fs::read_to_string(version.join("svid.pem")).unwrap();
        let key = std::fs::read_to_string(version.join("svid_key.pem")).unwrap();
        let (spki, public) = pair(&cert, &key).unwrap();
        assert_eq!(spki, public, "a torn pair in one version directory");
        seen.insert(after);
        report.reads += 1;
    }
    report.versions = seen.len();
    report
}

#[test]
fn a_cmd_without_renew_signal_is_run_again_on_each_renewal() {
    let (_server, agent) = world();
    let work = tempfile::tempdir().unwrap();
    let runs = work.path().join("runs");
    let (dir, conf) = helper_dir(
        Some(&agent.socket),
        &format!(
            "cmd = \"/bin/sh\"\ncmd_args = \"-c \\\"echo run >> {}\\\"\"\n",
            runs.display()
        ),
    );
    let mut command = Command::new(agent_bin());
    command.args(["helper", "-config"]).arg(&conf);
    let helper = Process::spawn(command, &dir.path().join("helper.log"));
    wait_for("cmd run on three renewals", Duration::from_secs(40), || {
        (lines(&runs, "run") >= 3).then_some(())
    });
    let updates = helper.log().matches("X.509-SVID files updated").count();
    assert!(
        updates >= lines(&runs, "run"),
        "one run per update at most: {updates} updates"
    );
}

#[test]
fn one_shot_writes_the_files_once_and_exits_0() {
    let server = Server::start(ServerOptions::default());
    let (agent, agent_id) = attested_agent(&server, false);
    let db = "spiffe://example.org/db";
    register_uid(&server, ID, &agent_id, uid(), &["-hint", "files"]);
    register_uid(&server, db, &agent_id, uid(), &["-hint", "db"]);
    agent.wait_for_ids("both SVIDs", &[ID, db], Duration::from_secs(20));
    // No agent_address: SPIFFE_ENDPOINT_SOCKET names the socket, as for spiffe-helper. The
    // hint picks the SVID; the modes are the configured ones, written as spiffe-helper's are.
    let (dir, conf) = helper_dir(
        None,
        "daemon_mode = true\njwt_bundle_file_name = \"jwt_bundle.json\"\nhint = \"db\"\n\
         cert_file_mode = 0444\nkey_file_mode = 0640\njwt_bundle_file_mode = 0644\n",
    );
    let mut command = Command::new(spiffe_helper_link(dir.path()));
    command
        .arg("-config")
        .arg(&conf)
        .arg("-daemon-mode=false")
        .env(
            "SPIFFE_ENDPOINT_SOCKET",
            format!("unix://{}", agent.socket.display()),
        );
    let (status, log) = run_to_exit(
        command,
        &dir.path().join("helper.log"),
        Duration::from_secs(30),
    );
    assert!(status.is_some_and(|s| s.success()), "{status:?}\n{log}");
    let certs = dir.path().join("certs");
    let (ok, text) = openssl_verify(&certs.join("bundle.pem"), &certs.join("svid.pem"), &[]);
    assert!(ok, "{text}");
    let (ok, text) = openssl(&[
        "x509",
        "-noout",
        "-ext",
        "subjectAltName",
        "-in",
        certs.join("svid.pem").to_str().unwrap(),
    ]);
    assert!(ok && text.contains(db), "{text}");
    assert_eq!(mode(&certs.join("svid.pem")), 0o444);
    assert_eq!(mode(&certs.join("bundle.pem")), 0o444);
    assert_eq!(mode(&certs.join("svid_key.pem")), 0o640);
    assert_eq!(mode(&certs.join("jwt_bundle.json")), 0o644);
}

/// Runs the helper on `conf_text`; it must exit within 10 s. Its exit status and output.
fn refused(conf_text: &str) -> (ExitStatus, String) {
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("helper.conf");
    std::fs::write(&conf, conf_text).unwrap();
    let mut command = Command::new(agent_bin());
    command.args(["helper", "-config"]).arg(&conf);
    let (status, log) = run_to_exit(
        command,
        &dir.path().join("helper.log"),
        Duration::from_secs(10),
    );
    (status.expect("the helper exits"), log)
}

#[test]
fn bad_configuration_is_refused_with_the_key_named() {
    let base = "cert_dir = \"/\"\njwt_bundle_file_name = \"b.json\"\n";
    for (extra, want) in [
        (
            "renew_singal = \"SIGUSR1\"\n",
            "helper.conf:3: renew_singal: unknown key",
        ),
        (
            "renew_signal = \"USR9\"\n",
            "renew_signal: \"USR9\" is not a signal name",
        ),
        (
            "renew_signal = \"SIGHUP\"\npid_file_name = \"/nonexistent.pid\"\ndaemon_mode = false\n",
            "pid_file_name: is set but daemon_mode is false",
        ),
        (
            "health_checks {\n  liveness_path = \"/h\"\n  readiness_path = \"/h\"\n}\n",
            "health_checks.readiness_path: must differ from liveness_path",
        ),
    ] {
        let (status, stderr) = refused(&format!("{base}{extra}"));
        assert_eq!(status.code(), Some(64), "{extra}: {stderr}");
        assert!(stderr.contains(want), "{extra}: {stderr}");
    }
    let (status, stderr) =
        refused("cert_dir = \"/nonexistent/certs\"\njwt_bundle_file_name = \"b.json\"\n");
    assert_eq!(status.code(), Some(64), "{stderr}");
    assert!(
        stderr.contains("cert_dir: /nonexistent/certs") && stderr.contains("must exist"),
        "{stderr}"
    );
}

#[test]
fn a_workload_without_an_entry_gets_no_files_and_the_helper_retries_until_it_has_one() {
    let server = Server::start(ServerOptions::default());
    let (agent, agent_id) = attested_agent(&server, false);
    let (dir, conf) = helper_dir(Some(&agent.socket), "");
    let mut command = Command::new(agent_bin());
    command.args(["helper", "-config"]).arg(&conf);
    let helper = Process::spawn(command, &dir.path().join("helper.log"));
    wait_for(
        "the helper to say it has no identity",
        Duration::from_secs(20),
        || {
            let log = helper.log();
            (log.contains("no X.509-SVID; retrying")
                && log.contains("no identity for this process"))
            .then_some(())
        },
    );
    let certs = dir.path().join("certs");
    assert_eq!(std::fs::read_dir(&certs).unwrap().count(), 0, "no files");

    register_uid(&server, ID, &agent_id, uid(), &[]);
    wait_for(
        "the files once the entry exists",
        Duration::from_secs(60),
        || certs.join("svid.pem").exists().then_some(()),
    );
    let (ok, text) = openssl_verify(&certs.join("bundle.pem"), &certs.join("svid.pem"), &[]);
    assert!(ok, "{text}");
}

#[test]
fn an_unreadable_pid_file_is_reported_and_the_files_keep_being_renewed() {
    let (_server, agent) = world();
    let work = tempfile::tempdir().unwrap();
    let missing = work.path().join("missing.pid");
    let (dir, conf) = helper_dir(
        Some(&agent.socket),
        &format!(
            "renew_signal = \"SIGUSR1\"\npid_file_name = \"{}\"\n",
            missing.display()
        ),
    );
    let mut command = Command::new(agent_bin());
    command.args(["helper", "-config"]).arg(&conf);
    let helper = Process::spawn(command, &dir.path().join("helper.log"));
    let want = format!("reading the PID file {}", missing.display());
    wait_for(
        "the PID file error, then two more updates",
        Duration::from_secs(30),
        || {
            let log = helper.log();
            (log.contains(&want) && log.matches("X.509-SVID files updated").count() >= 3)
                .then_some(())
        },
    );
    let certs = dir.path().join("certs");
    let (ok, text) = openssl_verify(&certs.join("bundle.pem"), &certs.join("svid.pem"), &[]);
    assert!(ok, "{text}");
}

#[test]
fn federated_bundles_join_the_bundle_file_with_include_federated_domains() {
    let server = Server::start(ServerOptions::default());
    let other = Server::start(ServerOptions {
        trust_domain: "other.test".into(),
        ..ServerOptions::default()
    });
    // other.test's bundle, set on example.org's server as a federated bundle.
    let json = other.cli_ok(&["bundle", "show", "-format", "spiffe"]);
    let path = server.dir.path().join("other.test.json");
    std::fs::write(&path, json).unwrap();
    server.cli_ok(&[
        "bundle",
        "set",
        "-id",
        "spiffe://other.test",
        "-path",
        path.to_str().unwrap(),
        "-format",
        "spiffe",
    ]);
    let (agent, agent_id) = attested_agent(&server, false);
    register_uid(
        &server,
        ID,
        &agent_id,
        uid(),
        &["-federatesWith", "spiffe://other.test"],
    );
    let own = pem_certs(&server.cli_ok(&["bundle", "show"]));
    let foreign = pem_certs(&other.cli_ok(&["bundle", "show"]));

    let one_shot = |extra: &str| {
        let (dir, conf) = helper_dir(Some(&agent.socket), extra);
        let mut command = Command::new(agent_bin());
        command.args(["helper", "-config"]).arg(&conf);
        let (status, log) = run_to_exit(
            command,
            &dir.path().join("helper.log"),
            Duration::from_secs(30),
        );
        assert!(status.is_some_and(|s| s.success()), "{status:?}\n{log}");
        pem_certs(&std::fs::read_to_string(dir.path().join("certs/bundle.pem")).unwrap())
    };
    // Federated bundles reach the workload (and so the file) once the agent has synced them.
    let with = wait_for(
        "other.test's bundle in the file",
        Duration::from_secs(30),
        || {
            let with = one_shot("daemon_mode = false\ninclude_federated_domains = true\n");
            (with.len() > own.len()).then_some(with)
        },
    );
    assert_eq!(
        with,
        [own.clone(), foreign].concat(),
        "own, then other.test's"
    );
    eprintln!(
        "bundle file: {} certificates, {} of them example.org's",
        with.len(),
        own.len()
    );
    assert_eq!(one_shot("daemon_mode = false\n"), own);
}
