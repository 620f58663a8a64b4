//! A workload's view of an agent: the Workload API endpoint and an independent Rust client on
//! it (the `spiffe` crate, not Sigil's own code).

use std::path::Path;
use std::time::{Duration, Instant};

use crate::{Agent, wait_for};

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

    /// A JWT-SVID for this process and `audience` from the `spiffe` crate's client, waiting up
    /// to 30 s for the entry to arrive.
    ///
    /// # Panics
    /// If none comes.
    pub fn fetch_jwt_svid(&self, rt: &tokio::runtime::Runtime, audience: &str) -> String {
        let socket = self.endpoint();
        let deadline = Instant::now() + Duration::from_secs(30);
        rt.block_on(async {
            loop {
                let attempt = async {
                    let client = spiffe::WorkloadApiClient::connect_to(socket.clone())
                        .await
                        .map_err(|e| e.to_string())?;
                    client
                        .fetch_jwt_svid([audience], None)
                        .await
                        .map(|s| s.token().to_owned())
                        .map_err(|e| e.to_string())
                };
                match attempt.await {
                    Ok(token) => return token,
                    Err(e) if Instant::now() > deadline => panic!("no JWT-SVID: {e}"),
                    Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
                }
            }
        })
    }

    /// `sigil-agent api fetch x509 -write <dir>` (`svid.0.pem`, `svid.0.key`, `bundle.0.pem`)
    /// once this process has an X509-SVID, waiting up to 30 s for it.
    ///
    /// # Panics
    /// If none comes.
    pub fn fetch_x509_svid_files(&self, dir: &Path) {
        std::fs::create_dir_all(dir).expect("create the fetch dir");
        wait_for("the workload SVID", Duration::from_secs(30), || {
            self.cli(&[
                "api",
                "fetch",
                "x509",
                "-write",
                dir.to_str().expect("UTF-8 path"),
            ])
            .status
            .success()
            .then_some(())
        });
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
