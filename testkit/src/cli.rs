//! The binaries' CLIs as an operator uses them: `sigil-server` commands on a server's admin
//! socket (join tokens, entries), `sigil-agent api fetch` on an agent's Workload API socket,
//! and the usual set-up of a test: an agent attested with a fresh join token, an entry for a
//! uid under it.

use std::process::{Command, Output};
use std::time::Duration;

use crate::process::wait_for;
use crate::{Agent, Server, agent_bin, server_bin};

impl Server {
    /// Runs `sigil-server <args> -socketPath <socket>`.
    pub fn cli(&self, args: &[&str]) -> Output {
        let mut cmd = Command::new(server_bin());
        cmd.args(args).arg("-socketPath").arg(&self.socket);
        cmd.output().expect("run sigil-server CLI")
    }

    /// Runs a CLI command that must succeed; returns its stdout.
    pub fn cli_ok(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        assert!(
            out.status.success(),
            "sigil-server {args:?} failed ({}):\nstdout: {}\nstderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("utf-8 output")
    }

    /// Runs a CLI command with `-output json` and parses its output.
    pub fn cli_json(&self, args: &[&str]) -> serde_json::Value {
        let mut all: Vec<&str> = args.to_vec();
        all.extend(["-output", "json"]);
        let out = self.cli_ok(&all);
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("{args:?}: not JSON ({e}): {out}"))
    }

    /// A fresh join token valid for 10 minutes (`token generate -ttl 600`).
    pub fn join_token(&self) -> String {
        self.cli_ok(&["token", "generate", "-ttl", "600"])
            .trim()
            .strip_prefix("Token: ")
            .expect("token output")
            .to_owned()
    }

    /// The SPIFFE ID an agent attested with join token `token` gets
    /// (`spiffe://<td>/spire/agent/join_token/<token>`).
    pub fn join_token_agent_id(&self, token: &str) -> String {
        format!(
            "spiffe://{}/spire/agent/join_token/{token}",
            self.options.trust_domain
        )
    }
}

impl Agent {
    /// Runs `sigil-agent <args> -socketPath <socket>`.
    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new(agent_bin())
            .args(args)
            .arg("-socketPath")
            .arg(&self.socket)
            .output()
            .expect("run sigil-agent CLI")
    }

    /// What `api fetch x509` prints for this process's workload (its SPIFFE IDs among it);
    /// empty when the fetch fails.
    pub fn fetched_x509(&self) -> String {
        String::from_utf8_lossy(&self.cli(&["api", "fetch", "x509"]).stdout).into_owned()
    }

    /// `api fetch x509 -write <dir>` into a fresh temp dir: this process's SVIDs, keys and
    /// bundles as files (`svid.0.pem`, `svid.0.key`, `bundle.0.pem`, `federated_bundle.0.*.pem`).
    /// `Err` holds the CLI's stderr when the fetch fails.
    pub fn write_x509(&self) -> Result<tempfile::TempDir, String> {
        let dir = tempfile::tempdir().expect("temp dir");
        let out = self.cli(&[
            "api",
            "fetch",
            "x509",
            "-write",
            dir.path().to_str().expect("UTF-8 path"),
        ]);
        if out.status.success() {
            Ok(dir)
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    /// Waits until this process's workload gets an X509-SVID.
    pub fn wait_for_svid(&self, timeout: Duration) {
        wait_for("the workload's X509-SVID", timeout, || {
            self.cli(&["api", "fetch", "x509"])
                .status
                .success()
                .then_some(())
        });
    }

    /// Waits until this process's workload gets an X509-SVID for each of `spiffe_ids`.
    pub fn wait_for_ids(&self, what: &str, spiffe_ids: &[&str], timeout: Duration) {
        wait_for(what, timeout, || {
            let out = self.fetched_x509();
            spiffe_ids.iter().all(|id| out.contains(id)).then_some(())
        });
    }
}

/// Generates a join token, starts an agent with it and returns the agent and its SPIFFE ID
/// (`spiffe://<td>/spire/agent/join_token/<token>`). `world_reachable` makes the temp dir
/// traversable so a workload running as another user can reach the socket.
pub fn attested_agent(server: &Server, world_reachable: bool) -> (Agent, String) {
    let token = server.join_token();
    let mut agent = Agent::configure(server);
    if world_reachable {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(agent.dir.path(), std::fs::Permissions::from_mode(0o755))
            .expect("chmod");
    }
    agent.spawn(Some(&token));
    let id = server.join_token_agent_id(&token);
    (agent, id)
}

/// Registers an entry under `parent` selecting `unix:uid:<uid>`; returns its ID.
pub fn register_uid(
    server: &Server,
    spiffe_id: &str,
    parent: &str,
    uid: u32,
    extra: &[&str],
) -> String {
    register(server, spiffe_id, parent, &format!("unix:uid:{uid}"), extra)
}

/// Registers an entry under `parent` with one `selector` (and `extra` flags for
/// `entry create`); returns its ID.
pub fn register(
    server: &Server,
    spiffe_id: &str,
    parent: &str,
    selector: &str,
    extra: &[&str],
) -> String {
    let mut args = vec![
        "entry",
        "create",
        "-spiffeID",
        spiffe_id,
        "-parentID",
        parent,
        "-selector",
        selector,
    ];
    args.extend(extra);
    created_entry_id(&server.cli_json(&args))
}

/// The ID of the (first) entry in SPIRE's `BatchCreateEntryResponse` /
/// `BatchUpdateEntryResponse` that `entry create|update -output json` prints
/// (`{"results": [{"status": ..., "entry": {...}}]}`).
pub fn created_entry_id(response: &serde_json::Value) -> String {
    response["results"][0]["entry"]["id"]
        .as_str()
        .unwrap_or_else(|| panic!("no entry in {response}"))
        .to_owned()
}

/// The entries of SPIRE's `ListEntriesResponse` that `entry show -output json` prints
/// (`{"entries": [...], "next_page_token": ""}`).
pub fn shown_entries(response: &serde_json::Value) -> Vec<serde_json::Value> {
    response["entries"]
        .as_array()
        .unwrap_or_else(|| panic!("no entries in {response}"))
        .clone()
}

/// `spiffe://<td><path>` from SPIRE's `SPIFFEID` object (`{"trust_domain": ..., "path": ...}`),
/// as entries and agents carry it in `-output json`.
pub fn id_text(id: &serde_json::Value) -> String {
    let td = id["trust_domain"]
        .as_str()
        .unwrap_or_else(|| panic!("not a SPIFFEID: {id}"));
    format!("spiffe://{td}{}", id["path"].as_str().unwrap_or_default())
}

/// The SPIFFE IDs of the agents `agent list -output json` prints (SPIRE's
/// `ListAgentsResponse`).
pub fn listed_agent_ids(server: &Server) -> Vec<String> {
    let listed = server.cli_json(&["agent", "list"]);
    listed["agents"]
        .as_array()
        .unwrap_or_else(|| panic!("no agents in {listed}"))
        .iter()
        .map(|a| id_text(&a["id"]))
        .collect()
}
