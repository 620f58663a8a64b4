//! `federation create|update|delete|list|show|refresh` on real servers: B (b.test) serves its
//! bundle endpoint; A (a.test) federates with it through a relationship created at run time,
//! with no federation block and no restart. Polling, the poll status, `refresh`, the
//! Workload API's federated bundle, `delete`, the config file's `federates_with` beside the
//! datastore's, bad input, and a PostgreSQL replica following the changes.

use std::process::Output;
use std::time::Duration;

use sigil_testkit::federation::{federated_file, pem_count};
use sigil_testkit::{Server, ServerOptions, attested_agent, register_uid, uid, wait_for};

/// B with a bundle endpoint on `port` (refresh hint 5 s, so a poll is recognisable: only the
/// endpoint serves a hint).
fn endpoint_server(td: &str, port: u16) -> Server {
    Server::start(ServerOptions {
        trust_domain: td.into(),
        extra_server: format!(
            "federation {{\n bundle_endpoint {{\n address = \"127.0.0.1\"\n port = {port}\n refresh_hint = \"5s\"\n }}\n}}\n"
        ),
        ..ServerOptions::default()
    })
}

/// `server`'s own bundle as a SPIFFE bundle file in `into`'s temp dir.
fn bundle_file(server: &Server, into: &Server) -> String {
    let path = into
        .dir
        .path()
        .join(format!("{}.json", server.options.trust_domain));
    std::fs::write(
        &path,
        server.cli_ok(&["bundle", "show", "-format", "spiffe"]),
    )
    .unwrap();
    path.to_str().unwrap().to_owned()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A command that must fail: its stderr.
fn cli_err(server: &Server, args: &[&str]) -> String {
    let out = server.cli(args);
    assert!(
        !out.status.success(),
        "{args:?} should fail: {}",
        stdout(&out)
    );
    stderr(&out)
}

/// Whether A's stored bundle for b.test came from B's endpoint.
fn polled(a: &Server) -> bool {
    let out = a.cli(&[
        "bundle",
        "list",
        "-id",
        "spiffe://b.test",
        "-format",
        "spiffe",
    ]);
    stdout(&out).contains("\"spiffe_refresh_hint\": 5")
}

fn show_line(show: &str, key: &str) -> String {
    show.lines()
        .find(|l| l.starts_with(key))
        .unwrap_or_else(|| panic!("no {key:?} line in:\n{show}"))
        .split_once(" : ")
        .unwrap()
        .1
        .to_owned()
}

/// `federation create|update` of b.test's `https_spiffe` relationship at `url`, with B's
/// bundle file when given.
fn b_relationship(server: &Server, verb: &str, url: &str, bundle: Option<&str>) -> Output {
    let mut args = vec![
        "federation",
        verb,
        "-trustDomain",
        "b.test",
        "-bundleEndpointURL",
        url,
        "-bundleEndpointProfile",
        "https_spiffe",
        "-endpointSpiffeID",
        "spiffe://b.test/spire/server",
    ];
    if let Some(path) = bundle {
        args.extend([
            "-trustDomainBundlePath",
            path,
            "-trustDomainBundleFormat",
            "spiffe",
        ]);
    }
    let out = server.cli(&args);
    assert!(out.status.success(), "{args:?}: {}", stderr(&out));
    out
}

#[test]
fn created_at_run_time_polled_updated_refreshed_and_deleted() {
    let port_b = sigil_testkit::free_port();
    let b = endpoint_server("b.test", port_b);
    let a = Server::start(ServerOptions {
        trust_domain: "a.test".into(),
        ..ServerOptions::default()
    });
    let b_bundle = bundle_file(&b, &a);
    // Nothing listens on this port: the first URL is wrong.
    let dead_port = sigil_testkit::free_port();
    let dead_url = format!("https://127.0.0.1:{dead_port}");
    let created = stdout(&b_relationship(&a, "create", &dead_url, Some(&b_bundle)));
    assert_eq!(
        created,
        format!(
            "\nTrust domain              : b.test\nBundle endpoint URL       : {dead_url}\nBundle endpoint profile   : https_spiffe\nEndpoint SPIFFE ID        : spiffe://b.test/spire/server\n"
        )
    );
    // The bundle given with it is stored at once (as `bundle set` would).
    assert_eq!(
        a.cli_ok(&["bundle", "list", "-id", "spiffe://b.test"]),
        b.cli_ok(&["bundle", "show"])
    );
    // The poller took it up at once and reports the failure.
    let show = wait_for(
        "a failed poll in the status",
        Duration::from_secs(15),
        || {
            let show = a.cli_ok(&["federation", "show", "-trustDomain", "b.test"]);
            show.contains("cannot connect").then_some(show)
        },
    );
    assert!(show.starts_with("Found a federation relationship with trust domain b.test:\n\nTrust domain              : b.test\n"), "{show}");
    assert_eq!(show_line(&show, "Last successful refresh"), "never");
    assert!(
        show_line(&show, "Last refresh").ends_with("+0000 UTC"),
        "{show}"
    );
    let err = cli_err(&a, &["federation", "refresh", "-id", "spiffe://b.test"]);
    assert!(
        err.starts_with("Error: failed to refresh bundle: cannot fetch the bundle from")
            && err.contains("cannot connect"),
        "{err}"
    );
    assert!(!polled(&a));

    // The right URL: polled at once, no restart.
    let url = format!("https://127.0.0.1:{port_b}");
    let updated = stdout(&b_relationship(&a, "update", &url, None));
    assert!(updated.contains(&format!("Bundle endpoint URL       : {url}\n")));
    wait_for("A polls B's endpoint", Duration::from_secs(15), || {
        polled(&a).then_some(())
    });
    let refreshed = a.cli_ok(&["federation", "refresh", "-id", "spiffe://b.test"]);
    assert!(
        refreshed.starts_with("Bundle refreshed\nBundle                    : unchanged\n"),
        "{refreshed}"
    );
    assert_eq!(show_line(&refreshed, "Last error"), "none");
    let show = a.cli_ok(&["federation", "show", "-trustDomain", "b.test"]);
    assert_eq!(show_line(&show, "Last error"), "none");
    assert!(show_line(&show, "Last successful refresh").ends_with("+0000 UTC"));
    assert_eq!(
        a.cli_json(&["federation", "refresh", "-id", "b.test"]),
        serde_json::json!({"code": 0, "message": "OK"})
    );
    assert_eq!(
        a.cli_ok(&["federation", "list"]),
        format!(
            "Found 1 federation relationship\n\nTrust domain              : b.test\nBundle endpoint URL       : {url}\nBundle endpoint profile   : https_spiffe\nEndpoint SPIFFE ID        : spiffe://b.test/spire/server\n"
        )
    );

    // A workload federating with b.test gets B's bundle from the Workload API.
    let (agent, agent_id) = attested_agent(&a, false);
    register_uid(
        &a,
        "spiffe://a.test/checkout",
        &agent_id,
        uid(),
        &["-federatesWith", "spiffe://b.test"],
    );
    let b_pem = b.cli_ok(&["bundle", "show"]);
    wait_for(
        "B's bundle at A's workload",
        Duration::from_secs(30),
        || {
            let dir = agent.write_x509().ok()?;
            let file = federated_file(&dir)?;
            (std::fs::read_to_string(file).ok()? == b_pem).then_some(())
        },
    );
    assert_eq!(pem_count(&b_pem), 1);

    // Delete: polling stops; the bundle stays (as SPIRE: `bundle delete` removes it).
    assert_eq!(
        a.cli_ok(&["federation", "delete", "-id", "spiffe://b.test"]),
        "federation relationship deleted.\n"
    );
    assert_eq!(
        a.cli_ok(&["federation", "list"]),
        "Found 0 federation relationships\n"
    );
    let err = cli_err(&a, &["federation", "refresh", "-id", "spiffe://b.test"]);
    assert_eq!(
        err,
        "Error: there is no federation relationship with trust domain \"spiffe://b.test\"\n"
    );
    assert!(a.log().contains("federated trust domain no longer polled"));
    assert_eq!(
        a.cli_ok(&["bundle", "list", "-id", "spiffe://b.test"]),
        b_pem
    );
    let err = cli_err(&a, &["federation", "delete", "-id", "spiffe://b.test"]);
    assert!(
        err.starts_with("Error: failed to delete federation relationship \"b.test\": not found"),
        "{err}"
    );
}

/// The config file's `federates_with` and the datastore's relationships are polled together;
/// the config file's trust domains cannot be created in the datastore (SPIRE would store them
/// and ignore them) and are not listed (as SPIRE), but can be refreshed.
#[test]
fn config_and_datastore_relationships_together() {
    let port_b = sigil_testkit::free_port();
    let b = endpoint_server("b.test", port_b);
    let dead_port = sigil_testkit::free_port();
    let mut a = Server::start(ServerOptions {
        trust_domain: "a.test".into(),
        extra_server: format!(
            "federation {{\n federates_with \"c.test\" {{\n bundle_endpoint_url = \"https://127.0.0.1:{dead_port}\"\n bundle_endpoint_profile \"https_web\" {{}}\n }}\n}}\n"
        ),
        ..ServerOptions::default()
    });
    let err = cli_err(
        &a,
        &[
            "federation",
            "create",
            "-trustDomain",
            "c.test",
            "-bundleEndpointURL",
            "https://127.0.0.1:1",
            "-bundleEndpointProfile",
            "https_web",
        ],
    );
    assert!(
        err.contains("Failed to create the following federation relationship (code: FailedPrecondition, msg: \"c.test is in the config file's federates_with")
            && err.contains("Trust domain              : c.test\n")
            && err.ends_with("Error: failed to create one or more federation relationships\n"),
        "{err}"
    );
    // https_spiffe with no bundle held is accepted (as SPIRE); B's bundle set later is used
    // at once.
    b_relationship(&a, "create", &format!("https://127.0.0.1:{port_b}"), None);
    let show = wait_for(
        "the missing bundle reported",
        Duration::from_secs(15),
        || {
            let show = a.cli_ok(&["federation", "show", "-trustDomain", "b.test"]);
            show.contains("no bundle held for b.test").then_some(show)
        },
    );
    assert_eq!(show_line(&show, "Last successful refresh"), "never");
    sigil_testkit::federation::exchange(&b, &a);
    wait_for(
        "A polls B once the bundle is set",
        Duration::from_secs(15),
        || polled(&a).then_some(()),
    );

    let list = a.cli_json(&["federation", "list"]);
    let listed: Vec<_> = list["federation_relationships"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["trust_domain"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        listed,
        ["b.test"],
        "config relationships are not listed: {list}"
    );
    let err = cli_err(&a, &["federation", "show", "-trustDomain", "c.test"]);
    assert!(
        err.contains("no federation relationship with c.test in the datastore (it is in the config file's federates_with)"),
        "{err}"
    );
    // The config one is polled: a refresh reaches its (dead) endpoint.
    let err = cli_err(&a, &["federation", "refresh", "-id", "spiffe://c.test"]);
    assert!(
        err.contains("failed to refresh bundle") && err.contains("cannot connect"),
        "{err}"
    );
    let err = cli_err(&a, &["federation", "refresh", "-id", "spiffe://d.test"]);
    assert!(
        err.contains("there is no federation relationship with trust domain"),
        "{err}"
    );

    // After a restart both kinds are polled again: the datastore's from the start.
    a.restart();
    let show = wait_for(
        "b.test polled after the restart",
        Duration::from_secs(15),
        || {
            let show = a.cli_ok(&["federation", "show", "-trustDomain", "b.test"]);
            show.contains("Last error                : none")
                .then_some(show)
        },
    );
    assert!(show_line(&show, "Last successful refresh").ends_with("+0000 UTC"));
    let err = cli_err(&a, &["federation", "refresh", "-id", "spiffe://c.test"]);
    assert!(err.contains("cannot connect"), "{err}");
}

/// Bad input: a clear error, a non-zero exit and nothing stored.
#[test]
fn bad_relationships_are_refused_and_nothing_is_stored() {
    let a = Server::start(ServerOptions {
        trust_domain: "a.test".into(),
        ..ServerOptions::default()
    });
    let create = |extra: &[&str]| {
        let mut args = vec!["federation", "create"];
        args.extend_from_slice(extra);
        cli_err(&a, &args)
    };
    let web = |td: &'static str, url: &'static str| {
        vec![
            "-trustDomain",
            td,
            "-bundleEndpointURL",
            url,
            "-bundleEndpointProfile",
            "https_web",
        ]
    };
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            web("a.test", "https://x.example"),
            "unable to create federation relationship for server trust domain",
        ),
        (web("b.test", "http://x.example"), "must be an https:// URL"),
        (
            web("b.test", "https://user@x.example"),
            "must not carry user info",
        ),
        (
            web("Not A Domain", "https://x.example"),
            "invalid trust domain",
        ),
        (
            vec!["-bundleEndpointURL", "https://x"],
            "trust domain is required",
        ),
        (
            vec!["-trustDomain", "b.test"],
            "bundle endpoint URL is required",
        ),
        (
            vec![
                "-trustDomain",
                "b.test",
                "-bundleEndpointURL",
                "https://x",
                "-bundleEndpointProfile",
                "acme",
            ],
            "unknown bundle endpoint profile type: \"acme\"",
        ),
        (
            vec![
                "-trustDomain",
                "b.test",
                "-bundleEndpointURL",
                "https://x",
                "-bundleEndpointProfile",
                "https_spiffe",
            ],
            "endpoint SPIFFE ID is required if 'https_spiffe' endpoint profile is set",
        ),
        (
            vec!["-data", "/dev/null", "-trustDomain", "b.test"],
            "cannot use other flags to specify relationship fields when 'data' flag is set",
        ),
    ];
    for (args, want) in cases {
        let err = create(&args);
        assert!(err.contains(want), "{args:?}: {err}");
    }
    // A garbled bundle file.
    let bad = a.dir.path().join("bad.pem");
    std::fs::write(&bad, "not a bundle").unwrap();
    let mut args = web("b.test", "https://x.example");
    args.extend(["-trustDomainBundlePath", bad.to_str().unwrap()]);
    let err = create(&args);
    assert!(err.contains("cannot parse bundle file"), "{err}");

    // A -data file: the good item is created, the bad one reported (SPIRE's batch output).
    let data = a.dir.path().join("rel.json");
    std::fs::write(
        &data,
        r#"{"federationRelationships":[
            {"trustDomain":"b.test","bundleEndpointURL":"https://b.example","bundleEndpointProfile":"https_web"},
            {"trustDomain":"a.test","bundleEndpointURL":"https://a.example","bundleEndpointProfile":"https_web"}
        ]}"#,
    )
    .unwrap();
    let out = a.cli(&[
        "federation",
        "create",
        "-data",
        data.to_str().unwrap(),
        "-output",
        "json",
    ]);
    assert!(!out.status.success());
    let json: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(
        json["results"][0]["status"],
        serde_json::json!({"code": 0, "message": "OK"})
    );
    assert_eq!(
        json["results"][0]["federation_relationship"],
        serde_json::json!({"bundle_endpoint_url": "https://b.example", "https_web": {}, "trust_domain": "b.test"})
    );
    assert_eq!(json["results"][1]["status"]["code"], 3, "{json}");
    assert!(json["results"][1].get("federation_relationship").is_none());
    // Again: b.test now exists.
    let err = cli_err(
        &a,
        &["federation", "create", "-data", data.to_str().unwrap()],
    );
    assert!(
        err.contains(
            "(code: AlreadyExists, msg: \"already exists: federation relationship with b.test\")"
        ),
        "{err}"
    );
    std::fs::write(
        &data,
        r#"{"federationRelationships":[{"trustDomain":"c.test"}]}"#,
    )
    .unwrap();
    let err = cli_err(
        &a,
        &["federation", "create", "-data", data.to_str().unwrap()],
    );
    assert_eq!(
        err,
        "Error: could not parse item 0: bundle endpoint URL is required\n"
    );
    let err = cli_err(
        &a,
        &[
            "federation",
            "update",
            "-trustDomain",
            "c.test",
            "-bundleEndpointURL",
            "https://c",
            "-bundleEndpointProfile",
            "https_web",
        ],
    );
    assert!(
        err.contains("(code: NotFound, msg: \"not found: federation relationship with c.test\")"),
        "{err}"
    );
    let list = a.cli_json(&["federation", "list"]);
    assert_eq!(
        list,
        serde_json::json!({"federation_relationships": [
            {"bundle_endpoint_url": "https://b.example", "https_web": {}, "trust_domain": "b.test"}
        ], "next_page_token": ""})
    );
    assert_eq!(
        a.cli_ok(&["bundle", "count"]).trim(),
        "1 bundle",
        "nothing else stored"
    );
    assert_eq!(
        cli_err(&a, &["federation", "show"]),
        "Error: a trust domain name is required\n"
    );
    assert_eq!(
        cli_err(&a, &["federation", "delete"]),
        "Error: id is required\n"
    );
}

/// A relationship created through one PostgreSQL replica is polled by the other too, and its
/// changes and deletion are followed there, through the change feed.
#[test]
fn a_replica_follows_relationship_changes() {
    let port_b = sigil_testkit::free_port();
    let b = endpoint_server("b.test", port_b);
    let a = Server::start(ServerOptions {
        trust_domain: "a.test".into(),
        postgres: Some(sigil_testkit::postgres::database("federation_replicas")),
        ..ServerOptions::default()
    });
    let r = a.start_replica();
    let b_bundle = bundle_file(&b, &a);
    let dead_url = format!("https://127.0.0.1:{}", sigil_testkit::free_port());
    b_relationship(&a, "create", &dead_url, Some(&b_bundle));
    // R polls it (its own status), with the bundle A stored.
    wait_for(
        "R polls the new relationship",
        Duration::from_secs(15),
        || {
            let show = r.cli_ok(&["federation", "show", "-trustDomain", "b.test"]);
            show.contains("cannot connect").then_some(())
        },
    );
    assert_eq!(
        r.cli_ok(&["bundle", "list", "-id", "spiffe://b.test"]),
        b.cli_ok(&["bundle", "show"])
    );
    let url = format!("https://127.0.0.1:{port_b}");
    b_relationship(&a, "update", &url, None);
    wait_for("R polls the new URL", Duration::from_secs(15), || {
        let show = r.cli_ok(&["federation", "show", "-trustDomain", "b.test"]);
        (show_line(&show, "Last error") == "none").then_some(())
    });
    assert!(polled(&r));
    a.cli_ok(&["federation", "delete", "-id", "b.test"]);
    wait_for("R stops polling", Duration::from_secs(15), || {
        r.log()
            .contains("federated trust domain no longer polled")
            .then_some(())
    });
}

/// The same commands against SPIRE itself (when built, see `sigil_testkit::spire`) print what
/// Sigil prints: `create -data`, `list` and `show` (pretty and JSON), `update`, `delete`, and
/// the errors for an unknown trust domain. Sigil's `show` adds its poll status below.
#[test]
fn outputs_match_spires() {
    let Some(bin) = sigil_testkit::spire::spire_bin("spire-server") else {
        return;
    };
    let spire = sigil_testkit::spire::SpireServer::start(&bin, "a.test", "WARN", "");
    let sigil = Server::start(ServerOptions {
        trust_domain: "a.test".into(),
        ..ServerOptions::default()
    });
    let (cert, _) =
        sigil_testkit::self_signed_serving_cert(sigil.dir.path(), "c.test", "DNS:c.test");
    let pem = std::fs::read_to_string(&cert).unwrap();
    let data = sigil.dir.path().join("rel.json");
    std::fs::write(
        &data,
        serde_json::json!({"federationRelationships": [
            {"trustDomain": "b.test", "bundleEndpointURL": "https://127.0.0.1:1/b", "bundleEndpointProfile": "https_web"},
            {"trustDomain": "c.test", "bundleEndpointURL": "https://127.0.0.1:1/c", "bundleEndpointProfile": "https_spiffe",
             "endpointSPIFFEID": "spiffe://c.test/spire/server", "trustDomainBundle": pem, "trustDomainBundleFormat": "pem"}
        ]})
        .to_string(),
    )
    .unwrap();
    let data = data.to_str().unwrap();
    let both = |args: &[&str]| {
        let s = spire.cli(args);
        let o = sigil.cli(args);
        assert_eq!(
            s.status.success(),
            o.status.success(),
            "{args:?}: SPIRE {} / Sigil {}",
            stderr(&s),
            stderr(&o)
        );
        (s, o)
    };
    let same = |args: &[&str]| {
        let (s, o) = both(args);
        assert_eq!(stdout(&o), stdout(&s), "{args:?}");
        stdout(&o)
    };
    same(&["federation", "create", "-data", data]);
    same(&["federation", "list"]);
    let json = |args: &[&str]| -> serde_json::Value {
        let mut all = args.to_vec();
        all.extend(["-output", "json"]);
        let (s, o) = both(&all);
        let s: serde_json::Value = serde_json::from_str(&stdout(&s)).unwrap();
        let mut o: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
        // Sigil's `Bundle` prints newer SPIREs' (empty) WIT authorities, which this one lacks.
        without_wit_authorities(&mut o);
        assert_eq!(o, s, "{args:?}");
        o
    };
    let listed = json(&["federation", "list"]);
    assert_eq!(
        listed["federation_relationships"].as_array().unwrap().len(),
        2
    );
    json(&["federation", "show", "-trustDomain", "c.test"]);
    let (s, o) = both(&["federation", "show", "-trustDomain", "c.test"]);
    assert!(
        stdout(&o).starts_with(&stdout(&s)),
        "SPIRE's lines first:\n{}\n{}",
        stdout(&s),
        stdout(&o)
    );
    assert!(stdout(&o).contains("Last refresh              : "));
    same(&[
        "federation",
        "update",
        "-trustDomain",
        "b.test",
        "-bundleEndpointURL",
        "https://127.0.0.1:2/b",
        "-bundleEndpointProfile",
        "https_spiffe",
        "-endpointSpiffeID",
        "spiffe://b.test/spire/server",
    ]);
    json(&["federation", "show", "-trustDomain", "b.test"]);
    let (s, o) = both(&["federation", "refresh", "-id", "spiffe://d.test"]);
    assert_eq!(stderr(&o), stderr(&s));
    same(&["federation", "delete", "-id", "spiffe://b.test"]);
    same(&["federation", "list"]);
    json(&[
        "federation",
        "create",
        "-trustDomain",
        "d.test",
        "-bundleEndpointURL",
        "https://127.0.0.1:3",
        "-bundleEndpointProfile",
        "https_web",
    ]);
    json(&["federation", "delete", "-id", "d.test"]);
    let (s, o) = both(&["federation", "show", "-trustDomain", "b.test"]);
    assert!(
        stderr(&s).contains("NotFound")
            && stderr(&o).contains("no federation relationship with b.test"),
        "{} / {}",
        stderr(&s),
        stderr(&o)
    );
}

fn without_wit_authorities(v: &mut serde_json::Value) {
    match v {
        serde_json::Value::Object(m) => {
            m.remove("wit_authorities");
            m.values_mut().for_each(without_wit_authorities);
        }
        serde_json::Value::Array(a) => a.iter_mut().for_each(without_wit_authorities),
        _ => {}
    }
}

/// With `audit_log_enabled`, each create, update, delete and refresh writes one audit line
/// naming the trust domain, whatever its outcome; list and show write none.
#[test]
fn changes_are_audited_and_reads_are_not() {
    let a = Server::start(ServerOptions {
        trust_domain: "a.test".into(),
        log_level: "ERROR".into(),
        extra_server: "audit_log_enabled = true\n  log_format = \"json\"\n".into(),
        ..ServerOptions::default()
    });
    let audited = |method: &str| -> Vec<serde_json::Value> {
        a.log()
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|l| l["type"] == "audit" && l["method"] == method)
            .collect()
    };
    let web = [
        "-trustDomain",
        "b.test",
        "-bundleEndpointURL",
        "https://127.0.0.1:1",
        "-bundleEndpointProfile",
        "https_web",
    ];
    let mut create = vec!["federation", "create"];
    create.extend(web);
    a.cli_ok(&create);
    cli_err(&a, &create);
    let mut update = vec!["federation", "update"];
    update.extend(web);
    a.cli_ok(&update);
    cli_err(&a, &["federation", "refresh", "-id", "b.test"]);
    a.cli_ok(&["federation", "list"]);
    a.cli_ok(&["federation", "show", "-trustDomain", "b.test"]);
    a.cli_ok(&["federation", "delete", "-id", "b.test"]);
    let created = wait_for("the audit lines", Duration::from_secs(5), || {
        let lines = audited("CreateFederationRelationship");
        (lines.len() == 2).then_some(lines)
    });
    assert_eq!(created[0]["status"], "success");
    assert_eq!(created[1]["status"], "error");
    assert_eq!(created[1]["status_code"], "AlreadyExists");
    for (method, status) in [
        ("UpdateFederationRelationship", "success"),
        ("RefreshFederatedBundle", "error"),
        ("DeleteFederationRelationship", "success"),
    ] {
        let lines = audited(method);
        assert_eq!(lines.len(), 1, "{method}: {lines:?}");
        assert_eq!(lines[0]["status"], status, "{method}");
        assert_eq!(lines[0]["trust_domain"], "b.test", "{method}");
    }
    assert_eq!(created[0]["trust_domain"], "b.test");
    assert!(audited("ListFederationRelationships").is_empty());
    assert!(audited("GetFederationRelationship").is_empty());
}
