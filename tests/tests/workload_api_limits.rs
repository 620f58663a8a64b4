//! What one local caller can hold of the agent through the Workload API socket (issue 15,
//! item 5). A caller opens 20 connections with 100 FetchX509SVID streams each, announces a
//! 2 GiB flow-control window and then never reads its socket, while 30 entry updates change
//! what every stream should receive. Before the fix this took the agent from 12 MB to
//! 1.85 GB, and 1.84 GB stayed after the caller left. Now the agent's RSS stays bounded
//! during the attack and comes back to within a few MiB of where it was once the caller
//! leaves; another user is served throughout. The figures are printed (README "Security
//! defaults").

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use sigil_testkit::{Server, ServerOptions, agent_bin, attested_agent, register_uid};

const CONNECTIONS: usize = 20;
const STREAMS_PER_CONNECTION: u32 = 100;
const UPDATES: usize = 30;

/// One HTTP/2 frame.
fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut out = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// An HPACK header block of literal fields without indexing (no Huffman coding).
fn header_block(fields: &[(&str, &str)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, value) in fields {
        out.push(0x00);
        out.push(name.len() as u8);
        out.extend_from_slice(name.as_bytes());
        out.push(value.len() as u8);
        out.extend_from_slice(value.as_bytes());
    }
    out
}

/// A connection that asks for `streams` FetchX509SVID streams with a window of 2^31-1 bytes,
/// and that the caller never reads from.
fn greedy_connection(socket: &Path, streams: u32) -> UnixStream {
    let mut conn = UnixStream::connect(socket).expect("connect");
    let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    // SETTINGS_INITIAL_WINDOW_SIZE = 2^31-1, and the connection window raised to match.
    out.extend(frame(0x4, 0, 0, &[0x00, 0x04, 0x7f, 0xff, 0xff, 0xff]));
    out.extend(frame(0x8, 0, 0, &(0x7fff_ffffu32 - 65_535).to_be_bytes()));
    let block = header_block(&[
        (":method", "POST"),
        (":scheme", "http"),
        (":path", "/SpiffeWorkloadAPI/FetchX509SVID"),
        (":authority", "localhost"),
        ("content-type", "application/grpc"),
        ("te", "trailers"),
        ("workload.spiffe.io", "true"),
    ]);
    for i in 0..streams {
        let id = 2 * i + 1;
        out.extend(frame(0x1, 0x4, id, &block)); // HEADERS, END_HEADERS
        out.extend(frame(0x0, 0x1, id, &[0, 0, 0, 0, 0])); // an empty request, END_STREAM
    }
    conn.write_all(&out).expect("send requests");
    conn
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("VmRSS")
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

#[test]
fn a_caller_that_never_reads_cannot_pin_the_agents_memory() {
    let server = Server::start(ServerOptions::default());
    let (agent, agent_id) = attested_agent(&server, true);
    let me = nix::unistd::geteuid().as_raw();
    register_uid(&server, "spiffe://example.org/greedy", &agent_id, me, &[]);
    agent.wait_for_ids(
        "the SVID",
        &["spiffe://example.org/greedy"],
        Duration::from_secs(30),
    );
    let other_user = me == 0 && Command::new("setpriv").arg("--version").output().is_ok();
    if other_user {
        register_uid(
            &server,
            "spiffe://example.org/bystander",
            &agent_id,
            65534,
            &[],
        );
    }
    let pid = agent.pid().unwrap();
    // Warm up the paths the attack takes, then read the baseline.
    for _ in 0..20 {
        agent.fetched_x509();
    }
    std::thread::sleep(Duration::from_secs(1));
    let before = rss_kib(pid);

    let connections: Vec<UnixStream> = (0..CONNECTIONS)
        .map(|_| greedy_connection(&agent.socket, STREAMS_PER_CONNECTION))
        .collect();
    std::thread::sleep(Duration::from_secs(2));
    // Every update changes what each stream should receive (one more SVID each time).
    let mut peak = rss_kib(pid);
    for i in 0..UPDATES {
        register_uid(
            &server,
            &format!("spiffe://example.org/greedy/{i}"),
            &agent_id,
            me,
            &[],
        );
        peak = peak.max(rss_kib(pid));
    }
    let settle = Instant::now() + Duration::from_secs(10);
    while Instant::now() < settle {
        peak = peak.max(rss_kib(pid));
        std::thread::sleep(Duration::from_millis(200));
    }
    // Another user is still served while the attack holds what it may.
    if other_user {
        let out = Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(agent_bin())
            .args(["api", "fetch", "x509", "-socketPath"])
            .arg(&agent.socket)
            .output()
            .unwrap();
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("spiffe://example.org/bystander"),
            "another user is served during the attack: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    drop(connections);
    // The agent lets go of everything the caller held.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut after = rss_kib(pid);
    while after > before + 8 * 1024 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(500));
        after = rss_kib(pid);
    }
    println!(
        "agent RSS: before {:.1} MiB, peak during {} streams x {} updates {:.1} MiB, after {:.1} MiB",
        mib(before),
        CONNECTIONS * STREAMS_PER_CONNECTION as usize,
        UPDATES,
        mib(peak),
        mib(after),
    );
    assert!(
        after <= before + 8 * 1024,
        "agent RSS {:.1} MiB after the caller left, {:.1} MiB before",
        mib(after),
        mib(before)
    );
    assert!(
        peak <= before + 100 * 1024,
        "agent RSS grew from {:.1} MiB to {:.1} MiB during the attack",
        mib(before),
        mib(peak)
    );
    // Still serving its own workloads.
    agent.wait_for_ids(
        "the SVIDs after the attack",
        &["spiffe://example.org/greedy/29"],
        Duration::from_secs(10),
    );
}

#[test]
fn a_connection_flood_meets_the_cap_not_the_file_descriptor_limit() {
    let root = nix::unistd::geteuid().is_root();
    if !root || Command::new("setpriv").arg("--version").output().is_err() {
        eprintln!("NOTICE: needs root and setpriv (a second user); skipped");
        return;
    }
    let server = Server::start(ServerOptions::default());
    let (mut agent, agent_id) = attested_agent(&server, true);
    // 400 descriptors: 256 kept back, 72 connections of two descriptors each, 36 per user.
    agent.stop();
    agent.spawn_under(&["prlimit", "--nofile=400:400", "--"], None);
    register_uid(&server, "spiffe://example.org/flooder", &agent_id, 0, &[]);
    register_uid(
        &server,
        "spiffe://example.org/bystander",
        &agent_id,
        65534,
        &[],
    );
    agent.wait_for_ids(
        "the SVID",
        &["spiffe://example.org/flooder"],
        Duration::from_secs(30),
    );
    let bystander_fetch = || {
        let out = Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(agent_bin())
            .args(["api", "fetch", "x509", "-socketPath"])
            .arg(&agent.socket)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };

    let flood: Vec<UnixStream> = (0..600)
        .filter_map(|_| UnixStream::connect(&agent.socket).ok())
        .collect();
    std::thread::sleep(Duration::from_secs(1));
    let pid = agent.pid().unwrap();
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count();
    assert!(
        fds < 400 - 100,
        "the agent holds {fds} descriptors under the flood"
    );
    // Another user is served, and the agent still syncs from the server.
    assert!(bystander_fetch().contains("spiffe://example.org/bystander"));
    register_uid(
        &server,
        "spiffe://example.org/bystander/new",
        &agent_id,
        65534,
        &[],
    );
    sigil_testkit::wait_for(
        "the new entry to reach the bystander",
        Duration::from_secs(20),
        || {
            bystander_fetch()
                .contains("spiffe://example.org/bystander/new")
                .then_some(())
        },
    );
    assert!(
        !agent.log().contains("Too many open files"),
        "the flood reached the descriptor limit"
    );
    drop(flood);
    agent.wait_for_ids(
        "the flooding user served again",
        &["spiffe://example.org/flooder"],
        Duration::from_secs(10),
    );
}
