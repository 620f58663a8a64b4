//! End-to-end: the web console (`server { console { ... } }`) of the real sigil-server, one
//! agent attested, driven in headless Chromium (Debian's `chromium`, through playwright-core
//! from tests/browser/: `driver.mjs`, one JSON command per line).
//!
//! Every page loads with no console error and no failed request; the search finds an entry;
//! an entry created with `sigil-server entry create` shows on the open entries page within
//! 1 s; a revoked authority shows as revoked; no page's HTML holds the token, a join token, a
//! JWT-SVID or `PRIVATE KEY`; plain HTTP without the token (or with a wrong one) gets 401
//! and an empty body, and any method but GET 405. With `SIGIL_SCREENSHOTS=1` the test writes
//! each page's screenshot to docs/console/*.png.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sigil_testkit::{
    Server, ServerOptions, attested_agent, free_port, http_request, register, register_uid,
};

/// The brief's bound: a CLI change shows on the open entries page within this.
const LIVE_DEADLINE: Duration = Duration::from_secs(1);

fn browser_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("browser")
}

/// `npm ci` in tests/browser unless playwright-core is there (.ci/run installs it first).
fn install_driver() {
    let dir = browser_dir();
    if dir
        .join("node_modules/playwright-core/package.json")
        .exists()
    {
        return;
    }
    let status = Command::new("npm")
        .args(["ci", "--no-audit", "--no-fund"])
        .current_dir(&dir)
        .status()
        .expect("npm is needed for the console test (node 20 + npm)");
    assert!(status.success(), "npm ci in {} failed", dir.display());
}

/// The driver process: a JSON command in, a JSON reply out.
struct Browser {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl Browser {
    fn start(base_url: &str, token: &str) -> Self {
        install_driver();
        let mut child = Command::new("node")
            .arg(browser_dir().join("driver.mjs"))
            .args([base_url, token])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start node driver.mjs");
        let stdin = child.stdin.take().expect("piped stdin");
        let stdout = BufReader::new(child.stdout.take().expect("piped stdout"));
        Self {
            child,
            stdin,
            stdout,
        }
    }

    fn cmd(&mut self, command: Value) -> Value {
        writeln!(self.stdin, "{command}").expect("write to the driver");
        self.stdin.flush().expect("flush to the driver");
        let mut line = String::new();
        self.stdout.read_line(&mut line).expect("read the driver");
        let reply: Value = serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("driver reply {line:?} to {command}: {e}"));
        assert_eq!(reply["ok"], true, "{command}: {reply}");
        reply
    }

    /// Loads `path`; returns its HTML, checked for no error.
    fn page(&mut self, path: &str) -> String {
        let reply = self.cmd(json!({"cmd": "goto", "path": path}));
        assert_eq!(reply["status"], 200, "{path}");
        self.assert_no_errors(path);
        reply["html"].as_str().unwrap().to_owned()
    }

    fn assert_no_errors(&mut self, what: &str) {
        let errors = self.cmd(json!({"cmd": "errors"}));
        assert_eq!(errors["errors"], json!([]), "{what}");
    }

    fn screenshot(&mut self, name: &str) {
        if std::env::var_os("SIGIL_SCREENSHOTS").is_none() {
            return;
        }
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/console");
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(format!("{name}.png"));
        self.cmd(json!({"cmd": "screenshot", "path": path}));
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = writeln!(self.stdin, "{}", json!({"cmd": "quit"}));
        let _ = self.stdin.flush();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// 32 random bytes as hex.
fn random_token() -> String {
    let mut bytes = [0u8; 32];
    std::io::Read::read_exact(
        &mut std::fs::File::open("/dev/urandom").unwrap(),
        &mut bytes,
    )
    .unwrap();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The `<tr>` of the authority `id` in the overview's HTML.
fn authority_row<'a>(html: &'a str, id: &str) -> &'a str {
    let start = html
        .find(&format!("data-authority-id=\"{id}\""))
        .unwrap_or_else(|| panic!("authority {id} not on the overview"));
    let rest = &html[start..];
    &rest[..rest.find("</tr>").unwrap()]
}

fn local_authority(server: &Server, args: &[&str]) -> Value {
    let mut all = vec!["localauthority", "x509"];
    all.extend(args);
    server.cli_json(&all)
}

#[test]
fn console_pages_in_a_real_browser() {
    let dir = tempfile::tempdir().unwrap();
    let token = random_token();
    let token_file = dir.path().join("console.token");
    std::fs::write(&token_file, format!("{token}\n")).unwrap();
    std::fs::set_permissions(&token_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let port = free_port();
    let server = Server::start(ServerOptions {
        extra_server: console_block(port, &token_file, ""),
        ..ServerOptions::default()
    });
    let (agent, agent_id) = attested_agent(&server, false);
    let uid = nix::unistd::geteuid().as_raw();
    register_uid(
        &server,
        "spiffe://example.org/ns/shop/frontend",
        &agent_id,
        uid,
        &["-hint", "front"],
    );
    register(
        &server,
        "spiffe://example.org/ns/bank/ledger",
        &agent_id,
        "unix:uid:4242",
        &[],
    );
    // A template entry, and its instance for this uid minted through the agent.
    server.cli_json(&[
        "entry",
        "create",
        "-template",
        "-spiffeID",
        "spiffe://example.org/uid/{unix:uid}",
        "-parentID",
        &agent_id,
        "-selector",
        "unix:uid",
    ]);
    let instance = format!("spiffe://example.org/uid/{uid}");
    agent.wait_for_ids(
        "the template's instance",
        &[instance.as_str()],
        Duration::from_secs(30),
    );
    // Secrets the console must never show.
    let join_token = server.join_token();
    let jwt = server.cli_json(&[
        "jwt",
        "mint",
        "-spiffeID",
        "spiffe://example.org/m",
        "-audience",
        "db",
    ])["svid"]["token"]
        .as_str()
        .unwrap()
        .to_owned();

    // Plain HTTP: 401 and nothing else without the token; GET only.
    let bearer = format!("Bearer {token}");
    for headers in [
        vec![],
        vec![("Authorization", "Bearer nope")],
        vec![("Authorization", token.as_str())],
    ] {
        for path in [
            "/",
            "/entries",
            "/api/samples",
            "/assets/console.js",
            "/no-such-page",
        ] {
            let (status, body) = http_request(port, "GET", path, &headers).unwrap();
            assert_eq!((status, body.as_str()), (401, ""), "{path} {headers:?}");
        }
    }
    let (status, body) = http_request(port, "POST", "/entries", &[]).unwrap();
    assert_eq!((status, body.as_str()), (401, ""));
    let auth = [("Authorization", bearer.as_str())];
    assert_eq!(
        http_request(port, "POST", "/entries", &auth).unwrap().0,
        405
    );
    assert_eq!(http_request(port, "DELETE", "/", &auth).unwrap().0, 405);
    assert_eq!(http_request(port, "GET", "/", &auth).unwrap().0, 200);

    // An authority prepared, activated, tainted and revoked.
    let old = local_authority(&server, &["show"])["active"]["authority_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let new = local_authority(&server, &["prepare"])["prepared_authority"]["authority_id"]
        .as_str()
        .unwrap()
        .to_owned();
    local_authority(&server, &["activate", "-authorityID", &new]);
    local_authority(&server, &["taint", "-authorityID", &old]);
    local_authority(&server, &["revoke", "-authorityID", &old]);

    // A federation relationship created at run time whose endpoint is down: the overview shows
    // it with the poller's last error (it is polled at once).
    let dead = free_port();
    server.cli_ok(&[
        "federation",
        "create",
        "-trustDomain",
        "partner.test",
        "-bundleEndpointURL",
        &format!("https://127.0.0.1:{dead}"),
        "-bundleEndpointProfile",
        "https_web",
    ]);
    let auth = [("Authorization", bearer.as_str())];
    let started = Instant::now();
    let peer_row = loop {
        let (_, html) = http_request(port, "GET", "/", &auth).unwrap();
        if let Some(row) = html
            .split("<tr>")
            .find(|r| r.contains("partner.test") && r.contains("cannot connect"))
        {
            break row.to_owned();
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "no poll error for partner.test on the overview: {html}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(peer_row.contains("(datastore)"), "{peer_row}");

    // A second agent, evicted: deleted from the datastore, listed as evicted from the record.
    let (gone, gone_id) = attested_agent(&server, false);
    server.cli_ok(&["agent", "evict", "-spiffeID", &gone_id]);
    drop(gone);

    let mut browser = Browser::start(&format!("http://127.0.0.1:{port}"), &token);
    let mut pages = Vec::new();

    let overview = browser.page("/");
    assert!(overview.contains("example.org"), "{overview}");
    let row = authority_row(&overview, &old);
    assert!(
        row.contains(">revoked<") && row.contains(">tainted<"),
        "{row}"
    );
    assert!(authority_row(&overview, &new).contains(">active<"));
    browser.screenshot("overview");
    pages.push(overview);

    // Search (the form, submitted in the browser): by prefix, by selector, by hint.
    browser.page("/entries");
    browser.cmd(json!({"cmd": "fill", "selector": "input[name=q]", "value": "spiffe://example.org/ns/bank/"}));
    let found = browser.cmd(json!({"cmd": "submit", "selector": "form.search button"}));
    let html = found["html"].as_str().unwrap();
    assert!(
        html.contains("spiffe://example.org/ns/bank/ledger"),
        "{html}"
    );
    assert!(
        !html.contains("spiffe://example.org/ns/shop/frontend"),
        "{html}"
    );
    browser.assert_no_errors("search");
    let by_selector = browser.page("/entries?selector=unix%3Auid%3A4242");
    assert!(by_selector.contains("/ns/bank/ledger") && !by_selector.contains("/ns/shop/frontend"));
    let by_hint = browser.page("/entries?hint=front");
    assert!(by_hint.contains("/ns/shop/frontend") && !by_hint.contains("/ns/bank/ledger"));

    // The open entries page shows an entry created with the CLI within a second.
    let entries = browser.page("/entries");
    assert!(
        entries.contains("<span id=\"entry-total\">3</span>"),
        "{entries}"
    );
    assert!(
        entries.contains(&format!("<li>{instance} · ")),
        "the template's instance: {entries}"
    );
    pages.push(entries);
    let created = "spiffe://example.org/ns/shop/created-live";
    register(&server, created, &agent_id, "unix:uid:5151", &[]);
    let shown = Instant::now();
    let waited = browser.cmd(json!({
        "cmd": "wait_text", "selector": "#entry-rows", "text": created,
        "timeout_ms": LIVE_DEADLINE.as_millis() as u64,
    }));
    assert!(
        shown.elapsed() < LIVE_DEADLINE + Duration::from_millis(200),
        "{waited}"
    );
    eprintln!(
        "entry shown {} ms after `entry create` returned",
        waited["ms"]
    );
    let total = browser.cmd(json!({"cmd": "text", "selector": "#entry-total"}));
    assert_eq!(total["text"], "4", "the count follows the rows");
    browser.assert_no_errors("live entries");
    browser.screenshot("entries");
    pages.push(
        browser.cmd(json!({"cmd": "html"}))["html"]
            .as_str()
            .unwrap()
            .to_owned(),
    );

    let agents = browser.page("/agents");
    assert!(agents.contains(&agent_id), "{agents}");
    assert!(
        agents.contains("(this replica)"),
        "the agent's sync stream: {agents}"
    );
    let evicted = agents
        .split("<tr ")
        .find(|r| r.contains(&format!("data-agent-id=\"{gone_id}\"")))
        .unwrap_or_else(|| panic!("no row for the evicted agent {gone_id}: {agents}"));
    assert!(evicted.contains(">evicted<"), "{evicted}");
    let attested = agents
        .split("<tr ")
        .find(|r| r.contains(&format!("data-agent-id=\"{agent_id}\"")))
        .unwrap();
    assert!(!attested.contains(">evicted<"), "{attested}");
    browser.screenshot("agents");
    pages.push(agents);

    browser.page("/activity");
    // A few samples: the charts draw them.
    browser.cmd(json!({
        "cmd": "wait_text", "selector": "output[data-latest=open_sync_streams]", "text": "1",
        "timeout_ms": 5000,
    }));
    browser.assert_no_errors("activity");
    // The created entry reached the agent's sync stream: its propagation was measured.
    let (_, samples) = http_request(port, "GET", "/api/samples", &auth).unwrap();
    let samples: Value = serde_json::from_str(&samples).unwrap();
    let latest = samples
        .as_array()
        .and_then(|s| s.last())
        .cloned()
        .unwrap_or_default();
    assert!(
        latest["propagation_p99_ms"]
            .as_f64()
            .is_some_and(|ms| ms < 1000.0),
        "{samples}"
    );
    if std::env::var_os("SIGIL_SCREENSHOTS").is_some() {
        // Fuller charts for the picture.
        std::thread::sleep(Duration::from_secs(15));
    }
    browser.screenshot("activity");
    pages.push(
        browser.cmd(json!({"cmd": "html"}))["html"]
            .as_str()
            .unwrap()
            .to_owned(),
    );

    for html in &pages {
        for secret in [
            token.as_str(),
            join_token.as_str(),
            jwt.as_str(),
            "PRIVATE KEY",
        ] {
            assert!(
                !html.contains(secret),
                "a page shows a secret ({}...)",
                &secret[..8]
            );
        }
        // No JWT-looking value (three base64url parts starting with a JSON header) either.
        assert!(!html.contains("eyJ"), "a page shows something like a JWT");
    }
}

/// A `console` block for `port`, the token in `token_file`, and `extra` keys.
fn console_block(port: u16, token_file: &Path, extra: &str) -> String {
    format!(
        "console {{\n bind_port = {port}\n token_file = \"{}\"\n{extra}}}\n",
        token_file.display()
    )
}

/// In `dir`: a self-signed serving certificate for `localhost` and its key, and a fresh token
/// in a 0600 token file: (the `tls_cert_file`/`tls_key_file` lines, cert, token, token file).
fn https_files(dir: &Path) -> (String, PathBuf, String, PathBuf) {
    let (cert, key) = sigil_testkit::self_signed_serving_cert(dir, "localhost", "DNS:localhost");
    let token = random_token();
    let token_file = dir.join("console.token");
    std::fs::write(&token_file, &token).unwrap();
    std::fs::set_permissions(&token_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let tls = format!(
        " tls_cert_file = \"{}\"\n tls_key_file = \"{}\"\n",
        cert.display(),
        key.display()
    );
    (tls, cert, token, token_file)
}

/// With `tls_cert_file`/`tls_key_file` the console speaks HTTPS (checked by Python's own TLS
/// client trusting the certificate), with the same token rule; a token file open to others
/// stops the server at start, naming the file and the fix.
#[test]
fn https_and_a_token_file_open_to_others() {
    let dir = tempfile::tempdir().unwrap();
    let (tls, cert, token, token_file) = https_files(dir.path());
    let port = free_port();
    let server = Server::start(ServerOptions {
        extra_server: console_block(port, &token_file, &tls),
        ..ServerOptions::default()
    });
    let script = r#"
import json, ssl, sys, urllib.request, urllib.error
ctx = ssl.create_default_context(cafile=sys.argv[1])
def get(headers):
    req = urllib.request.Request(sys.argv[2], headers=headers)
    try:
        with urllib.request.urlopen(req, context=ctx, timeout=10) as r:
            return [r.status, r.read().decode()]
    except urllib.error.HTTPError as e:
        return [e.code, e.read().decode()]
print(json.dumps({"without": get({}), "with": get({"Authorization": "Bearer " + sys.argv[3]})}))
"#;
    let got = sigil_testkit::python::python_json(
        "the console over HTTPS",
        &[
            "-c",
            script,
            cert.to_str().unwrap(),
            &format!("https://localhost:{port}/"),
            &token,
        ],
    );
    assert_eq!(got["without"], json!([401, ""]));
    assert_eq!(got["with"][0], 200);
    assert!(
        got["with"][1]
            .as_str()
            .unwrap()
            .contains("<h1>Overview</h1>"),
        "{got}"
    );
    drop(server);

    std::fs::set_permissions(&token_file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let server = Server::configure(ServerOptions {
        extra_server: console_block(free_port(), &token_file, ""),
        ..ServerOptions::default()
    });
    let mut command = Command::new(sigil_testkit::server_bin());
    command.args(["run", "-config"]).arg(&server.config);
    let (status, output) = sigil_testkit::run_to_exit(
        command,
        &dir.path().join("refused.log"),
        Duration::from_secs(30),
    );
    let status = status.unwrap_or_else(|| panic!("started with a 0644 token file:\n{output}"));
    assert!(!status.success(), "{output}");
    assert!(
        output.contains(&token_file.display().to_string()) && output.contains("chmod 600"),
        "{output}"
    );
}

/// With `admin_ids`, the HTTPS console asks for a client certificate: an X.509-SVID minted by
/// the server (`sigil-server x509 mint`) whose SPIFFE ID is listed gets the overview without
/// a token; a verified SVID with another ID gets 401 (200 with the token too); a certificate
/// of another CA, even naming the admin ID, fails the TLS handshake; without a certificate
/// the token works as before. Checked by Python's own TLS client.
#[test]
fn https_with_an_admin_svid_instead_of_the_token() {
    let dir = tempfile::tempdir().unwrap();
    let (tls, cert, token, token_file) = https_files(dir.path());
    let td = ServerOptions::default().trust_domain;
    let admin = format!("spiffe://{td}/ops/alice");
    let port = free_port();
    let keys = format!("{tls} admin_ids = [\"{admin}\"]\n");
    let server = Server::start(ServerOptions {
        extra_server: console_block(port, &token_file, &keys),
        ..ServerOptions::default()
    });
    let mint = |name: &str, id: &str| {
        let out = dir.path().join(name);
        std::fs::create_dir_all(&out).unwrap();
        server.cli_ok(&[
            "x509",
            "mint",
            "-spiffeID",
            id,
            "-write",
            out.to_str().unwrap(),
        ]);
        (out.join("svid.pem"), out.join("key.pem"))
    };
    let alice = mint("alice", &admin);
    let bob = mint("bob", &format!("spiffe://{td}/ops/bob"));
    let forged = (dir.path().join("forged.pem"), dir.path().join("forged.key"));
    sigil_testkit::verify::self_signed_p256(
        &forged.0,
        &forged.1,
        "/CN=forged",
        1,
        &[
            &format!("subjectAltName=URI:{admin}"),
            "extendedKeyUsage=clientAuth",
        ],
    );

    let script = r#"
import json, ssl, sys, urllib.request, urllib.error
cafile, url, token, cases = sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4])
def get(cert, key, with_token):
    ctx = ssl.create_default_context(cafile=cafile)
    if cert:
        ctx.load_cert_chain(cert, key)
    headers = {"Authorization": "Bearer " + token} if with_token else {}
    req = urllib.request.Request(url, headers=headers)
    try:
        with urllib.request.urlopen(req, context=ctx, timeout=10) as r:
            return [r.status, r.read().decode()]
    except urllib.error.HTTPError as e:
        return [e.code, e.read().decode()]
    except (ssl.SSLError, ConnectionError, urllib.error.URLError) as e:
        return ["tls failed", repr(e)]
print(json.dumps({name: get(*case) for name, case in cases.items()}))
"#;
    let path = |p: &Path| p.to_str().unwrap().to_owned();
    let cases = json!({
        "alice": [path(&alice.0), path(&alice.1), false],
        "bob": [path(&bob.0), path(&bob.1), false],
        "bob with the token": [path(&bob.0), path(&bob.1), true],
        "forged": [path(&forged.0), path(&forged.1), false],
        "forged with the token": [path(&forged.0), path(&forged.1), true],
        "no certificate": [null, null, false],
        "the token alone": [null, null, true],
    });
    let got = sigil_testkit::python::python_json(
        "the console over HTTPS with client certificates",
        &[
            "-c",
            script,
            cert.to_str().unwrap(),
            &format!("https://localhost:{port}/"),
            &token,
            &cases.to_string(),
        ],
    );
    let overview = |name: &str| {
        assert_eq!(got[name][0], 200, "{name}: {got}");
        assert!(
            got[name][1].as_str().unwrap().contains("<h1>Overview</h1>"),
            "{name}: {got}"
        );
    };
    overview("alice");
    overview("bob with the token");
    overview("the token alone");
    assert_eq!(got["bob"], json!([401, ""]), "{got}");
    assert_eq!(got["no certificate"], json!([401, ""]), "{got}");
    for name in ["forged", "forged with the token"] {
        // The server's alert, as the client's TLS library reports it.
        assert_eq!(got[name][0], "tls failed", "{name}: {got}");
        assert!(
            got[name][1].as_str().unwrap().contains("ALERT"),
            "{name}: {got}"
        );
    }
}
