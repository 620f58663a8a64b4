//! Reserved SPIFFE IDs, end to end with the real `sigil-server` and `sigil-agent`.
//!
//! The attack: a workload holding `spiffe://<td>/spire/server` poses as the server to a new
//! agent (which trusts any peer with that ID and the bundle), takes its join token and redeems
//! it at the real server. These tests show no workload can get such an SVID any more: entries
//! in `/spire/*` are refused at every entry point, a template instance a user name steers into
//! `/spire/server` gives that workload nothing, the agent API refuses to sign one even when an
//! agent asks directly with its own SVID, and an entry left in the datastore by an older server
//! is not served.

use std::process::{Command, Output};
use std::time::Duration;

use sigil_proto::sigil::admin::v1 as admin;
use sigil_proto::sigil::agent::v1 as pb;
use sigil_proto::sigil::common::v1 as common;
use sigil_testkit::admin::admin_client;
use sigil_testkit::rt;
use sigil_testkit::{
    Agent, Server, ServerOptions, agent_bin, attested_agent, register_uid, sqlite3, uid, wait_for,
};

const SERVER_ID: &str = "spiffe://example.org/spire/server";

/// IDs in the reserved namespace, each refused as an entry's SPIFFE ID.
const RESERVED: &[&str] = &[
    SERVER_ID,
    "spiffe://example.org/spire/agent/join_token/forged",
    "spiffe://example.org/spire",
    "spiffe://example.org/spire/anything",
];

/// A template over the unix attestor's user name: a user named `spire` renders
/// `spiffe://example.org/spire/server`.
const USER_TEMPLATE: &str = "spiffe://example.org/{unix:user}/server";

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Runs a server CLI command that must fail saying the ID is reserved.
fn refused(server: &Server, args: &[&str]) {
    let out = server.cli(args);
    assert!(!out.status.success(), "{args:?} was accepted");
    assert!(
        stderr(&out).contains("reserved"),
        "{args:?}: unclear error: {}",
        stderr(&out)
    );
}

fn entry_count(server: &Server) -> String {
    server.cli_ok(&["entry", "count"])
}

fn create_user_template(server: &Server, parent: &str) -> String {
    let created = server.cli_json(&[
        "entry",
        "create",
        "-template",
        "-spiffeID",
        USER_TEMPLATE,
        "-parentID",
        parent,
        "-selector",
        "unix:user",
    ]);
    sigil_testkit::created_entry_id(&created)
}

/// Every way an operator (or anything with the admin socket) can create or change an entry, or
/// mint, refuses a reserved ID with a clear error and writes nothing; what SPIRE allows around
/// it (entries parented to agents and the server, node aliases, look-alike paths) still works.
#[test]
fn reserved_ids_are_refused_at_every_entry_point() {
    let server = Server::start(ServerOptions::default());
    let (_agent, agent_id) = attested_agent(&server, false);
    let before = entry_count(&server);

    // entry create with flags: fixed, node alias (-node) and template.
    for id in RESERVED {
        refused(
            &server,
            &[
                "entry",
                "create",
                "-spiffeID",
                id,
                "-parentID",
                &agent_id,
                "-selector",
                "unix:uid:0",
            ],
        );
        refused(
            &server,
            &[
                "entry",
                "create",
                "-node",
                "-spiffeID",
                id,
                "-selector",
                "join_token:x",
            ],
        );
    }
    refused(
        &server,
        &[
            "entry",
            "create",
            "-template",
            "-spiffeID",
            "spiffe://example.org/spire/{unix:user}",
            "-parentID",
            &agent_id,
            "-selector",
            "unix:user",
        ],
    );

    // entry create -data: one reserved entry among good ones refuses the whole file.
    let good = |name: &str| {
        format!(
            r#"{{"spiffe_id": "spiffe://example.org/{name}", "parent_id": "{agent_id}", "selectors": [{{"type": "unix", "value": "uid:1"}}]}}"#
        )
    };
    let data = server.dir.path().join("entries.json");
    std::fs::write(
        &data,
        format!(
            r#"{{"entries": [{}, {{"spiffe_id": {{"trust_domain": "example.org", "path": "/spire/server"}}, "parent_id": "{agent_id}", "selectors": [{{"type": "unix", "value": "uid:1"}}]}}, {}]}}"#,
            good("first"),
            good("last")
        ),
    )
    .unwrap();
    refused(
        &server,
        &["entry", "create", "-data", data.to_str().unwrap()],
    );
    assert_eq!(entry_count(&server), before, "nothing written");

    // entry update: a good entry cannot be moved into the namespace, by flag or by -data.
    let web = register_uid(&server, "spiffe://example.org/web", &agent_id, 1, &[]);
    // Partially, and as SPIRE's update does it (the whole entry).
    for rest in [
        &["-partial"][..],
        &["-parentID", &agent_id, "-selector", "unix:uid:1"],
    ] {
        let mut args = vec!["entry", "update", "-entryID", &web, "-spiffeID", SERVER_ID];
        args.extend(rest);
        refused(&server, &args);
    }
    std::fs::write(
        &data,
        format!(
            r#"{{"entries": [{{"id": "{web}", "spiffe_id": "{SERVER_ID}", "parent_id": "{agent_id}", "selectors": [{{"type": "unix", "value": "uid:1"}}]}}]}}"#
        ),
    )
    .unwrap();
    refused(
        &server,
        &["entry", "update", "-data", data.to_str().unwrap()],
    );
    let shown = server.cli_json(&["entry", "show", "-entryID", &web]);
    let web_id = sigil_testkit::id_text(&shown["entries"][0]["spiffe_id"]);
    assert_eq!(web_id, "spiffe://example.org/web", "{shown}");

    // token generate -spiffeID would create an alias entry with that ID.
    refused(
        &server,
        &["token", "generate", "-spiffeID", SERVER_ID, "-ttl", "600"],
    );
    // x509 mint / jwt mint: SPIRE's MintX509SVID and MintJWTSVID refuse these too.
    refused(&server, &["x509", "mint", "-spiffeID", SERVER_ID]);
    refused(
        &server,
        &["jwt", "mint", "-spiffeID", SERVER_ID, "-audience", "a"],
    );
    let after_web = entry_count(&server);

    // The admin API itself, not only the CLI's own check.
    rt().block_on(async {
        let mut client = admin_client(&server.socket).await.unwrap();
        let wire = |spiffe_id: &str| common::RegistrationEntry {
            spiffe_id: spiffe_id.into(),
            parent_id: agent_id.clone(),
            selectors: vec![common::Selector {
                r#type: "unix".into(),
                value: "uid:2".into(),
            }],
            ..Default::default()
        };
        for id in RESERVED {
            let err = client
                .batch_create_entry(admin::BatchCreateEntryRequest {
                    entries: vec![wire("spiffe://example.org/ok"), wire(id)],
                })
                .await
                .unwrap_err();
            assert_eq!(err.code(), tonic::Code::InvalidArgument, "{id}: {err:?}");
            assert!(err.message().contains("reserved"), "{id}: {err:?}");
            let err = client
                .batch_update_entry(admin::BatchUpdateEntryRequest {
                    entries: vec![common::RegistrationEntry {
                        id: web.clone(),
                        ..wire(id)
                    }],
                })
                .await
                .unwrap_err();
            assert_eq!(err.code(), tonic::Code::InvalidArgument, "{id}: {err:?}");
        }
        let err = client
            .create_join_token(admin::CreateJoinTokenRequest {
                ttl: 600,
                spiffe_id: SERVER_ID.into(),
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
        let err = client
            .mint_jwtsvid(admin::MintJwtsvidRequest {
                spiffe_id: SERVER_ID.into(),
                audience: vec!["a".into()],
                ttl: 0,
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    });
    assert_eq!(entry_count(&server), after_web, "nothing written");

    // What stays legitimate: an entry under the server (a node alias) or under an agent, and
    // paths that only look like the namespace.
    for (id, parent) in [
        ("spiffe://example.org/cluster/demo", SERVER_ID),
        ("spiffe://example.org/spire-agent", agent_id.as_str()),
        (
            "spiffe://example.org/ns/spire/sa/spire-server",
            agent_id.as_str(),
        ),
    ] {
        server.cli_ok(&[
            "entry",
            "create",
            "-spiffeID",
            id,
            "-parentID",
            parent,
            "-selector",
            "unix:uid:3",
        ]);
    }
    server.cli_ok(&["x509", "mint", "-spiffeID", "spiffe://example.org/web"]);
}

/// A local user named `spire`, created for the test when missing (and then removed again),
/// so that the `unix` attestor reports `unix:user:spire` for a process running as it.
struct SpireUser {
    uid: u32,
    gid: u32,
    created: bool,
}

impl SpireUser {
    /// `None` (with a NOTICE) when the test cannot run a process as another user.
    fn get() -> Option<Self> {
        let tools = ["setpriv", "useradd", "userdel"]
            .iter()
            .all(|t| Command::new(t).arg("--help").output().is_ok());
        if uid() != 0 || !tools {
            eprintln!(
                "NOTICE: not root or no setpriv/useradd: the workload-as-`spire` case is skipped"
            );
            return None;
        }
        let lookup = || nix::unistd::User::from_name("spire").ok().flatten();
        let mut created = false;
        if lookup().is_none() {
            let out = Command::new("useradd")
                .args(["--system", "--no-create-home", "--user-group"])
                .args(["--shell", "/usr/sbin/nologin", "spire"])
                .output()
                .unwrap();
            assert!(out.status.success(), "useradd spire: {}", stderr(&out));
            created = true;
        }
        let user = lookup().expect("user spire");
        Some(Self {
            uid: user.uid.as_raw(),
            gid: user.gid.as_raw(),
            created,
        })
    }

    /// Runs `sigil-agent api fetch <args>` against `agent` as this user.
    fn fetch(&self, agent: &Agent, args: &[&str]) -> Output {
        Command::new("setpriv")
            .arg(format!("--reuid={}", self.uid))
            .arg(format!("--regid={}", self.gid))
            .arg("--clear-groups")
            .arg(agent_bin())
            .args(["api", "fetch"])
            .args(args)
            .arg("-socketPath")
            .arg(&agent.socket)
            .output()
            .unwrap()
    }
}

impl Drop for SpireUser {
    fn drop(&mut self) {
        if self.created {
            let _ = Command::new("userdel").arg("spire").output();
        }
    }
}

/// The issue's attack through a template: `spiffe://example.org/{unix:user}/server` is a fine
/// template, but a workload running as a user named `spire` would render the server's ID. It
/// gets no identity at all (X.509 or JWT), and the agent says why at WARN; a workload of any
/// other user gets its instance.
#[test]
fn a_template_rendering_the_server_id_gives_the_workload_nothing() {
    let Some(user) = SpireUser::get() else {
        return;
    };
    let server = Server::start(ServerOptions::default());
    let (agent, agent_id) = attested_agent(&server, true);
    create_user_template(&server, &agent_id);

    // This process's user (root) gets its instance: the template is synced and works.
    let me = nix::unistd::User::from_uid(nix::unistd::geteuid())
        .unwrap()
        .expect("our user name")
        .name;
    let mine = format!("spiffe://example.org/{me}/server");
    agent.wait_for_ids(
        "our instance of the template",
        &[&mine],
        Duration::from_secs(15),
    );

    let out = user.fetch(&agent, &["x509", "-output", "json"]);
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), stderr(&out));
    assert!(!out.status.success(), "the `spire` workload got: {text}");
    assert!(text.contains("no identity issued"), "{text}");
    assert!(!text.contains(SERVER_ID), "{text}");
    let out = user.fetch(&agent, &["jwt", "-audience", "agent-bootstrap"]);
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), stderr(&out));
    assert!(
        !out.status.success(),
        "the `spire` workload got a JWT: {text}"
    );
    assert!(text.contains("no identity issued"), "{text}");

    let log = agent.log();
    assert!(
        log.lines()
            .any(|l| l.contains("WARN") && l.contains("reserved") && l.contains(SERVER_ID)),
        "no WARN naming the refused instance in the agent log"
    );
}

/// An agent asking the server directly, with its real SVID, for the server's ID (or any other
/// reserved one) under a template entry is refused by every mint; another instance is signed.
#[test]
fn the_server_refuses_to_sign_reserved_ids_even_when_an_agent_asks() {
    use sigil_testkit::agent_link::{server_connection, x509_mint_request};

    let server = Server::start(ServerOptions::default());
    let (agent, agent_id) = attested_agent(&server, false);
    let entry_id = create_user_template(&server, &agent_id);
    let bare = sigil_testkit::created_entry_id(&server.cli_json(&[
        "entry",
        "create",
        "-template",
        "-spiffeID",
        "spiffe://example.org/{unix:user}",
        "-parentID",
        &agent_id,
        "-selector",
        "unix:user",
    ]));

    let (svid, bundle) = agent.stored_credentials(&server);
    rt().block_on(async {
        let conn = server_connection(&server, &svid, &bundle);
        let jwt = |entry_id: &str, spiffe_id: &str| pb::MintJwtsvidRequest {
            entry_id: entry_id.into(),
            audience: vec!["agent-bootstrap".into()],
            spiffe_id: spiffe_id.into(),
            pod_uid: String::new(),
        };
        for (entry, id) in [
            (&entry_id, SERVER_ID),
            (&bare, "spiffe://example.org/spire"),
        ] {
            let errs = [
                conn.client()
                    .batch_mint_x509svid(x509_mint_request(entry, id))
                    .await
                    .unwrap_err(),
                conn.client()
                    .mint_jwtsvid(jwt(entry, id))
                    .await
                    .unwrap_err(),
                conn.client()
                    .batch_mint_jwtsvid(pb::BatchMintJwtsvidRequest {
                        requests: vec![jwt(entry, id)],
                    })
                    .await
                    .unwrap_err(),
            ];
            for err in errs {
                assert_eq!(err.code(), tonic::Code::PermissionDenied, "{id}: {err:?}");
                assert!(err.message().contains("reserved"), "{id}: {err:?}");
            }
        }
        let ok = "spiffe://example.org/alice/server";
        let signed = conn
            .client()
            .batch_mint_x509svid(x509_mint_request(&entry_id, ok))
            .await
            .expect("another instance is signed")
            .into_inner();
        let (_, cert) =
            x509_parser::parse_x509_certificate(&signed.svids[0].svid_chain[0]).unwrap();
        let san = cert.subject_alternative_name().unwrap().unwrap();
        assert!(
            san.value.general_names.iter().any(|n| matches!(
                n,
                x509_parser::extensions::GeneralName::URI(u) if *u == ok
            )),
            "{san:?}"
        );
    });
    assert!(
        server
            .log()
            .lines()
            .any(|l| l.contains("WARN") && l.contains("reserved") && l.contains(SERVER_ID)),
        "no WARN naming the forged request in the server log"
    );
}

/// A datastore from before reserved IDs were refused may hold such an entry (here written with
/// `sqlite3` while the server is down, as an older server would have stored it). After the
/// server starts on it, the entry is not served, even to the agent that already held it (its
/// resumed cache no longer matches and it takes a full snapshot), the server says so at WARN,
/// and the operator can still see and delete it.
#[test]
fn a_reserved_entry_left_in_an_old_datastore_is_not_served() {
    let mut server = Server::start(ServerOptions::default());
    let (agent, agent_id) = attested_agent(&server, false);
    let stale = register_uid(&server, "spiffe://example.org/stale", &agent_id, uid(), &[]);
    register_uid(&server, "spiffe://example.org/kept", &agent_id, uid(), &[]);
    agent.wait_for_ids(
        "both SVIDs",
        &["spiffe://example.org/stale", "spiffe://example.org/kept"],
        Duration::from_secs(15),
    );

    let stopped = server.stop();
    assert!(stopped.success(), "{stopped}");
    sqlite3(
        &server.db_path(),
        &format!("UPDATE registered_entries SET spiffe_id = '{SERVER_ID}' WHERE id = '{stale}';"),
    );
    server.spawn();

    wait_for(
        "the agent to drop the reserved entry",
        Duration::from_secs(30),
        || {
            let out = agent.fetched_x509();
            (out.contains("spiffe://example.org/kept") && !out.contains("/stale")).then_some(())
        },
    );
    for _ in 0..10 {
        let out = agent.fetched_x509();
        assert!(
            !out.contains(SERVER_ID),
            "the workload got the server's ID: {out}"
        );
        assert!(out.contains("spiffe://example.org/kept"), "{out}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let warned = server
        .log()
        .lines()
        .any(|l| l.contains("WARN") && l.contains("reserved namespace") && l.contains(&stale));
    assert!(warned, "no WARN naming the stale entry in the server log");

    let shown = server.cli_json(&["entry", "show", "-entryID", &stale]);
    let stale_id = sigil_testkit::id_text(&shown["entries"][0]["spiffe_id"]);
    assert_eq!(stale_id, SERVER_ID, "{shown}");
    server.cli_ok(&["entry", "delete", "-entryID", &stale]);
    assert!(entry_count(&server).starts_with("1 "));
}
