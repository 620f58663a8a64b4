//! Independent verifiers: what the tests check Sigil's output with instead of Sigil's own
//! code. `openssl` for certificates and chains, the `sqlite3` CLI for the server's database
//! file, x509-parser for PEM.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Runs `openssl` with `args`; returns (success, combined output).
pub fn openssl(args: &[&str]) -> (bool, String) {
    let out = Command::new("openssl")
        .args(args)
        .output()
        .expect("openssl installed");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// `openssl verify -x509_strict <extra> -CAfile <ca> <leaf>`: does the certificate (chain) in
/// the PEM file `leaf` chain to the roots in the PEM file `ca`? Returns (success, output).
pub fn openssl_verify(ca: &Path, leaf: &Path, extra: &[&str]) -> (bool, String) {
    let mut args = vec!["verify", "-x509_strict"];
    args.extend(extra);
    args.extend([
        "-CAfile",
        ca.to_str().expect("UTF-8 path"),
        leaf.to_str().expect("UTF-8 path"),
    ]);
    openssl(&args)
}

/// A self-signed P-256 serving certificate for `name` (CN and subjectAltName, e.g. `DNS:localhost`
/// or `IP:127.0.0.1`), valid one day, written to `dir` as `cert.pem` / `key.pem`. Returns their
/// paths.
pub fn self_signed_serving_cert(dir: &Path, cn: &str, san: &str) -> (PathBuf, PathBuf) {
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    self_signed_p256(
        &cert,
        &key,
        &format!("/CN={cn}"),
        1,
        &[&format!("subjectAltName={san}")],
    );
    (cert, key)
}

/// `openssl req -x509`: a fresh P-256 key written to `key` and a certificate for it, self-signed,
/// with `subject` (e.g. `/O=Operator/CN=root`), valid `days`, with `extensions` (`-addext`
/// each, e.g. `basicConstraints=critical,CA:true`), written to `cert`.
///
/// # Panics
/// If openssl fails.
pub fn self_signed_p256(cert: &Path, key: &Path, subject: &str, days: u32, extensions: &[&str]) {
    let days = days.to_string();
    let mut args = vec![
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-days",
        &days,
        "-subj",
        subject,
        "-keyout",
        key.to_str().expect("UTF-8 path"),
        "-out",
        cert.to_str().expect("UTF-8 path"),
    ];
    for extension in extensions {
        args.extend(["-addext", extension]);
    }
    let (ok, out) = openssl(&args);
    assert!(ok, "{out}");
}

/// `sqlite3 <db> <sql>`: the SQLite CLI, an independent reader of the server's database file.
/// Returns stdout, trimmed. Waits up to 10 s for a running server's write lock.
pub fn sqlite3(db: &Path, sql: &str) -> String {
    let out = Command::new("sqlite3")
        .args(["-cmd", ".timeout 10000"])
        .arg(db)
        .arg(sql)
        .output()
        .expect("the sqlite3 CLI is installed (.ci/run installs it)");
    assert!(
        out.status.success(),
        "sqlite3 {sql:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .expect("UTF-8 output")
        .trim()
        .to_owned()
}

/// `PRAGMA integrity_check` of the database file `db` by the `sqlite3` CLI: `ok` when sound.
pub fn sqlite_integrity(db: &Path) -> String {
    sqlite3(db, "PRAGMA integrity_check;")
}

/// DER certificates from a PEM string.
pub fn pem_certs(pem_text: &str) -> Vec<Vec<u8>> {
    x509_parser::pem::Pem::iter_from_buffer(pem_text.as_bytes())
        .map(|p| p.expect("valid PEM").contents)
        .collect()
}

/// An operator's self-signed CA made with openssl, the way operators make them: `keygen` is an
/// openssl command line (after `openssl`, without `-out`) writing the key in the encoding it
/// chooses (`ecparam -genkey -noout` for SEC1, `genrsa -traditional` for PKCS#1, `genpkey` for
/// PKCS#8); `sign` are extra `openssl req -x509` options (`-sha512`, `-sigopt
/// rsa_padding_mode:pss`). The CA is valid ten years and may sign certificates
/// (basicConstraints CA:true, keyUsage keyCertSign). Writes `dir/<name>.key` and
/// `dir/<name>.crt`; returns their paths.
///
/// # Panics
/// If openssl fails.
pub fn openssl_self_signed_ca(
    dir: &Path,
    name: &str,
    keygen: &[&str],
    sign: &[&str],
) -> (PathBuf, PathBuf) {
    let (cert, key) = (
        dir.join(format!("{name}.crt")),
        dir.join(format!("{name}.key")),
    );
    let key_str = key.to_str().expect("UTF-8 path");
    let mut args = keygen.to_vec();
    args.splice(1..1, ["-out", key_str]);
    let (ok, out) = openssl(&args);
    assert!(ok, "{args:?}: {out}");
    let subject = format!("/O=Operator/CN={name}");
    let mut args = vec![
        "req",
        "-x509",
        "-new",
        "-key",
        key_str,
        "-days",
        "3650",
        "-subj",
        &subject,
        "-addext",
        "basicConstraints=critical,CA:true",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
        "-out",
        cert.to_str().expect("UTF-8 path"),
    ];
    args.extend(sign);
    let (ok, out) = openssl(&args);
    assert!(ok, "{args:?}: {out}");
    (cert, key)
}

/// How operators make CAs with openssl, for [`openssl_self_signed_ca`]: `(name, keygen, sign)`,
/// one for each key encoding SPIRE reads (SEC1, PKCS#1, PKCS#8) and each signature algorithm
/// (ECDSA with SHA-256/384/512, RSA PKCS#1 v1.5, RSA-PSS with OpenSSL's default (longest) salt
/// and with a salt as long as the hash).
pub const OPERATOR_CA_RECIPES: [(&str, &[&str], &[&str]); 7] = [
    (
        "sec1-p256-sha512",
        &["ecparam", "-name", "prime256v1", "-genkey", "-noout"],
        &["-sha512"],
    ),
    (
        "sec1-p384-sha512",
        &["ecparam", "-name", "secp384r1", "-genkey", "-noout"],
        &["-sha512"],
    ),
    (
        "pkcs8-p256-sha384",
        &[
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
        ],
        &["-sha384"],
    ),
    (
        "pkcs1-rsa2048-sha256",
        &["genrsa", "-traditional", "2048"],
        &["-sha256"],
    ),
    ("pkcs8-rsa3072-sha512", &["genrsa", "3072"], &["-sha512"]),
    (
        "rsa-pss-max-salt",
        &["genrsa", "2048"],
        &["-sha256", "-sigopt", "rsa_padding_mode:pss"],
    ),
    (
        "rsa-pss-digest-salt-sha384",
        &["genrsa", "-traditional", "2048"],
        &[
            "-sha384",
            "-sigopt",
            "rsa_padding_mode:pss",
            "-sigopt",
            "rsa_pss_saltlen:digest",
        ],
    ),
];
