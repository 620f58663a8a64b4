//! Issue 17 on the real kube-apiserver: an identity template under a node alias (or a fixed
//! entry naming a pod) gives an agent only what the Kubernetes API binds to that agent's node.
//!
//! Two agents attest with real PSATs for node-a and node-b (the real agent binary, stopped once
//! it has stored its SVID); the tests then speak for them straight to the agent API with their
//! SVIDs and forged requests, as a compromised node would. Workload pods exist only in the API
//! (`spec.nodeName` set, no kubelet). Every refusal is PermissionDenied naming the failed
//! check (Unavailable while the pod cache is stale: the server cannot judge), signs nothing
//! (the server's signing counters do not move) and leaves a WARN line.

use std::path::Path;
use std::time::{Duration, Instant};

use sigil_agent::server_client::ServerConnection;
use sigil_proto::sigil::agent::v1 as pb;
use sigil_testkit::agent_link::{server_connection, x509_mint_request_for_pod};
use sigil_testkit::k8s::{kube, psat_server_plugin};
use sigil_testkit::net::{counter_sum, http_get};
use sigil_testkit::proxy::CuttableProxy;
use sigil_testkit::{Agent, Server, ServerOptions, multi_thread_rt, wait_for};
use tokio::runtime::Runtime;
use tonic::{Code, Status};

const CLUSTER: &str = "trust";
const ALIAS: &str = "spiffe://example.org/k8s-cluster/trust";
const NS_SA: &str = "spiffe://example.org/ns/{k8s:ns}/sa/{k8s:sa}";
/// How long the API may take to tell the server's pod cache about a change.
const PROPAGATION: Duration = Duration::from_secs(15);

/// A namespace of its own with service accounts `spire-agent` and `web`, nodes `<ns>-a` and
/// `<ns>-b`, and an agent pod on each (`agent-a`, `agent-b`).
struct World {
    ns: String,
    node_a: String,
    node_b: String,
    dir: tempfile::TempDir,
}

impl World {
    fn new(prefix: &str) -> Self {
        let k = kube();
        let ns = k.namespace(prefix);
        k.service_account(&ns, "spire-agent");
        k.service_account(&ns, "web");
        let (node_a, node_b) = (format!("{ns}-a"), format!("{ns}-b"));
        for node in [&node_a, &node_b] {
            k.node(node, &[]);
        }
        k.pod(&ns, "agent-a", "spire-agent", &node_a, &[]);
        k.pod(&ns, "agent-b", "spire-agent", &node_b, &[]);
        Self {
            ns,
            node_a,
            node_b,
            dir: tempfile::tempdir().expect("temp dir"),
        }
    }

    /// A server trusting cluster [`CLUSTER`] through `kubeconfig`, with the node alias of every
    /// agent of the cluster.
    fn server(&self, kubeconfig: &Path) -> Server {
        let server = Server::start(ServerOptions {
            extra_plugins: psat_server_plugin(
                CLUSTER,
                kubeconfig,
                &[&format!("{}:spire-agent", self.ns)],
                &["spire-server"],
                &[],
                &[],
            ),
            ..ServerOptions::default()
        });
        server.cli_json(&[
            "entry",
            "create",
            "-node",
            "-spiffeID",
            ALIAS,
            "-selector",
            &format!("k8s_psat:cluster:{CLUSTER}"),
        ]);
        server
    }

    /// Attests the agent of pod `agent_pod` and returns a connection holding its SVID; the
    /// agent process is stopped (the test speaks for it from now on).
    fn attest(&self, server: &Server, agent_pod: &str, rt: &Runtime) -> ServerConnection {
        let token = self.dir.path().join(format!("token-{agent_pod}"));
        let psat = kube().psat(&self.ns, "spire-agent", agent_pod, "spire-server");
        std::fs::write(&token, psat).expect("write the token");
        let mut agent = Agent::configure_psat(server, CLUSTER, &token);
        agent.spawn(None);
        let (svid, bundle) = agent.stored_credentials(server);
        agent.stop();
        rt.block_on(async { server_connection(server, &svid, &bundle) })
    }

    /// The agent of pod `agent_pod`, attested, as a [`Link`] that checks JWTs with `jwt_keys`.
    fn link<'r>(
        &self,
        server: &Server,
        agent_pod: &str,
        rt: &'r Runtime,
        jwt_keys: Vec<serde_json::Value>,
    ) -> Link<'r> {
        Link {
            rt,
            conn: self.attest(server, agent_pod, rt),
            jwt_keys,
        }
    }

    /// A pod of service account `web` labelled `app=<app>` in `ns`, bound to `node`: its UID.
    fn pod(&self, ns: &str, name: &str, node: &str, app: &str) -> String {
        kube().pod(ns, name, "web", node, &[("app", app)])
    }
}

fn create_template(server: &Server, template: &str, selectors: &[&str]) -> String {
    let mut args = vec![
        "entry",
        "create",
        "-template",
        "-spiffeID",
        template,
        "-parentID",
        ALIAS,
    ];
    for s in selectors {
        args.extend(["-selector", s]);
    }
    sigil_testkit::created_entry_id(&server.cli_json(&args))
}

/// The server's ES256 JWT keys, as its SPIFFE bundle document publishes them.
fn jwt_keys(server: &Server) -> Vec<serde_json::Value> {
    let doc: serde_json::Value =
        serde_json::from_str(&server.cli_ok(&["bundle", "show", "-format", "spiffe"])).unwrap();
    doc["keys"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|k| k["use"] == "jwt-svid")
        .cloned()
        .collect()
}

/// X.509-SVIDs and JWT-SVIDs the server has signed so far.
fn signed(server: &Server) -> (u64, u64) {
    let (_, metrics) = http_get(server.health_port, "/metrics").expect("/metrics");
    (
        counter_sum(
            &metrics,
            "sigil_server_x509_svids_signed_total",
            "result=\"ok\"",
        ),
        counter_sum(
            &metrics,
            "sigil_server_jwt_svids_signed_total",
            "result=\"ok\"",
        ),
    )
}

/// One agent's view of the agent API: mints for an entry, an ID and a pod.
struct Link<'a> {
    rt: &'a Runtime,
    conn: ServerConnection,
    jwt_keys: Vec<serde_json::Value>,
}

impl Link<'_> {
    /// The URI SAN of the one X.509-SVID signed (read with x509-parser).
    fn x509(&self, entry: &str, id: &str, pod_uid: &str) -> Result<String, Status> {
        let resp = self.rt.block_on(
            self.conn
                .client()
                .batch_mint_x509svid(x509_mint_request_for_pod(entry, id, pod_uid)),
        )?;
        let svids = resp.into_inner().svids;
        assert_eq!(svids.len(), 1);
        let (_, cert) = x509_parser::parse_x509_certificate(&svids[0].svid_chain[0]).unwrap();
        let san = cert.subject_alternative_name().unwrap().unwrap();
        let uris: Vec<String> = san
            .value
            .general_names
            .iter()
            .filter_map(|n| match n {
                x509_parser::extensions::GeneralName::URI(u) => Some(u.to_string()),
                _ => None,
            })
            .collect();
        assert_eq!(uris.len(), 1, "{uris:?}");
        Ok(uris[0].clone())
    }

    /// The `sub` of the JWT-SVID signed, after checking its signature (jsonwebtoken, with the
    /// server's published key) and audience.
    fn jwt(&self, entry: &str, id: &str, pod_uid: &str) -> Result<String, Status> {
        use jsonwebtoken::{Algorithm, DecodingKey, Validation, decode, decode_header};
        let token = self
            .rt
            .block_on(self.conn.client().mint_jwtsvid(pb::MintJwtsvidRequest {
                entry_id: entry.into(),
                audience: vec!["payments".into()],
                spiffe_id: id.into(),
                pod_uid: pod_uid.into(),
            }))?
            .into_inner()
            .token;
        let kid = decode_header(&token).unwrap().kid.expect("kid");
        let key = self
            .jwt_keys
            .iter()
            .find(|k| k["kid"] == kid.as_str())
            .expect("the signing key is published");
        let key =
            DecodingKey::from_ec_components(key["x"].as_str().unwrap(), key["y"].as_str().unwrap())
                .unwrap();
        let mut validation = Validation::new(Algorithm::ES256);
        validation.set_audience(&["payments"]);
        let data = decode::<serde_json::Value>(&token, &key, &validation).expect("a valid JWT");
        Ok(data.claims["sub"].as_str().unwrap().to_owned())
    }

    /// Both kinds are signed for `id`, once the pod cache has caught up.
    fn signs(&self, entry: &str, id: &str, pod_uid: &str) {
        wait_for(&format!("{id} signed"), PROPAGATION, || {
            self.x509(entry, id, pod_uid).ok()
        });
        assert_eq!(self.x509(entry, id, pod_uid).unwrap(), id);
        assert_eq!(self.jwt(entry, id, pod_uid).unwrap(), id);
    }

    /// Both kinds are refused for `id`, naming `why`, with nothing signed and a WARN line.
    fn refuses(&self, server: &Server, entry: &str, id: &str, pod_uid: &str, why: &str) {
        self.refuses_with(server, Code::PermissionDenied, entry, id, pod_uid, why);
    }

    /// As [`Self::refuses`], answered with `code`.
    fn refuses_with(
        &self,
        server: &Server,
        code: Code,
        entry: &str,
        id: &str,
        pod_uid: &str,
        why: &str,
    ) {
        let before = signed(server);
        for err in [
            self.x509(entry, id, pod_uid).unwrap_err(),
            self.jwt(entry, id, pod_uid).unwrap_err(),
        ] {
            assert_eq!(err.code(), code, "{id} {pod_uid}: {err:?}");
            assert!(
                err.message().contains(why),
                "{id} {pod_uid}: {}",
                err.message()
            );
        }
        assert_eq!(
            signed(server),
            before,
            "{id} {pod_uid}: something was signed"
        );
        let warned = |l: &&str| {
            l.contains("WARN")
                && l.contains("mint refused")
                && l.contains(entry)
                && l.contains(id)
                && l.contains(pod_uid)
                && l.contains(why)
        };
        wait_for("the WARN line", Duration::from_secs(5), || {
            server.log().lines().any(|l| warned(&l)).then_some(())
        });
    }
}

#[test]
fn an_agent_is_signed_only_the_instances_of_pods_on_its_own_node() {
    let k = kube();
    let w = World::new("trust");
    let server = w.server(&k.server_kubeconfig(w.dir.path()));
    let rt = multi_thread_rt();
    let jwt_keys = jwt_keys(&server);
    let a = w.link(&server, "agent-a", &rt, jwt_keys.clone());
    let b = w.link(&server, "agent-b", &rt, jwt_keys);
    let ns_sa = create_template(&server, NS_SA, &["k8s:ns"]);
    let by_app = create_template(
        &server,
        "spiffe://example.org/app/{k8s:pod-label:app}",
        &["k8s:pod-label:app"],
    );
    let in_ns = create_template(
        &server,
        "spiffe://example.org/pods/{k8s:pod-name}",
        &[&format!("k8s:ns:{}", w.ns)],
    );
    let other_ns = k.namespace("trust-other");
    k.service_account(&other_ns, "web");

    let web_a = w.pod(&w.ns, "web-a", &w.node_a, "web");
    let web_b = w.pod(&w.ns, "web-b", &w.node_b, "web");
    let stray = w.pod(&other_ns, "stray-a", &w.node_a, "web");
    let web_id = format!("spiffe://example.org/ns/{}/sa/web", w.ns);

    // Each agent: its own pod's instance, X.509 and JWT.
    a.signs(&ns_sa, &web_id, &web_a);
    b.signs(&ns_sa, &web_id, &web_b);
    a.signs(&by_app, "spiffe://example.org/app/web", &web_a);
    a.signs(&in_ns, "spiffe://example.org/pods/web-a", &web_a);
    // The pod of another namespace on A's node gets its own namespace's instance.
    a.signs(
        &ns_sa,
        &format!("spiffe://example.org/ns/{other_ns}/sa/web"),
        &stray,
    );

    // Agent A, forging: a pod on node-b, a pod that does not exist, no pod at all.
    a.refuses(&server, &ns_sa, &web_id, &web_b, "not to this agent's node");
    let nobody = "00000000-0000-4000-8000-000000000000";
    a.refuses(&server, &ns_sa, &web_id, nobody, "does not exist");
    a.refuses(&server, &ns_sa, &web_id, "", "no pod_uid");
    // A label value its pod does not have; another namespace's ID for its own pod; a pod of
    // another namespace under an entry that selects this one.
    a.refuses(
        &server,
        &by_app,
        "spiffe://example.org/app/admin",
        &web_a,
        "not the requested ID",
    );
    a.refuses(
        &server,
        &ns_sa,
        &format!("spiffe://example.org/ns/{other_ns}/sa/web"),
        &web_a,
        "not the requested ID",
    );
    a.refuses(
        &server,
        &in_ns,
        "spiffe://example.org/pods/stray-a",
        &stray,
        &format!("does not satisfy the entry's selector k8s:ns:{}", w.ns),
    );

    // A deleted pod: refused once the API says so.
    let gone = w.pod(&w.ns, "gone-a", &w.node_a, "web");
    a.signs(&ns_sa, &web_id, &gone);
    k.delete_pod(&w.ns, "gone-a");
    wait_for("the deleted pod refused", PROPAGATION, || {
        a.x509(&ns_sa, &web_id, &gone).is_err().then_some(())
    });
    a.refuses(&server, &ns_sa, &web_id, &gone, "does not exist");

    // A pod recreated under the same name: the old UID is refused, the new one signed.
    let old = w.pod(&w.ns, "again-a", &w.node_a, "web");
    a.signs(&ns_sa, &web_id, &old);
    k.delete_pod(&w.ns, "again-a");
    let new = w.pod(&w.ns, "again-a", &w.node_a, "web");
    assert_ne!(old, new);
    a.signs(&ns_sa, &web_id, &new);
    a.refuses(&server, &ns_sa, &web_id, &old, "does not exist");

    // A fixed entry naming a pod by UID, via the alias: only for the node that runs it.
    let fixed = sigil_testkit::created_entry_id(&server.cli_json(&[
        "entry",
        "create",
        "-spiffeID",
        "spiffe://example.org/fixed/web-a",
        "-parentID",
        ALIAS,
        "-selector",
        &format!("k8s:pod-uid:{web_a}"),
    ]));
    a.signs(&fixed, "spiffe://example.org/fixed/web-a", "");
    b.refuses(
        &server,
        &fixed,
        "spiffe://example.org/fixed/web-a",
        "",
        "no running pod on this agent's node",
    );
}

/// The stream of the agent of the node a deleted pod was bound to carries its UID in
/// `gone_pod_uids`; another node's stream does not.
#[test]
fn a_deleted_pods_uid_reaches_only_its_nodes_agent() {
    let k = kube();
    let w = World::new("gone");
    let server = w.server(&k.server_kubeconfig(w.dir.path()));
    let rt = multi_thread_rt();
    let jwt_keys = jwt_keys(&server);
    let a = w.link(&server, "agent-a", &rt, jwt_keys.clone());
    let b = w.link(&server, "agent-b", &rt, jwt_keys);
    let ns_sa = create_template(&server, NS_SA, &["k8s:ns"]);
    let web_id = format!("spiffe://example.org/ns/{}/sa/web", w.ns);
    let pod_a = w.pod(&w.ns, "web-a", &w.node_a, "web");
    let pod_b = w.pod(&w.ns, "web-b", &w.node_b, "web");
    // Both in the server's cache.
    a.signs(&ns_sa, &web_id, &pod_a);
    b.signs(&ns_sa, &web_id, &pod_b);

    let open = |link: &Link<'_>| {
        rt.block_on(async {
            let mut stream = link
                .conn
                .client()
                .sync_entries(pb::SyncEntriesRequest { since_revision: 0 })
                .await
                .expect("a sync stream")
                .into_inner();
            // Past the snapshot.
            while !stream.message().await.unwrap().unwrap().snapshot_end {}
            stream
        })
    };
    let mut stream_a = open(&a);
    let mut stream_b = open(&b);
    // The removed UIDs a stream carries until it has carried `uid`.
    let gone_until = |stream: &mut tonic::Streaming<pb::SyncEntriesResponse>, uid: &str| {
        rt.block_on(async {
            let mut seen = Vec::new();
            while !seen.iter().any(|s| s == uid) {
                let msg = tokio::time::timeout(PROPAGATION, stream.message())
                    .await
                    .unwrap_or_else(|_| panic!("no gone_pod_uids with {uid}; saw {seen:?}"))
                    .unwrap()
                    .unwrap();
                seen.extend(msg.gone_pod_uids);
            }
            seen
        })
    };

    k.delete_pod(&w.ns, "web-a");
    assert_eq!(
        gone_until(&mut stream_a, &pod_a),
        std::slice::from_ref(&pod_a)
    );
    // Removals reach every stream in the order they happened: B's stream, which gets web-b's
    // removal next, would have carried web-a's before it.
    k.delete_pod(&w.ns, "web-b");
    assert_eq!(
        gone_until(&mut stream_b, &pod_b),
        std::slice::from_ref(&pod_b)
    );
}

/// The server loses the API (a proxy between them is cut): within the bound it still signs
/// from what it knows, past it nothing, and once the API is back it signs again.
#[test]
fn no_instance_is_signed_from_a_pod_cache_stale_past_the_bound_and_signing_recovers() {
    let k = kube();
    let w = World::new("stale");
    let proxy = CuttableProxy::start("127.0.0.1:6443".parse().unwrap());
    let kubeconfig = k.kubeconfig_at(
        "spire",
        "spire-server",
        w.dir.path(),
        &format!("https://127.0.0.1:{}", proxy.port),
    );
    let server = w.server(&kubeconfig);
    let rt = multi_thread_rt();
    let a = w.link(&server, "agent-a", &rt, jwt_keys(&server));
    let ns_sa = create_template(&server, NS_SA, &["k8s:ns"]);
    let web_id = format!("spiffe://example.org/ns/{}/sa/web", w.ns);
    let web_a = w.pod(&w.ns, "web-a", &w.node_a, "web");
    a.signs(&ns_sa, &web_id, &web_a);

    proxy.cut();
    let cut = Instant::now();
    let refused = wait_for("refusals past the bound", Duration::from_secs(90), || {
        std::thread::sleep(Duration::from_millis(500));
        a.x509(&ns_sa, &web_id, &web_a).err()
    });
    let after = cut.elapsed();
    assert!(
        after >= Duration::from_secs(25),
        "refused {after:?} after the cut, before the 30 s bound: {refused:?}"
    );
    // Unavailable, not PermissionDenied: the server cannot judge, so the agent keeps what it
    // holds and retries.
    assert_eq!(refused.code(), Code::Unavailable);
    assert!(
        refused.message().contains("stale since"),
        "{}",
        refused.message()
    );
    a.refuses_with(
        &server,
        Code::Unavailable,
        &ns_sa,
        &web_id,
        &web_a,
        "stale since",
    );
    // The watch task says so at ERROR when it next retries (at most 8 s apart).
    wait_for(
        "an ERROR line saying the pod cache is stale",
        Duration::from_secs(10),
        || {
            server
                .log()
                .lines()
                .any(|l| l.contains("ERROR") && l.contains("stale since"))
                .then_some(())
        },
    );

    proxy.restore();
    a.signs(&ns_sa, &web_id, &web_a);
    assert!(server.log().contains("the Kubernetes pod watch is back"));
}
