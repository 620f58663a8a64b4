//! How entries, times and counts are printed for people: SPIRE's aligned `Key : value` blocks.
//! (JSON for machines: [`super::types`].)

use std::io::{self, Write};

use sigil_proto::sigil::common::v1 as pb;

fn ttl(seconds: i32) -> String {
    if seconds == 0 {
        "default".into()
    } else {
        seconds.to_string()
    }
}

/// A count as SPIRE's `... count` commands print it: `{"count":N}` with `-output json`, else
/// `N <singular|plural>` (`1 registration entry`, `2 bundles`).
pub(super) fn print_count(out: &super::OutputArgs, n: u64, singular: &str, plural: &str) {
    if out.json() {
        super::types::print(&super::types::CountResponse::new(n));
    } else {
        println!("{n} {}", if n == 1 { singular } else { plural });
    }
}

pub(super) fn print_entry(e: &pb::RegistrationEntry) {
    // A closed stdout (`| head`) is not an error worth reporting for one entry.
    let _ = write_entry(&mut io::stdout().lock(), e);
}

/// Writes one entry as SPIRE's aligned block, followed by a blank line.
pub(super) fn write_entry(out: &mut impl Write, e: &pb::RegistrationEntry) -> io::Result<()> {
    let id = if e.id.is_empty() { "(none)" } else { &e.id };
    writeln!(out, "Entry ID                : {id}")?;
    if e.template {
        writeln!(out, "SPIFFE ID               : {} (template)", e.spiffe_id)?;
    } else {
        writeln!(out, "SPIFFE ID               : {}", e.spiffe_id)?;
    }
    writeln!(out, "Parent ID               : {}", e.parent_id)?;
    writeln!(out, "Revision                : {}", e.revision)?;
    if e.downstream {
        writeln!(out, "Downstream              : true")?;
    }
    writeln!(out, "X509-SVID TTL           : {}", ttl(e.x509_svid_ttl))?;
    writeln!(out, "JWT-SVID TTL            : {}", ttl(e.jwt_svid_ttl))?;
    if e.expires_at != 0 {
        writeln!(out, "Expiration time         : {}", go_time(e.expires_at))?;
    }
    for s in &e.selectors {
        writeln!(out, "Selector                : {}:{}", s.r#type, s.value)?;
    }
    for td in &e.federates_with {
        writeln!(out, "FederatesWith           : {td}")?;
    }
    for d in &e.dns_names {
        writeln!(out, "DNS name                : {d}")?;
    }
    if e.admin {
        writeln!(out, "Admin                   : true")?;
    }
    if !e.hint.is_empty() {
        writeln!(out, "Hint                    : {}", e.hint)?;
    }
    writeln!(out)
}

/// Go's `time.Time.String()` in UTC, as SPIRE prints times: `2026-08-17 22:04:03 +0000 UTC`.
pub(super) fn go_time(unix: i64) -> String {
    let format = time::format_description::parse_borrowed::<2>(
        "[year]-[month]-[day] [hour]:[minute]:[second] +0000 UTC",
    );
    time::OffsetDateTime::from_unix_timestamp(unix)
        .ok()
        .zip(format.ok())
        .and_then(|(t, f)| t.format(&f).ok())
        .unwrap_or_else(|| unix.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert!(text.starts_with("Entry ID                : 1\n"), "{text}");
        assert!(
            text.contains(
                "Selector                : k8s:ns:a\nSelector                : k8s:sa:b\n"
            )
        );
        assert!(text.ends_with("Hint                    : h\n\n"), "{text}");
    }
}
