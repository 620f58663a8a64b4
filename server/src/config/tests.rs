//! Tests of the whole file: SPIRE's example, defaults, flags, and every malformed case naming
//! its file, line and key.

use std::collections::BTreeMap;
use std::time::Duration;

use sigil_common::testing::{
    assert_each_edit_fails, assert_insecure_file_permissions_override, shared_flags,
};

use super::*;
use crate::api::agent::RateLimitConfig;
use crate::api::agent::config::DEFAULT_AGENT_TTL;
use crate::ca::CaSubject;
use crate::ca::config::MIN_SVID_TTL;
use crate::datastore::DatabaseType;
use crate::key_manager::KeyType;
use crate::node_attestation::k8s_psat::{K8sPsatCluster, K8sPsatConfig};

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
  jwt_key_type = "rsa-2048"
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

/// Overrides with only flags both binaries take.
fn flags(command_line: &str) -> ServerOverrides {
    ServerOverrides {
        shared: shared_flags(command_line),
        ..ServerOverrides::default()
    }
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
        ca: CaConfig {
            trust_domain: TrustDomain::new("example.org").unwrap(),
            ca_ttl: Duration::from_secs(48 * 3600),
            x509_svid_ttl: Duration::from_secs(2 * 3600),
            jwt_svid_ttl: Duration::from_secs(600),
            key_type: KeyType::EcP384,
            jwt_key_type: KeyType::Rsa2048,
            ca_subject: CaSubject {
                country: vec!["DE".to_owned()],
                organization: vec!["Sigil".to_owned()],
                common_name: "Sigil CA".to_owned(),
            },
            jwt_issuer: Some("https://oidc.example.org".to_owned()),
            upstream: None,
        },
        agent_api: AgentApiConfig {
            agent_ttl: DEFAULT_AGENT_TTL,
            rate_limit: RateLimitConfig::default(),
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
        allow_insecure_file_permissions: false,
        connection_limits: Default::default(),
        audit_log_enabled: false,
        console: None,
        warnings: vec![],
    };
    assert_eq!(cfg, want);
}

#[test]
fn audit_log_is_off_by_default_and_a_boolean() {
    assert!(!parse(MINIMAL).unwrap().audit_log_enabled);
    for (value, on) in [("true", true), ("false", false)] {
        let text = MINIMAL.replace(
            "server {",
            &format!("server {{\n  audit_log_enabled = {value}"),
        );
        let cfg = parse(&text).unwrap();
        assert_eq!(cfg.audit_log_enabled, on);
        assert!(cfg.warnings.is_empty(), "{:?}", cfg.warnings);
    }
    let text = MINIMAL.replace("server {", "server {\n  audit_log_enabled = \"yes\"");
    let err = parse(&text).unwrap_err().to_string();
    assert!(err.contains("audit_log_enabled"), "{err}");
}

#[test]
fn insecure_file_permissions_override_is_off_by_default_and_spelled_exactly() {
    assert_insecure_file_permissions_override(MINIMAL, "server", |text| {
        parse(text).map(|c| c.allow_insecure_file_permissions)
    });
}

#[test]
fn ratelimit_block_switches_limits_off() {
    assert_eq!(
        parse(MINIMAL).unwrap().agent_api.rate_limit,
        RateLimitConfig::default()
    );
    let text = MINIMAL.replace(
        "server {",
        "server {\n  ratelimit {\n    attestation = true\n    signing = false\n  }",
    );
    let cfg = parse(&text).unwrap();
    assert!(cfg.agent_api.rate_limit.attestation);
    assert!(!cfg.agent_api.rate_limit.signing);
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
    assert_eq!(cfg.ca.ca_ttl, Duration::from_secs(86_400));
    assert_eq!(cfg.ca.x509_svid_ttl, Duration::from_secs(3_600));
    assert_eq!(cfg.ca.jwt_svid_ttl, Duration::from_secs(300));
    assert_eq!(cfg.ca.jwt_issuer, None);
    assert_eq!(cfg.ca.key_type, KeyType::EcP256);
    assert_eq!(cfg.ca.jwt_key_type, KeyType::EcP256);
    assert_eq!(cfg.ca.ca_subject, CaSubject::default());
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
    assert_eq!(cfg.ca.x509_svid_ttl, Duration::from_secs(1_800));
}

#[test]
fn flags_override_the_file() {
    let ov = ServerOverrides {
        shared: shared_flags(
            "-trustDomain other.org -dataDir /srv/sigil -logLevel warn -logFormat json -socketPath /run/sigil/admin.sock",
        ),
        bind_address: Some("127.0.0.1".to_owned()),
        server_port: Some("9443".to_owned()),
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
    let ov = flags("-trustDomain flag.org");
    let cfg = ServerConfig::parse(&text, "server.conf", &ov).unwrap();
    assert_eq!(cfg.trust_domain.as_str(), "flag.org");
}

#[test]
fn bad_flags_name_the_flag() {
    let cases = [
        (
            flags("-trustDomain Example.org"),
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
            flags("-logLevel LOUD"),
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
    let ov = flags("-expandEnv");
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
            "server {\n  ca_key_type = \"rsa-3072\"",
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
        "server.conf:2: server.ca_key_type: unsupported key type \"rsa-3072\" (supported: rsa-2048, rsa-4096, ec-p256, ec-p384)",
        "server.conf: plugins: is required",
    ];
    assert_each_edit_fails(MINIMAL, cases, &want, |text| parse(text).map(drop));
}

#[test]
fn agent_ttl_may_be_the_svid_ttl_floor() {
    // The floor's check itself: ca::config's tests.
    let ok = parse(&MINIMAL.replacen("server {", "server {\n  agent_ttl = \"5s\"", 1)).unwrap();
    assert_eq!(ok.agent_api.agent_ttl, MIN_SVID_TTL);
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
        err.to_string()
            .contains(r#"SPIRE's UpstreamAuthority plugin "vault" is not supported by Sigil (Sigil's UpstreamAuthority plugins: "disk")"#),
        "{err}"
    );
}
