//! The pods of one cluster indexed by UID and by node, changed only by the watch's events, and
//! each change's removals: the pods a node no longer runs (deleted, terminated, bound
//! elsewhere), which that node's agent must stop serving.

use std::collections::{HashMap, HashSet};

use super::facts::{PodFacts, PodPhase};

/// A pod that left a node: the agent of `node` drops what it minted for `uid`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GonePod {
    pub node: String,
    pub uid: String,
}

/// Pods by UID, and the UIDs bound to each node.
#[derive(Debug, Default)]
pub(super) struct Store {
    by_uid: HashMap<String, PodFacts>,
    by_node: HashMap<String, HashSet<String>>,
}

impl Store {
    pub(super) fn len(&self) -> usize {
        self.by_uid.len()
    }

    pub(super) fn pod(&self, uid: &str) -> Option<&PodFacts> {
        self.by_uid.get(uid)
    }

    /// The pods bound to `node`.
    pub(super) fn pods_on<'a>(&'a self, node: &str) -> impl Iterator<Item = &'a PodFacts> + 'a {
        self.by_node
            .get(node)
            .into_iter()
            .flatten()
            .filter_map(|uid| self.by_uid.get(uid))
    }

    /// Adds or replaces a pod. Gone: the node it was bound to before, if it changed, or its
    /// node, if it has just terminated.
    pub(super) fn upsert(&mut self, facts: PodFacts) -> Option<GonePod> {
        let uid = facts.uid.clone();
        let gone = match self.by_uid.get(&uid) {
            Some(old) if old.node != facts.node => Some(GonePod {
                node: old.node.clone(),
                uid: uid.clone(),
            }),
            Some(old) if old.phase == PodPhase::Active && facts.phase == PodPhase::Terminated => {
                Some(GonePod {
                    node: facts.node.clone(),
                    uid: uid.clone(),
                })
            }
            None if facts.phase == PodPhase::Terminated => Some(GonePod {
                node: facts.node.clone(),
                uid: uid.clone(),
            }),
            _ => None,
        };
        if let Some(old) = self.by_uid.get(&uid)
            && old.node != facts.node
        {
            self.unindex(&old.node.clone(), &uid);
        }
        self.by_node
            .entry(facts.node.clone())
            .or_default()
            .insert(uid.clone());
        self.by_uid.insert(uid, facts);
        gone
    }

    /// Removes a pod (deleted, or no longer bound to a node); gone from its node if it was
    /// kept.
    pub(super) fn remove(&mut self, uid: &str) -> Option<GonePod> {
        let old = self.by_uid.remove(uid)?;
        self.unindex(&old.node, uid);
        Some(GonePod {
            node: old.node,
            uid: uid.to_owned(),
        })
    }

    /// Replaces everything with a fresh list: gone is every pod kept before that the list
    /// lacks or binds to another node, or that terminated meanwhile.
    pub(super) fn replace(&mut self, listed: HashMap<String, PodFacts>) -> Vec<GonePod> {
        let mut gone: Vec<GonePod> = self
            .by_uid
            .values()
            .filter_map(|old| {
                let moved_or_ended = match listed.get(&old.uid) {
                    None => true,
                    Some(new) => {
                        new.node != old.node
                            || (old.phase == PodPhase::Active && new.phase == PodPhase::Terminated)
                    }
                };
                moved_or_ended.then(|| GonePod {
                    node: old.node.clone(),
                    uid: old.uid.clone(),
                })
            })
            .collect();
        gone.sort_by(|a, b| (&a.node, &a.uid).cmp(&(&b.node, &b.uid)));
        let mut by_node: HashMap<String, HashSet<String>> = HashMap::new();
        for (uid, facts) in &listed {
            by_node
                .entry(facts.node.clone())
                .or_default()
                .insert(uid.clone());
        }
        self.by_uid = listed;
        self.by_node = by_node;
        gone
    }

    fn unindex(&mut self, node: &str, uid: &str) {
        if let Some(uids) = self.by_node.get_mut(node) {
            uids.remove(uid);
            if uids.is_empty() {
                self.by_node.remove(node);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::facts::tests::facts;
    use super::*;

    fn gone(node: &str, uid: &str) -> GonePod {
        GonePod {
            node: node.into(),
            uid: uid.into(),
        }
    }

    fn names_on(store: &Store, node: &str) -> Vec<String> {
        let mut v: Vec<String> = store.pods_on(node).map(|p| p.name.clone()).collect();
        v.sort();
        v
    }

    #[test]
    fn events_keep_both_indexes_and_report_removals() {
        let mut s = Store::default();
        assert_eq!(s.upsert(facts("ns", "a", "u1", "node-a")), None);
        assert_eq!(s.upsert(facts("ns", "b", "u2", "node-a")), None);
        assert_eq!(s.upsert(facts("ns", "c", "u3", "node-b")), None);
        assert_eq!(names_on(&s, "node-a"), ["a", "b"]);
        assert_eq!(s.pod("u3").unwrap().name, "c");

        // A label change: nothing gone.
        let mut relabeled = facts("ns", "a", "u1", "node-a");
        relabeled.labels.insert("x".into(), "y".into());
        assert_eq!(s.upsert(relabeled), None);
        // Bound elsewhere: gone from the old node, found on the new one.
        assert_eq!(
            s.upsert(facts("ns", "b", "u2", "node-b")),
            Some(gone("node-a", "u2"))
        );
        assert_eq!(names_on(&s, "node-a"), ["a"]);
        assert_eq!(names_on(&s, "node-b"), ["b", "c"]);
        // Terminated: gone, once.
        let mut ended = facts("ns", "c", "u3", "node-b");
        ended.phase = PodPhase::Terminated;
        assert_eq!(s.upsert(ended.clone()), Some(gone("node-b", "u3")));
        assert_eq!(s.upsert(ended), None);
        // Deleted: gone; deleting what is not kept reports nothing.
        assert_eq!(s.remove("u1"), Some(gone("node-a", "u1")));
        assert_eq!(s.remove("u1"), None);
        assert!(names_on(&s, "node-a").is_empty());
        assert!(!s.by_node.contains_key("node-a"), "no empty node sets left");
        assert_eq!(s.len(), 2);
    }

    #[test]
    fn a_relist_reports_what_went_away_while_unwatched() {
        let mut s = Store::default();
        s.upsert(facts("ns", "stays", "u1", "node-a"));
        s.upsert(facts("ns", "deleted", "u2", "node-a"));
        s.upsert(facts("ns", "moved", "u3", "node-a"));
        s.upsert(facts("ns", "ended", "u4", "node-b"));
        let mut ended = facts("ns", "ended", "u4", "node-b");
        ended.phase = PodPhase::Terminated;
        let listed = [
            facts("ns", "stays", "u1", "node-a"),
            facts("ns", "moved", "u3", "node-b"),
            ended,
            facts("ns", "new", "u5", "node-b"),
        ]
        .into_iter()
        .map(|f| (f.uid.clone(), f))
        .collect();
        assert_eq!(
            s.replace(listed),
            [
                gone("node-a", "u2"),
                gone("node-a", "u3"),
                gone("node-b", "u4")
            ]
        );
        assert_eq!(names_on(&s, "node-a"), ["stays"]);
        assert_eq!(names_on(&s, "node-b"), ["ended", "moved", "new"]);
        assert_eq!(s.pod("u2"), None);
    }
}
