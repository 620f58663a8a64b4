//! The agent's Unix-socket endpoints (SPIRE's `pkg/agent/endpoints`): the accept loop that
//! every service on an agent socket is served through (the Workload API and SDS), and how
//! their callers are identified ([`caller`]).
//!
//! Each accepted connection is
//! - bound to the process that opened it ([`peer`]): every call is answered for that process
//!   as it was when it connected, or refused;
//! - counted against its user's and the agent's caps ([`limits`]); a connection over a cap is
//!   closed at once;
//! - served over HTTP/2 with bounded buffers: at most [`ServeConfig::streams_per_connection`]
//!   concurrent streams, a send buffer of [`ServeConfig::send_buffer_bytes`] per stream, and
//!   server streams that keep only their latest unsent message ([`latest`]).
//!
//! Hand-rolled over hyper rather than tonic's `Server` because tonic offers no hook for the
//! per-connection state (the bound process) nor for HTTP/2's send buffer size, which is what a
//! client that never reads fills.

mod authority;
pub mod caller;
pub mod latest;
pub mod limits;
pub mod peer;

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use hyper::body::Incoming;
use hyper::server::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use sigil_common::listener::fd_limit;
use sigil_common::listener::limits::RESERVED_FDS;
use sigil_common::time::unix_now;
use tokio::net::{UnixListener, UnixStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::service::Routes;
use tower::ServiceExt as _;
use tracing::{debug, warn};

use crate::procfs::Credentials;

use authority::AuthorityFix;
pub use caller::{Caller, CallerError};
pub use latest::{LatestStream, Publisher};
pub use limits::{LimitError, Limits, Permit, Usage};
pub use peer::{BoundProcess, PeerError};

/// How connections are served.
#[derive(Clone, Debug)]
pub struct ServeConfig {
    pub limits: Limits,
    /// HTTP/2 `SETTINGS_MAX_CONCURRENT_STREAMS`: streams over it are refused by HTTP/2.
    pub streams_per_connection: u32,
    /// Bytes HTTP/2 buffers per stream for a client that does not read.
    pub send_buffer_bytes: usize,
    /// How long a server stream's unsent message may wait for a client that does not read
    /// before a newer one ends the stream ([`latest`]).
    pub slow_stream_after: Duration,
    /// How long open connections get to finish when the agent stops.
    pub drain: Duration,
}

impl Default for ServeConfig {
    fn default() -> Self {
        Self {
            limits: Limits::default(),
            streams_per_connection: 100,
            send_buffer_bytes: 8 * 1024,
            slow_stream_after: Duration::from_secs(30),
            drain: Duration::from_secs(5),
        }
    }
}

/// The caller of a request, as the connection's peer: put in every request's extensions.
#[derive(Clone, Debug)]
pub struct Peer {
    /// From the peer credentials.
    pub uid: u32,
    /// The bound process, or why binding failed (every call is refused then).
    process: Arc<Result<BoundProcess, PeerError>>,
    usage: Arc<Usage>,
    slow_stream_after: Duration,
}

impl Peer {
    /// The process that opened the connection, checked to still be that process; call after
    /// attesting its PID.
    pub fn verify(&self) -> Result<(), PeerError> {
        match &*self.process {
            Ok(process) => process.verify(),
            Err(e) => Err(e.clone()),
        }
    }

    /// The PID to attest, or why there is none.
    pub fn pid(&self) -> Result<i32, PeerError> {
        match &*self.process {
            Ok(process) => Ok(process.pid()),
            Err(e) => Err(e.clone()),
        }
    }

    /// The user and group IDs of the bound process as pinned at accept (see
    /// [`BoundProcess::credentials`]).
    pub fn credentials(&self) -> Result<&Credentials, PeerError> {
        match &*self.process {
            Ok(process) => Ok(process.credentials()),
            Err(e) => Err(e.clone()),
        }
    }

    /// A latest-message server stream counted against this caller's stream cap.
    pub fn open_stream<T>(&self) -> Result<(Publisher<T>, LatestStream<T>), LimitError> {
        let permit = self.usage.open_stream(self.uid)?;
        Ok(latest::channel(self.slow_stream_after, Some(permit)))
    }
}

/// Serves `routes` on `listener` until `cancel` fires, then lets open connections finish for
/// up to [`ServeConfig::drain`].
pub async fn serve(
    listener: UnixListener,
    routes: Routes,
    config: ServeConfig,
    cancel: CancellationToken,
) -> io::Result<()> {
    let mut limits = config.limits;
    limits.connections = connection_budget(limits.connections);
    // One user never takes every connection: another is always let in.
    limits.connections_per_uid = limits.connections_per_uid.min(limits.connections / 2);
    let usage = Usage::new(limits);
    let mut http = http2::Builder::new(TokioExecutor::new());
    http.timer(TokioTimer::new())
        .max_concurrent_streams(config.streams_per_connection)
        .max_send_buf_size(config.send_buffer_bytes)
        // Requests are small: one stream's worth of window is plenty for a whole connection.
        .initial_stream_window_size(64 * 1024)
        .initial_connection_window_size(256 * 1024)
        .max_header_list_size(16 * 1024);
    let connections = TaskTracker::new();
    let refusals = RateLimitedWarn::default();
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of file descriptors, most likely: wait rather than spin.
                    refusals.warn(|| warn!(error = %e, "accepting a connection failed"));
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = cancel.cancelled() => break,
        };
        let Some((peer, permit)) = admit(&stream, &usage, &config, &refusals) else {
            continue;
        };
        let routes = routes.clone();
        let service = TowerToHyperService::new(tower::service_fn(
            move |mut request: http::Request<Incoming>| {
                request.extensions_mut().insert(peer.clone());
                let routes = routes.clone();
                routes.oneshot(request)
            },
        ));
        let connection = http.serve_connection(TokioIo::new(AuthorityFix::new(stream)), service);
        let cancel = cancel.clone();
        connections.spawn(async move {
            let _permit = permit;
            tokio::pin!(connection);
            let result = tokio::select! {
                result = connection.as_mut() => result,
                _ = cancel.cancelled() => {
                    connection.as_mut().graceful_shutdown();
                    connection.await
                }
            };
            if let Err(e) = result {
                debug!(error = %e, "connection ended with an error");
            }
        });
    }
    connections.close();
    if tokio::time::timeout(config.drain, connections.wait())
        .await
        .is_err()
    {
        debug!("connections still open after the drain period; dropping them");
    }
    Ok(())
}

/// Binds the connection to its process and counts it; `None` (the connection is closed) when
/// over a cap. A connection whose process cannot be bound is still served, so that its calls
/// get a clear refusal rather than a reset.
fn admit(
    stream: &UnixStream,
    usage: &Arc<Usage>,
    config: &ServeConfig,
    refusals: &RateLimitedWarn,
) -> Option<(Peer, Permit)> {
    let cred = match stream.peer_cred() {
        Ok(cred) => cred,
        Err(e) => {
            debug!(error = %e, "no peer credentials; closing the connection");
            return None;
        }
    };
    let permit = match usage.open_connection(cred.uid()) {
        Ok(permit) => permit,
        Err(e) => {
            refusals.warn(|| warn!(uid = cred.uid(), error = %e, "connection refused"));
            return None;
        }
    };
    let process = BoundProcess::bind(stream, cred.pid(), cred.uid(), cred.gid());
    if let Err(e) = &process {
        debug!(pid = cred.pid(), error = %e, "caller could not be bound to its process");
    }
    let peer = Peer {
        uid: cred.uid(),
        process: Arc::new(process),
        usage: usage.clone(),
        slow_stream_after: config.slow_stream_after,
    };
    Some((peer, permit))
}

/// Each connection takes two descriptors (the socket and the caller's `/proc` directory), so
/// the agent's connections are capped below the descriptor limit, with [`RESERVED_FDS`] kept
/// back for everything else (the server link, the kubelet, key and state files, the health
/// listener): a flood of callers then meets the cap, never `EMFILE` in the server link. The
/// soft limit is first raised to the hard one ([`fd_limit::raise`]), as Go programs (SPIRE)
/// do at start.
fn connection_budget(configured: usize) -> usize {
    let limit = fd_limit::raise().now;
    let budget = usize::try_from(limit.saturating_sub(RESERVED_FDS) / 2).unwrap_or(usize::MAX);
    if budget < configured {
        warn!(
            fd_limit = limit,
            connections = budget,
            "the file descriptor limit caps Workload API connections below the default"
        );
    }
    configured.min(budget)
}

/// Logs a refusal at most once a minute, so a flood cannot flood the log too.
#[derive(Debug, Default)]
struct RateLimitedWarn {
    last: AtomicU64,
}

impl RateLimitedWarn {
    fn warn(&self, log: impl FnOnce()) {
        let now = u64::try_from(unix_now()).unwrap_or(0);
        let last = self.last.load(Ordering::Relaxed);
        if now >= last + 60
            && self
                .last
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            log();
        }
    }
}
