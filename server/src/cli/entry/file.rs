//! The JSON files `entry create|update -data` and `entry delete -file` read, from a path or
//! stdin (`-`): `{"entries": [...]}` as SPIRE's `-data` files and `entry show -output json`
//! (SPIRE's or ours) write it, and `{"ids": [...]}`.
//!
//! One job: from a file to proto entries checked as the flags are ([`validate`]), or to the
//! entry IDs to delete; each error names the file and, for an entry, its index.

use std::path::PathBuf;

use sigil_proto::sigil::common::v1 as pb;

use crate::cli::client::{CliError, fail};
use crate::cli::entry::fields::validate;
use crate::cli::types::entry::EntriesFile;

fn read_data(path: &PathBuf) -> Result<EntriesFile, CliError> {
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
        .map(|(i, entry)| {
            let at = |err: String| CliError(format!("{} entry {i}: {err}", path.display()));
            let e = entry.into_pb().map_err(at)?;
            validate(&e).map_err(|err| at(err.0))?;
            Ok(e)
        })
        .collect()
}

/// The entry IDs of an `entry delete -file`: its `ids`, then the ID of each of its `entries`.
/// None, or an empty one, is refused.
pub(super) fn file_ids(path: &PathBuf) -> Result<Vec<String>, CliError> {
    let f = read_data(path)?;
    let mut ids = f.ids;
    ids.extend(f.entries.into_iter().map(|e| e.id));
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
               "selectors":[{"type":"k8s","value":"ns:x"}],"dns_names":["b.example.org"],
               "expires_at":"1900000000","revision_number":"4","created_at":"1700000000"}
            ],"next_page_token":""}"#,
        )
        .unwrap();
        let entries = file_entries(&path).unwrap();
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[1].spiffe_id, "spiffe://example.org/b");
        assert_eq!(entries[1].expires_at, 1_900_000_000);
        assert_eq!((entries[1].revision, entries[1].created_at), (0, 0));
        assert_eq!(entries[0].x509_svid_ttl, 200);

        std::fs::write(&path, r#"{"entries":[{"spiffe_id":"spiffe://example.org/a","parent_id":"spiffe://example.org/n","selectors":[]}]}"#).unwrap();
        let err = file_entries(&path).unwrap_err().0;
        assert!(err.contains("entry 0") && err.contains("selector"), "{err}");
        std::fs::write(&path, r#"{"entries":[{"spifeID":"x"}]}"#).unwrap();
        assert!(file_entries(&path).unwrap_err().0.contains("invalid JSON"));
        std::fs::write(&path, r#"{"entries":[{"store_svid":true}]}"#).unwrap();
        let err = file_entries(&path).unwrap_err().0;
        assert!(
            err.contains("entry 0: store_svid is not supported"),
            "{err}"
        );
    }
}
