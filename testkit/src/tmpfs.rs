//! A small tmpfs mounted over a test server's data dir, to run it out of disk space (or make it
//! read-only) for real. Needs root (CAP_SYS_ADMIN); without it [`Tmpfs::mount`] says why and
//! returns `None`, and the test returns.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::{Server, ServerOptions};

/// A tmpfs mounted on a directory; unmounted on drop.
pub struct Tmpfs {
    path: PathBuf,
}

impl Tmpfs {
    /// `None` (with the reason printed) when not root or the mount fails.
    pub fn mount(at: &Path, size: &str) -> Option<Self> {
        if !nix::unistd::getuid().is_root() {
            eprintln!("NOTICE: not root: mounting a tmpfs is not possible; test skipped");
            return None;
        }
        std::fs::create_dir_all(at).unwrap();
        let ok = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(at)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            eprintln!("NOTICE: cannot mount a tmpfs here (no CAP_SYS_ADMIN?); test skipped");
            return None;
        }
        Some(Self {
            path: at.to_owned(),
        })
    }

    /// `mount -o remount,<options>`: `ro`, `rw`, or `size=64m` to give space back.
    pub fn remount(&self, options: &str) {
        let ok = Command::new("mount")
            .args(["-o", &format!("remount,{options}")])
            .arg(&self.path)
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "remount {options}");
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        // Lazy: detached now even while the server on it is still being killed.
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}

/// A server whose data dir (database and keys) is a fresh tmpfs of `size`: started once to
/// lay out its temp dir, stopped, the mount put over its data dir, started again.
pub fn server_on_tmpfs(options: ServerOptions, size: &str) -> Option<(Server, Tmpfs)> {
    let mut server = Server::start(options);
    assert!(server.stop().success());
    let fs = Tmpfs::mount(&server.data_dir(), size)?;
    server.spawn();
    Some((server, fs))
}
