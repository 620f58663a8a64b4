//! SPIRE's `KeyManager "disk" { plugin_data { keys_path = "..." } }`: every key in one JSON
//! file, rewritten atomically on each change and loaded at start, so the CA and the bundle
//! survive a restart.
//!
//! File format: `{"keys": {"<id>": {"key_type": "ec-p256", "pkcs8": "<base64 PKCS#8 DER>"}}}`.
//! A file that cannot be read back is an error: regenerating keys would silently replace the
//! trust domain's CA.

use std::collections::BTreeMap;
use std::fmt;
use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{ErrorKind, Write as _};
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use zeroize::Zeroizing;

use crate::key_manager::{KeyManager, KeyManagerError, KeyType, SigningKey};

pub struct DiskKeyManager {
    path: PathBuf,
    keys: Mutex<BTreeMap<String, Arc<SigningKey>>>,
}

#[derive(Serialize)]
struct FileOut<'a> {
    keys: BTreeMap<&'a str, EntryOut<'a>>,
}

#[derive(Serialize)]
struct EntryOut<'a> {
    key_type: &'static str,
    #[serde(serialize_with = "secret_base64")]
    pkcs8: &'a [u8],
}

#[derive(Deserialize)]
struct FileIn {
    keys: BTreeMap<String, EntryIn>,
}

#[derive(Deserialize)]
struct EntryIn {
    key_type: String,
    #[serde(deserialize_with = "zeroizing_string")]
    pkcs8: Zeroizing<String>,
}

fn zeroizing_string<'de, D: Deserializer<'de>>(d: D) -> Result<Zeroizing<String>, D::Error> {
    String::deserialize(d).map(Zeroizing::new)
}

/// Base64 through a zeroized buffer, so the encoded key does not linger in freed memory.
fn secret_base64<S: Serializer>(bytes: &&[u8], s: S) -> Result<S::Ok, S::Error> {
    let encoded = Zeroizing::new(STANDARD.encode(bytes));
    s.serialize_str(&encoded)
}

impl DiskKeyManager {
    /// Opens (or prepares) the keys file at `keys_path`: creates the parent directory with mode
    /// 0700 when missing and loads every key already stored. A corrupt file is an error.
    pub fn open(keys_path: impl Into<PathBuf>) -> Result<Self, KeyManagerError> {
        let path = keys_path.into();
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(|e| io_error(dir, e))?;
        }
        let keys = match fs::read(&path) {
            Ok(bytes) => parse(&path, &Zeroizing::new(bytes))?,
            Err(e) if e.kind() == ErrorKind::NotFound => BTreeMap::new(),
            Err(e) => return Err(io_error(&path, e)),
        };
        Ok(Self {
            path,
            keys: Mutex::new(keys),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes `keys` to a temporary file in the same directory, fsyncs it, renames it over the
    /// keys file and fsyncs the directory: a crash leaves either the old or the new file.
    fn persist(&self, keys: &BTreeMap<String, Arc<SigningKey>>) -> Result<(), KeyManagerError> {
        let out = FileOut {
            keys: keys
                .iter()
                .map(|(id, k)| {
                    (
                        id.as_str(),
                        EntryOut {
                            key_type: k.key_type().as_str(),
                            pkcs8: k.pkcs8(),
                        },
                    )
                })
                .collect(),
        };
        // Sized up front so the buffer holding the keys is never reallocated (and so never
        // leaves an unzeroized copy behind).
        let capacity = keys
            .iter()
            .map(|(id, k)| id.len() + k.pkcs8().len() * 4 / 3 + 64)
            .sum::<usize>()
            + 64;
        let mut json = Zeroizing::new(Vec::with_capacity(capacity));
        serde_json::to_writer(&mut *json, &out).map_err(|e| KeyManagerError::Corrupt {
            path: self.path.display().to_string(),
            reason: e.to_string(),
        })?;

        let dir = match self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            Some(d) => d.to_path_buf(),
            None => PathBuf::from("."),
        };
        let file_name = self
            .path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned());
        let tmp = dir.join(format!(".{}.tmp", file_name.unwrap_or_default()));
        let written = (|| {
            let mut file = OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)?;
            file.write_all(&json)?;
            file.sync_all()
        })();
        if let Err(e) = written {
            // A partial copy of the keys (on a full disk, say) is not left behind.
            let _ = fs::remove_file(&tmp);
            return Err(io_error(&tmp, e));
        }
        fs::rename(&tmp, &self.path).map_err(|e| io_error(&self.path, e))?;
        File::open(&dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| io_error(&dir, e))?;
        Ok(())
    }
}

fn parse(path: &Path, bytes: &[u8]) -> Result<BTreeMap<String, Arc<SigningKey>>, KeyManagerError> {
    let corrupt = |reason: String| KeyManagerError::Corrupt {
        path: path.display().to_string(),
        reason,
    };
    let file: FileIn = serde_json::from_slice(bytes).map_err(|e| corrupt(e.to_string()))?;
    let mut keys = BTreeMap::new();
    for (id, entry) in file.keys {
        let key_type: KeyType = entry
            .key_type
            .parse()
            .map_err(|e| corrupt(format!("{id}: {e}")))?;
        let pkcs8 = Zeroizing::new(
            STANDARD
                .decode(entry.pkcs8.as_bytes())
                .map_err(|e| corrupt(format!("{id}: {e}")))?,
        );
        let key = SigningKey::from_pkcs8(&id, key_type, pkcs8)
            .map_err(|e| corrupt(format!("{id}: {e}")))?;
        keys.insert(id, Arc::new(key));
    }
    Ok(keys)
}

fn io_error(path: &Path, source: std::io::Error) -> KeyManagerError {
    KeyManagerError::Io {
        path: path.display().to_string(),
        source,
    }
}

impl KeyManager for DiskKeyManager {
    fn generate(&self, id: &str, key_type: KeyType) -> Result<Arc<SigningKey>, KeyManagerError> {
        let key = Arc::new(SigningKey::generate(id, key_type)?);
        // A poisoned map is still consistent: it is only replaced after a successful write.
        let mut keys = self.keys.lock().unwrap_or_else(PoisonError::into_inner);
        let mut next = keys.clone();
        next.insert(id.to_owned(), Arc::clone(&key));
        // The file is written before the key is handed out, so nothing signs with a key that
        // would be lost on restart.
        self.persist(&next)?;
        *keys = next;
        Ok(key)
    }

    fn fetch(&self, id: &str) -> Result<Option<Arc<SigningKey>>, KeyManagerError> {
        let keys = self.keys.lock().unwrap_or_else(PoisonError::into_inner);
        Ok(keys.get(id).cloned())
    }

    fn list(&self) -> Result<Vec<String>, KeyManagerError> {
        let keys = self.keys.lock().unwrap_or_else(PoisonError::into_inner);
        Ok(keys.keys().cloned().collect())
    }
}

impl fmt::Debug for DiskKeyManager {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ids = self.list().unwrap_or_default();
        f.debug_struct("DiskKeyManager")
            .field("path", &self.path)
            .field("key_ids", &ids)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    #[test]
    fn keys_survive_reopen_with_tight_modes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("data/keys.json");
        let km = DiskKeyManager::open(&path).unwrap();
        assert!(km.list().unwrap().is_empty());
        assert!(!path.exists(), "nothing written before the first key");
        let a = km.generate("x509-CA-A", KeyType::EcP256).unwrap();
        let b = km.generate("JWT-Signer-A", KeyType::EcP384).unwrap();

        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&path), 0o600);
        assert_eq!(mode(path.parent().unwrap()), 0o700);
        let leftovers: Vec<_> = fs::read_dir(path.parent().unwrap()).unwrap().collect();
        assert_eq!(leftovers.len(), 1, "temp file renamed away");

        let again = DiskKeyManager::open(&path).unwrap();
        assert_eq!(
            again.list().unwrap(),
            vec!["JWT-Signer-A".to_owned(), "x509-CA-A".to_owned()]
        );
        let a2 = again.fetch("x509-CA-A").unwrap().unwrap();
        assert_eq!(a2.public_key(), a.public_key());
        let b2 = again.fetch("JWT-Signer-A").unwrap().unwrap();
        assert_eq!(b2.key_type(), KeyType::EcP384);
        assert_eq!(b2.public_key(), b.public_key());

        // RSA keys too (their PKCS#8 is several times an EC key's).
        let r = again.generate("x509-CA-B", KeyType::Rsa2048).unwrap();
        let reopened = DiskKeyManager::open(&path).unwrap();
        let r2 = reopened.fetch("x509-CA-B").unwrap().unwrap();
        assert_eq!(r2.key_type(), KeyType::Rsa2048);
        assert_eq!(r2.public_key(), r.public_key());

        // Replacing a key is persisted too.
        let a3 = again.generate("x509-CA-A", KeyType::EcP256).unwrap();
        let third = DiskKeyManager::open(&path).unwrap();
        assert_eq!(
            third.fetch("x509-CA-A").unwrap().unwrap().public_key(),
            a3.public_key()
        );
    }

    #[test]
    fn corrupt_file_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys.json");
        for bad in [
            "not json",
            r#"{"keys":{"a":{"key_type":"ec-p256","pkcs8":"%%%"}}}"#,
            r#"{"keys":{"a":{"key_type":"ec-p256","pkcs8":"AAAA"}}}"#,
            r#"{"keys":{"a":{"key_type":"rsa-2048","pkcs8":"AAAA"}}}"#,
            r#"{"keys":{"a":{"key_type":"rsa-3072","pkcs8":"AAAA"}}}"#,
        ] {
            fs::write(&path, bad).unwrap();
            let err = DiskKeyManager::open(&path).unwrap_err();
            assert!(
                matches!(err, KeyManagerError::Corrupt { .. }),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn debug_lists_ids_only() {
        let dir = tempfile::tempdir().unwrap();
        let km = DiskKeyManager::open(dir.path().join("keys.json")).unwrap();
        km.generate("a", KeyType::EcP256).unwrap();
        let dbg = format!("{km:?}");
        assert!(dbg.contains("\"a\"") && !dbg.contains("pkcs8"), "{dbg}");
    }
}
