//! The whole server config (`ServerConfig::parse`): never a panic, whatever the text.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sigil_server::config::{ServerConfig, ServerOverrides};

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = ServerConfig::parse(text, "server.conf", &ServerOverrides::default());
    }
});
