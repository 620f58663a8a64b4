//! SPIRE's keys of `server.conf` that sigil-server does not implement, and what it does with
//! each (see [`SpireOnly`]): refused with the reason, or accepted with one warning because the
//! key only tunes SPIRE's internals. SPIRE's references: `doc/spire_server.md` and the
//! `serverConfig` of `cmd/spire-server/cli/run` (1.9 to 1.15). The keys both blocks share
//! (`log_file`, `profiling_*`, `experimental`'s `require_pq_kem` and `feature_flags`) are
//! `sigil_common::shared_keys`'; `telemetry`'s are `sigil_common::telemetry`'s; a plugin's are
//! the plugin table's.

use sigil_common::hcl::plugins::SPIRE_NODE_ATTESTORS;
use sigil_common::hcl::{Off, SpireOnly};

/// Why the entry-cache tuning keys mean nothing here.
const NO_ENTRY_CACHE: &str = "the server keeps no periodically reloaded entry cache: entry changes reach agents through the datastore's change feed at once";

/// Why the attested-node pruning keys mean nothing here.
const PRUNES_AT_EXPIRY: &str = "the server prunes every attested node (banned ones aside) once its agent SVID has expired, checked every 30 s";

/// The `server` block's keys.
pub(super) const SERVER: &[(&str, SpireOnly)] = &[
    (
        "admin_ids",
        SpireOnly::Refused(
            "the admin API is served only on the local Unix socket (socket_path) to the users its permissions admit; an SVID with an admin ID opens only the read-only web console (console { admin_ids })",
        ),
    ),
    (
        "disable_jwt_svids",
        SpireOnly::RefusedUnless(
            Off::False,
            "the server always keeps JWT signing keys and signs JWT-SVIDs",
        ),
    ),
    (
        "exclude_sn_from_ca_subject",
        SpireOnly::RefusedUnless(
            Off::False,
            "the CA subject always carries the serial number, as SPIRE's does by default",
        ),
    ),
    (
        "max_attested_node_info_staleness",
        SpireOnly::Ignored(
            "the agent API reads an agent's attested-node record from the datastore on every call, so there is no cache to tune",
        ),
    ),
    (
        "prune_attested_nodes_expired_for",
        SpireOnly::Ignored(PRUNES_AT_EXPIRY),
    ),
    ("prune_tofu_nodes", SpireOnly::Ignored(PRUNES_AT_EXPIRY)),
    (
        "proxy_protocol_trusted_cidrs",
        SpireOnly::RefusedUnless(
            Off::Empty,
            "the agent API does not read PROXY protocol headers, so its rate limits see the load balancer's address",
        ),
    ),
    (
        "use_legacy_downstream_x509_ca_ttl",
        SpireOnly::Ignored(
            "it was SPIRE 1.10 and 1.11's switch for the CA lifetime of downstream SPIRE servers during a migration",
        ),
    ),
];

/// The `server { experimental { ... } }` block's keys: none is implemented.
pub(super) const EXPERIMENTAL: &[(&str, SpireOnly)] = &[
    (
        "agent_spiffe_id_as_selector",
        SpireOnly::RefusedUnless(
            Off::False,
            "attested agents get no spiffe_id selector; register workloads with the agent's ID as their parent instead",
        ),
    ),
    (
        "auth_opa_policy_engine",
        SpireOnly::Refused(
            "authorization is built in (admin API on the Unix socket, agents limited to their own entries); OPA/Rego policies are not evaluated",
        ),
    ),
    (
        "use_rego_v1",
        SpireOnly::Ignored("it only applies to auth_opa_policy_engine"),
    ),
    ("cache_reload_interval", SpireOnly::Ignored(NO_ENTRY_CACHE)),
    (
        "full_cache_reload_interval",
        SpireOnly::Ignored(NO_ENTRY_CACHE),
    ),
    ("events_based_cache", SpireOnly::Ignored(NO_ENTRY_CACHE)),
    ("event_timeout", SpireOnly::Ignored(NO_ENTRY_CACHE)),
    (
        "prune_events_older_than",
        SpireOnly::Ignored(
            "entry events are kept for 1 h, for agents that reconnect, and then pruned",
        ),
    ),
    (
        "sql_transaction_timeout",
        SpireOnly::Ignored("it tunes SPIRE's SQL transactions; Sigil's are short and bounded"),
    ),
    (
        "wit_issuer",
        SpireOnly::Refused("WIT-SVIDs (workload identity tokens) are not issued"),
    ),
    (
        "wit_key_type",
        SpireOnly::Refused("WIT-SVIDs (workload identity tokens) are not issued"),
    ),
    (
        "named_pipe_name",
        SpireOnly::Ignored("it is for Windows; Sigil serves the admin API on socket_path"),
    ),
];

/// SPIRE's server plugin kinds that Sigil has none of.
pub(super) const PLUGIN_KINDS: &[(&str, SpireOnly)] = &[
    (
        "CredentialComposer",
        SpireOnly::Refused(
            "SVID and CA contents are fixed (the x509UniqueIdentifier of uniqueid is not added)",
        ),
    ),
    (
        "BundlePublisher",
        SpireOnly::Refused(
            "the bundle is published by Notifier \"k8sbundle\" (a ConfigMap), the bundle endpoint (federation) and OIDC discovery",
        ),
    ),
];

/// SPIRE's built-in server plugins (1.9 to 1.15), by kind: a name here that Sigil lacks is
/// "not supported by Sigil" rather than unknown.
pub(super) const PLUGINS: &[(&str, &[&str])] = &[
    ("DataStore", &["sql"]),
    (
        "KeyManager",
        &[
            "aws_kms",
            "azure_key_vault",
            "disk",
            "gcp_kms",
            "hashicorp_vault",
            "memory",
        ],
    ),
    ("NodeAttestor", SPIRE_NODE_ATTESTORS),
    (
        "UpstreamAuthority",
        &[
            "aws_pca",
            "awssecret",
            "cert-manager",
            "disk",
            "ejbca",
            "gcp_cas",
            "spire",
            "vault",
        ],
    ),
    ("Notifier", &["gcs_bundle", "k8sbundle"]),
];
