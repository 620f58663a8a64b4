//! FetchX509SVID responses reused between callers with the same selectors. A response is a
//! pure function of (snapshot, selectors), so it is built once per selector set and snapshot
//! and dropped as soon as a newer snapshot is published: an entry, SVID or bundle change is
//! seen by the next call. Callers with different selectors (another uid, another pod) never
//! share an entry; attestation still runs on every call.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use sigil_proto::Selector;
use sigil_proto::workload::X509svidResponse;

use super::handler::RequestError;
use crate::cache::{RenderedKey, Snapshot};

/// Beyond this many selector sets per snapshot the cache starts over (bounds memory when
/// many distinct workloads call between two snapshot changes).
const MAX_ENTRIES: usize = 1024;

/// A built response and the template instances it holds, whose demand each use refreshes.
/// No `Debug`: the response holds private keys.
pub(crate) struct Built {
    /// Shared by every stream that sends it.
    pub response: Option<Arc<X509svidResponse>>,
    pub wanted: Vec<RenderedKey>,
}

/// The responses built from one snapshot.
#[derive(Default)]
struct Generation {
    /// Held so the snapshot's address cannot be reused by a newer one while we compare.
    snapshot: Option<Arc<Snapshot>>,
    by_selectors: HashMap<Vec<Selector>, Arc<Built>>,
}

#[derive(Default)]
pub(crate) struct X509ResponseCache {
    current: Mutex<Generation>,
}

impl std::fmt::Debug for X509ResponseCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Responses hold private keys: only say how many there are.
        let entries = self.lock().by_selectors.len();
        f.debug_struct("X509ResponseCache")
            .field("entries", &entries)
            .finish()
    }
}

impl X509ResponseCache {
    /// The response for `selectors` under `snapshot`: reused when built from this very
    /// snapshot, else made by `build` (errors are not kept: they are cheap and rare).
    pub(super) fn get_or_build(
        &self,
        snapshot: &Arc<Snapshot>,
        selectors: &[Selector],
        build: impl FnOnce() -> Result<Built, RequestError>,
    ) -> Result<Arc<Built>, RequestError> {
        {
            let current = self.lock();
            let same = current
                .snapshot
                .as_ref()
                .is_some_and(|s| Arc::ptr_eq(s, snapshot));
            if let Some(built) = same.then(|| current.by_selectors.get(selectors)).flatten() {
                return Ok(built.clone());
            }
        }
        // Built outside the lock: callers with other selectors are not held up.
        let built = Arc::new(build()?);
        let mut current = self.lock();
        let same = current
            .snapshot
            .as_ref()
            .is_some_and(|s| Arc::ptr_eq(s, snapshot));
        if !same {
            // A call still answering from an older snapshot may briefly evict the current
            // generation; the next call rebuilds it. Entries never outlive their snapshot.
            *current = Generation {
                snapshot: Some(snapshot.clone()),
                by_selectors: HashMap::new(),
            };
        }
        if current.by_selectors.len() >= MAX_ENTRIES {
            current.by_selectors.clear();
        }
        current
            .by_selectors
            .insert(selectors.to_vec(), built.clone());
        Ok(built)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Generation> {
        // Each write replaces or inserts whole values: consistent even after a panic.
        self.current.lock().unwrap_or_else(PoisonError::into_inner)
    }
}
