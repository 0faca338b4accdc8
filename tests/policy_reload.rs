//! Hot reload of a policy folder under load. While the folder contains a
//! broken file, `serve --policies DIR` keeps deciding with the last good set
//! and counts the failed reload. It then switches to an edited set without
//! failing a request in between.

mod support;

use std::ffi::OsStr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::StatusCode;
use support::binary::{copy_shipped_policies, ServeProcess};
use support::client::{Connection, Protocol, TestResponse};
use support::recorded::{context_dir, review, ReviewResponse};
use support::{eventually, metric_value, WAIT_LIMIT};

const JSON: &str = "application/json";

/// How the shipped claim gate's deny message for 0010 starts.
const SHIPPED_MESSAGE: &str = "pod sei/pacific-fork-0-0 may not mount claim data-pacific-fork-0";
/// How it starts once the edited claim gate is loaded.
const EDITED_MESSAGE: &str =
    "reloaded: pod sei/pacific-fork-0-0 may not mount claim data-pacific-fork-0";
const RELOAD_FAILURES: &str = "genesis_gate_policy_reloads_total{outcome=\"failure\"}";
const RELOAD_SUCCESSES: &str = "genesis_gate_policy_reloads_total{outcome=\"success\"}";

/// Upper bounds of the background client, whichever comes first.
const MAX_REQUESTS: usize = 5_000;
const MAX_SENDING_TIME: Duration = Duration::from_secs(90);
/// Pause between requests, so that the client leaves CPU for the server.
const REQUEST_PAUSE: Duration = Duration::from_millis(5);

/// A policy file that parses as YAML but whose expression is not CEL.
const BROKEN_POLICY: &str = r#"apiVersion: genesis-gate.sei.io/v1alpha1
kind: ValidatingPolicy
metadata:
  name: broken-name-check
spec:
  matchConstraints:
    resourceRules:
      - apiGroups: [""]
        apiVersions: ["v1"]
        resources: ["pods"]
        operations: ["CREATE"]
  validations:
    - expression: "object.metadata.name =="
      message: the pod has no name
"#;

/// Each response, or the transport error, in the order the client got them.
type Responses = Arc<Mutex<Vec<Result<TestResponse, String>>>>;

/// Posts review 0010 to `/validate` in a loop on one keep-alive connection
/// until stopped, or until a bound or a transport error ends it.
struct ReviewLoop {
    responses: Responses,
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl ReviewLoop {
    fn start(mut connection: Connection) -> ReviewLoop {
        let responses: Responses = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let body = review("0010-Pod-CREATE.json").to_string();
        let (sink, stopped) = (responses.clone(), stop.clone());
        let task = tokio::spawn(async move {
            let deadline = tokio::time::Instant::now() + MAX_SENDING_TIME;
            for _ in 0..MAX_REQUESTS {
                if stopped.load(Ordering::SeqCst) || tokio::time::Instant::now() >= deadline {
                    break;
                }
                let result = connection.post("/validate", JSON, body.clone()).await;
                let failed = result.is_err();
                sink.lock()
                    .expect("responses lock")
                    .push(result.map_err(|e| e.to_string()));
                if failed {
                    break;
                }
                tokio::time::sleep(REQUEST_PAUSE).await;
            }
        });
        ReviewLoop {
            responses,
            stop,
            task,
        }
    }

    fn count(&self) -> usize {
        self.responses.lock().expect("responses lock").len()
    }

    fn last_message(&self) -> Option<String> {
        let responses = self.responses.lock().expect("responses lock");
        let last = responses.last()?.as_ref().ok()?;
        let value: serde_json::Value = serde_json::from_slice(&last.body).ok()?;
        value["response"]["status"]["message"]
            .as_str()
            .map(str::to_owned)
    }

    /// Waits until `more` responses past the current count have arrived.
    async fn wait_for_more(&self, more: usize) -> bool {
        let target = self.count() + more;
        eventually(|| {
            let reached = self.count() >= target;
            async move { reached }
        })
        .await
    }

    /// Stops the loop and returns every response it got.
    async fn finish(self) -> Vec<Result<TestResponse, String>> {
        self.stop.store(true, Ordering::SeqCst);
        tokio::time::timeout(WAIT_LIMIT, self.task)
            .await
            .expect("client loop stops")
            .expect("client loop task");
        let responses = Arc::try_unwrap(self.responses).expect("client loop ended");
        responses.into_inner().expect("responses lock")
    }
}

/// Writes `text` to `name` in `dir` through a file in `staging`, renamed
/// into place, so that the server never reads a half-written policy.
fn put_file(staging: &Path, dir: &Path, name: &str, text: &str) {
    let staged = staging.join(name);
    std::fs::write(&staged, text).expect("write staged file");
    std::fs::rename(&staged, dir.join(name)).expect("rename into the policy folder");
}

/// Returns the claim gate with the deny message of its last validation
/// prefixed by `reloaded: `.
fn edited_claim_gate(policies: &Path) -> String {
    let shipped = std::fs::read_to_string(policies.join("claim-gate.yaml")).expect("claim gate");
    let message_start =
        r#""pod " + request.namespace + "/" + variables.podName + " may not mount claim ""#;
    assert_eq!(
        shipped.matches(message_start).count(),
        1,
        "the claim gate's deny message changed; update this test"
    );
    shipped.replace(message_start, &format!(r#""reloaded: " + {message_start}"#))
}

async fn metrics_text(server: &ServeProcess) -> String {
    let mut connection = server.connect(Protocol::Http1).await;
    let response = connection.get("/metrics").await.expect("metrics");
    assert_eq!(response.status, StatusCode::OK);
    response.text()
}

#[tokio::test]
async fn reload_keeps_last_good_set_then_applies_edit() {
    let dir = tempfile::tempdir().expect("temporary folder");
    let (policies, staging, certs) = (
        dir.path().join("policies"),
        dir.path().join("staging"),
        dir.path().join("certs"),
    );
    for folder in [&policies, &staging] {
        std::fs::create_dir(folder).expect("create folder");
    }
    copy_shipped_policies(&policies);
    let context = context_dir("created");
    let server = ServeProcess::start(
        &certs,
        &[
            OsStr::new("--policies"),
            policies.as_os_str(),
            OsStr::new("--context"),
            context.as_os_str(),
        ],
    )
    .await;
    let client = ReviewLoop::start(server.connect(Protocol::Http1).await);
    assert!(
        client.wait_for_more(3).await,
        "no responses before the reload"
    );

    // (a) A broken file makes the reload fail, so the shipped set keeps deciding.
    put_file(&staging, &policies, "broken.yaml", BROKEN_POLICY);
    let serving = &server;
    let failure_counted =
        eventually(
            || async move { metric_value(&metrics_text(serving).await, RELOAD_FAILURES) >= 1.0 },
        )
        .await;
    assert!(
        failure_counted,
        "failed reload not counted\n{}",
        server.log()
    );
    assert!(
        client.wait_for_more(5).await,
        "client stalled after the failed reload"
    );
    let before_edit = client.count();

    // (b) A valid edit of the claim gate, with the broken file removed.
    let edited = edited_claim_gate(&policies);
    put_file(&staging, &policies, "claim-gate.yaml", &edited);
    std::fs::remove_file(policies.join("broken.yaml")).expect("remove broken policy");
    let switched = eventually(|| {
        let message = client.last_message();
        async move { message.is_some_and(|m| m.starts_with(EDITED_MESSAGE)) }
    })
    .await;
    assert!(switched, "edited message never served\n{}", server.log());
    assert!(
        client.wait_for_more(5).await,
        "client stalled after the reload"
    );
    let metrics = metrics_text(&server).await;
    let responses = client.finish().await;

    let mut first_edited = None;
    for (index, response) in responses.iter().enumerate() {
        let response = response
            .as_ref()
            .unwrap_or_else(|e| panic!("request {index} failed: {e}"));
        assert_eq!(
            response.status,
            StatusCode::OK,
            "request {index}: {}",
            response.text()
        );
        let answer = ReviewResponse::parse(&response.body);
        assert!(!answer.allowed, "request {index} allowed");
        assert_eq!(answer.code, Some(403), "request {index}");
        let message = answer.message_text();
        if message.starts_with(EDITED_MESSAGE) {
            first_edited.get_or_insert(index);
        } else {
            assert!(
                message.starts_with(SHIPPED_MESSAGE),
                "request {index}: {message}"
            );
            assert!(
                first_edited.is_none(),
                "request {index} got the shipped message after the edited one"
            );
        }
    }
    let first_edited = first_edited.expect("an edited message");
    assert!(
        first_edited >= before_edit,
        "request {first_edited} got the edited message before the edit"
    );
    assert!(metric_value(&metrics, RELOAD_SUCCESSES) >= 1.0, "{metrics}");
}
