//! A private `redis-server` for the tests that make Redis fail: started on
//! a free local port without persistence, so that it can be hung
//! ([`PrivateRedis::pause`], SIGSTOP), killed ([`PrivateRedis::kill`],
//! SIGKILL) and restarted empty ([`PrivateRedis::restart`]) without
//! touching the shared Redis other tests use. Dropping it resumes it (a
//! stopped process would keep its port) and kills it.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How long a starting server has to answer `PING`.
const START_LIMIT: Duration = Duration::from_secs(10);
/// Ports tried when another process takes the free one first.
const START_ATTEMPTS: usize = 5;

#[derive(Debug)]
pub(crate) struct PrivateRedis {
    port: u16,
    child: Option<Child>,
    paused: bool,
}

impl PrivateRedis {
    /// A server on a free port, answering `PING`.
    pub(crate) async fn start() -> Self {
        for _ in 0..START_ATTEMPTS {
            let mut redis = Self {
                port: free_port(),
                child: None,
                paused: false,
            };
            if redis.spawn().await.is_some() {
                return redis;
            }
        }
        panic!("no private redis-server started in {START_ATTEMPTS} attempts");
    }

    /// `redis://127.0.0.1:{port}`.
    pub(crate) fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Stops the server (SIGSTOP): connections stay open and new ones are
    /// accepted by the kernel, but nothing is answered (a hung Redis).
    pub(crate) fn pause(&mut self) {
        assert!(
            self.signal("-STOP"),
            "the private redis-server was not stopped"
        );
        self.paused = true;
    }

    /// Lets a paused server go on (SIGCONT).
    pub(crate) fn resume(&mut self) {
        if self.paused {
            assert!(
                self.signal("-CONT"),
                "the private redis-server was not resumed"
            );
            self.paused = false;
        }
    }

    /// Kills the server (SIGKILL) and waits for it: its connections are
    /// reset and its data is gone.
    pub(crate) fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.paused = false;
    }

    /// Kills the server (if it runs) and starts an empty one on the same
    /// port; returns the instant it first answered `PING`.
    pub(crate) async fn restart(&mut self) -> Instant {
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
    pub(crate) async fn answering(&self) -> Instant {
        let deadline = Instant::now() + START_LIMIT;
        loop {
            if let Some(at) = ping(self.port).await {
                return at;
            }
            assert!(
                Instant::now() < deadline,
                "the private redis-server on port {} did not answer PING within {START_LIMIT:?}",
                self.port
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// A raw connection of our own, to look at and change what the server
    /// holds as any other client would.
    pub(crate) async fn raw(&self) -> redis::aio::MultiplexedConnection {
        redis::Client::open(self.url())
            .expect("the private Redis URL parses")
            .get_multiplexed_async_connection()
            .await
            .expect("the private redis-server accepts connections")
    }

    /// Starts `redis-server` on `self.port`; returns when it answered
    /// `PING`, or `None` if it exited first (the port was taken).
    async fn spawn(&mut self) -> Option<Instant> {
        let mut child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server is installed (Debian package redis-server)");
        let deadline = Instant::now() + START_LIMIT;
        loop {
            if let Some(at) = ping(self.port).await {
                self.child = Some(child);
                self.paused = false;
                return Some(at);
            }
            if child.try_wait().ok().flatten().is_some() {
                return None;
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
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
        if self.paused {
            self.signal("-CONT");
        }
        self.kill();
    }
}

/// A port nothing listens on right now.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a local port can be bound")
        .port()
}

/// The instant `PING` on a new connection to `port` was answered `PONG`,
/// or `None` if it was not within 200 ms.
async fn ping(port: u16) -> Option<Instant> {
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
