//! sigil-agent's configuration: SPIRE's `agent.conf` layout and key names, read once into
//! validated types before anything binds. Command-line flags (SPIRE's spellings) override the
//! file. Every error names the file, the line and the key (or the flag).
//!
//! This module reads the file and hands each block to the component that owns it: the servers
//! and the bootstrap trust to the server link ([`ServerAddress`], [`TrustBundleSource`]), the
//! join token to its attestor ([`JoinToken`]), the `sds` block to SDS ([`SdsConfig`]), each
//! plugin's `plugin_data` to its owner ([`plugins`]), `health_checks` to sigil-common's
//! [`HealthConfig`], `telemetry` to sigil-common's. What it keeps is the agent's own: its
//! directories, logging, the Workload API's socket and its options. SPIRE's keys the agent
//! does not implement are refused saying why or accepted with one warning ([`spire_only`]).

pub mod plugins;
#[cfg(test)]
mod proptests;
mod spire_only;
#[cfg(test)]
mod tests;

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use sigil_common::hcl::ConfigError;
use sigil_common::hcl::Document;
pub use sigil_common::health_checks::HealthConfig;
pub use sigil_common::log_config::{LogFormat, LogLevel};
pub use sigil_common::shared_keys::SharedFlags;
use sigil_common::shared_keys::{self, SharedKeys};
use sigil_proto::TrustDomain;

pub use self::plugins::{NodeAttestorConfig, WorkloadAttestorsConfig};
use crate::csr::KeyType;
use crate::delegated_identity::DelegatedIdentityConfig;
pub use crate::node_attestation::JoinToken;
use crate::sds::SdsConfig;
use crate::server_client::{ServerAddress, TrustBundleSource};
use crate::svid_store::KeyManagerConfig;

pub use crate::workload_api::DEFAULT_SOCKET_PATH;

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
    /// Envoy SDS on the Workload API socket (`sds` block); `None` with `disable_sds_api`.
    pub sds: Option<SdsConfig>,
    /// `disable_workload_api`: the socket serves SDS only (and is not bound when SDS is
    /// disabled too, as in SPIRE).
    pub disable_workload_api: bool,
    /// `admin_socket_path` and `authorized_delegates`: the Delegated Identity API; `None`
    /// (no admin socket) without `admin_socket_path`.
    pub delegated_identity: Option<DelegatedIdentityConfig>,
    /// `lost_identity_exit_delay`: how long an agent that lost its identity for good (its SVID
    /// expired or it was evicted, and it cannot attest again) keeps serving the workload SVIDs
    /// that are still valid before it exits non-zero. Default 1 min; `0s` exits at once.
    pub lost_identity_exit_delay: Duration,
    pub node_attestor: NodeAttestorConfig,
    pub key_manager: KeyManagerConfig,
    pub workload_attestors: WorkloadAttestorsConfig,
    pub health: Option<HealthConfig>,
    /// The Prometheus listener (`telemetry { Prometheus { host port } }`).
    pub metrics: Option<SocketAddr>,
    /// `allowed_foreign_jwt_claims`: the claims ValidateJWTSVID returns for a federated trust
    /// domain's token, besides `sub`, `exp` and `aud`.
    pub allowed_foreign_jwt_claims: Vec<String>,
    /// One line per SPIRE key that was accepted but means nothing for Sigil, naming the file,
    /// the line and the key: logged at WARN once logging is set up.
    pub warnings: Vec<String>,
    /// `allow_insecure_file_permissions = true`: start even when `data_dir`, the key directory
    /// or a stored key, SVID or bundle is open to other users (each is logged at WARN); off by
    /// default, when the agent refuses to start instead (OpenSSH's StrictModes).
    pub allow_insecure_file_permissions: bool,
    /// `workload_x509_svid_key_type`: the type of each workload's X509-SVID key
    /// (`ec-p256` unless set, `ec-p384` or `rsa-2048`, as SPIRE).
    pub workload_x509_svid_key_type: KeyType,
}

/// Command-line flags that override the file: the server's too ([`SharedFlags`]: SPIRE's
/// `-trustDomain -dataDir -socketPath -logLevel -logFormat -expandEnv`) and the agent's own
/// (`-serverAddress -serverPort -trustBundle -joinToken`). Values are raw strings so that they
/// are validated like the file's, with errors naming the flag.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct AgentOverrides {
    pub shared: SharedFlags,
    pub server_address: Option<String>,
    pub server_port: Option<String>,
    pub trust_bundle: Option<String>,
    pub join_token: Option<JoinToken>,
}

impl fmt::Debug for AgentOverrides {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Spelled out so that a new field cannot slip past without a thought about secrets.
        f.debug_struct("AgentOverrides")
            .field("shared", &self.shared)
            .field("server_address", &self.server_address)
            .field("server_port", &self.server_port)
            .field("trust_bundle", &self.trust_bundle)
            .field("join_token", &self.join_token)
            .finish()
    }
}

impl AgentConfig {
    /// Reads and validates the config file at `path`, applying `overrides`. Errors name the
    /// file as `path` is written.
    pub fn load(path: &Path, overrides: &AgentOverrides) -> Result<Self, ConfigError> {
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
        overrides: &AgentOverrides,
    ) -> Result<Self, ConfigError> {
        Self::read(&Document::parse(file_name, text)?, overrides)
    }

    /// The `agent` block (the agent's own keys here, the server link's handed to it), then the
    /// plugins and `health_checks`.
    fn read(doc: &Document, ov: &AgentOverrides) -> Result<Self, ConfigError> {
        let mut root = doc.root();
        let mut a = root.block("agent")?.ok_or_else(|| root.missing("agent"))?;
        let shared = SharedKeys::read(&mut a, &ov.shared)?;
        let servers = ServerAddress::list_from_agent_block(
            &mut a,
            ov.server_address.as_deref(),
            ov.server_port.as_deref(),
        )?;
        let trust_bundle = TrustBundleSource::from_agent_block(&mut a, ov.trust_bundle.as_deref())?;
        let join_token = JoinToken::from_agent_block(&mut a, ov.join_token.as_ref())?;
        let allow_unauthenticated_verifiers =
            a.bool("allow_unauthenticated_verifiers")?.unwrap_or(false);
        let sds = SdsConfig::from_block(a.block("sds")?)?;
        let sds = (!a.bool("disable_sds_api")?.unwrap_or(false)).then_some(sds);
        let disable_workload_api = a.bool("disable_workload_api")?.unwrap_or(false);
        let socket_path = shared
            .socket_path
            .unwrap_or_else(|| PathBuf::from(DEFAULT_SOCKET_PATH));
        let serves_socket = !disable_workload_api || sds.is_some();
        let delegated_identity = DelegatedIdentityConfig::from_agent_block(
            &mut a,
            &shared.trust_domain,
            serves_socket.then_some(socket_path.as_path()),
        )?;
        let lost_identity_exit_delay = a
            .duration("lost_identity_exit_delay")?
            .unwrap_or(crate::rotation::DEFAULT_EXIT_DELAY);
        let allow_insecure_file_permissions =
            a.bool("allow_insecure_file_permissions")?.unwrap_or(false);
        let allowed_foreign_jwt_claims = a
            .string_list("allowed_foreign_jwt_claims")?
            .unwrap_or_default();
        let workload_x509_svid_key_type = a
            .parsed(
                "workload_x509_svid_key_type",
                crate::csr::parse_workload_key_type,
            )?
            .unwrap_or_default();
        if let Some(mut experimental) = a.block("experimental")? {
            experimental.spire_only(shared_keys::EXPERIMENTAL_SPIRE_ONLY)?;
            experimental.spire_only(spire_only::EXPERIMENTAL)?;
            experimental.finish()?;
        }
        a.spire_only(shared_keys::SPIRE_ONLY)?;
        a.spire_only(spire_only::AGENT)?;
        a.finish()?;

        let plugins = plugins::Plugins::read(&mut root, &shared.data_dir)?;
        let health = HealthConfig::from_block(root.block("health_checks")?)?;
        let metrics = sigil_common::telemetry::prometheus_listener(root.block("telemetry")?)?;
        root.finish()?;
        Ok(Self {
            data_dir: shared.data_dir,
            log_level: shared.log_level,
            log_format: shared.log_format,
            servers,
            socket_path,
            trust_domain: shared.trust_domain,
            trust_bundle,
            join_token,
            allow_unauthenticated_verifiers,
            sds,
            disable_workload_api,
            delegated_identity,
            lost_identity_exit_delay,
            node_attestor: plugins.node_attestor,
            key_manager: plugins.key_manager,
            workload_attestors: plugins.workload_attestors,
            health,
            metrics,
            allowed_foreign_jwt_claims,
            warnings: doc.take_warnings(),
            allow_insecure_file_permissions,
            workload_x509_svid_key_type,
        })
    }
}
