//! How entries and other results are printed: SPIRE's aligned `Key : value` blocks for
//! people, JSON for machines.

use serde_json::{Value, json};
use sigil_proto::sigil::common::v1 as pb;

pub fn entry_json(e: &pb::RegistrationEntry) -> Value {
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

pub fn print_entry(e: &pb::RegistrationEntry) {
    println!("Entry ID         : {}", e.id);
    if e.template {
        println!("SPIFFE ID        : {} (template)", e.spiffe_id);
    } else {
        println!("SPIFFE ID        : {}", e.spiffe_id);
    }
    println!("Parent ID        : {}", e.parent_id);
    println!("Revision         : {}", e.revision);
    if e.downstream {
        println!("Downstream       : true");
    }
    println!("X509-SVID TTL    : {}", ttl(e.x509_svid_ttl));
    println!("JWT-SVID TTL     : {}", ttl(e.jwt_svid_ttl));
    if e.expires_at != 0 {
        println!("Expiration time  : {}", timestamp(e.expires_at));
    }
    for s in &e.selectors {
        println!("Selector         : {}:{}", s.r#type, s.value);
    }
    for td in &e.federates_with {
        println!("FederatesWith    : {td}");
    }
    for d in &e.dns_names {
        println!("DNS name         : {d}");
    }
    if e.admin {
        println!("Admin            : true");
    }
    if !e.hint.is_empty() {
        println!("Hint             : {}", e.hint);
    }
    println!();
}

pub fn print_json(v: &Value) {
    println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
}

/// RFC 3339 UTC for a Unix timestamp.
pub fn timestamp(unix: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(unix)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| unix.to_string())
}
