//! Issue 15 items 3 and 7: the admin socket, attacked with the real binaries.
//!
//! - A second `sigil-server run` with a running server's socket path (with a clashing port, and
//!   with a free one) exits non-zero naming the port or the socket, and the first server keeps
//!   its socket (same inode) and serves its CLI; a stale socket (its server killed) is still
//!   replaced.
//! - The server refuses a socket directory that another user (uid 65534) created, one under a
//!   parent another user owns, a group-writable one, and a symbolic link (whose target it must
//!   not chmod), leaving no socket behind.
//! - Every CLI command refuses a "server" listening as another user (a Python listener run as
//!   uid 65534) before sending it a byte.
//!
//! The other-user cases need root and util-linux `setpriv`; without them they say so and return.

use std::io::{BufRead, BufReader};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use sigil_testkit::{OTHER_UID, Server, ServerOptions, can_switch_user, server_bin, wait_for};

/// A stopped server whose config the test rewrites, with the text of that config.
fn stopped_server() -> (Server, String) {
    let mut server = Server::start(ServerOptions::default());
    assert!(server.stop().success());
    let conf = std::fs::read_to_string(&server.config).unwrap();
    (server, conf)
}

/// `conf` with the admin socket at `socket` and the agent API on `port`.
fn with_socket_and_port(server: &Server, conf: &str, socket: &Path, port: u16) -> String {
    let old_socket = format!("socket_path = \"{}\"", server.socket.display());
    let old_port = format!("bind_port = \"{}\"", server.bind_port);
    assert!(
        conf.contains(&old_socket) && conf.contains(&old_port),
        "{conf}"
    );
    conf.replace(
        &old_socket,
        &format!("socket_path = \"{}\"", socket.display()),
    )
    .replace(&old_port, &format!("bind_port = \"{port}\""))
}

/// Runs `sigil-server run` on `conf` (written beside `server`'s config as `name`), which must
/// exit within 30 s; returns its status and output.
fn run_to_exit(server: &Server, name: &str, conf: &str) -> (ExitStatus, String) {
    let config = server.dir.path().join(name);
    std::fs::write(&config, conf).unwrap();
    let log = server.dir.path().join(format!("{name}.log"));
    let mut command = Command::new(server_bin());
    command.args(["run", "-config"]).arg(&config);
    let (status, output) = sigil_testkit::run_to_exit(command, &log, Duration::from_secs(30));
    let Some(status) = status else {
        panic!("{name}: the server started instead of refusing:\n{output}");
    };
    (status, output)
}

/// The exit status of `child` within `timeout`; `None` (and the child killed) if it is still
/// running by then.
fn exit_within(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}

fn inode(path: &Path) -> u64 {
    std::fs::symlink_metadata(path).unwrap().ino()
}

fn mode(path: &Path) -> u32 {
    std::fs::symlink_metadata(path).unwrap().mode() & 0o7777
}

#[test]
fn a_second_server_never_takes_a_running_servers_socket() {
    let mut first = Server::start(ServerOptions::default());
    first.cli_ok(&[
        "entry",
        "create",
        "-spiffeID",
        "spiffe://example.org/first",
        "-parentID",
        "spiffe://example.org/node",
        "-selector",
        "unix:uid:1",
    ]);
    let count = first.cli_ok(&["entry", "count"]);
    let socket_inode = inode(&first.socket);
    let (second, conf) = stopped_server();

    for (variant, port, names) in [
        (
            "clashing port",
            first.bind_port,
            format!("127.0.0.1:{}", first.bind_port),
        ),
        (
            "free port",
            second.bind_port,
            first.socket.display().to_string(),
        ),
    ] {
        let conf = with_socket_and_port(&second, &conf, &first.socket, port);
        let (status, output) = run_to_exit(&second, "second.conf", &conf);
        assert!(!status.success(), "{variant}: {output}");
        assert!(
            output.contains(&names),
            "{variant}: the error does not name {names}:\n{output}"
        );
        if variant == "free port" {
            assert!(output.contains("another process is serving"), "{output}");
        }
        // The first server's socket is untouched and still serves its CLI.
        assert_eq!(
            inode(&first.socket),
            socket_inode,
            "{variant}: socket replaced"
        );
        assert!(first.cli(&["healthcheck"]).status.success(), "{variant}");
        assert_eq!(first.cli_ok(&["entry", "count"]), count, "{variant}");
    }

    // A stale socket (its server killed with SIGKILL) is replaced: a new server starts there.
    first.kill9();
    assert!(first.socket.exists(), "SIGKILL leaves the socket file");
    let mut second = second;
    let conf = with_socket_and_port(&second, &conf, &first.socket, second.bind_port);
    std::fs::write(&second.config, conf).unwrap();
    second.socket = first.socket.clone();
    second.spawn(); // waits until `healthcheck` on that socket passes
    assert!(second.stop().success());
}

/// Starts the stopped `server` with its admin socket at `socket`: it must refuse, naming the
/// path and `problem`, and leave no socket there.
fn refused_socket(server: &Server, conf: &str, socket: &Path, problem: &str) {
    let conf = with_socket_and_port(server, conf, socket, server.bind_port);
    let (status, output) = run_to_exit(server, "socket.conf", &conf);
    assert!(!status.success(), "{}: {output}", socket.display());
    let dir = socket.parent().unwrap().display().to_string();
    assert!(
        output.contains(&dir) && output.contains(problem),
        "{}: unclear refusal (want {problem:?}):\n{output}",
        socket.display()
    );
    assert!(
        std::fs::symlink_metadata(socket).is_err(),
        "a socket was created at {}",
        socket.display()
    );
}

#[test]
fn socket_directories_another_user_controls_are_refused() {
    let (server, conf) = stopped_server();
    let base = server.dir.path();

    // Group-writable: anyone in the group could replace api.sock.
    let group = base.join("group-writable");
    std::fs::create_dir(&group).unwrap();
    std::fs::set_permissions(&group, std::fs::Permissions::from_mode(0o770)).unwrap();
    refused_socket(&server, &conf, &group.join("api.sock"), "mode 0770");

    // A symbolic link: refused, and its target is not chmodded.
    let target = base.join("target");
    std::fs::create_dir(&target).unwrap();
    std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o755)).unwrap();
    let link = base.join("link");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    refused_socket(&server, &conf, &link.join("api.sock"), "symbolic link");
    assert_eq!(mode(&target), 0o755, "chmod went through the link");
    assert!(!target.join("api.sock").exists());

    if !can_switch_user() {
        return;
    }
    // Created first by another user (as /tmp/spire-server/private could be).
    let theirs = base.join("theirs");
    std::fs::create_dir(&theirs).unwrap();
    std::os::unix::fs::chown(&theirs, Some(OTHER_UID), Some(OTHER_UID)).unwrap();
    refused_socket(
        &server,
        &conf,
        &theirs.join("api.sock"),
        &format!("owned by uid {OTHER_UID}"),
    );
    // Ours, but inside one of theirs (they could rename it away and put their own in place).
    let parent = base.join("their-parent");
    std::fs::create_dir(&parent).unwrap();
    let ours = parent.join("private");
    std::fs::create_dir(&ours).unwrap();
    std::fs::set_permissions(&ours, std::fs::Permissions::from_mode(0o700)).unwrap();
    std::os::unix::fs::chown(&parent, Some(OTHER_UID), Some(OTHER_UID)).unwrap();
    refused_socket(
        &server,
        &conf,
        &ours.join("api.sock"),
        &format!("is owned by uid {OTHER_UID}"),
    );
}

/// A "server" listening on a Unix socket as another user: a Python listener under `setpriv`
/// that prints how many bytes each connection sent before closing.
struct FakeServer {
    child: Child,
    lines: std::sync::mpsc::Receiver<String>,
}

impl FakeServer {
    fn start(socket: &Path) -> Option<Self> {
        const SCRIPT: &str = r#"
import socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.bind(sys.argv[1])
s.listen(64)
print("listening", flush=True)
while True:
    c, _ = s.accept()
    c.settimeout(5)
    n = 0
    try:
        while True:
            d = c.recv(65536)
            if not d:
                break
            n += len(d)
    except socket.timeout:
        pass
    print(n, flush=True)
    c.close()
"#;
        let python = Path::new("/usr/bin/python3");
        if !python.exists() {
            eprintln!("NOTICE: no /usr/bin/python3 for the fake server; case skipped");
            return None;
        }
        let mut child = Command::new("setpriv")
            .args([
                &format!("--reuid={OTHER_UID}"),
                &format!("--regid={OTHER_UID}"),
                "--clear-groups",
            ])
            .arg(python)
            .args(["-c", SCRIPT])
            .arg(socket)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let first = lines.recv_timeout(Duration::from_secs(10)).unwrap();
        assert_eq!(first, "listening");
        Some(Self { child, lines })
    }

    /// Bytes received on each connection so far.
    fn received(&self) -> Vec<usize> {
        self.lines.try_iter().map(|l| l.parse().unwrap()).collect()
    }
}

impl Drop for FakeServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn the_cli_sends_nothing_to_a_server_run_by_another_user() {
    if !can_switch_user() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // Let the other user reach its own directory under our temp dir.
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let theirs = dir.path().join("theirs");
    std::fs::create_dir(&theirs).unwrap();
    std::os::unix::fs::chown(&theirs, Some(OTHER_UID), Some(OTHER_UID)).unwrap();
    let socket = theirs.join("api.sock");
    let Some(fake) = FakeServer::start(&socket) else {
        return;
    };
    assert_eq!(std::fs::symlink_metadata(&socket).unwrap().uid(), OTHER_UID);

    let commands: [&[&str]; 7] = [
        &["healthcheck"],
        &["entry", "show"],
        &[
            "entry",
            "create",
            "-spiffeID",
            "spiffe://example.org/x",
            "-parentID",
            "spiffe://example.org/node",
            "-selector",
            "unix:uid:0",
        ],
        &["token", "generate"],
        &["localauthority", "x509", "show"],
        &["bundle", "show"],
        &["agent", "list"],
    ];
    let mut connections = 0;
    for args in commands {
        let mut child = Command::new(server_bin())
            .args(args)
            .arg("-socketPath")
            .arg(&socket)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let status = exit_within(&mut child, Duration::from_secs(20))
            .unwrap_or_else(|| panic!("{args:?} hung talking to the fake server"));
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !status.success(),
            "{args:?} succeeded against the fake server"
        );
        assert!(
            stderr.contains("refusing to talk") && stderr.contains(&format!("uid {OTHER_UID}")),
            "{args:?}: unclear refusal: {stderr}"
        );
        // The fake saw the connection close; it read nothing from it.
        let seen = wait_for(
            "the fake server to report the connection",
            Duration::from_secs(10),
            || Some(fake.received()).filter(|r| !r.is_empty()),
        );
        assert!(
            seen.iter().all(|&n| n == 0),
            "{args:?}: the fake read {seen:?} bytes"
        );
        connections += seen.len();
    }
    assert!(connections >= commands.len());
}

/// Sanity: our own server, on a private directory, still serves the CLI after all the checks
/// (and the socket directory stays 0700).
#[test]
fn our_own_socket_still_works() {
    let server = Server::start(ServerOptions::default());
    server.cli_ok(&["healthcheck"]);
    let dir: PathBuf = server.socket.parent().unwrap().to_owned();
    assert_eq!(mode(&dir), 0o700);
    assert_eq!(mode(&server.socket), 0o600);
}

/// A parent anyone may write that is not sticky (what a Kubernetes `emptyDir` is) cannot be
/// fixed from inside a pod: the server starts, with a WARN line naming it.
#[test]
fn a_world_writable_parent_is_a_warning() {
    let (mut server, conf) = stopped_server();
    let open = server.dir.path().join("open");
    std::fs::create_dir(&open).unwrap();
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
    let socket = open.join("spire-server").join("private").join("api.sock");
    let conf = with_socket_and_port(&server, &conf, &socket, server.bind_port);
    std::fs::write(&server.config, conf).unwrap();
    server.socket = socket;
    server.spawn();
    let open = open.display().to_string();
    assert!(
        server
            .log()
            .lines()
            .any(|l| l.contains("WARN") && l.contains(&open) && l.contains("not sticky")),
        "no WARN naming {open}:\n{}",
        server.log()
    );
}
