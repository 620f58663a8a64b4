//! Sigil's wire contracts and the SPIFFE primitives the server and the agent share. Nothing
//! here does I/O or reads configuration: what both binaries need beyond contracts lives in
//! `sigil-common`.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

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

/// The message of the `UNAVAILABLE` status with which sigil-server ends its agents' sync
/// streams when it shuts down: its agents then expect it back within seconds (a restart, a
/// rolling update) and retry sooner than after an unexplained failure.
pub const SERVER_SHUTTING_DOWN: &str = "the server is shutting down";

/// Sigil's own APIs, `sigil.<api>.v1`.
pub mod sigil {
    /// Types shared by the admin and agent APIs.
    pub mod common {
        pub mod v1 {
            #![allow(clippy::all, missing_docs)]
            tonic::include_proto!("sigil.common.v1");
        }
    }
    /// The admin API, served on the server's Unix socket for the `sigil-server` CLI.
    pub mod admin {
        pub mod v1 {
            #![allow(clippy::all, missing_docs)]
            tonic::include_proto!("sigil.admin.v1");
        }
    }
    /// The agent API: how sigil-agent attests to sigil-server, renews its own SVID, syncs its
    /// entries and has workload SVIDs minted.
    pub mod agent {
        pub mod v1 {
            #![allow(clippy::all, missing_docs)]
            tonic::include_proto!("sigil.agent.v1");
        }
    }
}

/// The subset of Envoy's v3 API that the agent's SDS server speaks (`proto/envoy/README.md`),
/// under Envoy's own package names.
pub mod envoy {
    /// `envoy.config.*`
    pub mod config {
        /// `envoy.config.core`
        pub mod core {
            pub mod v3 {
                #![allow(clippy::all, missing_docs)]
                tonic::include_proto!("envoy.config.core.v3");
            }
        }
    }
    /// `envoy.type.*`
    pub mod r#type {
        pub mod v3 {
            #![allow(clippy::all, missing_docs)]
            tonic::include_proto!("envoy.r#type.v3");
        }
    }
    /// `envoy.extensions.*`
    pub mod extensions {
        /// `envoy.extensions.transport_sockets`
        pub mod transport_sockets {
            /// `envoy.extensions.transport_sockets.tls`
            pub mod tls {
                pub mod v3 {
                    #![allow(clippy::all, missing_docs)]
                    tonic::include_proto!("envoy.extensions.transport_sockets.tls.v3");
                }
            }
        }
    }
    /// `envoy.service.*`
    pub mod service {
        /// `envoy.service.discovery`
        pub mod discovery {
            pub mod v3 {
                #![allow(clippy::all, missing_docs)]
                tonic::include_proto!("envoy.service.discovery.v3");
            }
        }
        /// `envoy.service.secret`
        pub mod secret {
            pub mod v3 {
                #![allow(clippy::all, missing_docs)]
                tonic::include_proto!("envoy.service.secret.v3");
            }
        }
    }
}

/// SPIRE's agent APIs that Sigil serves, under SPIRE's own package names
/// (`proto/spire/`): the Delegated Identity API and the logger API on the agent's admin socket.
pub mod spire {
    /// `spire.api`
    pub mod api {
        /// `spire.api.types`
        pub mod types {
            #![allow(clippy::all, missing_docs)]
            tonic::include_proto!("spire.api.types");
        }
        /// `spire.api.agent`
        pub mod agent {
            /// `spire.api.agent.delegatedidentity`
            pub mod delegatedidentity {
                pub mod v1 {
                    #![allow(clippy::all, missing_docs)]
                    tonic::include_proto!("spire.api.agent.delegatedidentity.v1");
                }
            }
            /// `spire.api.agent.logger`
            pub mod logger {
                pub mod v1 {
                    #![allow(clippy::all, missing_docs)]
                    tonic::include_proto!("spire.api.agent.logger.v1");
                }
            }
        }
    }
}

/// `google.rpc.Status`, as xDS clients report rejected updates.
pub mod google {
    /// `google.rpc`
    pub mod rpc {
        #![allow(clippy::all, missing_docs)]
        tonic::include_proto!("google.rpc");
    }
}
