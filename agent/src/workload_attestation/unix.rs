//! The `unix` workload attestor: the caller's user and groups from `/proc/<pid>/status` and,
//! when `discover_workload_path` is set, its binary's path and SHA-256. Selector names and
//! config keys follow SPIRE's `unix` plugin (`unix:uid`, `unix:user`, `unix:gid`,
//! `unix:group`, `unix:supplementary_gid`, `unix:supplementary_group`, `unix:path`,
//! `unix:sha256`). Like SPIRE, the effective UID/GID are used: they are what the kernel checks
//! for access, and what a setuid binary runs as.
//!
//! Every call reads the caller's `/proc` entries afresh (IDs change with `setuid`, binaries
//! with `execve`, PIDs get reused), except for a caller on one of the agent's sockets: its IDs
//! are those its connection's pin read at accept, which the socket checks again, from `status`,
//! after attesting ([`WorkloadAttestor::attest_pinned`]); reading them here too cost the agent
//! half its CPU per call. Only the user and group *names* are cached, for [`NAME_TTL`], because
//! an NSS lookup (open and scan `/etc/passwd`, or ask sssd) costs more than the rest of the
//! call. With every name cached and no binary to hash, attestation runs inline rather than on
//! the blocking pool: procfs reads are answered from kernel memory.

pub mod config;

use std::collections::HashMap;
use std::fmt;
use std::fs::File;
use std::io::{ErrorKind, Read};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use nix::unistd::{Gid, Group, Uid, User};
use sigil_proto::Selector;

use super::{AttestationError, WorkloadAttestor};
use crate::procfs::{self, Credentials};
pub use config::UnixAttestorConfig;

/// How long a user or group name looked up by ID is reused. A renamed user or group shows in
/// `unix:user`/`unix:group` selectors after at most this long; numeric IDs are never cached.
pub const NAME_TTL: Duration = Duration::from_secs(5);

/// Names looked up by ID (`None`: the ID has no name), with when they were looked up.
#[derive(Debug, Default)]
struct NameCache {
    users: Mutex<HashMap<u32, (Option<String>, Instant)>>,
    groups: Mutex<HashMap<u32, (Option<String>, Instant)>>,
}

/// Which NSS database.
#[derive(Clone, Copy, Debug)]
enum NameKind {
    User,
    Group,
}

/// Beyond this many cached names the cache is emptied, so hostile callers cycling through
/// IDs cannot grow it without bound.
const MAX_CACHED_NAMES: usize = 4096;

impl NameCache {
    fn map(
        &self,
        kind: NameKind,
    ) -> std::sync::MutexGuard<'_, HashMap<u32, (Option<String>, Instant)>> {
        let map = match kind {
            NameKind::User => &self.users,
            NameKind::Group => &self.groups,
        };
        // Each write is one insert or clear: the map is consistent even after a panic.
        map.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The cached name of `id`, if looked up less than [`NAME_TTL`] before `now`.
    fn cached(&self, kind: NameKind, id: u32, now: Instant) -> Option<Option<String>> {
        let map = self.map(kind);
        let (name, at) = map.get(&id)?;
        (now.saturating_duration_since(*at) < NAME_TTL).then(|| name.clone())
    }

    fn store(&self, kind: NameKind, id: u32, name: Option<String>, now: Instant) {
        let mut map = self.map(kind);
        if map.len() >= MAX_CACHED_NAMES {
            map.clear();
        }
        map.insert(id, (name, now));
    }

    /// The name of `id`: from the cache, else from `lookup` when blocking is allowed (`None`
    /// from the outer option: not cached and not allowed to look up).
    fn name(
        &self,
        kind: NameKind,
        id: u32,
        now: Instant,
        may_block: bool,
        lookup: impl FnOnce(u32) -> Option<String>,
    ) -> Option<Option<String>> {
        if let Some(hit) = self.cached(kind, id, now) {
            return Some(hit);
        }
        if !may_block {
            return None;
        }
        let name = lookup(id);
        self.store(kind, id, name.clone(), now);
        Some(name)
    }
}

/// Reads the caller's identity from procfs. Cheap to clone (moved into a blocking task when a
/// call needs NSS lookups or hashing).
#[derive(Clone)]
pub struct UnixAttestor {
    config: Arc<UnixAttestorConfig>,
    names: Arc<NameCache>,
    /// Runs between collecting selectors and re-reading the start time, so tests can simulate
    /// a PID being reused at the worst moment.
    #[cfg(test)]
    after_collect: Option<Arc<dyn Fn() + Send + Sync>>,
}

impl fmt::Debug for UnixAttestor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UnixAttestor")
            .field("config", &self.config)
            .finish()
    }
}

impl UnixAttestor {
    pub fn new(config: UnixAttestorConfig) -> Self {
        Self {
            config: Arc::new(config),
            names: Arc::default(),
            #[cfg(test)]
            after_collect: None,
        }
    }

    /// Attests `pid`; `Ok(None)` when that needs a blocking step (an NSS lookup not cached, a
    /// binary to hash) and `may_block` is false.
    fn attest_sync(
        &self,
        pid: i32,
        now: Instant,
        may_block: bool,
    ) -> Result<Option<Vec<Selector>>, AttestationError> {
        let started = self.start_time(pid)?;
        let Some(selectors) = self.collect(pid, now, may_block)? else {
            return Ok(None);
        };
        #[cfg(test)]
        if let Some(hook) = &self.after_collect {
            hook();
        }
        // Everything above described whatever process held `pid` at the time; if it is no
        // longer the process that started at `started`, the selectors may be someone else's.
        match self.start_time(pid) {
            Ok(again) if again == started => Ok(Some(selectors)),
            Ok(_) | Err(AttestationError::NoProcess { .. }) => {
                Err(AttestationError::PidReused { pid })
            }
            Err(e) => Err(e),
        }
    }

    /// The selectors of whatever process holds `pid` now; `Ok(None)` as in [`Self::attest_sync`].
    fn collect(
        &self,
        pid: i32,
        now: Instant,
        may_block: bool,
    ) -> Result<Option<Vec<Selector>>, AttestationError> {
        let hashes = self.config.discover_workload_path && self.config.workload_size_limit >= 0;
        if hashes && !may_block {
            return Ok(None);
        }
        let status_path = self.proc_path(pid, "status");
        let status = procfs::parse_status(&read_to_string(&status_path, pid)?)
            .map_err(|reason| malformed(&status_path, reason))?;
        let Some(mut out) = self.id_selectors(&status, now, may_block) else {
            return Ok(None);
        };
        if self.config.discover_workload_path {
            let exe = self.proc_path(pid, "exe");
            let path = std::fs::read_link(&exe).map_err(|e| io_error(&exe, pid, e))?;
            push(&mut out, "path", path.to_string_lossy().into_owned());
            if self.config.workload_size_limit >= 0 {
                // Hash through /proc/<pid>/exe rather than the path: it is the binary the
                // process runs, even from another mount namespace or after the file was
                // replaced on disk.
                let limit = self.config.workload_size_limit as u64;
                push(&mut out, "sha256", sha256_file(&exe, pid, limit)?);
            }
        }
        Ok(Some(out.into_iter().flatten().collect()))
    }

    /// The `uid`, `user`, `gid`, `group`, `supplementary_gid` and `supplementary_group`
    /// selectors of `status` (`None` where a selector value is not valid); `None` when a name
    /// is not cached and `may_block` is false.
    fn id_selectors(
        &self,
        status: &Credentials,
        now: Instant,
        may_block: bool,
    ) -> Option<Vec<Option<Selector>>> {
        let (uid, gid) = (status.effective_uid(), status.effective_gid());
        let user = |uid| {
            self.names
                .name(NameKind::User, uid, now, may_block, user_name)
        };
        let group = |gid| {
            self.names
                .name(NameKind::Group, gid, now, may_block, group_name)
        };
        let mut out = Vec::new();
        push(&mut out, "uid", uid.to_string());
        if let Some(name) = user(uid)? {
            push(&mut out, "user", name);
        }
        push(&mut out, "gid", gid.to_string());
        if let Some(name) = group(gid)? {
            push(&mut out, "group", name);
        }
        for &gid in &status.groups {
            push(&mut out, "supplementary_gid", gid.to_string());
            if let Some(name) = group(gid)? {
                push(&mut out, "supplementary_group", name);
            }
        }
        Some(out)
    }

    fn start_time(&self, pid: i32) -> Result<u64, AttestationError> {
        let path = self.proc_path(pid, "stat");
        procfs::parse_stat(&read_to_string(&path, pid)?)
            .map(|stat| stat.start_time)
            .map_err(|reason| malformed(&path, reason))
    }

    fn proc_path(&self, pid: i32, file: &str) -> PathBuf {
        self.config.proc_root.join(pid.to_string()).join(file)
    }
}

impl WorkloadAttestor for UnixAttestor {
    /// Without `discover_workload_path` the selectors are those of the pinned IDs: no procfs
    /// read at all (the caller checks after attesting that the process still has them).
    fn attest_pinned<'a>(
        &'a self,
        pid: i32,
        pinned: &'a Credentials,
    ) -> BoxFuture<'a, Result<Vec<Selector>, AttestationError>> {
        if self.config.discover_workload_path {
            return self.attest(pid);
        }
        Box::pin(async move {
            let now = Instant::now();
            if let Some(selectors) = self.id_selectors(pinned, now, false) {
                return Ok(selectors.into_iter().flatten().collect());
            }
            // A name to look up (NSS may block): on the blocking pool, as in `attest`.
            let attestor = self.clone();
            let pinned = pinned.clone();
            let blocking = move || attestor.id_selectors(&pinned, now, true);
            tokio::task::spawn_blocking(blocking)
                .await
                .map_err(|e| AttestationError::Task(e.to_string()))?
                .map(|selectors| selectors.into_iter().flatten().collect())
                .ok_or_else(|| AttestationError::Task("no answer".into()))
        })
    }

    fn attest(&self, pid: i32) -> BoxFuture<'_, Result<Vec<Selector>, AttestationError>> {
        Box::pin(async move {
            if pid <= 0 {
                return Err(AttestationError::NoProcess { pid });
            }
            // procfs reads are answered from kernel memory, cheaper than a hop to the blocking
            // pool; only NSS lookups and hashing, which may wait, go there.
            if let Some(selectors) = self.attest_sync(pid, Instant::now(), false)? {
                return Ok(selectors);
            }
            let attestor = self.clone();
            let blocking = move || attestor.attest_sync(pid, Instant::now(), true);
            tokio::task::spawn_blocking(blocking)
                .await
                .map_err(|e| AttestationError::Task(e.to_string()))?
                // With `may_block` every step runs, so there is always an answer.
                .and_then(|selectors| {
                    selectors.ok_or_else(|| AttestationError::Task("no answer".into()))
                })
        })
    }
}

/// Appends `unix:<kind>:<value>`; a value that is not a valid selector (control characters in
/// a user name, say) yields `None` and is dropped by `collect`.
fn push(out: &mut Vec<Option<Selector>>, kind: &str, value: String) {
    out.push(Selector::from_parts("unix", &format!("{kind}:{value}")).ok());
}

fn user_name(uid: u32) -> Option<String> {
    User::from_uid(Uid::from_raw(uid))
        .ok()
        .flatten()
        .map(|u| u.name)
}

fn group_name(gid: u32) -> Option<String> {
    Group::from_gid(Gid::from_raw(gid))
        .ok()
        .flatten()
        .map(|g| g.name)
}

fn sha256_file(path: &Path, pid: i32, limit: u64) -> Result<String, AttestationError> {
    let mut file = File::open(path).map_err(|e| io_error(path, pid, e))?;
    let size = file.metadata().map_err(|e| io_error(path, pid, e))?.len();
    if limit > 0 && size > limit {
        return Err(AttestationError::TooLarge { size, limit });
    }
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = file.read(&mut buf).map_err(|e| io_error(path, pid, e))?;
        if n == 0 {
            break;
        }
        ctx.update(&buf[..n]);
    }
    Ok(hex::encode(ctx.finish()))
}

fn read_to_string(path: &Path, pid: i32) -> Result<String, AttestationError> {
    std::fs::read_to_string(path).map_err(|e| io_error(path, pid, e))
}

fn io_error(path: &Path, pid: i32, source: std::io::Error) -> AttestationError {
    match source.kind() {
        ErrorKind::NotFound => AttestationError::NoProcess { pid },
        _ => AttestationError::Io {
            path: path.display().to_string(),
            source,
        },
    }
}

fn malformed(path: &Path, reason: impl Into<String>) -> AttestationError {
    AttestationError::Malformed {
        path: path.display().to_string(),
        reason: reason.into(),
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::symlink;

    use super::*;

    fn strings(selectors: &[Selector]) -> Vec<String> {
        selectors.iter().map(ToString::to_string).collect()
    }

    fn stat_line(start: u64) -> String {
        crate::procfs::tests::stat_line('S', start)
    }

    /// A fake procfs with one process, 4242.
    fn fake_proc(status: &str) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("4242");
        std::fs::create_dir(&p).unwrap();
        std::fs::write(p.join("status"), status).unwrap();
        std::fs::write(p.join("stat"), stat_line(1000)).unwrap();
        dir
    }

    fn attestor(root: &Path, discover: bool, limit: i64) -> UnixAttestor {
        UnixAttestor::new(UnixAttestorConfig {
            discover_workload_path: discover,
            workload_size_limit: limit,
            proc_root: root.to_path_buf(),
        })
    }

    const STATUS: &str = "Name:\tweb\nUid:\t1000\t4001\t1000\t1000\nGid:\t1000\t4002\t1000\t1000\nGroups:\t4003 4004 \n";

    #[tokio::test]
    async fn current_process_has_its_real_ids_and_names() {
        let a = UnixAttestor::new(UnixAttestorConfig::default());
        let got = strings(&a.attest(std::process::id() as i32).await.unwrap());
        let uid = nix::unistd::geteuid();
        let gid = nix::unistd::getegid();
        assert!(got.contains(&format!("unix:uid:{uid}")), "{got:?}");
        assert!(got.contains(&format!("unix:gid:{gid}")), "{got:?}");
        if let Ok(Some(user)) = User::from_uid(uid) {
            assert!(got.contains(&format!("unix:user:{}", user.name)), "{got:?}");
        }
        if let Ok(Some(group)) = Group::from_gid(gid) {
            assert!(
                got.contains(&format!("unix:group:{}", group.name)),
                "{got:?}"
            );
        }
        assert!(
            !got.iter().any(|s| s.starts_with("unix:path:")),
            "path needs the switch"
        );
    }

    #[tokio::test]
    async fn current_process_path_with_discovery() {
        // Negative limit: path only, no hash of the (large) test binary.
        let a = UnixAttestor::new(UnixAttestorConfig {
            discover_workload_path: true,
            workload_size_limit: -1,
            ..UnixAttestorConfig::default()
        });
        let got = strings(&a.attest(std::process::id() as i32).await.unwrap());
        let exe = std::env::current_exe().unwrap();
        assert!(
            got.contains(&format!("unix:path:{}", exe.display())),
            "{got:?}"
        );
        assert!(!got.iter().any(|s| s.starts_with("unix:sha256:")));
    }

    #[tokio::test]
    async fn effective_ids_and_supplementary_groups_from_status() {
        let dir = fake_proc(STATUS);
        let got = strings(&attestor(dir.path(), false, 0).attest(4242).await.unwrap());
        for want in [
            "unix:uid:4001",
            "unix:gid:4002",
            "unix:supplementary_gid:4003",
            "unix:supplementary_gid:4004",
        ] {
            assert!(
                got.contains(&want.to_string()),
                "{want} missing from {got:?}"
            );
        }
        assert!(
            !got.contains(&"unix:uid:1000".to_string()),
            "real uid is not used"
        );
    }

    #[tokio::test]
    async fn path_and_sha256_with_size_limit() {
        let dir = fake_proc(STATUS);
        let bin = dir.path().join("workload-bin");
        std::fs::write(&bin, b"hello").unwrap();
        symlink(&bin, dir.path().join("4242/exe")).unwrap();

        let got = strings(&attestor(dir.path(), true, 0).attest(4242).await.unwrap());
        assert!(
            got.contains(&format!("unix:path:{}", bin.display())),
            "{got:?}"
        );
        // sha256("hello")
        let hash = "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824";
        assert!(got.contains(&format!("unix:sha256:{hash}")), "{got:?}");

        let err = attestor(dir.path(), true, 3)
            .attest(4242)
            .await
            .unwrap_err();
        assert!(
            matches!(err, AttestationError::TooLarge { size: 5, limit: 3 }),
            "{err}"
        );

        let got = strings(&attestor(dir.path(), true, -1).attest(4242).await.unwrap());
        assert!(!got.iter().any(|s| s.starts_with("unix:sha256:")));
    }

    #[tokio::test]
    async fn pinned_ids_are_used_without_reading_procfs() {
        // No process 4242 under this root: only the pinned IDs can give selectors.
        let empty = tempfile::tempdir().unwrap();
        let pinned = procfs::parse_status(STATUS).unwrap();
        let a = attestor(empty.path(), false, 0);
        let got = strings(&a.attest_pinned(4242, &pinned).await.unwrap());
        for want in [
            "unix:uid:4001",
            "unix:gid:4002",
            "unix:supplementary_gid:4004",
        ] {
            assert!(
                got.contains(&want.to_owned()),
                "{want} missing from {got:?}"
            );
        }
        assert!(matches!(
            a.attest(4242).await,
            Err(AttestationError::NoProcess { pid: 4242 })
        ));
        // The binary's path and hash are not pinned: read as without a pin.
        let err = attestor(empty.path(), true, 0)
            .attest_pinned(4242, &pinned)
            .await
            .unwrap_err();
        assert!(
            matches!(err, AttestationError::NoProcess { pid: 4242 }),
            "{err}"
        );
    }

    #[tokio::test]
    async fn pid_reuse_during_attestation_fails() {
        let dir = fake_proc(STATUS);
        let stat = dir.path().join("4242/stat");
        let mut a = attestor(dir.path(), false, 0);
        a.after_collect = Some(Arc::new(move || {
            std::fs::write(&stat, stat_line(2000)).unwrap();
        }));
        let err = a.attest(4242).await.unwrap_err();
        assert!(
            matches!(err, AttestationError::PidReused { pid: 4242 }),
            "{err}"
        );
    }

    #[tokio::test]
    async fn process_exiting_during_attestation_fails() {
        let dir = fake_proc(STATUS);
        let proc_dir = dir.path().join("4242");
        let mut a = attestor(dir.path(), false, 0);
        a.after_collect = Some(Arc::new(move || {
            std::fs::remove_dir_all(&proc_dir).unwrap()
        }));
        assert!(matches!(
            a.attest(4242).await,
            Err(AttestationError::PidReused { .. })
        ));
    }

    #[tokio::test]
    async fn missing_process() {
        let dir = tempfile::tempdir().unwrap();
        let err = attestor(dir.path(), false, 0).attest(99).await.unwrap_err();
        assert!(
            matches!(err, AttestationError::NoProcess { pid: 99 }),
            "{err}"
        );
        assert!(matches!(
            attestor(dir.path(), false, 0).attest(0).await,
            Err(AttestationError::NoProcess { pid: 0 })
        ));
    }

    #[test]
    fn names_are_reused_for_their_ttl_only() {
        let names = NameCache::default();
        let t0 = Instant::now();
        let calls = std::cell::Cell::new(0);
        let lookup = |id: u32| {
            calls.set(calls.get() + 1);
            (id == 7).then(|| format!("name{}", calls.get()))
        };
        // Not cached and not allowed to block: no answer.
        assert_eq!(names.name(NameKind::User, 7, t0, false, lookup), None);
        assert_eq!(calls.get(), 0);
        assert_eq!(
            names.name(NameKind::User, 7, t0, true, lookup),
            Some(Some("name1".into()))
        );
        let just_before = t0 + NAME_TTL - Duration::from_millis(1);
        assert_eq!(
            names.name(NameKind::User, 7, just_before, false, lookup),
            Some(Some("name1".into()))
        );
        // Users and groups are separate; an ID without a name is cached as such.
        assert_eq!(names.name(NameKind::Group, 7, t0, false, lookup), None);
        assert_eq!(names.name(NameKind::User, 8, t0, true, lookup), Some(None));
        assert_eq!(names.name(NameKind::User, 8, t0, false, lookup), Some(None));
        // Expired: looked up again, and the new name is seen.
        assert_eq!(
            names.name(NameKind::User, 7, t0 + NAME_TTL, false, lookup),
            None
        );
        assert_eq!(
            names.name(NameKind::User, 7, t0 + NAME_TTL, true, lookup),
            Some(Some("name3".into()))
        );
    }

    #[tokio::test]
    async fn inline_attestation_rereads_proc_on_every_call() {
        let dir = fake_proc(STATUS);
        let a = attestor(dir.path(), false, 0);
        // The first call fills the name cache from the blocking pool; later calls run inline.
        let first = strings(&a.attest(4242).await.unwrap());
        assert!(first.contains(&"unix:uid:4001".to_string()), "{first:?}");
        assert!(
            a.attest_sync(4242, Instant::now(), false)
                .unwrap()
                .is_some(),
            "names cached: no blocking step left"
        );
        // The process changes its IDs (setuid): seen at once, not cached.
        std::fs::write(
            dir.path().join("4242/status"),
            STATUS.replace("4001", "4005"),
        )
        .unwrap();
        let got = strings(&a.attest(4242).await.unwrap());
        assert!(got.contains(&"unix:uid:4005".to_string()), "{got:?}");
        assert!(!got.contains(&"unix:uid:4001".to_string()), "{got:?}");
        // PID reused by another process between calls: the new one's identity.
        std::fs::write(dir.path().join("4242/stat"), stat_line(5000)).unwrap();
        std::fs::write(
            dir.path().join("4242/status"),
            STATUS.replace("4001", "4009"),
        )
        .unwrap();
        let got = strings(&a.attest(4242).await.unwrap());
        assert!(got.contains(&"unix:uid:4009".to_string()), "{got:?}");
        // Hashing always goes to the blocking pool.
        let hashing = attestor(dir.path(), true, 0);
        assert!(
            hashing
                .attest_sync(4242, Instant::now(), false)
                .unwrap()
                .is_none()
        );
    }

    #[tokio::test]
    async fn pid_reuse_during_inline_attestation_fails() {
        let dir = fake_proc(STATUS);
        let stat = dir.path().join("4242/stat");
        let mut a = attestor(dir.path(), false, 0);
        a.attest(4242).await.unwrap();
        a.after_collect = Some(Arc::new(move || {
            std::fs::write(&stat, stat_line(3000)).unwrap();
        }));
        // Names are cached now, so this takes the inline path.
        let err = a.attest_sync(4242, Instant::now(), false).unwrap_err();
        assert!(
            matches!(err, AttestationError::PidReused { pid: 4242 }),
            "{err}"
        );
    }
}
