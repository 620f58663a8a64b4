//! Selectors, one per line, then canonicalized: never a panic; a parsed selector round-trips
//! through `type:value`, and canonicalization is sorted, unique and idempotent.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sigil_proto::Selector;
use sigil_proto::selector::canonicalize;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    let mut parsed = Vec::new();
    for line in s.split('\n') {
        if let Ok(sel) = Selector::new(line) {
            let again = Selector::new(&format!("{}:{}", sel.kind(), sel.value()))
                .expect("a parsed selector re-parses");
            assert_eq!(again, sel);
            parsed.push(sel);
        }
    }
    canonicalize(&mut parsed);
    assert!(parsed.windows(2).all(|w| w[0] < w[1]), "sorted and unique");
    let mut twice = parsed.clone();
    canonicalize(&mut twice);
    assert_eq!(twice, parsed);
});
