//! Creating a CA and the certificates it signs, and writing them as PEM.
//!
//! Keys are ECDSA P-256. A certificate without an explicit serial number
//! gets one that rcgen derives from its public key, and every issuance
//! generates a new key, so serial numbers differ between issuances.

use std::fs;
use std::io::Write;
use std::net::IpAddr;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use base64::Engine;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use time::{Duration, OffsetDateTime};
use tracing::info;

use super::{TlsError, CA_CERT_FILE, CA_KEY_FILE, CERT_FILE, KEY_FILE};

const CA_VALIDITY: Duration = Duration::days(3650);
const LEAF_VALIDITY: Duration = Duration::days(365);
/// Backdating of `notBefore`, so that a peer whose clock runs slightly
/// behind accepts a certificate issued a moment ago.
const CLOCK_SKEW: Duration = Duration::hours(1);

/// A CA certificate with its signing key.
pub struct CertificateAuthority {
    cert_pem: String,
    key_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

/// A certificate signed by a [`CertificateAuthority`], with its private key.
#[derive(Clone, Debug)]
pub struct IssuedCertificate {
    pub cert_pem: String,
    pub key_pem: String,
}

/// Locations of the files in a certificate folder.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertificatePaths {
    pub ca_file: PathBuf,
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    /// `true` when this call issued the serving certificate, `false` when it
    /// reused the files it found.
    pub created: bool,
}

impl CertificatePaths {
    fn in_dir(dir: &Path, created: bool) -> CertificatePaths {
        CertificatePaths {
            ca_file: dir.join(CA_CERT_FILE),
            cert_file: dir.join(CERT_FILE),
            key_file: dir.join(KEY_FILE),
            created,
        }
    }
}

impl CertificateAuthority {
    /// Parses a CA from its PEM certificate and key, checking that the key
    /// belongs to the certificate. The paths are used in error messages.
    pub fn from_pem(
        cert_pem: &str,
        cert_path: &Path,
        key_pem: &str,
        key_path: &Path,
    ) -> Result<CertificateAuthority, TlsError> {
        let key = KeyPair::from_pem(key_pem).map_err(|error| TlsError::InvalidKey {
            path: key_path.to_owned(),
            reason: error.to_string(),
        })?;
        let cert_der =
            super::load::parse_certificates(cert_pem.as_bytes(), cert_path)?.swap_remove(0);
        let (_, parsed) = x509_parser::parse_x509_certificate(&cert_der).map_err(|error| {
            TlsError::InvalidCertificate {
                path: cert_path.to_owned(),
                reason: error.to_string(),
            }
        })?;
        if parsed.public_key().subject_public_key.data.as_ref() != key.public_key_raw() {
            return Err(TlsError::KeyMismatch {
                cert_path: cert_path.to_owned(),
                key_path: key_path.to_owned(),
            });
        }
        let issuer = Issuer::from_ca_cert_der(&cert_der, key).map_err(|error| {
            TlsError::InvalidCertificate {
                path: cert_path.to_owned(),
                reason: error.to_string(),
            }
        })?;
        Ok(CertificateAuthority {
            cert_pem: cert_pem.to_owned(),
            key_pem: key_pem.to_owned(),
            issuer,
        })
    }

    /// Reads `ca.pem` and `ca-key.pem` from `dir`.
    pub fn load(dir: &Path) -> Result<CertificateAuthority, TlsError> {
        let cert_path = dir.join(CA_CERT_FILE);
        let key_path = dir.join(CA_KEY_FILE);
        let cert_pem = read_text(&cert_path)?;
        let key_pem = read_text(&key_path)?;
        CertificateAuthority::from_pem(&cert_pem, &cert_path, &key_pem, &key_path)
    }

    /// Writes `ca.pem` and `ca-key.pem` (mode 0600) into `dir`.
    pub fn write(&self, dir: &Path) -> Result<(), TlsError> {
        write_file(&dir.join(CA_CERT_FILE), &self.cert_pem, false)?;
        write_file(&dir.join(CA_KEY_FILE), &self.key_pem, true)
    }

    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    pub fn key_pem(&self) -> &str {
        &self.key_pem
    }

    /// Returns the CA certificate as a webhook configuration's `caBundle`:
    /// the PEM text, base64-encoded.
    pub fn ca_bundle(&self) -> String {
        base64::engine::general_purpose::STANDARD.encode(self.cert_pem.as_bytes())
    }

    fn issue(
        &self,
        mut params: CertificateParams,
        what: &'static str,
    ) -> Result<IssuedCertificate, TlsError> {
        let generate = |source| TlsError::Generate { what, source };
        let key = KeyPair::generate().map_err(generate)?;
        params.is_ca = IsCa::NoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.use_authority_key_identifier_extension = true;
        set_validity(&mut params, LEAF_VALIDITY);
        let cert = params.signed_by(&key, &self.issuer).map_err(generate)?;
        Ok(IssuedCertificate {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}

impl IssuedCertificate {
    /// Writes `tls.crt` and `tls.key` (mode 0600) into `dir`. Each file is
    /// replaced by a rename, so a reader sees the old or the new content of
    /// a file, never a partial one. The two renames are separate steps, so a
    /// reader may see a new certificate with the old key in between.
    pub fn write(&self, dir: &Path) -> Result<(), TlsError> {
        write_file(&dir.join(CERT_FILE), &self.cert_pem, false)?;
        write_file(&dir.join(KEY_FILE), &self.key_pem, true)
    }
}

/// Creates a self-signed CA valid for ten years.
pub fn generate_ca() -> Result<CertificateAuthority, TlsError> {
    let generate = |source| TlsError::Generate {
        what: "CA certificate",
        source,
    };
    let key = KeyPair::generate().map_err(generate)?;
    let mut params = CertificateParams::default();
    params.distinguished_name = common_name("genesis-gate CA");
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    set_validity(&mut params, CA_VALIDITY);
    let cert = params.self_signed(&key).map_err(generate)?;
    let key_pem = key.serialize_pem();
    Ok(CertificateAuthority {
        cert_pem: cert.pem(),
        key_pem,
        issuer: Issuer::new(params, key),
    })
}

/// Issues a serving certificate valid for one year with the given subject
/// alternative names. The common name is the first DNS name.
pub fn generate_serving(
    ca: &CertificateAuthority,
    dns_names: &[String],
    ip_addresses: &[IpAddr],
) -> Result<IssuedCertificate, TlsError> {
    let mut params = CertificateParams::default();
    for name in dns_names {
        let ia5 = name
            .as_str()
            .try_into()
            .map_err(|source| TlsError::Generate {
                what: "serving certificate",
                source,
            })?;
        params.subject_alt_names.push(SanType::DnsName(ia5));
    }
    params
        .subject_alt_names
        .extend(ip_addresses.iter().copied().map(SanType::IpAddress));
    let subject = dns_names.first().map_or("genesis-gate", String::as_str);
    params.distinguished_name = common_name(subject);
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    ca.issue(params, "serving certificate")
}

/// Issues a client certificate for mutual TLS, valid for one year, with
/// `name` as its common name.
pub fn generate_client(
    ca: &CertificateAuthority,
    name: &str,
) -> Result<IssuedCertificate, TlsError> {
    let mut params = CertificateParams::default();
    params.distinguished_name = common_name(name);
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    ca.issue(params, "client certificate")
}

/// Makes sure `dir` contains a serving certificate for local development, with
/// the names `localhost`, `127.0.0.1` and `::1`.
///
/// An existing `tls.crt` and `tls.key` pair is reused as it is. Without
/// one, the CA in `ca.pem` and `ca-key.pem` issues it, and without those a
/// new CA is created first. Half a pair is an error rather than something
/// to overwrite, since the other half may be in use elsewhere.
pub fn ensure_dev_certificates(dir: &Path) -> Result<CertificatePaths, TlsError> {
    if pair_exists(&dir.join(CERT_FILE), &dir.join(KEY_FILE))? {
        return Ok(CertificatePaths::in_dir(dir, false));
    }
    create_dir(dir)?;
    let ca = if pair_exists(&dir.join(CA_CERT_FILE), &dir.join(CA_KEY_FILE))? {
        CertificateAuthority::load(dir)?
    } else {
        let ca = generate_ca()?;
        ca.write(dir)?;
        ca
    };
    let loopback: [IpAddr; 2] = [
        IpAddr::from([127, 0, 0, 1]),
        IpAddr::from(std::net::Ipv6Addr::LOCALHOST),
    ];
    generate_serving(&ca, &["localhost".to_owned()], &loopback)?.write(dir)?;
    info!(dir = %dir.display(), "created development certificate");
    Ok(CertificatePaths::in_dir(dir, true))
}

/// Creates a CA and a serving certificate for the Service `service` in
/// `namespace` in `out_dir`, and returns the `caBundle` for the webhook
/// configuration.
///
/// The names are `<service>`, `<service>.<namespace>`,
/// `<service>.<namespace>.svc` and `<service>.<namespace>.svc.cluster.local`.
/// Existing files are never overwritten, because the CA they hold may be in
/// a deployed `caBundle`.
pub fn create_for_service(
    service: &str,
    namespace: &str,
    out_dir: &Path,
) -> Result<String, TlsError> {
    check_dns_label("service", service)?;
    check_dns_label("namespace", namespace)?;
    for name in [CA_CERT_FILE, CA_KEY_FILE, CERT_FILE, KEY_FILE] {
        let path = out_dir.join(name);
        if exists(&path)? {
            return Err(TlsError::AlreadyExists { path });
        }
    }
    let dns_names = vec![
        service.to_owned(),
        format!("{service}.{namespace}"),
        format!("{service}.{namespace}.svc"),
        format!("{service}.{namespace}.svc.cluster.local"),
    ];
    create_dir(out_dir)?;
    let ca = generate_ca()?;
    ca.write(out_dir)?;
    generate_serving(&ca, &dns_names, &[])?.write(out_dir)?;
    Ok(ca.ca_bundle())
}

/// Checks an RFC 1123 label, the form of Service and namespace names.
fn check_dns_label(kind: &'static str, value: &str) -> Result<(), TlsError> {
    let bytes = value.as_bytes();
    let allowed = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-';
    let valid = !bytes.is_empty()
        && bytes.len() <= 63
        && bytes.iter().all(allowed)
        && bytes.first() != Some(&b'-')
        && bytes.last() != Some(&b'-');
    if valid {
        Ok(())
    } else {
        Err(TlsError::InvalidName {
            kind,
            value: value.to_owned(),
        })
    }
}

fn common_name(name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, name);
    dn
}

fn set_validity(params: &mut CertificateParams, validity: Duration) {
    let now = OffsetDateTime::now_utc();
    params.not_before = now - CLOCK_SKEW;
    params.not_after = now + validity;
}

/// Returns whether both files of a pair exist, and fails when only one does.
fn pair_exists(first: &Path, second: &Path) -> Result<bool, TlsError> {
    match (exists(first)?, exists(second)?) {
        (true, true) => Ok(true),
        (false, false) => Ok(false),
        (true, false) => Err(TlsError::IncompletePair {
            present: first.to_owned(),
            missing: second.to_owned(),
        }),
        (false, true) => Err(TlsError::IncompletePair {
            present: second.to_owned(),
            missing: first.to_owned(),
        }),
    }
}

fn exists(path: &Path) -> Result<bool, TlsError> {
    path.try_exists().map_err(|source| TlsError::Read {
        path: path.to_owned(),
        source,
    })
}

fn create_dir(dir: &Path) -> Result<(), TlsError> {
    fs::create_dir_all(dir).map_err(|source| TlsError::Write {
        path: dir.to_owned(),
        source,
    })
}

fn read_text(path: &Path) -> Result<String, TlsError> {
    let bytes = super::load::read_file(path)?;
    String::from_utf8(bytes).map_err(|_| TlsError::InvalidPem {
        path: path.to_owned(),
        reason: "the file is not UTF-8 text".to_owned(),
    })
}

/// Writes `contents` to a temporary file beside `path` and renames it over
/// `path`, so that a reader never sees a partly written file.
fn write_file(path: &Path, contents: &str, private: bool) -> Result<(), TlsError> {
    let error = |source| TlsError::Write {
        path: path.to_owned(),
        source,
    };
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy())
        .unwrap_or_default();
    let temporary = path.with_file_name(format!(".{file_name}.tmp"));
    match fs::remove_file(&temporary) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(error(e)),
        _ => {}
    }
    let mode = if private { 0o600 } else { 0o644 };
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&temporary)
        .map_err(error)?;
    // The umask may have cleared bits of `mode`; set it exactly.
    file.set_permissions(fs::Permissions::from_mode(mode))
        .map_err(error)?;
    file.write_all(contents.as_bytes()).map_err(error)?;
    file.sync_all().map_err(error)?;
    fs::rename(&temporary, path).map_err(error)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dns_label_accepts_service_names() {
        assert!(check_dns_label("service", "genesis-gate").is_ok());
        assert!(check_dns_label("service", "a1").is_ok());
    }

    #[test]
    fn dns_label_rejects_invalid_names() {
        for name in ["", "-a", "a-", "Upper", "a.b", "a_b", &"a".repeat(64)] {
            assert!(
                check_dns_label("service", name).is_err(),
                "accepted {name:?}"
            );
        }
    }
}
