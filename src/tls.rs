//! Certificates for the HTTPS server: creating a CA and serving certificates
//! ([`generate`]), loading PEM files ([`load`]), and swapping the serving
//! certificate while the server runs ([`reload`]).
//!
//! A certificate folder uses the names of a Kubernetes TLS Secret:
//! `tls.crt` and `tls.key`, plus `ca.pem` and `ca-key.pem` for the CA that
//! signed them.

pub mod generate;
pub mod load;
pub mod reload;

use std::path::PathBuf;
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls::ServerConfig;

pub use generate::{
    create_for_service, ensure_dev_certificates, generate_ca, generate_client, generate_serving,
    CertificateAuthority, CertificatePaths, IssuedCertificate,
};
pub use load::{load_certified_key, load_root_store, CertificateInfo, LoadedCertificate};
pub use reload::{CertificateResolver, CertificateWatcher, WatchHandle};

/// File name of the CA certificate in a certificate folder.
pub const CA_CERT_FILE: &str = "ca.pem";
/// File name of the CA private key; written with mode 0600.
pub const CA_KEY_FILE: &str = "ca-key.pem";
/// File name of the serving certificate, as in a Kubernetes TLS Secret.
pub const CERT_FILE: &str = "tls.crt";
/// File name of the serving private key; written with mode 0600.
pub const KEY_FILE: &str = "tls.key";

/// ALPN protocols the server offers, preferred first.
pub const ALPN_PROTOCOLS: [&[u8]; 2] = [b"h2", b"http/1.1"];

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("file {path} not found; create it or point the server at another certificate folder")]
    NotFound { path: PathBuf },
    #[error("failed to read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("failed to write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "{path} contains no PEM {expected}; expected a block starting with -----BEGIN {expected}"
    )]
    NotPem {
        path: PathBuf,
        expected: &'static str,
    },
    #[error("{path} is not valid PEM: {reason}")]
    InvalidPem { path: PathBuf, reason: String },
    #[error("certificate in {path} is invalid: {reason}")]
    InvalidCertificate { path: PathBuf, reason: String },
    #[error("private key in {path} is invalid or of an unsupported type: {reason}")]
    InvalidKey { path: PathBuf, reason: String },
    #[error(
        "private key {key_path} does not match the certificate {cert_path}; \
         write both files from the same issuance"
    )]
    KeyMismatch {
        cert_path: PathBuf,
        key_path: PathBuf,
    },
    #[error("found {present} without {missing}; restore {missing} or remove {present}")]
    IncompletePair { present: PathBuf, missing: PathBuf },
    #[error("{path} already exists; remove it or choose another output folder")]
    AlreadyExists { path: PathBuf },
    #[error(
        "invalid {kind} name {value:?}: expected a DNS label of lowercase letters, digits \
         and '-', starting and ending with a letter or digit, at most 63 characters"
    )]
    InvalidName { kind: &'static str, value: String },
    #[error("failed to generate the {what}: {source}")]
    Generate {
        what: &'static str,
        source: rcgen::Error,
    },
    #[error("client CA file {path} cannot verify clients: {reason}")]
    ClientCa { path: PathBuf, reason: String },
    #[error("invalid TLS configuration: {0}")]
    Config(#[from] rustls::Error),
}

/// Returns the crypto provider used for every TLS operation: rustls with
/// ring.
pub fn crypto_provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Builds the server's rustls configuration: TLS 1.2 and 1.3, ALPN `h2`
/// then `http/1.1`, the serving certificate taken from `resolver` at each
/// handshake, and with `client_ca` set, mutual TLS that rejects clients
/// without a certificate signed by that CA.
pub fn server_config(
    resolver: Arc<CertificateResolver>,
    client_ca: Option<&std::path::Path>,
) -> Result<ServerConfig, TlsError> {
    let provider = crypto_provider();
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?;
    let builder = match client_ca {
        None => builder.with_no_client_auth(),
        Some(path) => {
            let roots = load_root_store(path)?;
            let verifier =
                WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                    .build()
                    .map_err(|error| TlsError::ClientCa {
                        path: path.to_owned(),
                        reason: error.to_string(),
                    })?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder.with_cert_resolver(resolver);
    config.alpn_protocols = ALPN_PROTOCOLS.iter().map(|p| p.to_vec()).collect();
    Ok(config)
}
