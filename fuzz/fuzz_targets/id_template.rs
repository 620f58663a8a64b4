//! Identity templates: the first line is the template, the others the workload's selectors.
//! Never a panic; a rendered ID is a valid SPIFFE ID in the template's trust domain that the
//! template matches, and never in the reserved namespace `/spire/*`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sigil_proto::id_template::template_selectors_match;
use sigil_proto::{IdTemplate, Selector, SpiffeId};

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    let mut lines = s.split('\n');
    let Some(template) = lines.next() else {
        return;
    };
    let selectors: Vec<Selector> = lines.filter_map(|l| Selector::new(l).ok()).collect();
    let _ = template_selectors_match(&selectors, &selectors);
    let Ok(template) = IdTemplate::new(template) else {
        return;
    };
    let _ = template.placeholders().count();
    if let Ok(id) = template.render(&selectors) {
        assert_eq!(id.trust_domain(), template.trust_domain());
        assert_eq!(SpiffeId::new(&id.to_string()).as_ref(), Ok(&id));
        assert!(!id.is_reserved(), "{id} is reserved");
        assert!(
            template.matches(&id),
            "{id} does not match its own template"
        );
    }
});
