//! The helper's loops: in daemon mode one task per kind of file, each following the Workload
//! API and retrying forever, and one task for the renewal action; in one-shot mode one fetch
//! of each, then exit.
//!
//! - X.509: the `FetchX509SVID` stream; every message is written (a new version, see
//!   [`super::files`]) and then counts as a renewal.
//! - JWT bundles: the `FetchJWTBundles` stream; every message rewrites the file.
//! - Each `jwt_svids` item: `FetchJWTSVID`, again at half the token's remaining lifetime plus
//!   one second, as spiffe-helper does.
//!
//! A failed stream or fetch (no agent yet, no registration entry for this workload) is logged
//! and retried after 1 s, doubling up to 30 s (60 s for JWT-SVIDs, as spiffe-helper), back to
//! 1 s after a success. The renewal action runs on its own task behind a `watch` channel, so a
//! slow PID file never delays the next write; updates that arrive while it runs are coalesced
//! into one more run.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use sigil_common::supervisor::{Supervisor, cancel_on_signal};
use sigil_proto::workload::{JwtBundlesRequest, JwtsvidRequest, X509svidRequest};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::config::{HelperConfig, JwtSvidFile};
use super::files::{CertDir, OutFile, WriteError};
use super::health::{self, Health};
use super::render::{self, RenderError};
use super::renew::Renewer;
use crate::workload_api::client::{ClientError, WorkloadApiClient, connect};

/// Why one fetch or write failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HelperError {
    #[error(transparent)]
    Connect(#[from] ClientError),
    #[error("{what}: {}", describe(.status))]
    Rpc {
        what: &'static str,
        status: tonic::Status,
    },
    #[error("{0}: the Workload API ended the stream")]
    Ended(&'static str),
    #[error(transparent)]
    Render(#[from] RenderError),
    #[error(transparent)]
    Write(#[from] WriteError),
}

impl HelperError {
    /// Whether a one-shot fetch should try again: no identity yet, or no agent yet.
    fn is_transient(&self) -> bool {
        match self {
            Self::Connect(_) | Self::Ended(_) => true,
            Self::Rpc { status, .. } => matches!(
                status.code(),
                tonic::Code::PermissionDenied | tonic::Code::Unavailable
            ),
            Self::Render(_) | Self::Write(_) => false,
        }
    }
}

fn describe(status: &tonic::Status) -> String {
    if status.code() == tonic::Code::PermissionDenied {
        format!(
            "no identity for this process ({}): no registration entry matches it yet",
            status.message()
        )
    } else {
        format!("{} ({:?})", status.message(), status.code())
    }
}

/// Retry waits: `first`, doubling up to `max`; back to `first` after a success.
#[derive(Debug)]
struct Backoff {
    first: Duration,
    max: Duration,
    /// Milliseconds; atomic because a stream being followed resets it while the retry loop
    /// holds it.
    next_ms: AtomicU64,
}

impl Backoff {
    fn new(first: Duration, max: Duration) -> Self {
        Self {
            first,
            max,
            next_ms: AtomicU64::new(millis(first)),
        }
    }

    fn next(&self) -> Duration {
        let wait = Duration::from_millis(self.next_ms.load(Ordering::Relaxed));
        self.next_ms
            .store(millis((wait * 2).min(self.max)), Ordering::Relaxed);
        wait
    }

    fn reset(&self) {
        self.next_ms.store(millis(self.first), Ordering::Relaxed);
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Runs the helper until SIGTERM/SIGINT (daemon mode) or until everything was written once.
pub async fn run(config: HelperConfig) -> anyhow::Result<()> {
    let config = Arc::new(config);
    let dir = CertDir::new(config.cert_dir.clone());
    dir.remove_leftovers(&config.file_names());
    if !config.daemon_mode {
        tracing::info!("daemon mode off: writing the files once");
        once(&config, &dir).await?;
        tracing::info!("files written; exiting");
        return Ok(());
    }
    let mut tasks = Supervisor::new();
    let cancel = tasks.token().clone();
    let _signals = cancel_on_signal(cancel.clone());
    let health = Health::new(&config);
    if let Some(checks) = config.health_checks.clone() {
        tasks.spawn(
            "health",
            health::serve(checks, health.clone(), cancel.clone()),
        );
    }
    if config.x509.is_some() {
        let (renewed, on_renewal) = watch::channel(0u64);
        tasks.spawn(
            "x509",
            follow_x509(
                config.clone(),
                dir.clone(),
                health.clone(),
                renewed,
                cancel.clone(),
            ),
        );
        let renewer = Renewer::new(config.renew.clone());
        tasks.spawn("renew", renew(renewer, on_renewal, cancel.clone()));
    }
    if config.jwt_bundle_file.is_some() {
        tasks.spawn(
            "jwt_bundle",
            follow_jwt_bundles(config.clone(), dir.clone(), health.clone(), cancel.clone()),
        );
    }
    for item in &config.jwt_svids {
        tasks.spawn(
            "jwt_svid",
            keep_jwt_svid(
                config.clone(),
                item.clone(),
                dir.clone(),
                health.clone(),
                cancel.clone(),
            ),
        );
    }
    let result = tasks.wait().await;
    tasks.drain(Duration::from_secs(5)).await;
    result
}

/// Runs one `attempt` (a stream, until it ends) unless the helper stops first, then logs why
/// it ended and waits out the backoff; `false` when the helper is stopping.
async fn retry_after(
    attempt: impl Future<Output = Result<(), HelperError>>,
    backoff: &Backoff,
    cancel: &CancellationToken,
    missing: &str,
) -> bool {
    let error = tokio::select! {
        result = attempt => result.err(),
        () = cancel.cancelled() => return false,
    };
    let wait = backoff.next();
    if let Some(e) = error {
        tracing::warn!(error = %chain(&e), retry_in = ?wait, "{missing}; retrying");
    }
    pause(wait, cancel).await
}

/// Waits `wait`, or returns `false` when cancelled first.
async fn pause(wait: Duration, cancel: &CancellationToken) -> bool {
    tokio::select! {
        () = tokio::time::sleep(wait) => true,
        () = cancel.cancelled() => false,
    }
}

async fn client(config: &HelperConfig) -> Result<WorkloadApiClient, HelperError> {
    Ok(connect(&config.agent_socket).await?)
}

fn rpc(what: &'static str) -> impl Fn(tonic::Status) -> HelperError {
    move |status| HelperError::Rpc { what, status }
}

async fn follow_x509(
    config: Arc<HelperConfig>,
    dir: CertDir,
    health: Health,
    renewed: watch::Sender<u64>,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    const WHAT: &str = "FetchX509SVID";
    let backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(30));
    loop {
        let stream = async {
            let mut stream = client(&config)
                .await?
                .fetch_x509svid(X509svidRequest {})
                .await
                .map_err(rpc(WHAT))?
                .into_inner();
            while let Some(response) = stream.message().await.map_err(rpc(WHAT))? {
                backoff.reset();
                let written = write_x509(&config, &dir, &response);
                health.x509_written(written.is_ok());
                match written {
                    Ok(spiffe_id) => {
                        tracing::info!(%spiffe_id, "X.509-SVID files updated");
                        renewed.send_modify(|n| *n += 1);
                    }
                    Err(e) => {
                        tracing::error!(error = %chain(&e), "could not update the X.509-SVID files")
                    }
                }
            }
            Err::<(), _>(HelperError::Ended(WHAT))
        };
        if !retry_after(stream, &backoff, &cancel, "no X.509-SVID").await {
            return Ok(());
        }
    }
}

/// Writes the X.509 files of one response; returns the SPIFFE ID written.
fn write_x509(
    config: &HelperConfig,
    dir: &CertDir,
    response: &sigil_proto::workload::X509svidResponse,
) -> Result<String, HelperError> {
    let Some(files) = &config.x509 else {
        unreachable!("follow_x509 runs only with X.509 files configured");
    };
    let contents = render::x509_contents(response, files, config.hint.as_deref(), unix_now())?;
    // One new version directory: the three files switch together.
    dir.publish(&[
        OutFile {
            name: &files.key,
            contents: contents.key.as_bytes(),
            mode: config.modes.key,
        },
        OutFile {
            name: &files.svid,
            contents: contents.svid.as_bytes(),
            mode: config.modes.cert,
        },
        OutFile {
            name: &files.bundle,
            contents: contents.bundle.as_bytes(),
            mode: config.modes.cert,
        },
    ])?;
    Ok(contents.spiffe_id)
}

async fn renew(
    mut renewer: Renewer,
    mut on_renewal: watch::Receiver<u64>,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    loop {
        tokio::select! {
            changed = on_renewal.changed() => {
                if changed.is_err() {
                    // The X.509 task has ended: shutdown.
                    cancel.cancelled().await;
                    return Ok(());
                }
            }
            () = cancel.cancelled() => return Ok(()),
        }
        on_renewal.borrow_and_update();
        renewer.renewed().await;
    }
}

async fn follow_jwt_bundles(
    config: Arc<HelperConfig>,
    dir: CertDir,
    health: Health,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    const WHAT: &str = "FetchJWTBundles";
    let backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(30));
    loop {
        let stream = async {
            let mut stream = client(&config)
                .await?
                .fetch_jwt_bundles(JwtBundlesRequest {})
                .await
                .map_err(rpc(WHAT))?
                .into_inner();
            while let Some(response) = stream.message().await.map_err(rpc(WHAT))? {
                backoff.reset();
                let written = write_jwt_bundles(&config, &dir, &response);
                if let Some(name) = &config.jwt_bundle_file {
                    health.jwt_written(&config, name, written.is_ok());
                }
                match written {
                    Ok(()) => tracing::info!("JWT bundle file updated"),
                    Err(e) => {
                        tracing::error!(error = %chain(&e), "could not update the JWT bundle file")
                    }
                }
            }
            Err::<(), _>(HelperError::Ended(WHAT))
        };
        if !retry_after(stream, &backoff, &cancel, "no JWT bundles").await {
            return Ok(());
        }
    }
}

fn write_jwt_bundles(
    config: &HelperConfig,
    dir: &CertDir,
    response: &sigil_proto::workload::JwtBundlesResponse,
) -> Result<(), HelperError> {
    let Some(name) = &config.jwt_bundle_file else {
        unreachable!("follow_jwt_bundles runs only with a JWT bundle file configured");
    };
    let json = render::jwt_bundles_json(&response.bundles);
    dir.write_file(OutFile {
        name,
        contents: json.as_bytes(),
        mode: config.modes.jwt_bundle,
    })?;
    Ok(())
}

async fn keep_jwt_svid(
    config: Arc<HelperConfig>,
    item: JwtSvidFile,
    dir: CertDir,
    health: Health,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    let backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(60));
    loop {
        let fetched = fetch_jwt_svid(&config, &item, &dir).await;
        // As spiffe-helper: only a failed write marks the file failed.
        match &fetched {
            Ok(_) => health.jwt_written(&config, &item.file, true),
            Err(HelperError::Write(_)) => health.jwt_written(&config, &item.file, false),
            Err(_) => {}
        }
        let wait = match fetched {
            Ok(exp) => {
                backoff.reset();
                let left = u64::try_from(exp - unix_now()).unwrap_or(0);
                let wait = Duration::from_secs(left) / 2 + Duration::from_secs(1);
                tracing::info!(audience = %item.audience, refresh_in = ?wait, "JWT-SVID file updated");
                wait
            }
            Err(e) => {
                let wait = backoff.next();
                tracing::warn!(audience = %item.audience, error = %chain(&e), retry_in = ?wait, "no JWT-SVID; retrying");
                wait
            }
        };
        if !pause(wait, &cancel).await {
            return Ok(());
        }
    }
}

/// Fetches and writes one JWT-SVID; returns its expiry (seconds since the epoch).
async fn fetch_jwt_svid(
    config: &HelperConfig,
    item: &JwtSvidFile,
    dir: &CertDir,
) -> Result<i64, HelperError> {
    let response = client(config)
        .await?
        .fetch_jwtsvid(JwtsvidRequest {
            audience: item.audiences(),
            spiffe_id: String::new(),
        })
        .await
        .map_err(rpc("FetchJWTSVID"))?
        .into_inner();
    let (token, exp) = render::jwt_svid(&response.svids, config.hint.as_deref())?;
    dir.write_file(OutFile {
        name: &item.file,
        contents: token.as_bytes(),
        mode: config.modes.jwt_svid,
    })?;
    Ok(exp)
}

/// One-shot mode: each configured file written once. A process without an identity yet (or
/// an agent not up yet) is retried for about half a minute, as spiffe-helper retries.
async fn once(config: &HelperConfig, dir: &CertDir) -> Result<(), HelperError> {
    if config.x509.is_some() {
        let response = retry(|| async {
            first(
                client(config)
                    .await?
                    .fetch_x509svid(X509svidRequest {})
                    .await,
                "FetchX509SVID",
            )
            .await
        })
        .await?;
        let spiffe_id = write_x509(config, dir, &response)?;
        tracing::info!(%spiffe_id, "X.509-SVID files written");
    }
    if config.jwt_bundle_file.is_some() {
        let response = retry(|| async {
            first(
                client(config)
                    .await?
                    .fetch_jwt_bundles(JwtBundlesRequest {})
                    .await,
                "FetchJWTBundles",
            )
            .await
        })
        .await?;
        write_jwt_bundles(config, dir, &response)?;
        tracing::info!("JWT bundle file written");
    }
    for item in &config.jwt_svids {
        retry(|| fetch_jwt_svid(config, item, dir)).await?;
        tracing::info!(audience = %item.audience, "JWT-SVID file written");
    }
    Ok(())
}

async fn first<T>(
    call: Result<tonic::Response<tonic::Streaming<T>>, tonic::Status>,
    what: &'static str,
) -> Result<T, HelperError> {
    call.map_err(rpc(what))?
        .into_inner()
        .message()
        .await
        .map_err(rpc(what))?
        .ok_or(HelperError::Ended(what))
}

/// Tries `f` up to 10 times while it fails transiently: 10 ms, times 5, at most 5 s apart.
async fn retry<T, F, Fut>(mut f: F) -> Result<T, HelperError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, HelperError>>,
{
    let mut wait = Duration::from_millis(10);
    let mut tries = 1;
    loop {
        match f().await {
            Err(e) if e.is_transient() && tries < 10 => {
                tracing::warn!(error = %chain(&e), retry_in = ?wait, "retrying");
                tokio::time::sleep(wait).await;
                wait = (wait * 5).min(Duration::from_secs(5));
                tries += 1;
            }
            result => return result,
        }
    }
}

/// An error and its causes on one line, each cause once.
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut line = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !line.ends_with(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
        source = cause.source();
    }
    line
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_its_cap_and_resets() {
        let b = Backoff::new(Duration::from_secs(1), Duration::from_secs(5));
        let waits: Vec<u64> = (0..5).map(|_| b.next().as_secs()).collect();
        assert_eq!(waits, [1, 2, 4, 5, 5]);
        b.reset();
        assert_eq!(b.next(), Duration::from_secs(1));
    }
}
