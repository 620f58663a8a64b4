//! Admission of connections against a listener's caps ([`ConnectionLimits`]). A connection over
//! a cap is closed at once by the caller; each one is counted in
//! `sigil_server_connections_total{listener, result}` and the log gets at most one line per
//! [`LOG_INTERVAL`] and kind, carrying the count since the last one, whatever the flood's rate.
//!
//! Hand-written: tower's `ConcurrencyLimit` and tokio's `Semaphore` bound one total but know
//! nothing of source addresses, and the workspace has no connection-limiting crate; this is a
//! map and two counters under one lock, taken twice per connection.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use crate::metrics::{ConnectionLabels, ListenerLabel, Metrics};

use super::limits::{ConnectionLimits, Endpoint};

/// At most one log line per kind (refusals at each cap, accept errors) in this interval.
pub const LOG_INTERVAL: Duration = Duration::from_secs(10);

/// Which cap refused a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    ListenerCap,
    AddressCap,
}

impl Refusal {
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::ListenerCap => "refused_listener_cap",
            Refusal::AddressCap => "refused_address_cap",
        }
    }
}

/// Counts a listener's open connections, in all and per source address.
pub struct ConnectionLimiter {
    endpoint: Endpoint,
    limits: ConnectionLimits,
    state: Mutex<State>,
    metrics: Arc<Metrics>,
    listener_cap_log: LogThrottle,
    address_cap_log: LogThrottle,
    accept_error_log: LogThrottle,
}

#[derive(Default)]
struct State {
    open: u64,
    /// Connections per source address that count against it; an address leaves the map when
    /// its count drops to zero, so the map is never larger than the open connections.
    per_address: HashMap<IpAddr, u64>,
}

impl std::fmt::Debug for ConnectionLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectionLimiter")
            .field("endpoint", &self.endpoint)
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

impl ConnectionLimiter {
    pub fn new(
        endpoint: Endpoint,
        limits: ConnectionLimits,
        metrics: Arc<Metrics>,
    ) -> Arc<ConnectionLimiter> {
        Arc::new(ConnectionLimiter {
            endpoint,
            limits,
            state: Mutex::default(),
            metrics,
            listener_cap_log: LogThrottle::default(),
            address_cap_log: LogThrottle::default(),
            accept_error_log: LogThrottle::default(),
        })
    }

    pub fn endpoint(&self) -> Endpoint {
        self.endpoint
    }

    pub fn limits(&self) -> ConnectionLimits {
        self.limits
    }

    /// Connections open now.
    pub fn open(&self) -> u64 {
        self.lock().open
    }

    /// Takes a slot for a connection from `peer`, or says which cap is reached.
    pub fn admit(self: &Arc<Self>, peer: IpAddr) -> Result<Permit, Refusal> {
        let key = address_key(peer);
        let outcome = {
            let mut state = self.lock();
            let from_address = state.per_address.get(&key).copied().unwrap_or(0);
            if state.open >= self.limits.max_connections {
                Err(Refusal::ListenerCap)
            } else if from_address >= self.limits.max_connections_per_address {
                Err(Refusal::AddressCap)
            } else {
                state.open += 1;
                *state.per_address.entry(key).or_default() += 1;
                Ok(())
            }
        };
        let result = match outcome {
            Ok(()) => "accepted",
            Err(refusal) => refusal.as_str(),
        };
        self.metrics
            .connections
            .get_or_create(&self.labels(result))
            .inc();
        match outcome {
            Ok(()) => {
                self.open_gauge().inc();
                Ok(Permit {
                    limiter: self.clone(),
                    address: Some(key),
                })
            }
            Err(refusal) => {
                self.log_refusal(refusal, peer);
                Err(refusal)
            }
        }
    }

    /// Counts an accepted connection's end under `result`.
    pub fn closed(&self, result: &'static str) {
        self.metrics
            .connections_closed
            .get_or_create(&self.labels(result))
            .inc();
    }

    /// Logs a failed `accept` (EMFILE and the like), rate-limited.
    pub fn accept_failed(&self, error: &std::io::Error) {
        if let Some(count) = self.accept_error_log.event(Instant::now()) {
            tracing::warn!(listener = %self.endpoint, error = %error, count, "cannot accept connections");
        }
    }

    fn log_refusal(&self, refusal: Refusal, peer: IpAddr) {
        let (throttle, what) = match refusal {
            Refusal::ListenerCap => (
                &self.listener_cap_log,
                "connections refused: the listener holds max_connections",
            ),
            Refusal::AddressCap => (
                &self.address_cap_log,
                "connections refused: their source address holds max_connections_per_ip",
            ),
        };
        if let Some(count) = throttle.event(Instant::now()) {
            tracing::warn!(
                listener = %self.endpoint,
                result = refusal.as_str(),
                count,
                last_peer = %peer,
                max_connections = self.limits.max_connections,
                max_connections_per_ip = self.limits.max_connections_per_address,
                "{what} (count: refused since the last such line)"
            );
        }
    }

    fn release(&self, address: Option<IpAddr>, close: bool) {
        let mut state = self.lock();
        if let Some(key) = address
            && let Some(n) = state.per_address.get_mut(&key)
        {
            *n -= 1;
            if *n == 0 {
                state.per_address.remove(&key);
            }
        }
        if close {
            state.open -= 1;
        }
    }

    fn labels(&self, result: &'static str) -> ConnectionLabels {
        ConnectionLabels {
            listener: self.endpoint.as_str(),
            result,
        }
    }

    fn open_gauge(&self) -> prometheus_client::metrics::gauge::Gauge {
        self.metrics
            .open_connections
            .get_or_create(&ListenerLabel {
                listener: self.endpoint.as_str(),
            })
            .clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // Every update is a counter step done in one go: a poisoned state is still consistent.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// One admitted connection's slot; dropping it frees the slot.
#[derive(Debug)]
pub struct Permit {
    limiter: Arc<ConnectionLimiter>,
    /// The source address it counts against, until [`Permit::release_address`].
    address: Option<IpAddr>,
}

impl Permit {
    /// The connection authenticated (an agent presented an SVID of the trust domain): it stops
    /// counting against its source address, so any number of agents may share one (NAT), while
    /// it still counts against the listener.
    pub fn release_address(&mut self) {
        if let Some(key) = self.address.take() {
            self.limiter.release(Some(key), false);
        }
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.limiter.release(self.address.take(), true);
        self.limiter.open_gauge().dec();
    }
}

/// The key a source address counts under: an IPv4 address (IPv4-mapped IPv6 included) as is,
/// an IPv6 address by its /64 prefix, since one host is commonly given a whole /64.
fn address_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let prefix = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(Ipv6Addr::from(prefix))
        }
        v4 => v4,
    }
}

/// Lets one log line through per [`LOG_INTERVAL`], counting the events in between.
#[derive(Default)]
struct LogThrottle(Mutex<(Option<Instant>, u64)>);

impl LogThrottle {
    /// Counts one event. `Some(n)` when a line may be written now: `n` events (this one
    /// included) since the last line.
    fn event(&self, now: Instant) -> Option<u64> {
        let mut guard = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let (last, pending) = &mut *guard;
        *pending += 1;
        if last.is_some_and(|l| now.saturating_duration_since(l) < LOG_INTERVAL) {
            return None;
        }
        *last = Some(now);
        Some(std::mem::take(pending))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limiter(max: u64, per_address: u64) -> (Arc<ConnectionLimiter>, Arc<Metrics>) {
        let metrics = Metrics::new();
        let limits = ConnectionLimits {
            max_connections: max,
            max_connections_per_address: per_address,
        };
        (
            ConnectionLimiter::new(Endpoint::OidcDiscovery, limits, metrics.clone()),
            metrics,
        )
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn caps_per_address_and_per_listener() {
        let (l, metrics) = limiter(4, 2);
        let a1 = l.admit(ip("10.0.0.1")).unwrap();
        let _a2 = l.admit(ip("10.0.0.1")).unwrap();
        assert_eq!(l.admit(ip("10.0.0.1")).unwrap_err(), Refusal::AddressCap);
        let _b1 = l.admit(ip("10.0.0.2")).unwrap();
        let _b2 = l.admit(ip("10.0.0.2")).unwrap();
        // Full: even a new address is refused.
        assert_eq!(l.admit(ip("10.0.0.3")).unwrap_err(), Refusal::ListenerCap);
        assert_eq!(l.open(), 4);
        // A closed connection frees both its slots.
        drop(a1);
        assert_eq!(l.open(), 3);
        let _a3 = l.admit(ip("10.0.0.1")).unwrap();
        let text = metrics.encode();
        assert!(
            text.contains(
                "sigil_server_connections_total{listener=\"oidc_discovery\",result=\"accepted\"} 5"
            ),
            "{text}"
        );
        assert!(text.contains("result=\"refused_address_cap\"} 1"), "{text}");
        assert!(
            text.contains("result=\"refused_listener_cap\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("sigil_server_open_connections{listener=\"oidc_discovery\"} 4"),
            "{text}"
        );
    }

    #[test]
    fn an_authenticated_connection_stops_counting_against_its_address() {
        let (l, _) = limiter(10, 1);
        let mut agent = l.admit(ip("192.0.2.7")).unwrap();
        assert_eq!(l.admit(ip("192.0.2.7")).unwrap_err(), Refusal::AddressCap);
        agent.release_address();
        let mut next = l.admit(ip("192.0.2.7")).unwrap();
        next.release_address();
        // Releasing twice, then closing, frees exactly one listener slot each.
        next.release_address();
        drop(next);
        drop(agent);
        assert_eq!(l.open(), 0);
        assert!(l.lock().per_address.is_empty());
    }

    #[test]
    fn ipv6_counts_per_64_and_mapped_ipv4_as_ipv4() {
        let (l, _) = limiter(10, 1);
        let _a = l.admit(ip("2001:db8:1:2::1")).unwrap();
        assert_eq!(
            l.admit(ip("2001:db8:1:2:ffff::9")).unwrap_err(),
            Refusal::AddressCap
        );
        let _b = l.admit(ip("2001:db8:1:3::1")).unwrap();
        let _c = l.admit(ip("198.51.100.1")).unwrap();
        assert_eq!(
            l.admit(ip("::ffff:198.51.100.1")).unwrap_err(),
            Refusal::AddressCap
        );
    }

    #[test]
    fn log_throttle_lets_one_line_through_per_interval_with_the_count() {
        let t = LogThrottle::default();
        let start = Instant::now();
        assert_eq!(t.event(start), Some(1));
        for i in 1..1000 {
            assert_eq!(t.event(start + Duration::from_millis(i)), None);
        }
        assert_eq!(t.event(start + LOG_INTERVAL), Some(1000));
        assert_eq!(t.event(start + LOG_INTERVAL), None);
    }
}
