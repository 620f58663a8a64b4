//! The server's gRPC APIs: `admin` (Unix socket, for the CLI; split by resource) and `agent`
//! (mTLS, for agents). Every RPC of both passes one tower layer (`middleware`) that
//! authorizes the caller, counts the outcome and, with `audit_log_enabled`, writes the audit
//! line of every call that changes state or signs (`audit`). The datastore's and the CA's
//! errors become `tonic::Status` here (`datastore_status`, `ca_status`); each resource maps
//! its own.

pub mod admin;
pub mod agent;
pub(crate) mod audit;
pub mod authorization;
pub(crate) mod middleware;
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
        DatastoreError::Database(ref db) if storage_fault(db) == Some(StorageFault::Full) => {
            tracing::error!(error = %e, "datastore disk full");
            Status::resource_exhausted("the datastore's disk is full; nothing was written")
        }
        DatastoreError::Database(ref db) if storage_fault(db) == Some(StorageFault::ReadOnly) => {
            tracing::error!(error = %e, "datastore is read-only");
            Status::unavailable("the datastore is read-only; nothing was written")
        }
        other => {
            tracing::error!(error = %other, "datastore failure");
            Status::internal("datastore failure")
        }
    }
}

/// A write the storage itself refused: the operator must act, and the caller is told why.
#[derive(Debug, PartialEq, Eq)]
enum StorageFault {
    Full,
    ReadOnly,
}

fn storage_fault(e: &sqlx::Error) -> Option<StorageFault> {
    let sqlx::Error::Database(db) = e else {
        return None;
    };
    let code = db.code()?;
    // SQLite reports (extended) result codes as numbers, PostgreSQL SQLSTATEs as text.
    match code.parse::<i32>().ok().map(|c| c & 0xff) {
        Some(13) => Some(StorageFault::Full),    // SQLITE_FULL
        Some(8) => Some(StorageFault::ReadOnly), // SQLITE_READONLY_*
        _ => match code.as_ref() {
            "53100" => Some(StorageFault::Full),     // disk_full
            "25006" => Some(StorageFault::ReadOnly), // read_only_sql_transaction
            _ => None,
        },
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
