//! Issue 19: SPIRE's own config files load. The stock `server.conf` / `agent.conf` of SPIRE's
//! release archives (the same from 1.9 to 1.15) run and serve as they are, from an archive-like
//! directory; the Kubernetes examples' files validate. Every SPIRE key Sigil does not
//! implement is either refused with "not supported by Sigil" and why (exit 64) or accepted
//! with exactly one warning line; a misspelt key stays "unknown" (exit 64); an HCL 1 one-line
//! block gets an error showing the multi-line form. The fixtures are in `tests/spire_configs/`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use sigil_testkit::process::healthcheck_passes;
use sigil_testkit::verify::self_signed_p256;
use sigil_testkit::{Process, Server, ServerOptions, agent_bin, free_port, http_get, server_bin};

/// The directory of the SPIRE-derived fixtures.
fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("spire_configs")
        .join(name)
}

/// `<bin> validate -config <config>`: the exit code, stdout and stderr.
fn validate(bin: &Path, config: &Path) -> (i32, String, String) {
    let out = Command::new(bin)
        .args(["validate", "-config"])
        .arg(config)
        .output()
        .expect("run validate");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Validates config `text` written to a temp file.
fn validate_text(bin: &Path, text: &str) -> (i32, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("test.conf");
    std::fs::write(&path, text).unwrap();
    validate(bin, &path)
}

/// Polls `<bin> healthcheck -socketPath <socket>` until it passes; panics with the log if the
/// process exits first.
fn wait_healthy(what: &str, bin: &Path, socket: &Path, process: &mut Process) {
    process.wait_until(what, Duration::from_secs(30), |_| {
        healthcheck_passes(bin, socket)
    });
}

/// The lines of `log` that carry the config warning about `key`.
fn warning_lines<'a>(log: &'a str, key: &str) -> Vec<&'a str> {
    log.lines()
        .filter(|l| l.contains(&format!(": {key}: has no effect in Sigil: ")))
        .collect()
}

#[test]
fn stock_configs_of_spire_1_9_to_1_15_run_and_serve() {
    // The archive's layout: conf/server, conf/agent, and the dummy upstream CA that the agent's
    // bundle file is a copy of. Both binaries run from its top directory, as SPIRE's do.
    let dir = tempfile::tempdir().unwrap();
    let top = dir.path();
    for sub in ["conf/server", "conf/agent", "sockets"] {
        std::fs::create_dir_all(top.join(sub)).unwrap();
    }
    self_signed_p256(
        &top.join("conf/server/dummy_upstream_ca.crt"),
        &top.join("conf/server/dummy_upstream_ca.key"),
        "/C=US/O=SPIFFE",
        30,
        &[
            "basicConstraints=critical,CA:true",
            "keyUsage=critical,keyCertSign,cRLSign",
        ],
    );
    std::fs::copy(
        top.join("conf/server/dummy_upstream_ca.crt"),
        top.join("conf/agent/dummy_root_ca.crt"),
    )
    .unwrap();
    let server_conf = top.join("conf/server/server.conf");
    let agent_conf = top.join("conf/agent/agent.conf");
    std::fs::copy(fixture("server-1.9-1.15.conf"), &server_conf).unwrap();
    std::fs::copy(fixture("agent-1.9-1.15.conf"), &agent_conf).unwrap();

    let validated = |bin: &Path, conf: &Path| {
        let out = Command::new(bin)
            .current_dir(top)
            .args(["validate", "-config"])
            .arg(conf)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "{}: {stderr}", conf.display());
        assert!(!stderr.contains("Warning"), "no warning expected: {stderr}");
    };
    validated(&server_bin(), &server_conf);
    validated(&agent_bin(), &agent_conf);

    // Only the fixed port and socket paths are moved (SPIRE's own flags), so that tests can
    // run side by side.
    let port = free_port().to_string();
    let server_socket = top.join("sockets/server.sock");
    let mut server_cmd = Command::new(server_bin());
    server_cmd
        .current_dir(top)
        .args([
            "run",
            "-config",
            "conf/server/server.conf",
            "-serverPort",
            &port,
        ])
        .arg("-socketPath")
        .arg(&server_socket);
    let mut server = Process::spawn(server_cmd, &top.join("server.log"));
    wait_healthy("sigil-server", &server_bin(), &server_socket, &mut server);
    assert!(
        server.log().contains("DEBUG"),
        "log_level = \"DEBUG\" is applied"
    );

    let out = Command::new(server_bin())
        .args(["token", "generate", "-ttl", "600", "-socketPath"])
        .arg(&server_socket)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let token = String::from_utf8_lossy(&out.stdout)
        .trim()
        .strip_prefix("Token: ")
        .expect("token output")
        .to_owned();

    let agent_socket = top.join("sockets/agent.sock");
    let mut agent_cmd = Command::new(agent_bin());
    agent_cmd
        .current_dir(top)
        .args([
            "run",
            "-config",
            "conf/agent/agent.conf",
            "-serverPort",
            &port,
        ])
        .args(["-joinToken", &token])
        .arg("-socketPath")
        .arg(&agent_socket);
    let mut agent = Process::spawn(agent_cmd, &top.join("agent.log"));
    wait_healthy("sigil-agent", &agent_bin(), &agent_socket, &mut agent);

    // The agent attested with the token against the server that the dummy root chains.
    let out = Command::new(server_bin())
        .args(["agent", "list", "-socketPath"])
        .arg(&server_socket)
        .output()
        .unwrap();
    let listed = String::from_utf8_lossy(&out.stdout);
    assert!(
        listed.contains(&format!("spire/agent/join_token/{token}")),
        "{listed}"
    );
    for (what, log) in [("server", server.log()), ("agent", agent.log())] {
        assert!(
            !log.contains("has no effect in Sigil"),
            "{what}: the stock config needs no warning:\n{log}"
        );
    }
}

#[test]
fn kubernetes_example_configs_validate() {
    // SPIRE's own Kubernetes deployment (its integration suite), as it is.
    let (code, _, stderr) = validate(&server_bin(), &fixture("k8s-server-1.15.conf"));
    assert_eq!(code, 0, "{stderr}");
    assert!(!stderr.contains("Warning"), "{stderr}");

    // The quickstart's agent, as it is.
    let (code, _, stderr) = validate(&agent_bin(), &fixture("k8s-quickstart-agent.conf"));
    assert_eq!(code, 0, "{stderr}");
    assert!(!stderr.contains("Warning"), "{stderr}");

    // The quickstart's server, as it is: its CA key is RSA (`ca_key_type = "rsa-2048"`).
    let text = std::fs::read_to_string(fixture("k8s-quickstart-server.conf")).unwrap();
    assert!(text.contains("  ca_key_type = \"rsa-2048\"\n"));
    let (code, _, stderr) = validate_text(&server_bin(), &text);
    assert_eq!(code, 0, "{stderr}");
    assert!(!stderr.contains("Warning"), "{stderr}");
}

const SERVER_CONF: &str = r#"server {
  trust_domain = "example.org"
  data_dir = "/var/lib/sigil"
  @SERVER@
}
plugins {
  DataStore "sql" {
    plugin_data {
      database_type = "sqlite3"
      connection_string = "/var/lib/sigil/datastore.sqlite3"
    }
  }
  KeyManager "memory" {}
  NodeAttestor "join_token" {}
  @PLUGINS@
}
@TOP@
"#;

const AGENT_CONF: &str = r#"agent {
  trust_domain = "example.org"
  data_dir = "/var/lib/sigil-agent"
  server_address = "127.0.0.1"
  insecure_bootstrap = true
  @AGENT@
}
plugins {
  NodeAttestor "join_token" {}
  KeyManager "memory" {}
  WorkloadAttestor "unix" {}
  @PLUGINS@
}
@TOP@
"#;

/// Where a row's text goes in the config.
#[derive(Clone, Copy, Debug)]
enum Place {
    /// The `server` or `agent` block.
    Block,
    /// `server { experimental { ... } }` or the agent's.
    Experimental,
    /// The `plugins` block.
    Plugins,
    /// `telemetry { ... }` at the top level.
    Telemetry,
}

/// `template` with `text` at `place` and the other placeholders empty.
fn config_with(template: &str, block: &str, place: Place, text: &str) -> String {
    let (mut b, mut p, mut t) = (String::new(), String::new(), String::new());
    match place {
        Place::Block => b = text.to_owned(),
        Place::Experimental => b = format!("experimental {{\n    {text}\n  }}"),
        Place::Plugins => p = text.to_owned(),
        Place::Telemetry => t = format!("telemetry {{\n  {text}\n}}"),
    }
    template
        .replace(&format!("@{block}@"), &b)
        .replace("@PLUGINS@", &p)
        .replace("@TOP@", &t)
}

/// (place, text, key path in the message, why-fragment) of keys that are refused.
const SERVER_REFUSED: &[(Place, &str, &str, &str)] = &[
    (
        Place::Block,
        r#"admin_ids = ["spiffe://example.org/admin"]"#,
        "server.admin_ids",
        "Unix socket",
    ),
    (
        Place::Block,
        "disable_jwt_svids = true",
        "server.disable_jwt_svids",
        "JWT",
    ),
    (
        Place::Block,
        "exclude_sn_from_ca_subject = true",
        "server.exclude_sn_from_ca_subject",
        "serial number",
    ),
    (
        Place::Block,
        r#"proxy_protocol_trusted_cidrs = ["10.0.0.0/8"]"#,
        "server.proxy_protocol_trusted_cidrs",
        "PROXY protocol",
    ),
    (
        Place::Block,
        r#"log_file = "/var/log/spire-server.log""#,
        "server.log_file",
        "standard error",
    ),
    (
        Place::Block,
        "profiling_enabled = true",
        "server.profiling_enabled",
        "pprof",
    ),
    (
        Place::Experimental,
        "auth_opa_policy_engine {\n      local {\n        rego_path = \"p.rego\"\n      }\n    }",
        "server.experimental.auth_opa_policy_engine",
        "OPA",
    ),
    (
        Place::Experimental,
        "require_pq_kem = true",
        "server.experimental.require_pq_kem",
        "post-quantum",
    ),
    (
        Place::Experimental,
        "agent_spiffe_id_as_selector = true",
        "server.experimental.agent_spiffe_id_as_selector",
        "selector",
    ),
    (
        Place::Experimental,
        r#"wit_issuer = "https://wit.example.org""#,
        "server.experimental.wit_issuer",
        "WIT-SVIDs",
    ),
    (
        Place::Experimental,
        r#"feature_flags = ["x"]"#,
        "server.experimental.feature_flags",
        "feature flags",
    ),
    (
        Place::Telemetry,
        "Statsd = [\n    { address = \"localhost:8125\" },\n  ]",
        "telemetry.Statsd",
        "Prometheus",
    ),
    (
        Place::Telemetry,
        "DogStatsd = [\n    { address = \"localhost:8125\" },\n  ]",
        "telemetry.DogStatsd",
        "Prometheus",
    ),
    (
        Place::Telemetry,
        "M3 = [\n    { address = \"localhost:9000\", env = \"prod\" },\n  ]",
        "telemetry.M3",
        "Prometheus",
    ),
    (
        Place::Telemetry,
        "Prometheus {\n    port = 9988\n    tls {\n      cert_file = \"c.pem\"\n    }\n  }",
        "telemetry.Prometheus.tls",
        "plain HTTP",
    ),
    (
        Place::Plugins,
        "CredentialComposer \"uniqueid\" {}",
        "plugins.CredentialComposer",
        "x509UniqueIdentifier",
    ),
    (
        Place::Plugins,
        "BundlePublisher \"aws_s3\" {\n    plugin_data {\n      bucket = \"b\"\n    }\n  }",
        "plugins.BundlePublisher",
        "k8sbundle",
    ),
    (
        Place::Plugins,
        "Notifier \"k8sbundle\" {\n    plugin_cmd = \"/opt/k8sbundle\"\n  }",
        "plugins.Notifier.k8sbundle.plugin_cmd",
        "external plugins",
    ),
    (
        Place::Plugins,
        "Notifier \"k8sbundle\" {\n    plugin_data_file = \"k8sbundle.conf\"\n  }",
        "plugins.Notifier.k8sbundle.plugin_data_file",
        "inline",
    ),
];

/// (place, text, key path) of keys that are accepted with one warning.
const SERVER_WARNED: &[(Place, &str, &str)] = &[
    (
        Place::Block,
        "disable_jwt_svids = false",
        "server.disable_jwt_svids",
    ),
    (
        Place::Block,
        "exclude_sn_from_ca_subject = false",
        "server.exclude_sn_from_ca_subject",
    ),
    (
        Place::Block,
        "proxy_protocol_trusted_cidrs = []",
        "server.proxy_protocol_trusted_cidrs",
    ),
    (Place::Block, r#"log_file = """#, "server.log_file"),
    (
        Place::Block,
        "log_source_location = true",
        "server.log_source_location",
    ),
    (
        Place::Block,
        "profiling_enabled = false",
        "server.profiling_enabled",
    ),
    (
        Place::Block,
        "profiling_port = 8888",
        "server.profiling_port",
    ),
    (Place::Block, "profiling_freq = 5", "server.profiling_freq"),
    (
        Place::Block,
        r#"profiling_names = ["heap", "cpu"]"#,
        "server.profiling_names",
    ),
    (
        Place::Block,
        r#"max_attested_node_info_staleness = "10s""#,
        "server.max_attested_node_info_staleness",
    ),
    (
        Place::Block,
        r#"prune_attested_nodes_expired_for = "24h""#,
        "server.prune_attested_nodes_expired_for",
    ),
    (
        Place::Block,
        "prune_tofu_nodes = true",
        "server.prune_tofu_nodes",
    ),
    (
        Place::Block,
        "use_legacy_downstream_x509_ca_ttl = true",
        "server.use_legacy_downstream_x509_ca_ttl",
    ),
    (
        Place::Experimental,
        r#"cache_reload_interval = "5s""#,
        "server.experimental.cache_reload_interval",
    ),
    (
        Place::Experimental,
        r#"full_cache_reload_interval = "24h""#,
        "server.experimental.full_cache_reload_interval",
    ),
    (
        Place::Experimental,
        "events_based_cache = true",
        "server.experimental.events_based_cache",
    ),
    (
        Place::Experimental,
        r#"prune_events_older_than = "12h""#,
        "server.experimental.prune_events_older_than",
    ),
    (
        Place::Experimental,
        r#"event_timeout = "15m""#,
        "server.experimental.event_timeout",
    ),
    (
        Place::Experimental,
        r#"sql_transaction_timeout = "24h""#,
        "server.experimental.sql_transaction_timeout",
    ),
    (
        Place::Experimental,
        "require_pq_kem = false",
        "server.experimental.require_pq_kem",
    ),
    (
        Place::Experimental,
        "agent_spiffe_id_as_selector = false",
        "server.experimental.agent_spiffe_id_as_selector",
    ),
    (
        Place::Experimental,
        "feature_flags = []",
        "server.experimental.feature_flags",
    ),
    (
        Place::Experimental,
        "use_rego_v1 = true",
        "server.experimental.use_rego_v1",
    ),
    (
        Place::Experimental,
        r#"named_pipe_name = "\\spire-server\\private\\api""#,
        "server.experimental.named_pipe_name",
    ),
    (Place::Telemetry, "InMem {}", "telemetry.InMem"),
    (
        Place::Telemetry,
        r#"MetricPrefix = "spire""#,
        "telemetry.MetricPrefix",
    ),
    (
        Place::Telemetry,
        "EnableTrustDomainLabel = true",
        "telemetry.EnableTrustDomainLabel",
    ),
    (
        Place::Telemetry,
        "EnableHostnameLabel = false",
        "telemetry.EnableHostnameLabel",
    ),
    (
        Place::Telemetry,
        r#"AllowedPrefixes = ["spire_server"]"#,
        "telemetry.AllowedPrefixes",
    ),
    (
        Place::Telemetry,
        "BlockedPrefixes = []",
        "telemetry.BlockedPrefixes",
    ),
    (
        Place::Telemetry,
        "AllowedLabels = []",
        "telemetry.AllowedLabels",
    ),
    (
        Place::Telemetry,
        r#"BlockedLabels = ["x"]"#,
        "telemetry.BlockedLabels",
    ),
];

const AGENT_REFUSED: &[(Place, &str, &str, &str)] = &[
    (
        Place::Block,
        r#"availability_target = "24h""#,
        "agent.availability_target",
        "half their lifetime",
    ),
    (
        Place::Block,
        r#"join_token_file = "/run/token""#,
        "agent.join_token_file",
        "-joinToken",
    ),
    (
        Place::Block,
        r#"trust_bundle_url = "https://example.org/bundle""#,
        "agent.trust_bundle_url",
        "trust_bundle_path",
    ),
    (
        Place::Block,
        r#"trust_bundle_unix_socket = "/run/b.sock""#,
        "agent.trust_bundle_unix_socket",
        "trust_bundle_path",
    ),
    (
        Place::Block,
        r#"trust_bundle_format = "spiffe""#,
        "agent.trust_bundle_format",
        "PEM",
    ),
    (
        Place::Block,
        r#"rebootstrap_mode = "auto""#,
        "agent.rebootstrap_mode",
        "bootstrap again",
    ),
    (
        Place::Block,
        r#"log_file = "/var/log/spire-agent.log""#,
        "agent.log_file",
        "standard error",
    ),
    (
        Place::Block,
        "profiling_enabled = true",
        "agent.profiling_enabled",
        "pprof",
    ),
    (
        Place::Experimental,
        "require_pq_kem = true",
        "agent.experimental.require_pq_kem",
        "post-quantum",
    ),
    (
        Place::Experimental,
        r#"feature_flags = ["x"]"#,
        "agent.experimental.feature_flags",
        "feature flags",
    ),
    (
        Place::Telemetry,
        "Statsd = [\n    { address = \"localhost:8125\" },\n  ]",
        "telemetry.Statsd",
        "Prometheus",
    ),
    (
        Place::Plugins,
        "SVIDStore \"aws_secretsmanager\" {\n    plugin_data {\n      region = \"r\"\n    }\n  }",
        "plugins.SVIDStore",
        "sigil-agent helper",
    ),
    (
        Place::Plugins,
        "WorkloadAttestor \"docker\" {}",
        "plugins.WorkloadAttestor.docker",
        "WorkloadAttestor plugins: \"unix\", \"k8s\"",
    ),
];

const AGENT_WARNED: &[(Place, &str, &str)] = &[
    (
        Place::Block,
        r#"trust_bundle_format = "pem""#,
        "agent.trust_bundle_format",
    ),
    (
        Place::Block,
        r#"rebootstrap_mode = "never""#,
        "agent.rebootstrap_mode",
    ),
    (
        Place::Block,
        r#"rebootstrap_delay = "10m""#,
        "agent.rebootstrap_delay",
    ),
    (
        Place::Block,
        "retry_bootstrap = true",
        "agent.retry_bootstrap",
    ),
    (
        Place::Block,
        "disable_reattest_to_renew = false",
        "agent.disable_reattest_to_renew",
    ),
    (
        Place::Block,
        "x509_svid_cache_max_size = 1000",
        "agent.x509_svid_cache_max_size",
    ),
    (
        Place::Block,
        "jwt_svid_cache_max_size = 1000",
        "agent.jwt_svid_cache_max_size",
    ),
    (
        Place::Block,
        "log_source_location = true",
        "agent.log_source_location",
    ),
    (
        Place::Block,
        "profiling_port = 8889",
        "agent.profiling_port",
    ),
    (
        Place::Experimental,
        r#"sync_interval = "5s""#,
        "agent.experimental.sync_interval",
    ),
    (
        Place::Experimental,
        "use_sync_authorized_entries = true",
        "agent.experimental.use_sync_authorized_entries",
    ),
    (
        Place::Experimental,
        "x509_svid_cache_max_size = 1000",
        "agent.experimental.x509_svid_cache_max_size",
    ),
    (
        Place::Experimental,
        "disable_lru_cache = true",
        "agent.experimental.disable_lru_cache",
    ),
    (
        Place::Experimental,
        r#"jwt_svid_cache_hit_timeout = "30s""#,
        "agent.experimental.jwt_svid_cache_hit_timeout",
    ),
    (
        Place::Experimental,
        "require_pq_kem = false",
        "agent.experimental.require_pq_kem",
    ),
    (
        Place::Experimental,
        r#"admin_named_pipe_name = "\\spire-agent\\private\\admin""#,
        "agent.experimental.admin_named_pipe_name",
    ),
    (Place::Telemetry, "InMem {}", "telemetry.InMem"),
];

/// Each row refused with exit 64, its key path, "not supported by Sigil" and its reason; each
/// warned row accepted (exit 0) with exactly one warning line naming its key.
fn check_rows(
    bin: &Path,
    template: &str,
    block: &str,
    refused: &[(Place, &str, &str, &str)],
    warned: &[(Place, &str, &str)],
) {
    let mut failures = Vec::new();
    for &(place, text, key, why) in refused {
        let (code, _, stderr) = validate_text(bin, &config_with(template, block, place, text));
        if code != 64
            || !stderr.contains(&format!("{key}: "))
            || !stderr.contains("not supported by Sigil")
            || !stderr.contains(why)
        {
            failures.push(format!("refused {key}: exit {code}: {stderr}"));
        }
    }
    for &(place, text, key) in warned {
        let (code, stdout, stderr) = validate_text(bin, &config_with(template, block, place, text));
        let lines: Vec<&str> = stderr.lines().collect();
        let ok = code == 0
            && stdout.contains("Configuration is valid.")
            && lines.len() == 1
            && lines[0].starts_with("Warning: ")
            && lines[0].contains(&format!(": {key}: has no effect in Sigil: "));
        if !ok {
            failures.push(format!("warned {key}: exit {code}: {stderr}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn spire_keys_sigil_lacks_are_refused_saying_why_or_warned_once() {
    check_rows(
        &server_bin(),
        SERVER_CONF,
        "SERVER",
        SERVER_REFUSED,
        SERVER_WARNED,
    );
    check_rows(
        &agent_bin(),
        AGENT_CONF,
        "AGENT",
        AGENT_REFUSED,
        AGENT_WARNED,
    );
}

#[test]
fn misspelt_keys_stay_unknown_and_hcl1_one_liners_are_explained() {
    let cases: &[(&Path, String, &str)] = &[
        (
            &server_bin(),
            config_with(SERVER_CONF, "SERVER", Place::Block, "admin_id = []"),
            "server.admin_id: unknown key",
        ),
        (
            &server_bin(),
            config_with(
                SERVER_CONF,
                "SERVER",
                Place::Experimental,
                r#"cache_reload_intervall = "5s""#,
            ),
            "server.experimental.cache_reload_intervall: unknown key",
        ),
        (
            &server_bin(),
            config_with(
                SERVER_CONF,
                "SERVER",
                Place::Telemetry,
                "Prometheus {\n    port = 9988\n    hots = \"0.0.0.0\"\n  }",
            ),
            "telemetry.Prometheus.hots: unknown key",
        ),
        (
            &server_bin(),
            config_with(
                SERVER_CONF,
                "SERVER",
                Place::Plugins,
                "KeyManager \"dsik\" {}",
            ),
            r#"unknown KeyManager plugin "dsik""#,
        ),
        (
            &agent_bin(),
            config_with(AGENT_CONF, "AGENT", Place::Block, "sync_interval = \"5s\""),
            "agent.sync_interval: unknown key",
        ),
    ];
    for (bin, text, want) in cases {
        let (code, _, stderr) = validate_text(bin, text);
        assert_eq!(code, 64, "{want}: {stderr}");
        assert!(stderr.contains(want), "want {want:?} in {stderr}");
        assert!(!stderr.contains("not supported by Sigil"), "{stderr}");
    }

    // SPIRE's KeyManager written HCL 1 style, on one line with its nested block.
    let base = config_with(SERVER_CONF, "SERVER", Place::Block, "");
    let text = base.replace(
        "  KeyManager \"memory\" {}\n",
        "  KeyManager \"disk\" { plugin_data { keys_path = \"/var/lib/sigil/keys.json\" } }\n",
    );
    let (code, _, stderr) = validate_text(&server_bin(), &text);
    assert_eq!(code, 64, "{stderr}");
    let want = "test.conf:13: a block written on one line cannot hold a nested block (HCL 1 style, \
                as SPIRE accepts it); Sigil reads HCL 2, so write it over several lines:\n  \
                KeyManager \"disk\" {\n      plugin_data {\n          \
                keys_path = \"/var/lib/sigil/keys.json\"\n      }\n  }";
    assert!(stderr.contains(want), "{stderr}");
    assert!(!stderr.contains("expected '='"), "{stderr}");
    // The layout shown is accepted as it is.
    let layout = want.split_once("several lines:\n").unwrap().1;
    let fixed = base.replace("  KeyManager \"memory\" {}\n", &format!("{layout}\n"));
    let (code, _, stderr) = validate_text(&server_bin(), &fixed);
    assert_eq!(code, 0, "{fixed}\n{stderr}");
}

#[test]
fn warned_keys_log_one_line_each_at_start_and_prometheus_serves_the_agent_metrics() {
    // The server: every warned key of its block and experimental at once, logged once each.
    let block_keys: Vec<&(Place, &str, &str)> = SERVER_WARNED
        .iter()
        .filter(|(place, ..)| matches!(place, Place::Block))
        .collect();
    let experimental: Vec<&str> = SERVER_WARNED
        .iter()
        .filter(|(place, ..)| matches!(place, Place::Experimental))
        .map(|(_, text, _)| *text)
        .collect();
    let mut extra_server: Vec<String> =
        block_keys.iter().map(|(_, t, _)| (*t).to_owned()).collect();
    extra_server.push(format!(
        "experimental {{\n    {}\n  }}",
        experimental.join("\n    ")
    ));
    let server = Server::start(ServerOptions {
        extra_server: extra_server.join("\n  "),
        ..ServerOptions::default()
    });
    let log = server.log();
    for (place, _, key) in SERVER_WARNED {
        if matches!(place, Place::Telemetry) {
            continue;
        }
        let lines = warning_lines(&log, key);
        assert_eq!(lines.len(), 1, "{key}: {lines:?}\n{log}");
        assert!(lines[0].contains("WARN"), "{}", lines[0]);
    }

    // The agent: its warned keys, and telemetry { Prometheus } as its own /metrics listener.
    let dir = tempfile::tempdir().unwrap();
    let metrics_port = free_port();
    let socket = dir.path().join("agent.sock");
    let agent_keys: Vec<&str> = AGENT_WARNED
        .iter()
        .filter(|(place, ..)| matches!(place, Place::Block))
        .map(|(_, t, _)| *t)
        .collect();
    let conf = format!(
        r#"agent {{
  trust_domain = "{td}"
  data_dir = "{data}"
  server_address = "127.0.0.1"
  server_port = "{port}"
  socket_path = "{socket}"
  insecure_bootstrap = true
  {keys}
}}
plugins {{
  NodeAttestor "join_token" {{}}
  KeyManager "memory" {{}}
  WorkloadAttestor "unix" {{}}
}}
telemetry {{
  Prometheus {{
    host = "127.0.0.1"
    port = {metrics_port}
  }}
  InMem {{}}
}}
"#,
        td = server.options.trust_domain,
        data = dir.path().join("data").display(),
        port = server.bind_port,
        socket = socket.display(),
        keys = agent_keys.join("\n  "),
    );
    let conf_path = dir.path().join("agent.conf");
    std::fs::write(&conf_path, conf).unwrap();
    let mut cmd = Command::new(agent_bin());
    cmd.args(["run", "-config"])
        .arg(&conf_path)
        .args(["-joinToken", &server.join_token()]);
    let mut agent = Process::spawn(cmd, &dir.path().join("agent.log"));
    wait_healthy("sigil-agent", &agent_bin(), &socket, &mut agent);
    let log = agent.log();
    for (place, _, key) in AGENT_WARNED {
        if matches!(place, Place::Experimental) {
            continue;
        }
        let lines = warning_lines(&log, key);
        assert_eq!(lines.len(), 1, "{key}: {lines:?}\n{log}");
    }
    let (status, body) = http_get(metrics_port, "/metrics").expect("the metrics listener answers");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("sigil_agent_"), "{body}");
    // Only /metrics there: the health paths stay on the health_checks listener.
    assert_eq!(http_get(metrics_port, "/ready").map(|(s, _)| s), Some(404));
}
