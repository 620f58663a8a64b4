//! How entries and other results are printed: SPIRE's aligned `Key : value` blocks for
//! people, JSON for machines.

use std::io::{self, Write};

use serde_json::{Value, json};
use sigil_proto::sigil::common::v1 as pb;

pub(super) fn entry_json(e: &pb::RegistrationEntry) -> Value {
    json!({
        "id": e.id,
        "spiffe_id": e.spiffe_id,
        "parent_id": e.parent_id,
        "selectors": e.selectors.iter().map(|s| json!({"type": s.r#type, "value": s.value})).collect::<Vec<_>>(),
        "x509_svid_ttl": e.x509_svid_ttl,
        "jwt_svid_ttl": e.jwt_svid_ttl,
        "dns_names": e.dns_names,
        "federates_with": e.federates_with,
        "admin": e.admin,
        "downstream": e.downstream,
        "hint": e.hint,
        "expires_at": e.expires_at,
        "revision": e.revision,
        "created_at": e.created_at,
        "template": e.template,
    })
}

fn ttl(seconds: i32) -> String {
    if seconds == 0 {
        "default".into()
    } else {
        seconds.to_string()
    }
}

pub(super) fn print_entry(e: &pb::RegistrationEntry) {
    // A closed stdout (`| head`) is not an error worth reporting for one entry.
    let _ = write_entry(&mut io::stdout().lock(), e);
}

/// Writes one entry as SPIRE's aligned block, followed by a blank line.
pub(super) fn write_entry(out: &mut impl Write, e: &pb::RegistrationEntry) -> io::Result<()> {
    writeln!(out, "Entry ID         : {}", e.id)?;
    if e.template {
        writeln!(out, "SPIFFE ID        : {} (template)", e.spiffe_id)?;
    } else {
        writeln!(out, "SPIFFE ID        : {}", e.spiffe_id)?;
    }
    writeln!(out, "Parent ID        : {}", e.parent_id)?;
    writeln!(out, "Revision         : {}", e.revision)?;
    if e.downstream {
        writeln!(out, "Downstream       : true")?;
    }
    writeln!(out, "X509-SVID TTL    : {}", ttl(e.x509_svid_ttl))?;
    writeln!(out, "JWT-SVID TTL     : {}", ttl(e.jwt_svid_ttl))?;
    if e.expires_at != 0 {
        writeln!(out, "Expiration time  : {}", timestamp(e.expires_at))?;
    }
    for s in &e.selectors {
        writeln!(out, "Selector         : {}:{}", s.r#type, s.value)?;
    }
    for td in &e.federates_with {
        writeln!(out, "FederatesWith    : {td}")?;
    }
    for d in &e.dns_names {
        writeln!(out, "DNS name         : {d}")?;
    }
    if e.admin {
        writeln!(out, "Admin            : true")?;
    }
    if !e.hint.is_empty() {
        writeln!(out, "Hint             : {}", e.hint)?;
    }
    writeln!(out)
}

/// Writes a JSON array one element at a time, so a listing of any length never sits in memory.
/// The text is exactly `serde_json::to_string_pretty` of the whole array (what `print_json`
/// printed before pages were streamed): scripts see no difference.
pub(super) struct JsonArrayWriter<W: Write> {
    out: W,
    empty: bool,
}

impl<W: Write> JsonArrayWriter<W> {
    pub(super) fn new(out: W) -> Self {
        Self { out, empty: true }
    }

    pub(super) fn push(&mut self, v: &Value) -> io::Result<()> {
        let text = serde_json::to_string_pretty(v).map_err(io::Error::other)?;
        self.out
            .write_all(if self.empty { b"[\n" } else { b",\n" })?;
        self.empty = false;
        // Pretty JSON escapes newlines inside strings, so every line break is structure and
        // indenting each line nests the element one level.
        for (i, line) in text.lines().enumerate() {
            if i > 0 {
                self.out.write_all(b"\n")?;
            }
            self.out.write_all(b"  ")?;
            self.out.write_all(line.as_bytes())?;
        }
        Ok(())
    }

    /// Closes the array (and a trailing newline, as `println!` gave) and returns the writer.
    pub(super) fn finish(mut self) -> io::Result<W> {
        self.out
            .write_all(if self.empty { b"[]\n" } else { b"\n]\n" })?;
        self.out.flush()?;
        Ok(self.out)
    }
}

pub(super) fn print_json(v: &Value) {
    println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
}

/// RFC 3339 UTC for a Unix timestamp.
pub(super) fn timestamp(unix: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(unix)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| unix.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn streamed(values: &[Value]) -> String {
        let mut w = JsonArrayWriter::new(Vec::new());
        for v in values {
            w.push(v).unwrap();
        }
        String::from_utf8(w.finish().unwrap()).unwrap()
    }

    #[test]
    fn streamed_json_array_is_the_pretty_array() {
        let entry = pb::RegistrationEntry {
            id: "a\nb".into(),
            spiffe_id: "spiffe://td/w".into(),
            dns_names: vec!["x".into(), "y".into()],
            selectors: vec![pb::Selector {
                r#type: "unix".into(),
                value: "uid:1".into(),
            }],
            ..Default::default()
        };
        let one = entry_json(&entry);
        for values in [
            vec![],
            vec![one.clone()],
            vec![one, json!({}), json!([1, {"k": []}])],
        ] {
            let whole = serde_json::to_string_pretty(&Value::Array(values.clone())).unwrap();
            assert_eq!(streamed(&values), format!("{whole}\n"));
        }
    }

    #[test]
    fn entry_block_lists_every_selector() {
        let mut out = Vec::new();
        let entry = pb::RegistrationEntry {
            id: "1".into(),
            selectors: vec![
                pb::Selector {
                    r#type: "k8s".into(),
                    value: "ns:a".into(),
                },
                pb::Selector {
                    r#type: "k8s".into(),
                    value: "sa:b".into(),
                },
            ],
            hint: "h".into(),
            ..Default::default()
        };
        write_entry(&mut out, &entry).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("Entry ID         : 1\n"), "{text}");
        assert!(text.contains("Selector         : k8s:ns:a\nSelector         : k8s:sa:b\n"));
        assert!(text.ends_with("Hint             : h\n\n"), "{text}");
    }
}
