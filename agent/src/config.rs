//! sigil-agent's configuration: SPIRE's `agent.conf` layout and key names, read once into
//! validated types before anything binds. Command-line flags (SPIRE's spellings) override the
//! file. Every error names the file, the line and the key (or the flag).

use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

pub use sigil_common::hcl::ConfigError;
use sigil_common::hcl::{self, Block, Document, parse_path, parse_trust_domain};
pub use sigil_common::health_checks::HealthConfig;
pub use sigil_common::log_config::{LogFormat, LogLevel};
use sigil_proto::TrustDomain;

/// SPIRE's default Workload API socket.
pub const DEFAULT_SOCKET_PATH: &str = "/tmp/spire-agent/public/api.sock";
pub const DEFAULT_SERVER_PORT: u16 = 8081;
/// Where Kubernetes projects the agent's service account token for `k8s_psat` (SPIRE's default).
pub const DEFAULT_PSAT_TOKEN_PATH: &str = "/var/run/secrets/tokens/spire-agent";
const SERVICE_ACCOUNT_TOKEN: &str = "/var/run/secrets/kubernetes.io/serviceaccount/token";
const SERVICE_ACCOUNT_CA: &str = "/var/run/secrets/kubernetes.io/serviceaccount/ca.crt";

/// The validated agent configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentConfig {
    pub data_dir: PathBuf,
    pub log_level: LogLevel,
    pub log_format: LogFormat,
    /// The servers to dial, in order of preference: SPIRE's `server_address` (a name that may
    /// resolve to several addresses) with `server_port`, or Sigil's `server_addresses` list.
    pub servers: Vec<ServerAddress>,
    /// The Workload API's Unix socket.
    pub socket_path: PathBuf,
    pub trust_domain: TrustDomain,
    /// How the agent first trusts the server.
    pub trust_bundle: TrustBundleSource,
    /// `join_token` (or `-joinToken`), used by the `join_token` node attestor.
    pub join_token: Option<JoinToken>,
    pub allow_unauthenticated_verifiers: bool,
    /// `lost_identity_exit_delay`: how long an agent that lost its identity for good (its SVID
    /// expired or it was evicted, and it cannot attest again) keeps serving the workload SVIDs
    /// that are still valid before it exits non-zero. Default 1 min; `0s` exits at once.
    pub lost_identity_exit_delay: std::time::Duration,
    pub node_attestor: NodeAttestorConfig,
    pub key_manager: KeyManagerConfig,
    pub workload_attestors: WorkloadAttestorsConfig,
    pub health: Option<HealthConfig>,
    /// `allow_insecure_file_permissions = true`: start even when `data_dir`, the key directory
    /// or a stored key, SVID or bundle is open to other users (each is logged at WARN); off by
    /// default, when the agent refuses to start instead (OpenSSH's StrictModes).
    pub allow_insecure_file_permissions: bool,
}

/// One server to dial: a host name (every address it resolves to is tried) or an IP address,
/// and a port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerAddress {
    pub host: String,
    pub port: u16,
}

impl fmt::Display for ServerAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

impl std::str::FromStr for ServerAddress {
    type Err = String;

    /// `host:port`, `ip:port` or `[ipv6]:port`.
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || {
            format!(
                "{s:?} is not host:port (e.g. \"10.0.0.1:8081\" or \"sigil-1.example.org:8081\")"
            )
        };
        let (host, port) = s.rsplit_once(':').ok_or_else(bad)?;
        let host = match host.strip_prefix('[') {
            Some(v6) => {
                let v6 = v6.strip_suffix(']').ok_or_else(bad)?;
                v6.parse::<std::net::Ipv6Addr>().map_err(|_| bad())?;
                v6
            }
            // An unbracketed IPv6 address would be ambiguous with the port.
            None if host.contains(':') => return Err(bad()),
            None => host,
        };
        let host = parse_host(host).map_err(|_| bad())?;
        let port = hcl::parse_port(port).map_err(|e| format!("{s:?}: {e}"))?;
        Ok(ServerAddress { host, port })
    }
}

/// Where the agent's bootstrap trust in the server comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TrustBundleSource {
    /// `trust_bundle_path`: a PEM file of the server's CA certificates.
    Path(PathBuf),
    /// `insecure_bootstrap = true`: trust the server on first contact (test setups only).
    InsecureBootstrap,
}

/// A join token: a one-time secret, so its `Debug` hides it.
#[derive(Clone, PartialEq, Eq)]
pub struct JoinToken(String);

impl JoinToken {
    pub fn new(token: impl Into<String>) -> Self {
        JoinToken(token.into())
    }

    /// The secret itself, for the attestation request only.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for JoinToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("JoinToken(<redacted>)")
    }
}

/// The one `NodeAttestor` plugin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeAttestorConfig {
    JoinToken,
    K8sPsat(K8sPsatConfig),
}

/// `NodeAttestor "k8s_psat"` on the agent side.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct K8sPsatConfig {
    /// The cluster name, as configured on the server.
    pub cluster: String,
    /// The projected service account token (default [`DEFAULT_PSAT_TOKEN_PATH`]).
    pub token_path: PathBuf,
}

/// The `KeyManager` plugin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyManagerConfig {
    Memory,
    /// Keys persisted under `directory` (default: `data_dir`).
    Disk {
        directory: PathBuf,
    },
}

/// The `WorkloadAttestor` plugins; at least one is configured.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct WorkloadAttestorsConfig {
    pub unix: Option<UnixAttestorConfig>,
    pub k8s: Option<K8sAttestorConfig>,
}

/// `WorkloadAttestor "unix"`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct UnixAttestorConfig {
    /// Produce `unix:path` and `unix:sha256` selectors from the workload's executable.
    pub discover_workload_path: bool,
    /// Largest executable to hash, in bytes; 0 means no limit (SPIRE's meaning).
    pub workload_size_limit: u64,
}

/// `WorkloadAttestor "k8s"`, with SPIRE's defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct K8sAttestorConfig {
    pub skip_kubelet_verification: bool,
    /// The node name, if given directly; otherwise read from `node_name_env`.
    pub node_name: Option<String>,
    pub node_name_env: String,
    /// 0 means the read-only port is not used.
    pub kubelet_read_only_port: u16,
    pub kubelet_secure_port: u16,
    pub kubelet_ca_path: PathBuf,
    pub token_path: PathBuf,
    /// Sigil-only: where the host's procfs is mounted (`/proc`; e.g. `/host/proc` for agents
    /// that see the host's processes through a mount).
    pub proc_root: PathBuf,
}

/// Command-line flags that override the file (SPIRE's `-dataDir -logLevel -logFormat
/// -serverAddress -serverPort -socketPath -trustDomain -trustBundle -joinToken -expandEnv`).
/// Values are raw strings so that they are validated like the file's, with errors naming the
/// flag.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct AgentOverrides {
    pub data_dir: Option<String>,
    pub log_level: Option<String>,
    pub log_format: Option<String>,
    pub server_address: Option<String>,
    pub server_port: Option<String>,
    pub socket_path: Option<String>,
    pub trust_domain: Option<String>,
    pub trust_bundle: Option<String>,
    pub join_token: Option<JoinToken>,
    /// Expand `$VAR`/`${VAR}` from the environment in the file before parsing it.
    pub expand_env: bool,
}

impl fmt::Debug for AgentOverrides {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Spelled out so that a new field cannot slip past without a thought about secrets.
        f.debug_struct("AgentOverrides")
            .field("data_dir", &self.data_dir)
            .field("log_level", &self.log_level)
            .field("log_format", &self.log_format)
            .field("server_address", &self.server_address)
            .field("server_port", &self.server_port)
            .field("socket_path", &self.socket_path)
            .field("trust_domain", &self.trust_domain)
            .field("trust_bundle", &self.trust_bundle)
            .field("join_token", &self.join_token)
            .field("expand_env", &self.expand_env)
            .finish()
    }
}

impl AgentConfig {
    /// Reads and validates the config file at `path`, applying `overrides`. Errors name the
    /// file as `path` is written.
    pub fn load(path: &Path, overrides: &AgentOverrides) -> Result<AgentConfig, ConfigError> {
        let (file, text) = hcl::read_config_file(path, overrides.expand_env)?;
        AgentConfig::parse(&text, &file, overrides)
    }

    /// Validates config `text` (already expanded if `-expandEnv` was given: see `load`);
    /// `file_name` names it in errors.
    pub fn parse(
        text: &str,
        file_name: &str,
        overrides: &AgentOverrides,
    ) -> Result<AgentConfig, ConfigError> {
        let doc = Document::parse(file_name, text)?;
        let mut root = doc.root();

        let agent = root.block("agent")?.ok_or_else(|| root.missing("agent"))?;
        let agent = read_agent(agent, overrides)?;
        let plugins = root
            .block("plugins")?
            .ok_or_else(|| root.missing("plugins"))?;
        let plugins = read_plugins(plugins, &agent.data_dir)?;
        let health = HealthConfig::from_block(root.block("health_checks")?)?;
        root.finish()?;

        Ok(AgentConfig {
            data_dir: agent.data_dir,
            log_level: agent.log_level,
            log_format: agent.log_format,
            servers: agent.servers,
            socket_path: agent.socket_path,
            trust_domain: agent.trust_domain,
            trust_bundle: agent.trust_bundle,
            join_token: agent.join_token,
            allow_unauthenticated_verifiers: agent.allow_unauthenticated_verifiers,
            lost_identity_exit_delay: agent.lost_identity_exit_delay,
            node_attestor: plugins.node_attestor,
            key_manager: plugins.key_manager,
            workload_attestors: plugins.workload_attestors,
            health,
            allow_insecure_file_permissions: agent.allow_insecure_file_permissions,
        })
    }
}

/// The `agent` block, read.
struct AgentSection {
    data_dir: PathBuf,
    log_level: LogLevel,
    log_format: LogFormat,
    servers: Vec<ServerAddress>,
    socket_path: PathBuf,
    trust_domain: TrustDomain,
    trust_bundle: TrustBundleSource,
    join_token: Option<JoinToken>,
    allow_unauthenticated_verifiers: bool,
    lost_identity_exit_delay: std::time::Duration,
    allow_insecure_file_permissions: bool,
}

fn read_agent(mut a: Block<'_>, ov: &AgentOverrides) -> Result<AgentSection, ConfigError> {
    let data_dir = a
        .parsed_or_flag("data_dir", "-dataDir", ov.data_dir.as_deref(), parse_path)?
        .ok_or_else(|| a.missing("data_dir"))?;
    let log_level = a.parsed_or_flag(
        "log_level",
        "-logLevel",
        ov.log_level.as_deref(),
        str::parse,
    )?;
    let log_format = a.parsed_or_flag(
        "log_format",
        "-logFormat",
        ov.log_format.as_deref(),
        str::parse,
    )?;
    let servers = read_servers(&mut a, ov)?;
    let socket_path = a.parsed_or_flag(
        "socket_path",
        "-socketPath",
        ov.socket_path.as_deref(),
        parse_path,
    )?;
    let trust_domain = a
        .parsed_or_flag(
            "trust_domain",
            "-trustDomain",
            ov.trust_domain.as_deref(),
            parse_trust_domain,
        )?
        .ok_or_else(|| a.missing("trust_domain"))?;
    let trust_bundle_path = a.parsed_or_flag(
        "trust_bundle_path",
        "-trustBundle",
        ov.trust_bundle.as_deref(),
        parse_path,
    )?;
    let insecure_bootstrap = a.bool("insecure_bootstrap")?.unwrap_or(false);
    let trust_bundle = match (trust_bundle_path, insecure_bootstrap) {
        (Some(path), false) => TrustBundleSource::Path(path),
        (None, true) => TrustBundleSource::InsecureBootstrap,
        (None, false) => {
            return Err(a.error(
                "trust_bundle_path",
                "is required unless insecure_bootstrap = true",
            ));
        }
        // SPIRE refuses the combination too: it is unclear which one the operator meant.
        (Some(_), true) => {
            return Err(a.error(
                "insecure_bootstrap",
                "cannot be true together with trust_bundle_path; set only one of them",
            ));
        }
    };
    let join_token = match &ov.join_token {
        Some(token) => {
            a.skip("join_token");
            if token.expose().is_empty() {
                return Err(ConfigError::flag("-joinToken", "must not be empty"));
            }
            Some(token.clone())
        }
        // An empty token is "not set", as in SPIRE. The value never goes into a message.
        None => a
            .string("join_token")?
            .filter(|t| !t.is_empty())
            .map(JoinToken),
    };
    let allow_unauthenticated_verifiers =
        a.bool("allow_unauthenticated_verifiers")?.unwrap_or(false);
    let lost_identity_exit_delay = a
        .duration("lost_identity_exit_delay")?
        .unwrap_or(crate::rotation::DEFAULT_EXIT_DELAY);
    let allow_insecure_file_permissions =
        a.bool("allow_insecure_file_permissions")?.unwrap_or(false);
    a.finish()?;
    Ok(AgentSection {
        data_dir,
        log_level: log_level.unwrap_or_default(),
        log_format: log_format.unwrap_or_default(),
        servers,
        socket_path: socket_path.unwrap_or_else(|| PathBuf::from(DEFAULT_SOCKET_PATH)),
        trust_domain,
        trust_bundle,
        join_token,
        allow_unauthenticated_verifiers,
        lost_identity_exit_delay,
        allow_insecure_file_permissions,
    })
}

/// SPIRE's `server_address` + `server_port` (or `-serverAddress`/`-serverPort`), or Sigil's
/// `server_addresses = ["host:port", ...]`: one or the other, never both, so that which
/// servers the agent dials is never a guess.
fn read_servers(a: &mut Block<'_>, ov: &AgentOverrides) -> Result<Vec<ServerAddress>, ConfigError> {
    if a.has("server_addresses") {
        for (key, flag, flag_set) in [
            (
                "server_address",
                "-serverAddress",
                ov.server_address.is_some(),
            ),
            ("server_port", "-serverPort", ov.server_port.is_some()),
        ] {
            if flag_set {
                return Err(ConfigError::flag(
                    flag,
                    "cannot be used with server_addresses in the config file (each entry is host:port)",
                ));
            }
            if a.has(key) {
                return Err(a.error(
                    key,
                    "cannot be set together with server_addresses (each entry is host:port); set only one of them",
                ));
            }
        }
        let list = a.string_list("server_addresses")?.unwrap_or_default();
        if list.is_empty() {
            return Err(a.error("server_addresses", "must list at least one server"));
        }
        let mut servers: Vec<ServerAddress> = Vec::with_capacity(list.len());
        for item in &list {
            let server: ServerAddress = item
                .parse()
                .map_err(|e: String| a.error("server_addresses", e))?;
            if servers.contains(&server) {
                return Err(a.error("server_addresses", format!("{item:?} is listed twice")));
            }
            servers.push(server);
        }
        return Ok(servers);
    }
    let host = a
        .parsed_or_flag(
            "server_address",
            "-serverAddress",
            ov.server_address.as_deref(),
            parse_host,
        )?
        .ok_or_else(|| a.error("server_address", "is required (or server_addresses)"))?;
    let port = a.port_or_flag("server_port", "-serverPort", ov.server_port.as_deref())?;
    Ok(vec![ServerAddress {
        host,
        port: port.unwrap_or(DEFAULT_SERVER_PORT),
    }])
}

/// A host name or an IP address, without a scheme or port (the port is `server_port`).
fn parse_host(s: &str) -> Result<String, String> {
    if s.parse::<IpAddr>().is_ok() {
        return Ok(s.to_owned());
    }
    let is_label = |l: &str| {
        !l.is_empty()
            && l.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    };
    if s.split('.').all(is_label) {
        Ok(s.to_owned())
    } else {
        Err(format!(
            "{s:?} is not a host name or IP address (give the port in server_port)"
        ))
    }
}

/// The `plugins` block, read.
struct Plugins {
    node_attestor: NodeAttestorConfig,
    key_manager: KeyManagerConfig,
    workload_attestors: WorkloadAttestorsConfig,
}

fn read_plugins(mut p: Block<'_>, data_dir: &Path) -> Result<Plugins, ConfigError> {
    let mut node_attestor = None;
    for (name, mut plugin) in p.labelled_blocks("NodeAttestor")? {
        let na = match name.as_str() {
            "join_token" => {
                let Some(data) = plugin_data(&mut plugin)? else {
                    continue;
                };
                finish_empty(data)?;
                NodeAttestorConfig::JoinToken
            }
            "k8s_psat" => {
                let Some(data) = plugin_data(&mut plugin)? else {
                    continue;
                };
                let mut data = data.ok_or_else(|| plugin.missing("plugin_data"))?;
                let cluster = data
                    .string("cluster")?
                    .filter(|c| !c.is_empty())
                    .ok_or_else(|| data.missing("cluster"))?;
                let token_path = data
                    .optional_path("token_path")?
                    .unwrap_or_else(|| PathBuf::from(DEFAULT_PSAT_TOKEN_PATH));
                data.finish()?;
                NodeAttestorConfig::K8sPsat(K8sPsatConfig {
                    cluster,
                    token_path,
                })
            }
            _ => {
                return Err(unknown_plugin(
                    &plugin,
                    "NodeAttestor",
                    &name,
                    "\"join_token\", \"k8s_psat\"",
                ));
            }
        };
        if node_attestor.is_some() {
            return Err(plugin.error("", "only one NodeAttestor may be configured"));
        }
        node_attestor = Some(na);
        plugin.finish()?;
    }
    let node_attestor =
        node_attestor.ok_or_else(|| p.error("NodeAttestor", "exactly one is required"))?;

    let mut key_manager = None;
    for (name, mut plugin) in p.labelled_blocks("KeyManager")? {
        let km = match name.as_str() {
            "memory" => {
                let Some(data) = plugin_data(&mut plugin)? else {
                    continue;
                };
                finish_empty(data)?;
                KeyManagerConfig::Memory
            }
            "disk" => {
                let Some(data) = plugin_data(&mut plugin)? else {
                    continue;
                };
                let mut directory = None;
                if let Some(mut data) = data {
                    directory = data.parsed("directory", parse_path)?;
                    data.finish()?;
                }
                KeyManagerConfig::Disk {
                    directory: directory.unwrap_or_else(|| data_dir.to_owned()),
                }
            }
            _ => {
                return Err(unknown_plugin(
                    &plugin,
                    "KeyManager",
                    &name,
                    "\"memory\", \"disk\"",
                ));
            }
        };
        if key_manager.is_some() {
            return Err(plugin.error("", "only one KeyManager may be configured"));
        }
        key_manager = Some(km);
        plugin.finish()?;
    }
    let key_manager =
        key_manager.ok_or_else(|| p.error("KeyManager", "exactly one is required"))?;

    let mut workload_attestors = WorkloadAttestorsConfig::default();
    for (name, mut plugin) in p.labelled_blocks("WorkloadAttestor")? {
        let duplicate = match name.as_str() {
            "unix" => {
                let Some(data) = plugin_data(&mut plugin)? else {
                    continue;
                };
                let unix = read_unix(data)?;
                workload_attestors.unix.replace(unix).is_some()
            }
            "k8s" => {
                let Some(data) = plugin_data(&mut plugin)? else {
                    continue;
                };
                let k8s = read_k8s(data)?;
                workload_attestors.k8s.replace(k8s).is_some()
            }
            _ => {
                return Err(unknown_plugin(
                    &plugin,
                    "WorkloadAttestor",
                    &name,
                    "\"unix\", \"k8s\"",
                ));
            }
        };
        if duplicate {
            return Err(plugin.error("", "is configured more than once"));
        }
        plugin.finish()?;
    }
    if workload_attestors == WorkloadAttestorsConfig::default() {
        return Err(p.error("WorkloadAttestor", "at least one is required"));
    }

    p.finish()?;
    Ok(Plugins {
        node_attestor,
        key_manager,
        workload_attestors,
    })
}

fn read_unix(data: Option<Block<'_>>) -> Result<UnixAttestorConfig, ConfigError> {
    let Some(mut data) = data else {
        return Ok(UnixAttestorConfig::default());
    };
    let out = UnixAttestorConfig {
        discover_workload_path: data.bool("discover_workload_path")?.unwrap_or(false),
        workload_size_limit: data.u64("workload_size_limit")?.unwrap_or(0),
    };
    data.finish()?;
    Ok(out)
}

fn read_k8s(data: Option<Block<'_>>) -> Result<K8sAttestorConfig, ConfigError> {
    let mut out = K8sAttestorConfig {
        skip_kubelet_verification: false,
        node_name: None,
        node_name_env: "MY_NODE_NAME".to_owned(),
        kubelet_read_only_port: 0,
        kubelet_secure_port: 10250,
        kubelet_ca_path: PathBuf::from(SERVICE_ACCOUNT_CA),
        token_path: PathBuf::from(SERVICE_ACCOUNT_TOKEN),
        proc_root: PathBuf::from("/proc"),
    };
    let Some(mut data) = data else {
        return Ok(out);
    };
    if let Some(skip) = data.bool("skip_kubelet_verification")? {
        out.skip_kubelet_verification = skip;
    }
    out.node_name = data.string("node_name")?.filter(|n| !n.is_empty());
    if let Some(env) = data.string("node_name_env")?.filter(|e| !e.is_empty()) {
        out.node_name_env = env;
    }
    if let Some(port) = data.port("kubelet_read_only_port")? {
        out.kubelet_read_only_port = port;
    }
    // SPIRE treats 0 as "use the default".
    if let Some(port) = data.port("kubelet_secure_port")?.filter(|&p| p != 0) {
        out.kubelet_secure_port = port;
    }
    if let Some(path) = data.optional_path("kubelet_ca_path")? {
        out.kubelet_ca_path = path;
    }
    if let Some(path) = data.optional_path("token_path")? {
        out.token_path = path;
    }
    if let Some(path) = data.optional_path("proc_root")? {
        out.proc_root = path;
    }
    data.finish()?;
    Ok(out)
}

// Temporary: the plugin-table helpers this file used from proto's `hcl`, until the plugin
// table of sigil-common replaces them (next commit).
fn plugin_data<'a>(plugin: &mut Block<'a>) -> Result<Option<Option<Block<'a>>>, ConfigError> {
    if plugin.bool("enabled")? == Some(false) {
        plugin.skip("plugin_data");
        return Ok(None);
    }
    plugin.block("plugin_data").map(Some)
}

fn finish_empty(data: Option<Block<'_>>) -> Result<(), ConfigError> {
    data.map_or(Ok(()), Block::finish)
}

fn unknown_plugin(plugin: &Block<'_>, kind: &str, name: &str, supported: &str) -> ConfigError {
    plugin.error(
        "",
        format!("unknown {kind} plugin {name:?} (supported: {supported})"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// SPIRE's example agent config, paths under `dir`.
    fn spire_example(dir: &str) -> String {
        format!(
            r#"
agent {{
  data_dir = "{dir}/agent"
  log_level = "WARN"
  log_format = "json"
  server_address = "spire-server"
  server_port = "8443"
  socket_path = "{dir}/api.sock"
  trust_domain = "example.org"
  trust_bundle_path = "{dir}/bundle.crt"
  insecure_bootstrap = false
  join_token = "d3adb33f"
  allow_unauthenticated_verifiers = true
}}

plugins {{
  NodeAttestor "k8s_psat" {{
    plugin_data {{
      cluster = "my-cluster"
      token_path = "{dir}/token"
    }}
  }}

  KeyManager "disk" {{
    plugin_data {{
      directory = "{dir}/keys"
    }}
  }}

  WorkloadAttestor "unix" {{
    plugin_data {{
      discover_workload_path = true
      workload_size_limit = 1048576
    }}
  }}

  WorkloadAttestor "k8s" {{
    plugin_data {{
      skip_kubelet_verification = true
      node_name_env = "MY_NODE_NAME"
      kubelet_read_only_port = 0
      kubelet_secure_port = 10250
      kubelet_ca_path = ""
      token_path = ""
    }}
  }}
}}

health_checks {{
  listener_enabled = true
  bind_address = "127.0.0.1"
  bind_port = "8080"
  live_path = "/live"
  ready_path = "/ready"
}}
"#
        )
    }

    /// The smallest valid config; the malformed cases below are edits of it.
    const MINIMAL: &str = r#"agent {
  data_dir = "/var/lib/sigil-agent"
  server_address = "127.0.0.1"
  trust_domain = "example.org"
  trust_bundle_path = "/etc/sigil/bundle.crt"
}
plugins {
  NodeAttestor "join_token" {}
  KeyManager "memory" {}
  WorkloadAttestor "unix" {}
}
"#;

    fn parse(text: &str) -> Result<AgentConfig, ConfigError> {
        AgentConfig::parse(text, "agent.conf", &AgentOverrides::default())
    }

    #[test]
    fn spire_example_parses_into_typed_values() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().display().to_string();
        let path = dir.path().join("agent.conf");
        std::fs::write(&path, spire_example(&d)).unwrap();
        let cfg = AgentConfig::load(&path, &AgentOverrides::default()).unwrap();
        let want = AgentConfig {
            data_dir: dir.path().join("agent"),
            log_level: LogLevel::Warn,
            log_format: LogFormat::Json,
            servers: vec![ServerAddress {
                host: "spire-server".to_owned(),
                port: 8443,
            }],
            socket_path: dir.path().join("api.sock"),
            trust_domain: TrustDomain::new("example.org").unwrap(),
            trust_bundle: TrustBundleSource::Path(dir.path().join("bundle.crt")),
            join_token: Some(JoinToken::new("d3adb33f")),
            allow_unauthenticated_verifiers: true,
            lost_identity_exit_delay: std::time::Duration::from_secs(60),
            node_attestor: NodeAttestorConfig::K8sPsat(K8sPsatConfig {
                cluster: "my-cluster".to_owned(),
                token_path: dir.path().join("token"),
            }),
            key_manager: KeyManagerConfig::Disk {
                directory: dir.path().join("keys"),
            },
            workload_attestors: WorkloadAttestorsConfig {
                unix: Some(UnixAttestorConfig {
                    discover_workload_path: true,
                    workload_size_limit: 1_048_576,
                }),
                k8s: Some(K8sAttestorConfig {
                    skip_kubelet_verification: true,
                    node_name: None,
                    node_name_env: "MY_NODE_NAME".to_owned(),
                    kubelet_read_only_port: 0,
                    kubelet_secure_port: 10250,
                    kubelet_ca_path: PathBuf::from(SERVICE_ACCOUNT_CA),
                    token_path: PathBuf::from(SERVICE_ACCOUNT_TOKEN),
                    proc_root: PathBuf::from("/proc"),
                }),
            },
            health: Some(HealthConfig {
                bind: "127.0.0.1:8080".parse().unwrap(),
                live_path: "/live".to_owned(),
                ready_path: "/ready".to_owned(),
            }),
            allow_insecure_file_permissions: false,
        };
        assert_eq!(cfg, want);
        // The join token stays out of Debug output.
        assert!(!format!("{cfg:?}").contains("d3adb33f"));
    }

    #[test]
    fn insecure_file_permissions_override_is_off_by_default_and_spelled_exactly() {
        assert!(!parse(MINIMAL).unwrap().allow_insecure_file_permissions);
        let on = MINIMAL.replace(
            "agent {",
            "agent {\n  allow_insecure_file_permissions = true",
        );
        assert!(parse(&on).unwrap().allow_insecure_file_permissions);
        for bad in [
            "allow_insecure_file_permission = true",
            "allow_insecure_file_permissions = \"yes\"",
        ] {
            let text = MINIMAL.replace("agent {", &format!("agent {{\n  {bad}"));
            let err = parse(&text).unwrap_err().to_string();
            assert!(err.contains("allow_insecure_file_permission"), "{err}");
        }
    }

    #[test]
    fn defaults_apply() {
        let cfg = parse(MINIMAL).unwrap();
        assert_eq!(cfg.log_level, LogLevel::Info);
        assert_eq!(cfg.log_format, LogFormat::Text);
        assert_eq!(cfg.servers[0].port, 8081);
        assert_eq!(
            cfg.socket_path,
            Path::new("/tmp/spire-agent/public/api.sock")
        );
        assert_eq!(cfg.join_token, None);
        assert!(!cfg.allow_unauthenticated_verifiers);
        assert_eq!(cfg.node_attestor, NodeAttestorConfig::JoinToken);
        assert_eq!(cfg.key_manager, KeyManagerConfig::Memory);
        assert_eq!(
            cfg.workload_attestors,
            WorkloadAttestorsConfig {
                unix: Some(UnixAttestorConfig::default()),
                k8s: None
            }
        );
        assert_eq!(cfg.health, None);

        let text = MINIMAL
            .replace("KeyManager \"memory\" {}", "KeyManager \"disk\" {}")
            .replace(
                "NodeAttestor \"join_token\" {}",
                "NodeAttestor \"k8s_psat\" {\n    plugin_data {\n      cluster = \"c\"\n    }\n  }",
            )
            .replace(
                "  trust_bundle_path = \"/etc/sigil/bundle.crt\"\n",
                "  insecure_bootstrap = true\n",
            );
        let cfg = parse(&text).unwrap();
        assert_eq!(
            cfg.key_manager,
            KeyManagerConfig::Disk {
                directory: PathBuf::from("/var/lib/sigil-agent")
            }
        );
        assert_eq!(
            cfg.node_attestor,
            NodeAttestorConfig::K8sPsat(K8sPsatConfig {
                cluster: "c".to_owned(),
                token_path: PathBuf::from(DEFAULT_PSAT_TOKEN_PATH),
            })
        );
        assert_eq!(cfg.trust_bundle, TrustBundleSource::InsecureBootstrap);
    }

    #[test]
    fn flags_override_the_file() {
        let ov = AgentOverrides {
            data_dir: Some("/srv/agent".to_owned()),
            log_level: Some("debug".to_owned()),
            log_format: Some("json".to_owned()),
            server_address: Some("sigil.example.org".to_owned()),
            server_port: Some("9443".to_owned()),
            socket_path: Some("/run/sigil/workload.sock".to_owned()),
            trust_domain: Some("other.org".to_owned()),
            trust_bundle: Some("/run/bundle.pem".to_owned()),
            join_token: Some(JoinToken::new("from-flag")),
            expand_env: false,
        };
        let text = MINIMAL.replace(
            "agent {",
            "agent {\n  server_port = 7000\n  join_token = \"from-file\"",
        );
        let cfg = AgentConfig::parse(&text, "agent.conf", &ov).unwrap();
        assert_eq!(cfg.data_dir, Path::new("/srv/agent"));
        assert_eq!(cfg.log_level, LogLevel::Debug);
        assert_eq!(cfg.log_format, LogFormat::Json);
        assert_eq!(
            cfg.servers,
            vec![ServerAddress {
                host: "sigil.example.org".to_owned(),
                port: 9443
            }]
        );
        assert_eq!(cfg.socket_path, Path::new("/run/sigil/workload.sock"));
        assert_eq!(cfg.trust_domain.as_str(), "other.org");
        assert_eq!(
            cfg.trust_bundle,
            TrustBundleSource::Path(PathBuf::from("/run/bundle.pem"))
        );
        assert_eq!(
            cfg.join_token.as_ref().map(JoinToken::expose),
            Some("from-flag")
        );
        assert!(!format!("{ov:?}").contains("from-flag"));

        // -trustBundle alone satisfies the bootstrap requirement.
        let text = MINIMAL.replace("  trust_bundle_path = \"/etc/sigil/bundle.crt\"\n", "");
        let ov = AgentOverrides {
            trust_bundle: Some("/b.pem".to_owned()),
            ..Default::default()
        };
        let cfg = AgentConfig::parse(&text, "agent.conf", &ov).unwrap();
        assert_eq!(
            cfg.trust_bundle,
            TrustBundleSource::Path(PathBuf::from("/b.pem"))
        );
    }

    #[test]
    fn bad_flags_name_the_flag() {
        let cases = [
            (
                AgentOverrides {
                    server_port: Some("0x50".to_owned()),
                    ..Default::default()
                },
                "command line: -serverPort: \"0x50\" is not a valid port",
            ),
            (
                AgentOverrides {
                    server_address: Some("https://sigil:8081".to_owned()),
                    ..Default::default()
                },
                "command line: -serverAddress: \"https://sigil:8081\" is not a host name or IP address (give the port in server_port)",
            ),
            (
                AgentOverrides {
                    join_token: Some(JoinToken::new("")),
                    ..Default::default()
                },
                "command line: -joinToken: must not be empty",
            ),
            (
                AgentOverrides {
                    trust_domain: Some("spiffe://".to_owned()),
                    ..Default::default()
                },
                "command line: -trustDomain: \"spiffe://\" is not a valid trust domain: trust domain is missing",
            ),
        ];
        for (ov, want) in cases {
            let err = AgentConfig::parse(MINIMAL, "agent.conf", &ov).unwrap_err();
            assert_eq!(err.to_string(), want);
        }
    }

    #[test]
    fn malformed_configs_name_file_line_and_key() {
        let cases: &[(&str, &str, &str)] = &[
            (
                "unknown key in agent",
                "agent {",
                "agent {\n  server_adress = \"x\"",
            ),
            (
                "unknown top-level block",
                "plugins {",
                "server {\n}\nplugins {",
            ),
            (
                "unknown plugin",
                "KeyManager \"memory\" {}",
                "KeyManager \"vault\" {}",
            ),
            (
                "two NodeAttestors",
                "  KeyManager",
                "  NodeAttestor \"join_token\" {}\n  KeyManager",
            ),
            (
                "missing trust_domain",
                "  trust_domain = \"example.org\"\n",
                "",
            ),
            ("bad trust domain", "\"example.org\"", "\"Example.org\""),
            ("bad port", "agent {", "agent {\n  server_port = 65536"),
            (
                "bad log level",
                "agent {",
                "agent {\n  log_level = \"verbose\"",
            ),
            ("syntax error", "agent {", "agent {\n  log_level \"INFO\""),
            (
                "no trust bundle, no insecure_bootstrap",
                "  trust_bundle_path = \"/etc/sigil/bundle.crt\"\n",
                "",
            ),
            (
                "trust bundle and insecure_bootstrap",
                "agent {",
                "agent {\n  insecure_bootstrap = true",
            ),
            (
                "no WorkloadAttestor",
                "  WorkloadAttestor \"unix\" {}\n",
                "",
            ),
            (
                "server address with a port",
                "\"127.0.0.1\"",
                "\"127.0.0.1:8081\"",
            ),
            (
                "bad workload attestor setting",
                "WorkloadAttestor \"unix\" {}",
                "WorkloadAttestor \"unix\" {\n    plugin_data {\n      discover_workload_path = \"maybe\"\n    }\n  }",
            ),
            (
                "k8s_psat without cluster",
                "NodeAttestor \"join_token\" {}",
                "NodeAttestor \"k8s_psat\" {\n    plugin_data {}\n  }",
            ),
        ];
        let want = [
            "agent.conf:2: agent.server_adress: unknown key",
            "agent.conf:7: server: unknown block",
            "agent.conf:9: plugins.KeyManager.vault: unknown KeyManager plugin \"vault\" (supported: \"memory\", \"disk\")",
            "agent.conf:9: plugins.NodeAttestor.join_token: only one NodeAttestor may be configured",
            "agent.conf:1: agent.trust_domain: is required",
            "agent.conf:4: agent.trust_domain: \"Example.org\" is not a valid trust domain: trust domain characters are limited to lowercase letters, numbers, dots, dashes, and underscores",
            "agent.conf:2: agent.server_port: 65536 is not a valid port",
            "agent.conf:2: agent.log_level: \"verbose\" is not a valid log level (expected DEBUG, INFO, WARN or ERROR)",
            "agent.conf:2: HCL syntax error: expected `{`",
            "agent.conf:1: agent.trust_bundle_path: is required unless insecure_bootstrap = true",
            "agent.conf:1: agent.insecure_bootstrap: cannot be true together with trust_bundle_path; set only one of them",
            "agent.conf:7: plugins.WorkloadAttestor: at least one is required",
            "agent.conf:3: agent.server_address: \"127.0.0.1:8081\" is not a host name or IP address (give the port in server_port)",
            "agent.conf:12: plugins.WorkloadAttestor.unix.plugin_data.discover_workload_path: \"maybe\" is not true or false",
            "agent.conf:9: plugins.NodeAttestor.k8s_psat.plugin_data.cluster: is required",
        ];
        assert_eq!(cases.len(), want.len());
        for ((name, from, to), want) in cases.iter().zip(want) {
            assert!(
                MINIMAL.contains(from),
                "{name}: fixture does not contain {from:?}"
            );
            let text = MINIMAL.replacen(from, to, 1);
            let err = parse(&text).expect_err(name);
            assert_eq!(err.to_string(), want, "{name}:\n{text}");
        }
    }

    #[test]
    fn join_token_never_appears_in_errors() {
        let text = MINIMAL.replace("agent {", "agent {\n  join_token = 12345");
        let err = parse(&text).unwrap_err().to_string();
        assert_eq!(
            err,
            "agent.conf:2: agent.join_token: expected a string, found a number"
        );
    }

    #[test]
    fn server_addresses_lists_several_servers() {
        let text = MINIMAL.replace(
            "  server_address = \"127.0.0.1\"\n",
            "  server_addresses = [\"10.0.0.1:8081\", \"sigil-2.example.org:9443\", \"[::1]:8081\"]\n",
        );
        let cfg = parse(&text).unwrap();
        let shown: Vec<String> = cfg.servers.iter().map(ToString::to_string).collect();
        assert_eq!(
            shown,
            ["10.0.0.1:8081", "sigil-2.example.org:9443", "[::1]:8081"]
        );
        assert_eq!(cfg.servers[2].host, "::1");
    }

    #[test]
    fn server_addresses_refuses_mixing_empty_and_bad_entries() {
        let list = |items: &str| {
            MINIMAL.replace(
                "  server_address = \"127.0.0.1\"\n",
                &format!("  server_addresses = [{items}]\n"),
            )
        };
        let cases = [
            (
                MINIMAL.replace(
                    "agent {",
                    "agent {\n  server_addresses = [\"10.0.0.1:8081\"]",
                ),
                "agent.conf:1: agent.server_address: cannot be set together with server_addresses (each entry is host:port); set only one of them",
            ),
            (
                list("\"10.0.0.1:8081\"").replace("agent {", "agent {\n  server_port = 8081"),
                "agent.conf:1: agent.server_port: cannot be set together with server_addresses (each entry is host:port); set only one of them",
            ),
            (
                list(""),
                "agent.conf:1: agent.server_addresses: must list at least one server",
            ),
            (
                list("\"10.0.0.1\""),
                "agent.conf:1: agent.server_addresses: \"10.0.0.1\" is not host:port (e.g. \"10.0.0.1:8081\" or \"sigil-1.example.org:8081\")",
            ),
            (
                list("\"::1:8081\""),
                "agent.conf:1: agent.server_addresses: \"::1:8081\" is not host:port (e.g. \"10.0.0.1:8081\" or \"sigil-1.example.org:8081\")",
            ),
            (
                list("\"a:99999\""),
                "agent.conf:1: agent.server_addresses: \"a:99999\": \"99999\" is not a valid port",
            ),
            (
                list("\"a:1\", \"a:1\""),
                "agent.conf:1: agent.server_addresses: \"a:1\" is listed twice",
            ),
            (
                list("7"),
                "agent.conf:3: agent.server_addresses: expected a list of strings, found a number in the list",
            ),
            (
                MINIMAL.replace("  server_address = \"127.0.0.1\"\n", ""),
                "agent.conf:1: agent.server_address: is required (or server_addresses)",
            ),
        ];
        for (text, want) in cases {
            let err = parse(&text).expect_err(want);
            assert_eq!(err.to_string(), want, "{text}");
        }
        let flag = AgentOverrides {
            server_address: Some("10.0.0.9".to_owned()),
            ..AgentOverrides::default()
        };
        let err = AgentConfig::parse(&list("\"10.0.0.1:8081\""), "agent.conf", &flag).unwrap_err();
        assert_eq!(
            err.to_string(),
            "command line: -serverAddress: cannot be used with server_addresses in the config file (each entry is host:port)"
        );
    }
}

/// The input space of the `agent_config` fuzz target (fuzz/), run in CI as a property test:
/// arbitrary text and edits of a valid config never panic the parser (issue #7 item 4).
#[cfg(test)]
mod proptests {
    use proptest::prelude::*;

    use super::*;

    const VALID: &str = r#"
agent {
  data_dir = "/tmp/sigil-proptest"
  log_level = "DEBUG"
  server_address = "127.0.0.1"
  server_port = "8081"
  socket_path = "/tmp/sigil-proptest/agent.sock"
  trust_domain = "example.org"
  trust_bundle_path = "/tmp/sigil-proptest/bundle.crt"
  join_token = "abc"
}
plugins {
  NodeAttestor "join_token" {}
  KeyManager "memory" {}
  WorkloadAttestor "unix" {
    plugin_data {
      discover_workload_path = true
    }
  }
  WorkloadAttestor "k8s" {
    plugin_data {
      node_name_env = "MY_NODE_NAME"
    }
  }
}
health_checks {
  listener_enabled = true
  bind_port = "8082"
}
"#;

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

    proptest! {
        #[test]
        fn arbitrary_text_never_panics(text in any::<String>()) {
            let _ = AgentConfig::parse(&text, "agent.conf", &AgentOverrides::default());
        }

        #[test]
        fn edited_valid_config_never_panics(
            edits in prop::collection::vec(
                (0..VALID.len(), 0usize..16, "[ -~\\n{}\\[\\]\"=#:.$é\u{0}]{0,12}"),
                1..4,
            ),
        ) {
            let mut text = VALID.to_owned();
            for (at, len, insert) in &edits {
                text = edit(&text, *at, *len, insert);
            }
            let _ = AgentConfig::parse(&text, "agent.conf", &AgentOverrides::default());
        }
    }

    #[test]
    fn the_seed_is_valid() {
        AgentConfig::parse(VALID, "agent.conf", &AgentOverrides::default()).unwrap();
    }
}
