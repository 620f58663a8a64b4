//! Sigil's wire contracts and the SPIFFE primitives the server and the agent share. Nothing
//! here does I/O or reads configuration: what both binaries need beyond contracts lives in
//! `sigil-common`.
#![forbid(unsafe_code)]

pub mod bundle;
pub mod convert;
pub mod entry;
pub mod id_template;
pub mod limits;
pub mod selector;
pub mod spiffe_id;
pub mod trust_domain;

pub use bundle::{Bundle, JwtAuthority};
pub use entry::{EntrySpiffeId, RegistrationEntry};
pub use id_template::IdTemplate;
pub use selector::Selector;
pub use spiffe_id::{SpiffeId, SpiffeIdError};
pub use trust_domain::TrustDomain;

/// The SPIFFE Workload API (no proto package, so gRPC paths are `/SpiffeWorkloadAPI/...`).
pub mod workload {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("_");
}

/// Sigil's own APIs, `sigil.<api>.v1`.
pub mod sigil {
    pub mod common {
        pub mod v1 {
            #![allow(clippy::all, missing_docs)]
            tonic::include_proto!("sigil.common.v1");
        }
    }
    pub mod admin {
        pub mod v1 {
            #![allow(clippy::all, missing_docs)]
            tonic::include_proto!("sigil.admin.v1");
        }
    }
    pub mod agent {
        pub mod v1 {
            #![allow(clippy::all, missing_docs)]
            tonic::include_proto!("sigil.agent.v1");
        }
    }
}
