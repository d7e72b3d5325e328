//! A bound on the HTTP connections served at once (`MAX_CONNECTIONS`): beyond it, new
//! connections are not accepted and wait in the listen queue (or are refused by the
//! kernel once that is full) until a served one closes, so a flood of connections
//! cannot take one task and its buffers each without bound.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// A listener that accepts a connection only while fewer than its limit are open.
#[derive(Debug)]
pub struct LimitedListener {
    inner: TcpListener,
    permits: Arc<Semaphore>,
    limit: usize,
    /// When waiting for a place was last logged: at most once per [`WARN_EVERY`].
    warned: Option<Instant>,
}

const WARN_EVERY: Duration = Duration::from_secs(10);

impl LimitedListener {
    /// At most `limit` connections (at least 1) of `inner` at once.
    pub fn new(inner: TcpListener, limit: usize) -> LimitedListener {
        let limit = limit.max(1);
        LimitedListener {
            inner,
            permits: Arc::new(Semaphore::new(limit)),
            limit,
            warned: None,
        }
    }
}

/// A connection that frees its place when dropped.
#[derive(Debug)]
pub struct Counted {
    io: TcpStream,
    _permit: OwnedSemaphorePermit,
}

impl axum::serve::Listener for LimitedListener {
    type Io = Counted;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        let permit = match self.permits.clone().try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => {
                if self.warned.is_none_or(|at| at.elapsed() >= WARN_EVERY) {
                    self.warned = Some(Instant::now());
                    tracing::warn!(
                        limit = self.limit,
                        "MAX_CONNECTIONS connections open: new ones wait until one closes"
                    );
                }
                match self.permits.clone().acquire_owned().await {
                    Ok(permit) => permit,
                    // The semaphore is never closed.
                    Err(_) => std::future::pending().await,
                }
            }
        };
        let (io, address) = axum::serve::Listener::accept(&mut self.inner).await;
        (
            Counted {
                io,
                _permit: permit,
            },
            address,
        )
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}

impl AsyncRead for Counted {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for Counted {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn get_livez(stream: &mut TcpStream) {
        stream
            .write_all(b"GET /livez HTTP/1.1\r\nHost: producer\r\n\r\n")
            .await
            .expect("request");
    }

    /// Whether an answer starts to arrive within `within`.
    async fn answered(stream: &mut TcpStream, within: Duration) -> bool {
        let mut byte = [0u8; 1];
        matches!(
            tokio::time::timeout(within, stream.read(&mut byte)).await,
            Ok(Ok(1))
        )
    }

    #[tokio::test]
    async fn connections_beyond_the_limit_wait_until_one_closes() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = listener.local_addr().expect("address");
        let app = axum::Router::new().route(
            crate::probes::LIVENESS_PATH,
            axum::routing::get(crate::probes::alive),
        );
        tokio::spawn(async move { axum::serve(LimitedListener::new(listener, 2), app).await });

        let mut first = TcpStream::connect(address).await.expect("first");
        let mut second = TcpStream::connect(address).await.expect("second");
        get_livez(&mut first).await;
        get_livez(&mut second).await;
        assert!(answered(&mut first, Duration::from_secs(3)).await);
        assert!(answered(&mut second, Duration::from_secs(3)).await);

        let mut third = TcpStream::connect(address).await.expect("queued");
        get_livez(&mut third).await;
        assert!(
            !answered(&mut third, Duration::from_millis(500)).await,
            "a third connection was served while two were open"
        );
        drop(first);
        assert!(
            answered(&mut third, Duration::from_secs(3)).await,
            "the third connection was not served once the first closed"
        );
    }
}
