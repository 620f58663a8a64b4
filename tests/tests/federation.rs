//! End-to-end federation between two Sigil trust domains on loopback (a.test and b.test, each a
//! real server and agent): bundles exchanged with `bundle show -format spiffe` → `bundle set`,
//! entries with `-federatesWith`, and workloads that authenticate each other over mTLS using
//! only what the Workload API hands them.

use std::process::Command;
use std::time::Duration;

use sigil_testkit::federation::{exchange, federated_file, pem_count};
use sigil_testkit::python::python_json;
use sigil_testkit::{
    Agent, Server, ServerOptions, attested_agent, multi_thread_rt, python, register_uid, uid,
    wait_for,
};

fn server(td: &str) -> Server {
    Server::start(ServerOptions {
        trust_domain: td.into(),
        ..ServerOptions::default()
    })
}

/// Writes `svid.0.pem`, `svid.0.key`, `bundle.0.pem` and `federated_bundle.0.*.pem` into a new
/// temp dir, through the Workload API.
fn fetch_files(agent: &Agent) -> tempfile::TempDir {
    agent
        .write_x509()
        .unwrap_or_else(|e| panic!("fetch x509: {e}"))
}

/// A TLS server and client in one Python process: the server presents `server_dir`'s SVID and
/// requires a client certificate chained to `server_trust`; the client presents
/// `client_dir`'s SVID and verifies the server against `client_trust`. Prints each side's view
/// of the peer's URI SAN.
const MTLS: &str = r#"
import json, socket, ssl, sys, threading
sdir, strust, cdir, ctrust = sys.argv[1:5]
sctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
sctx.load_cert_chain(sdir + "/svid.0.pem", sdir + "/svid.0.key")
sctx.load_verify_locations(strust)
sctx.verify_mode = ssl.CERT_REQUIRED
cctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
cctx.check_hostname = False
cctx.load_cert_chain(cdir + "/svid.0.pem", cdir + "/svid.0.key")
cctx.load_verify_locations(ctrust)
lsock = socket.socket(); lsock.bind(("127.0.0.1", 0)); lsock.listen(1)
out = {}
def serve():
    conn, _ = lsock.accept()
    try:
        with sctx.wrap_socket(conn, server_side=True) as s:
            out["server_saw"] = [v for k, v in s.getpeercert()["subjectAltName"] if k == "URI"]
            s.sendall(b"ok")
    except Exception as e:
        out["server_error"] = str(e)
t = threading.Thread(target=serve); t.start()
try:
    with cctx.wrap_socket(socket.create_connection(lsock.getsockname())) as c:
        out["client_saw"] = [v for k, v in c.getpeercert()["subjectAltName"] if k == "URI"]
        out["reply"] = c.recv(2).decode()
except Exception as e:
    out["client_error"] = str(e)
t.join(10)
print(json.dumps(out))
"#;

fn mtls(
    server_dir: &str,
    server_trust: &str,
    client_dir: &str,
    client_trust: &str,
) -> serde_json::Value {
    python_json(
        "py-spiffe-tls mTLS",
        &[
            "-c",
            MTLS,
            server_dir,
            server_trust,
            client_dir,
            client_trust,
        ],
    )
}

#[test]
fn two_trust_domains_authenticate_each_other_with_workload_api_material() {
    let a = server("a.test");
    let b = server("b.test");
    exchange(&b, &a);
    exchange(&a, &b);

    let (agent_a, agent_a_id) = attested_agent(&a, false);
    let (agent_a2, agent_a2_id) = attested_agent(&a, false);
    let (agent_b, agent_b_id) = attested_agent(&b, false);
    register_uid(
        &a,
        "spiffe://a.test/checkout",
        &agent_a_id,
        uid(),
        &["-federatesWith", "spiffe://b.test"],
    );
    register_uid(&a, "spiffe://a.test/local-only", &agent_a2_id, uid(), &[]);
    register_uid(
        &b,
        "spiffe://b.test/payments",
        &agent_b_id,
        uid(),
        &["-federatesWith", "spiffe://a.test"],
    );

    // Each federating workload gets the other trust domain's bundle, pushed by its server.
    let dir_a = wait_for(
        "a.test workload with b.test's bundle",
        Duration::from_secs(30),
        || {
            let d = fetch_files(&agent_a);
            federated_file(&d).map(|_| d)
        },
    );
    let dir_b = wait_for(
        "b.test workload with a.test's bundle",
        Duration::from_secs(30),
        || {
            let d = fetch_files(&agent_b);
            federated_file(&d).map(|_| d)
        },
    );
    // The workload whose entry does not federate gets no foreign bundle.
    let dir_a2 = wait_for("the local-only SVID", Duration::from_secs(30), || {
        let d = fetch_files(&agent_a2);
        d.path().join("svid.0.pem").exists().then_some(d)
    });
    assert_eq!(federated_file(&dir_a2), None);

    let (pa, pb) = (
        dir_a.path().to_str().unwrap(),
        dir_b.path().to_str().unwrap(),
    );
    let fa = federated_file(&dir_a).unwrap();
    let fb = federated_file(&dir_b).unwrap();
    // B serves, A calls, each trusting only the federated bundle it was handed.
    let r = mtls(pb, &fb, pa, &fa);
    assert_eq!(
        r["server_saw"],
        serde_json::json!(["spiffe://a.test/checkout"]),
        "{r}"
    );
    assert_eq!(
        r["client_saw"],
        serde_json::json!(["spiffe://b.test/payments"]),
        "{r}"
    );
    assert_eq!(r["reply"], "ok");
    // A's own bundle does not vouch for B: the client refuses the server.
    let own_a = dir_a.path().join("bundle.0.pem");
    let r = mtls(pb, &fb, pa, own_a.to_str().unwrap());
    assert!(r.get("client_error").is_some(), "{r}");

    // JWT-SVIDs: A's federating workload validates B's token; the local-only one refuses it.
    multi_thread_rt().block_on(async {
        let cb = agent_b.workload_client().await;
        let token = cb.fetch_jwt_svid(["a-api"], None).await.unwrap();
        let ca = agent_a.workload_client().await;
        let validated = ca.validate_jwt_token("a-api", token.token()).await.unwrap();
        assert_eq!(
            validated.spiffe_id().to_string(),
            "spiffe://b.test/payments"
        );
        let bundles = ca.fetch_jwt_bundles().await.unwrap();
        assert!(
            bundles
                .get(&spiffe::TrustDomain::new("b.test").unwrap())
                .is_some()
        );
        let ca2 = agent_a2.workload_client().await;
        assert!(
            ca2.validate_jwt_token("a-api", token.token())
                .await
                .is_err()
        );
        let x509 = ca.fetch_x509_bundles().await.unwrap();
        assert!(
            x509.get(&spiffe::TrustDomain::new("b.test").unwrap())
                .is_some()
        );
    });

    // Deleting the bundle: restrict refuses while the entry federates; dissociate takes it off
    // the agent.
    let out = a.cli(&["bundle", "delete", "-id", "spiffe://b.test"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("federate with b.test"));
    let listed = a.cli_ok(&["bundle", "list", "-format", "spiffe"]);
    assert!(listed.contains("* spiffe://b.test"), "{listed}");
    a.cli_ok(&[
        "bundle",
        "delete",
        "-id",
        "spiffe://b.test",
        "-mode",
        "dissociate",
    ]);
    assert_eq!(a.cli_ok(&["bundle", "list"]), "");
    wait_for(
        "b.test's bundle gone from the workload",
        Duration::from_secs(30),
        || {
            federated_file(&fetch_files(&agent_a))
                .is_none()
                .then_some(())
        },
    );
}

#[test]
fn bundle_set_list_delete_errors() {
    let a = server("a.test");
    let own = a.cli_ok(&["bundle", "show", "-format", "spiffe"]);
    let path = a.dir.path().join("own.json");
    std::fs::write(&path, &own).unwrap();
    let p = path.to_str().unwrap();
    let fails = |args: &[&str], want: &str| {
        let out = a.cli(args);
        let err = String::from_utf8_lossy(&out.stderr).to_string();
        assert!(!out.status.success(), "{args:?} must fail");
        assert!(err.contains(want), "{args:?}: {err}");
    };
    fails(
        &[
            "bundle",
            "set",
            "-id",
            "spiffe://a.test",
            "-path",
            p,
            "-format",
            "spiffe",
        ],
        "own trust domain",
    );
    fails(
        &[
            "bundle",
            "set",
            "-id",
            "spiffe://o.test/x",
            "-path",
            p,
            "-format",
            "spiffe",
        ],
        "invalid -id",
    );
    let junk = a.dir.path().join("junk");
    std::fs::write(&junk, "garbage").unwrap();
    fails(
        &[
            "bundle",
            "set",
            "-id",
            "spiffe://o.test",
            "-path",
            junk.to_str().unwrap(),
        ],
        "X.509 authority",
    );
    fails(
        &[
            "bundle",
            "set",
            "-id",
            "spiffe://o.test",
            "-path",
            junk.to_str().unwrap(),
            "-format",
            "spiffe",
        ],
        "invalid SPIFFE bundle",
    );
    fails(
        &["bundle", "delete", "-id", "spiffe://o.test"],
        "no federated bundle",
    );
    fails(
        &["bundle", "list", "-id", "spiffe://o.test"],
        "no federated bundle",
    );
    assert_eq!(a.cli_ok(&["bundle", "count"]).trim(), "1 bundle");

    // PEM from standard input (no -path), then list and count.
    let pem = a.cli_ok(&["bundle", "show"]);
    let mut child = Command::new(sigil_testkit::server_bin())
        .args(["bundle", "set", "-id", "spiffe://o.test", "-socketPath"])
        .arg(&a.socket)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(pem.as_bytes())
            .unwrap();
    }
    assert!(child.wait_with_output().unwrap().status.success());
    assert_eq!(a.cli_ok(&["bundle", "list", "-id", "spiffe://o.test"]), pem);
    assert_eq!(a.cli_ok(&["bundle", "count"]).trim(), "2 bundles");
    // Our own bundle is untouched by all this.
    assert_eq!(a.cli_ok(&["bundle", "show", "-format", "spiffe"]), own);
}

/// Fetches `https://127.0.0.1:<port>/` trusting `cafile`; with `spiffe` the hostname is not
/// checked (an SVID names a SPIFFE ID, not a host) and the peer's URI SAN is returned.
const FETCH: &str = r#"
import json, socket, ssl, sys
port, cafile, spiffe = int(sys.argv[1]), sys.argv[2], sys.argv[3] == "1"
ctx = ssl.create_default_context(cafile=cafile)
if spiffe:
    ctx.check_hostname = False
with ctx.wrap_socket(socket.create_connection(("127.0.0.1", port)), server_hostname="127.0.0.1") as s:
    uris = [v for k, v in s.getpeercert().get("subjectAltName", ()) if k == "URI"]
    s.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
    data = b""
    while True:
        chunk = s.recv(65536)
        if not chunk:
            break
        data += chunk
head, body = data.split(b"\r\n\r\n", 1)
print(json.dumps({"status": head.split(b" ")[1].decode(), "uris": uris, "body": json.loads(body)}))
"#;

fn fetch_endpoint(port: u16, cafile: &str, spiffe: bool) -> Result<serde_json::Value, String> {
    let out = Command::new(python())
        .args([
            "-c",
            FETCH,
            &port.to_string(),
            cafile,
            if spiffe { "1" } else { "0" },
        ])
        .output()
        .expect("python");
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    Ok(serde_json::from_slice(&out.stdout).unwrap())
}

fn x5c(doc: &serde_json::Value) -> Vec<String> {
    doc["keys"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|k| k["use"] == "x509-svid")
        .map(|k| k["x5c"][0].as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn bundle_endpoint_https_spiffe_serves_the_bundle_and_follows_rotation() {
    let port = sigil_testkit::free_port();
    // ca_ttl 60 s: the next CA joins the bundle 30 s in.
    let a = Server::start(ServerOptions {
        trust_domain: "a.test".into(),
        ca_ttl: "60s".into(),
        x509_svid_ttl: "20s".into(),
        jwt_svid_ttl: "20s".into(),
        extra_server: format!(
            "federation {{\n bundle_endpoint {{\n address = \"127.0.0.1\"\n port = {port}\n refresh_hint = \"1m\"\n profile \"https_spiffe\" {{}}\n }}\n}}\n"
        ),
        ..ServerOptions::default()
    });
    let pem = a.cli_ok(&["bundle", "show"]);
    let cafile = a.dir.path().join("bundle.pem");
    std::fs::write(&cafile, &pem).unwrap();
    let cafile = cafile.to_str().unwrap().to_owned();
    let served = wait_for("the bundle endpoint", Duration::from_secs(10), || {
        fetch_endpoint(port, &cafile, true).ok()
    });
    assert_eq!(served["status"], "200");
    assert_eq!(
        served["uris"],
        serde_json::json!(["spiffe://a.test/spire/server"])
    );
    assert_eq!(served["body"]["spiffe_refresh_hint"], 60);
    let shown: serde_json::Value =
        serde_json::from_str(&a.cli_ok(&["bundle", "show", "-format", "spiffe"])).unwrap();
    assert_eq!(x5c(&served["body"]), x5c(&shown));
    assert_eq!(served["body"]["spiffe_sequence"], shown["spiffe_sequence"]);
    let first_sequence = served["body"]["spiffe_sequence"].as_u64().unwrap();

    // Another trust domain's bundle does not vouch for the endpoint.
    let other = server("b.test");
    let other_ca = other.dir.path().join("bundle.pem");
    std::fs::write(&other_ca, other.cli_ok(&["bundle", "show"])).unwrap();
    assert!(fetch_endpoint(port, other_ca.to_str().unwrap(), true).is_err());

    // A CA rotation is served without restart, with a higher sequence.
    let rotated = wait_for(
        "a second authority on the endpoint",
        Duration::from_secs(60),
        || {
            let doc = fetch_endpoint(port, &cafile, true).ok()?;
            (x5c(&doc["body"]).len() > 1).then_some(doc)
        },
    );
    assert!(rotated["body"]["spiffe_sequence"].as_u64().unwrap() > first_sequence);
}

#[test]
fn bundle_endpoint_https_web_uses_the_serving_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) =
        sigil_testkit::self_signed_serving_cert(dir.path(), "127.0.0.1", "IP:127.0.0.1");
    let port = sigil_testkit::free_port();
    let a = Server::start(ServerOptions {
        trust_domain: "a.test".into(),
        extra_server: format!(
            "federation {{\n bundle_endpoint {{\n address = \"127.0.0.1\"\n port = {port}\n profile \"https_web\" {{\n serving_cert_file {{\n cert_file_path = \"{}\"\n key_file_path = \"{}\"\n }}\n }}\n }}\n}}\n",
            cert.display(),
            key.display()
        ),
        ..ServerOptions::default()
    });
    // Hostname checked against the Web PKI certificate.
    let served = wait_for("the bundle endpoint", Duration::from_secs(10), || {
        fetch_endpoint(port, cert.to_str().unwrap(), false).ok()
    });
    assert_eq!(served["status"], "200");
    assert_eq!(served["body"]["spiffe_refresh_hint"], 300);
    let shown: serde_json::Value =
        serde_json::from_str(&a.cli_ok(&["bundle", "show", "-format", "spiffe"])).unwrap();
    assert_eq!(x5c(&served["body"]), x5c(&shown));
}

fn federation_block(endpoint_port: u16, other: &str, other_port: u16) -> String {
    format!(
        "federation {{\n bundle_endpoint {{\n address = \"127.0.0.1\"\n port = {endpoint_port}\n refresh_hint = \"5s\"\n }}\n \
         federates_with \"{other}\" {{\n bundle_endpoint_url = \"https://127.0.0.1:{other_port}\"\n \
         bundle_endpoint_profile \"https_spiffe\" {{\n endpoint_spiffe_id = \"spiffe://{other}/spire/server\"\n }}\n }}\n}}\n"
    )
}

#[test]
fn polling_picks_up_a_foreign_ca_rotation_without_restart() {
    let (port_a, port_b) = (sigil_testkit::free_port(), sigil_testkit::free_port());
    let a = Server::start(ServerOptions {
        trust_domain: "a.test".into(),
        extra_server: federation_block(port_a, "b.test", port_b),
        ..ServerOptions::default()
    });
    // ca_ttl 60 s: B's next CA joins its bundle 30 s in.
    let b = Server::start(ServerOptions {
        trust_domain: "b.test".into(),
        ca_ttl: "60s".into(),
        x509_svid_ttl: "20s".into(),
        jwt_svid_ttl: "20s".into(),
        extra_server: federation_block(port_b, "a.test", port_a),
        ..ServerOptions::default()
    });
    // Bootstrap: each side holds the other's bundle to authenticate its endpoint.
    exchange(&b, &a);
    exchange(&a, &b);
    let (agent_a, agent_a_id) = attested_agent(&a, false);
    register_uid(
        &a,
        "spiffe://a.test/checkout",
        &agent_a_id,
        uid(),
        &["-federatesWith", "spiffe://b.test"],
    );

    // The polled bundle carries B's refresh hint (only the endpoint serves one).
    wait_for("A polls B's endpoint", Duration::from_secs(30), || {
        let doc = a.cli_ok(&[
            "bundle",
            "list",
            "-id",
            "spiffe://b.test",
            "-format",
            "spiffe",
        ]);
        doc.contains("\"spiffe_refresh_hint\": 5").then_some(())
    });
    assert!(a.log().contains("federated bundle stored"));

    // B rotates: A's stored bundle and A's workload both see B's second authority.
    wait_for(
        "B's new authority in A's stored bundle",
        Duration::from_secs(60),
        || (pem_count(&a.cli_ok(&["bundle", "list", "-id", "spiffe://b.test"])) > 1).then_some(()),
    );
    wait_for(
        "B's new authority at A's workload",
        Duration::from_secs(30),
        || {
            let d = fetch_files(&agent_a);
            let f = federated_file(&d)?;
            (pem_count(&std::fs::read_to_string(f).ok()?) > 1).then_some(())
        },
    );
    // And B holds A's bundle, polled from A's endpoint, unchanged by all this.
    let b_holds = b.cli_ok(&["bundle", "list", "-id", "spiffe://a.test"]);
    assert_eq!(b_holds, a.cli_ok(&["bundle", "show"]));
}

#[test]
fn polling_an_https_web_endpoint_uses_the_web_pki_roots() {
    // A CA and a serving certificate for 127.0.0.1 signed by it: webpki refuses a self-signed
    // CA certificate as the end entity.
    let dir = tempfile::tempdir().unwrap();
    let p = |n: &str| dir.path().join(n).to_str().unwrap().to_owned();
    let run = |args: &[&str]| {
        let (ok, out) = sigil_testkit::openssl(args);
        assert!(ok, "{args:?}: {out}");
    };
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
    ];
    let mut args = vec!["req", "-x509"];
    args.extend(ec);
    let (ca_key, ca, key, csr, cert, ext) = (
        p("ca.key"),
        p("ca.pem"),
        p("key.pem"),
        p("leaf.csr"),
        p("cert.pem"),
        p("ext"),
    );
    args.extend([
        "-subj",
        "/CN=test-ca",
        "-days",
        "1",
        "-keyout",
        &ca_key,
        "-out",
        &ca,
    ]);
    run(&args);
    let mut args = vec!["req"];
    args.extend(ec);
    args.extend(["-subj", "/CN=127.0.0.1", "-keyout", &key, "-out", &csr]);
    run(&args);
    std::fs::write(
        &ext,
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    run(&[
        "x509",
        "-req",
        "-in",
        &csr,
        "-CA",
        &ca,
        "-CAkey",
        &ca_key,
        "-CAcreateserial",
        "-days",
        "1",
        "-extfile",
        &ext,
        "-out",
        &cert,
    ]);

    let port_b = sigil_testkit::free_port();
    let b = Server::start(ServerOptions {
        trust_domain: "b.test".into(),
        extra_server: format!(
            "federation {{\n bundle_endpoint {{\n address = \"127.0.0.1\"\n port = {port_b}\n profile \"https_web\" {{\n serving_cert_file {{\n cert_file_path = \"{cert}\"\n key_file_path = \"{key}\"\n }}\n }}\n }}\n}}\n"
        ),
        ..ServerOptions::default()
    });
    // No bootstrap: https_web trusts the Web PKI (here SSL_CERT_FILE), not a held bundle.
    let a = Server::start(ServerOptions {
        trust_domain: "a.test".into(),
        extra_server: format!(
            "federation {{\n federates_with \"b.test\" {{\n bundle_endpoint_url = \"https://127.0.0.1:{port_b}\"\n bundle_endpoint_profile \"https_web\" {{}}\n }}\n}}\n"
        ),
        env: vec![("SSL_CERT_FILE".into(), ca.clone())],
        ..ServerOptions::default()
    });
    let held = wait_for("A polls B over https_web", Duration::from_secs(30), || {
        let out = a.cli(&["bundle", "list", "-id", "spiffe://b.test"]);
        out.status
            .success()
            .then(|| String::from_utf8(out.stdout).unwrap())
    });
    assert_eq!(held, b.cli_ok(&["bundle", "show"]));
}
