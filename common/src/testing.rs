//! Test helpers for both binaries, behind the `testing` feature (a dev-dependency only, never in
//! a binary; common's own tests build it too): for their config files, the flags both take, the
//! table of malformed edits every config test runs, the file-permission override both blocks
//! take, and the property test behind the `server_config` and `agent_config` fuzz targets; for
//! their TLS tests, a CA and the leaf certificates it signs.

use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use rcgen::{
    BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use rustls::client::danger::{ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use time::{Duration, OffsetDateTime};

use crate::hcl::ConfigError;
use crate::shared_keys::SharedFlags;

/// The flags both binaries take, from a command line such as
/// `-trustDomain example.org -logLevel warn -expandEnv`.
pub fn shared_flags(command_line: &str) -> SharedFlags {
    let mut flags = SharedFlags::default();
    let mut words = command_line.split_whitespace();
    while let Some(flag) = words.next() {
        if flag == "-expandEnv" {
            flags.expand_env = true;
            continue;
        }
        let value = words.next().map(str::to_owned);
        match flag {
            "-trustDomain" => flags.trust_domain = value,
            "-dataDir" => flags.data_dir = value,
            "-socketPath" => flags.socket_path = value,
            "-logLevel" => flags.log_level = value,
            "-logFormat" => flags.log_format = value,
            other => panic!("{other} is not a flag both binaries take"),
        }
    }
    flags
}

/// For each `(name, from, to)` case, replaces the first `from` in `minimal` (which must hold
/// it) with `to` and checks that `parse` refuses the result with exactly the matching `want`
/// message.
pub fn assert_each_edit_fails(
    minimal: &str,
    cases: &[(&str, &str, &str)],
    want: &[&str],
    parse: impl Fn(&str) -> Result<(), ConfigError>,
) {
    assert_eq!(cases.len(), want.len());
    for ((name, from, to), want) in cases.iter().zip(want) {
        assert!(
            minimal.contains(from),
            "{name}: fixture does not contain {from:?}"
        );
        let text = minimal.replacen(from, to, 1);
        let err = parse(&text).expect_err(name);
        assert_eq!(err.to_string(), *want, "{name}:\n{text}");
    }
}

/// `allow_insecure_file_permissions` in `block` (`server`, `agent`) of `minimal`: off by
/// default, on when set to true, and a misspelt key or a non-boolean is an error naming it.
/// `parse` returns the parsed setting.
pub fn assert_insecure_file_permissions_override(
    minimal: &str,
    block: &str,
    parse: impl Fn(&str) -> Result<bool, ConfigError>,
) {
    let opening = format!("{block} {{");
    assert!(!parse(minimal).unwrap());
    let on = minimal.replace(
        &opening,
        &format!("{opening}\n  allow_insecure_file_permissions = true"),
    );
    assert!(parse(&on).unwrap());
    for bad in [
        "allow_insecure_file_permission = true",
        "allow_insecure_file_permissions = \"yes\"",
    ] {
        let text = minimal.replace(&opening, &format!("{opening}\n  {bad}"));
        let err = parse(&text).unwrap_err().to_string();
        assert!(err.contains("allow_insecure_file_permission"), "{err}");
    }
}

/// Checks that `parse` accepts the valid config `valid`, then runs it on arbitrary text and on
/// up to three random edits of `valid`: it must never panic (a panic fails with the smallest
/// input found).
pub fn assert_parser_never_panics<T>(valid: &str, parse: impl Fn(&str) -> Result<T, ConfigError>) {
    if let Err(e) = parse(valid) {
        panic!("the seed is not valid: {e}");
    }
    let mut runner = TestRunner::new(Config {
        failure_persistence: None,
        ..Config::default()
    });
    let arbitrary = runner.run(&any::<String>(), |text| {
        let _ = parse(&text);
        Ok(())
    });
    if let Err(e) = arbitrary {
        panic!("arbitrary text: {e}");
    }
    let edits = prop::collection::vec(
        (
            0..valid.len(),
            0usize..16,
            "[ -~\\n{}\\[\\]\"=#:.$é\u{0}]{0,12}",
        ),
        1..4,
    );
    let edited = runner.run(&edits, |edits| {
        let mut text = valid.to_owned();
        for (at, len, insert) in &edits {
            text = edit(&text, *at, *len, insert);
        }
        let _ = parse(&text);
        Ok(())
    });
    if let Err(e) = edited {
        panic!("edited config: {e}");
    }
}

/// Replaces `text[at..at+len]` (clamped to char boundaries) with `insert`.
fn edit(text: &str, at: usize, len: usize, insert: &str) -> String {
    let floor = |mut i: usize| {
        i = i.min(text.len());
        while !text.is_char_boundary(i) {
            i -= 1;
        }
        i
    };
    let (start, end) = (floor(at), floor(at.saturating_add(len)));
    format!("{}{insert}{}", &text[..start], &text[end..])
}

/// A test CA: a self-signed ECDSA P-256 authority with the URI SAN `spiffe://td`.
pub struct Ca {
    /// The CA certificate, DER.
    pub der: Vec<u8>,
    issuer: Issuer<'static, KeyPair>,
}

/// A new [`Ca`], with a key of its own.
pub fn ca() -> Ca {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params = CertificateParams::default();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.subject_alt_names = vec![SanType::URI("spiffe://td".try_into().unwrap())];
    let cert = params.self_signed(&key).unwrap();
    Ca {
        der: cert.der().to_vec(),
        issuer: Issuer::new(params, key),
    }
}

/// A leaf certificate (DER) signed by `ca`, with one URI SAN per entry of `uris`, usable for
/// TLS server and client authentication, valid from two hours ago until `not_after`.
pub fn leaf(ca: &Ca, uris: &[&str], not_after: OffsetDateTime) -> Vec<u8> {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params = CertificateParams::default();
    params.subject_alt_names = uris
        .iter()
        .map(|uri| SanType::URI((*uri).try_into().unwrap()))
        .collect();
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.not_before = OffsetDateTime::now_utc() - Duration::hours(2);
    params.not_after = not_after;
    params.signed_by(&key, &ca.issuer).unwrap().der().to_vec()
}

/// A day from now: the NotAfter of a leaf that is valid.
pub fn in_a_day() -> OffsetDateTime {
    OffsetDateTime::now_utc() + Duration::days(1)
}

/// `verifier`'s verdict on `leaf` presented as a server certificate (for a DNS name the
/// SPIFFE verifier ignores), now.
pub fn verify_server(
    verifier: &dyn ServerCertVerifier,
    leaf: &[u8],
) -> Result<ServerCertVerified, rustls::Error> {
    let name = ServerName::try_from("unrelated.example").unwrap();
    verifier.verify_server_cert(
        &CertificateDer::from(leaf.to_vec()),
        &[],
        &name,
        &[],
        UnixTime::now(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[should_panic(expected = "arbitrary text")]
    fn a_parser_that_panics_is_caught() {
        assert_parser_never_panics("abc", |text| {
            assert_eq!(text, "abc");
            Ok(())
        });
    }

    #[test]
    fn shared_flags_read_like_a_command_line() {
        let flags = shared_flags("-trustDomain td -logFormat json -expandEnv");
        assert_eq!(flags.trust_domain.as_deref(), Some("td"));
        assert_eq!(flags.log_format.as_deref(), Some("json"));
        assert!(flags.expand_env);
        assert_eq!(flags.data_dir, None);
    }
}
