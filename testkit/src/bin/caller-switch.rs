//! A hostile workload for the caller-binding tests (`tests/tests/caller_binding.rs`): it opens
//! a Workload API connection, hands it to a child, then either execs another program (a
//! setuid one, say) or exits so that its PID can go to another process, while the child goes
//! on calling over the inherited connection, as SPIRE's peertracker tests do.
//!
//! ```text
//! caller-switch parent <socket> <fifo> exit
//! caller-switch parent <socket> <fifo> exec <program> [args...]
//! ```
//! The parent connects, starts `caller-switch child <fifo>` with the connection as its stdin,
//! and then exits at once (`exit`) or, after reading a line from its own stdin, execs
//! `program` with that stdin and no output (`exec`: `passwd` then waits for a password that
//! never comes). The child reads commands from `fifo`, one per line, and prints one JSON
//! line per command on stdout:
//! - `fetch`: one FetchX509SVID call, `{"ids": [...]}` or `{"code": n, "message": "..."}`;
//! - `stream`: opens a FetchX509SVID stream and prints its first message the same way;
//! - `next`: the stream's next message, waiting up to 20 s (`{"timeout": true}` if none);
//! - `sds`, `sds-stream`, `sds-next`: the same over Envoy SDS (FetchSecrets, StreamSecrets for
//!   every resource), `{"ids": [...]}` holding the names of the resources served;
//! - `exit`.
//!
//! The connection reaches the child as its stdin because that is the one inherited descriptor
//! safe Rust can turn back into a socket.

use std::io::{BufRead, BufReader, Write};
use std::os::fd::AsFd;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use prost::Message as _;
use sigil_agent::workload_api::client::SecurityHeader;
use sigil_proto::envoy::extensions::transport_sockets::tls::v3::Secret;
use sigil_proto::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};
use sigil_proto::envoy::service::secret::v3::secret_discovery_service_client::SecretDiscoveryServiceClient;
use sigil_proto::workload::spiffe_workload_api_client::SpiffeWorkloadApiClient;
use sigil_proto::workload::{X509svidRequest, X509svidResponse};
use tonic::transport::Endpoint;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("parent") if args.len() >= 5 => parent(&args[2], &args[3], &args[4..]),
        Some("child") if args.len() == 3 => child(&args[2]),
        _ => {
            eprintln!("usage: caller-switch parent <socket> <fifo> exit|exec <program>...");
            std::process::exit(64);
        }
    }
}

fn parent(socket: &str, fifo: &str, then: &[String]) {
    let connection = std::os::unix::net::UnixStream::connect(socket).expect("connect");
    // Never waited for: the child outlives this process on purpose (it is the one left holding
    // the connection).
    #[allow(clippy::zombie_processes)]
    Command::new(std::env::current_exe().expect("own path"))
        .args(["child", fifo])
        .stdin(Stdio::from(std::os::fd::OwnedFd::from(connection)))
        .spawn()
        .expect("spawn child");
    match then.first().map(String::as_str) {
        Some("exit") => {}
        Some("exec") if then.len() >= 2 => {
            let mut line = String::new();
            std::io::stdin().read_line(&mut line).expect("read stdin");
            let err = Command::new(&then[1])
                .args(&then[2..])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .exec();
            panic!("exec {}: {err}", then[1]);
        }
        _ => panic!("exit or exec <program>"),
    }
}

type Client = SpiffeWorkloadApiClient<
    tonic::service::interceptor::InterceptedService<tonic::transport::Channel, SecurityHeader>,
>;

fn child(fifo: &str) {
    // Our stdin is the parent's connection.
    let fd = std::io::stdin()
        .as_fd()
        .try_clone_to_owned()
        .expect("dup stdin");
    let connection = std::os::unix::net::UnixStream::from(fd);
    connection.set_nonblocking(true).expect("nonblocking");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let commands = BufReader::new(std::fs::File::open(fifo).expect("open fifo"));
    rt.block_on(async move {
        let slot = Arc::new(Mutex::new(Some(connection)));
        let channel = Endpoint::from_static("http://localhost")
            .connect_with_connector(tower::service_fn(move |_| {
                let taken = slot.lock().unwrap().take();
                async move {
                    let stream =
                        taken.ok_or_else(|| std::io::Error::other("no second connection"))?;
                    Ok::<_, std::io::Error>(TokioIo::new(tokio::net::UnixStream::from_std(stream)?))
                }
            }))
            .await
            .expect("channel over the inherited connection");
        let mut sds = SecretDiscoveryServiceClient::new(channel.clone());
        let mut client: Client = SpiffeWorkloadApiClient::with_interceptor(channel, SecurityHeader);
        let mut stream = None;
        let mut sds_stream = None;
        // Held open: a StreamSecrets stream ends when its client closes the request side.
        let (sds_requests, sds_rx) = tokio::sync::mpsc::channel::<DiscoveryRequest>(1);
        let mut sds_rx = Some(sds_rx);
        for line in commands.lines() {
            let line = line.expect("read command");
            let result = match line.trim() {
                "fetch" => match client.fetch_x509svid(X509svidRequest::default()).await {
                    Ok(response) => first(response.into_inner()).await,
                    Err(status) => refused(&status),
                },
                "stream" => match client.fetch_x509svid(X509svidRequest::default()).await {
                    Ok(response) => {
                        let mut s = response.into_inner();
                        let first = next(&mut s).await;
                        stream = Some(s);
                        first
                    }
                    Err(status) => refused(&status),
                },
                "next" => match stream.as_mut() {
                    Some(s) => match tokio::time::timeout(Duration::from_secs(20), next(s)).await {
                        Ok(result) => result,
                        Err(_) => serde_json::json!({ "timeout": true }),
                    },
                    None => serde_json::json!({ "error": "no stream" }),
                },
                "sds" => match sds.fetch_secrets(DiscoveryRequest::default()).await {
                    Ok(response) => secret_names(&response.into_inner()),
                    Err(status) => refused(&status),
                },
                "sds-stream" => {
                    sds_requests
                        .send(DiscoveryRequest::default())
                        .await
                        .expect("queue the request");
                    let requests = tokio_stream::wrappers::ReceiverStream::new(
                        sds_rx.take().expect("one SDS stream"),
                    );
                    match sds.stream_secrets(requests).await {
                        Ok(response) => {
                            let mut s = response.into_inner();
                            let first = next_secrets(&mut s).await;
                            sds_stream = Some(s);
                            first
                        }
                        Err(status) => refused(&status),
                    }
                }
                "sds-next" => match sds_stream.as_mut() {
                    Some(s) => {
                        match tokio::time::timeout(Duration::from_secs(20), next_secrets(s)).await {
                            Ok(result) => result,
                            Err(_) => serde_json::json!({ "timeout": true }),
                        }
                    }
                    None => serde_json::json!({ "error": "no SDS stream" }),
                },
                "exit" => break,
                other => serde_json::json!({ "error": format!("unknown command {other:?}") }),
            };
            let mut out = std::io::stdout().lock();
            writeln!(out, "{result}").expect("write result");
            out.flush().expect("flush");
        }
    });
}

async fn first(mut stream: tonic::Streaming<X509svidResponse>) -> serde_json::Value {
    next(&mut stream).await
}

async fn next(stream: &mut tonic::Streaming<X509svidResponse>) -> serde_json::Value {
    match stream.message().await {
        Ok(Some(message)) => {
            let ids: Vec<&str> = message.svids.iter().map(|s| s.spiffe_id.as_str()).collect();
            serde_json::json!({ "ids": ids })
        }
        Ok(None) => serde_json::json!({ "ended": true }),
        Err(status) => refused(&status),
    }
}

async fn next_secrets(stream: &mut tonic::Streaming<DiscoveryResponse>) -> serde_json::Value {
    match stream.message().await {
        Ok(Some(response)) => secret_names(&response),
        Ok(None) => serde_json::json!({ "ended": true }),
        Err(status) => refused(&status),
    }
}

fn secret_names(response: &DiscoveryResponse) -> serde_json::Value {
    let names: Vec<String> = response
        .resources
        .iter()
        .map(|any| Secret::decode(any.value.as_slice()).map_or_else(|e| e.to_string(), |s| s.name))
        .collect();
    serde_json::json!({ "ids": names })
}

fn refused(status: &tonic::Status) -> serde_json::Value {
    serde_json::json!({ "code": status.code() as i32, "message": status.message() })
}
