//! End-to-end tests of the agent: the real `sigil-server` and `sigil-agent`, a join token, entries
//! for this test's own uid, and workloads using independent Workload API clients (py-spiffe and
//! the Rust `spiffe` crate) as well as the agent's CLI.

use std::process::Command;
use std::time::{Duration, Instant};

use futures::StreamExt;
use sigil_testkit::python::python_json;
use sigil_testkit::verify::openssl_verify;
use sigil_testkit::{
    Agent, Server, ServerOptions, agent_bin, attested_agent, multi_thread_rt, pem_certs,
    register_uid, uid, wait_for,
};

fn py(args: &[&str]) -> serde_json::Value {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/py/workload_client.py");
    python_json("py-spiffe client", &[&[script], args].concat())
}

#[test]
fn independent_clients_get_svids_bundles_and_jwts() {
    let server = Server::start(ServerOptions::default());
    let (agent, agent_id) = attested_agent(&server, false);
    register_uid(
        &server,
        "spiffe://example.org/web",
        &agent_id,
        uid(),
        &["-hint", "web", "-dns", "web.example.org"],
    );
    register_uid(
        &server,
        "spiffe://example.org/db",
        &agent_id,
        uid(),
        &["-hint", "db"],
    );

    // The agent CLI, then openssl on what it wrote.
    let out_dir = agent.dir.path().join("fetched");
    std::fs::create_dir(&out_dir).unwrap();
    let fetched = wait_for("both SVIDs via the CLI", Duration::from_secs(10), || {
        let out = agent.cli(&["api", "fetch", "x509", "-output", "json"]);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        (v.to_string().contains("spiffe://example.org/db")
            && v.to_string().contains("spiffe://example.org/web"))
        .then_some(v)
    });
    assert!(fetched.to_string().contains("web"), "{fetched}");
    let out = agent.cli(&["api", "fetch", "x509", "-write", out_dir.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (ok, text) = openssl_verify(
        &out_dir.join("bundle.0.pem"),
        &out_dir.join("svid.0.pem"),
        &[],
    );
    assert!(ok, "{text}");
    assert_eq!(
        pem_certs(&std::fs::read_to_string(out_dir.join("bundle.0.pem")).unwrap()),
        pem_certs(&server.cli_ok(&["bundle", "show"]))
    );

    // The CLI's JWT bundles, keyed by trust domain ID as on the wire: a JWKS of the JWT authorities.
    let out = agent.cli(&["api", "fetch", "jwtbundle", "-output", "json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let jwt_bundles: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let keys = jwt_bundles["spiffe://example.org"]["keys"]
        .as_array()
        .unwrap();
    assert!(
        !keys.is_empty() && keys.iter().all(|k| k["kid"].is_string()),
        "{jwt_bundles}"
    );

    // py-spiffe.
    let socket = agent.socket.to_str().unwrap();
    let p = py(&["fetch", socket, "payments", "audit"]);
    assert_eq!(
        p["spiffe_ids"],
        serde_json::json!(["spiffe://example.org/db", "spiffe://example.org/web"])
    );
    assert_eq!(p["x509_authorities"], 1);
    assert_eq!(p["jwt_audience"], serde_json::json!(["audit", "payments"]));
    assert_eq!(p["jwt_kids"], 1);
    assert_eq!(p["local_validation_sub"], p["jwt_spiffe_id"]);
    assert_eq!(p["validated_sub"], p["jwt_spiffe_id"]);
    assert_ne!(p["wrong_audience"], "accepted");

    // The Rust spiffe crate.
    multi_thread_rt().block_on(async {
        let client = agent.workload_client().await;
        let ctx = client.fetch_x509_context().await.unwrap();
        let mut ids: Vec<String> = ctx
            .svids()
            .iter()
            .map(|s| s.spiffe_id().to_string())
            .collect();
        ids.sort();
        assert_eq!(ids, ["spiffe://example.org/db", "spiffe://example.org/web"]);
        let hints: Vec<Option<&str>> = ctx.svids().iter().map(|s| s.hint()).collect();
        assert!(
            hints.contains(&Some("web")) && hints.contains(&Some("db")),
            "{hints:?}"
        );
        let td = spiffe::TrustDomain::new("example.org").unwrap();
        assert_eq!(
            client
                .fetch_x509_bundles()
                .await
                .unwrap()
                .get(&td)
                .unwrap()
                .authorities()
                .len(),
            1
        );
        let jwt = client
            .fetch_jwt_svid(["payments", "audit"], None)
            .await
            .unwrap();
        assert_eq!(
            jwt.audience(),
            ["payments".to_string(), "audit".to_string()]
        );
        let jwt_bundles = client.fetch_jwt_bundles().await.unwrap();
        assert!(jwt_bundles.get(&td).is_some());
        let validated = client
            .validate_jwt_token("payments", jwt.token())
            .await
            .unwrap();
        assert_eq!(validated.spiffe_id(), jwt.spiffe_id());
        assert!(
            client
                .validate_jwt_token("nope", jwt.token())
                .await
                .is_err()
        );
    });
}

#[test]
fn only_the_callers_identities_and_clear_errors() {
    let server = Server::start(ServerOptions::default());
    let (agent, agent_id) = attested_agent(&server, true);
    // Nothing registered yet: no identity issued.
    let out = agent.cli(&["api", "fetch", "x509"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no identity issued"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    register_uid(&server, "spiffe://example.org/mine", &agent_id, uid(), &[]);
    register_uid(
        &server,
        "spiffe://example.org/nobody",
        &agent_id,
        65534,
        &[],
    );
    let mine = wait_for("my SVID", Duration::from_secs(10), || {
        let out = agent.cli(&["api", "fetch", "x509", "-output", "json"]);
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    });
    assert!(
        mine.contains("spiffe://example.org/mine") && !mine.contains("spiffe://example.org/nobody"),
        "{mine}"
    );

    // A workload running as another user gets its own identity only.
    if Command::new("setpriv").arg("--version").output().is_ok() && uid() == 0 {
        let out = Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(agent_bin())
            .args([
                "api",
                "fetch",
                "x509",
                "-output",
                "json",
                "-socketPath",
                agent.socket.to_str().unwrap(),
            ])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            text.contains("spiffe://example.org/nobody")
                && !text.contains("spiffe://example.org/mine"),
            "{text}"
        );
    } else {
        eprintln!(
            "NOTICE: not root or no setpriv; the other-uid case is covered by the entry for uid 65534 not being returned"
        );
    }

    // Without the security header: InvalidArgument, whatever the caller.
    multi_thread_rt().block_on(async {
        let channel = sigil_testkit::admin::uds_channel(&agent.socket)
            .await
            .unwrap();
        let mut raw =
            sigil_proto::workload::spiffe_workload_api_client::SpiffeWorkloadApiClient::new(
                channel,
            );
        let err = raw
            .fetch_jwtsvid(sigil_proto::workload::JwtsvidRequest {
                audience: vec!["a".into()],
                spiffe_id: String::new(),
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    });
}

#[test]
fn entry_changes_are_pushed_to_streaming_workloads() {
    let server = Server::start(ServerOptions::default());
    let (agent, agent_id) = attested_agent(&server, false);
    let first = register_uid(&server, "spiffe://example.org/first", &agent_id, uid(), &[]);
    agent.wait_for_svid(Duration::from_secs(10));
    multi_thread_rt().block_on(async {
        let client = agent.workload_client().await;
        let mut stream = Box::pin(
            tokio::time::timeout(Duration::from_secs(10), client.stream_x509_contexts())
                .await
                .unwrap()
                .unwrap(),
        );
        let ctx = tokio::time::timeout(Duration::from_secs(10), stream.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(ctx.svids().len(), 1);

        // Created while streaming → pushed within a second.
        let created = Instant::now();
        let second = register_uid(
            &server,
            "spiffe://example.org/second",
            &agent_id,
            uid(),
            &[],
        );
        let pushed = loop {
            let ctx = tokio::time::timeout(Duration::from_secs(5), stream.next())
                .await
                .expect("pushed")
                .unwrap()
                .unwrap();
            if ctx.svids().len() == 2 {
                break created.elapsed();
            }
        };
        eprintln!("entry create → SVID on the stream: {pushed:?}");
        assert!(pushed < Duration::from_secs(1), "took {pushed:?}");

        // Deleting every entry ends the stream with PermissionDenied.
        server.cli_ok(&["entry", "delete", "-entryID", &first]);
        server.cli_ok(&["entry", "delete", "-entryID", &second]);
        let end = loop {
            match tokio::time::timeout(Duration::from_secs(5), stream.next())
                .await
                .expect("stream ends")
            {
                Some(Ok(_)) => continue,
                other => break other,
            }
        };
        match end {
            Some(Err(e)) => assert!(
                format!("{e:?}").contains("NoIdentityIssued")
                    || format!("{e:?}").contains("PermissionDenied"),
                "{e:?}"
            ),
            None => panic!("stream ended without PermissionDenied"),
            Some(Ok(_)) => unreachable!(),
        }
    });
}

#[test]
fn rotation_is_seen_by_both_clients() {
    let server = Server::start(ServerOptions {
        x509_svid_ttl: "10s".into(),
        ..Default::default()
    });
    let (agent, agent_id) = attested_agent(&server, false);
    register_uid(
        &server,
        "spiffe://example.org/rotating",
        &agent_id,
        uid(),
        &["-x509SVIDTTL", "10"],
    );
    agent.wait_for_svid(Duration::from_secs(10));
    let p = py(&["watch", agent.socket.to_str().unwrap(), "2", "20"]);
    assert!(
        p["serials"].as_array().unwrap().len() >= 2,
        "py-spiffe saw no rotation: {p}"
    );
    multi_thread_rt().block_on(async {
        let client = agent.workload_client().await;
        let mut stream = Box::pin(client.stream_x509_contexts().await.unwrap());
        let first = stream
            .next()
            .await
            .unwrap()
            .unwrap()
            .default_svid()
            .unwrap()
            .leaf()
            .as_bytes()
            .to_vec();
        let rotated = tokio::time::timeout(Duration::from_secs(20), async {
            loop {
                let ctx = stream.next().await.unwrap().unwrap();
                if ctx.default_svid().unwrap().leaf().as_bytes() != first.as_slice() {
                    return;
                }
            }
        })
        .await;
        assert!(
            rotated.is_ok(),
            "the Rust client saw no rotation within 20 s"
        );
    });
}

#[test]
fn server_outage_keeps_workloads_served_and_restart_resumes_rotation() {
    // A 40 s SVID: rotation is due at ~20 s, while the server is down, and the SVID is still
    // valid when the server returns 30 s later. The agent's own SVID lives `agent_ttl` (1 h).
    let mut server = Server::start(ServerOptions {
        health: false,
        ..Default::default()
    });
    let (mut agent, agent_id) = attested_agent(&server, false);
    register_uid(
        &server,
        "spiffe://example.org/steady",
        &agent_id,
        uid(),
        &["-x509SVIDTTL", "40"],
    );
    agent.wait_for_svid(Duration::from_secs(10));

    server.kill9();
    let down = Instant::now();
    while down.elapsed() < Duration::from_secs(30) {
        let out = agent.cli(&["api", "fetch", "x509"]);
        assert!(
            out.status.success(),
            "fetch failed during the outage: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    server.spawn();
    // Rotation resumes: a new serial appears after the restart.
    let serial = |a: &Agent| {
        let out = a.cli(&["api", "fetch", "x509", "-output", "json"]);
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let before = serial(&agent);
    let start = Instant::now();
    while serial(&agent) == before {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "no rotation after the server returned; agent log:\n{}",
            agent.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    // An agent restart does not re-attest: same agent, token not used again.
    let status = agent.stop();
    assert!(
        status.success(),
        "agent exit {status}; log tail:\n{}",
        agent
            .log()
            .lines()
            .rev()
            .take(15)
            .collect::<Vec<_>>()
            .join("\n")
    );
    agent.spawn(None);
    assert_eq!(
        sigil_testkit::listed_agent_ids(&server),
        [agent_id.as_str()]
    );
    assert!(agent.cli(&["api", "fetch", "x509"]).status.success());
}

#[test]
fn evicted_agent_is_refused_then_reattests_with_a_fresh_token() {
    let server = Server::start(ServerOptions::default());
    let (mut agent, agent_id) = attested_agent(&server, false);
    register_uid(
        &server,
        "spiffe://example.org/before",
        &agent_id,
        uid(),
        &[],
    );
    agent.wait_for_svid(Duration::from_secs(10));
    server.cli_ok(&["agent", "evict", "-spiffeID", &agent_id]);
    assert!(sigil_testkit::listed_agent_ids(&server).is_empty());
    // New entries no longer reach the evicted agent, and it says why.
    register_uid(&server, "spiffe://example.org/after", &agent_id, uid(), &[]);
    std::thread::sleep(Duration::from_secs(3));
    let out = agent.cli(&["api", "fetch", "x509", "-output", "json"]);
    assert!(!String::from_utf8_lossy(&out.stdout).contains("spiffe://example.org/after"));
    wait_for(
        "the agent to log its eviction",
        Duration::from_secs(10),
        || agent.log().to_lowercase().contains("evict").then_some(()),
    );

    // The operator hands it a fresh join token: it re-attests under a new agent ID.
    assert!(agent.stop().success());
    let token = server.join_token();
    agent.spawn(Some(&token));
    let new_id = server.join_token_agent_id(&token);
    register_uid(
        &server,
        "spiffe://example.org/reattested",
        &new_id,
        uid(),
        &[],
    );
    wait_for(
        "an SVID under the new agent ID",
        Duration::from_secs(15),
        || {
            let out = agent.cli(&["api", "fetch", "x509", "-output", "json"]);
            String::from_utf8_lossy(&out.stdout)
                .contains("spiffe://example.org/reattested")
                .then_some(())
        },
    );
    assert_eq!(sigil_testkit::listed_agent_ids(&server), [new_id.as_str()]);
}

/// A client holding a real agent's SVID and key (read from the agent's data dir) asks the real
/// server for identities the agent is not authorized for: refused. After `agent ban`, even its
/// own entries are refused.
#[test]
fn forged_requests_with_a_valid_agent_svid_are_refused() {
    use sigil_proto::sigil::agent::v1 as pb;
    use sigil_testkit::agent_link::{server_connection, x509_mint_request};

    let server = Server::start(ServerOptions::default());
    let (agent, agent_id) = attested_agent(&server, false);
    let (_other, other_id) = attested_agent(&server, false);
    let mine = register_uid(&server, "spiffe://example.org/mine", &agent_id, uid(), &[]);
    let theirs = register_uid(
        &server,
        "spiffe://example.org/theirs",
        &other_id,
        uid(),
        &[],
    );
    let admin = server.cli_json(&[
        "entry",
        "create",
        "-spiffeID",
        "spiffe://example.org/admin",
        "-parentID",
        "spiffe://example.org/spire/server",
        "-selector",
        "k8s:ns:kube-system",
    ]);
    let alias = sigil_testkit::created_entry_id(&admin);

    let (svid, bundle) = agent.stored_credentials(&server);
    assert_eq!(svid.spiffe_id.to_string(), agent_id);
    multi_thread_rt().block_on(async {
        let conn = server_connection(&server, &svid, &bundle);
        let mint = |entry_id: &str| x509_mint_request(entry_id, "");
        let ok = conn
            .client()
            .batch_mint_x509svid(mint(&mine))
            .await
            .expect("its own entry is signed");
        assert_eq!(ok.into_inner().svids.len(), 1);
        for (forged, what) in [
            (&theirs, "another agent's entry"),
            (&alias, "a node alias whose selectors it lacks"),
        ] {
            let err = conn
                .client()
                .batch_mint_x509svid(mint(forged))
                .await
                .unwrap_err();
            assert_eq!(err.code(), tonic::Code::PermissionDenied, "{what}: {err:?}");
        }
        let err = conn
            .client()
            .mint_jwtsvid(pb::MintJwtsvidRequest {
                entry_id: theirs.clone(),
                audience: vec!["a".into()],
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::PermissionDenied);

        assert_eq!(
            server.cli_json(&["agent", "show", "-spiffeID", &agent_id])["banned"],
            false
        );
        server.cli_ok(&["agent", "ban", "-spiffeID", &agent_id]);
        assert_eq!(
            server.cli_json(&["agent", "show", "-spiffeID", &agent_id])["banned"],
            true
        );
        let err = conn
            .client()
            .batch_mint_x509svid(mint(&mine))
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::PermissionDenied, "banned: {err:?}");
    });
    assert!(
        server.log().contains(&theirs),
        "the refusal is logged with the entry ID"
    );
}

#[test]
fn insecure_bootstrap_trusts_the_server_on_first_contact_only() {
    let server = Server::start(ServerOptions::default());
    let token = server.join_token();
    let mut agent = Agent::configure_trust(&server, true);
    agent.spawn(Some(&token));
    let agent_id = format!("spiffe://example.org/spire/agent/join_token/{token}");
    register_uid(
        &server,
        "spiffe://example.org/bootstrapped",
        &agent_id,
        uid(),
        &[],
    );
    agent.wait_for_svid(Duration::from_secs(10));
    assert!(
        agent.log().to_lowercase().contains("insecure"),
        "the agent warns about insecure bootstrap"
    );
    // From then on it trusts the bundle it received: a restart needs no bootstrap.
    let bundle = agent.dir.path().join("data").join("bundle.json");
    assert!(bundle.exists(), "the received bundle is persisted");
}

/// No size cliff (#6): a workload with 500 identities gets all of them in one Workload API
/// response that a standard client (the Rust `spiffe` crate, default 4 MiB gRPC limit) reads,
/// and each is a distinct, valid X509-SVID.
#[test]
fn a_workload_with_500_identities_gets_them_all_in_one_response() {
    const N: usize = 500;
    let server = Server::start(ServerOptions::default());
    let (agent, agent_id) = attested_agent(&server, false);
    let entries: Vec<serde_json::Value> = (0..N)
        .map(|i| {
            serde_json::json!({
                "spiffe_id": format!("spiffe://example.org/many/{i}"),
                "parent_id": agent_id,
                "selectors": [{"type": "unix", "value": format!("uid:{}", uid())}],
            })
        })
        .collect();
    let data = server.dir.path().join("many.json");
    std::fs::write(&data, serde_json::json!({ "entries": entries }).to_string()).unwrap();
    let created = server.cli_json(&["entry", "create", "-data", data.to_str().unwrap()]);
    assert_eq!(created["results"].as_array().map(Vec::len), Some(N));

    let ids = multi_thread_rt().block_on(async {
        let client = agent.workload_client().await;
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            match client.fetch_x509_context().await {
                Ok(ctx) if ctx.svids().len() == N => {
                    break ctx
                        .svids()
                        .iter()
                        .map(|s| s.spiffe_id().to_string())
                        .collect::<std::collections::BTreeSet<_>>();
                }
                other => {
                    let seen = other.map(|c| c.svids().len());
                    assert!(Instant::now() < deadline, "never all {N} SVIDs: {seen:?}");
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
            }
        }
    });
    assert_eq!(ids.len(), N, "every identity distinct");
    assert!(ids.contains("spiffe://example.org/many/0"));
    assert!(ids.contains(&format!("spiffe://example.org/many/{}", N - 1)));
}
