//! The raw signing limit of this machine, per core, measured in this run with the crypto the
//! CA uses: ring ECDSA P-256 signatures, and the CA's own X.509-SVID path (CSR parse +
//! signature verify + rcgen leaf signed by the CA key) and JWT-SVID path, called directly on
//! one thread.
//!
//! "Per core" is per CPU-second of that thread (from `/proc/thread-self/stat`), not per
//! wall-clock second: on a shared machine the thread is descheduled part of the time, and the
//! servers' rates are compared with their own CPU time too.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context as _;
use ring::rand::SystemRandom;
use ring::signature::{ECDSA_P256_SHA256_ASN1_SIGNING, EcdsaKeyPair};
use sigil_proto::{SpiffeId, TrustDomain};
use sigil_server::ca::{Ca, CaConfig};
use sigil_server::key_manager::MemoryKeyManager;

use crate::stats;

/// Operations per second of each path, on one core.
#[derive(Clone, Copy, Debug)]
pub(crate) struct RawLimit {
    /// ring ECDSA P-256 (SHA-256, ASN.1 signature) over a certificate-sized message.
    pub p256_sign: f64,
    /// `Ca::sign_x509_svid_csr`: what the server does per X.509-SVID it mints.
    pub x509_svid_csr: f64,
    /// `Ca::sign_jwt_svid`.
    pub jwt_svid: f64,
}

/// Measures each path for `window` of CPU time on the calling thread (call it off the async
/// runtime).
pub(crate) fn measure(window: Duration, csrs: &[Vec<u8>]) -> anyhow::Result<RawLimit> {
    let rng = SystemRandom::new();
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &rng)
        .map_err(|_| anyhow::anyhow!("generating a P-256 key"))?;
    let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, pkcs8.as_ref(), &rng)
        .map_err(|e| anyhow::anyhow!("loading the P-256 key: {e}"))?;
    // About the size of an X.509-SVID's to-be-signed part.
    let message = [0x5a_u8; 400];
    let p256_sign = rate(window, |_| {
        key.sign(&rng, &message)
            .map(drop)
            .map_err(|_| anyhow::anyhow!("P-256 sign failed"))
    })?;

    let td = TrustDomain::new("bench.example").context("trust domain")?;
    let (ca, _journal) = Ca::new(
        CaConfig::new(td),
        Arc::new(MemoryKeyManager::new()),
        None,
        SystemTime::now(),
    )
    .context("creating a CA")?;
    let id = SpiffeId::new("spiffe://bench.example/raw/workload").context("SPIFFE ID")?;
    anyhow::ensure!(!csrs.is_empty(), "no CSRs to sign");
    let x509_svid_csr = rate(window, |i| {
        ca.sign_x509_svid_csr(&csrs[i % csrs.len()], &id, None, &[])
            .map(drop)
            .context("signing an X.509-SVID")
    })?;
    let audience = ["bench".to_owned()];
    let jwt_svid = rate(window, |_| {
        ca.sign_jwt_svid(&id, &audience, None)
            .map(drop)
            .context("signing a JWT-SVID")
    })?;
    Ok(RawLimit {
        p256_sign,
        x509_svid_csr,
        jwt_svid,
    })
}

/// Calls `op` with 0, 1, 2... until this thread has used `window` of CPU time (or four times
/// `window` of wall time has passed, on a starved machine); returns calls per CPU-second.
fn rate(window: Duration, mut op: impl FnMut(usize) -> anyhow::Result<()>) -> anyhow::Result<f64> {
    let start = Instant::now();
    let cpu_start = stats::thread_cpu_seconds()?;
    let mut n = 0;
    loop {
        // Read the clocks once per 32 calls so they cost little next to 32 signatures.
        for _ in 0..32 {
            op(n)?;
            n += 1;
        }
        let cpu = stats::thread_cpu_seconds()? - cpu_start;
        let wall = start.elapsed();
        if cpu >= window.as_secs_f64() || wall >= window * 4 {
            // CPU time ticks at 10 ms: with less than a tick, wall time is the better bound.
            let seconds = if cpu > 0.0 { cpu } else { wall.as_secs_f64() };
            return Ok(n as f64 / seconds);
        }
    }
}

/// `n` CSRs for fresh P-256 keys, as sigil-agent makes them.
pub(crate) fn csrs(n: usize) -> anyhow::Result<Vec<Vec<u8>>> {
    (0..n)
        .map(|_| {
            sigil_agent::csr::new_key_and_csr(sigil_agent::csr::KeyType::EcP256)
                .map(|(_key, csr)| csr)
                .context("generating a CSR")
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_path_is_measured() {
        let csrs = csrs(4).unwrap();
        let raw = measure(Duration::from_millis(20), &csrs).unwrap();
        assert!(raw.p256_sign > 0.0 && raw.p256_sign.is_finite());
        assert!(raw.x509_svid_csr > 0.0 && raw.x509_svid_csr.is_finite());
        assert!(raw.jwt_svid > 0.0 && raw.jwt_svid.is_finite());
    }

    #[test]
    fn rate_counts_calls_and_stops_on_error() {
        let mut calls = 0;
        let r = rate(Duration::from_millis(5), |_| {
            calls += 1;
            Ok(())
        })
        .unwrap();
        assert!(calls >= 32 && r > 0.0);
        assert!(rate(Duration::from_secs(5), |_| anyhow::bail!("boom")).is_err());
    }
}
