//! When to prepare, activate and prune authorities: SPIRE's rule, as pure functions of `now`
//! (Unix seconds), so the decisions are tested with a table instead of a clock.
//!
//! Each kind of authority (X.509 CA, JWT key) has one **active** slot, at most one **prepared**
//! (next) slot and any number of **old** ones kept, public part only, until they expire. With
//! `lifetime = not_after - issued_at`:
//! - prepare the next one when the active's remaining life is ≤ min(lifetime/2, 30 d);
//! - activate it when the active's remaining life is ≤ min(lifetime/6, 7 d);
//! - prune any authority whose `not_after` has passed;
//! - with no active authority, create one and activate it at once.

use serde::{Deserialize, Serialize};

const DAY: i64 = 24 * 60 * 60;
const MAX_PREPARE_AHEAD: i64 = 30 * DAY;
const MAX_ACTIVATE_AHEAD: i64 = 7 * DAY;

/// Where an authority is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuthorityStatus {
    /// Published in the bundle, not signing yet.
    Prepared,
    /// Signing.
    Active,
    /// Replaced; published until it expires so SVIDs it signed still verify.
    Old,
}

/// What the rotation rule needs to know about one authority.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Slot {
    pub status: AuthorityStatus,
    /// Unix seconds when the authority was created (its certificate's NotBefore is backdated).
    pub issued_at: i64,
    /// Unix seconds after which it neither signs nor validates.
    pub not_after: i64,
}

/// One step of a rotation. Apply prunes first (their indices refer to the input slice), then
/// `Prepare`, then `Activate`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Drop the expired authority at this index.
    Prune(usize),
    /// Create a new authority in the prepared slot.
    Prepare,
    /// Make the prepared authority active; the active one becomes old.
    Activate,
}

/// When the next authority should be prepared, given the active one.
pub fn prepare_at(active: &Slot) -> i64 {
    let lifetime = (active.not_after - active.issued_at).max(0);
    active.not_after - (lifetime / 2).min(MAX_PREPARE_AHEAD)
}

/// When the prepared authority should replace the active one.
pub fn activate_at(active: &Slot) -> i64 {
    let lifetime = (active.not_after - active.issued_at).max(0);
    active.not_after - (lifetime / 6).min(MAX_ACTIVATE_AHEAD)
}

/// The actions due at `now`.
pub fn decide(now: i64, slots: &[Slot]) -> Vec<Action> {
    let mut actions: Vec<Action> = slots
        .iter()
        .enumerate()
        .filter(|(_, s)| s.not_after <= now)
        .map(|(i, _)| Action::Prune(i))
        .collect();
    let live = || slots.iter().filter(|s| s.not_after > now);
    let active = live().find(|s| s.status == AuthorityStatus::Active);
    let has_prepared = live().any(|s| s.status == AuthorityStatus::Prepared);

    let (prepare, activate) = match active {
        None => (!has_prepared, true),
        Some(a) if now >= activate_at(a) => (!has_prepared, true),
        Some(a) if now >= prepare_at(a) => (!has_prepared, false),
        Some(_) => (false, false),
    };
    if prepare {
        actions.push(Action::Prepare);
    }
    if activate {
        actions.push(Action::Activate);
    }
    actions
}

/// The next instant (Unix seconds, never before `now`) at which [`decide`] could return
/// something: an expiry, or the active authority's prepare or activate threshold.
pub fn next_check_at(now: i64, slots: &[Slot]) -> i64 {
    let has_prepared = slots.iter().any(|s| s.status == AuthorityStatus::Prepared);
    let mut events: Vec<i64> = slots.iter().map(|s| s.not_after).collect();
    for active in slots.iter().filter(|s| s.status == AuthorityStatus::Active) {
        if !has_prepared {
            events.push(prepare_at(active));
        }
        events.push(activate_at(active));
    }
    events.into_iter().min().map_or(now, |t| t.max(now))
}

#[cfg(test)]
mod tests {
    use super::AuthorityStatus::{Active, Old, Prepared};
    use super::*;

    fn slot(status: AuthorityStatus, issued_at: i64, ttl: i64) -> Slot {
        Slot {
            status,
            issued_at,
            not_after: issued_at + ttl,
        }
    }

    #[test]
    fn thresholds_follow_spire() {
        // 60 s: prepare with 30 s left, activate with 10 s left.
        let a = slot(Active, 1000, 60);
        assert_eq!(prepare_at(&a), 1030);
        assert_eq!(activate_at(&a), 1050);
        // 24 h: prepare with 12 h left, activate with 4 h left.
        let a = slot(Active, 0, DAY);
        assert_eq!(prepare_at(&a), DAY / 2);
        assert_eq!(activate_at(&a), DAY - DAY / 6);
        // 1 year: the caps apply (30 d and 7 d ahead of expiry).
        let a = slot(Active, 0, 365 * DAY);
        assert_eq!(prepare_at(&a), 335 * DAY);
        assert_eq!(activate_at(&a), 358 * DAY);
    }

    #[test]
    fn decision_table_60s_ttl() {
        let active = slot(Active, 1000, 60);
        let prepared = slot(Prepared, 1030, 60);
        let old = slot(Old, 950, 60); // expires at 1010
        let cases: &[(i64, &[Slot], &[Action])] = &[
            (0, &[], &[Action::Prepare, Action::Activate]),
            (1000, &[active], &[]),
            (1029, &[active], &[]),
            (1030, &[active], &[Action::Prepare]),
            (1031, &[active, prepared], &[]),
            (1049, &[active, prepared], &[]),
            (1050, &[active, prepared], &[Action::Activate]),
            // Activation due but nothing prepared (server was down): prepare and activate.
            (1055, &[active], &[Action::Prepare, Action::Activate]),
            (1005, &[old, active], &[]),
            (1010, &[old, active], &[Action::Prune(0)]),
            // Everything expired: prune and start over.
            (
                2000,
                &[active],
                &[Action::Prune(0), Action::Prepare, Action::Activate],
            ),
            // An unexpired prepared authority with no active one is activated.
            (
                1070,
                &[active, prepared],
                &[Action::Prune(0), Action::Activate],
            ),
        ];
        for (now, slots, want) in cases {
            assert_eq!(decide(*now, slots), *want, "now={now} slots={slots:?}");
        }
    }

    #[test]
    fn decision_table_long_ttl() {
        let active = slot(Active, 0, 365 * DAY);
        assert_eq!(decide(335 * DAY - 1, &[active]), vec![]);
        assert_eq!(decide(335 * DAY, &[active]), vec![Action::Prepare]);
        let prepared = slot(Prepared, 335 * DAY, 365 * DAY);
        assert_eq!(decide(358 * DAY - 1, &[active, prepared]), vec![]);
        assert_eq!(
            decide(358 * DAY, &[active, prepared]),
            vec![Action::Activate]
        );
    }

    #[test]
    fn next_check_is_the_earliest_event() {
        let active = slot(Active, 1000, 60);
        assert_eq!(next_check_at(1000, &[active]), 1030);
        let prepared = slot(Prepared, 1030, 60);
        assert_eq!(next_check_at(1030, &[active, prepared]), 1050);
        let old = slot(Old, 1000, 60);
        let new_active = slot(Active, 1030, 60);
        // Old expires at 1060 before the new active's prepare threshold (1060) or later events.
        assert_eq!(next_check_at(1050, &[old, new_active]), 1060);
        // Overdue events are due now, never in the past.
        assert_eq!(next_check_at(1100, &[active]), 1100);
        assert_eq!(next_check_at(5, &[]), 5);
    }

    #[test]
    fn walking_the_clock_keeps_one_active_and_old_until_expiry() {
        // Simulate applying decisions second by second over several lifetimes.
        let ttl = 60;
        let mut slots: Vec<Slot> = Vec::new();
        let mut activations = 0;
        for now in 0..400 {
            let actions = decide(now, &slots);
            let pruned: Vec<usize> = actions
                .iter()
                .filter_map(|a| {
                    if let Action::Prune(i) = a {
                        Some(*i)
                    } else {
                        None
                    }
                })
                .collect();
            slots = slots
                .into_iter()
                .enumerate()
                .filter(|(i, _)| !pruned.contains(i))
                .map(|(_, s)| s)
                .collect();
            for a in &actions {
                match a {
                    Action::Prepare => slots.push(slot(Prepared, now, ttl)),
                    Action::Activate => {
                        activations += 1;
                        for s in &mut slots {
                            s.status = match s.status {
                                Active => Old,
                                Prepared => Active,
                                Old => Old,
                            };
                        }
                    }
                    Action::Prune(_) => {}
                }
            }
            assert_eq!(
                slots.iter().filter(|s| s.status == Active).count(),
                1,
                "now={now}"
            );
            assert!(
                slots.iter().all(|s| s.not_after > now),
                "expired kept at {now}"
            );
            assert!(
                next_check_at(now, &slots) > now,
                "no event due right after applying"
            );
        }
        // First activation at 0, then one every 30 s: each authority is prepared 30 s into its
        // life and becomes active 20 s later, when its predecessor has 10 s left.
        assert!(activations >= 10, "{activations}");
    }
}
