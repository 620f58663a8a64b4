//! End-to-end: operator-driven rotation with `sigil-server localauthority` against the real
//! binaries. A server (with OIDC discovery on), one agent, two identities for this uid:
//! prepare -> activate -> taint the old authority -> every workload SVID (and the agent's own)
//! is re-minted by the new one within 10 s; revoke -> the old authority is gone from
//! `bundle show`, the Workload API bundle, OIDC `/keys` and the federation bundle endpoint.
//! Refusals exit non-zero, say why, and change nothing.

use std::time::Duration;

use base64::Engine as _;
use sigil_testkit::{
    Agent, Server, ServerOptions, attested_agent, free_port, http_get, pem_certs, register_uid,
    wait_for,
};
use x509_parser::extensions::ParsedExtension;
use x509_parser::prelude::{FromDer, X509Certificate};

const IDS: [&str; 2] = [
    "spiffe://example.org/ns/payments/sa/checkout-service",
    "spiffe://example.org/ns/payments/sa/payment-processor",
];
const AUDIENCE: &str = "payments-api";
/// The brief's target: affected SVIDs replaced within 10 s of `taint`.
const TAINT_DEADLINE: Duration = Duration::from_secs(10);

/// The server, its agent, the OIDC discovery port and the federation bundle endpoint port.
fn setup() -> (Server, Agent, u16, u16) {
    let port = free_port();
    let federation_port = free_port();
    let server = Server::start(ServerOptions {
        extra_top: format!(
            "oidc_discovery {{\n  bind_address = \"127.0.0.1\"\n  bind_port = {port}\n  domains = [\"127.0.0.1\"]\n}}\n"
        ),
        extra_server: format!(
            "federation {{\n bundle_endpoint {{\n address = \"127.0.0.1\"\n port = {federation_port}\n profile \"https_spiffe\" {{}}\n }}\n}}\n"
        ),
        ..ServerOptions::default()
    });
    let (agent, agent_id) = attested_agent(&server, false);
    let uid = nix::unistd::geteuid().as_raw();
    for id in IDS {
        register_uid(&server, id, &agent_id, uid, &[]);
    }
    (server, agent, port, federation_port)
}

/// (active, prepared, old) authority IDs from `localauthority <kind> show -output json`.
fn show(server: &Server, kind: &str) -> serde_json::Value {
    server.cli_json(&["localauthority", kind, "show"])
}

fn active_id(server: &Server, kind: &str) -> String {
    show(server, kind)["active"]["authority_id"]
        .as_str()
        .expect("active authority")
        .to_owned()
}

fn hex_key_id(der: &[u8], subject: bool) -> Option<String> {
    let (_, cert) = X509Certificate::from_der(der).ok()?;
    cert.extensions()
        .iter()
        .find_map(|e| match e.parsed_extension() {
            ParsedExtension::SubjectKeyIdentifier(k) if subject => Some(hex(k.0)),
            ParsedExtension::AuthorityKeyIdentifier(a) if !subject => {
                a.key_identifier.as_ref().map(|k| hex(k.0))
            }
            _ => None,
        })
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The issuer (AKI hex) of each SVID leaf the workload gets, and the bundle it gets.
fn workload_view(agent: &Agent) -> Option<(Vec<String>, Vec<Vec<u8>>)> {
    let dir = agent.write_x509().ok()?;
    let mut issuers = Vec::new();
    for i in 0.. {
        let Ok(pem) = std::fs::read_to_string(dir.path().join(format!("svid.{i}.pem"))) else {
            break;
        };
        issuers.push(hex_key_id(&pem_certs(&pem)[0], false)?);
    }
    let bundle = pem_certs(&std::fs::read_to_string(dir.path().join("bundle.0.pem")).ok()?);
    (issuers.len() == IDS.len()).then_some((issuers, bundle))
}

/// The `kid` of each JWT-SVID the workload gets for [`AUDIENCE`].
fn jwt_kids(agent: &Agent) -> Option<Vec<String>> {
    let out = agent.cli(&[
        "api",
        "fetch",
        "jwt",
        "-audience",
        AUDIENCE,
        "-output",
        "json",
    ]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    // SPIRE's shape: the JWT-SVID response, then the JWT bundles response.
    let kids: Vec<String> = v[0]["svids"]
        .as_array()?
        .iter()
        .filter_map(|s| {
            let header = s["svid"].as_str()?.split('.').next()?;
            let header = base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(header)
                .ok()?;
            let header: serde_json::Value = serde_json::from_slice(&header).ok()?;
            header["kid"].as_str().map(str::to_owned)
        })
        .collect();
    (kids.len() == IDS.len()).then_some(kids)
}

fn oidc_kids(port: u16) -> Vec<String> {
    let (status, body) = http_get(port, "/keys").expect("OIDC /keys answers");
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).expect("JWKS");
    v["keys"]
        .as_array()
        .expect("keys")
        .iter()
        .map(|k| k["kid"].as_str().unwrap_or_default().to_owned())
        .collect()
}

/// What the federation bundle endpoint publishes: the X.509 authorities' SKIs (hex) and the
/// JWT key IDs. Fetched without TLS verification: the federation tests check the endpoint's
/// authentication; here only its content matters.
fn federation_view(port: u16) -> (Vec<String>, Vec<String>) {
    let out = std::process::Command::new("curl")
        .args(["-skf", &format!("https://127.0.0.1:{port}/")])
        .output()
        .expect("curl");
    assert!(out.status.success(), "bundle endpoint: {out:?}");
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).expect("SPIFFE bundle");
    let keys = doc["keys"].as_array().expect("keys");
    let x509 = keys
        .iter()
        .filter(|k| k["use"] == "x509-svid")
        .filter_map(|k| {
            let der = base64::engine::general_purpose::STANDARD
                .decode(k["x5c"][0].as_str()?)
                .ok()?;
            hex_key_id(&der, true)
        })
        .collect();
    let jwt = keys
        .iter()
        .filter(|k| k["use"] == "jwt-svid")
        .filter_map(|k| Some(k["kid"].as_str()?.to_owned()))
        .collect();
    (x509, jwt)
}

/// A refused command: non-zero exit, the message on stderr, and no change to `show`.
fn refused(server: &Server, args: &[&str], message: &str) {
    let kind = args[1];
    let before = show(server, kind);
    let out = server.cli(args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{args:?} succeeded");
    assert!(stderr.contains(message), "{args:?}: {stderr}");
    assert_eq!(show(server, kind), before, "{args:?} changed something");
}

fn prepare_and_activate(server: &Server, kind: &str) -> (String, String) {
    let old = active_id(server, kind);
    let prepared = server.cli_json(&["localauthority", kind, "prepare"]);
    let new = prepared["prepared_authority"]["authority_id"]
        .as_str()
        .expect("prepared id")
        .to_owned();
    assert_ne!(new, old);
    let text = server.cli_ok(&["localauthority", kind, "show"]);
    assert!(text.contains(&format!("  Authority ID: {new}")), "{text}");
    server.cli_ok(&["localauthority", kind, "activate", "-authorityID", &new]);
    assert_eq!(active_id(server, kind), new);
    (old, new)
}

#[test]
fn x509_taint_forces_reminting_and_revoke_removes_the_authority() {
    let (server, agent, _port, federation_port) = setup();
    let first = active_id(&server, "x509");
    let (issuers, _) = wait_for("both SVIDs", Duration::from_secs(20), || {
        workload_view(&agent)
    });
    assert!(
        issuers.iter().all(|i| *i == first),
        "{issuers:?} vs {first}"
    );

    refused(
        &server,
        &["localauthority", "x509", "activate", "-authorityID", &first],
        "no prepared X.509 authority found",
    );
    refused(
        &server,
        &["localauthority", "x509", "taint", "-authorityID", &first],
        "unable to taint current local authority",
    );
    refused(
        &server,
        &["localauthority", "x509", "taint", "-authorityID", "00aa"],
        "no X.509 authority found",
    );

    let (old, new) = prepare_and_activate(&server, "x509");
    // Activation alone re-mints nothing early: SVIDs still come from the old authority.
    let (issuers, _) = workload_view(&agent).expect("SVIDs");
    assert!(issuers.iter().all(|i| *i == old), "{issuers:?}");
    refused(
        &server,
        &["localauthority", "x509", "revoke", "-authorityID", &old],
        "not possible to revoke an untainted authority",
    );

    let renewals_before = agent.log().matches("agent SVID renewed").count();
    let text = server.cli_ok(&["localauthority", "x509", "taint", "-authorityID", &old]);
    assert!(text.starts_with("Tainted X.509 authority:"), "{text}");
    let (issuers, bundle) = wait_for(
        "every SVID re-minted by the new authority",
        TAINT_DEADLINE,
        || workload_view(&agent).filter(|(i, _)| i.iter().all(|i| *i == new)),
    );
    assert_eq!(issuers.len(), 2);
    // Tainted, not revoked: still trusted.
    assert!(
        bundle
            .iter()
            .any(|c| hex_key_id(c, true).as_deref() == Some(old.as_str()))
    );
    assert!(
        federation_view(federation_port).0.contains(&old),
        "a tainted CA is still published to federated trust domains"
    );
    // The agent's own SVID too (observable in its log).
    wait_for("agent SVID renewed", TAINT_DEADLINE, || {
        (agent.log().matches("agent SVID renewed").count() > renewals_before).then_some(())
    });
    refused(
        &server,
        &["localauthority", "x509", "taint", "-authorityID", &old],
        "already tainted",
    );

    server.cli_ok(&["localauthority", "x509", "revoke", "-authorityID", &old]);
    let in_bundle_show = |server: &Server| {
        pem_certs(&server.cli_ok(&["bundle", "show"]))
            .iter()
            .any(|c| hex_key_id(c, true).as_deref() == Some(old.as_str()))
    };
    assert!(
        !in_bundle_show(&server),
        "revoked CA still in `bundle show`"
    );
    wait_for(
        "revoked CA gone from the Workload API bundle",
        TAINT_DEADLINE,
        || {
            workload_view(&agent).filter(|(_, b)| {
                !b.iter()
                    .any(|c| hex_key_id(c, true).as_deref() == Some(old.as_str()))
            })
        },
    );
    wait_for(
        "revoked CA gone from the federation bundle endpoint",
        TAINT_DEADLINE,
        || {
            let (x509, _) = federation_view(federation_port);
            (!x509.contains(&old) && x509.contains(&new)).then_some(())
        },
    );
    let shown = show(&server, "x509");
    assert!(!shown.to_string().contains(&old), "{shown}");
}

#[test]
fn jwt_taint_switches_tokens_and_revoke_removes_the_key() {
    let (server, agent, port, federation_port) = setup();
    let first = active_id(&server, "jwt");
    let kids = wait_for("JWT-SVIDs", Duration::from_secs(20), || jwt_kids(&agent));
    assert!(kids.iter().all(|k| *k == first), "{kids:?}");

    refused(
        &server,
        &["localauthority", "jwt", "revoke", "-authorityID", &first],
        "unable to revoke current local authority",
    );
    refused(
        &server,
        &[
            "localauthority",
            "jwt",
            "taint",
            "-authorityID",
            "no-such-kid",
        ],
        "no JWT authority found",
    );

    let (old, new) = prepare_and_activate(&server, "jwt");
    assert!(
        oidc_kids(port).contains(&new),
        "new key published before use"
    );
    // Cached tokens from the old key are still handed out until it is tainted.
    server.cli_ok(&["localauthority", "jwt", "taint", "-authorityID", &old]);
    let kids = wait_for("JWT-SVIDs from the new key", TAINT_DEADLINE, || {
        jwt_kids(&agent).filter(|k| k.iter().all(|k| *k == new))
    });
    assert_eq!(kids.len(), 2);
    assert!(
        oidc_kids(port).contains(&old),
        "tainted key still validates"
    );
    assert!(federation_view(federation_port).1.contains(&old));

    server.cli_ok(&["localauthority", "jwt", "revoke", "-authorityID", &old]);
    let bundle = server.cli_ok(&["bundle", "show", "-format", "spiffe"]);
    assert!(!bundle.contains(&old), "{bundle}");
    assert!(bundle.contains(&new), "{bundle}");
    wait_for(
        "revoked key gone from the federation bundle endpoint",
        TAINT_DEADLINE,
        || {
            let (_, jwt) = federation_view(federation_port);
            (!jwt.contains(&old) && jwt.contains(&new)).then_some(())
        },
    );
    wait_for("revoked key gone from /keys", TAINT_DEADLINE, || {
        (!oidc_kids(port).contains(&old)).then_some(())
    });
    wait_for(
        "revoked key gone from the Workload API",
        TAINT_DEADLINE,
        || {
            let out = agent.cli(&["api", "fetch", "jwtbundle", "-output", "json"]);
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            (out.status.success() && !text.contains(&old) && text.contains(&new)).then_some(())
        },
    );
}

/// Authority IDs are base64url and may start with a dash (`-CDHN...`): as in Go's `flag`, the
/// argument after `-authorityID` is its value whatever it looks like, not another flag.
#[test]
fn an_authority_id_that_starts_with_a_dash_is_a_value() {
    let server = Server::start(ServerOptions::default());
    for kind in ["x509", "jwt"] {
        for action in ["activate", "taint", "revoke"] {
            let out = server.cli(&[
                "localauthority",
                kind,
                action,
                "-authorityID",
                "-CDHN-no-such",
            ]);
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(!out.status.success(), "{kind} {action}: {stderr}");
            // The server answers: either about this ID, or (activate, checked
            // first) that nothing is prepared; clap's parse error never.
            let answered_by_server =
                stderr.contains("-CDHN-no-such") || stderr.contains("no prepared");
            assert!(
                answered_by_server && !stderr.contains("unexpected argument"),
                "{kind} {action}: the ID reached the server as a value: {stderr}"
            );
        }
    }
}
