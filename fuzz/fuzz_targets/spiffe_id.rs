//! SPIFFE IDs and trust domain names: never a panic, and whatever parses round-trips.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sigil_proto::spiffe_id::{validate_path, validate_segment};
use sigil_proto::{SpiffeId, TrustDomain};

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(id) = SpiffeId::new(s) {
        let again = SpiffeId::new(&id.to_string()).expect("a parsed SPIFFE ID re-parses");
        assert_eq!(again, id);
        let rebuilt = SpiffeId::from_path(id.trust_domain(), id.path())
            .expect("trust domain + path of a valid ID is valid");
        assert_eq!(rebuilt, id);
        // Agent and server IDs are distinct kinds of IDs with a path.
        assert!(!(id.is_agent_id() && id.is_server_id()), "{id}");
        if id.is_agent_id() || id.is_server_id() {
            assert!(id.is_workload_id(), "{id}");
        }
        assert_eq!(id.is_workload_id(), !id.path().is_empty());
    }
    if let Ok(td) = TrustDomain::new(s) {
        let again = TrustDomain::new(td.as_str()).expect("a parsed trust domain re-parses");
        assert_eq!(again, td);
        let _ = td.server_id();
        let _ = SpiffeId::new(&td.id_string());
    }
    let _ = validate_path(s);
    let _ = validate_segment(s);
});
