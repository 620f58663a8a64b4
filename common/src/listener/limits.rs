//! How many connections a TCP listener holds at once, in all and per source address, and the
//! fit of every listener's caps under the process's file descriptor limit.
//!
//! Every accepted connection is a file descriptor. Without caps, a flood of idle connections to
//! one listener (450 half-open OIDC connections did it to the server) takes the descriptors
//! the rest of the process needs. With caps whose sum stays below the limit minus
//! [`RESERVED_FDS`], a flood costs its own listener only.

/// Descriptors kept out of every listener's reach, for what the process holds besides its
/// inbound connections: database pools or the link to the server, the Unix sockets and their
/// connections, outbound clients, key and state files being written, DNS look-ups, the
/// listening sockets themselves and the runtime's own (epoll, signal pipe). A running
/// sigil-server with every listener idle holds 36; the rest is head-room.
pub const RESERVED_FDS: u64 = 256;

/// The smallest cap a listener gets when the descriptor limit is too low for the wanted caps.
const MIN_CAP: u64 = 4;

/// The caps of one listener.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// Connections open at once, handshakes included.
    pub max_connections: u64,
    /// Of those, from one source address (IPv4 address, or IPv6 /64 prefix).
    pub max_connections_per_address: u64,
}

/// Fits the caps of `listeners` under `fd_limit`, in place: when their sum exceeds the limit
/// minus [`RESERVED_FDS`], each is scaled down by the same factor (never below a handful), and
/// each per-address cap to at most its listener's. Returns whether they had to be lowered.
pub fn fit<K>(listeners: &mut [(K, ConnectionLimits)], fd_limit: u64) -> bool {
    let budget = fd_limit.saturating_sub(RESERVED_FDS);
    let wanted: u64 = listeners.iter().map(|(_, l)| l.max_connections).sum();
    if wanted <= budget {
        return false;
    }
    // Scaled against what is left once every listener has its floor, so that the floors do
    // not push the sum over the budget (when the budget has room for the floors at all).
    let floors = MIN_CAP * listeners.len() as u64;
    let share = budget.saturating_sub(floors);
    for (_, l) in listeners.iter_mut() {
        // u128: the product of two u64s; the quotient is at most the original cap.
        let scaled = u128::from(l.max_connections) * u128::from(share) / u128::from(wanted);
        l.max_connections = u64::try_from(scaled).unwrap_or(u64::MAX).max(MIN_CAP);
        l.max_connections_per_address = l.max_connections_per_address.min(l.max_connections);
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caps(max: u64, per_address: u64) -> ConnectionLimits {
        ConnectionLimits {
            max_connections: max,
            max_connections_per_address: per_address,
        }
    }

    #[test]
    fn caps_that_fit_are_kept() {
        let mut listeners = [("a", caps(1000, 10)), ("b", caps(64, 32))];
        let before = listeners;
        assert!(!fit(&mut listeners, 1000 + 64 + RESERVED_FDS));
        assert_eq!(listeners, before);
    }

    #[test]
    fn a_low_limit_scales_every_cap_and_never_below_the_floor() {
        let mut listeners = [("a", caps(16_384, 1_024)), ("b", caps(64, 64))];
        assert!(fit(&mut listeners, 1024));
        let total: u64 = listeners.iter().map(|(_, l)| l.max_connections).sum();
        assert!(total + RESERVED_FDS <= 1024, "{listeners:?}");
        assert!(
            listeners
                .iter()
                .all(|(_, l)| l.max_connections_per_address <= l.max_connections)
        );
        let mut tiny = [("a", caps(100, 10)), ("b", caps(100, 10))];
        assert!(fit(&mut tiny, 10));
        assert!(tiny.iter().all(|(_, l)| l.max_connections == MIN_CAP));
    }
}
