//! A started child process with its stdout and stderr in a log file, killed on drop, and the
//! waiting every test does: poll until something holds, wait for an exit, print a log's tail
//! when a test fails.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// A running child process whose stdout and stderr are appended to a log file. Killed (SIGKILL)
/// on drop.
#[derive(Debug)]
pub struct Process {
    child: Option<Child>,
    log: PathBuf,
}

impl Process {
    /// Starts `command` with stdin closed and stdout + stderr appended to `log`.
    ///
    /// # Panics
    /// If the log cannot be opened or the program not started.
    pub fn spawn(mut command: Command, log: &Path) -> Self {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap_or_else(|e| panic!("open {}: {e}", log.display()));
        let child = command
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("log fd"))
            .stderr(file)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {command:?}: {e}"));
        Self {
            child: Some(child),
            log: log.to_owned(),
        }
    }

    /// The PID, while it has not been stopped or killed.
    pub fn id(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Its log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits up to `timeout` until `ready` holds of it (polled every 50 ms).
    ///
    /// # Panics
    /// When it exits first (with its log) or `timeout` passes, naming `what`.
    pub fn wait_until(
        &mut self,
        what: &str,
        timeout: Duration,
        mut ready: impl FnMut(&Self) -> bool,
    ) {
        wait_for(what, timeout, || {
            if let Some(status) = self.exited() {
                panic!("{what}: exited early with {status}; log:\n{}", self.log());
            }
            ready(self).then_some(())
        });
    }

    /// Its exit status if it has exited by itself.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    /// Sends `signal` (SIGSTOP/SIGCONT: a process away while things change).
    ///
    /// # Panics
    /// If it is no longer running.
    pub fn signal(&self, signal: Signal) {
        let child = self.child.as_ref().expect("process running");
        kill(pid(child), signal).expect("signal the process");
    }

    /// SIGTERM, and the exit status within `timeout`.
    ///
    /// # Panics
    /// If it was already stopped, or does not exit within `timeout`.
    pub fn stop(&mut self, timeout: Duration) -> ExitStatus {
        let mut child = self.child.take().expect("process running");
        let _ = kill(pid(&child), Signal::SIGTERM);
        wait_child(&mut child, timeout)
    }

    /// Waits up to `timeout` for it to exit by itself; `None` if it is still running. Once it
    /// has exited it counts as stopped.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let start = Instant::now();
        loop {
            let child = self.child.as_mut().expect("process running");
            if let Some(status) = child.try_wait().expect("wait for the process") {
                self.child = None;
                return Some(status);
            }
            if start.elapsed() >= timeout {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGKILL: a crash.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
    }
}

fn pid(child: &Child) -> Pid {
    Pid::from_raw(i32::try_from(child.id()).expect("PID in range"))
}

/// Runs `command` with stdin closed and stdout + stderr in a fresh `log` until it exits by
/// itself (a binary refusing its config, say): its exit status, `None` if it was still running
/// after `timeout` (it is killed then), and its log.
pub fn run_to_exit(
    command: Command,
    log: &Path,
    timeout: Duration,
) -> (Option<ExitStatus>, String) {
    let _ = std::fs::remove_file(log);
    let mut process = Process::spawn(command, log);
    let status = process.wait_exit(timeout);
    process.kill();
    (status, process.log())
}

/// Polls `f` every 50 ms until it returns `Some` or `timeout` passes.
///
/// # Panics
/// When `timeout` passes, naming `what`.
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

/// Whether `<bin> healthcheck -socketPath <socket>` passes (sigil-server, sigil-agent and
/// SPIRE's binaries alike).
pub fn healthcheck_passes(bin: &Path, socket: &Path) -> bool {
    Command::new(bin)
        .args(["healthcheck", "-socketPath"])
        .arg(socket)
        .output()
        .is_ok_and(|o| o.status.success())
}

/// The exit status of `child` within `timeout`.
pub fn wait_child(child: &mut Child, timeout: Duration) -> ExitStatus {
    wait_for("process exit", timeout, || child.try_wait().ok().flatten())
}

/// On a failing test, the end of a process's log goes to stderr (shown with the failure), so a
/// failure in CI can be diagnosed without re-running it. The agent's per-call Workload API
/// lines (DEBUG, with the caller's `pid`) are left out: a workload fetching in a loop would
/// otherwise fill the whole tail.
pub(crate) fn print_log_tail_if_panicking(what: &str, log: &str) {
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
