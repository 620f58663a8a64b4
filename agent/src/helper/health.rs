//! spiffe-helper's `health_checks` listener (daemon mode only): plain HTTP on every interface
//! at `bind_port`, where the liveness path answers 200 while no file's last write failed and
//! the readiness path answers 200 once every configured file has been written; 503 otherwise.
//! Both bodies are spiffe-helper's JSON:
//! `{"status":"OK","health":{"file_write_statuses":{"x509_write_status":"written",
//! "jwt_write_status":{"<cert_dir>/<file>":"written"}}}}`.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};

use anyhow::Context as _;
use axum::Router;
use axum::http::StatusCode;
use axum::routing::get;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use super::config::{HealthChecks, HelperConfig};

/// The last write of one file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum WriteStatus {
    Unwritten,
    Failed,
    Written,
}

impl WriteStatus {
    fn of(ok: bool) -> Self {
        if ok { Self::Written } else { Self::Failed }
    }
}

#[derive(Debug, Clone, Default, Serialize)]
struct FileWriteStatuses {
    #[serde(skip_serializing_if = "Option::is_none")]
    x509_write_status: Option<WriteStatus>,
    jwt_write_status: BTreeMap<String, WriteStatus>,
}

/// The files' write statuses, shared by the loops that write and the listener.
#[derive(Debug, Clone, Default)]
pub struct Health(Arc<Mutex<FileWriteStatuses>>);

impl Health {
    /// Every configured file, unwritten.
    pub fn new(config: &HelperConfig) -> Self {
        let mut statuses = FileWriteStatuses {
            x509_write_status: config.x509.as_ref().map(|_| WriteStatus::Unwritten),
            jwt_write_status: BTreeMap::new(),
        };
        let jwt_files = config
            .jwt_bundle_file
            .iter()
            .chain(config.jwt_svids.iter().map(|j| &j.file));
        for file in jwt_files {
            statuses
                .jwt_write_status
                .insert(Self::key(config, file), WriteStatus::Unwritten);
        }
        Self(Arc::new(Mutex::new(statuses)))
    }

    /// spiffe-helper's key for a JWT file: `cert_dir` joined with its name.
    fn key(config: &HelperConfig, file: &str) -> String {
        config.cert_dir.join(file).display().to_string()
    }

    fn update(&self, f: impl FnOnce(&mut FileWriteStatuses)) {
        // A panic while holding the lock cannot leave the statuses half-updated.
        f(&mut self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner));
    }

    fn snapshot(&self) -> FileWriteStatuses {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Records an X.509 write.
    pub fn x509_written(&self, ok: bool) {
        self.update(|s| s.x509_write_status = Some(WriteStatus::of(ok)));
    }

    /// Records a JWT file's write.
    pub fn jwt_written(&self, config: &HelperConfig, file: &str, ok: bool) {
        self.update(|s| {
            s.jwt_write_status
                .insert(Self::key(config, file), WriteStatus::of(ok));
        });
    }

    fn live(statuses: &FileWriteStatuses) -> bool {
        statuses
            .x509_write_status
            .iter()
            .chain(statuses.jwt_write_status.values())
            .all(|s| *s != WriteStatus::Failed)
    }

    fn ready(statuses: &FileWriteStatuses) -> bool {
        statuses
            .x509_write_status
            .iter()
            .chain(statuses.jwt_write_status.values())
            .all(|s| *s == WriteStatus::Written)
    }
}

#[derive(Serialize)]
struct Response {
    status: &'static str,
    health: HealthBody,
}

#[derive(Serialize)]
struct HealthBody {
    file_write_statuses: FileWriteStatuses,
}

fn answer(health: &Health, check: fn(&FileWriteStatuses) -> bool) -> (StatusCode, String) {
    let statuses = health.snapshot();
    let code = if check(&statuses) {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = Response {
        status: code.canonical_reason().unwrap_or_default(),
        health: HealthBody {
            file_write_statuses: statuses,
        },
    };
    let json = serde_json::to_string(&body)
        .unwrap_or_else(|_| unreachable!("plain structs of strings serialize"));
    (code, json)
}

/// Serves the two paths until `cancel`.
pub async fn serve(
    checks: HealthChecks,
    health: Health,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    let (live, ready) = (health.clone(), health);
    let json = |(code, body): (StatusCode, String)| {
        (
            code,
            [(axum::http::header::CONTENT_TYPE, "application/json")],
            body,
        )
    };
    let router = Router::new()
        .route(
            &checks.liveness_path,
            get(move || async move { json(answer(&live, Health::live)) }),
        )
        .route(
            &checks.readiness_path,
            get(move || async move { json(answer(&ready, Health::ready)) }),
        );
    let addr = SocketAddr::from((Ipv4Addr::UNSPECIFIED, checks.bind_port));
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding the health listener on {addr}"))?;
    tracing::info!(%addr, "health listener started");
    axum::serve(listener, router)
        .with_graceful_shutdown(cancel.cancelled_owned())
        .await
        .context("serving health checks")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_once_all_written_live_until_one_fails() {
        let doc = sigil_common::hcl::Document::parse(
            "h.conf",
            "cert_dir = \"/c\"\nsvid_file_name = \"s\"\nsvid_key_file_name = \"k\"\nsvid_bundle_file_name = \"b\"\njwt_bundle_file_name = \"j.json\"\n",
        )
        .unwrap();
        let config = HelperConfig::from_document(&doc, Default::default(), None).unwrap();
        let health = Health::new(&config);
        let (code, body) = answer(&health, Health::ready);
        assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(
            body,
            r#"{"status":"Service Unavailable","health":{"file_write_statuses":{"x509_write_status":"unwritten","jwt_write_status":{"/c/j.json":"unwritten"}}}}"#
        );
        assert_eq!(answer(&health, Health::live).0, StatusCode::OK);
        health.x509_written(true);
        health.jwt_written(&config, "j.json", true);
        assert_eq!(answer(&health, Health::ready).0, StatusCode::OK);
        health.x509_written(false);
        assert_eq!(
            answer(&health, Health::live).0,
            StatusCode::SERVICE_UNAVAILABLE
        );
    }
}
