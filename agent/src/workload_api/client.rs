//! A Workload API client over a Unix socket that adds the security header to every call: used
//! by the `sigil-agent api ...` commands and the tests.

use std::path::{Path, PathBuf};

use sigil_proto::workload::spiffe_workload_api_client::SpiffeWorkloadApiClient;
use tonic::metadata::MetadataValue;
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

use super::{MAX_RESPONSE_BYTES, SECURITY_HEADER};

/// Adds `workload.spiffe.io: true`.
#[derive(Clone, Copy, Debug, Default)]
pub struct SecurityHeader;

impl Interceptor for SecurityHeader {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        request
            .metadata_mut()
            .insert(SECURITY_HEADER, MetadataValue::from_static("true"));
        Ok(request)
    }
}

/// The generated client with the header interceptor.
pub type WorkloadApiClient = SpiffeWorkloadApiClient<InterceptedService<Channel, SecurityHeader>>;

/// Why a client could not connect.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    #[error("connecting to the Workload API at {path}")]
    Connect {
        path: PathBuf,
        source: tonic::transport::Error,
    },
}

/// Connects to the Workload API at `socket_path`.
pub async fn connect(socket_path: &Path) -> Result<WorkloadApiClient, ClientError> {
    let channel = channel(socket_path).await?;
    Ok(
        SpiffeWorkloadApiClient::with_interceptor(channel, SecurityHeader)
            .max_decoding_message_size(MAX_RESPONSE_BYTES),
    )
}

/// A channel to the socket without the header (tests use it to check the header rule).
pub async fn channel(socket_path: &Path) -> Result<Channel, ClientError> {
    sigil_common::uds::channel(socket_path)
        .await
        .map_err(|source| ClientError::Connect {
            path: socket_path.to_path_buf(),
            source,
        })
}
