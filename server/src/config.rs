//! sigil-server's configuration: SPIRE's `server.conf` layout and key names, read once into
//! validated types before anything binds. Command-line flags (SPIRE's spellings) override the
//! file. Every error names the file, the line and the key (or the flag).

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use sigil_common::hcl::ConfigError;
use sigil_common::hcl::{self, Block, Document, parse_path, parse_trust_domain};
pub use sigil_common::health_checks::HealthConfig;
pub use sigil_common::log_config::{LogFormat, LogLevel};
use sigil_proto::TrustDomain;

pub use crate::ca::upstream::UpstreamDiskConfig;
use crate::key_manager::KeyType;
pub use crate::oidc_discovery::OidcDiscoveryConfig;

/// SPIRE's default admin socket.
pub const DEFAULT_SOCKET_PATH: &str = "/tmp/spire-server/private/api.sock";
pub const DEFAULT_BIND_PORT: u16 = 8081;
pub const DEFAULT_CA_TTL: Duration = Duration::from_secs(24 * 3600);
pub const DEFAULT_X509_SVID_TTL: Duration = Duration::from_secs(3600);
pub const DEFAULT_JWT_SVID_TTL: Duration = Duration::from_secs(5 * 60);
/// SPIRE's default agent SVID lifetime.
pub const DEFAULT_AGENT_TTL: Duration = Duration::from_secs(3600);
/// The shortest lifetime Sigil issues an X509-SVID, JWT-SVID or agent SVID for. Agents renew
/// at half-life, so shorter lifetimes turn into a signing loop; the SPIFFE client libraries'
/// own test fixtures go down to 5 s. SPIRE sets no floor.
pub const MIN_SVID_TTL: Duration = Duration::from_secs(5);

/// Checks an SVID TTL in seconds (an entry field, a flag): 0 means "the server's default";
/// anything else must be at least [`MIN_SVID_TTL`]. The error names the floor.
pub fn check_svid_ttl(seconds: u64) -> Result<(), String> {
    if seconds != 0 && seconds < MIN_SVID_TTL.as_secs() {
        return Err(format!(
            "{seconds}s is below the minimum SVID TTL of {}s",
            MIN_SVID_TTL.as_secs()
        ));
    }
    Ok(())
}

/// The validated server configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerConfig {
    /// Where the agent API listens (`bind_address` + `bind_port`).
    pub bind_address: SocketAddr,
    /// The admin API's Unix socket.
    pub socket_path: PathBuf,
    pub trust_domain: TrustDomain,
    pub data_dir: PathBuf,
    pub log_level: LogLevel,
    pub log_format: LogFormat,
    pub ca_ttl: Duration,
    /// `default_x509_svid_ttl` (or SPIRE's older `default_svid_ttl`).
    pub x509_svid_ttl: Duration,
    /// `default_jwt_svid_ttl`.
    pub jwt_svid_ttl: Duration,
    /// `agent_ttl`: lifetime of agent SVIDs, separate from workload SVIDs so an agent outlives a
    /// server outage longer than a workload SVID's lifetime.
    pub agent_ttl: Duration,
    pub jwt_issuer: Option<String>,
    /// `ca_key_type`: parsed straight into the key manager's type, so an unsupported one
    /// (RSA) is a config error.
    pub ca_key_type: KeyType,
    pub ca_subject: CaSubject,
    pub datastore: DatastoreConfig,
    pub key_manager: KeyManagerConfig,
    /// `UpstreamAuthority "disk"`: the operator's CA signs ours (files read at start-up).
    pub upstream_authority: Option<UpstreamDiskConfig>,
    pub node_attestors: NodeAttestorsConfig,
    /// The `Notifier "k8sbundle"` plugin.
    pub bundle_publisher: Option<K8sBundleConfig>,
    pub health: Option<HealthConfig>,
    /// The Prometheus listener (`telemetry { Prometheus { host port } }`).
    pub metrics: Option<SocketAddr>,
    /// `oidc_discovery { ... }`: the built-in OIDC discovery / JWKS endpoint.
    pub oidc_discovery: Option<OidcDiscoveryConfig>,
    /// `server { federation { ... } }`: bundle endpoint and federated trust domains.
    pub federation: Option<crate::federation::config::FederationConfig>,
    /// `server { ratelimit { attestation signing } }`.
    pub rate_limit: RateLimitConfig,
    /// `allow_insecure_file_permissions = true`: start even when a key file, the datastore file
    /// or `data_dir` is open to other users (each is logged at WARN); off by default, when the
    /// server refuses to start instead (OpenSSH's StrictModes).
    pub allow_insecure_file_permissions: bool,
    /// `server { connection_limits { ... } }`: each TCP listener's connection caps.
    pub connection_limits: crate::listener::ConnectionLimitsConfig,
}

/// `server { ratelimit { ... } }`: SPIRE's switches for the agent API's rate limits (node
/// attestation 1/s per source IP, signing 500/s per agent). Both on by default.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimitConfig {
    pub attestation: bool,
    pub signing: bool,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        RateLimitConfig {
            attestation: true,
            signing: true,
        }
    }
}

/// `ca_subject`: the subject of the CA certificates. SPIRE's default is `C=US, O=SPIFFE`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaSubject {
    pub country: Vec<String>,
    pub organization: Vec<String>,
    pub common_name: String,
}

impl Default for CaSubject {
    fn default() -> Self {
        CaSubject {
            country: vec!["US".to_owned()],
            organization: vec!["SPIFFE".to_owned()],
            common_name: String::new(),
        }
    }
}

/// `database_type` of the `DataStore "sql"` plugin.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DatabaseType {
    #[default]
    Sqlite3,
    /// PostgreSQL: `connection_string` is a URL or libpq `key=value` DSN.
    Postgres,
}

/// The `DataStore "sql"` plugin.
#[derive(Clone, PartialEq, Eq)]
pub struct DatastoreConfig {
    pub database_type: DatabaseType,
    /// A SQLite file path (default `<data_dir>/datastore.sqlite3`) or a PostgreSQL DSN.
    pub connection_string: String,
}

impl fmt::Debug for DatastoreConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // A PostgreSQL DSN may carry a password; a SQLite path is only a path.
        let conn = match self.database_type {
            DatabaseType::Sqlite3 => self.connection_string.as_str(),
            DatabaseType::Postgres => "<redacted>",
        };
        f.debug_struct("DatastoreConfig")
            .field("database_type", &self.database_type)
            .field("connection_string", &conn)
            .finish()
    }
}

/// The `KeyManager` plugin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyManagerConfig {
    Memory,
    /// Keys persisted to `keys_path` (default `<data_dir>/keys.json`).
    Disk {
        keys_path: PathBuf,
    },
}

/// The `NodeAttestor` plugins; at least one is configured.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NodeAttestorsConfig {
    pub join_token: bool,
    pub k8s_psat: Option<K8sPsatConfig>,
}

/// `NodeAttestor "k8s_psat"`: which clusters' projected service account tokens are accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct K8sPsatConfig {
    /// At least one cluster.
    pub clusters: BTreeMap<String, K8sPsatCluster>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct K8sPsatCluster {
    /// `namespace:service_account` pairs allowed to attest; not empty.
    pub service_account_allow_list: Vec<String>,
    /// Expected token audiences; SPIRE's default is `["spire-server"]`.
    pub audience: Vec<String>,
    /// `None` means in-cluster credentials.
    pub kube_config_file: Option<PathBuf>,
    pub allowed_node_label_keys: Vec<String>,
    pub allowed_pod_label_keys: Vec<String>,
}

/// `Notifier "k8sbundle"`: publishes the trust bundle to a ConfigMap.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct K8sBundleConfig {
    pub namespace: String,
    pub config_map: String,
    pub config_map_key: String,
    /// `None` means in-cluster credentials.
    pub kube_config_file_path: Option<PathBuf>,
}

/// Command-line flags that override the file (SPIRE's `-trustDomain -dataDir -logLevel
/// -logFormat -bindAddress -serverPort -socketPath -expandEnv`). Values are raw strings so that
/// they are validated like the file's, with errors naming the flag.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServerOverrides {
    pub trust_domain: Option<String>,
    pub data_dir: Option<String>,
    pub log_level: Option<String>,
    pub log_format: Option<String>,
    pub bind_address: Option<String>,
    pub server_port: Option<String>,
    pub socket_path: Option<String>,
    /// Expand `$VAR`/`${VAR}` from the environment in the file before parsing it.
    pub expand_env: bool,
}

impl ServerConfig {
    /// Reads and validates the config file at `path`, applying `overrides`. Errors name the
    /// file as `path` is written.
    pub fn load(path: &Path, overrides: &ServerOverrides) -> Result<ServerConfig, ConfigError> {
        let (file, text) = hcl::read_config_file(path, overrides.expand_env)?;
        ServerConfig::parse(&text, &file, overrides)
    }

    /// Validates config `text` (already expanded if `-expandEnv` was given: see `load`);
    /// `file_name` names it in errors.
    pub fn parse(
        text: &str,
        file_name: &str,
        overrides: &ServerOverrides,
    ) -> Result<ServerConfig, ConfigError> {
        let doc = Document::parse(file_name, text)?;
        let mut root = doc.root();

        let server = root
            .block("server")?
            .ok_or_else(|| root.missing("server"))?;
        let server = read_server(server, overrides)?;
        let plugins = root
            .block("plugins")?
            .ok_or_else(|| root.missing("plugins"))?;
        let plugins = read_plugins(plugins, &server.data_dir)?;
        let health = HealthConfig::from_block(root.block("health_checks")?)?;
        let metrics = read_telemetry(root.block("telemetry")?)?;
        let oidc_discovery = crate::oidc_discovery::read_config(root.block("oidc_discovery")?)?;
        root.finish()?;

        Ok(ServerConfig {
            bind_address: server.bind_address,
            socket_path: server.socket_path,
            trust_domain: server.trust_domain,
            data_dir: server.data_dir,
            log_level: server.log_level,
            log_format: server.log_format,
            ca_ttl: server.ca_ttl,
            x509_svid_ttl: server.x509_svid_ttl,
            jwt_svid_ttl: server.jwt_svid_ttl,
            agent_ttl: server.agent_ttl,
            jwt_issuer: server.jwt_issuer,
            ca_key_type: server.ca_key_type,
            ca_subject: server.ca_subject,
            datastore: plugins.datastore,
            key_manager: plugins.key_manager,
            upstream_authority: plugins.upstream_authority,
            node_attestors: plugins.node_attestors,
            bundle_publisher: plugins.bundle_publisher,
            health,
            metrics,
            oidc_discovery,
            federation: server.federation,
            rate_limit: server.rate_limit,
            allow_insecure_file_permissions: server.allow_insecure_file_permissions,
            connection_limits: server.connection_limits,
        })
    }
}

/// The `server` block, read.
struct ServerSection {
    federation: Option<crate::federation::config::FederationConfig>,
    bind_address: SocketAddr,
    socket_path: PathBuf,
    trust_domain: TrustDomain,
    data_dir: PathBuf,
    log_level: LogLevel,
    log_format: LogFormat,
    ca_ttl: Duration,
    x509_svid_ttl: Duration,
    jwt_svid_ttl: Duration,
    agent_ttl: Duration,
    jwt_issuer: Option<String>,
    ca_key_type: KeyType,
    ca_subject: CaSubject,
    rate_limit: RateLimitConfig,
    allow_insecure_file_permissions: bool,
    connection_limits: crate::listener::ConnectionLimitsConfig,
}

fn read_server(mut s: Block<'_>, ov: &ServerOverrides) -> Result<ServerSection, ConfigError> {
    let ip = s.parsed_or_flag(
        "bind_address",
        "-bindAddress",
        ov.bind_address.as_deref(),
        parse_ip,
    )?;
    let port = s.port_or_flag("bind_port", "-serverPort", ov.server_port.as_deref())?;
    let socket_path = s.parsed_or_flag(
        "socket_path",
        "-socketPath",
        ov.socket_path.as_deref(),
        parse_path,
    )?;
    let trust_domain = s
        .parsed_or_flag(
            "trust_domain",
            "-trustDomain",
            ov.trust_domain.as_deref(),
            parse_trust_domain,
        )?
        .ok_or_else(|| s.missing("trust_domain"))?;
    let data_dir = s
        .parsed_or_flag("data_dir", "-dataDir", ov.data_dir.as_deref(), parse_path)?
        .ok_or_else(|| s.missing("data_dir"))?;
    let log_level = s.parsed_or_flag(
        "log_level",
        "-logLevel",
        ov.log_level.as_deref(),
        str::parse,
    )?;
    let log_format = s.parsed_or_flag(
        "log_format",
        "-logFormat",
        ov.log_format.as_deref(),
        str::parse,
    )?;
    let ca_ttl = positive(&mut s, "ca_ttl")?.unwrap_or(DEFAULT_CA_TTL);
    let x509_svid_ttl = match (
        svid_ttl(&mut s, "default_x509_svid_ttl")?,
        svid_ttl(&mut s, "default_svid_ttl")?,
    ) {
        (Some(_), Some(_)) => {
            return Err(s.error(
                "default_svid_ttl",
                "is the older name of default_x509_svid_ttl; set only one of them",
            ));
        }
        (ttl, older) => ttl.or(older).unwrap_or(DEFAULT_X509_SVID_TTL),
    };
    let jwt_svid_ttl = svid_ttl(&mut s, "default_jwt_svid_ttl")?.unwrap_or(DEFAULT_JWT_SVID_TTL);
    let agent_ttl = svid_ttl(&mut s, "agent_ttl")?.unwrap_or(DEFAULT_AGENT_TTL);
    let jwt_issuer = s.string("jwt_issuer")?.filter(|i| !i.is_empty());
    let ca_key_type = s
        .parsed("ca_key_type", |t| {
            t.parse::<KeyType>().map_err(|e| e.to_string())
        })?
        .unwrap_or_default();
    let ca_subject = match s.block("ca_subject")? {
        Some(mut subject) => {
            let out = CaSubject {
                country: subject.string_list("country")?.unwrap_or_default(),
                organization: subject.string_list("organization")?.unwrap_or_default(),
                common_name: subject.string("common_name")?.unwrap_or_default(),
            };
            subject.finish()?;
            out
        }
        None => CaSubject::default(),
    };
    let federation = crate::federation::config::read(s.block("federation")?)?;
    let rate_limit = match s.block("ratelimit")? {
        Some(mut r) => {
            let defaults = RateLimitConfig::default();
            let out = RateLimitConfig {
                attestation: r.bool("attestation")?.unwrap_or(defaults.attestation),
                signing: r.bool("signing")?.unwrap_or(defaults.signing),
            };
            r.finish()?;
            out
        }
        None => RateLimitConfig::default(),
    };
    let allow_insecure_file_permissions =
        s.bool("allow_insecure_file_permissions")?.unwrap_or(false);
    let connection_limits =
        crate::listener::ConnectionLimitsConfig::read(s.block("connection_limits")?)?;
    s.finish()?;
    Ok(ServerSection {
        federation,
        connection_limits,
        bind_address: SocketAddr::new(
            ip.unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED)),
            port.unwrap_or(DEFAULT_BIND_PORT),
        ),
        socket_path: socket_path.unwrap_or_else(|| PathBuf::from(DEFAULT_SOCKET_PATH)),
        trust_domain,
        data_dir,
        log_level: log_level.unwrap_or_default(),
        log_format: log_format.unwrap_or_default(),
        ca_ttl,
        x509_svid_ttl,
        jwt_svid_ttl,
        agent_ttl,
        jwt_issuer,
        ca_key_type,
        ca_subject,
        rate_limit,
        allow_insecure_file_permissions,
    })
}

/// A duration that must not be zero: a zero TTL would mint certificates that are born expired.
fn positive(block: &mut Block<'_>, key: &str) -> Result<Option<Duration>, ConfigError> {
    block.parsed(key, |s| match hcl::parse_duration(s)? {
        Duration::ZERO => Err(format!("{s:?} must be greater than zero")),
        d => Ok(d),
    })
}

/// An SVID lifetime: positive and at least [`MIN_SVID_TTL`].
fn svid_ttl(block: &mut Block<'_>, key: &str) -> Result<Option<Duration>, ConfigError> {
    block.parsed(key, |s| match hcl::parse_duration(s)? {
        Duration::ZERO => Err(format!("{s:?} must be greater than zero")),
        d if d < MIN_SVID_TTL => Err(format!(
            "{s:?} is below the minimum SVID TTL of {}s",
            MIN_SVID_TTL.as_secs()
        )),
        d => Ok(d),
    })
}

fn parse_ip(s: &str) -> Result<IpAddr, String> {
    s.parse()
        .map_err(|_| format!("{s:?} is not a valid IP address"))
}

/// The `plugins` block, read.
struct Plugins {
    datastore: DatastoreConfig,
    key_manager: KeyManagerConfig,
    upstream_authority: Option<UpstreamDiskConfig>,
    node_attestors: NodeAttestorsConfig,
    bundle_publisher: Option<K8sBundleConfig>,
}

fn read_plugins(mut p: Block<'_>, data_dir: &Path) -> Result<Plugins, ConfigError> {
    let mut datastore = None;
    for (name, mut plugin) in p.labelled_blocks("DataStore")? {
        if name != "sql" {
            return Err(unknown_plugin(&plugin, "DataStore", &name, "\"sql\""));
        }
        let Some(data) = plugin_data(&mut plugin)? else {
            continue;
        };
        if datastore.is_some() {
            return Err(plugin.error("", "only one DataStore may be configured"));
        }
        datastore = Some(read_sql_datastore(data, data_dir)?);
        plugin.finish()?;
    }
    let datastore = datastore.ok_or_else(|| p.error("DataStore", "exactly one is required"))?;

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
                let mut keys_path = None;
                if let Some(mut data) = data {
                    keys_path = data.parsed("keys_path", parse_path)?;
                    data.finish()?;
                }
                KeyManagerConfig::Disk {
                    keys_path: keys_path.unwrap_or_else(|| data_dir.join("keys.json")),
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

    let mut upstream_authority = None;
    for (name, mut plugin) in p.labelled_blocks("UpstreamAuthority")? {
        if name != "disk" {
            return Err(unknown_plugin(
                &plugin,
                "UpstreamAuthority",
                &name,
                "\"disk\"",
            ));
        }
        let Some(data) = plugin_data(&mut plugin)? else {
            continue;
        };
        let mut data = data.ok_or_else(|| plugin.missing("plugin_data"))?;
        let cert_file_path = data
            .parsed("cert_file_path", parse_path)?
            .ok_or_else(|| data.missing("cert_file_path"))?;
        let key_file_path = data
            .parsed("key_file_path", parse_path)?
            .ok_or_else(|| data.missing("key_file_path"))?;
        let bundle_file_path = data.parsed("bundle_file_path", parse_path)?;
        data.finish()?;
        if upstream_authority.is_some() {
            return Err(plugin.error("", "only one UpstreamAuthority may be configured"));
        }
        upstream_authority = Some(UpstreamDiskConfig {
            cert_file_path,
            key_file_path,
            bundle_file_path,
        });
        plugin.finish()?;
    }

    let mut node_attestors = NodeAttestorsConfig::default();
    for (name, mut plugin) in p.labelled_blocks("NodeAttestor")? {
        let duplicate = match name.as_str() {
            "join_token" => {
                let Some(data) = plugin_data(&mut plugin)? else {
                    continue;
                };
                finish_empty(data)?;
                std::mem::replace(&mut node_attestors.join_token, true)
            }
            "k8s_psat" => {
                let Some(data) = plugin_data(&mut plugin)? else {
                    continue;
                };
                let data = data.ok_or_else(|| plugin.missing("plugin_data"))?;
                let psat = read_k8s_psat(data)?;
                node_attestors.k8s_psat.replace(psat).is_some()
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
        if duplicate {
            return Err(plugin.error("", "is configured more than once"));
        }
        plugin.finish()?;
    }
    if node_attestors == NodeAttestorsConfig::default() {
        return Err(p.error("NodeAttestor", "at least one is required"));
    }

    let mut bundle_publisher = None;
    for (name, mut plugin) in p.labelled_blocks("Notifier")? {
        if name != "k8sbundle" {
            return Err(unknown_plugin(&plugin, "Notifier", &name, "\"k8sbundle\""));
        }
        let Some(data) = plugin_data(&mut plugin)? else {
            continue;
        };
        if bundle_publisher.is_some() {
            return Err(plugin.error("", "is configured more than once"));
        }
        bundle_publisher = Some(read_k8sbundle(data)?);
        plugin.finish()?;
    }

    p.finish()?;
    Ok(Plugins {
        datastore,
        key_manager,
        upstream_authority,
        node_attestors,
        bundle_publisher,
    })
}

fn read_sql_datastore(
    data: Option<Block<'_>>,
    data_dir: &Path,
) -> Result<DatastoreConfig, ConfigError> {
    let Some(mut data) = data else {
        return Ok(DatastoreConfig {
            database_type: DatabaseType::Sqlite3,
            connection_string: default_sqlite_path(data_dir),
        });
    };
    let database_type = data
        .parsed("database_type", |s| match s {
            "sqlite3" => Ok(DatabaseType::Sqlite3),
            "postgres" => Ok(DatabaseType::Postgres),
            _ => Err(format!(
                "{s:?} is not a supported database type (expected sqlite3 or postgres)"
            )),
        })?
        .unwrap_or_default();
    let connection_string = data.string("connection_string")?.filter(|c| !c.is_empty());
    let connection_string = match (connection_string, database_type) {
        (Some(c), _) => c,
        (None, DatabaseType::Sqlite3) => default_sqlite_path(data_dir),
        (None, DatabaseType::Postgres) => return Err(data.missing("connection_string")),
    };
    data.finish()?;
    Ok(DatastoreConfig {
        database_type,
        connection_string,
    })
}

fn default_sqlite_path(data_dir: &Path) -> String {
    data_dir.join("datastore.sqlite3").display().to_string()
}

fn read_k8s_psat(mut data: Block<'_>) -> Result<K8sPsatConfig, ConfigError> {
    let entries = data
        .object_map("clusters")?
        .ok_or_else(|| data.missing("clusters"))?;
    if entries.is_empty() {
        return Err(data.error("clusters", "must name at least one cluster"));
    }
    let mut clusters = BTreeMap::new();
    for (name, mut c) in entries {
        let service_account_allow_list = c
            .string_list("service_account_allow_list")?
            .filter(|l| !l.is_empty())
            .ok_or_else(|| {
                c.error(
                    "service_account_allow_list",
                    "must allow at least one namespace:service_account",
                )
            })?;
        if let Some(bad) = service_account_allow_list
            .iter()
            .find(|sa| !matches!(sa.split_once(':'), Some((ns, name)) if !ns.is_empty() && !name.is_empty()))
        {
            return Err(c.error(
                "service_account_allow_list",
                format!("{bad:?} is not of the form namespace:service_account"),
            ));
        }
        let cluster = K8sPsatCluster {
            service_account_allow_list,
            audience: c
                .string_list("audience")?
                .unwrap_or_else(|| vec!["spire-server".to_owned()]),
            kube_config_file: c.optional_path("kube_config_file")?,
            allowed_node_label_keys: c
                .string_list("allowed_node_label_keys")?
                .unwrap_or_default(),
            allowed_pod_label_keys: c.string_list("allowed_pod_label_keys")?.unwrap_or_default(),
        };
        c.finish()?;
        clusters.insert(name, cluster);
    }
    data.finish()?;
    Ok(K8sPsatConfig { clusters })
}

fn read_k8sbundle(data: Option<Block<'_>>) -> Result<K8sBundleConfig, ConfigError> {
    let mut out = K8sBundleConfig {
        namespace: "spire".to_owned(),
        config_map: "spire-bundle".to_owned(),
        config_map_key: "bundle.crt".to_owned(),
        kube_config_file_path: None,
    };
    if let Some(mut data) = data {
        if let Some(ns) = data.string("namespace")? {
            out.namespace = ns;
        }
        if let Some(cm) = data.string("config_map")? {
            out.config_map = cm;
        }
        if let Some(key) = data.string("config_map_key")? {
            out.config_map_key = key;
        }
        out.kube_config_file_path = data.optional_path("kube_config_file_path")?;
        data.finish()?;
    }
    Ok(out)
}

/// `telemetry { Prometheus { host = "..." port = N } }`: the metrics listener.
fn read_telemetry(telemetry: Option<Block<'_>>) -> Result<Option<SocketAddr>, ConfigError> {
    let Some(mut telemetry) = telemetry else {
        return Ok(None);
    };
    let mut metrics = None;
    if let Some(mut prom) = telemetry.block("Prometheus")? {
        let ip = prom.parsed("host", hcl::parse_listen_ip)?;
        let port = prom.port("port")?.ok_or_else(|| prom.missing("port"))?;
        prom.finish()?;
        metrics = Some(SocketAddr::new(
            ip.unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST)),
            port,
        ));
    }
    telemetry.finish()?;
    Ok(metrics)
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

    /// SPIRE's example server config (with its k8s_psat block), paths under `dir`.
    fn spire_example(dir: &str) -> String {
        format!(
            r#"
server {{
  bind_address = "0.0.0.0"
  bind_port = "8081"
  socket_path = "{dir}/api.sock"
  trust_domain = "example.org"
  data_dir = "{dir}/data"
  log_level = "DEBUG"
  log_format = "json"
  ca_ttl = "48h"
  default_x509_svid_ttl = "2h"
  default_jwt_svid_ttl = "10m"
  jwt_issuer = "https://oidc.example.org"
  ca_key_type = "ec-p384"
  ca_subject = {{
    country = ["DE"]
    organization = ["Sigil"]
    common_name = "Sigil CA"
  }}
}}

plugins {{
  DataStore "sql" {{
    plugin_data {{
      database_type = "sqlite3"
      connection_string = "{dir}/data/datastore.sqlite3"
    }}
  }}

  KeyManager "disk" {{
    plugin_data {{
      keys_path = "{dir}/data/keys.json"
    }}
  }}

  NodeAttestor "join_token" {{
    plugin_data {{}}
  }}

  NodeAttestor "k8s_psat" {{
    plugin_data {{
      clusters = {{
        "my-cluster" = {{
          service_account_allow_list = ["spire:spire-agent"]
          audience = ["spire-server"]
          kube_config_file = ""
          allowed_node_label_keys = []
          allowed_pod_label_keys = []
        }}
      }}
    }}
  }}

  Notifier "k8sbundle" {{
    plugin_data {{
      namespace = "spire"
      config_map = "spire-bundle"
      config_map_key = "bundle.crt"
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

telemetry {{
  Prometheus {{
    host = "127.0.0.1"
    port = 9988
  }}
}}
"#
        )
    }

    /// The smallest valid config; the malformed cases below are edits of it.
    const MINIMAL: &str = r#"server {
  trust_domain = "example.org"
  data_dir = "/var/lib/sigil"
}
plugins {
  DataStore "sql" {}
  KeyManager "memory" {}
  NodeAttestor "join_token" {}
}
"#;

    fn parse(text: &str) -> Result<ServerConfig, ConfigError> {
        ServerConfig::parse(text, "server.conf", &ServerOverrides::default())
    }

    #[test]
    fn spire_example_parses_into_typed_values() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().display().to_string();
        let path = dir.path().join("server.conf");
        std::fs::write(&path, spire_example(&d)).unwrap();
        let cfg = ServerConfig::load(&path, &ServerOverrides::default()).unwrap();

        let cluster = K8sPsatCluster {
            service_account_allow_list: vec!["spire:spire-agent".to_owned()],
            audience: vec!["spire-server".to_owned()],
            kube_config_file: None,
            allowed_node_label_keys: vec![],
            allowed_pod_label_keys: vec![],
        };
        let want = ServerConfig {
            bind_address: "0.0.0.0:8081".parse().unwrap(),
            socket_path: dir.path().join("api.sock"),
            trust_domain: TrustDomain::new("example.org").unwrap(),
            data_dir: dir.path().join("data"),
            log_level: LogLevel::Debug,
            log_format: LogFormat::Json,
            ca_ttl: Duration::from_secs(48 * 3600),
            x509_svid_ttl: Duration::from_secs(2 * 3600),
            jwt_svid_ttl: Duration::from_secs(600),
            agent_ttl: DEFAULT_AGENT_TTL,
            jwt_issuer: Some("https://oidc.example.org".to_owned()),
            ca_key_type: KeyType::EcP384,
            ca_subject: CaSubject {
                country: vec!["DE".to_owned()],
                organization: vec!["Sigil".to_owned()],
                common_name: "Sigil CA".to_owned(),
            },
            datastore: DatastoreConfig {
                database_type: DatabaseType::Sqlite3,
                connection_string: format!("{d}/data/datastore.sqlite3"),
            },
            key_manager: KeyManagerConfig::Disk {
                keys_path: dir.path().join("data/keys.json"),
            },
            upstream_authority: None,
            node_attestors: NodeAttestorsConfig {
                join_token: true,
                k8s_psat: Some(K8sPsatConfig {
                    clusters: BTreeMap::from([("my-cluster".to_owned(), cluster)]),
                }),
            },
            bundle_publisher: Some(K8sBundleConfig {
                namespace: "spire".to_owned(),
                config_map: "spire-bundle".to_owned(),
                config_map_key: "bundle.crt".to_owned(),
                kube_config_file_path: None,
            }),
            health: Some(HealthConfig {
                bind: "127.0.0.1:8080".parse().unwrap(),
                live_path: "/live".to_owned(),
                ready_path: "/ready".to_owned(),
            }),
            metrics: Some("127.0.0.1:9988".parse().unwrap()),
            oidc_discovery: None,
            federation: None,
            rate_limit: RateLimitConfig::default(),
            allow_insecure_file_permissions: false,
            connection_limits: Default::default(),
        };
        assert_eq!(cfg, want);
    }

    #[test]
    fn insecure_file_permissions_override_is_off_by_default_and_spelled_exactly() {
        assert!(!parse(MINIMAL).unwrap().allow_insecure_file_permissions);
        let on = MINIMAL.replace(
            "server {",
            "server {\n  allow_insecure_file_permissions = true",
        );
        assert!(parse(&on).unwrap().allow_insecure_file_permissions);
        for bad in [
            "allow_insecure_file_permission = true",
            "allow_insecure_file_permissions = \"yes\"",
        ] {
            let text = MINIMAL.replace("server {", &format!("server {{\n  {bad}"));
            let err = parse(&text).unwrap_err().to_string();
            assert!(err.contains("allow_insecure_file_permission"), "{err}");
        }
    }

    #[test]
    fn ratelimit_block_switches_limits_off() {
        assert_eq!(
            parse(MINIMAL).unwrap().rate_limit,
            RateLimitConfig::default()
        );
        let text = MINIMAL.replace(
            "server {",
            "server {\n  ratelimit {\n    attestation = true\n    signing = false\n  }",
        );
        let cfg = parse(&text).unwrap();
        assert!(cfg.rate_limit.attestation);
        assert!(!cfg.rate_limit.signing);
        let text = MINIMAL.replace("server {", "server {\n  ratelimit {\n    sign = false\n  }");
        let err = parse(&text).unwrap_err().to_string();
        assert!(err.contains("sign"), "{err}");
        let text = MINIMAL.replace("server {", "server {\n  ratelimit {\n    signing = 3\n  }");
        assert!(parse(&text).is_err());
    }

    #[test]
    fn defaults_apply() {
        let cfg = parse(MINIMAL).unwrap();
        assert_eq!(cfg.bind_address, "0.0.0.0:8081".parse().unwrap());
        assert_eq!(
            cfg.socket_path,
            Path::new("/tmp/spire-server/private/api.sock")
        );
        assert_eq!(cfg.log_level, LogLevel::Info);
        assert_eq!(cfg.log_format, LogFormat::Text);
        assert_eq!(cfg.ca_ttl, Duration::from_secs(86_400));
        assert_eq!(cfg.x509_svid_ttl, Duration::from_secs(3_600));
        assert_eq!(cfg.jwt_svid_ttl, Duration::from_secs(300));
        assert_eq!(cfg.jwt_issuer, None);
        assert_eq!(cfg.ca_key_type, KeyType::EcP256);
        assert_eq!(cfg.ca_subject, CaSubject::default());
        assert_eq!(
            cfg.datastore,
            DatastoreConfig {
                database_type: DatabaseType::Sqlite3,
                connection_string: "/var/lib/sigil/datastore.sqlite3".to_owned(),
            }
        );
        assert_eq!(cfg.key_manager, KeyManagerConfig::Memory);
        assert_eq!(
            cfg.node_attestors,
            NodeAttestorsConfig {
                join_token: true,
                k8s_psat: None
            }
        );
        assert_eq!(cfg.bundle_publisher, None);
        assert_eq!(cfg.health, None);
        assert_eq!(cfg.metrics, None);

        // The disk key manager's file and SPIRE's older TTL key.
        let text = MINIMAL
            .replace(r#"KeyManager "memory" {}"#, r#"KeyManager "disk" {}"#)
            .replace("server {", "server {\n  default_svid_ttl = \"30m\"");
        let cfg = parse(&text).unwrap();
        assert_eq!(
            cfg.key_manager,
            KeyManagerConfig::Disk {
                keys_path: PathBuf::from("/var/lib/sigil/keys.json")
            }
        );
        assert_eq!(cfg.x509_svid_ttl, Duration::from_secs(1_800));
    }

    #[test]
    fn flags_override_the_file() {
        let ov = ServerOverrides {
            trust_domain: Some("other.org".to_owned()),
            data_dir: Some("/srv/sigil".to_owned()),
            log_level: Some("warn".to_owned()),
            log_format: Some("json".to_owned()),
            bind_address: Some("127.0.0.1".to_owned()),
            server_port: Some("9443".to_owned()),
            socket_path: Some("/run/sigil/admin.sock".to_owned()),
            expand_env: false,
        };
        let text = MINIMAL.replace(
            "server {",
            "server {\n  bind_port = \"7000\"\n  log_level = \"ERROR\"",
        );
        let cfg = ServerConfig::parse(&text, "server.conf", &ov).unwrap();
        assert_eq!(cfg.trust_domain.as_str(), "other.org");
        assert_eq!(cfg.data_dir, Path::new("/srv/sigil"));
        assert_eq!(cfg.log_level, LogLevel::Warn);
        assert_eq!(cfg.log_format, LogFormat::Json);
        assert_eq!(cfg.bind_address, "127.0.0.1:9443".parse().unwrap());
        assert_eq!(cfg.socket_path, Path::new("/run/sigil/admin.sock"));
        // Defaults under data_dir follow the overridden data_dir.
        assert_eq!(
            cfg.datastore.connection_string,
            "/srv/sigil/datastore.sqlite3"
        );

        // A missing trust_domain may come from the flag alone.
        let text = MINIMAL.replace("  trust_domain = \"example.org\"\n", "");
        let ov = ServerOverrides {
            trust_domain: Some("flag.org".to_owned()),
            ..Default::default()
        };
        let cfg = ServerConfig::parse(&text, "server.conf", &ov).unwrap();
        assert_eq!(cfg.trust_domain.as_str(), "flag.org");
    }

    #[test]
    fn bad_flags_name_the_flag() {
        let cases = [
            (
                ServerOverrides {
                    trust_domain: Some("Example.org".to_owned()),
                    ..Default::default()
                },
                "command line: -trustDomain: \"Example.org\" is not a valid trust domain: trust domain characters are limited to lowercase letters, numbers, dots, dashes, and underscores",
            ),
            (
                ServerOverrides {
                    server_port: Some("80x".to_owned()),
                    ..Default::default()
                },
                "command line: -serverPort: \"80x\" is not a valid port",
            ),
            (
                ServerOverrides {
                    log_level: Some("LOUD".to_owned()),
                    ..Default::default()
                },
                "command line: -logLevel: \"LOUD\" is not a valid log level (expected DEBUG, INFO, WARN or ERROR)",
            ),
            (
                ServerOverrides {
                    bind_address: Some("localhost:1".to_owned()),
                    ..Default::default()
                },
                "command line: -bindAddress: \"localhost:1\" is not a valid IP address",
            ),
        ];
        for (ov, want) in cases {
            let err = ServerConfig::parse(MINIMAL, "server.conf", &ov).unwrap_err();
            assert_eq!(err.to_string(), want);
        }
    }

    #[test]
    fn expand_env_substitutes_before_parsing() {
        // Cargo sets CARGO_MANIFEST_DIR for the test process too.
        let text = MINIMAL.replace("/var/lib/sigil", "${CARGO_MANIFEST_DIR}/data");
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("server.conf");
        std::fs::write(&path, &text).unwrap();
        let ov = ServerOverrides {
            expand_env: true,
            ..Default::default()
        };
        let cfg = ServerConfig::load(&path, &ov).unwrap();
        assert_eq!(
            cfg.data_dir,
            Path::new(env!("CARGO_MANIFEST_DIR")).join("data")
        );
        // Without the flag, interpolation is refused with a hint.
        let err = parse(&text).unwrap_err().to_string();
        assert_eq!(
            err,
            "server.conf:3: server.data_dir: interpolation is not supported (run with -expandEnv to expand $VAR from the environment)"
        );
    }

    #[test]
    fn malformed_configs_name_file_line_and_key() {
        let cases: &[(&str, &str, &str)] = &[
            (
                "unknown key in server",
                "  data_dir = \"/var/lib/sigil\"\n",
                "  data_dir = \"/var/lib/sigil\"\n  bind_prot = \"8081\"\n",
            ),
            (
                "unknown top-level block",
                "plugins {",
                "telemetri {\n}\nplugins {",
            ),
            (
                "unknown plugin",
                "KeyManager \"memory\" {}",
                "KeyManager \"vault\" {}",
            ),
            (
                "two DataStores",
                "  KeyManager",
                "  DataStore \"sql\" {}\n  KeyManager",
            ),
            (
                "missing trust_domain",
                "  trust_domain = \"example.org\"\n",
                "",
            ),
            ("bad trust domain", "\"example.org\"", "\"Example.org\""),
            (
                "bad duration",
                "server {",
                "server {\n  ca_ttl = \"forever\"",
            ),
            ("bad port", "server {", "server {\n  bind_port = \"80x\""),
            (
                "bad log level",
                "server {",
                "server {\n  log_level = \"LOUD\"",
            ),
            ("syntax error", "server {", "server {\n  bind_port = \n"),
            ("no key manager", "  KeyManager \"memory\" {}\n", ""),
            (
                "unknown key in plugin_data",
                "DataStore \"sql\" {}",
                "DataStore \"sql\" {\n    plugin_data {\n      database = \"x\"\n    }\n  }",
            ),
            (
                "bad database type",
                "DataStore \"sql\" {}",
                "DataStore \"sql\" {\n    plugin_data {\n      database_type = \"mysql\"\n    }\n  }",
            ),
            (
                "k8s_psat without clusters",
                "NodeAttestor \"join_token\" {}",
                "NodeAttestor \"k8s_psat\" {\n    plugin_data {\n    }\n  }",
            ),
            (
                "zero ttl",
                "server {",
                "server {\n  default_jwt_svid_ttl = \"0s\"",
            ),
            (
                "agent ttl under the floor",
                "server {",
                "server {\n  agent_ttl = \"4s\"",
            ),
            (
                "x509 ttl under the floor",
                "server {",
                "server {\n  default_x509_svid_ttl = \"1500ms\"",
            ),
            (
                "unsupported key type",
                "server {",
                "server {\n  ca_key_type = \"rsa-2048\"",
            ),
            (
                "missing plugins",
                "plugins {\n  DataStore \"sql\" {}\n  KeyManager \"memory\" {}\n  NodeAttestor \"join_token\" {}\n}\n",
                "",
            ),
        ];
        let want = [
            "server.conf:4: server.bind_prot: unknown key",
            "server.conf:5: telemetri: unknown block",
            "server.conf:7: plugins.KeyManager.vault: unknown KeyManager plugin \"vault\" (supported: \"memory\", \"disk\")",
            "server.conf:7: plugins.DataStore.sql: only one DataStore may be configured",
            "server.conf:1: server.trust_domain: is required",
            "server.conf:2: server.trust_domain: \"Example.org\" is not a valid trust domain: trust domain characters are limited to lowercase letters, numbers, dots, dashes, and underscores",
            "server.conf:2: server.ca_ttl: \"forever\" is not a valid duration (use Go syntax such as \"24h\", \"1h30m\", \"90s\")",
            "server.conf:2: server.bind_port: \"80x\" is not a valid port",
            "server.conf:2: server.log_level: \"LOUD\" is not a valid log level (expected DEBUG, INFO, WARN or ERROR)",
            "server.conf:2: HCL syntax error: invalid expression; expected `\"`, `[`, `{`, `-`, `!`, `(`, `_`, `<`, letter or digit",
            "server.conf:5: plugins.KeyManager: exactly one is required",
            "server.conf:8: plugins.DataStore.sql.plugin_data.database: unknown key",
            "server.conf:8: plugins.DataStore.sql.plugin_data.database_type: \"mysql\" is not a supported database type (expected sqlite3 or postgres)",
            "server.conf:9: plugins.NodeAttestor.k8s_psat.plugin_data.clusters: is required",
            "server.conf:2: server.default_jwt_svid_ttl: \"0s\" must be greater than zero",
            "server.conf:2: server.agent_ttl: \"4s\" is below the minimum SVID TTL of 5s",
            "server.conf:2: server.default_x509_svid_ttl: \"1500ms\" is below the minimum SVID TTL of 5s",
            "server.conf:2: server.ca_key_type: unsupported key type \"rsa-2048\" (supported: ec-p256, ec-p384)",
            "server.conf: plugins: is required",
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
    fn svid_ttls_have_a_floor_and_zero_means_the_default() {
        assert_eq!(check_svid_ttl(0), Ok(()));
        assert_eq!(check_svid_ttl(5), Ok(()));
        assert_eq!(check_svid_ttl(86_400), Ok(()));
        assert_eq!(
            check_svid_ttl(1),
            Err("1s is below the minimum SVID TTL of 5s".to_owned())
        );
        assert!(check_svid_ttl(4).is_err());
        let ok = parse(&MINIMAL.replacen("server {", "server {\n  agent_ttl = \"5s\"", 1)).unwrap();
        assert_eq!(ok.agent_ttl, MIN_SVID_TTL);
    }

    #[test]
    fn postgres_is_parsed_and_its_dsn_hidden() {
        let text = MINIMAL.replace(
            "DataStore \"sql\" {}",
            "DataStore \"sql\" {\n    plugin_data {\n      database_type = \"postgres\"\n      connection_string = \"postgres://u:secret@db/sigil\"\n    }\n  }",
        );
        let cfg = parse(&text).unwrap();
        assert_eq!(cfg.datastore.database_type, DatabaseType::Postgres);
        assert!(!format!("{cfg:?}").contains("secret"));
    }

    #[test]
    fn a_disabled_plugin_is_ignored() {
        let text = MINIMAL.replace(
            "  KeyManager \"memory\" {}",
            "  KeyManager \"disk\" {\n    enabled = false\n    plugin_data {\n      anything = 1\n    }\n  }\n  KeyManager \"memory\" {}",
        );
        assert_eq!(parse(&text).unwrap().key_manager, KeyManagerConfig::Memory);
    }

    #[test]
    fn a_missing_file_is_an_error() {
        let err = ServerConfig::load(
            Path::new("/nonexistent/server.conf"),
            &ServerOverrides::default(),
        )
        .unwrap_err();
        assert!(
            err.to_string()
                .starts_with("/nonexistent/server.conf: cannot read the config file: "),
            "{err}"
        );
    }

    #[test]
    fn upstream_authority_disk_parses() {
        let block = r#"KeyManager "memory" {}
  UpstreamAuthority "disk" {
    plugin_data {
      cert_file_path = "/opt/ca/upstream.crt"
      key_file_path = "/opt/ca/upstream.key"
      bundle_file_path = "/opt/ca/roots.crt"
    }
  }"#;
        let cfg = parse(&MINIMAL.replace(r#"KeyManager "memory" {}"#, block)).unwrap();
        assert_eq!(
            cfg.upstream_authority,
            Some(UpstreamDiskConfig {
                cert_file_path: "/opt/ca/upstream.crt".into(),
                key_file_path: "/opt/ca/upstream.key".into(),
                bundle_file_path: Some("/opt/ca/roots.crt".into()),
            })
        );
        assert_eq!(parse(MINIMAL).unwrap().upstream_authority, None);

        let no_bundle = block.replace("      bundle_file_path = \"/opt/ca/roots.crt\"\n", "");
        let cfg = parse(&MINIMAL.replace(r#"KeyManager "memory" {}"#, &no_bundle)).unwrap();
        assert_eq!(cfg.upstream_authority.unwrap().bundle_file_path, None);

        let no_key = block.replace("      key_file_path = \"/opt/ca/upstream.key\"\n", "");
        let err = parse(&MINIMAL.replace(r#"KeyManager "memory" {}"#, &no_key)).unwrap_err();
        assert!(
            err.to_string().contains("key_file_path: is required"),
            "{err}"
        );

        let vault = block.replace(r#""disk""#, r#""vault""#);
        let err = parse(&MINIMAL.replace(r#"KeyManager "memory" {}"#, &vault)).unwrap_err();
        assert!(
            err.to_string().contains("unknown UpstreamAuthority plugin"),
            "{err}"
        );
    }
}

/// The input space of the `server_config` fuzz target (fuzz/), run in CI as a property test:
/// arbitrary text and edits of a valid config never panic the parser (issue #7 item 4).
#[cfg(test)]
mod proptests {
    use proptest::prelude::*;

    use super::*;

    const VALID: &str = r#"
server {
  bind_address = "127.0.0.1"
  bind_port = "8081"
  trust_domain = "example.org"
  data_dir = "/tmp/sigil-proptest"
  ca_ttl = "24h"
  default_x509_svid_ttl = "1h"
  ca_subject = {
    country = ["US"]
    organization = ["SPIFFE"]
  }
}
plugins {
  DataStore "sql" {
    plugin_data {
      database_type = "sqlite3"
      connection_string = "/tmp/sigil-proptest/datastore.sqlite3"
    }
  }
  KeyManager "memory" {}
  NodeAttestor "join_token" {}
  NodeAttestor "k8s_psat" {
    plugin_data {
      clusters = {
        "demo" = {
          service_account_allow_list = ["spire:spire-agent"]
        }
      }
    }
  }
}
health_checks {
  listener_enabled = true
  bind_port = "8080"
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
            let _ = ServerConfig::parse(&text, "server.conf", &ServerOverrides::default());
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
            let _ = ServerConfig::parse(&text, "server.conf", &ServerOverrides::default());
        }
    }

    #[test]
    fn the_seed_is_valid() {
        ServerConfig::parse(VALID, "server.conf", &ServerOverrides::default()).unwrap();
    }
}
