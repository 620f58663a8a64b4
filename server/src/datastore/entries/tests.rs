//! Entry and change-feed tests, on both backends: round trips, uniqueness, filters and
//! selector matching, paging, updates, deletes, events and pruning.

use std::time::Duration;

use sigil_common::time::unix_now;
use sigil_proto::{IdTemplate, RegistrationEntry, Selector, SpiffeId, TrustDomain};
use sqlx::Row;
use uuid::Uuid;

use super::super::tests::{on_both_backends, scalar};
use super::*;
use crate::datastore::selectors::{self, ENTRY_SELECTORS, SelectorMatch};
use crate::datastore::sql::Sql;
use crate::datastore::{Datastore, DatastoreError, PRUNE_BATCH};

on_both_backends!(
    event_pruning_works_through_more_than_one_batch,
    create_fetch_round_trips_every_field,
    caller_chosen_id_is_kept_and_must_be_unique,
    duplicate_is_refused_whatever_the_selector_order,
    a_bad_batch_member_leaves_nothing_behind,
    template_entries_round_trip_and_filter_by_template_text,
    field_filters,
    federates_with_and_downstream_filters,
    selector_match_modes,
    pagination_covers_every_entry_once_in_id_order,
    update_replaces_fields_and_bumps_revision,
    failed_updates_change_nothing,
    delete_returns_entries_and_unknown_id_deletes_nothing,
    events_follow_every_change_in_revision_order,
    prune_removes_expired_entries_with_events
);

pub(crate) fn entry(spiffe_id: &str, parent_id: &str, sels: &[&str]) -> RegistrationEntry {
    RegistrationEntry::new(
        SpiffeId::new(spiffe_id).unwrap(),
        SpiffeId::new(parent_id).unwrap(),
        sels.iter().map(|s| s.parse().unwrap()).collect(),
    )
}

const AGENT: &str = "spiffe://td/spire/agent/a";
const AGENT_B: &str = "spiffe://td/spire/agent/b";

fn sels(list: &[&str]) -> Vec<Selector> {
    list.iter().map(|s| s.parse().unwrap()).collect()
}

fn ids(entries: &[RegistrationEntry]) -> Vec<&str> {
    let mut v: Vec<&str> = entries
        .iter()
        .map(|e| e.spiffe_id.fixed().expect("a fixed ID").path())
        .collect();
    v.sort();
    v
}

async fn all(ds: &Datastore, filter: &EntryFilter) -> Vec<RegistrationEntry> {
    ds.list_entries(filter, 1000, None).await.unwrap().0
}

async fn create_fetch_round_trips_every_field(ds: Datastore) {
    let before = unix_now();
    let mut e = entry(
        "spiffe://td/web",
        AGENT,
        &["unix:uid:1000", "k8s:ns:web", "unix:uid:1000"],
    );
    e.x509_svid_ttl = Some(Duration::from_secs(3600));
    e.jwt_svid_ttl = Some(Duration::from_secs(300));
    e.dns_names = vec!["web.example.org".into(), "web".into()];
    e.federates_with = vec![TrustDomain::new("other.org").unwrap()];
    e.admin = true;
    e.downstream = true;
    e.hint = "web".into();
    e.expires_at = Some(1_900_000_000);
    e.revision = 42; // ignored: the datastore assigns it
    e.created_at = 7; // ignored

    let created = ds.create_entries(vec![e.clone()]).await.unwrap().remove(0);
    assert!(Uuid::parse_str(&created.id).is_ok(), "{}", created.id);
    assert!(created.created_at >= before);
    assert_eq!(created.revision, 1);
    // Canonical selectors: sorted, de-duplicated.
    assert_eq!(created.selectors, sels(&["k8s:ns:web", "unix:uid:1000"]));
    let expected = RegistrationEntry {
        id: created.id.clone(),
        selectors: created.selectors.clone(),
        revision: created.revision,
        created_at: created.created_at,
        ..e
    };
    assert_eq!(created, expected);
    assert_eq!(ds.fetch_entry(&created.id).await.unwrap(), Some(expected));
    assert_eq!(ds.fetch_entry("nope").await.unwrap(), None);
}

async fn caller_chosen_id_is_kept_and_must_be_unique(ds: Datastore) {
    let mut e = entry("spiffe://td/a", AGENT, &["unix:uid:1"]);
    e.id = "my-id".into();
    assert_eq!(
        ds.create_entries(vec![e.clone()]).await.unwrap()[0].id,
        "my-id"
    );
    let mut other = entry("spiffe://td/b", AGENT, &["unix:uid:2"]);
    other.id = "my-id".into();
    let err = ds.create_entries(vec![other]).await.unwrap_err();
    assert!(
        matches!(&err, DatastoreError::AlreadyExists(m) if m.contains("my-id")),
        "{err}"
    );
}

async fn duplicate_is_refused_whatever_the_selector_order(ds: Datastore) {
    ds.create_entries(vec![entry(
        "spiffe://td/web",
        AGENT,
        &["k8s:ns:a", "k8s:sa:b"],
    )])
    .await
    .unwrap();
    let dup = entry("spiffe://td/web", AGENT, &["k8s:sa:b", "k8s:ns:a"]);
    let err = ds.create_entries(vec![dup]).await.unwrap_err();
    assert!(
        matches!(&err, DatastoreError::AlreadyExists(m) if m.contains("spiffe://td/web")),
        "{err}"
    );
    // Same ID and selectors under another parent, or other selectors, are different entries.
    ds.create_entries(vec![
        entry("spiffe://td/web", AGENT_B, &["k8s:ns:a", "k8s:sa:b"]),
        entry("spiffe://td/web", AGENT, &["k8s:ns:a"]),
    ])
    .await
    .unwrap();
    assert_eq!(ds.count_entries(&EntryFilter::default()).await.unwrap(), 3);
}

async fn a_bad_batch_member_leaves_nothing_behind(ds: Datastore) {
    let existing = entry("spiffe://td/old", AGENT, &["unix:uid:9"]);
    ds.create_entries(vec![existing.clone()]).await.unwrap();
    let revision = ds.latest_entry_revision().await.unwrap();

    let batches = [
        // duplicate of a stored entry, last in the batch
        vec![
            entry("spiffe://td/a", AGENT, &["unix:uid:1"]),
            existing.clone(),
        ],
        // duplicate within the batch
        vec![
            entry("spiffe://td/b", AGENT, &["unix:uid:1", "unix:gid:1"]),
            entry("spiffe://td/b", AGENT, &["unix:gid:1", "unix:uid:1"]),
        ],
        // invalid member
        vec![
            entry("spiffe://td/c", AGENT, &["unix:uid:1"]),
            entry("spiffe://td/d", AGENT, &[]),
        ],
    ];
    for batch in batches {
        assert!(ds.create_entries(batch).await.is_err());
        assert_eq!(ds.count_entries(&EntryFilter::default()).await.unwrap(), 1);
        assert_eq!(
            ds.latest_entry_revision().await.unwrap(),
            revision,
            "no events"
        );
    }
    let stray = scalar(&ds, "SELECT COUNT(*) FROM entry_selectors").await;
    assert_eq!(stray, 1, "only the stored entry's selector");
}

/// web: {k8s:ns:web, k8s:sa:web}, db: {k8s:ns:db}, uid: {unix:uid:1} (parent B, hint "h").
async fn fixture(ds: &Datastore) {
    let mut uid = entry("spiffe://td/uid", AGENT_B, &["unix:uid:1"]);
    uid.hint = "h".into();
    ds.create_entries(vec![
        entry("spiffe://td/web", AGENT, &["k8s:ns:web", "k8s:sa:web"]),
        entry("spiffe://td/db", AGENT, &["k8s:ns:db"]),
        uid,
    ])
    .await
    .unwrap();
}

async fn template_entries_round_trip_and_filter_by_template_text(ds: Datastore) {
    let text = "spiffe://td/ns/{k8s:ns}/sa/{k8s:sa}";
    let template: IdTemplate = text.parse().unwrap();
    let e = RegistrationEntry::new(
        template.clone(),
        SpiffeId::new(AGENT).unwrap(),
        sels(&["k8s:ns"]),
    );
    let created = ds.create_entries(vec![e]).await.unwrap().remove(0);
    let fetched = ds.fetch_entry(&created.id).await.unwrap().unwrap();
    assert_eq!(fetched.spiffe_id.template(), Some(&template));
    assert_eq!(fetched, created);
    assert_eq!(fetched.spiffe_id.to_string(), text);
    let by_text = EntryFilter {
        spiffe_id: Some(text.into()),
        ..EntryFilter::default()
    };
    assert_eq!(all(&ds, &by_text).await.len(), 1);
    // A fixed entry is still a fixed entry after the migration.
    let fixed = ds
        .create_entries(vec![entry("spiffe://td/web", AGENT, &["unix:uid:1"])])
        .await
        .unwrap()
        .remove(0);
    let fetched = ds.fetch_entry(&fixed.id).await.unwrap().unwrap();
    assert_eq!(fetched.spiffe_id.template(), None);
}

async fn field_filters(ds: Datastore) {
    fixture(&ds).await;
    let by_id = EntryFilter {
        spiffe_id: Some("spiffe://td/web".into()),
        ..EntryFilter::default()
    };
    assert_eq!(ids(&all(&ds, &by_id).await), ["/web"]);
    let by_prefix = |p: &str| EntryFilter {
        spiffe_id_prefix: Some(p.into()),
        ..EntryFilter::default()
    };
    assert_eq!(ids(&all(&ds, &by_prefix("spiffe://td/w")).await), ["/web"]);
    assert_eq!(all(&ds, &by_prefix("spiffe://td/")).await.len(), 3);
    assert!(all(&ds, &by_prefix("spiffe://td/x")).await.is_empty());
    assert_eq!(
        ds.count_entries(&by_prefix("spiffe://td/d")).await.unwrap(),
        1
    );
    let by_parent = EntryFilter {
        parent_id: Some(SpiffeId::new(AGENT).unwrap()),
        ..EntryFilter::default()
    };
    assert_eq!(ids(&all(&ds, &by_parent).await), ["/db", "/web"]);
    assert_eq!(ds.count_entries(&by_parent).await.unwrap(), 2);
    let by_hint = EntryFilter {
        hint: Some("h".into()),
        ..EntryFilter::default()
    };
    assert_eq!(ids(&all(&ds, &by_hint).await), ["/uid"]);
    let both = EntryFilter {
        hint: Some("h".into()),
        ..by_parent
    };
    assert!(all(&ds, &both).await.is_empty());
    assert_eq!(ds.count_entries(&both).await.unwrap(), 0);

    let by_parents = ds
        .list_entries_by_parents(&[
            SpiffeId::new(AGENT_B).unwrap(),
            SpiffeId::new(AGENT).unwrap(),
        ])
        .await
        .unwrap();
    assert_eq!(ids(&by_parents), ["/db", "/uid", "/web"]);
}

/// `federates_with` in each match mode (names with `_`, a LIKE wildcard, and names that are
/// prefixes of others), and `downstream`.
async fn federates_with_and_downstream_filters(ds: Datastore) {
    let with = |id: &str, tds: &[&str]| {
        let mut e = entry(id, AGENT, &["unix:uid:1"]);
        e.federates_with = tds.iter().map(|t| TrustDomain::new(t).unwrap()).collect();
        e
    };
    let mut down = with("spiffe://td/down", &[]);
    down.downstream = true;
    ds.create_entries(vec![
        with("spiffe://td/none", &[]),
        with("spiffe://td/a", &["a.org"]),
        with("spiffe://td/ab", &["a.org", "b.org"]),
        with("spiffe://td/underscore", &["a_b.org"]),
        with("spiffe://td/longer", &["a.org.uk"]),
        down,
    ])
    .await
    .unwrap();
    let cases: &[(&[&str], SelectorMatch, &[&str])] = &[
        (&["a.org"], SelectorMatch::Superset, &["/a", "/ab"]),
        (&["a.org"], SelectorMatch::Exact, &["/a"]),
        (&["a.org"], SelectorMatch::Subset, &["/a"]),
        (&["a.org", "b.org"], SelectorMatch::Subset, &["/a", "/ab"]),
        (&["a.org", "b.org"], SelectorMatch::Exact, &["/ab"]),
        (
            &["b.org", "a.org.uk"],
            SelectorMatch::Any,
            &["/ab", "/longer"],
        ),
        (&["a.b.org"], SelectorMatch::Any, &[]),
        (&["axb.org"], SelectorMatch::Any, &[]),
        (&["a_b.org"], SelectorMatch::Exact, &["/underscore"]),
    ];
    for (tds, mode, want) in cases {
        let filter = EntryFilter {
            federates_with: Some((
                tds.iter().map(|t| TrustDomain::new(t).unwrap()).collect(),
                *mode,
            )),
            ..EntryFilter::default()
        };
        assert_eq!(ids(&all(&ds, &filter).await), *want, "{tds:?} {mode:?}");
        assert_eq!(ds.count_entries(&filter).await.unwrap(), want.len() as u64);
    }
    let downstream = |d| EntryFilter {
        downstream: Some(d),
        ..EntryFilter::default()
    };
    assert_eq!(ids(&all(&ds, &downstream(true)).await), ["/down"]);
    assert_eq!(ds.count_entries(&downstream(false)).await.unwrap(), 5);
}

async fn selector_match_modes(ds: Datastore) {
    fixture(&ds).await;
    let cases: &[(&[&str], SelectorMatch, &[&str])] = &[
        (
            &["k8s:sa:web", "k8s:ns:web"],
            SelectorMatch::Exact,
            &["/web"],
        ),
        (&["k8s:ns:web"], SelectorMatch::Exact, &[]),
        (
            &["k8s:ns:web", "k8s:sa:web", "k8s:ns:db"],
            SelectorMatch::Exact,
            &[],
        ),
        (
            &["k8s:ns:web", "k8s:sa:web", "k8s:ns:db"],
            SelectorMatch::Subset,
            &["/db", "/web"],
        ),
        (
            &["k8s:ns:web", "unix:uid:1"],
            SelectorMatch::Subset,
            &["/uid"],
        ),
        (&["k8s:ns:web"], SelectorMatch::Subset, &[]),
        (&["k8s:ns:web"], SelectorMatch::Superset, &["/web"]),
        (
            &["k8s:ns:web", "k8s:sa:web"],
            SelectorMatch::Superset,
            &["/web"],
        ),
        (&["k8s:ns:web", "k8s:ns:db"], SelectorMatch::Superset, &[]),
        (
            &["k8s:ns:web", "k8s:ns:db", "x:y"],
            SelectorMatch::Any,
            &["/db", "/web"],
        ),
        (&["x:y"], SelectorMatch::Any, &[]),
    ];
    for (given, mode, want) in cases {
        let filter = EntryFilter {
            selectors: Some((sels(given), *mode)),
            ..EntryFilter::default()
        };
        assert_eq!(ids(&all(&ds, &filter).await), *want, "{given:?} {mode:?}");
        assert_eq!(ds.count_entries(&filter).await.unwrap(), want.len() as u64);
    }
    let empty = EntryFilter {
        selectors: Some((Vec::new(), SelectorMatch::Any)),
        ..EntryFilter::default()
    };
    assert!(matches!(
        ds.count_entries(&empty).await,
        Err(DatastoreError::InvalidArgument(_))
    ));
}

/// SQLite only: the plan check reads SQLite's `EXPLAIN QUERY PLAN`.
#[tokio::test]
async fn selector_matches_start_from_the_selector_index() {
    let (_dir, ds) = super::super::tests::store().await;
    let super::super::Pool::Sqlite(pool) = &ds.pool else {
        unreachable!()
    };
    for mode in [
        SelectorMatch::Exact,
        SelectorMatch::Subset,
        SelectorMatch::Superset,
        SelectorMatch::Any,
    ] {
        let mut sql =
            Sql::new("EXPLAIN QUERY PLAN SELECT e.id FROM registered_entries e WHERE 1 = 1");
        selectors::push_match(
            &mut sql,
            ENTRY_SELECTORS,
            "e.id",
            &sels(&["a:b", "c:d"]),
            mode,
        );
        let plan: Vec<String> = sql
            .query()
            .fetch_all(pool)
            .await
            .unwrap()
            .iter()
            .map(|r| r.get::<String, _>("detail"))
            .collect();
        let plan = plan.join("\n");
        assert!(
            plan.contains("USING COVERING INDEX entry_selectors_type_value"),
            "{mode:?}:\n{plan}"
        );
        // No full scan of a table: only of the literal VALUES list.
        let scans = plan
            .lines()
            .filter(|l| l.starts_with("SCAN") && !l.contains("VALUES"));
        assert_eq!(scans.count(), 0, "{mode:?}:\n{plan}");
    }
}

async fn pagination_covers_every_entry_once_in_id_order(ds: Datastore) {
    let batch: Vec<_> = (0..23)
        .map(|i| entry(&format!("spiffe://td/w{i}"), AGENT, &["unix:uid:1"]))
        .collect();
    ds.create_entries(batch).await.unwrap();
    let mut seen = Vec::new();
    let mut token: Option<String> = None;
    let mut pages = 0;
    loop {
        let (page, next) = ds
            .list_entries(&EntryFilter::default(), 5, token.as_deref())
            .await
            .unwrap();
        assert!(page.len() <= 5);
        seen.extend(page.into_iter().map(|e| e.id));
        pages += 1;
        match next {
            Some(t) => token = Some(t),
            None => break,
        }
    }
    assert_eq!(pages, 5);
    assert_eq!(seen.len(), 23);
    let mut sorted = seen.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(seen, sorted, "in id order, no repeats");
    assert!(matches!(
        ds.list_entries(&EntryFilter::default(), 0, None).await,
        Err(DatastoreError::InvalidArgument(_))
    ));
}

async fn update_replaces_fields_and_bumps_revision(ds: Datastore) {
    let created = ds
        .create_entries(vec![entry("spiffe://td/web", AGENT, &["unix:uid:1"])])
        .await
        .unwrap()
        .remove(0);
    let mut changed = created.clone();
    changed.spiffe_id = SpiffeId::new("spiffe://td/web2").unwrap().into();
    changed.selectors = sels(&["unix:uid:2", "unix:gid:2"]);
    changed.dns_names = vec!["a.example".into()];
    changed.x509_svid_ttl = Some(Duration::from_secs(60));
    changed.expires_at = Some(5);
    changed.created_at = 0; // ignored
    let updated = ds
        .update_entries(vec![changed.clone()])
        .await
        .unwrap()
        .remove(0);
    assert!(updated.revision > created.revision);
    assert_eq!(updated.created_at, created.created_at);
    assert_eq!(updated.selectors, sels(&["unix:gid:2", "unix:uid:2"]));
    assert_eq!(
        ds.fetch_entry(&created.id).await.unwrap(),
        Some(updated.clone())
    );
    // The old selectors no longer match.
    let old = EntryFilter {
        selectors: Some((sels(&["unix:uid:1"]), SelectorMatch::Any)),
        ..EntryFilter::default()
    };
    assert_eq!(ds.count_entries(&old).await.unwrap(), 0);
}

async fn failed_updates_change_nothing(ds: Datastore) {
    let created = ds
        .create_entries(vec![
            entry("spiffe://td/a", AGENT, &["unix:uid:1"]),
            entry("spiffe://td/b", AGENT, &["unix:uid:2"]),
        ])
        .await
        .unwrap();
    let revision = ds.latest_entry_revision().await.unwrap();

    let mut first = created[0].clone();
    first.hint = "changed".into();
    let mut unknown = created[1].clone();
    unknown.id = "unknown".into();
    let err = ds
        .update_entries(vec![first.clone(), unknown])
        .await
        .unwrap_err();
    assert!(matches!(err, DatastoreError::NotFound(_)), "{err}");

    // b becomes a copy of a: refused by the unique index.
    let mut collide = created[1].clone();
    collide.spiffe_id = created[0].spiffe_id.clone();
    collide.selectors = created[0].selectors.clone();
    let err = ds.update_entries(vec![first, collide]).await.unwrap_err();
    assert!(
        matches!(&err, DatastoreError::AlreadyExists(m) if m.contains("spiffe://td/a")),
        "{err}"
    );

    for e in &created {
        assert_eq!(ds.fetch_entry(&e.id).await.unwrap().as_ref(), Some(e));
    }
    assert_eq!(ds.latest_entry_revision().await.unwrap(), revision);
}

async fn delete_returns_entries_and_unknown_id_deletes_nothing(ds: Datastore) {
    let created = ds
        .create_entries(vec![
            entry("spiffe://td/a", AGENT, &["unix:uid:1"]),
            entry("spiffe://td/b", AGENT, &["unix:uid:2"]),
        ])
        .await
        .unwrap();
    let err = ds
        .delete_entries(&[created[0].id.clone(), "unknown".into()])
        .await
        .unwrap_err();
    assert!(matches!(err, DatastoreError::NotFound(_)), "{err}");
    assert_eq!(ds.count_entries(&EntryFilter::default()).await.unwrap(), 2);

    let deleted = ds
        .delete_entries(&[created[0].id.clone(), created[0].id.clone()])
        .await
        .unwrap();
    assert_eq!(deleted, vec![created[0].clone()]);
    assert_eq!(ds.fetch_entry(&created[0].id).await.unwrap(), None);
    assert_eq!(
        ds.fetch_entry(&created[1].id).await.unwrap().as_ref(),
        Some(&created[1])
    );
    let selectors = scalar(&ds, "SELECT COUNT(*) FROM entry_selectors").await;
    assert_eq!(selectors, 1, "selectors deleted with their entry");
}

async fn events_follow_every_change_in_revision_order(ds: Datastore) {
    assert_eq!(ds.latest_entry_revision().await.unwrap(), 0);
    let created = ds
        .create_entries(vec![
            entry("spiffe://td/a", AGENT, &["unix:uid:1"]),
            entry("spiffe://td/b", AGENT, &["unix:uid:2"]),
        ])
        .await
        .unwrap();
    let (a, b) = (&created[0], &created[1]);
    let mut moved = a.clone();
    moved.parent_id = SpiffeId::new(AGENT_B).unwrap();
    let moved = ds.update_entries(vec![moved]).await.unwrap().remove(0);
    ds.delete_entries(std::slice::from_ref(&b.id))
        .await
        .unwrap();

    let events = ds.list_entry_events(0, 100).await.unwrap();
    let summary: Vec<(&str, &str, EntryEventKind)> = events
        .iter()
        .map(|e| (e.entry_id.as_str(), e.parent_id.path(), e.kind))
        .collect();
    use EntryEventKind::{Delete, Upsert};
    assert_eq!(
        summary,
        [
            (a.id.as_str(), "/spire/agent/a", Upsert),
            (b.id.as_str(), "/spire/agent/a", Upsert),
            (a.id.as_str(), "/spire/agent/a", Delete),
            (a.id.as_str(), "/spire/agent/b", Upsert),
            (b.id.as_str(), "/spire/agent/a", Delete),
        ]
    );
    assert!(events.windows(2).all(|w| w[0].revision < w[1].revision));
    assert_eq!(a.revision, events[0].revision);
    assert_eq!(b.revision, events[1].revision);
    assert_eq!(
        moved.revision, events[3].revision,
        "an entry's revision is its latest event"
    );
    assert_eq!(
        ds.latest_entry_revision().await.unwrap(),
        events[4].revision
    );

    let after = ds.list_entry_events(events[2].revision, 1).await.unwrap();
    assert_eq!(after, vec![events[3].clone()]);

    // Pruning keeps the latest event, so the latest revision never goes back.
    assert_eq!(ds.prune_entry_events(i64::MAX).await.unwrap(), 4);
    assert_eq!(
        ds.list_entry_events(0, 100).await.unwrap(),
        vec![events[4].clone()]
    );
    assert_eq!(
        ds.latest_entry_revision().await.unwrap(),
        events[4].revision
    );
    // Revisions are never reused.
    let c = ds
        .create_entries(vec![entry("spiffe://td/c", AGENT, &["unix:uid:3"])])
        .await
        .unwrap();
    assert!(c[0].revision > events[4].revision);
}

async fn prune_removes_expired_entries_with_events(ds: Datastore) {
    let mut batch = Vec::new();
    for i in 0..(PRUNE_BATCH + 3) {
        let mut e = entry(&format!("spiffe://td/x{i}"), AGENT, &["unix:uid:1"]);
        e.expires_at = Some(100);
        batch.push(e);
    }
    let mut later = entry("spiffe://td/later", AGENT, &["unix:uid:1"]);
    later.expires_at = Some(200);
    batch.push(later);
    batch.push(entry("spiffe://td/never", AGENT, &["unix:uid:1"]));
    ds.create_entries(batch).await.unwrap();
    let revision = ds.latest_entry_revision().await.unwrap();

    assert_eq!(
        ds.prune_entries(100).await.unwrap(),
        0,
        "expires_at < now only"
    );
    assert_eq!(ds.prune_entries(101).await.unwrap(), PRUNE_BATCH as u64 + 3);
    assert_eq!(
        ids(&all(&ds, &EntryFilter::default()).await),
        ["/later", "/never"]
    );
    let events = ds.list_entry_events(revision, 1000).await.unwrap();
    assert_eq!(events.len(), PRUNE_BATCH as usize + 3);
    assert!(events.iter().all(|e| e.kind == EntryEventKind::Delete));
}

async fn event_pruning_works_through_more_than_one_batch(ds: Datastore) {
    let n = PRUNE_BATCH + 10;
    let batch = (0..n)
        .map(|i| entry(&format!("spiffe://td/e{i}"), AGENT, &["unix:uid:1"]))
        .collect();
    ds.create_entries(batch).await.unwrap();
    let latest = ds.latest_entry_revision().await.unwrap();
    // All but the latest event go, in batches.
    assert_eq!(ds.prune_entry_events(i64::MAX).await.unwrap(), n as u64 - 1);
    let left = ds.list_entry_events(0, 10).await.unwrap();
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].revision, latest);
}
