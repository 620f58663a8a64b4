//! `entry show`: the filter flags (shared with `entry count`), paging through `ListEntries`,
//! and the sink that writes entries out as they arrive.
//!
//! One job: listing any number of entries in bounded memory, one page fetched and written
//! (SPIRE's text, or its `ListEntriesResponse` JSON) before the next, through one buffered,
//! locked stdout.

use std::io::{self, BufWriter, Write};

use sigil_proto::TrustDomain;
use sigil_proto::sigil::admin::v1 as admin;
use sigil_proto::sigil::common::v1 as pb;

use crate::cli::client::{CliError, CliResult, connect, fail};
use crate::cli::entry::FilterArgs;
use crate::cli::entry::fields::{parse_selector, parse_spiffe_id, parse_spiffe_id_or_template};
use crate::cli::output::write_entry;
use crate::cli::types::entry::ListEntriesWriter;

impl FilterArgs {
    pub(super) fn to_filter(&self) -> Result<admin::EntryFilter, CliError> {
        let mode = |flag: &str| match flag {
            "exact" => admin::SelectorMatch::Exact,
            "subset" => admin::SelectorMatch::Subset,
            "any" => admin::SelectorMatch::Any,
            _ => admin::SelectorMatch::Superset,
        };
        Ok(admin::EntryFilter {
            by_spiffe_id: self
                .spiffe_id
                .as_deref()
                .map(|s| parse_spiffe_id_or_template("spiffeID", s))
                .transpose()?
                .unwrap_or_default(),
            by_parent_id: self
                .parent_id
                .as_deref()
                .map(|s| parse_spiffe_id("parentID", s))
                .transpose()?
                .unwrap_or_default(),
            by_selectors: self
                .selector
                .iter()
                .map(|s| parse_selector(s))
                .collect::<Result<_, _>>()?,
            selector_match: mode(&self.match_selectors_on) as i32,
            by_hint: self.hint.clone().unwrap_or_default(),
            by_federates_with: self
                .federates_with
                .iter()
                .map(|td| {
                    TrustDomain::new(td)
                        .map(|td| td.as_str().to_owned())
                        .map_err(|e| CliError(format!("invalid -federatesWith {td:?}: {e}")))
                })
                .collect::<Result<_, _>>()?,
            federates_with_match: mode(&self.match_federates_with_on) as i32,
            // SPIRE's CLI always sends it: without -downstream, downstream entries are left
            // out.
            by_downstream: Some(self.downstream.unwrap_or(false)),
        })
    }
}

pub(super) async fn show(a: FilterArgs) -> CliResult {
    if a.entry_id.is_some()
        && (a.parent_id.is_some() || a.spiffe_id.is_some() || !a.selector.is_empty())
    {
        return fail("the -entryID flag can't be combined with others");
    }
    let filter = a.to_filter()?;
    let mut client = connect(&a.out.socket_path).await?;
    // One buffered, locked stdout: a million entries are ~10 million lines, and stdout's own
    // line buffering would make each one a write(2).
    let stdout = io::stdout();
    let out = BufWriter::new(stdout.lock());
    if let Some(id) = &a.entry_id {
        let entry = client
            .get_entry(admin::GetEntryRequest { id: id.clone() })
            .await
            .map_err(|s| {
                CliError(format!(
                    "error fetching entry ID {id}: {}",
                    CliError::from(s)
                ))
            })?;
        let mut sink = EntrySink::new(out, a.out.json(), 1)?;
        sink.push(&entry.into_inner())?;
        return sink.finish();
    }
    let mut sink = if a.out.json() {
        EntrySink::new(out, true, 0)?
    } else {
        // SPIRE's `Found N entries` comes first, but entries are written as they arrive:
        // the count is asked for first (an entry created in between is listed, not counted).
        let n = client
            .count_entries(admin::CountEntriesRequest {
                filter: Some(filter.clone()),
            })
            .await?
            .into_inner()
            .count;
        EntrySink::new(out, false, n)?
    };
    let mut page_token = String::new();
    // Page by page, each written out before the next is fetched: memory stays one page
    // whatever the number of entries.
    loop {
        let page = client
            .list_entries(admin::ListEntriesRequest {
                filter: Some(filter.clone()),
                page_size: SHOW_PAGE_SIZE,
                page_token,
            })
            .await?
            .into_inner();
        for e in &page.entries {
            sink.push(e)?;
        }
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    sink.finish()
}

/// Entries asked for per `ListEntries` call by `entry show` (the server's largest page).
const SHOW_PAGE_SIZE: u32 = 1000;

/// Where `entry show` writes entries as they arrive.
enum EntrySink<W: Write> {
    Text(W),
    Json(ListEntriesWriter<W>),
}

impl<W: Write> EntrySink<W> {
    /// A JSON sink, or a text one that starts with SPIRE's `Found <count> entries` line.
    fn new(mut out: W, json: bool, count: u64) -> Result<Self, CliError> {
        if json {
            return Ok(Self::Json(ListEntriesWriter::new(out)));
        }
        let noun = if count == 1 { "entry" } else { "entries" };
        writeln!(out, "Found {count} {noun}")?;
        Ok(Self::Text(out))
    }

    fn push(&mut self, e: &pb::RegistrationEntry) -> Result<(), CliError> {
        match self {
            Self::Text(out) => write_entry(out, e)?,
            Self::Json(out) => out.push(e)?,
        }
        Ok(())
    }

    fn finish(self) -> CliResult {
        match self {
            Self::Text(mut out) => out.flush()?,
            Self::Json(out) => {
                out.finish()?;
            }
        }
        Ok(())
    }
}
