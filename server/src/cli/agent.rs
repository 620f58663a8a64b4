//! `agent list|count|show|evict|ban|purge`: SPIRE's flags and output.
//!
//! `list` and `count` filter on the server (`AgentFilter`, in the datastore's queries).
//! `purge` is a client of `ListAgents` and `EvictAgent`, as SPIRE's is: it lists the agents
//! that can re-attest and evicts those whose SVID expired more than `-expiredFor` ago.

use std::path::Path;

use clap::{Args, Subcommand};
use sigil_proto::sigil::admin::v1 as admin;
use sigil_proto::sigil::common::v1 as pb;

use super::OutputArgs;
use super::client::{CliError, CliResult, connect};
use super::entry::parse_selector;
use super::output::{go_time, print_count};
use super::types;
use super::types::agent::{Agent, ExpiredAgent, ExpiredAgents, ListAgentsResponse};

#[derive(Subcommand, Debug)]
pub(super) enum AgentCommand {
    /// Lists attested agents.
    List(AgentFilterArgs),
    /// Shows one attested agent.
    Show(AgentIdArgs),
    /// Counts attested agents.
    Count(AgentFilterArgs),
    /// Deletes an agent's attestation: it must attest again.
    Evict(AgentIdArgs),
    /// Bans an agent: it can no longer renew, sync or re-attest with the same ID.
    Ban(AgentIdArgs),
    /// Evicts the agents that can re-attest and whose SVID expired more than -expiredFor ago.
    Purge(PurgeArgs),
}

/// SPIRE's `agent list` / `agent count` filters.
#[derive(Args, Debug)]
pub(super) struct AgentFilterArgs {
    /// A colon-delimited type:value selector. Can be used more than once.
    #[arg(long = "selector")]
    selector: Vec<String>,
    /// The match mode used when filtering by selectors: exact, any, superset or subset.
    #[arg(long = "matchSelectorsOn", default_value = "superset",
          value_parser = ["exact", "subset", "superset", "any"])]
    match_selectors_on: String,
    /// Filter by attestation type, like join_token or k8s_psat.
    #[arg(long = "attestationType")]
    attestation_type: Option<String>,
    /// 'true': agents that can re-attest, 'false': agents that can't; any other value: all.
    #[arg(long = "canReattest")]
    can_reattest: Option<String>,
    /// 'true': banned agents, 'false': agents not banned; any other value: all.
    #[arg(long = "banned")]
    banned: Option<String>,
    /// Agents whose SVID expires before this time (format: "2006-01-02 15:04:05 -0700 -07").
    #[arg(long = "expiresBefore")]
    expires_before: Option<String>,
    #[command(flatten)]
    out: OutputArgs,
}

impl AgentFilterArgs {
    /// The filter the server applies; a bad selector or date is an error before anything is
    /// sent.
    fn to_filter(&self) -> Result<admin::AgentFilter, CliError> {
        let selector_match = match self.match_selectors_on.as_str() {
            "exact" => admin::SelectorMatch::Exact,
            "subset" => admin::SelectorMatch::Subset,
            "any" => admin::SelectorMatch::Any,
            _ => admin::SelectorMatch::Superset,
        };
        Ok(admin::AgentFilter {
            by_attestation_type: self.attestation_type.clone().unwrap_or_default(),
            by_selectors: self
                .selector
                .iter()
                .map(|s| parse_selector(s))
                .collect::<Result<_, _>>()?,
            selector_match: selector_match as i32,
            by_expires_before: self
                .expires_before
                .as_deref()
                .map(parse_go_date)
                .transpose()?
                .unwrap_or(0),
            by_banned: tri_state(self.banned.as_deref()),
            by_can_reattest: tri_state(self.can_reattest.as_deref()),
        })
    }
}

/// SPIRE's three-state flag: `true`, `false`, anything else means no filter.
fn tri_state(value: Option<&str>) -> Option<bool> {
    match value {
        Some("true") => Some(true),
        Some("false") => Some(false),
        _ => None,
    }
}

/// SPIRE's `-expiresBefore` layout, Go's `2006-01-02 15:04:05 -0700 -07`, into Unix seconds.
/// The two offsets must agree (Go keeps the last one silently).
fn parse_go_date(s: &str) -> Result<i64, CliError> {
    let invalid = |why: &str| {
        CliError(format!(
            "date is not valid: {s:?}: {why} (format: \"2006-01-02 15:04:05 -0700 -07\")"
        ))
    };
    let (rest, short) = s.rsplit_once(' ').ok_or_else(|| invalid("no offset"))?;
    let format = time::format_description::parse_borrowed::<2>(
        "[year]-[month]-[day] [hour]:[minute]:[second] [offset_hour sign:mandatory][offset_minute]",
    )
    .map_err(|e| invalid(&e.to_string()))?;
    let t = time::OffsetDateTime::parse(rest, &format).map_err(|e| invalid(&e.to_string()))?;
    let short_ok = short.len() == 3
        && matches!(short.as_bytes()[0], b'+' | b'-')
        && short[1..].bytes().all(|b| b.is_ascii_digit());
    if !short_ok {
        return Err(invalid(
            "the last field must be an offset in hours, such as -07",
        ));
    }
    let hours: i8 = short.parse().map_err(|_| invalid("bad offset"))?;
    if t.offset().whole_hours() != hours {
        return Err(invalid("the two offsets disagree"));
    }
    Ok(t.unix_timestamp())
}

#[derive(Args, Debug)]
pub(super) struct AgentIdArgs {
    /// The SPIFFE ID of the agent (agent identity).
    #[arg(long = "spiffeID")]
    spiffe_id: String,
    #[command(flatten)]
    out: OutputArgs,
}

#[derive(Args, Debug)]
pub(super) struct PurgeArgs {
    /// Amount of time that has passed since the agent's SVID expired, such as 720h (the
    /// default, 30 days) or 90m.
    #[arg(long = "expiredFor", default_value = "720h")]
    expired_for: String,
    /// Print the agents that would be purged, without purging them.
    #[arg(long = "dryRun")]
    dry_run: bool,
    #[command(flatten)]
    out: OutputArgs,
}

/// SPIRE's block for one agent.
fn print_agent(n: &pb::AttestedNode) {
    let a = Agent::from(n);
    println!("SPIFFE ID         : {}", n.spiffe_id);
    println!("Attestation type  : {}", a.attestation_type);
    println!("Expiration time   : {}", go_time(a.x509svid_expires_at));
    // A banned agent's serial number means nothing.
    if a.banned {
        println!("Banned            : true");
    } else {
        println!("Serial number     : {}", a.x509svid_serial_number);
    }
    println!("Can re-attest     : {}", a.can_reattest);
    println!();
}

/// Every attested agent matching `filter`, page by page.
async fn all_agents(
    socket_path: &Path,
    filter: admin::AgentFilter,
) -> Result<Vec<pb::AttestedNode>, CliError> {
    let mut client = connect(socket_path).await?;
    let mut agents = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = client
            .list_agents(admin::ListAgentsRequest {
                page_size: 1000,
                page_token,
                filter: Some(filter.clone()),
            })
            .await?
            .into_inner();
        agents.extend(page.agents);
        if page.next_page_token.is_empty() {
            return Ok(agents);
        }
        page_token = page.next_page_token;
    }
}

pub(super) async fn execute(c: AgentCommand) -> CliResult {
    match c {
        AgentCommand::List(a) => {
            let agents = all_agents(&a.out.socket_path, a.to_filter()?).await?;
            if a.out.json() {
                types::print(&ListAgentsResponse {
                    agents: agents.iter().map(Agent::from).collect(),
                    next_page_token: String::new(),
                });
            } else if agents.is_empty() {
                println!("No attested agents found");
            } else {
                println!("Found {} attested {}:\n", agents.len(), noun(agents.len()));
                agents.iter().for_each(print_agent);
            }
        }
        AgentCommand::Count(a) => {
            let filter = a.to_filter()?;
            let mut client = connect(&a.out.socket_path).await?;
            let n = client
                .count_agents(admin::CountAgentsRequest {
                    filter: Some(filter),
                })
                .await?
                .into_inner()
                .count;
            print_count(&a.out, n, "attested agent", "attested agents");
        }
        AgentCommand::Show(a) => {
            let mut client = connect(&a.out.socket_path).await?;
            let n = client
                .get_agent(admin::GetAgentRequest {
                    spiffe_id: a.spiffe_id.clone(),
                })
                .await?
                .into_inner();
            if a.out.json() {
                types::print(&Agent::from(&n));
            } else {
                println!("Found an attested agent given its SPIFFE ID\n");
                print_agent(&n);
                for s in &n.selectors {
                    println!("Selectors         : {}:{}", s.r#type, s.value);
                }
            }
        }
        AgentCommand::Evict(a) => {
            let mut client = connect(&a.out.socket_path).await?;
            client
                .evict_agent(admin::EvictAgentRequest {
                    spiffe_id: a.spiffe_id.clone(),
                })
                .await?;
            print_done(&a.out, "Agent evicted successfully");
        }
        AgentCommand::Ban(a) => {
            let mut client = connect(&a.out.socket_path).await?;
            client
                .ban_agent(admin::BanAgentRequest {
                    spiffe_id: a.spiffe_id.clone(),
                })
                .await?;
            print_done(&a.out, "Agent banned successfully");
        }
        AgentCommand::Purge(a) => purge(a).await?,
    }
    Ok(())
}

fn noun(n: usize) -> &'static str {
    if n == 1 { "agent" } else { "agents" }
}

fn print_done(out: &OutputArgs, message: &str) {
    if out.json() {
        // SPIRE prints the empty response message.
        println!("{{}}");
    } else {
        println!("{message}");
    }
}

async fn purge(a: PurgeArgs) -> CliResult {
    let expired_for = humantime::parse_duration(&a.expired_for).map_err(|e| {
        CliError(format!(
            "invalid value {:?} for flag -expiredFor: {e} (a duration such as 720h or 90m)",
            a.expired_for
        ))
    })?;
    let expired_for = i64::try_from(expired_for.as_secs())
        .map_err(|_| CliError(format!("invalid -expiredFor {:?}: too long", a.expired_for)))?;
    let expired = purge_expired(
        &a.out.socket_path,
        expired_for,
        a.dry_run,
        sigil_common::time::unix_now(),
    )
    .await?;
    if a.out.json() {
        types::print(&ExpiredAgents {
            expired_agents: expired,
        });
        return Ok(());
    }
    if expired.is_empty() {
        println!("No agents to purge.");
        return Ok(());
    }
    println!("Found {} expired {}\n", expired.len(), noun(expired.len()));
    if a.dry_run {
        println!("\nAgents that can be purged:");
        for r in &expired {
            println!("SPIFFE ID         : {}", r.agent_id);
        }
        return Ok(());
    }
    let (purged, failed): (Vec<_>, Vec<_>) = expired.iter().partition(|r| r.deleted);
    if !purged.is_empty() {
        println!("Agents purged:");
        for r in &purged {
            println!("SPIFFE ID         : {}", r.agent_id);
        }
    }
    if !failed.is_empty() {
        println!("Agents not purged:");
        for r in &failed {
            println!("SPIFFE ID         : {}", r.agent_id);
            println!("Error             : {}", r.error.as_deref().unwrap_or(""));
        }
    }
    Ok(())
}

/// SPIRE's purge: lists the agents that can re-attest, and evicts (unless `dry_run`) those
/// whose SVID expired more than `expired_for` seconds before `now`. A failed eviction is
/// reported in its result, and the others go on.
async fn purge_expired(
    socket_path: &Path,
    expired_for: i64,
    dry_run: bool,
    now: i64,
) -> Result<Vec<ExpiredAgent>, CliError> {
    let filter = admin::AgentFilter {
        by_can_reattest: Some(true),
        ..Default::default()
    };
    let listed = all_agents(socket_path, filter)
        .await
        .map_err(|e| CliError(format!("failed to list agents: {e}")))?;
    let mut client = connect(socket_path).await?;
    let mut expired = Vec::new();
    for n in listed
        .iter()
        .filter(|n| now.saturating_sub(n.cert_expires_at) > expired_for)
    {
        let mut result = ExpiredAgent {
            agent_id: n.spiffe_id.clone(),
            deleted: false,
            error: None,
        };
        if !dry_run {
            let evicted = client
                .evict_agent(admin::EvictAgentRequest {
                    spiffe_id: n.spiffe_id.clone(),
                })
                .await;
            match evicted {
                Ok(_) => result.deleted = true,
                Err(s) => result.error = Some(CliError::from(s).0),
            }
        }
        expired.push(result);
    }
    Ok(expired)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::admin::testing::TestAdmin;
    use crate::datastore::{AttestedNode, test_node};

    /// Against a real admin API: only agents that can re-attest and expired more than
    /// `-expiredFor` ago are purged; a dry run evicts none; `list`/`count` filters agree.
    #[tokio::test]
    async fn purge_evicts_exactly_the_expired_agents_that_can_reattest() {
        let admin = TestAdmin::start().await;
        let now = sigil_common::time::unix_now();
        for (name, kind, expires_at) in [
            ("old-psat", "k8s_psat", now - 7200),
            ("recent-psat", "k8s_psat", now - 60),
            ("live-psat", "k8s_psat", now + 3600),
            ("old-token", "join_token", now - 7200),
        ] {
            admin
                .datastore
                .create_attested_node(AttestedNode {
                    attestation_type: kind.into(),
                    cert_expires_at: expires_at,
                    ..test_node(&format!("spiffe://example.org/spire/agent/{name}"))
                })
                .await
                .unwrap();
        }
        let ids = |r: &[ExpiredAgent]| -> Vec<String> {
            r.iter()
                .map(|a| a.agent_id.rsplit('/').next().unwrap().to_owned())
                .collect()
        };
        let dry = purge_expired(&admin.socket, 3600, true, now).await.unwrap();
        assert_eq!(ids(&dry), ["old-psat"]);
        assert!(!dry[0].deleted);
        let wider = purge_expired(&admin.socket, 30, true, now).await.unwrap();
        assert_eq!(ids(&wider), ["old-psat", "recent-psat"]);
        let count = |f: admin::AgentFilter| {
            let socket = admin.socket.clone();
            async move {
                let mut c = connect(&socket).await.unwrap();
                c.count_agents(admin::CountAgentsRequest { filter: Some(f) })
                    .await
                    .unwrap()
                    .into_inner()
                    .count
            }
        };
        assert_eq!(count(admin::AgentFilter::default()).await, 4);

        let done = purge_expired(&admin.socket, 3600, false, now)
            .await
            .unwrap();
        assert_eq!(ids(&done), ["old-psat"]);
        assert!(done[0].deleted && done[0].error.is_none());
        assert_eq!(count(admin::AgentFilter::default()).await, 3);
        let reattestable = admin::AgentFilter {
            by_can_reattest: Some(true),
            ..Default::default()
        };
        assert_eq!(count(reattestable).await, 2);
        let expired_tokens = admin::AgentFilter {
            by_attestation_type: "join_token".into(),
            by_expires_before: now,
            ..Default::default()
        };
        assert_eq!(count(expired_tokens).await, 1);
        admin.stop().await;
    }

    #[test]
    fn go_dates() {
        assert_eq!(
            parse_go_date("2026-12-05 14:00:00 +0000 +00").unwrap(),
            1_796_479_200
        );
        assert_eq!(
            parse_go_date("2026-12-05 16:00:00 +0200 +02").unwrap(),
            1_796_479_200
        );
        for bad in [
            "2026-12-05 14:00:00",
            "2026-12-05 14:00:00 +0000 UTC",
            "2026-12-05 14:00:00 +0100 +02",
            "2026-13-05 14:00:00 +0000 +00",
            "tomorrow",
        ] {
            assert!(parse_go_date(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn three_state_flags() {
        assert_eq!(tri_state(Some("true")), Some(true));
        assert_eq!(tri_state(Some("false")), Some(false));
        assert_eq!(tri_state(Some("all")), None);
        assert_eq!(tri_state(None), None);
    }
}
