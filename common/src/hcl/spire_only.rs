//! SPIRE's keys that Sigil does not implement. Our users bring SPIRE's config files, so such a
//! key is never an "unknown key": each component declares, beside the code that reads its
//! block, what Sigil does with each of SPIRE's keys it lacks ([`SpireOnly`]), and
//! [`Block::spire_only`](super::Block::spire_only) applies the table. A refused key is an error
//! that says "not supported by Sigil" and why; an accepted one leaves exactly one warning on the
//! [`Document`](super::Document), which the binary logs once logging is set up. A misspelt key
//! is in no table and stays an "unknown key".

use hcl_edit::expr::Expression;

/// What Sigil does with one of SPIRE's keys that it does not implement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpireOnly {
    /// Refused, whatever its value: the file asks for something Sigil cannot do. The text
    /// says why (and what to do instead), after "not supported by Sigil: ".
    Refused(&'static str),
    /// Accepted with one warning: the key only tunes SPIRE's internals and means nothing for
    /// Sigil. The text says why, after "has no effect in Sigil: ".
    Ignored(&'static str),
    /// Accepted with one warning while it holds the value that switches the feature off
    /// (SPIRE's default, which is what Sigil does anyway); refused with the text otherwise.
    RefusedUnless(Off, &'static str),
}

/// The value of a key that switches a SPIRE-only feature off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Off {
    /// `false` (or `"false"`).
    False,
    /// An empty list or an empty string.
    Empty,
    /// This string, compared without regard to ASCII case (`rebootstrap_mode = "never"`).
    Str(&'static str),
}

impl Off {
    /// Whether `value` switches the feature off. A block is never "off": it configures the
    /// feature.
    pub(super) fn matches(self, value: &Expression) -> bool {
        match (self, value) {
            (Self::False, Expression::Bool(b)) => !*b.value(),
            (Self::False, Expression::String(s)) => s.value().eq_ignore_ascii_case("false"),
            (Self::Empty, Expression::Array(a)) => a.is_empty(),
            (Self::Empty, Expression::String(s)) => s.value().is_empty(),
            (Self::Str(want), Expression::String(s)) => s.value().eq_ignore_ascii_case(want),
            _ => false,
        }
    }
}

/// The error text of a refused key.
pub(super) fn refusal(why: &str) -> String {
    format!("not supported by Sigil: {why}")
}

/// The warning text of an accepted key.
pub(super) fn ignored(why: &str) -> String {
    format!("has no effect in Sigil: {why}")
}
