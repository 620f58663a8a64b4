//! From a PID to the pod UID and container ID its cgroups name (SPIRE's "new container
//! locator"). `/proc/<pid>/cgroup` is written by the kernel, so it is trusted first;
//! `/proc/<pid>/mountinfo` is only a fallback because a workload can shape its own mounts.

use std::io::ErrorKind;
use std::path::Path;

/// What the cgroups of one process say about its pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodContainer {
    /// `None` when the cgroup path does not carry it (cri-o with a cgroup namespace).
    pub pod_uid: Option<String>,
    /// The 64-hex container ID, as in `status.containerStatuses[].containerID` after `://`.
    pub container_id: String,
}

#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("process {pid} not found")]
    NoProcess { pid: i32 },
    #[error("reading {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("malformed cgroup line {line:?}")]
    Malformed { line: String },
    #[error("multiple pod UIDs found in cgroups ({0}, {1})")]
    MultiplePodUids(String, String),
    #[error("multiple container IDs found in cgroups ({0}, {1})")]
    MultipleContainerIds(String, String),
}

/// Reads `<proc_root>/<pid>/cgroup` (and `mountinfo` if that names no container).
/// `Ok(None)`: the process is not in a container, which is not an error.
pub fn locate(proc_root: &Path, pid: i32) -> Result<Option<PodContainer>, CgroupError> {
    let dir = proc_root.join(pid.to_string());
    let cgroup = read(&dir.join("cgroup"), pid)?;
    let paths = parse_cgroup_file(&cgroup)?;
    if let Some(found) = extract(paths.iter().map(String::as_str))? {
        return Ok(Some(found));
    }
    match std::fs::read_to_string(dir.join("mountinfo")) {
        Ok(mountinfo) => extract(mountinfo_cgroup_roots(&mountinfo).into_iter()),
        // Optional fallback: a missing mountinfo just means "no container found".
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
        Err(source) => Err(CgroupError::Io {
            path: dir.join("mountinfo").display().to_string(),
            source,
        }),
    }
}

fn read(path: &Path, pid: i32) -> Result<String, CgroupError> {
    std::fs::read_to_string(path).map_err(|source| match source.kind() {
        ErrorKind::NotFound => CgroupError::NoProcess { pid },
        _ => CgroupError::Io {
            path: path.display().to_string(),
            source,
        },
    })
}

/// The path field of each `hierarchy-id:controllers:path` line. The path itself may contain
/// colons (`...slice:cri-containerd:<id>`), hence `splitn`.
fn parse_cgroup_file(text: &str) -> Result<Vec<String>, CgroupError> {
    text.lines()
        .filter(|line| !line.trim().is_empty())
        .map(|line| {
            let mut fields = line.splitn(3, ':');
            match (fields.next(), fields.next(), fields.next()) {
                (Some(_), Some(_), Some(path)) => Ok(path.to_owned()),
                _ => Err(CgroupError::Malformed {
                    line: line.to_owned(),
                }),
            }
        })
        .collect()
}

/// Roots of `cgroup`/`cgroup2` mounts other than `/` (fields: id parent major:minor root
/// mountpoint options... `-` fstype source superoptions).
fn mountinfo_cgroup_roots(text: &str) -> Vec<&str> {
    text.lines()
        .filter_map(|line| {
            let (before, after) = line.split_once(" - ")?;
            let fstype = after.split_whitespace().next()?;
            let root = before.split_whitespace().nth(3)?;
            (matches!(fstype, "cgroup" | "cgroup2") && root != "/").then_some(root)
        })
        .collect()
}

/// Merges the per-path findings: an entry with a pod UID beats one without (kind: the host
/// container's own cgroup also names a container), otherwise IDs must agree.
fn extract<'a>(paths: impl Iterator<Item = &'a str>) -> Result<Option<PodContainer>, CgroupError> {
    let mut found: Option<PodContainer> = None;
    for candidate in paths.filter_map(from_path) {
        let Some(current) = &found else {
            found = Some(candidate);
            continue;
        };
        if current.container_id != candidate.container_id {
            match (&current.pod_uid, &candidate.pod_uid) {
                (Some(_), None) => {}
                (None, Some(_)) => found = Some(candidate),
                _ => {
                    return Err(CgroupError::MultipleContainerIds(
                        current.container_id.clone(),
                        candidate.container_id,
                    ));
                }
            }
        } else if current.pod_uid != candidate.pod_uid {
            return Err(CgroupError::MultiplePodUids(
                current.pod_uid.clone().unwrap_or_default(),
                candidate.pod_uid.unwrap_or_default(),
            ));
        }
    }
    Ok(found)
}

/// Walks the segments from the end: the first container ID, then the nearest pod UID at or
/// before it (the `...pod<uid>.slice:cri-containerd:<id>` form has both in one segment).
fn from_path(path: &str) -> Option<PodContainer> {
    let segments: Vec<&str> = path.split('/').collect();
    let (index, container_id) = segments
        .iter()
        .enumerate()
        .rev()
        .find_map(|(i, s)| container_id(s).map(|id| (i, id)))?;
    let pod_uid = segments[..=index].iter().rev().find_map(|s| pod_uid(s));
    Some(PodContainer {
        pod_uid,
        container_id: container_id.to_owned(),
    })
}

/// `<64hex>`, `docker-<64hex>.scope`, `cri-containerd-<64hex>.scope`, `crio-<64hex>.scope`,
/// `...:cri-containerd:<64hex>`: the word after the last `-` or `:`.
fn container_id(segment: &str) -> Option<&str> {
    let segment = segment.strip_suffix(".scope").unwrap_or(segment);
    let word = segment.rsplit(['-', ':']).next()?;
    (word.len() == 64 && word.bytes().all(|b| b.is_ascii_hexdigit())).then_some(word)
}

/// `pod` + 8-4-4-4-12 hex with `-` or `_` separators anywhere in the segment; systemd
/// escapes `-` as `_`, so `_` is turned back into `-`.
fn pod_uid(segment: &str) -> Option<String> {
    const GROUPS: [usize; 5] = [8, 4, 4, 4, 12];
    const LEN: usize = 36;
    segment.match_indices("pod").find_map(|(at, _)| {
        let candidate = segment.get(at + 3..at + 3 + LEN)?;
        let bytes = candidate.as_bytes();
        let mut pos = 0;
        for (n, len) in GROUPS.iter().enumerate() {
            if n > 0 {
                if !matches!(bytes[pos], b'-' | b'_') {
                    return None;
                }
                pos += 1;
            }
            if !bytes[pos..pos + len].iter().all(u8::is_ascii_hexdigit) {
                return None;
            }
            pos += len;
        }
        Some(candidate.replace('_', "-"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const CID: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
    const HOST: &str = "fedcba9876543210fedcba9876543210fedcba9876543210fedcba9876543210";
    const UID: &str = "2c48913c-b29f-11e7-9350-020968147796";
    const UID_: &str = "2c48913c_b29f_11e7_9350_020968147796";

    fn run(file: &str) -> Result<Option<PodContainer>, CgroupError> {
        extract(parse_cgroup_file(file)?.iter().map(String::as_str))
    }

    fn pod(uid: Option<&str>, cid: &str) -> Option<PodContainer> {
        Some(PodContainer {
            pod_uid: uid.map(str::to_owned),
            container_id: cid.to_owned(),
        })
    }

    #[test]
    fn every_shape_of_the_spec() {
        let cases: Vec<(&str, String, Option<PodContainer>)> = vec![
            (
                "cgroupfs",
                format!("11:memory:/kubepods/burstable/pod{UID}/{CID}\n"),
                pod(Some(UID), CID),
            ),
            (
                "systemd + docker",
                format!(
                    "4:cpu:/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice/docker-{CID}.scope\n"
                ),
                pod(Some(UID), CID),
            ),
            (
                "systemd + containerd",
                format!(
                    "0::/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID_}.slice/cri-containerd-{CID}.scope\n"
                ),
                pod(Some(UID), CID),
            ),
            (
                "systemd + containerd, colon form",
                format!(
                    "1:name=systemd:/kubepods-besteffort-pod{UID_}.slice:cri-containerd:{CID}\n"
                ),
                pod(Some(UID), CID),
            ),
            (
                "systemd + cri-o",
                format!(
                    "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice/crio-{CID}.scope\n"
                ),
                pod(Some(UID), CID),
            ),
            (
                "cri-o with cgroup namespace",
                format!("0::/../crio-{CID}.scope\n"),
                pod(None, CID),
            ),
            (
                "kind / nested docker",
                format!(
                    "12:pids:/docker/{HOST}/kubepods/besteffort/pod{UID}/{CID}\n\
                     0::/docker/{HOST}/system.slice/containerd.service\n"
                ),
                pod(Some(UID), CID),
            ),
            (
                "kind, host line first",
                format!(
                    "0::/docker/{HOST}/system.slice/containerd.service\n\
                     12:pids:/docker/{HOST}/kubepods/besteffort/pod{UID}/{CID}\n"
                ),
                pod(Some(UID), CID),
            ),
            (
                "cgroup v1 many lines",
                format!(
                    "12:pids:/kubepods/burstable/pod{UID}/{CID}\n\
                     11:memory:/kubepods/burstable/pod{UID}/{CID}\n\
                     1:name=systemd:/kubepods/burstable/pod{UID}/{CID}\n"
                ),
                pod(Some(UID), CID),
            ),
            (
                "not in a pod",
                "0::/user.slice/user-1000.slice/session-3.scope\n".to_owned(),
                None,
            ),
            ("root cgroup", "0::/\n".to_owned(), None),
        ];
        for (name, file, want) in cases {
            assert_eq!(run(&file).unwrap(), want, "{name}");
        }
    }

    #[test]
    fn conflicts_are_refused() {
        let other_uid = "11111111-2222-3333-4444-555555555555";
        let err = run(&format!(
            "1:cpu:/kubepods/pod{UID}/{CID}\n2:memory:/kubepods/pod{UID}/{HOST}\n"
        ))
        .unwrap_err();
        assert!(
            matches!(err, CgroupError::MultipleContainerIds(..)),
            "{err}"
        );
        let err = run(&format!(
            "1:cpu:/crio-{CID}.scope\n2:memory:/crio-{HOST}.scope\n"
        ))
        .unwrap_err();
        assert!(
            matches!(err, CgroupError::MultipleContainerIds(..)),
            "{err}"
        );
        let err = run(&format!(
            "1:cpu:/kubepods/pod{UID}/{CID}\n2:memory:/kubepods/pod{other_uid}/{CID}\n"
        ))
        .unwrap_err();
        assert!(matches!(err, CgroupError::MultiplePodUids(..)), "{err}");
    }

    #[test]
    fn segment_parsers_reject_near_misses() {
        assert_eq!(container_id(&CID[1..]), None);
        assert_eq!(container_id(&format!("{CID}0")), None);
        assert_eq!(container_id(&CID.replace('a', "g")), None);
        assert_eq!(container_id(&format!("docker-{CID}.scope")), Some(CID));
        assert_eq!(pod_uid("kubepods"), None);
        assert_eq!(pod_uid(&format!("pod{}", &UID[1..])), None);
        assert_eq!(pod_uid(&format!("pod{}", UID.replace('-', "."))), None);
        // A multi-byte character where a separator should be must not panic.
        assert_eq!(pod_uid("pod2c48913cé29f-11e7-9350-020968147796xx"), None);
    }

    #[test]
    fn malformed_line_is_an_error() {
        assert!(matches!(
            run("garbage\n"),
            Err(CgroupError::Malformed { .. })
        ));
    }

    #[test]
    fn reads_proc_and_falls_back_to_mountinfo() {
        let dir = tempfile::tempdir().unwrap();
        let proc_dir = dir.path().join("42");
        std::fs::create_dir(&proc_dir).unwrap();
        std::fs::write(
            proc_dir.join("cgroup"),
            format!("0::/kubepods/pod{UID}/{CID}\n"),
        )
        .unwrap();
        assert_eq!(locate(dir.path(), 42).unwrap(), pod(Some(UID), CID));

        std::fs::write(proc_dir.join("cgroup"), "0::/\n").unwrap();
        assert_eq!(locate(dir.path(), 42).unwrap(), None);
        std::fs::write(
            proc_dir.join("mountinfo"),
            format!(
                "25 30 0:22 / /sys rw - sysfs sysfs rw\n\
                 31 25 0:26 /../crio-{CID}.scope /sys/fs/cgroup ro - cgroup2 cgroup2 rw\n"
            ),
        )
        .unwrap();
        assert_eq!(locate(dir.path(), 42).unwrap(), pod(None, CID));

        assert!(matches!(
            locate(dir.path(), 43),
            Err(CgroupError::NoProcess { pid: 43 })
        ));
    }
}
