//! Acting as an attested agent: the SVID and bundle a real agent stored in its data dir, the
//! agent's own mTLS connection to the server opened with them, and X.509 mint requests with
//! fresh CSRs. For tests that ask the server, with valid agent credentials, for what the agent
//! itself would never ask (another agent's entry, a reserved ID, a call past the SVID's expiry).

use std::time::Duration;

use sigil_agent::server_client::ServerConnection;
use sigil_agent::svid_store::{AgentSvid, SvidStore};
use sigil_proto::sigil::agent::v1 as pb;
use sigil_proto::{Bundle, TrustDomain};

use crate::process::wait_for;
use crate::{Agent, Server};

impl Agent {
    /// The agent SVID and the bundle of `server`'s trust domain, as the agent stored them in
    /// its data dir (waiting up to 10 s for both).
    pub fn stored_credentials(&self, server: &Server) -> (AgentSvid, Bundle) {
        let data = self.dir.path().join("data");
        let td = trust_domain(server);
        wait_for("the agent's stored SVID", Duration::from_secs(10), || {
            let store = SvidStore::open(&data, &data.join("keys")).ok()?;
            Some((store.load_svid().ok()??, store.load_bundle(&td).ok()??))
        })
    }
}

/// The agent API connection an agent holding `svid` opens to `server`, trusting `bundle`. Call
/// it inside a tokio runtime.
pub fn server_connection(server: &Server, svid: &AgentSvid, bundle: &Bundle) -> ServerConnection {
    ServerConnection::new(
        "127.0.0.1",
        server.bind_port,
        &trust_domain(server),
        Some(bundle),
        Some(svid),
    )
    .expect("a connection to the server")
}

/// A one-request `BatchMintX509SVID` for entry `entry_id` with a fresh key's CSR; `spiffe_id`
/// names the instance of a template entry (empty for a fixed entry).
pub fn x509_mint_request(entry_id: &str, spiffe_id: &str) -> pb::BatchMintX509svidRequest {
    x509_mint_request_for_pod(entry_id, spiffe_id, "")
}

/// [`x509_mint_request`] for the pod `pod_uid` (the pod the agent rendered `spiffe_id` for).
pub fn x509_mint_request_for_pod(
    entry_id: &str,
    spiffe_id: &str,
    pod_uid: &str,
) -> pb::BatchMintX509svidRequest {
    let (_key, csr) = sigil_agent::csr::new_key_and_csr(sigil_agent::csr::KeyType::EcP256)
        .expect("a key and CSR");
    pb::BatchMintX509svidRequest {
        requests: vec![pb::X509svidRequest {
            entry_id: entry_id.into(),
            csr,
            spiffe_id: spiffe_id.into(),
            pod_uid: pod_uid.into(),
        }],
    }
}

fn trust_domain(server: &Server) -> TrustDomain {
    TrustDomain::new(&server.options.trust_domain).expect("a valid trust domain")
}
