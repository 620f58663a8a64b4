//! SPIRE itself, as a peer: its binaries built once per machine by `scripts/spire-peer.sh`
//! from the Go module proxy into a cache outside the repository. Tests that need SPIRE run
//! when the build is present and say that they skipped otherwise; CI does not build it.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use crate::process::healthcheck_passes;
use crate::{Process, free_port};

/// The SPIRE version `scripts/spire-peer.sh` builds by default.
pub const VERSION: &str = "v1.13.3";

/// `spire-server` or `spire-agent` from `SIGIL_SPIRE_BIN_DIR`, else from the script's default
/// cache (`/var/tmp/sigil-spire/<version>/bin`); `None` (with a line saying how to build it)
/// when it is not there.
pub fn spire_bin(program: &str) -> Option<PathBuf> {
    let dir = std::env::var_os("SIGIL_SPIRE_BIN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(format!("/var/tmp/sigil-spire/{VERSION}/bin")));
    let bin = dir.join(program);
    if bin.is_file() {
        Some(bin)
    } else {
        eprintln!(
            "SKIPPED: no {program} at {} (scripts/spire-peer.sh builds SPIRE {VERSION} there)",
            bin.display()
        );
        None
    }
}

/// A real `spire-server` on a temp dir: SQLite, join-token node attestation, in-memory keys,
/// as SPIRE's stock config; `server_extra` is added to its `server {}` block (TTLs, a
/// `federation {}` block).
pub struct SpireServer {
    pub bin: PathBuf,
    pub dir: tempfile::TempDir,
    /// The admin API socket the CLI talks to (`-socketPath`).
    pub socket: PathBuf,
    pub trust_domain: String,
    pub bind_port: u16,
    pub process: Process,
}

impl SpireServer {
    /// Starts `bin` (from [`spire_bin`]) and waits until `spire-server healthcheck` passes.
    ///
    /// # Panics
    /// If it exits or is not healthy within 60 s (with its log).
    pub fn start(bin: &Path, trust_domain: &str, log_level: &str, server_extra: &str) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let d = dir.path().display();
        let bind_port = free_port();
        let config = dir.path().join("server.conf");
        std::fs::write(
            &config,
            format!(
                r#"server {{
  bind_address = "127.0.0.1"
  bind_port = "{bind_port}"
  socket_path = "{d}/spire.sock"
  trust_domain = "{trust_domain}"
  data_dir = "{d}/data"
  log_level = "{log_level}"
{server_extra}
}}
plugins {{
  DataStore "sql" {{
    plugin_data {{
      database_type = "sqlite3"
      connection_string = "{d}/data/datastore.sqlite3"
    }}
  }}
  NodeAttestor "join_token" {{
    plugin_data {{}}
  }}
  KeyManager "memory" {{
    plugin_data = {{}}
  }}
}}
"#
            ),
        )
        .expect("write server.conf");
        let socket = dir.path().join("spire.sock");
        let process = run_healthy(
            bin,
            &config,
            &[],
            &socket,
            &dir.path().join("spire-server.log"),
        );
        Self {
            bin: bin.to_owned(),
            dir,
            socket,
            trust_domain: trust_domain.to_owned(),
            bind_port,
            process,
        }
    }

    /// `spire-server <args> -socketPath <socket>`.
    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new(&self.bin)
            .args(args)
            .arg("-socketPath")
            .arg(&self.socket)
            .output()
            .expect("run spire-server")
    }

    /// [`Self::cli`], which must succeed; its stdout.
    ///
    /// # Panics
    /// If the command fails (with its output).
    pub fn cli_ok(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        assert!(
            out.status.success(),
            "spire-server {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("UTF-8 output")
    }

    pub fn log(&self) -> String {
        self.process.log()
    }
}

/// A real `spire-agent` attested to a [`SpireServer`] with a fresh join token, its trust
/// bootstrapped from `spire-server bundle show`, with the `unix` workload attestor; its
/// Workload API socket is `socket`.
pub struct SpireAgent {
    pub dir: tempfile::TempDir,
    pub socket: PathBuf,
    /// `spiffe://<td>/spire/agent/join_token/<token>`, the parent of its workloads' entries.
    pub spiffe_id: String,
    pub process: Process,
}

impl SpireAgent {
    /// Starts `bin` (from [`spire_bin`]) against `server` and waits for its Workload API
    /// socket and `spire-agent healthcheck`.
    ///
    /// # Panics
    /// If it exits or is not healthy within 60 s (with its log).
    pub fn start(bin: &Path, server: &SpireServer) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let d = dir.path().display();
        let bundle = dir.path().join("bootstrap.crt");
        std::fs::write(&bundle, server.cli_ok(&["bundle", "show"])).expect("write bundle");
        let out = server.cli_ok(&["token", "generate", "-ttl", "600"]);
        // "Token: <uuid>", then a warning that no -spiffeID was given.
        let token = out
            .lines()
            .next()
            .and_then(|l| l.strip_prefix("Token: "))
            .unwrap_or_else(|| panic!("token generate printed {out:?}"))
            .to_owned();
        let config = dir.path().join("agent.conf");
        std::fs::write(
            &config,
            format!(
                r#"agent {{
  data_dir = "{d}/data"
  log_level = "INFO"
  server_address = "127.0.0.1"
  server_port = "{port}"
  socket_path = "{d}/agent.sock"
  trust_bundle_path = "{bundle}"
  trust_domain = "{td}"
}}
plugins {{
  NodeAttestor "join_token" {{
    plugin_data {{}}
  }}
  KeyManager "memory" {{
    plugin_data {{}}
  }}
  WorkloadAttestor "unix" {{
    plugin_data {{}}
  }}
}}
"#,
                port = server.bind_port,
                bundle = bundle.display(),
                td = server.trust_domain,
            ),
        )
        .expect("write agent.conf");
        let socket = dir.path().join("agent.sock");
        let log = dir.path().join("spire-agent.log");
        let process = run_healthy(bin, &config, &["-joinToken", &token], &socket, &log);
        Self {
            dir,
            socket,
            spiffe_id: format!(
                "spiffe://{}/spire/agent/join_token/{token}",
                server.trust_domain
            ),
            process,
        }
    }

    /// `unix://<socket>`, for `SPIFFE_ENDPOINT_SOCKET`.
    pub fn endpoint(&self) -> String {
        format!("unix://{}", self.socket.display())
    }

    pub fn log(&self) -> String {
        self.process.log()
    }
}

/// `<bin> run -config <config> <args>` (spire-server or spire-agent), logging to `log`, once
/// `<bin> healthcheck -socketPath <socket>` passes.
///
/// # Panics
/// If it exits or is not healthy within 60 s (with its log).
fn run_healthy(bin: &Path, config: &Path, args: &[&str], socket: &Path, log: &Path) -> Process {
    let mut cmd = Command::new(bin);
    cmd.args(["run", "-config"]).arg(config).args(args);
    let mut process = Process::spawn(cmd, log);
    let name = bin.file_name().unwrap_or_default().to_string_lossy();
    process.wait_until(&format!("{name} healthy"), Duration::from_secs(60), |_| {
        healthcheck_passes(bin, socket)
    });
    process
}
