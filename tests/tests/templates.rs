//! End-to-end tests of identity templates with the real `sigil-server` and `sigil-agent`: a
//! template over the unix attestor's selectors (no kubelet needed) gives this test's own
//! process its rendered ID as an X509-SVID and a JWT-SVID, minted on demand; the server refuses
//! mint requests (with the agent's real SVID) for IDs that are not instances of the template,
//! and any instance of a template the agent reaches through a shared parent (issue 17).

use std::time::Duration;

use sigil_testkit::{Server, ServerOptions, attested_agent, multi_thread_rt, uid, wait_for};

const TEMPLATE: &str = "spiffe://example.org/uid/{unix:uid}";

fn create_template(server: &Server, parent: &str) -> serde_json::Value {
    server.cli_json(&[
        "entry",
        "create",
        "-template",
        "-spiffeID",
        TEMPLATE,
        "-parentID",
        parent,
        "-selector",
        "unix:uid",
    ])
}

#[test]
fn template_entry_gives_the_workload_its_rendered_id() {
    let server = Server::start(ServerOptions::default());
    let (agent, agent_id) = attested_agent(&server, false);

    // Invalid templates: a clear error, nothing written.
    for bad in [
        "spiffe://example.org/uid-{unix:uid}",
        "spiffe://example.org/fixed",
    ] {
        let out = server.cli(&[
            "entry",
            "create",
            "-template",
            "-spiffeID",
            bad,
            "-parentID",
            &agent_id,
            "-selector",
            "unix:uid",
        ]);
        assert!(!out.status.success(), "{bad} accepted");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("template"), "{bad}: {err}");
    }
    assert!(
        server.cli_ok(&["entry", "count"]).starts_with("0 "),
        "nothing written"
    );

    let created = create_template(&server, &agent_id);
    let entry = &created["results"][0]["entry"];
    assert_eq!(entry["template"], true, "{created}");
    assert_eq!(sigil_testkit::id_text(&entry["spiffe_id"]), TEMPLATE);
    let shown = server.cli_ok(&["entry", "show", "-spiffeID", TEMPLATE]);
    assert!(
        shown.contains(&format!("SPIFFE ID               : {TEMPLATE} (template)")),
        "{shown}"
    );

    let want = format!("spiffe://example.org/uid/{}", uid());
    let fetched = wait_for(
        "the rendered X509-SVID via the CLI",
        Duration::from_secs(15),
        || {
            let out = agent.cli(&["api", "fetch", "x509", "-output", "json"]);
            let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
            v.to_string().contains(&want).then_some(v)
        },
    );
    let svids = fetched["svids"].as_array().expect("svids");
    assert_eq!(svids.len(), 1, "{fetched}");
    assert_eq!(svids[0]["spiffe_id"], want.as_str());

    let out = agent.cli(&[
        "api",
        "fetch",
        "jwt",
        "-audience",
        "payments",
        "-output",
        "json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let jwt: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert!(jwt.to_string().contains(&want), "{jwt}");
}

/// A client holding the agent's real SVID forges mint requests. A template parented directly
/// to the agent is the operator's grant to that one node: any instance of it is signed, as a
/// workload's selectors would render it, and nothing that is not an instance. The same
/// template under an ID that other agents may share (a node alias, or as here an entry the
/// agent reaches through a group entry under it) gives this join_token agent nothing: the
/// server can check no pod facts for a node that is not a `k8s_psat` one (issue 17).
#[test]
fn forged_template_mint_requests_are_refused() {
    use sigil_proto::sigil::agent::v1 as pb;
    use sigil_testkit::agent_link::{server_connection, x509_mint_request};

    let server = Server::start(ServerOptions::default());
    let (agent, agent_id) = attested_agent(&server, false);
    let created = create_template(&server, &agent_id);
    let entry_id = sigil_testkit::created_entry_id(&created);
    let group = "spiffe://example.org/node-group";
    server.cli_json(&[
        "entry",
        "create",
        "-spiffeID",
        group,
        "-parentID",
        &agent_id,
        "-selector",
        "unix:uid:0",
    ]);
    let via_group = sigil_testkit::created_entry_id(&create_template(&server, group));

    let (svid, bundle) = agent.stored_credentials(&server);
    multi_thread_rt().block_on(async {
        let conn = server_connection(&server, &svid, &bundle);
        let mint = |spiffe_id: &str| x509_mint_request(&entry_id, spiffe_id);
        let jwt = |entry_id: &str, spiffe_id: &str| pb::MintJwtsvidRequest {
            entry_id: entry_id.into(),
            audience: vec!["a".into()],
            spiffe_id: spiffe_id.into(),
            pod_uid: String::new(),
        };
        for forged in [
            "spiffe://example.org/uid/../y",
            "spiffe://example.org/uid/1/2",
            "spiffe://example.org/other/1",
            "spiffe://example.org",
            "",
        ] {
            let err = conn
                .client()
                .batch_mint_x509svid(mint(forged))
                .await
                .unwrap_err();
            assert_eq!(
                err.code(),
                tonic::Code::PermissionDenied,
                "{forged}: {err:?}"
            );
            let err = conn
                .client()
                .mint_jwtsvid(jwt(&entry_id, forged))
                .await
                .unwrap_err();
            assert_eq!(
                err.code(),
                tonic::Code::PermissionDenied,
                "{forged}: {err:?}"
            );
        }
        // The agent's own template: an instance is signed with exactly that ID.
        let ok = conn
            .client()
            .batch_mint_x509svid(mint("spiffe://example.org/uid/4242"))
            .await
            .expect("an instance is signed")
            .into_inner();
        assert_eq!(
            uri_sans(&ok.svids[0].svid_chain[0]),
            ["spiffe://example.org/uid/4242"]
        );
        // Through the group: nothing, not even this process's own instance.
        let own = format!("spiffe://example.org/uid/{}", uid());
        for id in [own.as_str(), "spiffe://example.org/uid/4242"] {
            let err = conn
                .client()
                .batch_mint_x509svid(x509_mint_request(&via_group, id))
                .await
                .unwrap_err();
            assert_eq!(err.code(), tonic::Code::PermissionDenied, "{id}: {err:?}");
            assert!(
                err.message().contains("only signed for k8s_psat agents"),
                "{}",
                err.message()
            );
            let err = conn
                .client()
                .mint_jwtsvid(jwt(&via_group, id))
                .await
                .unwrap_err();
            assert_eq!(err.code(), tonic::Code::PermissionDenied, "{id}: {err:?}");
        }
    });
    assert!(
        server
            .log()
            .lines()
            .any(|l| l.contains("WARN") && l.contains("mint refused") && l.contains(&via_group)),
        "no WARN line for the refused instance"
    );
}

/// A template over `k8s:` facts cannot hang off anything but one agent on a server that
/// watches no Kubernetes cluster: no agent could ever be signed an instance of it.
#[test]
fn a_k8s_template_under_a_node_alias_needs_a_k8s_psat_cluster() {
    let server = Server::start(ServerOptions::default());
    let (_agent, agent_id) = attested_agent(&server, false);
    let template = "spiffe://example.org/ns/{k8s:ns}/sa/{k8s:sa}";
    let create = |parent: &str| {
        server.cli(&[
            "entry",
            "create",
            "-template",
            "-spiffeID",
            template,
            "-parentID",
            parent,
            "-selector",
            "k8s:ns",
        ])
    };
    let out = create("spiffe://example.org/k8s-cluster/demo");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("only signed for pods the Kubernetes API vouches for")
            && err.contains("no k8s_psat cluster configured"),
        "{err}"
    );
    assert!(
        server.cli_ok(&["entry", "count"]).starts_with("0 "),
        "nothing written"
    );
    // Parented to one agent: as before.
    assert!(create(&agent_id).status.success());
}

/// The URI SANs of a DER certificate (x509-parser).
fn uri_sans(der: &[u8]) -> Vec<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).unwrap();
    let san = cert.subject_alternative_name().unwrap().unwrap();
    san.value
        .general_names
        .iter()
        .filter_map(|n| match n {
            x509_parser::extensions::GeneralName::URI(u) => Some(u.to_string()),
            _ => None,
        })
        .collect()
}
