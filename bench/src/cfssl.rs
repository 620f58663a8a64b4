//! The peer: CloudFlare's `cfssl` CA server (Debian `golang-cfssl`) with a P-256 CA made by
//! `cfssl gencert -initca`, served on loopback and sent the same kind of CSRs (fresh P-256
//! keys, as sigil-agent makes them) on keep-alive HTTP/1.1 connections.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper_util::rt::TokioIo;
use sigil_testkit::{Process, free_port};

use crate::stats;

/// Signing rate of cfssl and what it used to reach it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct CfsslRate {
    pub per_second: f64,
    pub cores_used: f64,
}

/// Whether `cfssl` is on the PATH.
pub(crate) fn available() -> bool {
    Command::new("cfssl")
        .arg("version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// `cfssl serve` with a fresh P-256 CA in a temp dir. Killed on drop.
struct CfsslServe {
    process: Process,
    port: u16,
    _dir: tempfile::TempDir,
}

async fn serve() -> anyhow::Result<CfsslServe> {
    let dir = tempfile::tempdir()?;
    let csr_json = dir.path().join("ca-csr.json");
    std::fs::write(
        &csr_json,
        r#"{"CN":"sigil-bench cfssl CA","key":{"algo":"ecdsa","size":256}}"#,
    )?;
    let out = Command::new("cfssl")
        .arg("gencert")
        .arg("-initca")
        .arg(&csr_json)
        .output()
        .context("cfssl gencert -initca")?;
    anyhow::ensure!(
        out.status.success(),
        "cfssl gencert -initca failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let ca: serde_json::Value =
        serde_json::from_slice(&out.stdout).context("cfssl gencert output")?;
    let (cert, key) = (ca["cert"].as_str(), ca["key"].as_str());
    let (Some(cert), Some(key)) = (cert, key) else {
        anyhow::bail!("cfssl gencert gave no cert or key");
    };
    let write = |name: &str, text: &str| -> anyhow::Result<std::path::PathBuf> {
        let p = dir.path().join(name);
        std::fs::write(&p, text)?;
        Ok(p)
    };
    let ca_pem = write("ca.pem", cert)?;
    let ca_key = write("ca-key.pem", key)?;
    // The same lifetime and usages as an X.509-SVID.
    let config = write(
        "config.json",
        r#"{"signing":{"default":{"expiry":"1h","usages":["digital signature","key encipherment","server auth","client auth"]}}}"#,
    )?;
    let port = free_port();
    let mut command = Command::new("cfssl");
    command
        .args(["serve", "-address", "127.0.0.1", "-port", &port.to_string()])
        .arg("-ca")
        .arg(&ca_pem)
        .arg("-ca-key")
        .arg(&ca_key)
        .arg("-config")
        .arg(&config);
    let serve = CfsslServe {
        process: Process::spawn(command, &dir.path().join("serve.log")),
        port,
        _dir: dir,
    };
    let start = Instant::now();
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        anyhow::ensure!(
            start.elapsed() < Duration::from_secs(30),
            "cfssl serve did not listen within 30 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(serve)
}

/// Starts cfssl and keeps `concurrency` HTTP clients posting CSRs to `/api/v1/cfssl/sign`
/// for `window`.
pub(crate) async fn measure(
    csrs: &[Vec<u8>],
    concurrency: usize,
    window: Duration,
) -> anyhow::Result<CfsslRate> {
    anyhow::ensure!(!csrs.is_empty(), "no CSRs");
    let serve = serve().await?;
    // Request bodies are built before the window.
    let bodies: Vec<Bytes> = csrs
        .iter()
        .map(|der| {
            let pem = pem::encode(&pem::Pem::new("CERTIFICATE REQUEST", der.clone()));
            Bytes::from(serde_json::json!({ "certificate_request": pem }).to_string())
        })
        .collect();
    let port = serve.port;
    let mut senders = Vec::with_capacity(concurrency);
    for _ in 0..concurrency {
        let stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
        let (sender, connection) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(connection);
        senders.push(sender);
    }
    // Warm-up: one request per connection.
    for (i, sender) in senders.iter_mut().enumerate() {
        sign(sender, port, bodies[i % bodies.len()].clone()).await?;
    }
    let pid = serve.process.id().context("cfssl serve is not running")?;
    let cpu_before = stats::cpu_seconds(pid)?;
    let start = Instant::now();
    let deadline = start + window;
    let loops = senders.into_iter().enumerate().map(|(c, mut sender)| {
        let bodies = &bodies;
        async move {
            let mut done = 0;
            while Instant::now() < deadline {
                sign(
                    &mut sender,
                    port,
                    bodies[(c + done * concurrency) % bodies.len()].clone(),
                )
                .await?;
                done += 1;
            }
            anyhow::Ok(done)
        }
    });
    let done: usize = futures::future::try_join_all(loops)
        .await?
        .into_iter()
        .sum();
    let wall = start.elapsed().as_secs_f64();
    let cpu = stats::cpu_seconds(pid)? - cpu_before;
    Ok(CfsslRate {
        per_second: done as f64 / wall,
        cores_used: cpu / wall,
    })
}

async fn sign(
    sender: &mut hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    port: u16,
    body: Bytes,
) -> anyhow::Result<()> {
    sender.ready().await?;
    let request = http::Request::post("/api/v1/cfssl/sign")
        .header(http::header::HOST, format!("127.0.0.1:{port}"))
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(Full::new(body))?;
    let response = sender.send_request(request).await?;
    let status = response.status();
    let body = response.into_body().collect().await?.to_bytes();
    anyhow::ensure!(
        status.is_success() && body.windows(14).any(|w| w == b"\"success\":true"),
        "cfssl sign failed ({status}): {}",
        String::from_utf8_lossy(&body)
    );
    Ok(())
}
