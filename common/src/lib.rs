//! sigil-common: what `sigil-server` and `sigil-agent` both need, written once. It knows
//! neither binary: each module serves both the same way.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod listener;
pub mod logging;
pub mod ops;
pub mod supervisor;
pub mod time;
pub mod tls;
pub mod uds;
