//! Certificate files: development certificates, the `certs` subcommand's
//! output, and loading errors.

mod support;

use std::net::IpAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use base64::Engine;
use genesis_gate::tls::{self, CertificateAuthority, TlsError};
use rustls::client::danger::ServerCertVerifier;
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use std::sync::Arc;
use support::serial_of_pem;
use x509_parser::extensions::GeneralName;

/// Returns the DNS names and IP addresses of the first certificate in `path`.
fn subject_alt_names(path: &Path) -> (Vec<String>, Vec<IpAddr>) {
    let der = CertificateDer::from_pem_file(path).expect("PEM certificate");
    let (_, parsed) = x509_parser::parse_x509_certificate(&der).expect("DER certificate");
    let extension = parsed
        .subject_alternative_name()
        .expect("valid extensions")
        .expect("subjectAltName present");
    let mut dns = Vec::new();
    let mut ips = Vec::new();
    for name in &extension.value.general_names {
        match name {
            GeneralName::DNSName(value) => dns.push((*value).to_owned()),
            GeneralName::IPAddress(bytes) => match bytes.len() {
                4 => ips.push(IpAddr::from(<[u8; 4]>::try_from(*bytes).expect("IPv4"))),
                16 => ips.push(IpAddr::from(<[u8; 16]>::try_from(*bytes).expect("IPv6"))),
                _ => panic!("IP address SAN of {} bytes", bytes.len()),
            },
            _ => {}
        }
    }
    (dns, ips)
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path)
        .expect("metadata")
        .permissions()
        .mode()
        & 0o777
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).expect("readable file")
}

#[test]
fn dev_certificates_are_created_for_loopback_names() {
    let dir = tempfile::tempdir().expect("temporary folder");
    let paths = tls::ensure_dev_certificates(dir.path()).expect("dev certificates");
    assert!(paths.created);
    let (dns, ips) = subject_alt_names(&paths.cert_file);
    assert_eq!(dns, vec!["localhost".to_owned()]);
    assert!(ips.contains(&"127.0.0.1".parse::<IpAddr>().expect("IPv4")));
    assert!(ips.contains(&"::1".parse::<IpAddr>().expect("IPv6")));
    tls::load_certified_key(&paths.cert_file, &paths.key_file).expect("usable pair");
}

#[test]
fn key_files_are_private() {
    let dir = tempfile::tempdir().expect("temporary folder");
    tls::ensure_dev_certificates(dir.path()).expect("dev certificates");
    assert_eq!(mode(&dir.path().join(tls::KEY_FILE)), 0o600);
    assert_eq!(mode(&dir.path().join(tls::CA_KEY_FILE)), 0o600);
    assert_eq!(mode(&dir.path().join(tls::CERT_FILE)), 0o644);
}

#[test]
fn dev_certificates_are_reused_when_present() {
    let dir = tempfile::tempdir().expect("temporary folder");
    let first = tls::ensure_dev_certificates(dir.path()).expect("first call");
    let serial = serial_of_pem(&read(&first.cert_file));
    let second = tls::ensure_dev_certificates(dir.path()).expect("second call");
    assert!(!second.created);
    assert_eq!(serial_of_pem(&read(&second.cert_file)), serial);
}

#[test]
fn existing_ca_issues_missing_serving_certificate() {
    let dir = tempfile::tempdir().expect("temporary folder");
    tls::ensure_dev_certificates(dir.path()).expect("first call");
    let ca_pem = read(&dir.path().join(tls::CA_CERT_FILE));
    std::fs::remove_file(dir.path().join(tls::CERT_FILE)).expect("remove cert");
    std::fs::remove_file(dir.path().join(tls::KEY_FILE)).expect("remove key");

    let paths = tls::ensure_dev_certificates(dir.path()).expect("second call");
    assert!(paths.created);
    assert_eq!(read(&paths.ca_file), ca_pem);
    // The new certificate chains to the CA that was kept.
    let roots = Arc::new(tls::load_root_store(&paths.ca_file).expect("root store"));
    let verifier = WebPkiServerVerifier::builder_with_provider(roots, tls::crypto_provider())
        .build()
        .expect("verifier");
    let leaf = CertificateDer::from_pem_file(&paths.cert_file).expect("leaf");
    let name = ServerName::try_from("localhost").expect("server name");
    verifier
        .verify_server_cert(&leaf, &[], &name, &[], UnixTime::now())
        .expect("serving certificate chains to the kept CA");
}

#[test]
fn half_a_serving_pair_is_an_error() {
    let dir = tempfile::tempdir().expect("temporary folder");
    tls::ensure_dev_certificates(dir.path()).expect("first call");
    std::fs::remove_file(dir.path().join(tls::KEY_FILE)).expect("remove key");
    let error = tls::ensure_dev_certificates(dir.path()).expect_err("half a pair");
    assert!(matches!(error, TlsError::IncompletePair { .. }), "{error}");
    assert!(error.to_string().contains(tls::KEY_FILE), "{error}");
}

#[test]
fn service_certificate_names_every_service_form() {
    let dir = tempfile::tempdir().expect("temporary folder");
    let out = dir.path().join("out");
    tls::create_for_service("genesis-gate", "sei-system", &out).expect("certificates");
    let (dns, ips) = subject_alt_names(&out.join(tls::CERT_FILE));
    assert_eq!(
        dns,
        vec![
            "genesis-gate",
            "genesis-gate.sei-system",
            "genesis-gate.sei-system.svc",
            "genesis-gate.sei-system.svc.cluster.local",
        ]
    );
    assert!(ips.is_empty());
}

#[test]
fn service_ca_bundle_is_base64_of_ca_pem() {
    let dir = tempfile::tempdir().expect("temporary folder");
    let bundle = tls::create_for_service("webhook", "default", dir.path()).expect("certificates");
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(bundle)
        .expect("base64");
    assert_eq!(
        decoded,
        read(&dir.path().join(tls::CA_CERT_FILE)).into_bytes()
    );
}

#[test]
fn service_certificates_never_overwrite_files() {
    let dir = tempfile::tempdir().expect("temporary folder");
    tls::create_for_service("webhook", "default", dir.path()).expect("first call");
    let ca_pem = read(&dir.path().join(tls::CA_CERT_FILE));
    let error = tls::create_for_service("webhook", "default", dir.path()).expect_err("second call");
    assert!(matches!(error, TlsError::AlreadyExists { .. }), "{error}");
    assert_eq!(read(&dir.path().join(tls::CA_CERT_FILE)), ca_pem);
}

#[test]
fn service_name_must_be_a_dns_label() {
    let dir = tempfile::tempdir().expect("temporary folder");
    let error = tls::create_for_service("Web_Hook", "default", dir.path()).expect_err("bad name");
    assert!(matches!(error, TlsError::InvalidName { .. }), "{error}");
    assert!(error.to_string().contains("Web_Hook"), "{error}");
}

#[test]
fn ca_with_foreign_key_is_a_mismatch() {
    let dir = tempfile::tempdir().expect("temporary folder");
    tls::ensure_dev_certificates(dir.path()).expect("dev certificates");
    let other = tls::generate_ca().expect("other CA");
    std::fs::write(dir.path().join(tls::CA_KEY_FILE), other.key_pem()).expect("swap key");
    let error = CertificateAuthority::load(dir.path())
        .err()
        .expect("mismatched CA");
    assert!(matches!(error, TlsError::KeyMismatch { .. }), "{error}");
    assert!(error.to_string().contains(tls::CA_KEY_FILE), "{error}");
}

#[test]
fn missing_certificate_file_is_named() {
    let dir = tempfile::tempdir().expect("temporary folder");
    let cert = dir.path().join(tls::CERT_FILE);
    let error =
        tls::load_certified_key(&cert, &dir.path().join(tls::KEY_FILE)).expect_err("missing files");
    assert!(matches!(error, TlsError::NotFound { .. }), "{error}");
    assert!(
        error.to_string().contains(&*cert.to_string_lossy()),
        "{error}"
    );
}
