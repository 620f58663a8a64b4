//! Two `sigil-server` replicas on one PostgreSQL database (a throwaway cluster): each runs its
//! own CA and both CAs are in every bundle (`bundle show` of each, the agent's Workload API bundle read by
//! py-spiffe), a JWT-SVID minted by one validates with the other's bundle, and an agent listing
//! both fails over when the one it uses is killed (-9) while a workload keeps fetching. An
//! entry created through either replica reaches the agent wherever it is connected.

use std::collections::BTreeSet;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use sigil_testkit::{
    Agent, Server, ServerOptions, openssl, pem_certs, python, register_uid, wait_for,
};

/// How long a replica may take to adopt the other's authorities. The change feed brings them
/// at once; this is below the 30 s safety-net refresh, so passing shows the feed at work.
const ADOPT: Duration = Duration::from_secs(20);

fn x509_authorities(server: &Server) -> BTreeSet<Vec<u8>> {
    pem_certs(&server.cli_ok(&["bundle", "show"]))
        .into_iter()
        .collect()
}

fn jwt_kids(server: &Server) -> BTreeSet<String> {
    let doc: serde_json::Value =
        serde_json::from_str(&server.cli_ok(&["bundle", "show", "-format", "spiffe"])).unwrap();
    doc["keys"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|k| k["use"] == "jwt-svid")
        .map(|k| k["kid"].as_str().unwrap().to_owned())
        .collect()
}

/// One workload fetch through the agent CLI: `Ok(())` when it got an X509-SVID that
/// `openssl` says is not expired.
fn fetch_once(agent: &Agent) -> Result<(), String> {
    let dir = agent
        .write_x509()
        .map_err(|e| format!("fetch failed: {e}"))?;
    let svid = dir.path().join("svid.0.pem");
    let (valid, text) = openssl(&[
        "x509",
        "-in",
        svid.to_str().unwrap(),
        "-noout",
        "-checkend",
        "0",
    ]);
    if !valid {
        return Err(format!("expired SVID served: {text}"));
    }
    Ok(())
}

#[test]
fn two_replicas_one_bundle_and_agent_failover() {
    let a = Server::start(ServerOptions {
        postgres: Some(sigil_testkit::postgres::database("replicas")),
        ..ServerOptions::default()
    });
    let ca_a = x509_authorities(&a);
    assert_eq!(ca_a.len(), 1, "one CA before the second replica starts");
    let b = a.start_replica();

    // B wrote the union when it started; A adopts it when the change feed reports it.
    let both = wait_for("B's bundle to hold both CAs", ADOPT, || {
        let set = x509_authorities(&b);
        (set.len() == 2 && set.is_superset(&ca_a)).then_some(set)
    });
    wait_for("A's bundle to hold both CAs", ADOPT, || {
        (x509_authorities(&a) == both).then_some(())
    });
    let kids = jwt_kids(&b);
    assert_eq!(kids.len(), 2, "one JWT key per replica: {kids:?}");
    wait_for("A's bundle to hold both JWT keys", ADOPT, || {
        (jwt_kids(&a) == kids).then_some(())
    });
    assert_ne!(
        std::fs::read(a.data_dir().join("replica_id")).unwrap(),
        std::fs::read(b.data_dir().join("replica_id")).unwrap()
    );

    jwt_minted_by_one_replica_validates_with_the_other_bundle(&a, &b);

    // An agent listing both, A first; its join token comes from B (shared datastore).
    let token = b.cli_json(&["token", "generate"])["value"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut agent = Agent::configure_servers(&a, &[&a, &b]);
    agent.spawn(Some(&token));
    let agent_id = format!("spiffe://example.org/spire/agent/join_token/{token}");
    let uid = nix::unistd::getuid().as_raw();
    register_uid(&a, "spiffe://example.org/replicas/one", &agent_id, uid, &[]);
    wait_for("the workload's first SVID", Duration::from_secs(30), || {
        fetch_once(&agent).ok()
    });
    assert!(
        agent.log().contains(&format!("127.0.0.1:{}", a.bind_port)),
        "the agent dialled A first"
    );
    workload_bundle_holds_both_replicas(&agent, both.len(), kids.len());
    // An entry created through B reaches the agent connected to A.
    register_uid(
        &b,
        "spiffe://example.org/replicas/via-b",
        &agent_id,
        uid,
        &[],
    );
    agent.wait_for_ids(
        "the entry created on B to reach the agent on A",
        &["spiffe://example.org/replicas/via-b"],
        Duration::from_secs(20),
    );

    // The workload fetches in a loop across the failover. A scoped thread borrowing the
    // agent, stopped by a guard even when an assertion fails: the agent is then dropped on
    // the panicking thread, which prints its log.
    let stop = AtomicBool::new(false);
    let (ok, failures) = std::thread::scope(|scope| {
        let looper = scope.spawn(|| {
            let (mut ok, mut failures) = (0u32, Vec::new());
            while !stop.load(Ordering::Relaxed) {
                match fetch_once(&agent) {
                    Ok(()) => ok += 1,
                    Err(e) => failures.push(e),
                }
            }
            (ok, failures)
        });
        let _stop = StopOnDrop(&stop);
        let mut a = a;
        a.kill9();
        wait_for("the agent to move to B", Duration::from_secs(30), || {
            agent
                .log()
                .lines()
                .any(|l| {
                    l.contains("moved to another server")
                        && l.contains(&format!("127.0.0.1:{}", b.bind_port))
                })
                .then_some(())
        });
        // A change made through the surviving replica reaches the workload: the next sync works.
        register_uid(&b, "spiffe://example.org/replicas/two", &agent_id, uid, &[]);
        agent.wait_for_ids(
            "the entry created on B to reach the workload",
            &["spiffe://example.org/replicas/two"],
            Duration::from_secs(30),
        );
        stop.store(true, Ordering::Relaxed);
        looper.join().unwrap()
    });
    assert!(ok > 0, "the workload loop ran");
    assert!(
        !agent.log().contains("a resumed sync left other entries"),
        "the agent resumed on B with exactly the entries B holds for it, no snapshot needed"
    );
    assert!(
        failures.is_empty(),
        "{} failed or expired fetches out of {}: {:?}",
        failures.len(),
        ok as usize + failures.len(),
        failures
    );
}

/// Stops the workload loop however the scope ends.
struct StopOnDrop<'a>(&'a AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// A JWT-SVID minted by A verifies with the key B's bundle publishes (jsonwebtoken, not our
/// code).
fn jwt_minted_by_one_replica_validates_with_the_other_bundle(a: &Server, b: &Server) {
    use jsonwebtoken::{Algorithm, DecodingKey, Validation, decode, decode_header};
    let token = a.cli_ok(&[
        "jwt",
        "mint",
        "-spiffeID",
        "spiffe://example.org/replicas/jwt",
        "-audience",
        "payments",
    ]);
    let token = token.trim();
    let kid = decode_header(token).unwrap().kid.expect("kid");
    let doc: serde_json::Value =
        serde_json::from_str(&b.cli_ok(&["bundle", "show", "-format", "spiffe"])).unwrap();
    let key = doc["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["use"] == "jwt-svid" && k["kid"] == kid.as_str())
        .expect("A's JWT key is in B's bundle");
    let dk =
        DecodingKey::from_ec_components(key["x"].as_str().unwrap(), key["y"].as_str().unwrap())
            .unwrap();
    let mut v = Validation::new(Algorithm::ES256);
    v.set_audience(&["payments"]);
    let data = decode::<serde_json::Value>(token, &dk, &v).expect("valid with B's bundle");
    assert_eq!(data.claims["sub"], "spiffe://example.org/replicas/jwt");
}

/// py-spiffe reads the agent's Workload API bundles: every replica's X.509 CA and JWT key.
fn workload_bundle_holds_both_replicas(agent: &Agent, x509: usize, jwt: usize) {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/py/workload_client.py");
    let out = wait_for("py-spiffe to see both replicas", ADOPT, || {
        let out = Command::new(python())
            .args([
                script,
                "fetch",
                agent.socket.to_str().unwrap(),
                "aud1",
                "aud2",
            ])
            .output()
            .expect("run python");
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        (v["x509_authorities"] == x509 && v["jwt_kids"] == jwt).then_some(v)
    });
    assert_eq!(
        out["default_spiffe_id"],
        "spiffe://example.org/replicas/one"
    );
    assert_eq!(out["validated_sub"], "spiffe://example.org/replicas/one");
}
