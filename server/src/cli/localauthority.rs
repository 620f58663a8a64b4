//! `sigil-server localauthority x509|jwt show|prepare|activate|taint|revoke`: SPIRE's commands
//! and output for operator-driven rotation.

use clap::{Args, Subcommand};
use serde_json::{Value, json};
use sigil_proto::sigil::admin::v1 as admin;

use super::OutputArgs;
use super::client::{CliError, CliResult, connect};
use super::output::print_json;

#[derive(Subcommand, Debug)]
pub(super) enum LocalAuthorityCommand {
    /// Manages the X.509 authorities (CA certificates) of this server.
    #[command(subcommand)]
    X509(OpCommand),
    /// Manages the JWT authorities (signing keys) of this server.
    #[command(subcommand)]
    Jwt(OpCommand),
}

#[derive(Subcommand, Debug)]
pub(super) enum OpCommand {
    /// Shows the active, prepared and old authorities.
    Show(OutputOnly),
    /// Prepares a new authority now (published in the bundle, not signing yet).
    Prepare(OutputOnly),
    /// Activates the prepared authority; the active one becomes old.
    Activate(WithId),
    /// Taints an old authority: agents re-mint everything it signed right away.
    Taint(WithId),
    /// Revokes a tainted authority: removed from the bundle, its key destroyed.
    Revoke(WithId),
}

#[derive(Args, Debug)]
pub(super) struct OutputOnly {
    #[command(flatten)]
    out: OutputArgs,
}

#[derive(Args, Debug)]
pub(super) struct WithId {
    /// The authority ID (X.509: Subject Key ID hex; JWT: key ID), as `show` prints it.
    #[arg(long = "authorityID", default_value = "")]
    authority_id: String,
    #[command(flatten)]
    out: OutputArgs,
}

pub(super) async fn execute(c: LocalAuthorityCommand) -> CliResult {
    let (kind, label, op) = match c {
        LocalAuthorityCommand::X509(op) => (admin::AuthorityKind::X509, "X.509", op),
        LocalAuthorityCommand::Jwt(op) => (admin::AuthorityKind::Jwt, "JWT", op),
    };
    let (op, verb, id, out) = match op {
        OpCommand::Show(a) => (admin::LocalAuthorityOp::Show, "", String::new(), a.out),
        OpCommand::Prepare(a) => (
            admin::LocalAuthorityOp::Prepare,
            "Prepared",
            String::new(),
            a.out,
        ),
        OpCommand::Activate(a) => (
            admin::LocalAuthorityOp::Activate,
            "Activated",
            a.authority_id,
            a.out,
        ),
        OpCommand::Taint(a) => (
            admin::LocalAuthorityOp::Taint,
            "Tainted",
            a.authority_id,
            a.out,
        ),
        OpCommand::Revoke(a) => (
            admin::LocalAuthorityOp::Revoke,
            "Revoked",
            a.authority_id,
            a.out,
        ),
    };
    let mut client = connect(&out.socket_path).await?;
    let response = client
        .local_authority(admin::LocalAuthorityRequest {
            kind: kind.into(),
            op: op.into(),
            authority_id: id,
        })
        .await?
        .into_inner();
    if op == admin::LocalAuthorityOp::Show {
        if out.json() {
            print_json(&show_json(&response.authorities));
        } else {
            print!("{}", show_text(label, &response.authorities));
        }
        return Ok(());
    }
    let authority = response
        .authority
        .ok_or_else(|| CliError("server returned no authority".into()))?;
    if out.json() {
        let key = format!("{}_authority", verb.to_lowercase());
        print_json(&json!({ key: state_json(&authority) }));
    } else {
        print!("{verb} {label} authority:\n{}", block(&authority));
    }
    Ok(())
}

/// SPIRE's `show` layout: Active, Prepared and Old sections. We may hold several old
/// authorities (SPIRE keeps one): each gets its own block under the Old heading.
fn show_text(label: &str, all: &[admin::AuthorityState]) -> String {
    let mut text = String::new();
    for (heading, status) in [
        ("Active", admin::AuthorityStatus::Active),
        ("Prepared", admin::AuthorityStatus::Prepared),
        ("Old", admin::AuthorityStatus::Old),
    ] {
        if !text.is_empty() {
            text.push('\n');
        }
        text.push_str(&format!("{heading} {label} authority:\n"));
        let mut found = false;
        for a in all.iter().filter(|a| a.status == i32::from(status)) {
            text.push_str(&block(a));
            found = true;
        }
        if !found {
            text.push_str(&format!(
                "  No {} {label} authority found\n",
                heading.to_lowercase()
            ));
        }
    }
    text
}

fn block(a: &admin::AuthorityState) -> String {
    let mut text = format!(
        "  Authority ID: {}\n  Expires at: {}\n",
        a.authority_id,
        expires_at(a.expires_at)
    );
    if !a.upstream_authority_subject_key_id.is_empty() {
        text.push_str(&format!(
            "  Upstream authority Subject Key ID: {}\n",
            a.upstream_authority_subject_key_id
        ));
    }
    if a.tainted {
        text.push_str("  Tainted: true\n");
    }
    text
}

/// Go's `time.Time.String()` in UTC, as SPIRE prints it: `2026-08-17 22:04:03 +0000 UTC`.
fn expires_at(unix: i64) -> String {
    let format = time::format_description::parse_borrowed::<2>(
        "[year]-[month]-[day] [hour]:[minute]:[second] +0000 UTC",
    );
    time::OffsetDateTime::from_unix_timestamp(unix)
        .ok()
        .zip(format.ok())
        .and_then(|(t, f)| t.format(&f).ok())
        .unwrap_or_else(|| unix.to_string())
}

fn state_json(a: &admin::AuthorityState) -> Value {
    let mut v = json!({
        "authority_id": a.authority_id,
        "expires_at": a.expires_at.to_string(),
    });
    if !a.upstream_authority_subject_key_id.is_empty() {
        v["upstream_authority_subject_key_id"] = json!(a.upstream_authority_subject_key_id);
    }
    if a.tainted {
        v["tainted"] = json!(true);
    }
    v
}

fn show_json(all: &[admin::AuthorityState]) -> Value {
    let mut v = json!({});
    for (key, status) in [
        ("active", admin::AuthorityStatus::Active),
        ("prepared", admin::AuthorityStatus::Prepared),
    ] {
        if let Some(a) = all.iter().find(|a| a.status == i32::from(status)) {
            v[key] = state_json(a);
        }
    }
    let old: Vec<Value> = all
        .iter()
        .filter(|a| a.status == i32::from(admin::AuthorityStatus::Old))
        .map(state_json)
        .collect();
    if !old.is_empty() {
        v["old"] = Value::Array(old);
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(id: &str, status: admin::AuthorityStatus, tainted: bool) -> admin::AuthorityState {
        admin::AuthorityState {
            authority_id: id.into(),
            expires_at: 1001,
            status: status.into(),
            tainted,
            upstream_authority_subject_key_id: String::new(),
        }
    }

    #[test]
    fn show_prints_like_spire() {
        let all = [
            state("old-id", admin::AuthorityStatus::Old, true),
            state("active-id", admin::AuthorityStatus::Active, false),
        ];
        assert_eq!(
            show_text("X.509", &all),
            "Active X.509 authority:\n  Authority ID: active-id\n  Expires at: 1970-01-01 00:16:41 +0000 UTC\n\
             \nPrepared X.509 authority:\n  No prepared X.509 authority found\n\
             \nOld X.509 authority:\n  Authority ID: old-id\n  Expires at: 1970-01-01 00:16:41 +0000 UTC\n  Tainted: true\n"
        );
        let v = show_json(&all);
        assert_eq!(v["active"]["authority_id"], "active-id");
        assert_eq!(v["old"][0]["tainted"], true);
        assert!(v.get("prepared").is_none());
    }
}
