//! Admission of connections against a listener's caps ([`ConnectionLimits`]). A connection over
//! a cap is closed at once by the caller; each one is counted in the binary's
//! `<prefix>_connections_total{listener, result}` ([`ConnectionMetrics`]) and the log gets at
//! most one line per [`LOG_INTERVAL`] and kind, carrying the count since the last one, whatever
//! the flood's rate.
//!
//! Hand-written: tower's `ConcurrencyLimit` and tokio's `Semaphore` bound one total but know
//! nothing of source addresses, and the workspace has no connection-limiting crate; this is a
//! map and two counters under one lock, taken twice per connection.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use super::limits::ConnectionLimits;

/// At most one log line per kind (refusals at each cap, accept errors) in this interval.
pub const LOG_INTERVAL: Duration = Duration::from_secs(10);

/// A TCP listener (`agent_api`, `health_checks`, ...) and what happened to a connection.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ConnectionLabels {
    /// The listener's name.
    pub listener: &'static str,
    /// `accepted`, a refusal, or how an accepted connection ended.
    pub result: &'static str,
}

/// A TCP listener, for the gauge of its open connections.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ListenerLabel {
    /// The listener's name.
    pub listener: &'static str,
}

/// The connection metrics of every listener of a process, registered in the binary's registry
/// ([`ConnectionMetrics::register`]) under its prefix. Clones share the counts.
#[derive(Clone, Debug, Default)]
pub struct ConnectionMetrics {
    /// Inbound TCP connections: `accepted`, `refused_listener_cap`, `refused_address_cap`.
    pub connections: Family<ConnectionLabels, Counter>,
    /// Why accepted connections ended: `ok`, `tls_failed`, `tls_timeout`, `header_timeout`,
    /// `preface_timeout`, `idle_timeout`, `keepalive_timeout`, `error`.
    pub connections_closed: Family<ConnectionLabels, Counter>,
    /// Connections open now, handshakes included.
    pub open_connections: Family<ListenerLabel, Gauge>,
}

impl ConnectionMetrics {
    /// Registers the three families as `connections`, `connections_closed` and
    /// `open_connections`.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "connections",
            "Inbound TCP connections, accepted or refused at a cap",
            self.connections.clone(),
        );
        registry.register(
            "connections_closed",
            "Accepted TCP connections that ended, by why",
            self.connections_closed.clone(),
        );
        registry.register(
            "open_connections",
            "TCP connections open, handshakes included",
            self.open_connections.clone(),
        );
    }

    /// The OpenMetrics text of these metrics alone, under the prefix `sigil`.
    #[cfg(test)]
    pub(crate) fn encode(&self) -> String {
        let mut registry = Registry::with_prefix("sigil");
        self.register(&mut registry);
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &registry);
        out
    }
}

/// Which cap refused a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The listener holds `max_connections`.
    ListenerCap,
    /// The source address holds `max_connections_per_address`.
    AddressCap,
}

impl Refusal {
    /// The `result` label of the refusal.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ListenerCap => "refused_listener_cap",
            Self::AddressCap => "refused_address_cap",
        }
    }
}

/// Counts a listener's open connections, in all and per source address.
pub struct ConnectionLimiter {
    listener: &'static str,
    limits: ConnectionLimits,
    state: Mutex<State>,
    metrics: ConnectionMetrics,
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
            .field("listener", &self.listener)
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

impl ConnectionLimiter {
    /// The limiter of the listener named `listener` (in metrics labels and log lines),
    /// counting in `metrics`.
    pub fn new(
        listener: &'static str,
        limits: ConnectionLimits,
        metrics: ConnectionMetrics,
    ) -> Arc<Self> {
        Arc::new(Self {
            listener,
            limits,
            state: Mutex::default(),
            metrics,
            listener_cap_log: LogThrottle::default(),
            address_cap_log: LogThrottle::default(),
            accept_error_log: LogThrottle::default(),
        })
    }

    /// The listener's name.
    pub fn listener(&self) -> &'static str {
        self.listener
    }

    /// The caps.
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
            tracing::warn!(listener = self.listener, error = %error, count, "cannot accept connections");
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
                listener = self.listener,
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
            listener: self.listener,
            result,
        }
    }

    fn open_gauge(&self) -> Gauge {
        self.metrics
            .open_connections
            .get_or_create(&ListenerLabel {
                listener: self.listener,
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

    fn limiter(max: u64, per_address: u64) -> (Arc<ConnectionLimiter>, ConnectionMetrics) {
        let metrics = ConnectionMetrics::default();
        let limits = ConnectionLimits {
            max_connections: max,
            max_connections_per_address: per_address,
        };
        (
            ConnectionLimiter::new("oidc_discovery", limits, metrics.clone()),
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
                "sigil_connections_total{listener=\"oidc_discovery\",result=\"accepted\"} 5"
            ),
            "{text}"
        );
        assert!(text.contains("result=\"refused_address_cap\"} 1"), "{text}");
        assert!(
            text.contains("result=\"refused_listener_cap\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("sigil_open_connections{listener=\"oidc_discovery\"} 4"),
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
