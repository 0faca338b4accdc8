//! Serving certificate rotation while clients keep sending requests.

mod support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use genesis_gate::tls::{self, CertificateAuthority, IssuedCertificate};
use http::StatusCode;
use rustls::ClientConfig;
use support::client::{Connection, Protocol};
use support::reviewer::{review_request, EchoReviewer};
use support::server::TestServer;
use support::{eventually, metric_value, serial_of_pem};
use tokio::task::JoinHandle;

/// Upper bounds for the background traffic, whichever comes first.
const MAX_ROUNDS: usize = 2000;
const MAX_TRAFFIC_TIME: Duration = Duration::from_secs(60);

/// The serial a request saw, or why it failed.
type Outcome = Result<String, String>;

/// Requests sent in the background until stopped: each round opens a new
/// connection, whose handshake shows the certificate in use, and also sends
/// a request on one connection kept alive from the start.
struct Traffic {
    outcomes: Arc<Mutex<Vec<Outcome>>>,
    stop: Arc<AtomicBool>,
    task: JoinHandle<()>,
}

impl Traffic {
    async fn start(addr: SocketAddr, config: Arc<ClientConfig>) -> Traffic {
        let outcomes = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let mut kept = Connection::open(addr, config.clone(), Protocol::Http1)
            .await
            .expect("kept-alive connection");
        let task = tokio::spawn({
            let outcomes = outcomes.clone();
            let stop = stop.clone();
            async move {
                let deadline = tokio::time::Instant::now() + MAX_TRAFFIC_TIME;
                for round in 0..MAX_ROUNDS {
                    if stop.load(Ordering::SeqCst) || tokio::time::Instant::now() > deadline {
                        break;
                    }
                    let fresh = fresh_request(addr, config.clone(), round).await;
                    let on_kept = request(&mut kept, round).await;
                    {
                        let mut outcomes = outcomes.lock().expect("outcomes");
                        outcomes.push(fresh);
                        outcomes.push(on_kept.map(|()| String::new()));
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        });
        Traffic {
            outcomes,
            stop,
            task,
        }
    }

    fn count(&self) -> usize {
        self.outcomes.lock().expect("outcomes").len()
    }

    /// Returns whether the latest new connection was served `serial`.
    fn latest_serial_is(&self, serial: &str) -> bool {
        let outcomes = self.outcomes.lock().expect("outcomes");
        let latest = outcomes
            .iter()
            .rev()
            .find_map(|o| o.as_ref().ok().filter(|s| !s.is_empty()));
        latest.is_some_and(|latest| latest == serial)
    }

    /// Waits for `rounds` more rounds of requests.
    async fn run_rounds(&self, rounds: usize) -> bool {
        let target = self.count() + 2 * rounds;
        eventually(|| {
            let reached = self.count() >= target;
            async move { reached }
        })
        .await
    }

    async fn finish(self) -> Vec<Outcome> {
        self.stop.store(true, Ordering::SeqCst);
        tokio::time::timeout(support::WAIT_LIMIT, self.task)
            .await
            .expect("traffic stops")
            .expect("traffic task");
        Arc::try_unwrap(self.outcomes)
            .expect("traffic task ended")
            .into_inner()
            .expect("outcomes")
    }
}

async fn fresh_request(addr: SocketAddr, config: Arc<ClientConfig>, round: usize) -> Outcome {
    let mut connection = Connection::open(addr, config, Protocol::Http1)
        .await
        .map_err(|error| format!("round {round}: connect failed: {error}"))?;
    request(&mut connection, round).await?;
    Ok(connection.serial())
}

async fn request(connection: &mut Connection, round: usize) -> Result<(), String> {
    let response = connection
        .post("/validate", "application/json", review_request("rotation"))
        .await
        .map_err(|error| format!("round {round}: request failed: {error}"))?;
    if response.status != StatusCode::OK {
        return Err(format!("round {round}: status {}", response.status));
    }
    Ok(())
}

fn new_serving_certificate(ca: &CertificateAuthority) -> IssuedCertificate {
    tls::generate_serving(ca, &["localhost".to_owned()], &[]).expect("serving certificate")
}

fn failures(outcomes: &[Outcome]) -> Vec<&String> {
    outcomes.iter().filter_map(|o| o.as_ref().err()).collect()
}

/// A Secret volume laid out as the kubelet does: the files live in a
/// timestamped folder, `..data` is a symlink to it, and `tls.crt` and
/// `tls.key` are symlinks into `..data`. An update writes a new folder and
/// renames a `..data_tmp` symlink over `..data`.
struct SecretVolume {
    dir: PathBuf,
    generation: u32,
}

impl SecretVolume {
    fn create(dir: &Path, pair: &IssuedCertificate) -> SecretVolume {
        std::fs::create_dir_all(dir).expect("volume folder");
        let mut volume = SecretVolume {
            dir: dir.to_owned(),
            generation: 0,
        };
        volume.update(pair);
        for name in [tls::CERT_FILE, tls::KEY_FILE] {
            std::os::unix::fs::symlink(format!("..data/{name}"), dir.join(name)).expect("link");
        }
        volume
    }

    fn generation_folder(&self, generation: u32) -> String {
        format!("..2026_01_01_00_00_{generation:02}.000000001")
    }

    fn update(&mut self, pair: &IssuedCertificate) {
        let previous = self.generation_folder(self.generation);
        self.generation += 1;
        let current = self.generation_folder(self.generation);
        let folder = self.dir.join(&current);
        std::fs::create_dir(&folder).expect("generation folder");
        std::fs::write(folder.join(tls::CERT_FILE), &pair.cert_pem).expect("write cert");
        std::fs::write(folder.join(tls::KEY_FILE), &pair.key_pem).expect("write key");
        let staged = self.dir.join("..data_tmp");
        std::os::unix::fs::symlink(&current, &staged).expect("staged link");
        std::fs::rename(&staged, self.dir.join("..data")).expect("swap ..data");
        let old = self.dir.join(previous);
        if old.exists() {
            std::fs::remove_dir_all(old).expect("remove old generation");
        }
    }
}

#[tokio::test]
async fn in_place_rewrite_is_served_without_failed_requests() {
    let server = TestServer::start(Arc::new(EchoReviewer::ready())).await;
    let cert_file = server.dir().join(tls::CERT_FILE);
    let old_serial = serial_of_pem(&std::fs::read_to_string(&cert_file).expect("cert"));
    let traffic = Traffic::start(server.addr, server.client_config(Protocol::Http1)).await;
    assert!(traffic.run_rounds(3).await, "no traffic before rotation");
    assert!(traffic.latest_serial_is(&old_serial));

    // Plain truncating writes, one file after the other, so the server may
    // see a half-written or mismatched pair in between.
    let new = new_serving_certificate(&server.ca());
    std::fs::write(&cert_file, &new.cert_pem).expect("rewrite cert");
    std::fs::write(server.dir().join(tls::KEY_FILE), &new.key_pem).expect("rewrite key");
    let new_serial = serial_of_pem(&new.cert_pem);

    let rotated = eventually(|| {
        let seen = traffic.latest_serial_is(&new_serial);
        async move { seen }
    })
    .await;
    assert!(rotated, "new certificate {new_serial} was never served");
    assert!(
        traffic.run_rounds(3).await,
        "traffic stopped after rotation"
    );
    let outcomes = traffic.finish().await;
    assert_eq!(failures(&outcomes), Vec::<&String>::new());
}

#[tokio::test]
async fn kubelet_symlink_swap_is_served_without_failed_requests() {
    let mut volume = None;
    let server = TestServer::start_with(Arc::new(EchoReviewer::ready()), |options, dir| {
        let ca = CertificateAuthority::load(dir).expect("CA");
        let secret = dir.join("secret");
        volume = Some(SecretVolume::create(&secret, &new_serving_certificate(&ca)));
        options.cert_file = secret.join(tls::CERT_FILE);
        options.key_file = secret.join(tls::KEY_FILE);
        // Only a change event can trigger the reload within the test.
        options.cert_poll_interval = Duration::from_secs(3600);
    })
    .await;
    let mut volume = volume.expect("secret volume");
    let traffic = Traffic::start(server.addr, server.client_config(Protocol::Http1)).await;
    assert!(traffic.run_rounds(3).await, "no traffic before rotation");

    let new = new_serving_certificate(&server.ca());
    volume.update(&new);
    let new_serial = serial_of_pem(&new.cert_pem);

    let rotated = eventually(|| {
        let seen = traffic.latest_serial_is(&new_serial);
        async move { seen }
    })
    .await;
    assert!(rotated, "new certificate {new_serial} was never served");
    assert!(
        traffic.run_rounds(3).await,
        "traffic stopped after rotation"
    );
    let outcomes = traffic.finish().await;
    assert_eq!(failures(&outcomes), Vec::<&String>::new());
}

#[tokio::test]
async fn invalid_pair_is_rejected_and_old_certificate_kept() {
    let server = TestServer::start(Arc::new(EchoReviewer::ready())).await;
    let cert_file = server.dir().join(tls::CERT_FILE);
    let old_serial = serial_of_pem(&std::fs::read_to_string(&cert_file).expect("cert"));

    std::fs::write(&cert_file, "-----BEGIN CERTIFICATE-----\ntruncated").expect("corrupt cert");
    let metrics = server.metrics.clone();
    let rejected = eventually(|| {
        let text = metrics.encode();
        async move {
            let sample = r#"genesis_gate_certificate_reloads_total{outcome="failure"}"#;
            metric_value(&text, sample) >= 1.0
        }
    })
    .await;
    assert!(
        rejected,
        "corrupt certificate was not reported as a failed reload"
    );
    let connection = server.connect(Protocol::Http1).await;
    assert_eq!(connection.serial(), old_serial);

    // A valid pair written afterwards is picked up again.
    let new = new_serving_certificate(&server.ca());
    new.write(server.dir()).expect("write new pair");
    let new_serial = serial_of_pem(&new.cert_pem);
    let addr = server.addr;
    let config = server.client_config(Protocol::Http1);
    let recovered = eventually(|| {
        let config = config.clone();
        let new_serial = new_serial.clone();
        async move {
            match Connection::open(addr, config, Protocol::Http1).await {
                Ok(connection) => connection.serial() == new_serial,
                Err(_) => false,
            }
        }
    })
    .await;
    assert!(recovered, "valid pair after a corrupt one was never served");
}
