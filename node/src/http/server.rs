//! The accept loop: one task per connection, at most `max_connections` at once (the loop stops
//! accepting while full, leaving new clients in the kernel's backlog), HTTP/1.1 with a header
//! read timeout and a bounded read buffer, and a graceful stop: stop accepting, let requests
//! in flight finish within the grace period, then close what is left.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};

use super::service::{handle, App};

/// hyper refuses read buffers smaller than this.
const MIN_BUF_SIZE: usize = 8192;

/// Connection limits.
#[derive(Debug, Clone)]
pub struct ServerParams {
    pub max_connections: usize,
    /// Time a client has to send a request's headers (also bounds idle keep-alive).
    pub header_read_timeout: Duration,
    /// Largest read buffer, which bounds the request head (431 past it).
    pub max_buf_size: usize,
    /// How long in-flight requests may run after the stop signal.
    pub shutdown_grace: Duration,
}

impl Default for ServerParams {
    fn default() -> Self {
        ServerParams {
            max_connections: 1024,
            header_read_timeout: Duration::from_secs(30),
            max_buf_size: 16 << 10,
            shutdown_grace: Duration::from_secs(25),
        }
    }
}

/// Serves `listener` until `shutdown` turns true, then drains connections for at most
/// `params.shutdown_grace`. Returns how many connections were cut at the deadline.
pub async fn run(
    listener: TcpListener,
    app: Arc<App>,
    params: ServerParams,
    shutdown: watch::Receiver<bool>,
) -> usize {
    let max = params.max_connections.max(1);
    let slots = Arc::new(Semaphore::new(max));
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(params.header_read_timeout)
        .max_buf_size(params.max_buf_size.max(MIN_BUF_SIZE))
        .keep_alive(true);
    let builder = Arc::new(builder);
    loop {
        // Wait for a free slot first: while full, nothing is accepted.
        let permit = tokio::select! {
            permit = slots.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
            _ = until_stopped(shutdown.clone()) => break,
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = until_stopped(shutdown.clone()) => break,
        };
        let _ = stream.set_nodelay(true);
        let app = app.clone();
        let builder = builder.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            serve_connection(stream, peer, app, &builder, shutdown).await;
            drop(permit);
        });
    }
    drop(listener);
    tracing::info!("stopped accepting; draining connections");
    let drained = tokio::time::timeout(
        params.shutdown_grace,
        slots.acquire_many(u32::try_from(max).unwrap_or(u32::MAX)),
    )
    .await;
    match drained {
        Ok(_) => 0,
        Err(_) => {
            let left = max - slots.available_permits();
            tracing::warn!(
                connections = left,
                "grace period over; closing connections still open"
            );
            left
        }
    }
}

/// Returns once the stop flag is set (or its sender is gone).
async fn until_stopped(mut shutdown: watch::Receiver<bool>) {
    loop {
        if *shutdown.borrow_and_update() {
            return;
        }
        if shutdown.changed().await.is_err() {
            return;
        }
    }
}

async fn serve_connection(
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    app: Arc<App>,
    builder: &http1::Builder,
    shutdown: watch::Receiver<bool>,
) {
    let service = service_fn(move |request| handle(app.clone(), request));
    let connection = builder.serve_connection(TokioIo::new(stream), service);
    tokio::pin!(connection);
    let result = tokio::select! {
        result = connection.as_mut() => result,
        _ = until_stopped(shutdown.clone()) => {
            // Finish the request in flight (if any), then close.
            connection.as_mut().graceful_shutdown();
            connection.as_mut().await
        }
    };
    if let Err(error) = result {
        tracing::debug!(%peer, %error, "connection ended with an error");
    }
}
