//! SVID lifetimes under 5 s are refused everywhere one can be set, with the real `sigil-server`:
//! entry flags (create and update), a `-data` import (nothing of it written), the admin API
//! called directly (not only the CLI's own check), `x509 mint` / `jwt mint -ttl`, and the
//! server's `default_*_svid_ttl` and `agent_ttl` (exit 64 before anything starts). Each refusal
//! names the floor; 5 s itself and 0 (the server's default) are accepted.

use std::process::{Command, Output};

use sigil_proto::sigil::admin::v1 as pb;
use sigil_proto::sigil::common::v1 as common;
use sigil_testkit::admin::admin_client;
use sigil_testkit::rt;
use sigil_testkit::{Server, ServerOptions, server_bin};

const FLOOR: &str = "below the minimum SVID TTL of 5s";
const PARENT: &str = "spiffe://example.org/spire/agent/join_token/x";

fn refused(out: &Output, what: &str) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "{what}: {stderr}");
    assert!(stderr.contains(FLOOR), "{what}: {stderr}");
    stderr
}

fn entry_count(server: &Server) -> u64 {
    server
        .cli_ok(&["entry", "count"])
        .split_whitespace()
        .find_map(|w| w.parse().ok())
        .expect("a count")
}

fn create(server: &Server, id: &str, extra: &[&str]) -> Output {
    let mut args = vec![
        "entry",
        "create",
        "-spiffeID",
        id,
        "-parentID",
        PARENT,
        "-selector",
        "unix:uid:1",
    ];
    args.extend(extra);
    server.cli(&args)
}

#[test]
fn ttls_under_the_floor_are_refused_by_flags_files_the_api_and_mint() {
    let server = Server::start(ServerOptions::default());

    for (flag, value) in [
        ("-x509SVIDTTL", "1"),
        ("-x509SVIDTTL", "4s"),
        ("-jwtSVIDTTL", "2"),
    ] {
        let out = create(&server, "spiffe://example.org/short", &[flag, value]);
        let stderr = refused(&out, &format!("{flag} {value}"));
        assert!(stderr.contains(flag), "{stderr}");
    }
    assert_eq!(entry_count(&server), 0);

    // The floor itself, and 0 (the server's default), are accepted.
    let ok = create(
        &server,
        "spiffe://example.org/five",
        &["-x509SVIDTTL", "5", "-jwtSVIDTTL", "5s", "-output", "json"],
    );
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let created: serde_json::Value = serde_json::from_slice(&ok.stdout).unwrap();
    let id = sigil_testkit::created_entry_id(&created);
    assert_eq!(created["results"][0]["entry"]["x509_svid_ttl"], 5);
    let zero = create(&server, "spiffe://example.org/zero", &["-x509SVIDTTL", "0"]);
    assert!(zero.status.success());
    assert_eq!(entry_count(&server), 2);

    // Update: refused, the entry unchanged.
    let out = server.cli(&[
        "entry",
        "update",
        "-entryID",
        &id,
        "-x509SVIDTTL",
        "3",
        "-partial",
    ]);
    refused(&out, "update");
    let shown = server.cli_json(&["entry", "show", "-entryID", &id]);
    assert_eq!(shown["entries"][0]["x509_svid_ttl"], 5, "{shown}");

    // A -data file with one bad entry among good ones: nothing of it is written.
    let file = server.dir.path().join("entries.json");
    std::fs::write(
        &file,
        format!(
            r#"{{"entries": [
  {{"spiffe_id": "spiffe://example.org/d1", "parent_id": "{PARENT}", "selectors": [{{"type": "unix", "value": "uid:2"}}], "x509_svid_ttl": 60}},
  {{"spiffe_id": "spiffe://example.org/d2", "parent_id": "{PARENT}", "selectors": [{{"type": "unix", "value": "uid:3"}}], "jwt_svid_ttl": 1}}
]}}"#
        ),
    )
    .unwrap();
    let out = server.cli(&["entry", "create", "-data", file.to_str().unwrap()]);
    let stderr = refused(&out, "-data");
    assert!(
        stderr.contains("entry 1") && stderr.contains("jwt_svid_ttl"),
        "{stderr}"
    );
    assert_eq!(entry_count(&server), 2);

    // The admin API itself refuses, whatever client sends it.
    let socket = server.socket.clone();
    let status = rt().block_on(async move {
        let mut admin = admin_client(&socket).await.unwrap();
        admin
            .batch_create_entry(pb::BatchCreateEntryRequest {
                entries: vec![common::RegistrationEntry {
                    spiffe_id: "spiffe://example.org/api".into(),
                    parent_id: PARENT.into(),
                    selectors: vec![common::Selector {
                        r#type: "unix".into(),
                        value: "uid:4".into(),
                    }],
                    x509_svid_ttl: 1,
                    ..Default::default()
                }],
            })
            .await
            .unwrap_err()
    });
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    assert!(
        status.message().contains("x509_svid_ttl") && status.message().contains(FLOOR),
        "{status:?}"
    );
    assert_eq!(entry_count(&server), 2);

    // Minting by hand has the same floor.
    let out = server.cli(&[
        "x509",
        "mint",
        "-spiffeID",
        "spiffe://example.org/m",
        "-ttl",
        "2s",
    ]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(FLOOR),
        "{out:?}"
    );
    let out = server.cli(&[
        "jwt",
        "mint",
        "-spiffeID",
        "spiffe://example.org/m",
        "-audience",
        "a",
        "-ttl",
        "1s",
    ]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(FLOOR),
        "{out:?}"
    );
}

#[test]
fn server_ttls_under_the_floor_stop_the_server_before_it_starts() {
    let server = Server::start(ServerOptions::default());
    let conf = std::fs::read_to_string(&server.config).unwrap();
    for (key, value) in [
        ("agent_ttl", "1s"),
        ("default_x509_svid_ttl", "4s"),
        ("default_jwt_svid_ttl", "500ms"),
    ] {
        // Replace the key if the harness set it, else add it.
        let mut text: String = conf
            .lines()
            .filter(|l| !l.trim_start().starts_with(&format!("{key} ")))
            .collect::<Vec<_>>()
            .join("\n");
        text = text.replacen(
            "server {\n",
            &format!("server {{\n  {key} = \"{value}\"\n"),
            1,
        );
        let path = server.dir.path().join(format!("{key}.conf"));
        std::fs::write(&path, text).unwrap();
        let out = Command::new(server_bin())
            .args(["run", "-config"])
            .arg(&path)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "{key}: {stderr}");
        assert!(
            stderr.contains(&format!("server.{key}")) && stderr.contains(FLOOR),
            "{key}: {stderr}"
        );
    }
}
