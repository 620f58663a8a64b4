//! Tests of the whole file: SPIRE's example, defaults, flags, and every malformed case naming
//! its file, line and key.

use sigil_common::testing::{
    assert_each_edit_fails, assert_insecure_file_permissions_override, shared_flags,
};

use super::*;
use crate::node_attestation::K8sPsatConfig;
use crate::node_attestation::k8s_psat::DEFAULT_PSAT_TOKEN_PATH;
use crate::sds::SdsConfig;
use crate::workload_attestation::{K8sAttestorConfig, UnixAttestorConfig};

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
  workload_x509_svid_key_type = "rsa-2048"
  sds {{
    default_svid_name = "svid"
    disable_spiffe_cert_validation = true
  }}
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
        sds: Some(SdsConfig {
            default_svid_name: "svid".to_owned(),
            disable_spiffe_cert_validation: true,
            ..SdsConfig::default()
        }),
        disable_workload_api: false,
        delegated_identity: None,
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
                ..UnixAttestorConfig::default()
            }),
            k8s: Some(K8sAttestorConfig {
                skip_kubelet_verification: true,
                node_name: None,
                node_name_env: "MY_NODE_NAME".to_owned(),
                kubelet_read_only_port: 0,
                kubelet_secure_port: 10250,
                kubelet_ca_path: PathBuf::from(
                    "/var/run/secrets/kubernetes.io/serviceaccount/ca.crt",
                ),
                token_path: PathBuf::from("/var/run/secrets/kubernetes.io/serviceaccount/token"),
                proc_root: PathBuf::from("/proc"),
                ..K8sAttestorConfig::default()
            }),
        },
        health: Some(HealthConfig {
            bind: "127.0.0.1:8080".parse().unwrap(),
            live_path: "/live".to_owned(),
            ready_path: "/ready".to_owned(),
        }),
        metrics: None,
        allowed_foreign_jwt_claims: vec![],
        warnings: vec![],
        allow_insecure_file_permissions: false,
        workload_x509_svid_key_type: crate::csr::KeyType::Rsa2048,
    };
    assert_eq!(cfg, want);
    // The join token stays out of Debug output.
    assert!(!format!("{cfg:?}").contains("d3adb33f"));
}

#[test]
fn insecure_file_permissions_override_is_off_by_default_and_spelled_exactly() {
    assert_insecure_file_permissions_override(MINIMAL, "agent", |text| {
        parse(text).map(|c| c.allow_insecure_file_permissions)
    });
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
    assert_eq!(cfg.workload_x509_svid_key_type, crate::csr::KeyType::EcP256);

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
        shared: shared_flags(
            "-dataDir /srv/agent -logLevel debug -logFormat json -socketPath /run/sigil/workload.sock -trustDomain other.org",
        ),
        server_address: Some("sigil.example.org".to_owned()),
        server_port: Some("9443".to_owned()),
        trust_bundle: Some("/run/bundle.pem".to_owned()),
        join_token: Some(JoinToken::new("from-flag")),
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
                shared: shared_flags("-trustDomain spiffe://"),
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
        (
            "unsupported workload key type",
            "agent {",
            "agent {\n  workload_x509_svid_key_type = \"rsa-4096\"",
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
        "agent.conf:2: agent.workload_x509_svid_key_type: \"rsa-4096\" is not a supported key type (expected rsa-2048, ec-p256 or ec-p384)",
    ];
    assert_each_edit_fails(MINIMAL, cases, &want, |text| parse(text).map(drop));
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

#[test]
fn foreign_jwt_claims_telemetry_and_spire_only_keys() {
    let cfg = parse(&MINIMAL.replace(
        "agent {\n",
        "agent {\n  allowed_foreign_jwt_claims = [\"email\", \"groups\"]\n  sync_interval_unused = 1\n",
    ));
    assert_eq!(
        cfg.unwrap_err().to_string(),
        "agent.conf:3: agent.sync_interval_unused: unknown key"
    );
    let text = format!(
        "{}telemetry {{\n  Prometheus {{\n    port = 9988\n  }}\n}}\n",
        MINIMAL.replace(
            "agent {\n",
            "agent {\n  allowed_foreign_jwt_claims = [\"email\", \"groups\"]\n  retry_bootstrap = true\n  experimental {\n    sync_interval = \"5s\"\n  }\n",
        )
    );
    let cfg = parse(&text).unwrap();
    assert_eq!(cfg.allowed_foreign_jwt_claims, ["email", "groups"]);
    assert_eq!(cfg.metrics, Some("127.0.0.1:9988".parse().unwrap()));
    assert_eq!(
        cfg.warnings,
        [
            "agent.conf:3: agent.retry_bootstrap: has no effect in Sigil: the agent always retries reaching the server, with backoff",
            "agent.conf:5: agent.experimental.sync_interval: has no effect in Sigil: the server pushes entry changes to the agent over one stream; there is no polling to tune",
        ]
    );
    let err = parse(&MINIMAL.replace("agent {\n", "agent {\n  rebootstrap_mode = \"always\"\n"))
        .unwrap_err();
    assert!(
        err.to_string().starts_with(
            "agent.conf:2: agent.rebootstrap_mode: not supported by Sigil: the agent does not bootstrap again"
        ),
        "{err}"
    );
}
