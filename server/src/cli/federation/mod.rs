//! `federation create|update|delete|list|show|refresh`: federation relationships kept in the
//! datastore, spelled and printed as SPIRE's. `show` adds Sigil's poll status below SPIRE's
//! lines.

mod input;

use std::io::{self, Write};

use clap::{Args, Subcommand};
use sigil_proto::sigil::admin::v1 as pb;

use super::OutputArgs;
use super::bundle::parse_id;
use super::client::{CliError, CliResult, connect, fail};
use super::output::go_time;
use super::types::federation::{
    BatchDeleteFederationRelationshipResponse, BatchFederationRelationshipResponse, BatchResult,
    DeleteResult, FederationRelationship, ListFederationRelationshipsResponse,
};
use super::types::{self, Status};

#[derive(Subcommand, Debug)]
pub(super) enum FederationCommand {
    /// Creates a dynamic federation relationship with a foreign trust domain.
    Create(WriteArgs),
    /// Updates a dynamic federation relationship with a foreign trust domain.
    Update(WriteArgs),
    /// Deletes a dynamic federation relationship.
    Delete(IdArgs),
    /// Lists all dynamic federation relationships.
    List(ListArgs),
    /// Shows a dynamic federation relationship, and its poll status.
    Show(ShowArgs),
    /// Refreshes the bundle from the specified federated trust domain.
    Refresh(IdArgs),
}

#[derive(Args, Debug)]
pub(super) struct WriteArgs {
    #[command(flatten)]
    relationship: input::RelationshipArgs,
    #[command(flatten)]
    out: OutputArgs,
}

#[derive(Args, Debug)]
pub(super) struct IdArgs {
    /// SPIFFE ID of the trust domain (`spiffe://other.org`; a bare name is accepted).
    #[arg(long = "id", default_value = "")]
    id: String,
    #[command(flatten)]
    out: OutputArgs,
}

#[derive(Args, Debug)]
pub(super) struct ListArgs {
    #[command(flatten)]
    out: OutputArgs,
}

#[derive(Args, Debug)]
pub(super) struct ShowArgs {
    /// The trust domain name of the federation relationship to show (e.g., example.org).
    #[arg(long = "trustDomain", default_value = "")]
    trust_domain: String,
    #[command(flatten)]
    out: OutputArgs,
}

pub(super) async fn execute(c: FederationCommand) -> CliResult {
    match c {
        FederationCommand::Create(a) => write(a, true).await,
        FederationCommand::Update(a) => write(a, false).await,
        FederationCommand::Delete(a) => delete(a).await,
        FederationCommand::List(a) => list(a).await,
        FederationCommand::Show(a) => show(a).await,
        FederationCommand::Refresh(a) => refresh(a).await,
    }
}

/// SPIRE's relationship block.
fn write_relationship(out: &mut impl Write, r: &pb::FederationRelationship) -> io::Result<()> {
    use pb::federation_relationship::BundleEndpointProfile as P;
    writeln!(out, "Trust domain              : {}", r.trust_domain)?;
    writeln!(out, "Bundle endpoint URL       : {}", r.bundle_endpoint_url)?;
    match &r.bundle_endpoint_profile {
        Some(P::HttpsWeb(_)) => writeln!(out, "Bundle endpoint profile   : https_web")?,
        Some(P::HttpsSpiffe(p)) => {
            writeln!(out, "Bundle endpoint profile   : https_spiffe")?;
            writeln!(out, "Endpoint SPIFFE ID        : {}", p.endpoint_spiffe_id)?;
        }
        None => {}
    }
    Ok(())
}

/// Sigil's poll status lines.
fn write_status(out: &mut impl Write, s: Option<&pb::FederationPeerStatus>) -> io::Result<()> {
    let time = |t: i64, none: &str| {
        if t == 0 { none.to_owned() } else { go_time(t) }
    };
    let Some(s) = s else {
        return writeln!(out, "Last refresh              : (not polled yet)");
    };
    writeln!(
        out,
        "Last refresh              : {}",
        time(s.last_refresh, "never")
    )?;
    writeln!(
        out,
        "Last successful refresh   : {}",
        time(s.last_success, "never")
    )?;
    writeln!(
        out,
        "Next refresh              : {}",
        time(s.next_refresh, "now")
    )?;
    let error = if s.last_error.is_empty() {
        "none"
    } else {
        &s.last_error
    };
    writeln!(out, "Last error                : {error}")
}

async fn write(a: WriteArgs, create: bool) -> CliResult {
    let relationships = a.relationship.relationships()?;
    let mut client = connect(&a.out.socket_path).await?;
    let mut results = Vec::new();
    let mut failed = Vec::new();
    for r in &relationships {
        let answer = if create {
            client
                .create_federation_relationship(pb::CreateFederationRelationshipRequest {
                    relationship: Some(r.clone()),
                })
                .await
        } else {
            client
                .update_federation_relationship(pb::UpdateFederationRelationshipRequest {
                    relationship: Some(r.clone()),
                })
                .await
        };
        match answer {
            Ok(done) => results.push(Ok(done.into_inner())),
            Err(e) if e.code() == tonic::Code::Unavailable => return Err(e.into()),
            Err(e) => {
                failed.push((r, e.clone()));
                results.push(Err(e));
            }
        }
    }
    let verb = if create { "create" } else { "update" };
    if a.out.json() {
        types::print(&BatchFederationRelationshipResponse {
            results: results
                .iter()
                .map(|r| match r {
                    Ok(done) => BatchResult {
                        federation_relationship: Some(FederationRelationship::from(done)),
                        status: Status::ok(),
                    },
                    Err(e) => BatchResult {
                        federation_relationship: None,
                        status: Status {
                            code: e.code() as i32,
                            message: e.message().to_owned(),
                        },
                    },
                })
                .collect(),
        });
    } else {
        let mut stdout = io::stdout().lock();
        for done in results.iter().flatten() {
            writeln!(stdout)?;
            write_relationship(&mut stdout, done)?;
        }
        let mut stderr = io::stderr().lock();
        for (r, e) in &failed {
            writeln!(stdout)?;
            writeln!(
                stderr,
                "Failed to {verb} the following federation relationship (code: {:?}, msg: {:?}):",
                e.code(),
                e.message()
            )?;
            write_relationship(&mut stderr, r)?;
        }
    }
    if !failed.is_empty() {
        return fail(format!(
            "failed to {verb} one or more federation relationships"
        ));
    }
    Ok(())
}

async fn delete(a: IdArgs) -> CliResult {
    if a.id.is_empty() {
        return fail("id is required");
    }
    let td = parse_id(&a.id)?;
    let mut client = connect(&a.out.socket_path).await?;
    let answer = client
        .delete_federation_relationship(pb::DeleteFederationRelationshipRequest {
            trust_domain: td.to_string(),
        })
        .await;
    let status = match &answer {
        Ok(_) => Status::ok(),
        Err(e) if e.code() == tonic::Code::Unavailable => return Err(e.clone().into()),
        Err(e) => Status {
            code: e.code() as i32,
            message: e.message().to_owned(),
        },
    };
    if a.out.json() {
        types::print(&BatchDeleteFederationRelationshipResponse {
            results: vec![DeleteResult {
                status,
                trust_domain: td.to_string(),
            }],
        });
        return answer.map(|_| ()).map_err(Into::into);
    }
    match answer {
        Ok(_) => {
            println!("federation relationship deleted.");
            Ok(())
        }
        Err(e) => fail(format!(
            "failed to delete federation relationship {:?}: {}",
            td.as_str(),
            e.message()
        )),
    }
}

async fn list(a: ListArgs) -> CliResult {
    let mut client = connect(&a.out.socket_path).await?;
    let relationships = client
        .list_federation_relationships(pb::ListFederationRelationshipsRequest {})
        .await
        .map_err(|e| {
            CliError(format!(
                "error listing federation relationship: {}",
                e.message()
            ))
        })?
        .into_inner()
        .relationships;
    if a.out.json() {
        types::print(&ListFederationRelationshipsResponse {
            federation_relationships: relationships
                .iter()
                .map(FederationRelationship::from)
                .collect(),
            next_page_token: String::new(),
        });
        return Ok(());
    }
    let mut out = io::stdout().lock();
    let noun = if relationships.len() == 1 {
        "relationship"
    } else {
        "relationships"
    };
    writeln!(out, "Found {} federation {noun}", relationships.len())?;
    for r in &relationships {
        writeln!(out)?;
        write_relationship(&mut out, r)?;
    }
    Ok(())
}

async fn show(a: ShowArgs) -> CliResult {
    if a.trust_domain.is_empty() {
        return fail("a trust domain name is required");
    }
    let mut client = connect(&a.out.socket_path).await?;
    let shown = client
        .get_federation_relationship(pb::GetFederationRelationshipRequest {
            trust_domain: a.trust_domain.clone(),
        })
        .await
        .map_err(|e| {
            CliError(format!(
                "error showing federation relationship: {}",
                e.message()
            ))
        })?
        .into_inner();
    let relationship = shown
        .relationship
        .ok_or_else(|| CliError("the server returned no relationship".into()))?;
    if a.out.json() {
        types::print(&FederationRelationship::from(&relationship));
        return Ok(());
    }
    let mut out = io::stdout().lock();
    writeln!(
        out,
        "Found a federation relationship with trust domain {}:\n",
        a.trust_domain
    )?;
    write_relationship(&mut out, &relationship)?;
    write_status(&mut out, shown.status.as_ref())?;
    Ok(())
}

async fn refresh(a: IdArgs) -> CliResult {
    if a.id.is_empty() {
        return fail("id is required");
    }
    let td = parse_id(&a.id)?;
    let mut client = connect(&a.out.socket_path).await?;
    let done = client
        .refresh_federated_bundle(pb::RefreshFederatedBundleRequest {
            trust_domain: td.to_string(),
        })
        .await
        .map_err(|e| match e.code() {
            tonic::Code::NotFound => CliError(format!(
                "there is no federation relationship with trust domain {:?}",
                a.id
            )),
            tonic::Code::Unavailable => e.into(),
            _ => CliError(e.message().to_owned()),
        })?
        .into_inner();
    if a.out.json() {
        types::print(&Status::ok());
        return Ok(());
    }
    let mut out = io::stdout().lock();
    writeln!(out, "Bundle refreshed")?;
    let change = if done.updated { "updated" } else { "unchanged" };
    writeln!(out, "Bundle                    : {change}")?;
    write_status(&mut out, done.status.as_ref())?;
    Ok(())
}
