//! End-to-end harness: starts the real `sigil-server` (and later `sigil-agent`) binaries on
//! temporary directories and drives them as an operator would, through the CLI and sockets.
#![forbid(unsafe_code)]

pub mod admin;
pub mod k8s;
pub mod tmpfs;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// Directory holding the built binaries (`target/debug` unless CARGO_TARGET_DIR says otherwise).
pub fn bin_dir() -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        // Integration test executables live in <target>/<profile>/deps/.
        let exe = std::env::current_exe().expect("test executable path");
        let dir = exe.parent().and_then(Path::parent).expect("target profile dir").to_path_buf();
        for name in ["sigil-server", "sigil-agent"] {
            assert!(
                dir.join(name).exists(),
                "{} is missing: build the binaries first (`cargo build --workspace --bins`, which scripts/test does)",
                dir.join(name).display()
            );
        }
        dir
    })
    .clone()
}

pub fn server_bin() -> PathBuf {
    bin_dir().join("sigil-server")
}

pub fn agent_bin() -> PathBuf {
    bin_dir().join("sigil-agent")
}

/// A TCP port that was free a moment ago on 127.0.0.1, outside the range outgoing connections
/// take theirs from (see [`sigil_testpg::loopback_port`]).
pub fn free_port() -> u16 {
    sigil_testpg::loopback_port().expect("free port")
}

/// Polls `f` every 50 ms until it returns `Some` or `timeout` passes.
pub fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            start.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Knobs for a test server's `server.conf`.
#[derive(Clone, Debug)]
pub struct ServerOptions {
    pub trust_domain: String,
    pub ca_ttl: String,
    pub x509_svid_ttl: String,
    pub jwt_svid_ttl: String,
    pub key_manager_disk: bool,
    pub health: bool,
    pub extra_server: String,
    /// Top-level HCL appended to the file (e.g. a `telemetry` block).
    pub extra_top: String,
    /// Use SPIRE's default admin socket path (so CLI commands work without -socketPath).
    pub default_socket: bool,
    /// HCL appended inside `plugins { }` (e.g. a `NodeAttestor "k8s_psat"` block).
    pub extra_plugins: String,
    /// Extra environment variables for the server process (e.g. `SSL_CERT_FILE`).
    pub env: Vec<(String, String)>,
    /// A PostgreSQL connection URL (e.g. from `sigil_testpg::database`) instead of the SQLite
    /// file in the data dir. Replicas of this server share it.
    pub postgres: Option<String>,
    /// Start the server under this file descriptor limit, soft and hard (`prlimit --nofile`).
    pub nofile_limit: Option<u64>,
}

impl Default for ServerOptions {
    fn default() -> Self {
        ServerOptions {
            trust_domain: "example.org".into(),
            ca_ttl: "24h".into(),
            x509_svid_ttl: "1h".into(),
            jwt_svid_ttl: "5m".into(),
            key_manager_disk: true,
            health: true,
            extra_server: String::new(),
            extra_top: String::new(),
            default_socket: false,
            extra_plugins: String::new(),
            env: Vec::new(),
            postgres: None,
            nofile_limit: None,
        }
    }
}

/// A running `sigil-server` on a temp dir. Killed on drop.
pub struct Server {
    pub dir: tempfile::TempDir,
    pub socket: PathBuf,
    pub config: PathBuf,
    pub bind_port: u16,
    pub health_port: u16,
    pub options: ServerOptions,
    child: Option<Child>,
}

impl Server {
    pub fn start(options: ServerOptions) -> Server {
        Server::start_on(options, None)
    }

    /// Another replica of this server: same options, its own temp dir, ports and CA, sharing
    /// this server's datastore (its PostgreSQL database, or else its SQLite file).
    pub fn start_replica(&self) -> Server {
        let file = self.options.postgres.is_none().then(|| self.db_path());
        Server::start_on(self.options.clone(), file)
    }

    /// Starts a server on the datastore file `datastore` (default: its own, in its data dir).
    fn start_on(options: ServerOptions, datastore: Option<PathBuf>) -> Server {
        let dir = tempfile::tempdir().expect("temp dir");
        let socket = if options.default_socket {
            PathBuf::from("/tmp/spire-server/private/api.sock")
        } else {
            dir.path().join("private").join("api.sock")
        };
        let bind_port = free_port();
        let health_port = free_port();
        let data = dir.path().join("data");
        let datastore = match &options.postgres {
            Some(url) => {
                format!("database_type = \"postgres\"\n      connection_string = \"{url}\"")
            }
            None => format!(
                "database_type = \"sqlite3\"\n      connection_string = \"{}\"",
                datastore
                    .unwrap_or_else(|| data.join("datastore.sqlite3"))
                    .display()
            ),
        };
        let key_manager = if options.key_manager_disk {
            format!(
                "KeyManager \"disk\" {{\n    plugin_data {{\n      keys_path = \"{}/keys.json\"\n    }}\n  }}",
                data.display()
            )
        } else {
            r#"KeyManager "memory" {}"#.to_owned()
        };
        let health = if options.health {
            format!(
                "health_checks {{\n  listener_enabled = true\n  bind_address = \"127.0.0.1\"\n  bind_port = \"{health_port}\"\n  live_path = \"/live\"\n  ready_path = \"/ready\"\n}}\n"
            )
        } else {
            String::new()
        };
        let conf = format!(
            r#"server {{
  bind_address = "127.0.0.1"
  bind_port = "{bind_port}"
  socket_path = "{socket}"
  trust_domain = "{td}"
  data_dir = "{data}"
  log_level = "DEBUG"
  ca_ttl = "{ca_ttl}"
  default_x509_svid_ttl = "{x509}"
  default_jwt_svid_ttl = "{jwt}"
  {extra}
}}

plugins {{
  DataStore "sql" {{
    plugin_data {{
      {datastore}
    }}
  }}
  {key_manager}
  NodeAttestor "join_token" {{
    plugin_data {{}}
  }}
  {extra_plugins}
}}
{health}
{extra_top}
"#,
            socket = socket.display(),
            td = options.trust_domain,
            data = data.display(),
            ca_ttl = options.ca_ttl,
            x509 = options.x509_svid_ttl,
            jwt = options.jwt_svid_ttl,
            extra = options.extra_server,
            extra_top = options.extra_top,
            extra_plugins = options.extra_plugins,
        );
        let config = dir.path().join("server.conf");
        std::fs::write(&config, conf).expect("write server.conf");
        let mut server = Server {
            dir,
            socket,
            config,
            bind_port,
            health_port,
            options,
            child: None,
        };
        server.spawn();
        server
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// The datastore file (for a replica: the first server's).
    pub fn db_path(&self) -> PathBuf {
        let conf = std::fs::read_to_string(&self.config).expect("read server.conf");
        let line = conf
            .lines()
            .find_map(|l| l.trim().strip_prefix("connection_string = "))
            .expect("connection_string in server.conf");
        PathBuf::from(line.trim_matches('"'))
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("server.log")
    }

    /// Starts the process and waits until `healthcheck` passes.
    pub fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("open server log");
        let mut command = match self.options.nofile_limit {
            // prlimit sets the limit on itself, then execs the server (same PID).
            Some(n) => {
                let mut c = Command::new("prlimit");
                c.arg(format!("--nofile={n}:{n}"))
                    .arg("--")
                    .arg(server_bin());
                c
            }
            None => Command::new(server_bin()),
        };
        let child = command
            .args(["run", "-config"])
            .arg(&self.config)
            .envs(self.options.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log fd"))
            .stderr(log)
            .spawn()
            .expect("spawn sigil-server");
        self.child = Some(child);
        let deadline = Duration::from_secs(30);
        wait_for("sigil-server to become healthy", deadline, || {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!(
                    "sigil-server exited early with {status}; log:\n{}",
                    self.log()
                );
            }
            self.cli(&["healthcheck"]).status.success().then_some(())
        });
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// Runs `sigil-server <args> -socketPath <socket>`.
    pub fn cli(&self, args: &[&str]) -> Output {
        let mut cmd = Command::new(server_bin());
        cmd.args(args).arg("-socketPath").arg(&self.socket);
        cmd.output().expect("run sigil-server CLI")
    }

    /// Runs a CLI command that must succeed; returns its stdout.
    pub fn cli_ok(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        assert!(
            out.status.success(),
            "sigil-server {args:?} failed ({}):\nstdout: {}\nstderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("utf-8 output")
    }

    /// Runs a CLI command with `-output json` and parses its output.
    pub fn cli_json(&self, args: &[&str]) -> serde_json::Value {
        let mut all: Vec<&str> = args.to_vec();
        all.extend(["-output", "json"]);
        let out = self.cli_ok(&all);
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("{args:?}: not JSON ({e}): {out}"))
    }

    /// SIGTERM, and wait for the exit status.
    pub fn stop(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("server running");
        let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM);
        wait_child(&mut child, Duration::from_secs(20))
    }

    /// SIGKILL: a crash.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn restart(&mut self) {
        let status = self.stop();
        assert!(
            status.success(),
            "server exited with {status}; log:\n{}",
            self.log()
        );
        self.spawn();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill9();
        print_log_tail_if_panicking("sigil-server", &self.log());
    }
}

/// On a failing test, the end of a process's log goes to stderr (shown with the failure), so a
/// failure in CI can be diagnosed without re-running it. The agent's per-call Workload API
/// lines (DEBUG, with the caller's `pid`) are left out: a workload fetching in a loop would
/// otherwise fill the whole tail.
fn print_log_tail_if_panicking(what: &str, log: &str) {
    const LINES: usize = 120;
    if !std::thread::panicking() {
        return;
    }
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| !(l.contains("DEBUG") && l.contains("pid")))
        .collect();
    let tail = &lines[lines.len().saturating_sub(LINES)..];
    eprintln!("---- last {} lines of the {what} log ----", tail.len());
    for line in tail {
        eprintln!("{line}");
    }
}

/// A running `sigil-agent` on a temp dir, talking to a [`Server`]. Killed on drop.
pub struct Agent {
    pub dir: tempfile::TempDir,
    pub socket: PathBuf,
    pub config: PathBuf,
    pub health_port: u16,
    child: Option<Child>,
}

impl Agent {
    /// Writes `agent.conf` (disk key manager, unix workload attestor, trust from the server's
    /// bundle PEM written by `bundle show`) and starts the agent with `-joinToken token` if given.
    pub fn start(server: &Server, join_token: Option<&str>) -> Agent {
        let mut agent = Agent::configure(server);
        agent.spawn(join_token);
        agent
    }

    /// Writes the config without starting the agent.
    pub fn configure(server: &Server) -> Agent {
        Agent::configure_trust(server, false)
    }

    /// Like [`Agent::configure`]; with `insecure_bootstrap` the agent gets no bundle file and
    /// trusts the server on first contact (SPIRE's `insecure_bootstrap = true`).
    pub fn configure_trust(server: &Server, insecure_bootstrap: bool) -> Agent {
        let dir = tempfile::tempdir().expect("temp dir");
        let bundle = dir.path().join("bootstrap.pem");
        std::fs::write(&bundle, server.cli_ok(&["bundle", "show"])).expect("write bundle");
        let health_port = free_port();
        let socket = dir.path().join("public").join("api.sock");
        let data = dir.path().join("data");
        let conf = format!(
            r#"agent {{
  data_dir = "{data}"
  log_level = "DEBUG"
  server_address = "127.0.0.1"
  server_port = "{port}"
  socket_path = "{socket}"
  {trust}
  trust_domain = "{td}"
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
            trust = if insecure_bootstrap {
                "insecure_bootstrap = true".to_owned()
            } else {
                format!("trust_bundle_path = \"{}\"", bundle.display())
            },
            td = server.options.trust_domain,
        );
        let config = dir.path().join("agent.conf");
        std::fs::write(&config, conf).expect("write agent.conf");
        Agent {
            dir,
            socket,
            config,
            health_port,
            child: None,
        }
    }

    /// Like [`Agent::configure`], listing `servers` in `server_addresses` (in that order)
    /// instead of `server_address` / `server_port`.
    pub fn configure_servers(server: &Server, servers: &[&Server]) -> Agent {
        let agent = Agent::configure(server);
        let conf = std::fs::read_to_string(&agent.config).expect("read agent.conf");
        let list: Vec<String> = servers
            .iter()
            .map(|s| format!("\"127.0.0.1:{}\"", s.bind_port))
            .collect();
        let conf = conf.replacen(
            &format!(
                "server_address = \"127.0.0.1\"\n  server_port = \"{}\"",
                server.bind_port
            ),
            &format!("server_addresses = [{}]", list.join(", ")),
            1,
        );
        assert!(conf.contains("server_addresses"), "{conf}");
        std::fs::write(&agent.config, conf).expect("write agent.conf");
        agent
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("agent.log")
    }

    /// The running agent's PID.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Sends `signal` to the running agent (SIGSTOP/SIGCONT: an agent away while things change).
    pub fn signal(&self, signal: Signal) {
        let child = self.child.as_ref().expect("agent running");
        kill(Pid::from_raw(child.id() as i32), signal).expect("signal the agent");
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// Starts the process and waits until `/ready` (first full sync) answers 200.
    pub fn spawn(&mut self, join_token: Option<&str>) {
        self.spawn_under(&[], join_token);
    }

    /// Like [`Agent::spawn`], run through `wrapper` (e.g. `prlimit --nofile=400:400 --`).
    pub fn spawn_under(&mut self, wrapper: &[&str], join_token: Option<&str>) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("open agent log");
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
        let child = cmd
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log fd"))
            .stderr(log)
            .spawn()
            .expect("spawn sigil-agent");
        self.child = Some(child);
        let start = Instant::now();
        loop {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!(
                    "sigil-agent exited early with {status}; log:\n{}",
                    self.log()
                );
            }
            if http_get(self.health_port, "/ready").is_some_and(|(code, _)| code == 200) {
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

    /// Runs `sigil-agent <args> -socketPath <socket>`.
    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new(agent_bin())
            .args(args)
            .arg("-socketPath")
            .arg(&self.socket)
            .output()
            .expect("run sigil-agent CLI")
    }

    /// What `api fetch x509` prints for this process's workload (its SPIFFE IDs among it);
    /// empty when the fetch fails.
    pub fn fetched_x509(&self) -> String {
        String::from_utf8_lossy(&self.cli(&["api", "fetch", "x509"]).stdout).into_owned()
    }

    /// Waits until this process's workload gets an X509-SVID.
    pub fn wait_for_svid(&self, timeout: Duration) {
        wait_for("the workload's X509-SVID", timeout, || {
            self.cli(&["api", "fetch", "x509"])
                .status
                .success()
                .then_some(())
        });
    }

    /// Waits until this process's workload gets an X509-SVID for each of `spiffe_ids`.
    pub fn wait_for_ids(&self, what: &str, spiffe_ids: &[&str], timeout: Duration) {
        wait_for(what, timeout, || {
            let out = self.fetched_x509();
            spiffe_ids.iter().all(|id| out.contains(id)).then_some(())
        });
    }

    /// Waits up to `timeout` for the agent to exit by itself; `None` if it is still running.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let start = Instant::now();
        loop {
            let child = self.child.as_mut().expect("agent running");
            if let Some(status) = child.try_wait().expect("wait for sigil-agent") {
                self.child = None;
                return Some(status);
            }
            if start.elapsed() >= timeout {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Adds `line` (e.g. `key = "value"`) to the `agent { }` block of its config.
    pub fn configure_agent_block(&self, line: &str) {
        let conf = std::fs::read_to_string(&self.config).expect("read agent.conf");
        let conf = conf.replacen("agent {\n", &format!("agent {{\n  {line}\n"), 1);
        std::fs::write(&self.config, conf).expect("write agent.conf");
    }

    /// SIGTERM, and wait for the exit status.
    pub fn stop(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("agent running");
        let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM);
        wait_child(&mut child, Duration::from_secs(20))
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        print_log_tail_if_panicking("sigil-agent", &self.log());
    }
}

pub fn wait_child(child: &mut Child, timeout: Duration) -> ExitStatus {
    wait_for("process exit", timeout, || child.try_wait().ok().flatten())
}

/// A self-signed P-256 serving certificate for `name` (CN and subjectAltName, e.g. `DNS:localhost`
/// or `IP:127.0.0.1`), valid one day, written to `dir` as `cert.pem` / `key.pem`. Returns their
/// paths.
pub fn self_signed_serving_cert(dir: &Path, cn: &str, san: &str) -> (PathBuf, PathBuf) {
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let (ok, out) = openssl(&[
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-days",
        "1",
        "-subj",
        &format!("/CN={cn}"),
        "-addext",
        &format!("subjectAltName={san}"),
        "-keyout",
        key.to_str().unwrap(),
        "-out",
        cert.to_str().unwrap(),
    ]);
    assert!(ok, "{out}");
    (cert, key)
}

/// Runs `openssl` with `args`; returns (success, combined output).
pub fn openssl(args: &[&str]) -> (bool, String) {
    let out = Command::new("openssl")
        .args(args)
        .output()
        .expect("openssl installed");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// `sqlite3 <db> <sql>`: the SQLite CLI, an independent reader of the server's database file.
/// Returns stdout, trimmed. Waits up to 10 s for a running server's write lock.
pub fn sqlite3(db: &Path, sql: &str) -> String {
    let out = Command::new("sqlite3")
        .args(["-cmd", ".timeout 10000"])
        .arg(db)
        .arg(sql)
        .output()
        .expect("the sqlite3 CLI is installed (.ci/run installs it)");
    assert!(
        out.status.success(),
        "sqlite3 {sql:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// DER certificates from a PEM string.
pub fn pem_certs(pem_text: &str) -> Vec<Vec<u8>> {
    x509_parser::pem::Pem::iter_from_buffer(pem_text.as_bytes())
        .map(|p| p.expect("valid PEM").contents)
        .collect()
}

/// A minimal HTTP/1.1 GET over loopback, returning (status, body). Enough for health probes.
pub fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).ok()?;
    let status = buf.split_whitespace().nth(1)?.parse().ok()?;
    let body = buf
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Some((status, body))
}

/// Generates a join token, starts an agent with it and returns the agent and its SPIFFE ID
/// (`spiffe://<td>/spire/agent/join_token/<token>`). `world_reachable` makes the temp dir
/// traversable so a workload running as another user can reach the socket.
pub fn attested_agent(server: &Server, world_reachable: bool) -> (Agent, String) {
    let token = server
        .cli_ok(&["token", "generate", "-ttl", "600"])
        .trim()
        .strip_prefix("Token: ")
        .expect("token output")
        .to_owned();
    let mut agent = Agent::configure(server);
    if world_reachable {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(agent.dir.path(), std::fs::Permissions::from_mode(0o755))
            .expect("chmod");
    }
    agent.spawn(Some(&token));
    let id = format!(
        "spiffe://{}/spire/agent/join_token/{token}",
        server.options.trust_domain
    );
    (agent, id)
}

/// Registers an entry under `parent` selecting `unix:uid:<uid>`; returns its ID.
pub fn register_uid(
    server: &Server,
    spiffe_id: &str,
    parent: &str,
    uid: u32,
    extra: &[&str],
) -> String {
    let selector = format!("unix:uid:{uid}");
    let mut args = vec![
        "entry",
        "create",
        "-spiffeID",
        spiffe_id,
        "-parentID",
        parent,
        "-selector",
        &selector,
    ];
    args.extend(extra);
    let created = server.cli_json(&args);
    created[0]["id"].as_str().expect("entry id").to_owned()
}

/// The Python interpreter with py-spiffe (SIGIL_PYTHON, set by .ci/run and scripts/test).
pub fn python() -> String {
    std::env::var("SIGIL_PYTHON").unwrap_or_else(|_| "python3".into())
}
pub mod kubelet;
