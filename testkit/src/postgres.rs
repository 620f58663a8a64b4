//! Throwaway PostgreSQL clusters for tests (formerly the `sigil-testpg` crate).
//!
//! [`database`] hands each test a fresh database on one cluster per test process, started on
//! first use: `initdb` in a temp dir, then `postgres` on a free loopback port with trust
//! authentication. [`Cluster::start`] gives a test its own cluster, e.g. to restart it.
//!
//! Nothing outlives the test process: `postgres` is started with a parent-death signal
//! (`setpriv --pdeathsig INT`, a fast shutdown) from a spawner thread that lives as long as the
//! process, since the kernel sends that signal when the spawning *thread* exits and test
//! threads come and go. A static cluster is never dropped, so its temp dir stays behind when the
//! process ends; the next start removes such dirs whose process is gone. A [`Cluster`] that is
//! dropped stops its server and removes its dir.
//!
//! `initdb` refuses to run as root: as root, the cluster runs as the `postgres` user (which
//! Debian's package creates) or else `nobody`, via `setpriv`, and its dir is chowned to it.
//!
//! No database client library: databases are created with the `createdb` client, so both async
//! and sync tests can use it.

use std::fs;
use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Mutex, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

/// How long the server may take to accept connections after a start.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// Prefix of every cluster dir in the temp dir (`<prefix><pid>-<n>`).
const DIR_PREFIX: &str = "sigil-testpg-";

/// Why a cluster could not be started or used.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error(
        "PostgreSQL is not installed (no initdb under /usr/lib/postgresql/*/bin, `pg_config --bindir` or PATH): \
         run `apt-get install postgresql`, or set SIGIL_PG_BINDIR"
    )]
    NotInstalled,
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: io::Error,
    },
    #[error("{what} failed ({status}): {output}")]
    Command {
        what: String,
        status: String,
        output: String,
    },
    #[error(
        "postgres did not accept connections on port {port} within {timeout:?}; its log:\n{log}"
    )]
    NotReady {
        port: u16,
        timeout: Duration,
        log: String,
    },
}

fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> ClusterError {
    let what = what.into();
    move |source| ClusterError::Io { what, source }
}

/// A fresh, empty database on the process's shared cluster (started on first use); returns
/// its URL, `postgres://postgres@127.0.0.1:<port>/<name>`.
///
/// # Panics
/// If the cluster cannot be started or the database created (a test helper: the message says
/// what to install).
pub fn database(prefix: &str) -> String {
    shared()
        .create_database(prefix)
        .unwrap_or_else(|e| panic!("throwaway PostgreSQL: {e}"))
}

/// The process's shared cluster, started on first use.
///
/// # Panics
/// If it cannot be started.
pub fn shared() -> &'static Cluster {
    static SHARED: OnceLock<Cluster> = OnceLock::new();
    SHARED.get_or_init(|| Cluster::start().unwrap_or_else(|e| panic!("throwaway PostgreSQL: {e}")))
}

/// A running throwaway cluster. Dropping it stops the server and removes its files.
pub struct Cluster {
    root: PathBuf,
    bindir: PathBuf,
    port: u16,
    run_as: Option<User>,
    server: Mutex<Option<Child>>,
    databases: AtomicU64,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("root", &self.root)
            .field("port", &self.port)
            .finish_non_exhaustive()
    }
}

/// The unprivileged account the cluster runs as when the tests run as root.
#[derive(Clone, Debug)]
struct User {
    uid: u32,
    gid: u32,
}

impl Cluster {
    /// `initdb` in a new temp dir and start the server on a free loopback port.
    pub fn start() -> Result<Self, ClusterError> {
        let bindir = bindir()?;
        sweep_stale_dirs();
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let root = std::env::temp_dir().join(format!(
            "{DIR_PREFIX}{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        fs::create_dir_all(&root).map_err(io_err(format!("create {}", root.display())))?;
        fs::set_permissions(&root, fs::Permissions::from_mode(0o700))
            .map_err(io_err(format!("chmod {}", root.display())))?;
        let run_as = if is_root() {
            let user = unprivileged_user()?;
            std::os::unix::fs::chown(&root, Some(user.uid), Some(user.gid))
                .map_err(io_err(format!("chown {}", root.display())))?;
            Some(user)
        } else {
            None
        };
        let mut cluster = Self {
            root,
            bindir,
            port: 0,
            run_as,
            server: Mutex::new(None),
            databases: AtomicU64::new(0),
        };
        let mut initdb = cluster.command("initdb");
        initdb.arg("-D").arg(cluster.data_dir()).args([
            "-U",
            "postgres",
            "-A",
            "trust",
            "-E",
            "UTF8",
            "--locale=C",
            "--no-sync",
        ]);
        run(&mut initdb, "initdb")?;
        // A port taken between the probe and the bind makes the start fail: try a few.
        let mut last = None;
        for _ in 0..3 {
            cluster.port = free_port()?;
            match cluster.start_server() {
                Ok(()) => return Ok(cluster),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or(ClusterError::NotInstalled))
    }

    /// The loopback port the server listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The URL of database `name`.
    pub fn url(&self, name: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{name}", self.port)
    }

    /// Creates a fresh database named after `prefix` and returns its URL.
    pub fn create_database(&self, prefix: &str) -> Result<String, ClusterError> {
        let mut name: String = prefix
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_ascii_lowercase()
                } else {
                    '_'
                }
            })
            .take(40)
            .collect();
        name.push_str(&format!(
            "_{}",
            self.databases.fetch_add(1, Ordering::Relaxed)
        ));
        let mut createdb = Command::new(self.bindir.join("createdb"));
        createdb
            .args(["-h", "127.0.0.1", "-U", "postgres", "-p"])
            .arg(self.port.to_string())
            .arg(&name);
        run(&mut createdb, "createdb")?;
        Ok(self.url(&name))
    }

    /// Stops the server (fast shutdown: open connections are cut) and waits for it to exit.
    pub fn stop(&self) -> Result<(), ClusterError> {
        let mut server = self.server.lock().unwrap_or_else(|p| p.into_inner());
        let Some(mut child) = server.take() else {
            return Ok(());
        };
        let mut pg_ctl = self.command("pg_ctl");
        pg_ctl
            .args(["stop", "-m", "fast", "-w", "-D"])
            .arg(self.data_dir());
        if let Err(e) = run(&mut pg_ctl, "pg_ctl stop") {
            let _ = child.kill();
            let _ = child.wait();
            return Err(e);
        }
        child.wait().map_err(io_err("wait for postgres"))?;
        Ok(())
    }

    /// Starts the server again on the same port, after [`stop`](Self::stop).
    pub fn start_again(&self) -> Result<(), ClusterError> {
        self.start_server()
    }

    /// Stops and starts the server, as `pg_ctl restart -m fast` does.
    pub fn restart(&self) -> Result<(), ClusterError> {
        self.stop()?;
        self.start_server()
    }

    fn data_dir(&self) -> PathBuf {
        self.root.join("data")
    }

    fn log_file(&self) -> PathBuf {
        self.root.join("postgres.log")
    }

    /// A command for one of the cluster's binaries, as the cluster's user.
    fn command(&self, binary: &str) -> Command {
        let program = self.bindir.join(binary);
        match &self.run_as {
            None => Command::new(program),
            Some(user) => {
                let mut c = Command::new("setpriv");
                c.arg(format!("--reuid={}", user.uid))
                    .arg(format!("--regid={}", user.gid))
                    .arg("--clear-groups")
                    .arg("--")
                    .arg(program);
                c
            }
        }
    }

    fn start_server(&self) -> Result<(), ClusterError> {
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_file())
            .map_err(io_err("open the postgres log"))?;
        let log_err = log.try_clone().map_err(io_err("open the postgres log"))?;
        let mut cmd = Command::new("setpriv");
        if let Some(user) = &self.run_as {
            cmd.arg(format!("--reuid={}", user.uid))
                .arg(format!("--regid={}", user.gid))
                .arg("--clear-groups");
        }
        cmd.args(["--pdeathsig", "INT", "--"])
            .arg(self.bindir.join("postgres"))
            .arg("-D")
            .arg(self.data_dir())
            .arg("-p")
            .arg(self.port.to_string())
            // The socket lives in the cluster's dir, not in /var/run/postgresql.
            .arg("-k")
            .arg(&self.root)
            .args([
                "-c",
                "listen_addresses=127.0.0.1",
                "-c",
                "max_connections=300",
                // A throwaway cluster: durability is not what the tests check.
                "-c",
                "fsync=off",
                "-c",
                "synchronous_commit=off",
                "-c",
                "full_page_writes=off",
            ])
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err);
        let mut child = spawn_from_long_lived_thread(cmd)?;
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Ok(Some(_)) = child.try_wait() {
                return Err(self.not_ready());
            }
            let mut ready = Command::new(self.bindir.join("pg_isready"));
            ready
                .args(["-q", "-h", "127.0.0.1", "-U", "postgres", "-p"])
                .arg(self.port.to_string());
            if ready.status().is_ok_and(|s| s.success()) {
                break;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(self.not_ready());
            }
            thread::sleep(Duration::from_millis(50));
        }
        *self.server.lock().unwrap_or_else(|p| p.into_inner()) = Some(child);
        Ok(())
    }

    fn not_ready(&self) -> ClusterError {
        ClusterError::NotReady {
            port: self.port,
            timeout: START_TIMEOUT,
            log: fs::read_to_string(self.log_file()).unwrap_or_default(),
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = self.stop();
        let _ = fs::remove_dir_all(&self.root);
    }
}

/// Spawns `cmd` from a thread that lives as long as the process, so the parent-death signal
/// fires when the process ends, not when the test thread that asked ends.
fn spawn_from_long_lived_thread(cmd: Command) -> Result<Child, ClusterError> {
    type Request = (Command, mpsc::Sender<io::Result<Child>>);
    static SPAWNER: OnceLock<Mutex<mpsc::Sender<Request>>> = OnceLock::new();
    let spawner = SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<Request>();
        thread::Builder::new()
            .name("testpg-spawner".into())
            .spawn(move || {
                // The sender is in a static and never dropped: this thread never ends.
                while let Ok((mut cmd, reply)) = rx.recv() {
                    let _ = reply.send(cmd.spawn());
                }
            })
            .map(|_| ())
            .unwrap_or_else(|e| panic!("cannot start the testpg spawner thread: {e}"));
        Mutex::new(tx)
    });
    let (reply, answer) = mpsc::channel();
    spawner
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .send((cmd, reply))
        .map_err(|_| io_err("spawn postgres")(io::Error::other("spawner thread gone")))?;
    answer
        .recv()
        .map_err(|_| io_err("spawn postgres")(io::Error::other("spawner thread gone")))?
        .map_err(io_err(
            "spawn postgres (is setpriv from util-linux installed?)",
        ))
}

/// Runs a command to completion; a non-zero exit is an error carrying its output.
fn run(cmd: &mut Command, what: &str) -> Result<Output, ClusterError> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(io_err(format!("run {what}")))?;
    if !out.status.success() {
        return Err(ClusterError::Command {
            what: what.to_owned(),
            status: out.status.to_string(),
            output: format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        });
    }
    Ok(out)
}

/// The directory holding `initdb`, `postgres`, `pg_ctl`, `createdb` and `pg_isready`.
fn bindir() -> Result<PathBuf, ClusterError> {
    let has_initdb = |d: &Path| d.join("initdb").is_file() && d.join("postgres").is_file();
    if let Some(dir) = std::env::var_os("SIGIL_PG_BINDIR") {
        let dir = PathBuf::from(dir);
        return if has_initdb(&dir) {
            Ok(dir)
        } else {
            Err(ClusterError::NotInstalled)
        };
    }
    // Debian's layout: one dir per major version; the newest wins.
    let mut versions: Vec<(u32, PathBuf)> = fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let major = e.file_name().to_str()?.parse().ok()?;
            Some((major, e.path().join("bin")))
        })
        .filter(|(_, bin)| has_initdb(bin))
        .collect();
    versions.sort();
    if let Some((_, bin)) = versions.pop() {
        return Ok(bin);
    }
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output() {
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if out.status.success() && has_initdb(&dir) {
            return Ok(dir);
        }
    }
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .find(|d| has_initdb(d))
        .ok_or(ClusterError::NotInstalled)
}

fn is_root() -> bool {
    fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

/// `postgres` if the account exists (Debian's package creates it), else `nobody`.
fn unprivileged_user() -> Result<User, ClusterError> {
    let passwd = fs::read_to_string("/etc/passwd").map_err(io_err("read /etc/passwd"))?;
    let find = |name: &str| {
        passwd.lines().find_map(|line| {
            let fields: Vec<&str> = line.split(':').collect();
            (fields.len() > 3 && fields[0] == name).then(|| {
                Some(User {
                    uid: fields[2].parse().ok()?,
                    gid: fields[3].parse().ok()?,
                })
            })?
        })
    };
    find("postgres").or_else(|| find("nobody")).ok_or_else(|| {
        io_err("find an unprivileged user to run PostgreSQL as")(io::Error::other(
            "neither postgres nor nobody is in /etc/passwd",
        ))
    })
}

fn free_port() -> Result<u16, ClusterError> {
    crate::net::loopback_port().map_err(io_err("find a free port"))
}

/// Removes the dirs of clusters whose test process has ended (static clusters are never
/// dropped). Their servers got the parent-death signal when that process ended.
fn sweep_stale_dirs() {
    let Ok(dir) = fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in dir.flatten() {
        let name = entry.file_name();
        let Some(rest) = name.to_str().and_then(|n| n.strip_prefix(DIR_PREFIX)) else {
            continue;
        };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        let postmaster_running = fs::read_to_string(entry.path().join("data/postmaster.pid"))
            .ok()
            .and_then(|s| s.lines().next()?.trim().parse::<u32>().ok())
            .is_some_and(|pm| Path::new(&format!("/proc/{pm}")).exists());
        if !Path::new(&format!("/proc/{pid}")).exists() && !postmaster_running {
            let _ = fs::remove_dir_all(entry.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_cluster_serves_fresh_databases_and_cleans_up() {
        let cluster = Cluster::start().unwrap();
        let a = cluster.create_database("Some Test").unwrap();
        let b = cluster.create_database("Some Test").unwrap();
        assert_ne!(a, b);
        assert!(
            a.starts_with(&format!(
                "postgres://postgres@127.0.0.1:{}/some_test_",
                cluster.port()
            )),
            "{a}"
        );
        cluster.restart().unwrap();
        cluster.create_database("after_restart").unwrap();
        let root = cluster.root.clone();
        drop(cluster);
        assert!(!root.exists());
    }

    #[test]
    fn shared_cluster_is_started_once() {
        let a = database("x");
        let b = database("x");
        assert_ne!(a, b);
        assert_eq!(shared().port(), shared().port());
    }
}
