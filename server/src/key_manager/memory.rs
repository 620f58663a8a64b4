//! A key manager that keeps keys in the process only (SPIRE's `KeyManager "memory"`): a restart
//! loses them, so the CA starts a fresh authority and keeps the old public ones until they expire.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};

use crate::key_manager::{KeyManager, KeyManagerError, KeyType, SigningKey};

#[derive(Default)]
pub struct MemoryKeyManager {
    keys: Mutex<BTreeMap<String, Arc<SigningKey>>>,
}

impl MemoryKeyManager {
    pub fn new() -> Self {
        Self::default()
    }
}

impl KeyManager for MemoryKeyManager {
    fn generate(&self, id: &str, key_type: KeyType) -> Result<Arc<SigningKey>, KeyManagerError> {
        let key = Arc::new(SigningKey::generate(id, key_type)?);
        // A poisoned map is still consistent: every write is a single insert.
        let mut keys = self.keys.lock().unwrap_or_else(PoisonError::into_inner);
        keys.insert(id.to_owned(), Arc::clone(&key));
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

impl fmt::Debug for MemoryKeyManager {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ids = self.list().unwrap_or_default();
        f.debug_struct("MemoryKeyManager")
            .field("key_ids", &ids)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generate_fetch_list_replace() {
        let km = MemoryKeyManager::new();
        assert!(km.fetch("a").unwrap().is_none());
        let a1 = km.generate("a", KeyType::EcP256).unwrap();
        km.generate("b", KeyType::EcP384).unwrap();
        assert_eq!(km.list().unwrap(), vec!["a".to_owned(), "b".to_owned()]);
        assert_eq!(
            km.fetch("a").unwrap().unwrap().public_key(),
            a1.public_key()
        );
        let a2 = km.generate("a", KeyType::EcP256).unwrap();
        assert_ne!(a1.public_key(), a2.public_key());
        assert_eq!(
            km.fetch("a").unwrap().unwrap().public_key(),
            a2.public_key()
        );
        assert_eq!(km.list().unwrap().len(), 2);
    }
}
