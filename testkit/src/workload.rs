//! A workload's view of an agent: the Workload API endpoint and an independent Rust client on
//! it (the `spiffe` crate, not Sigil's own code).

use crate::Agent;

impl Agent {
    /// The Workload API endpoint, `unix://<socket>`, as SPIFFE clients take it.
    pub fn endpoint(&self) -> String {
        format!("unix://{}", self.socket.display())
    }

    /// The `spiffe` crate's Workload API client on this agent.
    ///
    /// # Panics
    /// If it cannot connect.
    pub async fn workload_client(&self) -> spiffe::WorkloadApiClient {
        spiffe::WorkloadApiClient::connect_to(self.endpoint())
            .await
            .expect("a Workload API client")
    }
}
