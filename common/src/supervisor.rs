//! The task supervisor both binaries run their long-lived components under, and the shutdown
//! signals that stop it.
//!
//! Each component is spawned with a name, runs in a tracing span of that name (`task{name=..}`
//! on every line it logs), and runs until the supervisor's cancellation token fires. `main`
//! waits ([`Supervisor::wait`]) for shutdown to be requested or for the first task to end, then
//! cancels the rest and drains them within a grace period ([`Supervisor::drain`]).
//!
//! What a task ending means: every supervised task is meant to run until shutdown is requested,
//! that is until the token is cancelled (by SIGTERM or SIGINT, [`cancel_on_signal`]). A task
//! that ends before that has failed, whether it returned an error or not: the process stops
//! with that error, or with "<name> stopped unexpectedly". A task that ends once shutdown has
//! been requested is draining: that is the normal end, and an error it returns then is logged
//! at WARN and does not change the exit status.

use std::collections::HashMap;
use std::future::Future;
use std::time::Duration;

use anyhow::Context as _;
use tokio::task::{Id, JoinError, JoinHandle, JoinSet};
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

/// A binary's long-lived tasks and the token that stops them.
#[derive(Debug, Default)]
pub struct Supervisor {
    tasks: JoinSet<anyhow::Result<()>>,
    names: HashMap<Id, &'static str>,
    cancel: CancellationToken,
}

impl Supervisor {
    /// No tasks yet, and a fresh token.
    pub fn new() -> Self {
        Self::default()
    }

    /// The token every task watches: cancelling it requests shutdown.
    pub fn token(&self) -> &CancellationToken {
        &self.cancel
    }

    /// Runs `task` on its own tokio task, in a span named `name`.
    pub fn spawn<F>(&mut self, name: &'static str, task: F)
    where
        F: Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        let span = tracing::info_span!("task", name);
        let handle = self.tasks.spawn(task.instrument(span));
        self.names.insert(handle.id(), name);
    }

    /// Waits until shutdown is requested (`Ok`) or a task ends first (the error it ended with,
    /// or why its ending is one; see the module doc).
    pub async fn wait(&mut self) -> anyhow::Result<()> {
        tokio::select! {
            biased;
            () = self.cancel.cancelled() => {
                tracing::info!("shutdown requested, draining");
                Ok(())
            }
            Some(joined) = self.tasks.join_next_with_id() => {
                let (name, result) = self.ended(joined);
                match result {
                    // The token may have fired as the task ended: then it is draining.
                    Ok(()) if self.cancel.is_cancelled() => Ok(()),
                    Ok(()) => Err(anyhow::anyhow!("{name} stopped unexpectedly")),
                    Err(e) => Err(e),
                }
            }
        }
    }

    /// Cancels the token, then waits up to `grace` for every task to end; an error a task
    /// ends with now is logged at WARN. Tasks still running after `grace` are left behind
    /// (the process is about to exit).
    pub async fn drain(mut self, grace: Duration) {
        self.cancel.cancel();
        let drained = tokio::time::timeout(grace, async {
            while let Some(joined) = self.tasks.join_next_with_id().await {
                let (name, result) = self.ended(joined);
                if let Err(e) = result {
                    tracing::warn!(task = name, error = %format!("{e:#}"), "task stopped with an error while draining");
                }
            }
        })
        .await;
        if drained.is_err() {
            tracing::warn!("drain grace period elapsed; exiting");
        }
    }

    /// The name and outcome of a task that ended; a panic is an error.
    fn ended(
        &mut self,
        joined: Result<(Id, anyhow::Result<()>), JoinError>,
    ) -> (&'static str, anyhow::Result<()>) {
        let (id, result) = match joined {
            Ok((id, result)) => (id, result),
            Err(e) => (e.id(), Err(e).context("task panicked")),
        };
        (self.names.remove(&id).unwrap_or("a task"), result)
    }
}

/// Cancels `token` at the first SIGTERM or SIGINT, watching from a task of its own so that a
/// signal is caught from now on, start-up included. Without signal handlers (the runtime could
/// not install them) the process runs until killed.
pub fn cancel_on_signal(token: CancellationToken) -> JoinHandle<()> {
    tokio::spawn(async move {
        shutdown_signal().await;
        tracing::info!("shutdown signal received");
        token.cancel();
    })
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn until_cancelled(
        token: &CancellationToken,
    ) -> impl Future<Output = anyhow::Result<()>> + use<> {
        let token = token.clone();
        async move {
            token.cancelled().await;
            Ok(())
        }
    }

    #[tokio::test]
    async fn shutdown_requested_is_ok_and_drains_every_task() {
        let mut s = Supervisor::new();
        s.spawn("one", until_cancelled(s.token()));
        s.spawn("two", until_cancelled(s.token()));
        s.token().cancel();
        assert!(s.wait().await.is_ok());
        s.drain(Duration::from_secs(5)).await;
    }

    #[tokio::test]
    async fn a_task_ending_before_shutdown_is_a_failure_with_or_without_an_error() {
        let mut s = Supervisor::new();
        s.spawn("steady", until_cancelled(s.token()));
        s.spawn("quitter", async { Ok(()) });
        let err = s.wait().await.unwrap_err();
        assert_eq!(err.to_string(), "quitter stopped unexpectedly");
        s.drain(Duration::from_secs(5)).await;

        let mut s = Supervisor::new();
        s.spawn("failing", async { Err(anyhow::anyhow!("disk on fire")) });
        assert_eq!(s.wait().await.unwrap_err().to_string(), "disk on fire");

        let mut s = Supervisor::new();
        s.spawn("panicking", async { panic!("boom") });
        assert_eq!(s.wait().await.unwrap_err().to_string(), "task panicked");
    }

    #[tokio::test]
    async fn a_task_stuck_past_the_grace_period_does_not_hold_the_drain() {
        let mut s = Supervisor::new();
        s.spawn("stuck", std::future::pending());
        let start = std::time::Instant::now();
        s.drain(Duration::from_millis(100)).await;
        assert!(start.elapsed() < Duration::from_secs(5));
    }
}
