// Generates the gRPC code for the Workload API, Envoy's SDS, SPIRE's Delegated Identity API and
// Sigil's own APIs. protoc comes from the protoc-bin-vendored crate so a fresh machine needs no
// system protobuf compiler.
use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos: Vec<PathBuf> = [
        "proto/workload.proto",
        "proto/sigil/common/v1/types.proto",
        "proto/sigil/admin/v1/admin.proto",
        "proto/sigil/agent/v1/agent.proto",
        "proto/envoy/service/secret/v3/sds.proto",
        "proto/envoy/extensions/transport_sockets/tls/v3/secret.proto",
        "proto/spire/api/agent/delegatedidentity/v1/delegatedidentity.proto",
        "proto/spire/api/agent/logger/v1/logger.proto",
    ]
    .iter()
    .map(PathBuf::from)
    .collect();
    let includes = [PathBuf::from("proto"), protoc_bin_vendored::include_path()?];
    let mut config = tonic_prost_build::Config::new();
    config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    // `prost::Name` on every message: SDS packs Envoy's messages into `Any` by type URL.
    config.enable_type_names();
    config.type_name_domain(["."], "type.googleapis.com");
    tonic_prost_build::configure().compile_with_config(config, &protos, &includes)?;
    println!("cargo:rerun-if-changed=proto");
    Ok(())
}
