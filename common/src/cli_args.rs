//! SPIRE's command lines use Go's `flag` package: single-dash long flags (`-spiffeID x`,
//! `-admin`, `-ttl=60`). clap wants `--spiffeID`. We rewrite the argument vector once, before
//! clap sees it, so both spellings work. Hand-written: no crate parses Go-style flags into clap.
//! Both binaries use this one rule, so a flag is spelled the same way for either.

use std::ffi::OsString;

use clap::Command;

/// Rewrites `-name` / `-name=value` (a single dash followed by a letter and at least one more
/// character) to `--name` / `--name=value`. Everything after a bare `--` is left alone, as are
/// values that follow a flag. `command` (the binary's clap command) says which flags take a
/// value: as in Go's `flag`, the argument after such a flag is its value whatever it looks
/// like, so one that starts with a dash (a join token or key ID such as `-CDHN...`) is handed to
/// clap joined to its flag (`--authorityID=-CDHN...`), where clap cannot mistake it for a flag.
pub fn spire_style(args: impl IntoIterator<Item = OsString>, command: &Command) -> Vec<OsString> {
    let mut command = command.clone();
    // Global flags reach the subcommands only once built.
    command.build();
    let mut current = &command;
    let mut args = args.into_iter().peekable();
    let mut out: Vec<OsString> = args.next().into_iter().collect();
    while let Some(arg) = args.next() {
        let Some(s) = arg.to_str() else {
            out.push(arg);
            continue;
        };
        if s == "--" {
            out.push(arg);
            out.extend(args);
            break;
        }
        if let Some(sub) = current.find_subcommand(s) {
            current = sub;
            out.push(arg);
            continue;
        }
        let bytes = s.as_bytes();
        let single_dash_long = bytes.len() > 2
            && bytes[0] == b'-'
            && bytes[1].is_ascii_alphabetic()
            && bytes[2] != b'=';
        if !single_dash_long {
            out.push(arg);
            continue;
        }
        let name = &s[1..];
        let dash_value = !name.contains('=')
            && takes_value(current, name)
            && args
                .peek()
                .and_then(|v| v.to_str())
                .is_some_and(|v| v.starts_with('-'));
        match args.next_if(|_| dash_value) {
            Some(value) => {
                let mut joined = OsString::from(format!("-{s}="));
                joined.push(value);
                out.push(joined);
            }
            None => out.push(OsString::from(format!("-{s}"))),
        }
    }
    out
}

/// Whether `command` has a long flag `name` (or an alias of one) that needs a value. A flag
/// whose value is optional (`-node` or `-node true`, Go's bool flags) is a switch here: what
/// follows it is read on its own.
fn takes_value(command: &Command, name: &str) -> bool {
    command.get_arguments().any(|arg| {
        arg.get_action().takes_values()
            && arg.get_num_args().is_none_or(|n| n.min_values() > 0)
            && (arg.get_long() == Some(name)
                || arg.get_all_aliases().is_some_and(|a| a.contains(&name)))
    })
}

/// A flag SPIRE's command has and Sigil's does not: refused saying so and why, rather than
/// with clap's "unexpected argument".
pub struct SpireOnlyFlag {
    /// The subcommand path, e.g. `["entry", "show"]`.
    pub command: &'static [&'static str],
    /// The flag's name without dashes, as SPIRE spells it.
    pub flag: &'static str,
    /// Why Sigil lacks it (and what to use instead, where something serves).
    pub why: &'static str,
}

/// The message for the first flag in `args` (as [`spire_style`] returns them) that `table`
/// lists for the subcommand `args` name, e.g. "entry show: -federatesWith is not supported by
/// Sigil: ...".
pub fn spire_only_flag(args: &[OsString], table: &[SpireOnlyFlag]) -> Option<String> {
    let words: Vec<&str> = args.iter().skip(1).filter_map(|a| a.to_str()).collect();
    let path: Vec<&str> = words
        .iter()
        .take_while(|w| !w.starts_with('-'))
        .copied()
        .collect();
    words.iter().find_map(|w| {
        let name = w.strip_prefix("--")?;
        let name = name.split_once('=').map_or(name, |(n, _)| n);
        let hit = table
            .iter()
            .find(|f| f.flag == name && path.starts_with(f.command))?;
        Some(format!(
            "{}: -{name} is not supported by Sigil: {}",
            hit.command.join(" "),
            hit.why
        ))
    })
}

/// The flags (`command path --flag`) of `command` and all its subcommands that have no help
/// line: what a unit test of each binary checks is empty.
pub fn flags_without_help(command: &Command) -> Vec<String> {
    let mut command = command.clone();
    command.build();
    let mut missing = Vec::new();
    collect_flags_without_help(&command, command.get_name(), &mut missing);
    missing
}

fn collect_flags_without_help(command: &Command, path: &str, missing: &mut Vec<String>) {
    for arg in command.get_arguments() {
        if arg.is_hide_set() || arg.get_help().is_some() {
            continue;
        }
        if let Some(long) = arg.get_long() {
            missing.push(format!("{path} --{long}"));
        }
    }
    for sub in command.get_subcommands() {
        collect_flags_without_help(sub, &format!("{path} {}", sub.get_name()), missing);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_without_help_are_listed_with_their_command() {
        use clap::Arg;
        let cmd = Command::new("x")
            .arg(Arg::new("a").long("a").help("documented"))
            .subcommand(
                Command::new("sub")
                    .arg(Arg::new("b").long("b"))
                    .arg(Arg::new("c").long("c").hide(true)),
            );
        assert_eq!(flags_without_help(&cmd), ["x sub --b"]);
    }

    #[test]
    fn spire_only_flags_are_named_with_their_command_and_why() {
        const TABLE: &[SpireOnlyFlag] = &[SpireOnlyFlag {
            command: &["entry", "show"],
            flag: "federatesWith",
            why: "because",
        }];
        let args = |a: &[&str]| a.iter().map(OsString::from).collect::<Vec<_>>();
        assert_eq!(
            spire_only_flag(
                &args(&[
                    "sigil-server",
                    "entry",
                    "show",
                    "--federatesWith=spiffe://b"
                ]),
                TABLE
            )
            .as_deref(),
            Some("entry show: -federatesWith is not supported by Sigil: because")
        );
        // Another command, or a flag as a value, is not this one.
        let other = args(&["sigil-server", "entry", "create", "--federatesWith", "x"]);
        assert_eq!(spire_only_flag(&other, TABLE), None);
        let value = args(&["sigil-server", "entry", "show", "--hint=--federatesWith"]);
        assert_eq!(spire_only_flag(&value, TABLE), None);
    }

    /// A command shaped like the binaries': `entry create` with value flags and a switch.
    fn command() -> Command {
        use clap::{Arg, ArgAction};
        let value = |name: &'static str| Arg::new(name).long(name);
        Command::new("x")
            .arg(value("socketPath").global(true))
            .subcommand(
                Command::new("entry").subcommand(
                    Command::new("create")
                        .arg(value("spiffeID"))
                        .arg(value("selector").action(ArgAction::Append))
                        .arg(value("ttl"))
                        .arg(value("authorityID").alias("authority"))
                        .arg(Arg::new("admin").long("admin").action(ArgAction::SetTrue))
                        .arg(
                            Arg::new("node")
                                .long("node")
                                .num_args(0..=1)
                                .default_missing_value("true"),
                        ),
                ),
            )
    }

    fn rewrite(args: &[&str]) -> Vec<String> {
        spire_style(args.iter().map(OsString::from), &command())
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
    fn a_value_that_starts_with_a_dash_stays_the_flags_value() {
        // Go's `flag` takes the next argument as a value flag's value, whatever it looks like:
        // key IDs and join tokens are base64url or UUIDs and may start with a dash.
        assert_eq!(
            rewrite(&[
                "x",
                "entry",
                "create",
                "-authorityID",
                "-CDHN",
                "-authority",
                "-x",
                "-socketPath",
                "-s",
                "-admin",
                "-spiffeID",
                "-ttl"
            ]),
            [
                "x",
                "entry",
                "create",
                "--authorityID=-CDHN",
                "--authority=-x",
                "--socketPath=-s",
                "--admin",
                "--spiffeID=-ttl"
            ]
        );
        // A switch takes no value: the next argument is read on its own.
        assert_eq!(
            rewrite(&["x", "entry", "create", "-admin", "-ttl", "5"]),
            ["x", "entry", "create", "--admin", "--ttl", "5"]
        );
        // Nor does a flag whose value is optional (`-node`, `-node true`).
        assert_eq!(
            rewrite(&[
                "x",
                "entry",
                "create",
                "-node",
                "-spiffeID",
                "s",
                "-node",
                "true"
            ]),
            [
                "x",
                "entry",
                "create",
                "--node",
                "--spiffeID",
                "s",
                "--node",
                "true"
            ]
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
