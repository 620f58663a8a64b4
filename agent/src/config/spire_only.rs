//! SPIRE's keys of `agent.conf` that sigil-agent does not implement, and what it does with each
//! (see [`SpireOnly`]): refused with the reason, or accepted with one warning because the key
//! only tunes SPIRE's internals. SPIRE's references: `doc/spire_agent.md` and the `agentConfig`
//! of `cmd/spire-agent/cli/run` (1.9 to 1.15). The keys both blocks share (`log_file`,
//! `profiling_*`, `experimental`'s `require_pq_kem` and `feature_flags`) are
//! `sigil_common::shared_keys`'; `telemetry`'s are `sigil_common::telemetry`'s; a plugin's are
//! the plugin table's.

use sigil_common::hcl::plugins::SPIRE_NODE_ATTESTORS;
use sigil_common::hcl::{Off, SpireOnly};

/// Why the SVID cache sizes mean nothing here.
const NO_LRU_CACHE: &str =
    "the agent holds the SVIDs of every entry it is authorized for, with no LRU cache to size";

/// Why the sync tuning keys mean nothing here.
const PUSHED_SYNC: &str =
    "the server pushes entry changes to the agent over one stream; there is no polling to tune";

/// The `agent` block's keys.
pub(super) const AGENT: &[(&str, SpireOnly)] = &[
    (
        "availability_target",
        SpireOnly::Refused(
            "X509-SVIDs are renewed at half their lifetime; there is no availability target",
        ),
    ),
    (
        "join_token_file",
        SpireOnly::Refused(
            "give the token as join_token (with -expandEnv it may be \"$JOIN_TOKEN\") or -joinToken",
        ),
    ),
    (
        "trust_bundle_url",
        SpireOnly::Refused(
            "the bootstrap bundle is read from a file: download it and give it as trust_bundle_path",
        ),
    ),
    (
        "trust_bundle_unix_socket",
        SpireOnly::Refused(
            "the bootstrap bundle is read from a file: give it as trust_bundle_path",
        ),
    ),
    (
        "trust_bundle_format",
        SpireOnly::RefusedUnless(
            Off::Str("pem"),
            "trust_bundle_path is read as PEM certificates only",
        ),
    ),
    (
        "rebootstrap_mode",
        SpireOnly::RefusedUnless(
            Off::Str("never"),
            "the agent does not bootstrap again on its own when the server's CA stops matching its bundle (see README)",
        ),
    ),
    (
        "rebootstrap_delay",
        SpireOnly::Ignored("it only applies to rebootstrap_mode, which Sigil does not have"),
    ),
    (
        "retry_bootstrap",
        SpireOnly::Ignored("the agent always retries reaching the server, with backoff"),
    ),
    (
        "disable_reattest_to_renew",
        SpireOnly::Ignored(
            "the agent renews its SVID through RenewAgent and attests again only once it expired",
        ),
    ),
    ("x509_svid_cache_max_size", SpireOnly::Ignored(NO_LRU_CACHE)),
    ("jwt_svid_cache_max_size", SpireOnly::Ignored(NO_LRU_CACHE)),
];

/// The `agent { experimental { ... } }` block's keys: none is implemented.
pub(super) const EXPERIMENTAL: &[(&str, SpireOnly)] = &[
    ("sync_interval", SpireOnly::Ignored(PUSHED_SYNC)),
    (
        "use_sync_authorized_entries",
        SpireOnly::Ignored(PUSHED_SYNC),
    ),
    ("x509_svid_cache_max_size", SpireOnly::Ignored(NO_LRU_CACHE)),
    ("disable_lru_cache", SpireOnly::Ignored(NO_LRU_CACHE)),
    (
        "jwt_svid_cache_hit_timeout",
        SpireOnly::Ignored(
            "a cached JWT-SVID is served while the server is slow or away, without a separate timeout",
        ),
    ),
    (
        "named_pipe_name",
        SpireOnly::Ignored("it is for Windows; Sigil serves the Workload API on socket_path"),
    ),
    (
        "admin_named_pipe_name",
        SpireOnly::Ignored("it is for Windows"),
    ),
];

/// SPIRE's agent plugin kinds that Sigil has none of.
pub(super) const PLUGIN_KINDS: &[(&str, SpireOnly)] = &[(
    "SVIDStore",
    SpireOnly::Refused(
        "SVIDs are not pushed to cloud secret stores; `sigil-agent helper` writes them to files",
    ),
)];

/// SPIRE's built-in agent plugins (1.9 to 1.15), by kind: a name here that Sigil lacks is
/// "not supported by Sigil" rather than unknown.
pub(super) const PLUGINS: &[(&str, &[&str])] = &[
    ("KeyManager", &["disk", "memory"]),
    ("NodeAttestor", SPIRE_NODE_ATTESTORS),
    (
        "WorkloadAttestor",
        &["docker", "k8s", "systemd", "unix", "windows"],
    ),
];
