//! Conversions between the wire messages of `sigil.common.v1` and the validated domain types.
//! Parsing a message validates it: a bad SPIFFE ID or selector is an error naming the field.

use std::time::Duration;

use crate::bundle::{Bundle, JwtAuthority};
use crate::entry::{EntrySpiffeId, RegistrationEntry};
use crate::id_template::IdTemplate;
use crate::selector::{self, Selector};
use crate::sigil::common::v1 as pb;
use crate::spiffe_id::{SpiffeId, SpiffeIdError};
use crate::trust_domain::TrustDomain;

/// A wire message that does not describe a valid domain value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {field}: {reason}")]
pub struct InvalidField {
    /// The field at fault, by its proto name (`spiffe_id`, `selectors`, `dns_names`, ...).
    pub field: &'static str,
    /// What is wrong with it.
    pub reason: String,
}

fn invalid(field: &'static str, reason: impl ToString) -> InvalidField {
    InvalidField {
        field,
        reason: reason.to_string(),
    }
}

impl From<&Selector> for pb::Selector {
    fn from(s: &Selector) -> Self {
        Self {
            r#type: s.kind().to_owned(),
            value: s.value().to_owned(),
        }
    }
}

impl TryFrom<&pb::Selector> for Selector {
    type Error = InvalidField;
    fn try_from(s: &pb::Selector) -> Result<Self, Self::Error> {
        Self::from_parts(&s.r#type, &s.value).map_err(|e| invalid("selector", e))
    }
}

/// Parses a list of wire selectors into a canonical set.
pub fn selectors_from_pb(list: &[pb::Selector]) -> Result<Vec<Selector>, InvalidField> {
    let mut out = list
        .iter()
        .map(Selector::try_from)
        .collect::<Result<Vec<_>, _>>()?;
    selector::canonicalize(&mut out);
    Ok(out)
}

/// The wire form of `list`, in the same order.
pub fn selectors_to_pb(list: &[Selector]) -> Vec<pb::Selector> {
    list.iter().map(pb::Selector::from).collect()
}

impl From<&RegistrationEntry> for pb::RegistrationEntry {
    fn from(e: &RegistrationEntry) -> Self {
        Self {
            id: e.id.clone(),
            spiffe_id: e.spiffe_id.to_string(),
            parent_id: e.parent_id.to_string(),
            selectors: selectors_to_pb(&e.selectors),
            x509_svid_ttl: ttl_to_pb(e.x509_svid_ttl),
            jwt_svid_ttl: ttl_to_pb(e.jwt_svid_ttl),
            dns_names: e.dns_names.clone(),
            federates_with: e.federates_with.iter().map(ToString::to_string).collect(),
            admin: e.admin,
            downstream: e.downstream,
            hint: e.hint.clone(),
            expires_at: e.expires_at.unwrap_or(0),
            revision: e.revision,
            created_at: e.created_at,
            template: e.spiffe_id.template().is_some(),
        }
    }
}

/// A TTL on the wire: whole seconds, 0 for the server's default.
fn ttl_to_pb(ttl: Option<Duration>) -> i32 {
    ttl.map_or(0, |d| i32::try_from(d.as_secs()).unwrap_or(i32::MAX))
}

impl TryFrom<&pb::RegistrationEntry> for RegistrationEntry {
    type Error = InvalidField;
    /// Validates everything a client may set. `id`, `revision` and `created_at` are copied
    /// as they are; the datastore assigns them on create.
    fn try_from(e: &pb::RegistrationEntry) -> Result<Self, Self::Error> {
        let spiffe_id = if e.template {
            EntrySpiffeId::Template(
                IdTemplate::new(&e.spiffe_id).map_err(|err| invalid("spiffe_id", err))?,
            )
        } else {
            let id = SpiffeId::new(&e.spiffe_id).map_err(|err| invalid("spiffe_id", err))?;
            if !id.is_workload_id() {
                return Err(invalid(
                    "spiffe_id",
                    "must have a path (a trust domain ID is not a workload identity)",
                ));
            }
            EntrySpiffeId::Fixed(id)
        };
        let parent_id = SpiffeId::new(&e.parent_id).map_err(|err| invalid("parent_id", err))?;
        if parent_id.trust_domain() != spiffe_id.trust_domain() {
            return Err(invalid(
                "parent_id",
                "must be in the same trust domain as spiffe_id",
            ));
        }
        let selectors = selectors_from_pb(&e.selectors)?;
        if selectors.is_empty() {
            return Err(invalid("selectors", "at least one selector is required"));
        }
        let ttl = |field, v: i32| {
            u64::try_from(v)
                .map(|secs| (secs != 0).then(|| Duration::from_secs(secs)))
                .map_err(|_| invalid(field, "must not be negative"))
        };
        let federates_with = e
            .federates_with
            .iter()
            .map(|td| TrustDomain::new(td).map_err(|err| invalid("federates_with", err)))
            .collect::<Result<Vec<_>, _>>()?;
        if federates_with.contains(spiffe_id.trust_domain()) {
            return Err(invalid(
                "federates_with",
                "cannot federate with the entry's own trust domain",
            ));
        }
        for dns in &e.dns_names {
            validate_dns_name(dns).map_err(|r| invalid("dns_names", r))?;
        }
        if e.hint.len() > 1024 {
            return Err(invalid("hint", "longer than 1024 bytes"));
        }
        if e.expires_at < 0 {
            return Err(invalid("expires_at", "must not be negative"));
        }
        if e.template {
            if parent_id.is_server_id() {
                return Err(invalid(
                    "template",
                    "a template entry cannot be a node entry (parent_id is the server)",
                ));
            }
            if e.downstream {
                return Err(invalid("template", "a template entry cannot be downstream"));
            }
            if let Some(bad) = selectors.iter().find(|s| !is_workload_selector(s)) {
                return Err(invalid(
                    "selectors",
                    format!(
                        "template entries take workload selectors only, not {}:{}",
                        bad.kind(),
                        bad.value()
                    ),
                ));
            }
        }
        let entry = Self {
            id: e.id.clone(),
            x509_svid_ttl: ttl("x509_svid_ttl", e.x509_svid_ttl)?,
            jwt_svid_ttl: ttl("jwt_svid_ttl", e.jwt_svid_ttl)?,
            dns_names: e.dns_names.clone(),
            federates_with,
            admin: e.admin,
            downstream: e.downstream,
            hint: e.hint.clone(),
            expires_at: (e.expires_at != 0).then_some(e.expires_at),
            revision: e.revision,
            created_at: e.created_at,
            ..Self::new(spiffe_id, parent_id, selectors)
        };
        // SPIRE's rule: the server's and agents' namespace is nobody's entry, node aliases
        // included (their IDs are validated as workload IDs too). Parents may be anywhere.
        if entry.is_reserved() {
            return Err(invalid("spiffe_id", SpiffeIdError::Reserved));
        }
        Ok(entry)
    }
}

/// Refuses an entry to be written (created or updated) that sets a field Sigil stores but
/// does not act on yet: an `admin` or `downstream` entry would grant nothing, and a security
/// flag is never accepted and ignored. Entries already stored with one still convert (see
/// [`RegistrationEntry::try_from`]) and are shown and served as before.
pub fn check_supported(e: &pb::RegistrationEntry) -> Result<(), InvalidField> {
    for (field, set) in [("admin", e.admin), ("downstream", e.downstream)] {
        if set {
            return Err(invalid(
                field,
                format!("{field} entries are not supported: the flag would grant nothing"),
            ));
        }
    }
    Ok(())
}

/// Selector types that node attestors produce; any other type is a workload selector. Template
/// entries take only workload selectors: their placeholders are filled from what the agent's
/// workload attestors report.
const NODE_SELECTOR_TYPES: &[&str] = &[
    "spiffe_id",
    "join_token",
    "k8s_psat",
    "k8s_sat",
    "x509pop",
    "sshpop",
    "aws_iid",
    "gcp_iit",
    "azure_msi",
    "tpm_devid",
    "http_challenge",
];

fn is_workload_selector(s: &Selector) -> bool {
    !NODE_SELECTOR_TYPES.contains(&s.kind())
}

/// A DNS SAN must be a plausible host name (optionally with a leading `*.` wildcard label).
pub fn validate_dns_name(name: &str) -> Result<(), String> {
    let host = name.strip_prefix("*.").unwrap_or(name);
    if host.is_empty() || name.len() > 253 {
        return Err(format!("{name:?} is not a valid DNS name"));
    }
    for label in host.split('.') {
        let ok = !label.is_empty()
            && label.len() <= 63
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-');
        if !ok {
            return Err(format!("{name:?} is not a valid DNS name"));
        }
    }
    Ok(())
}

impl From<&Bundle> for pb::Bundle {
    fn from(b: &Bundle) -> Self {
        Self {
            trust_domain: b.trust_domain.to_string(),
            x509_authorities: b.x509_authorities.clone(),
            jwt_authorities: b
                .jwt_authorities
                .iter()
                .map(|a| pb::JwtAuthority {
                    key_id: a.key_id.clone(),
                    public_key: a.public_key.clone(),
                    expires_at: a.expires_at,
                    tainted: a.tainted,
                })
                .collect(),
            sequence: b.sequence,
            refresh_hint: b.refresh_hint.unwrap_or(0),
            tainted_x509_authorities: b.tainted_x509_authorities.clone(),
        }
    }
}

impl TryFrom<&pb::Bundle> for Bundle {
    type Error = InvalidField;
    fn try_from(b: &pb::Bundle) -> Result<Self, Self::Error> {
        Ok(Self {
            trust_domain: TrustDomain::new(&b.trust_domain)
                .map_err(|e| invalid("trust_domain", e))?,
            x509_authorities: b.x509_authorities.clone(),
            jwt_authorities: b
                .jwt_authorities
                .iter()
                .map(|a| JwtAuthority {
                    key_id: a.key_id.clone(),
                    public_key: a.public_key.clone(),
                    expires_at: a.expires_at,
                    tainted: a.tainted,
                })
                .collect(),
            sequence: b.sequence,
            refresh_hint: (b.refresh_hint != 0).then_some(b.refresh_hint),
            tainted_x509_authorities: b.tainted_x509_authorities.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wire() -> pb::RegistrationEntry {
        pb::RegistrationEntry {
            spiffe_id: "spiffe://example.org/ns/payments/sa/checkout-service".into(),
            parent_id: "spiffe://example.org/k8s-node".into(),
            selectors: vec![
                pb::Selector {
                    r#type: "k8s".into(),
                    value: "sa:checkout-service".into(),
                },
                pb::Selector {
                    r#type: "k8s".into(),
                    value: "ns:payments".into(),
                },
            ],
            dns_names: vec!["checkout.payments.svc".into()],
            ..Default::default()
        }
    }

    #[test]
    fn entry_round_trip() {
        let e = RegistrationEntry::try_from(&wire()).unwrap();
        assert_eq!(
            e.selectors[0].to_string(),
            "k8s:ns:payments",
            "canonical order"
        );
        let back = pb::RegistrationEntry::from(&e);
        assert_eq!(RegistrationEntry::try_from(&back).unwrap(), e);
    }

    #[test]
    fn template_entry_round_trip_and_checks() {
        let mut w = wire();
        w.spiffe_id = "spiffe://example.org/ns/{k8s:ns}/sa/{k8s:sa}".into();
        w.template = true;
        let e = RegistrationEntry::try_from(&w).unwrap();
        let t = e.spiffe_id.template().unwrap();
        assert_eq!(t.to_string(), w.spiffe_id);
        assert_eq!(e.spiffe_id.fixed(), None, "a template has no fixed ID");
        let back = pb::RegistrationEntry::from(&e);
        assert!(back.template);
        assert_eq!(back.spiffe_id, w.spiffe_id);
        assert_eq!(RegistrationEntry::try_from(&back).unwrap(), e);

        // Without the flag the same text is not a SPIFFE ID.
        let mut plain = w.clone();
        plain.template = false;
        assert_eq!(
            RegistrationEntry::try_from(&plain).unwrap_err().field,
            "spiffe_id"
        );

        type Mutation = fn(&mut pb::RegistrationEntry);
        let cases: Vec<(Mutation, &str)> = vec![
            (
                |e| e.spiffe_id = "spiffe://example.org/ns-{k8s:ns}".into(),
                "spiffe_id",
            ),
            (
                |e| e.spiffe_id = "spiffe://example.org/fixed".into(),
                "spiffe_id",
            ),
            (
                |e| e.parent_id = "spiffe://example.org/spire/server".into(),
                "template",
            ),
            (|e| e.downstream = true, "template"),
            (
                |e| {
                    e.selectors.push(pb::Selector {
                        r#type: "k8s_psat".into(),
                        value: "cluster:c".into(),
                    })
                },
                "selectors",
            ),
            (
                |e| e.parent_id = "spiffe://other.org/node".into(),
                "parent_id",
            ),
        ];
        for (mutate, field) in cases {
            let mut m = w.clone();
            mutate(&mut m);
            assert_eq!(RegistrationEntry::try_from(&m).unwrap_err().field, field);
        }
    }

    #[test]
    fn entry_validation_names_the_field() {
        type Mutation = fn(&mut pb::RegistrationEntry);
        let cases: Vec<(Mutation, &str)> = vec![
            (|e| e.spiffe_id = "spiffe://example.org".into(), "spiffe_id"),
            (|e| e.spiffe_id = "http://x/y".into(), "spiffe_id"),
            (
                |e| e.parent_id = "spiffe://other.org/node".into(),
                "parent_id",
            ),
            (|e| e.selectors.clear(), "selectors"),
            (|e| e.selectors[0].value.clear(), "selector"),
            (|e| e.x509_svid_ttl = -1, "x509_svid_ttl"),
            (
                |e| e.federates_with = vec!["Bad TD".into()],
                "federates_with",
            ),
            (
                |e| e.federates_with = vec!["example.org".into()],
                "federates_with",
            ),
            (|e| e.dns_names = vec!["bad name".into()], "dns_names"),
        ];
        for (mutate, field) in cases {
            let mut w = wire();
            mutate(&mut w);
            assert_eq!(RegistrationEntry::try_from(&w).unwrap_err().field, field);
        }
    }

    /// Entries (node aliases and templates included) may not have an ID in `/spire/*`; their
    /// parent may (agents and the server are what entries hang under).
    #[test]
    fn reserved_ids_are_refused_but_reserved_parents_are_fine() {
        for (id, template) in [
            ("spiffe://example.org/spire/server", false),
            ("spiffe://example.org/spire/agent/join_token/x", false),
            ("spiffe://example.org/spire", false),
            ("spiffe://example.org/spire/other", false),
            ("spiffe://example.org/spire/{unix:user}", true),
            ("spiffe://example.org/spire/agent/{k8s:ns}", true),
        ] {
            // (A template under the server is refused first as a node entry.)
            let parents: &[&str] = if template {
                &["spiffe://example.org/k8s-node"]
            } else {
                &[
                    "spiffe://example.org/k8s-node",
                    "spiffe://example.org/spire/server",
                ]
            };
            for parent in parents {
                let mut w = wire();
                w.spiffe_id = id.into();
                w.template = template;
                w.parent_id = (*parent).into();
                let err = RegistrationEntry::try_from(&w).unwrap_err();
                assert_eq!(err.field, "spiffe_id", "{id} under {parent}: {err}");
                assert!(err.to_string().contains("reserved"), "{err}");
            }
        }
        for parent in [
            "spiffe://example.org/spire/server",
            "spiffe://example.org/spire/agent/join_token/x",
        ] {
            let mut w = wire();
            w.parent_id = parent.into();
            assert!(RegistrationEntry::try_from(&w).is_ok(), "{parent}");
        }
        // A template some of whose instances are reserved is fine: those are refused one by one.
        let mut w = wire();
        w.spiffe_id = "spiffe://example.org/{unix:user}/server".into();
        w.template = true;
        w.selectors = vec![pb::Selector {
            r#type: "unix".into(),
            value: "user".into(),
        }];
        let e = RegistrationEntry::try_from(&w).unwrap();
        assert!(!e.is_reserved());
    }

    #[test]
    fn dns_names() {
        for ok in ["a.b", "*.svc.cluster.local", "x-1.example"] {
            assert!(validate_dns_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", "*.", "-a.b", "a..b", "a_b.c", "a b"] {
            assert!(validate_dns_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn bundle_round_trips_with_taint() {
        let mut bundle = Bundle::new(TrustDomain::new("example.org").unwrap());
        bundle.x509_authorities = vec![vec![1, 2], vec![3, 4]];
        bundle.tainted_x509_authorities = vec![vec![1, 2]];
        bundle.jwt_authorities = vec![
            JwtAuthority {
                key_id: "old".into(),
                public_key: vec![5],
                expires_at: 10,
                tainted: true,
            },
            JwtAuthority {
                key_id: "new".into(),
                public_key: vec![6],
                expires_at: 20,
                tainted: false,
            },
        ];
        bundle.sequence = 3;
        let wire = pb::Bundle::from(&bundle);
        assert_eq!(wire.tainted_x509_authorities, vec![vec![1, 2]]);
        assert!(wire.jwt_authorities[0].tainted);
        assert!(!wire.jwt_authorities[1].tainted);
        assert_eq!(Bundle::try_from(&wire).unwrap(), bundle);
    }
}
