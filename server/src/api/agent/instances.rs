//! Whether an agent may be signed an ID of an entry it does not own outright (issue 17): an
//! entry reached through a node alias is shared by every node the alias covers, so one
//! compromised node must not turn a template into any service's identity.
//!
//! - An entry parented to the agent's own ID: the operator gave it to that one agent; any
//!   instance of a template (checked by `requested_id`) is signed, as before.
//! - A template reached any other way: signed only for a `k8s_psat` agent, for the pod the
//!   request names (`pod_uid`), when its cluster's pod cache ([`crate::k8s_pods`]) is fresh and
//!   says the pod is bound to the agent's node, neither terminated nor being deleted, satisfies
//!   every entry selector the API vouches for, and its API facts render exactly the requested
//!   ID. The template's placeholders must all be such facts: selectors only the agent reports
//!   (`unix:*`, `k8s:container-*`) may narrow an entry but never choose the ID.
//! - A fixed entry reached any other way that names a pod (`k8s:pod-uid:`, `k8s:pod-name:`):
//!   for a `k8s_psat` agent, signed only while such a pod (with the entry's other vouched
//!   selectors, e.g. `k8s:ns:`) runs on the agent's node. Other agents are not Kubernetes
//!   nodes the server can check; their fixed entries are signed as before.

use std::time::SystemTime;

use sigil_proto::id_template::{RenderError, template_selectors_match};
use sigil_proto::{EntrySpiffeId, IdTemplate, RegistrationEntry, Selector, SpiffeId};

use super::AgentIdentity;
use crate::k8s_pods::{CacheError, PodCache, PodCaches, PodFacts, PodPhase, is_vouched};
use crate::node_attestation::k8s_psat::{AgentNode, agent_node};

/// The check an instance failed; the agent is told it (it names no secret).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(super) enum Refusal {
    #[error(
        "the entry is not parented to this agent, and template instances via a node alias are \
         only signed for k8s_psat agents, for pods the Kubernetes API vouches for"
    )]
    NotKubernetesAgent,
    #[error(
        "template placeholder {{{0}}} is not a pod fact the Kubernetes API vouches for \
         (k8s:ns, k8s:sa, k8s:pod-name, k8s:pod-uid, k8s:pod-label:<key>, k8s:node-name)"
    )]
    UnvouchedPlaceholder(String),
    #[error("no pod_uid: a template instance via a node alias is signed only for a named pod")]
    NoPodUid,
    #[error("the server watches no pods of cluster {0:?}")]
    NoCache(String),
    #[error(transparent)]
    Cache(#[from] CacheError),
    #[error("pod {0} does not exist in the Kubernetes API")]
    NoSuchPod(String),
    #[error("pod {pod} is bound to node {bound:?}, not to this agent's node {node:?}")]
    OtherNode {
        pod: String,
        bound: String,
        node: String,
    },
    #[error("pod {0} has terminated")]
    Terminated(String),
    #[error("pod {0} is being deleted")]
    Deleting(String),
    #[error("pod {pod} does not satisfy the entry's selector {selector}")]
    Selector { pod: String, selector: Selector },
    #[error("the template does not render from pod {pod}'s API facts: {error}")]
    Render { pod: String, error: RenderError },
    #[error("pod {pod}'s API facts render {rendered}, not the requested ID")]
    OtherId { pod: String, rendered: SpiffeId },
    #[error(
        "no running pod on this agent's node {node:?} matches the entry's pod selectors in the \
         Kubernetes API"
    )]
    NoPodOnNode { node: String },
}

/// Checks that `agent` may be signed `id` (already known to be an ID `entry` gives) for the
/// pod `pod_uid` (see the module docs).
pub(super) fn check(
    caches: &PodCaches,
    agent: &AgentIdentity,
    entry: &RegistrationEntry,
    id: &SpiffeId,
    pod_uid: &str,
    now: SystemTime,
) -> Result<(), Refusal> {
    if entry.parent_id == agent.id {
        return Ok(());
    }
    match &entry.spiffe_id {
        EntrySpiffeId::Template(template) => {
            let node =
                agent_node(&agent.id, &agent.selectors).ok_or(Refusal::NotKubernetesAgent)?;
            template_instance(caches, &node, entry, template, id, pod_uid, now)
        }
        EntrySpiffeId::Fixed(_) => match agent_node(&agent.id, &agent.selectors) {
            Some(node) if names_a_pod(entry) => pod_bound_fixed(caches, &node, entry, now),
            _ => Ok(()),
        },
    }
}

fn cache<'a>(caches: &'a PodCaches, node: &AgentNode) -> Result<&'a PodCache, Refusal> {
    caches
        .get(&node.cluster)
        .map(AsRef::as_ref)
        .ok_or_else(|| Refusal::NoCache(node.cluster.clone()))
}

fn template_instance(
    caches: &PodCaches,
    node: &AgentNode,
    entry: &RegistrationEntry,
    template: &IdTemplate,
    id: &SpiffeId,
    pod_uid: &str,
    now: SystemTime,
) -> Result<(), Refusal> {
    if let Some(p) = template.placeholders().find(|p| {
        let (kind, key) = p.split_once(':').unwrap_or((p, ""));
        !is_vouched(kind, key)
    }) {
        return Err(Refusal::UnvouchedPlaceholder(p));
    }
    if pod_uid.is_empty() {
        return Err(Refusal::NoPodUid);
    }
    let view = cache(caches, node)?.view(now)?;
    let pod = view
        .pod(pod_uid)
        .ok_or_else(|| Refusal::NoSuchPod(pod_uid.to_owned()))?;
    if pod.node != node.node {
        return Err(Refusal::OtherNode {
            pod: describe(pod),
            bound: pod.node.clone(),
            node: node.node.clone(),
        });
    }
    check_alive(pod)?;
    let facts = pod.selectors();
    if let Some(selector) =
        vouched(entry).find(|s| !template_selectors_match(std::slice::from_ref(*s), &facts))
    {
        return Err(Refusal::Selector {
            pod: describe(pod),
            selector: selector.clone(),
        });
    }
    let rendered = template.render(&facts).map_err(|error| Refusal::Render {
        pod: describe(pod),
        error,
    })?;
    if &rendered != id {
        return Err(Refusal::OtherId {
            pod: describe(pod),
            rendered,
        });
    }
    Ok(())
}

/// True if the entry selects one pod by name or UID.
fn names_a_pod(entry: &RegistrationEntry) -> bool {
    entry.selectors.iter().any(|s| {
        s.kind() == "k8s"
            && (s.value().starts_with("pod-uid:") || s.value().starts_with("pod-name:"))
    })
}

/// A fixed entry's selectors match exactly, as the agent matches them.
fn pod_bound_fixed(
    caches: &PodCaches,
    node: &AgentNode,
    entry: &RegistrationEntry,
    now: SystemTime,
) -> Result<(), Refusal> {
    let view = cache(caches, node)?.view(now)?;
    let found = view.pods_on(&node.node).any(|pod| {
        let facts = pod.selectors();
        check_alive(pod).is_ok() && vouched(entry).all(|s| facts.contains(s))
    });
    if found {
        Ok(())
    } else {
        Err(Refusal::NoPodOnNode {
            node: node.node.clone(),
        })
    }
}

fn check_alive(pod: &PodFacts) -> Result<(), Refusal> {
    if pod.phase == PodPhase::Terminated {
        return Err(Refusal::Terminated(describe(pod)));
    }
    if pod.deleting {
        return Err(Refusal::Deleting(describe(pod)));
    }
    Ok(())
}

/// The entry's selectors the API vouches for.
fn vouched(entry: &RegistrationEntry) -> impl Iterator<Item = &Selector> {
    entry
        .selectors
        .iter()
        .filter(|s| is_vouched(s.kind(), s.value()))
}

/// `<namespace>/<name> (<uid>)`.
fn describe(pod: &PodFacts) -> String {
    format!("{}/{} ({})", pod.namespace, pod.name, pod.uid)
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::Arc;

    use super::*;

    const NODE_A: &str = "node-a";
    const ALIAS: &str = "spiffe://example.org/k8s-cluster/demo";

    fn agent(node: &str) -> AgentIdentity {
        AgentIdentity {
            id: SpiffeId::new(&format!(
                "spiffe://example.org/spire/agent/k8s_psat/demo/{node}-uid"
            ))
            .unwrap(),
            selectors: vec![
                Selector::new("k8s_psat:cluster:demo").unwrap(),
                Selector::new(&format!("k8s_psat:agent_node_name:{node}")).unwrap(),
            ],
            svid_expires: SystemTime::now(),
        }
    }

    fn join_token_agent() -> AgentIdentity {
        AgentIdentity {
            id: SpiffeId::new("spiffe://example.org/spire/agent/join_token/t").unwrap(),
            selectors: vec![],
            svid_expires: SystemTime::now(),
        }
    }

    /// A running pod of service account `checkout`, labelled `app=<name>`.
    fn pod(ns: &str, name: &str, uid: &str, node: &str) -> PodFacts {
        PodFacts {
            namespace: ns.into(),
            name: name.into(),
            uid: uid.into(),
            service_account: "checkout".into(),
            node: node.into(),
            labels: [("app".to_owned(), name.to_owned())].into(),
            phase: PodPhase::Active,
            deleting: false,
        }
    }

    /// Cluster `demo`: `payments/checkout-a` (uid `ua`) on node-a, `payments/checkout-b`
    /// (`ub`) on node-b, `shop/web-a` (`uw`) on node-a.
    fn caches() -> PodCaches {
        let cache = PodCache::new("demo");
        let pods = [
            pod("payments", "checkout-a", "ua", NODE_A),
            pod("payments", "checkout-b", "ub", "node-b"),
            pod("shop", "web-a", "uw", NODE_A),
        ];
        cache.relisted(
            pods.into_iter()
                .map(|p| (p.uid.clone(), p))
                .collect::<HashMap<_, _>>(),
        );
        PodCaches::new([Arc::new(cache)])
    }

    fn template(t: &str, parent: &str, selectors: &[&str]) -> RegistrationEntry {
        entry(
            EntrySpiffeId::Template(t.parse().unwrap()),
            parent,
            selectors,
        )
    }

    fn entry(id: EntrySpiffeId, parent: &str, selectors: &[&str]) -> RegistrationEntry {
        let mut e = crate::datastore::tests::entry("spiffe://example.org/x", parent, &["k8s:ns"]);
        e.id = "e1".into();
        e.spiffe_id = id;
        e.selectors = selectors
            .iter()
            .map(|s| Selector::new(s).unwrap())
            .collect();
        e
    }

    fn id(s: &str) -> SpiffeId {
        SpiffeId::new(s).unwrap()
    }

    const NS_SA: &str = "spiffe://example.org/ns/{k8s:ns}/sa/{k8s:sa}";

    #[test]
    fn an_agent_owned_template_gives_any_instance_as_before() {
        let a = join_token_agent();
        let e = template(NS_SA, &a.id.to_string(), &["k8s:ns"]);
        let any = id("spiffe://example.org/ns/no-such-ns/sa/x");
        assert_eq!(
            check(&PodCaches::default(), &a, &e, &any, "", SystemTime::now()),
            Ok(())
        );
    }

    #[test]
    fn an_alias_template_gives_only_the_instance_of_a_pod_on_the_agents_node() {
        let caches = caches();
        let a = agent(NODE_A);
        let e = template(NS_SA, ALIAS, &["k8s:ns"]);
        let now = SystemTime::now();
        let checkout = id("spiffe://example.org/ns/payments/sa/checkout");
        assert_eq!(check(&caches, &a, &e, &checkout, "ua", now), Ok(()));

        let refusal = |requested: &str, uid: &str| {
            check(&caches, &a, &e, &id(requested), uid, now).unwrap_err()
        };
        assert_eq!(
            refusal(checkout.to_string().as_str(), ""),
            Refusal::NoPodUid
        );
        assert_eq!(
            refusal(checkout.to_string().as_str(), "nope"),
            Refusal::NoSuchPod("nope".into())
        );
        assert!(matches!(
            refusal(checkout.to_string().as_str(), "ub"),
            Refusal::OtherNode { bound, .. } if bound == "node-b"
        ));
        // A pod on this node, asking for another namespace's instance.
        assert!(matches!(
            refusal("spiffe://example.org/ns/payments/sa/checkout", "uw"),
            Refusal::OtherId { rendered, .. } if rendered.to_string() == "spiffe://example.org/ns/shop/sa/checkout"
        ));

        // Not a k8s_psat agent: nothing via the alias.
        assert_eq!(
            check(&caches, &join_token_agent(), &e, &checkout, "ua", now),
            Err(Refusal::NotKubernetesAgent)
        );
        // A cluster the server does not watch.
        assert_eq!(
            check(&PodCaches::default(), &a, &e, &checkout, "ua", now),
            Err(Refusal::NoCache("demo".into()))
        );
    }

    #[test]
    fn vouched_entry_selectors_narrow_and_unvouched_placeholders_are_refused() {
        let caches = caches();
        let a = agent(NODE_A);
        let now = SystemTime::now();
        // `k8s:ns:payments`: a pod of another namespace on this node renders fine but is not
        // selected.
        let e = template(
            "spiffe://example.org/pods/{k8s:pod-name}",
            ALIAS,
            &["k8s:ns:payments"],
        );
        assert_eq!(
            check(
                &caches,
                &a,
                &e,
                &id("spiffe://example.org/pods/checkout-a"),
                "ua",
                now
            ),
            Ok(())
        );
        assert!(matches!(
            check(&caches, &a, &e, &id("spiffe://example.org/pods/web-a"), "uw", now),
            Err(Refusal::Selector { selector, .. }) if selector.to_string() == "k8s:ns:payments"
        ));
        // Labels: the pod's own value only.
        let e = template(
            "spiffe://example.org/app/{k8s:pod-label:app}",
            ALIAS,
            &["k8s:pod-label:app"],
        );
        assert_eq!(
            check(
                &caches,
                &a,
                &e,
                &id("spiffe://example.org/app/web-a"),
                "uw",
                now
            ),
            Ok(())
        );
        assert!(matches!(
            check(
                &caches,
                &a,
                &e,
                &id("spiffe://example.org/app/admin"),
                "uw",
                now
            ),
            Err(Refusal::OtherId { .. })
        ));
        // An unvouched selector may narrow (the agent checks it) but never choose the ID.
        let e = template(NS_SA, ALIAS, &["k8s:ns", "k8s:container-name:main"]);
        assert_eq!(
            check(
                &caches,
                &a,
                &e,
                &id("spiffe://example.org/ns/payments/sa/checkout"),
                "ua",
                now
            ),
            Ok(())
        );
        for t in [
            "spiffe://example.org/c/{k8s:container-name}",
            "spiffe://example.org/ns/{k8s:ns}/uid/{unix:uid}",
        ] {
            let e = template(t, ALIAS, &["k8s:ns"]);
            assert!(
                matches!(
                    check(
                        &caches,
                        &a,
                        &e,
                        &id("spiffe://example.org/c/main"),
                        "ua",
                        now
                    ),
                    Err(Refusal::UnvouchedPlaceholder(_))
                ),
                "{t}"
            );
        }
    }

    #[test]
    fn terminated_deleting_and_stale_pods_give_nothing() {
        let a = agent(NODE_A);
        let e = template(NS_SA, ALIAS, &["k8s:ns"]);
        let want = id("spiffe://example.org/ns/payments/sa/checkout");
        let cache = PodCache::new("demo");
        let mut ended = pod("payments", "checkout-a", "ua", NODE_A);
        ended.phase = PodPhase::Terminated;
        let mut deleting = pod("payments", "checkout-d", "ud", NODE_A);
        deleting.deleting = true;
        cache.relisted(HashMap::from([
            ("ua".into(), ended),
            ("ud".into(), deleting),
        ]));
        let caches = PodCaches::new([Arc::new(cache)]);
        let now = SystemTime::now();
        assert!(matches!(
            check(&caches, &a, &e, &want, "ua", now),
            Err(Refusal::Terminated(_))
        ));
        assert!(matches!(
            check(&caches, &a, &e, &want, "ud", now),
            Err(Refusal::Deleting(_))
        ));

        let cache = caches.get("demo").unwrap();
        cache.relisted(HashMap::from([(
            "ua".into(),
            pod("payments", "checkout-a", "ua", NODE_A),
        )]));
        assert_eq!(check(&caches, &a, &e, &want, "ua", now), Ok(()));
        cache.broken(now);
        let later = now + crate::k8s_pods::STALE_AFTER + std::time::Duration::from_secs(1);
        assert!(matches!(
            check(&caches, &a, &e, &want, "ua", later),
            Err(Refusal::Cache(CacheError::Stale { .. }))
        ));
    }

    #[test]
    fn an_alias_fixed_entry_naming_a_pod_is_signed_only_on_its_node() {
        let caches = caches();
        let now = SystemTime::now();
        let fixed = |selectors: &[&str]| {
            entry(
                EntrySpiffeId::Fixed(id("spiffe://example.org/checkout")),
                ALIAS,
                selectors,
            )
        };
        let want = id("spiffe://example.org/checkout");
        let by_uid = fixed(&["k8s:pod-uid:ua"]);
        assert_eq!(
            check(&caches, &agent(NODE_A), &by_uid, &want, "", now),
            Ok(())
        );
        assert_eq!(
            check(&caches, &agent("node-b"), &by_uid, &want, "", now),
            Err(Refusal::NoPodOnNode {
                node: "node-b".into()
            })
        );
        let by_name = fixed(&["k8s:ns:payments", "k8s:pod-name:checkout-b"]);
        assert_eq!(
            check(&caches, &agent("node-b"), &by_name, &want, "", now),
            Ok(())
        );
        assert!(check(&caches, &agent(NODE_A), &by_name, &want, "", now).is_err());
        // With the wrong namespace, on its own node: no such pod.
        let wrong_ns = fixed(&["k8s:ns:shop", "k8s:pod-name:checkout-b"]);
        assert!(check(&caches, &agent("node-b"), &wrong_ns, &want, "", now).is_err());
        // Entries naming no pod, and non-Kubernetes agents: as before.
        let by_sa = fixed(&["k8s:ns:payments", "k8s:sa:checkout"]);
        assert_eq!(
            check(&caches, &agent("node-c"), &by_sa, &want, "", now),
            Ok(())
        );
        assert_eq!(
            check(&caches, &join_token_agent(), &by_uid, &want, "", now),
            Ok(())
        );
    }
}
