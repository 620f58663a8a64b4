//! `sigil-server entry create|show|update|delete|count`.

use std::io::{self, BufWriter, Write};
use std::path::PathBuf;

use clap::{Args, Subcommand};
use serde::Deserialize;
use sigil_proto::sigil::admin::v1 as admin;
use sigil_proto::sigil::common::v1 as pb;
use sigil_proto::{IdTemplate, RegistrationEntry, Selector, SpiffeId, TrustDomain, convert};

use super::OutputArgs;
use super::client::{CliError, CliResult, connect, fail};
use super::output::{JsonArrayWriter, entry_json, print_entry, print_json, write_entry};

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

/// The fields of an entry, as SPIRE's flags name them.
#[derive(Args, Debug, Default)]
pub(super) struct EntryFields {
    /// The SPIFFE ID the entry issues.
    #[arg(long = "spiffeID")]
    spiffe_id: Option<String>,
    /// The SPIFFE ID of the agent (or node alias, or workload) the entry is issued under.
    #[arg(long = "parentID")]
    parent_id: Option<String>,
    /// A selector `type:value`; repeat for several.
    #[arg(long = "selector")]
    selector: Vec<String>,
    /// X.509-SVID TTL in seconds (or a duration such as `1h`).
    #[arg(long = "x509SVIDTTL")]
    x509_svid_ttl: Option<String>,
    /// JWT-SVID TTL in seconds (or a duration such as `5m`).
    #[arg(long = "jwtSVIDTTL")]
    jwt_svid_ttl: Option<String>,
    /// A DNS name added to the X.509-SVID; repeat for several.
    #[arg(long = "dns")]
    dns: Vec<String>,
    /// A trust domain whose bundle workloads of this entry receive; repeat for several.
    #[arg(long = "federatesWith")]
    federates_with: Vec<String>,
    /// SPIRE's admin entry: not supported, refused (only `-admin=false` is accepted).
    #[arg(long = "admin", num_args = 0..=1, default_missing_value = "true")]
    admin: Option<bool>,
    /// SPIRE's downstream entry: not supported, refused (only `-downstream=false` is
    /// accepted).
    #[arg(long = "downstream", num_args = 0..=1, default_missing_value = "true")]
    downstream: Option<bool>,
    /// A hint passed to workloads to tell identities apart.
    #[arg(long = "hint")]
    hint: Option<String>,
    /// Expiry of the entry as Unix seconds.
    #[arg(long = "entryExpiry")]
    entry_expiry: Option<i64>,
    /// Parent is the server itself: a node alias entry (SPIRE's `-node`).
    #[arg(long = "node", num_args = 0..=1, default_missing_value = "true")]
    node: Option<bool>,
    /// `-spiffeID` is an identity template such as `spiffe://example.org/ns/{k8s:ns}/sa/{k8s:sa}`:
    /// each `{type:key}` segment takes the value of the workload's selector `type:key:<value>`.
    #[arg(long = "template", num_args = 0..=1, default_missing_value = "true")]
    template: Option<bool>,
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
        EntryCommand::Show(a) => show(a.filter).await,
        EntryCommand::Update(a) => update(a).await,
        EntryCommand::Delete(a) => delete(a).await,
        EntryCommand::Count(a) => count(a).await,
    }
}

/// Parses a TTL flag: whole seconds as SPIRE writes them, or a duration (`1h`); 0 (the
/// server's default) or at least the minimum SVID TTL.
fn parse_ttl(flag: &str, value: &str) -> Result<i32, CliError> {
    let seconds = match value.parse::<i64>() {
        Ok(s) => s,
        Err(_) => humantime::parse_duration(value)
            .map(|d| d.as_secs() as i64)
            .map_err(|_| {
                CliError(format!(
                    "invalid -{flag} {value:?}: expected seconds or a duration such as 1h"
                ))
            })?,
    };
    let seconds = i32::try_from(seconds)
        .ok()
        .filter(|s| *s >= 0)
        .ok_or_else(|| CliError(format!("invalid -{flag} {value:?}: out of range")))?;
    crate::ca::config::check_svid_ttl(seconds as u64)
        .map_err(|m| CliError(format!("invalid -{flag} {value:?}: {m}")))?;
    Ok(seconds)
}

fn parse_selector(s: &str) -> Result<pb::Selector, CliError> {
    let sel = Selector::new(s).map_err(|e| CliError(format!("invalid -selector: {e}")))?;
    Ok(pb::Selector::from(&sel))
}

fn parse_template(flag: &str, s: &str) -> Result<String, CliError> {
    IdTemplate::new(s)
        .map(|t| t.to_string())
        .map_err(|e| CliError(format!("invalid -{flag} template {s:?}: {e}")))
}

/// A filter's `-spiffeID`: a SPIFFE ID or a template's text.
fn parse_spiffe_id_or_template(flag: &str, s: &str) -> Result<String, CliError> {
    parse_spiffe_id(flag, s).or_else(|err| parse_template(flag, s).map_err(|_| err))
}

fn parse_spiffe_id(flag: &str, s: &str) -> Result<String, CliError> {
    SpiffeId::new(s)
        .map(|id| id.to_string())
        .map_err(|e| CliError(format!("invalid -{flag} {s:?}: {e}")))
}

impl EntryFields {
    /// Applies every flag that was given to `e`.
    fn apply(&self, e: &mut pb::RegistrationEntry) -> Result<(), CliError> {
        for (flag, given) in [("admin", self.admin), ("downstream", self.downstream)] {
            if given == Some(true) {
                return fail(format!(
                    "-{flag} is not supported: Sigil does not implement {flag} entries yet, and \
                     a security flag is never accepted and ignored; nothing was written"
                ));
            }
        }
        if let Some(t) = self.template {
            e.template = t;
        }
        if let Some(id) = &self.spiffe_id {
            e.spiffe_id = if e.template {
                parse_template("spiffeID", id)?
            } else {
                parse_spiffe_id("spiffeID", id)?
            };
        }
        if self.node == Some(true) {
            if e.template {
                return fail("a template entry cannot be a node entry (-node)");
            }
            if self.parent_id.is_some() {
                return fail("-node and -parentID are mutually exclusive");
            }
            let id = parse_spiffe_id("spiffeID", &e.spiffe_id)?;
            let td = SpiffeId::new(&id).map_err(|e| CliError(e.to_string()))?;
            e.parent_id = td.trust_domain().server_id().to_string();
        }
        if let Some(p) = &self.parent_id {
            e.parent_id = parse_spiffe_id("parentID", p)?;
        }
        if !self.selector.is_empty() {
            e.selectors = self
                .selector
                .iter()
                .map(|s| parse_selector(s))
                .collect::<Result<_, _>>()?;
        }
        if let Some(t) = &self.x509_svid_ttl {
            e.x509_svid_ttl = parse_ttl("x509SVIDTTL", t)?;
        }
        if let Some(t) = &self.jwt_svid_ttl {
            e.jwt_svid_ttl = parse_ttl("jwtSVIDTTL", t)?;
        }
        if !self.dns.is_empty() {
            e.dns_names = self.dns.clone();
        }
        if !self.federates_with.is_empty() {
            e.federates_with = self
                .federates_with
                .iter()
                .map(|td| {
                    TrustDomain::new(td)
                        .map(|t| t.to_string())
                        .map_err(|err| CliError(format!("invalid -federatesWith {td:?}: {err}")))
                })
                .collect::<Result<_, _>>()?;
        }
        if let Some(a) = self.admin {
            e.admin = a;
        }
        if let Some(d) = self.downstream {
            e.downstream = d;
        }
        if let Some(h) = &self.hint {
            e.hint = h.clone();
        }
        if let Some(x) = self.entry_expiry {
            e.expires_at = x;
        }
        Ok(())
    }

    fn any_set(&self) -> bool {
        self.spiffe_id.is_some()
            || self.parent_id.is_some()
            || !self.selector.is_empty()
            || self.node.is_some()
            || self.template.is_some()
    }
}

/// Checks an entry locally so a typo fails before anything is sent, with the server's own
/// validation rules (the server checks again).
fn validate(e: &pb::RegistrationEntry) -> Result<(), CliError> {
    if e.spiffe_id.is_empty() {
        return fail("a SPIFFE ID is required (-spiffeID)");
    }
    if e.parent_id.is_empty() {
        return fail("a parent ID is required (-parentID or -node)");
    }
    if e.selectors.is_empty() {
        return fail("at least one selector is required (-selector type:value)");
    }
    for (field, ttl) in [
        ("x509_svid_ttl", e.x509_svid_ttl),
        ("jwt_svid_ttl", e.jwt_svid_ttl),
    ] {
        // Negative values are refused by the conversion below.
        if let Ok(ttl) = u64::try_from(ttl) {
            crate::ca::config::check_svid_ttl(ttl)
                .map_err(|m| CliError(format!("{field}: {m}")))?;
        }
    }
    convert::check_supported(e)
        .and_then(|()| RegistrationEntry::try_from(e))
        .map(|_| ())
        .map_err(|err| CliError(err.to_string()))
}

/// One entry of a `-data` file. SPIRE writes IDs as strings; its newer API types write
/// `{"trust_domain": "...", "path": "..."}` objects: both are accepted.
#[derive(Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
struct FileEntry {
    id: String,
    entry_id: String,
    spiffe_id: FileId,
    parent_id: FileId,
    selectors: Vec<FileSelector>,
    x509_svid_ttl: i32,
    jwt_svid_ttl: i32,
    ttl: i32,
    dns_names: Vec<String>,
    federates_with: Vec<String>,
    admin: bool,
    downstream: bool,
    hint: String,
    entry_expiry: i64,
    expires_at: i64,
    template: bool,
}

#[derive(Deserialize, Default)]
#[serde(untagged)]
enum FileId {
    #[default]
    None,
    Text(String),
    Parts {
        trust_domain: String,
        path: String,
    },
}

impl FileId {
    fn render(&self) -> String {
        match self {
            Self::None => String::new(),
            Self::Text(s) => s.clone(),
            Self::Parts { trust_domain, path } => format!("spiffe://{trust_domain}{path}"),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileSelector {
    r#type: String,
    value: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EntryFile {
    #[serde(default)]
    entries: Vec<FileEntry>,
    #[serde(default)]
    ids: Vec<String>,
}

fn read_data(path: &PathBuf) -> Result<EntryFile, CliError> {
    let text = if path.as_os_str() == "-" {
        std::io::read_to_string(std::io::stdin())?
    } else {
        std::fs::read_to_string(path)
            .map_err(|e| CliError(format!("cannot read {}: {e}", path.display())))?
    };
    serde_json::from_str(&text)
        .map_err(|e| CliError(format!("{}: invalid JSON: {e}", path.display())))
}

fn file_entries(path: &PathBuf) -> Result<Vec<pb::RegistrationEntry>, CliError> {
    let file = read_data(path)?;
    if file.entries.is_empty() {
        return fail(format!("{}: no entries", path.display()));
    }
    file.entries
        .into_iter()
        .enumerate()
        .map(|(i, f)| {
            let e = pb::RegistrationEntry {
                id: if f.id.is_empty() { f.entry_id } else { f.id },
                spiffe_id: f.spiffe_id.render(),
                parent_id: f.parent_id.render(),
                selectors: f
                    .selectors
                    .into_iter()
                    .map(|s| pb::Selector {
                        r#type: s.r#type,
                        value: s.value,
                    })
                    .collect(),
                x509_svid_ttl: if f.x509_svid_ttl != 0 {
                    f.x509_svid_ttl
                } else {
                    f.ttl
                },
                jwt_svid_ttl: f.jwt_svid_ttl,
                dns_names: f.dns_names,
                federates_with: f.federates_with,
                admin: f.admin,
                downstream: f.downstream,
                hint: f.hint,
                expires_at: if f.expires_at != 0 {
                    f.expires_at
                } else {
                    f.entry_expiry
                },
                template: f.template,
                ..Default::default()
            };
            validate(&e).map_err(|err| CliError(format!("{} entry {i}: {err}", path.display())))?;
            Ok(e)
        })
        .collect()
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

impl FilterArgs {
    fn to_filter(&self) -> Result<admin::EntryFilter, CliError> {
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

async fn show(a: FilterArgs) -> CliResult {
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
        (Some(path), None) => {
            let f = read_data(path)?;
            let mut ids = f.ids;
            ids.extend(
                f.entries
                    .into_iter()
                    .map(|e| if e.id.is_empty() { e.entry_id } else { e.id }),
            );
            if ids.is_empty() || ids.iter().any(String::is_empty) {
                return fail(format!("{}: no entry IDs", path.display()));
            }
            ids
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttl_accepts_seconds_and_durations() {
        assert_eq!(parse_ttl("x", "3600").unwrap(), 3600);
        assert_eq!(parse_ttl("x", "1h").unwrap(), 3600);
        assert_eq!(parse_ttl("x", "1h30m").unwrap(), 5400);
        assert!(parse_ttl("x", "-5").is_err());
        assert!(parse_ttl("x", "soon").is_err());
        // 0 is "the server's default"; below the floor is refused, naming it.
        assert_eq!(parse_ttl("x", "0").unwrap(), 0);
        assert_eq!(parse_ttl("x", "5s").unwrap(), 5);
        let err = parse_ttl("x509SVIDTTL", "1").unwrap_err().to_string();
        assert_eq!(
            err,
            "invalid -x509SVIDTTL \"1\": 1s is below the minimum SVID TTL of 5s"
        );
    }

    #[test]
    fn data_file_accepts_spire_shapes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("entries.json");
        std::fs::write(
            &path,
            r#"{"entries":[
              {"spiffe_id":"spiffe://example.org/a","parent_id":"spiffe://example.org/node",
               "selectors":[{"type":"unix","value":"uid:1000"}],"x509_svid_ttl":200,"admin":false},
              {"spiffe_id":{"trust_domain":"example.org","path":"/b"},
               "parent_id":{"trust_domain":"example.org","path":"/node"},
               "selectors":[{"type":"k8s","value":"ns:x"}],"dns_names":["b.example.org"]}
            ]}"#,
        )
        .unwrap();
        let entries = file_entries(&path).unwrap();
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[1].spiffe_id, "spiffe://example.org/b");
        assert_eq!(entries[0].x509_svid_ttl, 200);

        std::fs::write(&path, r#"{"entries":[{"spiffe_id":"spiffe://example.org/a","parent_id":"spiffe://example.org/n","selectors":[]}]}"#).unwrap();
        let err = file_entries(&path).unwrap_err().0;
        assert!(err.contains("entry 0") && err.contains("selector"), "{err}");
        std::fs::write(&path, r#"{"entries":[{"spifeID":"x"}]}"#).unwrap();
        assert!(file_entries(&path).unwrap_err().0.contains("invalid JSON"));
    }

    fn fields(args: &[&str]) -> EntryFields {
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            fields: EntryFields,
        }
        let argv = std::iter::once("x").chain(args.iter().copied());
        <Cli as clap::Parser>::try_parse_from(argv).unwrap().fields
    }

    fn built(args: &[&str]) -> Result<pb::RegistrationEntry, CliError> {
        let mut e = pb::RegistrationEntry::default();
        fields(args).apply(&mut e)?;
        validate(&e)?;
        Ok(e)
    }

    #[test]
    fn template_flag_takes_a_template_and_checks_it() {
        let tmpl = "spiffe://example.org/ns/{k8s:ns}/sa/{k8s:sa}";
        let e = built(&[
            "--template",
            "--spiffeID",
            tmpl,
            "--parentID",
            "spiffe://example.org/node",
            "--selector",
            "k8s:ns",
        ])
        .unwrap();
        assert!(e.template);
        assert_eq!(e.spiffe_id, tmpl);

        let bad = |args: &[&str]| built(args).unwrap_err().0;
        let p = [
            "--parentID",
            "spiffe://example.org/node",
            "--selector",
            "k8s:ns",
        ];
        let with = |extra: &[&'static str]| -> Vec<&'static str> {
            extra.iter().copied().chain(p).collect()
        };
        let err = bad(&with(&["--spiffeID", tmpl]));
        assert!(err.contains("-spiffeID"), "without -template: {err}");
        let err = bad(&with(&[
            "--template",
            "--spiffeID",
            "spiffe://example.org/ns-{k8s:ns}",
        ]));
        assert!(err.contains("whole segment"), "{err}");
        let err = bad(&[
            "--template",
            "--spiffeID",
            tmpl,
            "--node",
            "--selector",
            "k8s:ns",
        ]);
        assert!(err.contains("node"), "{err}");
        let err = bad(&with(&["--template", "--spiffeID", tmpl, "--downstream"]));
        assert!(err.contains("downstream"), "{err}");
    }

    /// Security flags Sigil does not implement are refused, never stored and ignored: on the
    /// command line and in a `-data` file; `false` (what every entry is) is accepted.
    #[test]
    fn admin_and_downstream_are_refused() {
        let base = [
            "--spiffeID",
            "spiffe://example.org/a",
            "--parentID",
            "spiffe://example.org/node",
            "--selector",
            "unix:uid:1",
        ];
        let with = |extra: &[&'static str]| -> Vec<&'static str> {
            base.iter().copied().chain(extra.iter().copied()).collect()
        };
        for (flag, arg) in [("admin", "--admin"), ("downstream", "--downstream")] {
            let err = built(&with(&[arg])).unwrap_err().0;
            assert!(err.contains(&format!("-{flag} is not supported")), "{err}");
        }
        let e = built(&with(&["--admin=false", "--downstream=false"])).unwrap();
        assert!(!e.admin && !e.downstream);

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("entries.json");
        for field in ["admin", "downstream"] {
            std::fs::write(
                &path,
                format!(
                    r#"{{"entries":[{{"spiffe_id":"spiffe://example.org/a","parent_id":"spiffe://example.org/n","selectors":[{{"type":"unix","value":"uid:1"}}],"{field}":true}}]}}"#
                ),
            )
            .unwrap();
            let err = file_entries(&path).unwrap_err().0;
            assert!(
                err.contains("entry 0")
                    && err.contains(&format!("{field} entries are not supported")),
                "{err}"
            );
        }
    }

    #[test]
    fn show_filter_accepts_a_template() {
        let tmpl = "spiffe://example.org/ns/{k8s:ns}";
        assert_eq!(parse_spiffe_id_or_template("spiffeID", tmpl).unwrap(), tmpl);
        assert!(parse_spiffe_id_or_template("spiffeID", "spiffe://example.org/a").is_ok());
        assert!(parse_spiffe_id_or_template("spiffeID", "nope").is_err());
    }
}
