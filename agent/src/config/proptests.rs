//! The input space of the `agent_config` fuzz target (fuzz/), run in CI as a property test:
//! arbitrary text and edits of a valid config never panic the parser (issue #7 item 4).

use sigil_common::testing::assert_parser_never_panics;

use super::*;

const VALID: &str = r#"
agent {
  data_dir = "/tmp/sigil-proptest"
  log_level = "DEBUG"
  server_address = "127.0.0.1"
  server_port = "8081"
  socket_path = "/tmp/sigil-proptest/agent.sock"
  trust_domain = "example.org"
  trust_bundle_path = "/tmp/sigil-proptest/bundle.crt"
  join_token = "abc"
}
plugins {
  NodeAttestor "join_token" {}
  KeyManager "memory" {}
  WorkloadAttestor "unix" {
    plugin_data {
      discover_workload_path = true
    }
  }
  WorkloadAttestor "k8s" {
    plugin_data {
      node_name_env = "MY_NODE_NAME"
    }
  }
}
health_checks {
  listener_enabled = true
  bind_port = "8082"
}
"#;

#[test]
fn the_seed_is_valid_and_no_text_panics_the_parser() {
    assert_parser_never_panics(VALID, |text| {
        AgentConfig::parse(text, "agent.conf", &AgentOverrides::default())
    });
}
