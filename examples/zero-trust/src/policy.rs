//! Who may call what on `payment-processor`: the seed's Istio `AuthorizationPolicy`
//!
//! ```yaml
//! rules:
//! - from: [{ source: { principals: ["example.org/ns/payments/sa/checkout-service"] } }]
//!   to:   [{ operation: { methods: ["POST"], paths: ["/v1/payments"] } }]
//! ```
//!
//! enforced in the service itself. As with an ALLOW policy, everything not matched is refused;
//! paths match exactly (no prefix, no normalisation), so `/v1/payments/` or `/v1/%70ayments`
//! are other routes and are refused.

use std::fmt;

use http::Method;
use spiffe::{SpiffeId, TrustDomain};

/// The only route `payment-processor` serves.
pub const PAYMENTS_PATH: &str = "/v1/payments";

/// SPIFFE ID path of the one caller allowed to create payments.
pub const CHECKOUT_SERVICE_PATH: &str = "/ns/payments/sa/checkout-service";

/// SPIFFE ID path `checkout-service` requires of the server it talks to.
pub const PAYMENT_PROCESSOR_PATH: &str = "/ns/payments/sa/payment-processor";

/// `spiffe://<td>/ns/payments/sa/checkout-service`.
pub fn checkout_service_id(td: &TrustDomain) -> SpiffeId {
    workload_id(td, CHECKOUT_SERVICE_PATH)
}

/// `spiffe://<td>/ns/payments/sa/payment-processor`.
pub fn payment_processor_id(td: &TrustDomain) -> SpiffeId {
    workload_id(td, PAYMENT_PROCESSOR_PATH)
}

fn workload_id(td: &TrustDomain, path: &str) -> SpiffeId {
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    // Invariant: a trust domain (at most 255 bytes) followed by one of the constant paths above
    // (lowercase segments, no dots, no empty segment) is always a valid SPIFFE ID of far less
    // than the 2048-byte limit.
    SpiffeId::from_segments(td.clone(), &segments).expect("constant SPIFFE ID paths are valid")
}

/// What the policy says about one request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// `POST /v1/payments` from `checkout-service`.
    Allow,
    /// The route exists, but this identity may not call it.
    ForbiddenIdentity,
    /// No identity may call this route.
    ForbiddenRoute,
}

impl Verdict {
    /// The label in the request log line.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Allow => "allow",
            Self::ForbiddenIdentity => "deny-identity",
            Self::ForbiddenRoute => "deny-route",
        }
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The rule for one trust domain (the server's own: identities of other trust domains never
/// complete the handshake, see [`crate::tls`]).
#[derive(Clone, Debug)]
pub struct Policy {
    allowed_caller: SpiffeId,
}

impl Policy {
    pub fn new(td: &TrustDomain) -> Self {
        Self::allowing(checkout_service_id(td))
    }

    /// The rule with another allowed caller (`--client-id`: checkout-service of a federated
    /// trust domain, say).
    pub fn allowing(allowed_caller: SpiffeId) -> Self {
        Self { allowed_caller }
    }

    /// The identity allowed to `POST /v1/payments`.
    pub fn allowed_caller(&self) -> &SpiffeId {
        &self.allowed_caller
    }

    /// Decides one request: the route first (an unknown route is refused for everyone), then
    /// the caller's identity.
    pub fn decide(&self, peer: &SpiffeId, method: &Method, path: &str) -> Verdict {
        if *method != Method::POST || path != PAYMENTS_PATH {
            Verdict::ForbiddenRoute
        } else if *peer != self.allowed_caller {
            Verdict::ForbiddenIdentity
        } else {
            Verdict::Allow
        }
    }

    /// The body of a refusal: names what was refused, so the caller's operator can tell an
    /// identity problem from a wrong route.
    pub fn refusal(
        &self,
        verdict: &Verdict,
        peer: &SpiffeId,
        method: &Method,
        path: &str,
    ) -> String {
        match verdict {
            Verdict::Allow => String::new(),
            Verdict::ForbiddenIdentity => format!(
                "forbidden: identity {peer} may not call {method} {path} (only {} may)",
                self.allowed_caller
            ),
            Verdict::ForbiddenRoute => format!(
                "forbidden: route {method} {path} is not allowed for any identity (only {} {PAYMENTS_PATH} exists)",
                Method::POST
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn td() -> TrustDomain {
        TrustDomain::new("example.org").unwrap()
    }

    fn id(s: &str) -> SpiffeId {
        SpiffeId::new(s).unwrap()
    }

    #[test]
    fn ids_follow_the_seed_names() {
        assert_eq!(
            checkout_service_id(&td()).to_string(),
            "spiffe://example.org/ns/payments/sa/checkout-service"
        );
        assert_eq!(
            payment_processor_id(&TrustDomain::new("other.test").unwrap()).to_string(),
            "spiffe://other.test/ns/payments/sa/payment-processor"
        );
    }

    #[test]
    fn only_checkout_service_may_post_payments() {
        let policy = Policy::new(&td());
        let checkout = id("spiffe://example.org/ns/payments/sa/checkout-service");
        assert_eq!(
            policy.decide(&checkout, &Method::POST, "/v1/payments"),
            Verdict::Allow
        );
        for other in [
            "spiffe://example.org/ns/analytics/sa/reporting",
            "spiffe://example.org/ns/payments/sa/payment-processor",
            "spiffe://example.org/ns/payments/sa/checkout-service/extra",
            "spiffe://example.org/ns/payments/sa/checkout-servic",
            // Same path in another trust domain: a different identity.
            "spiffe://other.test/ns/payments/sa/checkout-service",
        ] {
            assert_eq!(
                policy.decide(&id(other), &Method::POST, "/v1/payments"),
                Verdict::ForbiddenIdentity,
                "{other}"
            );
        }
    }

    #[test]
    fn every_other_route_is_refused_even_for_checkout_service() {
        let policy = Policy::new(&td());
        let checkout = checkout_service_id(&td());
        let reporting = id("spiffe://example.org/ns/analytics/sa/reporting");
        for (method, path) in [
            (Method::GET, "/v1/payments"),
            (Method::PUT, "/v1/payments"),
            (Method::DELETE, "/v1/payments"),
            (Method::POST, "/v1/refunds"),
            (Method::POST, "/v1/payments/"),
            (Method::POST, "/v1/payments/123"),
            (Method::POST, "/v1/%70ayments"),
            (Method::POST, "/V1/payments"),
            (Method::POST, "/"),
            (Method::GET, "/admin"),
        ] {
            for peer in [&checkout, &reporting] {
                assert_eq!(
                    policy.decide(peer, &method, path),
                    Verdict::ForbiddenRoute,
                    "{peer} {method} {path}"
                );
            }
        }
    }

    #[test]
    fn refusals_name_what_was_refused() {
        let policy = Policy::new(&td());
        let reporting = id("spiffe://example.org/ns/analytics/sa/reporting");
        let msg = policy.refusal(
            &Verdict::ForbiddenIdentity,
            &reporting,
            &Method::POST,
            "/v1/payments",
        );
        assert!(
            msg.contains("identity spiffe://example.org/ns/analytics/sa/reporting"),
            "{msg}"
        );
        let msg = policy.refusal(
            &Verdict::ForbiddenRoute,
            &checkout_service_id(&td()),
            &Method::GET,
            "/v1/refunds",
        );
        assert!(msg.contains("route GET /v1/refunds"), "{msg}");
    }
}
