//! Tests of the reader as a whole: documents, blocks, typed values and their errors.

use std::time::Duration;

use super::*;

fn doc(text: &str) -> Document {
    Document::parse("test.conf", text).unwrap()
}

#[test]
fn reads_typed_values_with_their_lines() {
    let d = doc(r#"
s {
  name = "x"
  port_s = "8081"
  port_n = 9090
  flag = true
  flag_s = "FALSE"
  ttl = "1h30m"
  list = ["a", "b"]
  n = 42
}
"#);
    let mut root = d.root();
    let mut s = root.block("s").unwrap().unwrap();
    assert_eq!(s.line(), Some(2));
    assert_eq!(s.string("name").unwrap().as_deref(), Some("x"));
    assert_eq!(s.port("port_s").unwrap(), Some(8081));
    assert_eq!(s.port("port_n").unwrap(), Some(9090));
    assert_eq!(s.bool("flag").unwrap(), Some(true));
    assert_eq!(s.bool("flag_s").unwrap(), Some(false));
    assert_eq!(s.duration("ttl").unwrap(), Some(Duration::from_secs(5400)));
    assert_eq!(
        s.string_list("list").unwrap(),
        Some(vec!["a".to_owned(), "b".to_owned()])
    );
    assert_eq!(s.u64("n").unwrap(), Some(42));
    assert_eq!(s.string("absent").unwrap(), None);
    s.finish().unwrap();
    root.finish().unwrap();
}

#[test]
fn value_errors_name_file_line_and_key() {
    let d = doc(
        "s {\n  a = 1\n  p = \"80x\"\n  q = 70000\n  b = \"yes\"\n  l = [1]\n  t = \"${X}\"\n}\n",
    );
    let mut root = d.root();
    let mut s = root.block("s").unwrap().unwrap();
    let msg = |r: Result<(), ConfigError>| r.unwrap_err().to_string();
    assert_eq!(
        msg(s.string("a").map(drop)),
        "test.conf:2: s.a: expected a string, found a number"
    );
    assert_eq!(
        msg(s.port("p").map(drop)),
        r#"test.conf:3: s.p: "80x" is not a valid port"#
    );
    assert_eq!(
        msg(s.port("q").map(drop)),
        "test.conf:4: s.q: 70000 is not a valid port"
    );
    assert_eq!(
        msg(s.bool("b").map(drop)),
        r#"test.conf:5: s.b: "yes" is not true or false"#
    );
    assert_eq!(
        msg(s.string_list("l").map(drop)),
        "test.conf:6: s.l: expected a list of strings, found a number in the list"
    );
    assert!(msg(s.string("t").map(drop)).starts_with("test.conf:7: s.t: interpolation"));
}

#[test]
fn finish_reports_the_first_unread_key_or_block() {
    let d = doc("a = 1\nb {\n}\nc = 2\n");
    let mut root = d.root();
    root.skip("a");
    assert_eq!(
        root.finish().unwrap_err().to_string(),
        "test.conf:2: b: unknown block"
    );

    let d = doc("s {\n  known = 1\n  typo = 2\n}\n");
    let mut root = d.root();
    let mut s = root.block("s").unwrap().unwrap();
    assert!(s.has("known"));
    s.u64("known").unwrap();
    assert_eq!(
        s.finish().unwrap_err().to_string(),
        "test.conf:3: s.typo: unknown key"
    );
    root.finish().unwrap();
}

#[test]
fn blocks_objects_and_labels() {
    let d = doc(r#"
plugins {
  KeyManager "disk" {
    plugin_data {
      keys_path = "/k"
    }
  }
  NodeAttestor "a" {}
  NodeAttestor "b" {
    plugin_data = {
      clusters = {
        "c1" = { x = "1" }
        c2 = {}
      }
    }
  }
}
"#);
    let mut root = d.root();
    let mut plugins = root.block("plugins").unwrap().unwrap();
    let mut km = plugins.labelled_blocks("KeyManager").unwrap();
    assert_eq!(km.len(), 1);
    let (label, km) = &mut km[0];
    assert_eq!(label, "disk");
    assert_eq!(km.path(), "plugins.KeyManager.disk");
    let mut data = km.block("plugin_data").unwrap().unwrap();
    assert_eq!(data.string("keys_path").unwrap().as_deref(), Some("/k"));
    data.finish().unwrap();

    let mut na = plugins.labelled_blocks("NodeAttestor").unwrap();
    assert_eq!(
        na.iter().map(|(l, _)| l.as_str()).collect::<Vec<_>>(),
        ["a", "b"]
    );
    let mut data = na[1].1.block("plugin_data").unwrap().unwrap();
    let mut clusters = data.object_map("clusters").unwrap().unwrap();
    assert_eq!(clusters[0].0, "c1");
    assert_eq!(clusters[1].0, "c2");
    assert_eq!(clusters[0].1.line(), Some(12));
    let err = clusters.remove(0).1.finish().unwrap_err().to_string();
    assert_eq!(
        err,
        "test.conf:12: plugins.NodeAttestor.b.plugin_data.clusters.c1.x: unknown key"
    );
    plugins.finish().unwrap();
}

#[test]
fn flags_replace_file_values() {
    let d = doc("s {\n  p = \"80x\"\n  q = 7\n}\n");
    let mut root = d.root();
    let mut s = root.block("s").unwrap().unwrap();
    // The flag wins, so the file's bad value is never looked at.
    assert_eq!(
        s.port_or_flag("p", "-port", Some("9000")).unwrap(),
        Some(9000)
    );
    assert_eq!(
        s.parsed_or_flag("q", "-q", Some("x"), |v| v
            .parse::<u8>()
            .map_err(|_| format!("{v:?} is bad")))
            .unwrap_err()
            .to_string(),
        r#"command line: -q: "x" is bad"#
    );
    assert_eq!(
        s.parsed_or_flag("r", "-r", None, |v| Ok(v.to_owned()))
            .unwrap(),
        None
    );
    s.finish().unwrap();
    assert_eq!(
        root.error("", "whole file").to_string(),
        "test.conf: whole file"
    );
}

#[test]
fn a_repeated_or_labelled_section_is_an_error() {
    let d = doc("s {\n}\ns {\n}\n");
    let err = d.root().block("s").unwrap_err().to_string();
    assert_eq!(err, "test.conf:3: s: is given more than once");
    let d = doc("s \"x\" {\n}\n");
    assert_eq!(
        d.root().block("s").unwrap_err().to_string(),
        "test.conf:1: s: takes no label"
    );
    let d = doc("s = 3\n");
    assert_eq!(
        d.root().block("s").unwrap_err().to_string(),
        "test.conf:1: s: expected a block or an object, found a number"
    );
}

#[test]
fn syntax_errors_carry_their_line() {
    let err = Document::parse("x.conf", "a {\n  b = \n}\n").unwrap_err();
    assert_eq!(err.line, Some(2));
    assert!(
        err.to_string().starts_with("x.conf:2: HCL syntax error: "),
        "{err}"
    );
}

#[test]
fn file_modes_read_a_leading_zero_as_octal_as_hcl_1_does() {
    let d = doc(
        "a = 0644\nb = 420\nc = \"0600\"\nd = \"0o444\"\ne = 0\nf = 0999\ng = 010000\nh = true\n",
    );
    let mut root = d.root();
    assert_eq!(root.file_mode("a").unwrap(), Some(0o644));
    assert_eq!(root.file_mode("b").unwrap(), Some(0o644));
    assert_eq!(root.file_mode("c").unwrap(), Some(0o600));
    assert_eq!(root.file_mode("d").unwrap(), Some(0o444));
    assert_eq!(root.file_mode("e").unwrap(), Some(0));
    assert_eq!(
        root.file_mode("f").unwrap_err().to_string(),
        "test.conf:6: f: 0999 is not a file mode (0 to 07777)"
    );
    assert!(root.file_mode("g").is_err());
    assert!(root.file_mode("h").is_err());
    assert_eq!(root.file_mode("absent").unwrap(), None);
}

#[test]
fn object_lists_take_a_list_of_objects_or_repeated_blocks() {
    let d =
        doc("l = [{a = \"1\", b = [\"x\"]}, {a = \"2\"}]\nl {\n  a = \"3\"\n}\nbad = [\"s\"]\n");
    let mut root = d.root();
    let items = root.object_list("l").unwrap();
    let got: Vec<(String, Option<String>)> = items
        .into_iter()
        .map(|mut b| {
            let a = b.string("a").unwrap();
            let _ = b.string_list("b").unwrap();
            let path = b.path().to_owned();
            b.finish().unwrap();
            (path, a)
        })
        .collect();
    assert_eq!(
        got,
        [
            ("l[0]".to_owned(), Some("1".to_owned())),
            ("l[1]".to_owned(), Some("2".to_owned())),
            ("l[2]".to_owned(), Some("3".to_owned())),
        ]
    );
    assert_eq!(
        root.object_list("bad").unwrap_err().to_string(),
        "test.conf:5: bad: expected a list of objects, found a string in the list"
    );
    assert!(root.object_list("absent").unwrap().is_empty());
    // An unknown key inside an item names the item.
    let d = doc("l = [{a = \"1\", zz = 2}]\n");
    let mut root = d.root();
    let mut item = root.object_list("l").unwrap().remove(0);
    let _ = item.string("a").unwrap();
    assert_eq!(
        item.finish().unwrap_err().to_string(),
        "test.conf:1: l[0].zz: unknown key"
    );
}

#[test]
fn spire_only_keys_are_refused_saying_why_or_warned_once_in_file_order() {
    const TABLE: &[(&str, SpireOnly)] = &[
        ("gone", SpireOnly::Refused("it is gone")),
        ("tuning", SpireOnly::Ignored("nothing to tune")),
        (
            "feature",
            SpireOnly::RefusedUnless(Off::False, "no such feature"),
        ),
        (
            "mode",
            SpireOnly::RefusedUnless(Off::Str("never"), "no such mode"),
        ),
        ("list", SpireOnly::RefusedUnless(Off::Empty, "no such list")),
    ];
    let read = |body: &str| {
        let d = doc(&format!("s {{\n{body}}}\n"));
        let mut root = d.root();
        let mut s = root.block("s").unwrap().unwrap();
        let out = s
            .spire_only(TABLE)
            .and_then(|()| s.finish())
            .map_err(|e| e.to_string());
        (out, d.take_warnings())
    };
    // Accepted: one warning each, in file order, naming file, line and key.
    let (out, warnings) =
        read("  mode = \"NEVER\"\n  tuning = 5\n  feature = false\n  list = []\n  other {\n  }\n");
    assert_eq!(out, Err("test.conf:6: s.other: unknown block".to_owned()));
    assert_eq!(
        warnings,
        [
            "test.conf:2: s.mode: has no effect in Sigil: no such mode",
            "test.conf:3: s.tuning: has no effect in Sigil: nothing to tune",
            "test.conf:4: s.feature: has no effect in Sigil: no such feature",
            "test.conf:5: s.list: has no effect in Sigil: no such list",
        ]
    );
    // Refused: whatever the value, or unless it is the one that switches the feature off; a
    // block is never "off".
    for (body, want) in [
        (
            "  gone = false\n",
            "test.conf:2: s.gone: not supported by Sigil: it is gone",
        ),
        (
            "  feature = \"true\"\n",
            "test.conf:2: s.feature: not supported by Sigil: no such feature",
        ),
        (
            "  mode = \"auto\"\n",
            "test.conf:2: s.mode: not supported by Sigil: no such mode",
        ),
        (
            "  list = [\"a\"]\n",
            "test.conf:2: s.list: not supported by Sigil: no such list",
        ),
        (
            "  feature {\n  }\n",
            "test.conf:2: s.feature: not supported by Sigil: no such feature",
        ),
        (
            "  tuning = 1\n  gone {}\n",
            "test.conf:3: s.gone: not supported by Sigil: it is gone",
        ),
    ] {
        assert_eq!(read(body).0, Err(want.to_owned()), "{body}");
    }
    // Not in the table: still unknown.
    assert_eq!(
        read("  tunning = 5\n").0,
        Err("test.conf:2: s.tunning: unknown key".to_owned())
    );
}

#[test]
fn an_hcl1_one_line_block_gets_the_multi_line_form() {
    let err = Document::parse(
        "server.conf",
        "plugins {\n    KeyManager \"disk\" { plugin_data { keys_path = \"k.json\" } }\n}\n",
    )
    .unwrap_err();
    assert_eq!(err.line, Some(2));
    assert_eq!(
        err.to_string(),
        "server.conf:2: a block written on one line cannot hold a nested block (HCL 1 style, as \
         SPIRE accepts it); Sigil reads HCL 2, so write it over several lines:\n    \
         KeyManager \"disk\" {\n        plugin_data {\n            keys_path = \"k.json\"\n        }\n    }"
    );
    // Other syntax errors keep the parser's message.
    let err = Document::parse("server.conf", "server {\n  bind_port 8081\n}\n").unwrap_err();
    assert!(err.message.starts_with("HCL syntax error: "), "{err}");
}
