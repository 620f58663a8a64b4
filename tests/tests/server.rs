//! End-to-end tests of `sigil-server`: the real binary, its CLI, its socket and its files,
//! checked with independent verifiers (openssl, x509-parser, jsonwebtoken).

use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use sigil_testkit::verify::openssl_verify;
use sigil_testkit::{Server, ServerOptions, http_get, openssl, pem_certs, server_bin, wait_for};
use x509_parser::prelude::*;

const SEED_SPIFFE_ID: &str = "spiffe://example.org/ns/payments/sa/checkout-service";
const SEED_PARENT_ID: &str = "spiffe://example.org/ns/spire/sa/spire-agent";

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn count(server: &Server) -> u64 {
    server.cli_json(&["entry", "count"])["count"]
        .as_u64()
        .unwrap()
}

fn show_ids(server: &Server, filter: &[&str]) -> Vec<String> {
    let mut args = vec!["entry", "show"];
    args.extend(filter);
    sigil_testkit::shown_entries(&server.cli_json(&args))
        .iter()
        .map(|e| e["id"].as_str().unwrap().to_owned())
        .collect()
}

/// The seed's command, exactly as an operator types it (default socket path, no flags added).
#[test]
fn seed_entry_create_then_show_by_every_filter() {
    let server = Server::start(ServerOptions {
        default_socket: true,
        ..Default::default()
    });
    let out = Command::new(server_bin())
        .args([
            "entry",
            "create",
            "-spiffeID",
            SEED_SPIFFE_ID,
            "-parentID",
            SEED_PARENT_ID,
            "-selector",
            "k8s:ns:payments",
            "-selector",
            "k8s:sa:checkout-service",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "seed command failed: {}",
        stderr(&out)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.contains(&format!("SPIFFE ID               : {SEED_SPIFFE_ID}")),
        "{text}"
    );
    assert!(
        text.contains("Selector                : k8s:ns:payments"),
        "{text}"
    );
    let id = text
        .lines()
        .find_map(|l| l.strip_prefix("Entry ID                : "))
        .unwrap()
        .to_owned();

    // An unrelated entry so every filter has something to exclude.
    server.cli_ok(&[
        "entry",
        "create",
        "-spiffeID",
        "spiffe://example.org/other",
        "-parentID",
        SEED_PARENT_ID,
        "-selector",
        "unix:uid:1000",
    ]);

    let only = vec![id.clone()];
    assert_eq!(show_ids(&server, &["-entryID", &id]), only);
    assert_eq!(show_ids(&server, &["-spiffeID", SEED_SPIFFE_ID]), only);
    assert_eq!(show_ids(&server, &["-parentID", SEED_PARENT_ID]).len(), 2);
    assert_eq!(
        show_ids(&server, &["-selector", "k8s:ns:payments"]),
        only,
        "superset is the default"
    );
    assert_eq!(
        show_ids(
            &server,
            &[
                "-selector",
                "k8s:sa:checkout-service",
                "-selector",
                "k8s:ns:payments",
                "-matchSelectorsOn",
                "exact"
            ]
        ),
        only
    );
    assert!(
        show_ids(
            &server,
            &["-selector", "k8s:ns:payments", "-matchSelectorsOn", "exact"]
        )
        .is_empty()
    );
    assert_eq!(
        show_ids(
            &server,
            &[
                "-selector",
                "k8s:ns:payments",
                "-selector",
                "k8s:sa:checkout-service",
                "-selector",
                "k8s:pod-name:x",
                "-matchSelectorsOn",
                "subset"
            ]
        ),
        only
    );
    assert_eq!(
        show_ids(
            &server,
            &[
                "-selector",
                "k8s:sa:checkout-service",
                "-selector",
                "unix:uid:1000",
                "-matchSelectorsOn",
                "any"
            ]
        )
        .len(),
        2
    );
    assert!(show_ids(&server, &["-selector", "k8s:ns:other"]).is_empty());
    assert!(show_ids(&server, &["-spiffeID", "spiffe://example.org/nobody"]).is_empty());
    assert_eq!(count(&server), 2);

    // The same registration again is refused, clearly, and nothing changes.
    let dup = Command::new(server_bin())
        .args([
            "entry",
            "create",
            "-spiffeID",
            SEED_SPIFFE_ID,
            "-parentID",
            SEED_PARENT_ID,
            "-selector",
            "k8s:sa:checkout-service",
            "-selector",
            "k8s:ns:payments",
        ])
        .output()
        .unwrap();
    assert!(!dup.status.success());
    assert!(
        stderr(&dup).to_lowercase().contains("already exists"),
        "{}",
        stderr(&dup)
    );
    assert_eq!(
        stderr(&dup).lines().count(),
        1,
        "one line: {}",
        stderr(&dup)
    );
    assert_eq!(count(&server), 2);
}

#[test]
fn bad_input_is_refused_with_a_clear_error_and_no_change() {
    let server = Server::start(ServerOptions::default());
    let cases: &[(&[&str], &str)] = &[
        (
            &[
                "-spiffeID",
                "spiffe://example.org/a/",
                "-parentID",
                SEED_PARENT_ID,
                "-selector",
                "k8s:ns:a",
            ],
            "trailing slash",
        ),
        (
            &[
                "-spiffeID",
                "http://example.org/a",
                "-parentID",
                SEED_PARENT_ID,
                "-selector",
                "k8s:ns:a",
            ],
            "scheme",
        ),
        (
            &[
                "-spiffeID",
                "spiffe://Example.org/a",
                "-parentID",
                SEED_PARENT_ID,
                "-selector",
                "k8s:ns:a",
            ],
            "trust domain characters",
        ),
        (
            &[
                "-spiffeID",
                "spiffe://other.org/a",
                "-parentID",
                "spiffe://other.org/n",
                "-selector",
                "k8s:ns:a",
            ],
            "not in trust domain",
        ),
        (
            &[
                "-spiffeID",
                "spiffe://example.org/a",
                "-parentID",
                SEED_PARENT_ID,
                "-selector",
                "k8s",
            ],
            "type:value",
        ),
        (
            &[
                "-spiffeID",
                "spiffe://example.org/a",
                "-parentID",
                SEED_PARENT_ID,
            ],
            "selector",
        ),
        (
            &[
                "-spiffeID",
                "spiffe://example.org/a",
                "-selector",
                "k8s:ns:a",
            ],
            "parent",
        ),
        (
            &[
                "-spiffeID",
                "spiffe://example.org/a",
                "-parentID",
                SEED_PARENT_ID,
                "-selector",
                "k8s:ns:a",
                "-x509SVIDTTL",
                "soon",
            ],
            "x509SVIDTTL",
        ),
        (
            &[
                "-spiffeID",
                "spiffe://example.org/a",
                "-parentID",
                SEED_PARENT_ID,
                "-selector",
                "k8s:ns:a",
                "-dns",
                "bad name",
            ],
            "DNS",
        ),
        (
            &[
                "-spiffeID",
                "spiffe://example.org/a",
                "-parentID",
                SEED_PARENT_ID,
                "-selector",
                "k8s:ns:a",
                "-federatesWith",
                "example.org",
            ],
            "own trust domain",
        ),
    ];
    for (args, want) in cases {
        let mut all = vec!["entry", "create"];
        all.extend(args.iter());
        let out = server.cli(&all);
        assert!(!out.status.success(), "{args:?} should fail");
        let err = stderr(&out);
        assert!(
            err.to_lowercase().contains(&want.to_lowercase()),
            "{args:?}: expected {want:?} in {err:?}"
        );
        assert!(
            err.starts_with("Error: ") && err.lines().count() == 1,
            "one clear line: {err:?}"
        );
    }
    let out = server.cli(&["entry", "show", "-entryID", "no-such-entry"]);
    assert!(!out.status.success());
    let out = server.cli(&["entry", "delete", "-entryID", "no-such-entry"]);
    assert!(
        !out.status.success() && stderr(&out).contains("no-such-entry"),
        "{}",
        stderr(&out)
    );
    assert_eq!(count(&server), 0);

    // A CLI pointed at a socket where nothing listens says so.
    let out = Command::new(server_bin())
        .args(["entry", "count", "-socketPath", "/nonexistent/api.sock"])
        .output()
        .unwrap();
    assert!(
        !out.status.success() && stderr(&out).contains("cannot connect"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn update_delete_and_data_file() {
    let server = Server::start(ServerOptions::default());
    let data = server.dir.path().join("entries.json");
    std::fs::write(
        &data,
        format!(
            r#"{{"entries": [
                {{"spiffe_id": "spiffe://example.org/web", "parent_id": "{SEED_PARENT_ID}", "selectors": [{{"type": "unix", "value": "uid:1000"}}], "x509_svid_ttl": 200, "dns_names": ["web.example.org"], "hint": "web"}},
                {{"spiffe_id": "spiffe://example.org/db", "parent_id": "{SEED_PARENT_ID}", "selectors": [{{"type": "unix", "value": "uid:1001"}}], "admin": false}}
            ]}}"#
        ),
    )
    .unwrap();
    let created = server.cli_json(&["entry", "create", "-data", data.to_str().unwrap()]);
    assert_eq!(created["results"].as_array().unwrap().len(), 2);
    let web = created["results"][0]["entry"].clone();
    assert_eq!(web["x509_svid_ttl"], 200);
    assert_eq!(web["dns_names"][0], "web.example.org");
    let id = web["id"].as_str().unwrap();

    let updated = server.cli_json(&[
        "entry",
        "update",
        "-partial",
        "-entryID",
        id,
        "-x509SVIDTTL",
        "300",
        "-selector",
        "unix:uid:2000",
    ]);
    let updated = &updated["results"][0]["entry"];
    assert_eq!(updated["x509_svid_ttl"], 300);
    assert_eq!(updated["selectors"][0]["value"], "uid:2000");
    assert_eq!(
        sigil_testkit::id_text(&updated["spiffe_id"]),
        "spiffe://example.org/web",
        "fields not given are kept"
    );
    assert_eq!(updated["hint"], "web", "fields not given are kept");
    let revision = |e: &serde_json::Value| {
        e["revision_number"]
            .as_str()
            .unwrap()
            .parse::<i64>()
            .unwrap()
    };
    assert!(revision(updated) > revision(&web));

    server.cli_ok(&["entry", "delete", "-entryID", id]);
    assert_eq!(count(&server), 1);
    assert!(
        !server
            .cli(&["entry", "show", "-entryID", id])
            .status
            .success()
    );
}

/// Flags Sigil stores but does not act on are refused, never accepted and ignored: `entry
/// create -admin` / `-downstream` (and the same fields in a `-data` file or sent to the admin
/// API by any client) write nothing, and `healthcheck -shallow` fails, each with a clear error.
#[test]
fn unsupported_security_flags_are_refused_and_nothing_is_written() {
    use sigil_proto::sigil::admin::v1 as pb;
    use sigil_proto::sigil::common::v1 as common;
    use sigil_testkit::admin::admin_client;
    use sigil_testkit::rt;

    let server = Server::start(ServerOptions::default());
    let entry = [
        "entry",
        "create",
        "-spiffeID",
        "spiffe://example.org/flagged",
        "-parentID",
        SEED_PARENT_ID,
        "-selector",
        "unix:uid:1000",
    ];
    for flag in ["-admin", "-downstream"] {
        let mut args = entry.to_vec();
        args.push(flag);
        let out = server.cli(&args);
        let err = stderr(&out);
        assert!(!out.status.success(), "{flag} was accepted");
        assert!(
            err.starts_with(&format!("Error: {flag} is not supported")) && err.lines().count() == 1,
            "{flag}: {err:?}"
        );
    }
    let data = server.dir.path().join("flagged.json");
    for field in ["admin", "downstream"] {
        std::fs::write(
            &data,
            format!(
                r#"{{"entries": [{{"spiffe_id": "spiffe://example.org/flagged", "parent_id": "{SEED_PARENT_ID}", "selectors": [{{"type": "unix", "value": "uid:1000"}}], "{field}": true}}]}}"#
            ),
        )
        .unwrap();
        let out = server.cli(&["entry", "create", "-data", data.to_str().unwrap()]);
        let err = stderr(&out);
        assert!(!out.status.success(), "-data with {field} was accepted");
        assert!(
            err.contains(&format!("{field} entries are not supported")),
            "{field}: {err:?}"
        );
    }
    // The admin API itself refuses, whatever client sends it.
    let socket = server.socket.clone();
    let refused = rt().block_on(async move {
        let mut admin = admin_client(&socket).await.unwrap();
        let mut refused = Vec::new();
        for (admin_flag, downstream) in [(true, false), (false, true)] {
            let wire = common::RegistrationEntry {
                spiffe_id: "spiffe://example.org/flagged".into(),
                parent_id: SEED_PARENT_ID.into(),
                selectors: vec![common::Selector {
                    r#type: "unix".into(),
                    value: "uid:1000".into(),
                }],
                admin: admin_flag,
                downstream,
                ..Default::default()
            };
            let status = admin
                .batch_create_entry(pb::BatchCreateEntryRequest {
                    entries: vec![wire],
                })
                .await
                .unwrap_err();
            refused.push((status.code(), status.message().to_owned()));
        }
        refused
    });
    for ((code, message), field) in refused.iter().zip(["admin", "downstream"]) {
        assert_eq!(*code, tonic::Code::InvalidArgument, "{message}");
        assert!(
            message.contains(&format!("{field} entries are not supported")),
            "{message}"
        );
    }
    assert_eq!(count(&server), 0, "nothing was written");

    let out = server.cli(&["healthcheck", "-shallow"]);
    assert!(!out.status.success(), "-shallow was accepted");
    assert!(
        stderr(&out).starts_with("Error: -shallow is not supported"),
        "{}",
        stderr(&out)
    );
    server.cli_ok(&["healthcheck"]);
}

/// Checks one X.509-SVID against every item of the digest's DO list.
fn check_svid_profile(leaf_der: &[u8], ca_der: &[u8], spiffe_id: &str, dns: &[&str]) {
    let (_, leaf) = X509Certificate::from_der(leaf_der).unwrap();
    let (_, ca) = X509Certificate::from_der(ca_der).unwrap();
    assert_eq!(leaf.version(), X509Version::V3);
    let san = leaf
        .subject_alternative_name()
        .unwrap()
        .expect("SAN present");
    let uris: Vec<&str> = san
        .value
        .general_names
        .iter()
        .filter_map(|n| match n {
            GeneralName::URI(u) => Some(*u),
            _ => None,
        })
        .collect();
    assert_eq!(uris, [spiffe_id], "exactly one URI SAN");
    let dns_names: Vec<&str> = san
        .value
        .general_names
        .iter()
        .filter_map(|n| match n {
            GeneralName::DNSName(d) => Some(*d),
            _ => None,
        })
        .collect();
    assert_eq!(dns_names, dns);
    let bc = leaf.basic_constraints().unwrap().expect("BC present");
    assert!(bc.critical && !bc.value.ca, "BC critical, cA=false");
    let ku = leaf.key_usage().unwrap().expect("KU present");
    assert!(ku.critical && ku.value.digital_signature());
    assert!(!ku.value.key_cert_sign() && !ku.value.crl_sign());
    let eku = leaf.extended_key_usage().unwrap().expect("EKU present");
    assert!(eku.value.server_auth && eku.value.client_auth);
    let ski = leaf
        .extensions()
        .iter()
        .find_map(|e| match e.parsed_extension() {
            ParsedExtension::SubjectKeyIdentifier(k) => Some(k.0.to_vec()),
            _ => None,
        });
    assert!(ski.is_some(), "SKI present");
    let aki = leaf
        .extensions()
        .iter()
        .find_map(|e| match e.parsed_extension() {
            ParsedExtension::AuthorityKeyIdentifier(a) => {
                a.key_identifier.as_ref().map(|k| k.0.to_vec())
            }
            _ => None,
        });
    let ca_ski = ca
        .extensions()
        .iter()
        .find_map(|e| match e.parsed_extension() {
            ParsedExtension::SubjectKeyIdentifier(k) => Some(k.0.to_vec()),
            _ => None,
        });
    assert_eq!(aki, ca_ski, "AKI is the CA's SKI");
    let nb = leaf.validity().not_before.timestamp();
    assert!(
        nb <= now() - 5,
        "NotBefore backdated: {nb} vs now {}",
        now()
    );
    assert!(
        leaf.validity().not_after.timestamp() <= ca.validity().not_after.timestamp(),
        "capped by the CA"
    );
    leaf.verify_signature(Some(ca.public_key()))
        .expect("signed by the CA");
    // The CA: URI SAN is the trust domain ID, cA=true, keyCertSign.
    let ca_bc = ca.basic_constraints().unwrap().unwrap();
    assert!(ca_bc.value.ca);
    assert!(ca.key_usage().unwrap().unwrap().value.key_cert_sign());
}

#[test]
fn x509_mint_verifies_with_openssl_and_matches_the_svid_profile() {
    let server = Server::start(ServerOptions::default());
    let out_dir = server.dir.path().join("minted");
    std::fs::create_dir(&out_dir).unwrap();
    server.cli_ok(&[
        "x509",
        "mint",
        "-spiffeID",
        SEED_SPIFFE_ID,
        "-dns",
        "checkout.payments.svc",
        "-ttl",
        "10m",
        "-write",
        out_dir.to_str().unwrap(),
    ]);
    let svid = out_dir.join("svid.pem");
    let key = out_dir.join("key.pem");
    let bundle = out_dir.join("bundle.pem");
    assert_eq!(
        std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
        0o600,
        "key file 0600"
    );
    let (ok, text) = openssl_verify(&bundle, &svid, &[]);
    assert!(ok, "openssl verify: {text}");
    // The private key belongs to the certificate.
    let (_, cert_pub) = openssl(&["x509", "-in", svid.to_str().unwrap(), "-noout", "-pubkey"]);
    let (_, key_pub) = openssl(&["pkey", "-in", key.to_str().unwrap(), "-pubout"]);
    assert_eq!(cert_pub, key_pub);

    let chain = pem_certs(&std::fs::read_to_string(&svid).unwrap());
    let cas = pem_certs(&std::fs::read_to_string(&bundle).unwrap());
    assert_eq!(chain.len(), 1);
    assert_eq!(cas.len(), 1);
    check_svid_profile(
        &chain[0],
        &cas[0],
        SEED_SPIFFE_ID,
        &["checkout.payments.svc"],
    );
    let (_, leaf) = X509Certificate::from_der(&chain[0]).unwrap();
    let life = leaf.validity().not_after.timestamp() - now();
    assert!((500..=610).contains(&life), "-ttl 10m honoured: {life}");

    // The bundle the CLI shows is the one the SVID chains to.
    let shown = server.cli_ok(&["bundle", "show"]);
    assert_eq!(pem_certs(&shown), cas);

    // Identities outside the trust domain or without a path are refused.
    for bad in ["spiffe://other.org/x", "spiffe://example.org", "not-an-id"] {
        let out = server.cli(&["x509", "mint", "-spiffeID", bad]);
        assert!(!out.status.success(), "{bad} should be refused");
    }
}

#[test]
fn jwt_mint_verifies_against_the_bundle_jwt_key() {
    use jsonwebtoken::{Algorithm, DecodingKey, Validation, decode, decode_header};
    let server = Server::start(ServerOptions::default());
    let token = server.cli_ok(&[
        "jwt",
        "mint",
        "-spiffeID",
        SEED_SPIFFE_ID,
        "-audience",
        "payments",
        "-audience",
        "audit",
    ]);
    let token = token.trim();
    let header = decode_header(token).unwrap();
    assert_eq!(header.alg, Algorithm::ES256);
    assert_eq!(header.typ.as_deref(), Some("JWT"));
    let kid = header.kid.expect("kid set");

    let bundle: serde_json::Value =
        serde_json::from_str(&server.cli_ok(&["bundle", "show", "-format", "spiffe"])).unwrap();
    let key = bundle["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["use"] == "jwt-svid" && k["kid"] == kid.as_str())
        .expect("the token's kid is in the bundle");
    let dk =
        DecodingKey::from_ec_components(key["x"].as_str().unwrap(), key["y"].as_str().unwrap())
            .unwrap();
    let mut v = Validation::new(Algorithm::ES256);
    v.set_audience(&["payments"]);
    v.set_required_spec_claims(&["exp", "sub", "aud"]);
    let data = decode::<serde_json::Value>(token, &dk, &v).expect("valid signature and claims");
    assert_eq!(data.claims["sub"], SEED_SPIFFE_ID);
    assert_eq!(data.claims["aud"], serde_json::json!(["payments", "audit"]));
    assert!(data.claims["iat"].is_i64());
    let exp = data.claims["exp"].as_i64().unwrap();
    assert!(exp > now() && exp <= now() + 300 + 5, "default TTL 5m");

    // Wrong audience fails in an independent validator.
    let mut wrong = Validation::new(Algorithm::ES256);
    wrong.set_audience(&["someone-else"]);
    assert!(decode::<serde_json::Value>(token, &dk, &wrong).is_err());
    // A tampered payload fails.
    let parts: Vec<&str> = token.split('.').collect();
    let forged_claims = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(
        serde_json::json!({"sub": "spiffe://example.org/admin", "aud": ["payments"], "exp": exp})
            .to_string(),
    );
    let forged = format!("{}.{}.{}", parts[0], forged_claims, parts[2]);
    assert!(decode::<serde_json::Value>(&forged, &dk, &v).is_err());

    let out = server.cli(&["jwt", "mint", "-spiffeID", SEED_SPIFFE_ID]);
    assert!(!out.status.success(), "an audience is required");
}

#[test]
fn restart_keeps_entries_bundle_and_ca() {
    let mut server = Server::start(ServerOptions::default());
    server.cli_ok(&[
        "entry",
        "create",
        "-spiffeID",
        SEED_SPIFFE_ID,
        "-parentID",
        SEED_PARENT_ID,
        "-selector",
        "k8s:ns:payments",
    ]);
    let entries = server.cli_json(&["entry", "show"]);
    let bundle = server.cli_ok(&["bundle", "show", "-format", "spiffe"]);
    let keys = server.data_dir().join("keys.json");
    assert_eq!(
        std::fs::metadata(&keys).unwrap().permissions().mode() & 0o777,
        0o600,
        "keys file 0600"
    );
    assert_eq!(
        std::fs::metadata(server.data_dir())
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o700,
        "data_dir 0700"
    );
    let sock_dir = server.socket.parent().unwrap();
    assert_eq!(
        std::fs::metadata(sock_dir).unwrap().permissions().mode() & 0o777,
        0o700,
        "admin socket dir 0700"
    );

    server.restart();
    assert_eq!(server.cli_json(&["entry", "show"]), entries);
    assert_eq!(
        server.cli_ok(&["bundle", "show", "-format", "spiffe"]),
        bundle
    );
    // And the CA still signs chains that verify against the unchanged bundle.
    let dir = server.dir.path().join("after");
    std::fs::create_dir(&dir).unwrap();
    server.cli_ok(&[
        "x509",
        "mint",
        "-spiffeID",
        SEED_SPIFFE_ID,
        "-write",
        dir.to_str().unwrap(),
    ]);
    let (ok, text) = openssl_verify(&dir.join("bundle.pem"), &dir.join("svid.pem"), &[]);
    assert!(ok, "{text}");
    assert_eq!(
        std::fs::read_to_string(dir.join("bundle.pem")).unwrap(),
        server.cli_ok(&["bundle", "show"])
    );
}

#[test]
fn sigterm_drains_and_exits_zero() {
    let mut server = Server::start(ServerOptions::default());
    let socket = server.socket.clone();
    let status = server.stop();
    assert!(status.success(), "exit status {status}");
    assert!(!socket.exists(), "socket removed on shutdown");
    assert!(
        server.log().contains("sigil-server stopped"),
        "{}",
        server.log()
    );
}

fn integrity_ok(db: &std::path::Path) -> (String, i64) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        use sqlx::Row;
        let url = format!("sqlite://{}", db.display());
        let pool = sqlx::SqlitePool::connect(&url).await.unwrap();
        let check: String = sqlx::query("PRAGMA integrity_check")
            .fetch_one(&pool)
            .await
            .unwrap()
            .get(0);
        let n: i64 = sqlx::query("SELECT COUNT(*) FROM registered_entries")
            .fetch_one(&pool)
            .await
            .unwrap()
            .get(0);
        pool.close().await;
        (check, n)
    })
}

#[test]
fn kill9_during_a_1000_entry_batch_is_all_or_nothing() {
    let mut server = Server::start(ServerOptions {
        health: false,
        ..Default::default()
    });
    let entries: Vec<serde_json::Value> = (0..1000)
        .map(|i| {
            serde_json::json!({
                "spiffe_id": format!("spiffe://example.org/batch/{i}"),
                "parent_id": SEED_PARENT_ID,
                "selectors": [{"type": "unix", "value": format!("uid:{i}")}],
            })
        })
        .collect();
    let data = server.dir.path().join("batch.json");
    std::fs::write(&data, serde_json::json!({ "entries": entries }).to_string()).unwrap();
    let mut saw = std::collections::BTreeSet::new();
    for (round, delay_ms) in [0u64, 5, 15, 30, 60, 120].into_iter().enumerate() {
        let mut create = Command::new(server_bin())
            .args([
                "entry",
                "create",
                "-data",
                data.to_str().unwrap(),
                "-socketPath",
                server.socket.to_str().unwrap(),
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(delay_ms));
        server.kill9();
        let _ = create.wait();
        let (check, n) = integrity_ok(&server.db_path());
        assert_eq!(check, "ok", "round {round}");
        assert!(
            n % 1000 == 0 && n <= 1000,
            "round {round}: partial batch, {n} entries"
        );
        saw.insert(n);
        server.spawn();
        assert_eq!(count(&server) as i64, n);
        if n == 1000 {
            // Reset to an empty datastore for the next round.
            let ids = show_ids(&server, &[]);
            let file = server.dir.path().join("ids.json");
            std::fs::write(&file, serde_json::json!({ "ids": ids }).to_string()).unwrap();
            server.cli_ok(&["entry", "delete", "-file", file.to_str().unwrap()]);
        }
    }
    eprintln!("entry counts seen after kill -9: {saw:?}");
}

#[test]
fn health_live_ready_and_metrics() {
    let prometheus_port = sigil_testkit::free_port();
    let server = Server::start(ServerOptions {
        extra_top: format!(
            "telemetry {{\n  Prometheus {{\n    host = \"127.0.0.1\"\n    port = {prometheus_port}\n  }}\n}}"
        ),
        ..Default::default()
    });
    assert_eq!(http_get(server.health_port, "/live").unwrap().0, 200);
    assert_eq!(http_get(server.health_port, "/ready").unwrap().0, 200);
    server.cli_ok(&["x509", "mint", "-spiffeID", SEED_SPIFFE_ID]);
    let (status, body) = http_get(server.health_port, "/metrics").unwrap();
    assert_eq!(status, 200);
    assert!(
        body.contains("sigil_server_admin_requests_total{method=\"MintX509SVID\",result=\"ok\"}"),
        "{body}"
    );
    let (status, body) = http_get(prometheus_port, "/metrics").unwrap();
    assert_eq!(status, 200, "telemetry Prometheus listener");
    assert!(
        body.contains("sigil_server_x509_svids_signed_total{result=\"ok\"} 1"),
        "{body}"
    );
    let out = server.cli_ok(&["healthcheck"]);
    assert!(out.contains("Server is healthy."));
}

#[test]
fn token_generate_and_bundle_formats() {
    let server = Server::start(ServerOptions::default());
    let out = server.cli_ok(&[
        "token",
        "generate",
        "-spiffeID",
        "spiffe://example.org/node-alias",
        "-ttl",
        "60",
    ]);
    let token = out
        .trim()
        .strip_prefix("Token: ")
        .expect("SPIRE's output shape")
        .to_owned();
    assert!(!token.is_empty());
    // -spiffeID registers the alias entry under the agent ID the token produces.
    let entries = server.cli_json(&[
        "entry",
        "show",
        "-spiffeID",
        "spiffe://example.org/node-alias",
    ]);
    assert_eq!(
        sigil_testkit::id_text(&entries["entries"][0]["parent_id"]),
        format!("spiffe://example.org/spire/agent/join_token/{token}")
    );
    let json = server.cli_json(&["token", "generate"]);
    // protojson's int64: a string.
    let expires_at: i64 = json["expires_at"].as_str().unwrap().parse().unwrap();
    assert!(expires_at > now());
    let spiffe: serde_json::Value =
        serde_json::from_str(&server.cli_ok(&["bundle", "show", "-format", "spiffe"])).unwrap();
    let keys = spiffe["keys"].as_array().unwrap();
    assert!(
        keys.iter()
            .any(|k| k["use"] == "x509-svid" && k["x5c"].as_array().unwrap().len() == 1)
    );
    assert!(
        keys.iter()
            .any(|k| k["use"] == "jwt-svid" && k["kid"].is_string())
    );
    assert!(spiffe["spiffe_sequence"].is_u64());
}

/// ca_ttl 60 s: the next CA is prepared at 30 s remaining (in the bundle, not signing) and
/// activated at 10 s remaining; the old CA stays in the bundle until it expires.
#[test]
fn ca_rotation_prepares_activates_and_keeps_the_old_ca() {
    let server = Server::start(ServerOptions {
        ca_ttl: "60s".into(),
        x509_svid_ttl: "5s".into(),
        jwt_svid_ttl: "5s".into(),
        health: false,
        ..Default::default()
    });
    let mint_issuer = |tag: &str| -> (Vec<u8>, Vec<Vec<u8>>) {
        let dir = server.dir.path().join(tag);
        std::fs::create_dir_all(&dir).unwrap();
        server.cli_ok(&[
            "x509",
            "mint",
            "-spiffeID",
            SEED_SPIFFE_ID,
            "-write",
            dir.to_str().unwrap(),
        ]);
        let leaf = pem_certs(&std::fs::read_to_string(dir.join("svid.pem")).unwrap()).remove(0);
        let (_, cert) = X509Certificate::from_der(&leaf).unwrap();
        let aki = cert
            .extensions()
            .iter()
            .find_map(|e| match e.parsed_extension() {
                ParsedExtension::AuthorityKeyIdentifier(a) => {
                    a.key_identifier.as_ref().map(|k| k.0.to_vec())
                }
                _ => None,
            })
            .unwrap();
        let (ok, text) = openssl_verify(&dir.join("bundle.pem"), &dir.join("svid.pem"), &[]);
        assert!(ok, "{tag}: {text}");
        (aki, pem_certs(&server.cli_ok(&["bundle", "show"])))
    };
    let ski = |der: &Vec<u8>| {
        let (_, c) = X509Certificate::from_der(der).unwrap();
        c.extensions()
            .iter()
            .find_map(|e| match e.parsed_extension() {
                ParsedExtension::SubjectKeyIdentifier(k) => Some(k.0.to_vec()),
                _ => None,
            })
            .unwrap()
    };
    let (first_issuer, bundle) = mint_issuer("t0");
    assert_eq!(bundle.len(), 1);
    let ca_a = bundle[0].clone();
    assert_eq!(first_issuer, ski(&ca_a));

    // Prepared: two CAs in the bundle, SVIDs still from A.
    let bundle = wait_for(
        "a prepared CA in the bundle",
        Duration::from_secs(45),
        || {
            let b = pem_certs(&server.cli_ok(&["bundle", "show"]));
            (b.len() == 2).then_some(b)
        },
    );
    let ca_b = bundle.iter().find(|c| **c != ca_a).unwrap().clone();
    let (issuer, _) = mint_issuer("prepared");
    if issuer == ski(&ca_a) {
        // Expected: the prepared CA does not sign yet (unless activation already happened).
    } else {
        assert_eq!(issuer, ski(&ca_b));
    }

    // Activated: new SVIDs chain to B while A is still in the bundle.
    let (issuer, bundle) = wait_for(
        "activation of the prepared CA",
        Duration::from_secs(30),
        || {
            let (issuer, bundle) = mint_issuer("active");
            (issuer == ski(&ca_b)).then_some((issuer, bundle))
        },
    );
    assert_eq!(issuer, ski(&ca_b));
    let (_, a) = X509Certificate::from_der(&ca_a).unwrap();
    if now() < a.validity().not_after.timestamp() - 1 {
        assert!(bundle.contains(&ca_a), "old CA kept until it expires");
    }
    // After A's NotAfter it is pruned.
    wait_for(
        "the expired CA to leave the bundle",
        Duration::from_secs(30),
        || {
            let b = pem_certs(&server.cli_ok(&["bundle", "show"]));
            (!b.contains(&ca_a) && b.contains(&ca_b)).then_some(())
        },
    );
}

#[test]
fn bad_config_exits_64_before_anything_starts() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("api.sock");
    let cases = [
        (
            "server {\n  trust_domain = \"example.org\"\n  data_dir = \"/tmp/x\"\n  colour = \"blue\"\n}\nplugins {\n DataStore \"sql\" {}\n KeyManager \"memory\" {}\n NodeAttestor \"join_token\" {}\n}\n",
            ":4:",
            "colour",
        ),
        (
            "server {\n  data_dir = \"/tmp/x\"\n}\nplugins {\n DataStore \"sql\" {}\n KeyManager \"memory\" {}\n NodeAttestor \"join_token\" {}\n}\n",
            "",
            "trust_domain",
        ),
        (
            "server {\n  trust_domain = \"example.org\"\n  data_dir = \"/tmp/x\"\n  ca_ttl = \"forever\"\n}\nplugins {\n DataStore \"sql\" {}\n KeyManager \"memory\" {}\n NodeAttestor \"join_token\" {}\n}\n",
            ":4:",
            "ca_ttl",
        ),
        (
            "server {\n  trust_domain = \"example.org\"\n  data_dir = \"/tmp/x\"\n}\nplugins {\n DataStore \"sql\" {}\n KeyManager \"vault\" {}\n NodeAttestor \"join_token\" {}\n}\n",
            ":7:",
            "vault",
        ),
        (
            "server {\n  trust_domain = \"example.org\"\n  data_dir = \"/tmp/x\"\n  bind_port = \"80x\"\n}\nplugins {\n DataStore \"sql\" {}\n KeyManager \"memory\" {}\n NodeAttestor \"join_token\" {}\n}\n",
            ":4:",
            "bind_port",
        ),
        (
            "server {\n  trust_domain = \"example.org\"\n  data_dir = \"/tmp/x\"\n",
            "",
            "server.conf",
        ),
        // A key type SPIRE does not have either: refused before anything starts, not when
        // the CA first generates a key.
        (
            "server {\n  trust_domain = \"example.org\"\n  data_dir = \"/tmp/x\"\n  ca_key_type = \"rsa-3072\"\n}\nplugins {\n DataStore \"sql\" {}\n KeyManager \"memory\" {}\n NodeAttestor \"join_token\" {}\n}\n",
            ":4:",
            "ca_key_type",
        ),
    ];
    for (i, (text, line, key)) in cases.iter().enumerate() {
        let conf = dir.path().join("server.conf");
        std::fs::write(
            &conf,
            text.replace("/tmp/x", &dir.path().join("data").display().to_string()),
        )
        .unwrap();
        for cmd in ["run", "validate"] {
            let mut c = Command::new(server_bin());
            c.args([cmd, "-config", conf.to_str().unwrap()]);
            if cmd == "run" {
                c.args(["-socketPath", socket.to_str().unwrap()]);
            }
            let out = c.output().unwrap();
            assert_eq!(
                out.status.code(),
                Some(64),
                "case {i} {cmd}: {}",
                stderr(&out)
            );
            let err = stderr(&out);
            assert!(
                err.contains(key) && err.contains(line),
                "case {i} {cmd}: expected {key:?} and {line:?} in {err:?}"
            );
        }
        assert!(!socket.exists(), "case {i}: nothing started");
        assert!(
            !dir.path().join("data").exists(),
            "case {i}: nothing written"
        );
    }
    // The flag override is validated too.
    let conf = dir.path().join("server.conf");
    std::fs::write(&conf, cases[0].0.replace("  colour = \"blue\"\n", "")).unwrap();
    let out = Command::new(server_bin())
        .args([
            "run",
            "-config",
            conf.to_str().unwrap(),
            "-trustDomain",
            "Bad TD",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64), "{}", stderr(&out));
    assert!(stderr(&out).contains("trustDomain"), "{}", stderr(&out));
}

#[test]
fn json_logs_carry_no_secrets() {
    let mut server = Server::start(ServerOptions {
        extra_server: "log_format = \"json\"".into(),
        ..Default::default()
    });
    let token = server.join_token();
    let dir = server.dir.path().join("m");
    std::fs::create_dir(&dir).unwrap();
    server.cli_ok(&[
        "x509",
        "mint",
        "-spiffeID",
        SEED_SPIFFE_ID,
        "-write",
        dir.to_str().unwrap(),
    ]);
    let jwt = server.cli_ok(&["jwt", "mint", "-spiffeID", SEED_SPIFFE_ID, "-audience", "a"]);
    assert!(server.stop().success());
    let log = server.log();
    let lines: Vec<serde_json::Value> = log
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON log line ({e}): {l}"))
        })
        .collect();
    assert!(
        lines
            .iter()
            .any(|l| l["message"] == "X.509-SVID minted" && l["spiffe_id"] == SEED_SPIFFE_ID),
        "{log}"
    );
    assert!(
        lines
            .iter()
            .all(|l| l["level"].is_string() && l["timestamp"].is_string())
    );
    let key = std::fs::read_to_string(dir.join("key.pem")).unwrap();
    let key_body: String = key.lines().filter(|l| !l.starts_with("-----")).collect();
    for secret in [token.as_str(), jwt.trim(), &key_body[..40], "PRIVATE KEY"] {
        assert!(!log.contains(secret), "a secret reached the log");
    }
}
