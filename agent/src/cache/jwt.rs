//! JWT-SVIDs: minted by the server on demand, reused by the agent until their half-life (as
//! SPIRE's agent does) so a workload polling for tokens does not turn into a signing load.
//!
//! Past its half-life a token is minted again; when the server cannot mint (unreachable, or
//! the agent's own SVID expired), the cached token is handed out until its `exp`, as SPIRE
//! does, with one WARN per token. An expired token is never handed out: the workload gets
//! [`MintError::Withheld`], which says why.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use futures::future::BoxFuture;
use sigil_proto::{RegistrationEntry, SpiffeId};
use tracing::warn;
use zeroize::Zeroizing;

use super::expiry::{Outage, SvidKind, SvidUnavailable, rfc3339};
use crate::taint::TaintedAuthorities;

/// Above this many cached tokens, expired ones are swept on insert; a workload asking for
/// ever-new audiences cannot grow the cache without bound beyond the token lifetime.
const SWEEP_THRESHOLD: usize = 1024;

/// Why a JWT-SVID could not be minted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MintError {
    /// The server could not be reached or failed; the workload may retry.
    #[error("JWT-SVID signing unavailable: {0}")]
    Unavailable(String),
    /// The server refused to sign for this entry.
    #[error("JWT-SVID signing refused: {0}")]
    Refused(String),
    /// No usable token: the server cannot mint and the cached one (if any) has expired.
    #[error("{0}")]
    Withheld(SvidUnavailable),
}

/// Mints a JWT-SVID for an entry and an audience list (the agent asks the server).
pub trait JwtSvidMinter: Send + Sync {
    /// `spiffe_id` is the entry's own ID, or for a template entry the ID rendered for the
    /// workload; `pod_uid` is the UID of the workload's pod, if it runs in one (the server signs
    /// a template instance reached through a node alias only for a pod on this node).
    fn mint<'a>(
        &'a self,
        entry: &'a RegistrationEntry,
        spiffe_id: &'a SpiffeId,
        pod_uid: Option<&'a str>,
        audience: &'a [String],
    ) -> BoxFuture<'a, Result<String, MintError>>;

    /// Why the server cannot mint at `now` (Unix seconds), if known; `None` while it answers.
    fn outage(&self, _now: i64) -> Option<Outage> {
        None
    }

    /// Told each time the cache first hands out a token past its half-life because minting
    /// failed (for a metric).
    fn served_past_half_life(&self) {}
}

#[derive(Clone, PartialEq, Eq, Hash)]
struct TokenKey {
    entry_id: String,
    revision: i64,
    /// Template entries give each workload its own ID.
    spiffe_id: SpiffeId,
    /// Sorted and de-duplicated: the same set in another order reuses the token.
    audience: Vec<String>,
}

struct CachedToken {
    token: Zeroizing<String>,
    /// Unix seconds from which a fresh token is minted instead.
    refresh_at: i64,
    /// The token's `exp`: never handed out from then on.
    expires_at: i64,
    /// Whether handing it out past `refresh_at` was logged.
    warned: bool,
}

/// A token cache in front of a [`JwtSvidMinter`].
pub struct JwtSvidCache {
    minter: Arc<dyn JwtSvidMinter>,
    tokens: Mutex<HashMap<TokenKey, CachedToken>>,
}

impl fmt::Debug for JwtSvidCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let cached = self.tokens.lock().map(|t| t.len()).unwrap_or(0);
        f.debug_struct("JwtSvidCache")
            .field("cached_tokens", &cached)
            .finish()
    }
}

impl JwtSvidCache {
    pub fn new(minter: Arc<dyn JwtSvidMinter>) -> Self {
        Self {
            minter,
            tokens: Mutex::new(HashMap::new()),
        }
    }

    /// A JWT-SVID for `entry` with `audience` (in the requested order), from the cache while
    /// `now` (Unix seconds) is before the cached token's half-life, else freshly minted for the
    /// workload in pod `pod_uid` (see [`JwtSvidMinter::mint`]). A token is kept per ID, not per
    /// pod: every pod given the same ID may be handed it.
    pub async fn fetch(
        &self,
        entry: &RegistrationEntry,
        spiffe_id: &SpiffeId,
        pod_uid: Option<&str>,
        audience: &[String],
        now: i64,
    ) -> Result<String, MintError> {
        // Keyed by the audience list as requested, order included: a token carries its
        // audiences in the order the workload asked for them.
        let key = TokenKey {
            entry_id: entry.id.clone(),
            revision: entry.revision,
            spiffe_id: spiffe_id.clone(),
            audience: audience.to_vec(),
        };
        if let Some(token) = self.cached(&key, now) {
            return Ok(token);
        }
        let token = match self.minter.mint(entry, spiffe_id, pod_uid, audience).await {
            Ok(token) => token,
            Err(MintError::Unavailable(reason)) => {
                return self.fallback(&key, spiffe_id, now, reason);
            }
            Err(e) => return Err(e),
        };
        // A token whose lifetime we cannot read is handed out but never reused.
        if let Some((refresh_at, expires_at)) = lifetime(&token) {
            let mut tokens = self.lock();
            if tokens.len() >= SWEEP_THRESHOLD {
                tokens.retain(|_, t| t.expires_at > now);
            }
            tokens.insert(
                key,
                CachedToken {
                    token: Zeroizing::new(token.clone()),
                    refresh_at,
                    expires_at,
                    warned: false,
                },
            );
        }
        Ok(token)
    }

    /// The server could not mint (`reason`): the cached token while it has not expired, else
    /// an error that says why there is none.
    fn fallback(
        &self,
        key: &TokenKey,
        spiffe_id: &SpiffeId,
        now: i64,
        reason: String,
    ) -> Result<String, MintError> {
        let cause = self.minter.outage(now);
        let mut tokens = self.lock();
        let Some(cached) = tokens.get_mut(key) else {
            return Err(match cause {
                Some(cause) => MintError::Withheld(SvidUnavailable {
                    kind: SvidKind::Jwt,
                    spiffe_id: spiffe_id.clone(),
                    expired_at: None,
                    cause: Some(cause),
                }),
                None => MintError::Unavailable(reason),
            });
        };
        if now >= cached.expires_at {
            return Err(MintError::Withheld(SvidUnavailable {
                kind: SvidKind::Jwt,
                spiffe_id: spiffe_id.clone(),
                expired_at: Some(cached.expires_at),
                cause,
            }));
        }
        if !cached.warned {
            cached.warned = true;
            self.minter.served_past_half_life();
            let why = cause.map_or(reason, |c| c.to_string());
            warn!(
                %spiffe_id,
                expires_at = %rfc3339(cached.expires_at),
                "JWT-SVID past half its life and not renewed: {why}; serving the cached token until it expires"
            );
        }
        Ok(cached.token.to_string())
    }

    /// Forgets every cached token signed by a key `tainted` names, so the next fetch mints
    /// one with the active key.
    pub fn drop_tainted(&self, tainted: &TaintedAuthorities) {
        if tainted.is_empty() {
            return;
        }
        self.lock().retain(|_, t| !tainted.affects_jwt(&t.token));
    }

    fn cached(&self, key: &TokenKey, now: i64) -> Option<String> {
        let tokens = self.lock();
        tokens
            .get(key)
            .filter(|t| now < t.refresh_at)
            .map(|t| t.token.to_string())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<TokenKey, CachedToken>> {
        // A panic while holding the lock leaves a map that is still consistent (every insert
        // is a single call), so a poisoned lock is safe to keep using.
        self.tokens
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// The half-life `iat + (exp - iat) / 2` and `exp` from the token's claims (read without
/// verifying: the token came from our own server over an authenticated channel).
fn lifetime(token: &str) -> Option<(i64, i64)> {
    let times = token_times(token)?;
    // Without `iat` the half-life is unknown: such a token is not reused.
    let iat = times.iat?;
    Some((iat + (times.exp - iat) / 2, times.exp))
}

/// A minted token's `iat` and `exp` (Unix seconds), read from its payload without checking
/// the signature: for tokens this agent was just handed by its server.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize)]
pub struct TokenTimes {
    pub iat: Option<i64>,
    pub exp: i64,
}

/// The [`TokenTimes`] of `token`; `None` when its payload has no numeric `exp`.
pub fn token_times(token: &str) -> Option<TokenTimes> {
    let payload = token.split('.').nth(1)?;
    let raw = URL_SAFE_NO_PAD.decode(payload).ok()?;
    serde_json::from_slice(&raw).ok()
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;

    use super::*;
    use crate::cache::testing::{TestJwtKey, TestMinter, entry, now};

    fn aud(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    fn fixed_id(e: &RegistrationEntry) -> &SpiffeId {
        e.spiffe_id.fixed().unwrap()
    }

    #[tokio::test]
    async fn tokens_of_a_tainted_key_are_dropped() {
        let key = TestJwtKey::new("k1");
        let minter = Arc::new(TestMinter::new(TestJwtKey::new("k1")));
        let cache = JwtSvidCache::new(minter.clone());
        let e = entry("e1", "spiffe://example.org/web", &["unix:uid:1"], 1);
        let t0 = now();
        cache
            .fetch(&e, fixed_id(&e), None, &aud(&["a"]), t0)
            .await
            .unwrap();
        let mut bundle =
            sigil_proto::Bundle::new(sigil_proto::TrustDomain::new("example.org").unwrap());
        bundle.jwt_authorities.push(key.authority());
        // Another key tainted: the cached token stays.
        let mut other = TestJwtKey::new("k2").authority();
        other.tainted = true;
        bundle.jwt_authorities.push(other);
        cache.drop_tainted(&TaintedAuthorities::from_bundle(&bundle));
        cache
            .fetch(&e, fixed_id(&e), None, &aud(&["a"]), t0 + 1)
            .await
            .unwrap();
        assert_eq!(minter.minted.load(Ordering::SeqCst), 1);
        // Its own key tainted: the next fetch mints again.
        bundle.jwt_authorities[0].tainted = true;
        cache.drop_tainted(&TaintedAuthorities::from_bundle(&bundle));
        cache
            .fetch(&e, fixed_id(&e), None, &aud(&["a"]), t0 + 2)
            .await
            .unwrap();
        assert_eq!(minter.minted.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn reuses_token_until_half_life() {
        let minter = Arc::new(TestMinter::new(TestJwtKey::new("k1")));
        let cache = JwtSvidCache::new(minter.clone());
        let e = entry("e1", "spiffe://example.org/web", &["unix:uid:1"], 1);
        let t0 = now();
        let first = cache
            .fetch(&e, fixed_id(&e), None, &aud(&["a", "b"]), t0)
            .await
            .unwrap();
        let again = cache
            .fetch(&e, fixed_id(&e), None, &aud(&["a", "b"]), t0 + 10)
            .await
            .unwrap();
        assert_eq!(first, again, "the same audience list reuses the token");
        assert_eq!(minter.minted.load(Ordering::SeqCst), 1);
        let reordered = cache
            .fetch(&e, fixed_id(&e), None, &aud(&["b", "a"]), t0 + 10)
            .await
            .unwrap();
        assert_ne!(first, reordered, "audiences keep the requested order");
        assert_eq!(minter.minted.load(Ordering::SeqCst), 2);

        // TestMinter issues 300 s tokens: half-life is iat + 150.
        let later = cache
            .fetch(&e, fixed_id(&e), None, &aud(&["a", "b"]), t0 + 151)
            .await
            .unwrap();
        assert_eq!(
            minter.minted.load(Ordering::SeqCst),
            3,
            "past half-life mints again"
        );
        let _ = later;
    }

    #[tokio::test]
    async fn template_entries_get_one_token_per_rendered_id() {
        let minter = Arc::new(TestMinter::new(TestJwtKey::new("k1")));
        let cache = JwtSvidCache::new(minter.clone());
        let e = entry("t", "spiffe://example.org", &["k8s:ns"], 1);
        let a = SpiffeId::new("spiffe://example.org/ns/a").unwrap();
        let b = SpiffeId::new("spiffe://example.org/ns/b").unwrap();
        let t0 = now();
        let ta = cache.fetch(&e, &a, None, &aud(&["x"]), t0).await.unwrap();
        let tb = cache.fetch(&e, &b, None, &aud(&["x"]), t0).await.unwrap();
        assert_ne!(ta, tb);
        assert_eq!(
            cache.fetch(&e, &a, None, &aud(&["x"]), t0).await.unwrap(),
            ta
        );
        assert_eq!(minter.minted.load(Ordering::SeqCst), 2);
        let sub = |t: &str| -> String {
            let payload = t.split('.').nth(1).unwrap();
            let claims: serde_json::Value =
                serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap();
            claims["sub"].as_str().unwrap().to_owned()
        };
        assert_eq!(sub(&ta), a.to_string());
        assert_eq!(sub(&tb), b.to_string());
    }

    #[tokio::test]
    async fn distinct_audience_and_revision_mint_new_tokens() {
        let minter = Arc::new(TestMinter::new(TestJwtKey::new("k1")));
        let cache = JwtSvidCache::new(minter.clone());
        let mut e = entry("e1", "spiffe://example.org/web", &["unix:uid:1"], 1);
        let t0 = now();
        cache
            .fetch(&e, fixed_id(&e), None, &aud(&["a"]), t0)
            .await
            .unwrap();
        cache
            .fetch(&e, fixed_id(&e), None, &aud(&["b"]), t0)
            .await
            .unwrap();
        e.revision += 1;
        cache
            .fetch(&e, fixed_id(&e), None, &aud(&["a"]), t0)
            .await
            .unwrap();
        assert_eq!(minter.minted.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn mint_errors_pass_through() {
        let mut minter = TestMinter::new(TestJwtKey::new("k1"));
        minter.fail = true;
        let cache = JwtSvidCache::new(Arc::new(minter));
        let e = entry("e1", "spiffe://example.org/web", &["unix:uid:1"], 1);
        let err = cache
            .fetch(&e, fixed_id(&e), None, &aud(&["a"]), now())
            .await
            .unwrap_err();
        assert!(matches!(err, MintError::Unavailable(_)));
    }

    #[tokio::test]
    async fn with_the_server_down_the_cached_token_serves_until_exp_and_never_after() {
        let minter = Arc::new(TestMinter::new(TestJwtKey::new("k1")));
        let cache = JwtSvidCache::new(minter.clone());
        let e = entry("e1", "spiffe://example.org/web", &["unix:uid:1"], 1);
        let a = aud(&["a"]);
        let t0 = now();
        let token = cache.fetch(&e, fixed_id(&e), None, &a, t0).await.unwrap();
        *minter.down_since.lock().unwrap() = Some(t0 + 100);

        // Past half-life (TestMinter: 300 s tokens) the server cannot mint: the cached token,
        // counted once however often it is asked for.
        for at in [t0 + 151, t0 + 200, t0 + 299] {
            assert_eq!(
                cache.fetch(&e, fixed_id(&e), None, &a, at).await.unwrap(),
                token
            );
        }
        assert_eq!(minter.past_half_life.load(Ordering::SeqCst), 1);

        // From `exp` on: never the token, and the error says why.
        let err = cache
            .fetch(&e, fixed_id(&e), None, &a, t0 + 300)
            .await
            .unwrap_err();
        let MintError::Withheld(why) = &err else {
            panic!("{err:?}")
        };
        assert_eq!(why.expired_at, Some(t0 + 300));
        let text = err.to_string();
        assert!(
            text.starts_with("JWT-SVID for spiffe://example.org/web expired at "),
            "{text}"
        );
        assert!(
            text.contains("the server has been unreachable since"),
            "{text}"
        );

        // Another audience was never minted: nothing to fall back on, and it says why.
        let err = cache
            .fetch(&e, fixed_id(&e), None, &aud(&["b"]), t0 + 160)
            .await
            .unwrap_err();
        assert!(
            err.to_string()
                .contains("cannot be minted: the server has been unreachable"),
            "{err}"
        );

        // The server is back: a fresh token is minted.
        *minter.down_since.lock().unwrap() = None;
        let minted = minter.minted.load(Ordering::SeqCst);
        cache
            .fetch(&e, fixed_id(&e), None, &a, t0 + 301)
            .await
            .unwrap();
        assert_eq!(minter.minted.load(Ordering::SeqCst), minted + 1);
    }

    #[test]
    fn half_life_reads_claims() {
        let key = TestJwtKey::new("k");
        let token =
            key.sign(&serde_json::json!({"sub": "spiffe://td/x", "iat": 1000, "exp": 1300}));
        assert_eq!(lifetime(&token), Some((1150, 1300)));
        assert_eq!(lifetime("not.a-token"), None);
    }
}
