//! The input space of the `server_config` fuzz target (fuzz/), run in CI as a property test:
//! arbitrary text and edits of a valid config never panic the parser (issue #7 item 4).

use proptest::prelude::*;

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

/// Replaces `text[at..at+len]` (clamped to char boundaries) with `insert`.
fn edit(text: &str, at: usize, len: usize, insert: &str) -> String {
    let floor = |mut i: usize| {
        i = i.min(text.len());
        while !text.is_char_boundary(i) {
            i -= 1;
        }
        i
    };
    let (start, end) = (floor(at), floor(at.saturating_add(len)));
    format!("{}{insert}{}", &text[..start], &text[end..])
}

proptest! {
    #[test]
    fn arbitrary_text_never_panics(text in any::<String>()) {
        let _ = ServerConfig::parse(&text, "server.conf", &ServerOverrides::default());
    }

    #[test]
    fn edited_valid_config_never_panics(
        edits in prop::collection::vec(
            (0..VALID.len(), 0usize..16, "[ -~\\n{}\\[\\]\"=#:.$é\u{0}]{0,12}"),
            1..4,
        ),
    ) {
        let mut text = VALID.to_owned();
        for (at, len, insert) in &edits {
            text = edit(&text, *at, *len, insert);
        }
        let _ = ServerConfig::parse(&text, "server.conf", &ServerOverrides::default());
    }
}

#[test]
fn the_seed_is_valid() {
    ServerConfig::parse(VALID, "server.conf", &ServerOverrides::default()).unwrap();
}
