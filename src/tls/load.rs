//! Loading PEM certificates and keys, with errors that name the file and
//! what is wrong with it.

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;
use rustls::{InconsistentKeys, RootCertStore};

use super::TlsError;

/// Facts about a serving certificate that the server logs and exports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertificateInfo {
    /// Serial number in lowercase hexadecimal.
    pub serial: String,
    /// End of validity (`notAfter`), in seconds since the Unix epoch.
    pub not_after: i64,
    /// End of validity in RFC 3339 form, for logs.
    pub not_after_text: String,
}

/// A certificate chain and its private key, ready for rustls.
#[derive(Clone, Debug)]
pub struct LoadedCertificate {
    pub key: Arc<CertifiedKey>,
    pub info: CertificateInfo,
}

/// Reads a certificate chain (leaf first) and its private key from PEM
/// files and checks that the key belongs to the leaf certificate.
pub fn load_certified_key(
    cert_path: &Path,
    key_path: &Path,
) -> Result<LoadedCertificate, TlsError> {
    let cert_pem = read_file(cert_path)?;
    let key_pem = read_file(key_path)?;
    parse_certified_key(&cert_pem, cert_path, &key_pem, key_path)
}

/// Parses a certificate chain and key from PEM text already read; the paths
/// are used in error messages.
pub fn parse_certified_key(
    cert_pem: &[u8],
    cert_path: &Path,
    key_pem: &[u8],
    key_path: &Path,
) -> Result<LoadedCertificate, TlsError> {
    let chain = parse_certificates(cert_pem, cert_path)?;
    let info = certificate_info(&chain[0], cert_path)?;
    let key = parse_private_key(key_pem, key_path)?;
    let provider = super::crypto_provider();
    let certified = CertifiedKey::from_der(chain, key, &provider).map_err(|error| match error {
        rustls::Error::InconsistentKeys(InconsistentKeys::KeyMismatch) => TlsError::KeyMismatch {
            cert_path: cert_path.to_owned(),
            key_path: key_path.to_owned(),
        },
        other => TlsError::InvalidKey {
            path: key_path.to_owned(),
            reason: other.to_string(),
        },
    })?;
    Ok(LoadedCertificate {
        key: Arc::new(certified),
        info,
    })
}

/// Reads the CA certificates in a PEM file into a root store, for verifying
/// client certificates.
pub fn load_root_store(path: &Path) -> Result<RootCertStore, TlsError> {
    let pem = read_file(path)?;
    let mut roots = RootCertStore::empty();
    for cert in parse_certificates(&pem, path)? {
        roots
            .add(cert)
            .map_err(|error| TlsError::InvalidCertificate {
                path: path.to_owned(),
                reason: error.to_string(),
            })?;
    }
    Ok(roots)
}

/// Reads a whole file, telling a missing file apart from other failures.
pub(crate) fn read_file(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| match source.kind() {
        std::io::ErrorKind::NotFound => TlsError::NotFound {
            path: path.to_owned(),
        },
        _ => TlsError::Read {
            path: path.to_owned(),
            source,
        },
    })
}

/// Parses every `CERTIFICATE` block; the result is never empty.
pub(crate) fn parse_certificates(
    pem: &[u8],
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let chain = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| pem_error(error, path, "CERTIFICATE"))?;
    if chain.is_empty() {
        return Err(TlsError::NotPem {
            path: path.to_owned(),
            expected: "CERTIFICATE",
        });
    }
    Ok(chain)
}

fn parse_private_key(pem: &[u8], path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_slice(pem).map_err(|error| pem_error(error, path, "PRIVATE KEY"))
}

fn pem_error(error: pem::Error, path: &Path, expected: &'static str) -> TlsError {
    match error {
        pem::Error::NoItemsFound => TlsError::NotPem {
            path: path.to_owned(),
            expected,
        },
        other => TlsError::InvalidPem {
            path: path.to_owned(),
            reason: other.to_string(),
        },
    }
}

fn certificate_info(cert: &CertificateDer<'_>, path: &Path) -> Result<CertificateInfo, TlsError> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert).map_err(|error| {
        TlsError::InvalidCertificate {
            path: path.to_owned(),
            reason: error.to_string(),
        }
    })?;
    let not_after = parsed.validity().not_after;
    Ok(CertificateInfo {
        serial: parsed.raw_serial_as_string().replace(':', ""),
        not_after: not_after.timestamp(),
        not_after_text: not_after
            .to_datetime()
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_else(|_| not_after.to_string()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn issued() -> (
        crate::tls::CertificateAuthority,
        crate::tls::IssuedCertificate,
    ) {
        let ca = crate::tls::generate_ca().expect("generate CA");
        let serving = crate::tls::generate_serving(&ca, &["localhost".to_owned()], &[])
            .expect("generate serving certificate");
        (ca, serving)
    }

    fn parse(cert: &str, key: &str) -> Result<LoadedCertificate, TlsError> {
        parse_certified_key(
            cert.as_bytes(),
            &PathBuf::from("tls.crt"),
            key.as_bytes(),
            &PathBuf::from("tls.key"),
        )
    }

    #[test]
    fn matching_pair_loads_with_future_expiry() {
        let (_, serving) = issued();
        let loaded = parse(&serving.cert_pem, &serving.key_pem).expect("load pair");
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        assert!(loaded.info.not_after > now);
        assert!(!loaded.info.serial.is_empty());
    }

    #[test]
    fn key_of_another_certificate_is_a_mismatch() {
        let (ca, serving) = issued();
        let other = crate::tls::generate_serving(&ca, &["localhost".to_owned()], &[])
            .expect("generate second certificate");
        let error = parse(&serving.cert_pem, &other.key_pem).expect_err("mismatched pair");
        assert!(matches!(error, TlsError::KeyMismatch { .. }), "{error}");
    }

    #[test]
    fn text_without_pem_blocks_is_named() {
        let (_, serving) = issued();
        let error = parse("not a certificate", &serving.key_pem).expect_err("no PEM");
        assert!(matches!(error, TlsError::NotPem { .. }), "{error}");
        assert!(error.to_string().contains("tls.crt"), "{error}");
        let error = parse(&serving.cert_pem, "").expect_err("empty key");
        assert!(error.to_string().contains("tls.key"), "{error}");
    }

    #[test]
    fn truncated_pem_is_invalid() {
        let (_, serving) = issued();
        let half = &serving.cert_pem[..serving.cert_pem.len() / 2];
        let error = parse(half, &serving.key_pem).expect_err("truncated PEM");
        assert!(matches!(error, TlsError::InvalidPem { .. }), "{error}");
    }

    #[test]
    fn missing_file_is_not_found() {
        let error = read_file(Path::new("/nonexistent/genesis-gate/tls.crt")).expect_err("missing");
        assert!(matches!(error, TlsError::NotFound { .. }), "{error}");
    }
}
