//! Accepting TLS connections and serving HTTP/1.1 and HTTP/2 on them, with
//! graceful shutdown.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::ConnectInfo;
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::{JoinError, JoinSet};
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt;
use tracing::{debug, error, info, warn};

use super::options::ServerOptions;
use super::routes::{app, AppState};
use super::Reviewer;
use crate::metrics::Metrics;
use crate::tls::{self, CertificateWatcher, TlsError, WatchHandle};

/// Pause after a failed `accept`, which is mostly running out of file
/// descriptors, so that the loop does not spin while none are free.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// At most one warning per interval for failed handshakes; the rest are
/// counted in the `tls_handshake_failures` metric and logged at debug.
const HANDSHAKE_WARNING_INTERVAL: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("failed to listen on {addr}: {source}; choose a free address and port")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// A bound server, not yet accepting connections.
pub struct Server {
    listener: TcpListener,
    local_addr: SocketAddr,
    connections: Arc<ConnectionContext>,
    drain_timeout: Duration,
    _certificate_watch: WatchHandle,
}

/// State shared by the connection tasks.
struct ConnectionContext {
    acceptor: TlsAcceptor,
    router: Router,
    http: auto::Builder<TokioExecutor>,
    handshake_timeout: Duration,
    metrics: Arc<Metrics>,
    handshake_warnings: HandshakeWarnings,
}

/// Binds and serves until `shutdown` completes, then drains connections.
pub async fn serve(
    options: ServerOptions,
    reviewer: Arc<dyn Reviewer>,
    metrics: Arc<Metrics>,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServerError> {
    Server::bind(options, reviewer, metrics)
        .await?
        .run(shutdown)
        .await;
    Ok(())
}

impl Server {
    /// Loads the certificate, starts watching it, and binds the listener.
    /// Fails when the certificate, the key or the client CA cannot be used,
    /// or the address cannot be bound.
    pub async fn bind(
        options: ServerOptions,
        reviewer: Arc<dyn Reviewer>,
        metrics: Arc<Metrics>,
    ) -> Result<Server, ServerError> {
        let watcher =
            CertificateWatcher::load(&options.cert_file, &options.key_file, metrics.clone())?;
        let config = tls::server_config(watcher.resolver(), options.client_ca.as_deref())?;
        let certificate_watch = watcher.spawn(options.cert_poll_interval);
        let listener =
            TcpListener::bind(options.listen)
                .await
                .map_err(|source| ServerError::Bind {
                    addr: options.listen,
                    source,
                })?;
        let local_addr = listener.local_addr().map_err(|source| ServerError::Bind {
            addr: options.listen,
            source,
        })?;
        let state = AppState {
            reviewer,
            metrics: metrics.clone(),
            body_limit: options.body_limit,
            request_timeout: options.request_timeout,
        };
        let connections = ConnectionContext {
            acceptor: TlsAcceptor::from(Arc::new(config)),
            router: app(state),
            http: http_builder(),
            handshake_timeout: options.handshake_timeout,
            metrics,
            handshake_warnings: HandshakeWarnings::default(),
        };
        Ok(Server {
            listener,
            local_addr,
            connections: Arc::new(connections),
            drain_timeout: options.drain_timeout,
            _certificate_watch: certificate_watch,
        })
    }

    /// Returns the bound address, with the port chosen when the options gave 0.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Accepts connections until `shutdown` completes. Then it stops
    /// accepting, signals every connection to close after its in-flight
    /// requests (idle HTTP/1.1 connections close at once, HTTP/2 ones get
    /// GOAWAY), and waits up to the drain timeout before closing the rest.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send) {
        let Server {
            listener,
            local_addr,
            connections,
            drain_timeout,
            _certificate_watch,
        } = self;
        let (stop_tx, stop_rx) = watch::channel(false);
        let mut tasks = JoinSet::new();
        tokio::pin!(shutdown);
        info!(addr = %local_addr, "server listening");
        loop {
            tokio::select! {
                biased;
                () = &mut shutdown => break,
                Some(joined) = tasks.join_next(), if !tasks.is_empty() => log_join(joined),
                accepted = listener.accept() => match accepted {
                    Ok((stream, peer)) => {
                        let context = connections.clone();
                        tasks.spawn(serve_connection(context, stream, peer, stop_rx.clone()));
                    }
                    Err(error) => {
                        warn!(%error, "failed to accept a connection");
                        tokio::time::sleep(ACCEPT_BACKOFF).await;
                    }
                },
            }
        }
        drop(listener);
        info!(
            connections = tasks.len(),
            drain_timeout_ms = drain_timeout.as_millis() as u64,
            "shutdown requested; stopped accepting and draining connections"
        );
        // Every receiver sees `true` from here on, including connections
        // whose handshake is still running.
        let _ = stop_tx.send(true);
        drain_connections(tasks, drain_timeout).await;
        info!(addr = %local_addr, "server stopped");
    }
}

/// Waits for the connection tasks to finish, and after `drain_timeout`
/// aborts those that remain.
async fn drain_connections(mut tasks: JoinSet<()>, drain_timeout: Duration) {
    let drain = async {
        while let Some(joined) = tasks.join_next().await {
            log_join(joined);
        }
    };
    if tokio::time::timeout(drain_timeout, drain).await.is_ok() {
        return;
    }
    warn!(
        connections = tasks.len(),
        "drain timeout elapsed; closing the remaining connections"
    );
    tasks.shutdown().await;
}

fn http_builder() -> auto::Builder<TokioExecutor> {
    // NOTE: no hyper timer is set, so HTTP/1.1 has no header read timeout.
    // Hyper's timeout would also close idle keep-alive connections, which
    // the API server reuses. A slow client holds a connection, not a worker.
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder.http1().keep_alive(true);
    builder
}

async fn serve_connection(
    context: Arc<ConnectionContext>,
    stream: TcpStream,
    peer: SocketAddr,
    mut stop: watch::Receiver<bool>,
) {
    // Reviews are small request-response exchanges, and Nagle's algorithm
    // would delay the last segment of each response.
    let _ = stream.set_nodelay(true);
    let handshake =
        tokio::time::timeout(context.handshake_timeout, context.acceptor.accept(stream));
    let tls_stream = tokio::select! {
        result = handshake => match result {
            Ok(Ok(tls_stream)) => tls_stream,
            Ok(Err(error)) => return context.handshake_failed(peer, &error),
            Err(_) => return context.handshake_failed(peer, &"handshake timed out"),
        },
        () = stopped(&mut stop) => return,
    };
    let service =
        context
            .router
            .clone()
            .map_request(move |mut request: hyper::Request<Incoming>| {
                request.extensions_mut().insert(ConnectInfo(peer));
                request
            });
    let connection = context
        .http
        .serve_connection(TokioIo::new(tls_stream), TowerToHyperService::new(service));
    tokio::pin!(connection);
    let result = tokio::select! {
        result = connection.as_mut() => result,
        () = stopped(&mut stop) => {
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    if let Err(error) = result {
        // Mostly clients that disconnect mid-request; nothing to act on.
        debug!(%peer, %error, "connection closed with an error");
    }
}

/// Completes once shutdown has started, or the server is gone.
async fn stopped(stop: &mut watch::Receiver<bool>) {
    // The guard that `wait_for` returns is not `Send`; drop it here.
    let _ = stop.wait_for(|stopped| *stopped).await;
}

impl ConnectionContext {
    fn handshake_failed(&self, peer: SocketAddr, error: &dyn std::fmt::Display) {
        self.metrics.record_handshake_failure();
        debug!(%peer, %error, "tls handshake failed");
        if let Some(suppressed) = self.handshake_warnings.admit() {
            warn!(
                %peer,
                %error,
                suppressed,
                "tls handshake failed; further failures within a minute are only counted"
            );
        }
    }
}

/// Rate limit for handshake warnings, since a port scanner or a TCP health
/// probe fails a handshake on every connection.
#[derive(Default)]
struct HandshakeWarnings {
    last_warning: Mutex<Option<Instant>>,
    suppressed: AtomicU64,
}

impl HandshakeWarnings {
    /// Returns the number of failures suppressed since the last warning when
    /// this one should be logged, or `None` when it should be suppressed.
    fn admit(&self) -> Option<u64> {
        let mut last = self.last_warning.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        if last.is_some_and(|at| now.duration_since(at) < HANDSHAKE_WARNING_INTERVAL) {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        *last = Some(now);
        Some(self.suppressed.swap(0, Ordering::Relaxed))
    }
}

fn log_join(joined: Result<(), JoinError>) {
    if let Err(join_error) = joined {
        if join_error.is_panic() {
            error!(error = %join_error, "connection task panicked");
        }
    }
}
