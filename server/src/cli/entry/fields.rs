//! The entry's fields as `entry create|update` flags (SPIRE's names), and turning them into
//! the proto entry.
//!
//! One job: from what the operator typed to a [`pb::RegistrationEntry`] that passes the
//! server's own checks ([`validate`]), so a typo fails before anything is sent. The parsers
//! of single values (TTL, selector, SPIFFE ID or template) are shared with `entry show`'s
//! filter flags.

use clap::Args;
use sigil_proto::sigil::common::v1 as pb;
use sigil_proto::{IdTemplate, RegistrationEntry, Selector, SpiffeId, TrustDomain, convert};

use crate::cli::client::{CliError, fail};

/// The fields of an entry, as SPIRE's flags name them.
#[derive(Args, Debug, Default)]
pub(super) struct EntryFields {
    /// The SPIFFE ID the entry issues.
    #[arg(long = "spiffeID")]
    spiffe_id: Option<String>,
    /// The SPIFFE ID of the agent (or node alias, or workload) the entry is issued under.
    #[arg(long = "parentID")]
    parent_id: Option<String>,
    /// A selector `type:value`; repeat for several.
    #[arg(long = "selector")]
    selector: Vec<String>,
    /// X.509-SVID TTL in seconds (or a duration such as `1h`).
    #[arg(long = "x509SVIDTTL")]
    x509_svid_ttl: Option<String>,
    /// JWT-SVID TTL in seconds (or a duration such as `5m`).
    #[arg(long = "jwtSVIDTTL")]
    jwt_svid_ttl: Option<String>,
    /// A DNS name added to the X.509-SVID; repeat for several.
    #[arg(long = "dns")]
    dns: Vec<String>,
    /// A trust domain whose bundle workloads of this entry receive; repeat for several.
    #[arg(long = "federatesWith")]
    federates_with: Vec<String>,
    /// SPIRE's admin entry: not supported, refused (only `-admin=false` is accepted).
    #[arg(long = "admin", num_args = 0..=1, default_missing_value = "true")]
    admin: Option<bool>,
    /// SPIRE's downstream entry: not supported, refused (only `-downstream=false` is
    /// accepted).
    #[arg(long = "downstream", num_args = 0..=1, default_missing_value = "true")]
    downstream: Option<bool>,
    /// A hint passed to workloads to tell identities apart.
    #[arg(long = "hint")]
    hint: Option<String>,
    /// Expiry of the entry as Unix seconds.
    #[arg(long = "entryExpiry")]
    entry_expiry: Option<i64>,
    /// Parent is the server itself: a node alias entry (SPIRE's `-node`).
    #[arg(long = "node", num_args = 0..=1, default_missing_value = "true")]
    node: Option<bool>,
    /// `-spiffeID` is an identity template such as `spiffe://example.org/ns/{k8s:ns}/sa/{k8s:sa}`:
    /// each `{type:key}` segment takes the value of the workload's selector `type:key:<value>`.
    #[arg(long = "template", num_args = 0..=1, default_missing_value = "true")]
    template: Option<bool>,
}

/// Parses a TTL flag: whole seconds as SPIRE writes them, or a duration (`1h`); 0 (the
/// server's default) or at least the minimum SVID TTL.
fn parse_ttl(flag: &str, value: &str) -> Result<i32, CliError> {
    let seconds = match value.parse::<i64>() {
        Ok(s) => s,
        Err(_) => humantime::parse_duration(value)
            .map(|d| d.as_secs() as i64)
            .map_err(|_| {
                CliError(format!(
                    "invalid -{flag} {value:?}: expected seconds or a duration such as 1h"
                ))
            })?,
    };
    let seconds = i32::try_from(seconds)
        .ok()
        .filter(|s| *s >= 0)
        .ok_or_else(|| CliError(format!("invalid -{flag} {value:?}: out of range")))?;
    crate::ca::config::check_svid_ttl(seconds as u64)
        .map_err(|m| CliError(format!("invalid -{flag} {value:?}: {m}")))?;
    Ok(seconds)
}

pub(in crate::cli) fn parse_selector(s: &str) -> Result<pb::Selector, CliError> {
    let sel = Selector::new(s).map_err(|e| CliError(format!("invalid -selector: {e}")))?;
    Ok(pb::Selector::from(&sel))
}

fn parse_template(flag: &str, s: &str) -> Result<String, CliError> {
    IdTemplate::new(s)
        .map(|t| t.to_string())
        .map_err(|e| CliError(format!("invalid -{flag} template {s:?}: {e}")))
}

/// A filter's `-spiffeID`: a SPIFFE ID or a template's text.
pub(super) fn parse_spiffe_id_or_template(flag: &str, s: &str) -> Result<String, CliError> {
    parse_spiffe_id(flag, s).or_else(|err| parse_template(flag, s).map_err(|_| err))
}

pub(super) fn parse_spiffe_id(flag: &str, s: &str) -> Result<String, CliError> {
    SpiffeId::new(s)
        .map(|id| id.to_string())
        .map_err(|e| CliError(format!("invalid -{flag} {s:?}: {e}")))
}

impl EntryFields {
    /// Applies every flag that was given to `e`.
    pub(super) fn apply(&self, e: &mut pb::RegistrationEntry) -> Result<(), CliError> {
        for (flag, given) in [("admin", self.admin), ("downstream", self.downstream)] {
            if given == Some(true) {
                return fail(format!(
                    "-{flag} is not supported: Sigil does not implement {flag} entries yet, and \
                     a security flag is never accepted and ignored; nothing was written"
                ));
            }
        }
        if let Some(t) = self.template {
            e.template = t;
        }
        if let Some(id) = &self.spiffe_id {
            e.spiffe_id = if e.template {
                parse_template("spiffeID", id)?
            } else {
                parse_spiffe_id("spiffeID", id)?
            };
        }
        if self.node == Some(true) {
            if e.template {
                return fail("a template entry cannot be a node entry (-node)");
            }
            if self.parent_id.is_some() {
                return fail("-node and -parentID are mutually exclusive");
            }
            let id = parse_spiffe_id("spiffeID", &e.spiffe_id)?;
            let td = SpiffeId::new(&id).map_err(|e| CliError(e.to_string()))?;
            e.parent_id = td.trust_domain().server_id().to_string();
        }
        if let Some(p) = &self.parent_id {
            e.parent_id = parse_spiffe_id("parentID", p)?;
        }
        if !self.selector.is_empty() {
            e.selectors = self
                .selector
                .iter()
                .map(|s| parse_selector(s))
                .collect::<Result<_, _>>()?;
        }
        if let Some(t) = &self.x509_svid_ttl {
            e.x509_svid_ttl = parse_ttl("x509SVIDTTL", t)?;
        }
        if let Some(t) = &self.jwt_svid_ttl {
            e.jwt_svid_ttl = parse_ttl("jwtSVIDTTL", t)?;
        }
        if !self.dns.is_empty() {
            e.dns_names = self.dns.clone();
        }
        if !self.federates_with.is_empty() {
            e.federates_with = self
                .federates_with
                .iter()
                .map(|td| {
                    TrustDomain::new(td)
                        .map(|t| t.to_string())
                        .map_err(|err| CliError(format!("invalid -federatesWith {td:?}: {err}")))
                })
                .collect::<Result<_, _>>()?;
        }
        if let Some(a) = self.admin {
            e.admin = a;
        }
        if let Some(d) = self.downstream {
            e.downstream = d;
        }
        if let Some(h) = &self.hint {
            e.hint = h.clone();
        }
        if let Some(x) = self.entry_expiry {
            e.expires_at = x;
        }
        Ok(())
    }

    /// SPIRE's `entry update` checks: the flags must describe a whole entry.
    pub(super) fn check_whole_entry(&self) -> Result<(), CliError> {
        if self.selector.is_empty() {
            return fail("at least one selector is required (-selector)");
        }
        if self.parent_id.is_none() && self.node != Some(true) {
            return fail("a parent ID is required (-parentID or -node)");
        }
        if self.spiffe_id.is_none() {
            return fail("a SPIFFE ID is required (-spiffeID)");
        }
        Ok(())
    }

    pub(super) fn any_set(&self) -> bool {
        self.spiffe_id.is_some()
            || self.parent_id.is_some()
            || !self.selector.is_empty()
            || self.node.is_some()
            || self.template.is_some()
            || self.x509_svid_ttl.is_some()
            || self.jwt_svid_ttl.is_some()
            || !self.dns.is_empty()
            || !self.federates_with.is_empty()
            || self.admin.is_some()
            || self.downstream.is_some()
            || self.hint.is_some()
            || self.entry_expiry.is_some()
    }
}

/// Checks an entry locally so a typo fails before anything is sent, with the server's own
/// validation rules (the server checks again).
pub(super) fn validate(e: &pb::RegistrationEntry) -> Result<(), CliError> {
    if e.spiffe_id.is_empty() {
        return fail("a SPIFFE ID is required (-spiffeID)");
    }
    if e.parent_id.is_empty() {
        return fail("a parent ID is required (-parentID or -node)");
    }
    if e.selectors.is_empty() {
        return fail("at least one selector is required (-selector type:value)");
    }
    for (field, ttl) in [
        ("x509_svid_ttl", e.x509_svid_ttl),
        ("jwt_svid_ttl", e.jwt_svid_ttl),
    ] {
        // Negative values are refused by the conversion below.
        if let Ok(ttl) = u64::try_from(ttl) {
            crate::ca::config::check_svid_ttl(ttl)
                .map_err(|m| CliError(format!("{field}: {m}")))?;
        }
    }
    convert::check_supported(e)
        .and_then(|()| RegistrationEntry::try_from(e))
        .map(|_| ())
        .map_err(|err| CliError(err.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::entry::file::file_entries;

    #[test]
    fn ttl_accepts_seconds_and_durations() {
        assert_eq!(parse_ttl("x", "3600").unwrap(), 3600);
        assert_eq!(parse_ttl("x", "1h").unwrap(), 3600);
        assert_eq!(parse_ttl("x", "1h30m").unwrap(), 5400);
        assert!(parse_ttl("x", "-5").is_err());
        assert!(parse_ttl("x", "soon").is_err());
        // 0 is "the server's default"; below the floor is refused, naming it.
        assert_eq!(parse_ttl("x", "0").unwrap(), 0);
        assert_eq!(parse_ttl("x", "5s").unwrap(), 5);
        let err = parse_ttl("x509SVIDTTL", "1").unwrap_err().to_string();
        assert_eq!(
            err,
            "invalid -x509SVIDTTL \"1\": 1s is below the minimum SVID TTL of 5s"
        );
    }

    fn fields(args: &[&str]) -> EntryFields {
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            fields: EntryFields,
        }
        let argv = std::iter::once("x").chain(args.iter().copied());
        <Cli as clap::Parser>::try_parse_from(argv).unwrap().fields
    }

    fn built(args: &[&str]) -> Result<pb::RegistrationEntry, CliError> {
        let mut e = pb::RegistrationEntry::default();
        fields(args).apply(&mut e)?;
        validate(&e)?;
        Ok(e)
    }

    #[test]
    fn template_flag_takes_a_template_and_checks_it() {
        let tmpl = "spiffe://example.org/ns/{k8s:ns}/sa/{k8s:sa}";
        let e = built(&[
            "--template",
            "--spiffeID",
            tmpl,
            "--parentID",
            "spiffe://example.org/node",
            "--selector",
            "k8s:ns",
        ])
        .unwrap();
        assert!(e.template);
        assert_eq!(e.spiffe_id, tmpl);

        let bad = |args: &[&str]| built(args).unwrap_err().0;
        let p = [
            "--parentID",
            "spiffe://example.org/node",
            "--selector",
            "k8s:ns",
        ];
        let with = |extra: &[&'static str]| -> Vec<&'static str> {
            extra.iter().copied().chain(p).collect()
        };
        let err = bad(&with(&["--spiffeID", tmpl]));
        assert!(err.contains("-spiffeID"), "without -template: {err}");
        let err = bad(&with(&[
            "--template",
            "--spiffeID",
            "spiffe://example.org/ns-{k8s:ns}",
        ]));
        assert!(err.contains("whole segment"), "{err}");
        let err = bad(&[
            "--template",
            "--spiffeID",
            tmpl,
            "--node",
            "--selector",
            "k8s:ns",
        ]);
        assert!(err.contains("node"), "{err}");
        let err = bad(&with(&["--template", "--spiffeID", tmpl, "--downstream"]));
        assert!(err.contains("downstream"), "{err}");
    }

    /// Security flags Sigil does not implement are refused, never stored and ignored: on the
    /// command line and in a `-data` file; `false` (what every entry is) is accepted.
    #[test]
    fn admin_and_downstream_are_refused() {
        let base = [
            "--spiffeID",
            "spiffe://example.org/a",
            "--parentID",
            "spiffe://example.org/node",
            "--selector",
            "unix:uid:1",
        ];
        let with = |extra: &[&'static str]| -> Vec<&'static str> {
            base.iter().copied().chain(extra.iter().copied()).collect()
        };
        for (flag, arg) in [("admin", "--admin"), ("downstream", "--downstream")] {
            let err = built(&with(&[arg])).unwrap_err().0;
            assert!(err.contains(&format!("-{flag} is not supported")), "{err}");
        }
        let e = built(&with(&["--admin=false", "--downstream=false"])).unwrap();
        assert!(!e.admin && !e.downstream);

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("entries.json");
        for field in ["admin", "downstream"] {
            std::fs::write(
                &path,
                format!(
                    r#"{{"entries":[{{"spiffe_id":"spiffe://example.org/a","parent_id":"spiffe://example.org/n","selectors":[{{"type":"unix","value":"uid:1"}}],"{field}":true}}]}}"#
                ),
            )
            .unwrap();
            let err = file_entries(&path).unwrap_err().0;
            assert!(
                err.contains("entry 0")
                    && err.contains(&format!("{field} entries are not supported")),
                "{err}"
            );
        }
    }

    #[test]
    fn show_filter_accepts_a_template() {
        let tmpl = "spiffe://example.org/ns/{k8s:ns}";
        assert_eq!(parse_spiffe_id_or_template("spiffeID", tmpl).unwrap(), tmpl);
        assert!(parse_spiffe_id_or_template("spiffeID", "spiffe://example.org/a").is_ok());
        assert!(parse_spiffe_id_or_template("spiffeID", "nope").is_err());
    }
}
