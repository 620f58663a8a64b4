//! Issue 17's figures: what the server's pod check adds to a templated mint, and what its pod
//! cache (a watch on the Kubernetes API) costs the API and the server as pods are created.
//!
//! On the test kit's kube-apiserver (`testkit/k8s/real-apiserver.sh`; without one answering,
//! every row is "n.a." with the reason) the bench makes a namespace of its own with
//! [`NODES`] nodes, the pod `agent-0` on the first and attests as that pod's agent with a real
//! PSAT, in-process as `mint.rs` does with a join token. One template,
//! `/ns/{k8s:ns}/sa/{k8s:sa}` selecting `k8s:ns`, is registered twice: parented to the agent
//! (signed as before, no pod check) and to the cluster's node alias (signed only after the pod
//! check against the server's pod cache). Then, in one run:
//!
//! - latency: single-item `BatchMintX509SVID` and `BatchMintJWTSVID` for both entries and the
//!   pod `web-0` on the agent's node, interleaved on one connection (the order alternating
//!   every round), after a warm-up; p50 and p99 of each, and what the check adds to them;
//! - API requests per mint: the API server's own `apiserver_request_total` before and after
//!   those mints, over the requests a server could make for a mint (any verb but WATCH on
//!   pods, nodes and TokenReviews). It counts every client of the API server, so a busy shared
//!   one shows others' requests;
//! - a cluster of `pods` pods created through the API: all but one [`CREATE_CONCURRENCY`] at
//!   a time, bound round-robin to the nodes, then the last alone, on the agent's node. The
//!   watch delivers events in order, so once a mint for the last pod succeeds the cache holds
//!   them all. Server RSS before the pods and then; the LIST and WATCH requests on pods across
//!   namespaces (the pod cache's) from before the server started until then, ended or still
//!   open; and, for about [`MINTABLE_SAMPLES`] pods of the agent's node, the time from the
//!   create's acknowledgement to the first successful mint (polled every [`POLL`]).
//!
//! The namespace, its pods and the nodes are deleted at the end, whatever happened.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use futures::{StreamExt as _, TryStreamExt as _};
use k8s_openapi::api::core::v1::{Namespace, Node, Pod};
use kube::Api;
use kube::api::{DeleteParams, ListParams, PostParams};
use sigil_agent::node_attestation::{self, K8sPsatAttestor, K8sPsatConfig};
use sigil_agent::server_client::ServerConnection;
use sigil_proto::sigil::admin::v1 as admin;
use sigil_proto::sigil::agent::v1 as agent;
use sigil_proto::sigil::common::v1 as common;
use sigil_testkit::Server;
use sigil_testkit::k8s::{Kube, psat_server_plugin};
use tonic::Code;

use crate::mint::selector;
use crate::procs::{self, TRUST_DOMAIN};
use crate::report::{Figure, Target};
use crate::scale::count_label;
use crate::stats::{self, millis, percentile};

/// The cluster name in the server's `k8s_psat` config.
const CLUSTER: &str = "bench";
/// Nodes the pods are spread over; the bench is the agent of the first.
const NODES: usize = 4;
/// Pod creates in flight while the cluster grows.
const CREATE_CONCURRENCY: usize = 16;
/// About how many pods are timed from create to mintable.
const MINTABLE_SAMPLES: usize = 100;
/// How often a new pod's mint is retried until the cache has it.
const POLL: Duration = Duration::from_millis(5);
/// How long a created pod may take to become mintable.
const MINTABLE_TIMEOUT: Duration = Duration::from_secs(120);
/// Rounds before the timed ones (connections, caches).
const WARM_UP_ROUNDS: usize = 20;
/// The issue's target for what the check adds to a templated mint's p99.
const ADDED_P99_MS: f64 = 1.0;

/// How many mints and pods.
#[derive(Clone, Debug)]
pub struct PodCheckSize {
    /// Rounds of four timed mints (X.509 and JWT, agent-parented and via the alias).
    pub rounds: usize,
    /// Pods created through the API for the cache figures.
    pub pods: usize,
}

/// The figures, or "n.a." rows when no API server answers.
pub(crate) async fn run(size: &PodCheckSize, csrs: &[Vec<u8>]) -> anyhow::Result<Vec<Figure>> {
    let kube = tokio::task::spawn_blocking(sigil_testkit::k8s::running).await?;
    let Some(kube) = kube else {
        let why = "no kube-apiserver answers on 127.0.0.1:6443 (start the test kit's: \
                   bash testkit/k8s/real-apiserver.sh start)";
        eprintln!("sigil-bench: {why}: skipping the pod check rows");
        return Ok(figures(size, Err(why)));
    };
    let cluster = tokio::task::spawn_blocking(move || Cluster::new(kube)).await??;
    let measured = measure(&cluster, size, csrs).await;
    cluster.clean_up().await;
    Ok(figures(size, Ok(&measured?)))
}

/// p50 and p99 of one kind of call, in ms.
#[derive(Clone, Copy, Debug)]
struct Latency {
    p50: f64,
    p99: f64,
    calls: usize,
}

impl Latency {
    fn of(mut samples: Vec<Duration>) -> anyhow::Result<Self> {
        let calls = samples.len();
        let p50 = percentile(&mut samples, 50.0).context("no samples")?;
        let p99 = percentile(&mut samples, 99.0).context("no samples")?;
        Ok(Self {
            p50: millis(p50),
            p99: millis(p99),
            calls,
        })
    }
}

/// One kind of mint, without and with the pod check.
#[derive(Clone, Copy, Debug)]
struct Pair {
    direct: Latency,
    alias: Latency,
}

/// Everything one run measured.
#[derive(Clone, Debug)]
struct Measured {
    x509: Pair,
    jwt: Pair,
    /// Requests a mint could cause, counted by the API server over the timed mints.
    mint_requests: f64,
    /// Timed mints through the alias (each ran the check).
    checked_mints: usize,
    /// Pods the server's cache listed at start-up (the bench's two and any others).
    pods_already: Option<usize>,
    create_rate: f64,
    rss_before: f64,
    rss_after: f64,
    /// LIST and WATCH requests on pods across namespaces while the pods were created.
    cache_requests: f64,
    to_mintable: Latency,
}

/// The rows, measured or skipped for `why`; one list, so both have the same names.
fn figures(size: &PodCheckSize, measured: Result<&Measured, &str>) -> Vec<Figure> {
    let pods = count_label(size.pods);
    let row =
        |name: &str, value: &dyn Fn(&Measured) -> f64, unit, target, note: &str| match measured {
            Ok(m) => Figure::new(name, value(m), unit, target, note),
            Err(why) => Figure::skipped(name, unit, target, why),
        };
    let mut rows = Vec::new();
    for (kind, rpc, pair) in [
        (
            "X.509",
            "BatchMintX509SVID",
            (|m: &Measured| m.x509) as fn(&Measured) -> Pair,
        ),
        ("JWT", "BatchMintJWTSVID", |m: &Measured| m.jwt),
    ] {
        let calls = measured.map_or(0, |m| pair(m).alias.calls);
        let note = |what: &str| {
            format!(
                "single-item {rpc} for a pod on the agent's node, {what}; interleaved with the \
                 other entry on one mTLS connection, {calls} calls each"
            )
        };
        let direct = note("template parented to the agent (no pod check)");
        let alias = note("the same template via the node alias (pod check)");
        rows.extend([
            row(
                &format!("pod check: {kind} mint, agent-parented: p50"),
                &|m| pair(m).direct.p50,
                "ms",
                Target::None,
                &direct,
            ),
            row(
                &format!("pod check: {kind} mint, agent-parented: p99"),
                &|m| pair(m).direct.p99,
                "ms",
                Target::None,
                &direct,
            ),
            row(
                &format!("pod check: {kind} mint, via node alias: p50"),
                &|m| pair(m).alias.p50,
                "ms",
                Target::None,
                &alias,
            ),
            row(
                &format!("pod check: {kind} mint, via node alias: p99"),
                &|m| pair(m).alias.p99,
                "ms",
                Target::None,
                &alias,
            ),
            row(
                &format!("pod check: {kind} p50 added by the check"),
                &|m| pair(m).alias.p50 - pair(m).direct.p50,
                "ms",
                Target::None,
                "p50 via the node alias minus p50 agent-parented",
            ),
            row(
                &format!("pod check: {kind} p99 added by the check"),
                &|m| pair(m).alias.p99 - pair(m).direct.p99,
                "ms",
                Target::Below(ADDED_P99_MS),
                "p99 via the node alias minus p99 agent-parented (noise can make it negative)",
            ),
        ]);
    }
    let checked = measured.map_or(0, |m| m.checked_mints);
    let already = measured
        .ok()
        .and_then(|m| m.pods_already)
        .map_or_else(String::new, |n| {
            format!(
                "; at start-up the cache listed {n} pods, the bench's agent-0 and web-0 among them"
            )
        });
    rows.extend([
        row(
            "pod check: API requests per mint",
            &|m| m.mint_requests / m.checked_mints as f64,
            "requests",
            Target::AtMost(0.0),
            &format!(
                "apiserver_request_total of pods, nodes and TokenReviews (any verb but WATCH) \
                 over {checked} pod-checked and as many agent-parented mints; counts every \
                 client of the API server"
            ),
        ),
        row(
            &format!("pod cache {pods} pods: create rate"),
            &|m| m.create_rate,
            "pods/s",
            Target::None,
            &format!(
                "pods created through the API, {CREATE_CONCURRENCY} in flight, bound to \
                 {NODES} nodes (no kubelet: they stay Pending)"
            ),
        ),
        row(
            &format!("pod cache {pods} pods: server RSS before"),
            &|m| m.rss_before,
            "MiB",
            Target::None,
            &format!("VmRSS of sigil-server before the pods are created{already}"),
        ),
        row(
            &format!("pod cache {pods} pods: server RSS after"),
            &|m| m.rss_after,
            "MiB",
            Target::None,
            "VmRSS of sigil-server once a mint for the last pod created succeeds (the cache \
             holds every pod)",
        ),
        row(
            &format!("pod cache {pods} pods: API requests by the server"),
            &|m| m.cache_requests,
            "requests",
            Target::None,
            "LIST and WATCH requests on pods across namespaces (the pod cache's), ended \
             (apiserver_request_total) or open (apiserver_longrunning_gauge), from before the \
             server started until the cache held every pod; counts every client of the API \
             server",
        ),
    ]);
    let samples = measured.map_or(0, |m| m.to_mintable.calls);
    let note = format!(
        "create acknowledged -> first successful mint via the node alias for it, polled every \
         {} ms, {samples} pods of the agent's node while the rest are created",
        POLL.as_millis()
    );
    rows.extend([
        row(
            &format!("pod cache {pods} pods: create to mintable p50"),
            &|m| m.to_mintable.p50,
            "ms",
            Target::None,
            &note,
        ),
        row(
            &format!("pod cache {pods} pods: create to mintable p99"),
            &|m| m.to_mintable.p99,
            "ms",
            Target::None,
            &note,
        ),
    ]);
    rows
}

/// The bench's corner of the API server: a namespace with service accounts `spire-agent` and
/// `web`, the nodes, the agent's pod and one workload pod on the first node.
struct Cluster {
    kube: &'static Kube,
    ns: String,
    nodes: Vec<String>,
    /// UID of `web-0`, on the agent's node.
    web_pod: String,
    /// The agent's projected service account token.
    psat: String,
    /// Holds the server's kubeconfig and the PSAT file.
    dir: tempfile::TempDir,
    server_kubeconfig: std::path::PathBuf,
}

impl Cluster {
    /// Arranges it through kubectl (blocking).
    fn new(kube: &'static Kube) -> anyhow::Result<Self> {
        let ns = kube.namespace("bench-pods");
        kube.service_account(&ns, "spire-agent");
        kube.service_account(&ns, "web");
        let nodes: Vec<String> = (0..NODES).map(|i| format!("{ns}-{i}")).collect();
        for node in &nodes {
            kube.node(node, &[]);
        }
        kube.pod(&ns, "agent-0", "spire-agent", &nodes[0], &[]);
        let web_pod = kube.pod(&ns, "web-0", "web", &nodes[0], &[("app", "web")]);
        let psat = kube.psat(&ns, "spire-agent", "agent-0", "spire-server");
        let dir = tempfile::tempdir()?;
        let server_kubeconfig = kube.server_kubeconfig(dir.path());
        Ok(Self {
            kube,
            ns,
            nodes,
            web_pod,
            psat,
            dir,
            server_kubeconfig,
        })
    }

    /// A client with the kit's admin credentials (arranging the world, reading `/metrics`).
    async fn admin(&self) -> anyhow::Result<kube::Client> {
        Ok(sigil_server::kubernetes::client(Some(&self.kube.admin_kubeconfig)).await?)
    }

    /// Deletes the pods (at once: there is no kubelet), the nodes and the namespace (finalized
    /// here: the API server runs no namespace controller). Failures are reported, not fatal.
    async fn clean_up(&self) {
        if let Err(e) = self.try_clean_up().await {
            eprintln!(
                "sigil-bench: cleaning up namespace {} on the API server: {e:#}",
                self.ns
            );
        }
    }

    async fn try_clean_up(&self) -> anyhow::Result<()> {
        let client = self.admin().await?;
        let now = DeleteParams {
            grace_period_seconds: Some(0),
            ..DeleteParams::default()
        };
        Api::<Pod>::namespaced(client.clone(), &self.ns)
            .delete_collection(&now, &ListParams::default())
            .await
            .context("deleting the pods")?;
        let nodes: Api<Node> = Api::all(client.clone());
        for node in &self.nodes {
            nodes
                .delete(node, &now)
                .await
                .with_context(|| format!("deleting node {node}"))?;
        }
        Api::<Namespace>::all(client.clone())
            .delete(&self.ns, &DeleteParams::default())
            .await
            .context("deleting the namespace")?;
        let finalize = serde_json::json!({
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {"name": self.ns},
            "spec": {"finalizers": []},
        });
        let request = http::Request::put(format!("/api/v1/namespaces/{}/finalize", self.ns))
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(serde_json::to_vec(&finalize)?)?;
        client
            .request_text(request)
            .await
            .context("finalizing the namespace")?;
        Ok(())
    }

    /// Pod `name` of service account `web`, labelled `app=web`, bound to `node`.
    fn pod(&self, name: &str, node: &str) -> anyhow::Result<Pod> {
        Ok(serde_json::from_value(serde_json::json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name, "namespace": self.ns, "labels": {"app": "web"}},
            "spec": {
                "serviceAccountName": "web",
                "automountServiceAccountToken": false,
                "nodeName": node,
                "containers": [{"name": "main", "image": "example.invalid/main:none"}],
            },
        }))?)
    }
}

/// The bench as the agent of the first node, with the two entries of one template.
struct Minter {
    connection: ServerConnection,
    /// Parented to the agent.
    direct: String,
    /// Parented to the node alias.
    alias: String,
    /// The instance every pod of the bench renders: `/ns/<ns>/sa/web`.
    id: String,
}

impl Minter {
    async fn x509(
        &self,
        entry: &str,
        pod_uid: &str,
        csr: &[u8],
    ) -> Result<Duration, tonic::Status> {
        let request = agent::BatchMintX509svidRequest {
            requests: vec![agent::X509svidRequest {
                entry_id: entry.into(),
                csr: csr.to_vec(),
                spiffe_id: self.id.clone(),
                pod_uid: pod_uid.into(),
            }],
        };
        let mut client = self.connection.client();
        let start = Instant::now();
        let svids = client
            .batch_mint_x509svid(request)
            .await?
            .into_inner()
            .svids;
        let took = start.elapsed();
        if svids.len() == 1 {
            Ok(took)
        } else {
            Err(tonic::Status::internal(format!(
                "asked for 1 X.509-SVID, got {}",
                svids.len()
            )))
        }
    }

    async fn jwt(&self, entry: &str, pod_uid: &str) -> Result<Duration, tonic::Status> {
        let request = agent::BatchMintJwtsvidRequest {
            requests: vec![agent::MintJwtsvidRequest {
                entry_id: entry.into(),
                audience: vec!["bench".into()],
                spiffe_id: self.id.clone(),
                pod_uid: pod_uid.into(),
            }],
        };
        let mut client = self.connection.client();
        let start = Instant::now();
        let svids = client.batch_mint_jwtsvid(request).await?.into_inner().svids;
        let took = start.elapsed();
        if svids.len() == 1 && !svids[0].token.is_empty() {
            Ok(took)
        } else {
            Err(tonic::Status::internal("asked for 1 JWT-SVID, got none"))
        }
    }

    /// Polls a JWT mint via the alias for `pod_uid` until the server's cache has the pod;
    /// returns when it succeeded.
    async fn until_mintable(&self, pod_uid: &str) -> anyhow::Result<Instant> {
        let start = Instant::now();
        loop {
            match self.jwt(&self.alias, pod_uid).await {
                Ok(_) => return Ok(Instant::now()),
                Err(e) if e.code() == Code::PermissionDenied => {
                    anyhow::ensure!(
                        start.elapsed() < MINTABLE_TIMEOUT,
                        "pod {pod_uid} not mintable after {MINTABLE_TIMEOUT:?}: {}",
                        e.message()
                    );
                    tokio::time::sleep(POLL).await;
                }
                Err(e) => return Err(e).context("BatchMintJWTSVID"),
            }
        }
    }
}

async fn measure(
    cluster: &Cluster,
    size: &PodCheckSize,
    csrs: &[Vec<u8>],
) -> anyhow::Result<Measured> {
    anyhow::ensure!(!csrs.is_empty(), "no CSRs");
    let plugin = psat_server_plugin(
        CLUSTER,
        &cluster.server_kubeconfig,
        &[&format!("{}:spire-agent", cluster.ns)],
        &["spire-server"],
        &[],
        &[],
    );
    let admin = cluster.admin().await?;
    let before_server = api_requests(&admin).await?;
    let server = procs::start_server_with_plugins(plugin).await?;
    let minter = attest_and_register(cluster, &server).await?;

    // The cache has listed once the alias entry mints for web-0.
    minter.until_mintable(&cluster.web_pod).await?;
    let (x509, jwt, mint_requests) = latencies(&minter, &admin, cluster, size.rounds, csrs).await?;
    let pods_already = pods_listed(&server.log());

    let server_pid = procs::server_pid(&server)?;
    let rss_before = stats::rss_mib(server_pid)?;
    let grown = grow(cluster, &admin, &minter, size.pods).await?;
    let rss_after = stats::rss_mib(server_pid)?;
    let after = api_requests(&admin).await?;
    Ok(Measured {
        x509,
        jwt,
        mint_requests,
        checked_mints: 2 * size.rounds,
        pods_already,
        create_rate: grown.create_rate,
        rss_before,
        rss_after,
        cache_requests: pod_cache_requests(&after) - pod_cache_requests(&before_server),
        to_mintable: grown.to_mintable,
    })
}

/// Attests as the agent of the first node (its PSAT, in-process), then registers the node
/// alias and the template twice.
async fn attest_and_register(cluster: &Cluster, server: &Server) -> anyhow::Result<Minter> {
    let token_path = cluster.dir.path().join("psat");
    std::fs::write(&token_path, &cluster.psat)?;
    let bundle = procs::bundle(server).await?;
    let connection = ServerConnection::new(
        "127.0.0.1",
        server.bind_port,
        &procs::trust_domain()?,
        Some(&bundle),
        None,
    )?;
    let attestor = K8sPsatAttestor::new(&K8sPsatConfig {
        cluster: CLUSTER.into(),
        token_path,
    });
    let (svid, _bundle) = node_attestation::attest(&connection, &attestor)
        .await
        .context("AttestAgent with the PSAT")?;
    let agent_id = svid.spiffe_id.to_string();
    connection.identity().set(svid);

    let alias_id = format!("spiffe://{TRUST_DOMAIN}/k8s-cluster/{CLUSTER}");
    let template = format!("spiffe://{TRUST_DOMAIN}/ns/{{k8s:ns}}/sa/{{k8s:sa}}");
    let alias_entry = common::RegistrationEntry {
        spiffe_id: alias_id.clone(),
        parent_id: format!("spiffe://{TRUST_DOMAIN}/spire/server"),
        selectors: vec![selector("k8s_psat", format!("cluster:{CLUSTER}"))],
        ..Default::default()
    };
    let templated = |parent: &str| common::RegistrationEntry {
        spiffe_id: template.clone(),
        parent_id: parent.into(),
        selectors: vec![selector("k8s", "ns".into())],
        template: true,
        ..Default::default()
    };
    let created = procs::admin_client(server)
        .await?
        .batch_create_entry(admin::BatchCreateEntryRequest {
            entries: vec![alias_entry, templated(&agent_id), templated(&alias_id)],
        })
        .await
        .context("BatchCreateEntry")?
        .into_inner()
        .entries;
    let [_, direct, alias] = <[_; 3]>::try_from(created)
        .map_err(|c| anyhow::anyhow!("created {} entries, not 3", c.len()))?;
    Ok(Minter {
        connection,
        direct: direct.id,
        alias: alias.id,
        id: format!("spiffe://{TRUST_DOMAIN}/ns/{}/sa/web", cluster.ns),
    })
}

/// X.509 and JWT latency, agent-parented and via the alias, interleaved; and the API requests
/// counted meanwhile.
async fn latencies(
    minter: &Minter,
    admin: &kube::Client,
    cluster: &Cluster,
    rounds: usize,
    csrs: &[Vec<u8>],
) -> anyhow::Result<(Pair, Pair, f64)> {
    let pod = &cluster.web_pod;
    let mut samples: [Vec<Duration>; 4] = Default::default();
    let mut before = String::new();
    for round in 0..WARM_UP_ROUNDS + rounds {
        if round == WARM_UP_ROUNDS {
            before = api_requests(admin).await?;
            samples.iter_mut().for_each(Vec::clear);
        }
        let csr = &csrs[round % csrs.len()];
        // Alternate which entry goes first, so neither always follows the other.
        let entries = if round % 2 == 0 {
            [(&minter.direct, 0), (&minter.alias, 1)]
        } else {
            [(&minter.alias, 1), (&minter.direct, 0)]
        };
        for (entry, i) in entries {
            samples[i].push(minter.x509(entry, pod, csr).await.context("X.509 mint")?);
            samples[2 + i].push(minter.jwt(entry, pod).await.context("JWT mint")?);
        }
    }
    let after = api_requests(admin).await?;
    let requests = request_total(&after, by_a_mint) - request_total(&before, by_a_mint);
    let [x509_direct, x509_alias, jwt_direct, jwt_alias] = samples.map(Latency::of);
    Ok((
        Pair {
            direct: x509_direct?,
            alias: x509_alias?,
        },
        Pair {
            direct: jwt_direct?,
            alias: jwt_alias?,
        },
        requests,
    ))
}

struct Grown {
    create_rate: f64,
    to_mintable: Latency,
}

/// Creates `pods` pods through the API: all but the last [`CREATE_CONCURRENCY`] at a time,
/// timing a sample of the first node's to mintable, then the last (on the first node) alone,
/// returning once it mints.
async fn grow(
    cluster: &Cluster,
    admin: &kube::Client,
    minter: &Minter,
    pods: usize,
) -> anyhow::Result<Grown> {
    anyhow::ensure!(pods > 0, "no pods to create");
    let api: Api<Pod> = Api::namespaced(admin.clone(), &cluster.ns);
    let on_agents_node = pods.div_ceil(NODES);
    let stride = (on_agents_node / MINTABLE_SAMPLES).max(1);
    let start = Instant::now();
    let create = |i: usize| {
        let api = api.clone();
        async move {
            let node = i % NODES;
            let pod = cluster.pod(&format!("p-{i}"), &cluster.nodes[node])?;
            let created = api
                .create(&PostParams::default(), &pod)
                .await
                .with_context(|| format!("creating pod p-{i}"))?;
            let acknowledged = Instant::now();
            let timed = node == 0 && (i / NODES).is_multiple_of(stride);
            if !timed {
                return anyhow::Ok(None);
            }
            let uid = created
                .metadata
                .uid
                .context("a created pod without a UID")?;
            let mintable = minter.until_mintable(&uid).await?;
            Ok(Some(mintable - acknowledged))
        }
    };
    let mut samples: Vec<Duration> = futures::stream::iter(1..pods)
        .map(create)
        .buffer_unordered(CREATE_CONCURRENCY)
        .try_filter_map(|s| async move { Ok(s) })
        .try_collect()
        .await?;
    // The last, on the first node: the watch delivers events in order, so once it mints the
    // cache holds every pod.
    let last = create(0).await?.context("the last pod is timed")?;
    let create_rate = pods as f64 / start.elapsed().saturating_sub(last).as_secs_f64();
    samples.push(last);
    Ok(Grown {
        create_rate,
        to_mintable: Latency::of(samples)?,
    })
}

/// The API server's `/metrics` text.
async fn api_requests(admin: &kube::Client) -> anyhow::Result<String> {
    let request = http::Request::get("/metrics").body(Vec::new())?;
    admin
        .request_text(request)
        .await
        .context("GET /metrics of the API server")
}

/// What a server could ask the API for to check a mint: anything on pods, nodes or
/// TokenReviews but a watch (the pod cache's watch is counted when it ends, mints or none).
fn by_a_mint(labels: &Labels<'_>) -> bool {
    matches!(labels.get("resource"), "pods" | "nodes" | "tokenreviews")
        && labels.get("verb") != "WATCH"
}

/// The pod cache's requests: LIST and WATCH of pods across namespaces.
fn by_pod_cache(labels: &Labels<'_>) -> bool {
    labels.get("resource") == "pods"
        && labels.get("scope") == "cluster"
        && matches!(labels.get("verb"), "LIST" | "WATCH")
}

/// LIST and WATCH requests of pods across namespaces, ended or open: the API server counts a
/// request in `apiserver_request_total` when it ends, and an open watch in
/// `apiserver_longrunning_gauge`.
fn pod_cache_requests(metrics: &str) -> f64 {
    series_total(metrics, "apiserver_request_total", by_pod_cache)
        + series_total(metrics, "apiserver_longrunning_gauge", by_pod_cache)
}

/// The sum of `apiserver_request_total` over the series whose labels `keep` accepts.
fn request_total(metrics: &str, keep: fn(&Labels<'_>) -> bool) -> f64 {
    series_total(metrics, "apiserver_request_total", keep)
}

/// The sum of the metric `name` over the series whose labels `keep` accepts.
fn series_total(metrics: &str, name: &str, keep: fn(&Labels<'_>) -> bool) -> f64 {
    metrics
        .lines()
        .filter_map(|l| l.strip_prefix(name)?.strip_prefix('{'))
        .filter_map(|rest| {
            let (labels, value) = rest.rsplit_once("} ")?;
            keep(&Labels::parse(labels)?)
                .then(|| value.trim().parse::<f64>().ok())
                .flatten()
        })
        .sum()
}

/// The labels of one Prometheus series, `k="v",...` (values as the API server writes them:
/// no escaped quotes).
struct Labels<'a>(Vec<(&'a str, &'a str)>);

impl<'a> Labels<'a> {
    fn parse(mut text: &'a str) -> Option<Self> {
        let mut labels = Vec::new();
        while !text.is_empty() {
            let (key, rest) = text.split_once("=\"")?;
            let (value, rest) = rest.split_once('"')?;
            labels.push((key, value));
            text = rest.strip_prefix(',').unwrap_or(rest);
        }
        Some(Self(labels))
    }

    /// A label's value; "" when the series has no such label.
    fn get(&self, key: &str) -> &'a str {
        self.0
            .iter()
            .find(|(k, _)| *k == key)
            .map_or("", |(_, v)| *v)
    }
}

/// How many pods the server's cache listed at start-up (its `pod cache listed pods=N` line).
fn pods_listed(log: &str) -> Option<usize> {
    let line = log.lines().find(|l| l.contains("pod cache listed"))?;
    let (_, rest) = line.split_once(" pods=")?;
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const METRICS: &str = r#"# HELP apiserver_request_total [STABLE] Counter of apiserver requests
# TYPE apiserver_request_total counter
apiserver_request_total{code="0",component="apiserver",contentType="application/json",dry_run="",group="",resource="pods",scope="cluster",subresource="",verb="WATCH",version="v1"} 39
apiserver_request_total{code="0",component="apiserver",contentType="application/vnd.kubernetes.protobuf;stream=watch",dry_run="",group="",resource="nodes",scope="cluster",subresource="",verb="WATCH",version="v1"} 3
apiserver_request_total{code="200",component="apiserver",contentType="application/json",dry_run="",group="",resource="pods",scope="cluster",subresource="",verb="LIST",version="v1"} 38
apiserver_request_total{code="200",component="apiserver",contentType="application/json",dry_run="",group="",resource="pods",scope="resource",subresource="",verb="GET",version="v1"} 254
apiserver_request_total{code="201",component="apiserver",contentType="application/json",dry_run="",group="",resource="pods",scope="namespace",subresource="",verb="POST",version="v1"} 7
apiserver_request_total{code="201",component="apiserver",contentType="application/json",dry_run="",group="authentication.k8s.io",resource="tokenreviews",scope="cluster",subresource="",verb="POST",version="v1"} 5
apiserver_request_total{code="200",component="",contentType="text/plain;charset=utf-8",dry_run="",group="",resource="",scope="",subresource="/readyz",verb="GET",version=""} 29
apiserver_request_duration_seconds_count{resource="pods",verb="GET"} 1000
apiserver_longrunning_gauge{component="apiserver",group="",resource="pods",scope="cluster",subresource="",verb="WATCH",version="v1"} 1
apiserver_longrunning_gauge{component="apiserver",group="",resource="nodes",scope="cluster",subresource="",verb="WATCH",version="v1"} 4
apiserver_request_total_other{resource="pods",scope="cluster",verb="LIST"} 1000
"#;

    #[test]
    fn requests_a_mint_could_cause_leave_out_watches_and_other_resources() {
        assert_eq!(request_total(METRICS, by_a_mint), 38.0 + 254.0 + 7.0 + 5.0);
    }

    #[test]
    fn the_pod_caches_requests_are_cluster_wide_lists_and_watches_of_pods_ended_or_open() {
        assert_eq!(pod_cache_requests(METRICS), 39.0 + 38.0 + 1.0);
    }

    #[test]
    fn labels_with_separators_in_values() {
        let l = Labels::parse(r#"a="x;y=z",b="",c="1""#).unwrap();
        assert_eq!(l.get("a"), "x;y=z");
        assert_eq!(l.get("b"), "");
        assert_eq!(l.get("c"), "1");
        assert_eq!(l.get("d"), "");
        assert!(Labels::parse(r#"a="unterminated"#).is_none());
    }

    #[test]
    fn pods_listed_from_the_log_line() {
        let log =
            "2026-01-01T00:00:00Z  INFO pod_watch{cluster=bench}: pod cache listed pods=101\n";
        assert_eq!(pods_listed(log), Some(101));
        assert_eq!(pods_listed("nothing"), None);
    }

    #[test]
    fn skipped_rows_have_the_measured_rows_names() {
        let size = PodCheckSize {
            rounds: 1,
            pods: 500,
        };
        let skipped = figures(&size, Err("no API server"));
        assert!(skipped.iter().all(|f| f.value.is_none()));
        let l = Latency {
            p50: 1.0,
            p99: 2.0,
            calls: 1,
        };
        let pair = Pair {
            direct: l,
            alias: l,
        };
        let measured = Measured {
            x509: pair,
            jwt: pair,
            mint_requests: 0.0,
            checked_mints: 2,
            pods_already: Some(3),
            create_rate: 1.0,
            rss_before: 1.0,
            rss_after: 2.0,
            cache_requests: 2.0,
            to_mintable: l,
        };
        let names = |f: &[Figure]| f.iter().map(|f| f.name.clone()).collect::<Vec<_>>();
        assert_eq!(names(&skipped), names(&figures(&size, Ok(&measured))));
        assert!(names(&skipped).contains(&"pod cache 500 pods: server RSS after".to_owned()));
    }
}
