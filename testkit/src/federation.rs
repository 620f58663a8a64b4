//! Helpers for tests of federation between two Sigil servers.

use crate::Server;

/// Copies `from`'s own bundle into `to` as a federated bundle (`bundle show -format spiffe`
/// then `bundle set`).
pub fn exchange(from: &Server, to: &Server) {
    let json = from.cli_ok(&["bundle", "show", "-format", "spiffe"]);
    let path = to
        .dir
        .path()
        .join(format!("{}.json", from.options.trust_domain));
    std::fs::write(&path, json).unwrap();
    let id = format!("spiffe://{}", from.options.trust_domain);
    let out = to.cli_ok(&[
        "bundle",
        "set",
        "-id",
        &id,
        "-path",
        path.to_str().unwrap(),
        "-format",
        "spiffe",
    ]);
    assert_eq!(out.trim(), "bundle set.");
}

/// The first federated bundle a Workload API fetch wrote into `dir`, if any.
pub fn federated_file(dir: &tempfile::TempDir) -> Option<String> {
    let path = dir.path().join("federated_bundle.0.0.pem");
    path.exists().then(|| path.to_str().unwrap().to_owned())
}

/// How many PEM certificates `text` holds.
pub fn pem_count(text: &str) -> usize {
    text.matches("BEGIN CERTIFICATE").count()
}
