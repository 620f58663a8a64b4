//! Issue #7 item 4: no private key, join token, JWT-SVID or CSR in any log line. A full run at
//! DEBUG (server with disk keys and the audit log on, agent attested by join token, X.509 and
//! JWT mints through the Workload API, the admin API and the CLI), then every log is searched
//! for fragments of each secret the test saw, and for ANSI escape codes (issue 16: colour only
//! on a terminal).

use std::path::{Path, PathBuf};

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use sigil_proto::sigil::admin::v1 as admin;
use sigil_proto::sigil::admin::v1::admin_client::AdminClient;
use sigil_testkit::{Agent, Server, ServerOptions, register_uid};

/// Every needle of one secret: its PEM body lines, and the first 32 characters of its DER in
/// standard and URL-safe base64 and in hex.
fn der_needles(what: &str, der: &[u8], out: &mut Vec<(String, String)>) {
    let std = STANDARD.encode(der);
    let url = URL_SAFE_NO_PAD.encode(der);
    let hex: String = der.iter().map(|b| format!("{b:02x}")).collect();
    for (i, line) in std.as_bytes().chunks(64).enumerate() {
        let line = String::from_utf8_lossy(line).into_owned();
        if line.len() >= 24 {
            out.push((format!("{what} (PEM line {i})"), line));
        }
    }
    for (enc, s) in [("base64url", url), ("hex", hex)] {
        // Skip the DER prefix every key shares, so a match means this key.
        let start = 32.min(s.len());
        let end = (start + 32).min(s.len());
        out.push((format!("{what} ({enc})"), s[start..end].to_owned()));
    }
}

/// The DER of every PEM block in `path` whose label contains `label`.
fn pem_ders(path: &Path, label: &str) -> Vec<Vec<u8>> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut out = Vec::new();
    let mut body = String::new();
    let mut inside = false;
    for line in text.lines() {
        if line.starts_with("-----BEGIN ") && line.contains(label) {
            inside = true;
            body.clear();
        } else if line.starts_with("-----END ") && inside {
            inside = false;
            out.push(STANDARD.decode(&body).expect("PEM base64"));
        } else if inside {
            body.push_str(line.trim());
        }
    }
    out
}

fn files_under(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            files_under(&p, out);
        } else {
            out.push(p);
        }
    }
}

#[test]
fn no_secret_in_any_log_line() {
    // With the audit log on: its lines are searched too.
    let server = Server::start(ServerOptions {
        key_manager_disk: true,
        extra_server: "audit_log_enabled = true".into(),
        ..ServerOptions::default()
    });
    let td = server.options.trust_domain.clone();
    let scratch = tempfile::tempdir().unwrap();
    let dir = scratch.path();
    let mut needles: Vec<(String, String)> = Vec::new();

    // Join tokens: the one the agent uses becomes its public SPIFFE ID (as in SPIRE), so it may
    // appear only inside that ID; the unused one must not appear at all.
    let token = server.join_token();
    let unused = server.join_token();
    needles.push(("unused join token".into(), unused));
    let mut agent = Agent::configure(&server);
    agent.spawn(Some(&token));
    let agent_id = format!("spiffe://{td}/spire/agent/join_token/{token}");

    // A workload entry for this process, fetched through the Workload API (X.509 and JWT).
    let uid = nix::unistd::getuid().as_raw();
    register_uid(
        &server,
        &format!("spiffe://{td}/secrets/workload"),
        &agent_id,
        uid,
        &[],
    );
    let svid_dir = dir.join("workload");
    std::fs::create_dir_all(&svid_dir).unwrap();
    sigil_testkit::wait_for(
        "the workload's X509-SVID",
        std::time::Duration::from_secs(30),
        || {
            let out = agent.cli(&["api", "fetch", "x509", "-write", svid_dir.to_str().unwrap()]);
            out.status.success().then_some(())
        },
    );
    for key in pem_ders(&svid_dir.join("svid.0.key"), "PRIVATE KEY") {
        der_needles("workload X509-SVID key", &key, &mut needles);
    }
    let out = agent.cli(&["api", "fetch", "jwt", "-audience", "db", "-output", "json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let fetched: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let workload_jwt = fetched.to_string();
    let jwts: Vec<String> = workload_jwt
        .split('"')
        .filter(|s| s.matches('.').count() == 2 && s.starts_with("eyJ"))
        .map(str::to_owned)
        .collect();
    assert!(!jwts.is_empty(), "no JWT-SVID in {workload_jwt}");

    // Validate it too: the token travels through ValidateJWTSVID's path.
    let out = agent.cli(&[
        "api",
        "validate",
        "jwt",
        "-audience",
        "db",
        "-svid",
        &jwts[0],
    ]);
    let _ = out;

    // CLI mints: an X.509-SVID (key made by the CLI) and a JWT-SVID.
    let mint_dir = dir.join("mint");
    std::fs::create_dir_all(&mint_dir).unwrap();
    server.cli_ok(&[
        "x509",
        "mint",
        "-spiffeID",
        &format!("spiffe://{td}/secrets/cli"),
        "-write",
        mint_dir.to_str().unwrap(),
    ]);
    for key in pem_ders(&mint_dir.join("key.pem"), "PRIVATE KEY") {
        der_needles("CLI-minted X509-SVID key", &key, &mut needles);
    }
    let cli_jwt = server
        .cli_ok(&[
            "jwt",
            "mint",
            "-spiffeID",
            &format!("spiffe://{td}/secrets/cli"),
            "-audience",
            "db",
        ])
        .trim()
        .to_owned();
    let cli_jwt = cli_jwt
        .split_whitespace()
        .find(|s| s.matches('.').count() == 2)
        .expect("a token in jwt mint output")
        .to_owned();
    let mut all_jwts = jwts;
    all_jwts.push(cli_jwt);

    // A CSR sent over the admin API, and one more JWT minted there.
    let csr_key = dir.join("csr.key");
    let csr_der = dir.join("csr.der");
    let (ok, text) = sigil_testkit::openssl(&[
        "req",
        "-new",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-subj",
        "/O=secrets",
        "-keyout",
        csr_key.to_str().unwrap(),
        "-outform",
        "DER",
        "-out",
        csr_der.to_str().unwrap(),
    ]);
    assert!(ok, "{text}");
    let csr = std::fs::read(&csr_der).unwrap();
    der_needles("admin API CSR", &csr, &mut needles);
    for key in pem_ders(&csr_key, "PRIVATE KEY") {
        der_needles("CSR key", &key, &mut needles);
    }
    let socket = server.socket.clone();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let admin_jwt = rt.block_on(async move {
        let channel = sigil_testkit::admin::uds_channel(&socket).await.unwrap();
        let mut client = AdminClient::new(channel);
        client
            .mint_x509svid(admin::MintX509svidRequest {
                csr,
                spiffe_id: format!("spiffe://{td}/secrets/csr"),
                ..Default::default()
            })
            .await
            .expect("mint from the CSR");
        client
            .mint_jwtsvid(admin::MintJwtsvidRequest {
                spiffe_id: format!("spiffe://{td}/secrets/admin"),
                audience: vec!["db".into()],
                ttl: 0,
            })
            .await
            .expect("mint a JWT-SVID")
            .into_inner()
            .token
    });
    all_jwts.push(admin_jwt);
    for (i, jwt) in all_jwts.iter().enumerate() {
        let parts: Vec<&str> = jwt.split('.').collect();
        needles.push((format!("JWT-SVID {i}"), jwt.clone()));
        // The signature alone, and header.payload (what a log of "the token" would show).
        needles.push((format!("JWT-SVID {i} signature"), parts[2].to_owned()));
        needles.push((
            format!("JWT-SVID {i} body"),
            format!("{}.{}", parts[0], parts[1]),
        ));
    }

    // The keys on disk: the server's CA/JWT keys (disk key manager) and the agent's.
    let mut key_files = Vec::new();
    files_under(&server.data_dir(), &mut key_files);
    files_under(&agent.dir.path().join("data"), &mut key_files);
    let mut key_count = 0;
    for f in &key_files {
        let Ok(text) = std::fs::read_to_string(f) else {
            continue;
        };
        if text.contains("PRIVATE KEY") {
            for key in pem_ders(f, "PRIVATE KEY") {
                key_count += 1;
                der_needles(&format!("key in {}", f.display()), &key, &mut needles);
            }
        }
        // The disk key manager's JSON holds base64 PKCS#8 values.
        if let Ok(json) = serde_json::from_str::<serde_json::Value>(&text) {
            collect_base64_keys(
                &json,
                &f.display().to_string(),
                &mut needles,
                &mut key_count,
            );
        }
    }
    assert!(
        key_count >= 2,
        "found only {key_count} keys on disk in {key_files:?}"
    );

    // Stop both so every line is flushed, then search every log.
    assert!(agent.stop().success());
    let mut server = server;
    assert!(server.stop().success());
    let logs = [("server.log", server.log()), ("agent.log", agent.log())];
    let mut leaks = Vec::new();
    for (name, log) in &logs {
        assert!(
            log.contains("DEBUG") || log.contains("\"level\":\"DEBUG\""),
            "{name} is not at DEBUG"
        );
        // Coloured only on a terminal (SPIRE's rule): written to a file, a log carries no ANSI
        // escape code, so `grep key=value` finds its fields.
        let escapes = log.matches('\u{1b}').count();
        assert_eq!(escapes, 0, "{name} carries {escapes} ANSI escape codes");
        // The used join token is the agent's public ID; anywhere else it is a leak.
        let without_id = log.replace(&format!("join_token/{token}"), "join_token/<agent>");
        if without_id.contains(&token) {
            leaks.push(format!(
                "{name}: the join token outside the agent's SPIFFE ID"
            ));
        }
        for (what, needle) in &needles {
            if log.contains(needle.as_str()) {
                let line = log
                    .lines()
                    .find(|l| l.contains(needle.as_str()))
                    .unwrap_or_default();
                leaks.push(format!("{name}: {what}: {line:.300}"));
            }
        }
    }
    assert!(needles.len() > 20, "too few needles: {}", needles.len());
    assert!(leaks.is_empty(), "secrets in logs:\n{}", leaks.join("\n"));
}

/// The `pkcs8` values (base64 PKCS#8 DER) of the disk key manager's JSON.
fn collect_base64_keys(
    json: &serde_json::Value,
    file: &str,
    needles: &mut Vec<(String, String)>,
    count: &mut usize,
) {
    match json {
        serde_json::Value::Array(a) => a
            .iter()
            .for_each(|v| collect_base64_keys(v, file, needles, count)),
        serde_json::Value::Object(o) => {
            for (k, v) in o {
                if k == "pkcs8"
                    && let Some(der) = v.as_str().and_then(|s| STANDARD.decode(s).ok())
                {
                    *count += 1;
                    der_needles(&format!("pkcs8 key in {file}"), &der, needles);
                } else {
                    collect_base64_keys(v, file, needles, count);
                }
            }
        }
        _ => {}
    }
}
