//! TCP listeners with every cost of a connection bounded: the server's agent API (gRPC over
//! HTTP/2 and mTLS), OIDC discovery, federation bundle endpoint, health and metrics endpoints,
//! and the agent's health endpoint (HTTP/1.1, TLS for some). Everything a connection may cost
//! before and between requests is bounded here, so that silent, trickling or half-open clients
//! cannot hold descriptors the process needs for its real work:
//!
//! - **Caps** ([`limits`], [`limiter`]): connections per listener and per source address,
//!   checked at accept; a connection over a cap is closed at once. A binary fits its caps
//!   under the process's descriptor limit ([`limits::fit`]), raised at start ([`fd_limit`]),
//!   minus a reserve.
//! - **Timeouts** ([`Timeouts`]): TLS handshake; HTTP/1 request head, which also bounds an idle
//!   keep-alive connection (hyper starts the timer whenever it waits for a head); HTTP/2
//!   preface, keep-alive pings, and an idle timeout for connections with no open stream.
//!
//! Serving is written here on hyper's connection builders rather than through `axum::serve`
//! or tonic's `Server`: `axum::serve` sets no timer, so hyper's header-read timeout never runs,
//! and neither it nor tonic offers caps, an HTTP/2 preface deadline, or an idle timeout for a
//! connection without streams. What hyper's builders do (header-read timeout, keep-alive pings,
//! stream limits) is left to them; only what no crate does is written here: the caps, the
//! preface deadline and the idle watchdog.

mod accept;
pub mod fd_limit;
mod grpc;
mod http1;
pub mod limiter;
pub mod limits;

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

pub use grpc::serve_grpc;
pub use http1::{PeerCertificates, serve_http};
pub use limiter::{
    ConnectionLabels, ConnectionLimiter, ConnectionMetrics, ListenerLabel, Permit, Refusal,
};
pub use limits::ConnectionLimits;

/// Where each TLS handshake's config comes from (called per connection, so a rotated
/// certificate is presented at once).
pub type TlsSource = Arc<dyn Fn() -> TlsAcceptor + Send + Sync>;

/// What a connection may take before and between requests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timeouts {
    /// TCP accept to the end of the TLS handshake.
    pub tls_handshake: Duration,
    /// HTTP/1: a request head must be complete this long after the server starts waiting for
    /// it, on a new connection as on a keep-alive one (where it is the idle timeout). SPIRE's
    /// HTTP servers: `ReadHeaderTimeout` of 10 s.
    pub header_read: Duration,
    /// HTTP/2: the client's 24-byte connection preface must have arrived this long after the
    /// TLS handshake.
    pub http2_preface: Duration,
    /// HTTP/2: a PING when the connection has been quiet this long...
    pub http2_keepalive_interval: Duration,
    /// ...and the connection is closed if its ACK does not come within this.
    pub http2_keepalive_timeout: Duration,
    /// HTTP/2: a connection with no open stream this long gets a GOAWAY.
    pub http2_idle: Duration,
    /// After a GOAWAY or an HTTP/1 graceful close, how long the connection gets to finish
    /// before it is dropped.
    pub close_grace: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            tls_handshake: Duration::from_secs(10),
            header_read: Duration::from_secs(10),
            http2_preface: Duration::from_secs(10),
            http2_keepalive_interval: Duration::from_secs(30),
            http2_keepalive_timeout: Duration::from_secs(20),
            http2_idle: Duration::from_secs(60),
            close_grace: Duration::from_secs(5),
        }
    }
}

/// HTTP/2 streams one gRPC connection may have open at once (hyper's default is 200, tonic's
/// `Server` lifts it); a client queues beyond it rather than failing.
pub const HTTP2_MAX_STREAMS: u32 = 256;

/// A bound TCP listener with its caps and timeouts.
pub struct Listener {
    tcp: TcpListener,
    limiter: Arc<ConnectionLimiter>,
    timeouts: Timeouts,
}

impl Listener {
    /// `tcp`, held to `limiter`'s caps and the default [`Timeouts`].
    pub fn new(tcp: TcpListener, limiter: Arc<ConnectionLimiter>) -> Self {
        Self {
            tcp,
            limiter,
            timeouts: Timeouts::default(),
        }
    }

    /// Binds `addr` now, so a port clash fails start-up.
    pub async fn bind(addr: SocketAddr, limiter: Arc<ConnectionLimiter>) -> io::Result<Self> {
        Ok(Self::new(TcpListener::bind(addr).await?, limiter))
    }

    /// Other timeouts than the defaults (tests shorten them).
    pub fn with_timeouts(mut self, timeouts: Timeouts) -> Self {
        self.timeouts = timeouts;
        self
    }

    /// The address bound (the port chosen, when bound to port 0).
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.tcp.local_addr()
    }

    /// The caps this listener is held to.
    pub fn limiter(&self) -> &Arc<ConnectionLimiter> {
        &self.limiter
    }
}

#[cfg(test)]
mod tests;
