//! One face for both systems, so every measurement runs the same code against Sigil and
//! SPIRE: a server (its CLI, admin socket, PID, join tokens) and the agents it attests.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use sigil_testkit::{Agent, Server};

use super::peer::{SpireAgent, SpireBins, SpireServer};
use crate::procs;

/// Which system (and, for SPIRE, which server entry cache) a run measures.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum System {
    Sigil,
    /// SPIRE with its default full-reload entry cache.
    Spire,
    /// SPIRE with `experimental { events_based_cache = true }`.
    SpireEvents,
}

impl System {
    pub(crate) fn label(self) -> &'static str {
        match self {
            Self::Sigil => "Sigil",
            Self::Spire => "SPIRE",
            Self::SpireEvents => "SPIRE events",
        }
    }

    /// What the SPIRE server ran with, for the rows' notes.
    pub(crate) fn settings(self) -> &'static str {
        match self {
            Self::Sigil => "",
            Self::Spire => "SPIRE default full entry cache reload every 5s",
            Self::SpireEvents => "SPIRE experimental.events_based_cache = true",
        }
    }
}

pub(crate) enum SystemServer {
    Sigil(Box<Server>),
    Spire(SpireServer, SpireBins),
}

pub(crate) enum SystemAgent {
    Sigil(Agent),
    Spire(SpireAgent),
}

impl SystemServer {
    /// Starts `system`'s server; returns it and its start-up time (Sigil: until the admin API
    /// answers Health; SPIRE: until its health listener's `/ready` answers 200).
    pub(crate) async fn start(
        system: System,
        bins: &SpireBins,
    ) -> anyhow::Result<(Self, Duration)> {
        Ok(match system {
            System::Sigil => {
                let (server, took) = procs::start_server_timed().await?;
                (Self::Sigil(Box::new(server)), took)
            }
            System::Spire | System::SpireEvents => {
                let (server, took) =
                    SpireServer::start(bins, system == System::SpireEvents).await?;
                (Self::Spire(server, bins.clone()), took)
            }
        })
    }

    /// The server binary, whose `entry` subcommands are the CLI.
    pub(crate) fn cli(&self) -> PathBuf {
        match self {
            Self::Sigil(_) => sigil_testkit::server_bin(),
            Self::Spire(s, _) => s.bin.clone(),
        }
    }

    pub(crate) fn socket(&self) -> &Path {
        match self {
            Self::Sigil(s) => &s.socket,
            Self::Spire(s, _) => &s.socket,
        }
    }

    pub(crate) fn pid(&self) -> anyhow::Result<u32> {
        match self {
            Self::Sigil(s) => procs::server_pid(s),
            Self::Spire(s, _) => s.pid(),
        }
    }

    /// A join token valid for a day and the agent SPIFFE ID it attests to.
    pub(crate) async fn join_token(&self) -> anyhow::Result<(String, String)> {
        match self {
            Self::Sigil(s) => procs::join_token(s).await,
            Self::Spire(s, _) => s.join_token().await,
        }
    }

    /// Starts an agent with `token`; returns it and the time until its `/ready` answered 200.
    /// `svids` is how many SVIDs it must hold: SPIRE's LRU cache is sized to it (at least
    /// its default 1000), Sigil's agent holds one per entry anyway.
    pub(crate) async fn start_agent(
        &self,
        token: &str,
        svids: usize,
    ) -> anyhow::Result<(SystemAgent, Duration)> {
        Ok(match self {
            Self::Sigil(s) => {
                let (agent, took) = procs::start_agent(s, token).await?;
                (SystemAgent::Sigil(agent), took)
            }
            Self::Spire(s, bins) => {
                let (agent, took) = s.start_agent(bins, token, svids.max(1000)).await?;
                (SystemAgent::Spire(agent), took)
            }
        })
    }
}

impl SystemAgent {
    pub(crate) fn socket(&self) -> &Path {
        match self {
            Self::Sigil(a) => &a.socket,
            Self::Spire(a) => &a.socket,
        }
    }

    pub(crate) fn pid(&self) -> anyhow::Result<u32> {
        match self {
            Self::Sigil(a) => procs::agent_pid(a),
            Self::Spire(a) => a.pid(),
        }
    }

    /// X.509-SVIDs the agent holds for its entries (Sigil: minted so far; SPIRE: its cache).
    pub(crate) async fn svids_held(&self) -> anyhow::Result<u64> {
        match self {
            Self::Sigil(a) => procs::svids_minted(a).await,
            Self::Spire(a) => a.svids_held().await,
        }
        .context("reading the agent's SVID count")
    }
}
