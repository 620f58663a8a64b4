//! The measured processes: the built `sigil-server` and `sigil-agent` binaries, started on
//! loopback with temp-dir configs written the way `tests/src/lib.rs` writes them (but at log
//! level INFO, so per-request debug logging is not part of what we measure). Killed on drop.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use hyper_util::rt::TokioIo;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use sigil_proto::sigil::admin::v1 as admin;
use sigil_proto::sigil::admin::v1::admin_client::AdminClient;
use sigil_proto::{Bundle, TrustDomain};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tonic::transport::{Channel, Endpoint};

pub const TRUST_DOMAIN: &str = "bench.example";
/// Admin API messages can carry a 10,000-entry batch.
const MAX_ADMIN_MESSAGE: usize = 256 << 20;
const START_TIMEOUT: Duration = Duration::from_secs(120);

/// A TCP port that was free a moment ago on 127.0.0.1, outside the range the bench's own
/// outgoing connections take theirs from (see [`sigil_testpg::loopback_port`]).
pub fn free_port() -> anyhow::Result<u16> {
    Ok(sigil_testpg::loopback_port()?)
}

/// A running `sigil-server`.
pub struct ServerProc {
    pub dir: tempfile::TempDir,
    pub socket: PathBuf,
    pub bind_port: u16,
    config: PathBuf,
    bin: PathBuf,
    child: Option<Child>,
}

impl ServerProc {
    /// Writes the config (SQLite datastore, disk key manager, join_token attestor) and starts
    /// the server; returns once the admin API answers.
    pub async fn start(bin_dir: &Path) -> anyhow::Result<ServerProc> {
        let dir = tempfile::tempdir()?;
        let socket = dir.path().join("private").join("api.sock");
        let data = dir.path().join("data");
        let bind_port = free_port()?;
        let conf = format!(
            r#"server {{
  bind_address = "127.0.0.1"
  bind_port = "{bind_port}"
  socket_path = "{socket}"
  trust_domain = "{TRUST_DOMAIN}"
  data_dir = "{data}"
  log_level = "INFO"
  ca_ttl = "24h"
  default_x509_svid_ttl = "1h"
  default_jwt_svid_ttl = "5m"
  # The mint benchmarks drive ~50k signings/s from one agent: far beyond SPIRE's 500/s.
  ratelimit {{
    signing = false
  }}
}}

plugins {{
  DataStore "sql" {{
    plugin_data {{
      database_type = "sqlite3"
      connection_string = "{data}/datastore.sqlite3"
    }}
  }}
  KeyManager "disk" {{
    plugin_data {{
      keys_path = "{data}/keys.json"
    }}
  }}
  NodeAttestor "join_token" {{
    plugin_data {{}}
  }}
}}
"#,
            socket = socket.display(),
            data = data.display(),
        );
        let config = dir.path().join("server.conf");
        std::fs::write(&config, conf)?;
        let mut server = ServerProc {
            dir,
            socket,
            bind_port,
            config,
            bin: bin_dir.join("sigil-server"),
            child: None,
        };
        server.spawn().await?;
        Ok(server)
    }

    /// Starts the process; returns how long it took until the admin API answered.
    pub async fn spawn(&mut self) -> anyhow::Result<Duration> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("server.log"))?;
        let start = Instant::now();
        let child = Command::new(&self.bin)
            .args(["run", "-config"])
            .arg(&self.config)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", self.bin.display()))?;
        self.child = Some(child);
        loop {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                anyhow::bail!("sigil-server exited with {status}; log:\n{}", self.log());
            }
            if let Ok(mut admin) = admin_client(&self.socket).await
                && admin.health(admin::HealthRequest {}).await.is_ok()
            {
                return Ok(start.elapsed());
            }
            anyhow::ensure!(
                start.elapsed() < START_TIMEOUT,
                "sigil-server not healthy after {START_TIMEOUT:?}; log:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// SIGTERM and wait for the exit.
    pub async fn stop(&mut self) -> anyhow::Result<()> {
        if let Some(child) = self.child.take() {
            stop_child(child).await?;
        }
        Ok(())
    }

    pub fn pid(&self) -> anyhow::Result<u32> {
        self.child
            .as_ref()
            .map(Child::id)
            .context("sigil-server is not running")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }

    pub async fn admin(&self) -> anyhow::Result<AdminClient<Channel>> {
        admin_client(&self.socket).await
    }

    /// A join token valid for a day and the agent SPIFFE ID it attests to.
    pub async fn join_token(&self) -> anyhow::Result<(String, String)> {
        let token = self
            .admin()
            .await?
            .create_join_token(admin::CreateJoinTokenRequest {
                ttl: 24 * 60 * 60,
                spiffe_id: String::new(),
            })
            .await
            .context("CreateJoinToken")?
            .into_inner()
            .token;
        let agent_id = format!("spiffe://{TRUST_DOMAIN}/spire/agent/join_token/{token}");
        Ok((token, agent_id))
    }

    pub async fn bundle(&self) -> anyhow::Result<Bundle> {
        let bundle = self
            .admin()
            .await?
            .get_bundle(admin::GetBundleRequest {})
            .await
            .context("GetBundle")?
            .into_inner()
            .bundle
            .context("GetBundle returned no bundle")?;
        Bundle::try_from(&bundle).map_err(|e| anyhow::anyhow!("invalid bundle: {e}"))
    }

    pub fn trust_domain() -> anyhow::Result<TrustDomain> {
        TrustDomain::new(TRUST_DOMAIN).context("trust domain")
    }
}

impl Drop for ServerProc {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A client on the server's admin socket.
pub async fn admin_client(socket: &Path) -> anyhow::Result<AdminClient<Channel>> {
    let path = socket.to_path_buf();
    // The URI is required by tonic but unused: the connector dials the socket.
    let channel = Endpoint::from_static("http://sigil-server.admin")
        .connect_with_connector(tower::service_fn(move |_| {
            let path = path.clone();
            async move {
                tokio::net::UnixStream::connect(path)
                    .await
                    .map(TokioIo::new)
            }
        }))
        .await
        .with_context(|| format!("connecting to {}", socket.display()))?;
    Ok(AdminClient::new(channel)
        .max_decoding_message_size(MAX_ADMIN_MESSAGE)
        .max_encoding_message_size(MAX_ADMIN_MESSAGE))
}

/// A running `sigil-agent`.
pub struct AgentProc {
    pub dir: tempfile::TempDir,
    /// The Workload API socket.
    pub socket: PathBuf,
    pub health_port: u16,
    child: Option<Child>,
}

impl AgentProc {
    /// Writes the config (join_token attestor, unix workload attestor, trust from the server's
    /// bundle) and starts the agent with `token`; returns it and how long it took until
    /// `/ready` answered 200 (attestation and the first full sync applied).
    pub async fn start(
        bin_dir: &Path,
        server: &ServerProc,
        token: &str,
    ) -> anyhow::Result<(AgentProc, Duration)> {
        let dir = tempfile::tempdir()?;
        let bundle = server.bundle().await?;
        let pem: String = bundle
            .x509_authorities
            .iter()
            .map(|der| pem::encode(&pem::Pem::new("CERTIFICATE", der.clone())))
            .collect();
        let bundle_path = dir.path().join("bootstrap.pem");
        std::fs::write(&bundle_path, pem)?;
        let health_port = free_port()?;
        let socket = dir.path().join("public").join("api.sock");
        let data = dir.path().join("data");
        let conf = format!(
            r#"agent {{
  data_dir = "{data}"
  log_level = "INFO"
  server_address = "127.0.0.1"
  server_port = "{port}"
  socket_path = "{socket}"
  trust_bundle_path = "{bundle}"
  trust_domain = "{TRUST_DOMAIN}"
}}

plugins {{
  NodeAttestor "join_token" {{
    plugin_data {{}}
  }}
  KeyManager "disk" {{
    plugin_data {{
      directory = "{data}/keys"
    }}
  }}
  WorkloadAttestor "unix" {{
    plugin_data {{}}
  }}
}}

health_checks {{
  listener_enabled = true
  bind_address = "127.0.0.1"
  bind_port = "{health_port}"
  live_path = "/live"
  ready_path = "/ready"
}}
"#,
            data = data.display(),
            port = server.bind_port,
            socket = socket.display(),
            bundle = bundle_path.display(),
        );
        let config = dir.path().join("agent.conf");
        std::fs::write(&config, conf)?;
        let log_path = dir.path().join("agent.log");
        let log = std::fs::File::create(&log_path)?;
        let start = Instant::now();
        let child = Command::new(bin_dir.join("sigil-agent"))
            .args(["run", "-config"])
            .arg(&config)
            .args(["-joinToken", token])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting sigil-agent")?;
        let mut agent = AgentProc {
            dir,
            socket,
            health_port,
            child: Some(child),
        };
        loop {
            if let Some(status) = agent
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                anyhow::bail!("sigil-agent exited with {status}; log:\n{}", agent.log());
            }
            if http_get(health_port, "/ready")
                .await
                .is_some_and(|(code, _)| code == 200)
            {
                return Ok((agent, start.elapsed()));
            }
            anyhow::ensure!(
                start.elapsed() < START_TIMEOUT,
                "sigil-agent not ready after {START_TIMEOUT:?}; log:\n{}",
                agent.log()
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    pub fn pid(&self) -> anyhow::Result<u32> {
        self.child
            .as_ref()
            .map(Child::id)
            .context("sigil-agent is not running")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("agent.log")).unwrap_or_default()
    }

    /// Workload X.509-SVIDs the agent has minted so far (`sigil_agent_x509_svids_minted_total`
    /// with `result="ok"` on `/metrics`).
    pub async fn svids_minted(&self) -> anyhow::Result<u64> {
        let (code, body) = http_get(self.health_port, "/metrics")
            .await
            .context("GET /metrics")?;
        anyhow::ensure!(code == 200, "GET /metrics: {code}");
        Ok(minted_ok(&body))
    }

    pub async fn stop(&mut self) -> anyhow::Result<()> {
        if let Some(child) = self.child.take() {
            stop_child(child).await?;
        }
        Ok(())
    }
}

impl Drop for AgentProc {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn minted_ok(metrics: &str) -> u64 {
    metrics
        .lines()
        .filter(|l| l.starts_with("sigil_agent_x509_svids_minted_total") && l.contains("\"ok\""))
        .filter_map(|l| l.split_whitespace().last()?.parse::<f64>().ok())
        .map(|v| v as u64)
        .sum()
}

async fn stop_child(mut child: Child) -> anyhow::Result<()> {
    let pid = i32::try_from(child.id()).context("pid out of range")?;
    let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
    let start = Instant::now();
    while child.try_wait()?.is_none() {
        if start.elapsed() > Duration::from_secs(20) {
            let _ = child.kill();
            let _ = child.wait();
            anyhow::bail!("process {pid} ignored SIGTERM for 20 s");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(())
}

/// A minimal HTTP/1.1 GET on loopback, returning (status, body): enough for `/ready` and
/// `/metrics`.
async fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .ok()?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
    s.write_all(request.as_bytes()).await.ok()?;
    let mut buf = String::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_string(&mut buf))
        .await
        .ok()?
        .ok()?;
    let status = buf.split_whitespace().nth(1)?.parse().ok()?;
    let body = buf.split_once("\r\n\r\n").map(|(_, b)| b.to_owned())?;
    Some((status, body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minted_counts_only_successes() {
        let metrics = "# HELP x\nsigil_agent_x509_svids_minted_total{result=\"ok\"} 1000\n\
                       sigil_agent_x509_svids_minted_total{result=\"error\"} 3\n";
        assert_eq!(minted_ok(metrics), 1000);
        assert_eq!(minted_ok(""), 0);
    }
}
