//! SPIFFE federation: the federated bundles we hold ([`bundles`]), the bundle endpoint serving
//! our own bundle to other trust domains ([`endpoint`]), the peers we poll, from the config
//! file and the datastore ([`peers`]), the poller fetching each one's bundle ([`poller`]) and
//! their poll status ([`status`]). Config blocks are read in [`config`].

pub mod bundles;
pub mod config;
pub mod endpoint;
pub mod peers;
pub mod poller;
pub mod status;

pub use bundles::{BundleSet, DeleteMode, FederatedBundles, Refreshed};

use sigil_proto::TrustDomain;

use crate::datastore::DatastoreError;

#[derive(Debug, thiserror::Error)]
pub enum FederationError {
    #[error("{0} is this server's own trust domain; its bundle is managed by the CA")]
    OwnTrustDomain(TrustDomain),
    #[error("the bundle for {0} has no X.509 authority")]
    NoX509Authority(TrustDomain),
    #[error("no federated bundle for {0}")]
    NotFound(TrustDomain),
    #[error(
        "{entries} registration entries federate with {trust_domain}; use -mode delete or dissociate"
    )]
    InUse {
        trust_domain: TrustDomain,
        entries: usize,
    },
    #[error("fetched a bundle for {found} from the endpoint of {expected}")]
    WrongTrustDomain {
        expected: TrustDomain,
        found: TrustDomain,
    },
    #[error("bundle of {trust_domain}: sequence {fetched} is behind the stored {stored}")]
    SequenceBehind {
        trust_domain: TrustDomain,
        stored: u64,
        fetched: u64,
    },
    #[error(transparent)]
    Datastore(#[from] DatastoreError),
}
