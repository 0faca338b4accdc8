//! A loopback stand-in for the Kubernetes API server, so that tests drive
//! the real kube client (TLS, request building, watch decoding, watcher
//! state machine) without a cluster.
//!
//! It serves HTTPS on `127.0.0.1` with a certificate from a test CA made at
//! start. It handles the requests a kube-rs 5 watcher and `Api` send:
//! discovery of a group version, GET of one object, LIST with
//! `labelSelector` and `resourceVersion`, and WATCH. A watch is a chunked
//! stream of one JSON event per line (ADDED, MODIFIED, DELETED, BOOKMARK,
//! and ERROR carrying a 410 Status). Objects, list bodies and the ERROR and Status bodies come from
//! the recorded API server responses in `tests/fixtures/apiserver/`.
//!
//! A test scripts it: push events, hold them back from open watches (a
//! lagging watch), expire or cut open watches, answer the next watches with
//! 410, delay or refuse responses, shut down, and read back the requests it
//! got. Requests it does not understand are printed with the prefix
//! `apiserver stand-in:` and kept in [`ApiServer::unexpected_requests`].
#![allow(dead_code)]

#[path = "apiserver/http.rs"]
mod http_side;
#[path = "apiserver/pki.rs"]
mod pki;
#[path = "apiserver/selectors.rs"]
mod selectors;

use std::collections::BTreeMap;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use futures::channel::mpsc;
use http_body_util::combinators::BoxBody;
use hyper::body::Frame;
use rustls::pki_types::CertificateDer;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::task::{AbortHandle, JoinSet};
use tokio_rustls::TlsAcceptor;

use selectors::{FieldFilter, LabelFilter};

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/apiserver");

/// Reads a recorded response.
pub fn fixture(name: &str) -> String {
    let path = format!("{FIXTURES}/{name}");
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {path}: {e}"))
}

/// Reads a recorded response body and parses it as JSON.
pub fn fixture_json(name: &str) -> Value {
    serde_json::from_str(&fixture(name)).unwrap_or_else(|e| panic!("{name} is not JSON: {e}"))
}

/// Reads the events of a recorded watch stream, one per line.
pub fn fixture_events(name: &str) -> Vec<Value> {
    fixture(name)
        .lines()
        .filter(|line| !line.trim().is_empty())
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{name}: {e}")))
        .collect()
}

/// A kind the stand-in serves.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KindInfo {
    pub api_version: String,
    pub kind: String,
    pub plural: String,
    pub namespaced: bool,
}

impl KindInfo {
    pub fn new(api_version: &str, kind: &str, plural: &str, namespaced: bool) -> KindInfo {
        KindInfo {
            api_version: api_version.to_owned(),
            kind: kind.to_owned(),
            plural: plural.to_owned(),
            namespaced,
        }
    }
}

/// What the stand-in took a request for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RequestKind {
    Discovery,
    Get,
    List,
    Watch,
    Unexpected,
}

/// One request as the stand-in received it.
#[derive(Clone, Debug)]
pub struct RecordedRequest {
    pub kind: RequestKind,
    pub method: String,
    pub path: String,
    /// Decoded query parameters, in order.
    pub query: Vec<(String, String)>,
}

impl RecordedRequest {
    pub fn param(&self, name: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    }
}

type Body = BoxBody<Bytes, io::Error>;
type WatchSender = mpsc::UnboundedSender<Result<Frame<Bytes>, io::Error>>;

struct OpenWatch {
    id: u64,
    /// The resourceVersion the watch asked to start from.
    from: u64,
    kind_index: usize,
    namespace: Option<String>,
    labels: LabelFilter,
    fields: FieldFilter,
    bookmarks: bool,
    sender: WatchSender,
}

struct LoggedEvent {
    kind_index: usize,
    resource_version: u64,
    event_type: String,
    object: Value,
}

/// (kind index, namespace or "", name)
type ObjectKey = (usize, String, String);

#[derive(Default)]
struct State {
    resource_version: u64,
    /// Watches from a resourceVersion older than this get 410 Gone.
    compacted: u64,
    kinds: Vec<KindInfo>,
    objects: BTreeMap<ObjectKey, Value>,
    log: Vec<LoggedEvent>,
    watches: Vec<OpenWatch>,
    next_watch_id: u64,
    hold_events: bool,
    held_lines: Vec<(u64, Bytes)>,
    gone_next_watches: usize,
    response_delay: Option<Duration>,
    drop_connections: bool,
    dropped_connections: usize,
    requests: Vec<RecordedRequest>,
    unexpected: Vec<String>,
}

struct Shared {
    state: Mutex<State>,
    connections: Mutex<JoinSet<()>>,
    tls: TlsAcceptor,
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn close_connections(&self) {
        self.connections
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .abort_all();
    }
}

/// The running stand-in. Dropping it closes the listener and every
/// connection.
pub struct ApiServer {
    address: SocketAddr,
    ca_der: CertificateDer<'static>,
    ca_pem: String,
    shared: Arc<Shared>,
    accept_task: AbortHandle,
}

impl ApiServer {
    /// Starts serving on `127.0.0.1` at a free port, with the kinds
    /// PersistentVolumeClaim, Pod and Job registered and no objects.
    pub async fn start() -> ApiServer {
        let pki = pki::make_pki();
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind 127.0.0.1:0");
        let address = listener.local_addr().expect("local address");
        let state = State {
            kinds: vec![
                KindInfo::new(
                    "v1",
                    "PersistentVolumeClaim",
                    "persistentvolumeclaims",
                    true,
                ),
                KindInfo::new("v1", "Pod", "pods", true),
                KindInfo::new("batch/v1", "Job", "jobs", true),
            ],
            ..State::default()
        };
        let shared = Arc::new(Shared {
            state: Mutex::new(state),
            connections: Mutex::new(JoinSet::new()),
            tls: TlsAcceptor::from(Arc::new(pki.server_config)),
        });
        let accept_task = tokio::spawn(http_side::accept_loop(listener, Arc::downgrade(&shared)));
        ApiServer {
            address,
            ca_der: pki.ca_der,
            ca_pem: pki.ca_pem,
            shared,
            accept_task: accept_task.abort_handle(),
        }
    }

    pub fn url(&self) -> String {
        format!("https://{}", self.address)
    }

    /// Returns a kube client configuration that trusts only the test CA.
    pub fn config(&self) -> kube::Config {
        let url = self.url().parse().expect("loopback URL");
        let mut config = kube::Config::new(url);
        config.root_cert = Some(vec![self.ca_der.to_vec()]);
        config.default_namespace = "sei".to_owned();
        config
    }

    pub fn client(&self) -> kube::Client {
        kube::Client::try_from(self.config()).expect("kube client for the stand-in")
    }

    /// Returns a kubeconfig whose current context is this server.
    pub fn kubeconfig_yaml(&self) -> String {
        let ca = base64::engine::general_purpose::STANDARD.encode(&self.ca_pem);
        format!(
            "apiVersion: v1
kind: Config
clusters:
- name: stand-in
  cluster:
    server: {url}
    certificate-authority-data: {ca}
contexts:
- name: stand-in
  context:
    cluster: stand-in
    user: tester
    namespace: sei
current-context: stand-in
users:
- name: tester
  user:
    token: test-token
",
            url = self.url()
        )
    }

    /// Serves one more kind, such as a custom resource.
    pub fn register_kind(&self, kind: KindInfo) {
        self.shared.state().kinds.push(kind);
    }

    /// Stores the items of a recorded list response, keeping their
    /// resourceVersions; the server's resourceVersion becomes the list's.
    pub fn load_list(&self, fixture_name: &str) {
        let list = fixture_json(fixture_name);
        let api_version = list["apiVersion"].as_str().unwrap_or_default();
        let list_kind = list["kind"].as_str().unwrap_or_default();
        let kind = list_kind.strip_suffix("List").unwrap_or(list_kind);
        let list_version = resource_version_of(&list);
        let mut state = self.shared.state();
        let kind_index = state
            .kind_index(api_version, kind)
            .unwrap_or_else(|| panic!("{fixture_name}: kind {kind} is not registered"));
        for item in list["items"].as_array().into_iter().flatten() {
            let object = state.with_type(kind_index, item.clone());
            state.insert(kind_index, object);
        }
        state.resource_version = state.resource_version.max(list_version);
    }

    /// Stores an object as it is, keeping its resourceVersion, without an
    /// event: for objects that exist before a test's watch starts.
    pub fn seed_object(&self, object: Value) {
        let mut state = self.shared.state();
        let kind_index = state.kind_index_of(&object);
        let version = resource_version_of(&object);
        state.insert(kind_index, object);
        state.resource_version = state.resource_version.max(version);
    }

    /// Replaces or adds an object under a new resourceVersion without
    /// telling any watch, as if its events had been compacted away.
    pub fn replace_silently(&self, mut object: Value) -> u64 {
        let mut state = self.shared.state();
        let kind_index = state.kind_index_of(&object);
        let version = state.bump();
        object["metadata"]["resourceVersion"] = json!(version.to_string());
        state.insert(kind_index, object);
        version
    }

    /// Deletes an object without telling any watch.
    pub fn remove_silently(&self, api_version: &str, kind: &str, namespace: &str, name: &str) {
        let mut state = self.shared.state();
        let kind_index = state
            .kind_index(api_version, kind)
            .unwrap_or_else(|| panic!("kind {kind} is not registered"));
        state.bump();
        state
            .objects
            .remove(&(kind_index, namespace.to_owned(), name.to_owned()));
    }

    /// Applies an ADDED, MODIFIED or DELETED event under the next
    /// resourceVersion and sends it to every open watch it matches, unless
    /// [`ApiServer::hold_watch_events`] is on. Returns that version.
    pub fn push_event(&self, event_type: &str, mut object: Value) -> u64 {
        let mut state = self.shared.state();
        let kind_index = state.kind_index_of(&object);
        let version = state.bump();
        object["metadata"]["resourceVersion"] = json!(version.to_string());
        let key = object_key(kind_index, &object);
        let previous = match event_type {
            "DELETED" => state.objects.remove(&key),
            "ADDED" | "MODIFIED" => state.objects.insert(key, object.clone()),
            other => panic!("push_event takes ADDED, MODIFIED or DELETED, not {other}"),
        };
        state.log.push(LoggedEvent {
            kind_index,
            resource_version: version,
            event_type: event_type.to_owned(),
            object: object.clone(),
        });
        state.deliver(kind_index, event_type, previous.as_ref(), &object);
        version
    }

    /// Sends a BOOKMARK at the current resourceVersion to the watches that
    /// asked for bookmarks.
    pub fn push_bookmark(&self) {
        let mut state = self.shared.state();
        let version = state.resource_version.to_string();
        let lines: Vec<(u64, WatchSender, Bytes)> = state
            .watches
            .iter()
            .filter(|watch| watch.bookmarks)
            .map(|watch| {
                let kind = &state.kinds[watch.kind_index];
                let bookmark = json!({
                    "type": "BOOKMARK",
                    "object": {
                        "kind": kind.kind,
                        "apiVersion": kind.api_version,
                        "metadata": {"resourceVersion": version},
                    }
                });
                (watch.id, watch.sender.clone(), event_line(&bookmark))
            })
            .collect();
        for (id, sender, line) in lines {
            state.send_or_hold(id, &sender, line);
        }
    }

    /// Keeps new events from the open watches while the store still
    /// changes, as with a watch that lags behind.
    pub fn hold_watch_events(&self) {
        self.shared.state().hold_events = true;
    }

    /// Sends the held events and stops holding.
    pub fn release_watch_events(&self) {
        let mut state = self.shared.state();
        state.hold_events = false;
        let held_lines = std::mem::take(&mut state.held_lines);
        for (id, line) in held_lines {
            if let Some(watch) = state.watches.iter().find(|w| w.id == id) {
                let _ = watch.sender.unbounded_send(Ok(Frame::data(line)));
            }
        }
    }

    /// Forgets every event so far, as etcd compaction does: each open watch
    /// gets an ERROR event with a 410 Status and ends, and a watch from an
    /// older resourceVersion gets the same.
    pub fn expire_watches(&self) {
        let mut state = self.shared.state();
        state.compacted = state.resource_version;
        state.log.clear();
        let watches = std::mem::take(&mut state.watches);
        for watch in watches {
            let line = event_line(&too_old_event(watch.from, state.resource_version));
            let _ = watch.sender.unbounded_send(Ok(Frame::data(line)));
        }
    }

    /// Makes the next `count` watch requests get an ERROR event carrying a
    /// 410 Status, whatever resourceVersion they request.
    pub fn answer_next_watches_with_gone(&self, count: usize) {
        self.shared.state().gone_next_watches += count;
    }

    /// Cuts every open watch in the middle of an event line: the stream
    /// gets the first half of a line, then the connection closes without
    /// the final chunk or a TLS close_notify.
    pub fn cut_watches(&self) {
        let watches = std::mem::take(&mut self.shared.state().watches);
        for watch in watches {
            let partial = Bytes::from_static(b"{\"type\":\"MODIFIED\",\"object\":{\"kind\":");
            let _ = watch.sender.unbounded_send(Ok(Frame::data(partial)));
            let cut = io::Error::new(io::ErrorKind::ConnectionReset, "stand-in cut the watch");
            let _ = watch.sender.unbounded_send(Err(cut));
        }
    }

    /// Ends every open watch cleanly, as the API server does at the
    /// request's `timeoutSeconds`.
    pub fn end_watches(&self) {
        self.shared.state().watches.clear();
    }

    /// Delays the response to each new request by this long, or not at all.
    pub fn delay_responses(&self, delay: Option<Duration>) {
        self.shared.state().response_delay = delay;
    }

    /// While on, each new connection is accepted and closed before the TLS
    /// handshake, and turning it on closes the open ones.
    pub fn drop_connections(&self, drop_them: bool) {
        self.shared.state().drop_connections = drop_them;
        if drop_them {
            self.shared.state().watches.clear();
            self.shared.close_connections();
        }
    }

    /// Stops listening and closes every connection: the server is gone.
    pub fn shutdown(&self) {
        self.accept_task.abort();
        self.shared.state().watches.clear();
        self.shared.close_connections();
    }

    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.shared.state().requests.clone()
    }

    pub fn requests_of(&self, kind: RequestKind) -> Vec<RecordedRequest> {
        let state = self.shared.state();
        state
            .requests
            .iter()
            .filter(|request| request.kind == kind)
            .cloned()
            .collect()
    }

    pub fn unexpected_requests(&self) -> Vec<String> {
        self.shared.state().unexpected.clone()
    }

    pub fn dropped_connections(&self) -> usize {
        self.shared.state().dropped_connections
    }

    pub fn open_watches(&self) -> usize {
        self.shared.state().watches.len()
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        self.shutdown();
    }
}

impl State {
    fn bump(&mut self) -> u64 {
        self.resource_version += 1;
        self.resource_version
    }

    fn kind_index(&self, api_version: &str, kind: &str) -> Option<usize> {
        self.kinds
            .iter()
            .position(|k| k.api_version == api_version && k.kind == kind)
    }

    fn kind_index_of(&self, object: &Value) -> usize {
        let api_version = object["apiVersion"].as_str().unwrap_or_default();
        let kind = object["kind"].as_str().unwrap_or_default();
        self.kind_index(api_version, kind)
            .unwrap_or_else(|| panic!("kind {api_version}/{kind} is not registered"))
    }

    fn with_type(&self, kind_index: usize, mut object: Value) -> Value {
        let kind = &self.kinds[kind_index];
        object["apiVersion"] = json!(kind.api_version);
        object["kind"] = json!(kind.kind);
        object
    }

    fn insert(&mut self, kind_index: usize, object: Value) {
        self.objects.insert(object_key(kind_index, &object), object);
    }

    /// Sends an event to every watch it concerns. A MODIFIED event that
    /// moves an object into or out of a watch's selector reaches that
    /// watch as ADDED or DELETED, as the API server does.
    fn deliver(
        &mut self,
        kind_index: usize,
        event_type: &str,
        previous: Option<&Value>,
        object: &Value,
    ) {
        let mut lines = Vec::new();
        for watch in self.watches.iter().filter(|w| w.kind_index == kind_index) {
            let now = watch.selects(object);
            let before = previous.is_some_and(|old| watch.selects(old));
            let sent_type = match (event_type, before, now) {
                ("MODIFIED", false, true) => "ADDED",
                ("MODIFIED", true, false) => "DELETED",
                (_, _, true) => event_type,
                _ => continue,
            };
            let line = event_line(&json!({"type": sent_type, "object": object}));
            lines.push((watch.id, watch.sender.clone(), line));
        }
        for (id, sender, line) in lines {
            self.send_or_hold(id, &sender, line);
        }
    }

    pub(super) fn send_or_hold(&mut self, id: u64, sender: &WatchSender, line: Bytes) {
        if self.hold_events {
            self.held_lines.push((id, line));
        } else {
            let _ = sender.unbounded_send(Ok(Frame::data(line)));
        }
    }

    fn record_unexpected(&mut self, message: String) {
        eprintln!("apiserver stand-in: {message}");
        self.unexpected.push(message);
    }
}

fn resource_version_of(object: &Value) -> u64 {
    object["metadata"]["resourceVersion"]
        .as_str()
        .and_then(|text| text.parse().ok())
        .unwrap_or(0)
}

fn object_key(kind_index: usize, object: &Value) -> ObjectKey {
    let metadata = &object["metadata"];
    (
        kind_index,
        metadata["namespace"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
        metadata["name"].as_str().unwrap_or_default().to_owned(),
    )
}

fn event_line(event: &Value) -> Bytes {
    let mut line = event.to_string();
    line.push('\n');
    Bytes::from(line)
}

/// Builds the recorded ERROR event for a compacted resourceVersion, with
/// the versions of this run.
fn too_old_event(requested: u64, current: u64) -> Value {
    let mut event = fixture_events("watch-too-old.ndjson").remove(0);
    event["object"]["message"] =
        json!(format!("too old resource version: {requested} ({current})"));
    event
}

impl OpenWatch {
    fn selects(&self, object: &Value) -> bool {
        let in_namespace = self
            .namespace
            .as_deref()
            .is_none_or(|ns| object["metadata"]["namespace"].as_str() == Some(ns));
        in_namespace && self.labels.matches(object) && self.fields.matches(object)
    }
}
