//! An HTTPS client over one connection, HTTP/1.1 or HTTP/2, that verifies
//! the server against a given CA and exposes what was negotiated.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use genesis_gate::tls::IssuedCertificate;
use http::{header, HeaderMap, Method, Request, StatusCode, Version};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tokio_rustls::TlsConnector;

pub type ClientError = Box<dyn std::error::Error + Send + Sync>;

/// The HTTP version to speak, offered through ALPN.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    Http1,
    Http2,
}

/// Builds a client configuration that trusts only the CA in `ca_file`,
/// offers `protocol` through ALPN, and presents `identity` when given.
pub fn client_config(
    ca_file: &Path,
    protocol: Protocol,
    identity: Option<&IssuedCertificate>,
) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca_file).expect("CA file") {
        roots.add(cert.expect("CA certificate")).expect("usable CA");
    }
    let builder = ClientConfig::builder_with_provider(genesis_gate::tls::crypto_provider())
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_root_certificates(roots);
    let mut config = match identity {
        None => builder.with_no_client_auth(),
        Some(identity) => {
            let chain = CertificateDer::pem_slice_iter(identity.cert_pem.as_bytes())
                .collect::<Result<Vec<_>, _>>()
                .expect("client certificate");
            let key = PrivateKeyDer::from_pem_slice(identity.key_pem.as_bytes()).expect("key");
            builder
                .with_client_auth_cert(chain, key)
                .expect("client identity")
        }
    };
    // A resumed session carries the certificate of the session it resumes,
    // so each handshake is a full one to see the certificate served now.
    config.resumption = rustls::client::Resumption::disabled();
    config.alpn_protocols = match protocol {
        Protocol::Http1 => vec![b"http/1.1".to_vec()],
        Protocol::Http2 => vec![b"h2".to_vec()],
    };
    Arc::new(config)
}

/// A response read in full.
#[derive(Debug)]
pub struct TestResponse {
    pub status: StatusCode,
    pub version: Version,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl TestResponse {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

enum Sender {
    Http1(http1::SendRequest<Full<Bytes>>),
    Http2(http2::SendRequest<Full<Bytes>>),
}

/// One TLS connection to the server, verified as `localhost`.
pub struct Connection {
    sender: Sender,
    authority: String,
    /// The ALPN protocol the server chose.
    pub alpn: Option<Vec<u8>>,
    /// The negotiated TLS version.
    pub tls_version: Option<rustls::ProtocolVersion>,
    /// The server's leaf certificate.
    pub peer_certificate: CertificateDer<'static>,
    driver: JoinHandle<()>,
}

impl Connection {
    /// Connects, completes the TLS handshake and the HTTP handshake.
    pub async fn open(
        addr: SocketAddr,
        config: Arc<ClientConfig>,
        protocol: Protocol,
    ) -> Result<Connection, ClientError> {
        let tcp = TcpStream::connect(addr).await?;
        let server_name = ServerName::try_from("localhost")?;
        let tls = TlsConnector::from(config).connect(server_name, tcp).await?;
        let session = tls.get_ref().1;
        let alpn = session.alpn_protocol().map(<[u8]>::to_vec);
        let tls_version = session.protocol_version();
        let peer_certificate = session
            .peer_certificates()
            .and_then(|chain| chain.first())
            .ok_or("server sent no certificate")?
            .clone()
            .into_owned();
        let io = TokioIo::new(tls);
        let (sender, driver) = match protocol {
            Protocol::Http1 => {
                let (sender, connection) = http1::handshake(io).await?;
                let driver = tokio::spawn(async move {
                    let _ = connection.await;
                });
                (Sender::Http1(sender), driver)
            }
            Protocol::Http2 => {
                let (sender, connection) = http2::handshake(TokioExecutor::new(), io).await?;
                let driver = tokio::spawn(async move {
                    let _ = connection.await;
                });
                (Sender::Http2(sender), driver)
            }
        };
        Ok(Connection {
            sender,
            authority: format!("localhost:{}", addr.port()),
            alpn,
            tls_version,
            peer_certificate,
            driver,
        })
    }

    /// Serial number of the server's certificate, in lowercase hex.
    pub fn serial(&self) -> String {
        super::serial_of_der(&self.peer_certificate)
    }

    pub async fn get(&mut self, path: &str) -> Result<TestResponse, ClientError> {
        self.send(Method::GET, path, None, Bytes::new()).await
    }

    pub async fn post(
        &mut self,
        path: &str,
        content_type: &str,
        body: impl Into<Bytes>,
    ) -> Result<TestResponse, ClientError> {
        self.send(Method::POST, path, Some(content_type), body.into())
            .await
    }

    pub async fn send(
        &mut self,
        method: Method,
        path: &str,
        content_type: Option<&str>,
        body: Bytes,
    ) -> Result<TestResponse, ClientError> {
        let mut builder = Request::builder().method(method);
        builder = match self.sender {
            // HTTP/1.1 in origin form with a Host header, as clients send it.
            Sender::Http1(_) => builder.uri(path).header(header::HOST, &self.authority),
            Sender::Http2(_) => builder.uri(format!("https://{}{path}", self.authority)),
        };
        if let Some(content_type) = content_type {
            builder = builder.header(header::CONTENT_TYPE, content_type);
        }
        let request = builder.body(Full::new(body))?;
        let response = match &mut self.sender {
            Sender::Http1(sender) => {
                sender.ready().await?;
                sender.send_request(request).await?
            }
            Sender::Http2(sender) => {
                sender.ready().await?;
                sender.send_request(request).await?
            }
        };
        let status = response.status();
        let version = response.version();
        let headers = response.headers().clone();
        let body = response.into_body().collect().await?.to_bytes();
        Ok(TestResponse {
            status,
            version,
            headers,
            body,
        })
    }

    /// Returns whether the server closed the connection within `limit`.
    pub async fn closed_within(&mut self, limit: std::time::Duration) -> bool {
        tokio::time::timeout(limit, &mut self.driver).await.is_ok()
    }
}

/// Opens a connection and sends one GET, for cases where either the
/// handshake or the request may be where a rejection shows.
pub async fn get_once(
    addr: SocketAddr,
    config: Arc<ClientConfig>,
    path: &str,
) -> Result<TestResponse, ClientError> {
    let mut connection = Connection::open(addr, config, Protocol::Http1).await?;
    connection.get(path).await
}
