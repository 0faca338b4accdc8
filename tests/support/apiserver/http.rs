//! The HTTP side of the stand-in: TLS connections, routing, and the GET,
//! LIST, WATCH and discovery responses.

use std::convert::Infallible;
use std::io;
use std::sync::{Arc, Weak};
use std::time::Duration;

use bytes::Bytes;
use futures::channel::mpsc;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::net::{TcpListener, TcpStream};

use super::selectors::{FieldFilter, LabelFilter};
use super::{
    event_line, fixture_events, fixture_json, too_old_event, Body, OpenWatch, RecordedRequest,
    RequestKind, Shared, State,
};

pub(super) async fn accept_loop(listener: TcpListener, shared: Weak<Shared>) {
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            continue;
        };
        let Some(shared) = shared.upgrade() else {
            return;
        };
        {
            let mut state = shared.state();
            if state.drop_connections {
                state.dropped_connections += 1;
                drop(tcp);
                continue;
            }
        }
        let mut connections = shared.connections.lock().unwrap_or_else(|e| e.into_inner());
        while connections.try_join_next().is_some() {}
        connections.spawn(serve_connection(shared.clone(), tcp));
    }
}

async fn serve_connection(shared: Arc<Shared>, tcp: TcpStream) {
    let Ok(tls) = shared.tls.accept(tcp).await else {
        return;
    };
    let service = service_fn(move |request| {
        let shared = shared.clone();
        async move { Ok::<_, Infallible>(handle(shared, request).await) }
    });
    let _ = http1::Builder::new()
        .serve_connection(TokioIo::new(tls), service)
        .await;
}

fn full(status: StatusCode, body: &Value) -> Response<Body> {
    let bytes = Bytes::from(body.to_string());
    let body = Full::new(bytes).map_err(|never| match never {}).boxed();
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(body)
        .expect("static response parts")
}

fn status_body(code: u16, reason: &str, message: &str) -> Value {
    json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    })
}

fn decode_component(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        match bytes[index] {
            b'+' => decoded.push(b' '),
            b'%' if index + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[index + 1..index + 3]).unwrap_or("");
                match u8::from_str_radix(hex, 16) {
                    Ok(byte) => {
                        decoded.push(byte);
                        index += 2;
                    }
                    Err(_) => decoded.push(b'%'),
                }
            }
            byte => decoded.push(byte),
        }
        index += 1;
    }
    String::from_utf8_lossy(&decoded).into_owned()
}

fn parse_query(query: Option<&str>) -> Vec<(String, String)> {
    query
        .unwrap_or_default()
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            (decode_component(key), decode_component(value))
        })
        .collect()
}

/// What a path names.
enum Route {
    Discovery {
        group: String,
        version: String,
    },
    Collection {
        kind_index: usize,
        namespace: Option<String>,
    },
    Object {
        kind_index: usize,
        namespace: Option<String>,
        name: String,
    },
}

fn route(state: &State, path: &str) -> Result<Route, String> {
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group, version, rest) = match segments.as_slice() {
        ["api", version, rest @ ..] => ("", *version, rest),
        ["apis", group, version, rest @ ..] => (*group, *version, rest),
        _ => return Err("path is not under /api or /apis".to_owned()),
    };
    let group_version = if group.is_empty() {
        version.to_owned()
    } else {
        format!("{group}/{version}")
    };
    let find = |plural: &str| {
        state
            .kinds
            .iter()
            .position(|k| k.api_version == group_version && k.plural == plural)
            .ok_or_else(|| format!("no kind with plural {plural:?} in {group}/{version}"))
    };
    match rest {
        [] => Ok(Route::Discovery {
            group: group.to_owned(),
            version: version.to_owned(),
        }),
        [plural] => Ok(Route::Collection {
            kind_index: find(plural)?,
            namespace: None,
        }),
        ["namespaces", namespace, plural] => Ok(Route::Collection {
            kind_index: find(plural)?,
            namespace: Some((*namespace).to_owned()),
        }),
        ["namespaces", namespace, plural, name] => Ok(Route::Object {
            kind_index: find(plural)?,
            namespace: Some((*namespace).to_owned()),
            name: (*name).to_owned(),
        }),
        [plural, name] => Ok(Route::Object {
            kind_index: find(plural)?,
            namespace: None,
            name: (*name).to_owned(),
        }),
        _ => Err("path has too many segments".to_owned()),
    }
}

const LIST_PARAMS: &[&str] = &[
    "labelSelector",
    "fieldSelector",
    "limit",
    "continue",
    "resourceVersion",
    "resourceVersionMatch",
];
const WATCH_PARAMS: &[&str] = &[
    "watch",
    "labelSelector",
    "fieldSelector",
    "timeoutSeconds",
    "allowWatchBookmarks",
    "resourceVersion",
    "resourceVersionMatch",
    "sendInitialEvents",
];

async fn handle(shared: Arc<Shared>, request: Request<Incoming>) -> Response<Body> {
    let method = request.method().as_str().to_owned();
    let path = request.uri().path().to_owned();
    let query = parse_query(request.uri().query());
    let is_watch = query
        .iter()
        .any(|(key, value)| key == "watch" && (value == "true" || value == "1"));

    let (routed, delay) = {
        let mut state = shared.state();
        let routed = if method == "GET" {
            route(&state, &path)
        } else {
            Err(format!("method {method} is not served"))
        };
        let kind = match &routed {
            Ok(Route::Discovery { .. }) => RequestKind::Discovery,
            Ok(Route::Object { .. }) => RequestKind::Get,
            Ok(Route::Collection { .. }) if is_watch => RequestKind::Watch,
            Ok(Route::Collection { .. }) => RequestKind::List,
            Err(_) => RequestKind::Unexpected,
        };
        let allowed: &[&str] = match kind {
            RequestKind::Watch => WATCH_PARAMS,
            RequestKind::List => LIST_PARAMS,
            _ => &[],
        };
        for (key, _) in query
            .iter()
            .filter(|(key, _)| !allowed.contains(&key.as_str()))
        {
            state.record_unexpected(format!(
                "unexpected query parameter {key:?} in {method} {path}"
            ));
        }
        if let Err(reason) = &routed {
            state.record_unexpected(format!("unexpected request {method} {path}: {reason}"));
        }
        state.requests.push(RecordedRequest {
            kind,
            method: method.clone(),
            path: path.clone(),
            query: query.clone(),
        });
        (routed, state.response_delay)
    };
    if let Some(delay) = delay {
        tokio::time::sleep(delay).await;
    }

    let param = |name: &str| {
        query
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    };
    let mut state = shared.state();
    match routed {
        Err(reason) => full(
            StatusCode::NOT_FOUND,
            &status_body(404, "NotFound", &reason),
        ),
        Ok(Route::Discovery { group, version }) => discovery(&state, &group, &version),
        Ok(Route::Object {
            kind_index,
            namespace,
            name,
        }) => get_object(&state, kind_index, namespace, &name),
        Ok(Route::Collection {
            kind_index,
            namespace,
        }) if is_watch => start_watch(&shared, &mut state, kind_index, namespace, &param),
        Ok(Route::Collection {
            kind_index,
            namespace,
        }) => list_objects(&mut state, kind_index, namespace, &param),
    }
}

fn discovery(state: &State, group: &str, version: &str) -> Response<Body> {
    let group_version = if group.is_empty() {
        version.to_owned()
    } else {
        format!("{group}/{version}")
    };
    let resources: Vec<Value> = state
        .kinds
        .iter()
        .filter(|kind| kind.api_version == group_version)
        .map(|kind| {
            json!({
                "name": kind.plural,
                "singularName": kind.kind.to_lowercase(),
                "namespaced": kind.namespaced,
                "kind": kind.kind,
                "verbs": ["get", "list", "watch"],
            })
        })
        .collect();
    if resources.is_empty() {
        let message = format!("the server could not find the requested resource {group_version}");
        return full(
            StatusCode::NOT_FOUND,
            &status_body(404, "NotFound", &message),
        );
    }
    full(
        StatusCode::OK,
        &json!({
            "kind": "APIResourceList",
            "apiVersion": "v1",
            "groupVersion": group_version,
            "resources": resources,
        }),
    )
}

fn get_object(
    state: &State,
    kind_index: usize,
    namespace: Option<String>,
    name: &str,
) -> Response<Body> {
    let key = (kind_index, namespace.unwrap_or_default(), name.to_owned());
    if let Some(object) = state.objects.get(&key) {
        return full(StatusCode::OK, object);
    }
    // The recorded 404, renamed for this object.
    let plural = &state.kinds[kind_index].plural;
    let mut body = fixture_json("get-pvc-not-found.json");
    body["message"] = json!(format!("{plural} \"{name}\" not found"));
    body["details"] = json!({"name": name, "kind": plural});
    full(StatusCode::NOT_FOUND, &body)
}

type Param<'a> = dyn Fn(&str) -> Option<&'a str> + 'a;

/// Parses the request's selectors. An unserved one is recorded as
/// unexpected and returned as the error.
fn filters(state: &mut State, param: &Param<'_>) -> Result<(LabelFilter, FieldFilter), String> {
    let labels = LabelFilter::parse(param("labelSelector").unwrap_or_default());
    let fields = FieldFilter::parse(param("fieldSelector").unwrap_or_default());
    match (labels, fields) {
        (Ok(labels), Ok(fields)) => Ok((labels, fields)),
        (Err(reason), _) | (_, Err(reason)) => {
            state.record_unexpected(reason.clone());
            Err(reason)
        }
    }
}

fn bad_request(reason: &str) -> Response<Body> {
    full(
        StatusCode::BAD_REQUEST,
        &status_body(400, "BadRequest", reason),
    )
}

fn list_objects(
    state: &mut State,
    kind_index: usize,
    namespace: Option<String>,
    param: &Param<'_>,
) -> Response<Body> {
    let (labels, fields) = match filters(state, param) {
        Ok(filters) => filters,
        Err(reason) => return bad_request(&reason),
    };
    let exact = param("resourceVersionMatch") == Some("Exact");
    let requested: u64 = param("resourceVersion")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    if exact && requested < state.compacted {
        return full(StatusCode::GONE, &fixture_json("list-too-old.json"));
    }
    let kind = &state.kinds[kind_index];
    let items: Vec<Value> = state
        .objects
        .iter()
        .filter(|((index, object_namespace, _), _)| {
            *index == kind_index && namespace.as_deref().is_none_or(|ns| ns == object_namespace)
        })
        .map(|(_, object)| object)
        .filter(|object| labels.matches(object) && fields.matches(object))
        .map(|object| {
            // List items arrive without apiVersion and kind, as recorded.
            let mut item = object.clone();
            if let Some(fields) = item.as_object_mut() {
                fields.remove("apiVersion");
                fields.remove("kind");
            }
            item
        })
        .collect();
    full(
        StatusCode::OK,
        &json!({
            "kind": format!("{}List", kind.kind),
            "apiVersion": kind.api_version,
            "metadata": {"resourceVersion": state.resource_version.to_string()},
            "items": items,
        }),
    )
}

fn stream_response(
    receiver: mpsc::UnboundedReceiver<Result<Frame<Bytes>, io::Error>>,
) -> Response<Body> {
    Response::builder()
        .status(StatusCode::OK)
        .header("content-type", "application/json")
        .body(StreamBody::new(receiver).boxed())
        .expect("static response parts")
}

/// Builds a watch response that sends one recorded event and ends.
fn single_event_stream(event: &Value) -> Response<Body> {
    let (sender, receiver) = mpsc::unbounded();
    let _ = sender.unbounded_send(Ok(Frame::data(event_line(event))));
    stream_response(receiver)
}

/// Opens a watch from the requested resourceVersion, or ends it at once
/// with the recorded ERROR event for streaming lists or for 410 Gone.
fn start_watch(
    shared: &Arc<Shared>,
    state: &mut State,
    kind_index: usize,
    namespace: Option<String>,
    param: &Param<'_>,
) -> Response<Body> {
    if param("sendInitialEvents") == Some("true") {
        // As recorded from an API server on etcd 3.4.
        return single_event_stream(&fixture_events("watch-streaming-list.ndjson")[0]);
    }

    let requested = param("resourceVersion").unwrap_or("0");
    let from: u64 = requested.parse().unwrap_or(0);
    if state.gone_next_watches > 0 || (requested != "0" && from < state.compacted) {
        state.gone_next_watches = state.gone_next_watches.saturating_sub(1);
        return single_event_stream(&too_old_event(from, state.resource_version));
    }

    let (labels, fields) = match filters(state, param) {
        Ok(filters) => filters,
        Err(reason) => return bad_request(&reason),
    };

    let (sender, receiver) = mpsc::unbounded();
    state.next_watch_id += 1;
    let watch = OpenWatch {
        id: state.next_watch_id,
        from,
        kind_index,
        namespace,
        labels,
        fields,
        bookmarks: param("allowWatchBookmarks") == Some("true"),
        sender,
    };
    replay(state, &watch, requested, from);
    if let Some(seconds) = param("timeoutSeconds").and_then(|v| v.parse::<u64>().ok()) {
        tokio::spawn(end_watch_after(
            Arc::downgrade(shared),
            watch.id,
            Duration::from_secs(seconds),
        ));
    }
    state.watches.push(watch);
    stream_response(receiver)
}

/// Sends what a watch from `from` has missed: every current object as
/// ADDED for version "0", else the logged events after `from`. Logged
/// events are held like new ones while the test holds events, so a watch
/// that restarts cannot receive them early.
fn replay(state: &mut State, watch: &OpenWatch, requested: &str, from: u64) {
    if requested == "0" {
        for ((index, _, _), object) in &state.objects {
            if *index == watch.kind_index && watch.selects(object) {
                let line = event_line(&json!({"type": "ADDED", "object": object}));
                let _ = watch.sender.unbounded_send(Ok(Frame::data(line)));
            }
        }
        return;
    }
    let missed: Vec<Bytes> = state
        .log
        .iter()
        .filter(|event| {
            event.kind_index == watch.kind_index
                && event.resource_version > from
                && watch.selects(&event.object)
        })
        .map(|event| event_line(&json!({"type": event.event_type, "object": event.object})))
        .collect();
    for line in missed {
        state.send_or_hold(watch.id, &watch.sender, line);
    }
}

async fn end_watch_after(shared: Weak<Shared>, id: u64, timeout: Duration) {
    tokio::time::sleep(timeout).await;
    if let Some(shared) = shared.upgrade() {
        shared.state().watches.retain(|watch| watch.id != id);
    }
}
