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

/// Serves `app` over HTTP/1.1 on `listener` until `shutdown`, then lets the open
/// connections finish the requests they have begun. Each request head must arrive
/// within `head_timeout`, which also bounds how long a kept-alive connection may sit
/// idle between requests: a connection that sends nothing cannot keep its place.
pub async fn serve(
    mut listener: LimitedListener,
    app: axum::Router,
    head_timeout: Duration,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    use axum::serve::Listener;
    let (stop, stopping) = tokio::sync::watch::channel(false);
    // Each connection's task holds a receiver: all dropped, all connections are done.
    let (open, open_handle) = tokio::sync::watch::channel(());
    tokio::pin!(shutdown);
    loop {
        let (io, remote) = tokio::select! {
            accepted = listener.accept() => accepted,
            () = &mut shutdown => break,
        };
        tracing::trace!(%remote, "connection accepted");
        let service = hyper_util::service::TowerToHyperService::new(app.clone());
        let mut stopping = stopping.clone();
        let open = open_handle.clone();
        tokio::spawn(async move {
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(head_timeout);
            let connection = builder.serve_connection(hyper_util::rt::TokioIo::new(io), service);
            tokio::pin!(connection);
            let mut draining = false;
            loop {
                tokio::select! {
                    served = connection.as_mut() => {
                        if let Err(e) = served {
                            tracing::debug!(%remote, error = %e, "connection ended");
                        }
                        break;
                    }
                    _ = stopping.changed(), if !draining => {
                        draining = true;
                        connection.as_mut().graceful_shutdown();
                    }
                }
            }
            drop(open);
        });
    }
    drop(listener);
    let _ = stop.send(true);
    drop(open_handle);
    open.closed().await;
    Ok(())
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

    /// [`serve`] of a router with only `/livez`, on a loopback port with `places`
    /// connections at once and `head_timeout`, until `shutdown`.
    async fn livez_server(
        places: usize,
        head_timeout: Duration,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> (
        std::net::SocketAddr,
        tokio::task::JoinHandle<io::Result<()>>,
    ) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = listener.local_addr().expect("address");
        let app = axum::Router::new().route(
            crate::probes::LIVENESS_PATH,
            axum::routing::get(crate::probes::alive),
        );
        let server = tokio::spawn(serve(
            LimitedListener::new(listener, places),
            app,
            head_timeout,
            shutdown,
        ));
        (address, server)
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

    #[tokio::test]
    async fn a_connection_that_does_not_finish_its_request_head_in_time_is_closed() {
        let (address, _server) =
            livez_server(1, Duration::from_millis(300), std::future::pending()).await;
        // The only place is taken by a connection that never finishes its head...
        let mut stalled = TcpStream::connect(address).await.expect("stalled");
        stalled
            .write_all(b"GET /livez HTTP/1.1\r\nHost: pro")
            .await
            .expect("half a head");
        let mut waiting = TcpStream::connect(address).await.expect("waiting");
        get_livez(&mut waiting).await;
        // ...until it is closed for it, and the waiting one is served.
        let mut rest = Vec::new();
        let closed =
            tokio::time::timeout(Duration::from_secs(3), stalled.read_to_end(&mut rest)).await;
        assert!(closed.is_ok(), "the stalled connection is still open");
        assert!(
            answered(&mut waiting, Duration::from_secs(3)).await,
            "the waiting connection was not served"
        );
    }

    #[tokio::test]
    async fn an_idle_kept_alive_connection_is_closed_after_the_head_timeout() {
        let (address, _server) =
            livez_server(4, Duration::from_millis(300), std::future::pending()).await;
        let mut idle = TcpStream::connect(address).await.expect("connect");
        get_livez(&mut idle).await;
        assert!(answered(&mut idle, Duration::from_secs(3)).await);
        let mut rest = Vec::new();
        let closed =
            tokio::time::timeout(Duration::from_secs(3), idle.read_to_end(&mut rest)).await;
        assert!(closed.is_ok(), "an idle connection stays open");
    }

    #[tokio::test]
    async fn on_shutdown_the_server_returns_once_its_connections_are_done() {
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let (address, server) = livez_server(4, Duration::from_secs(30), async move {
            let _ = stopped.await;
        })
        .await;
        let mut kept_alive = TcpStream::connect(address).await.expect("connect");
        get_livez(&mut kept_alive).await;
        assert!(answered(&mut kept_alive, Duration::from_secs(3)).await);
        let _ = stop.send(());
        let served = tokio::time::timeout(Duration::from_secs(3), server)
            .await
            .expect("the server returned although a connection was kept alive")
            .expect("the server task");
        assert!(served.is_ok(), "{served:?}");
        assert!(
            TcpStream::connect(address).await.is_err(),
            "still accepting"
        );
    }
}
