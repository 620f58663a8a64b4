//! `sigil-server ... -output json` in SPIRE's shapes (protojson of SPIRE's API types, as
//! `spire-server ... -output json` prints them), the migration of a SPIRE deployment's entries
//! (`spire-server entry show -output json > e.json; sigil-server entry create -data e.json`),
//! `entry update`'s whole-entry semantics (and `-partial`), and SPIRE's `Found N entries`.
//! The real binaries; JSON read back with serde_json and, for a SPIRE user's pipeline, with
//! Python's `json`; DER read with x509-parser.

use std::collections::BTreeSet;
use std::process::Command;

use base64::Engine as _;
use serde_json::{Value, json};
use sigil_testkit::python::python_json;
use sigil_testkit::verify::self_signed_p256;
use sigil_testkit::{
    Server, ServerOptions, agent_bin, attested_agent, created_entry_id, id_text, register,
    server_bin, shown_entries,
};
use x509_parser::prelude::*;

/// `spire.api.types.Entry`'s fields, as protojson (proto names, unpopulated fields emitted)
/// writes them.
const ENTRY_FIELDS: [&str; 15] = [
    "admin",
    "created_at",
    "dns_names",
    "downstream",
    "expires_at",
    "federates_with",
    "hint",
    "id",
    "jwt_svid_ttl",
    "parent_id",
    "revision_number",
    "selectors",
    "spiffe_id",
    "store_svid",
    "x509_svid_ttl",
];

const AGENT_FIELDS: [&str; 8] = [
    "agent_version",
    "attestation_type",
    "banned",
    "can_reattest",
    "id",
    "selectors",
    "x509svid_expires_at",
    "x509svid_serial_number",
];

const BUNDLE_FIELDS: [&str; 6] = [
    "jwt_authorities",
    "refresh_hint",
    "sequence_number",
    "trust_domain",
    "wit_authorities",
    "x509_authorities",
];

fn keys(v: &Value) -> BTreeSet<&str> {
    v.as_object()
        .unwrap_or_else(|| panic!("not an object: {v}"))
        .keys()
        .map(String::as_str)
        .collect()
}

fn assert_keys(v: &Value, expected: &[&str]) {
    assert_eq!(keys(v), expected.iter().copied().collect(), "{v}");
}

/// protojson's int64: a JSON string holding a decimal integer.
fn int64(v: &Value) -> i64 {
    v.as_str()
        .unwrap_or_else(|| panic!("int64 not a JSON string: {v}"))
        .parse()
        .unwrap_or_else(|_| panic!("int64 not an integer: {v}"))
}

fn assert_spiffe_id(v: &Value) {
    assert_keys(v, &["path", "trust_domain"]);
    assert!(
        v["trust_domain"].is_string() && v["path"].is_string(),
        "{v}"
    );
}

fn assert_entry(e: &Value) {
    assert_keys(e, &ENTRY_FIELDS);
    assert!(e["id"].is_string());
    assert_spiffe_id(&e["spiffe_id"]);
    assert_spiffe_id(&e["parent_id"]);
    for s in e["selectors"].as_array().unwrap() {
        assert_keys(s, &["type", "value"]);
    }
    for field in ["x509_svid_ttl", "jwt_svid_ttl"] {
        assert!(e[field].is_i64(), "int32 {field} is a number: {e}");
    }
    for field in ["expires_at", "revision_number", "created_at"] {
        int64(&e[field]);
    }
    for field in ["admin", "downstream", "store_svid"] {
        assert!(e[field].is_boolean(), "{field}: {e}");
    }
    for field in ["dns_names", "federates_with"] {
        assert!(e[field].is_array(), "{field}: {e}");
    }
    assert!(e["hint"].is_string());
}

fn assert_ok_status(result: &Value) {
    assert_eq!(
        result["status"],
        json!({"code": 0, "message": "OK"}),
        "{result}"
    );
}

/// Runs a command with `-output json`: SPIRE's one compact line, parsed.
fn json_line(server: &Server, args: &[&str]) -> Value {
    let mut all = args.to_vec();
    all.extend(["-output", "json"]);
    let out = server.cli_ok(&all);
    assert_eq!(out.matches('\n').count(), 1, "one line: {out}");
    assert!(out.ends_with('\n'));
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{args:?}: not JSON ({e}): {out}"))
}

fn der_cert(b64: &Value) -> Vec<u8> {
    let der = base64::engine::general_purpose::STANDARD
        .decode(b64.as_str().unwrap())
        .expect("bytes as standard base64");
    X509Certificate::from_der(&der).expect("a DER certificate");
    der
}

#[test]
fn every_command_prints_spires_json() {
    let server = Server::start(ServerOptions::default());
    let (_agent, agent_id) = attested_agent(&server, false);

    let token = json_line(&server, &["token", "generate", "-ttl", "60"]);
    assert_keys(&token, &["expires_at", "value"]);
    assert!(int64(&token["expires_at"]) > 0);

    // entry create / show / count / update / delete.
    let created = json_line(
        &server,
        &[
            "entry",
            "create",
            "-spiffeID",
            "spiffe://example.org/web",
            "-parentID",
            &agent_id,
            "-selector",
            "unix:uid:1000",
            "-dns",
            "web.example.org",
            "-hint",
            "web",
            "-entryExpiry",
            "4102444800",
        ],
    );
    assert_keys(&created, &["results"]);
    let result = &created["results"][0];
    assert_keys(result, &["entry", "status"]);
    assert_ok_status(result);
    let entry = &result["entry"];
    assert_entry(entry);
    assert_eq!(
        entry["spiffe_id"],
        json!({"trust_domain": "example.org", "path": "/web"})
    );
    assert_eq!(id_text(&entry["parent_id"]), agent_id);
    assert_eq!(
        entry["selectors"],
        json!([{"type": "unix", "value": "uid:1000"}])
    );
    assert_eq!(entry["expires_at"], "4102444800");
    let id = created_entry_id(&created);

    let shown = json_line(&server, &["entry", "show"]);
    assert_keys(&shown, &["entries", "next_page_token"]);
    assert_eq!(shown["next_page_token"], "");
    assert_eq!(shown["entries"].as_array().unwrap().len(), 1);
    assert_entry(&shown["entries"][0]);
    let by_id = json_line(&server, &["entry", "show", "-entryID", &id]);
    assert_eq!(by_id, shown, "-entryID: the same ListEntriesResponse");
    assert_eq!(
        json_line(
            &server,
            &["entry", "show", "-spiffeID", "spiffe://example.org/none"]
        ),
        json!({"entries": [], "next_page_token": ""})
    );
    assert_eq!(json_line(&server, &["entry", "count"]), json!({"count": 1}));

    let updated = json_line(
        &server,
        &[
            "entry",
            "update",
            "-entryID",
            &id,
            "-spiffeID",
            "spiffe://example.org/web2",
            "-parentID",
            &agent_id,
            "-selector",
            "unix:uid:1001",
        ],
    );
    assert_keys(&updated, &["results"]);
    assert_ok_status(&updated["results"][0]);
    assert_entry(&updated["results"][0]["entry"]);
    assert_eq!(updated["results"][0]["entry"]["spiffe_id"]["path"], "/web2");

    // agent list / show / count.
    let agents = json_line(&server, &["agent", "list"]);
    assert_keys(&agents, &["agents", "next_page_token"]);
    let agent = &agents["agents"][0];
    assert_keys(agent, &AGENT_FIELDS);
    assert_spiffe_id(&agent["id"]);
    assert_eq!(id_text(&agent["id"]), agent_id);
    assert_eq!(agent["attestation_type"], "join_token");
    assert_eq!(agent["can_reattest"], false);
    assert!(int64(&agent["x509svid_expires_at"]) > 0);
    assert!(agent["x509svid_serial_number"].is_string());
    assert_eq!(
        json_line(&server, &["agent", "show", "-spiffeID", &agent_id]),
        *agent
    );
    assert_eq!(json_line(&server, &["agent", "count"]), json!({"count": 1}));

    // bundle show / set / list / count / delete.
    let bundle = json_line(&server, &["bundle", "show"]);
    assert_keys(&bundle, &BUNDLE_FIELDS);
    assert_eq!(bundle["trust_domain"], "example.org");
    let x509 = bundle["x509_authorities"].as_array().unwrap();
    assert!(!x509.is_empty());
    for a in x509 {
        assert_keys(a, &["asn1", "tainted"]);
        der_cert(&a["asn1"]);
    }
    let jwt = &bundle["jwt_authorities"][0];
    assert_keys(jwt, &["expires_at", "key_id", "public_key", "tainted"]);
    int64(&jwt["expires_at"]);
    assert!(int64(&bundle["sequence_number"]) >= 1);
    int64(&bundle["refresh_hint"]);

    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("ca.pem"), dir.path().join("ca.key"));
    self_signed_p256(
        &cert,
        &key,
        "/CN=partner",
        1,
        &["basicConstraints=critical,CA:true"],
    );
    let cert = cert.to_str().unwrap();
    let set = json_line(
        &server,
        &[
            "bundle",
            "set",
            "-id",
            "spiffe://partner.test",
            "-path",
            cert,
        ],
    );
    assert_keys(&set, &["results"]);
    assert_ok_status(&set["results"][0]);
    assert_keys(&set["results"][0]["bundle"], &BUNDLE_FIELDS);
    let listed = json_line(&server, &["bundle", "list"]);
    assert_keys(&listed, &["bundles", "next_page_token"]);
    assert_eq!(listed["bundles"][0]["trust_domain"], "partner.test");
    let one = json_line(&server, &["bundle", "list", "-id", "spiffe://partner.test"]);
    assert_eq!(one, listed["bundles"][0], "-id: the bundle itself");
    assert_eq!(
        json_line(&server, &["bundle", "count"]),
        json!({"count": 2})
    );
    let deleted = json_line(
        &server,
        &["bundle", "delete", "-id", "spiffe://partner.test"],
    );
    assert_ok_status(&deleted["results"][0]);
    assert_eq!(deleted["results"][0]["trust_domain"], "partner.test");

    // x509 mint / jwt mint.
    let minted = json_line(
        &server,
        &["x509", "mint", "-spiffeID", "spiffe://example.org/m"],
    );
    assert_keys(&minted, &["private_key", "root_cas", "x509_svid"]);
    let leaf = der_cert(&minted["x509_svid"][0]);
    let (_, leaf) = X509Certificate::from_der(&leaf).unwrap();
    let san = leaf.subject_alternative_name().unwrap().unwrap();
    assert!(
        san.value
            .general_names
            .iter()
            .any(|n| matches!(n, GeneralName::URI(u) if *u == "spiffe://example.org/m"))
    );
    der_cert(&minted["root_cas"][0]);
    let key = base64::engine::general_purpose::STANDARD
        .decode(minted["private_key"].as_str().unwrap())
        .unwrap();
    assert_eq!(key[0], 0x30, "PKCS#8 DER");
    let jwt = json_line(
        &server,
        &[
            "jwt",
            "mint",
            "-spiffeID",
            "spiffe://example.org/m",
            "-audience",
            "db",
        ],
    );
    assert_keys(&jwt, &["svid"]);
    let svid = &jwt["svid"];
    assert_keys(svid, &["expires_at", "hint", "id", "issued_at", "token"]);
    assert_eq!(id_text(&svid["id"]), "spiffe://example.org/m");
    assert!(int64(&svid["expires_at"]) > int64(&svid["issued_at"]));
    assert!(int64(&svid["issued_at"]) > 0);

    // localauthority.
    let state = json_line(&server, &["localauthority", "x509", "show"]);
    assert_keys(&state, &["active"]);
    assert_keys(
        &state["active"],
        &[
            "authority_id",
            "expires_at",
            "upstream_authority_subject_key_id",
        ],
    );
    int64(&state["active"]["expires_at"]);
    let prepared = json_line(&server, &["localauthority", "jwt", "prepare"]);
    assert_keys(&prepared, &["prepared_authority"]);
    let state = json_line(&server, &["localauthority", "jwt", "show"]);
    assert_keys(&state, &["active", "prepared"]);

    // entry delete last: SPIRE's BatchDeleteEntryResponse.
    let deleted = json_line(&server, &["entry", "delete", "-entryID", &id]);
    assert_keys(&deleted, &["results"]);
    assert_keys(&deleted["results"][0], &["id", "status"]);
    assert_ok_status(&deleted["results"][0]);
    assert_eq!(deleted["results"][0]["id"], id.as_str());
}

/// What `spire-server entry show -output json` prints for a real deployment (one compact
/// line; keys sorted; int64 as strings): a node alias, workloads under it with federation,
/// DNS names, hints, TTLs and an expiry, and a unix workload under an agent.
const SPIRE_SHOW: &str = r#"{"entries":[{"admin":false,"created_at":"1733300000","dns_names":[],"downstream":false,"expires_at":"0","federates_with":[],"hint":"","id":"6b8a3ae6-6cf1-4e44-a3b3-5d0c1f2f8a11","jwt_svid_ttl":0,"parent_id":{"path":"/spire/server","trust_domain":"example.org"},"revision_number":"0","selectors":[{"type":"k8s_psat","value":"cluster:demo"}],"spiffe_id":{"path":"/k8s-cluster/demo","trust_domain":"example.org"},"store_svid":false,"x509_svid_ttl":0},{"admin":false,"created_at":"1733300100","dns_names":["checkout.payments.svc","checkout.payments.svc.cluster.local"],"downstream":false,"expires_at":"0","federates_with":["partner.test"],"hint":"checkout","id":"0f7d1f9e-2f55-4d1a-9a3e-8c6c7b0b9d22","jwt_svid_ttl":300,"parent_id":{"path":"/k8s-cluster/demo","trust_domain":"example.org"},"revision_number":"2","selectors":[{"type":"k8s","value":"ns:payments"},{"type":"k8s","value":"sa:checkout"}],"spiffe_id":{"path":"/ns/payments/sa/checkout","trust_domain":"example.org"},"store_svid":false,"x509_svid_ttl":3600},{"admin":false,"created_at":"1733300200","dns_names":[],"downstream":false,"expires_at":"4102444800","federates_with":["bank.test","partner.test"],"hint":"","id":"c3e6e9d0-1b0c-4f6e-8d8f-3f7f3b2a1c33","jwt_svid_ttl":0,"parent_id":{"path":"/k8s-cluster/demo","trust_domain":"example.org"},"revision_number":"0","selectors":[{"type":"k8s","value":"ns:ledger"}],"spiffe_id":{"path":"/ns/ledger/sa/default","trust_domain":"example.org"},"store_svid":false,"x509_svid_ttl":0},{"admin":false,"created_at":"1733300300","dns_names":["batch.example.org"],"downstream":false,"expires_at":"0","federates_with":[],"hint":"batch","id":"e91b7d24-5a1f-4c5b-b1d0-7e2f9a6c4d44","jwt_svid_ttl":600,"parent_id":{"path":"/spire/agent/join_token/5e0b2a9c","trust_domain":"example.org"},"revision_number":"5","selectors":[{"type":"unix","value":"gid:1000"},{"type":"unix","value":"uid:1000"}],"spiffe_id":{"path":"/batch/nightly","trust_domain":"example.org"},"store_svid":false,"x509_svid_ttl":1800}],"next_page_token":""}
"#;

/// An entry without what the server assigns (`created_at`, `revision_number`).
fn portable(e: &Value) -> Value {
    let mut e = e.clone();
    let obj = e.as_object_mut().unwrap();
    obj.remove("created_at");
    obj.remove("revision_number");
    e
}

fn by_path(entries: &[Value]) -> Vec<Value> {
    let mut entries: Vec<Value> = entries.iter().map(portable).collect();
    entries.sort_by_key(|e| e["spiffe_id"]["path"].as_str().unwrap().to_owned());
    entries
}

#[test]
fn spire_entry_show_output_migrates_with_entry_create_data() {
    let server = Server::start(ServerOptions::default());
    let fixture = server.dir.path().join("e.json");
    std::fs::write(&fixture, SPIRE_SHOW).unwrap();
    let spire: Value = serde_json::from_str(SPIRE_SHOW).unwrap();
    for e in spire["entries"].as_array().unwrap() {
        assert_entry(e);
    }

    let created = json_line(
        &server,
        &["entry", "create", "-data", fixture.to_str().unwrap()],
    );
    assert_eq!(created["results"].as_array().unwrap().len(), 4);
    let shown = json_line(&server, &["entry", "show"]);
    assert_eq!(
        by_path(&shown_entries(&shown)),
        by_path(&shown_entries(&spire)),
        "entry show after the migration is SPIRE's, IDs included"
    );
    for e in shown_entries(&shown) {
        assert_entry(&e);
    }

    // Sigil's own output reads back the same way (a second server, or a restore).
    let again = Server::start(ServerOptions::default());
    let ours = again.dir.path().join("ours.json");
    std::fs::write(&ours, server.cli_ok(&["entry", "show", "-output", "json"])).unwrap();
    again.cli_ok(&["entry", "create", "-data", ours.to_str().unwrap()]);
    let shown_again = json_line(&again, &["entry", "show"]);
    assert_eq!(
        by_path(&shown_entries(&shown_again)),
        by_path(&shown_entries(&shown))
    );

    // A SPIRE user's jq pipelines, run with an independent JSON reader (Python's):
    // `.entries[].spiffe_id.path` and `.entries[] | select(.hint == "checkout") | .id`.
    let listing = server.dir.path().join("listing.json");
    std::fs::write(
        &listing,
        server.cli_ok(&["entry", "show", "-output", "json"]),
    )
    .unwrap();
    let paths = python_json(
        "a jq-style pipeline",
        &[
            "-c",
            "import json, sys\n\
             d = json.load(open(sys.argv[1]))\n\
             print(json.dumps({'paths': sorted(e['spiffe_id']['path'] for e in d['entries']),\n\
                               'checkout': [e['id'] for e in d['entries'] if e['hint'] == 'checkout'],\n\
                               'ttl': [int(e['expires_at']) for e in d['entries'] if e['expires_at'] != '0']}))",
            listing.to_str().unwrap(),
        ],
    );
    assert_eq!(
        paths,
        json!({
            "paths": ["/batch/nightly", "/k8s-cluster/demo", "/ns/ledger/sa/default", "/ns/payments/sa/checkout"],
            "checkout": ["0f7d1f9e-2f55-4d1a-9a3e-8c6c7b0b9d22"],
            "ttl": [4102444800i64],
        })
    );

    // SPIRE's own `-data` format (plain-string IDs, `entry_id`, `entryExpiry`) still reads.
    let legacy = server.dir.path().join("legacy.json");
    std::fs::write(
        &legacy,
        r#"{"entries":[{"entry_id":"legacy-1","spiffe_id":"spiffe://example.org/legacy","parent_id":"spiffe://example.org/k8s-cluster/demo","selectors":[{"type":"k8s","value":"ns:legacy"}],"entryExpiry":4102444800,"x509_svid_ttl":120}]}"#,
    )
    .unwrap();
    let created = json_line(
        &server,
        &["entry", "create", "-data", legacy.to_str().unwrap()],
    );
    let e = &created["results"][0]["entry"];
    assert_eq!(
        (e["id"].as_str(), e["expires_at"].as_str()),
        (Some("legacy-1"), Some("4102444800"))
    );
}

/// SPIRE features Sigil lacks are refused in a `-data` file, naming the field; nothing of the
/// file is written.
#[test]
fn unsupported_spire_fields_in_data_are_refused_whole() {
    let server = Server::start(ServerOptions::default());
    let spire: Value = serde_json::from_str(SPIRE_SHOW).unwrap();
    let file = server.dir.path().join("e.json");
    for (field, value, says) in [
        ("admin", json!(true), "admin"),
        ("downstream", json!(true), "downstream"),
        ("store_svid", json!(true), "store_svid"),
        (
            "additional_attributes",
            json!({"disable_x509_svid_prefetch": false, "jwt_svid_include_jti": true}),
            "jwt_svid_include_jti",
        ),
        ("ttl", json!(60), "unknown field"),
    ] {
        let mut data = spire.clone();
        data["entries"][3][field] = value;
        std::fs::write(&file, data.to_string()).unwrap();
        let out = server.cli(&["entry", "create", "-data", file.to_str().unwrap()]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{field} accepted");
        assert!(stderr.contains(says), "{field}: {stderr}");
        // Unknown fields are refused by the JSON reader, which names the line instead.
        assert!(
            field == "ttl" || stderr.contains("entry 3"),
            "{field}: {stderr}"
        );
        assert_eq!(json_line(&server, &["entry", "count"]), json!({"count": 0}));
    }
    let mut data = spire;
    data["entries"][1]["additional_attributes"] = json!({});
    std::fs::write(&file, data.to_string()).unwrap();
    server.cli_ok(&["entry", "create", "-data", file.to_str().unwrap()]);
}

#[test]
fn entry_update_replaces_the_entry_as_spire_does_and_partial_keeps_the_rest() {
    let server = Server::start(ServerOptions::default());
    let parent = "spiffe://example.org/node";
    let id = register(
        &server,
        "spiffe://example.org/web",
        parent,
        "unix:uid:1",
        &[
            "-hint",
            "web",
            "-dns",
            "web.example.org",
            "-x509SVIDTTL",
            "600",
        ],
    );
    let show = || json_line(&server, &["entry", "show", "-entryID", &id]);
    let before = show();

    let full = [
        ("-spiffeID", "spiffe://example.org/web2"),
        ("-parentID", parent),
        ("-selector", "unix:uid:2"),
    ];
    for (missing, says) in [
        ("-selector", "at least one selector is required"),
        ("-parentID", "a parent ID is required"),
        ("-spiffeID", "a SPIFFE ID is required"),
    ] {
        let mut args = vec!["entry", "update", "-entryID", &id];
        for (flag, value) in full.iter().filter(|(f, _)| *f != missing) {
            args.extend([*flag, *value]);
        }
        let out = server.cli(&args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && stderr.contains(says),
            "without {missing}: {stderr}"
        );
        assert_eq!(show(), before, "nothing changed without {missing}");
    }
    let out = server.cli(&["entry", "update", "-spiffeID", "spiffe://example.org/x"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("entry ID is required"));

    // The whole entry: what the flags do not give is reset, as SPIRE's update does.
    let mut args = vec!["entry", "update", "-entryID", &id];
    for (flag, value) in full {
        args.extend([flag, value]);
    }
    let updated = json_line(&server, &args);
    let e = &updated["results"][0]["entry"];
    assert_eq!(id_text(&e["spiffe_id"]), "spiffe://example.org/web2");
    assert_eq!(e["selectors"], json!([{"type": "unix", "value": "uid:2"}]));
    assert_eq!(
        (e["hint"].as_str(), e["x509_svid_ttl"].as_i64()),
        (Some(""), Some(0))
    );
    assert_eq!(e["dns_names"], json!([]));

    // -partial: only the fields given change.
    let partial = json_line(
        &server,
        &[
            "entry", "update", "-partial", "-entryID", &id, "-hint", "again",
        ],
    );
    let e = &partial["results"][0]["entry"];
    assert_eq!(e["hint"], "again");
    assert_eq!(id_text(&e["spiffe_id"]), "spiffe://example.org/web2");
    assert_eq!(e["selectors"], json!([{"type": "unix", "value": "uid:2"}]));
}

#[test]
fn entry_show_text_is_spires() {
    let server = Server::start(ServerOptions::default());
    let first = server.cli_ok(&["entry", "show"]);
    assert_eq!(first, "Found 0 entries\n");
    let mut ids = Vec::new();
    for (path, uid) in [("/a", "1"), ("/b", "2")] {
        ids.push(register(
            &server,
            &format!("spiffe://example.org{path}"),
            "spiffe://example.org/node",
            &format!("unix:uid:{uid}"),
            &["-entryExpiry", "4102444800"],
        ));
    }
    let text = server.cli_ok(&["entry", "show"]);
    assert!(text.starts_with("Found 2 entries\n"), "{text}");
    let one = server.cli_ok(&["entry", "show", "-entryID", &ids[0]]);
    let revision = json_line(&server, &["entry", "show", "-entryID", &ids[0]])["entries"][0]
        ["revision_number"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        one,
        format!(
            "Found 1 entry\n\
             Entry ID                : {}\n\
             SPIFFE ID               : spiffe://example.org/a\n\
             Parent ID               : spiffe://example.org/node\n\
             Revision                : {revision}\n\
             X509-SVID TTL           : default\n\
             JWT-SVID TTL            : default\n\
             Expiration time         : 2100-01-01 00:00:00 +0000 UTC\n\
             Selector                : unix:uid:1\n\n",
            ids[0],
        )
    );
    let filtered = server.cli_ok(&["entry", "show", "-selector", "unix:uid:2"]);
    assert!(filtered.starts_with("Found 1 entry\n"), "{filtered}");
    let out = server.cli(&[
        "entry",
        "show",
        "-entryID",
        &ids[0],
        "-selector",
        "unix:uid:1",
    ]);
    assert!(!out.status.success(), "-entryID with another filter");
    assert_eq!(
        server.cli_ok(&["entry", "count"]),
        "2 registration entries\n"
    );
    let deleted = server.cli_ok(&["entry", "delete", "-entryID", &ids[1]]);
    assert_eq!(
        deleted,
        format!(
            "Deleted entry with ID: {}\n\n\nDeleted 1 entries successfully",
            ids[1]
        )
    );
}

#[test]
fn agent_help_names_the_default_socket() {
    let out = Command::new(agent_bin()).arg("--help").output().unwrap();
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(help.contains("/tmp/spire-agent/public/api.sock"), "{help}");
    let out = Command::new(agent_bin())
        .args(["api", "fetch", "x509", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(help.contains("/tmp/spire-agent/public/api.sock"), "{help}");
}

/// SPIRE's entry flags Sigil lacks are refused before anything is sent, saying so and why,
/// with exit 64; nothing is created.
#[test]
fn spire_entry_flags_sigil_lacks_are_refused_saying_why() {
    let server = Server::start(ServerOptions::default());
    let socket = server.socket.to_str().unwrap();
    for (args, flag) in [
        (
            &[
                "entry",
                "create",
                "-storeSVID",
                "-spiffeID",
                "spiffe://example.org/s",
                "-parentID",
                "spiffe://example.org/p",
                "-selector",
                "unix:uid:1",
            ][..],
            "-storeSVID",
        ),
        (
            &[
                "entry",
                "create",
                "-jwtSVIDIncludeJTI",
                "-spiffeID",
                "spiffe://example.org/j",
                "-parentID",
                "spiffe://example.org/p",
                "-selector",
                "unix:uid:1",
            ][..],
            "-jwtSVIDIncludeJTI",
        ),
    ] {
        let out = Command::new(server_bin())
            .args(args)
            .args(["-socketPath", socket])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "{args:?}: {stderr}");
        assert!(
            stderr.contains(&format!("{flag} is not supported by Sigil: ")),
            "{args:?}: {stderr}"
        );
    }
    let count = server.cli_ok(&["entry", "count"]);
    assert!(count.starts_with("0 "), "nothing created: {count}");
}
