//! A private `redis-server` for the tests that make Redis fail or read
//! server-wide figures: started on a free local port without persistence,
//! so that it can be hung ([`PrivateRedis::pause`], SIGSTOP), killed
//! ([`PrivateRedis::kill`], SIGKILL) and restarted empty
//! ([`PrivateRedis::restart`]) without touching the shared Redis other
//! tests use. Dropping it resumes it (a stopped process would keep its
//! port) and kills it.

use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use redis::aio::MultiplexedConnection;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::poll::{eventually, poll_until};

/// How to get `redis-server` and `redis-cli` when they are missing.
pub(crate) const INSTALL_REDIS: &str = "apt-get install -y redis-server";
/// How long a starting server has to answer `PING`.
pub(crate) const START_LIMIT: Duration = Duration::from_secs(10);
/// Ports tried when another process takes the free one first.
const START_ATTEMPTS: usize = 5;

/// A `redis-server` process of the test's own; see the module doc.
#[derive(Debug)]
pub struct PrivateRedis {
    port: u16,
    child: Option<Child>,
    /// Set while the process is stopped (SIGSTOP), so that dropping it
    /// lets it go on before killing it.
    paused: AtomicBool,
}

impl PrivateRedis {
    /// A server on a free port, answering `PING`.
    ///
    /// # Panics
    /// When `redis-server` cannot be run (it says how to install it), or no
    /// server answered in five attempts.
    pub async fn start() -> Self {
        for _ in 0..START_ATTEMPTS {
            if let Some(redis) = Self::try_start_on(free_port()).await {
                return redis;
            }
        }
        panic!("no private redis-server started in {START_ATTEMPTS} attempts");
    }

    /// A server on `port` (one a client was pointed at before it ran),
    /// answering `PING`.
    ///
    /// # Panics
    /// When `redis-server` cannot be run, or did not answer on `port`.
    pub async fn start_on(port: u16) -> Self {
        Self::try_start_on(port)
            .await
            .unwrap_or_else(|| panic!("the private redis-server did not start on port {port}"))
    }

    async fn try_start_on(port: u16) -> Option<Self> {
        let mut redis = Self {
            port,
            child: None,
            paused: AtomicBool::new(false),
        };
        redis.spawn().await?;
        Some(redis)
    }

    /// The port the server listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `redis://127.0.0.1:{port}`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Stops the server (SIGSTOP): connections stay open and new ones are
    /// accepted by the kernel, but nothing is answered (a hung Redis).
    ///
    /// # Panics
    /// When the server is not running or the signal fails.
    pub fn pause(&self) {
        assert!(
            self.signal("-STOP"),
            "the private redis-server was not stopped"
        );
        self.paused.store(true, Ordering::SeqCst);
    }

    /// Lets a paused server go on (SIGCONT); nothing if it is not paused.
    ///
    /// # Panics
    /// When the signal fails.
    pub fn resume(&self) {
        if self.paused.load(Ordering::SeqCst) {
            assert!(
                self.signal("-CONT"),
                "the private redis-server was not resumed"
            );
            self.paused.store(false, Ordering::SeqCst);
        }
    }

    /// Kills the server (SIGKILL) and waits for it: its connections are
    /// reset and its data is gone.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.paused.store(false, Ordering::SeqCst);
    }

    /// Kills the server (if it runs) and starts an empty one on the same
    /// port; returns the instant it first answered `PING`.
    ///
    /// # Panics
    /// When the new server did not answer on the port.
    pub async fn restart(&mut self) -> Instant {
        self.kill();
        self.spawn().await.unwrap_or_else(|| {
            panic!(
                "the private redis-server did not start again on port {}",
                self.port
            )
        })
    }

    /// Waits until the server answers `PING` (for at most 10 s) and returns
    /// the instant it did.
    ///
    /// # Panics
    /// When it did not answer within 10 s.
    pub async fn answering(&self) -> Instant {
        poll_until(START_LIMIT, async || ping(self.port).await, Option::is_some)
            .await
            .ok()
            .flatten()
            .unwrap_or_else(|| {
                panic!(
                    "the private redis-server on port {} did not answer PING within {START_LIMIT:?}",
                    self.port
                )
            })
    }

    /// A raw connection of our own, to look at and change what the server
    /// holds as any other client would.
    ///
    /// # Panics
    /// When the server does not accept the connection.
    pub async fn raw(&self) -> MultiplexedConnection {
        redis::Client::open(self.url())
            .expect("the private Redis URL parses")
            .get_multiplexed_async_connection()
            .await
            .expect("the private redis-server accepts connections")
    }

    /// Starts `redis-server` on `self.port`; returns when it answered
    /// `PING`, or `None` if it exited first (the port was taken) or did not
    /// answer within [`START_LIMIT`].
    async fn spawn(&mut self) -> Option<Instant> {
        let mut child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("could not run redis-server ({e}); {INSTALL_REDIS}"));
        let mut answered = None;
        let port = self.port;
        // Until it answers or exits (its port was taken): `answered` tells
        // which, or that it did neither in time.
        let _ = eventually(START_LIMIT, async || {
            answered = ping(port).await;
            answered.is_some() || child.try_wait().ok().flatten().is_some()
        })
        .await;
        if answered.is_some() {
            self.child = Some(child);
            self.paused.store(false, Ordering::SeqCst);
        } else {
            let _ = child.kill();
            let _ = child.wait();
        }
        answered
    }

    /// Sends `signal` (`-STOP`, `-CONT`) to the server; whether it was sent.
    fn signal(&self, signal: &str) -> bool {
        self.child.as_ref().is_some_and(|child| {
            Command::new("kill")
                .args([signal, &child.id().to_string()])
                .status()
                .is_ok_and(|status| status.success())
        })
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        // Not `resume`, which panics when the signal fails.
        if self.paused.load(Ordering::SeqCst) {
            self.signal("-CONT");
        }
        self.kill();
    }
}

/// A local TCP port nothing listens on right now.
///
/// # Panics
/// When no local port can be bound.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a local port can be bound")
        .port()
}

/// The instant `PING` on a new connection to `port` was answered `PONG`,
/// or `None` if it was not within 200 ms.
pub(crate) async fn ping(port: u16) -> Option<Instant> {
    let exchange = async {
        let mut stream = TcpStream::connect(("127.0.0.1", port)).await.ok()?;
        stream.write_all(b"PING\r\n").await.ok()?;
        let mut reply = [0u8; 7];
        stream.read_exact(&mut reply).await.ok()?;
        (&reply == b"+PONG\r\n").then(Instant::now)
    };
    tokio::time::timeout(Duration::from_millis(200), exchange)
        .await
        .ok()
        .flatten()
}
