//! `sigil-server entry create|show|update|delete|count`: the commands, their flags, and the
//! calls to the admin API.
//!
//! - [`fields`]: the entry's fields as flags, parsed and checked into the proto entry.
//! - [`file`](mod@file): the `-data` / `-file` JSON files, in SPIRE's shapes.
//! - [`show`]: `entry show`'s filter, paging and output.
//!
//! `entry update` replaces the whole entry, as SPIRE's does; `-partial` (Sigil's) changes
//! just the fields given.

mod fields;
mod file;
mod show;

use std::path::PathBuf;

use clap::{Args, Subcommand};
use sigil_proto::sigil::admin::v1 as admin;
use sigil_proto::sigil::common::v1 as pb;

use super::OutputArgs;
use super::client::{CliResult, connect, fail};
use super::output::{print_count, print_entry};
use super::types::{self, entry::BatchDeleteEntryResponse, entry::BatchEntryResponse};
use fields::{EntryFields, validate};
use file::{file_entries, file_ids};

pub(super) use fields::parse_selector;

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
    /// A custom ID for this registration entry (default: a new one is generated).
    #[arg(long = "entryID")]
    entry_id: Option<String>,
    /// A JSON file of entries, or `-` for stdin: `{"entries": [...]}` as SPIRE's `-data`
    /// files and `entry show -output json` (SPIRE's or Sigil's) write it.
    #[arg(long = "data")]
    data: Option<PathBuf>,
    #[command(flatten)]
    out: OutputArgs,
}

#[derive(Args, Debug)]
pub(super) struct FilterArgs {
    /// The entry ID of the record to show (alone: no other filter with it).
    #[arg(long = "entryID")]
    entry_id: Option<String>,
    /// The SPIFFE ID (or identity template) of the records to show.
    #[arg(long = "spiffeID")]
    spiffe_id: Option<String>,
    /// The parent ID of the records to show.
    #[arg(long = "parentID")]
    parent_id: Option<String>,
    /// A selector `type:value` the records must have (see -matchSelectorsOn); repeat for
    /// several.
    #[arg(long = "selector")]
    selector: Vec<String>,
    /// How the entries' selectors must relate to `-selector`: exact, subset, superset or any.
    #[arg(long = "matchSelectorsOn", default_value = "superset",
          value_parser = ["exact", "subset", "superset", "any"])]
    match_selectors_on: String,
    /// The hint of the records to show.
    #[arg(long = "hint")]
    hint: Option<String>,
    /// A trust domain (name or SPIFFE ID) the records federate with (see
    /// -matchFederatesWithOn); repeat for several.
    #[arg(long = "federatesWith")]
    federates_with: Vec<String>,
    /// How the entries' trust domains must relate to `-federatesWith`: exact, subset,
    /// superset or any.
    #[arg(long = "matchFederatesWithOn", default_value = "superset",
          value_parser = ["exact", "subset", "superset", "any"])]
    match_federates_with_on: String,
    /// Only downstream entries (without it, only the others, as SPIRE filters).
    #[arg(long = "downstream", num_args = 0..=1, default_missing_value = "true")]
    downstream: Option<bool>,
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
    /// The registration entry ID of the record to update.
    #[arg(long = "entryID")]
    entry_id: Option<String>,
    #[command(flatten)]
    fields: EntryFields,
    /// A JSON file of whole entries, each with its `id`, or `-` for stdin (as `create
    /// -data` reads).
    #[arg(long = "data")]
    data: Option<PathBuf>,
    /// Sigil only: change just the fields given and keep the rest of the entry. Without it,
    /// as in SPIRE, the entry is replaced by the one the flags describe and -parentID (or
    /// -node), -spiffeID and -selector are required.
    #[arg(long = "partial")]
    partial: bool,
    #[command(flatten)]
    out: OutputArgs,
}

#[derive(Args, Debug)]
pub(super) struct DeleteArgs {
    /// The registration entry ID of the record to delete.
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
        types::print(&BatchEntryResponse::ok(&created));
    } else {
        created.iter().for_each(print_entry);
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
    print_count(&a.out, n, "registration entry", "registration entries");
    Ok(())
}

async fn update(a: UpdateArgs) -> CliResult {
    let entries = match (&a.data, &a.entry_id) {
        (Some(path), None) if !a.fields.any_set() && !a.partial => {
            let entries = file_entries(path)?;
            if entries.iter().any(|e| e.id.is_empty()) {
                return fail(format!(
                    "{}: every entry to update needs its \"id\"",
                    path.display()
                ));
            }
            entries
        }
        (Some(_), _) => {
            return fail("-data cannot be combined with -entryID, entry flags or -partial");
        }
        (None, None) => return fail("entry ID is required (-entryID, or -data)"),
        (None, Some(id)) if a.partial => {
            let mut client = connect(&a.out.socket_path).await?;
            let mut e = client
                .get_entry(admin::GetEntryRequest { id: id.clone() })
                .await?
                .into_inner();
            a.fields.apply(&mut e)?;
            validate(&e)?;
            return send_update(&a, vec![e]).await;
        }
        (None, Some(id)) => {
            // SPIRE's `entry update`: the flags describe the whole entry, which replaces it.
            a.fields.check_whole_entry()?;
            let mut e = pb::RegistrationEntry {
                id: id.clone(),
                ..Default::default()
            };
            a.fields.apply(&mut e)?;
            validate(&e)?;
            vec![e]
        }
    };
    send_update(&a, entries).await
}

async fn send_update(a: &UpdateArgs, entries: Vec<pb::RegistrationEntry>) -> CliResult {
    let mut client = connect(&a.out.socket_path).await?;
    let updated = client
        .batch_update_entry(admin::BatchUpdateEntryRequest { entries })
        .await?
        .into_inner()
        .entries;
    if a.out.json() {
        types::print(&BatchEntryResponse::ok(&updated));
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
        types::print(&BatchDeleteEntryResponse::ok(deleted));
    } else {
        // SPIRE's lines, blank lines and summary (without a final newline).
        for id in &deleted {
            println!("Deleted entry with ID: {id}");
        }
        if !deleted.is_empty() {
            print!("\n\n");
        }
        print!("Deleted {} entries successfully", deleted.len());
    }
    Ok(())
}
