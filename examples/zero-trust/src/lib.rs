//! The seed's zero-trust story as two small services: `checkout-service` calls
//! `payment-processor` over mTLS, both holding only what the SPIFFE Workload API gives them, and
//! `payment-processor` enforces the Istio `AuthorizationPolicy` of the seed itself, by SPIFFE ID.
//!
//! - [`policy`]: the authorization rule, a pure function of (peer SPIFFE ID, method, path).
//! - [`tls`]: an `X509Source` from the Workload API and the rustls configurations built on it.
//! - [`jwt`]: JWT-SVIDs as bearer tokens on top of mTLS (fetch, and validate twice).
#![forbid(unsafe_code)]

pub mod jwt;
pub mod policy;
pub mod tls;
