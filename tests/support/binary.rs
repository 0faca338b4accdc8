//! The built `genesis-gate` binary: one-shot subcommands, and `serve` as a
//! child process on a free loopback port with its log collected.

use std::ffi::OsStr;
use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use genesis_gate::tls;
use http::StatusCode;

use super::client::{client_config, Connection, Protocol};
use super::WAIT_LIMIT;

/// Returns the path of the binary that Cargo built for these tests.
pub fn binary() -> &'static str {
    env!("CARGO_BIN_EXE_genesis-gate")
}

/// Runs the binary in the repository root with stdout and stderr piped. A run that
/// has not exited within `WAIT_LIMIT` is killed and fails the test, so a
/// command that should fail but starts serving cannot hang the run.
pub fn run<I, S>(args: I) -> Output
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let mut child = Command::new(binary())
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env_remove("NO_COLOR")
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start genesis-gate");
    let stdout = read_in_background(child.stdout.take().expect("piped stdout"));
    let stderr = read_in_background(child.stderr.take().expect("piped stderr"));
    let deadline = std::time::Instant::now() + WAIT_LIMIT;
    let status = loop {
        if let Some(status) = child.try_wait().expect("poll the child") {
            break status;
        }
        if std::time::Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("genesis-gate did not exit within {WAIT_LIMIT:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Output {
        status,
        stdout: stdout.join().expect("stdout reader"),
        stderr: stderr.join().expect("stderr reader"),
    }
}

fn read_in_background(
    mut pipe: impl std::io::Read + Send + 'static,
) -> std::thread::JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = pipe.read_to_end(&mut bytes);
        bytes
    })
}

/// Copies the shipped policy files, without their suites, into `dir`, for
/// a `--policies` folder that a test may change.
pub fn copy_shipped_policies(dir: &Path) {
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("policies");
    for entry in std::fs::read_dir(shipped).expect("policies folder") {
        let path = entry.expect("policy entry").path();
        if path.extension().and_then(OsStr::to_str) == Some("yaml") {
            let name = path.file_name().expect("file name");
            std::fs::copy(&path, dir.join(name)).expect("copy policy");
        }
    }
}

/// Returns a loopback address with a port that was free a moment ago.
pub fn free_loopback_addr() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    listener.local_addr().expect("local address")
}

/// `genesis-gate serve` running as a child process. It is killed on drop
/// if the test did not stop it.
pub struct ServeProcess {
    pub addr: SocketAddr,
    pub cert_dir: PathBuf,
    child: Child,
    log: Arc<Mutex<String>>,
    log_reader: Option<std::thread::JoinHandle<()>>,
}

impl ServeProcess {
    /// Starts `serve --listen <free port> --cert-dir <cert_dir> --no-cluster`
    /// followed by `args`, and waits until `/healthz` returns 200 over TLS
    /// verified against the `ca.pem` that the server created.
    pub async fn start(cert_dir: &Path, args: &[&OsStr]) -> ServeProcess {
        let addr = free_loopback_addr();
        let mut child = Command::new(binary())
            .arg("serve")
            .arg("--listen")
            .arg(addr.to_string())
            .arg("--cert-dir")
            .arg(cert_dir)
            .arg("--no-cluster")
            .args(args)
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .env_remove("NO_COLOR")
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start genesis-gate serve");
        let log = Arc::new(Mutex::new(String::new()));
        let stderr = child.stderr.take().expect("piped stderr");
        let sink = log.clone();
        let log_reader = std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let mut log = sink.lock().unwrap_or_else(|e| e.into_inner());
                log.push_str(&line);
                log.push('\n');
            }
        });
        let mut process = ServeProcess {
            addr,
            cert_dir: cert_dir.to_owned(),
            child,
            log,
            log_reader: Some(log_reader),
        };
        process.wait_until_healthy().await;
        process
    }

    /// Returns everything the server has logged so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn ca_file(&self) -> PathBuf {
        self.cert_dir.join(tls::CA_CERT_FILE)
    }

    /// Opens a connection that trusts only the server's `ca.pem`.
    pub async fn connect(&self, protocol: Protocol) -> Connection {
        let config = client_config(&self.ca_file(), protocol, None);
        Connection::open(self.addr, config, protocol)
            .await
            .unwrap_or_else(|e| panic!("connect to serve: {e}\nlog:\n{}", self.log()))
    }

    async fn wait_until_healthy(&mut self) {
        let deadline = tokio::time::Instant::now() + WAIT_LIMIT;
        // The key is written last, so the CA file is complete once it exists.
        let key_file = self.cert_dir.join(tls::KEY_FILE);
        while tokio::time::Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().expect("poll the child") {
                panic!(
                    "serve exited with {status} before it was healthy\nlog:\n{}",
                    self.log()
                );
            }
            if key_file.exists() && self.healthz_ok().await {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!(
            "serve was not healthy within {WAIT_LIMIT:?}\nlog:\n{}",
            self.log()
        );
    }

    async fn healthz_ok(&self) -> bool {
        let config = client_config(&self.ca_file(), Protocol::Http1, None);
        let Ok(mut connection) = Connection::open(self.addr, config, Protocol::Http1).await else {
            return false;
        };
        matches!(connection.get("/healthz").await, Ok(r) if r.status == StatusCode::OK)
    }

    /// Sends SIGTERM, as the kubelet does when it stops the pod.
    pub fn terminate(&self) {
        let status = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -TERM failed with {status}");
    }

    /// Waits up to `limit` for the process to exit and returns its status.
    /// Once it has exited, [`ServeProcess::log`] returns its whole log.
    pub async fn exited_within(&mut self, limit: Duration) -> Option<ExitStatus> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().expect("poll the child") {
                // The pipe may still hold the last lines; the reader ends at
                // end of file, which follows the exit.
                if let Some(reader) = self.log_reader.take() {
                    let _ = reader.join();
                }
                return Some(status);
            }
            if tokio::time::Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for ServeProcess {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
