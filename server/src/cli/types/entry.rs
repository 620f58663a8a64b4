//! `spire.api.types.Entry` and the entry commands' responses (`entry.v1`), as SPIRE's CLI
//! prints them; and the `{"entries": [...]}` files `entry create|update -data` read.
//!
//! One model for both: `entry show -output json` of SPIRE (or Sigil) is a valid `-data`
//! file, and so is SPIRE's own `-data` format (plain-string IDs, `entry_id`, `entryExpiry`).

use std::io::{self, Write};

use serde::{Deserialize, Serialize};
use sigil_proto::sigil::common::v1 as pb;

use super::{Selector, SpiffeId, Status, int32, int64};

/// `spire.api.types.Entry`. Fields in alphabetical order: the order SPIRE prints them in.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Default)]
#[serde(default, deny_unknown_fields)]
pub(in crate::cli) struct Entry {
    /// SPIRE's per-entry tunables; unset (absent) unless a `-data` file sets it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub additional_attributes: Option<AdditionalAttributes>,
    pub admin: bool,
    /// Set by the server; ignored when read, as SPIRE ignores it.
    #[serde(with = "int64")]
    pub created_at: i64,
    pub dns_names: Vec<String>,
    pub downstream: bool,
    /// `entryExpiry` is the name in SPIRE's own `-data` files.
    #[serde(with = "int64", alias = "entryExpiry")]
    pub expires_at: i64,
    pub federates_with: Vec<String>,
    pub hint: String,
    /// Kept on create when given (SPIRE's `-entryID`); `entry_id` is the name in SPIRE's own
    /// `-data` files.
    #[serde(alias = "entry_id")]
    pub id: String,
    #[serde(with = "int32")]
    pub jwt_svid_ttl: i32,
    pub parent_id: SpiffeId,
    /// Set by the server; ignored when read, as SPIRE ignores it.
    #[serde(with = "int64")]
    pub revision_number: i64,
    pub selectors: Vec<Selector>,
    pub spiffe_id: SpiffeId,
    pub store_svid: bool,
    /// Sigil's identity templates (no SPIRE counterpart): present, as `true`, only for a
    /// template entry, whose `spiffe_id.path` holds `{type:key}` placeholders.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub template: bool,
    #[serde(with = "int32")]
    pub x509_svid_ttl: i32,
}

/// `spire.api.types.Entry.AdditionalAttributes`: neither tunable exists in Sigil, so only
/// `false` is accepted.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Default)]
#[serde(default, deny_unknown_fields)]
pub(in crate::cli) struct AdditionalAttributes {
    pub disable_x509_svid_prefetch: bool,
    pub jwt_svid_include_jti: bool,
}

impl From<&pb::RegistrationEntry> for Entry {
    fn from(e: &pb::RegistrationEntry) -> Self {
        Self {
            additional_attributes: None,
            admin: e.admin,
            created_at: e.created_at,
            dns_names: e.dns_names.clone(),
            downstream: e.downstream,
            expires_at: e.expires_at,
            federates_with: e.federates_with.clone(),
            hint: e.hint.clone(),
            id: e.id.clone(),
            jwt_svid_ttl: e.jwt_svid_ttl,
            parent_id: SpiffeId::from_text(&e.parent_id),
            revision_number: e.revision,
            selectors: e.selectors.iter().map(Selector::from).collect(),
            spiffe_id: SpiffeId::from_text(&e.spiffe_id),
            store_svid: false,
            template: e.template,
            x509_svid_ttl: e.x509_svid_ttl,
        }
    }
}

impl Entry {
    /// The entry to send to the server. SPIRE features Sigil does not have are refused when
    /// set (a setting is never accepted and ignored); `created_at` and `revision_number` are
    /// the server's and are dropped, as SPIRE drops them.
    pub(in crate::cli) fn into_pb(self) -> Result<pb::RegistrationEntry, String> {
        if self.store_svid {
            return Err("store_svid is not supported: Sigil has no SVIDStore plugins".into());
        }
        let attrs = self.additional_attributes.unwrap_or_default();
        for (field, set) in [
            (
                "disable_x509_svid_prefetch",
                attrs.disable_x509_svid_prefetch,
            ),
            ("jwt_svid_include_jti", attrs.jwt_svid_include_jti),
        ] {
            if set {
                return Err(format!(
                    "additional_attributes.{field} is not supported by Sigil; set it to false"
                ));
            }
        }
        Ok(pb::RegistrationEntry {
            id: self.id,
            spiffe_id: self.spiffe_id.text(),
            parent_id: self.parent_id.text(),
            selectors: self
                .selectors
                .into_iter()
                .map(|s| pb::Selector {
                    r#type: s.r#type,
                    value: s.value,
                })
                .collect(),
            x509_svid_ttl: self.x509_svid_ttl,
            jwt_svid_ttl: self.jwt_svid_ttl,
            dns_names: self.dns_names,
            federates_with: self.federates_with,
            admin: self.admin,
            downstream: self.downstream,
            hint: self.hint,
            expires_at: self.expires_at,
            template: self.template,
            revision: 0,
            created_at: 0,
        })
    }
}

/// A `-data` file: `{"entries": [...]}`, as SPIRE's `-data` files and `entry show
/// -output json` write it (its `next_page_token` is accepted and ignored).
#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
pub(in crate::cli) struct EntriesFile {
    #[serde(default)]
    pub entries: Vec<Entry>,
    /// `entry delete -file`'s `BatchDeleteEntryRequest`.
    #[serde(default)]
    pub ids: Vec<String>,
    #[serde(default)]
    #[allow(dead_code)]
    // Read so that `entry show`'s output is accepted; nothing to do with it.
    next_page_token: String,
}

/// `BatchCreateEntryResponse` / `BatchUpdateEntryResponse`: one result per entry.
#[derive(Serialize, Debug)]
pub(in crate::cli) struct BatchEntryResponse {
    pub results: Vec<EntryResult>,
}

#[derive(Serialize, Debug)]
pub(in crate::cli) struct EntryResult {
    pub entry: Entry,
    pub status: Status,
}

impl BatchEntryResponse {
    /// The answer for a batch the server took whole (Sigil's batches are all or nothing).
    pub(in crate::cli) fn ok(entries: &[pb::RegistrationEntry]) -> Self {
        Self {
            results: entries
                .iter()
                .map(|e| EntryResult {
                    entry: e.into(),
                    status: Status::ok(),
                })
                .collect(),
        }
    }
}

/// `BatchDeleteEntryResponse`.
#[derive(Serialize, Debug)]
pub(in crate::cli) struct BatchDeleteEntryResponse {
    pub results: Vec<DeleteResult>,
}

#[derive(Serialize, Debug)]
pub(in crate::cli) struct DeleteResult {
    pub id: String,
    pub status: Status,
}

impl BatchDeleteEntryResponse {
    pub(in crate::cli) fn ok(ids: Vec<String>) -> Self {
        Self {
            results: ids
                .into_iter()
                .map(|id| DeleteResult {
                    id,
                    status: Status::ok(),
                })
                .collect(),
        }
    }
}

/// `ListEntriesResponse` (`{"entries":[...],"next_page_token":""}`), written one entry at a
/// time so a listing of any length never sits in memory. The text is exactly what
/// serializing the whole response at once gives.
pub(in crate::cli) struct ListEntriesWriter<W: Write> {
    out: W,
    empty: bool,
}

impl<W: Write> ListEntriesWriter<W> {
    pub(in crate::cli) fn new(out: W) -> Self {
        Self { out, empty: true }
    }

    pub(in crate::cli) fn push(&mut self, e: &pb::RegistrationEntry) -> io::Result<()> {
        let text = serde_json::to_string(&Entry::from(e)).map_err(io::Error::other)?;
        let lead: &[u8] = if self.empty { b"{\"entries\":[" } else { b"," };
        self.empty = false;
        self.out.write_all(lead)?;
        self.out.write_all(text.as_bytes())
    }

    /// Closes the response (and the line) and returns the writer.
    pub(in crate::cli) fn finish(mut self) -> io::Result<W> {
        if self.empty {
            self.out.write_all(b"{\"entries\":[")?;
        }
        self.out.write_all(b"],\"next_page_token\":\"\"}\n")?;
        self.out.flush()?;
        Ok(self.out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry() -> pb::RegistrationEntry {
        pb::RegistrationEntry {
            id: "a\nb".into(),
            spiffe_id: "spiffe://td/w".into(),
            parent_id: "spiffe://td/node".into(),
            dns_names: vec!["x".into(), "y".into()],
            selectors: vec![pb::Selector {
                r#type: "unix".into(),
                value: "uid:1".into(),
            }],
            expires_at: 1_900_000_000,
            revision: 3,
            ..Default::default()
        }
    }

    #[test]
    fn entry_prints_as_spire_does() {
        let v = serde_json::to_value(Entry::from(&entry())).unwrap();
        assert_eq!(v["spiffe_id"]["trust_domain"], "td");
        assert_eq!(v["spiffe_id"]["path"], "/w");
        assert_eq!(v["expires_at"], "1900000000");
        assert_eq!(v["revision_number"], "3");
        assert_eq!(v["x509_svid_ttl"], 0);
        assert_eq!(v["store_svid"], false);
        assert!(v.get("template").is_none() && v.get("additional_attributes").is_none());
        let keys: Vec<&String> = v.as_object().unwrap().keys().collect();
        let text = serde_json::to_string(&Entry::from(&entry())).unwrap();
        let order: Vec<usize> = keys
            .iter()
            .map(|k| text.find(&format!("\"{k}\"")).unwrap())
            .collect();
        assert!(order.is_sorted(), "keys in alphabetical order: {text}");
    }

    #[test]
    fn streamed_list_is_the_whole_response() {
        #[derive(Serialize)]
        struct Whole {
            entries: Vec<Entry>,
            next_page_token: String,
        }
        for n in [0, 1, 3] {
            let entries: Vec<pb::RegistrationEntry> = (0..n).map(|_| entry()).collect();
            let mut w = ListEntriesWriter::new(Vec::new());
            entries.iter().for_each(|e| w.push(e).unwrap());
            let streamed = String::from_utf8(w.finish().unwrap()).unwrap();
            let whole = Whole {
                entries: entries.iter().map(Entry::from).collect(),
                next_page_token: String::new(),
            };
            assert_eq!(
                streamed,
                format!("{}\n", serde_json::to_string(&whole).unwrap())
            );
        }
    }

    #[test]
    fn printed_entry_reads_back() {
        let printed = serde_json::to_string(&Entry::from(&entry())).unwrap();
        let read: Entry = serde_json::from_str(&printed).unwrap();
        let mut back = read.into_pb().unwrap();
        assert_eq!((back.revision, back.created_at), (0, 0));
        back.revision = 3;
        assert_eq!(back, entry());
    }

    #[test]
    fn unsupported_spire_settings_are_refused() {
        let read = |extra: &str| -> Result<pb::RegistrationEntry, String> {
            serde_json::from_str::<Entry>(&format!(r#"{{"hint":"h"{extra}}}"#))
                .map_err(|e| e.to_string())?
                .into_pb()
        };
        assert!(read(r#","store_svid":false,"additional_attributes":{}"#).is_ok());
        assert!(
            read(r#","store_svid":true"#)
                .unwrap_err()
                .contains("store_svid")
        );
        let err = read(r#","additional_attributes":{"jwt_svid_include_jti":true}"#).unwrap_err();
        assert!(err.contains("jwt_svid_include_jti"), "{err}");
        assert!(
            read(r#","spifeID":"x""#)
                .unwrap_err()
                .contains("unknown field")
        );
        // SPIRE's own -data names.
        let e = read(r#","entry_id":"e1","entryExpiry":5,"spiffe_id":"spiffe://td/a""#).unwrap();
        assert_eq!(
            (e.id.as_str(), e.expires_at, e.spiffe_id.as_str()),
            ("e1", 5, "spiffe://td/a")
        );
    }
}
