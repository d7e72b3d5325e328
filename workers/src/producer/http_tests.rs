//! The HTTP layer without PostgreSQL or Kafka: every request here is answered before a
//! handler needs the database (refused at admission, for its body, or as invalid), and
//! the database URL points at a closed port.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Notify;

use super::{router, AppState};
use crate::metrics::ProducerMetrics;
use crate::producer::body::{BodyBudget, BodyLimits};

/// Settings a test changes.
struct Settings {
    max_body_bytes: usize,
    body_memory_bytes: u64,
    body_memory_wait: Duration,
    read_timeout: Duration,
    max_concurrent_requests: usize,
    started: bool,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            max_body_bytes: 1 << 20,
            body_memory_bytes: 1 << 20,
            body_memory_wait: Duration::from_millis(200),
            read_timeout: Duration::from_secs(10),
            max_concurrent_requests: 64,
            started: true,
        }
    }
}

/// A producer's HTTP server on a free local port, its database unreachable.
struct Server {
    address: SocketAddr,
    state: AppState,
    _shutdown: tokio::sync::watch::Sender<bool>,
}

/// A database URL on which nothing listens.
const UNREACHABLE_DATABASE: &str = "postgres://outbox:secret@127.0.0.1:9/outbox";

impl Server {
    async fn start(settings: Settings) -> Server {
        let (shutdown_tx, shutdown) = crate::shutdown::channel();
        let pool = crate::db::pool(UNREACHABLE_DATABASE, 2).expect("pool");
        let wake = Arc::new(Notify::new());
        let kafka = crate::kafka::client_config("127.0.0.1:9", &Default::default())
            .create()
            .expect("kafka client");
        let started = crate::probes::Started::default();
        if settings.started {
            started.set();
        }
        let state = AppState {
            waker: super::super::waker::RelayWaker::start(wake.clone(), pool.clone(), shutdown),
            pool,
            topics: Arc::new(HashSet::from(["orders".to_string()])),
            wake,
            metrics: ProducerMetrics::default(),
            registry: Arc::new(prometheus_client::registry::Registry::default()),
            kafka,
            body_limits: BodyLimits {
                max_bytes: settings.max_body_bytes,
                read_timeout: settings.read_timeout,
            },
            bodies: BodyBudget::new(settings.body_memory_bytes, settings.body_memory_wait),
            limits: crate::message_size::TopicLimits::new(),
            started,
            max_batch_messages: 1000,
            in_progress: Arc::new(tokio::sync::Semaphore::new(
                settings.max_concurrent_requests,
            )),
            max_concurrent_requests: settings.max_concurrent_requests,
            backlog: crate::producer::backpressure::BacklogBound::new(0, 0),
            health: Arc::new(crate::probes::CachedCheck::default()),
            readiness: Arc::new(crate::probes::CachedReadiness::default()),
            single_ids: Arc::default(),
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let address = listener.local_addr().expect("address");
        let app = router(state.clone());
        tokio::spawn(crate::producer::connections::serve(
            crate::producer::connections::LimitedListener::new(listener, 64),
            app,
            Duration::from_secs(30),
            std::future::pending(),
        ));
        Server {
            address,
            state,
            _shutdown: shutdown_tx,
        }
    }

    /// A connection that sent a POST's head declaring `length` bytes of JSON body
    /// (chunked when `None`), and no body yet.
    async fn post_head(&self, path: &str, length: Option<usize>) -> TcpStream {
        let mut stream = TcpStream::connect(self.address).await.expect("connect");
        let framing = match length {
            Some(n) => format!("Content-Length: {n}"),
            None => "Transfer-Encoding: chunked".to_string(),
        };
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: producer\r\nContent-Type: application/json\r\n{framing}\r\n\r\n"
        );
        stream.write_all(head.as_bytes()).await.expect("head");
        stream
    }
}

/// An answer read off the wire.
#[derive(Debug)]
struct Answer {
    status: u16,
    head: String,
    body: String,
}

/// Reads one response (head, then its `Content-Length` of body) within `within`; `None`
/// when none came in time.
async fn answer(stream: &mut TcpStream, within: Duration) -> Option<Answer> {
    tokio::time::timeout(within, read_answer(stream)).await.ok()
}

async fn read_answer(stream: &mut TcpStream) -> Answer {
    let mut bytes = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = bytes.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&bytes[..end]).to_string();
            let length = head
                .lines()
                .find_map(|l| {
                    let (name, value) = l.split_once(':')?;
                    name.eq_ignore_ascii_case("content-length")
                        .then(|| value.trim().parse::<usize>().ok())?
                })
                .unwrap_or(0);
            if bytes.len() >= end + 4 + length {
                let status = head
                    .split_whitespace()
                    .nth(1)
                    .and_then(|s| s.parse().ok())
                    .expect("status");
                let body = String::from_utf8_lossy(&bytes[end + 4..end + 4 + length]).to_string();
                return Answer { status, head, body };
            }
        }
        let n = stream.read(&mut chunk).await.expect("read");
        assert!(n > 0, "connection closed before a whole answer: {bytes:?}");
        bytes.extend_from_slice(&chunk[..n]);
    }
}

/// A send request body of exactly `length` bytes, for a topic this producer does not
/// take (answered 400 without the database).
fn unknown_topic_body(length: usize) -> Vec<u8> {
    let start = br#"{"topic":"unknown","message":""#;
    let end = br#""}"#;
    let mut body = start.to_vec();
    body.resize(length - end.len(), b'x');
    body.extend_from_slice(end);
    body
}

#[tokio::test]
async fn a_request_refused_at_admission_is_answered_before_its_body_arrives() {
    let server = Server::start(Settings {
        max_concurrent_requests: 0,
        ..Settings::default()
    })
    .await;
    let mut stream = server.post_head("/api/messages/send", Some(1000)).await;
    let answer = answer(&mut stream, Duration::from_secs(3))
        .await
        .expect("answered without the body");
    assert_eq!(answer.status, 503, "{answer:?}");
    assert!(
        answer.body.contains("MAX_CONCURRENT_REQUESTS"),
        "{answer:?}"
    );
}

#[tokio::test]
async fn a_body_declared_larger_than_the_limit_gets_413_before_it_is_read() {
    let server = Server::start(Settings::default()).await;
    let mut stream = server
        .post_head("/api/messages/batch", Some(100 << 20))
        .await;
    let answer = answer(&mut stream, Duration::from_secs(3))
        .await
        .expect("answered without the body");
    assert_eq!(answer.status, 413, "{answer:?}");
    assert!(answer.body.contains("MAX_BODY_BYTES"), "{answer:?}");
    assert!(
        answer.body.contains(&(1u64 << 20).to_string()),
        "{answer:?}"
    );
    assert_eq!(server.state.bodies.most_held_bytes(), 0);
}

#[tokio::test]
async fn a_chunked_body_larger_than_the_limit_gets_413_before_it_is_all_read() {
    let server = Server::start(Settings {
        max_body_bytes: 64 * 1024,
        ..Settings::default()
    })
    .await;
    let mut stream = server.post_head("/api/messages/send", None).await;
    // 80 KiB in chunks, over the 64 KiB limit; the body's end is never sent.
    for _ in 0..10 {
        let chunk = vec![b'x'; 8 * 1024];
        stream
            .write_all(format!("{:x}\r\n", chunk.len()).as_bytes())
            .await
            .expect("chunk size");
        stream.write_all(&chunk).await.expect("chunk");
        stream.write_all(b"\r\n").await.expect("chunk end");
    }
    let answer = answer(&mut stream, Duration::from_secs(3))
        .await
        .expect("answered before the body ended");
    assert_eq!(answer.status, 413, "{answer:?}");
    assert!(answer.body.contains("MAX_BODY_BYTES"), "{answer:?}");
    assert!(server.state.bodies.most_held_bytes() <= 64 * 1024 + 1024);
}

#[tokio::test]
async fn a_body_that_arrives_too_slowly_gets_408_naming_the_timeout() {
    let server = Server::start(Settings {
        read_timeout: Duration::from_millis(300),
        ..Settings::default()
    })
    .await;
    let mut stream = server.post_head("/api/messages/send", Some(1000)).await;
    stream.write_all(b"{\"topic\":").await.expect("some body");
    let answer = answer(&mut stream, Duration::from_secs(3))
        .await
        .expect("answered before the body ended");
    assert_eq!(answer.status, 408, "{answer:?}");
    assert!(answer.body.contains("BODY_READ_TIMEOUT_MS"), "{answer:?}");
    assert!(answer.body.contains("300ms"), "{answer:?}");
    assert_eq!(server.state.bodies.held_bytes(), 0);
}

#[tokio::test]
async fn a_body_larger_than_all_body_memory_gets_413_naming_that_limit() {
    let server = Server::start(Settings {
        max_body_bytes: 4 << 20,
        body_memory_bytes: 1 << 20,
        ..Settings::default()
    })
    .await;
    let mut stream = server.post_head("/api/messages/batch", Some(2 << 20)).await;
    let answer = answer(&mut stream, Duration::from_secs(3))
        .await
        .expect("answered without the body");
    assert_eq!(answer.status, 413, "{answer:?}");
    assert!(answer.body.contains("BODY_MEMORY_KBYTES"), "{answer:?}");
}

#[tokio::test]
async fn concurrent_bodies_beyond_body_memory_get_429_and_the_bytes_held_stay_under_it() {
    const LENGTH: usize = 400 * 1024;
    let server = Server::start(Settings {
        max_body_bytes: 1 << 20,
        body_memory_bytes: 1 << 20,
        body_memory_wait: Duration::from_millis(200),
        ..Settings::default()
    })
    .await;
    // Eight requests of 400 KiB declared against 1 MiB: two fit, and they hold their
    // bytes while their bodies have not arrived.
    let mut streams = Vec::new();
    for _ in 0..8 {
        streams.push(server.post_head("/api/messages/send", Some(LENGTH)).await);
    }
    let mut admitted = Vec::new();
    let mut refused = 0;
    for mut stream in streams {
        match answer(&mut stream, Duration::from_millis(1500)).await {
            Some(answer) => {
                assert_eq!(answer.status, 429, "{answer:?}");
                assert!(
                    answer.head.to_ascii_lowercase().contains("retry-after: 1"),
                    "{answer:?}"
                );
                assert!(answer.body.contains("BODY_MEMORY_KBYTES"), "{answer:?}");
                refused += 1;
            }
            None => admitted.push(stream),
        }
    }
    assert_eq!((admitted.len(), refused), (2, 6));
    assert_eq!(server.state.bodies.held_bytes(), 2 * LENGTH as u64);
    for mut stream in admitted {
        stream
            .write_all(&unknown_topic_body(LENGTH))
            .await
            .expect("body");
        let answer = answer(&mut stream, Duration::from_secs(5))
            .await
            .expect("answered");
        assert_eq!(answer.status, 400, "{answer:?}");
    }
    assert!(server.state.bodies.most_held_bytes() <= 1 << 20);
    assert_eq!(server.state.bodies.held_bytes(), 0);
}

/// A GET's answer.
async fn get(server: &Server, path: &str) -> Answer {
    let mut stream = TcpStream::connect(server.address).await.expect("connect");
    let head = format!("GET {path} HTTP/1.1\r\nHost: producer\r\n\r\n");
    stream.write_all(head.as_bytes()).await.expect("request");
    answer(&mut stream, Duration::from_secs(10))
        .await
        .expect("answered")
}

#[tokio::test]
async fn a_readiness_503_names_a_short_reason_and_no_internal_error_text() {
    let server = Server::start(Settings::default()).await;
    let answer = get(&server, crate::probes::READINESS_PATH).await;
    assert_eq!(answer.status, 503, "{answer:?}");
    assert!(answer.body.contains("database unreachable"), "{answer:?}");
    let body = answer.body.to_ascii_lowercase();
    for internal in [
        "127.0.0.1",
        ":9",
        "secret",
        "error connecting",
        "connection refused",
        "postgresql:",
        "select",
        "os error",
    ] {
        assert!(!body.contains(internal), "{internal:?} in {answer:?}");
    }
}

#[tokio::test]
async fn a_refused_request_is_answered_while_its_body_still_arrives() {
    const LENGTH: usize = 10 << 20;
    let server = Server::start(Settings {
        max_body_bytes: 16 << 20,
        body_memory_bytes: 16 << 20,
        ..Settings::default()
    })
    .await;
    // One request holds 10 MiB of the 16 MiB while its body has not come.
    let _holding = server.post_head("/api/messages/send", Some(LENGTH)).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(server.state.bodies.held_bytes(), LENGTH as u64);
    // Another sends all of its 10 MiB, more than the sockets buffer: refused, it must
    // still get its body taken in and read the answer, not a connection reset by a
    // server that closed with the body unread.
    let mut stream = server.post_head("/api/messages/send", Some(LENGTH)).await;
    stream
        .write_all(&unknown_topic_body(LENGTH))
        .await
        .expect("the body is taken in, if only to be dropped");
    let answer = answer(&mut stream, Duration::from_secs(5))
        .await
        .expect("answered");
    assert_eq!(answer.status, 429, "{answer:?}");
    assert_eq!(server.state.bodies.held_bytes(), LENGTH as u64);
}

#[tokio::test]
async fn every_ingest_answer_is_timed_by_route_refusals_included() {
    let server = Server::start(Settings {
        max_concurrent_requests: 0,
        ..Settings::default()
    })
    .await;
    for path in [
        "/api/messages/send",
        "/api/messages/send",
        "/api/messages/batch",
    ] {
        let mut stream = server.post_head(path, Some(10)).await;
        let answer = answer(&mut stream, Duration::from_secs(3))
            .await
            .expect("answered");
        assert_eq!(answer.status, 503, "{answer:?}");
    }
    let mut registry = prometheus_client::registry::Registry::default();
    server.state.metrics.register(&mut registry);
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).expect("encodes");
    for (route, count) in [("send", 2.0), ("batch", 1.0)] {
        let counts = crate::cpu::samples(&text, "outbox_request_duration_seconds_count");
        let label = format!("route=\"{route}\"");
        assert!(
            counts.iter().any(|(l, v)| *l == label && *v == count),
            "{route}: {counts:?}"
        );
    }
}
