//! Start-up checks of the key and state files the config names, as OpenSSH's StrictModes checks
//! a key file: `data_dir` must be owned by us (or root) and writable by no one else; private
//! keys (the disk key manager's keys file, the upstream authority's key, the OIDC and bundle
//! endpoints' TLS keys) and the SQLite datastore file must be open to no one else. A file that
//! does not exist yet passes: the server creates it private.
//!
//! A failing check stops the server before it binds anything, naming the path, its mode or
//! owner and the command that fixes it. `allow_insecure_file_permissions = true` (server
//! block) lets it start anyway, with one WARN line per finding.

use std::path::Path;

use sigil_common::fs_checks::{Access, FsCheckError, check_dir, check_file};

use super::ServerConfig;
use crate::federation::config::ServingProfile;
use crate::key_manager::KeyManagerConfig;

/// The config key that turns the refusals into warnings.
pub const OVERRIDE: &str = "allow_insecure_file_permissions";

/// Checks `data_dir` and every private key file `config` names.
pub fn check_config_files(config: &ServerConfig) -> anyhow::Result<()> {
    let mut found = Vec::new();
    let mut check = |r: Result<(), FsCheckError>| found.extend(r.err());
    check(check_dir(&config.data_dir, "data_dir"));
    if let KeyManagerConfig::Disk { keys_path } = &config.key_manager {
        if let Some(dir) = keys_path.parent().filter(|d| *d != config.data_dir) {
            check(check_dir(dir, "KeyManager \"disk\" keys directory"));
        }
        check(check_file(
            keys_path,
            "KeyManager \"disk\" keys file",
            Access::OwnerOnly,
        ));
    }
    if let Some(upstream) = &config.upstream_authority {
        check(check_file(
            &upstream.key_file_path,
            "UpstreamAuthority \"disk\" key_file_path",
            Access::OwnerOnly,
        ));
    }
    if let Some(tls) = config.oidc_discovery.as_ref().and_then(|o| o.tls.as_ref()) {
        check(check_file(
            &tls.key_file,
            "oidc_discovery tls_key_file",
            Access::OwnerOnly,
        ));
    }
    if let Some(tls) = config.console.as_ref().and_then(|c| c.tls.as_ref()) {
        check(check_file(
            &tls.key_file,
            "console tls_key_file",
            Access::OwnerOnly,
        ));
    }
    let bundle_endpoint = config
        .federation
        .as_ref()
        .and_then(|f| f.bundle_endpoint.as_ref());
    if let Some(ServingProfile::HttpsWeb { key_file, .. }) = bundle_endpoint.map(|b| &b.profile) {
        check(check_file(
            key_file,
            "bundle endpoint key_file_path",
            Access::OwnerOnly,
        ));
    }
    enforce(found, config.allow_insecure_file_permissions)
}

/// Checks the SQLite datastore file once open (`path` empty on PostgreSQL). SQLite gives its
/// `-wal` and `-shm` files the same mode.
pub fn check_datastore_file(path: &Path, allow_insecure: bool) -> anyhow::Result<()> {
    if path.as_os_str().is_empty() {
        return Ok(());
    }
    let found = check_file(path, "datastore file", Access::OwnerOnly).err();
    enforce(found.into_iter().collect(), allow_insecure)
}

/// Refuses to start on any finding, or logs each at WARN when the override is set.
fn enforce(found: Vec<FsCheckError>, allow_insecure: bool) -> anyhow::Result<()> {
    if found.is_empty() {
        return Ok(());
    }
    if allow_insecure {
        for problem in &found {
            tracing::warn!(%problem, "{OVERRIDE} = true: starting with a file other users can reach");
        }
        return Ok(());
    }
    let list: Vec<String> = found.iter().map(ToString::to_string).collect();
    anyhow::bail!(
        "refusing to start: {}\n(to start anyway, at the risk of other users reading keys or replacing state, set {OVERRIDE} = true in the server block)",
        list.join("\n")
    )
}
