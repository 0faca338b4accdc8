//! Helpers for tests that run the HTTPS server: a server on a free loopback
//! port with a fresh CA ([`server`]), a client that trusts only that CA
//! ([`client`]), and `Reviewer` test doubles ([`reviewer`]). [`recorded`]
//! reads the recorded AdmissionReviews and parses the responses, and
//! [`binary`] runs the built binary.
//!
//! Each test binary uses a different part of these helpers.
#![allow(dead_code)]

pub mod binary;
pub mod client;
pub mod recorded;
pub mod reviewer;
pub mod server;

use std::future::Future;
use std::time::Duration;

/// Upper bound for any single wait in a test, so that a hang fails the test
/// instead of stalling the run.
pub const WAIT_LIMIT: Duration = Duration::from_secs(20);

/// Polls `condition` every 20 ms until it returns true or `WAIT_LIMIT`
/// passes, and returns whether it did.
pub async fn eventually<F, Fut>(mut condition: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + WAIT_LIMIT;
    while tokio::time::Instant::now() < deadline {
        if condition().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

/// Returns the value of a sample in OpenMetrics text, such as
/// `genesis_gate_tls_handshake_failures_total`, or 0 when it is absent.
pub fn metric_value(text: &str, sample: &str) -> f64 {
    text.lines()
        .filter_map(|line| line.strip_prefix(sample))
        .filter_map(|rest| rest.strip_prefix(' '))
        .filter_map(|value| value.trim().parse().ok())
        .next()
        .unwrap_or(0.0)
}

/// Returns the serial number, in lowercase hex, of the first certificate in
/// a PEM text.
pub fn serial_of_pem(pem: &str) -> String {
    use rustls::pki_types::{pem::PemObject, CertificateDer};
    let der = CertificateDer::from_pem_slice(pem.as_bytes()).expect("PEM certificate");
    serial_of_der(&der)
}

/// Returns the serial number, in lowercase hex, of a DER certificate.
pub fn serial_of_der(der: &[u8]) -> String {
    let (_, parsed) = x509_parser::parse_x509_certificate(der).expect("DER certificate");
    parsed.raw_serial_as_string().replace(':', "")
}
