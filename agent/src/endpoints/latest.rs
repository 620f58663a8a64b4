//! A server stream that holds at most one unsent message: the latest. Workload API streams
//! carry the caller's whole state in every message, so a client that reads slowly only ever
//! needs the newest one; a queue per stream would let a client that never reads pin every
//! update (2,000 such streams and 30 entry updates once took the agent to 1.85 GB).
//!
//! The producer [`publish`](Publisher::publish)es into a one-message slot, replacing a message
//! the client has not taken yet; when a message has been waiting longer than the stream's
//! `slow_after` and a newer one comes, the client cannot keep up and the stream is ended with
//! `RESOURCE_EXHAUSTED`. The consumer half holds the stream's [`Permit`], so the stream counts
//! against its user's cap for as long as HTTP/2 holds it, not just while it is produced.
//! Hand-written because no channel in tokio or futures replaces an unsent item and says how
//! long it has waited.

use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use futures::Stream;
use tokio::sync::Notify;
use tokio::time::Instant;
use tonic::Status;

use super::limits::Permit;

struct State<T> {
    /// The unsent message and since when a message has been waiting unsent. Shared: many
    /// streams send the same message, and each copy lives only while being encoded.
    slot: Option<(Result<Arc<T>, Status>, Instant)>,
    /// No message will follow the one in the slot.
    ended: bool,
    consumer_gone: bool,
    waker: Option<Waker>,
}

struct Shared<T> {
    state: Mutex<State<T>>,
    /// Wakes the producer when the consumer goes away.
    gone: Notify,
}

impl<T> Shared<T> {
    fn state(&self) -> std::sync::MutexGuard<'_, State<T>> {
        // Every update below is applied whole under the lock.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The producer half.
pub struct Publisher<T> {
    shared: Arc<Shared<T>>,
    slow_after: Duration,
}

/// The consumer half, handed to tonic as the response stream.
pub struct LatestStream<T> {
    shared: Arc<Shared<T>>,
    _permit: Option<Permit>,
}

/// The client has left a message unread for longer than the stream allows.
#[derive(Debug, PartialEq, Eq)]
pub struct Lagging;

/// A stream whose producer may keep one message waiting for up to `slow_after`; `permit`
/// (if any) is released when the stream is dropped.
pub fn channel<T>(slow_after: Duration, permit: Option<Permit>) -> (Publisher<T>, LatestStream<T>) {
    let shared = Arc::new(Shared {
        state: Mutex::new(State {
            slot: None,
            ended: false,
            consumer_gone: false,
            waker: None,
        }),
        gone: Notify::new(),
    });
    (
        Publisher {
            shared: shared.clone(),
            slow_after,
        },
        LatestStream {
            shared,
            _permit: permit,
        },
    )
}

impl<T> Publisher<T> {
    /// Offers `message`, replacing one the client has not taken yet. `Err(Lagging)` when the
    /// waiting one had been there longer than `slow_after` (the message is not queued then).
    pub fn publish(&self, message: Arc<T>) -> Result<(), Lagging> {
        let now = Instant::now();
        let mut state = self.shared.state();
        let since = match &state.slot {
            Some((_, since)) if now.duration_since(*since) > self.slow_after => {
                return Err(Lagging);
            }
            Some((_, since)) => *since,
            None => now,
        };
        state.slot = Some((Ok(message), since));
        wake(&mut state);
        Ok(())
    }

    /// How long a message may wait unread before the stream is dropped.
    pub fn slow_after(&self) -> Duration {
        self.slow_after
    }

    /// Ends the stream with `status`, dropping any message not yet taken.
    pub fn fail(self, status: Status) {
        let mut state = self.shared.state();
        state.slot = Some((Err(status), Instant::now()));
        state.ended = true;
        wake(&mut state);
    }

    /// Resolves when the client has gone away (the consumer half was dropped).
    pub async fn closed(&self) {
        loop {
            let notified = self.shared.gone.notified();
            if self.shared.state().consumer_gone {
                return;
            }
            notified.await;
        }
    }
}

impl<T> Drop for Publisher<T> {
    fn drop(&mut self) {
        let mut state = self.shared.state();
        state.ended = true;
        wake(&mut state);
    }
}

fn wake<T>(state: &mut State<T>) {
    if let Some(waker) = state.waker.take() {
        waker.wake();
    }
}

impl<T: Clone> Stream for LatestStream<T> {
    type Item = Result<T, Status>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let mut state = self.shared.state();
        if let Some((message, _)) = state.slot.take() {
            return Poll::Ready(Some(message.map(Arc::unwrap_or_clone)));
        }
        if state.ended {
            return Poll::Ready(None);
        }
        state.waker = Some(cx.waker().clone());
        Poll::Pending
    }
}

impl<T> Drop for LatestStream<T> {
    fn drop(&mut self) {
        self.shared.state().consumer_gone = true;
        self.shared.gone.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use futures::StreamExt as _;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_slow_reader_gets_only_the_latest_message() {
        let (tx, mut rx) = channel::<u32>(Duration::from_secs(30), None);
        tx.publish(Arc::new(1)).unwrap();
        tx.publish(Arc::new(2)).unwrap();
        tx.publish(Arc::new(3)).unwrap();
        assert_eq!(rx.next().await.unwrap().unwrap(), 3);
        tx.publish(Arc::new(4)).unwrap();
        assert_eq!(rx.next().await.unwrap().unwrap(), 4);
        drop(tx);
        assert!(rx.next().await.is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn a_reader_that_cannot_keep_up_is_reported_and_failed() {
        let (tx, mut rx) = channel::<u32>(Duration::from_secs(30), None);
        tx.publish(Arc::new(1)).unwrap();
        tokio::time::advance(Duration::from_secs(20)).await;
        // Replacing keeps the time the first unread message arrived.
        tx.publish(Arc::new(2)).unwrap();
        tokio::time::advance(Duration::from_secs(11)).await;
        assert_eq!(tx.publish(Arc::new(3)), Err(Lagging));
        tx.fail(Status::resource_exhausted("too slow"));
        let err = rx.next().await.unwrap().unwrap_err();
        assert_eq!(err.code(), tonic::Code::ResourceExhausted);
        assert!(rx.next().await.is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn a_reader_that_takes_each_message_is_never_lagging() {
        let (tx, mut rx) = channel::<u32>(Duration::from_secs(30), None);
        for i in 0..10 {
            tx.publish(Arc::new(i)).unwrap();
            assert_eq!(rx.next().await.unwrap().unwrap(), i);
            tokio::time::advance(Duration::from_secs(60)).await;
        }
    }

    #[tokio::test]
    async fn the_producer_learns_when_the_client_goes_away() {
        let (tx, rx) = channel::<u32>(Duration::from_secs(30), None);
        let waiter = tokio::spawn(async move { tx.closed().await });
        tokio::task::yield_now().await;
        drop(rx);
        tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .unwrap()
            .unwrap();
    }

    #[tokio::test]
    async fn the_permit_lives_as_long_as_the_consumer() {
        let usage = super::super::limits::Usage::new(super::super::limits::Limits {
            streams_per_uid: 1,
            ..Default::default()
        });
        let (tx, rx) = channel::<u32>(Duration::from_secs(30), Some(usage.open_stream(5).unwrap()));
        drop(tx);
        assert!(
            usage.open_stream(5).is_err(),
            "held while HTTP/2 holds the stream"
        );
        drop(rx);
        assert!(usage.open_stream(5).is_ok());
    }
}
