//! A workload's view of an agent: the Workload API endpoint and an independent Rust client on
//! it (the `spiffe` crate, not Sigil's own code).

use crate::Agent;

impl Agent {
    /// The Workload API endpoint, `unix://<socket>`, as SPIFFE clients take it.
    pub fn endpoint(&self) -> String {
        format!("unix://{}", self.socket.display())
    }

    /// The `spiffe` crate's Workload API client on this agent.
    ///
    /// # Panics
    /// If it cannot connect.
    pub async fn workload_client(&self) -> spiffe::WorkloadApiClient {
        spiffe::WorkloadApiClient::connect_to(self.endpoint())
            .await
            .expect("a Workload API client")
    }
}

/// The URI SANs of each X509-SVID leaf in `sigil-agent api fetch x509 -output json` output
/// (`svids[].x509_svid`: the chain as base64 of concatenated DER, leaf first), read with
/// x509-parser.
///
/// # Panics
/// If the output is not of that shape.
pub fn leaf_uris(fetched: &serde_json::Value) -> Vec<Vec<String>> {
    use base64::Engine as _;
    let svids = fetched["svids"].as_array().cloned().unwrap_or_default();
    svids
        .iter()
        .map(|s| {
            let der = base64::engine::general_purpose::STANDARD
                .decode(s["x509_svid"].as_str().expect("x509_svid"))
                .expect("base64");
            uri_sans(&der)
        })
        .collect()
}

/// The URI SANs of the first certificate in `der` (a leaf, or a chain leaf first), read with
/// x509-parser.
///
/// # Panics
/// If it is not a certificate with a SAN extension.
pub fn uri_sans(der: &[u8]) -> Vec<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).expect("a certificate");
    let san = cert
        .subject_alternative_name()
        .expect("one SAN extension")
        .expect("a SAN extension");
    san.value
        .general_names
        .iter()
        .filter_map(|n| match n {
            x509_parser::extensions::GeneralName::URI(u) => Some((*u).to_owned()),
            _ => None,
        })
        .collect()
}
