//! A running `sigil-agent` on a temp dir, talking to a [`Server`]: its config written (trust
//! from the server's bundle as `bundle show` prints it) and edited, started and waited for
//! until `/ready` answers 200 (attested, first full sync applied), signalled, stopped. Killed
//! on drop; on a failing test the tail of its log goes to stderr.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use crate::config::{self, AgentLayout, AgentOptions};
use crate::process::{Process, print_log_tail_if_panicking};
use crate::{Server, agent_bin, free_port, http_get};

/// A `sigil-agent` on a temp dir, talking to a [`Server`]. Killed on drop.
#[derive(Debug)]
pub struct Agent {
    pub dir: tempfile::TempDir,
    /// The Workload API socket.
    pub socket: PathBuf,
    pub config: PathBuf,
    pub health_port: u16,
    process: Option<Process>,
}

impl Agent {
    /// Writes `agent.conf` (disk key manager, unix workload attestor, trust from the server's
    /// bundle PEM written by `bundle show`) and starts the agent with `-joinToken token` if given.
    pub fn start(server: &Server, join_token: Option<&str>) -> Self {
        let mut agent = Self::configure(server);
        agent.spawn(join_token);
        agent
    }

    /// Writes the config without starting the agent.
    pub fn configure(server: &Server) -> Self {
        Self::configure_with(server, &AgentOptions::default())
    }

    /// Like [`Agent::configure`]; with `insecure_bootstrap` the agent gets no bundle file and
    /// trusts the server on first contact (SPIRE's `insecure_bootstrap = true`).
    pub fn configure_trust(server: &Server, insecure_bootstrap: bool) -> Self {
        Self::configure_with(
            server,
            &AgentOptions {
                insecure_bootstrap,
                ..AgentOptions::default()
            },
        )
    }

    /// Writes the config from `options` without starting the agent.
    pub fn configure_with(server: &Server, options: &AgentOptions) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let bundle = dir.path().join("bootstrap.pem");
        std::fs::write(&bundle, server.cli_ok(&["bundle", "show"])).expect("write bundle");
        let health_port = free_port();
        let socket = dir.path().join("public").join("api.sock");
        let conf = config::agent_conf(
            options,
            &AgentLayout {
                socket: &socket,
                data: &dir.path().join("data"),
                bundle: &bundle,
                health_port,
                server_port: server.bind_port,
                trust_domain: &server.options.trust_domain,
            },
        );
        let config = dir.path().join("agent.conf");
        std::fs::write(&config, conf).expect("write agent.conf");
        Self {
            dir,
            socket,
            config,
            health_port,
            process: None,
        }
    }

    /// Like [`Agent::configure`], listing `servers` in `server_addresses` (in that order)
    /// instead of `server_address` / `server_port`.
    pub fn configure_servers(server: &Server, servers: &[&Server]) -> Self {
        let agent = Self::configure(server);
        let list: Vec<String> = servers
            .iter()
            .map(|s| format!("\"127.0.0.1:{}\"", s.bind_port))
            .collect();
        config::replace_once(
            &agent.config,
            &config::server_address(server.bind_port),
            &format!("server_addresses = [{}]", list.join(", ")),
        );
        agent
    }

    /// Like [`Agent::configure`], but the agent attests with `NodeAttestor "k8s_psat"`
    /// for `cluster`, reading its token from `token_path` (write it before spawning).
    pub fn configure_psat(server: &Server, cluster: &str, token_path: &Path) -> Self {
        let agent = Self::configure(server);
        config::replace_once(
            &agent.config,
            config::JOIN_TOKEN_ATTESTOR,
            &config::psat_agent_attestor(cluster, token_path),
        );
        agent
    }

    /// Adds `line` (e.g. `key = "value"`) to the `agent { }` block of its config.
    pub fn configure_agent_block(&self, line: &str) {
        config::replace_once(&self.config, "agent {\n", &format!("agent {{\n  {line}\n"));
    }

    /// Turns on `discover_workload_path` in its unix workload attestor (`unix:path` selectors);
    /// takes effect at the next start.
    pub fn discover_workload_path(&self) {
        config::replace_once(
            &self.config,
            config::UNIX_ATTESTOR,
            config::UNIX_ATTESTOR_WITH_PATH,
        );
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("agent.log")
    }

    /// The running agent's PID.
    pub fn pid(&self) -> Option<u32> {
        self.process.as_ref().and_then(Process::id)
    }

    /// Sends `signal` to the running agent (SIGSTOP/SIGCONT: an agent away while things change).
    pub fn signal(&self, signal: Signal) {
        self.process.as_ref().expect("agent running").signal(signal);
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// Starts the process and waits until `/ready` (first full sync) answers 200.
    pub fn spawn(&mut self, join_token: Option<&str>) {
        self.spawn_under(&[], join_token);
    }

    /// Like [`Agent::spawn`], run through `wrapper` (e.g. `prlimit --nofile=400:400 --`).
    ///
    /// # Panics
    /// If the agent exits first, or is not ready within 30 s.
    pub fn spawn_under(&mut self, wrapper: &[&str], join_token: Option<&str>) {
        self.launch_under(wrapper, join_token);
        let start = Instant::now();
        loop {
            if let Some(status) = self.exited() {
                panic!(
                    "sigil-agent exited early with {status}; log:\n{}",
                    self.log()
                );
            }
            if self.ready() {
                return;
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "sigil-agent not ready after 30s; log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Starts the process without waiting for it (the benchmark times its start-up itself).
    pub fn launch(&mut self, join_token: Option<&str>) {
        self.launch_under(&[], join_token);
    }

    fn launch_under(&mut self, wrapper: &[&str], join_token: Option<&str>) {
        let mut cmd = match wrapper.split_first() {
            Some((program, args)) => {
                let mut cmd = Command::new(program);
                cmd.args(args).arg(agent_bin());
                cmd
            }
            None => Command::new(agent_bin()),
        };
        cmd.args(["run", "-config"]).arg(&self.config);
        if let Some(token) = join_token {
            cmd.args(["-joinToken", token]);
        }
        self.process = Some(Process::spawn(cmd, &self.log_path()));
    }

    /// Whether `/ready` answers 200 now.
    pub fn ready(&self) -> bool {
        http_get(self.health_port, "/ready").is_some_and(|(code, _)| code == 200)
    }

    /// Its exit status if it has exited by itself.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.process.as_mut().and_then(Process::exited)
    }

    /// Waits up to `timeout` for the agent to exit by itself; `None` if it is still running.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let process = self.process.as_mut().expect("agent running");
        let status = process.wait_exit(timeout)?;
        self.process = None;
        Some(status)
    }

    /// Starts the agent (no join token) and waits for it to exit, as it does when attestation
    /// is refused.
    ///
    /// # Panics
    /// If it is still running after `timeout` (it is killed first).
    pub fn run_to_exit(&mut self, timeout: Duration) -> ExitStatus {
        let mut cmd = Command::new(agent_bin());
        cmd.args(["run", "-config"]).arg(&self.config);
        let mut process = Process::spawn(cmd, &self.log_path());
        process.wait_exit(timeout).unwrap_or_else(|| {
            // Do not leave a stray agent behind the failed test.
            process.kill();
            panic!(
                "sigil-agent still running after {timeout:?}; log:\n{}",
                self.log()
            )
        })
    }

    /// SIGTERM, and wait for the exit status.
    pub fn stop(&mut self) -> ExitStatus {
        let mut process = self.process.take().expect("agent running");
        process.stop(Duration::from_secs(20))
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Some(mut process) = self.process.take() {
            process.kill();
        }
        print_log_tail_if_panicking("sigil-agent", &self.log());
    }
}
