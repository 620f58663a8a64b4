//! A running `sigil-server` on a temp dir: its config written from [`ServerOptions`], its
//! ports picked, started and waited for until `healthcheck` passes, stopped, restarted,
//! crashed, and replicas sharing its datastore. Killed on drop; on a failing test the tail of
//! its log goes to stderr.

use std::path::PathBuf;
use std::process::{Command, ExitStatus};
use std::time::Duration;

use crate::config::{self, ServerLayout, ServerOptions};
use crate::process::{Process, print_log_tail_if_panicking, wait_for};
use crate::{free_port, server_bin};

/// A `sigil-server` on a temp dir. Killed on drop.
#[derive(Debug)]
pub struct Server {
    pub dir: tempfile::TempDir,
    pub socket: PathBuf,
    pub config: PathBuf,
    pub bind_port: u16,
    pub health_port: u16,
    pub options: ServerOptions,
    process: Option<Process>,
}

impl Server {
    /// Writes the config and starts the server; returns once `healthcheck` passes.
    pub fn start(options: ServerOptions) -> Self {
        let mut server = Self::configure(options);
        server.spawn();
        server
    }

    /// Another replica of this server: same options, its own temp dir, ports and CA, sharing
    /// this server's datastore (its PostgreSQL database, or else its SQLite file).
    pub fn start_replica(&self) -> Self {
        let file = self.options.postgres.is_none().then(|| self.db_path());
        let mut server = Self::configure_on(self.options.clone(), file);
        server.spawn();
        server
    }

    /// Writes the config without starting the server ([`Server::spawn`] or [`Server::launch`]
    /// start it).
    pub fn configure(options: ServerOptions) -> Self {
        Self::configure_on(options, None)
    }

    /// Like [`Server::configure`], on the datastore file `sqlite` (default: its own, in its
    /// data dir).
    fn configure_on(options: ServerOptions, sqlite: Option<PathBuf>) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let socket = if options.default_socket {
            PathBuf::from("/tmp/spire-server/private/api.sock")
        } else {
            dir.path().join("private").join("api.sock")
        };
        let data = dir.path().join("data");
        let sqlite = sqlite.unwrap_or_else(|| data.join("datastore.sqlite3"));
        let (bind_port, health_port) = (free_port(), free_port());
        let conf = config::server_conf(
            &options,
            &ServerLayout {
                socket: &socket,
                data: &data,
                bind_port,
                health_port,
                sqlite: &sqlite,
            },
        );
        let config = dir.path().join("server.conf");
        std::fs::write(&config, conf).expect("write server.conf");
        Self {
            dir,
            socket,
            config,
            bind_port,
            health_port,
            options,
            process: None,
        }
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// The datastore file (for a replica: the first server's).
    pub fn db_path(&self) -> PathBuf {
        config::sqlite_file(&self.config)
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("server.log")
    }

    /// Starts the process and waits until `healthcheck` passes.
    ///
    /// # Panics
    /// If it exits first, or is not healthy within 30 s.
    pub fn spawn(&mut self) {
        self.launch();
        wait_for(
            "sigil-server to become healthy",
            Duration::from_secs(30),
            || {
                if let Some(status) = self.exited() {
                    panic!(
                        "sigil-server exited early with {status}; log:\n{}",
                        self.log()
                    );
                }
                self.cli(&["healthcheck"]).status.success().then_some(())
            },
        );
    }

    /// Starts the process without waiting for it (the benchmark times its start-up itself).
    pub fn launch(&mut self) {
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
        command
            .args(["run", "-config"])
            .arg(&self.config)
            .envs(self.options.env.iter().map(|(k, v)| (k, v)));
        self.process = Some(Process::spawn(command, &self.log_path()));
    }

    /// Its exit status if it has exited by itself.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.process.as_mut().and_then(Process::exited)
    }

    pub fn pid(&self) -> Option<u32> {
        self.process.as_ref().and_then(Process::id)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// SIGTERM, and wait for the exit status.
    pub fn stop(&mut self) -> ExitStatus {
        let mut process = self.process.take().expect("server running");
        process.stop(Duration::from_secs(20))
    }

    /// SIGKILL: a crash.
    pub fn kill9(&mut self) {
        if let Some(mut process) = self.process.take() {
            process.kill();
        }
    }

    /// Stops it (it must exit 0) and starts it again.
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
