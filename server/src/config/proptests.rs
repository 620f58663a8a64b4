//! The input space of the `server_config` fuzz target (fuzz/), run in CI as a property test:
//! arbitrary text and edits of a valid config never panic the parser (issue #7 item 4).

use sigil_common::testing::assert_parser_never_panics;

use super::*;

const VALID: &str = r#"
server {
  bind_address = "127.0.0.1"
  bind_port = "8081"
  trust_domain = "example.org"
  data_dir = "/tmp/sigil-proptest"
  ca_ttl = "24h"
  default_x509_svid_ttl = "1h"
  ca_subject = {
    country = ["US"]
    organization = ["SPIFFE"]
  }
}
plugins {
  DataStore "sql" {
    plugin_data {
      database_type = "sqlite3"
      connection_string = "/tmp/sigil-proptest/datastore.sqlite3"
    }
  }
  KeyManager "memory" {}
  NodeAttestor "join_token" {}
  NodeAttestor "k8s_psat" {
    plugin_data {
      clusters = {
        "demo" = {
          service_account_allow_list = ["spire:spire-agent"]
        }
      }
    }
  }
}
health_checks {
  listener_enabled = true
  bind_port = "8080"
}
"#;

#[test]
fn the_seed_is_valid_and_no_text_panics_the_parser() {
    assert_parser_never_panics(VALID, |text| {
        ServerConfig::parse(text, "server.conf", &ServerOverrides::default())
    });
}
