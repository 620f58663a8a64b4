//! End-to-end tests of SPIRE's key types: `ca_key_type` and `jwt_key_type` `rsa-2048` /
//! `rsa-4096` on the real server, and the agent's `workload_x509_svid_key_type = "rsa-2048"`.
//! Certificates are checked with `openssl`, JWT-SVIDs with `jsonwebtoken` and PyJWT through the
//! OIDC discovery JWKS (RS256: what relying parties such as Microsoft Entra workload identity
//! federation require).

use std::path::Path;
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use sigil_testkit::python::python_json;
use sigil_testkit::verify::{openssl, openssl_verify};
use sigil_testkit::{
    Agent, Server, ServerOptions, free_port, multi_thread_rt, pem_certs, register_uid,
};

const AUDIENCE: &str = "api://AzureADTokenExchange";
const WORKLOAD_ID: &str = "spiffe://example.org/ns/payments/sa/checkout";

/// `openssl x509 -noout -text` of the first certificate in the PEM file `cert`.
fn x509_text(cert: &Path) -> String {
    let (ok, out) = openssl(&["x509", "-noout", "-text", "-in", cert.to_str().unwrap()]);
    assert!(ok, "{out}");
    out
}

/// The SubjectPublicKeyInfo PEM openssl derives from a certificate or from a private key.
fn public_key_of(path: &Path, is_key: bool) -> String {
    let path = path.to_str().unwrap();
    let (ok, out) = if is_key {
        openssl(&["pkey", "-in", path, "-pubout"])
    } else {
        openssl(&["x509", "-in", path, "-noout", "-pubkey"])
    };
    assert!(ok, "{out}");
    out
}

/// A plain HTTP/1.1 GET of `http://127.0.0.1:<port><path>`; returns the body of a 200.
fn http_get(port: u16, path: &str) -> String {
    use std::io::{Read as _, Write as _};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut reply = String::new();
    s.read_to_string(&mut reply).unwrap();
    let (head, body) = reply.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    body.to_owned()
}

/// `ca_key_type = "rsa-2048"` (and so RSA JWT keys, `jwt_key_type` defaulting to it, as in
/// SPIRE) with an agent minting `rsa-2048` workload keys: the CA, the workload's X509-SVID and
/// its key are RSA and verify with openssl; the JWT-SVID is RS256 and validates with
/// jsonwebtoken and with PyJWT knowing only the discovery URL; the SPIFFE bundle carries the
/// RSA JWT key.
#[test]
fn rsa_ca_rs256_jwt_svids_and_rsa_workload_keys() {
    let port = free_port();
    let issuer = format!("http://127.0.0.1:{port}");
    let server = Server::start(ServerOptions {
        extra_server: format!("ca_key_type = \"rsa-2048\"\n  jwt_issuer = \"{issuer}\""),
        extra_top: format!(
            "oidc_discovery {{\n  bind_address = \"127.0.0.1\"\n  bind_port = {port}\n  domains = [\"127.0.0.1\"]\n}}\n"
        ),
        ..ServerOptions::default()
    });
    let work = tempfile::tempdir().unwrap();

    // The CA: an RSA key, self-signed with sha256WithRSAEncryption.
    let bundle = work.path().join("bundle.pem");
    std::fs::write(&bundle, server.cli_ok(&["bundle", "show"])).unwrap();
    let ca_text = x509_text(&bundle);
    assert!(
        ca_text.contains("Public Key Algorithm: rsaEncryption"),
        "{ca_text}"
    );
    assert!(ca_text.contains("Public-Key: (2048 bit)"), "{ca_text}");
    assert!(ca_text.contains("sha256WithRSAEncryption"), "{ca_text}");

    // An agent with RSA workload keys.
    let token = server.join_token();
    let mut agent = Agent::configure(&server);
    agent.configure_agent_block("workload_x509_svid_key_type = \"rsa-2048\"");
    agent.spawn(Some(&token));
    let agent_id = server.join_token_agent_id(&token);
    register_uid(
        &server,
        WORKLOAD_ID,
        &agent_id,
        nix::unistd::geteuid().as_raw(),
        &[],
    );
    let fetched = work.path().join("fetched");
    agent.fetch_x509_svid_files(&fetched);
    let svid = fetched.join("svid.0.pem");
    let key = fetched.join("svid.0.key");
    let leaf_text = x509_text(&svid);
    assert!(
        leaf_text.contains("Public Key Algorithm: rsaEncryption"),
        "{leaf_text}"
    );
    assert!(leaf_text.contains("Public-Key: (2048 bit)"), "{leaf_text}");
    assert!(leaf_text.contains(WORKLOAD_ID), "{leaf_text}");
    assert_eq!(
        public_key_of(&svid, false),
        public_key_of(&key, true),
        "the private key is the certificate's"
    );
    let (ok, out) = openssl(&["rsa", "-check", "-noout", "-in", key.to_str().unwrap()]);
    assert!(ok && out.contains("RSA key ok"), "{out}");
    let (ok, out) = openssl_verify(&bundle, &svid, &["-purpose", "sslclient"]);
    assert!(ok, "{out}");
    // And the check can fail: another server's CA does not verify it.
    let other = Server::start(ServerOptions::default());
    let other_bundle = work.path().join("other.pem");
    std::fs::write(&other_bundle, other.cli_ok(&["bundle", "show"])).unwrap();
    assert!(!openssl_verify(&other_bundle, &svid, &[]).0);

    // JWT-SVID: RS256, validated by jsonwebtoken with the OIDC JWKS...
    let token = agent.fetch_jwt_svid(&multi_thread_rt(), AUDIENCE);
    let header = jsonwebtoken::decode_header(&token).unwrap();
    assert_eq!(header.alg, Algorithm::RS256);
    let jwks_text = http_get(port, "/keys");
    let jwks: serde_json::Value = serde_json::from_str(&jwks_text).unwrap();
    let jwk = &jwks["keys"][0];
    assert_eq!(jwk["kty"], "RSA", "{jwks}");
    assert_eq!(jwk["alg"], "RS256", "{jwks}");
    assert_eq!(jwk["e"], "AQAB", "{jwks}");
    let set: JwkSet = serde_json::from_str(&jwks_text).unwrap();
    let kid = header.kid.unwrap();
    let decoding = DecodingKey::from_jwk(set.find(&kid).unwrap()).unwrap();
    let mut validation = Validation::new(Algorithm::RS256);
    validation.set_audience(&[AUDIENCE]);
    validation.set_issuer(&[&issuer]);
    let data = jsonwebtoken::decode::<serde_json::Value>(&token, &decoding, &validation).unwrap();
    assert_eq!(data.claims["sub"], WORKLOAD_ID);
    // And the check can fail: another audience is refused.
    validation.set_audience(&["someone-else"]);
    assert!(jsonwebtoken::decode::<serde_json::Value>(&token, &decoding, &validation).is_err());

    // ...and by PyJWT knowing only the discovery URL.
    let doc: serde_json::Value =
        serde_json::from_str(&http_get(port, "/.well-known/openid-configuration")).unwrap();
    assert_eq!(
        doc["id_token_signing_alg_values_supported"],
        serde_json::json!(["RS256"])
    );
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/py/oidc_validate.py");
    let discovery = format!("{issuer}/.well-known/openid-configuration");
    let py = python_json("PyJWT validation", &[script, &discovery, AUDIENCE, &token]);
    assert_eq!(py["sub"], WORKLOAD_ID, "{py}");
    assert_eq!(py["kid"], kid.as_str(), "{py}");
    assert_eq!(py["wrong_audience"], "InvalidAudienceError", "{py}");

    // The SPIFFE bundle (what federation serves) carries the same RSA JWT key.
    let spiffe: serde_json::Value =
        serde_json::from_str(&server.cli_ok(&["bundle", "show", "-format", "spiffe"])).unwrap();
    let jwt_keys: Vec<&serde_json::Value> = spiffe["keys"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|k| k["use"] == "jwt-svid")
        .collect();
    assert_eq!(jwt_keys.len(), 1, "{spiffe}");
    assert_eq!(jwt_keys[0]["kty"], "RSA");
    assert_eq!(jwt_keys[0]["n"], jwk["n"]);
    assert_eq!(jwt_keys[0]["kid"], kid.as_str());
}

/// `ca_key_type = "rsa-4096"` with `jwt_key_type = "ec-p384"`: each key of its own type, the
/// 4096-bit CA generated at start-up within the server's start timeout.
#[test]
fn rsa_4096_ca_with_an_ec_jwt_key() {
    let started = Instant::now();
    let server = Server::start(ServerOptions {
        extra_server: "ca_key_type = \"rsa-4096\"\n  jwt_key_type = \"ec-p384\"".into(),
        ..ServerOptions::default()
    });
    eprintln!(
        "server with an rsa-4096 CA ready in {:?}",
        started.elapsed()
    );
    let work = tempfile::tempdir().unwrap();
    let bundle = work.path().join("bundle.pem");
    std::fs::write(&bundle, server.cli_ok(&["bundle", "show"])).unwrap();
    assert!(x509_text(&bundle).contains("Public-Key: (4096 bit)"));
    server.cli_ok(&[
        "x509",
        "mint",
        "-spiffeID",
        "spiffe://example.org/minted",
        "-write",
        work.path().to_str().unwrap(),
    ]);
    let svid = work.path().join("svid.pem");
    assert_eq!(pem_certs(&std::fs::read_to_string(&svid).unwrap()).len(), 1);
    let (ok, out) = openssl_verify(&bundle, &svid, &[]);
    assert!(ok, "{out}");

    let jwt = server.cli_ok(&[
        "jwt",
        "mint",
        "-spiffeID",
        "spiffe://example.org/minted",
        "-audience",
        "a",
    ]);
    let header = jsonwebtoken::decode_header(jwt.trim()).unwrap();
    assert_eq!(header.alg, Algorithm::ES384);
}
