//! Server streams fed from the cache: one producer task per stream turns each cache snapshot
//! into the message the caller is due and sends it when it changed. Shared by every
//! snapshot-driven stream on the agent's sockets (the Workload API's and the Delegated
//! Identity API's), so they deliver updates, wait for first SVIDs and end the same way.

use std::sync::Arc;
use std::time::Duration;

use sigil_proto::Selector;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tonic::Status;
use tracing::debug;

use super::handler::{RequestError, error_chain};
use crate::cache::Snapshot;
use crate::endpoints::{Caller, LatestStream};

/// Where a stream's messages come from.
#[derive(Clone, Debug)]
pub(crate) struct StreamSource {
    pub cache_rx: watch::Receiver<Arc<Snapshot>>,
    /// Fires when the agent stops.
    pub cancel: CancellationToken,
    /// How long a stream with nothing to send yet (entries match, no SVID minted) waits before
    /// it fails with `Unavailable`.
    pub svid_wait: Duration,
}

/// Spawns the producer of a server stream: `build` turns each snapshot, with the caller's
/// selectors, into the message to send (`Ok(None)`: nothing to send yet). The first message
/// goes out at once, then one per snapshot change that changes the message, each after
/// checking that the connection's process is still the one that opened it. A client that reads
/// slowly gets only the latest message; one that leaves a message unread too long while newer
/// ones come is dropped (`endpoints::latest`). Ends with the error `build` returns, quietly
/// when the client goes away, and with `Unavailable` when the agent stops.
pub(crate) fn spawn<T, E, F>(
    source: &StreamSource,
    caller: Caller,
    method: &'static str,
    build: F,
) -> Result<LatestStream<T>, E>
where
    T: Clone + PartialEq + Send + Sync + 'static,
    E: From<RequestError> + Into<Status> + std::error::Error + Send + 'static,
    F: Fn(&Arc<Snapshot>, &[Selector]) -> Result<Option<Arc<T>>, E> + Send + 'static,
{
    let (publisher, stream) = caller
        .peer
        .open_stream()
        .map_err(|e| E::from(RequestError::TooManyStreams(e)))?;
    let slow_after = publisher.slow_after();
    let mut cache_rx = source.cache_rx.clone();
    let cancel = source.cancel.clone();
    let deadline = Instant::now() + source.svid_wait;
    tokio::spawn(async move {
        let Caller {
            pid,
            selectors,
            peer,
        } = caller;
        let mut last: Option<Arc<T>> = None;
        let end: Option<E> = loop {
            let snapshot = cache_rx.borrow_and_update().clone();
            match build(&snapshot, &selectors) {
                Err(err) => break Some(err),
                Ok(Some(message)) if !last.as_ref().is_some_and(|l| same(l, &message)) => {
                    // The first message follows the check made when the call came in.
                    if last.is_some()
                        && let Err(e) = peer.verify()
                    {
                        break Some(RequestError::Peer(e).into());
                    }
                    debug!(method, pid, "stream update");
                    if publisher.publish(message.clone()).is_err() {
                        break Some(RequestError::SlowReader(slow_after).into());
                    }
                    // Each message is the full state: the last one is all we compare with.
                    last = Some(message);
                }
                Ok(Some(_)) => {}
                // Entries match but no SVID is minted yet: wait, but not forever.
                Ok(None) if last.is_none() && Instant::now() >= deadline => {
                    break Some(RequestError::SvidNotReady.into());
                }
                Ok(None) => {}
            }
            tokio::select! {
                changed = cache_rx.changed() => {
                    if changed.is_err() {
                        break Some(RequestError::ShuttingDown.into());
                    }
                }
                _ = tokio::time::sleep_until(deadline), if last.is_none() => {}
                _ = publisher.closed() => break None,
                _ = cancel.cancelled() => break Some(RequestError::ShuttingDown.into()),
            }
        };
        if let Some(err) = end {
            debug!(method, pid, error = %error_chain(&err), "stream ended");
            publisher.fail(err.into());
        }
    });
    Ok(stream)
}

/// Whether two stream messages are the same (shared ones are compared by address first).
fn same<T: PartialEq>(a: &Arc<T>, b: &Arc<T>) -> bool {
    Arc::ptr_eq(a, b) || a == b
}
