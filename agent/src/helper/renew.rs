//! What happens after each X.509 update, as spiffe-helper does it (`pkg/sidecar`):
//!
//! - `cmd`: started after the first update, with the helper's stdin, stdout and stderr. On
//!   each later update it is sent `renew_signal` if it is still running (nothing is sent
//!   without `renew_signal`), or started again if it has exited. It is not restarted when it
//!   exits between updates, and it is left running when the helper stops.
//! - `pid_file_name`: the file is read again on every update and the PID in it is sent
//!   `renew_signal`; a file that cannot be read or parsed, or a process that cannot be
//!   signalled, is logged, retried ten times from 100 ms, doubling, then logged again and
//!   skipped until the next update.

use std::path::Path;
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::process::{Child, Command};

use super::config::{CmdLine, RenewAction};

/// spiffe-helper's PID-file retries: 10 tries, 100 ms doubling.
const PID_FILE_TRIES: u32 = 10;
const PID_FILE_FIRST_WAIT: Duration = Duration::from_millis(100);

/// Why signalling the PID file's process failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PidFileError {
    #[error("reading the PID file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("the PID file {path} does not hold a process ID: {content:?}")]
    Parse { path: String, content: String },
    #[error("signalling process {pid} with {signal}: {source}")]
    Signal {
        pid: i32,
        signal: Signal,
        source: nix::Error,
    },
}

/// Runs the renewal action; holds the command's process between updates.
#[derive(Debug)]
pub struct Renewer {
    action: RenewAction,
    child: Option<Child>,
}

impl Renewer {
    pub fn new(action: RenewAction) -> Self {
        Self {
            action,
            child: None,
        }
    }

    /// Called after each X.509 update. Failures are logged: the files are already current.
    pub async fn renewed(&mut self) {
        if let Some(cmd) = self.action.cmd.clone() {
            self.run_or_signal(&cmd);
        }
        if let (Some(path), Some(signal)) = (&self.action.pid_file, self.action.signal) {
            let mut wait = PID_FILE_FIRST_WAIT;
            for attempt in 1..=PID_FILE_TRIES {
                match signal_pid_file(path, signal) {
                    Ok(pid) => {
                        tracing::info!(pid, %signal, "signalled the process of the PID file");
                        break;
                    }
                    Err(e) if attempt == PID_FILE_TRIES => {
                        tracing::error!(error = %e, "could not signal the PID file's process; trying again at the next renewal");
                    }
                    Err(e) => {
                        if attempt == 1 {
                            tracing::warn!(error = %e, "could not signal the PID file's process; retrying");
                        }
                        tokio::time::sleep(wait).await;
                        wait *= 2;
                    }
                }
            }
        }
    }

    /// Starts the command if it is not running; signals it if it is.
    fn run_or_signal(&mut self, cmd: &CmdLine) {
        if let Some(child) = &mut self.child {
            match child.try_wait() {
                Ok(None) => {
                    let (Some(signal), Some(pid)) = (self.action.signal, child.id()) else {
                        return;
                    };
                    // Not reaped yet (try_wait said so), so the PID is still this child's.
                    match kill(Pid::from_raw(pid as i32), signal) {
                        Ok(()) => tracing::info!(pid, %signal, "signalled cmd"),
                        Err(e) => tracing::error!(pid, %signal, error = %e, "could not signal cmd"),
                    }
                    return;
                }
                Ok(Some(status)) => {
                    tracing::info!(%status, "cmd had exited; starting it again");
                }
                Err(e) => {
                    tracing::warn!(error = %e, "could not check whether cmd still runs; starting it again")
                }
            }
        }
        match Command::new(&cmd.program).args(&cmd.args).spawn() {
            Ok(child) => {
                tracing::info!(program = %cmd.program, pid = child.id(), "started cmd");
                self.child = Some(child);
            }
            Err(e) => {
                tracing::error!(program = %cmd.program, error = %e, "could not start cmd");
                self.child = None;
            }
        }
    }
}

/// Reads the PID in `path` and sends it `signal`; returns the PID.
fn signal_pid_file(path: &Path, signal: Signal) -> Result<i32, PidFileError> {
    let shown = || path.display().to_string();
    let content = std::fs::read_to_string(path).map_err(|source| PidFileError::Read {
        path: shown(),
        source,
    })?;
    // A PID, never 0 or a negative number (which would signal a process group).
    let pid = content
        .trim()
        .parse::<i32>()
        .ok()
        .filter(|p| *p > 0)
        .ok_or_else(|| PidFileError::Parse {
            path: shown(),
            content: content.chars().take(32).collect(),
        })?;
    kill(Pid::from_raw(pid), signal).map_err(|source| PidFileError::Signal {
        pid,
        signal,
        source,
    })?;
    Ok(pid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pid_files_must_hold_a_positive_pid() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.pid");
        assert!(matches!(
            signal_pid_file(&path, Signal::SIGCONT),
            Err(PidFileError::Read { .. })
        ));
        for bad in ["", "abc", "0", "-1", "12x"] {
            std::fs::write(&path, bad).unwrap();
            assert!(
                matches!(
                    signal_pid_file(&path, Signal::SIGCONT),
                    Err(PidFileError::Parse { .. })
                ),
                "{bad:?}"
            );
        }
        // Our own PID, with the whitespace a shell leaves; SIGCONT is harmless.
        std::fs::write(&path, format!(" {}\n", std::process::id())).unwrap();
        assert_eq!(
            signal_pid_file(&path, Signal::SIGCONT).unwrap(),
            std::process::id() as i32
        );
    }

    #[tokio::test]
    async fn cmd_is_started_then_restarted_once_it_exits() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("runs");
        let mut renewer = Renewer::new(RenewAction {
            cmd: Some(CmdLine {
                program: "/bin/sh".to_owned(),
                args: vec!["-c".to_owned(), format!("echo run >> {}", out.display())],
            }),
            signal: None,
            pid_file: None,
        });
        for runs in 1..=3 {
            renewer.renewed().await;
            // Wait for this run to finish before the next update.
            let child = renewer.child.as_mut().unwrap();
            child.wait().await.unwrap();
            let text = std::fs::read_to_string(&out).unwrap();
            assert_eq!(text.lines().count(), runs);
        }
    }
}
