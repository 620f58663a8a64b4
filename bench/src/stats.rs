//! Latency percentiles and what a process used, read from `/proc/<pid>`.

use std::time::Duration;

use anyhow::Context as _;

/// Linux reports CPU times in `/proc/<pid>/stat` in clock ticks of `USER_HZ`, which is 100 on
/// every architecture Linux exposes to user space (`sysconf(_SC_CLK_TCK)` always says 100).
const USER_HZ: f64 = 100.0;

/// The `p`-th percentile (0..=100) of `samples` by nearest rank; `None` when there are none.
pub(crate) fn percentile(samples: &mut [Duration], p: f64) -> Option<Duration> {
    if samples.is_empty() {
        return None;
    }
    samples.sort_unstable();
    let rank = ((p / 100.0) * samples.len() as f64).ceil() as usize;
    Some(samples[rank.clamp(1, samples.len()) - 1])
}

pub(crate) fn millis(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// User + system CPU seconds a process has used so far (`/proc/<pid>/stat` fields 14 and 15).
pub(crate) fn cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat"))?;
    cpu_seconds_of(&stat).with_context(|| format!("parsing /proc/{pid}/stat"))
}

fn cpu_seconds_of(stat: &str) -> Option<f64> {
    // The command name (field 2) is in parentheses and may hold spaces: count from the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3 (state), so fields 14 and 15 are at indices 11 and 12.
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / USER_HZ)
}

/// User + system CPU seconds the calling thread has used so far (`/proc/thread-self/stat`).
pub(crate) fn thread_cpu_seconds() -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string("/proc/thread-self/stat")
        .context("reading /proc/thread-self/stat")?;
    cpu_seconds_of(&stat).context("parsing /proc/thread-self/stat")
}

/// Resident set size in MiB (`VmRSS` of `/proc/<pid>/status`).
pub(crate) fn rss_mib(pid: u32) -> anyhow::Result<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    rss_mib_of(&status).with_context(|| format!("no VmRSS in /proc/{pid}/status"))
}

fn rss_mib_of(status: &str) -> Option<f64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let mut s: Vec<Duration> = (1..=100).rev().map(Duration::from_millis).collect();
        assert_eq!(percentile(&mut s, 50.0), Some(Duration::from_millis(50)));
        assert_eq!(percentile(&mut s, 99.0), Some(Duration::from_millis(99)));
        assert_eq!(percentile(&mut s, 100.0), Some(Duration::from_millis(100)));
        let mut one = vec![Duration::from_millis(7)];
        assert_eq!(percentile(&mut one, 99.0), Some(Duration::from_millis(7)));
        assert_eq!(percentile(&mut [], 50.0), None);
    }

    #[test]
    fn cpu_time_skips_a_command_name_with_spaces() {
        let stat = "42 (sigil server) S 1 42 42 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 9 0 1 2 3";
        assert_eq!(cpu_seconds_of(stat), Some(3.0));
        assert_eq!(cpu_seconds_of("garbage"), None);
    }

    #[test]
    fn rss_in_mib() {
        let status = "Name:\tsigil-server\nVmRSS:\t   20480 kB\nThreads:\t9\n";
        assert_eq!(rss_mib_of(status), Some(20.0));
    }

    #[test]
    fn this_process_is_measurable() {
        let pid = std::process::id();
        assert!(rss_mib(pid).unwrap() > 0.0);
        assert!(cpu_seconds(pid).unwrap() >= 0.0);
        assert!(thread_cpu_seconds().unwrap() >= 0.0);
    }
}
