//! The `k8s_psat` node attestor: the agent sends `{"cluster": "...", "token": "<PSAT>"}` and the
//! server proves the token with the cluster's API server, in SPIRE's order (digest §7.3):
//! TokenReview with the configured audiences, the service account allow-list, then the pod the
//! token is bound to (same UID: a deleted or recreated pod's token is refused) and its node.
//!
//! The token is never verified locally: TokenReview is the authority. The Kubernetes calls sit
//! behind [`KubeApi`] so the decision logic is tested with an in-memory fake.

pub mod config;

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::Arc;

use futures::future::BoxFuture;
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec, TokenReviewStatus};
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, PostParams};
use serde::Deserialize;
use sigil_proto::{Selector, SpiffeId, TrustDomain};
use zeroize::Zeroizing;

use super::{AttestationError, AttestationResult, NodeAttestor};
use crate::kubernetes::{self, KubeClientError};
pub use config::{K8sPsatCluster, K8sPsatConfig};

const SELECTOR_TYPE: &str = "k8s_psat";
/// `k8s_psat:cluster:<name>` and `k8s_psat:agent_node_name:<node>` (SPIRE's names).
const CLUSTER_KEY: &str = "cluster";
const NODE_NAME_KEY: &str = "agent_node_name";
const EXTRA_POD_NAME: &str = "authentication.kubernetes.io/pod-name";
const EXTRA_POD_UID: &str = "authentication.kubernetes.io/pod-uid";

/// A failed Kubernetes API call, as the attestor needs to tell them apart.
#[derive(Debug, thiserror::Error)]
pub enum KubeApiError {
    /// The server's own identity lacks the RBAC permission (HTTP 403).
    #[error("forbidden to {verb} {resource}: {message}")]
    Forbidden {
        verb: &'static str,
        resource: &'static str,
        message: String,
    },
    /// Any other API answer or transport failure.
    #[error("{verb} {resource} failed: {message}")]
    Failed {
        verb: &'static str,
        resource: &'static str,
        message: String,
    },
}

/// The three Kubernetes calls PSAT validation makes, against one cluster.
pub trait KubeApi: Send + Sync + fmt::Debug {
    /// `POST tokenreviews` with `spec.audiences = audiences`; the review's status.
    fn review<'a>(
        &'a self,
        token: &'a str,
        audiences: &'a [String],
    ) -> BoxFuture<'a, Result<TokenReviewStatus, KubeApiError>>;
    /// `GET pods/<name>` in `namespace`; `None` when it does not exist.
    fn pod<'a>(
        &'a self,
        namespace: &'a str,
        name: &'a str,
    ) -> BoxFuture<'a, Result<Option<Pod>, KubeApiError>>;
    /// `GET nodes/<name>`; `None` when it does not exist.
    fn node<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<Option<Node>, KubeApiError>>;
}

/// [`KubeApi`] over a real API server.
#[derive(Clone)]
pub struct KubeClientApi {
    client: kube::Client,
}

impl fmt::Debug for KubeClientApi {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KubeClientApi").finish_non_exhaustive()
    }
}

impl KubeClientApi {
    pub fn new(client: kube::Client) -> Self {
        Self { client }
    }
}

fn api_error(verb: &'static str, resource: &'static str, e: kube::Error) -> KubeApiError {
    match e {
        kube::Error::Api(status) if status.code == 403 => KubeApiError::Forbidden {
            verb,
            resource,
            message: status.message,
        },
        kube::Error::Api(status) => KubeApiError::Failed {
            verb,
            resource,
            message: format!("HTTP {} {}: {}", status.code, status.reason, status.message),
        },
        e => KubeApiError::Failed {
            verb,
            resource,
            message: e.to_string(),
        },
    }
}

impl KubeApi for KubeClientApi {
    fn review<'a>(
        &'a self,
        token: &'a str,
        audiences: &'a [String],
    ) -> BoxFuture<'a, Result<TokenReviewStatus, KubeApiError>> {
        Box::pin(async move {
            let request = TokenReview {
                spec: TokenReviewSpec {
                    token: Some(token.to_owned()),
                    audiences: Some(audiences.to_vec()),
                },
                ..TokenReview::default()
            };
            let api: Api<TokenReview> = Api::all(self.client.clone());
            let response = api
                .create(&PostParams::default(), &request)
                .await
                .map_err(|e| api_error("create", "tokenreviews", e))?;
            // The request held the token; wipe our copy rather than leave it to the allocator.
            drop(Zeroizing::new(request.spec.token.unwrap_or_default()));
            Ok(response.status.unwrap_or_default())
        })
    }

    fn pod<'a>(
        &'a self,
        namespace: &'a str,
        name: &'a str,
    ) -> BoxFuture<'a, Result<Option<Pod>, KubeApiError>> {
        Box::pin(async move {
            let api: Api<Pod> = Api::namespaced(self.client.clone(), namespace);
            api.get_opt(name)
                .await
                .map_err(|e| api_error("get", "pods", e))
        })
    }

    fn node<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<Option<Node>, KubeApiError>> {
        Box::pin(async move {
            let api: Api<Node> = Api::all(self.client.clone());
            api.get_opt(name)
                .await
                .map_err(|e| api_error("get", "nodes", e))
        })
    }
}

/// A client per configured cluster, from its `kube_config_file` or in-cluster credentials:
/// built once, shared by the attestor and the cluster's pod watch (`crate::k8s_pods`), so both
/// act with the same identity.
pub async fn clients(
    config: &K8sPsatConfig,
) -> Result<BTreeMap<String, kube::Client>, KubeClientError> {
    let mut clients = BTreeMap::new();
    for (name, cluster) in &config.clusters {
        let client = kubernetes::client(cluster.kube_config_file.as_deref()).await?;
        clients.insert(name.clone(), client);
    }
    Ok(clients)
}

/// The node a `k8s_psat` agent attested for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentNode {
    /// The cluster name the server's config gives it.
    pub cluster: String,
    /// `spec.nodeName` of the agent's pod at attestation.
    pub node: String,
}

/// The cluster and node of an agent this attestor attested: its agent ID is
/// `/spire/agent/k8s_psat/<cluster>/<node uid>` and its node selectors name that cluster and
/// exactly one node. `None` for any other agent.
pub fn agent_node(agent_id: &SpiffeId, selectors: &[Selector]) -> Option<AgentNode> {
    let rest = agent_id
        .path()
        .strip_prefix("/spire/agent/")?
        .strip_prefix(SELECTOR_TYPE)?
        .strip_prefix('/')?;
    let (cluster, _node_uid) = rest.split_once('/')?;
    let values = |key: &str| -> Vec<&str> {
        selectors
            .iter()
            .filter(|s| s.kind() == SELECTOR_TYPE)
            .filter_map(|s| s.value().strip_prefix(key)?.strip_prefix(':'))
            .collect()
    };
    if values(CLUSTER_KEY) != [cluster] {
        return None;
    }
    let [node] = values(NODE_NAME_KEY)[..] else {
        return None;
    };
    Some(AgentNode {
        cluster: cluster.to_owned(),
        node: node.to_owned(),
    })
}

/// SPIRE's payload shape. No `Debug`: it holds the token.
#[derive(Deserialize)]
struct Payload {
    #[serde(default)]
    cluster: String,
    #[serde(default)]
    token: String,
}

struct Cluster {
    config: K8sPsatCluster,
    api: Arc<dyn KubeApi>,
}

/// The server-side `k8s_psat` attestor: one API client per configured cluster, built at start-up.
pub struct K8sPsatAttestor {
    trust_domain: TrustDomain,
    clusters: HashMap<String, Cluster>,
}

impl fmt::Debug for K8sPsatAttestor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut names: Vec<&String> = self.clusters.keys().collect();
        names.sort();
        f.debug_struct("K8sPsatAttestor")
            .field("trust_domain", &self.trust_domain)
            .field("clusters", &names)
            .finish()
    }
}

impl K8sPsatAttestor {
    /// The attestor over one client per cluster (see [`clients`]).
    pub fn new(
        trust_domain: TrustDomain,
        config: &K8sPsatConfig,
        clients: &BTreeMap<String, kube::Client>,
    ) -> Self {
        let apis = config.clusters.iter().filter_map(|(name, cluster)| {
            let client = clients.get(name)?.clone();
            let api: Arc<dyn KubeApi> = Arc::new(KubeClientApi::new(client));
            Some((name.clone(), cluster.clone(), api))
        });
        Self::with_apis(trust_domain, apis)
    }

    /// The attestor over given API implementations (tests use a fake).
    pub fn with_apis(
        trust_domain: TrustDomain,
        clusters: impl IntoIterator<Item = (String, K8sPsatCluster, Arc<dyn KubeApi>)>,
    ) -> Self {
        Self {
            trust_domain,
            clusters: clusters
                .into_iter()
                .map(|(name, config, api)| (name, Cluster { config, api }))
                .collect(),
        }
    }

    async fn attest_payload(&self, payload: &[u8]) -> Result<AttestationResult, AttestationError> {
        let Payload { cluster, token } = serde_json::from_slice(payload).map_err(|_| {
            AttestationError::InvalidPayload(
                "k8s_psat payload is not JSON {\"cluster\": ..., \"token\": ...}".into(),
            )
        })?;
        let token = Zeroizing::new(token);
        if cluster.is_empty() || token.is_empty() {
            return Err(AttestationError::InvalidPayload(
                "k8s_psat payload needs a non-empty cluster and token".into(),
            ));
        }
        let name = cluster.as_str();
        let cluster = self.clusters.get(name).ok_or_else(|| {
            tracing::warn!(
                cluster = name,
                "k8s_psat attestation for an unconfigured cluster"
            );
            AttestationError::InvalidPayload(format!(
                "cluster {name:?} is not configured on the server"
            ))
        })?;
        let result = validate(&self.trust_domain, name, cluster, &token).await;
        match &result {
            Ok(r) => {
                tracing::debug!(cluster = name, agent_id = %r.agent_id, "k8s_psat token verified")
            }
            Err(Refusal::Denied { reason, detail }) => {
                tracing::warn!(cluster = name, detail = %detail, "k8s_psat attestation denied: {reason}")
            }
            Err(Refusal::Unverifiable(e)) => {
                tracing::error!(cluster = name, error = %e, "k8s_psat: the Kubernetes API did not let the server verify the token")
            }
            Err(Refusal::Internal(e)) => {
                tracing::error!(cluster = name, error = %e, "k8s_psat attestation failed")
            }
        }
        result.map_err(Refusal::into_attestation_error)
    }
}

impl NodeAttestor for K8sPsatAttestor {
    fn name(&self) -> &'static str {
        "k8s_psat"
    }

    fn attest<'a>(
        &'a self,
        payload: &'a [u8],
    ) -> BoxFuture<'a, Result<AttestationResult, AttestationError>> {
        Box::pin(self.attest_payload(payload))
    }
}

/// Why validation stopped: what the agent is told, and what only the log gets.
#[derive(Debug)]
enum Refusal {
    /// The evidence does not prove the node: `reason` goes to the agent, `detail` to the log.
    Denied { reason: String, detail: String },
    /// The server could not ask Kubernetes (e.g. no RBAC for tokenreviews).
    Unverifiable(KubeApiError),
    /// Anything else that should not happen.
    Internal(String),
}

impl Refusal {
    fn denied(reason: impl Into<String>) -> Self {
        Self::Denied {
            reason: reason.into(),
            detail: String::new(),
        }
    }

    fn into_attestation_error(self) -> AttestationError {
        match self {
            Self::Denied { reason, .. } => AttestationError::Denied(reason),
            Self::Unverifiable(KubeApiError::Forbidden { resource, .. }) => {
                AttestationError::Unverifiable(format!(
                    "the server could not verify the token: it is not allowed to use {resource} (see the server log)"
                ))
            }
            Self::Unverifiable(KubeApiError::Failed { resource, .. }) => {
                AttestationError::Unverifiable(format!(
                    "the server could not verify the token: the Kubernetes API call on {resource} failed (see the server log)"
                ))
            }
            Self::Internal(m) => AttestationError::Internal(m),
        }
    }
}

/// SPIRE's validation order (digest §7.3), steps 2-9.
async fn validate(
    trust_domain: &TrustDomain,
    name: &str,
    cluster: &Cluster,
    token: &str,
) -> Result<AttestationResult, Refusal> {
    let config = &cluster.config;
    let status = cluster
        .api
        .review(token, &config.audience)
        .await
        .map_err(Refusal::Unverifiable)?;
    if status.authenticated != Some(true) {
        let error = status.error.unwrap_or_default();
        return Err(Refusal::denied(if error.is_empty() {
            "token review: token not authenticated".to_owned()
        } else {
            format!("token review: token not authenticated: {error}")
        }));
    }
    // An empty configured list asks for the API server's own audience; otherwise one of ours
    // must come back, or the reviewer ignored the audiences we asked for.
    if !config.audience.is_empty() {
        let returned = status.audiences.clone().unwrap_or_default();
        if !returned.iter().any(|a| config.audience.contains(a)) {
            return Err(Refusal::Denied {
                reason: format!(
                    "token review: the token is not valid for audience {:?}",
                    config.audience
                ),
                detail: format!("review returned audiences {returned:?}"),
            });
        }
    }
    let user = status.user.unwrap_or_default();
    let username = user.username.unwrap_or_default();
    let (namespace, service_account) = match username.split(':').collect::<Vec<_>>()[..] {
        ["system", "serviceaccount", ns, sa] if !ns.is_empty() && !sa.is_empty() => {
            (ns.to_owned(), sa.to_owned())
        }
        _ => {
            return Err(Refusal::denied(format!(
                "token review: {username:?} is not a service account"
            )));
        }
    };
    let pair = format!("{namespace}:{service_account}");
    if !config.service_account_allow_list.contains(&pair) {
        return Err(Refusal::denied(format!(
            "service account {pair} is not in the allow list of cluster {name:?}"
        )));
    }
    let extra = user.extra.unwrap_or_default();
    let one = |key: &str| -> Result<String, Refusal> {
        match extra.get(key).map(Vec::as_slice) {
            Some([value]) if !value.is_empty() => Ok(value.clone()),
            _ => Err(Refusal::denied(format!(
                "token review: the token is not bound to a pod ({key} missing)"
            ))),
        }
    };
    let pod_name = one(EXTRA_POD_NAME)?;
    let pod_uid = one(EXTRA_POD_UID)?;

    let pod = cluster
        .api
        .pod(&namespace, &pod_name)
        .await
        .map_err(Refusal::Unverifiable)?
        .ok_or_else(|| Refusal::Denied {
            reason: format!("pod {namespace}/{pod_name} the token is bound to no longer exists"),
            detail: format!("pod uid {pod_uid}"),
        })?;
    let live_uid = pod.metadata.uid.clone().unwrap_or_default();
    if live_uid != pod_uid {
        return Err(Refusal::Denied {
            reason: format!(
                "pod {namespace}/{pod_name} was recreated: the token is bound to a pod that no longer exists"
            ),
            detail: format!("token pod uid {pod_uid}, current pod uid {live_uid}"),
        });
    }
    let spec = pod.spec.clone().unwrap_or_default();
    let node_name = spec.node_name.unwrap_or_default();
    if node_name.is_empty() {
        return Err(Refusal::denied(format!(
            "pod {namespace}/{pod_name} is not scheduled on a node"
        )));
    }
    let node = cluster
        .api
        .node(&node_name)
        .await
        .map_err(Refusal::Unverifiable)?
        .ok_or_else(|| Refusal::denied(format!("node {node_name:?} of the pod does not exist")))?;
    let node_uid = node.metadata.uid.clone().unwrap_or_default();
    if node_uid.is_empty() {
        return Err(Refusal::Internal(format!("node {node_name:?} has no UID")));
    }
    let host_ip = pod
        .status
        .as_ref()
        .and_then(|s| s.host_ip.clone())
        .unwrap_or_default();

    let mut values = vec![
        format!("{CLUSTER_KEY}:{name}"),
        format!("agent_ns:{namespace}"),
        format!("agent_sa:{service_account}"),
        format!("agent_pod_name:{pod_name}"),
        format!("agent_pod_uid:{pod_uid}"),
        format!("{NODE_NAME_KEY}:{node_name}"),
        format!("agent_node_uid:{node_uid}"),
    ];
    // Our selectors cannot have an empty value; a pod not yet running has no host IP.
    if !host_ip.is_empty() {
        values.push(format!("agent_node_ip:{host_ip}"));
    }
    values.extend(allowed_labels(
        "agent_node_label",
        node.metadata.labels.as_ref(),
        &config.allowed_node_label_keys,
    ));
    values.extend(allowed_labels(
        "agent_pod_label",
        pod.metadata.labels.as_ref(),
        &config.allowed_pod_label_keys,
    ));
    let mut selectors = values
        .iter()
        .map(|v| Selector::from_parts(SELECTOR_TYPE, v))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| Refusal::Internal(format!("building selectors: {e}")))?;
    selectors.sort();

    let agent_id = SpiffeId::from_path(
        trust_domain,
        &format!("/spire/agent/k8s_psat/{name}/{node_uid}"),
    )
    .map_err(|e| Refusal::Internal(format!("agent ID for cluster {name:?}: {e}")))?;
    Ok(AttestationResult {
        agent_id,
        selectors,
        can_reattest: true,
    })
}

/// `<prefix>:<key>:<value>` for the labels whose key is allowed.
fn allowed_labels(
    prefix: &str,
    labels: Option<&BTreeMap<String, String>>,
    allowed: &[String],
) -> Vec<String> {
    labels
        .into_iter()
        .flatten()
        .filter(|(k, _)| allowed.contains(k))
        .map(|(k, v)| format!("{prefix}:{k}:{v}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use k8s_openapi::api::authentication::v1::UserInfo;
    use k8s_openapi::api::core::v1::{PodSpec, PodStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    use super::*;

    const TOKEN: &str = "eyJ.secret-psat.sig";

    /// An in-memory cluster: one review answer, pods and nodes by name, and the calls made.
    #[derive(Debug, Default)]
    struct FakeKube {
        review: Mutex<Option<Result<TokenReviewStatus, KubeApiError>>>,
        pods: Mutex<HashMap<(String, String), Pod>>,
        nodes: Mutex<HashMap<String, Node>>,
        reviewed: Mutex<Vec<(String, Vec<String>)>>,
    }

    impl KubeApi for FakeKube {
        fn review<'a>(
            &'a self,
            token: &'a str,
            audiences: &'a [String],
        ) -> BoxFuture<'a, Result<TokenReviewStatus, KubeApiError>> {
            self.reviewed
                .lock()
                .unwrap()
                .push((token.to_owned(), audiences.to_vec()));
            let answer = self
                .review
                .lock()
                .unwrap()
                .take()
                .expect("one review per test");
            Box::pin(async move { answer })
        }

        fn pod<'a>(
            &'a self,
            namespace: &'a str,
            name: &'a str,
        ) -> BoxFuture<'a, Result<Option<Pod>, KubeApiError>> {
            let pod = self
                .pods
                .lock()
                .unwrap()
                .get(&(namespace.to_owned(), name.to_owned()))
                .cloned();
            Box::pin(async move { Ok(pod) })
        }

        fn node<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<Option<Node>, KubeApiError>> {
            let node = self.nodes.lock().unwrap().get(name).cloned();
            Box::pin(async move { Ok(node) })
        }
    }

    fn labels(pairs: &[(&str, &str)]) -> Option<BTreeMap<String, String>> {
        Some(
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
    }

    fn authenticated(username: &str, audiences: &[&str], pod: (&str, &str)) -> TokenReviewStatus {
        TokenReviewStatus {
            authenticated: Some(true),
            audiences: Some(audiences.iter().map(|a| a.to_string()).collect()),
            user: Some(UserInfo {
                username: Some(username.into()),
                extra: Some(BTreeMap::from([
                    (EXTRA_POD_NAME.to_owned(), vec![pod.0.to_owned()]),
                    (EXTRA_POD_UID.to_owned(), vec![pod.1.to_owned()]),
                ])),
                ..UserInfo::default()
            }),
            ..TokenReviewStatus::default()
        }
    }

    /// A cluster where pod `spire/agent-0` (uid pod-uid-1) of SA `spire-agent` runs on `node-1`.
    fn world() -> Arc<FakeKube> {
        let fake = FakeKube::default();
        fake.pods.lock().unwrap().insert(
            ("spire".into(), "agent-0".into()),
            Pod {
                metadata: ObjectMeta {
                    name: Some("agent-0".into()),
                    uid: Some("pod-uid-1".into()),
                    labels: labels(&[("app", "spire-agent"), ("secret", "no")]),
                    ..ObjectMeta::default()
                },
                spec: Some(PodSpec {
                    node_name: Some("node-1".into()),
                    ..PodSpec::default()
                }),
                status: Some(PodStatus {
                    host_ip: Some("10.0.0.7".into()),
                    ..PodStatus::default()
                }),
            },
        );
        fake.nodes.lock().unwrap().insert(
            "node-1".into(),
            Node {
                metadata: ObjectMeta {
                    name: Some("node-1".into()),
                    uid: Some("node-uid-1".into()),
                    labels: labels(&[("zone", "a"), ("rack", "r9")]),
                    ..ObjectMeta::default()
                },
                ..Node::default()
            },
        );
        *fake.review.lock().unwrap() = Some(Ok(authenticated(
            "system:serviceaccount:spire:spire-agent",
            &["spire-server"],
            ("agent-0", "pod-uid-1"),
        )));
        Arc::new(fake)
    }

    fn cluster_config() -> K8sPsatCluster {
        K8sPsatCluster {
            service_account_allow_list: vec!["spire:spire-agent".into()],
            audience: vec!["spire-server".into()],
            kube_config_file: None,
            allowed_node_label_keys: vec!["zone".into()],
            allowed_pod_label_keys: vec!["app".into()],
        }
    }

    fn attestor(fake: Arc<FakeKube>, config: K8sPsatCluster) -> K8sPsatAttestor {
        K8sPsatAttestor::with_apis(
            TrustDomain::new("example.org").unwrap(),
            [("prod".to_owned(), config, fake as Arc<dyn KubeApi>)],
        )
    }

    fn payload(cluster: &str, token: &str) -> Vec<u8> {
        serde_json::json!({"cluster": cluster, "token": token})
            .to_string()
            .into_bytes()
    }

    async fn attest(
        fake: Arc<FakeKube>,
        config: K8sPsatCluster,
    ) -> Result<AttestationResult, AttestationError> {
        attestor(fake, config).attest(&payload("prod", TOKEN)).await
    }

    fn denied(r: Result<AttestationResult, AttestationError>) -> String {
        match r {
            Err(AttestationError::Denied(m)) => m,
            other => panic!("expected Denied, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn valid_token_gives_spire_selectors_and_agent_id() {
        let fake = world();
        let result = attest(fake.clone(), cluster_config()).await.unwrap();
        assert_eq!(
            result.agent_id.to_string(),
            "spiffe://example.org/spire/agent/k8s_psat/prod/node-uid-1"
        );
        assert!(result.can_reattest);
        let selectors: Vec<String> = result.selectors.iter().map(|s| s.to_string()).collect();
        assert_eq!(
            selectors,
            [
                "k8s_psat:agent_node_ip:10.0.0.7",
                "k8s_psat:agent_node_label:zone:a",
                "k8s_psat:agent_node_name:node-1",
                "k8s_psat:agent_node_uid:node-uid-1",
                "k8s_psat:agent_ns:spire",
                "k8s_psat:agent_pod_label:app:spire-agent",
                "k8s_psat:agent_pod_name:agent-0",
                "k8s_psat:agent_pod_uid:pod-uid-1",
                "k8s_psat:agent_sa:spire-agent",
                "k8s_psat:cluster:prod",
            ]
        );
        // The review asked with the configured audiences.
        assert_eq!(
            *fake.reviewed.lock().unwrap(),
            [(TOKEN.to_owned(), vec!["spire-server".to_owned()])]
        );
        // The node it attested for, read back from what is recorded.
        assert_eq!(
            agent_node(&result.agent_id, &result.selectors),
            Some(AgentNode {
                cluster: "prod".into(),
                node: "node-1".into()
            })
        );
    }

    #[test]
    fn only_a_k8s_psat_agent_of_one_cluster_and_node_has_an_agent_node() {
        let id = |s: &str| SpiffeId::new(s).unwrap();
        let sels = |list: &[&str]| -> Vec<Selector> {
            list.iter().map(|s| Selector::new(s).unwrap()).collect()
        };
        let psat = id("spiffe://example.org/spire/agent/k8s_psat/prod/node-uid-1");
        let good = sels(&["k8s_psat:cluster:prod", "k8s_psat:agent_node_name:node-1"]);
        assert!(agent_node(&psat, &good).is_some());
        for (agent, selectors) in [
            // Another attestor's agent, even with such selectors.
            (id("spiffe://example.org/spire/agent/join_token/t"), good),
            // Selectors of another cluster, or none.
            (
                psat.clone(),
                sels(&["k8s_psat:cluster:dev", "k8s_psat:agent_node_name:node-1"]),
            ),
            (psat.clone(), sels(&["k8s_psat:agent_node_name:node-1"])),
            // No node, or two.
            (psat.clone(), sels(&["k8s_psat:cluster:prod"])),
            (
                psat,
                sels(&[
                    "k8s_psat:cluster:prod",
                    "k8s_psat:agent_node_name:node-1",
                    "k8s_psat:agent_node_name:node-2",
                ]),
            ),
        ] {
            assert_eq!(
                agent_node(&agent, &selectors),
                None,
                "{agent} {selectors:?}"
            );
        }
    }

    #[tokio::test]
    async fn malformed_payload_and_unknown_cluster_are_invalid() {
        let a = attestor(world(), cluster_config());
        for bad in [
            b"not json".to_vec(),
            payload("", TOKEN),
            payload("prod", ""),
            b"{\"cluster\":\"prod\"}".to_vec(),
        ] {
            assert!(
                matches!(
                    a.attest(&bad).await,
                    Err(AttestationError::InvalidPayload(_))
                ),
                "{}",
                String::from_utf8_lossy(&bad)
            );
        }
        match a.attest(&payload("staging", TOKEN)).await {
            Err(AttestationError::InvalidPayload(m)) => {
                assert!(m.contains("\"staging\" is not configured"), "{m}");
                assert!(!m.contains(TOKEN));
            }
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn unauthenticated_token_is_denied_with_the_review_error() {
        let fake = world();
        *fake.review.lock().unwrap() = Some(Ok(TokenReviewStatus {
            authenticated: Some(false),
            error: Some("[invalid bearer token, Token has expired.]".into()),
            ..TokenReviewStatus::default()
        }));
        let m = denied(attest(fake, cluster_config()).await);
        assert!(m.contains("Token has expired"), "{m}");
    }

    #[tokio::test]
    async fn audience_must_come_back_from_the_review() {
        let fake = world();
        *fake.review.lock().unwrap() = Some(Ok(authenticated(
            "system:serviceaccount:spire:spire-agent",
            &["https://kubernetes.default.svc"],
            ("agent-0", "pod-uid-1"),
        )));
        let m = denied(attest(fake, cluster_config()).await);
        assert!(m.contains("audience"), "{m}");
    }

    #[tokio::test]
    async fn empty_audience_list_accepts_the_api_server_audience() {
        let fake = world();
        *fake.review.lock().unwrap() = Some(Ok(authenticated(
            "system:serviceaccount:spire:spire-agent",
            &[],
            ("agent-0", "pod-uid-1"),
        )));
        let config = K8sPsatCluster {
            audience: Vec::new(),
            ..cluster_config()
        };
        attest(fake, config).await.unwrap();
    }

    #[tokio::test]
    async fn service_account_must_be_allow_listed() {
        let fake = world();
        *fake.review.lock().unwrap() = Some(Ok(authenticated(
            "system:serviceaccount:spire:intruder",
            &["spire-server"],
            ("agent-0", "pod-uid-1"),
        )));
        let m = denied(attest(fake, cluster_config()).await);
        assert!(m.contains("spire:intruder is not in the allow list"), "{m}");

        for user in [
            "admin",
            "system:serviceaccount:spire",
            "system:serviceaccount::x",
        ] {
            let fake = world();
            *fake.review.lock().unwrap() = Some(Ok(authenticated(
                user,
                &["spire-server"],
                ("agent-0", "pod-uid-1"),
            )));
            let m = denied(attest(fake, cluster_config()).await);
            assert!(m.contains("not a service account"), "{user}: {m}");
        }
    }

    #[tokio::test]
    async fn token_without_pod_binding_is_denied() {
        let fake = world();
        let mut status = authenticated(
            "system:serviceaccount:spire:spire-agent",
            &["spire-server"],
            ("agent-0", "pod-uid-1"),
        );
        status.user.as_mut().unwrap().extra = None;
        *fake.review.lock().unwrap() = Some(Ok(status));
        let m = denied(attest(fake, cluster_config()).await);
        assert!(m.contains("not bound to a pod"), "{m}");
    }

    #[tokio::test]
    async fn deleted_or_recreated_pod_is_denied() {
        let fake = world();
        fake.pods.lock().unwrap().clear();
        let m = denied(attest(fake, cluster_config()).await);
        assert!(m.contains("no longer exists"), "{m}");

        let fake = world();
        fake.pods
            .lock()
            .unwrap()
            .values_mut()
            .for_each(|p| p.metadata.uid = Some("pod-uid-2".into()));
        let m = denied(attest(fake, cluster_config()).await);
        assert!(m.contains("was recreated"), "{m}");
    }

    #[tokio::test]
    async fn missing_node_is_denied() {
        let fake = world();
        fake.nodes.lock().unwrap().clear();
        let m = denied(attest(fake, cluster_config()).await);
        assert!(m.contains("node \"node-1\""), "{m}");
    }

    #[tokio::test]
    async fn forbidden_tokenreview_is_unverifiable_not_denied() {
        let fake = world();
        *fake.review.lock().unwrap() = Some(Err(KubeApiError::Forbidden {
            verb: "create",
            resource: "tokenreviews",
            message: "User cannot create resource".into(),
        }));
        match attest(fake, cluster_config()).await {
            Err(AttestationError::Unverifiable(m)) => {
                assert!(m.contains("could not verify the token"), "{m}");
                assert!(m.contains("tokenreviews"), "{m}");
            }
            other => panic!("{other:?}"),
        }
    }
}
