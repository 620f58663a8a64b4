//! What the server's `/ready` (and the admin API's `Health`) report, and the datastore write
//! probe whose last result readiness reflects. The `/live` `/ready` `/metrics` endpoints and
//! their listener are `sigil_common::ops`'s.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use sigil_common::ops::ReadinessCheck;
use tokio_util::sync::CancellationToken;

use crate::datastore::Datastore;

/// How often the datastore's write probe runs ([`probe_datastore`]): readiness reflects the
/// last result, so it turns within this period of the datastore failing or recovering.
pub const DATASTORE_PROBE_PERIOD: Duration = Duration::from_secs(5);

/// What `/ready` (and the admin API's `Health`) report: started, and the datastore takes
/// writes.
#[derive(Debug, Default)]
pub struct Readiness {
    /// Flipped by the run loop once everything is up, and back at shutdown.
    started: AtomicBool,
    /// Why the last write probe failed; `None` while the datastore takes writes.
    datastore_fault: Mutex<Option<String>>,
}

impl Readiness {
    pub fn set(&self, ready: bool) {
        self.started.store(ready, Ordering::Release);
    }

    pub fn is_ready(&self) -> bool {
        self.started.load(Ordering::Acquire) && self.datastore_fault().is_none()
    }

    /// Why the datastore cannot take writes, as the last probe found; `None` when it can.
    pub fn datastore_fault(&self) -> Option<String> {
        self.fault().clone()
    }

    /// Records the last probe's result; returns whether that changed readiness.
    pub fn set_datastore_fault(&self, fault: Option<String>) -> bool {
        let mut current = self.fault();
        let changed = current.is_some() != fault.is_some();
        *current = fault;
        changed
    }

    fn fault(&self) -> std::sync::MutexGuard<'_, Option<String>> {
        // A plain value replaced whole: a poisoned lock still holds a consistent one.
        self.datastore_fault
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

/// Writes the datastore's probe ([`Datastore::probe_write`]) every `period` until `cancel`
/// fires, the first at once, and records each result in `readiness`. A change of state is
/// logged once: ERROR when writes start failing (an operator must act), INFO when they work
/// again.
pub async fn probe_datastore(
    datastore: Datastore,
    readiness: Arc<Readiness>,
    period: Duration,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = cancel.cancelled() => return Ok(()),
            _ = tick.tick() => {}
        }
        let fault = datastore.probe_write().await.err().map(|e| e.to_string());
        if readiness.set_datastore_fault(fault.clone()) {
            match fault {
                Some(error) => {
                    tracing::error!(%error, "the datastore cannot take writes; not ready")
                }
                None => tracing::info!("the datastore takes writes again; ready"),
            }
        }
    }
}

impl ReadinessCheck for Readiness {
    fn readiness(&self) -> Result<(), String> {
        // The fault's details (paths, database errors) go to the log and to the admin API's
        // `healthcheck`, not to this unauthenticated listener.
        if self.datastore_fault().is_some() {
            Err("not ready: the datastore cannot take writes".to_owned())
        } else if self.is_ready() {
            Ok(())
        } else {
            Err("not ready".to_owned())
        }
    }
}
