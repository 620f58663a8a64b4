//! The authorization rule and the messages, from cache snapshots built in memory. The service
//! itself, over the real socket and with the real binaries, is tested end to end in
//! `tests/tests/delegated_identity.rs`.

use std::collections::BTreeSet;

use sigil_proto::SpiffeId;

use super::handler::{DelegatedError, authorize};
use super::responses::{jwt_bundles, x509_bundles, x509_svids};
use crate::cache::Cache;
use crate::cache::testing::{TestCa, TestJwtKey, entry, federated, selectors};
use crate::workload_api::RequestError;

fn delegates(ids: &[&str]) -> BTreeSet<SpiffeId> {
    ids.iter().map(|id| SpiffeId::new(id).unwrap()).collect()
}

fn cache_with_entries() -> (TestCa, Cache) {
    let ca = TestCa::new("example.org");
    let cache = Cache::new(ca.bundle(Some(&TestJwtKey::new("kid"))));
    let mut web = entry("web", "spiffe://example.org/web", &["unix:uid:1000"], 2);
    web.federates_with = vec!["other.org".parse().unwrap()];
    let mut admin = entry("admin", "spiffe://example.org/admin", &["unix:uid:1000"], 3);
    admin.admin = true;
    cache.replace_entries(vec![
        entry("cilium", "spiffe://example.org/cilium", &["unix:uid:0"], 1),
        web,
        admin,
    ]);
    (ca, cache)
}

#[test]
fn only_a_caller_with_a_listed_entry_is_a_delegate() {
    let (_ca, cache) = cache_with_entries();
    let snapshot = cache.snapshot();
    let listed = delegates(&["spiffe://example.org/cilium"]);
    authorize(&snapshot, &selectors(&["unix:uid:0"]), &listed).unwrap();
    // An identity, but not a listed one.
    assert!(matches!(
        authorize(&snapshot, &selectors(&["unix:uid:1000"]), &listed),
        Err(DelegatedError::NotADelegate)
    ));
    // No identity at all.
    assert!(matches!(
        authorize(&snapshot, &selectors(&["unix:uid:7"]), &listed),
        Err(DelegatedError::Workload(RequestError::NoIdentity))
    ));
    // Nobody is a delegate when none is listed.
    assert!(matches!(
        authorize(&snapshot, &selectors(&["unix:uid:0"]), &BTreeSet::new()),
        Err(DelegatedError::NotADelegate)
    ));
}

#[test]
fn x509_svids_of_the_target_without_admin_entries() {
    let (ca, cache) = cache_with_entries();
    let target = selectors(&["unix:uid:1000"]);
    // Entries match, nothing minted: nothing to send yet.
    assert!(x509_svids(&cache.snapshot(), &target).unwrap().is_none());
    let other = TestCa::new("other.org");
    cache.set_federated_bundles(federated(&[&other]));
    cache
        .set_svid("web", ca.svid("spiffe://example.org/web"))
        .unwrap();
    cache
        .set_svid("admin", ca.svid("spiffe://example.org/admin"))
        .unwrap();
    let got = x509_svids(&cache.snapshot(), &target).unwrap().unwrap();
    assert_eq!(
        got.x509_svids.len(),
        1,
        "the admin entry's SVID is kept back"
    );
    let svid = got.x509_svids[0].x509_svid.as_ref().unwrap();
    let id = svid.id.as_ref().unwrap();
    assert_eq!(
        (id.trust_domain.as_str(), id.path.as_str()),
        ("example.org", "/web")
    );
    assert!(!svid.cert_chain.is_empty() && !got.x509_svids[0].x509_svid_key.is_empty());
    assert_eq!(got.federates_with, ["spiffe://other.org"]);
    // A target no entry selects: an empty message, not an error (SPIRE's answer).
    let none = x509_svids(&cache.snapshot(), &selectors(&["unix:uid:7"]))
        .unwrap()
        .unwrap();
    assert!(none.x509_svids.is_empty() && none.federates_with.is_empty());
}

#[test]
fn bundle_messages_hold_every_bundle_the_agent_has() {
    let (ca, cache) = cache_with_entries();
    let other = TestCa::new("other.org");
    cache.set_federated_bundles(federated(&[&other]));
    let snapshot = cache.snapshot();
    let x509 = x509_bundles(&snapshot);
    assert_eq!(x509.ca_certificates["spiffe://example.org"], ca.der());
    assert_eq!(x509.ca_certificates["spiffe://other.org"], other.der());
    let jwt = jwt_bundles(&snapshot).unwrap();
    let own: serde_json::Value =
        serde_json::from_slice(&jwt.bundles["spiffe://example.org"]).unwrap();
    assert_eq!(own["keys"][0]["kid"], "kid");
    assert_eq!(jwt.bundles.len(), 2);
}

#[test]
fn a_rotation_or_a_removed_entry_changes_the_message() {
    let (ca, cache) = cache_with_entries();
    let target = selectors(&["unix:uid:1000"]);
    cache
        .set_svid("web", ca.svid("spiffe://example.org/web"))
        .unwrap();
    let before = x509_svids(&cache.snapshot(), &target).unwrap().unwrap();
    cache
        .set_svid("web", ca.svid("spiffe://example.org/web"))
        .unwrap();
    let rotated = x509_svids(&cache.snapshot(), &target).unwrap().unwrap();
    assert_ne!(before, rotated, "a new SVID is a new message");
    assert_ne!(
        before.x509_svids[0].x509_svid_key,
        rotated.x509_svids[0].x509_svid_key
    );
    cache.remove_entries(["web", "admin"]);
    let gone = x509_svids(&cache.snapshot(), &target).unwrap().unwrap();
    assert!(
        gone.x509_svids.is_empty(),
        "the workload's SVIDs are withdrawn"
    );
}
