//! What the command line prints and writes: SPIRE's text layout, or protobuf-JSON with
//! `-output json`; X509-SVIDs also as files (`-write`).

use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use sigil_proto::bundle::pem_encode;
use sigil_proto::workload::{
    JwtBundlesResponse, JwtsvidResponse, ValidateJwtsvidResponse, X509svidResponse,
};
use x509_parser::prelude::{FromDer, X509Certificate};

use super::CliError;
use super::commands::OutputFormat;

/// An X509-SVID response received after `elapsed`, as text or JSON.
pub(super) fn x509(
    response: &X509svidResponse,
    elapsed: Duration,
    format: Option<OutputFormat>,
    out: &mut (dyn Write + Send),
) -> Result<(), CliError> {
    if format == Some(OutputFormat::Json) {
        writeln!(out, "{}", x509_json(response))?;
        Ok(())
    } else {
        print_x509(response, elapsed, out)
    }
}

fn print_x509(
    response: &X509svidResponse,
    elapsed: Duration,
    out: &mut (dyn Write + Send),
) -> Result<(), CliError> {
    let n = response.svids.len();
    writeln!(
        out,
        "Received {n} svid{} after {elapsed:?}",
        if n == 1 { "" } else { "s" }
    )?;
    for svid in &response.svids {
        writeln!(out)?;
        writeln!(out, "SPIFFE ID:\t\t{}", svid.spiffe_id)?;
        if !svid.hint.is_empty() {
            writeln!(out, "Hint:\t\t\t{}", svid.hint)?;
        }
        let chain = parse_validity(&svid.x509_svid)?;
        for (i, (not_before, not_after)) in chain.iter().enumerate() {
            let label = if i == 0 {
                "SVID".to_owned()
            } else {
                format!("Intermediate #{i}")
            };
            writeln!(out, "{label} Valid After:\t{not_before}")?;
            writeln!(out, "{label} Valid Until:\t{not_after}")?;
        }
        for (i, (not_before, not_after)) in parse_validity(&svid.bundle)?.iter().enumerate() {
            writeln!(out, "CA #{} Valid After:\t{not_before}", i + 1)?;
            writeln!(out, "CA #{} Valid Until:\t{not_after}", i + 1)?;
        }
    }
    for td in response.federated_bundles.keys() {
        writeln!(out, "Federated bundle:\t{td}")?;
    }
    Ok(())
}

/// (notBefore, notAfter) of each certificate in concatenated DER.
fn parse_validity(mut der: &[u8]) -> Result<Vec<(String, String)>, CliError> {
    let mut out = Vec::new();
    while !der.is_empty() {
        let (rest, cert) =
            X509Certificate::from_der(der).map_err(|e| CliError::BadCertificate(e.to_string()))?;
        out.push((
            cert.validity().not_before.to_string(),
            cert.validity().not_after.to_string(),
        ));
        der = rest;
    }
    Ok(out)
}

/// Splits concatenated DER certificates.
fn split_der(mut der: &[u8]) -> Result<Vec<&[u8]>, CliError> {
    let mut out = Vec::new();
    while !der.is_empty() {
        let (rest, _) =
            X509Certificate::from_der(der).map_err(|e| CliError::BadCertificate(e.to_string()))?;
        out.push(&der[..der.len() - rest.len()]);
        der = rest;
    }
    Ok(out)
}

fn pem_chain(der: &[u8]) -> Result<String, CliError> {
    Ok(split_der(der)?
        .into_iter()
        .map(|c| pem_encode("CERTIFICATE", c))
        .collect())
}

/// SPIRE's file layout: `svid.N.pem` (chain), `svid.N.key` (PKCS#8, 0600), `bundle.N.pem`,
/// `federated_bundle.N.M.pem`.
pub(super) fn write_x509_files(response: &X509svidResponse, dir: &Path) -> Result<(), CliError> {
    let write = |name: String, contents: String, mode: u32| -> Result<(), CliError> {
        let path = dir.join(name);
        let err = |source| CliError::Write {
            path: path.clone(),
            source,
        };
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&path)
            .map_err(err)?;
        // `mode` applies only to new files; an existing key file must not stay readable.
        file.set_permissions(std::fs::Permissions::from_mode(mode))
            .map_err(err)?;
        file.write_all(contents.as_bytes()).map_err(err)
    };
    for (i, svid) in response.svids.iter().enumerate() {
        write(format!("svid.{i}.pem"), pem_chain(&svid.x509_svid)?, 0o644)?;
        let key = zeroize::Zeroizing::new(pem_encode("PRIVATE KEY", &svid.x509_svid_key));
        write(format!("svid.{i}.key"), key.to_string(), 0o600)?;
        write(format!("bundle.{i}.pem"), pem_chain(&svid.bundle)?, 0o644)?;
        for (j, der) in response.federated_bundles.values().enumerate() {
            write(
                format!("federated_bundle.{i}.{j}.pem"),
                pem_chain(der)?,
                0o644,
            )?;
        }
    }
    Ok(())
}

/// The response in protobuf-JSON shape (bytes as base64), as SPIRE's `-output json` prints.
fn x509_json(response: &X509svidResponse) -> serde_json::Value {
    let svids: Vec<_> = response
        .svids
        .iter()
        .map(|s| {
            serde_json::json!({
                "spiffe_id": s.spiffe_id,
                "hint": s.hint,
                "x509_svid": STANDARD.encode(&s.x509_svid),
                "x509_svid_key": STANDARD.encode(&s.x509_svid_key),
                "bundle": STANDARD.encode(&s.bundle),
            })
        })
        .collect();
    let federated: BTreeMap<_, _> = response
        .federated_bundles
        .iter()
        .map(|(td, der)| (td, STANDARD.encode(der)))
        .collect();
    let crl: Vec<_> = response.crl.iter().map(|c| STANDARD.encode(c)).collect();
    serde_json::json!({ "crl": crl, "federated_bundles": federated, "svids": svids })
}

/// JWT-SVIDs and the JWT bundles fetched with them, as SPIRE's `api fetch jwt` prints them:
/// `token(<SPIFFE ID>):` (and `hint(...)`) lines, then `bundle(<trust domain>):` lines; or
/// with `-output json` both responses in protobuf-JSON, `[{"svids":[...]},{"bundles":{...}}]`
/// (bundles as base64 of the JWKS bytes, as protojson writes `bytes`).
pub(super) fn jwt_svids(
    svids: &JwtsvidResponse,
    bundles: &JwtBundlesResponse,
    format: Option<OutputFormat>,
    out: &mut (dyn Write + Send),
) -> Result<(), CliError> {
    let by_domain: BTreeMap<_, _> = bundles.bundles.iter().collect();
    if format == Some(OutputFormat::Json) {
        let svids: Vec<_> = svids
            .svids
            .iter()
            .map(|s| serde_json::json!({"hint": s.hint, "spiffe_id": s.spiffe_id, "svid": s.svid}))
            .collect();
        let bundles: BTreeMap<_, _> = by_domain
            .iter()
            .map(|(td, jwks)| (td, STANDARD.encode(jwks)))
            .collect();
        writeln!(
            out,
            "{}",
            serde_json::json!([{ "svids": svids }, { "bundles": bundles }])
        )?;
        return Ok(());
    }
    for svid in &svids.svids {
        writeln!(out, "token({}):\n\t{}", svid.spiffe_id, svid.svid)?;
        if !svid.hint.is_empty() {
            writeln!(out, "hint({}):\n\t{}", svid.spiffe_id, svid.hint)?;
        }
    }
    for (td, jwks) in by_domain {
        writeln!(out, "bundle({td}):\n\t{}", String::from_utf8_lossy(jwks))?;
    }
    Ok(())
}

/// JWT bundles (JWKS) by trust domain, as text or JSON.
pub(super) fn jwt_bundles(
    response: &JwtBundlesResponse,
    format: Option<OutputFormat>,
    out: &mut (dyn Write + Send),
) -> Result<(), CliError> {
    let bundles: BTreeMap<_, _> = response.bundles.iter().collect();
    if format == Some(OutputFormat::Json) {
        let map: BTreeMap<_, serde_json::Value> = bundles
            .iter()
            .map(|(td, jwks)| (td, serde_json::from_slice(jwks).unwrap_or_default()))
            .collect();
        writeln!(out, "{}", serde_json::json!(map))?;
        return Ok(());
    }
    for (td, jwks) in bundles {
        writeln!(out, "bundle({td}):\n\t{}", String::from_utf8_lossy(jwks))?;
    }
    Ok(())
}

/// A validated JWT-SVID's SPIFFE ID and claims, as text or JSON.
pub(super) fn validated_jwt(
    response: &ValidateJwtsvidResponse,
    format: Option<OutputFormat>,
    out: &mut (dyn Write + Send),
) -> Result<(), CliError> {
    let claims = response
        .claims
        .as_ref()
        .map(struct_to_json)
        .unwrap_or_default();
    if format == Some(OutputFormat::Json) {
        writeln!(
            out,
            "{}",
            serde_json::json!({"spiffe_id": response.spiffe_id, "claims": claims})
        )?;
        return Ok(());
    }
    writeln!(out, "SVID is valid.")?;
    writeln!(out, "SPIFFE ID : {}", response.spiffe_id)?;
    writeln!(out, "Claims    : {claims}")?;
    Ok(())
}

fn struct_to_json(s: &prost_types::Struct) -> serde_json::Value {
    serde_json::Value::Object(
        s.fields
            .iter()
            .map(|(k, v)| (k.clone(), value_to_json(v)))
            .collect(),
    )
}

fn value_to_json(v: &prost_types::Value) -> serde_json::Value {
    use prost_types::value::Kind;
    match &v.kind {
        None | Some(Kind::NullValue(_)) => serde_json::Value::Null,
        Some(Kind::BoolValue(b)) => serde_json::Value::Bool(*b),
        Some(Kind::NumberValue(n)) => {
            // Claims like exp/iat are integers; print them without a fraction.
            if n.fract() == 0.0 && n.abs() < 9.0e15 {
                serde_json::Value::from(*n as i64)
            } else {
                serde_json::Value::from(*n)
            }
        }
        Some(Kind::StringValue(s)) => serde_json::Value::String(s.clone()),
        Some(Kind::ListValue(l)) => {
            serde_json::Value::Array(l.values.iter().map(value_to_json).collect())
        }
        Some(Kind::StructValue(s)) => struct_to_json(s),
    }
}
