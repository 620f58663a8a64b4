//! The one tower layer in front of every RPC of both gRPC APIs: it authorizes the caller before
//! any handler runs and counts each call's outcome, so the handlers hold only their domain
//! logic (SPIRE's `pkg/server/api/middleware` split).
//!
//! - Authorization is the API's [`Authorize`]: the admin API checks the caller's UID on its
//!   Unix socket, the agent API authenticates the agent by its X.509-SVID and hands the
//!   handler who called through the request's extensions.
//! - The metric is `sigil_server_<api>_requests_total{method, result}`: `method` is the RPC's
//!   name, `result` is `ok` or the gRPC status ([`code_label`]). A refusal is counted too.
//! - With `audit_log_enabled`, every call of an RPC not on the API's [`Authorize::READ_ONLY`]
//!   list gets one audit line ([`crate::api::audit`]) with the caller, the target its handler
//!   recorded and the outcome, a refusal included: an RPC added later is audited unless
//!   someone declares it read-only. A read gets one only when `authorize` refused it.
//!
//! A path that names no RPC of the API goes straight to tonic (which answers UNIMPLEMENTED),
//! neither authorized nor counted: nothing is served on it.

use std::convert::Infallible;
use std::future::Future;
use std::task::{Context, Poll};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use tonic::Status;
use tonic::body::Body;
use tonic::codegen::http::{self, Extensions};
use tonic::codegen::{BoxFuture, Service};
use tonic::server::NamedService;

use crate::api::audit::{self, Caller};
use crate::metrics::RpcLabels;

/// Who may call an API's RPCs, and what its audit log says about them.
pub(crate) trait Authorize: Clone + Send + Sync + 'static {
    /// The RPCs the API serves, as their gRPC names (`BatchCreateEntry`): the metric's
    /// `method` label.
    const METHODS: &'static [&'static str];

    /// The RPCs of [`Self::METHODS`] that change nothing and sign nothing: the audit log
    /// leaves them out unless [`Self::authorize`] refused the call. Every other RPC is audited.
    const READ_ONLY: &'static [&'static str];

    /// Who called, for the audit line: read once `authorize` has run (it may have recorded
    /// who called in `extensions`), whether it let the call through or not.
    fn caller(extensions: &Extensions) -> Caller;

    /// Refuses the call, or lets it through; may record who called in `extensions`, which
    /// the handler reads from its `tonic::Request`.
    fn authorize(
        &self,
        method: &'static str,
        extensions: &mut Extensions,
    ) -> impl Future<Output = Result<(), Status>> + Send;
}

/// Wraps an API's tonic service in [`Rpc`].
#[derive(Clone)]
pub(crate) struct RpcLayer<A> {
    authorize: A,
    requests: Family<RpcLabels, Counter>,
    audit_log: bool,
}

impl<A: Authorize> RpcLayer<A> {
    /// `requests` is the API's `<api>_requests` family in [`crate::metrics::Metrics`].
    pub(crate) fn new(authorize: A, requests: Family<RpcLabels, Counter>) -> Self {
        Self {
            authorize,
            requests,
            audit_log: false,
        }
    }

    /// Writes the audit log (`audit_log_enabled`).
    pub(crate) fn with_audit_log(mut self, on: bool) -> Self {
        self.audit_log = on;
        self
    }
}

impl<S, A: Clone> tower::Layer<S> for RpcLayer<A> {
    type Service = Rpc<S, A>;

    fn layer(&self, inner: S) -> Self::Service {
        Rpc {
            inner,
            authorize: self.authorize.clone(),
            requests: self.requests.clone(),
            audit_log: self.audit_log,
        }
    }
}

/// An API's service behind the layer: see the module docs.
#[derive(Clone)]
pub(crate) struct Rpc<S, A> {
    inner: S,
    authorize: A,
    requests: Family<RpcLabels, Counter>,
    audit_log: bool,
}

impl<S: NamedService, A> NamedService for Rpc<S, A> {
    const NAME: &'static str = S::NAME;
}

impl<S, A> Service<http::Request<Body>> for Rpc<S, A>
where
    S: Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible>
        + NamedService
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    A: Authorize,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        // The service made ready by `poll_ready` serves this call; a clone stays behind.
        let ready = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, ready);
        let Some(method) = method_of(request.uri().path(), A::METHODS) else {
            return Box::pin(inner.call(request));
        };
        let authorize = self.authorize.clone();
        let requests = self.requests.clone();
        let audit_log = self.audit_log;
        Box::pin(async move {
            let (mut parts, body) = request.into_parts();
            let allowed = authorize.authorize(method, &mut parts.extensions).await;
            // A read is audited too when it was refused: who tried is worth a line.
            let audit = (audit_log && (!A::READ_ONLY.contains(&method) || allowed.is_err()))
                .then(audit::Call::start);
            let caller = audit.as_ref().map(|_| A::caller(&parts.extensions));
            let response = match (allowed, &audit) {
                (Ok(()), Some(call)) => {
                    call.serve(inner.call(http::Request::from_parts(parts, body)))
                        .await?
                }
                (Ok(()), None) => inner.call(http::Request::from_parts(parts, body)).await?,
                (Err(status), _) => status.into_http(),
            };
            // A handler's error travels in the response headers; an answer's status comes
            // later, in the trailers, and is OK.
            let status = Status::from_header_map(response.headers());
            let result = status.as_ref().map_or("ok", |s| code_label(s.code()));
            requests.get_or_create(&RpcLabels { method, result }).inc();
            if let (Some(call), Some(caller)) = (audit, caller) {
                call.finish(S::NAME, method, &caller, status.as_ref());
            }
            Ok(response)
        })
    }
}

/// The RPC a gRPC path (`/<package>.<Service>/<Method>`) names, if `methods` has it.
fn method_of(path: &str, methods: &'static [&'static str]) -> Option<&'static str> {
    let (_, name) = path.rsplit_once('/')?;
    methods.iter().copied().find(|m| *m == name)
}

/// The `result` label of a call's gRPC status.
pub(crate) fn code_label(code: tonic::Code) -> &'static str {
    match code {
        tonic::Code::Ok => "ok",
        tonic::Code::InvalidArgument => "invalid_argument",
        tonic::Code::NotFound => "not_found",
        tonic::Code::AlreadyExists => "already_exists",
        tonic::Code::PermissionDenied => "permission_denied",
        tonic::Code::Unauthenticated => "unauthenticated",
        tonic::Code::ResourceExhausted => "resource_exhausted",
        _ => "error",
    }
}

/// The RPC names a service declares in its `.proto` file (`rpc Name(`), for tests that check
/// an [`Authorize::METHODS`] list against the wire contract.
#[cfg(test)]
pub(crate) fn proto_rpcs(proto: &str) -> Vec<&str> {
    proto
        .lines()
        .filter_map(|l| l.trim().strip_prefix("rpc "))
        .filter_map(|l| l.split_once('(').map(|(name, _)| name.trim()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_method_comes_from_the_path_and_must_be_listed() {
        const METHODS: &[&str] = &["GetEntry", "MintX509SVID"];
        assert_eq!(
            method_of("/sigil.admin.v1.Admin/MintX509SVID", METHODS),
            Some("MintX509SVID")
        );
        assert_eq!(method_of("/sigil.admin.v1.Admin/Other", METHODS), None);
        assert_eq!(method_of("/sigil.admin.v1.Admin/", METHODS), None);
        assert_eq!(method_of("", METHODS), None);
    }

    #[test]
    fn proto_rpcs_lists_every_rpc_line() {
        let proto = "service A {\n    rpc One(X) returns (Y);\n  // rpc Not(X)\n    rpc Two (X) returns (stream Y);\n}";
        assert_eq!(proto_rpcs(proto), ["One", "Two"]);
    }
}
