//! Loopback networking for tests: ports that are free to bind, and a minimal HTTP/1.1 GET for
//! health probes and `/metrics`.

use std::io;
use std::net::TcpListener;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

/// A TCP port that was free a moment ago on 127.0.0.1, outside the range outgoing connections
/// take theirs from (see [`loopback_port`]).
///
/// # Panics
/// If no port is free.
pub fn free_port() -> u16 {
    loopback_port().expect("free port")
}

/// A TCP port on 127.0.0.1 that is free now, for a test server to bind a moment later.
///
/// A port from `bind(0)` comes from the kernel's ephemeral range, which outgoing connections
/// draw from too: one of them (this test's or another's) can take it before the server binds
/// it. So the port is picked below that range when the range leaves room, starting at an
/// offset of this process's own, so test processes running side by side rarely try the same.
pub fn loopback_port() -> io::Result<u16> {
    const LOW: u32 = 10_000;
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u32>().ok())
        .unwrap_or(0);
    if ephemeral_low < LOW + 1_000 {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        return Ok(listener.local_addr()?.port());
    }
    let span = ephemeral_low.min(u32::from(u16::MAX)) - LOW;
    let start = std::process::id().wrapping_mul(2_654_435_761) % span;
    for _ in 0..span {
        let port = LOW + (start + NEXT.fetch_add(1, Ordering::Relaxed)) % span;
        let port = u16::try_from(port).expect("below the ephemeral range");
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
    Err(io::Error::new(
        io::ErrorKind::AddrInUse,
        "no free loopback port below the ephemeral range",
    ))
}

/// A minimal HTTP/1.1 GET over loopback, returning (status, body). Enough for health probes
/// and `/metrics`.
pub fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    http_request(port, "GET", path, &[])
}

/// A minimal HTTP/1.1 request over loopback with extra `headers`, returning (status, body).
pub fn http_request(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> Option<(u16, String)> {
    http_exchange(port, method, path, headers).map(|(status, _, body)| (status, body))
}

/// [`http_request`], returning (status, response head, body).
pub fn http_exchange(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> Option<(u16, String, String)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    let extra: String = headers
        .iter()
        .map(|(k, v)| format!("{k}: {v}\r\n"))
        .collect();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n{extra}Content-Length: 0\r\n\r\n"
    )
    .ok()?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).ok()?;
    let status = buf.split_whitespace().nth(1)?.parse().ok()?;
    let (head, body) = buf.split_once("\r\n\r\n").unwrap_or((&buf, ""));
    Some((status, head.to_owned(), body.to_owned()))
}

/// The sum of the samples of counter `name` whose labels include `label` (e.g.
/// `result="ok"`) in a Prometheus text exposition.
pub fn counter_sum(metrics: &str, name: &str, label: &str) -> u64 {
    metrics
        .lines()
        .filter(|l| l.starts_with(name) && l.contains(label))
        .filter_map(|l| l.split_whitespace().last()?.parse::<f64>().ok())
        .map(|v| v as u64)
        .sum()
}

/// Serves plain HTTP/1.1 on 127.0.0.1 from a thread that lives until the test process ends:
/// each request (its body read and dropped) gets `answer(request line)`, a status such as
/// `200 OK` and a JSON body, on a connection then closed. Returns the port. The stand-ins for
/// the kubelet and the API server are built on it.
pub(crate) fn serve_json(
    what: &str,
    answer: impl Fn(&str) -> (&'static str, String) + Send + 'static,
) -> u16 {
    use std::io::{BufRead, BufReader, Read, Write};

    let listener =
        TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("bind the {what}: {e}"));
    let port = listener.local_addr().expect("local addr").port();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().expect("clone stream"));
            let mut request_line = String::new();
            if reader.read_line(&mut request_line).is_err() {
                continue;
            }
            let mut length = 0usize;
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                if let Some((k, v)) = line.split_once(':')
                    && k.eq_ignore_ascii_case("content-length")
                {
                    length = v.trim().parse().unwrap_or(0);
                }
            }
            let mut body = vec![0; length];
            let _ = reader.read_exact(&mut body);
            let (status, body) = answer(&request_line);
            let _ = write!(
                stream,
                "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    port
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counter_sum_counts_only_the_matching_label() {
        let metrics = "# HELP x\nsigil_agent_x509_svids_minted_total{result=\"ok\"} 1000\n\
                       sigil_agent_x509_svids_minted_total{result=\"error\"} 3\n";
        let name = "sigil_agent_x509_svids_minted_total";
        assert_eq!(counter_sum(metrics, name, "\"ok\""), 1000);
        assert_eq!(counter_sum("", name, "\"ok\""), 0);
    }
}
