//! The HTTP routes, apart from any socket, so that tests can drive them
//! directly.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, HeaderMap, Method, StatusCode, Uri};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use bytes::Bytes;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use tracing::{debug, field, info_span, warn, Instrument};

use super::options::{DEFAULT_BODY_LIMIT, DEFAULT_REQUEST_TIMEOUT};
use super::Reviewer;
use crate::admission::{Endpoint, RequestError};
use crate::metrics::Metrics;

const OPENMETRICS_CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// State shared by the routes: the admission side, the metrics, and the
/// limits applied to each request.
#[derive(Clone)]
pub struct AppState {
    pub reviewer: Arc<dyn Reviewer>,
    pub metrics: Arc<Metrics>,
    /// Largest accepted request body, in bytes.
    pub body_limit: usize,
    /// Time allowed for one request, from its headers to its response.
    pub request_timeout: Duration,
}

impl AppState {
    /// State with the default body limit (8 MiB) and request timeout (4 s).
    pub fn new(reviewer: Arc<dyn Reviewer>, metrics: Arc<Metrics>) -> AppState {
        AppState {
            reviewer,
            metrics,
            body_limit: DEFAULT_BODY_LIMIT,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
        }
    }
}

/// Builds the router: `POST /validate` and `POST /mutate` for
/// AdmissionReviews, `GET /healthz`, `GET /readyz` and `GET /metrics`.
pub fn app(state: AppState) -> Router {
    let request_timeout = state.request_timeout;
    Router::new()
        .route("/validate", post(validate))
        .route("/mutate", post(mutate))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state)
        .layer(middleware::from_fn_with_state(
            request_timeout,
            enforce_timeout,
        ))
        .layer(middleware::from_fn(trace_request))
}

/// A request the server rejects, sent as plain text with its status.
#[derive(Debug)]
struct HttpError {
    status: StatusCode,
    message: String,
}

impl HttpError {
    fn new(status: StatusCode, message: impl Into<String>) -> HttpError {
        HttpError {
            status,
            message: message.into(),
        }
    }
}

impl From<RequestError> for HttpError {
    fn from(error: RequestError) -> HttpError {
        // The contract is a 4xx status; anything else is the reviewer's bug,
        // reported as one rather than passed on as a success.
        let status = StatusCode::from_u16(error.status)
            .ok()
            .filter(|s| s.is_client_error() || s.is_server_error())
            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        HttpError::new(status, error.message)
    }
}

impl IntoResponse for HttpError {
    fn into_response(self) -> Response {
        let content_type = [(header::CONTENT_TYPE, "text/plain; charset=utf-8")];
        (self.status, content_type, self.message).into_response()
    }
}

async fn validate(State(state): State<AppState>, headers: HeaderMap, body: Body) -> Response {
    review(&state, Endpoint::Validate, &headers, body).await
}

async fn mutate(State(state): State<AppState>, headers: HeaderMap, body: Body) -> Response {
    review(&state, Endpoint::Mutate, &headers, body).await
}

async fn review(state: &AppState, endpoint: Endpoint, headers: &HeaderMap, body: Body) -> Response {
    match review_body(state, endpoint, headers, body).await {
        Ok(answer) => ([(header::CONTENT_TYPE, "application/json")], answer).into_response(),
        Err(error) => {
            warn!(
                %endpoint,
                status = error.status.as_u16(),
                error = %error.message,
                "rejected admission request"
            );
            error.into_response()
        }
    }
}

async fn review_body(
    state: &AppState,
    endpoint: Endpoint,
    headers: &HeaderMap,
    body: Body,
) -> Result<Bytes, HttpError> {
    check_content_type(headers)?;
    let body = read_body(headers, body, state.body_limit).await?;
    Ok(state.reviewer.review(endpoint, body).await?)
}

/// Accepts `application/json` with optional parameters such as `charset`,
/// which is what the API server sends.
fn check_content_type(headers: &HeaderMap) -> Result<(), HttpError> {
    let unsupported = |message: String| HttpError::new(StatusCode::UNSUPPORTED_MEDIA_TYPE, message);
    let Some(value) = headers.get(header::CONTENT_TYPE) else {
        return Err(unsupported(
            "missing Content-Type header; send the AdmissionReview as Content-Type: \
             application/json"
                .to_owned(),
        ));
    };
    let text = String::from_utf8_lossy(value.as_bytes());
    let essence = text.split(';').next().unwrap_or_default().trim();
    if essence.eq_ignore_ascii_case("application/json") {
        return Ok(());
    }
    Err(unsupported(format!(
        "unsupported Content-Type {text:?}; send the AdmissionReview as Content-Type: \
         application/json"
    )))
}

async fn read_body(headers: &HeaderMap, body: Body, limit: usize) -> Result<Bytes, HttpError> {
    let too_large = || {
        HttpError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "request body is larger than the limit of {limit} bytes; an AdmissionReview \
                 of two 3 MiB objects fits the default, and serve --max-body-bytes raises it"
            ),
        )
    };
    // A declared length over the limit is rejected before reading any of it.
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|length| length > limit as u64) {
        return Err(too_large());
    }
    match Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(error) if error.is::<LengthLimitError>() => Err(too_large()),
        Err(error) => Err(HttpError::new(
            StatusCode::BAD_REQUEST,
            format!("failed to read the request body: {error}"),
        )),
    }
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(state): State<AppState>) -> Response {
    match state.reviewer.ready() {
        Ok(()) => "ok\n".into_response(),
        Err(reason) => HttpError::new(StatusCode::SERVICE_UNAVAILABLE, reason).into_response(),
    }
}

async fn metrics(State(state): State<AppState>) -> Response {
    let text = state.metrics.encode();
    ([(header::CONTENT_TYPE, OPENMETRICS_CONTENT_TYPE)], text).into_response()
}

async fn not_found(uri: Uri) -> HttpError {
    HttpError::new(
        StatusCode::NOT_FOUND,
        format!(
            "no route for {}; the server serves /validate, /mutate, /healthz, /readyz and \
             /metrics",
            uri.path()
        ),
    )
}

async fn method_not_allowed(method: Method, uri: Uri) -> HttpError {
    let allowed = match uri.path() {
        "/validate" | "/mutate" => "POST",
        _ => "GET",
    };
    HttpError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        format!(
            "method {method} is not allowed on {}; use {allowed}",
            uri.path()
        ),
    )
}

/// Returns 503 when a request takes longer than `timeout`, so that the API
/// server gets a response before its own webhook timeout. The handler's
/// future is dropped at that point; work it does outside an `.await` is not
/// interrupted.
async fn enforce_timeout(
    State(timeout): State<Duration>,
    request: Request,
    next: Next,
) -> Response {
    let path = request.uri().path().to_owned();
    match tokio::time::timeout(timeout, next.run(request)).await {
        Ok(response) => response,
        Err(_) => {
            let millis = timeout.as_millis();
            warn!(%path, timeout_ms = millis as u64, "request timed out");
            HttpError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("request timed out after {millis} ms; the server is overloaded or stuck"),
            )
            .into_response()
        }
    }
}

/// Opens a span for each request and logs its outcome at debug level.
async fn trace_request(request: Request, next: Next) -> Response {
    let span = info_span!(
        "http_request",
        method = %request.method(),
        path = %request.uri().path(),
        version = ?request.version(),
        remote = field::Empty,
        status = field::Empty,
    );
    if let Some(ConnectInfo(remote)) = request.extensions().get::<ConnectInfo<SocketAddr>>() {
        span.record("remote", field::display(remote));
    }
    let started = Instant::now();
    let response = next.run(request).instrument(span.clone()).await;
    let status = response.status().as_u16();
    span.record("status", status);
    let latency_us = started.elapsed().as_micros() as u64;
    debug!(parent: &span, status, latency_us, "request finished");
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};
    use tower::ServiceExt;

    /// Returns the request body, or the error it was given.
    struct Fixed {
        error: Option<RequestError>,
        ready: AtomicBool,
        hang: bool,
    }

    #[async_trait::async_trait]
    impl Reviewer for Fixed {
        async fn review(&self, _: Endpoint, body: Bytes) -> Result<Bytes, RequestError> {
            if self.hang {
                std::future::pending::<()>().await;
            }
            match &self.error {
                Some(error) => Err(error.clone()),
                None => Ok(body),
            }
        }

        fn ready(&self) -> Result<(), String> {
            if self.ready.load(Ordering::SeqCst) {
                Ok(())
            } else {
                Err("policies not loaded yet".to_owned())
            }
        }
    }

    fn state(reviewer: Fixed) -> AppState {
        AppState::new(Arc::new(reviewer), Arc::new(Metrics::new()))
    }

    fn echo() -> Fixed {
        Fixed {
            error: None,
            ready: AtomicBool::new(true),
            hang: false,
        }
    }

    fn post(path: &str, content_type: &str, body: impl Into<Body>) -> Request {
        Request::post(path)
            .header(header::CONTENT_TYPE, content_type)
            .body(body.into())
            .expect("valid request")
    }

    async fn send(state: AppState, request: Request) -> (StatusCode, HeaderMap, String) {
        let response = app(state)
            .oneshot(request)
            .await
            .expect("infallible router");
        let status = response.status();
        let headers = response.headers().clone();
        let body = response
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes();
        (status, headers, String::from_utf8_lossy(&body).into_owned())
    }

    #[tokio::test]
    async fn review_returns_reviewer_bytes_as_json() {
        let request = post("/validate", "application/json; charset=utf-8", r#"{"a":1}"#);
        let (status, headers, body) = send(state(echo()), request).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(headers[header::CONTENT_TYPE], "application/json");
        assert_eq!(body, r#"{"a":1}"#);
    }

    #[tokio::test]
    async fn text_plain_is_unsupported_media_type() {
        let request = post("/mutate", "text/plain", "{}");
        let (status, _, body) = send(state(echo()), request).await;
        assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
        assert!(body.contains("text/plain"), "{body}");
        assert!(body.contains("application/json"), "{body}");
    }

    #[tokio::test]
    async fn missing_content_type_is_unsupported_media_type() {
        let request = Request::post("/validate")
            .body(Body::from("{}"))
            .expect("request");
        let (status, _, _) = send(state(echo()), request).await;
        assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    }

    #[tokio::test]
    async fn default_limit_admits_update_review() {
        let body = vec![b' '; 6 * 1024 * 1024 + 64 * 1024];
        let (status, _, _) = send(state(echo()), post("/validate", "application/json", body)).await;
        assert_eq!(status, StatusCode::OK);
    }

    #[tokio::test]
    async fn body_over_default_limit_is_payload_too_large() {
        let body = vec![b' '; DEFAULT_BODY_LIMIT + 1];
        let (status, _, message) =
            send(state(echo()), post("/validate", "application/json", body)).await;
        assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
        assert!(
            message.contains(&DEFAULT_BODY_LIMIT.to_string()),
            "{message}"
        );
    }

    #[tokio::test]
    async fn streamed_body_over_limit_is_payload_too_large() {
        // No Content-Length: the limit applies while reading.
        let chunks = futures::stream::iter(
            (0..4).map(|_| Ok::<_, std::io::Error>(Bytes::from(vec![b' '; 1024]))),
        );
        let mut small = state(echo());
        small.body_limit = 2048;
        let request = post("/validate", "application/json", Body::from_stream(chunks));
        let (status, _, _) = send(small, request).await;
        assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    }

    #[tokio::test]
    async fn request_error_keeps_status_and_message() {
        let reviewer = Fixed {
            error: Some(RequestError {
                status: 400,
                message: "request.uid is missing".to_owned(),
            }),
            ..echo()
        };
        let (status, headers, body) =
            send(state(reviewer), post("/validate", "application/json", "{}")).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(headers[header::CONTENT_TYPE]
            .to_str()
            .unwrap_or_default()
            .starts_with("text/plain"));
        assert_eq!(body, "request.uid is missing");
    }

    #[tokio::test]
    async fn request_error_with_success_status_becomes_500() {
        let reviewer = Fixed {
            error: Some(RequestError {
                status: 200,
                message: "wrong".to_owned(),
            }),
            ..echo()
        };
        let (status, _, _) = send(state(reviewer), post("/mutate", "application/json", "{}")).await;
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    }

    #[tokio::test]
    async fn slow_review_times_out_with_503() {
        let mut slow = state(Fixed {
            hang: true,
            ..echo()
        });
        slow.request_timeout = Duration::from_millis(50);
        let (status, _, body) = send(slow, post("/validate", "application/json", "{}")).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(body.contains("timed out"), "{body}");
    }

    #[tokio::test]
    async fn get_on_validate_is_method_not_allowed() {
        let request = Request::get("/validate")
            .body(Body::empty())
            .expect("request");
        let (status, _, body) = send(state(echo()), request).await;
        assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
        assert!(body.contains("POST"), "{body}");
    }

    #[tokio::test]
    async fn unknown_path_is_not_found() {
        let request = Request::get("/other").body(Body::empty()).expect("request");
        let (status, _, _) = send(state(echo()), request).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
    }

    #[tokio::test]
    async fn readyz_reports_reason_until_ready() {
        let reviewer = Arc::new(Fixed {
            ready: AtomicBool::new(false),
            ..echo()
        });
        let shared = AppState::new(reviewer.clone(), Arc::new(Metrics::new()));
        let get_readyz = || {
            Request::get("/readyz")
                .body(Body::empty())
                .expect("request")
        };
        let (status, _, body) = send(shared.clone(), get_readyz()).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(body, "policies not loaded yet");
        reviewer.ready.store(true, Ordering::SeqCst);
        let (status, _, _) = send(shared, get_readyz()).await;
        assert_eq!(status, StatusCode::OK);
    }

    #[tokio::test]
    async fn healthz_is_ok() {
        let request = Request::get("/healthz")
            .body(Body::empty())
            .expect("request");
        let (status, _, _) = send(state(echo()), request).await;
        assert_eq!(status, StatusCode::OK);
    }

    #[tokio::test]
    async fn metrics_are_openmetrics_text() {
        let shared = state(echo());
        shared.metrics.set_certificate_expiry(1_900_000_000);
        let request = Request::get("/metrics")
            .body(Body::empty())
            .expect("request");
        let (status, headers, body) = send(shared, request).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(headers[header::CONTENT_TYPE], OPENMETRICS_CONTENT_TYPE);
        assert!(
            body.contains("genesis_gate_certificate_expiry_timestamp_seconds 1900000000"),
            "{body}"
        );
        assert!(body.ends_with("# EOF\n"), "{body}");
    }
}
