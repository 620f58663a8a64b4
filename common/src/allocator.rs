//! Gives the memory a burst used back to the system. glibc's allocator returns freed memory
//! only from the top of each arena, so after a burst (a hostile caller's thousand streams on
//! the agent, a 10k-entry `entry create -data` on the server) its pages stay resident, tens of
//! MB, below memory still in use. `malloc_trim` releases every free page of every arena: the
//! agent's endpoints call [`release_free_memory`] when a burst of connections has ended; the
//! server's admin API nudges a [`ReleaseWhenQuiet`] after each call.

use std::time::Duration;

use tokio::sync::mpsc;

/// Asks glibc to return its free pages to the system; `false` where there is no glibc
/// (musl and the rest return memory themselves) or nothing was released.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
pub fn release_free_memory() -> bool {
    // SAFETY: `malloc_trim` takes no pointers and touches only glibc's own free lists, under
    // the arenas' locks; it is safe to call from any thread at any time. No safe wrapper of
    // it exists in a well-kept crate.
    unsafe { libc::malloc_trim(0) == 1 }
}

/// Asks glibc to return its free pages to the system; `false` where there is no glibc
/// (musl and the rest return memory themselves) or nothing was released.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn release_free_memory() -> bool {
    false
}

/// Calls [`release_free_memory`] once a burst of work is over: `quiet` after the last
/// [`nudge`](Self::nudge), on a blocking thread (a trim walks every arena). Nudges during the
/// wait restart it, so a run of calls costs one trim. The task ends with the last handle.
#[derive(Clone, Debug)]
pub struct ReleaseWhenQuiet {
    nudges: mpsc::Sender<()>,
}

impl ReleaseWhenQuiet {
    /// Starts the waiting task on the current Tokio runtime.
    pub fn spawn(quiet: Duration) -> Self {
        let (nudges, mut rx) = mpsc::channel(1);
        tokio::spawn(async move {
            while rx.recv().await.is_some() {
                loop {
                    match tokio::time::timeout(quiet, rx.recv()).await {
                        Ok(Some(())) => {}
                        Ok(None) => return,
                        Err(_elapsed) => break,
                    }
                }
                // A failed trim (a panic on the blocking thread) costs only the memory.
                let _released = tokio::task::spawn_blocking(release_free_memory).await;
            }
        });
        Self { nudges }
    }

    /// Some work just ended: trim once nothing else happened for the quiet period.
    pub fn nudge(&self) {
        // Full: a nudge is already waiting, which is as good.
        let _ = self.nudges.try_send(());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Resident set size of this process, from /proc (kB).
    fn rss_kb() -> u64 {
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
        line.split_whitespace().nth(1).unwrap().parse().unwrap()
    }

    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[tokio::test(flavor = "current_thread")]
    async fn a_burst_of_small_allocations_is_given_back_after_the_quiet_period() {
        let release = ReleaseWhenQuiet::spawn(Duration::from_millis(50));
        // Many small blocks (below the mmap threshold, so they live in the arena), then all but
        // the last freed: the last one pins the arena's top, so glibc keeps the rest resident.
        let mut blocks: Vec<Vec<u8>> = (0..200_000).map(|i| vec![i as u8; 512]).collect();
        let pin = vec![1u8; 512];
        let before = rss_kb();
        blocks.clear();
        blocks.shrink_to_fit();
        let freed = rss_kb();
        release.nudge();
        tokio::time::sleep(Duration::from_millis(500)).await;
        let after = rss_kb();
        drop(pin);
        assert!(
            after + 50_000 < freed,
            "RSS {before} kB with the blocks, {freed} kB freed, {after} kB after the trim"
        );
    }
}
