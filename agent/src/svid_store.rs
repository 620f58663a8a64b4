//! The agent's own X509-SVID, its key and the latest trust bundle, kept on disk so a restart
//! does not re-attest (a join token is single use). Files are written atomically (temp file +
//! rename) with mode 0600 in directories with mode 0700.
//!
//! With `KeyManager "memory"` the agent keeps no store at all and re-attests on every start,
//! as SPIRE does.

pub mod config;

use std::fmt;
use std::fs::{DirBuilder, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use sigil_common::fs_checks::{Access, FsCheckError, check_dir, check_file};
use sigil_proto::bundle::pem_encode;
use sigil_proto::{Bundle, SpiffeId, TrustDomain};
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};
use zeroize::Zeroizing;

pub use config::KeyManagerConfig;

const SVID_FILE: &str = "agent_svid.pem";
const KEY_FILE: &str = "agent_svid.key";
const BUNDLE_FILE: &str = "bundle.json";

/// Why the store could not be read or written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SvidStoreError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// A file exists but cannot be used; the caller treats it as missing.
    #[error("{path} is corrupt: {reason}")]
    Corrupt { path: PathBuf, reason: String },
    #[error("agent SVID is invalid: {0}")]
    InvalidSvid(String),
}

/// The agent's X509-SVID: chain (leaf first, DER), PKCS#8 key and the leaf's facts.
#[derive(Clone)]
pub struct AgentSvid {
    pub spiffe_id: SpiffeId,
    pub chain: Vec<Vec<u8>>,
    pub key_pkcs8: Zeroizing<Vec<u8>>,
    /// Unix seconds.
    pub not_before: i64,
    /// Unix seconds.
    pub not_after: i64,
}

impl fmt::Debug for AgentSvid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AgentSvid")
            .field("spiffe_id", &self.spiffe_id.to_string())
            .field("chain_len", &self.chain.len())
            .field("key_pkcs8", &"<redacted>")
            .field("not_before", &self.not_before)
            .field("not_after", &self.not_after)
            .finish()
    }
}

impl AgentSvid {
    /// Reads the SPIFFE ID (the single URI SAN) and validity from the leaf of `chain`.
    pub fn new(chain: Vec<Vec<u8>>, key_pkcs8: Zeroizing<Vec<u8>>) -> Result<Self, SvidStoreError> {
        let leaf = chain
            .first()
            .ok_or_else(|| SvidStoreError::InvalidSvid("empty chain".into()))?;
        let facts = leaf_facts(leaf).map_err(SvidStoreError::InvalidSvid)?;
        Ok(Self {
            spiffe_id: facts.spiffe_id,
            chain,
            key_pkcs8,
            not_before: facts.not_before,
            not_after: facts.not_after,
        })
    }

    /// Whether the SVID is still usable at `now` (Unix seconds).
    pub fn is_valid_at(&self, now: i64) -> bool {
        self.not_before <= now && now < self.not_after
    }
}

/// What the agent needs to know about an X509-SVID leaf.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeafFacts {
    pub spiffe_id: SpiffeId,
    pub not_before: i64,
    pub not_after: i64,
}

/// Parses a leaf certificate's single URI SAN and its validity window.
pub fn leaf_facts(der: &[u8]) -> Result<LeafFacts, String> {
    let (_, cert) = X509Certificate::from_der(der).map_err(|e| e.to_string())?;
    let uris: Vec<&str> = cert
        .subject_alternative_name()
        .map_err(|e| e.to_string())?
        .map(|ext| {
            ext.value
                .general_names
                .iter()
                .filter_map(|n| match n {
                    GeneralName::URI(u) => Some(*u),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    let [uri] = uris.as_slice() else {
        return Err(format!("want exactly one URI SAN, found {}", uris.len()));
    };
    let spiffe_id = SpiffeId::new(uri).map_err(|e| e.to_string())?;
    Ok(LeafFacts {
        spiffe_id,
        not_before: cert.validity().not_before.timestamp(),
        not_after: cert.validity().not_after.timestamp(),
    })
}

/// Where the agent SVID, its key and the bundle live.
#[derive(Debug, Clone)]
pub struct SvidStore {
    data_dir: PathBuf,
    key_dir: PathBuf,
}

impl SvidStore {
    /// Creates both directories (0700) if missing. `key_dir` is the disk key manager's
    /// `directory` (often `data_dir` itself).
    pub fn open(data_dir: &Path, key_dir: &Path) -> Result<Self, SvidStoreError> {
        for dir in [data_dir, key_dir] {
            DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(|source| io_err(dir, source))?;
        }
        Ok(Self {
            data_dir: data_dir.to_owned(),
            key_dir: key_dir.to_owned(),
        })
    }

    /// What makes the store unsafe to use, as OpenSSH's StrictModes would see it: a directory
    /// owned by another user or writable by group or others (they could replace the SVID or the
    /// trust bundle), a key open to anyone else, an SVID or bundle others may write. Empty when
    /// all is well; the caller refuses to start, or warns under
    /// `allow_insecure_file_permissions`.
    pub fn insecure_files(&self) -> Vec<FsCheckError> {
        let mut found = Vec::new();
        let mut check = |r: Result<(), FsCheckError>| found.extend(r.err());
        check(check_dir(&self.data_dir, "agent data_dir"));
        if self.key_dir != self.data_dir {
            check(check_dir(&self.key_dir, "KeyManager \"disk\" directory"));
        }
        check(check_file(
            &self.key_dir.join(KEY_FILE),
            "agent SVID private key",
            Access::OwnerOnly,
        ));
        check(check_file(
            &self.data_dir.join(SVID_FILE),
            "agent SVID",
            Access::NoOtherWriters,
        ));
        check(check_file(
            &self.data_dir.join(BUNDLE_FILE),
            "stored trust bundle",
            Access::NoOtherWriters,
        ));
        found
    }

    /// The stored agent SVID; `Ok(None)` when there is none, `Corrupt` when it is unusable.
    pub fn load_svid(&self) -> Result<Option<AgentSvid>, SvidStoreError> {
        let svid_path = self.data_dir.join(SVID_FILE);
        let key_path = self.key_dir.join(KEY_FILE);
        let (Some(chain_pem), Some(key_pem)) =
            (read_optional(&svid_path)?, read_optional(&key_path)?)
        else {
            return Ok(None);
        };
        let key_pem = Zeroizing::new(key_pem);
        let chain = pem::parse_many(&chain_pem)
            .map_err(|e| corrupt(&svid_path, e.to_string()))?
            .into_iter()
            .filter(|p| p.tag() == "CERTIFICATE")
            .map(|p| p.into_contents())
            .collect::<Vec<_>>();
        let key = pem::parse(&*key_pem).map_err(|e| corrupt(&key_path, e.to_string()))?;
        if key.tag() != "PRIVATE KEY" {
            return Err(corrupt(
                &key_path,
                format!("unexpected PEM label {}", key.tag()),
            ));
        }
        let key_pkcs8 = Zeroizing::new(key.into_contents());
        // The key must be a P-256 PKCS#8 key and match the leaf, or TLS would fail later.
        rcgen::KeyPair::try_from(key_pkcs8.as_slice())
            .map_err(|e| corrupt(&key_path, e.to_string()))?;
        AgentSvid::new(chain, key_pkcs8)
            .map(Some)
            .map_err(|e| corrupt(&svid_path, e.to_string()))
    }

    pub fn save_svid(&self, svid: &AgentSvid) -> Result<(), SvidStoreError> {
        let key_pem = Zeroizing::new(pem_encode("PRIVATE KEY", &svid.key_pkcs8));
        // Key first: a chain without its key is useless, a key without its chain is ignored.
        write_atomic(&self.key_dir.join(KEY_FILE), key_pem.as_bytes())?;
        let chain: String = svid
            .chain
            .iter()
            .map(|der| pem_encode("CERTIFICATE", der))
            .collect();
        write_atomic(&self.data_dir.join(SVID_FILE), chain.as_bytes())
    }

    /// The stored bundle of `trust_domain`, as SPIFFE bundle JSON.
    pub fn load_bundle(
        &self,
        trust_domain: &TrustDomain,
    ) -> Result<Option<Bundle>, SvidStoreError> {
        let path = self.data_dir.join(BUNDLE_FILE);
        let Some(json) = read_optional(&path)? else {
            return Ok(None);
        };
        let bundle = Bundle::from_spiffe_json(trust_domain.clone(), &json)
            .map_err(|e| corrupt(&path, e.to_string()))?;
        if bundle.x509_authorities.is_empty() {
            return Err(corrupt(&path, "no X.509 authorities".into()));
        }
        Ok(Some(bundle))
    }

    pub fn save_bundle(&self, bundle: &Bundle) -> Result<(), SvidStoreError> {
        let path = self.data_dir.join(BUNDLE_FILE);
        let json = bundle
            .to_spiffe_json()
            .map_err(|e| corrupt(&path, e.to_string()))?;
        write_atomic(&path, json.as_bytes())
    }

    /// Removes the stored agent SVID (after the server evicted us).
    pub fn remove_svid(&self) -> Result<(), SvidStoreError> {
        for path in [self.data_dir.join(SVID_FILE), self.key_dir.join(KEY_FILE)] {
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(source) => return Err(io_err(&path, source)),
            }
        }
        Ok(())
    }
}

fn read_optional(path: &Path) -> Result<Option<String>, SvidStoreError> {
    match std::fs::read(path) {
        Ok(bytes) => String::from_utf8(bytes)
            .map(Some)
            .map_err(|_| corrupt(path, "not UTF-8".into())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(io_err(path, source)),
    }
}

/// Writes `contents` to a 0600 temp file beside `path`, syncs it and renames it over `path`,
/// so a crash leaves either the old file or the new one.
fn write_atomic(path: &Path, contents: &[u8]) -> Result<(), SvidStoreError> {
    let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
    let result = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        file.write_all(contents)?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    result.map_err(|source| {
        let _ = std::fs::remove_file(&tmp);
        io_err(path, source)
    })
}

fn io_err(path: &Path, source: std::io::Error) -> SvidStoreError {
    SvidStoreError::Io {
        path: path.to_owned(),
        source,
    }
}

fn corrupt(path: &Path, reason: String) -> SvidStoreError {
    SvidStoreError::Corrupt {
        path: path.to_owned(),
        reason,
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::os::unix::fs::PermissionsExt;

    use rcgen::{CertificateParams, KeyPair, SanType};

    use super::*;

    /// A self-signed cert with `uri` as its URI SAN, and its PKCS#8 key.
    pub(crate) fn self_signed(uri: &str) -> (Vec<u8>, Zeroizing<Vec<u8>>) {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = CertificateParams::default();
        params.subject_alt_names = vec![SanType::URI(uri.try_into().unwrap())];
        let cert = params.self_signed(&key).unwrap();
        (cert.der().to_vec(), Zeroizing::new(key.serialize_der()))
    }

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn svid_round_trip_with_private_modes() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let keys = dir.path().join("keys");
        let store = SvidStore::open(&data, &keys).unwrap();
        assert!(store.load_svid().unwrap().is_none());

        let (cert, key) = self_signed("spiffe://td/spire/agent/join_token/abc");
        let svid = AgentSvid::new(vec![cert.clone()], key.clone()).unwrap();
        assert_eq!(
            svid.spiffe_id.to_string(),
            "spiffe://td/spire/agent/join_token/abc"
        );
        store.save_svid(&svid).unwrap();

        let loaded = store.load_svid().unwrap().unwrap();
        assert_eq!(loaded.chain, vec![cert]);
        assert_eq!(*loaded.key_pkcs8, *key);
        assert_eq!(loaded.spiffe_id, svid.spiffe_id);
        assert_eq!(loaded.not_after, svid.not_after);

        assert_eq!(mode(&data), 0o700);
        assert_eq!(mode(&keys), 0o700);
        assert_eq!(mode(&keys.join(KEY_FILE)), 0o600);
        assert_eq!(mode(&data.join(SVID_FILE)), 0o600);
        // No temp file left behind.
        assert_eq!(std::fs::read_dir(&keys).unwrap().count(), 1);

        store.remove_svid().unwrap();
        assert!(store.load_svid().unwrap().is_none());
    }

    #[test]
    fn corrupt_files_are_reported_not_trusted() {
        let dir = tempfile::tempdir().unwrap();
        let store = SvidStore::open(dir.path(), dir.path()).unwrap();
        let (cert, key) = self_signed("spiffe://td/spire/agent/x");
        store
            .save_svid(&AgentSvid::new(vec![cert], key).unwrap())
            .unwrap();

        std::fs::write(
            dir.path().join(KEY_FILE),
            "-----BEGIN PRIVATE KEY-----\ngarbage\n",
        )
        .unwrap();
        assert!(matches!(
            store.load_svid(),
            Err(SvidStoreError::Corrupt { .. })
        ));

        std::fs::write(dir.path().join(BUNDLE_FILE), "{not json").unwrap();
        let td = TrustDomain::new("td").unwrap();
        assert!(matches!(
            store.load_bundle(&td),
            Err(SvidStoreError::Corrupt { .. })
        ));
    }

    #[test]
    fn bundle_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let store = SvidStore::open(dir.path(), dir.path()).unwrap();
        let td = TrustDomain::new("td").unwrap();
        assert!(store.load_bundle(&td).unwrap().is_none());
        let (ca, _) = self_signed("spiffe://td");
        let mut bundle = Bundle::new(td.clone());
        bundle.x509_authorities = vec![ca];
        bundle.sequence = 7;
        store.save_bundle(&bundle).unwrap();
        let loaded = store.load_bundle(&td).unwrap().unwrap();
        assert_eq!(loaded.x509_authorities, bundle.x509_authorities);
        assert_eq!(loaded.sequence, 7);
        assert_eq!(mode(&dir.path().join(BUNDLE_FILE)), 0o600);
    }

    #[test]
    fn validity_window() {
        let (cert, key) = self_signed("spiffe://td/spire/agent/x");
        let svid = AgentSvid::new(vec![cert], key).unwrap();
        assert!(svid.is_valid_at(svid.not_before));
        assert!(!svid.is_valid_at(svid.not_after));
        assert!(!format!("{svid:?}").contains("key_pkcs8: ["));
    }
}
