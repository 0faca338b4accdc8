//! A bare HTTPS server that answers every POST with the same AdmissionReview
//! response, written by hand as the measurement baseline for `bench/load.sh`.
//!
//! It does no parsing, no policy work and no logging. It uses the TLS
//! settings of `genesis-gate serve` (rustls with the ring provider, TLS 1.3
//! and 1.2, ALPN `h2` then `http/1.1`, the `tls.crt` and `tls.key` of a
//! certificate folder) and the same HTTP stack (hyper-util's automatic
//! HTTP/1.1 and HTTP/2 connection builder on a multi-threaded tokio
//! runtime). The difference between the two servers under the same load is
//! what the webhook's own work costs.
//!
//! Usage: `cargo run --release --example bare_tls -- --listen 127.0.0.1:9443 --cert-dir certs`

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use bytes::Bytes;
use clap::Parser;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;

/// An allowed AdmissionReview response of about the size genesis-gate sends
/// for an allowed review.
const FIXED_RESPONSE: &str = r#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","response":{"uid":"00000000-0000-0000-0000-000000000000","allowed":true}}"#;

/// Time a client may take to finish the TLS handshake, as in genesis-gate.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Bare TLS baseline server for load measurements.
#[derive(Debug, Parser)]
struct Args {
    /// Address and port to listen on; keep it on loopback.
    #[arg(long, default_value = "127.0.0.1:9443")]
    listen: SocketAddr,
    /// Folder with tls.crt and tls.key, such as the one `genesis-gate serve
    /// --cert-dir` creates.
    #[arg(long, default_value = "certs")]
    cert_dir: PathBuf,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let Args { listen, cert_dir } = Args::parse();
    let acceptor = TlsAcceptor::from(Arc::new(tls_config(&cert_dir)?));
    let listener = TcpListener::bind(listen)
        .await
        .with_context(|| format!("failed to listen on {listen}"))?;
    eprintln!("bare_tls listening on {}", listener.local_addr()?);
    let http = Arc::new(auto::Builder::new(TokioExecutor::new()));
    loop {
        let (stream, _peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                eprintln!("failed to accept a connection: {error}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        tokio::spawn(serve_connection(acceptor.clone(), http.clone(), stream));
    }
}

fn tls_config(cert_dir: &std::path::Path) -> anyhow::Result<rustls::ServerConfig> {
    let cert_path = cert_dir.join("tls.crt");
    let key_path = cert_dir.join("tls.key");
    let chain = CertificateDer::pem_file_iter(&cert_path)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .with_context(|| format!("failed to read certificates from {}", cert_path.display()))?;
    let key = PrivateKeyDer::from_pem_file(&key_path)
        .with_context(|| format!("failed to read the private key from {}", key_path.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

async fn serve_connection(
    acceptor: TlsAcceptor,
    http: Arc<auto::Builder<TokioExecutor>>,
    stream: TcpStream,
) {
    // genesis-gate disables Nagle's algorithm too; without it the last
    // segment of a response can wait for the client's delayed ACK.
    let _ = stream.set_nodelay(true);
    let tls_stream = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
        Ok(Ok(tls_stream)) => tls_stream,
        Ok(Err(_)) | Err(_) => return,
    };
    // Errors here are clients that closed mid-request at the end of a run.
    let _ = http
        .serve_connection(TokioIo::new(tls_stream), service_fn(respond))
        .await;
}

async fn respond(request: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    if request.method() != Method::POST {
        return Ok(status_only(StatusCode::METHOD_NOT_ALLOWED));
    }
    // Read the whole body, as a webhook must before it can answer.
    if request.into_body().collect().await.is_err() {
        return Ok(status_only(StatusCode::BAD_REQUEST));
    }
    let mut response = Response::new(Full::new(Bytes::from_static(FIXED_RESPONSE.as_bytes())));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    Ok(response)
}

fn status_only(status: StatusCode) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::new()));
    *response.status_mut() = status;
    response
}
