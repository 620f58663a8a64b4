//! The process's file descriptor limit (`RLIMIT_NOFILE`), raised at start from the soft to the
//! hard limit, as Go's runtime does for every Go program (SPIRE included) since Go 1.19. The
//! soft limit of a login shell or a systemd unit is often 1,024 while the hard limit is far
//! higher; the listeners' caps are then sized against what the process can really open.

use nix::sys::resource::{Resource, getrlimit, setrlimit};

/// Assumed when the limit cannot be read (it always can on Linux).
const FALLBACK: u64 = 1024;

/// The soft limit before and after [`raise`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FdLimit {
    /// The soft limit the process started with.
    pub before: u64,
    /// The soft limit in force now.
    pub now: u64,
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit. Failing that (a hard limit the kernel
/// refuses as a soft one), keeps the soft limit; either way returns the limit in force.
pub fn raise() -> FdLimit {
    let (soft, hard) = match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok(limits) => limits,
        Err(e) => {
            tracing::warn!(error = %e, assumed = FALLBACK, "cannot read the file descriptor limit");
            return FdLimit {
                before: FALLBACK,
                now: FALLBACK,
            };
        }
    };
    if soft >= hard {
        return FdLimit {
            before: soft,
            now: soft,
        };
    }
    match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
        Ok(()) => FdLimit {
            before: soft,
            now: hard,
        },
        Err(e) => {
            tracing::warn!(error = %e, soft, hard, "cannot raise the file descriptor limit to the hard limit");
            FdLimit {
                before: soft,
                now: soft,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raises_the_soft_limit_to_the_hard_one() {
        let limit = raise();
        let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
        assert_eq!(limit.now, soft);
        assert!(limit.now >= limit.before);
        // Raised unless the kernel refused the hard limit as a soft one.
        assert!(soft == hard || limit.now == limit.before);
    }
}
