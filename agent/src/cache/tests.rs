use std::sync::Arc;

use super::testing::{TestCa, entry, federated, selectors, template_entry};
use super::*;

fn ids(found: &[&Arc<Identity>]) -> Vec<String> {
    found.iter().map(|i| i.entry.id.clone()).collect()
}

fn new_cache() -> (TestCa, Cache) {
    let ca = TestCa::new("example.org");
    let cache = Cache::new(ca.bundle(None));
    (ca, cache)
}

#[test]
fn matches_when_all_entry_selectors_are_present() {
    let (_ca, cache) = new_cache();
    cache.replace_entries(vec![
        entry("a", "spiffe://example.org/a", &["unix:uid:1000"], 10),
        entry(
            "b",
            "spiffe://example.org/b",
            &["unix:uid:1000", "unix:gid:50"],
            20,
        ),
        entry(
            "c",
            "spiffe://example.org/c",
            &["unix:uid:1000", "unix:gid:99"],
            30,
        ),
        entry("d", "spiffe://example.org/d", &["unix:uid:2000"], 40),
    ]);
    let snap = cache.snapshot();
    let workload = selectors(&["unix:uid:1000", "unix:gid:50", "unix:user:web"]);
    assert_eq!(ids(&snap.matching(&workload)), ["a", "b"]);
    assert_eq!(
        ids(&snap.matching(&selectors(&["unix:gid:50"]))),
        Vec::<String>::new()
    );
    assert!(snap.matching(&[]).is_empty());
}

#[test]
fn order_is_created_at_then_id_whatever_the_input_order() {
    let (_ca, cache) = new_cache();
    cache.replace_entries(vec![
        entry("z", "spiffe://example.org/z", &["unix:uid:1"], 5),
        entry("b", "spiffe://example.org/b", &["unix:uid:1"], 7),
        entry("a", "spiffe://example.org/a", &["unix:uid:1"], 7),
    ]);
    let snap = cache.snapshot();
    assert_eq!(
        ids(&snap.matching(&selectors(&["unix:uid:1"]))),
        ["z", "a", "b"]
    );
}

#[test]
fn duplicate_hints_keep_the_first() {
    let (_ca, cache) = new_cache();
    let mut a = entry("a", "spiffe://example.org/a", &["unix:uid:1"], 1);
    let mut b = entry("b", "spiffe://example.org/b", &["unix:uid:1"], 2);
    let c = entry("c", "spiffe://example.org/c", &["unix:uid:1"], 3);
    let d = entry("d", "spiffe://example.org/d", &["unix:uid:1"], 4);
    a.hint = "internal".into();
    b.hint = "internal".into();
    cache.replace_entries(vec![b, a, c, d]);
    let snap = cache.snapshot();
    assert_eq!(
        ids(&snap.matching(&selectors(&["unix:uid:1"]))),
        ["a", "c", "d"]
    );
}

#[test]
fn many_entries_match_through_the_index() {
    let (_ca, cache) = new_cache();
    let entries: Vec<_> = (0..2000)
        .map(|i| {
            let uid = format!("unix:uid:{}", i % 100);
            let gid = format!("unix:gid:{i}");
            entry(
                &format!("e{i:04}"),
                &format!("spiffe://example.org/w{i}"),
                &[&uid, &gid],
                i,
            )
        })
        .collect();
    cache.replace_entries(entries);
    let snap = cache.snapshot();
    let found = snap.matching(&selectors(&["unix:uid:7", "unix:gid:107", "unix:gid:1907"]));
    assert_eq!(ids(&found), ["e0107", "e1907"]);
}

#[test]
fn upsert_and_remove() {
    let (_ca, cache) = new_cache();
    cache.upsert_entries(vec![entry(
        "a",
        "spiffe://example.org/a",
        &["unix:uid:1"],
        1,
    )]);
    cache.upsert_entries(vec![
        entry("b", "spiffe://example.org/b", &["unix:uid:1"], 2),
        entry("a", "spiffe://example.org/a2", &["unix:uid:1"], 1),
    ]);
    let snap = cache.snapshot();
    assert_eq!(snap.identities.len(), 2);
    assert_eq!(
        snap.identity("a").unwrap().entry.spiffe_id.to_string(),
        "spiffe://example.org/a2"
    );
    cache.remove_entries(["a", "unknown"]);
    assert_eq!(
        ids(&cache.snapshot().matching(&selectors(&["unix:uid:1"]))),
        ["b"]
    );
}

#[test]
fn every_write_publishes_and_old_snapshots_stay_intact() {
    let (ca, cache) = new_cache();
    let mut rx = cache.subscribe();
    let before = rx.borrow_and_update().clone();
    cache.replace_entries(vec![entry(
        "a",
        "spiffe://example.org/a",
        &["unix:uid:1"],
        1,
    )]);
    assert!(rx.has_changed().unwrap());
    let after_entries = rx.borrow_and_update().clone();
    assert!(
        before.identities.is_empty(),
        "published snapshots are immutable"
    );

    cache
        .set_svid("a", ca.svid("spiffe://example.org/a"))
        .unwrap();
    assert!(rx.has_changed().unwrap());
    let after_svid = rx.borrow_and_update().clone();
    assert!(after_entries.identities[0].svid.is_none());
    assert!(after_svid.identities[0].svid.is_some());

    let other = TestCa::new("other.org");
    cache.set_federated_bundles(federated(&[&other]));
    assert!(rx.has_changed().unwrap());
    let snap = rx.borrow_and_update().clone();
    assert!(snap.federated.contains_key(&other.td));
    assert!(Arc::ptr_eq(&snap.identities[0], &after_svid.identities[0]));

    let rotated = TestCa::new("example.org");
    cache.set_bundle(rotated.bundle(None));
    assert!(rx.has_changed().unwrap());
    assert_eq!(
        rx.borrow_and_update().bundle.x509_authorities,
        vec![rotated.der()]
    );
}

#[test]
fn set_svid_checks_the_leaf() {
    let (ca, cache) = new_cache();
    cache.replace_entries(vec![entry(
        "a",
        "spiffe://example.org/a",
        &["unix:uid:1"],
        1,
    )]);
    assert_eq!(
        cache.set_svid("nope", ca.svid("spiffe://example.org/a")),
        Err(CacheError::UnknownEntry("nope".into()))
    );
    assert_eq!(
        cache.set_svid("a", ca.svid("spiffe://example.org/b")),
        Err(CacheError::SpiffeIdMismatch {
            expected: "spiffe://example.org/a".into(),
            found: Some("spiffe://example.org/b".into()),
        })
    );
    let empty = CachedX509Svid {
        chain: vec![],
        private_key_pkcs8: Zeroizing::new(vec![]),
        expires_at: 0,
    };
    assert_eq!(cache.set_svid("a", empty), Err(CacheError::EmptyChain));
    assert!(cache.snapshot().identities[0].svid.is_none());
}

#[test]
fn svid_survives_entry_updates_unless_the_spiffe_id_changes() {
    let (ca, cache) = new_cache();
    cache.replace_entries(vec![entry(
        "a",
        "spiffe://example.org/a",
        &["unix:uid:1"],
        1,
    )]);
    cache
        .set_svid("a", ca.svid("spiffe://example.org/a"))
        .unwrap();
    let mut updated = entry(
        "a",
        "spiffe://example.org/a",
        &["unix:uid:1", "unix:gid:2"],
        1,
    );
    updated.revision = 2;
    cache.replace_entries(vec![updated]);
    assert!(cache.snapshot().identities[0].svid.is_some());
    cache.upsert_entries(vec![entry(
        "a",
        "spiffe://example.org/renamed",
        &["unix:uid:1"],
        1,
    )]);
    assert!(cache.snapshot().identities[0].svid.is_none());
}

#[test]
fn debug_hides_the_private_key() {
    let ca = TestCa::new("example.org");
    let svid = ca.svid("spiffe://example.org/a");
    let shown = format!("{svid:?}");
    assert!(shown.contains("<redacted>"));
    assert!(!shown.contains(&format!("{:?}", svid.private_key_pkcs8.as_slice())));
}

const NS_SA: &str = "spiffe://example.org/ns/{k8s:ns}/sa/{k8s:sa}";

fn rendered_key(entry_id: &str, id: &str) -> RenderedKey {
    RenderedKey {
        entry_id: entry_id.into(),
        spiffe_id: SpiffeId::new(id).unwrap(),
    }
}

#[test]
fn template_entries_match_by_key_and_render_per_workload() {
    let (_ca, cache) = new_cache();
    cache.replace_entries(vec![
        template_entry("t", NS_SA, &["k8s:ns"], 10),
        template_entry(
            "pay",
            "spiffe://example.org/pay/{k8s:sa}",
            &["k8s:ns:payments"],
            20,
        ),
        entry("fixed", "spiffe://example.org/fixed", &["k8s:ns"], 30),
    ]);
    let snap = cache.snapshot();
    let pod = |ns: &str| selectors(&[&format!("k8s:ns:{ns}"), "k8s:sa:api"]);
    let rendered = |ns: &str| -> Vec<(String, String)> {
        snap.matching_templates(&pod(ns))
            .into_iter()
            .map(|(i, id)| (i.entry.id.clone(), id.to_string()))
            .collect()
    };
    assert_eq!(
        rendered("payments"),
        [
            ("t".into(), "spiffe://example.org/ns/payments/sa/api".into()),
            ("pay".into(), "spiffe://example.org/pay/api".into()),
        ]
    );
    assert_eq!(
        rendered("web"),
        [(
            "t".to_string(),
            "spiffe://example.org/ns/web/sa/api".to_string()
        )]
    );
    // Template entries never take the fixed-entry path, and the fixed entry keeps exact
    // matching (`k8s:ns` is not a pod's selector).
    assert!(snap.matching(&pod("payments")).is_empty());
    // A placeholder without a value: nothing.
    assert!(
        snap.matching_templates(&selectors(&["k8s:ns:x"]))
            .is_empty()
    );
    // A hostile value: nothing.
    assert!(
        snap.matching_templates(&selectors(&["k8s:ns:..", "k8s:sa:a"]))
            .is_empty()
    );
}

#[test]
fn rendered_svids_are_checked_and_dropped_with_their_entry() {
    let (ca, cache) = new_cache();
    cache.replace_entries(vec![
        template_entry("t", NS_SA, &["k8s:ns"], 10),
        entry("fixed", "spiffe://example.org/fixed", &["k8s:ns:a"], 20),
    ]);
    let ok = "spiffe://example.org/ns/a/sa/b";
    let rejected = cache.set_rendered_svids(vec![
        (rendered_key("t", ok), ca.svid(ok)),
        // The leaf must carry the rendered ID.
        (
            rendered_key("t", "spiffe://example.org/ns/c/sa/d"),
            ca.svid(ok),
        ),
        // Not an instance of the template.
        (
            rendered_key("t", "spiffe://example.org/other"),
            ca.svid("spiffe://example.org/other"),
        ),
        // Not a template entry.
        (
            rendered_key("fixed", "spiffe://example.org/fixed"),
            ca.svid("spiffe://example.org/fixed"),
        ),
    ]);
    assert_eq!(rejected.len(), 3, "{rejected:?}");
    assert!(matches!(rejected[0].1, CacheError::SpiffeIdMismatch { .. }));
    assert!(matches!(rejected[1].1, CacheError::NotAnInstance(..)));
    assert!(matches!(rejected[2].1, CacheError::NotAnInstance(..)));
    let snap = cache.snapshot();
    assert_eq!(
        snap.rendered.keys().cloned().collect::<Vec<_>>(),
        [rendered_key("t", ok)]
    );

    // Unrelated entry changes keep it; removing the template drops it.
    cache.upsert_entries(vec![entry(
        "other",
        "spiffe://example.org/o",
        &["unix:uid:1"],
        5,
    )]);
    assert_eq!(cache.snapshot().rendered.len(), 1);
    cache.remove_entries(["t"]);
    assert!(cache.snapshot().rendered.is_empty());
}

#[test]
fn remove_rendered_drops_idle_svids() {
    let (ca, cache) = new_cache();
    cache.replace_entries(vec![template_entry("t", NS_SA, &["k8s:ns"], 10)]);
    let a = "spiffe://example.org/ns/a/sa/b";
    let b = "spiffe://example.org/ns/c/sa/d";
    assert!(
        cache
            .set_rendered_svids(vec![
                (rendered_key("t", a), ca.svid(a)),
                (rendered_key("t", b), ca.svid(b)),
            ])
            .is_empty()
    );
    cache.remove_rendered(&[rendered_key("t", a)]);
    assert_eq!(
        cache
            .snapshot()
            .rendered
            .keys()
            .cloned()
            .collect::<Vec<_>>(),
        [rendered_key("t", b)]
    );
}

/// A template whose instance a selector value steers into `/spire/*` (a namespace named
/// `spire` rendering `spiffe://example.org/spire/server`) gives that workload nothing, and
/// every other workload its instance.
#[test]
fn template_instances_in_the_reserved_namespace_are_not_rendered() {
    let (_ca, cache) = new_cache();
    cache.replace_entries(vec![template_entry(
        "t",
        "spiffe://example.org/{k8s:ns}/server",
        &["k8s:ns"],
        10,
    )]);
    let snap = cache.snapshot();
    assert!(
        snap.matching_templates(&selectors(&["k8s:ns:spire"]))
            .is_empty()
    );
    let other: Vec<String> = snap
        .matching_templates(&selectors(&["k8s:ns:payments"]))
        .into_iter()
        .map(|(_, id)| id.to_string())
        .collect();
    assert_eq!(other, ["spiffe://example.org/payments/server"]);
}
