//! Tokio runtimes for a test's async part (the tests themselves are plain `#[test]`s that
//! start processes and wait on them).

use tokio::runtime::Runtime;

/// A single-threaded runtime.
pub fn rt() -> Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// A runtime with two worker threads, for tests that run clients side by side.
pub fn multi_thread_rt() -> Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}
