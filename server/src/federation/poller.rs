//! Polls each `federates_with` bundle endpoint and stores what it serves (SPIFFE Federation
//! §5): at the foreign bundle's `spiffe_refresh_hint` (clamped, see [`next_poll`]), retrying
//! with backoff on failure while the last good bundle stays in force.
//!
//! `https_spiffe` endpoints are authenticated against the bundle we currently hold for the
//! trust domain of `endpoint_spiffe_id` (bootstrapped with `bundle set` or with the bundle
//! given to `federation create`; as SPIRE, usually the peer's own) and must present that ID;
//! `https_web` ones against the system's Web PKI roots (`rustls-native-certs`, which honours
//! `SSL_CERT_FILE`). The HTTP client is hyper's HTTP/1.1 over tokio-rustls, both already in
//! the dependency tree.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use http_body_util::{BodyExt, Limited};
use hyper_util::rt::TokioIo;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use sigil_common::tls::{Roots, SpiffeServerVerifier};
use sigil_proto::{Bundle, TrustDomain};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_rustls::TlsConnector;
use tokio_util::sync::CancellationToken;

use super::config::{EndpointProfile, FederatesWith};
use super::status::PeerStatuses;
use super::{BundleSet, FederatedBundles, Refreshed};

/// Bounds on the refresh hint a foreign server may ask for.
pub const MIN_REFRESH: Duration = Duration::from_secs(5);
pub const MAX_REFRESH: Duration = Duration::from_secs(3600);
/// Used when the bundle carries no hint (SPIRE's default).
pub const DEFAULT_REFRESH: Duration = Duration::from_secs(300);
/// First retry after a failure; doubles per consecutive failure, up to the refresh interval.
const RETRY_BASE: Duration = Duration::from_secs(1);
const TIMEOUT: Duration = Duration::from_secs(10);
/// Largest bundle document accepted.
const MAX_BODY: usize = 4 << 20;

#[derive(Debug, thiserror::Error)]
pub enum PollError {
    #[error("invalid endpoint URL: {0}")]
    Url(String),
    #[error("no bundle held for {0} to authenticate its endpoint; run `bundle set` first")]
    NoBundle(TrustDomain),
    #[error("cannot connect: {0}")]
    Connect(std::io::Error),
    #[error("TLS: {0}")]
    Tls(String),
    #[error("HTTP: {0}")]
    Http(String),
    #[error("the endpoint answered {0}")]
    Status(u16),
    #[error("invalid bundle: {0}")]
    Bundle(#[from] sigil_proto::bundle::BundleError),
    #[error("timed out")]
    Timeout,
}

/// How long to wait before the next poll: the bundle's refresh hint (clamped to
/// [`MIN_REFRESH`]..[`MAX_REFRESH`], [`DEFAULT_REFRESH`] when absent) after a success; after
/// `failures` consecutive failures, an exponential backoff from [`RETRY_BASE`] that never
/// exceeds that interval.
pub fn next_poll(refresh_hint: Option<u64>, failures: u32) -> Duration {
    let interval = refresh_hint
        .map_or(DEFAULT_REFRESH, Duration::from_secs)
        .clamp(MIN_REFRESH, MAX_REFRESH);
    if failures == 0 {
        return interval;
    }
    let backoff = RETRY_BASE.saturating_mul(1u32 << (failures - 1).min(16));
    backoff.min(interval)
}

/// What a poll ended with: the bundle stored or confirmed, or why not.
pub type PollOutcome = Result<Refreshed, String>;

/// A request to poll at once, answered when that poll ends.
pub type RefreshRequest = oneshot::Sender<PollOutcome>;

/// Polls one foreign trust domain until `cancel` fires, recording each poll in `statuses` and
/// polling at once for each request on `requests` (`federation refresh`).
pub async fn poll_forever(
    target: FederatesWith,
    bundles: Arc<FederatedBundles>,
    statuses: Arc<PeerStatuses>,
    mut requests: mpsc::Receiver<RefreshRequest>,
    cancel: CancellationToken,
) {
    let td = target.trust_domain.clone();
    // The trust domain whose bundle authenticates the endpoint.
    let auth_td = match &target.profile {
        EndpointProfile::HttpsSpiffe { endpoint_spiffe_id } => {
            endpoint_spiffe_id.trust_domain().clone()
        }
        EndpointProfile::HttpsWeb => td.clone(),
    };
    let mut failures = 0u32;
    let mut updates = bundles.subscribe();
    let mut waiting: Vec<RefreshRequest> = Vec::new();
    loop {
        updates.borrow_and_update();
        statuses.update(&td, |s| s.next_refresh = None);
        let outcome = poll_once(&target, &bundles).await;
        let now = SystemTime::now();
        match &outcome {
            Ok(Refreshed::Updated) => failures = 0,
            Ok(Refreshed::Unchanged) => {
                failures = 0;
                tracing::debug!(trust_domain = %td, "federated bundle unchanged");
            }
            Err(e) => {
                failures += 1;
                tracing::warn!(trust_domain = %td, url = %target.url, error = %e, "cannot refresh the federated bundle; keeping the last good one");
            }
        }
        let hint = bundles.fetch(&td).and_then(|b| b.refresh_hint);
        let wait = next_poll(hint, failures);
        statuses.update(&td, |s| {
            s.last_refresh = Some(now);
            if outcome.is_ok() {
                s.last_success = Some(now);
            }
            s.last_error = outcome.as_ref().err().cloned();
            s.next_refresh = Some(now + wait);
        });
        for reply in waiting.drain(..) {
            let _ = reply.send(outcome.clone());
        }
        let held = bundles.fetch(&auth_td);
        tokio::select! {
            () = cancel.cancelled() => return,
            () = tokio::time::sleep(wait) => {}
            Some(reply) = requests.recv() => {
                tracing::info!(trust_domain = %td, "refresh requested; polling now");
                waiting.push(reply);
            }
            // After a failure, an operator's `bundle set` for the endpoint's trust domain
            // (typically the https_spiffe bootstrap) is tried at once rather than after the
            // backoff.
            () = held_bundle_changed(&mut updates, &auth_td, held), if failures > 0 => {
                tracing::info!(trust_domain = %td, "federated bundle set by the operator; polling now");
            }
        }
    }
}

/// One fetch, stored if new.
async fn poll_once(target: &FederatesWith, bundles: &FederatedBundles) -> PollOutcome {
    let bundle = tokio::time::timeout(TIMEOUT, fetch(target, bundles))
        .await
        .unwrap_or(Err(PollError::Timeout))
        .map_err(|e| format!("cannot fetch the bundle from {}: {e}", target.url))?;
    bundles
        .refresh(&target.trust_domain, bundle)
        .await
        .map_err(|e| format!("fetched bundle refused: {e}"))
}

/// Resolves when the bundle held for `td` differs from `held`; never if the set is dropped.
async fn held_bundle_changed(
    updates: &mut watch::Receiver<BundleSet>,
    td: &TrustDomain,
    held: Option<Arc<Bundle>>,
) {
    loop {
        if updates.changed().await.is_err() {
            return std::future::pending().await;
        }
        if updates.borrow_and_update().get(td) != held.as_ref() {
            return;
        }
    }
}

/// One GET of the endpoint, authenticated per its profile.
pub async fn fetch(
    target: &FederatesWith,
    bundles: &FederatedBundles,
) -> Result<Bundle, PollError> {
    let uri: axum::http::Uri = target
        .url
        .parse()
        .map_err(|e: axum::http::uri::InvalidUri| PollError::Url(e.to_string()))?;
    let host = uri
        .host()
        .ok_or_else(|| PollError::Url("no host".into()))?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    let port = uri.port_u16().unwrap_or(443);
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| PollError::Tls(e.to_string()))?;
    let config = match &target.profile {
        EndpointProfile::HttpsSpiffe { endpoint_spiffe_id } => {
            let auth_td = endpoint_spiffe_id.trust_domain();
            let held = bundles
                .fetch(auth_td)
                .ok_or_else(|| PollError::NoBundle(auth_td.clone()))?;
            // The host name in the URL plays no part: an SVID names a SPIFFE ID.
            let verifier = SpiffeServerVerifier::new(
                Roots::Fixed(Arc::new(root_store(&held.x509_authorities)?)),
                endpoint_spiffe_id.clone(),
            );
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(verifier))
                .with_no_client_auth()
        }
        EndpointProfile::HttpsWeb => {
            let native = rustls_native_certs::load_native_certs();
            let mut roots = RootCertStore::empty();
            roots.add_parsable_certificates(native.certs);
            builder.with_root_certificates(roots).with_no_client_auth()
        }
    };
    let mut config = config;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let server_name =
        ServerName::try_from(host.clone()).map_err(|e| PollError::Url(e.to_string()))?;
    let tcp = TcpStream::connect((host.as_str(), port))
        .await
        .map_err(PollError::Connect)?;
    let tls = TlsConnector::from(Arc::new(config))
        .connect(server_name, tcp)
        .await
        .map_err(|e| PollError::Tls(e.to_string()))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .map_err(|e| PollError::Http(e.to_string()))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    let request = axum::http::Request::get(path)
        .header(
            axum::http::header::HOST,
            uri.authority().map_or("", |a| a.as_str()),
        )
        .body(http_body_util::Empty::<axum::body::Bytes>::new())
        .map_err(|e| PollError::Http(e.to_string()))?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| PollError::Http(e.to_string()))?;
    if !response.status().is_success() {
        return Err(PollError::Status(response.status().as_u16()));
    }
    let body = Limited::new(response.into_body(), MAX_BODY)
        .collect()
        .await
        .map_err(|e| PollError::Http(e.to_string()))?
        .to_bytes();
    let text = std::str::from_utf8(&body).map_err(|e| PollError::Http(e.to_string()))?;
    Ok(Bundle::from_spiffe_json(target.trust_domain.clone(), text)?)
}

fn root_store(authorities: &[Vec<u8>]) -> Result<RootCertStore, PollError> {
    let mut roots = RootCertStore::empty();
    for der in authorities {
        roots
            .add(CertificateDer::from(der.clone()))
            .map_err(|e| PollError::Tls(e.to_string()))?;
    }
    Ok(roots)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    #[test]
    fn schedule_follows_the_hint_within_bounds() {
        assert_eq!(next_poll(Some(60), 0), Duration::from_secs(60));
        assert_eq!(next_poll(None, 0), DEFAULT_REFRESH);
        assert_eq!(next_poll(Some(0), 0), MIN_REFRESH);
        assert_eq!(next_poll(Some(1), 0), MIN_REFRESH);
        assert_eq!(next_poll(Some(86_400), 0), MAX_REFRESH);
    }

    #[tokio::test]
    async fn a_bundle_set_for_the_trust_domain_wakes_the_poller() {
        let td = TrustDomain::new("other.org").unwrap();
        let (tx, mut rx) = watch::channel(BundleSet::default());
        let mut other = BTreeMap::new();
        other.insert(
            TrustDomain::new("third.org").unwrap(),
            Arc::new(Bundle::new(TrustDomain::new("third.org").unwrap())),
        );
        let waiting = held_bundle_changed(&mut rx, &td, None);
        tokio::pin!(waiting);
        // Another trust domain's change does not wake it.
        tx.send_replace(Arc::new(other.clone()));
        assert!(futures::poll!(waiting.as_mut()).is_pending());
        // This trust domain's bundle does.
        other.insert(td.clone(), Arc::new(Bundle::new(td.clone())));
        tx.send_replace(Arc::new(other));
        tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("woken");
    }

    #[test]
    fn failures_back_off_up_to_the_interval() {
        assert_eq!(next_poll(Some(60), 1), Duration::from_secs(1));
        assert_eq!(next_poll(Some(60), 2), Duration::from_secs(2));
        assert_eq!(next_poll(Some(60), 4), Duration::from_secs(8));
        assert_eq!(next_poll(Some(60), 7), Duration::from_secs(60));
        assert_eq!(next_poll(Some(60), u32::MAX), Duration::from_secs(60));
        assert_eq!(next_poll(None, 30), DEFAULT_REFRESH);
    }
}
