//! Registration entries and their change feed (`entry_events`).
//!
//! Every create, update and delete appends an event in the same transaction; an entry's
//! `revision` is the revision of its latest event. Agents sync by asking for the events after
//! the last revision they saw.
//!
//! - [`write`](mod@write): create, update, delete and prune, each with its events in one
//!   transaction.
//! - [`read`]: fetch, list (filtered, paged) and count, and the row decoding they share.
//! - [`events`]: the change feed itself: appending, listing and pruning events.

mod events;
mod read;
mod write;

pub(super) use events::LATEST_ENTRY_REVISION;
pub use events::{EntryEvent, EntryEventKind};
pub use read::EntryFilter;

#[cfg(test)]
pub(crate) mod tests;
