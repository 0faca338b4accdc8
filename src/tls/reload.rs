//! Swapping the serving certificate while the server runs.
//!
//! [`CertificateResolver`] hands rustls the current certificate at each
//! handshake. [`CertificateWatcher`] rereads the files when their folder
//! changes and, as a fallback, at a fixed interval. Watching the folder
//! rather than the files matters for a mounted Secret: the kubelet writes
//! a new timestamped folder and renames a `..data` symlink over the old
//! one, so the files themselves never see a write.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use notify::event::{AccessKind, AccessMode};
use notify::{EventKind, RecommendedWatcher, RecursiveMode, Watcher};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use super::load::{parse_certified_key, CertificateInfo, LoadedCertificate};
use super::TlsError;
use crate::metrics::Metrics;

/// Time to wait after a change in the folder before rereading, so that a
/// writer can finish the second file of the pair.
const SETTLE_DELAY: Duration = Duration::from_millis(200);
/// How long before `notAfter` the watcher starts warning.
const EXPIRY_WARNING: Duration = Duration::from_secs(7 * 24 * 3600);

/// The serving certificate that rustls presents, replaceable at any time.
/// A handshake uses the certificate current when it starts.
pub struct CertificateResolver {
    current: ArcSwap<CertifiedKey>,
}

impl CertificateResolver {
    pub fn new(key: Arc<CertifiedKey>) -> CertificateResolver {
        CertificateResolver {
            current: ArcSwap::new(key),
        }
    }

    pub fn current(&self) -> Arc<CertifiedKey> {
        self.current.load_full()
    }

    pub fn replace(&self, key: Arc<CertifiedKey>) {
        self.current.store(key);
    }
}

impl fmt::Debug for CertificateResolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertificateResolver")
            .finish_non_exhaustive()
    }
}

impl ResolvesServerCert for CertificateResolver {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

/// Keeps a [`CertificateResolver`] in step with a certificate and key file.
pub struct CertificateWatcher {
    cert_path: PathBuf,
    key_path: PathBuf,
    resolver: Arc<CertificateResolver>,
    metrics: Arc<Metrics>,
    /// Contents of the certificate and key files in use.
    loaded: (Vec<u8>, Vec<u8>),
    info: CertificateInfo,
    /// The last rejected contents and the reason, so that a bad pair that
    /// stays in place is logged and counted once rather than at every poll.
    last_failure: Option<(Vec<u8>, Vec<u8>, String)>,
    expiry_warned: bool,
}

/// Stops the watcher when dropped.
pub struct WatchHandle {
    _watcher: Option<RecommendedWatcher>,
    task: JoinHandle<()>,
}

impl Drop for WatchHandle {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl CertificateWatcher {
    /// Loads the pair the server starts with. Unlike a reload, a failure
    /// here is an error, since there is no previous certificate to keep.
    pub fn load(
        cert_path: &Path,
        key_path: &Path,
        metrics: Arc<Metrics>,
    ) -> Result<CertificateWatcher, TlsError> {
        let cert_pem = super::load::read_file(cert_path)?;
        let key_pem = super::load::read_file(key_path)?;
        let loaded = parse_certified_key(&cert_pem, cert_path, &key_pem, key_path)?;
        let mut watcher = CertificateWatcher {
            cert_path: cert_path.to_owned(),
            key_path: key_path.to_owned(),
            resolver: Arc::new(CertificateResolver::new(loaded.key.clone())),
            metrics,
            loaded: (cert_pem, key_pem),
            info: loaded.info.clone(),
            last_failure: None,
            expiry_warned: false,
        };
        watcher.install(loaded);
        Ok(watcher)
    }

    pub fn resolver(&self) -> Arc<CertificateResolver> {
        self.resolver.clone()
    }

    /// Returns the certificate in use.
    pub fn info(&self) -> &CertificateInfo {
        &self.info
    }

    /// Rereads both files and swaps in the new pair when the contents
    /// changed and form a valid pair. Returns whether it swapped; a pair
    /// that fails to load is logged and the one in use is kept.
    pub async fn check(&mut self) -> bool {
        let contents = match self.read_pair().await {
            Ok(contents) => contents,
            Err(error) => {
                self.reject(Vec::new(), Vec::new(), error);
                return false;
            }
        };
        if contents == self.loaded {
            self.last_failure = None;
            return false;
        }
        let (cert_pem, key_pem) = contents;
        match parse_certified_key(&cert_pem, &self.cert_path, &key_pem, &self.key_path) {
            Ok(loaded) => {
                self.resolver.replace(loaded.key.clone());
                self.install(loaded);
                self.loaded = (cert_pem, key_pem);
                self.last_failure = None;
                self.metrics.record_certificate_reload(true);
                true
            }
            Err(error) => {
                self.reject(cert_pem, key_pem, error);
                false
            }
        }
    }

    /// Starts watching the folders of both files, and polling every
    /// `poll_interval` in case a change event is missed or the watch cannot
    /// be set up. Must be called within a Tokio runtime.
    pub fn spawn(mut self, poll_interval: Duration) -> WatchHandle {
        let (changed_tx, mut changed_rx) = mpsc::channel::<()>(1);
        let watcher = self.watch_folders(changed_tx);
        let task = tokio::spawn(async move {
            let mut poll = tokio::time::interval(poll_interval);
            poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            poll.tick().await;
            loop {
                tokio::select! {
                    _ = poll.tick() => {}
                    Some(()) = changed_rx.recv() => {
                        tokio::time::sleep(SETTLE_DELAY).await;
                        while changed_rx.try_recv().is_ok() {}
                    }
                }
                self.check().await;
                self.warn_if_expiring();
            }
        });
        WatchHandle {
            _watcher: watcher,
            task,
        }
    }

    fn watch_folders(&self, changed: mpsc::Sender<()>) -> Option<RecommendedWatcher> {
        let handler = move |event: notify::Result<notify::Event>| match event {
            Ok(event) if is_change(&event.kind) => {
                // A full channel already contains a pending reread.
                let _ = changed.try_send(());
            }
            Ok(_) => {}
            Err(error) => debug!(%error, "certificate folder watch reported an error"),
        };
        let mut folders = vec![
            parent_folder(&self.cert_path),
            parent_folder(&self.key_path),
        ];
        folders.dedup();
        let result = notify::recommended_watcher(handler).and_then(|mut watcher| {
            for folder in &folders {
                watcher.watch(folder, RecursiveMode::NonRecursive)?;
            }
            Ok(watcher)
        });
        match result {
            Ok(watcher) => Some(watcher),
            Err(error) => {
                warn!(
                    %error,
                    folders = ?folders,
                    "failed to watch the certificate folder; relying on polling alone"
                );
                None
            }
        }
    }

    async fn read_pair(&self) -> Result<(Vec<u8>, Vec<u8>), TlsError> {
        let cert_pem = read_file(&self.cert_path).await?;
        let key_pem = read_file(&self.key_path).await?;
        Ok((cert_pem, key_pem))
    }

    fn install(&mut self, loaded: LoadedCertificate) {
        self.metrics.set_certificate_expiry(loaded.info.not_after);
        info!(
            serial = %loaded.info.serial,
            not_after = %loaded.info.not_after_text,
            cert = %self.cert_path.display(),
            "serving certificate loaded"
        );
        self.info = loaded.info;
        self.expiry_warned = false;
        self.warn_if_expiring();
    }

    fn reject(&mut self, cert_pem: Vec<u8>, key_pem: Vec<u8>, error: TlsError) {
        let failure = (cert_pem, key_pem, error.to_string());
        if self.last_failure.as_ref() == Some(&failure) {
            return;
        }
        warn!(
            %error,
            serial = %self.info.serial,
            "failed to reload the serving certificate; keeping the one in use"
        );
        self.metrics.record_certificate_reload(false);
        self.last_failure = Some(failure);
    }

    fn warn_if_expiring(&mut self) {
        if self.expiry_warned {
            return;
        }
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        match expiry(self.info.not_after, now) {
            Expiry::Valid => return,
            Expiry::Expired => warn!(
                serial = %self.info.serial,
                not_after = %self.info.not_after_text,
                "serving certificate has expired; replace it, since clients reject it"
            ),
            Expiry::Soon { remaining_hours } => warn!(
                serial = %self.info.serial,
                not_after = %self.info.not_after_text,
                remaining_hours,
                "serving certificate expires within 7 days; renew it"
            ),
        }
        self.expiry_warned = true;
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Expiry {
    Valid,
    Soon { remaining_hours: i64 },
    Expired,
}

/// Classifies a certificate's `notAfter` against `now`, both in Unix seconds.
fn expiry(not_after: i64, now: i64) -> Expiry {
    let remaining = not_after.saturating_sub(now);
    if remaining <= 0 {
        Expiry::Expired
    } else if remaining <= EXPIRY_WARNING.as_secs() as i64 {
        Expiry::Soon {
            remaining_hours: remaining / 3600,
        }
    } else {
        Expiry::Valid
    }
}

async fn read_file(path: &Path) -> Result<Vec<u8>, TlsError> {
    tokio::fs::read(path)
        .await
        .map_err(|source| match source.kind() {
            std::io::ErrorKind::NotFound => TlsError::NotFound {
                path: path.to_owned(),
            },
            _ => TlsError::Read {
                path: path.to_owned(),
                source,
            },
        })
}

/// Returns whether an event may have changed a file's contents; reads,
/// including our own, are not changes.
fn is_change(kind: &EventKind) -> bool {
    match kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        EventKind::Access(_) => false,
        _ => true,
    }
}

fn parent_folder(path: &Path) -> PathBuf {
    match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent.to_owned(),
        _ => PathBuf::from("."),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: i64 = 24 * 3600;

    #[test]
    fn expiry_beyond_seven_days_is_valid() {
        assert_eq!(expiry(100 * DAY, 92 * DAY), Expiry::Valid);
    }

    #[test]
    fn expiry_within_seven_days_is_soon() {
        assert_eq!(
            expiry(100 * DAY, 98 * DAY),
            Expiry::Soon {
                remaining_hours: 48
            }
        );
        assert_eq!(
            expiry(100 * DAY, 93 * DAY),
            Expiry::Soon {
                remaining_hours: 168
            }
        );
    }

    #[test]
    fn expiry_in_the_past_is_expired() {
        assert_eq!(expiry(100 * DAY, 100 * DAY), Expiry::Expired);
        assert_eq!(expiry(100 * DAY, 101 * DAY), Expiry::Expired);
    }

    #[test]
    fn folder_events_other_than_reads_are_changes() {
        use notify::event::{CreateKind, ModifyKind, RenameMode};
        assert!(is_change(&EventKind::Create(CreateKind::Any)));
        assert!(is_change(&EventKind::Modify(ModifyKind::Name(
            RenameMode::Both
        ))));
        assert!(is_change(&EventKind::Access(AccessKind::Close(
            AccessMode::Write
        ))));
        assert!(!is_change(&EventKind::Access(AccessKind::Open(
            AccessMode::Any
        ))));
    }

    #[test]
    fn parent_of_bare_file_name_is_current_folder() {
        assert_eq!(parent_folder(Path::new("tls.crt")), PathBuf::from("."));
        assert_eq!(
            parent_folder(Path::new("/certs/tls.crt")),
            PathBuf::from("/certs")
        );
    }
}
