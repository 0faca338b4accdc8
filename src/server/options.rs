//! Settings of the HTTPS server.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

/// Fits an UPDATE review, which carries the object and the old object of up
/// to 3 MiB each (the API server's object size limit), plus the envelope.
pub const DEFAULT_BODY_LIMIT: usize = 8 * 1024 * 1024;
/// Under the 5 s `timeoutSeconds` of the shipped webhook configuration, so
/// that the API server receives our response rather than its own timeout.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(4);
pub const DEFAULT_LISTEN: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(Ipv4Addr::LOCALHOST), 8443);

/// Everything [`super::serve`] needs besides the reviewer and the metrics.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerOptions {
    /// Address to listen on; port 0 picks a free port.
    pub listen: SocketAddr,
    /// PEM certificate chain, leaf first. Its folder is watched for changes.
    pub cert_file: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1) of the leaf certificate.
    pub key_file: PathBuf,
    /// PEM CA certificates; when set, only clients presenting a certificate
    /// signed by one of them complete the handshake. Read once at start.
    pub client_ca: Option<PathBuf>,
    /// Largest accepted request body, in bytes.
    pub body_limit: usize,
    /// Time allowed for one request, from its headers to its response.
    pub request_timeout: Duration,
    /// Time allowed for the TLS handshake of a new connection.
    pub handshake_timeout: Duration,
    /// After shutdown starts, time that in-flight requests get to finish
    /// before their connections are closed.
    pub drain_timeout: Duration,
    /// Interval at which the certificate files are reread in case a change
    /// event was missed.
    pub cert_poll_interval: Duration,
}

impl Default for ServerOptions {
    /// Listens on 127.0.0.1:8443 with `certs/tls.crt` and `certs/tls.key`.
    fn default() -> Self {
        ServerOptions {
            listen: DEFAULT_LISTEN,
            cert_file: PathBuf::from("certs").join(crate::tls::CERT_FILE),
            key_file: PathBuf::from("certs").join(crate::tls::KEY_FILE),
            client_ca: None,
            body_limit: DEFAULT_BODY_LIMIT,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            handshake_timeout: Duration::from_secs(10),
            drain_timeout: Duration::from_secs(10),
            cert_poll_interval: Duration::from_secs(5),
        }
    }
}
