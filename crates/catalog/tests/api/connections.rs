//! The HTTP connection contract (SPEC §8 "Connections"): rejected writes
//! keep their keep-alive connection, headers must arrive in bounded time,
//! idle keep-alive connections are closed, open connections are bounded,
//! and a slowloris does not slow a normal client.
//!
//! These talk raw HTTP/1.1 over TCP: a client library would hide exactly
//! what is checked here (when the server closes, and whether it said so).

use std::time::{Duration, Instant};

use catalog::config::ServeConfig;
use catalog::http::MAX_BODY_BYTES;
use reqwest::StatusCode;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::task::JoinSet;

use crate::helpers::{Backend, TOKEN, TestApp, metric};

/// A response as read off the wire.
#[derive(Debug)]
struct Raw {
    status: u16,
    /// The server said `Connection: close`.
    closing: bool,
}

/// One keep-alive HTTP/1.1 connection.
struct Client {
    stream: BufReader<TcpStream>,
}

impl Client {
    async fn connect(app: &TestApp) -> Self {
        Self {
            stream: BufReader::new(TcpStream::connect(app.addr).await.unwrap()),
        }
    }

    /// Sends a request, its body after `pause` (so that it arrives after
    /// the head, as on a loaded network), and reads the response; an error
    /// says how the connection failed instead.
    async fn send(&mut self, head: &str, body: &[u8], pause: Duration) -> Result<Raw, String> {
        let head = format!(
            "{head}\r\nHost: test\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        let stream = self.stream.get_mut();
        stream
            .write_all(head.as_bytes())
            .await
            .map_err(|e| format!("writing the head: {e}"))?;
        if !pause.is_zero() {
            tokio::time::sleep(pause).await;
        }
        stream
            .write_all(body)
            .await
            .map_err(|e| format!("writing the body: {e}"))?;
        self.read_response().await
    }

    async fn read_response(&mut self) -> Result<Raw, String> {
        let mut line = String::new();
        let mut status = None;
        let mut length = 0usize;
        let mut closing = false;
        loop {
            line.clear();
            let read = self
                .stream
                .read_line(&mut line)
                .await
                .map_err(|e| format!("reading the response: {e}"))?;
            if read == 0 {
                return Err("the server closed the connection without a response".into());
            }
            let text = line.trim_end();
            if text.is_empty() {
                break;
            }
            match status {
                None => status = text.split(' ').nth(1).and_then(|s| s.parse().ok()),
                Some(_) => {
                    let (name, value) = text.split_once(':').unwrap_or((text, ""));
                    let value = value.trim();
                    if name.eq_ignore_ascii_case("content-length") {
                        length = value.parse().unwrap();
                    } else if name.eq_ignore_ascii_case("connection") {
                        closing = value.eq_ignore_ascii_case("close");
                    }
                }
            }
        }
        let mut body = vec![0; length];
        self.stream
            .read_exact(&mut body)
            .await
            .map_err(|e| format!("reading the body: {e}"))?;
        Ok(Raw {
            status: status.ok_or("no status line")?,
            closing,
        })
    }

    /// Whether the server has closed the connection (an EOF or a reset
    /// within `within`); `false` if it is still open.
    async fn closed_within(&mut self, within: Duration) -> bool {
        let mut byte = [0u8; 1];
        match tokio::time::timeout(within, self.stream.read(&mut byte)).await {
            Ok(Ok(0) | Err(_)) => true,
            Ok(Ok(_)) => panic!("unexpected bytes from the server"),
            Err(_) => false,
        }
    }
}

async fn spawn(configure: impl FnOnce(&mut ServeConfig)) -> TestApp {
    TestApp::spawn_with(Backend::Sqlite, configure).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejected_writes_keep_their_keep_alive_connections() {
    const CLIENTS: usize = 4;
    const REQUESTS: usize = 500;
    let app = spawn(|_| {}).await;
    let id = app.create_product("Kept", "tools", 1.0).await["id"].clone();
    let product = r#"{"name":"n","price":1,"category":"c"}"#.to_owned();
    let oversized = format!(
        r#"{{"name":"n","price":1,"category":"c","description":"{}"}}"#,
        "d".repeat(MAX_BODY_BYTES)
    );
    let auth = format!("Authorization: Bearer {TOKEN}");
    // (request line and headers, body, expected status)
    let cases: Vec<(String, String, u16)> = vec![
        (
            "POST /products HTTP/1.1\r\nContent-Type: application/json".into(),
            product.clone(),
            401,
        ),
        (
            format!("PUT /products/{id} HTTP/1.1\r\nContent-Type: application/json"),
            product.clone(),
            401,
        ),
        (
            format!("PATCH /products/{id} HTTP/1.1\r\nContent-Type: application/json"),
            r#"{"price":2}"#.into(),
            401,
        ),
        (
            format!("POST /products HTTP/1.1\r\nContent-Type: application/json\r\n{auth}"),
            oversized,
            413,
        ),
        (
            format!("POST /products HTTP/1.1\r\nContent-Type: text/plain\r\n{auth}"),
            product,
            415,
        ),
        (
            format!("PATCH /products/{id} HTTP/1.1\r\nContent-Type: application/json\r\n{auth}"),
            r#"{"price":-1}"#.into(),
            422,
        ),
    ];

    let mut clients = JoinSet::new();
    for client in 0..CLIENTS {
        let cases = cases.clone();
        let mut connection = Client::connect(&app).await;
        clients.spawn(async move {
            let mut failures = Vec::new();
            for i in 0..REQUESTS {
                let (head, body, expected) = &cases[(i + client) % cases.len()];
                // Every tenth body arrives after its head.
                let pause = if i % 10 == 0 {
                    Duration::from_millis(20)
                } else {
                    Duration::ZERO
                };
                match connection.send(head, body.as_bytes(), pause).await {
                    Ok(raw) if raw.status == *expected && !raw.closing => {}
                    Ok(raw) => failures.push(format!("request {i}: {raw:?}, expected {expected}")),
                    Err(error) => {
                        failures.push(format!("request {i} ({expected}): {error}"));
                        return failures;
                    }
                }
            }
            failures
        });
    }
    let failures: Vec<String> = clients.join_all().await.into_iter().flatten().collect();
    assert!(
        failures.is_empty(),
        "{} failures: {failures:#?}",
        failures.len()
    );
    let body: serde_json::Value = app.get_json(&format!("/products/{id}")).await;
    assert_eq!(body["version"], 1, "no rejected write changed anything");
}

#[tokio::test]
async fn a_silent_connection_is_closed_after_the_header_timeout() {
    let app = spawn(|config| config.http.http_header_timeout = Duration::from_secs(1)).await;
    let mut silent = Client::connect(&app).await;
    let opened = Instant::now();

    assert!(
        !silent.closed_within(Duration::from_millis(500)).await,
        "closed too early"
    );
    assert!(
        silent.closed_within(Duration::from_secs(5)).await,
        "never closed"
    );
    assert!(opened.elapsed() >= Duration::from_secs(1));
    assert_eq!(
        metric(&app, "http_connection_timeouts_total{kind=\"header\"}").await,
        1
    );
}

#[tokio::test]
async fn a_trickled_head_is_cut_at_the_header_timeout() {
    let app = spawn(|config| config.http.http_header_timeout = Duration::from_secs(1)).await;
    let mut slow = Client::connect(&app).await;
    let opened = Instant::now();

    slow.stream
        .get_mut()
        .write_all(b"GET /health HTTP/1.1\r\n")
        .await
        .unwrap();
    let mut cut = false;
    for line in 0..20 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let header = format!("X-Trickle-{line}: x\r\n");
        if slow
            .stream
            .get_mut()
            .write_all(header.as_bytes())
            .await
            .is_err()
            || slow.closed_within(Duration::from_millis(1)).await
        {
            cut = true;
            break;
        }
    }

    assert!(cut, "a head trickled for 6 s was never cut");
    let elapsed = opened.elapsed();
    assert!(
        (Duration::from_secs(1)..Duration::from_secs(4)).contains(&elapsed),
        "cut after {elapsed:?}"
    );
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed_after_the_idle_timeout_not_the_header_one() {
    let app = spawn(|config| {
        config.http.http_header_timeout = Duration::from_secs(1);
        config.http.http_idle_timeout = Duration::from_secs(3);
    })
    .await;
    let mut client = Client::connect(&app).await;
    let get = "GET /health HTTP/1.1";

    assert_eq!(
        client.send(get, b"", Duration::ZERO).await.unwrap().status,
        200
    );
    // Idle for longer than the header timeout: still open.
    assert!(!client.closed_within(Duration::from_millis(1_500)).await);
    assert_eq!(
        client.send(get, b"", Duration::ZERO).await.unwrap().status,
        200
    );
    let answered = Instant::now();

    assert!(
        client.closed_within(Duration::from_secs(8)).await,
        "never closed"
    );
    let idle = answered.elapsed();
    assert!(
        idle >= Duration::from_millis(2_900),
        "closed after {idle:?}"
    );
    assert_eq!(
        metric(&app, "http_connection_timeouts_total{kind=\"idle\"}").await,
        1
    );
}

#[tokio::test]
async fn connections_beyond_the_bound_wait_to_be_accepted() {
    let app = spawn(|config| {
        config.http.http_max_connections = 2;
        config.http.http_header_timeout = Duration::from_secs(60);
    })
    .await;
    let get = "GET /health HTTP/1.1";
    // Two kept-alive connections, each answered once: both hold a slot.
    let mut first = Client::connect(&app).await;
    let mut second = Client::connect(&app).await;
    for held in [&mut first, &mut second] {
        assert_eq!(
            held.send(get, b"", Duration::ZERO).await.unwrap().status,
            200
        );
    }

    let mut third = Client::connect(&app).await;
    let waiting = tokio::time::timeout(
        Duration::from_millis(500),
        third.send(get, b"", Duration::ZERO),
    )
    .await;
    assert!(
        waiting.is_err(),
        "a third connection was served: {waiting:?}"
    );

    drop(first.stream.get_mut().shutdown().await);
    drop(first);
    let served = tokio::time::timeout(Duration::from_secs(5), third.read_response()).await;
    assert_eq!(
        served.expect("served once a slot is free").unwrap().status,
        200
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slowloris_neither_slows_a_normal_client_nor_stays() {
    const SLOW: usize = 2_000;
    let app = spawn(|config| config.http.http_header_timeout = Duration::from_secs(3)).await;
    let mut slow = Vec::with_capacity(SLOW);
    for _ in 0..SLOW {
        let mut stream = TcpStream::connect(app.addr).await.unwrap();
        stream
            .write_all(b"GET /health HTTP/1.1\r\nX-Slow: 1\r\n")
            .await
            .unwrap();
        slow.push(stream);
    }

    let mut slowest = Duration::ZERO;
    for _ in 0..100 {
        let started = Instant::now();
        let response = app.get("/health").await;
        assert_eq!(response.status(), StatusCode::OK);
        slowest = slowest.max(started.elapsed());
    }
    assert!(
        slowest < Duration::from_secs(1),
        "a request took {slowest:?}"
    );

    tokio::time::sleep(Duration::from_secs(4)).await;
    let mut closed = 0;
    for stream in &mut slow {
        let mut byte = [0u8; 1];
        if matches!(
            tokio::time::timeout(Duration::from_millis(50), stream.read(&mut byte)).await,
            Ok(Ok(0) | Err(_))
        ) {
            closed += 1;
        }
    }
    assert_eq!(closed, SLOW, "slowloris connections left open");
}
