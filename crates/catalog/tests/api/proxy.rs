//! A TCP proxy the tests put between the app and PostgreSQL, to make the
//! store fail or slow down on demand without touching the database itself:
//! [`Proxy::cut`] drops every open connection and refuses new ones (the
//! store is "down"), [`Proxy::hang`] keeps every connection open but
//! forwards nothing, and accepts new ones without forwarding either (the
//! store is "hung"), [`Proxy::restore`] forwards again, [`Proxy::delay`]
//! holds back every chunk the server sends (a "slow" store).
//!
//! The delay is read per chunk, so it also applies to the connections the
//! app's pool opened before it was set. Every task belongs to the proxy:
//! dropping it closes the listener and every connection.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};

/// Size of one chunk read from the server.
const CHUNK: usize = 16 * 1024;

/// The forwarded connections, and whether new ones are refused.
#[derive(Debug, Default)]
struct Connections {
    cut: bool,
    tasks: JoinSet<()>,
}

#[derive(Debug)]
pub(crate) struct Proxy {
    addr: SocketAddr,
    connections: Arc<Mutex<Connections>>,
    /// Latency added to each chunk from the server, in microseconds.
    delay_micros: Arc<AtomicU64>,
    /// `true` while nothing is forwarded.
    hung: watch::Sender<bool>,
    accept: JoinHandle<()>,
}

impl Proxy {
    /// A proxy on an ephemeral local port forwarding to `target`.
    pub(crate) async fn start(target: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let connections = Arc::new(Mutex::new(Connections::default()));
        let delay_micros = Arc::new(AtomicU64::new(0));
        let hung = watch::Sender::new(false);
        let accept = tokio::spawn(accept_loop(
            listener,
            target,
            Arc::clone(&connections),
            Forwarding {
                delay_micros: Arc::clone(&delay_micros),
                hung: hung.subscribe(),
            },
        ));
        Self {
            addr,
            connections,
            delay_micros,
            hung,
            accept,
        }
    }

    /// The address clients connect to instead of the target.
    pub(crate) fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Drops every open connection; new ones are closed as soon as accepted.
    pub(crate) fn cut(&self) {
        let mut connections = self.connections.lock().unwrap();
        connections.cut = true;
        connections.tasks.abort_all();
    }

    /// Stops forwarding: open connections stall, new ones are accepted and
    /// stall too, until [`restore`](Self::restore).
    pub(crate) fn hang(&self) {
        self.hung.send_replace(true);
    }

    /// Forwards new connections again, and resumes stalled ones.
    pub(crate) fn restore(&self) {
        self.connections.lock().unwrap().cut = false;
        self.hung.send_replace(false);
    }

    /// Holds every chunk from the server back by `delay` before passing it
    /// on; `Duration::ZERO` removes the latency.
    pub(crate) fn delay(&self, delay: Duration) {
        let micros = u64::try_from(delay.as_micros()).unwrap();
        self.delay_micros.store(micros, Ordering::Relaxed);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.connections.lock().unwrap().tasks.abort_all();
    }
}

/// What every forwarded connection reads at each chunk.
#[derive(Debug, Clone)]
struct Forwarding {
    delay_micros: Arc<AtomicU64>,
    hung: watch::Receiver<bool>,
}

impl Forwarding {
    /// Waits while the proxy is hung.
    async fn gate(&mut self) {
        let _ = self.hung.wait_for(|hung| !hung).await;
    }
}

async fn accept_loop(
    listener: TcpListener,
    target: SocketAddr,
    connections: Arc<Mutex<Connections>>,
    forwarding: Forwarding,
) {
    loop {
        let Ok((client, _)) = listener.accept().await else {
            continue;
        };
        let mut guard = connections.lock().unwrap();
        // Forget the tasks of connections that ended.
        while guard.tasks.try_join_next().is_some() {}
        if guard.cut {
            drop(client);
            continue;
        }
        guard
            .tasks
            .spawn(forward(client, target, forwarding.clone()));
    }
}

/// Copies bytes both ways until either side closes; the server's bytes are
/// delayed as [`Proxy::delay`] says at the time each chunk arrives, and no
/// byte passes while the proxy is hung.
async fn forward(client: TcpStream, target: SocketAddr, mut forwarding: Forwarding) {
    forwarding.gate().await;
    let Ok(server) = TcpStream::connect(target).await else {
        return;
    };
    let (mut client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    let mut up = forwarding.clone();
    let upstream = async move {
        let mut buffer = vec![0; CHUNK];
        loop {
            let read = client_read.read(&mut buffer).await?;
            if read == 0 {
                return Ok::<_, std::io::Error>(());
            }
            up.gate().await;
            server_write.write_all(&buffer[..read]).await?;
        }
    };
    let downstream = async {
        let mut buffer = vec![0; CHUNK];
        loop {
            let read = server_read.read(&mut buffer).await?;
            if read == 0 {
                return Ok::<_, std::io::Error>(());
            }
            let delay = Duration::from_micros(forwarding.delay_micros.load(Ordering::Relaxed));
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            forwarding.gate().await;
            client_write.write_all(&buffer[..read]).await?;
        }
    };
    // Either direction ending (or failing) ends the connection: dropping
    // both halves closes both sockets.
    tokio::select! {
        _ = upstream => {}
        _ = downstream => {}
    }
}

#[tokio::test]
async fn forwards_then_cuts_then_forwards_again() {
    let echo = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let target = echo.local_addr().unwrap();
    let _server = tokio_util::task::AbortOnDropHandle::new(tokio::spawn(async move {
        loop {
            let (mut socket, _) = echo.accept().await.unwrap();
            tokio::spawn(async move {
                let (mut read, mut write) = socket.split();
                let _ = tokio::io::copy(&mut read, &mut write).await;
            });
        }
    }));
    let proxy = Proxy::start(target).await;
    let round_trip = |mut stream: TcpStream| async move {
        stream.write_all(b"ping").await?;
        let mut answer = [0; 4];
        stream.read_exact(&mut answer).await?;
        Ok::<_, std::io::Error>((answer, stream))
    };

    let (answer, open) = round_trip(TcpStream::connect(proxy.addr()).await.unwrap())
        .await
        .unwrap();
    proxy.cut();
    let on_cut = round_trip(open).await;
    let while_cut = round_trip(TcpStream::connect(proxy.addr()).await.unwrap()).await;
    proxy.restore();
    let (restored, _) = round_trip(TcpStream::connect(proxy.addr()).await.unwrap())
        .await
        .unwrap();

    assert_eq!(&answer, b"ping");
    assert!(on_cut.is_err(), "an open connection survived the cut");
    assert!(
        while_cut.is_err(),
        "a new connection was forwarded while cut"
    );
    assert_eq!(&restored, b"ping");
}
