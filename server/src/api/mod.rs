//! The server's gRPC APIs: `admin` (Unix socket, for the CLI) and `agent` (mTLS, for agents).
//! Domain errors become `tonic::Status` here and only here.

pub mod admin;
pub mod agent;
pub mod authorization;
pub mod tls;

use tonic::Status;

use crate::ca::CaError;
use crate::datastore::DatastoreError;

pub(crate) fn datastore_status(e: DatastoreError) -> Status {
    // The Display of these variants is written for the caller ("already exists: an entry for ...").
    match e {
        DatastoreError::NotFound(_) => Status::not_found(e.to_string()),
        DatastoreError::AlreadyExists(_) => Status::already_exists(e.to_string()),
        DatastoreError::InvalidArgument(_) => Status::invalid_argument(e.to_string()),
        DatastoreError::Banned(_) => Status::permission_denied(e.to_string()),
        other => {
            tracing::error!(error = %other, "datastore failure");
            Status::internal("datastore failure")
        }
    }
}

pub(crate) fn ca_status(e: CaError) -> Status {
    if e.is_invalid_request() {
        Status::invalid_argument(e.to_string())
    } else {
        tracing::error!(error = %e, "signing failure");
        Status::internal("signing failure")
    }
}

pub(crate) fn invalid_field(e: sigil_proto::convert::InvalidField) -> Status {
    Status::invalid_argument(e.to_string())
}
