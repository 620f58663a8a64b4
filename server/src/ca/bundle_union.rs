//! The trust domain's bundle when several server replicas share one datastore: the union of
//! every replica's live authorities (`union_bundle`, stored beside the journals by
//! `crate::ca_store`), and how one replica's own bundle and the other replicas' part of a
//! stored union are told apart and put back together (`peers_part`, `merge`), so an
//! SVID signed by any replica verifies everywhere.

use std::collections::HashSet;

use sigil_proto::{Bundle, JwtAuthority, TrustDomain};

use crate::ca::CaJournal;

/// The trust domain's bundle from every replica's journal: each self-signed X.509 CA and JWT
/// key not expired at `now` (revoked ones are no longer in any journal), with their taint,
/// plus the upstream roots each replica publishes. Duplicates appear once. The sequence is
/// left at 0 for the caller to set.
pub fn union_bundle(trust_domain: &TrustDomain, journals: &[CaJournal], now: i64) -> Bundle {
    let mut bundle = Bundle::new(trust_domain.clone());
    let mut seen_certs = HashSet::new();
    let mut seen_kids = HashSet::new();
    for journal in journals {
        for record in &journal.x509_authorities {
            // Intermediates travel in chains; they are never trust anchors.
            if record.upstream_signed || record.not_after <= now {
                continue;
            }
            if seen_certs.insert(record.cert_der.as_slice()) {
                bundle.x509_authorities.push(record.cert_der.clone());
                if record.tainted {
                    bundle
                        .tainted_x509_authorities
                        .push(record.cert_der.clone());
                }
            }
        }
        for root in &journal.upstream_roots {
            if seen_certs.insert(root.as_slice()) {
                bundle.x509_authorities.push(root.clone());
            }
        }
        for key in &journal.jwt_keys {
            if key.not_after <= now || !seen_kids.insert(key.kid.as_str()) {
                continue;
            }
            bundle.jwt_authorities.push(JwtAuthority {
                key_id: key.kid.clone(),
                public_key: key.public_key.clone(),
                expires_at: key.not_after,
                tainted: key.tainted,
            });
        }
    }
    bundle
}

/// What `union` holds beyond `own`: the other replicas' authorities. A tainted mark on one of
/// our own authorities is ours to decide, so only the others' marks are kept.
pub(crate) fn peers_part(union: &Bundle, own: &Bundle) -> Bundle {
    let own_certs: HashSet<&[u8]> = own.x509_authorities.iter().map(Vec::as_slice).collect();
    let own_kids: HashSet<&str> = own
        .jwt_authorities
        .iter()
        .map(|a| a.key_id.as_str())
        .collect();
    let mut peers = Bundle::new(own.trust_domain.clone());
    peers.x509_authorities = union
        .x509_authorities
        .iter()
        .filter(|c| !own_certs.contains(c.as_slice()))
        .cloned()
        .collect();
    peers.tainted_x509_authorities = union
        .tainted_x509_authorities
        .iter()
        .filter(|c| !own_certs.contains(c.as_slice()))
        .cloned()
        .collect();
    peers.jwt_authorities = union
        .jwt_authorities
        .iter()
        .filter(|a| !own_kids.contains(a.key_id.as_str()))
        .cloned()
        .collect();
    peers
}

/// `own` followed by what `peers` adds, under `sequence`. With no peers this is `own`.
pub(crate) fn merge(own: &Bundle, peers: &Bundle, sequence: u64) -> Bundle {
    let mut bundle = own.clone();
    bundle.sequence = sequence;
    let certs: HashSet<Vec<u8>> = own.x509_authorities.iter().cloned().collect();
    let kids: HashSet<String> = own
        .jwt_authorities
        .iter()
        .map(|a| a.key_id.clone())
        .collect();
    bundle.x509_authorities.extend(
        peers
            .x509_authorities
            .iter()
            .filter(|c| !certs.contains(*c))
            .cloned(),
    );
    bundle.tainted_x509_authorities.extend(
        peers
            .tainted_x509_authorities
            .iter()
            .filter(|c| !certs.contains(*c))
            .cloned(),
    );
    bundle.jwt_authorities.extend(
        peers
            .jwt_authorities
            .iter()
            .filter(|a| !kids.contains(&a.key_id))
            .cloned(),
    );
    bundle
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ca::journal::{JwtKeyRecord, X509AuthorityRecord};
    use crate::ca::rotation::AuthorityStatus;

    fn td() -> TrustDomain {
        TrustDomain::new("example.org").unwrap()
    }

    fn x509(cert: u8, not_after: i64, tainted: bool) -> X509AuthorityRecord {
        X509AuthorityRecord {
            cert_der: vec![0x30, cert],
            key_id: "x509-CA-A".into(),
            status: AuthorityStatus::Active,
            issued_at: 0,
            not_after,
            tainted,
            upstream_signed: false,
        }
    }

    fn jwt(kid: &str, not_after: i64, tainted: bool) -> JwtKeyRecord {
        JwtKeyRecord {
            kid: kid.into(),
            public_key: kid.as_bytes().to_vec(),
            key_id: "JWT-Signer-A".into(),
            status: AuthorityStatus::Active,
            issued_at: 0,
            not_after,
            tainted,
        }
    }

    #[test]
    fn union_of_two_replicas_keeps_both_and_drops_expired() {
        let now = 1_000;
        let a = CaJournal {
            x509_authorities: vec![x509(1, 2_000, false), x509(2, now, false)],
            jwt_keys: vec![jwt("a-live", 2_000, true), jwt("a-expired", 999, false)],
            ..CaJournal::default()
        };
        let b = CaJournal {
            x509_authorities: vec![x509(3, 3_000, true)],
            jwt_keys: vec![jwt("b-live", 3_000, false)],
            ..CaJournal::default()
        };
        let union = union_bundle(&td(), &[a, b], now);
        assert_eq!(union.trust_domain, td());
        assert_eq!(union.x509_authorities, vec![vec![0x30, 1], vec![0x30, 3]]);
        assert_eq!(union.tainted_x509_authorities, vec![vec![0x30, 3]]);
        let kids: Vec<(&str, bool, i64)> = union
            .jwt_authorities
            .iter()
            .map(|a| (a.key_id.as_str(), a.tainted, a.expires_at))
            .collect();
        assert_eq!(
            kids,
            vec![("a-live", true, 2_000), ("b-live", false, 3_000)]
        );
    }

    #[test]
    fn union_skips_intermediates_and_publishes_upstream_roots_once() {
        let mut intermediate = x509(9, 2_000, false);
        intermediate.upstream_signed = true;
        let journal = |root: u8| CaJournal {
            x509_authorities: vec![intermediate.clone()],
            upstream_roots: vec![vec![0x30, root]],
            ..CaJournal::default()
        };
        let union = union_bundle(&td(), &[journal(7), journal(7), journal(8)], 0);
        assert_eq!(union.x509_authorities, vec![vec![0x30, 7], vec![0x30, 8]]);
    }

    #[test]
    fn peers_part_and_merge_round_trip() {
        let own = union_bundle(
            &td(),
            &[CaJournal {
                x509_authorities: vec![x509(1, 2_000, false)],
                jwt_keys: vec![jwt("own", 2_000, false)],
                ..CaJournal::default()
            }],
            0,
        );
        assert_eq!(merge(&own, &Bundle::new(td()), 4), {
            let mut b = own.clone();
            b.sequence = 4;
            b
        });
        let other = CaJournal {
            x509_authorities: vec![x509(2, 2_000, true)],
            jwt_keys: vec![jwt("peer", 2_000, false)],
            ..CaJournal::default()
        };
        // The union says our CA is tainted (a stale view); our own state wins.
        let mut union = union_bundle(&td(), &[other], 0);
        union.x509_authorities.insert(0, vec![0x30, 1]);
        union.tainted_x509_authorities.push(vec![0x30, 1]);
        union.jwt_authorities.extend(own.jwt_authorities.clone());
        let peers = peers_part(&union, &own);
        assert_eq!(peers.x509_authorities, vec![vec![0x30, 2]]);
        assert_eq!(peers.tainted_x509_authorities, vec![vec![0x30, 2]]);
        assert_eq!(peers.jwt_authorities.len(), 1);
        assert_eq!(peers.jwt_authorities[0].key_id, "peer");
        let merged = merge(&own, &peers, 9);
        assert_eq!(merged.sequence, 9);
        assert_eq!(merged.x509_authorities, vec![vec![0x30, 1], vec![0x30, 2]]);
        assert_eq!(merged.tainted_x509_authorities, vec![vec![0x30, 2]]);
        let kids: Vec<&str> = merged
            .jwt_authorities
            .iter()
            .map(|a| a.key_id.as_str())
            .collect();
        assert_eq!(kids, vec!["own", "peer"]);
    }
}
