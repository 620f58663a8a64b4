//! `sigil-server localauthority x509|jwt show|prepare|activate|taint|revoke`: SPIRE's commands
//! and output for operator-driven rotation.

use clap::{Args, Subcommand};
use std::collections::BTreeMap;

use sigil_proto::sigil::admin::v1 as admin;

use super::OutputArgs;
use super::client::{CliError, CliResult, connect};
use super::output::go_time;
use super::types::{self, svid::AuthorityState, svid::AuthorityStateResponse};

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
            types::print(&show_json(&response.authorities));
        } else {
            print!("{}", show_text(label, &response.authorities));
        }
        return Ok(());
    }
    let authority = response
        .authority
        .ok_or_else(|| CliError("server returned no authority".into()))?;
    if out.json() {
        // SPIRE's `{"prepared_authority": {...}}`, `activated_`, `tainted_`, `revoked_`.
        let key = format!("{}_authority", verb.to_lowercase());
        types::print(&BTreeMap::from([(key, state_json(&authority))]));
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
        go_time(a.expires_at)
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

fn state_json(a: &admin::AuthorityState) -> AuthorityState {
    AuthorityState {
        authority_id: a.authority_id.clone(),
        expires_at: a.expires_at,
        upstream_authority_subject_key_id: a.upstream_authority_subject_key_id.clone(),
    }
}

/// SPIRE's `Get*AuthorityStateResponse`. SPIRE keeps one old authority; of our several, the
/// one that expires last (the most recently active) is `old`.
fn show_json(all: &[admin::AuthorityState]) -> AuthorityStateResponse {
    let of = |status: admin::AuthorityStatus| {
        all.iter()
            .filter(|a| a.status == i32::from(status))
            .max_by_key(|a| a.expires_at)
            .map(state_json)
    };
    AuthorityStateResponse {
        active: of(admin::AuthorityStatus::Active),
        old: of(admin::AuthorityStatus::Old),
        prepared: of(admin::AuthorityStatus::Prepared),
    }
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
        assert_eq!(
            serde_json::to_string(&show_json(&all)).unwrap(),
            r#"{"active":{"authority_id":"active-id","expires_at":"1001","upstream_authority_subject_key_id":""},"old":{"authority_id":"old-id","expires_at":"1001","upstream_authority_subject_key_id":""}}"#
        );
    }
}
