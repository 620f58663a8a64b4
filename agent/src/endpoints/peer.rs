//! Binds a connection on an agent socket to the process that opened it, the way SPIRE's
//! `peertracker` does, and closes the gaps it leaves.
//!
//! The kernel tells us who connected (`SO_PEERCRED`: PID, effective UID and GID at
//! `connect(2)`), but a PID is only a number: the process may exit and the number go to
//! another process, or it may `execve(2)` a setuid binary and run as someone else, while a
//! child or the new image keeps using the connection. Attesting "whatever holds that PID now"
//! on every call served root's SVIDs to an unprivileged user both ways. So at accept time we
//! pin the process itself, and every call checks the pin after attestation:
//!
//! - `SO_PEERPIDFD` (Linux 6.5+) gives a pidfd of the very process that called `connect`.
//!   We open its `/proc/<pid>` directory and then check, through the pidfd, that the process
//!   is still alive: a live process keeps its PID, so the directory is that process's. On older
//!   kernels the directory is opened by PID alone (SPIRE's way), and the check below that the
//!   process there has the peer credentials' UID and GID is what guards the short window
//!   between `connect` and `accept`.
//! - Every later read goes through that directory handle, which never shows another process
//!   (a reused PID gets a new `struct pid`; reads through the old handle fail). The process
//!   must still run (not a zombie), with the start time seen at accept; with a pidfd, that
//!   is one `poll(2)` of it (readable once the process has exited) instead of a `stat` read.
//!   The `unix` attestor takes its IDs from this pin rather than reading `status` again
//!   ([`crate::workload_attestation::WorkloadAttestor::attest_pinned`]).
//! - Its user and group IDs (all four of each, and the supplementary groups) must equal what
//!   they were at accept, and the effective ones must equal the peer credentials: a setuid or
//!   setgid `execve`, or a `setuid(2)`, ends what the connection gets.
//! - Its binary (device and inode of `/proc/<pid>/exe`) must be the one it ran at accept: an
//!   `execve` of anything, setuid or not, ends it too (SPIRE re-attests the new image; a
//!   connection opened by one program must not be served the identity of another, e.g. one
//!   registered by `unix:path`). Reading `exe` needs the agent to be root or the caller's own
//!   user; where it cannot read it at accept, the UID/GID checks still hold.

use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsFd, OwnedFd};

use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag, open, openat};
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::socket::{getsockopt, sockopt};
use nix::sys::stat::{Mode, fstatat};

use crate::procfs::{self, Credentials};

/// Why a connection's caller is not (or no longer) the process that connected. The message
/// is what the workload sees, so it names the process only by its PID.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PeerError {
    /// No PID in the peer credentials: the caller is in a PID namespace the agent cannot see.
    #[error("the caller's process is not visible to the agent (no PID in its credentials)")]
    NoPid,
    #[error("the process that opened the connection (PID {pid}) has exited")]
    Exited { pid: i32 },
    #[error("the process that opened the connection (PID {pid}) changed its user or group IDs")]
    CredentialsChanged { pid: i32 },
    #[error("the process that opened the connection (PID {pid}) executed another binary")]
    Executed { pid: i32 },
    #[error("reading /proc/{pid}/{file}: {reason}")]
    Proc {
        pid: i32,
        file: &'static str,
        reason: String,
    },
}

/// Identity of a file: device and inode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct FileId {
    dev: u64,
    ino: u64,
}

/// The process that opened a connection, pinned at accept time.
#[derive(Debug)]
pub struct BoundProcess {
    pid: i32,
    /// The pidfd from `SO_PEERPIDFD`, where the kernel gives one: names the exact process, so
    /// polling it answers "still alive?" without reading `stat`.
    pidfd: Option<OwnedFd>,
    /// `/proc/<pid>` of that process, opened while it was known to be alive.
    proc_dir: OwnedFd,
    start_time: u64,
    credentials: Credentials,
    /// `None` when the agent may not read the caller's `exe` link.
    exe: Option<FileId>,
}

impl BoundProcess {
    /// Pins the peer of `socket`, whose credentials are `pid`, `uid` and `gid` as reported by
    /// `SO_PEERCRED`.
    pub fn bind(
        socket: &impl AsFd,
        pid: Option<i32>,
        uid: u32,
        gid: u32,
    ) -> Result<Self, PeerError> {
        let pid = pid.filter(|p| *p > 0).ok_or(PeerError::NoPid)?;
        // The exact process that called connect(2), where the kernel can say so.
        let pidfd = match getsockopt(socket, sockopt::PeerPidfd) {
            Ok(fd) => Some(fd),
            Err(Errno::ESRCH) => return Err(PeerError::Exited { pid }),
            // ENOPROTOOPT / EINVAL: a kernel before 6.5.
            Err(_) => None,
        };
        let proc_dir = open_proc_dir(pid)?;
        if let Some(pidfd) = &pidfd
            && has_exited(pidfd).map_err(|e| proc_error(pid, "", e))?
        {
            return Err(PeerError::Exited { pid });
        }
        let mut bound = Self::pin(pid, proc_dir)?;
        bound.pidfd = pidfd;
        if bound.credentials.effective_uid() != uid || bound.credentials.effective_gid() != gid {
            return Err(PeerError::CredentialsChanged { pid });
        }
        Ok(bound)
    }

    /// Pins the process that has `pid` now, found by its PID alone (SPIRE's way): for a
    /// process named by a caller rather than one at the other end of a connection. Call
    /// [`BoundProcess::verify`] after attesting it, as for a connection's process.
    pub fn open(pid: i32) -> Result<Self, PeerError> {
        if pid <= 0 {
            return Err(PeerError::NoPid);
        }
        let proc_dir = open_proc_dir(pid)?;
        Self::pin(pid, proc_dir)
    }

    /// The process whose `/proc` directory is `proc_dir`, as it is now.
    fn pin(pid: i32, proc_dir: OwnedFd) -> Result<Self, PeerError> {
        let mut bound = Self {
            pid,
            pidfd: None,
            proc_dir,
            start_time: 0,
            credentials: Credentials {
                uids: Vec::new(),
                gids: Vec::new(),
                groups: Vec::new(),
            },
            exe: None,
        };
        let stat = bound.stat()?;
        bound.start_time = stat.start_time;
        bound.credentials = bound.status()?;
        bound.exe = bound.exe_id().ok();
        Ok(bound)
    }

    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// Its user and group IDs as pinned. [`BoundProcess::verify`] checks they still hold, so
    /// an attestor may use them instead of reading `status` again.
    pub fn credentials(&self) -> &Credentials {
        &self.credentials
    }

    /// Checks that the process is still the one pinned at accept: alive, same start time, same
    /// user and group IDs, same binary. Call it after attesting, so that what attestation read
    /// under the PID is known to have been this process's.
    pub fn verify(&self) -> Result<(), PeerError> {
        let pid = self.pid;
        match &self.pidfd {
            // The very process, alive: its PID, `/proc` directory and start time are the
            // ones pinned.
            Some(pidfd) => {
                if has_exited(pidfd).map_err(|e| proc_error(pid, "", e))? {
                    return Err(PeerError::Exited { pid });
                }
            }
            None => {
                let stat = self.stat()?;
                if stat.exited() || stat.start_time != self.start_time {
                    return Err(PeerError::Exited { pid });
                }
            }
        }
        if self.status()? != self.credentials {
            return Err(PeerError::CredentialsChanged { pid });
        }
        if let Some(exe) = self.exe
            && self.exe_id().ok() != Some(exe)
        {
            return Err(PeerError::Executed { pid });
        }
        Ok(())
    }

    fn stat(&self) -> Result<procfs::Stat, PeerError> {
        let text = self.read("stat")?;
        let stat = procfs::parse_stat(&text).map_err(|r| proc_error(self.pid, "stat", r))?;
        if stat.exited() {
            return Err(PeerError::Exited { pid: self.pid });
        }
        Ok(stat)
    }

    fn status(&self) -> Result<Credentials, PeerError> {
        let text = self.read("status")?;
        procfs::parse_status(&text).map_err(|r| proc_error(self.pid, "status", r))
    }

    fn exe_id(&self) -> Result<FileId, Errno> {
        // Follows the `exe` link to the binary the process runs (even if since deleted).
        let st = fstatat(&self.proc_dir, "exe", AtFlags::empty())?;
        Ok(FileId {
            dev: st.st_dev,
            ino: st.st_ino,
        })
    }

    fn read(&self, file: &'static str) -> Result<String, PeerError> {
        let fd = openat(
            &self.proc_dir,
            file,
            OFlag::O_RDONLY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| gone_or(self.pid, file, e))?;
        // `status` is ~1.5 KiB: one allocation, no regrowth.
        let mut text = String::with_capacity(4096);
        File::from(fd).read_to_string(&mut text).map_err(|e| {
            match e.raw_os_error().map(Errno::from_raw) {
                Some(errno) => gone_or(self.pid, file, errno),
                None => proc_error(self.pid, file, e),
            }
        })?;
        Ok(text)
    }
}

/// `/proc/<pid>`, opened by PID.
fn open_proc_dir(pid: i32) -> Result<OwnedFd, PeerError> {
    open(
        format!("/proc/{pid}").as_str(),
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| gone_or(pid, "", e))
}

/// Whether the process behind `pidfd` has exited (a pidfd polls readable then).
fn has_exited(pidfd: &OwnedFd) -> io::Result<bool> {
    let mut fds = [PollFd::new(pidfd.as_fd(), PollFlags::POLLIN)];
    let ready = poll(&mut fds, PollTimeout::ZERO)?;
    Ok(ready > 0)
}

/// A process that has gone away makes reads under its `/proc` directory fail with `ENOENT`
/// or `ESRCH`; anything else is reported as it is.
fn gone_or(pid: i32, file: &'static str, errno: Errno) -> PeerError {
    match errno {
        Errno::ENOENT | Errno::ESRCH => PeerError::Exited { pid },
        other => proc_error(pid, file, other),
    }
}

fn proc_error(pid: i32, file: &'static str, reason: impl ToString) -> PeerError {
    PeerError::Proc {
        pid,
        file,
        reason: reason.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::net::UnixStream;
    use std::process::{Command, Stdio};

    use super::*;

    fn own_ids() -> (u32, u32) {
        (
            nix::unistd::geteuid().as_raw(),
            nix::unistd::getegid().as_raw(),
        )
    }

    #[test]
    fn binds_the_connecting_process_and_verifies_it() {
        let (a, _b) = UnixStream::pair().unwrap();
        let cred = nix::sys::socket::getsockopt(&a, sockopt::PeerCredentials).unwrap();
        let (uid, gid) = own_ids();
        let bound = BoundProcess::bind(&a, Some(cred.pid()), uid, gid).unwrap();
        assert_eq!(bound.pid(), std::process::id() as i32);
        assert!(bound.exe.is_some(), "the test may read its own exe link");
        bound.verify().unwrap();
    }

    #[test]
    fn refuses_credentials_that_differ_from_the_peer_credentials() {
        let (a, _b) = UnixStream::pair().unwrap();
        let (uid, gid) = own_ids();
        let pid = std::process::id() as i32;
        assert_eq!(
            BoundProcess::bind(&a, Some(pid), uid.wrapping_add(1), gid).unwrap_err(),
            PeerError::CredentialsChanged { pid }
        );
        assert_eq!(
            BoundProcess::bind(&a, None, uid, gid).unwrap_err(),
            PeerError::NoPid
        );
    }

    #[test]
    fn a_process_that_exits_is_gone_even_if_its_pid_is_reused() {
        // Pin a child's /proc directory by PID (as for a process a delegate names; a
        // connection's peer goes the same way once bound), then reap it.
        let mut child = Command::new("sleep")
            .arg("30")
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let pid = child.id() as i32;
        let bound = BoundProcess::open(pid).unwrap();
        bound.verify().unwrap();
        child.kill().unwrap();
        child.wait().unwrap();
        assert_eq!(bound.verify().unwrap_err(), PeerError::Exited { pid });
        assert_eq!(
            BoundProcess::open(pid).unwrap_err(),
            PeerError::Exited { pid }
        );
        assert_eq!(BoundProcess::open(0).unwrap_err(), PeerError::NoPid);
    }
}
