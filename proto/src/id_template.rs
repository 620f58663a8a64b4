//! Identity templates: a registration entry's SPIFFE ID written over the workload's selectors,
//! e.g. `spiffe://example.org/ns/{k8s:ns}/sa/{k8s:sa}`, so one entry gives every matching pod
//! its own identity.
//!
//! Each path segment is either a literal or exactly one whole placeholder `{<type>:<key>}`.
//! Placeholders inside a segment (`ns-{k8s:ns}`) are refused: with whole-segment placeholders
//! matching a rendered ID against its template is a segment-by-segment comparison with no
//! ambiguity about where a value ends.

use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;

use crate::selector::Selector;
use crate::spiffe_id::{self, MAX_SPIFFE_ID_LEN, SpiffeId, SpiffeIdError};
use crate::trust_domain::{self, TrustDomain};

const SCHEME_PREFIX: &str = "spiffe://";

/// Why a string is not an identity template.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdTemplateError {
    /// The template does not start with `spiffe://`.
    #[error("template must have the form spiffe://<trust domain>/<path>")]
    WrongScheme,
    /// The trust domain breaks a SPIFFE trust domain rule; holds which.
    #[error("invalid trust domain: {0}")]
    TrustDomain(SpiffeIdError),
    /// Nothing after the trust domain: the placeholders a template needs live in its path.
    #[error("template must have a path")]
    NoPath,
    /// The path ends in `/`, which a SPIFFE ID's path may not.
    #[error("template cannot have a trailing slash")]
    TrailingSlash,
    /// A literal path segment breaks a SPIFFE path rule.
    #[error("path segment {segment:?}: {reason}")]
    Segment {
        /// The segment as written.
        segment: String,
        /// The rule it breaks.
        reason: SpiffeIdError,
    },
    /// A segment with a brace that is not one whole `{type:key}` placeholder: a placeholder
    /// inside a segment, an empty or missing type or key, or a character outside their sets;
    /// holds the segment.
    #[error(
        "path segment {0:?}: a placeholder must be a whole segment of the form {{type:key}}, e.g. {{k8s:ns}}"
    )]
    BadPlaceholder(String),
    /// No placeholder at all: a fixed SPIFFE ID belongs in an ordinary entry.
    #[error("template has no placeholder; use an ordinary entry for a fixed SPIFFE ID")]
    NoPlaceholder,
    /// The template is longer than a whole SPIFFE ID may be ([`MAX_SPIFFE_ID_LEN`] bytes).
    #[error("template is longer than {MAX_SPIFFE_ID_LEN} bytes")]
    TooLong,
}

/// Why a template gives no SPIFFE ID for a workload's selectors. The workload then gets
/// nothing from the entry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RenderError {
    /// No selector of the workload gives a value for the placeholder (`type:key`) it holds.
    #[error("no selector gives a value for {{{0}}}")]
    Missing(String),
    /// The workload's selectors give more than one value for the placeholder (`type:key`) it
    /// holds.
    #[error("several selectors give a value for {{{0}}}")]
    Ambiguous(String),
    /// The one value for a placeholder is not a valid SPIFFE path segment (a `/` in it, `.`,
    /// `..`, or a character outside the segment set).
    #[error("value {value:?} for {{{placeholder}}} is not a valid path segment: {reason}")]
    BadValue {
        /// The placeholder, `type:key`.
        placeholder: String,
        /// The selector value that would have filled it.
        value: String,
        /// The path rule the value breaks.
        reason: SpiffeIdError,
    },
    /// The rendered ID as a whole is not a valid SPIFFE ID, e.g. longer than
    /// [`MAX_SPIFFE_ID_LEN`] bytes.
    #[error("rendered SPIFFE ID is invalid: {0}")]
    Invalid(SpiffeIdError),
    /// A value made the instance land in the server's and agents' namespace (a user named
    /// `spire` under `spiffe://<td>/{unix:user}/server`): never a workload's identity.
    #[error("rendered SPIFFE ID {0} is in the reserved namespace \"/spire/*\"")]
    Reserved(SpiffeId),
}

#[derive(Clone, PartialEq, Eq, Hash)]
enum Segment {
    Literal(String),
    /// `{kind:key}`: takes `v` from the workload's selector `kind:key:v`.
    Placeholder {
        kind: String,
        key: String,
    },
}

/// A parsed identity template. Displays as the text it was parsed from.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct IdTemplate {
    trust_domain: TrustDomain,
    segments: Vec<Segment>,
}

impl IdTemplate {
    /// Parses and validates a template.
    pub fn new(s: &str) -> Result<Self, IdTemplateError> {
        if s.len() > MAX_SPIFFE_ID_LEN {
            return Err(IdTemplateError::TooLong);
        }
        let rest = s
            .strip_prefix(SCHEME_PREFIX)
            .ok_or(IdTemplateError::WrongScheme)?;
        let (td, path) = rest.split_once('/').ok_or(IdTemplateError::NoPath)?;
        trust_domain::validate_name(td).map_err(IdTemplateError::TrustDomain)?;
        let trust_domain = TrustDomain::new(td).map_err(IdTemplateError::TrustDomain)?;
        if path.is_empty() {
            return Err(IdTemplateError::NoPath);
        }
        let raw: Vec<&str> = path.split('/').collect();
        let last = raw.len() - 1;
        let mut segments = Vec::with_capacity(raw.len());
        for (i, seg) in raw.iter().enumerate() {
            if seg.is_empty() && i == last {
                return Err(IdTemplateError::TrailingSlash);
            }
            segments.push(parse_segment(seg)?);
        }
        if !segments
            .iter()
            .any(|s| matches!(s, Segment::Placeholder { .. }))
        {
            return Err(IdTemplateError::NoPlaceholder);
        }
        Ok(Self {
            trust_domain,
            segments,
        })
    }

    /// The trust domain of every ID the template gives.
    pub fn trust_domain(&self) -> &TrustDomain {
        &self.trust_domain
    }

    /// The selector prefixes (`type:key`) the placeholders read, without duplicates.
    pub fn placeholders(&self) -> impl Iterator<Item = String> + '_ {
        let mut seen = BTreeSet::new();
        self.segments.iter().filter_map(move |s| match s {
            Segment::Placeholder { kind, key } => {
                let p = format!("{kind}:{key}");
                seen.insert(p.clone()).then_some(p)
            }
            Segment::Literal(_) => None,
        })
    }

    /// True if every instance is in the reserved namespace (the first segment is the literal
    /// `spire`, see [`SpiffeId::is_reserved`]): such a template can give no workload an
    /// identity, so creating one is refused. Instances of other templates may still land there
    /// through a value (`{unix:user}` = `spire`); [`Self::render`] and [`Self::matches`]
    /// refuse those one by one.
    pub fn is_reserved(&self) -> bool {
        match self.segments.first() {
            Some(Segment::Literal(first)) => spiffe_id::is_reserved_path(&format!("/{first}")),
            _ => false,
        }
    }

    /// The SPIFFE ID this template gives a workload with these selectors: `{t:k}` takes `v`
    /// from the selector `t:k:v`, which must exist exactly once (with one distinct value) and
    /// be a valid path segment. An ID in the reserved namespace is refused
    /// ([`RenderError::Reserved`]).
    pub fn render(&self, selectors: &[Selector]) -> Result<SpiffeId, RenderError> {
        let mut path = String::new();
        for seg in &self.segments {
            path.push('/');
            match seg {
                Segment::Literal(lit) => path.push_str(lit),
                Segment::Placeholder { kind, key } => {
                    let placeholder = || format!("{kind}:{key}");
                    let values: BTreeSet<&str> = selectors
                        .iter()
                        .filter(|s| s.kind() == kind)
                        .filter_map(|s| s.value().strip_prefix(key.as_str())?.strip_prefix(':'))
                        .collect();
                    let mut it = values.into_iter();
                    let value = match (it.next(), it.next()) {
                        (Some(v), None) => v,
                        (None, _) => return Err(RenderError::Missing(placeholder())),
                        (Some(_), Some(_)) => return Err(RenderError::Ambiguous(placeholder())),
                    };
                    spiffe_id::validate_segment(value).map_err(|reason| RenderError::BadValue {
                        placeholder: placeholder(),
                        value: value.to_owned(),
                        reason,
                    })?;
                    path.push_str(value);
                }
            }
        }
        let id = SpiffeId::from_path(&self.trust_domain, &path).map_err(RenderError::Invalid)?;
        if id.is_reserved() {
            return Err(RenderError::Reserved(id));
        }
        Ok(id)
    }

    /// True if `id` is an instance of this template, one [`Self::render`] could give: same
    /// trust domain and segment count, literals equal, and not reserved. Placeholder segments
    /// of a `SpiffeId` are valid path segments by construction (no `/`, `.` or `..`).
    pub fn matches(&self, id: &SpiffeId) -> bool {
        if id.trust_domain() != &self.trust_domain || id.is_reserved() {
            return false;
        }
        let Some(path) = id.path().strip_prefix('/') else {
            return false;
        };
        let parts: Vec<&str> = path.split('/').collect();
        parts.len() == self.segments.len()
            && parts.iter().zip(&self.segments).all(|(p, s)| match s {
                Segment::Literal(lit) => p == lit,
                Segment::Placeholder { .. } => spiffe_id::validate_segment(p).is_ok(),
            })
    }
}

/// Selector matching for template entries: an entry selector `t:k:v` matches the workload
/// selector `t:k:v` exactly (as for fixed entries), and also any `t:k:v:<more>` / `t:k:<v>`
/// with it as a `:`-bounded prefix, so `k8s:ns` selects every pod and `k8s:ns:payments` one
/// namespace. True if every entry selector matches some workload selector.
pub fn template_selectors_match(entry: &[Selector], workload: &[Selector]) -> bool {
    entry.iter().all(|e| {
        workload.iter().any(|w| {
            w.kind() == e.kind()
                && (w.value() == e.value()
                    || w.value()
                        .strip_prefix(e.value())
                        .is_some_and(|rest| rest.starts_with(':')))
        })
    })
}

fn parse_segment(seg: &str) -> Result<Segment, IdTemplateError> {
    if let Some(inner) = seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
        // Selector types are `[A-Za-z0-9_-]`; keys we allow are the same plus `.` and `/`-free
        // label-ish text, and must not contain braces (no nesting) or be empty.
        let bad = || IdTemplateError::BadPlaceholder(seg.to_owned());
        let (kind, key) = inner.split_once(':').ok_or_else(bad)?;
        let type_ok = !kind.is_empty()
            && kind
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        let key_ok = !key.is_empty()
            && key
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b':'));
        if !type_ok || !key_ok {
            return Err(bad());
        }
        return Ok(Segment::Placeholder {
            kind: kind.to_owned(),
            key: key.to_owned(),
        });
    }
    if seg.contains(['{', '}']) {
        return Err(IdTemplateError::BadPlaceholder(seg.to_owned()));
    }
    spiffe_id::validate_segment(seg).map_err(|reason| IdTemplateError::Segment {
        segment: seg.to_owned(),
        reason,
    })?;
    Ok(Segment::Literal(seg.to_owned()))
}

impl FromStr for IdTemplate {
    type Err = IdTemplateError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

impl fmt::Display for IdTemplate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{SCHEME_PREFIX}{}", self.trust_domain.as_str())?;
        for seg in &self.segments {
            match seg {
                Segment::Literal(lit) => write!(f, "/{lit}")?,
                Segment::Placeholder { kind, key } => write!(f, "/{{{kind}:{key}}}")?,
            }
        }
        Ok(())
    }
}

impl fmt::Debug for IdTemplate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "IdTemplate({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sels(list: &[&str]) -> Vec<Selector> {
        list.iter().map(|s| Selector::new(s).unwrap()).collect()
    }

    const NS_SA: &str = "spiffe://example.org/ns/{k8s:ns}/sa/{k8s:sa}";

    #[test]
    fn parses_and_displays_round_trip() {
        for s in [
            NS_SA,
            "spiffe://example.org/{k8s:pod-label:app}",
            "spiffe://td/a/{unix:uid}/b.c_d-e",
        ] {
            assert_eq!(IdTemplate::new(s).unwrap().to_string(), s);
        }
        let t = IdTemplate::new(NS_SA).unwrap();
        assert_eq!(t.trust_domain().as_str(), "example.org");
        assert_eq!(
            t.placeholders().collect::<Vec<_>>(),
            ["k8s:ns".to_owned(), "k8s:sa".to_owned()]
        );
    }

    #[test]
    fn rejects_bad_templates() {
        use IdTemplateError as E;
        type Check = fn(&IdTemplateError) -> bool;
        let cases: &[(&str, Check)] = &[
            ("", |e| *e == E::WrongScheme),
            ("http://td/{k8s:ns}", |e| *e == E::WrongScheme),
            ("spiffe://td", |e| *e == E::NoPath),
            ("spiffe://td/", |e| *e == E::NoPath),
            ("spiffe://td/{k8s:ns}/", |e| *e == E::TrailingSlash),
            ("spiffe://TD:1/{k8s:ns}", |e| matches!(e, E::TrustDomain(_))),
            ("spiffe://td/a", |e| *e == E::NoPlaceholder),
            ("spiffe://td/a//{k8s:ns}", |e| {
                matches!(e, E::Segment { .. })
            }),
            ("spiffe://td/../{k8s:ns}", |e| {
                matches!(e, E::Segment { .. })
            }),
            ("spiffe://td/a%2F/{k8s:ns}", |e| {
                matches!(e, E::Segment { .. })
            }),
            ("spiffe://td/ns-{k8s:ns}", |e| {
                matches!(e, E::BadPlaceholder(_))
            }),
            ("spiffe://td/{k8s:ns}x", |e| {
                matches!(e, E::BadPlaceholder(_))
            }),
            ("spiffe://td/{k8s}", |e| matches!(e, E::BadPlaceholder(_))),
            ("spiffe://td/{:ns}", |e| matches!(e, E::BadPlaceholder(_))),
            ("spiffe://td/{k8s:}", |e| matches!(e, E::BadPlaceholder(_))),
            ("spiffe://td/{k8s:{ns}}", |e| {
                matches!(e, E::BadPlaceholder(_))
            }),
            ("spiffe://td/{k8s:n s}", |e| {
                matches!(e, E::BadPlaceholder(_))
            }),
            ("spiffe://td/{k8s:ns", |e| matches!(e, E::BadPlaceholder(_))),
        ];
        for (s, check) in cases {
            let err = IdTemplate::new(s).expect_err(s);
            assert!(check(&err), "{s}: unexpected {err:?}");
        }
        let long = format!("spiffe://td/{{k8s:ns}}/{}", "a".repeat(MAX_SPIFFE_ID_LEN));
        assert_eq!(IdTemplate::new(&long), Err(E::TooLong));
    }

    #[test]
    fn renders_from_selectors() {
        let t = IdTemplate::new(NS_SA).unwrap();
        let id = t
            .render(&sels(&[
                "k8s:ns:payments",
                "k8s:sa:checkout",
                "k8s:pod-name:x",
                "unix:uid:0",
            ]))
            .unwrap();
        assert_eq!(
            id.to_string(),
            "spiffe://example.org/ns/payments/sa/checkout"
        );
        assert!(t.matches(&id));

        // A key that is a prefix of another key must not pick up the longer one's values.
        let t = IdTemplate::new("spiffe://td/{k8s:pod-label:app}").unwrap();
        let id = t
            .render(&sels(&["k8s:pod-label:app:web", "k8s:pod-label:apple:x"]))
            .unwrap();
        assert_eq!(id.to_string(), "spiffe://td/web");
    }

    #[test]
    fn render_refuses_missing_ambiguous_and_hostile_values() {
        let t = IdTemplate::new(NS_SA).unwrap();
        assert_eq!(
            t.render(&sels(&["k8s:ns:a"])),
            Err(RenderError::Missing("k8s:sa".into()))
        );
        assert_eq!(
            t.render(&sels(&["k8s:ns:a", "k8s:ns:b", "k8s:sa:s"])),
            Err(RenderError::Ambiguous("k8s:ns".into()))
        );
        // The same value twice is one value.
        assert!(
            t.render(&sels(&["k8s:ns:a", "k8s:sa:s", "k8s:sa:s"]))
                .is_ok()
        );
        let too_long = "a".repeat(2100);
        for hostile in [
            "..",
            ".",
            "../x",
            "a/b",
            "%2F",
            "a b",
            "ü",
            too_long.as_str(),
        ] {
            let s = format!("k8s:ns:{hostile}");
            let got = t.render(&sels(&[&s, "k8s:sa:s"]));
            assert!(got.is_err(), "{hostile:?} rendered to {got:?}");
        }
        // An empty value: `k8s:ns:` is `k8s` with value `ns:`, i.e. key `ns` with value "".
        let got = t.render(&sels(&["k8s:ns:", "k8s:sa:s"]));
        assert!(matches!(got, Err(RenderError::BadValue { .. })), "{got:?}");
        // 256 characters is a valid segment; the whole ID stays under the limit.
        let v256 = "v".repeat(256);
        let id = t
            .render(&sels(&[&format!("k8s:ns:{v256}"), "k8s:sa:s"]))
            .unwrap();
        assert!(id.path().contains(&v256));
    }

    /// A value may not carry an instance into `/spire/*`: render refuses it and it is no
    /// instance; a template whose first segment is `spire` has no other instances at all.
    #[test]
    fn reserved_instances_are_refused() {
        let t = IdTemplate::new("spiffe://td/{unix:user}/server").unwrap();
        assert!(!t.is_reserved());
        let got = t.render(&sels(&["unix:user:spire"]));
        assert_eq!(
            got,
            Err(RenderError::Reserved(
                SpiffeId::new("spiffe://td/spire/server").unwrap()
            ))
        );
        assert!(!t.matches(&SpiffeId::new("spiffe://td/spire/server").unwrap()));
        let ok = t.render(&sels(&["unix:user:alice"])).unwrap();
        assert_eq!(ok.to_string(), "spiffe://td/alice/server");
        assert!(t.matches(&ok));

        let bare = IdTemplate::new("spiffe://td/{unix:user}").unwrap();
        assert!(matches!(
            bare.render(&sels(&["unix:user:spire"])),
            Err(RenderError::Reserved(_))
        ));
        assert!(bare.render(&sels(&["unix:user:spire-x"])).is_ok());

        for all_reserved in [
            "spiffe://td/spire/{unix:user}",
            "spiffe://td/spire/agent/{unix:uid}",
        ] {
            let t = IdTemplate::new(all_reserved).unwrap();
            assert!(t.is_reserved(), "{all_reserved}");
            assert!(matches!(
                t.render(&sels(&["unix:user:server", "unix:uid:0"])),
                Err(RenderError::Reserved(_))
            ));
        }
        for free in [
            "spiffe://td/spirex/{unix:user}",
            "spiffe://td/x/spire/{unix:user}",
            "spiffe://td/{unix:user}/spire",
        ] {
            assert!(!IdTemplate::new(free).unwrap().is_reserved(), "{free}");
        }
    }

    #[test]
    fn template_selectors_match_by_key_or_exactly() {
        let pod = sels(&[
            "k8s:ns:payments",
            "k8s:sa:checkout",
            "k8s:pod-label:app:web",
        ]);
        let yes: &[&[&str]] = &[
            &["k8s:ns"],
            &["k8s:ns:payments"],
            &["k8s:ns", "k8s:sa"],
            &["k8s:pod-label:app"],
            &["k8s:pod-label:app:web"],
        ];
        let no: &[&[&str]] = &[
            &["k8s:ns:pay"],
            &["k8s:n"],
            &["k8s:ns", "k8s:pod-name"],
            &["k8s:ns:payments", "k8s:sa:other"],
            &["unix:uid"],
            &["k8s:pod-label:ap"],
        ];
        for e in yes {
            assert!(template_selectors_match(&sels(e), &pod), "{e:?}");
        }
        for e in no {
            assert!(!template_selectors_match(&sels(e), &pod), "{e:?}");
        }
    }

    #[test]
    fn matches_only_instances() {
        let t = IdTemplate::new(NS_SA).unwrap();
        let yes = [
            "spiffe://example.org/ns/a/sa/b",
            "spiffe://example.org/ns/x.y/sa/_-",
        ];
        let no = [
            "spiffe://example.org/ns/a/sa",
            "spiffe://example.org/ns/a/sa/b/c",
            "spiffe://example.org/ns/a/xx/b",
            "spiffe://example.org/NS/a/sa/b",
            "spiffe://other.org/ns/a/sa/b",
            "spiffe://example.org/ns/x/sa/y/..",
            "spiffe://example.org",
        ];
        for s in yes {
            assert!(t.matches(&SpiffeId::new(s).unwrap()), "{s}");
        }
        for s in no {
            // Some of these are not even SPIFFE IDs; those can never reach `matches`.
            if let Ok(id) = SpiffeId::new(s) {
                assert!(!t.matches(&id), "{s}");
            }
        }
        assert!(SpiffeId::new("spiffe://example.org/ns/x/sa/../y").is_err());
    }
}
