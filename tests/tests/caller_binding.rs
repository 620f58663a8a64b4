//! A Workload API connection is answered for the process that opened it, as it was when it
//! opened it (issue 15, item 1). An unprivileged user (uid 65534) opens a connection, hands it
//! to a child (`caller-switch`, a test binary) and then
//! - execs a setuid-root binary (`passwd`, which then waits for a password): the child's next
//!   call must not be attested as root;
//! - exits, and a root process is given its PID (`/proc/sys/kernel/ns_last_pid`): the
//!   leftover connection must not be served root's identity;
//! - execs a plain binary registered by `unix:path`: the connection must not get that
//!   binary's identity.
//!
//! Envoy SDS on the same socket is held to the same binding. Before the fix, the first two
//! obtained root's SVID and key. Root and `setpriv` needed.

use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::Duration;

use serde_json::Value;
use sigil_testkit::{
    Agent, Server, ServerOptions, attested_agent, bin_dir, register_uid, wait_for,
};

const ROOT_ID: &str = "spiffe://example.org/root-only";
const NOBODY_ID: &str = "spiffe://example.org/nobody";
const NOBODY: u32 = 65534;
/// gRPC `UNAUTHENTICATED`: SPIRE's code for "could not verify existence of the original caller".
const UNAUTHENTICATED: i64 = 16;

fn can_run() -> bool {
    let root = nix::unistd::geteuid().is_root();
    let setpriv = Command::new("setpriv").arg("--version").output().is_ok();
    if !(root && setpriv) {
        eprintln!("NOTICE: caller-binding attacks need root and setpriv; skipped");
    }
    root && setpriv
}

/// A server and an attested agent reachable by uid 65534, with entries for root and for uid
/// 65534, and the agent holding root's SVID (so that a successful attack would get it).
fn setup(discover_workload_path: bool) -> (Server, Agent, String) {
    let server = Server::start(ServerOptions::default());
    let (mut agent, agent_id) = attested_agent(&server, true);
    if discover_workload_path {
        agent.discover_workload_path();
        agent.stop();
        agent.spawn(None);
    }
    register_uid(&server, ROOT_ID, &agent_id, 0, &[]);
    agent.wait_for_ids("root's SVID", &[ROOT_ID], Duration::from_secs(30));
    (server, agent, agent_id)
}

/// `caller-switch` run as uid 65534, driven through its child's command FIFO.
struct Attack {
    parent: Child,
    parent_stdin: Option<ChildStdin>,
    commands: File,
    results: BufReader<ChildStdout>,
    _dir: tempfile::TempDir,
    transcript: Vec<Value>,
}

impl Attack {
    fn start(socket: &Path, then: &[&str]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let fifo = dir.path().join("commands");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o666)).unwrap();
        std::fs::set_permissions(&fifo, std::fs::Permissions::from_mode(0o666)).unwrap();
        let mut parent = Command::new("setpriv")
            .args([
                &format!("--reuid={NOBODY}"),
                &format!("--regid={NOBODY}"),
                "--clear-groups",
            ])
            .arg(bin_dir().join("caller-switch"))
            .arg("parent")
            .arg(socket)
            .arg(&fifo)
            .args(then)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let results = BufReader::new(parent.stdout.take().unwrap());
        // Opening the write end waits for the child to open the read end.
        let commands = File::options().write(true).open(&fifo).unwrap();
        Self {
            parent_stdin: parent.stdin.take(),
            parent,
            commands,
            results,
            _dir: dir,
            transcript: Vec::new(),
        }
    }

    fn pid(&self) -> i32 {
        self.parent.id() as i32
    }

    fn send(&mut self, command: &str) -> Value {
        writeln!(self.commands, "{command}").unwrap();
        self.commands.flush().unwrap();
        let mut line = String::new();
        self.results.read_line(&mut line).unwrap();
        let value: Value = serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("{command}: bad result line {line:?}: {e}"));
        self.transcript.push(value.clone());
        value
    }

    /// Fetches until the agent has the entry just created for the attacking user (it reaches
    /// the agent a few milliseconds after `entry create` returns): the SPIFFE IDs then.
    fn fetch_when_registered(&mut self) -> Vec<String> {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            let result = self.send("fetch");
            if result["ids"].is_array() {
                return ids(&result);
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the attacking user's entry never reached the agent: {result}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Lets the parent exec its program.
    fn release(&mut self) {
        let stdin = self.parent_stdin.as_mut().unwrap();
        writeln!(stdin, "go").unwrap();
        stdin.flush().unwrap();
    }

    /// Nothing the attack received carried `id`.
    fn assert_never_got(&self, id: &str) {
        let text = serde_json::to_string(&self.transcript).unwrap();
        assert!(!text.contains(id), "the attack obtained {id}: {text}");
    }
}

impl Drop for Attack {
    fn drop(&mut self) {
        let _ = writeln!(self.commands, "exit");
        let _ = self.parent.kill();
        let _ = self.parent.wait();
    }
}

fn ids(result: &Value) -> Vec<String> {
    result["ids"]
        .as_array()
        .unwrap_or_else(|| panic!("expected SVIDs, got {result}"))
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect()
}

fn assert_refused(result: &Value, reason: &str) {
    assert_eq!(result["code"].as_i64(), Some(UNAUTHENTICATED), "{result}");
    let message = result["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("could not verify existence of the original caller")
            && message.contains(reason),
        "{result}"
    );
}

fn exe_of(pid: i32) -> Option<PathBuf> {
    std::fs::read_link(format!("/proc/{pid}/exe")).ok()
}

#[test]
fn a_setuid_exec_after_connecting_gains_nothing() {
    if !can_run() {
        return;
    }
    let (server, agent, agent_id) = setup(false);
    register_uid(&server, NOBODY_ID, &agent_id, NOBODY, &[]);

    let mut attack = Attack::start(&agent.socket, &["exec", "/usr/bin/passwd"]);
    // Before the exec the connection serves its own user, on a call and on a stream, over the
    // Workload API and over SDS.
    assert_eq!(attack.fetch_when_registered(), [NOBODY_ID]);
    assert_eq!(ids(&attack.send("stream")), [NOBODY_ID]);
    let sds = ["spiffe://example.org", NOBODY_ID];
    assert_eq!(ids(&attack.send("sds")), sds);
    assert_eq!(ids(&attack.send("sds-stream")), sds);

    attack.release();
    let pid = attack.pid();
    wait_for("passwd to run as root", Duration::from_secs(10), || {
        let exe = exe_of(pid)?;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let euid_root = status
            .lines()
            .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(2) == Some("0"));
        (exe == Path::new("/usr/bin/passwd") && euid_root).then_some(())
    });

    // The process that connected now runs as root: its connection gets nothing at all.
    assert_refused(&attack.send("fetch"), "changed its user or group IDs");
    // The open stream ends at its next update instead of going on.
    register_uid(
        &server,
        "spiffe://example.org/nobody-two",
        &agent_id,
        NOBODY,
        &[],
    );
    assert_refused(&attack.send("next"), "changed its user or group IDs");
    assert_refused(&attack.send("sds"), "changed its user or group IDs");
    assert_refused(&attack.send("sds-next"), "changed its user or group IDs");
    attack.assert_never_got(ROOT_ID);
    assert!(
        agent
            .log()
            .contains("could not verify existence of the original caller"),
        "the refusal is logged"
    );
}

#[test]
fn a_connection_left_by_an_exited_process_gets_nothing_even_when_root_reuses_its_pid() {
    if !can_run() {
        return;
    }
    let (_server, agent, _agent_id) = setup(false);

    let mut attack = Attack::start(&agent.socket, &["exit"]);
    let pid = attack.pid();
    assert!(attack.parent.wait().unwrap().success());
    assert_refused(&attack.send("fetch"), "has exited");

    // Give the PID to a root process that the agent would attest as root.
    let mut root_process = None;
    for _ in 0..50 {
        if std::fs::write("/proc/sys/kernel/ns_last_pid", (pid - 1).to_string()).is_err() {
            break;
        }
        let mut child = Command::new("sleep").arg("60").spawn().unwrap();
        if child.id() as i32 == pid {
            root_process = Some(child);
            break;
        }
        let _ = child.kill();
        let _ = child.wait();
    }
    let Some(mut root_process) = root_process else {
        panic!("could not give PID {pid} to a root process through /proc/sys/kernel/ns_last_pid");
    };
    assert_refused(&attack.send("fetch"), "has exited");
    assert_refused(&attack.send("sds"), "has exited");
    attack.assert_never_got(ROOT_ID);
    let _ = root_process.kill();
    let _ = root_process.wait();
}

#[test]
fn an_exec_of_another_binary_does_not_get_that_binary_identity() {
    if !can_run() {
        return;
    }
    let (server, agent, agent_id) = setup(true);
    let switch = bin_dir().join("caller-switch");
    let as_binary = |id: &str, path: &str| {
        let uid_selector = format!("unix:uid:{NOBODY}");
        let path_selector = format!("unix:path:{path}");
        server.cli_ok(&[
            "entry",
            "create",
            "-spiffeID",
            id,
            "-parentID",
            &agent_id,
            "-selector",
            &uid_selector,
            "-selector",
            &path_selector,
        ]);
    };
    as_binary("spiffe://example.org/switch", switch.to_str().unwrap());
    as_binary("spiffe://example.org/sleeper", "/usr/bin/sleep");

    let mut attack = Attack::start(&agent.socket, &["exec", "/usr/bin/sleep", "60"]);
    assert_eq!(
        attack.fetch_when_registered(),
        ["spiffe://example.org/switch"]
    );
    attack.release();
    let pid = attack.pid();
    wait_for("the exec of sleep", Duration::from_secs(10), || {
        (exe_of(pid)? == Path::new("/usr/bin/sleep")).then_some(())
    });
    assert_refused(&attack.send("fetch"), "executed another binary");
    attack.assert_never_got("spiffe://example.org/sleeper");
}
