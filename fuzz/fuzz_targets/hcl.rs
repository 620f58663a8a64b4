//! The HCL reader both config files go through: parse, then walk every block with each typed
//! accessor the configs use. Never a panic, whatever the text.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sigil_common::hcl::{Block, Builder, Document, PluginTable};
use sigil_common::health_checks::HealthConfig;

/// Keys the server and agent configs read, so the accessors meet the values the fuzzer puts
/// under them.
const KEYS: &[&str] = &[
    "trust_domain",
    "data_dir",
    "log_level",
    "bind_address",
    "bind_port",
    "server_port",
    "socket_path",
    "ca_ttl",
    "default_x509_svid_ttl",
    "join_token",
    "insecure_bootstrap",
    "audience",
    "clusters",
    "connection_string",
    "listener_enabled",
    "port",
];

fn walk(mut block: Block<'_>, depth: usize) {
    let _ = (block.path().len(), block.line());
    for key in KEYS {
        let _ = block.string(key);
        let _ = block.duration(key);
        let _ = block.bool(key);
        let _ = block.port(key);
        let _ = block.u64(key);
        let _ = block.string_list(key);
        let _ = block.optional_path(key);
    }
    if depth < 4 {
        let _ = block.object_map("clusters").map(|m| {
            for (_, b) in m.into_iter().flatten() {
                walk(b, depth + 1);
            }
        });
        for ident in block.block_idents() {
            if let Ok(subs) = block.labelled_blocks(&ident) {
                for (_, b) in subs {
                    walk(b, depth + 1);
                }
            }
            if let Ok(Some(b)) = block.block(&ident) {
                walk(b, depth + 1);
            }
        }
    }
    let _ = block.finish();
}

/// The plugin table, with plugins that take settings, need them, or take none.
fn plugins(table: &mut PluginTable<'_>) {
    let walk_data = |p: &mut sigil_common::hcl::Plugin<'_>| {
        if let Some(data) = p.data() {
            walk(data, 1);
        }
        Ok(())
    };
    let needs_data = |p: &mut sigil_common::hcl::Plugin<'_>| p.required_data().map(|d| walk(d, 1));
    let builders: &[Builder<'_, ()>] = &[
        ("disk", &walk_data),
        ("k8s_psat", &needs_data),
        ("memory", &|_| Ok(())),
    ];
    for kind in ["DataStore", "KeyManager", "NodeAttestor", "WorkloadAttestor", "Notifier"] {
        let _ = table.exactly_one(kind, builders);
        let _ = table.at_most_one(kind, builders);
        let _ = table.each_once(kind, builders);
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(doc) = Document::parse("fuzz.conf", text) else {
        return;
    };
    let mut root = doc.root();
    if let Ok(health) = root.block("health_checks") {
        let _ = HealthConfig::from_block(health);
    }
    if let Ok(mut table) = PluginTable::from_root(&mut root) {
        plugins(&mut table);
        let _ = table.finish();
    }
    walk(root, 0);
});
