//! The whole agent config (`AgentConfig::parse`): never a panic, whatever the text.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sigil_agent::config::{AgentConfig, AgentOverrides};

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = AgentConfig::parse(text, "agent.conf", &AgentOverrides::default());
    }
});
