//! End-to-end tests of `UpstreamAuthority "disk"`: an operator root made with `openssl`, the real
//! server signing its CA as an intermediate of it, and the chains checked by `openssl verify`
//! and py-spiffe (through a real agent).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use sigil_testkit::python::python_json;
use sigil_testkit::verify::{
    OPERATOR_CA_RECIPES, openssl, openssl_self_signed_ca, openssl_verify, self_signed_p256,
};
use sigil_testkit::{
    Server, ServerOptions, attested_agent, pem_certs, register_uid, server_bin, wait_child,
};

/// An operator CA made with openssl: `<dir>/<name>.crt` and `<dir>/<name>.key`.
fn openssl_ca(dir: &Path, name: &str, ca: bool) -> (PathBuf, PathBuf) {
    let cert = dir.join(format!("{name}.crt"));
    let key = dir.join(format!("{name}.key"));
    let basic = if ca {
        "basicConstraints=critical,CA:true"
    } else {
        "basicConstraints=critical,CA:false"
    };
    let usage = if ca {
        "keyUsage=critical,keyCertSign,cRLSign"
    } else {
        "keyUsage=critical,digitalSignature"
    };
    self_signed_p256(
        &cert,
        &key,
        &format!("/O=Operator/CN={name}"),
        30,
        &[basic, usage],
    );
    (cert, key)
}

fn upstream_block(cert: &Path, key: &Path) -> String {
    format!(
        "UpstreamAuthority \"disk\" {{\n    plugin_data {{\n      cert_file_path = \"{}\"\n      key_file_path = \"{}\"\n    }}\n  }}",
        cert.display(),
        key.display()
    )
}

/// Splits a PEM chain file into `<dir>/leaf.pem` and `<dir>/intermediates.pem` and runs
/// `openssl verify -x509_strict -CAfile root -untrusted intermediates leaf`.
fn verify_chain(root: &Path, chain_pem: &Path) -> (bool, String) {
    let dir = chain_pem.parent().unwrap();
    let certs = pem_certs(&std::fs::read_to_string(chain_pem).unwrap());
    assert!(
        certs.len() >= 2,
        "a chain, not a lone leaf: {}",
        certs.len()
    );
    let pem = |der: &[u8]| {
        let b64 = STANDARD.encode(der);
        let lines: Vec<&str> = b64
            .as_bytes()
            .chunks(64)
            .map(|c| std::str::from_utf8(c).unwrap())
            .collect();
        format!(
            "-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n",
            lines.join("\n")
        )
    };
    let leaf = dir.join("leaf.pem");
    let intermediates = dir.join("intermediates.pem");
    std::fs::write(&leaf, pem(&certs[0])).unwrap();
    std::fs::write(
        &intermediates,
        certs[1..].iter().map(|c| pem(c)).collect::<String>(),
    )
    .unwrap();
    openssl_verify(
        root,
        &leaf,
        &["-untrusted", intermediates.to_str().unwrap()],
    )
}

fn mint(server: &Server, dir: &Path) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    server.cli_ok(&[
        "x509",
        "mint",
        "-spiffeID",
        "spiffe://example.org/minted",
        "-write",
        dir.to_str().unwrap(),
    ]);
    dir.join("svid.pem")
}

#[test]
fn chains_lead_to_the_operator_root_for_openssl_and_py_spiffe() {
    let ops = tempfile::tempdir().unwrap();
    let (root, root_key) = openssl_ca(ops.path(), "Operator Root", true);
    let root_der = pem_certs(&std::fs::read_to_string(&root).unwrap());
    let mut server = Server::start(ServerOptions {
        extra_plugins: upstream_block(&root, &root_key),
        ..ServerOptions::default()
    });

    // The bundle is the operator's root, nothing else.
    assert_eq!(pem_certs(&server.cli_ok(&["bundle", "show"])), root_der);

    // `x509 mint -write`: leaf + intermediate, verified by openssl against the root only.
    let minted = mint(&server, &ops.path().join("mint"));
    let chain = pem_certs(&std::fs::read_to_string(&minted).unwrap());
    assert_eq!(chain.len(), 2);
    let (ok, out) = verify_chain(&root, &minted);
    assert!(ok, "{out}");
    assert_eq!(
        pem_certs(&std::fs::read_to_string(ops.path().join("mint/bundle.pem")).unwrap()),
        root_der
    );
    // And the check can fail: the leaf alone does not reach the root.
    let (ok, _) = openssl_verify(&root, &ops.path().join("mint/leaf.pem"), &[]);
    assert!(!ok);

    // A workload's SVID through a real agent (which itself talks to the server over a chain).
    let (agent, agent_id) = attested_agent(&server, false);
    let uid = nix::unistd::geteuid().as_raw();
    register_uid(&server, "spiffe://example.org/web", &agent_id, uid, &[]);
    let fetched = agent.dir.path().join("fetched");
    agent.fetch_x509_svid_files(&fetched);
    let (ok, out) = verify_chain(&root, &fetched.join("svid.0.pem"));
    assert!(ok, "{out}");
    assert_eq!(
        pem_certs(&std::fs::read_to_string(fetched.join("bundle.0.pem")).unwrap()),
        root_der
    );

    // py-spiffe: a two-certificate chain, each issued by the next, the last by the bundle root.
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/py/workload_client.py");
    let p = python_json(
        "py-spiffe",
        &[
            script,
            "chain",
            agent.socket.to_str().unwrap(),
            "example.org",
        ],
    );
    assert_eq!(p["spiffe_id"], "spiffe://example.org/web");
    assert_eq!(p["chain"].as_array().unwrap().len(), 2, "{p}");
    assert_eq!(
        p["bundle"],
        serde_json::json!([STANDARD.encode(&root_der[0])])
    );
    assert_eq!(p["linked"], true, "{p}");
    assert_eq!(p["anchored"], true, "{p}");

    // A restart resumes the same intermediate (journal + disk key manager).
    let before = chain[1].clone();
    server.restart();
    let minted = mint(&server, &ops.path().join("mint2"));
    let after = pem_certs(&std::fs::read_to_string(&minted).unwrap());
    assert_eq!(after[1], before, "same intermediate after a restart");
    assert_eq!(pem_certs(&server.cli_ok(&["bundle", "show"])), root_der);
}

/// The CAs operators make with openssl, in each key encoding SPIRE reads (SEC1, PKCS#1,
/// PKCS#8) and with each signature algorithm (ECDSA with SHA-512 as SPIRE's own
/// `dummy_upstream_ca.crt`, RSA PKCS#1 v1.5, RSA-PSS with OpenSSL's default salt): the server
/// starts on each, publishes it as the bundle, and its SVIDs pass `openssl verify -x509_strict`.
#[test]
fn operator_cas_in_every_key_encoding_and_signature_algorithm() {
    let ops = tempfile::tempdir().unwrap();
    for (name, keygen, sign) in OPERATOR_CA_RECIPES {
        let (root, root_key) = openssl_self_signed_ca(ops.path(), name, keygen, sign);
        let root_der = pem_certs(&std::fs::read_to_string(&root).unwrap());
        let mut server = Server::start(ServerOptions {
            extra_plugins: upstream_block(&root, &root_key),
            ..ServerOptions::default()
        });
        assert_eq!(
            pem_certs(&server.cli_ok(&["bundle", "show"])),
            root_der,
            "{name}"
        );
        let minted = mint(&server, &ops.path().join(format!("mint-{name}")));
        let (ok, out) = verify_chain(&root, &minted);
        assert!(ok, "{name}: {out}");
        assert!(server.stop().success(), "{name}");
    }
}

/// Runs `sigil-server run` on `config` and returns its exit code and stderr; it must exit by
/// itself (a refused config never starts serving).
fn run_refused(config: &Path) -> (Option<i32>, String) {
    let stderr = config.with_extension("stderr");
    let mut child = Command::new(server_bin())
        .args(["run", "-config"])
        .arg(config)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&stderr).unwrap())
        .spawn()
        .expect("spawn sigil-server");
    let status = wait_child(&mut child, Duration::from_secs(20));
    (status.code(), std::fs::read_to_string(&stderr).unwrap())
}

#[test]
fn bad_upstream_files_are_refused_at_startup() {
    let ops = tempfile::tempdir().unwrap();
    let (root, root_key) = openssl_ca(ops.path(), "Operator Root", true);
    let (_other, other_key) = openssl_ca(ops.path(), "Other Root", true);
    let (leaf, leaf_key) = openssl_ca(ops.path(), "Not A CA", false);
    // A good server first, to get a complete config; then its upstream block is swapped.
    let mut server = Server::start(ServerOptions {
        extra_plugins: upstream_block(&root, &root_key),
        ..ServerOptions::default()
    });
    assert!(server.stop().success());
    let good = std::fs::read_to_string(&server.config).unwrap();
    let good_block = upstream_block(&root, &root_key);
    let missing = ops.path().join("missing.key");
    // An RSA key (PKCS#1) for the P-256 root, and the root's own key encrypted.
    let rsa_key = ops.path().join("rsa.key");
    let (ok, out) = openssl(&[
        "genrsa",
        "-traditional",
        "-out",
        rsa_key.to_str().unwrap(),
        "2048",
    ]);
    assert!(ok, "{out}");
    let encrypted = ops.path().join("encrypted.key");
    let (ok, out) = openssl(&[
        "pkcs8",
        "-topk8",
        "-in",
        root_key.to_str().unwrap(),
        "-passout",
        "pass:secret",
        "-out",
        encrypted.to_str().unwrap(),
    ]);
    assert!(ok, "{out}");
    let cases = [
        (
            upstream_block(&root, &rsa_key),
            "does not match the certificate",
        ),
        (upstream_block(&root, &encrypted), "the key is encrypted"),
        (
            upstream_block(&root, &other_key),
            "does not match the certificate",
        ),
        (upstream_block(&leaf, &leaf_key), "is not a CA"),
        (upstream_block(&root, &missing), "missing.key"),
    ];
    for (block, want) in cases {
        let config = server.dir.path().join("bad.conf");
        std::fs::write(&config, good.replace(&good_block, &block)).unwrap();
        let (code, stderr) = run_refused(&config);
        assert_eq!(code, Some(64), "{want}: {stderr}");
        assert!(
            stderr.contains("plugins.UpstreamAuthority.disk") && stderr.contains(want),
            "{want}: {stderr}"
        );
        // `validate` says the same.
        let out = Command::new(server_bin())
            .args(["validate", "-config"])
            .arg(&config)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(64));
        assert!(String::from_utf8_lossy(&out.stderr).contains(want));
    }
}
