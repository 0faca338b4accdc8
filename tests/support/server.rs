//! The HTTPS server on a free loopback port, with a fresh CA and serving
//! certificate for `localhost` in a temporary folder.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use genesis_gate::metrics::Metrics;
use genesis_gate::server::{Reviewer, Server, ServerOptions};
use genesis_gate::tls::{self, CertificateAuthority};
use rustls::ClientConfig;
use tempfile::TempDir;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::client::{client_config, Connection, Protocol};

pub struct TestServer {
    pub addr: SocketAddr,
    pub metrics: Arc<Metrics>,
    dir: TempDir,
    shutdown: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

impl TestServer {
    /// Starts a server with test options: port 0 and a 200 ms certificate
    /// poll interval.
    pub async fn start(reviewer: Arc<dyn Reviewer>) -> TestServer {
        TestServer::start_with(reviewer, |_, _| {}).await
    }

    /// Starts a server after `configure` has adjusted the options. It gets
    /// the certificate folder, which contains `ca.pem`, `ca-key.pem`, `tls.crt`
    /// and `tls.key` at that point.
    pub async fn start_with(
        reviewer: Arc<dyn Reviewer>,
        configure: impl FnOnce(&mut ServerOptions, &Path),
    ) -> TestServer {
        init_logging();
        let dir = tempfile::tempdir().expect("temporary folder");
        let paths = tls::ensure_dev_certificates(dir.path()).expect("dev certificates");
        let mut options = ServerOptions {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            cert_file: paths.cert_file,
            key_file: paths.key_file,
            cert_poll_interval: Duration::from_millis(200),
            ..ServerOptions::default()
        };
        configure(&mut options, dir.path());
        let metrics = Arc::new(Metrics::new());
        let server = Server::bind(options, reviewer, metrics.clone())
            .await
            .expect("server binds");
        let addr = server.local_addr();
        let (shutdown, stop) = oneshot::channel::<()>();
        let task = tokio::spawn(server.run(async {
            let _ = stop.await;
        }));
        TestServer {
            addr,
            metrics,
            dir,
            shutdown: Some(shutdown),
            task,
        }
    }

    /// Returns the certificate folder.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn ca_file(&self) -> PathBuf {
        self.dir.path().join(tls::CA_CERT_FILE)
    }

    /// Loads the CA that signed the serving certificate, for issuing new ones.
    pub fn ca(&self) -> CertificateAuthority {
        CertificateAuthority::load(self.dir.path()).expect("test CA")
    }

    /// Builds a client configuration that trusts only this server's CA.
    pub fn client_config(&self, protocol: Protocol) -> Arc<ClientConfig> {
        client_config(&self.ca_file(), protocol, None)
    }

    pub async fn connect(&self, protocol: Protocol) -> Connection {
        Connection::open(self.addr, self.client_config(protocol), protocol)
            .await
            .expect("connect to test server")
    }

    /// Starts shutdown, as SIGTERM does in the binary.
    pub fn begin_shutdown(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
    }

    /// Returns whether the server finished within `limit` after shutdown.
    pub async fn stopped_within(&mut self, limit: Duration) -> bool {
        tokio::time::timeout(limit, &mut self.task).await.is_ok()
    }
}

/// Sends the server's logs to the test output, filtered by `RUST_LOG` and
/// silent without it.
fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("off"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_test_writer()
        .try_init();
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}
