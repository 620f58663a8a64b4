//! How much of the agent one local user can hold through its sockets: connections and
//! streams, counted per caller UID (from the peer credentials) and in total, released when the
//! connection or stream ends. Together with HTTP/2's per-connection stream limit and the
//! bounded buffers of each stream (`endpoints::latest`, the send buffer in `endpoints`), they
//! bound the memory a hostile local process can pin.
//!
//! Per UID rather than per process: a process can fork as many processes as it likes, but not
//! become another user. Containers that share a UID (many run as root) share its allowance,
//! so the defaults are far above what a node's workloads open (a few connections and streams
//! each: one `X509Source`, one Envoy SDS stream per resource).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

/// The caps; see the module docs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Open connections of one UID.
    pub connections_per_uid: usize,
    /// Open server streams of one UID, across its connections.
    pub streams_per_uid: usize,
    /// Open connections of every caller together.
    pub connections: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            connections_per_uid: 1024,
            streams_per_uid: 1024,
            connections: 8192,
        }
    }
}

/// Why a connection or stream was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum LimitError {
    #[error("too many connections from this user (limit {0})")]
    ConnectionsPerUid(usize),
    #[error("too many connections to the agent (limit {0})")]
    Connections(usize),
    #[error("too many open streams from this user (limit {0})")]
    StreamsPerUid(usize),
}

#[derive(Debug, Default)]
struct Counts {
    connections: usize,
    streams: usize,
    by_uid: HashMap<u32, (usize, usize)>,
    /// The most connections + streams open at once since memory was last given back.
    peak: usize,
}

impl Counts {
    fn opened(&mut self) {
        self.peak = self.peak.max(self.connections + self.streams);
    }

    /// Whether enough of a burst has ended to give its memory back (see `sigil_common::allocator`):
    /// what is open fell to half a peak of at least [`RELEASE_AFTER`].
    fn burst_ended(&mut self) -> bool {
        let open = self.connections + self.streams;
        if self.peak >= RELEASE_AFTER && open * 2 <= self.peak {
            self.peak = open;
            return true;
        }
        false
    }
}

/// Below this many connections and streams at once, what they used is not worth a
/// `malloc_trim`.
const RELEASE_AFTER: usize = 32;

/// What is open now, against [`Limits`].
#[derive(Debug)]
pub struct Usage {
    limits: Limits,
    counts: Mutex<Counts>,
}

impl Usage {
    pub fn new(limits: Limits) -> Arc<Self> {
        Arc::new(Self {
            limits,
            counts: Mutex::default(),
        })
    }

    fn counts(&self) -> std::sync::MutexGuard<'_, Counts> {
        // Every update below is applied whole under the lock.
        self.counts.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Counts a new connection of `uid`, or refuses it.
    pub fn open_connection(self: &Arc<Self>, uid: u32) -> Result<Permit, LimitError> {
        let mut counts = self.counts();
        if counts.connections >= self.limits.connections {
            return Err(LimitError::Connections(self.limits.connections));
        }
        let entry = counts.by_uid.entry(uid).or_default();
        if entry.0 >= self.limits.connections_per_uid {
            return Err(LimitError::ConnectionsPerUid(
                self.limits.connections_per_uid,
            ));
        }
        entry.0 += 1;
        counts.connections += 1;
        counts.opened();
        Ok(Permit {
            usage: self.clone(),
            uid,
            kind: Kind::Connection,
        })
    }

    /// Counts a new server stream of `uid`, or refuses it.
    pub fn open_stream(self: &Arc<Self>, uid: u32) -> Result<Permit, LimitError> {
        let mut counts = self.counts();
        let entry = counts.by_uid.entry(uid).or_default();
        if entry.1 >= self.limits.streams_per_uid {
            return Err(LimitError::StreamsPerUid(self.limits.streams_per_uid));
        }
        entry.1 += 1;
        counts.streams += 1;
        counts.opened();
        Ok(Permit {
            usage: self.clone(),
            uid,
            kind: Kind::Stream,
        })
    }

    /// Open (connections, streams) in total.
    pub fn open(&self) -> (usize, usize) {
        let counts = self.counts();
        (counts.connections, counts.streams)
    }

    /// Uncounts one connection or stream; `true` when a burst has ended and its memory should
    /// be given back.
    fn release(&self, uid: u32, kind: Kind) -> bool {
        let mut counts = self.counts();
        match kind {
            Kind::Connection => counts.connections -= 1,
            Kind::Stream => counts.streams -= 1,
        }
        if let Some(entry) = counts.by_uid.get_mut(&uid) {
            match kind {
                Kind::Connection => entry.0 -= 1,
                Kind::Stream => entry.1 -= 1,
            }
            if *entry == (0, 0) {
                counts.by_uid.remove(&uid);
            }
        }
        counts.burst_ended()
    }
}

#[derive(Clone, Copy, Debug)]
enum Kind {
    Connection,
    Stream,
}

/// One counted connection or stream; dropping it releases the count.
#[derive(Debug)]
pub struct Permit {
    usage: Arc<Usage>,
    uid: u32,
    kind: Kind,
}

impl Drop for Permit {
    fn drop(&mut self) {
        if self.usage.release(self.uid, self.kind) {
            // A trim walks every arena: off the runtime's workers when there is one.
            match tokio::runtime::Handle::try_current() {
                Ok(rt) => drop(rt.spawn_blocking(sigil_common::allocator::release_free_memory)),
                Err(_) => drop(sigil_common::allocator::release_free_memory()),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_per_uid_and_in_total_and_releases_on_drop() {
        let usage = Usage::new(Limits {
            connections_per_uid: 2,
            streams_per_uid: 1,
            connections: 3,
        });
        let a1 = usage.open_connection(1).unwrap();
        let _a2 = usage.open_connection(1).unwrap();
        assert_eq!(
            usage.open_connection(1).unwrap_err(),
            LimitError::ConnectionsPerUid(2)
        );
        let _b1 = usage.open_connection(2).unwrap();
        assert_eq!(
            usage.open_connection(3).unwrap_err(),
            LimitError::Connections(3)
        );
        drop(a1);
        let _a3 = usage.open_connection(1).unwrap();

        let s = usage.open_stream(1).unwrap();
        assert_eq!(
            usage.open_stream(1).unwrap_err(),
            LimitError::StreamsPerUid(1)
        );
        let _other = usage.open_stream(2).unwrap();
        assert_eq!(usage.open(), (3, 2));
        drop(s);
        assert_eq!(usage.open(), (3, 1));
        let _s = usage.open_stream(1).unwrap();
    }

    #[test]
    fn memory_is_given_back_at_each_halving_of_a_large_burst() {
        let mut counts = Counts {
            streams: 10,
            ..Counts::default()
        };
        counts.opened();
        counts.streams = 0;
        assert!(!counts.burst_ended(), "a small burst is not worth a trim");

        counts.streams = 100;
        counts.opened();
        let trims: Vec<usize> = (0..100)
            .rev()
            .filter(|open| {
                counts.streams = *open;
                counts.burst_ended()
            })
            .collect();
        assert_eq!(trims, [50, 25]);
    }

    #[test]
    fn a_uid_with_nothing_open_is_forgotten() {
        let usage = Usage::new(Limits::default());
        drop(usage.open_stream(7).unwrap());
        drop(usage.open_connection(7).unwrap());
        assert!(usage.counts().by_uid.is_empty());
    }
}
