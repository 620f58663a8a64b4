//! The JSON files `entry create|update -data` and `entry delete -file` read, in the shapes
//! SPIRE writes (`{"entries": [...]}`, `{"ids": [...]}`), from a path or stdin (`-`).
//!
//! One job: from a file to proto entries checked as the flags are ([`validate`]), or to the
//! entry IDs to delete; each error names the file and, for an entry, its index.

use std::path::PathBuf;

use serde::Deserialize;
use sigil_proto::sigil::common::v1 as pb;

use crate::cli::client::{CliError, fail};
use crate::cli::entry::fields::validate;

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

pub(super) fn file_entries(path: &PathBuf) -> Result<Vec<pb::RegistrationEntry>, CliError> {
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

/// The entry IDs of an `entry delete -file`: its `ids`, then the ID of each of its `entries`.
/// None, or an empty one, is refused.
pub(super) fn file_ids(path: &PathBuf) -> Result<Vec<String>, CliError> {
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
    Ok(ids)
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
