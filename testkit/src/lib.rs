//! Sigil's test kit: starts the real `sigil-server` and `sigil-agent` binaries (and what they
//! talk to: PostgreSQL, a kube-apiserver, a test kubelet) on temporary directories, drives them
//! as an operator and a workload would, through the CLI and sockets, and checks the results
//! with independent verifiers (openssl, sqlite3, Python SPIFFE clients).
//!
//! One kit for every crate that runs the binaries: the end-to-end tests (`tests/`, which also
//! cover the zero-trust example's services), the benchmark (`bench/`, a dev tool, never
//! shipped), and the server's own tests (throwaway PostgreSQL, the TLS client of the listener
//! tests, `openssl verify`). It is never a dependency of a shipped binary: `sigil-server` and
//! `sigil-agent` have it as a dev-dependency at most.
//!
//! | module | job |
//! |---|---|
//! | [`binaries`] | where the built binaries are |
//! | [`process`] | a started child process with its log, one run until it exits; waiting for things |
//! | [`config`] | the config files the kit writes (`server.conf`, `agent.conf`) and edits of them |
//! | [`server`], [`agent`] | a running server / agent on a temp dir |
//! | [`cli`] | the binaries' CLIs as an operator uses them (join tokens, entries, fetches) |
//! | [`net`], [`tls`], [`proxy`] | loopback ports, a minimal HTTP GET, a TLS client that accepts any server, a TCP proxy a test can cut |
//! | [`admin`], [`workload`], [`agent_link`] | gRPC straight to the admin API, the Workload API, and the agent API as an attested agent |
//! | [`verify`], [`python`], [`go`] | independent verifiers: openssl, sqlite3, PEM; the Python SPIFFE clients; the Go test clients of `tests/go`, built on demand |
//! | [`postgres`], [`k8s`], [`kubelet`], [`tmpfs`] | what the binaries run against: PostgreSQL, a real kube-apiserver, a test kubelet, a small tmpfs |
//! | [`runtime`] | tokio runtimes for a test's async part |
#![forbid(unsafe_code)]

pub mod admin;
pub mod agent;
pub mod agent_link;
pub mod binaries;
pub mod cli;
pub mod config;
pub mod federation;
pub mod go;
pub mod k8s;
pub mod kubelet;
pub mod net;
pub mod postgres;
pub mod process;
pub mod proxy;
pub mod python;
pub mod runtime;
pub mod server;
pub mod spire;
pub mod tls;
pub mod tmpfs;
pub mod verify;
pub mod workload;

pub use crate::agent::Agent;
pub use crate::binaries::{agent_bin, bin_dir, server_bin};
pub use crate::cli::{
    attested_agent, created_entry_id, id_text, listed_agent_ids, register, register_uid,
    shown_entries,
};
pub use crate::config::{AgentOptions, ServerOptions};
pub use crate::net::{free_port, http_get, http_request};
pub use crate::process::{Process, run_to_exit, wait_child, wait_for};
pub use crate::python::python;
pub use crate::runtime::{multi_thread_rt, rt};
pub use crate::server::Server;
pub use crate::verify::{openssl, pem_certs, self_signed_serving_cert, sqlite3};

/// The effective uid of this test process (what `unix:uid:` selectors of its workloads name).
pub fn uid() -> u32 {
    nix::unistd::geteuid().as_raw()
}

/// The other user of the tests that act as someone else (nobody).
pub const OTHER_UID: u32 = 65534;

/// Whether this test can act as [`OTHER_UID`] (root, with util-linux `setpriv`); says so on
/// stderr when it cannot, so the test can skip that part.
pub fn can_switch_user() -> bool {
    let ok = nix::unistd::geteuid().is_root()
        && std::process::Command::new("setpriv")
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success());
    if !ok {
        eprintln!("NOTICE: not root or no setpriv: the other-user cases are skipped");
    }
    ok
}

/// Now, in seconds since the Unix epoch.
pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs() as i64
}
