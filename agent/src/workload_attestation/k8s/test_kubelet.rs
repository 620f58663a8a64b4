//! A fake kubelet for tests: serves `GET /pods` from canned bodies on 127.0.0.1 and counts
//! requests.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::routing::get;

use super::kubelet::KubeletEndpoint;

/// Two pods: `payments/checkout-service-7d9f8` and `other/web-5c6b7`.
pub(super) const PODS: &str = include_str!("testdata/pods.json");

#[derive(Default)]
struct Shared {
    requests: AtomicUsize,
    /// Request `n` gets `bodies[min(n, len - 1)]`.
    bodies: Mutex<Vec<String>>,
    status: Mutex<Option<StatusCode>>,
    authorization: Mutex<Option<String>>,
}

pub(super) struct TestKubelet {
    port: u16,
    shared: Arc<Shared>,
    server: tokio::task::JoinHandle<()>,
}

impl TestKubelet {
    pub(super) async fn start() -> Self {
        let shared = Arc::new(Shared::default());
        shared.bodies.lock().unwrap().push(PODS.to_owned());
        let app = Router::new()
            .route("/pods", get(pods))
            .with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Self {
            port,
            shared,
            server,
        }
    }

    pub(super) fn endpoint(&self) -> KubeletEndpoint {
        KubeletEndpoint::read_only(self.port)
    }

    pub(super) fn requests(&self) -> usize {
        self.shared.requests.load(Ordering::SeqCst)
    }

    pub(super) fn last_authorization(&self) -> Option<String> {
        self.shared.authorization.lock().unwrap().clone()
    }

    pub(super) fn set_body(&self, body: &str) {
        self.set_bodies(vec![body.to_owned()]);
    }

    pub(super) fn set_bodies(&self, bodies: Vec<String>) {
        *self.shared.bodies.lock().unwrap() = bodies;
    }

    pub(super) fn set_status(&self, status: StatusCode) {
        *self.shared.status.lock().unwrap() = Some(status);
    }
}

impl Drop for TestKubelet {
    fn drop(&mut self) {
        self.server.abort();
    }
}

async fn pods(State(shared): State<Arc<Shared>>, headers: HeaderMap) -> (StatusCode, String) {
    let n = shared.requests.fetch_add(1, Ordering::SeqCst);
    *shared.authorization.lock().unwrap() = headers
        .get(header::AUTHORIZATION)
        .map(|v| v.to_str().unwrap().to_owned());
    if let Some(status) = *shared.status.lock().unwrap() {
        return (status, String::new());
    }
    let bodies = shared.bodies.lock().unwrap();
    (StatusCode::OK, bodies[n.min(bodies.len() - 1)].clone())
}
