//! SPIRE v1.13.3 itself (`spire-server`, `spire-agent` from `scripts/spire-peer.sh`), set up
//! as the Sigil side is (`procs.rs` and the test kit's configs): SQLite datastore, disk key
//! managers, join-token attestation, the unix workload attestor, the same TTLs and key type
//! (ec-p256, both defaults), INFO logs and the signing rate limit off. Everything else is
//! SPIRE's default, except the two settings a run chooses: the server's
//! `experimental.events_based_cache` and the agent's `x509_svid_cache_max_size`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use sigil_testkit::config::health_checks;
use sigil_testkit::{Process, free_port, http_get};

use crate::procs::TRUST_DOMAIN;

const START_TIMEOUT: Duration = Duration::from_secs(120);
const POLL: Duration = Duration::from_millis(5);

/// The two SPIRE binaries.
#[derive(Clone, Debug)]
pub(crate) struct SpireBins {
    pub server: PathBuf,
    pub agent: PathBuf,
}

impl SpireBins {
    /// Both binaries, or `None` after the test kit's "SKIPPED: ..." line saying where they were
    /// looked for and how to build them.
    pub(crate) fn find() -> Option<Self> {
        Some(Self {
            server: sigil_testkit::spire::spire_bin("spire-server")?,
            agent: sigil_testkit::spire::spire_bin("spire-agent")?,
        })
    }
}

/// A running `spire-server run`; killed on drop.
pub(crate) struct SpireServer {
    // Killed before its directory is removed: fields drop in order.
    process: Process,
    _dir: tempfile::TempDir,
    pub socket: PathBuf,
    pub bind_port: u16,
    pub bin: PathBuf,
}

/// The `server.conf`: what Sigil's bench server gets (`procs.rs`, the kit's `server_conf`).
fn server_conf(dir: &Path, bind_port: u16, health_port: u16, events_based_cache: bool) -> String {
    let experimental = if events_based_cache {
        "experimental {\n    events_based_cache = true\n  }"
    } else {
        ""
    };
    let dir = dir.display();
    format!(
        r#"server {{
  bind_address = "127.0.0.1"
  bind_port = "{bind_port}"
  socket_path = "{dir}/api.sock"
  trust_domain = "{TRUST_DOMAIN}"
  data_dir = "{dir}/data"
  log_level = "INFO"
  ca_ttl = "24h"
  default_x509_svid_ttl = "1h"
  default_jwt_svid_ttl = "5m"
  ratelimit {{
    signing = false
  }}
  {experimental}
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
}}

{health}"#,
        health = health_checks(health_port),
    )
}

/// Polls `GET /ready` on `port` every 5 ms until it answers 200; fails when the process exits
/// or after two minutes. Returns the time since `start`.
async fn wait_ready(
    what: &str,
    process: &mut Process,
    port: u16,
    start: Instant,
) -> anyhow::Result<Duration> {
    loop {
        if let Some(status) = process.exited() {
            anyhow::bail!("{what} exited with {status}; log:\n{}", process.log());
        }
        let ready = tokio::task::spawn_blocking(move || http_get(port, "/ready")).await?;
        if ready.is_some_and(|(code, _)| code == 200) {
            return Ok(start.elapsed());
        }
        anyhow::ensure!(
            start.elapsed() < START_TIMEOUT,
            "{what} not ready after {START_TIMEOUT:?}; log:\n{}",
            process.log()
        );
        tokio::time::sleep(POLL).await;
    }
}

impl SpireServer {
    /// Writes the config and starts the server; returns it and the time from exec until its
    /// health listener's `/ready` answered 200.
    pub(crate) async fn start(
        bins: &SpireBins,
        events_based_cache: bool,
    ) -> anyhow::Result<(Self, Duration)> {
        let dir = tempfile::Builder::new()
            .prefix("spire-bench")
            .tempdir()
            .context("temp dir")?;
        std::fs::create_dir_all(dir.path().join("data"))?;
        let (bind_port, health_port) = (free_port(), free_port());
        let config = dir.path().join("server.conf");
        std::fs::write(
            &config,
            server_conf(dir.path(), bind_port, health_port, events_based_cache),
        )?;
        let mut cmd = Command::new(&bins.server);
        cmd.args(["run", "-config"]).arg(&config);
        let start = Instant::now();
        let mut process = Process::spawn(cmd, &dir.path().join("spire-server.log"));
        let took = wait_ready("spire-server", &mut process, health_port, start).await?;
        Ok((
            Self {
                socket: dir.path().join("api.sock"),
                _dir: dir,
                bind_port,
                bin: bins.server.clone(),
                process,
            },
            took,
        ))
    }

    pub(crate) fn pid(&self) -> anyhow::Result<u32> {
        self.process.id().context("spire-server is not running")
    }

    /// `spire-server <args> -socketPath <socket>`, which must succeed; its stdout.
    async fn cli(&self, args: &[&str]) -> anyhow::Result<String> {
        let out = tokio::process::Command::new(&self.bin)
            .args(args)
            .arg("-socketPath")
            .arg(&self.socket)
            .output()
            .await
            .with_context(|| format!("running spire-server {args:?}"))?;
        anyhow::ensure!(
            out.status.success(),
            "spire-server {args:?}: {}\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8(out.stdout)?)
    }

    /// A join token valid for a day (`token generate`) and the agent SPIFFE ID it attests to.
    pub(crate) async fn join_token(&self) -> anyhow::Result<(String, String)> {
        let out = self.cli(&["token", "generate", "-ttl", "86400"]).await?;
        let token = out
            .lines()
            .find_map(|l| l.strip_prefix("Token: "))
            .with_context(|| format!("no `Token:` in {out:?}"))?
            .trim()
            .to_owned();
        let agent_id = format!("spiffe://{TRUST_DOMAIN}/spire/agent/join_token/{token}");
        Ok((token, agent_id))
    }

    /// Writes the agent's config (trust from `bundle show`) and starts it with `token`;
    /// returns it and the time from exec until its `/ready` answered 200.
    pub(crate) async fn start_agent(
        &self,
        bins: &SpireBins,
        token: &str,
        x509_svid_cache_max_size: usize,
    ) -> anyhow::Result<(SpireAgent, Duration)> {
        let dir = tempfile::Builder::new()
            .prefix("spire-bench-agent")
            .tempdir()
            .context("temp dir")?;
        // The disk key manager writes into its directory but does not create it.
        std::fs::create_dir_all(dir.path().join("data/keys"))?;
        let bundle = dir.path().join("bundle.pem");
        std::fs::write(&bundle, self.cli(&["bundle", "show"]).await?)?;
        let (health_port, metrics_port) = (free_port(), free_port());
        let config = dir.path().join("agent.conf");
        std::fs::write(
            &config,
            agent_conf(
                dir.path(),
                self.bind_port,
                health_port,
                metrics_port,
                x509_svid_cache_max_size,
            ),
        )?;
        let mut cmd = Command::new(&bins.agent);
        cmd.args(["run", "-config"])
            .arg(&config)
            .args(["-joinToken", token]);
        let start = Instant::now();
        let mut process = Process::spawn(cmd, &dir.path().join("spire-agent.log"));
        let took = wait_ready("spire-agent", &mut process, health_port, start).await?;
        Ok((
            SpireAgent {
                socket: dir.path().join("api.sock"),
                _dir: dir,
                metrics_port,
                process,
            },
            took,
        ))
    }
}

/// The `agent.conf`: what the kit's `agent_conf` writes for Sigil, plus a Prometheus
/// listener (the SVID count) and the LRU cache size.
fn agent_conf(
    dir: &Path,
    server_port: u16,
    health_port: u16,
    metrics_port: u16,
    x509_svid_cache_max_size: usize,
) -> String {
    let dir = dir.display();
    format!(
        r#"agent {{
  data_dir = "{dir}/data"
  log_level = "INFO"
  server_address = "127.0.0.1"
  server_port = "{server_port}"
  socket_path = "{dir}/api.sock"
  trust_bundle_path = "{dir}/bundle.pem"
  trust_domain = "{TRUST_DOMAIN}"
  x509_svid_cache_max_size = {x509_svid_cache_max_size}
}}

plugins {{
  NodeAttestor "join_token" {{
    plugin_data {{}}
  }}
  KeyManager "disk" {{
    plugin_data {{
      directory = "{dir}/data/keys"
    }}
  }}
  WorkloadAttestor "unix" {{
    plugin_data {{}}
  }}
}}

{health}
telemetry {{
  Prometheus {{
    host = "127.0.0.1"
    port = {metrics_port}
  }}
}}
"#,
        health = health_checks(health_port),
    )
}

/// A running `spire-agent run`; killed on drop.
pub(crate) struct SpireAgent {
    process: Process,
    _dir: tempfile::TempDir,
    pub socket: PathBuf,
    metrics_port: u16,
}

impl SpireAgent {
    pub(crate) fn pid(&self) -> anyhow::Result<u32> {
        self.process.id().context("spire-agent is not running")
    }

    /// X.509-SVIDs the agent's LRU cache holds (the `lru_cache_svid_map_size` gauge).
    pub(crate) async fn svids_held(&self) -> anyhow::Result<u64> {
        let port = self.metrics_port;
        let (code, body) = tokio::task::spawn_blocking(move || http_get(port, "/metrics"))
            .await?
            .context("GET /metrics of spire-agent")?;
        anyhow::ensure!(code == 200, "GET /metrics of spire-agent: {code}");
        Ok(gauge(&body, "lru_cache_svid_map_size").unwrap_or(0.0) as u64)
    }
}

/// The value of the gauge whose name ends with `suffix` (SPIRE prefixes its names with the
/// service name) in a Prometheus text exposition.
fn gauge(metrics: &str, suffix: &str) -> Option<f64> {
    metrics
        .lines()
        .filter(|l| !l.starts_with('#'))
        .find(|l| {
            let name = l.split(['{', ' ']).next().unwrap_or_default();
            name.ends_with(suffix)
        })
        .and_then(|l| l.split_whitespace().last()?.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gauge_by_suffix() {
        let m = "# HELP spire_agent_lru_cache_svid_map_size x\n\
                 # TYPE spire_agent_lru_cache_svid_map_size gauge\n\
                 spire_agent_lru_cache_svid_map_size 1000\n\
                 spire_agent_lru_cache_entries_map_size{a=\"b\"} 3\n";
        assert_eq!(gauge(m, "lru_cache_svid_map_size"), Some(1000.0));
        assert_eq!(gauge(m, "lru_cache_entries_map_size"), Some(3.0));
        assert_eq!(gauge(m, "nothing"), None);
    }

    #[test]
    fn configs_set_what_the_run_chooses() {
        let dir = Path::new("/tmp/x");
        assert!(server_conf(dir, 1, 2, true).contains("events_based_cache = true"));
        assert!(!server_conf(dir, 1, 2, false).contains("events_based_cache"));
        assert!(agent_conf(dir, 1, 2, 3, 10_000).contains("x509_svid_cache_max_size = 10000"));
    }
}
