//! The `telemetry` section both binaries share. Sigil exports Prometheus metrics only:
//! `telemetry { Prometheus { host port } }` opens a listener of its own serving `/metrics`, as
//! SPIRE's does (the `health_checks` listener serves `/metrics` too). SPIRE's other sinks and
//! its metric filters are refused or accepted with a warning ([`SpireOnly`]), each saying why.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use crate::hcl::{Block, ConfigError, SpireOnly, parse_listen_ip};

/// Why a push sink is refused.
const PUSH_SINK: &str = "Sigil exports Prometheus metrics only: scrape telemetry { Prometheus { host port } } or /metrics on the health_checks listener";

/// SPIRE's keys of the `telemetry` section that Sigil does not implement.
const SPIRE_ONLY: &[(&str, SpireOnly)] = &[
    ("Statsd", SpireOnly::Refused(PUSH_SINK)),
    ("DogStatsd", SpireOnly::Refused(PUSH_SINK)),
    ("M3", SpireOnly::Refused(PUSH_SINK)),
    (
        "InMem",
        SpireOnly::Ignored("SPIRE's in-memory sink, dumped on SIGUSR1, does not exist in Sigil"),
    ),
    (
        "MetricPrefix",
        SpireOnly::Ignored(
            "Sigil's metric names are fixed (sigil_server_*, sigil_agent_*; see README), unlike SPIRE's",
        ),
    ),
    (
        "EnableTrustDomainLabel",
        SpireOnly::Ignored("Sigil's metrics carry no trust-domain label"),
    ),
    (
        "EnableHostnameLabel",
        SpireOnly::Ignored("Sigil's metrics carry no hostname label"),
    ),
    (
        "AllowedPrefixes",
        SpireOnly::Ignored("every Sigil metric is exported; filter in the scraper"),
    ),
    (
        "BlockedPrefixes",
        SpireOnly::Ignored("every Sigil metric is exported; filter in the scraper"),
    ),
    (
        "AllowedLabels",
        SpireOnly::Ignored("every label is exported; relabel in the scraper"),
    ),
    (
        "BlockedLabels",
        SpireOnly::Ignored("every label is exported; relabel in the scraper"),
    ),
];

/// SPIRE's keys of `telemetry { Prometheus { ... } }` that Sigil does not implement.
const PROMETHEUS_SPIRE_ONLY: &[(&str, SpireOnly)] = &[(
    "tls",
    SpireOnly::Refused(
        "the metrics listener serves plain HTTP; bind it to localhost and put a TLS proxy in front",
    ),
)];

/// Reads the `telemetry` section: the Prometheus listener's address when
/// `Prometheus { host port }` is given (`host` defaults to localhost, as in SPIRE).
pub fn prometheus_listener(
    telemetry: Option<Block<'_>>,
) -> Result<Option<SocketAddr>, ConfigError> {
    let Some(mut telemetry) = telemetry else {
        return Ok(None);
    };
    let mut listener = None;
    if let Some(mut prom) = telemetry.block("Prometheus")? {
        let ip = prom.parsed("host", parse_listen_ip)?;
        let port = prom.port("port")?.ok_or_else(|| prom.missing("port"))?;
        prom.spire_only(PROMETHEUS_SPIRE_ONLY)?;
        prom.finish()?;
        listener = Some(SocketAddr::new(
            ip.unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST)),
            port,
        ));
    }
    telemetry.spire_only(SPIRE_ONLY)?;
    telemetry.finish()?;
    Ok(listener)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hcl::Document;

    fn read(text: &str) -> (Result<Option<SocketAddr>, String>, Vec<String>) {
        let doc = Document::parse("t.conf", text).unwrap();
        let mut root = doc.root();
        let out = root
            .block("telemetry")
            .and_then(prometheus_listener)
            .map_err(|e| e.to_string());
        (out, doc.take_warnings())
    }

    #[test]
    fn prometheus_is_a_listener_and_filters_only_warn() {
        let (out, warnings) = read(
            "telemetry {\n  Prometheus {\n    host = \"0.0.0.0\"\n    port = 9988\n  }\n  InMem {}\n  AllowedLabels = []\n}\n",
        );
        assert_eq!(out, Ok(Some("0.0.0.0:9988".parse().unwrap())));
        assert_eq!(
            warnings,
            [
                "t.conf:6: telemetry.InMem: has no effect in Sigil: SPIRE's in-memory sink, dumped on SIGUSR1, does not exist in Sigil",
                "t.conf:7: telemetry.AllowedLabels: has no effect in Sigil: every label is exported; relabel in the scraper",
            ]
        );
        let (out, _) = read("telemetry {\n  Prometheus {\n    port = \"9988\"\n  }\n}\n");
        assert_eq!(out, Ok(Some("127.0.0.1:9988".parse().unwrap())));
        assert_eq!(read("").0, Ok(None));
    }

    #[test]
    fn push_sinks_and_tls_are_refused_saying_why() {
        let (out, _) =
            read("telemetry {\n  Statsd = [\n    { address = \"localhost:8125\" },\n  ]\n}\n");
        assert_eq!(
            out,
            Err(format!(
                "t.conf:2: telemetry.Statsd: not supported by Sigil: {PUSH_SINK}"
            ))
        );
        let (out, _) = read(
            "telemetry {\n  Prometheus {\n    port = 9988\n    tls {\n      cert_file = \"c\"\n    }\n  }\n}\n",
        );
        assert!(
            out.as_ref().unwrap_err().starts_with(
                "t.conf:4: telemetry.Prometheus.tls: not supported by Sigil: the metrics listener serves plain HTTP"
            ),
            "{out:?}"
        );
        let (out, _) = read("telemetry {\n  Prometeus {\n    port = 9988\n  }\n}\n");
        assert_eq!(
            out,
            Err("t.conf:2: telemetry.Prometeus: unknown block".to_owned())
        );
    }
}
