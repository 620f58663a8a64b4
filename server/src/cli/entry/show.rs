//! `entry show`: the filter flags (shared with `entry count`), paging through `ListEntries`,
//! and the sink that writes entries out as they arrive.
//!
//! One job: listing any number of entries in bounded memory, one page fetched and written
//! (text or one JSON array) before the next, through one buffered, locked stdout.

use std::io::{self, BufWriter, Write};

use sigil_proto::sigil::admin::v1 as admin;
use sigil_proto::sigil::common::v1 as pb;

use crate::cli::client::{CliError, CliResult, connect};
use crate::cli::entry::FilterArgs;
use crate::cli::entry::fields::{parse_selector, parse_spiffe_id, parse_spiffe_id_or_template};
use crate::cli::output::{JsonArrayWriter, entry_json, write_entry};

impl FilterArgs {
    pub(super) fn to_filter(&self) -> Result<admin::EntryFilter, CliError> {
        let selector_match = match self.match_selectors_on.as_str() {
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
            selector_match: selector_match as i32,
            by_hint: self.hint.clone().unwrap_or_default(),
        })
    }
}

pub(super) async fn show(a: FilterArgs) -> CliResult {
    let mut client = connect(&a.out.socket_path).await?;
    // One buffered, locked stdout: a million entries are ~10 million lines, and stdout's own
    // line buffering would make each one a write(2).
    let stdout = io::stdout();
    let out = BufWriter::new(stdout.lock());
    let mut sink = if a.out.json() {
        EntrySink::Json(JsonArrayWriter::new(out))
    } else {
        EntrySink::Text(out)
    };
    if let Some(id) = &a.entry_id {
        let entry = client
            .get_entry(admin::GetEntryRequest { id: id.clone() })
            .await?
            .into_inner();
        sink.push(&entry)?;
        return sink.finish();
    }
    let filter = a.to_filter()?;
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
    Json(JsonArrayWriter<W>),
}

impl<W: Write> EntrySink<W> {
    fn push(&mut self, e: &pb::RegistrationEntry) -> Result<(), CliError> {
        match self {
            Self::Text(out) => write_entry(out, e)?,
            Self::Json(out) => out.push(&entry_json(e))?,
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
