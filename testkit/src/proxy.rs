//! A TCP proxy a test can cut and restore: put between one binary and a shared service (the
//! kube-apiserver), it takes the service away from that binary alone, while the other tests
//! that share the service carry on. Cut, it closes every connection it carries and accepts new
//! ones only to close them at once, as a service that went away does.

use std::io;
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

/// A running proxy on `127.0.0.1:port`. Its threads live until the test process ends.
#[derive(Debug)]
pub struct CuttableProxy {
    pub port: u16,
    shared: Arc<Shared>,
}

#[derive(Debug, Default)]
struct Shared {
    cut: AtomicBool,
    /// Both ends of every connection carried now, to close them on a cut.
    live: Mutex<Vec<TcpStream>>,
}

impl CuttableProxy {
    /// Forwards `127.0.0.1:<port>` to `upstream`.
    pub fn start(upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the proxy");
        let port = listener.local_addr().expect("proxy address").port();
        let shared = Arc::new(Shared::default());
        let s = shared.clone();
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                if s.cut.load(Ordering::SeqCst) {
                    continue; // dropped: closed at once
                }
                let Ok(server) = TcpStream::connect(upstream) else {
                    continue;
                };
                if let Err(e) = carry(&s, client, server) {
                    eprintln!("proxy: {e}");
                }
            }
        });
        Self { port, shared }
    }

    /// Closes every carried connection and refuses new ones until [`Self::restore`].
    pub fn cut(&self) {
        self.shared.cut.store(true, Ordering::SeqCst);
        let live = std::mem::take(
            &mut *self
                .shared
                .live
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
        );
        for stream in live {
            let _ = stream.shutdown(Shutdown::Both);
        }
    }

    /// Carries new connections again.
    pub fn restore(&self) {
        self.shared.cut.store(false, Ordering::SeqCst);
    }
}

/// Copies both ways on two threads, and records both ends for [`CuttableProxy::cut`].
fn carry(shared: &Shared, client: TcpStream, server: TcpStream) -> io::Result<()> {
    {
        let mut live = shared.live.lock().unwrap_or_else(PoisonError::into_inner);
        live.push(client.try_clone()?);
        live.push(server.try_clone()?);
    }
    for (mut from, mut to) in [(client.try_clone()?, server.try_clone()?), (server, client)] {
        std::thread::spawn(move || {
            let _ = io::copy(&mut from, &mut to);
            let _ = to.shutdown(Shutdown::Write);
        });
    }
    Ok(())
}
