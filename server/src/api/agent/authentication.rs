//! Who calls the agent API: every RPC but AttestAgent authenticates the caller by the agent
//! X.509-SVID it presented in the TLS handshake, before any handler runs
//! ([`AgentAuthenticator`], in the API's [`RpcLayer`](crate::api::middleware::RpcLayer)); the
//! handler reads the [`AgentIdentity`] the layer found ([`caller`]).
//!
//! Renewal follows SPIRE: RenewAgent records the new SVID's serial as the node's
//! `new_cert_serial` and the old SVID keeps working until the agent first presents the new
//! one, which then becomes `cert_serial`; from then on the old SVID is refused. A lost
//! RenewAgent response therefore never locks an agent out.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sigil_proto::{Selector, SpiffeId, TrustDomain};
use tonic::codegen::http::Extensions;
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
use tonic::{Request, Status};
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

use crate::api::audit::Caller;
use crate::api::datastore_status;
use crate::api::middleware::Authorize;
use crate::datastore::{AttestedNode, Datastore};

/// The one RPC an agent calls before it has an SVID.
const ATTEST_AGENT: &str = "AttestAgent";

/// Who called: an attested, unbanned agent presenting its current SVID.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentIdentity {
    pub id: SpiffeId,
    /// The node selectors recorded at attestation.
    pub selectors: Vec<Selector>,
    /// When the SVID the connection was opened with expires: no call is answered after it,
    /// and a sync stream ends then (TLS checks it only at the handshake).
    pub svid_expires: SystemTime,
}

/// The agent the middleware authenticated for this call.
pub(super) fn caller<T>(req: &Request<T>) -> Result<AgentIdentity, Status> {
    req.extensions()
        .get::<AgentIdentity>()
        .cloned()
        .ok_or_else(|| Status::unauthenticated("an agent X.509-SVID is required"))
}

/// Authenticates agents for the agent API's RPCs (see the module docs).
#[derive(Clone, Debug)]
pub(super) struct AgentAuthenticator {
    datastore: Datastore,
    trust_domain: TrustDomain,
}

impl AgentAuthenticator {
    pub(super) fn new(datastore: Datastore, trust_domain: TrustDomain) -> Self {
        Self {
            datastore,
            trust_domain,
        }
    }

    /// Authenticates the caller by the agent SVID it presented in the TLS handshake (already
    /// verified against the bundle by rustls): an agent ID of our trust domain, an attested
    /// node that is not banned, and the node's current (or just renewed) serial.
    async fn authenticate(&self, extensions: &Extensions) -> Result<AgentIdentity, Status> {
        let certs = extensions
            .get::<TlsConnectInfo<TcpConnectInfo>>()
            .and_then(|i| i.peer_certs())
            .filter(|c| !c.is_empty())
            .ok_or_else(|| Status::unauthenticated("an agent X.509-SVID is required"))?;
        let presented = PresentedSvid::parse(&certs[0])?;
        if SystemTime::now() >= presented.not_after {
            return Err(Status::unauthenticated(
                "the agent SVID of this connection has expired; attest again",
            ));
        }
        if presented.id.trust_domain() != &self.trust_domain || !presented.id.is_agent_id() {
            return Err(Status::permission_denied(format!(
                "{} is not an agent ID of trust domain {}",
                presented.id, self.trust_domain
            )));
        }
        let node = node_status(&self.datastore, &presented.id).await?;
        if presented.serial != node.cert_serial {
            if node.new_cert_serial.as_deref() != Some(presented.serial.as_str()) {
                return Err(Status::permission_denied(
                    "agent SVID is not the current one; renew or attest again",
                ));
            }
            // First call with the renewed SVID: it becomes the node's only accepted one.
            self.datastore
                .update_attested_node_serial(
                    &presented.id,
                    &presented.serial,
                    node.cert_expires_at,
                    None,
                )
                .await
                .map_err(datastore_status)?;
        }
        Ok(AgentIdentity {
            id: presented.id,
            selectors: node.selectors,
            svid_expires: presented.not_after,
        })
    }
}

impl Authorize for AgentAuthenticator {
    const METHODS: &'static [&'static str] = super::METHODS;
    const READ_ONLY: &'static [&'static str] = super::READ_ONLY;

    /// The agent the call was authenticated as; for a call refused at authentication, the
    /// SPIFFE ID of the SVID it presented (which rustls verified against the bundle).
    fn caller(extensions: &Extensions) -> Caller {
        let tls = extensions.get::<TlsConnectInfo<TcpConnectInfo>>();
        let id = match extensions.get::<AgentIdentity>() {
            Some(agent) => Some(agent.id.to_string()),
            None => tls
                .and_then(|i| i.peer_certs())
                .and_then(|certs| {
                    certs
                        .first()
                        .and_then(|leaf| PresentedSvid::parse(leaf).ok())
                })
                .map(|svid| svid.id.to_string()),
        };
        Caller {
            id,
            addr: tls
                .and_then(|i| i.get_ref().remote_addr())
                .map(|a| a.to_string()),
            ..Caller::default()
        }
    }

    async fn authorize(
        &self,
        method: &'static str,
        extensions: &mut Extensions,
    ) -> Result<(), Status> {
        if method != ATTEST_AGENT {
            let agent = self.authenticate(extensions).await?;
            extensions.insert(agent);
        }
        Ok(())
    }
}

/// What the presented leaf says.
pub(super) struct PresentedSvid {
    id: SpiffeId,
    /// Hex, no leading zero bytes (as the CA records it).
    pub(super) serial: String,
    not_after: SystemTime,
}

impl PresentedSvid {
    pub(super) fn parse(der: &[u8]) -> Result<Self, Status> {
        let bad = |why: &str| Status::unauthenticated(format!("invalid agent SVID: {why}"));
        let (_, cert) =
            X509Certificate::from_der(der).map_err(|_| bad("not an X.509 certificate"))?;
        let san = cert
            .subject_alternative_name()
            .map_err(|_| bad("malformed subjectAltName"))?
            .ok_or_else(|| bad("no URI SAN"))?;
        let mut uris = san.value.general_names.iter().filter_map(|n| match n {
            GeneralName::URI(u) => Some(*u),
            _ => None,
        });
        let (Some(uri), None) = (uris.next(), uris.next()) else {
            return Err(bad("an X.509-SVID carries exactly one URI SAN"));
        };
        let id = SpiffeId::new(uri).map_err(|e| bad(&e.to_string()))?;
        let raw = cert.tbs_certificate.raw_serial();
        let start = raw
            .iter()
            .position(|&b| b != 0)
            .unwrap_or(raw.len().saturating_sub(1));
        let not_after = u64::try_from(cert.validity().not_after.timestamp())
            .map(|secs| UNIX_EPOCH + Duration::from_secs(secs))
            .map_err(|_| bad("notAfter before 1970"))?;
        Ok(Self {
            id,
            serial: hex::encode(&raw[start..]),
            not_after,
        })
    }
}

/// The attested node, refusing evicted and banned agents.
pub(super) async fn node_status(
    datastore: &Datastore,
    id: &SpiffeId,
) -> Result<AttestedNode, Status> {
    match datastore
        .fetch_attested_node(id)
        .await
        .map_err(datastore_status)?
    {
        None => Err(Status::permission_denied(
            "agent is not attested or was evicted",
        )),
        Some(n) if n.banned => Err(Status::permission_denied("agent is banned")),
        Some(n) => Ok(n),
    }
}
