//! `Health` (the CLI's `healthcheck`): healthy means able to serve, that is the datastore's
//! last write probe committed and a read answers now.

use std::sync::Arc;

use sigil_proto::TrustDomain;
use sigil_proto::sigil::admin::v1 as pb;
use tonic::Status;

use crate::api::datastore_status;
use crate::datastore::{Datastore, EntryFilter};
use crate::ops::Readiness;

pub(super) struct Health {
    datastore: Datastore,
    trust_domain: TrustDomain,
    /// Whether the datastore's write probe passes; `None` in tests that do not run the probe.
    readiness: Option<Arc<Readiness>>,
}

impl Health {
    pub(super) fn new(datastore: Datastore, trust_domain: TrustDomain) -> Self {
        Self {
            datastore,
            trust_domain,
            readiness: None,
        }
    }

    /// Reports the datastore write probe's last result from `readiness`.
    pub(super) fn set_readiness(&mut self, readiness: Arc<Readiness>) {
        self.readiness = Some(readiness);
    }

    pub(super) async fn check(&self, _: pb::HealthRequest) -> Result<pb::HealthResponse, Status> {
        if let Some(fault) = self.readiness.as_ref().and_then(|r| r.datastore_fault()) {
            return Err(Status::unavailable(format!(
                "the datastore cannot take writes: {fault}"
            )));
        }
        self.datastore
            .count_entries(&EntryFilter::default())
            .await
            .map_err(datastore_status)?;
        Ok(pb::HealthResponse {
            serving: true,
            trust_domain: self.trust_domain.to_string(),
        })
    }
}
