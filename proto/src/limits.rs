//! gRPC message limits of Sigil's own APIs, defined once for both ends so a client never
//! accepts less than its server sends (or sends more than it accepts). The values are
//! deliberate: each bounds what one message may cost in memory, with room over the biggest
//! legitimate message. A message over a limit is refused with `OUT_OF_RANGE` ("message length
//! too large"), never truncated. (The Workload API's limits live with it, in the agent.)

/// The admin API (`sigil-server` CLI over the Unix socket), both directions. The biggest
/// legitimate message is a `BatchCreateEntry` of 10,000 typical entries (~3 MiB) or of fewer,
/// fatter ones; 64 MiB admits a batch of 50,000 entries of ~1 KiB while bounding what one call
/// (from the server's own user only) can make the server allocate.
pub const ADMIN_API_MAX_MESSAGE: usize = 64 << 20;

/// The agent API (agents over mTLS), both directions. Its biggest messages are a sync page
/// (at most [`SYNC_PAGE_BYTES`] of entries, plus a bundle) and a batch of 1,000 SVIDs
/// (~2 MiB); 16 MiB leaves room for both while keeping what an agent, or the server for each
/// of thousands of agents, must buffer small.
pub const AGENT_API_MAX_MESSAGE: usize = 16 << 20;

/// Most encoded entry bytes in one `SyncEntries` message: the server starts a new page before
/// crossing it, so pages stay well under [`AGENT_API_MAX_MESSAGE`] whatever the entries hold.
pub const SYNC_PAGE_BYTES: usize = 4 << 20;

/// Largest encoded registration entry the admin API accepts. Any entry then fits in a sync
/// page, however many DNS names or selectors it has (1,000 DNS names is ~60 KiB).
pub const MAX_ENTRY_BYTES: usize = 256 << 10;

// The bounds above hold together: a page (its last entry may start just under the page limit)
// with its bundle stays under the agent API's limit.
const _: () = assert!(SYNC_PAGE_BYTES + MAX_ENTRY_BYTES < AGENT_API_MAX_MESSAGE / 2);
const _: () = assert!(MAX_ENTRY_BYTES < ADMIN_API_MAX_MESSAGE);
