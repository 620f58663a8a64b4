//! Selectors: `type:value` facts about a node or a workload (`k8s:ns:payments`,
//! `unix:uid:1000`). The value may itself contain colons (`k8s:pod-label:app:web`).

use std::fmt;
use std::str::FromStr;

/// Why a string is not a selector.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SelectorError {
    /// No `:` between type and value; holds the text.
    #[error("selector {0:?} must have the form type:value")]
    MissingSeparator(String),
    /// Nothing before the first `:`; holds the selector.
    #[error("selector {0:?} has an empty type")]
    EmptyType(String),
    /// Nothing after the first `:`; holds the selector.
    #[error("selector {0:?} has an empty value")]
    EmptyValue(String),
    /// The type has a character other than an ASCII letter, a digit, `_` or `-`; holds the
    /// type.
    #[error("selector type {0:?} may contain only letters, digits, '_' and '-'")]
    BadType(String),
    /// The value contains a control character; holds the selector.
    #[error("selector {0:?} contains a control character")]
    ControlChar(String),
}

/// A validated selector. Ordered by (type, value) so selector sets have a canonical order.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
pub struct Selector {
    #[serde(rename = "type")]
    kind: String,
    value: String,
}

impl Selector {
    /// Parses `type:value`, splitting at the first colon.
    pub fn new(s: &str) -> Result<Self, SelectorError> {
        let (kind, value) = s
            .split_once(':')
            .ok_or_else(|| SelectorError::MissingSeparator(s.to_owned()))?;
        Self::from_parts(kind, value).map_err(|e| match e {
            SelectorError::EmptyType(_) => SelectorError::EmptyType(s.to_owned()),
            SelectorError::EmptyValue(_) => SelectorError::EmptyValue(s.to_owned()),
            e => e,
        })
    }

    /// Builds a selector from its type and value.
    pub fn from_parts(kind: &str, value: &str) -> Result<Self, SelectorError> {
        let joined = || format!("{kind}:{value}");
        if kind.is_empty() {
            return Err(SelectorError::EmptyType(joined()));
        }
        if !kind
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        {
            return Err(SelectorError::BadType(kind.to_owned()));
        }
        if value.is_empty() {
            return Err(SelectorError::EmptyValue(joined()));
        }
        if value.chars().any(char::is_control) {
            return Err(SelectorError::ControlChar(joined()));
        }
        Ok(Self {
            kind: kind.to_owned(),
            value: value.to_owned(),
        })
    }

    /// The selector type, e.g. `k8s`, `unix`, `k8s_psat`.
    pub fn kind(&self) -> &str {
        &self.kind
    }

    /// Everything after the first colon, e.g. `ns:payments`.
    pub fn value(&self) -> &str {
        &self.value
    }
}

/// Sorts and de-duplicates a selector set: the canonical form stored and compared.
pub fn canonicalize(selectors: &mut Vec<Selector>) {
    selectors.sort();
    selectors.dedup();
}

impl FromStr for Selector {
    type Err = SelectorError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.kind, self.value)
    }
}

impl fmt::Debug for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Selector({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_values_with_colons() {
        let cases = [
            ("k8s:ns:payments", "k8s", "ns:payments"),
            ("k8s:pod-label:app:web", "k8s", "pod-label:app:web"),
            ("unix:uid:1000", "unix", "uid:1000"),
            (
                "k8s_psat:cluster:my-cluster",
                "k8s_psat",
                "cluster:my-cluster",
            ),
            ("spiffe_id:spiffe://td/x", "spiffe_id", "spiffe://td/x"),
        ];
        for (input, kind, value) in cases {
            let s = Selector::new(input).unwrap();
            assert_eq!((s.kind(), s.value()), (kind, value), "{input}");
            assert_eq!(s.to_string(), input);
        }
    }

    #[test]
    fn rejects_malformed() {
        let cases = [
            ("k8s", SelectorError::MissingSeparator("k8s".into())),
            ("", SelectorError::MissingSeparator("".into())),
            (":ns:x", SelectorError::EmptyType(":ns:x".into())),
            ("k8s:", SelectorError::EmptyValue("k8s:".into())),
            ("k 8s:ns", SelectorError::BadType("k 8s".into())),
            (
                "k8s:ns\n:x",
                SelectorError::ControlChar("k8s:ns\n:x".into()),
            ),
        ];
        for (input, want) in cases {
            assert_eq!(Selector::new(input), Err(want), "{input:?}");
        }
    }

    #[test]
    fn canonical_order() {
        let mut v: Vec<Selector> = ["unix:uid:1", "k8s:sa:b", "k8s:ns:a", "k8s:sa:b"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        canonicalize(&mut v);
        let s: Vec<String> = v.iter().map(ToString::to_string).collect();
        assert_eq!(s, ["k8s:ns:a", "k8s:sa:b", "unix:uid:1"]);
    }
}
