//! SPIRE's operator commands with the real binaries: `agent list|count` filters and `agent
//! purge`, `entry show|count` filters (`-federatesWith`, `-matchFederatesWithOn`,
//! `-downstream`, `-hint`), and `logger get|set|reset` on the server (admin socket) and the
//! agent (its admin socket): a DEBUG line appears after `set -level debug` and stops after
//! `reset`. Output is checked against SPIRE's pretty text and JSON shapes; bad input is an
//! error with nothing sent.
//!
//! (Purging agents that can re-attest needs `k8s_psat` agents; that path is tested against
//! the real admin API in `sigil-server`'s `cli::agent` tests. Join-token agents, the ones a
//! test can attest here, cannot re-attest, and SPIRE's purge leaves them alone.)

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use serde_json::json;
use sigil_testkit::{
    Agent, AgentOptions, Server, ServerOptions, agent_bin, attested_agent, id_text,
    listed_agent_ids, register_uid, shown_entries, uid, unix_now, wait_for,
};

fn info_server() -> Server {
    Server::start(ServerOptions {
        log_level: "INFO".into(),
        ..ServerOptions::default()
    })
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A failed command: exit 1, `message` on stderr, nothing on stdout.
fn assert_refused(out: &Output, message: &str) {
    assert_eq!(out.status.code(), Some(1), "{}", stderr(out));
    assert!(
        stderr(out).contains(message),
        "{message:?} in {}",
        stderr(out)
    );
    assert!(out.stdout.is_empty(), "{}", stdout(out));
}

/// Go's `2006-01-02 15:04:05 -0700 -07` for a Unix time, in UTC (via `date`).
fn go_date(unix: i64) -> String {
    let out = Command::new("date")
        .args([
            "-u",
            "-d",
            &format!("@{unix}"),
            "+%Y-%m-%d %H:%M:%S +0000 +00",
        ])
        .output()
        .unwrap();
    stdout(&out).trim().to_owned()
}

fn agent_ids(server: &Server, filter: &[&str]) -> Vec<String> {
    let mut args = vec!["agent", "list"];
    args.extend(filter);
    let listed = server.cli_json(&args);
    let mut ids: Vec<String> = listed["agents"]
        .as_array()
        .unwrap_or_else(|| panic!("{listed}"))
        .iter()
        .map(|a| id_text(&a["id"]))
        .collect();
    ids.sort();
    ids
}

fn agent_count(server: &Server, filter: &[&str]) -> i64 {
    let mut args = vec!["agent", "count"];
    args.extend(filter);
    let json = server.cli_json(&args);
    assert_eq!(json.as_object().unwrap().len(), 1, "{json}");
    json["count"].as_i64().unwrap_or_else(|| panic!("{json}"))
}

#[test]
fn agent_list_and_count_filter_on_the_server() {
    // Agent SVIDs live 6 s: running agents renew every ~3 s, a banned one's SVID expires (and,
    // banned, it is not pruned).
    let server = Server::start(ServerOptions {
        log_level: "INFO".into(),
        extra_server: "agent_ttl = \"6s\"".into(),
        ..ServerOptions::default()
    });
    let agents: Vec<(Agent, String)> = (0..3).map(|_| attested_agent(&server, false)).collect();
    wait_for("three attested agents", Duration::from_secs(30), || {
        (listed_agent_ids(&server).len() == 3).then_some(())
    });
    let mut all: Vec<String> = agents.iter().map(|(_, id)| id.clone()).collect();
    all.sort();
    let banned = &agents[0].1;
    server.cli_ok(&["agent", "ban", "-spiffeID", banned]);
    let others: Vec<String> = all.iter().filter(|id| *id != banned).cloned().collect();
    let expired = wait_for(
        "the banned agent's SVID to expire",
        Duration::from_secs(20),
        || {
            let now = go_date(unix_now());
            let ids = agent_ids(&server, &["-expiresBefore", &now]);
            (ids == [banned.clone()]).then_some(now)
        },
    );

    let tomorrow = go_date(unix_now() + 86_400);
    let an_hour_ago = go_date(unix_now() - 3600);
    let cases: Vec<(Vec<&str>, Vec<String>)> = vec![
        (vec![], all.clone()),
        (vec!["-banned", "true"], vec![banned.clone()]),
        (vec!["-banned", "false"], others.clone()),
        // SPIRE: any other value means no filter.
        (vec!["-banned", "either"], all.clone()),
        (vec!["-attestationType", "join_token"], all.clone()),
        (vec!["-attestationType", "k8s_psat"], vec![]),
        (vec!["-canReattest", "false"], all.clone()),
        (vec!["-canReattest", "true"], vec![]),
        (vec!["-expiresBefore", &tomorrow], all.clone()),
        (vec!["-expiresBefore", &an_hour_ago], vec![]),
        (vec!["-expiresBefore", &expired], vec![banned.clone()]),
        (vec!["-expiresBefore", &expired, "-banned", "false"], vec![]),
        (
            vec!["-expiresBefore", &tomorrow, "-banned", "false"],
            others,
        ),
        // Join-token agents have no selectors.
        (vec!["-selector", "k8s_psat:cluster:prod"], vec![]),
        (
            vec![
                "-selector",
                "k8s_psat:cluster:prod",
                "-matchSelectorsOn",
                "any",
            ],
            vec![],
        ),
    ];
    for (filter, want) in &cases {
        assert_eq!(&agent_ids(&server, filter), want, "agent list {filter:?}");
        assert_eq!(
            agent_count(&server, filter),
            want.len() as i64,
            "agent count {filter:?}"
        );
    }

    // SPIRE's pretty output.
    let pretty = server.cli_ok(&["agent", "count", "-banned", "true"]);
    assert_eq!(pretty, "1 attested agent\n");
    let pretty = server.cli_ok(&["agent", "count", "-banned", "false"]);
    assert_eq!(pretty, "2 attested agents\n");
    let pretty = server.cli_ok(&["agent", "list", "-banned", "true"]);
    assert!(
        pretty.starts_with(&format!(
            "Found 1 attested agent:\n\nSPIFFE ID         : {banned}\nAttestation type  : join_token\n"
        )),
        "{pretty}"
    );
    assert!(pretty.contains("Banned            : true\n"), "{pretty}");
    let none = server.cli_ok(&["agent", "list", "-attestationType", "x509pop"]);
    assert_eq!(none, "No attested agents found\n");
    // SPIRE's Agent (every field: cli_json's test) for one listed agent.
    let listed = server.cli_json(&["agent", "list", "-banned", "true"]);
    let agent = &listed["agents"][0];
    assert_eq!(agent["banned"], json!(true));
    assert_eq!(agent["can_reattest"], json!(false));
    assert_eq!(agent["attestation_type"], json!("join_token"));
    assert_eq!(listed["next_page_token"], json!(""));

    // Bad input: an error, exit 1, nothing listed.
    for (flag, value, message) in [
        ("-expiresBefore", "tomorrow", "date is not valid"),
        (
            "-expiresBefore",
            "2026-12-05 14:00:00 +0000 UTC",
            "date is not valid",
        ),
        ("-selector", "no-colon", "invalid -selector"),
    ] {
        for command in ["list", "count"] {
            let out = server.cli(&["agent", command, flag, value]);
            assert_refused(&out, message);
        }
    }
    let out = server.cli(&["agent", "list", "-matchSelectorsOn", "most"]);
    assert_eq!(out.status.code(), Some(64), "{}", stderr(&out));

    // Join-token agents cannot re-attest: SPIRE's purge leaves them, the expired one too.
    let out = server.cli_ok(&["agent", "purge", "-expiredFor", "0s", "-dryRun"]);
    assert_eq!(out, "No agents to purge.\n");
    assert_eq!(
        server.cli_json(&["agent", "purge", "-expiredFor", "1s"]),
        json!({"expired_agents": []})
    );
    let out = server.cli(&["agent", "purge", "-expiredFor", "a while"]);
    assert_refused(&out, "invalid value \"a while\" for flag -expiredFor");
    assert_eq!(agent_ids(&server, &[]), all, "nothing purged");
}

fn entry_ids(server: &Server, filter: &[&str]) -> Vec<String> {
    let mut args = vec!["entry", "show"];
    args.extend(filter);
    let mut ids: Vec<String> = shown_entries(&server.cli_json(&args))
        .iter()
        .map(|e| id_text(&e["spiffe_id"]))
        .collect();
    ids.sort();
    ids
}

#[test]
fn entry_show_and_count_filter_by_federation_downstream_and_hint() {
    let server = info_server();
    let parent = "spiffe://example.org/spire/agent/join_token/parent";
    let td = |p: &str| format!("spiffe://example.org/{p}");
    register_uid(&server, &td("none"), parent, 1, &[]);
    register_uid(
        &server,
        &td("a"),
        parent,
        2,
        &["-federatesWith", "spiffe://a.test"],
    );
    register_uid(
        &server,
        &td("ab"),
        parent,
        3,
        &[
            "-federatesWith",
            "a.test",
            "-federatesWith",
            "spiffe://b.test",
        ],
    );
    register_uid(&server, &td("hinted"), parent, 4, &["-hint", "internal"]);

    let cases: Vec<(Vec<&str>, Vec<String>)> = vec![
        (vec![], vec![td("a"), td("ab"), td("hinted"), td("none")]),
        (
            vec!["-federatesWith", "spiffe://a.test"],
            vec![td("a"), td("ab")],
        ),
        (
            vec!["-federatesWith", "a.test", "-matchFederatesWithOn", "exact"],
            vec![td("a")],
        ),
        (
            vec![
                "-federatesWith",
                "a.test",
                "-federatesWith",
                "b.test",
                "-matchFederatesWithOn",
                "subset",
            ],
            vec![td("a"), td("ab")],
        ),
        (
            vec!["-federatesWith", "b.test", "-matchFederatesWithOn", "any"],
            vec![td("ab")],
        ),
        (vec!["-federatesWith", "c.test"], vec![]),
        (vec!["-hint", "internal"], vec![td("hinted")]),
        (
            vec!["-hint", "internal", "-federatesWith", "a.test"],
            vec![],
        ),
        // Sigil has no downstream entries.
        (vec!["-downstream"], vec![]),
        (
            vec!["-downstream=false", "-hint", "internal"],
            vec![td("hinted")],
        ),
    ];
    for (filter, want) in &cases {
        assert_eq!(&entry_ids(&server, filter), want, "entry show {filter:?}");
        let mut args = vec!["entry", "count"];
        args.extend(filter);
        assert_eq!(
            server.cli_json(&args),
            json!({ "count": want.len() }),
            "entry count {filter:?}"
        );
    }
    let shown = server.cli_json(&["entry", "show", "-federatesWith", "b.test"]);
    assert_eq!(
        shown_entries(&shown)[0]["federates_with"],
        json!(["a.test", "b.test"])
    );
    let pretty = server.cli_ok(&["entry", "count", "-federatesWith", "a.test"]);
    assert_eq!(pretty, "2 registration entries\n");
    let pretty = server.cli_ok(&["entry", "show", "-downstream"]);
    assert_eq!(pretty, "Found 0 entries\n");

    for args in [
        &["entry", "show", "-federatesWith", "Not A Domain"][..],
        &["entry", "count", "-federatesWith", "spiffe://"][..],
    ] {
        let out = server.cli(args);
        assert_refused(&out, "invalid -federatesWith");
    }
    let out = server.cli(&["entry", "show", "-matchFederatesWithOn", "most"]);
    assert_eq!(out.status.code(), Some(64), "{}", stderr(&out));
}

/// Lines of `log` at DEBUG that mention `needle`.
fn debug_lines(log: &str, needle: &str) -> usize {
    log.lines()
        .filter(|l| l.contains("DEBUG") && l.contains(needle))
        .count()
}

#[test]
fn server_logger_changes_the_level_at_run_time() {
    let server = info_server();
    let parent = "spiffe://example.org/spire/agent/join_token/parent";
    let logger = |args: &[&str]| {
        let mut all = vec!["logger"];
        all.extend(args);
        server.cli_ok(&all)
    };
    assert_eq!(
        logger(&["get"]),
        "Logger Level : info\nLaunch Level : info\n\n"
    );
    assert_eq!(
        server.cli_json(&["logger", "get"]),
        json!({"current_level": "INFO", "launch_level": "INFO"})
    );

    // Each `entry create` logs `entry created` at DEBUG.
    register_uid(&server, "spiffe://example.org/before", parent, 1, &[]);
    assert_eq!(debug_lines(&server.log(), "spiffe://example.org/before"), 0);

    assert_eq!(
        logger(&["set", "-level", "debug"]),
        "Logger Level : debug\nLaunch Level : info\n\n"
    );
    register_uid(&server, "spiffe://example.org/during", parent, 2, &[]);
    wait_for("a DEBUG line", Duration::from_secs(5), || {
        (debug_lines(&server.log(), "spiffe://example.org/during") == 1).then_some(())
    });

    assert_eq!(
        server.cli_json(&["logger", "reset"]),
        json!({"current_level": "INFO", "launch_level": "INFO"})
    );
    register_uid(&server, "spiffe://example.org/after", parent, 3, &[]);
    // A later INFO line is written after the create's would have been.
    server.cli_ok(&["logger", "set", "-level", "warn"]);
    assert_eq!(debug_lines(&server.log(), "spiffe://example.org/after"), 0);
    assert_eq!(
        logger(&["get"]),
        "Logger Level : warning\nLaunch Level : info\n\n"
    );

    // Bad input: refused before anything is sent; the level is unchanged.
    assert_refused(
        &server.cli(&["logger", "set", "-level", "loud"]),
        "the value \"loud\" is not a valid setting",
    );
    assert_refused(
        &server.cli(&["logger", "set"]),
        "a value (-level) must be set",
    );
    assert_eq!(
        server.cli_json(&["logger", "get"]),
        json!({"current_level": "WARN", "launch_level": "INFO"})
    );
}

fn agent_logger(admin: &Path, args: &[&str]) -> Output {
    Command::new(agent_bin())
        .arg("logger")
        .args(args)
        .arg("-socketPath")
        .arg(admin)
        .output()
        .unwrap()
}

fn agent_logger_ok(admin: &Path, args: &[&str]) -> String {
    let out = agent_logger(admin, args);
    assert!(out.status.success(), "{args:?}: {}", stderr(&out));
    stdout(&out)
}

#[test]
fn agent_logger_changes_the_level_at_run_time() {
    let server = info_server();
    let token = server.join_token();
    let mut agent = Agent::configure_with(
        &server,
        &AgentOptions {
            log_level: "INFO".into(),
            ..AgentOptions::default()
        },
    );
    let admin = agent.dir.path().join("admin").join("api.sock");
    agent.configure_agent_block(&format!("admin_socket_path = \"{}\"", admin.display()));
    agent.spawn(Some(&token));
    let agent_id = server.join_token_agent_id(&token);
    register_uid(
        &server,
        "spiffe://example.org/workload",
        &agent_id,
        uid(),
        &[],
    );
    agent.wait_for_svid(Duration::from_secs(30));
    assert_eq!(
        agent_logger_ok(&admin, &["get"]),
        "Logger Level : info\nLaunch Level : info\n\n"
    );
    // Each Workload API fetch logs `FetchX509SVID` at DEBUG.
    let fetches = |agent: &Agent| {
        assert!(agent.cli(&["api", "fetch", "x509"]).status.success());
        debug_lines(&agent.log(), "FetchX509SVID")
    };
    assert_eq!(fetches(&agent), 0);

    assert_eq!(
        agent_logger_ok(&admin, &["set", "-level", "DEBUG", "-output", "json"]),
        "{\"current_level\":\"DEBUG\",\"launch_level\":\"INFO\"}\n"
    );
    wait_for("a DEBUG line", Duration::from_secs(10), || {
        (fetches(&agent) > 0).then_some(())
    });
    assert_eq!(
        agent_logger_ok(&admin, &["reset"]),
        "Logger Level : info\nLaunch Level : info\n\n"
    );
    let after_reset = debug_lines(&agent.log(), "FetchX509SVID");
    assert_eq!(fetches(&agent), after_reset, "no DEBUG line after reset");

    let out = agent_logger(&admin, &["set", "-level", "verbose"]);
    assert_refused(&out, "the value \"verbose\" is not a valid setting");
    assert_eq!(
        agent_logger_ok(&admin, &["get", "-output", "json"]),
        "{\"current_level\":\"INFO\",\"launch_level\":\"INFO\"}\n"
    );
    agent.stop();
}
