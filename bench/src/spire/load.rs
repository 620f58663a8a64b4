//! Entries through each system's own CLI: `<server> entry create -data <file>` with files in
//! SPIRE's `-data` shape (both CLIs read it), and a single `entry create` with flags.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use serde_json::{Value, json};

use crate::procs::TRUST_DOMAIN;

/// Entries per `-data` file: one `BatchCreateEntry` call each. SPIRE's CLI sends a whole file
/// in one call, and gRPC's default 4 MiB message limit holds about 25k of these entries.
pub(crate) const FILE_ENTRIES: usize = 10_000;

/// Who the first entries of the load are parented to.
#[derive(Clone, Debug)]
pub(crate) struct Parents {
    /// (agent SPIFFE ID, entries): the first entries of the load go to these agents in turn.
    pub agents: Vec<(String, usize)>,
}

impl Parents {
    /// Entry `i`'s parent: an agent of [`Parents::agents`] while `i` is within their share,
    /// otherwise one of 100 node IDs no agent holds.
    fn parent(&self, i: usize) -> String {
        let mut first = 0;
        for (id, n) in &self.agents {
            if i < first + n {
                return id.clone();
            }
            first += n;
        }
        format!("spiffe://{TRUST_DOMAIN}/bench/node/{}", i % 100)
    }
}

/// Entry `i` of the load (the shape of `scale.rs`'s): one selector unique to it and one
/// shared by a thousandth of the entries.
fn load_entry(i: usize, parents: &Parents) -> Value {
    json!({
        "spiffe_id": format!("spiffe://{TRUST_DOMAIN}/bench/spire/{i}"),
        "parent_id": parents.parent(i),
        "selectors": [
            {"type": "bench", "value": format!("id:{i}")},
            {"type": "bench", "value": format!("group:{}", i % 1000)},
        ],
    })
}

/// Writes entries `from..to` as a `-data` file at `path`.
pub(crate) fn write_file(
    path: &Path,
    from: usize,
    to: usize,
    parents: &Parents,
) -> anyhow::Result<()> {
    let entries: Vec<Value> = (from..to).map(|i| load_entry(i, parents)).collect();
    std::fs::write(path, serde_json::to_vec(&json!({ "entries": entries }))?)
        .with_context(|| format!("writing {}", path.display()))
}

/// Runs `<cli> entry create <args> -socketPath <socket>` (stdout discarded: both CLIs print
/// every entry they created), which must succeed; returns its wall time.
pub(crate) async fn entry_create(
    cli: &Path,
    socket: &Path,
    args: &[&str],
) -> anyhow::Result<Duration> {
    let start = Instant::now();
    let out = tokio::process::Command::new(cli)
        .args(["entry", "create"])
        .args(args)
        .arg("-socketPath")
        .arg(socket)
        .stdout(std::process::Stdio::null())
        .output()
        .await
        .with_context(|| format!("running {}", cli.display()))?;
    let took = start.elapsed();
    anyhow::ensure!(
        out.status.success(),
        "{} entry create {args:?}: {}\n{}",
        cli.display(),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(took)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_entries_go_to_the_agents_in_turn() {
        let parents = Parents {
            agents: vec![("a".into(), 2), ("b".into(), 1)],
        };
        let parent = |i| {
            load_entry(i, &parents)["parent_id"]
                .as_str()
                .unwrap()
                .to_owned()
        };
        assert_eq!([parent(0), parent(1), parent(2)], ["a", "a", "b"]);
        assert_eq!(parent(3), "spiffe://bench.example/bench/node/3");
        let e = load_entry(7, &parents);
        assert_eq!(e["spiffe_id"], "spiffe://bench.example/bench/spire/7");
        assert_eq!(e["selectors"][0]["value"], "id:7");
    }
}
