//! End-to-end tests of the built-in OIDC discovery endpoint: the real `sigil-server` and
//! `sigil-agent`, a workload fetching JWT-SVIDs over the Workload API, and relying parties that
//! know only the discovery URL (PyJWT's `PyJWKClient`, and `jsonwebtoken` with the fetched JWKS).

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{DecodingKey, Validation};
use sigil_testkit::python::python_json;
use sigil_testkit::{
    Agent, Server, ServerOptions, attested_agent, free_port, multi_thread_rt, register_uid,
};

const AUDIENCE: &str = "payments-api";
const WORKLOAD_ID: &str = "spiffe://example.org/ns/payments/sa/checkout-service";

struct Reply {
    status: u16,
    /// Lowercased names.
    headers: BTreeMap<String, String>,
    body: String,
}

/// A minimal HTTP/1.1 GET with a chosen `Host` and extra headers.
fn get(port: u16, path: &str, host: &str, extra: &[(&str, &str)]) -> Reply {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut req = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n");
    for (k, v) in extra {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).unwrap();
    let mut buf = String::new();
    s.read_to_string(&mut buf).unwrap();
    let (head, body) = buf.split_once("\r\n\r\n").expect("HTTP response");
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .expect("status line");
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    Reply {
        status,
        headers,
        body: body.to_owned(),
    }
}

fn json(reply: &Reply) -> serde_json::Value {
    assert_eq!(reply.status, 200, "{}", reply.body);
    serde_json::from_str(&reply.body).expect("JSON body")
}

/// A server with `oidc_discovery` on plain HTTP at `port`, `jwt_issuer` naming that endpoint
/// (so tokens' `iss` matches the document), a join-token agent and an entry for this uid.
fn setup(options: ServerOptions) -> (Server, Agent, u16) {
    let port = free_port();
    let server = Server::start(ServerOptions {
        extra_server: format!("jwt_issuer = \"http://127.0.0.1:{port}\""),
        extra_top: format!(
            "oidc_discovery {{\n  bind_address = \"127.0.0.1\"\n  bind_port = {port}\n  domains = [\"127.0.0.1\", \"localhost\"]\n}}\n"
        ),
        ..options
    });
    let (agent, agent_id) = attested_agent(&server, false);
    register_uid(
        &server,
        WORKLOAD_ID,
        &agent_id,
        nix::unistd::geteuid().as_raw(),
        &[],
    );
    (server, agent, port)
}

/// A JWT-SVID for this process from the agent's Workload API, waiting for the entry to arrive.
fn fetch_jwt(rt: &tokio::runtime::Runtime, agent: &Agent) -> String {
    agent.fetch_jwt_svid(rt, AUDIENCE)
}

/// Validates `token` with `jsonwebtoken` against `jwks`, checking signature, audience, issuer
/// and expiry (no leeway). Returns (kid, sub).
fn validate(
    jwks: &str,
    token: &str,
    audience: &str,
    issuer: &str,
) -> Result<(String, String), String> {
    let header = jsonwebtoken::decode_header(token).map_err(|e| e.to_string())?;
    let kid = header.kid.ok_or("token has no kid")?;
    let set: JwkSet = serde_json::from_str(jwks).map_err(|e| e.to_string())?;
    let jwk = set
        .find(&kid)
        .ok_or_else(|| format!("kid {kid} not in the JWKS"))?;
    let key = DecodingKey::from_jwk(jwk).map_err(|e| e.to_string())?;
    let mut validation = Validation::new(header.alg);
    validation.set_audience(&[audience]);
    validation.set_issuer(&[issuer]);
    validation.set_required_spec_claims(&["exp", "aud", "iss", "sub"]);
    validation.leeway = 0;
    let data = jsonwebtoken::decode::<serde_json::Value>(token, &key, &validation)
        .map_err(|e| format!("kid {kid}: {e}"))?;
    let sub = data.claims["sub"].as_str().unwrap_or_default().to_owned();
    Ok((kid, sub))
}

fn pyjwt(discovery_url: &str, token: &str) -> serde_json::Value {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/py/oidc_validate.py");
    python_json(
        "PyJWT validation",
        &[script, discovery_url, AUDIENCE, token],
    )
}

fn max_age(reply: &Reply) -> u64 {
    reply.headers["cache-control"]
        .split(',')
        .find_map(|d| d.trim().strip_prefix("max-age="))
        .and_then(|v| v.parse().ok())
        .expect("max-age")
}

#[test]
fn discovery_document_and_jwks_validate_a_workload_jwt_svid() {
    let (_server, agent, port) = setup(ServerOptions::default());
    let host = format!("127.0.0.1:{port}");
    let issuer = format!("http://127.0.0.1:{port}");
    let discovery_url = format!("{issuer}/.well-known/openid-configuration");

    let reply = get(port, "/.well-known/openid-configuration", &host, &[]);
    let doc = json(&reply);
    assert_eq!(
        doc,
        serde_json::json!({
            "issuer": issuer,
            "jwks_uri": format!("{issuer}/keys"),
            "authorization_endpoint": "",
            "response_types_supported": ["id_token"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["ES256"],
        })
    );
    assert_eq!(reply.headers["content-type"], "application/json");
    // ca_ttl 24h: capped at 5 min.
    assert_eq!(reply.headers["cache-control"], "public, max-age=300");

    let keys = get(port, "/keys", &host, &[]);
    let jwks = json(&keys);
    let list = jwks["keys"].as_array().unwrap();
    assert_eq!(list.len(), 1, "{jwks}");
    let k = &list[0];
    assert_eq!(k["kty"], "EC");
    assert_eq!(k["crv"], "P-256");
    assert_eq!(k["alg"], "ES256");
    assert_eq!(k["use"], "sig");
    assert_eq!(k["x"].as_str().unwrap().len(), 43);
    assert_eq!(k["y"].as_str().unwrap().len(), 43);
    assert!(!k["kid"].as_str().unwrap().is_empty());

    // ETag / If-None-Match.
    let tag = keys.headers["etag"].clone();
    let again = get(port, "/keys", &host, &[("If-None-Match", &tag)]);
    assert_eq!(again.status, 304);
    assert!(again.body.is_empty());
    assert_eq!(again.headers["etag"], tag);
    let other = get(
        port,
        "/keys",
        &host,
        &[("If-None-Match", "\"something-else\"")],
    );
    assert_eq!(other.status, 200);
    assert_eq!(
        other.body, keys.body,
        "the same bundle gives the same bytes"
    );
    let doc_tag = reply.headers["etag"].clone();
    assert_ne!(doc_tag, tag);
    let doc_again = get(
        port,
        "/.well-known/openid-configuration",
        &host,
        &[("If-None-Match", &doc_tag)],
    );
    assert_eq!(doc_again.status, 304);

    // Host filtering: only the listed domains are served.
    for path in ["/.well-known/openid-configuration", "/keys"] {
        assert_eq!(get(port, path, "evil.example.org", &[]).status, 404);
        assert_eq!(
            get(port, path, &format!("localhost:{port}"), &[]).status,
            200
        );
    }

    // A JWT-SVID from the Workload API validates with the fetched JWKS...
    let rt = multi_thread_rt();
    let token = fetch_jwt(&rt, &agent);
    let (kid, sub) = validate(&keys.body, &token, AUDIENCE, &issuer).unwrap();
    assert_eq!(kid, k["kid"].as_str().unwrap());
    assert_eq!(sub, WORKLOAD_ID);
    assert!(validate(&keys.body, &token, "someone-else", &issuer).is_err());
    assert!(validate(&keys.body, &token, AUDIENCE, "https://other.example.org").is_err());

    // ...and with PyJWT knowing only the discovery URL.
    let py = pyjwt(&discovery_url, &token);
    assert_eq!(py["sub"], WORKLOAD_ID);
    assert_eq!(py["iss"], issuer);
    assert_eq!(py["kid"], kid);
    assert_eq!(py["wrong_audience"], "InvalidAudienceError");
}

/// ca_ttl 60 s: a JWT key is published 30 s into its predecessor's life and signs from 50 s, so
/// two rotations happen within ~90 s. Relying parties that cache the JWKS for exactly the
/// advertised max-age (and never refetch on an unknown kid), started at phases spread across one
/// max-age so one of them always fetched just before a key was published, validate every fresh
/// token.
#[test]
fn jwt_key_rotation_never_leaves_a_validation_gap() {
    const CACHES: u32 = 10;
    let (_server, agent, port) = setup(ServerOptions {
        ca_ttl: "60s".into(),
        x509_svid_ttl: "10s".into(),
        jwt_svid_ttl: "10s".into(),
        health: false,
        ..Default::default()
    });
    let host = format!("127.0.0.1:{port}");
    let issuer = format!("http://127.0.0.1:{port}");
    let rt = multi_thread_rt();

    // kid -> (first seen in a JWKS, first seen signing), as iteration numbers.
    let mut seen: BTreeMap<String, (Option<usize>, Option<usize>)> = BTreeMap::new();
    let fetch = |i: usize, seen: &mut BTreeMap<String, (Option<usize>, Option<usize>)>| {
        let reply = get(port, "/keys", &host, &[]);
        let jwks = json(&reply);
        for k in jwks["keys"].as_array().unwrap() {
            let kid = k["kid"].as_str().unwrap().to_owned();
            seen.entry(kid).or_default().0.get_or_insert(i);
        }
        let age = Duration::from_secs(max_age(&reply));
        (Instant::now(), age, reply.body)
    };
    let first = fetch(0, &mut seen);
    let advertised = first.1;
    assert!(
        advertised <= Duration::from_secs(10),
        "max-age {advertised:?} under the 20 s lead time"
    );
    let start = Instant::now();
    let mut caches: Vec<Option<(Instant, Duration, String)>> = vec![None; CACHES as usize];
    caches[0] = Some(first);
    let mut signing_kids: Vec<String> = Vec::new();
    let mut last_token = String::new();
    let deadline = start + Duration::from_secs(180);
    let mut i = 0;
    while signing_kids.len() < 3 {
        assert!(
            Instant::now() < deadline,
            "only {} signing keys seen: {seen:?}",
            signing_kids.len()
        );
        for (j, cache) in caches.iter_mut().enumerate() {
            let due = match cache {
                Some((at, age, _)) => at.elapsed() >= *age,
                None => start.elapsed() >= advertised * j as u32 / CACHES,
            };
            if due {
                *cache = Some(fetch(i, &mut seen));
            }
        }
        let token = fetch_jwt(&rt, &agent);
        let mut kid = String::new();
        for (j, (_, _, jwks)) in caches.iter().flatten().enumerate() {
            let (k, sub) = validate(jwks, &token, AUDIENCE, &issuer).unwrap_or_else(|e| {
                panic!("iteration {i}, cache {j}: a fresh token fails validation: {e}")
            });
            assert_eq!(sub, WORKLOAD_ID);
            kid = k;
        }
        seen.entry(kid.clone()).or_default().1.get_or_insert(i);
        if signing_kids.last() != Some(&kid) {
            signing_kids.push(kid);
        }
        last_token = token;
        i += 1;
        std::thread::sleep(Duration::from_millis(500));
    }
    // Each new key was in the JWKS before it signed anything.
    for kid in &signing_kids[1..] {
        let (published, signed) = seen[kid];
        assert!(
            published.unwrap() < signed.unwrap(),
            "{kid}: published at {published:?}, signed at {signed:?}"
        );
    }
    // PyJWT, knowing only the discovery URL, accepts a token from the third key.
    let py = pyjwt(
        &format!("{issuer}/.well-known/openid-configuration"),
        &last_token,
    );
    assert_eq!(py["kid"], signing_kids[2].as_str());
    assert_eq!(py["sub"], WORKLOAD_ID);
}

/// With `tls_cert_file`/`tls_key_file` the endpoint speaks HTTPS, and without `jwt_issuer` the
/// issuer is `https://<Host>`: a client trusting the certificate follows `jwks_uri` as given.
#[test]
fn https_with_cert_files_names_the_issuer_after_the_host() {
    let port = free_port();
    let tls_dir = tempfile::tempdir().unwrap();
    let (cert, key) =
        sigil_testkit::self_signed_serving_cert(tls_dir.path(), "localhost", "DNS:localhost");
    let _server = Server::start(ServerOptions {
        extra_top: format!(
            "oidc_discovery {{\n  bind_address = \"127.0.0.1\"\n  bind_port = {port}\n  domains = [\"localhost\"]\n  tls_cert_file = \"{}\"\n  tls_key_file = \"{}\"\n}}\n",
            cert.display(),
            key.display()
        ),
        ..Default::default()
    });
    let script = r#"
import json, ssl, sys, urllib.request
ctx = ssl.create_default_context(cafile=sys.argv[1])
def get(url):
    with urllib.request.urlopen(url, context=ctx, timeout=10) as r:
        return json.load(r)
doc = get(sys.argv[2])
keys = get(doc["jwks_uri"])
print(json.dumps({"issuer": doc["issuer"], "jwks_uri": doc["jwks_uri"], "keys": len(keys["keys"])}))
"#;
    let got = python_json(
        "the discovery document over HTTPS",
        &[
            "-c",
            script,
            cert.to_str().unwrap(),
            &format!("https://localhost:{port}/.well-known/openid-configuration"),
        ],
    );
    assert_eq!(got["issuer"], format!("https://localhost:{port}"));
    assert_eq!(got["jwks_uri"], format!("https://localhost:{port}/keys"));
    assert_eq!(got["keys"], 1);
}
