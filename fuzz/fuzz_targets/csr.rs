//! CSR handling (`Ca::sign_x509_svid_csr`) on arbitrary DER: never a panic; an SVID is only
//! signed for a CSR whose public key it then carries.
#![no_main]

use std::sync::{Arc, LazyLock};
use std::time::SystemTime;

use libfuzzer_sys::fuzz_target;
use sigil_proto::{SpiffeId, TrustDomain};
use sigil_server::ca::{Ca, CaConfig};
use sigil_server::key_manager::MemoryKeyManager;

static CA: LazyLock<(Ca, SpiffeId)> = LazyLock::new(|| {
    let td = TrustDomain::new("example.org").expect("valid trust domain");
    let (ca, _) = Ca::new(
        CaConfig::new(td),
        Arc::new(MemoryKeyManager::new()),
        None,
        SystemTime::now(),
    )
    .expect("an in-memory CA");
    let id = SpiffeId::new("spiffe://example.org/fuzz").expect("valid SPIFFE ID");
    (ca, id)
});

fuzz_target!(|data: &[u8]| {
    let (ca, id) = &*CA;
    let _ = sigil_server::ca::x509::csr_public_key(data, id);
    let _ = ca.sign_x509_svid_csr(data, id, None, &[]);
});
