//! SPIRE's command lines use Go's `flag` package: single-dash long flags (`-spiffeID x`,
//! `-admin`, `-ttl=60`). clap wants `--spiffeID`. We rewrite the argument vector once, before
//! clap sees it, so both spellings work. Hand-written: no crate parses Go-style flags into clap.
//! Both binaries use this one rule, so a flag is spelled the same way for either.

use std::ffi::OsString;

/// Rewrites `-name` / `-name=value` (a single dash followed by a letter and at least one more
/// character) to `--name` / `--name=value`. Everything after a bare `--` is left alone, as are
/// values that follow a flag (they are only rewritten if they look like flags themselves,
/// which a SPIFFE ID, selector, path or number never does).
pub fn spire_style(args: impl IntoIterator<Item = OsString>) -> Vec<OsString> {
    let mut out = Vec::new();
    let mut passthrough = false;
    for arg in args {
        if passthrough {
            out.push(arg);
            continue;
        }
        let Some(s) = arg.to_str() else {
            out.push(arg);
            continue;
        };
        if s == "--" {
            passthrough = true;
            out.push(arg);
            continue;
        }
        let bytes = s.as_bytes();
        let single_dash_long = bytes.len() > 2
            && bytes[0] == b'-'
            && bytes[1].is_ascii_alphabetic()
            && bytes[2] != b'=';
        if single_dash_long {
            out.push(OsString::from(format!("-{s}")));
        } else {
            out.push(arg);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rewrite(args: &[&str]) -> Vec<String> {
        spire_style(args.iter().map(OsString::from))
            .into_iter()
            .map(|a| a.into_string().unwrap())
            .collect()
    }

    #[test]
    fn rewrites_go_flags() {
        assert_eq!(
            rewrite(&[
                "sigil-server",
                "entry",
                "create",
                "-spiffeID",
                "spiffe://td/a",
                "-selector",
                "k8s:ns:x",
                "-ttl=60",
                "-admin"
            ]),
            [
                "sigil-server",
                "entry",
                "create",
                "--spiffeID",
                "spiffe://td/a",
                "--selector",
                "k8s:ns:x",
                "--ttl=60",
                "--admin"
            ]
        );
    }

    #[test]
    fn a_one_letter_name_stays_short_and_any_longer_name_is_long() {
        // Go's `flag` reads `-a=1` as the flag `a` set to 1, as clap reads the short flag
        // `-a=1`; `-a-b` is the flag named `a-b`, a long one for clap.
        assert_eq!(
            rewrite(&["x", "-a=1", "-a-b", "-ab=1", "-h"]),
            ["x", "-a=1", "--a-b", "--ab=1", "-h"]
        );
    }

    #[test]
    fn leaves_other_args() {
        assert_eq!(
            rewrite(&["x", "--already", "-v", "-", "-1", "--", "-raw"]),
            ["x", "--already", "-v", "-", "-1", "--", "-raw"]
        );
    }
}
