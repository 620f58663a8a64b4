//! `sigil-server entry create|show|update|delete|count`: the commands, their flags, and the
//! calls to the admin API.
//!
//! - [`fields`]: the entry's fields as flags, parsed and checked into the proto entry.
//! - [`file`](mod@file): the `-data` / `-file` JSON files, in SPIRE's shapes.
//! - [`show`]: `entry show`'s filter, paging and output.

mod fields;
mod file;
mod show;

use std::path::PathBuf;

use clap::{Args, Subcommand};
use sigil_proto::sigil::admin::v1 as admin;
use sigil_proto::sigil::common::v1 as pb;

use super::OutputArgs;
use super::client::{CliResult, connect, fail};
use super::output::{entry_json, print_entry, print_json};
use fields::{EntryFields, validate};
use file::{file_entries, file_ids};

#[derive(Subcommand, Debug)]
pub(super) enum EntryCommand {
    /// Creates registration entries.
    Create(CreateArgs),
    /// Displays registration entries.
    Show(ShowArgs),
    /// Updates a registration entry.
    Update(UpdateArgs),
    /// Deletes registration entries.
    Delete(DeleteArgs),
    /// Counts registration entries.
    Count(FilterArgs),
}

#[derive(Args, Debug)]
pub(super) struct CreateArgs {
    #[command(flatten)]
    fields: EntryFields,
    /// A chosen entry ID (default: generated).
    #[arg(long = "entryID")]
    entry_id: Option<String>,
    /// A JSON file of entries (`{"entries": [...]}` as SPIRE writes it), or `-` for stdin.
    #[arg(long = "data")]
    data: Option<PathBuf>,
    #[command(flatten)]
    out: OutputArgs,
}

#[derive(Args, Debug)]
pub(super) struct FilterArgs {
    #[arg(long = "entryID")]
    entry_id: Option<String>,
    #[arg(long = "spiffeID")]
    spiffe_id: Option<String>,
    #[arg(long = "parentID")]
    parent_id: Option<String>,
    #[arg(long = "selector")]
    selector: Vec<String>,
    /// How the entries' selectors must relate to `-selector`: exact, subset, superset or any.
    #[arg(long = "matchSelectorsOn", default_value = "superset",
          value_parser = ["exact", "subset", "superset", "any"])]
    match_selectors_on: String,
    #[arg(long = "hint")]
    hint: Option<String>,
    #[command(flatten)]
    out: OutputArgs,
}

#[derive(Args, Debug)]
pub(super) struct ShowArgs {
    #[command(flatten)]
    filter: FilterArgs,
}

#[derive(Args, Debug)]
pub(super) struct UpdateArgs {
    /// The entry to update.
    #[arg(long = "entryID")]
    entry_id: Option<String>,
    #[command(flatten)]
    fields: EntryFields,
    /// A JSON file of full entries (with `id`), or `-` for stdin.
    #[arg(long = "data")]
    data: Option<PathBuf>,
    #[command(flatten)]
    out: OutputArgs,
}

#[derive(Args, Debug)]
pub(super) struct DeleteArgs {
    /// The entry to delete.
    #[arg(long = "entryID")]
    entry_id: Option<String>,
    /// A JSON file `{"ids": [...]}` (or `{"entries":[{"id":...}]}`), or `-` for stdin.
    #[arg(long = "file")]
    file: Option<PathBuf>,
    #[command(flatten)]
    out: OutputArgs,
}

pub(super) async fn execute(command: EntryCommand) -> CliResult {
    match command {
        EntryCommand::Create(a) => create(a).await,
        EntryCommand::Show(a) => show::show(a.filter).await,
        EntryCommand::Update(a) => update(a).await,
        EntryCommand::Delete(a) => delete(a).await,
        EntryCommand::Count(a) => count(a).await,
    }
}

async fn create(a: CreateArgs) -> CliResult {
    let entries = match &a.data {
        Some(path) => {
            if a.fields.any_set() {
                return fail("-data cannot be combined with entry flags");
            }
            file_entries(path)?
        }
        None => {
            let mut e = pb::RegistrationEntry {
                id: a.entry_id.clone().unwrap_or_default(),
                ..Default::default()
            };
            a.fields.apply(&mut e)?;
            validate(&e)?;
            vec![e]
        }
    };
    let mut client = connect(&a.out.socket_path).await?;
    let created = client
        .batch_create_entry(admin::BatchCreateEntryRequest { entries })
        .await?
        .into_inner()
        .entries;
    if a.out.json() {
        print_json(&serde_json::Value::Array(
            created.iter().map(entry_json).collect(),
        ));
    } else {
        for e in &created {
            print_entry(e);
        }
    }
    Ok(())
}

async fn count(a: FilterArgs) -> CliResult {
    let mut client = connect(&a.out.socket_path).await?;
    let n = client
        .count_entries(admin::CountEntriesRequest {
            filter: Some(a.to_filter()?),
        })
        .await?
        .into_inner()
        .count;
    if a.out.json() {
        print_json(&serde_json::json!({ "count": n }));
    } else {
        println!("{n} registration entr{}", if n == 1 { "y" } else { "ies" });
    }
    Ok(())
}

async fn update(a: UpdateArgs) -> CliResult {
    let mut client = connect(&a.out.socket_path).await?;
    let entries = match (&a.data, &a.entry_id) {
        (Some(path), None) => {
            let entries = file_entries(path)?;
            if entries.iter().any(|e| e.id.is_empty()) {
                return fail(format!(
                    "{}: every entry to update needs its \"id\"",
                    path.display()
                ));
            }
            entries
        }
        (None, Some(id)) => {
            let mut e = client
                .get_entry(admin::GetEntryRequest { id: id.clone() })
                .await?
                .into_inner();
            a.fields.apply(&mut e)?;
            validate(&e)?;
            vec![e]
        }
        _ => return fail("give either -entryID (with the fields to change) or -data"),
    };
    let updated = client
        .batch_update_entry(admin::BatchUpdateEntryRequest { entries })
        .await?
        .into_inner()
        .entries;
    if a.out.json() {
        print_json(&serde_json::Value::Array(
            updated.iter().map(entry_json).collect(),
        ));
    } else {
        updated.iter().for_each(print_entry);
    }
    Ok(())
}

async fn delete(a: DeleteArgs) -> CliResult {
    let ids = match (&a.file, &a.entry_id) {
        (Some(path), None) => file_ids(path)?,
        (None, Some(id)) => vec![id.clone()],
        _ => return fail("give either -entryID or -file"),
    };
    let mut client = connect(&a.out.socket_path).await?;
    let deleted = client
        .batch_delete_entry(admin::BatchDeleteEntryRequest { ids })
        .await?
        .into_inner()
        .ids;
    if a.out.json() {
        print_json(&serde_json::json!({ "deleted": deleted }));
    } else {
        for id in deleted {
            println!("Deleted entry with ID: {id}");
        }
    }
    Ok(())
}
