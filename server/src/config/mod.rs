//! sigil-server's configuration: SPIRE's `server.conf` layout and key names, read once into
//! validated types before anything binds. Command-line flags (SPIRE's spellings) override the
//! file. Every error names the file, the line and the key (or the flag).
//!
//! This module reads the file and hands each block to the component that owns it: the CA's
//! keys of `server` to [`CaConfig`], the agent API's to [`AgentApiConfig`], `federation` to
//! [`FederationConfig`], `connection_limits` to [`ConnectionLimitsConfig`], each plugin's
//! `plugin_data` to its owner ([`plugins`]), `health_checks` and `oidc_discovery` to theirs.
//! What it keeps is the binary's own: where it listens, its directories, logging.
//!
//! - [`plugins`]: the `plugins` table, dispatched on plugin names.
//! - [`file_checks`]: start-up checks of the key and state files the config names.
//! - [`spire_only`]: SPIRE's keys that sigil-server does not implement, each refused saying
//!   why or accepted with one warning ([`ServerConfig::warnings`]).

pub mod file_checks;
pub mod plugins;
#[cfg(test)]
mod proptests;
mod spire_only;
#[cfg(test)]
mod tests;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

pub use sigil_common::hcl::ConfigError;
use sigil_common::hcl::Document;
pub use sigil_common::health_checks::HealthConfig;
pub use sigil_common::log_config::{LogFormat, LogLevel};
pub use sigil_common::shared_keys::SharedFlags;
use sigil_common::shared_keys::{self, SharedKeys};
use sigil_proto::TrustDomain;

pub use self::plugins::NodeAttestorsConfig;
use crate::api::agent::AgentApiConfig;
use crate::ca::CaConfig;
use crate::ca::upstream::UpstreamDiskConfig;
use crate::console::ConsoleConfig;
use crate::datastore::DatastoreConfig;
use crate::federation::config::FederationConfig;
use crate::key_manager::KeyManagerConfig;
use crate::listener::{ConnectionLimitsConfig, Endpoint};
use crate::notifier::K8sBundleConfig;
use crate::oidc_discovery::OidcDiscoveryConfig;

/// SPIRE's default admin socket.
pub const DEFAULT_SOCKET_PATH: &str = "/tmp/spire-server/private/api.sock";
/// SPIRE's default agent API port.
pub const DEFAULT_BIND_PORT: u16 = 8081;

/// The validated server configuration: the binary's own settings and each component's config.
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
    /// The CA's keys of the `server` block. Its `upstream` is set by the binary once the
    /// `UpstreamAuthority` files are read.
    pub ca: CaConfig,
    /// `agent_ttl` and `ratelimit`.
    pub agent_api: AgentApiConfig,
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
    pub federation: Option<FederationConfig>,
    /// `allow_insecure_file_permissions = true`: start even when a key file, the datastore file
    /// or `data_dir` is open to other users (each is logged at WARN); off by default, when the
    /// server refuses to start instead (OpenSSH's StrictModes).
    pub allow_insecure_file_permissions: bool,
    /// `server { connection_limits { ... } }`: each TCP listener's connection caps.
    pub connection_limits: ConnectionLimitsConfig,
    /// `audit_log_enabled = true`: one audit line per API call that changes state or signs
    /// (`crate::api::audit`); off by default, as SPIRE.
    pub audit_log_enabled: bool,
    /// `server { console { ... } }`: the web console; off when absent.
    pub console: Option<ConsoleConfig>,
    /// One line per SPIRE key that was accepted but means nothing for Sigil, naming the file,
    /// the line and the key: logged at WARN once logging is set up.
    pub warnings: Vec<String>,
}

/// Command-line flags that override the file: the agent's too ([`SharedFlags`]: SPIRE's
/// `-trustDomain -dataDir -socketPath -logLevel -logFormat -expandEnv`) and the server's own
/// (`-bindAddress -serverPort`). Values are raw strings so that they are validated like the
/// file's, with errors naming the flag.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServerOverrides {
    pub shared: SharedFlags,
    pub bind_address: Option<String>,
    pub server_port: Option<String>,
}

impl ServerConfig {
    /// Reads and validates the config file at `path`, applying `overrides`. Errors name the
    /// file as `path` is written.
    pub fn load(path: &Path, overrides: &ServerOverrides) -> Result<Self, ConfigError> {
        Self::read(
            &Document::read(path, overrides.shared.expand_env)?,
            overrides,
        )
    }

    /// Validates config `text` (already expanded if `-expandEnv` was given: see `load`);
    /// `file_name` names it in errors.
    pub fn parse(
        text: &str,
        file_name: &str,
        overrides: &ServerOverrides,
    ) -> Result<Self, ConfigError> {
        Self::read(&Document::parse(file_name, text)?, overrides)
    }

    /// The TCP listeners this config enables.
    pub(crate) fn listeners(&self) -> Vec<Endpoint> {
        let bundle_endpoint = self
            .federation
            .as_ref()
            .is_some_and(|f| f.bundle_endpoint.is_some());
        Endpoint::ALL
            .into_iter()
            .filter(|e| match e {
                Endpoint::AgentApi => true,
                Endpoint::OidcDiscovery => self.oidc_discovery.is_some(),
                Endpoint::BundleEndpoint => bundle_endpoint,
                Endpoint::Health => self.health.is_some(),
                Endpoint::Metrics => self.metrics.is_some(),
                Endpoint::Console => self.console.is_some(),
            })
            .collect()
    }

    /// The `server` block (the binary's own keys here, each component's handed to its owner),
    /// then the plugins and the other sections.
    fn read(doc: &Document, ov: &ServerOverrides) -> Result<Self, ConfigError> {
        let mut root = doc.root();
        let mut s = root
            .block("server")?
            .ok_or_else(|| root.missing("server"))?;
        let ip = s.parsed_or_flag(
            "bind_address",
            "-bindAddress",
            ov.bind_address.as_deref(),
            parse_ip,
        )?;
        let port = s.port_or_flag("bind_port", "-serverPort", ov.server_port.as_deref())?;
        let shared = SharedKeys::read(&mut s, &ov.shared)?;
        let ca = CaConfig::from_server_block(&mut s, shared.trust_domain.clone())?;
        let agent_api = AgentApiConfig::from_server_block(&mut s)?;
        let federation = FederationConfig::from_block(s.block("federation")?)?;
        let allow_insecure_file_permissions =
            s.bool("allow_insecure_file_permissions")?.unwrap_or(false);
        let connection_limits = ConnectionLimitsConfig::read(s.block("connection_limits")?)?;
        let audit_log_enabled = s.bool("audit_log_enabled")?.unwrap_or(false);
        let console = ConsoleConfig::from_block(s.block("console")?, &shared.trust_domain)?;
        if let Some(mut experimental) = s.block("experimental")? {
            experimental.spire_only(shared_keys::EXPERIMENTAL_SPIRE_ONLY)?;
            experimental.spire_only(spire_only::EXPERIMENTAL)?;
            experimental.finish()?;
        }
        s.spire_only(shared_keys::SPIRE_ONLY)?;
        s.spire_only(spire_only::SERVER)?;
        s.finish()?;

        let plugins = plugins::Plugins::read(&mut root, &shared.data_dir)?;
        let health = HealthConfig::from_block(root.block("health_checks")?)?;
        let metrics = sigil_common::telemetry::prometheus_listener(root.block("telemetry")?)?;
        let oidc_discovery = OidcDiscoveryConfig::from_block(root.block("oidc_discovery")?)?;
        root.finish()?;
        Ok(Self {
            bind_address: SocketAddr::new(
                ip.unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED)),
                port.unwrap_or(DEFAULT_BIND_PORT),
            ),
            socket_path: shared
                .socket_path
                .unwrap_or_else(|| PathBuf::from(DEFAULT_SOCKET_PATH)),
            trust_domain: shared.trust_domain,
            data_dir: shared.data_dir,
            log_level: shared.log_level,
            log_format: shared.log_format,
            ca,
            agent_api,
            datastore: plugins.datastore,
            key_manager: plugins.key_manager,
            upstream_authority: plugins.upstream_authority,
            node_attestors: plugins.node_attestors,
            bundle_publisher: plugins.bundle_publisher,
            health,
            metrics,
            oidc_discovery,
            federation,
            allow_insecure_file_permissions,
            connection_limits,
            audit_log_enabled,
            console,
            warnings: doc.take_warnings(),
        })
    }
}

fn parse_ip(s: &str) -> Result<IpAddr, String> {
    s.parse()
        .map_err(|_| format!("{s:?} is not a valid IP address"))
}
