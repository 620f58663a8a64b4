//! Parsers for the two `/proc/<pid>` files the agent reads to know a process: `stat` (its
//! state and start time) and `status` (its user and group IDs). Used by the caller binding of
//! the agent's sockets (`endpoints::peer`) and by the `unix` workload attestor. I/O-free, so
//! they are tested on text.

/// The parts of `/proc/<pid>/stat` the agent uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stat {
    /// Field 3: `R`, `S`, `D`, `Z` (exited, not yet reaped), `X` (dead)...
    pub state: char,
    /// Field 22: clock ticks after boot at which the process started. Together with the PID
    /// it names one process for the whole uptime (a reused PID has a later start time).
    pub start_time: u64,
}

impl Stat {
    /// Whether the process has exited (a zombie or dead task still has a `/proc` entry).
    pub fn exited(&self) -> bool {
        matches!(self.state, 'Z' | 'X' | 'x')
    }
}

/// Parses `/proc/<pid>/stat`. The command name (field 2) is in parentheses and may itself
/// contain spaces and parentheses, so fields are counted from the last `)`.
pub fn parse_stat(text: &str) -> Result<Stat, String> {
    let rest = text
        .rfind(')')
        .map(|i| &text[i + 1..])
        .ok_or("no command name")?;
    let mut fields = rest.split_whitespace();
    let state = fields
        .next()
        .and_then(|s| s.chars().next())
        .ok_or("no state")?;
    // Field 22 is the 19th after field 3.
    let field = fields.nth(18).ok_or("too few fields")?;
    let start_time = field
        .parse()
        .map_err(|_| format!("bad starttime {field:?}"))?;
    Ok(Stat { state, start_time })
}

/// The user and group IDs of `/proc/<pid>/status`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Credentials {
    /// The `Uid:` line: real, effective, saved set, filesystem.
    pub uids: Vec<u32>,
    /// The `Gid:` line, in the same order.
    pub gids: Vec<u32>,
    /// `Groups:`, the supplementary GIDs.
    pub groups: Vec<u32>,
}

impl Credentials {
    /// The effective UID: what the kernel checks for access and what a setuid binary runs as
    /// (the second value; the only one where a line has a single value).
    pub fn effective_uid(&self) -> u32 {
        effective(&self.uids)
    }

    /// The effective GID.
    pub fn effective_gid(&self) -> u32 {
        effective(&self.gids)
    }
}

fn effective(ids: &[u32]) -> u32 {
    // Non-empty by construction (`parse_status`).
    ids.get(1)
        .or_else(|| ids.first())
        .copied()
        .unwrap_or(u32::MAX)
}

/// Parses the `Uid:`, `Gid:` and `Groups:` lines of `/proc/<pid>/status`.
pub fn parse_status(text: &str) -> Result<Credentials, String> {
    let mut uids = None;
    let mut gids = None;
    let mut groups = Vec::new();
    for line in text.lines() {
        // Read on every Workload API call: the ~50 other lines are skipped on their first byte.
        if !matches!(line.as_bytes().first(), Some(b'U' | b'G')) {
            continue;
        }
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        let ids = || -> Result<Vec<u32>, String> {
            value
                .split_whitespace()
                .map(|v| v.parse().map_err(|_| format!("bad id {v:?} in {key}")))
                .collect()
        };
        let non_empty = |ids: Vec<u32>| {
            if ids.is_empty() {
                Err(format!("empty {key} line"))
            } else {
                Ok(ids)
            }
        };
        match key {
            "Uid" => uids = Some(non_empty(ids()?)?),
            "Gid" => gids = Some(non_empty(ids()?)?),
            "Groups" => groups = ids()?,
            _ => {}
        }
    }
    Ok(Credentials {
        uids: uids.ok_or("no Uid line")?,
        gids: gids.ok_or("no Gid line")?,
        groups,
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A `stat` line with an awkward command name, state `state` and start time `start`.
    pub(crate) fn stat_line(state: char, start: u64) -> String {
        // Fields 4..=21 as placeholders, then field 22.
        let filler = vec!["0"; 18].join(" ");
        format!("4242 (my (odd) proc) {state} {filler} {start} 0 0\n")
    }

    #[test]
    fn stat_fields_are_counted_from_the_last_parenthesis() {
        assert_eq!(
            parse_stat(&stat_line('S', 123456)),
            Ok(Stat {
                state: 'S',
                start_time: 123456
            })
        );
        assert!(parse_stat(&stat_line('Z', 1)).unwrap().exited());
        assert!(!parse_stat(&stat_line('R', 1)).unwrap().exited());
        assert!(parse_stat("1 (x) S 1 2").is_err());
        assert!(parse_stat("garbage").is_err());
        assert!(parse_stat("1 (x) ").is_err());
    }

    #[test]
    fn own_stat_parses_to_the_kernel_value() {
        let own = std::fs::read_to_string("/proc/self/stat").unwrap();
        let field22: u64 = own
            .rsplit(')')
            .next()
            .unwrap()
            .split_whitespace()
            .nth(19)
            .unwrap()
            .parse()
            .unwrap();
        let stat = parse_stat(&own).unwrap();
        assert_eq!(stat.start_time, field22);
        assert!(!stat.exited());
    }

    #[test]
    fn status_ids_and_effective_values() {
        let status = "Name:\tweb\nUid:\t1000\t4001\t1000\t1000\nGid:\t1000\t4002\t1000\t1000\nGroups:\t4003 4004 \n";
        let creds = parse_status(status).unwrap();
        assert_eq!(creds.uids, [1000, 4001, 1000, 1000]);
        assert_eq!(creds.effective_uid(), 4001);
        assert_eq!(creds.effective_gid(), 4002);
        assert_eq!(creds.groups, [4003, 4004]);
        let single = parse_status("Uid:\t5\nGid:\t6\n").unwrap();
        assert_eq!((single.effective_uid(), single.effective_gid()), (5, 6));
        assert!(single.groups.is_empty());
        assert!(parse_status("Gid:\t6\t6\t6\t6\n").is_err());
        assert!(parse_status("Uid:\tx\nGid:\t6\n").is_err());
        assert!(parse_status("Uid:\nGid:\t6\n").is_err());
    }
}
