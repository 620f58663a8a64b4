//! The config files the kit writes: `server.conf` from [`ServerOptions`], `agent.conf` from
//! [`AgentOptions`] and the server it talks to, and the edits tests make to an agent's file
//! (one more line in the `agent` block, several servers, another node attestor, workload path
//! discovery). Each edit checks that the text it replaces is there, so a change to the writer
//! shows up as a clear failure rather than a silently unchanged file.

use std::path::{Path, PathBuf};

/// Knobs for a test server's `server.conf`.
#[derive(Clone, Debug)]
pub struct ServerOptions {
    pub trust_domain: String,
    pub ca_ttl: String,
    pub x509_svid_ttl: String,
    pub jwt_svid_ttl: String,
    /// `DEBUG` for tests; the benchmark runs at `INFO`, so per-request logging is not measured.
    pub log_level: String,
    pub key_manager_disk: bool,
    pub health: bool,
    pub extra_server: String,
    /// Top-level HCL appended to the file (e.g. a `telemetry` block).
    pub extra_top: String,
    /// Use SPIRE's default admin socket path (so CLI commands work without -socketPath).
    pub default_socket: bool,
    /// HCL appended inside `plugins { }` (e.g. a `NodeAttestor "k8s_psat"` block).
    pub extra_plugins: String,
    /// Extra environment variables for the server process (e.g. `SSL_CERT_FILE`).
    pub env: Vec<(String, String)>,
    /// A PostgreSQL connection URL (e.g. from [`crate::postgres::database`]) instead of the
    /// SQLite file in the data dir. Replicas of this server share it.
    pub postgres: Option<String>,
    /// Start the server under this file descriptor limit, soft and hard (`prlimit --nofile`).
    pub nofile_limit: Option<u64>,
}

impl Default for ServerOptions {
    fn default() -> Self {
        Self {
            trust_domain: "example.org".into(),
            ca_ttl: "24h".into(),
            x509_svid_ttl: "1h".into(),
            jwt_svid_ttl: "5m".into(),
            log_level: "DEBUG".into(),
            key_manager_disk: true,
            health: true,
            extra_server: String::new(),
            extra_top: String::new(),
            default_socket: false,
            extra_plugins: String::new(),
            env: Vec::new(),
            postgres: None,
            nofile_limit: None,
        }
    }
}

/// Where a server's files and ports are, as its `server.conf` names them.
#[derive(Debug)]
pub(crate) struct ServerLayout<'a> {
    pub(crate) socket: &'a Path,
    pub(crate) data: &'a Path,
    pub(crate) bind_port: u16,
    pub(crate) health_port: u16,
    /// The SQLite file (unless [`ServerOptions::postgres`] names a database).
    pub(crate) sqlite: &'a Path,
}

/// `server.conf`: SQL datastore, disk (or memory) key manager, the join_token attestor, the
/// health listener, and whatever `options` add.
pub(crate) fn server_conf(options: &ServerOptions, layout: &ServerLayout<'_>) -> String {
    let ServerLayout {
        socket,
        data,
        bind_port,
        health_port,
        sqlite,
    } = layout;
    let datastore = match &options.postgres {
        Some(url) => {
            format!("database_type = \"postgres\"\n      connection_string = \"{url}\"")
        }
        None => format!(
            "database_type = \"sqlite3\"\n      connection_string = \"{}\"",
            sqlite.display()
        ),
    };
    let key_manager = if options.key_manager_disk {
        format!(
            "KeyManager \"disk\" {{\n    plugin_data {{\n      keys_path = \"{}/keys.json\"\n    }}\n  }}",
            data.display()
        )
    } else {
        r#"KeyManager "memory" {}"#.to_owned()
    };
    let health = if options.health {
        health_checks(*health_port)
    } else {
        String::new()
    };
    format!(
        r#"server {{
  bind_address = "127.0.0.1"
  bind_port = "{bind_port}"
  socket_path = "{socket}"
  trust_domain = "{td}"
  data_dir = "{data}"
  log_level = "{log_level}"
  ca_ttl = "{ca_ttl}"
  default_x509_svid_ttl = "{x509}"
  default_jwt_svid_ttl = "{jwt}"
  {extra}
}}

plugins {{
  DataStore "sql" {{
    plugin_data {{
      {datastore}
    }}
  }}
  {key_manager}
  NodeAttestor "join_token" {{
    plugin_data {{}}
  }}
  {extra_plugins}
}}
{health}
{extra_top}
"#,
        socket = socket.display(),
        td = options.trust_domain,
        data = data.display(),
        log_level = options.log_level,
        ca_ttl = options.ca_ttl,
        x509 = options.x509_svid_ttl,
        jwt = options.jwt_svid_ttl,
        extra = options.extra_server,
        extra_top = options.extra_top,
        extra_plugins = options.extra_plugins,
    )
}

/// The datastore file a `server.conf` names (`connection_string`).
pub(crate) fn sqlite_file(config: &Path) -> PathBuf {
    let conf = std::fs::read_to_string(config).expect("read server.conf");
    let line = conf
        .lines()
        .find_map(|l| l.trim().strip_prefix("connection_string = "))
        .expect("connection_string in server.conf");
    PathBuf::from(line.trim_matches('"'))
}

/// Knobs for a test agent's `agent.conf`.
#[derive(Clone, Debug)]
pub struct AgentOptions {
    /// `DEBUG` for tests; the benchmark runs at `INFO`.
    pub log_level: String,
    /// No bundle file: the agent trusts the server on first contact (SPIRE's
    /// `insecure_bootstrap = true`).
    pub insecure_bootstrap: bool,
}

impl Default for AgentOptions {
    fn default() -> Self {
        Self {
            log_level: "DEBUG".into(),
            insecure_bootstrap: false,
        }
    }
}

/// Where an agent's files and ports are, and the server it talks to, as its `agent.conf`
/// names them.
#[derive(Debug)]
pub(crate) struct AgentLayout<'a> {
    pub(crate) socket: &'a Path,
    pub(crate) data: &'a Path,
    pub(crate) bundle: &'a Path,
    pub(crate) health_port: u16,
    pub(crate) server_port: u16,
    pub(crate) trust_domain: &'a str,
}

/// `agent.conf`: the join_token attestor, disk key manager, unix workload attestor, the health
/// listener, and trust from the bundle file (or insecure bootstrap).
pub(crate) fn agent_conf(options: &AgentOptions, layout: &AgentLayout<'_>) -> String {
    let trust = if options.insecure_bootstrap {
        "insecure_bootstrap = true".to_owned()
    } else {
        format!("trust_bundle_path = \"{}\"", layout.bundle.display())
    };
    format!(
        r#"agent {{
  data_dir = "{data}"
  log_level = "{log_level}"
  server_address = "127.0.0.1"
  server_port = "{port}"
  socket_path = "{socket}"
  {trust}
  trust_domain = "{td}"
}}

plugins {{
  NodeAttestor "join_token" {{
    plugin_data {{}}
  }}
  KeyManager "disk" {{
    plugin_data {{
      directory = "{data}/keys"
    }}
  }}
  WorkloadAttestor "unix" {{
    plugin_data {{}}
  }}
}}

{health}"#,
        health = health_checks(layout.health_port),
        data = layout.data.display(),
        log_level = options.log_level,
        port = layout.server_port,
        socket = layout.socket.display(),
        td = layout.trust_domain,
    )
}

/// The `health_checks` block (SPIRE's shape, which Sigil reads too): `/live` and `/ready` on
/// 127.0.0.1:`port`.
pub fn health_checks(port: u16) -> String {
    format!(
        "health_checks {{\n  listener_enabled = true\n  bind_address = \"127.0.0.1\"\n  bind_port = \"{port}\"\n  live_path = \"/live\"\n  ready_path = \"/ready\"\n}}\n"
    )
}

/// Replaces the first `from` in the file at `config` with `to`.
///
/// # Panics
/// If `from` is not in the file: the writer above changed and the edit no longer applies.
pub(crate) fn replace_once(config: &Path, from: &str, to: &str) {
    let conf = std::fs::read_to_string(config).expect("read config");
    assert!(
        conf.contains(from),
        "unexpected {} shape (no {from:?}):\n{conf}",
        config.display()
    );
    std::fs::write(config, conf.replacen(from, to, 1)).expect("write config");
}

/// The `server_address` / `server_port` pair [`agent_conf`] writes for `port`.
pub(crate) fn server_address(port: u16) -> String {
    format!("server_address = \"127.0.0.1\"\n  server_port = \"{port}\"")
}

/// The join_token node attestor [`agent_conf`] writes.
pub(crate) const JOIN_TOKEN_ATTESTOR: &str =
    "NodeAttestor \"join_token\" {\n    plugin_data {}\n  }";

/// The unix workload attestor [`agent_conf`] writes.
pub(crate) const UNIX_ATTESTOR: &str = "WorkloadAttestor \"unix\" {\n    plugin_data {}\n  }";

/// The agent's `NodeAttestor "k8s_psat"` block for `cluster`, its token read from `token_path`.
pub(crate) fn psat_agent_attestor(cluster: &str, token_path: &Path) -> String {
    format!(
        "NodeAttestor \"k8s_psat\" {{\n    plugin_data {{\n      cluster = \"{cluster}\"\n      token_path = \"{}\"\n    }}\n  }}",
        token_path.display()
    )
}

/// The unix workload attestor with `discover_workload_path = true` (`unix:path` selectors).
pub(crate) const UNIX_ATTESTOR_WITH_PATH: &str = "WorkloadAttestor \"unix\" {\n    plugin_data {\n      discover_workload_path = true\n    }\n  }";
