//! The audit log (SPIRE's `audit_log_enabled`): with the key on, one INFO line on the target
//! [`AUDIT_TARGET`] for every call of either API that changes state or signs, whatever its
//! outcome. The one middleware ([`crate::api::middleware`]) writes it, so no RPC can forget
//! it: every RPC is audited unless its API lists it as read-only
//! ([`Authorize::READ_ONLY`](crate::api::middleware::Authorize::READ_ONLY)), and a read is
//! audited too when the caller was refused before its handler ran (a banned agent's sync).
//!
//! The line holds SPIRE's fields: `type=audit`, `request_id`, `status` (`success` or
//! `error`), `status_code` and `status_message` for an error; the caller ([`Caller`]: UID,
//! GID, PID and executable on the admin socket, the agent's SPIFFE ID and address on the agent
//! API); `service` and `method` (the RPC); and the call's target, which the handler records
//! while it runs ([`record`] fills the call's [`Target`]). Nothing secret is ever a target:
//! no join token, JWT, CSR, key or certificate bytes (a certificate's serial number is).

use std::fmt::Display;
use std::sync::{Arc, Mutex, PoisonError};

use tonic::Status;

use sigil_common::logging::AUDIT_TARGET;

/// Longest `status_message` written: the message can echo what an unauthenticated caller sent.
const MAX_STATUS_MESSAGE: usize = 1024;

tokio::task_local! {
    /// The target of the audited call this task is serving.
    static CALL: Arc<Mutex<Target>>;
}

/// Who called, as the API's transport knows it.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct Caller {
    /// Admin socket: the peer credentials of the connection.
    pub(crate) uid: Option<u32>,
    pub(crate) gid: Option<u32>,
    pub(crate) pid: Option<i32>,
    /// Admin socket: the caller's executable (`/proc/<pid>/exe`), when it can be read.
    pub(crate) path: Option<String>,
    /// Agent API: the SPIFFE ID of the agent SVID the caller presented.
    pub(crate) id: Option<String>,
    /// Agent API: the caller's IP address and port.
    pub(crate) addr: Option<String>,
}

impl Caller {
    /// A caller on a Unix socket, from its peer credentials.
    pub(crate) fn local(uid: u32, gid: u32, pid: Option<i32>) -> Self {
        Self {
            uid: Some(uid),
            gid: Some(gid),
            pid,
            path: pid
                .and_then(|p| std::fs::read_link(format!("/proc/{p}/exe")).ok())
                .map(|p| p.display().to_string()),
            ..Self::default()
        }
    }
}

/// What an audited call acted on, filled in by its handler ([`record`]). Lists (`*_ids`) are
/// comma-separated, in request order.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct Target {
    pub(crate) entry_id: Option<String>,
    pub(crate) entry_ids: Option<String>,
    pub(crate) spiffe_id: Option<String>,
    pub(crate) spiffe_ids: Option<String>,
    /// Items in a batch.
    pub(crate) count: Option<u64>,
    pub(crate) trust_domain: Option<String>,
    /// The node attestor of AttestAgent.
    pub(crate) attestation_type: Option<String>,
    /// The agent ID AttestAgent's attestor vouched for (never set before the attestor
    /// accepted the evidence: a join token that fails is no one's ID).
    pub(crate) agent_id: Option<String>,
    /// `x509` or `jwt`.
    pub(crate) authority_kind: Option<String>,
    /// `prepare`, `activate`, `taint` or `revoke`.
    pub(crate) authority_op: Option<String>,
    pub(crate) authority_id: Option<String>,
    /// A bundle delete's mode (`restrict`, `delete`, `dissociate`).
    pub(crate) mode: Option<String>,
    /// Comma-separated JWT audiences.
    pub(crate) audience: Option<String>,
    /// Requested TTL in seconds (0: the server's default).
    pub(crate) ttl: Option<u64>,
    /// Serial number (hex) of the X.509-SVID signed.
    pub(crate) serial: Option<String>,
    /// When what was made (SVID, join token) expires, Unix seconds.
    pub(crate) expires_at: Option<i64>,
    /// The log level `logger set|reset` put in force.
    pub(crate) log_level: Option<&'static str>,
    /// The call changed nothing and signed nothing (an RPC with read-only operations, e.g.
    /// `localauthority show`): no line is written.
    read_only: bool,
}

/// Fills in the target of the audited call being served; does nothing (not even run `f`) when
/// the audit log is off or the call is not audited.
pub(crate) fn record(f: impl FnOnce(&mut Target)) {
    let _ = CALL.try_with(|target| f(&mut target.lock().unwrap_or_else(PoisonError::into_inner)));
}

/// Marks the call being served as read-only (it changed nothing and signed nothing): it gets
/// no audit line.
pub(crate) fn read_only() {
    record(|t| t.read_only = true);
}

/// `items` as one comma-separated field.
pub(crate) fn list<T: Display>(items: impl IntoIterator<Item = T>) -> String {
    let mut out = String::new();
    for (i, item) in items.into_iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(&item.to_string());
    }
    out
}

/// One audited call, from the moment the middleware sees it to its audit line.
pub(crate) struct Call {
    request_id: uuid::Uuid,
    target: Arc<Mutex<Target>>,
}

impl Call {
    pub(crate) fn start() -> Self {
        Self {
            request_id: uuid::Uuid::new_v4(),
            target: Arc::default(),
        }
    }

    /// Runs the handler's future with this call's target in reach of [`record`].
    pub(crate) async fn serve<F: Future>(&self, handler: F) -> F::Output {
        CALL.scope(self.target.clone(), handler).await
    }

    /// Writes the audit line; `status` is the call's error, `None` when it succeeded.
    pub(crate) fn finish(
        self,
        service: &str,
        method: &str,
        caller: &Caller,
        status: Option<&Status>,
    ) {
        let target = self.target.lock().unwrap_or_else(PoisonError::into_inner);
        if target.read_only {
            return;
        }
        let (outcome, code, message) = match status {
            None => ("success", None, None),
            Some(s) => (
                "error",
                Some(format!("{:?}", s.code())),
                Some(truncate(s.message(), MAX_STATUS_MESSAGE)),
            ),
        };
        // Values a caller chose are recorded as strings (escaped and quoted by the text
        // format), so none can forge a line; the rest are ours.
        tracing::info!(
            target: AUDIT_TARGET,
            request_id = %self.request_id,
            "type" = %"audit",
            status = %outcome,
            status_code = code.as_deref().map(tracing::field::display),
            status_message = message,
            service = %service,
            method = %method,
            caller_uid = caller.uid,
            caller_gid = caller.gid,
            caller_pid = caller.pid,
            caller_path = caller.path.as_deref(),
            caller_id = caller.id.as_deref(),
            caller_addr = caller.addr.as_deref(),
            entry_id = target.entry_id.as_deref(),
            entry_ids = target.entry_ids.as_deref(),
            spiffe_id = target.spiffe_id.as_deref(),
            spiffe_ids = target.spiffe_ids.as_deref(),
            count = target.count,
            trust_domain = target.trust_domain.as_deref(),
            attestation_type = target.attestation_type.as_deref(),
            agent_id = target.agent_id.as_deref(),
            authority_kind = target.authority_kind.as_deref(),
            authority_op = target.authority_op.as_deref(),
            authority_id = target.authority_id.as_deref(),
            mode = target.mode.as_deref(),
            audience = target.audience.as_deref(),
            ttl = target.ttl,
            serial = target.serial.as_deref(),
            expires_at = target.expires_at,
            log_level = target.log_level,
            "API accessed"
        );
    }
}

/// At most `max` bytes of `s`, cut at a character boundary.
fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_handler_fills_the_target_of_its_own_call_only() {
        record(|t| t.spiffe_id = Some("outside".into()));
        let call = Call::start();
        call.serve(async {
            record(|t| t.entry_id = Some("e1".into()));
            tokio::task::yield_now().await;
            record(|t| t.count = Some(2));
        })
        .await;
        let target = call.target.lock().unwrap().clone();
        assert_eq!(target.entry_id.as_deref(), Some("e1"));
        assert_eq!(target.count, Some(2));
        assert_eq!(target.spiffe_id, None);
        assert!(!target.read_only);
        call.serve(async { read_only() }).await;
        assert!(call.target.lock().unwrap().read_only);
    }

    #[test]
    fn lists_and_truncation() {
        assert_eq!(list(["a", "b", "c"]), "a,b,c");
        assert_eq!(list(Vec::<String>::new()), "");
        assert_eq!(truncate("héllo", 2), "h");
        assert_eq!(truncate("hello", 10), "hello");
    }
}
