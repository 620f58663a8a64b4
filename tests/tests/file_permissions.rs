//! Issue 15 item 8: key and state files other users can reach stop the real binaries at start,
//! as OpenSSH's StrictModes stops sshd: each case exits non-zero with a message naming the path
//! (and its mode or owner); `allow_insecure_file_permissions = true` lets it start, with a WARN
//! line naming the path.
//!
//! Server: the disk key manager's `keys.json`, the datastore file, an OIDC TLS key (0644), and
//! `data_dir` (group-writable, or owned by uid 65534). Agent: its SVID key (0644), its stored
//! trust bundle (writable by others), and `data_dir` (0777, or owned by uid 65534).
//! The other-owner cases need root; without it they say so and are skipped.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, ExitStatus};
use std::time::Duration;

use sigil_testkit::{
    Agent, Server, ServerOptions, agent_bin, attested_agent, free_port, self_signed_serving_cert,
    server_bin,
};

const OTHER_UID: u32 = 65534;

fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn is_root() -> bool {
    let root = nix::unistd::geteuid().is_root();
    if !root {
        eprintln!("NOTICE: not root: the other-owner cases are skipped");
    }
    root
}

/// Runs `<bin> run -config <config>`, which must exit within 30 s; its status and output.
fn run_to_exit(bin: &Path, config: &Path) -> (ExitStatus, String) {
    let log = config.with_extension("refused.log");
    let mut command = Command::new(bin);
    command.args(["run", "-config"]).arg(config);
    let (status, output) = sigil_testkit::run_to_exit(command, &log, Duration::from_secs(30));
    let Some(status) = status else {
        panic!("{} started instead of refusing:\n{output}", bin.display());
    };
    (status, output)
}

/// `<bin>` on `config` refuses to start, naming `path` and `detail`.
fn refused(bin: &Path, config: &Path, path: &Path, detail: &str) {
    let (status, output) = run_to_exit(bin, config);
    assert!(!status.success(), "{}: {output}", path.display());
    assert!(
        output.contains(&path.display().to_string()) && output.contains(detail),
        "the refusal does not name {} ({detail}):\n{output}",
        path.display()
    );
    assert!(
        output.contains("allow_insecure_file_permissions"),
        "the refusal does not say how to override:\n{output}"
    );
}

/// Adds `allow_insecure_file_permissions = true` to `block` of the config at `config`.
fn allow_insecure(config: &Path, block: &str) {
    let conf = std::fs::read_to_string(config).unwrap();
    let opening = format!("{block} {{");
    assert!(conf.contains(&opening), "{conf}");
    std::fs::write(
        config,
        conf.replacen(
            &opening,
            &format!("{opening}\n  allow_insecure_file_permissions = true"),
            1,
        ),
    )
    .unwrap();
}

/// The log has a WARN line naming `path`.
fn warned(log: &str, path: &Path) {
    let path = path.display().to_string();
    assert!(
        log.lines()
            .any(|l| l.contains("WARN") && l.contains(&path) && l.contains("allow_insecure")),
        "no WARN line naming {path}:\n{log}"
    );
}

fn stopped(options: ServerOptions) -> Server {
    let mut server = Server::start(options);
    assert!(server.stop().success());
    server
}

#[test]
fn server_refuses_key_and_state_files_open_to_others() {
    // The disk key manager's keys file.
    let mut server = stopped(ServerOptions::default());
    let keys = server.data_dir().join("keys.json");
    chmod(&keys, 0o644);
    refused(&server_bin(), &server.config, &keys, "0644");
    chmod(&keys, 0o600);

    // The datastore file.
    let db = server.db_path();
    chmod(&db, 0o640);
    refused(&server_bin(), &server.config, &db, "0640");
    chmod(&db, 0o600);

    // data_dir writable by its group.
    let data = server.data_dir();
    chmod(&data, 0o770);
    refused(&server_bin(), &server.config, &data, "0770");
    chmod(&data, 0o700);

    // data_dir owned by another user.
    if is_root() {
        std::os::unix::fs::chown(&data, Some(OTHER_UID), None).unwrap();
        refused(
            &server_bin(),
            &server.config,
            &data,
            &format!("owned by uid {OTHER_UID}"),
        );
        std::os::unix::fs::chown(&data, Some(0), None).unwrap();
    }

    // The override: it starts, and says what it accepted.
    chmod(&keys, 0o644);
    allow_insecure(&server.config, "server");
    server.spawn();
    warned(&server.log(), &keys);
    server.cli_ok(&["healthcheck"]);
}

#[test]
fn server_refuses_a_tls_key_open_to_others() {
    let tls = tempfile::tempdir().unwrap();
    let (cert, key) = self_signed_serving_cert(tls.path(), "localhost", "DNS:localhost");
    let port = free_port();
    let server = stopped(ServerOptions {
        extra_top: format!(
            "oidc_discovery {{\n  bind_address = \"127.0.0.1\"\n  bind_port = {port}\n  domains = [\"localhost\"]\n  tls_cert_file = \"{}\"\n  tls_key_file = \"{}\"\n}}\n",
            cert.display(),
            key.display()
        ),
        ..Default::default()
    });
    chmod(&key, 0o644);
    refused(&server_bin(), &server.config, &key, "0644");
}

/// An attested agent, stopped: its files are on disk for the test to open up.
fn stopped_agent() -> (Server, Agent) {
    let server = Server::start(ServerOptions::default());
    let (mut agent, _) = attested_agent(&server, false);
    assert!(agent.stop().success());
    (server, agent)
}

#[test]
fn agent_refuses_key_and_state_files_open_to_others() {
    let (_server, mut agent) = stopped_agent();
    let data = agent.dir.path().join("data");
    let key = data.join("keys").join("agent_svid.key");
    let bundle = data.join("bundle.json");
    assert!(key.exists() && bundle.exists());

    chmod(&key, 0o644);
    refused(&agent_bin(), &agent.config, &key, "0644");
    chmod(&key, 0o600);

    chmod(&bundle, 0o666);
    refused(&agent_bin(), &agent.config, &bundle, "0666");
    chmod(&bundle, 0o644);

    chmod(&data, 0o777);
    refused(&agent_bin(), &agent.config, &data, "0777");
    chmod(&data, 0o700);

    if is_root() {
        std::os::unix::fs::chown(&data, Some(OTHER_UID), None).unwrap();
        refused(
            &agent_bin(),
            &agent.config,
            &data,
            &format!("owned by uid {OTHER_UID}"),
        );
        std::os::unix::fs::chown(&data, Some(0), None).unwrap();
    }

    // The override: it starts on its stored SVID, and says what it accepted.
    chmod(&key, 0o644);
    allow_insecure(&agent.config, "agent");
    agent.spawn(None);
    warned(&agent.log(), &key);
}
