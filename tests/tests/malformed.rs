//! Issue #7 item 4: a table of malformed inputs across the CLI, the admin API (gRPC over the
//! admin socket), the agent API (mTLS as an attested agent) and the Workload API. Each row gives
//! the input, the clear error it must get (exit code, or gRPC code, plus a message fragment),
//! and after each row the test checks that nothing changed: entry count, our bundle, the
//! attested agents and the federated bundles.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use sigil_agent::config::JoinToken;
use sigil_agent::node_attestation::{JoinTokenAttestor, attest};
use sigil_agent::server_client::ServerConnection;
use sigil_proto::Bundle;
use sigil_proto::sigil::admin::v1 as admin;
use sigil_proto::sigil::agent::v1 as agentpb;
use sigil_proto::sigil::common::v1 as common;
use sigil_proto::workload as wl;
use sigil_proto::{TrustDomain, sigil::admin::v1::admin_client::AdminClient};
use sigil_testkit::{Server, ServerOptions, agent_bin, attested_agent, server_bin};
use tonic::transport::Channel;

/// What a row got: `exit N` or the gRPC code name, and the message (stderr + stdout for the CLI).
struct Outcome {
    code: String,
    message: String,
}

struct Row {
    input: String,
    expect_code: &'static str,
    expect_fragment: &'static str,
    got: Outcome,
}

fn cli_outcome(out: Output) -> Outcome {
    Outcome {
        code: format!("exit {}", out.status.code().unwrap_or(-1)),
        message: format!(
            "{}{}",
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        ),
    }
}

fn grpc_outcome<T>(r: Result<T, tonic::Status>) -> Outcome {
    match r {
        Ok(_) => Outcome {
            code: "Ok".into(),
            message: String::new(),
        },
        Err(s) => Outcome {
            code: format!("{:?}", s.code()),
            message: s.message().to_owned(),
        },
    }
}

async fn uds_channel(path: PathBuf) -> Channel {
    sigil_testkit::admin::uds_channel(&path)
        .await
        .expect("connect over a Unix socket")
}

/// The state no malformed input may change.
#[derive(Debug, PartialEq)]
struct Snapshot {
    entries: u64,
    bundle: String,
    agents: Vec<String>,
    federated: usize,
}

async fn snapshot(admin: &mut AdminClient<Channel>) -> Snapshot {
    let entries = admin
        .count_entries(admin::CountEntriesRequest::default())
        .await
        .unwrap()
        .into_inner()
        .count;
    let bundle = format!(
        "{:?}",
        admin
            .get_bundle(admin::GetBundleRequest {})
            .await
            .unwrap()
            .into_inner()
            .bundle
    );
    let mut agents: Vec<String> = admin
        .list_agents(admin::ListAgentsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .agents
        .iter()
        .map(|a| format!("{a:?}"))
        .collect();
    agents.sort();
    let federated = admin
        .list_federated_bundles(admin::ListFederatedBundlesRequest::default())
        .await
        .unwrap()
        .into_inner()
        .bundles
        .len();
    Snapshot {
        entries,
        bundle,
        agents,
        federated,
    }
}

/// A fresh P-256 PKCS#10 CSR (DER), with `uri` as its URI SAN if given.
fn csr(dir: &Path, uri: Option<&str>) -> Vec<u8> {
    let (key, out) = (dir.join("csr.key"), dir.join("csr.der"));
    let mut args = vec![
        "req".to_owned(),
        "-new".into(),
        "-newkey".into(),
        "ec".into(),
        "-pkeyopt".into(),
        "ec_paramgen_curve:P-256".into(),
        "-nodes".into(),
        "-subj".into(),
        "/O=malformed".into(),
        "-keyout".into(),
        key.display().to_string(),
        "-outform".into(),
        "DER".into(),
        "-out".into(),
        out.display().to_string(),
    ];
    if let Some(uri) = uri {
        args.extend(["-addext".into(), format!("subjectAltName=URI:{uri}")]);
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (ok, text) = sigil_testkit::openssl(&args);
    assert!(ok, "{text}");
    std::fs::read(out).unwrap()
}

fn entry(
    spiffe_id: &str,
    parent_id: &str,
    selectors: &[(&str, &str)],
) -> common::RegistrationEntry {
    common::RegistrationEntry {
        spiffe_id: spiffe_id.into(),
        parent_id: parent_id.into(),
        selectors: selectors
            .iter()
            .map(|(t, v)| common::Selector {
                r#type: (*t).into(),
                value: (*v).into(),
            })
            .collect(),
        ..Default::default()
    }
}

fn with_header<T>(message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request
        .metadata_mut()
        .insert("workload.spiffe.io", "true".parse().unwrap());
    request
}

/// Records one row after checking that the state is unchanged.
struct Table {
    rows: Vec<Row>,
    changed: Vec<String>,
    baseline: Snapshot,
    admin: AdminClient<Channel>,
}

impl Table {
    async fn row(
        &mut self,
        input: impl Into<String>,
        expect_code: &'static str,
        expect_fragment: &'static str,
        got: impl Future<Output = Outcome>,
    ) {
        let input = input.into();
        let got = got.await;
        let now = snapshot(&mut self.admin).await;
        if now != self.baseline {
            self.changed.push(format!(
                "{input}: state changed\n  before {:?}\n  after  {now:?}",
                self.baseline
            ));
            self.baseline = now;
        }
        self.rows.push(Row {
            input,
            expect_code,
            expect_fragment,
            got,
        });
    }

    fn cli(
        &mut self,
        input: impl Into<String>,
        expect_code: &'static str,
        expect_fragment: &'static str,
        got: Output,
    ) -> impl Future<Output = ()> {
        self.row(input, expect_code, expect_fragment, async move {
            cli_outcome(got)
        })
    }
}

fn server_cli(server: &Server, args: &[&str]) -> Output {
    server.cli(args)
}

/// `sigil-<bin> validate -config <file with text>`.
fn validate(bin: &Path, dir: &Path, name: &str, text: &str) -> Output {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    Command::new(bin)
        .args(["validate", "-config"])
        .arg(&path)
        .output()
        .unwrap()
}

#[test]
fn malformed_inputs_get_clear_errors_and_change_nothing() {
    let server = Server::start(ServerOptions::default());
    let td = server.options.trust_domain.clone();
    let (agent, agent_id) = attested_agent(&server, false);
    let scratch = tempfile::tempdir().unwrap();
    let dir = scratch.path();

    // The test process (this uid) is a workload of the real agent.
    let uid = nix::unistd::getuid().as_raw();
    let workload_id = format!("spiffe://{td}/malformed/workload");
    sigil_testkit::register_uid(&server, &workload_id, &agent_id, uid, &[]);

    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let mut admin_client = AdminClient::new(uds_channel(server.socket.clone()).await);

        // A second attested agent, driven directly over mTLS, with one entry of its own.
        let token = admin_client
            .create_join_token(admin::CreateJoinTokenRequest {
                ttl: 600,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .token;
        let our_bundle: Bundle = (&admin_client
            .get_bundle(admin::GetBundleRequest {})
            .await
            .unwrap()
            .into_inner()
            .bundle
            .unwrap())
            .try_into()
            .unwrap();
        let trust_domain = TrustDomain::new(&td).unwrap();
        let conn = ServerConnection::new(
            "127.0.0.1",
            server.bind_port,
            &trust_domain,
            Some(&our_bundle),
            None,
        )
        .unwrap();
        let (svid, _) = attest(&conn, &JoinTokenAttestor::new(JoinToken::new(token)))
            .await
            .expect("attest the direct agent");
        let direct_id = svid.spiffe_id.to_string();
        conn.identity().set(svid);
        let mine_id = format!("spiffe://{td}/malformed/direct");
        let created = admin_client
            .batch_create_entry(admin::BatchCreateEntryRequest {
                entries: vec![
                    entry(&mine_id, &direct_id, &[("unix", "uid:4242")]),
                    entry(&format!("spiffe://{td}/malformed/other"), &agent_id, &[("unix", "uid:4243")]),
                ],
            })
            .await
            .unwrap()
            .into_inner()
            .entries;
        let (mine, not_mine) = (created[0].id.clone(), created[1].id.clone());
        // An unauthenticated connection for attestation rows.
        let anon = ServerConnection::new(
            "127.0.0.1",
            server.bind_port,
            &trust_domain,
            Some(&our_bundle),
            None,
        )
        .unwrap();
        // A JWT-SVID the workload really got, to validate with a wrong audience.
        let mut workload = wl::spiffe_workload_api_client::SpiffeWorkloadApiClient::new(
            uds_channel(agent.socket.clone()).await,
        );
        // The agent may still be syncing the entry: retry until it is there (bounded).
        let mut attempts = 0;
        let jwt = loop {
            match workload
                .fetch_jwtsvid(with_header(wl::JwtsvidRequest {
                    audience: vec!["db".into()],
                    spiffe_id: String::new(),
                }))
                .await
            {
                Ok(r) => break r.into_inner().svids[0].svid.clone(),
                Err(e) => {
                    attempts += 1;
                    assert!(attempts < 300, "no JWT-SVID for the workload: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
            }
        };

        let baseline = snapshot(&mut admin_client).await;
        let mut t = Table {
            rows: Vec::new(),
            changed: Vec::new(),
            baseline,
            admin: admin_client.clone(),
        };
        let parent = agent_id.as_str();

        // ---- CLI: entry create ----
        for (id, fragment) in [
            ("not-a-spiffe-id", "spiffe"),
            ("spiffe://EXAMPLE.org/x", "trust domain"),
            ("spiffe://example.org/a/../b", "dot"),
            ("spiffe://example.org//x", "empty"),
            ("spiffe://example.org/x/", "trailing"),
            ("spiffe://example.org", "path"),
            ("spiffe://other.org/x", "trust domain"),
            ("spiffe://example.org/x?q=1", "character"),
        ] {
            let out = server_cli(
                &server,
                &["entry", "create", "-spiffeID", id, "-parentID", parent, "-selector", "unix:uid:1"],
            );
            t.cli(format!("CLI entry create -spiffeID {id}"), "exit 1", fragment, out).await;
        }
        for (sel, fragment) in [
            ("noseparator", "selector"),
            (":x", "type"),
            ("unix:", "value"),
            ("bad type:x", "type"),
            ("unix:uid\u{7}:1", "control"),
        ] {
            let out = server_cli(
                &server,
                &["entry", "create", "-spiffeID", "spiffe://example.org/s", "-parentID", parent, "-selector", sel],
            );
            t.cli(format!("CLI entry create -selector {sel:?}"), "exit 1", fragment, out).await;
        }
        let base = ["entry", "create", "-spiffeID", "spiffe://example.org/f", "-parentID", parent, "-selector", "unix:uid:1"];
        for (extra, code, fragment) in [
            (&["-x509SVIDTTL", "abc"][..], "exit 1", "invalid -x509SVIDTTL"),
            // A value that starts with '-' is the flag's value, as Go's flag package reads it.
            (&["-jwtSVIDTTL", "-5"][..], "exit 1", "invalid -jwtSVIDTTL \"-5\""),
            (&["-dns", "bad name!"][..], "exit 1", "dns"),
            (&["-federatesWith", "spiffe://Not A TD"][..], "exit 1", "federat"),
            (&["-entryExpiry", "soon"][..], "exit 64", "entryExpiry"),
        ] {
            let mut args = base.to_vec();
            args.extend(extra);
            let out = server_cli(&server, &args);
            t.cli(format!("CLI entry create {extra:?}"), code, fragment, out).await;
        }
        let out = server_cli(&server, &["entry", "create", "-spiffeID", "spiffe://example.org/np", "-selector", "unix:uid:1"]);
        t.cli("CLI entry create without -parentID", "exit 1", "parent", out).await;
        let out = server_cli(&server, &["entry", "create", "-parentID", parent, "-selector", "unix:uid:1"]);
        t.cli("CLI entry create without -spiffeID", "exit 1", "spiffeID", out).await;
        let out = server_cli(&server, &["entry", "create", "-data", "/nonexistent/entries.json"]);
        t.cli("CLI entry create -data <missing file>", "exit 1", "nonexistent", out).await;
        let garbage = dir.join("garbage.json");
        std::fs::write(&garbage, "{\"entries\": [{\"spiffe_id\": 5}").unwrap();
        let out = server_cli(&server, &["entry", "create", "-data", garbage.to_str().unwrap()]);
        t.cli("CLI entry create -data <truncated JSON>", "exit 1", "JSON", out).await;

        // ---- CLI: token generate, bundle set, entry delete ----
        for (args, code, fragment) in [
            (&["token", "generate", "-ttl", "abc"][..], "exit 64", "ttl"),
            (&["token", "generate", "-ttl", "-5"][..], "exit 64", "invalid value '-5' for '--ttl"),
            (&["token", "generate", "-spiffeID", "spiffe://other.org/x"][..], "exit 1", "trust domain"),
            (&["token", "generate", "-spiffeID", "nope"][..], "exit 1", "spiffe"),
            (&["bundle", "set", "-id", "not-a-td", "-path", "/dev/null"][..], "exit 1", "no X.509 authority"),
            (&["bundle", "set", "-id", "spiffe://example.org", "-path", "/etc/hostname"][..], "exit 1", "no X.509 authority"),
            (&["bundle", "set", "-id", "spiffe://other.org", "-path", "/nonexistent.pem"][..], "exit 1", "nonexistent"),
            (&["entry", "delete", "-entryID", "no-such-entry"][..], "exit 1", "not found"),
            (&["agent", "evict", "-spiffeID", "spiffe://example.org/spire/agent/x/none"][..], "exit 1", "not found"),
            (&["x509", "mint", "-spiffeID", "spiffe://other.org/x"][..], "exit 1", "trust domain"),
            (&["jwt", "mint", "-spiffeID", "spiffe://example.org/x"][..], "exit 64", "audience"),
        ] {
            let out = server_cli(&server, args);
            t.cli(format!("CLI {}", args.join(" ")), code, fragment, out).await;
        }
        let garbage_pem = dir.join("garbage.pem");
        std::fs::write(&garbage_pem, "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n").unwrap();
        let out = server_cli(&server, &["bundle", "set", "-id", "spiffe://other.org", "-path", garbage_pem.to_str().unwrap()]);
        t.cli("CLI bundle set <garbage PEM>", "exit 1", "certificate", out).await;
        let out = server_cli(&server, &["bundle", "set", "-id", "spiffe://other.org", "-format", "spiffe", "-path", garbage.to_str().unwrap()]);
        t.cli("CLI bundle set -format spiffe <truncated JSON>", "exit 1", "JSON", out).await;

        // ---- config files ----
        let server_bin = server_bin();
        let agent_bin = agent_bin();
        for (name, text, fragment) in [
            ("syntax.conf", "server {\n trust_domain = \"example.org\"\n", "syntax"),
            ("nosrv.conf", "plugins {}\n", "server"),
            ("td.conf", "server { trust_domain = \"Not A TD\" }\nplugins {}\n", "trust_domain"),
            ("port.conf", "server {\n data_dir = \"/tmp/sigil-malformed\"\n trust_domain = \"example.org\"\n bind_port = \"99999\"\n}\nplugins {}\n", "bind_port"),
            ("unknown.conf", "server {\n data_dir = \"/tmp/sigil-malformed\"\n trust_domain = \"example.org\"\n frobnicate = 1\n}\nplugins {}\n", "frobnicate"),
            ("ttl.conf", "server {\n data_dir = \"/tmp/sigil-malformed\"\n trust_domain = \"example.org\"\n ca_ttl = \"forever\"\n}\nplugins {}\n", "ca_ttl"),
        ] {
            let out = validate(&server_bin, dir, name, text);
            t.cli(format!("sigil-server validate {text:?}"), "exit 64", fragment, out).await;
        }
        for (name, text, fragment) in [
            ("a-syntax.conf", "agent { = }\n", "syntax"),
            ("a-noagent.conf", "plugins {}\n", "agent"),
            ("a-port.conf", "agent {\n trust_domain = \"example.org\"\n server_port = \"http\"\n}\nplugins {}\n", "data_dir"),
        ] {
            let out = validate(&agent_bin, dir, name, text);
            t.cli(format!("sigil-agent validate {text:?}"), "exit 64", fragment, out).await;
        }

        // ---- admin API over the admin socket ----
        let mut a = admin_client.clone();
        for (e, fragment) in [
            (entry("", parent, &[("unix", "uid:1")]), "spiffe"),
            (entry("spiffe://example.org/x", "", &[("unix", "uid:1")]), "parent"),
            (entry("spiffe://example.org/x", parent, &[]), "selector"),
            (entry("spiffe://example.org/x", parent, &[("", "uid:1")]), "selector"),
            (entry("spiffe://other.org/x", parent, &[("unix", "uid:1")]), "trust domain"),
            (entry("spiffe://example.org/x", "garbage", &[("unix", "uid:1")]), "parent"),
            (
                common::RegistrationEntry {
                    x509_svid_ttl: -1,
                    ..entry("spiffe://example.org/x", parent, &[("unix", "uid:1")])
                },
                "ttl",
            ),
            (
                common::RegistrationEntry {
                    dns_names: vec!["not a dns name".into()],
                    ..entry("spiffe://example.org/x", parent, &[("unix", "uid:1")])
                },
                "dns",
            ),
        ] {
            let input = format!("admin BatchCreateEntry {e:?}");
            let r = a
                .batch_create_entry(admin::BatchCreateEntryRequest { entries: vec![e] })
                .await;
            t.row(input, "InvalidArgument", fragment, async move { grpc_outcome(r) }).await;
        }
        // A batch with one bad entry creates none of them.
        let r = a
            .batch_create_entry(admin::BatchCreateEntryRequest {
                entries: vec![
                    entry("spiffe://example.org/good", parent, &[("unix", "uid:7")]),
                    entry("bad", parent, &[("unix", "uid:7")]),
                ],
            })
            .await;
        t.row("admin BatchCreateEntry [good, bad]", "InvalidArgument", "spiffe", async move { grpc_outcome(r) }).await;
        let r = a.batch_create_entry(admin::BatchCreateEntryRequest { entries: vec![] }).await;
        t.row("admin BatchCreateEntry []", "InvalidArgument", "batch", async move { grpc_outcome(r) }).await;
        let r = a.get_entry(admin::GetEntryRequest { id: "no-such-entry".into() }).await;
        t.row("admin GetEntry no-such-entry", "NotFound", "no-such-entry", async move { grpc_outcome(r) }).await;
        let r = a.batch_delete_entry(admin::BatchDeleteEntryRequest { ids: vec!["no-such-entry".into()] }).await;
        t.row("admin BatchDeleteEntry no-such-entry", "NotFound", "no-such-entry", async move { grpc_outcome(r) }).await;
        let r = a
            .mint_x509svid(admin::MintX509svidRequest {
                csr: b"not DER".to_vec(),
                spiffe_id: "spiffe://example.org/x".into(),
                ..Default::default()
            })
            .await;
        t.row("admin MintX509SVID csr=garbage", "InvalidArgument", "CSR", async move { grpc_outcome(r) }).await;
        let r = a
            .mint_x509svid(admin::MintX509svidRequest {
                csr: csr(dir, Some("spiffe://example.org/other")),
                spiffe_id: "spiffe://example.org/x".into(),
                ..Default::default()
            })
            .await;
        t.row("admin MintX509SVID CSR for another ID", "InvalidArgument", "spiffe://example.org/other", async move { grpc_outcome(r) }).await;
        let r = a
            .mint_jwtsvid(admin::MintJwtsvidRequest {
                spiffe_id: "spiffe://example.org/x".into(),
                audience: vec![],
                ttl: 0,
            })
            .await;
        t.row("admin MintJWTSVID no audience", "InvalidArgument", "audience", async move { grpc_outcome(r) }).await;
        let r = a
            .create_join_token(admin::CreateJoinTokenRequest {
                ttl: 600,
                spiffe_id: "spiffe://other.org/x".into(),
            })
            .await;
        t.row("admin CreateJoinToken foreign spiffe_id", "InvalidArgument", "trust domain", async move { grpc_outcome(r) }).await;
        let r = a.get_agent(admin::GetAgentRequest { spiffe_id: "garbage".into() }).await;
        t.row("admin GetAgent garbage", "InvalidArgument", "spiffe", async move { grpc_outcome(r) }).await;
        let r = a
            .evict_agent(admin::EvictAgentRequest {
                spiffe_id: format!("spiffe://{td}/spire/agent/join_token/none"),
            })
            .await;
        t.row("admin EvictAgent unknown agent", "NotFound", "not found", async move { grpc_outcome(r) }).await;
        let r = a
            .set_federated_bundle(admin::SetFederatedBundleRequest {
                bundle: Some(common::Bundle {
                    trust_domain: td.clone(),
                    ..Default::default()
                }),
            })
            .await;
        t.row("admin SetFederatedBundle our own trust domain", "InvalidArgument", "own", async move { grpc_outcome(r) }).await;
        let r = a
            .set_federated_bundle(admin::SetFederatedBundleRequest {
                bundle: Some(common::Bundle {
                    trust_domain: "other.org".into(),
                    x509_authorities: vec![b"not DER".to_vec()],
                    ..Default::default()
                }),
            })
            .await;
        t.row("admin SetFederatedBundle garbage authority", "InvalidArgument", "certificate", async move { grpc_outcome(r) }).await;
        let r = a.set_federated_bundle(admin::SetFederatedBundleRequest { bundle: None }).await;
        t.row("admin SetFederatedBundle no bundle", "InvalidArgument", "bundle", async move { grpc_outcome(r) }).await;

        // ---- agent API over mTLS, as an attested agent ----
        let mut ag = conn.client();
        let mint = |entry_id: &str, csr: Vec<u8>, spiffe_id: &str| agentpb::BatchMintX509svidRequest {
            requests: vec![agentpb::X509svidRequest {
                entry_id: entry_id.into(),
                csr,
                spiffe_id: spiffe_id.into(),
                pod_uid: String::new(),
            }],
        };
        let good_csr = csr(dir, None);
        let r = ag.batch_mint_x509svid(mint(&mine, b"garbage".to_vec(), "")).await;
        t.row("agent BatchMintX509SVID csr=garbage", "InvalidArgument", "CSR", async move { grpc_outcome(r) }).await;
        let r = ag.batch_mint_x509svid(mint(&mine, vec![], "")).await;
        t.row("agent BatchMintX509SVID csr=empty", "InvalidArgument", "CSR", async move { grpc_outcome(r) }).await;
        let r = ag
            .batch_mint_x509svid(mint(&mine, csr(dir, Some("spiffe://example.org/evil")), ""))
            .await;
        t.row("agent BatchMintX509SVID CSR asking for another ID", "InvalidArgument", "spiffe://example.org/evil", async move { grpc_outcome(r) }).await;
        let r = ag.batch_mint_x509svid(mint(&not_mine, good_csr.clone(), "")).await;
        t.row("agent BatchMintX509SVID another agent's entry", "PermissionDenied", "", async move { grpc_outcome(r) }).await;
        let r = ag.batch_mint_x509svid(mint("no-such-entry", good_csr.clone(), "")).await;
        t.row("agent BatchMintX509SVID unknown entry", "PermissionDenied", "", async move { grpc_outcome(r) }).await;
        let r = ag
            .batch_mint_x509svid(mint(&mine, good_csr.clone(), "spiffe://example.org/not-the-entry"))
            .await;
        t.row("agent BatchMintX509SVID fixed entry, other spiffe_id", "PermissionDenied", "does not give", async move { grpc_outcome(r) }).await;
        let oversized = agentpb::BatchMintX509svidRequest {
            requests: (0..1001)
                .map(|_| agentpb::X509svidRequest {
                    entry_id: mine.clone(),
                    csr: good_csr.clone(),
                    spiffe_id: String::new(),
                    pod_uid: String::new(),
                })
                .collect(),
        };
        let r = ag.batch_mint_x509svid(oversized).await;
        t.row("agent BatchMintX509SVID 1001 requests", "InvalidArgument", "at most", async move { grpc_outcome(r) }).await;
        let r = ag
            .mint_jwtsvid(agentpb::MintJwtsvidRequest {
                entry_id: mine.clone(),
                audience: vec![],
                spiffe_id: String::new(),
                pod_uid: String::new(),
            })
            .await;
        t.row("agent MintJWTSVID no audience", "InvalidArgument", "audience", async move { grpc_outcome(r) }).await;
        let r = ag
            .mint_jwtsvid(agentpb::MintJwtsvidRequest {
                entry_id: not_mine.clone(),
                audience: vec!["db".into()],
                spiffe_id: String::new(),
                pod_uid: String::new(),
            })
            .await;
        t.row("agent MintJWTSVID another agent's entry", "PermissionDenied", "", async move { grpc_outcome(r) }).await;
        let r = ag.renew_agent(agentpb::RenewAgentRequest { csr: b"garbage".to_vec() }).await;
        t.row("agent RenewAgent csr=garbage", "InvalidArgument", "CSR", async move { grpc_outcome(r) }).await;
        // Past the agent API's message limit: refused by the decoder before any handler runs.
        let huge_csr = vec![0x30; sigil_proto::limits::AGENT_API_MAX_MESSAGE + 1];
        // The agent's own client refuses to send it; this one may, to reach the server.
        let mut unbounded = conn.client().max_encoding_message_size(usize::MAX);
        let r = unbounded.batch_mint_x509svid(mint(&mine, huge_csr, "")).await;
        t.row("agent BatchMintX509SVID a 16 MiB CSR", "OutOfRange", "too large", async move { grpc_outcome(r) }).await;
        let mut anon_client = anon.client();
        let r = anon_client
            .attest_agent(agentpb::AttestAgentRequest {
                attestation_type: "join_token".into(),
                payload: b"no-such-token".to_vec(),
                csr: good_csr.clone(),
            })
            .await;
        t.row("agent AttestAgent unknown join token", "PermissionDenied", "token", async move { grpc_outcome(r) }).await;
        let r = anon_client
            .attest_agent(agentpb::AttestAgentRequest {
                attestation_type: "tpm_magic".into(),
                payload: b"x".to_vec(),
                csr: good_csr.clone(),
            })
            .await;
        t.row("agent AttestAgent unknown attestation type", "InvalidArgument", "tpm_magic", async move { grpc_outcome(r) }).await;
        let r = anon_client
            .batch_mint_x509svid(mint(&mine, good_csr.clone(), ""))
            .await;
        t.row("agent BatchMintX509SVID without a client certificate", "Unauthenticated", "", async move { grpc_outcome(r) }).await;

        // ---- Workload API ----
        let r = workload
            .fetch_jwtsvid(wl::JwtsvidRequest {
                audience: vec!["db".into()],
                spiffe_id: String::new(),
            })
            .await;
        t.row("workload FetchJWTSVID without the security header", "InvalidArgument", "header", async move { grpc_outcome(r) }).await;
        let r = match workload.fetch_x509svid(wl::X509svidRequest {}).await {
            Ok(mut s) => s.get_mut().message().await.map(|_| ()),
            Err(e) => Err(e),
        };
        t.row("workload FetchX509SVID without the security header", "InvalidArgument", "header", async move { grpc_outcome(r) }).await;
        let r = workload
            .fetch_jwtsvid(with_header(wl::JwtsvidRequest {
                audience: vec![],
                spiffe_id: String::new(),
            }))
            .await;
        t.row("workload FetchJWTSVID no audience", "InvalidArgument", "audience", async move { grpc_outcome(r) }).await;
        let r = workload
            .fetch_jwtsvid(with_header(wl::JwtsvidRequest {
                audience: vec!["db".into()],
                spiffe_id: "spiffe://example.org/not-mine".into(),
            }))
            .await;
        t.row("workload FetchJWTSVID for an ID it has not", "PermissionDenied", "", async move { grpc_outcome(r) }).await;
        for (token, audience, fragment) in [
            ("garbage".to_owned(), "db", ""),
            (String::new(), "db", "svid"),
            ("a.b.c".to_owned(), "db", ""),
            (jwt.clone(), "", "audience"),
            (jwt.clone(), "not-db", "audience"),
            (format!("{jwt}x"), "db", ""),
            (
                "eyJhbGciOiJub25lIiwia2lkIjoiayJ9.eyJzdWIiOiJzcGlmZmU6Ly9leGFtcGxlLm9yZy94IiwiYXVkIjoiZGIiLCJleHAiOjk5OTk5OTk5OTl9.".to_owned(),
                "db",
                "none",
            ),
        ] {
            let input = format!("workload ValidateJWTSVID aud={audience:?} svid={token:.40}");
            let r = workload
                .validate_jwtsvid(with_header(wl::ValidateJwtsvidRequest {
                    audience: audience.into(),
                    svid: token,
                }))
                .await;
            t.row(input, "InvalidArgument", fragment, async move { grpc_outcome(r) }).await;
        }
        // Past the Workload API's request limit (1 MiB): refused before the agent parses anything.
        let r = workload
            .validate_jwtsvid(with_header(wl::ValidateJwtsvidRequest {
                audience: "db".into(),
                svid: "a".repeat(sigil_agent::workload_api::MAX_REQUEST_BYTES + 1),
            }))
            .await;
        t.row("workload ValidateJWTSVID a 1 MiB token", "OutOfRange", "too large", async move { grpc_outcome(r) }).await;
        let r = workload
            .validate_jwtsvid(wl::ValidateJwtsvidRequest {
                audience: "db".into(),
                svid: jwt.clone(),
            })
            .await;
        t.row("workload ValidateJWTSVID without the security header", "InvalidArgument", "header", async move { grpc_outcome(r) }).await;

        // ---- the verdict ----
        let mut failures = t.changed.clone();
        for row in &t.rows {
            let ok = row.got.code == row.expect_code
                && row
                    .got
                    .message
                    .to_lowercase()
                    .contains(&row.expect_fragment.to_lowercase());
            if !ok {
                failures.push(format!(
                    "{}\n  expected {} with {:?}\n  got      {}: {}",
                    row.input,
                    row.expect_code,
                    row.expect_fragment,
                    row.got.code,
                    row.got.message.trim()
                ));
            }
        }
        assert!(t.rows.len() >= 50, "only {} rows", t.rows.len());
        assert!(
            failures.is_empty(),
            "{} of {} rows failed:\n{}",
            failures.len(),
            t.rows.len(),
            failures.join("\n")
        );
    });
    drop(agent);
}

/// The admin socket is reachable only by its owner: the socket is 0600 in a 0700 directory,
/// and the CLI run as another uid (nobody, via util-linux `setpriv`) is refused, even when the
/// directory is opened up and only the socket's own mode stands in the way.
#[test]
fn admin_socket_is_owner_only() {
    use std::os::unix::fs::PermissionsExt;

    let server = Server::start(ServerOptions::default());
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    let private = server.socket.parent().unwrap().to_owned();
    assert_eq!(mode(&server.socket), 0o600, "admin socket mode");
    assert_eq!(mode(&private), 0o700, "admin socket directory mode");

    let is_root = nix::unistd::getuid().is_root();
    let setpriv = Command::new("setpriv").arg("--version").output().is_ok();
    if !is_root || !setpriv {
        eprintln!("NOTICE: not root or no setpriv: the other-uid half of this test is skipped");
        return;
    }
    let entries_before = server.cli_ok(&["entry", "count"]);
    // Let nobody reach the private directory's parent, so only our modes are tested.
    std::fs::set_permissions(server.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let as_nobody = |extra: &[&str]| {
        Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(server_bin())
            .args(extra)
            .arg("-socketPath")
            .arg(&server.socket)
            .output()
            .unwrap()
    };
    let create = [
        "entry",
        "create",
        "-spiffeID",
        "spiffe://example.org/intruder",
        "-parentID",
        "spiffe://example.org/spire/agent/x/y",
        "-selector",
        "unix:uid:0",
    ];
    for (layer, dir_mode) in [("directory 0700", 0o700), ("socket 0600", 0o755)] {
        std::fs::set_permissions(&private, std::fs::Permissions::from_mode(dir_mode)).unwrap();
        for args in [
            &create[..],
            &["token", "generate"][..],
            &["entry", "count"][..],
        ] {
            let out = as_nobody(args);
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stderr),
                String::from_utf8_lossy(&out.stdout)
            );
            assert!(
                !out.status.success(),
                "{layer}: nobody ran {args:?}: {text}"
            );
            assert!(
                text.to_lowercase().contains("permission denied"),
                "{layer}: {args:?}: unclear error: {text}"
            );
        }
    }
    std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o700)).unwrap();
    // The owner still gets through, and nothing changed.
    assert_eq!(server.cli_ok(&["entry", "count"]), entries_before);
}
