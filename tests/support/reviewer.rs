//! `Reviewer` test doubles.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use genesis_gate::admission::{Endpoint, RequestError};
use genesis_gate::server::Reviewer;
use tokio::sync::{Notify, Semaphore};

/// Builds a minimal AdmissionReview request with `uid`.
pub fn review_request(uid: &str) -> String {
    serde_json::json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {"uid": uid, "operation": "CREATE"},
    })
    .to_string()
}

/// Returns `response.uid` of an AdmissionReview response body.
pub fn response_uid(body: &[u8]) -> Option<String> {
    let value: serde_json::Value = serde_json::from_slice(body).ok()?;
    value["response"]["uid"].as_str().map(str::to_owned)
}

/// Allows every request, echoing its uid; a body without `request.uid` is
/// rejected with 400. Not ready until [`EchoReviewer::set_ready`].
#[derive(Default)]
pub struct EchoReviewer {
    ready: AtomicBool,
}

impl EchoReviewer {
    pub fn ready() -> EchoReviewer {
        EchoReviewer {
            ready: AtomicBool::new(true),
        }
    }

    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::SeqCst);
    }
}

/// Returns the allowing AdmissionReview response for a request body.
fn allow(body: &[u8]) -> Result<Bytes, RequestError> {
    let value: serde_json::Value = serde_json::from_slice(body).map_err(|error| RequestError {
        status: 400,
        message: format!("body is not JSON: {error}"),
    })?;
    let uid = value["request"]["uid"]
        .as_str()
        .ok_or_else(|| RequestError {
            status: 400,
            message: "request.uid is missing".to_owned(),
        })?;
    let response = serde_json::json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "response": {"uid": uid, "allowed": true},
    });
    Ok(Bytes::from(response.to_string()))
}

#[async_trait::async_trait]
impl Reviewer for EchoReviewer {
    async fn review(&self, _endpoint: Endpoint, body: Bytes) -> Result<Bytes, RequestError> {
        allow(&body)
    }

    fn ready(&self) -> Result<(), String> {
        if self.ready.load(Ordering::SeqCst) {
            Ok(())
        } else {
            Err("lookup caches have not synced".to_owned())
        }
    }
}

/// Signals when a review starts and holds it until the test releases it,
/// so that a test can act while a request is in flight. A review gives up
/// with 500 after `HOLD_LIMIT` in case the test never releases it.
pub struct HoldingReviewer {
    started: Notify,
    release: Semaphore,
}

const HOLD_LIMIT: Duration = Duration::from_secs(30);

impl HoldingReviewer {
    pub fn new() -> HoldingReviewer {
        HoldingReviewer {
            started: Notify::new(),
            release: Semaphore::new(0),
        }
    }

    /// Completes once a review has started; a review that started before the
    /// call counts.
    pub async fn started(&self) {
        self.started.notified().await;
    }

    /// Lets one held review finish.
    pub fn release_one(&self) {
        self.release.add_permits(1);
    }
}

#[async_trait::async_trait]
impl Reviewer for HoldingReviewer {
    async fn review(&self, _endpoint: Endpoint, body: Bytes) -> Result<Bytes, RequestError> {
        self.started.notify_one();
        match tokio::time::timeout(HOLD_LIMIT, self.release.acquire()).await {
            Ok(Ok(permit)) => permit.forget(),
            _ => {
                return Err(RequestError {
                    status: 500,
                    message: "test never released the review".to_owned(),
                })
            }
        }
        allow(&body)
    }

    fn ready(&self) -> Result<(), String> {
        Ok(())
    }
}
