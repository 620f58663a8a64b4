//! Issue 22: SPIRE's `audit_log_enabled`, with the real binaries. The server logs JSON at
//! ERROR, so every audit line it writes shows that the audit log survives a quiet log level;
//! every line of the log is parsed with serde_json.
//!
//! - With the key on: each state-changing CLI command (token generate, entry create / update /
//!   delete, x509 and jwt mint, bundle set / delete, localauthority prepare / taint, agent ban
//!   / evict), an agent's attestation and the SVIDs signed for it produce exactly one audit line
//!   each with the caller (the CLI's UID, GID, PID and executable; the agent's SPIFFE ID and
//!   address), the action, the target and the outcome; a refused call (a duplicate entry, a
//!   join token that does not exist, another user on the admin socket, where the test runs as
//!   root) logs its gRPC status; read-only commands log nothing,
//!   unless refused (an evicted agent's sync); no join token, JWT or private key appears in
//!   any log line.
//! - With the key off: no audit line at all. With the text format: `type=audit` and the fields
//!   as `key=value`.

use std::fs::Permissions;
use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Output};
use std::time::Duration;

use serde_json::Value;
use sigil_testkit::{
    Agent, OTHER_UID, Server, ServerOptions, can_switch_user, created_entry_id, register_uid,
    server_bin, wait_for,
};
use x509_parser::pem::parse_x509_pem;

/// Every line of the server's log, each of which must be a JSON object.
fn json_log(server: &Server) -> Vec<Value> {
    server
        .log()
        .lines()
        .map(|l| {
            serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON log line ({e}): {l}"))
        })
        .collect()
}

/// The audit lines of the server's log.
fn audit_lines(server: &Server) -> Vec<Value> {
    json_log(server)
        .into_iter()
        .filter(|l| l["type"] == "audit")
        .collect()
}

/// The audit lines of `method`.
fn lines_of(server: &Server, method: &str) -> Vec<Value> {
    audit_lines(server)
        .into_iter()
        .filter(|l| l["method"] == method)
        .collect()
}

/// Runs `act`, then returns the one audit line of `method` it added (panics unless exactly one
/// appears).
fn one_line<T>(server: &Server, method: &str, act: impl FnOnce() -> T) -> (Value, T) {
    let before = lines_of(server, method).len();
    let out = act();
    wait_for(
        &format!("an audit line of {method}"),
        Duration::from_secs(10),
        || (lines_of(server, method).len() > before).then_some(()),
    );
    let lines = lines_of(server, method);
    assert_eq!(
        lines.len(),
        before + 1,
        "exactly one more {method} line: {lines:#?}"
    );
    (lines[before].clone(), out)
}

/// Asserts the line's fields (`null` for a field that must be absent).
fn assert_fields(line: &Value, want: &[(&str, Value)]) {
    for (key, value) in want {
        assert_eq!(&line[*key], value, "{key} in {line:#}");
    }
}

/// A successful admin call by this process's user through the CLI: SPIRE's caller fields.
fn assert_cli_success(line: &Value) {
    let (uid, gid) = (
        nix::unistd::getuid().as_raw(),
        nix::unistd::getgid().as_raw(),
    );
    assert_fields(
        line,
        &[
            ("message", "API accessed".into()),
            ("level", "INFO".into()),
            ("status", "success".into()),
            ("status_code", Value::Null),
            ("status_message", Value::Null),
            ("service", "sigil.admin.v1.Admin".into()),
            ("caller_uid", uid.into()),
            ("caller_gid", gid.into()),
            ("caller_id", Value::Null),
        ],
    );
    assert!(line["caller_pid"].as_u64().is_some(), "{line:#}");
    assert!(
        line["caller_path"]
            .as_str()
            .is_some_and(|p| p.ends_with("/sigil-server")),
        "the CLI's executable: {line:#}"
    );
    assert!(
        line["request_id"].as_str().is_some_and(|r| r.len() == 36),
        "{line:#}"
    );
}

/// Runs `sigil-server <args>` as [`OTHER_UID`] on the server's admin socket, opened to it
/// for the call (the socket's directory is 0700 and the socket 0600 again afterwards).
fn as_other_user(server: &Server, args: &[&str]) -> Output {
    let private = server.socket.parent().expect("socket directory");
    let modes = [
        (server.dir.path(), 0o711, 0o700),
        (private, 0o711, 0o700),
        (server.socket.as_path(), 0o666, 0o600),
    ];
    for (path, open, _) in modes {
        std::fs::set_permissions(path, Permissions::from_mode(open)).unwrap();
    }
    let out = Command::new("setpriv")
        .args([
            format!("--reuid={OTHER_UID}"),
            format!("--regid={OTHER_UID}"),
            "--clear-groups".to_owned(),
        ])
        .arg(server_bin())
        .args(args)
        .arg("-socketPath")
        .arg(&server.socket)
        .output()
        .expect("run setpriv");
    for (path, _, closed) in modes {
        std::fs::set_permissions(path, Permissions::from_mode(closed)).unwrap();
    }
    out
}

/// A server with the audit log on, logging at ERROR in `log_format`; its agents renew their
/// SVIDs every 5 s (`agent_ttl = "10s"`).
fn audited_server(log_format: &str) -> Server {
    Server::start(ServerOptions {
        log_level: "ERROR".into(),
        extra_server: format!(
            "audit_log_enabled = true\n  log_format = \"{log_format}\"\n  agent_ttl = \"10s\""
        ),
        ..ServerOptions::default()
    })
}

#[test]
fn every_change_and_signing_is_audited_once_and_reads_are_not() {
    let server = audited_server("json");
    let td = server.options.trust_domain.clone();
    let scratch = tempfile::tempdir().unwrap();

    // Read-only commands: nothing.
    for args in [
        &["healthcheck"][..],
        &["entry", "show"],
        &["entry", "count"],
        &["agent", "list"],
        &["bundle", "show"],
        &["bundle", "list"],
        &["bundle", "count"],
        &["localauthority", "x509", "show"],
        &["localauthority", "jwt", "show"],
    ] {
        server.cli_ok(args);
    }
    assert_eq!(
        audit_lines(&server),
        Vec::<Value>::new(),
        "reads are not audited"
    );

    // token generate: the TTL, never the token.
    let (line, unused_token) = one_line(&server, "CreateJoinToken", || server.join_token());
    assert_cli_success(&line);
    assert_fields(&line, &[("ttl", 600.into()), ("spiffe_id", Value::Null)]);
    assert!(line["expires_at"].as_i64().is_some(), "{line:#}");

    // entry create / update / delete, and a refused create.
    let parent = format!("spiffe://{td}/audit/node");
    let workload = format!("spiffe://{td}/audit/workload");
    let create = [
        "entry",
        "create",
        "-spiffeID",
        &workload,
        "-parentID",
        &parent,
        "-selector",
        "unix:uid:4242",
    ];
    let (line, created) = one_line(&server, "BatchCreateEntry", || server.cli_json(&create));
    let entry_id = created_entry_id(&created);
    assert_cli_success(&line);
    assert_fields(
        &line,
        &[
            ("count", 1.into()),
            ("spiffe_ids", workload.clone().into()),
            ("entry_ids", entry_id.clone().into()),
        ],
    );
    let (line, refused) = one_line(&server, "BatchCreateEntry", || server.cli(&create));
    assert!(!refused.status.success());
    assert_fields(
        &line,
        &[
            ("status", "error".into()),
            ("status_code", "AlreadyExists".into()),
            ("spiffe_ids", workload.clone().into()),
            ("entry_ids", Value::Null),
        ],
    );
    assert!(
        line["status_message"]
            .as_str()
            .is_some_and(|m| m.contains("already exists")),
        "{line:#}"
    );
    let (line, _) = one_line(&server, "BatchUpdateEntry", || {
        server.cli_ok(&[
            "entry",
            "update",
            "-entryID",
            &entry_id,
            "-spiffeID",
            &workload,
            "-parentID",
            &parent,
            "-selector",
            "unix:uid:4243",
        ])
    });
    assert_cli_success(&line);
    assert_fields(&line, &[("entry_ids", entry_id.clone().into())]);
    let (line, _) = one_line(&server, "BatchDeleteEntry", || {
        server.cli_ok(&["entry", "delete", "-entryID", &entry_id])
    });
    assert_cli_success(&line);
    assert_fields(
        &line,
        &[("entry_ids", entry_id.into()), ("count", 1.into())],
    );

    // x509 mint: the SPIFFE ID and the serial of what was signed (checked with x509-parser).
    let mint_dir = scratch.path().join("mint");
    std::fs::create_dir_all(&mint_dir).unwrap();
    let minted_id = format!("spiffe://{td}/audit/minted");
    let (line, _) = one_line(&server, "MintX509SVID", || {
        server.cli_ok(&[
            "x509",
            "mint",
            "-spiffeID",
            &minted_id,
            "-write",
            mint_dir.to_str().unwrap(),
        ])
    });
    assert_cli_success(&line);
    let pem = std::fs::read(mint_dir.join("svid.pem")).unwrap();
    let (_, pem) = parse_x509_pem(&pem).unwrap();
    let cert = pem.parse_x509().unwrap();
    // As the CA records serials: hex, without leading zero bytes.
    let raw = cert.tbs_certificate.raw_serial();
    let serial: String = raw
        .iter()
        .skip_while(|b| **b == 0)
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_fields(
        &line,
        &[
            ("spiffe_id", minted_id.clone().into()),
            ("serial", serial.into()),
            ("expires_at", cert.validity().not_after.timestamp().into()),
        ],
    );
    let key_pem = std::fs::read_to_string(mint_dir.join("key.pem")).unwrap();

    // jwt mint: the audience, never the token.
    let (line, minted_jwt) = one_line(&server, "MintJWTSVID", || {
        server.cli_ok(&[
            "jwt",
            "mint",
            "-spiffeID",
            &minted_id,
            "-audience",
            "db",
            "-audience",
            "cache",
        ])
    });
    assert_cli_success(&line);
    assert_fields(
        &line,
        &[
            ("spiffe_id", minted_id.into()),
            ("audience", "db,cache".into()),
        ],
    );
    let minted_jwt = minted_jwt
        .split_whitespace()
        .find(|s| s.matches('.').count() == 2)
        .expect("a token in jwt mint output")
        .to_owned();

    // bundle set / delete of a federated trust domain.
    let partner = scratch.path().join("partner.pem");
    std::fs::write(&partner, server.cli_ok(&["bundle", "show"])).unwrap();
    let (line, _) = one_line(&server, "SetFederatedBundle", || {
        server.cli_ok(&[
            "bundle",
            "set",
            "-id",
            "spiffe://partner.test",
            "-path",
            partner.to_str().unwrap(),
        ])
    });
    assert_cli_success(&line);
    assert_fields(&line, &[("trust_domain", "partner.test".into())]);
    let (line, _) = one_line(&server, "DeleteFederatedBundle", || {
        server.cli_ok(&["bundle", "delete", "-id", "spiffe://partner.test"])
    });
    assert_cli_success(&line);
    assert_fields(
        &line,
        &[
            ("trust_domain", "partner.test".into()),
            ("mode", "restrict".into()),
            ("count", 0.into()),
            ("entry_ids", Value::Null),
        ],
    );

    // The log level changed at run time is a change: audited with the level now in force,
    // and the audit line itself survives `-level error` (set) as it did the launch level.
    let (line, _) = one_line(&server, "SetLogLevel", || {
        server.cli_ok(&["logger", "set", "-level", "debug"])
    });
    assert_cli_success(&line);
    assert_fields(&line, &[("log_level", "DEBUG".into())]);
    let (line, _) = one_line(&server, "ResetLogLevel", || {
        server.cli_ok(&["logger", "reset"])
    });
    assert_cli_success(&line);
    assert_fields(&line, &[("log_level", "ERROR".into())]);
    server.cli_ok(&["logger", "get"]);
    assert!(
        lines_of(&server, "GetLogger").is_empty(),
        "logger get is a read"
    );

    // localauthority prepare (names the authority it made), then taint of an unknown one.
    let (line, prepared) = one_line(&server, "LocalAuthority", || {
        server.cli_json(&["localauthority", "jwt", "prepare"])
    });
    assert_cli_success(&line);
    let prepared_id = prepared["prepared_authority"]["authority_id"]
        .as_str()
        .unwrap_or_else(|| panic!("no prepared authority in {prepared}"))
        .to_owned();
    assert_fields(
        &line,
        &[
            ("authority_kind", "jwt".into()),
            ("authority_op", "prepare".into()),
            ("authority_id", prepared_id.into()),
        ],
    );
    let (line, refused) = one_line(&server, "LocalAuthority", || {
        server.cli(&["localauthority", "x509", "taint", "-authorityID", "00ff"])
    });
    assert!(!refused.status.success());
    assert_fields(
        &line,
        &[
            ("status", "error".into()),
            ("authority_kind", "x509".into()),
            ("authority_op", "taint".into()),
            ("authority_id", "00ff".into()),
        ],
    );
    assert!(line["status_code"].is_string(), "{line:#}");

    // Another user, let through the socket's permissions: refused before any handler runs,
    // with that user's credentials and no target.
    if can_switch_user() {
        let (line, refused) = one_line(&server, "BatchCreateEntry", || {
            as_other_user(&server, &create)
        });
        assert!(!refused.status.success(), "{refused:?}");
        assert_fields(
            &line,
            &[
                ("status", "error".into()),
                ("status_code", "PermissionDenied".into()),
                ("caller_uid", OTHER_UID.into()),
                ("caller_gid", OTHER_UID.into()),
                ("spiffe_ids", Value::Null),
            ],
        );
        assert!(
            line["caller_path"]
                .as_str()
                .is_some_and(|p| p.ends_with("/sigil-server")),
            "{line:#}"
        );
    }

    // An agent attests: the attestation type, the agent ID and its SVID's serial; the caller
    // is its address (it has no SVID yet).
    let token = server.join_token();
    let mut agent = Agent::configure(&server);
    let agent_id = server.join_token_agent_id(&token);
    let (line, _) = one_line(&server, "AttestAgent", || agent.spawn(Some(&token)));
    assert_fields(
        &line,
        &[
            ("status", "success".into()),
            ("service", "sigil.agent.v1.Agent".into()),
            ("attestation_type", "join_token".into()),
            ("agent_id", agent_id.clone().into()),
            ("caller_id", Value::Null),
            ("caller_uid", Value::Null),
        ],
    );
    assert!(
        line["caller_addr"]
            .as_str()
            .is_some_and(|a| a.starts_with("127.0.0.1:")),
        "{line:#}"
    );
    assert!(line["serial"].is_string(), "{line:#}");
    let attested_serial = line["serial"].clone();

    // The SVIDs the agent has signed for a workload: its caller ID is the agent.
    let uid = nix::unistd::getuid().as_raw();
    let workload = format!("spiffe://{td}/audit/agent-workload");
    let (line, workload_entry) = one_line(&server, "BatchMintX509SVID", || {
        let entry = register_uid(&server, &workload, &agent_id, uid, &[]);
        agent.wait_for_svid(Duration::from_secs(30));
        entry
    });
    assert_fields(
        &line,
        &[
            ("status", "success".into()),
            ("caller_id", agent_id.clone().into()),
            ("entry_ids", workload_entry.clone().into()),
            ("spiffe_ids", workload.into()),
            ("count", 1.into()),
        ],
    );
    // A JWT-SVID fetched through the agent (signed by MintJWTSVID or BatchMintJWTSVID).
    let jwt_lines = || -> Vec<Value> {
        audit_lines(&server)
            .into_iter()
            .filter(|l| l["service"] == "sigil.agent.v1.Agent")
            .filter(|l| l["method"] == "MintJWTSVID" || l["method"] == "BatchMintJWTSVID")
            .collect()
    };
    assert_eq!(jwt_lines(), Vec::<Value>::new());
    let fetched = agent.cli(&[
        "api",
        "fetch",
        "jwt",
        "-audience",
        "ledger",
        "-output",
        "json",
    ]);
    assert!(
        fetched.status.success(),
        "{}",
        String::from_utf8_lossy(&fetched.stderr)
    );
    let agent_jwts: Vec<String> = String::from_utf8_lossy(&fetched.stdout)
        .split('"')
        .filter(|s| s.matches('.').count() == 2 && s.starts_with("eyJ"))
        .map(str::to_owned)
        .collect();
    assert!(!agent_jwts.is_empty(), "no JWT-SVID fetched");
    let signed = jwt_lines();
    assert_eq!(signed.len(), 1, "one JWT signing: {signed:#?}");
    assert_fields(
        &signed[0],
        &[
            ("status", "success".into()),
            ("caller_id", agent_id.clone().into()),
            ("audience", "ledger".into()),
        ],
    );
    assert!(
        signed[0].to_string().contains(&workload_entry),
        "the entry: {:#}",
        signed[0]
    );

    // A join token that does not exist: refused, with no agent ID (the token is in it).
    let bogus = "00000000-0000-4000-8000-0000000a0d17";
    let mut intruder = Agent::configure(&server);
    let (line, exit) = one_line(&server, "AttestAgent", || {
        intruder.launch(Some(bogus));
        intruder.wait_exit(Duration::from_secs(30))
    });
    assert!(
        exit.is_some_and(|s| !s.success()),
        "refused agent exits: {exit:?}"
    );
    assert_fields(
        &line,
        &[
            ("status", "error".into()),
            ("status_code", "PermissionDenied".into()),
            ("attestation_type", "join_token".into()),
            ("agent_id", Value::Null),
        ],
    );

    // The agent renews its SVID at half-life: the caller is the agent, the serial is new.
    wait_for("the agent's renewal", Duration::from_secs(20), || {
        (!lines_of(&server, "RenewAgent").is_empty()).then_some(())
    });
    let renewed = &lines_of(&server, "RenewAgent")[0];
    assert_fields(
        renewed,
        &[
            ("status", "success".into()),
            ("caller_id", agent_id.clone().into()),
        ],
    );
    assert!(
        renewed["serial"].is_string() && renewed["serial"] != attested_serial,
        "a new serial: {renewed:#}"
    );

    // agent ban, then evict.
    for (args, method) in [
        (["agent", "ban", "-spiffeID"], "BanAgent"),
        (["agent", "evict", "-spiffeID"], "EvictAgent"),
    ] {
        let mut args = args.to_vec();
        args.push(&agent_id);
        let (line, _) = one_line(&server, method, || server.cli_ok(&args));
        assert_cli_success(&line);
        assert_fields(&line, &[("spiffe_id", agent_id.clone().into())]);
    }
    // The evicted agent's sync, a read, is refused before any handler runs: that is audited,
    // the caller still named by the SVID it presented.
    let refused_sync = || lines_of(&server, "SyncEntries").into_iter().next();
    wait_for("a refused sync", Duration::from_secs(30), refused_sync);
    assert_fields(
        &refused_sync().unwrap(),
        &[
            ("status", "error".into()),
            ("status_code", "PermissionDenied".into()),
            ("caller_id", agent_id.clone().into()),
        ],
    );

    // Every line of the whole log, audit or not: no secret. The used join token is public
    // once spent (as SPIRE, it is in the agent's ID), so it appears only inside that ID.
    let log = server.log();
    let mut secrets: Vec<(String, String)> = vec![
        ("unused join token".into(), unused_token),
        ("join token that does not exist".into(), bogus.to_owned()),
        ("CLI-minted JWT-SVID".into(), minted_jwt),
    ];
    secrets.extend(agent_jwts.into_iter().map(|j| ("agent JWT-SVID".into(), j)));
    secrets.extend(
        key_pem
            .lines()
            .filter(|l| !l.starts_with("-----"))
            .map(|l| ("CLI-minted private key (PEM line)".into(), l.to_owned())),
    );
    for (what, secret) in &secrets {
        assert!(!log.contains(secret.as_str()), "{what} in the server log");
    }
    assert_eq!(
        log.matches(&token).count(),
        log.matches(&agent_id).count(),
        "the used join token only inside the agent ID"
    );
    assert!(!log.contains("BEGIN"), "no PEM in the log");
}

#[test]
fn no_audit_line_when_the_key_is_off() {
    let server = Server::start(ServerOptions {
        extra_server: "log_format = \"json\"".into(),
        ..ServerOptions::default()
    });
    let td = server.options.trust_domain.clone();
    let token = server.join_token();
    let mut agent = Agent::configure(&server);
    agent.spawn(Some(&token));
    let agent_id = server.join_token_agent_id(&token);
    register_uid(
        &server,
        &format!("spiffe://{td}/quiet"),
        &agent_id,
        nix::unistd::getuid().as_raw(),
        &[],
    );
    agent.wait_for_svid(Duration::from_secs(30));
    server.cli_ok(&["agent", "evict", "-spiffeID", &agent_id]);
    let log = json_log(&server);
    assert!(log.len() > 5, "the server logged at DEBUG: {log:#?}");
    assert!(
        log.iter()
            .all(|l| l["type"].is_null() && l["message"] != "API accessed"),
        "no audit line: {log:#?}"
    );
}

#[test]
fn text_lines_read_as_key_value() {
    let server = audited_server("text");
    let td = server.options.trust_domain.clone();
    server.cli_ok(&[
        "entry",
        "create",
        "-spiffeID",
        &format!("spiffe://{td}/text"),
        "-parentID",
        &format!("spiffe://{td}/node"),
        "-selector",
        "unix:uid:1",
    ]);
    let log = server.log();
    let lines: Vec<&str> = log.lines().filter(|l| l.contains("type=audit")).collect();
    assert_eq!(lines.len(), 1, "{log}");
    for field in [
        " INFO ",
        "API accessed",
        "status=success",
        "method=BatchCreateEntry",
        "service=sigil.admin.v1.Admin",
        &format!("caller_uid={}", nix::unistd::getuid().as_raw()),
        &format!("spiffe_ids=\"spiffe://{td}/text\""),
    ] {
        assert!(lines[0].contains(field), "{field} in {}", lines[0]);
    }
}
