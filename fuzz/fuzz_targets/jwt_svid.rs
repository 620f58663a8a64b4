//! JWT-SVID validation (the agent's ValidateJWTSVID path) on arbitrary token strings against a
//! bundle with one real JWT authority: never a panic, and nothing validates that the CA did
//! not sign (the fuzzer cannot forge an ES256 signature).
#![no_main]

use std::collections::BTreeMap;
use std::sync::{Arc, LazyLock};
use std::time::{SystemTime, UNIX_EPOCH};

use libfuzzer_sys::fuzz_target;
use sigil_agent::workload_api::jwt::validate_jwt_svid;
use sigil_proto::{Bundle, SpiffeId, TrustDomain};
use sigil_server::ca::{Ca, CaConfig};
use sigil_server::key_manager::MemoryKeyManager;

struct Fixture {
    td: TrustDomain,
    bundle: Arc<Bundle>,
    /// One token the CA really signed, so the target checks that validation can succeed.
    valid: String,
}

static FIXTURE: LazyLock<Fixture> = LazyLock::new(|| {
    let td = TrustDomain::new("example.org").expect("valid trust domain");
    let (ca, _) = Ca::new(
        CaConfig::new(td.clone()),
        Arc::new(MemoryKeyManager::new()),
        None,
        SystemTime::now(),
    )
    .expect("an in-memory CA");
    let id = SpiffeId::new("spiffe://example.org/fuzz").expect("valid SPIFFE ID");
    let valid = ca
        .sign_jwt_svid(&id, &["fuzz".to_owned()], None)
        .expect("a JWT-SVID")
        .token;
    Fixture {
        td,
        bundle: ca.bundle(),
        valid,
    }
});

fuzz_target!(|data: &[u8]| {
    let f = &*FIXTURE;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let bundles = BTreeMap::from([(f.td.clone(), &*f.bundle)]);
    let token = String::from_utf8_lossy(data);
    let result = validate_jwt_svid(&token, "fuzz", &f.td, &bundles, &[], now);
    if result.is_ok() {
        // Only the CA's own token (the seed) can validate.
        assert_eq!(token, f.valid, "a token the CA never signed validated");
    }
    assert!(validate_jwt_svid(&f.valid, "fuzz", &f.td, &bundles, &[], now).is_ok());
});
