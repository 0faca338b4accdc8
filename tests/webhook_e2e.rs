//! The real engine behind the real HTTPS server. With the embedded policies
//! and a cluster dump, it decides recorded AdmissionReviews sent over
//! HTTP/1.1 keep-alive and HTTP/2, and it rejects bad request bodies with a
//! 4xx whose message names the problem.

mod support;

use std::sync::Arc;

use genesis_gate::engine::{Engine, Gate};
use genesis_gate::lookup::FileSource;
use genesis_gate::metrics::Metrics;
use genesis_gate::policy;
use genesis_gate::server::DEFAULT_BODY_LIMIT;
use http::{StatusCode, Version};
use serde_json::{json, Value};
use support::client::{Connection, Protocol, TestResponse};
use support::recorded::{container_env, context_dir, recorded_endpoint, review, ReviewResponse};
use support::server::TestServer;

const JSON: &str = "application/json";

/// The claim that both nodes' pods mount in the recording.
const CLAIM: &str = "data-pacific-fork-0";

/// Starts the server with the embedded policies and the lookups of the
/// cluster dump `context`.
async fn start_engine_server(context: &str) -> TestServer {
    let policies = policy::load_embedded().expect("embedded policies load");
    let source = FileSource::load(&[context_dir(context)]).expect("cluster dump loads");
    let engine = Engine::new(policies, Arc::new(source), Arc::new(Metrics::new()));
    TestServer::start(Arc::new(Gate::new(Arc::new(engine)))).await
}

/// What a case expects in the AdmissionReview response.
enum Expect {
    /// Allowed, with no patch and no warning.
    Allow,
    /// Allowed, with no patch and one warning that contains each part.
    Warn(&'static [&'static str]),
    /// Allowed with a JSON Patch, which `check` verifies on the result.
    Patch(fn(&Value)),
    /// Denied with 403 Forbidden and a message that contains each part.
    Deny(&'static [&'static str]),
}

/// One recorded review, optionally edited, posted to `path`.
struct Case {
    name: &'static str,
    file: &'static str,
    /// The path to post to; the recorded endpoint when `None`.
    path: Option<&'static str>,
    edit: fn(&mut Value),
    expect: Expect,
}

impl Case {
    fn recorded(file: &'static str, expect: Expect) -> Case {
        Case {
            name: file,
            file,
            path: None,
            edit: |_| {},
            expect,
        }
    }

    fn path(&self) -> String {
        self.path
            .map(str::to_owned)
            .unwrap_or_else(|| recorded_endpoint(self.file))
    }

    fn body(&self) -> Value {
        let mut body = review(self.file);
        (self.edit)(&mut body);
        body
    }
}

const DENIED_STATEFULSET_POD: &[&str] = &[
    "pod sei/pacific-fork-0-0 may not mount claim data-pacific-fork-0",
    "sei.io/bootstrap-complete",
    "retries the pod by itself",
];
const DENIED_DEBUG_POD: &[&str] = &["pod sei/sei-debug may not mount claim data-pacific-fork-0"];
const STATEFULSET_WARNING: &[&str] = &[
    "StatefulSet sei/pacific-fork-0 mounts fork-genesis claim data-pacific-fork-0",
    "kubectl describe statefulset pacific-fork-0",
];

/// Edits 0008 into the same bootstrap pod sent by a user. The Job's labels
/// and controller ownerReference stay, but the Job controller did not send it.
fn bootstrap_pod_from_user(body: &mut Value) {
    body["request"]["uid"] = json!("0008-copied-by-a-user");
    body["request"]["userInfo"] = json!({
        "username": "e2e-admin",
        "groups": ["system:masters", "system:authenticated"],
    });
}

fn halt_height_on_seid(patched: &Value) {
    assert_eq!(
        container_env(patched, "seid", "SEID_HALT_HEIGHT").as_deref(),
        Some("200000001"),
        "seid container after the patch: {}",
        patched["spec"]["template"]["spec"]["containers"]
    );
}

/// Cases against the dump taken when the claims and Jobs were created and
/// no claim was bootstrap-complete yet.
fn created_cases() -> Vec<Case> {
    vec![
        Case::recorded("0010-Pod-CREATE.json", Expect::Deny(DENIED_STATEFULSET_POD)),
        Case::recorded("0008-Pod-CREATE.json", Expect::Allow),
        Case {
            name: "0008 sent by a user",
            edit: bootstrap_pod_from_user,
            ..Case::recorded(
                "0008-Pod-CREATE.json",
                Expect::Deny(&["pod sei/pacific-fork-0-bootstrap-z4twt may not mount claim data-pacific-fork-0"]),
            )
        },
        Case::recorded("0003-Job-CREATE.json", Expect::Patch(halt_height_on_seid)),
        Case::recorded("0001-PersistentVolumeClaim-CREATE.json", Expect::Allow),
        Case::recorded("0002-PersistentVolumeClaim-CREATE.json", Expect::Allow),
        // The StatefulSet notice and the claim gate are validating policies,
        // so the mutating webhook allows what the validating one warns on or
        // denies. The API server sends each request to both webhooks.
        Case::recorded("0005-StatefulSet-CREATE.json", Expect::Allow),
        Case {
            name: "0005 at /validate",
            path: Some("/validate"),
            ..Case::recorded("0005-StatefulSet-CREATE.json", Expect::Warn(STATEFULSET_WARNING))
        },
        Case::recorded("0007-StatefulSet-CREATE.json", Expect::Warn(STATEFULSET_WARNING)),
        Case::recorded("0059-Pod-CREATE.json", Expect::Allow),
        Case {
            name: "0059 at /validate",
            path: Some("/validate"),
            ..Case::recorded("0059-Pod-CREATE.json", Expect::Deny(DENIED_DEBUG_POD))
        },
        Case::recorded("0060-Pod-CREATE.json", Expect::Deny(DENIED_DEBUG_POD)),
    ]
}

/// Cases against the dump taken after `data-pacific-fork-0` was annotated
/// bootstrap-complete.
fn annotated_cases() -> Vec<Case> {
    vec![
        Case::recorded("0010-Pod-CREATE.json", Expect::Allow),
        Case::recorded("0023-Job-DELETE.json", Expect::Allow),
        Case::recorded("0024-Job-DELETE.json", Expect::Allow),
        Case::recorded("0033-Scale_scale-UPDATE.json", Expect::Allow),
        Case::recorded("0034-Scale_scale-UPDATE.json", Expect::Allow),
        Case::recorded("0051-Pod_ephemeralcontainers-UPDATE.json", Expect::Allow),
        Case::recorded("0052-Pod_ephemeralcontainers-UPDATE.json", Expect::Allow),
    ]
}

/// Checks one response against its case.
fn check(case: &Case, request: &Value, response: &TestResponse) {
    let name = case.name;
    assert_eq!(
        response.status,
        StatusCode::OK,
        "{name}: {}",
        response.text()
    );
    let answer = ReviewResponse::parse(&response.body);
    assert_eq!(answer.uid, request["request"]["uid"], "{name}: echoed uid");
    match &case.expect {
        Expect::Allow | Expect::Warn(_) => {
            assert!(answer.allowed, "{name}: denied: {}", answer.message_text());
            assert!(
                answer.patch.is_none(),
                "{name}: unexpected patch {:?}",
                answer.patch
            );
            assert!(
                answer.patch_type.is_none(),
                "{name}: patchType without a patch"
            );
        }
        Expect::Patch(_) => assert!(answer.allowed, "{name}: denied: {}", answer.message_text()),
        Expect::Deny(_) => {
            assert!(!answer.allowed, "{name}: allowed");
            assert_eq!(answer.code, Some(403), "{name}: status code");
            assert_eq!(
                answer.reason.as_deref(),
                Some("Forbidden"),
                "{name}: reason"
            );
            assert!(answer.patch.is_none(), "{name}: denial carries a patch");
        }
    }
    match &case.expect {
        Expect::Warn(parts) => {
            assert_eq!(
                answer.warnings.len(),
                1,
                "{name}: warnings {:?}",
                answer.warnings
            );
            for part in *parts {
                assert!(
                    answer.warnings[0].contains(part),
                    "{name}: warning {:?} lacks {part:?}",
                    answer.warnings[0]
                );
            }
        }
        _ => assert!(
            answer.warnings.is_empty(),
            "{name}: warnings {:?}",
            answer.warnings
        ),
    }
    if let Expect::Deny(parts) = &case.expect {
        for part in *parts {
            assert!(
                answer.message_text().contains(part),
                "{name}: message {:?} lacks {part:?}",
                answer.message_text()
            );
        }
    }
    if let Expect::Patch(verify) = &case.expect {
        assert_eq!(
            answer.patch_type.as_deref(),
            Some("JSONPatch"),
            "{name}: patchType"
        );
        verify(&answer.patched(&request["request"]["object"]));
    }
}

/// Posts every case over one connection to a server on the `context` dump.
async fn replay_on_one_connection(context: &str, cases: Vec<Case>, protocol: Protocol) {
    let server = start_engine_server(context).await;
    let mut connection = server.connect(protocol).await;
    let version = match protocol {
        Protocol::Http1 => Version::HTTP_11,
        Protocol::Http2 => Version::HTTP_2,
    };
    for case in &cases {
        let request = case.body();
        let response = connection
            .post(&case.path(), JSON, request.to_string())
            .await
            .unwrap_or_else(|e| panic!("{}: request failed: {e}", case.name));
        assert_eq!(response.version, version, "{}: HTTP version", case.name);
        check(case, &request, &response);
    }
}

#[tokio::test]
async fn recorded_reviews_over_http1_keep_alive() {
    replay_on_one_connection("created", created_cases(), Protocol::Http1).await;
    replay_on_one_connection("annotated", annotated_cases(), Protocol::Http1).await;
}

#[tokio::test]
async fn recorded_reviews_over_http2() {
    replay_on_one_connection("created", created_cases(), Protocol::Http2).await;
    replay_on_one_connection("annotated", annotated_cases(), Protocol::Http2).await;
}

#[tokio::test]
async fn claim_gate_denial_rests_on_the_claim_annotation() {
    // The same pod, the same policies: only the claim in the dump differs.
    let pod = Case::recorded("0010-Pod-CREATE.json", Expect::Allow);
    let mut answers = Vec::new();
    for context in ["created", "annotated"] {
        let server = start_engine_server(context).await;
        let mut connection = server.connect(Protocol::Http2).await;
        let response = connection
            .post(&pod.path(), JSON, pod.body().to_string())
            .await
            .expect("review of 0010");
        answers.push(ReviewResponse::parse(&response.body));
    }
    assert!(!answers[0].allowed, "0010 allowed while {CLAIM} is pending");
    assert!(
        answers[1].allowed,
        "0010 denied once {CLAIM} is complete: {}",
        answers[1].message_text()
    );
}

/// A body that is not a usable AdmissionReview, with the expected status and
/// the parts of the message that name the problem.
struct BadInput {
    name: &'static str,
    content_type: &'static str,
    body: Vec<u8>,
    status: StatusCode,
    names: &'static [&'static str],
}

fn with_review(edit: impl FnOnce(&mut Value)) -> Vec<u8> {
    let mut body = review("0010-Pod-CREATE.json");
    edit(&mut body);
    body.to_string().into_bytes()
}

fn bad_inputs() -> Vec<BadInput> {
    let bad = |name, body, names| BadInput {
        name,
        content_type: JSON,
        body,
        status: StatusCode::BAD_REQUEST,
        names,
    };
    let good = review("0010-Pod-CREATE.json").to_string();
    let truncated = good.as_bytes()[..good.len() / 2].to_vec();
    vec![
        bad("malformed JSON", truncated, &["not valid JSON"]),
        bad(
            "JSON array",
            format!("[{good}]").into_bytes(),
            &["an array", "not an object"],
        ),
        bad(
            "wrong kind",
            with_review(|r| r["kind"] = json!("Pod")),
            &["kind", "\"Pod\"", "\"AdmissionReview\""],
        ),
        bad(
            "wrong apiVersion",
            with_review(|r| r["apiVersion"] = json!("admission.k8s.io/v1beta1")),
            &["apiVersion", "admission.k8s.io/v1beta1"],
        ),
        bad(
            "missing request",
            with_review(|r| {
                r.as_object_mut().map(|fields| fields.remove("request"));
            }),
            &["no request"],
        ),
        bad(
            "missing uid",
            with_review(|r| {
                r["request"]
                    .as_object_mut()
                    .map(|fields| fields.remove("uid"));
            }),
            &["uid"],
        ),
        bad(
            "empty uid",
            with_review(|r| r["request"]["uid"] = json!("")),
            &["empty uid"],
        ),
        bad(
            "object that is a string",
            with_review(|r| r["request"]["object"] = json!("pacific-fork-0-0")),
            &["request.object", "a string"],
        ),
        BadInput {
            name: "text/plain content type",
            content_type: "text/plain",
            body: good.into_bytes(),
            status: StatusCode::UNSUPPORTED_MEDIA_TYPE,
            names: &["text/plain", "application/json"],
        },
    ]
}

/// Posts review 0010 and checks that the engine still denies it.
async fn assert_still_serving(connection: &mut Connection, after: &str) {
    let response = connection
        .post(
            "/validate",
            JSON,
            review("0010-Pod-CREATE.json").to_string(),
        )
        .await
        .unwrap_or_else(|e| panic!("good review after {after} failed: {e}"));
    assert_eq!(
        response.status,
        StatusCode::OK,
        "after {after}: {}",
        response.text()
    );
    let answer = ReviewResponse::parse(&response.body);
    assert!(!answer.allowed, "after {after}: 0010 allowed");
    assert!(
        answer.message_text().contains(DENIED_STATEFULSET_POD[0]),
        "after {after}: {}",
        answer.message_text()
    );
}

#[tokio::test]
async fn bad_bodies_get_4xx_naming_the_problem() {
    let server = start_engine_server("created").await;
    for protocol in [Protocol::Http1, Protocol::Http2] {
        let mut connection = server.connect(protocol).await;
        for input in bad_inputs() {
            let name = input.name;
            let response = connection
                .post("/validate", input.content_type, input.body)
                .await
                .unwrap_or_else(|e| panic!("{name}: request failed: {e}"));
            assert_eq!(
                response.status,
                input.status,
                "{name} over {protocol:?}: {}",
                response.text()
            );
            for part in input.names {
                assert!(
                    response.text().contains(part),
                    "{name}: message {:?} lacks {part:?}",
                    response.text()
                );
            }
            assert_still_serving(&mut connection, name).await;
        }
    }
}

#[tokio::test]
async fn body_over_limit_gets_413_and_serving_continues() {
    let server = start_engine_server("created").await;
    let padding = "x".repeat(DEFAULT_BODY_LIMIT);
    let oversized = with_review(|r| {
        r["request"]["object"]["metadata"]["annotations"] = json!({ "padding": padding })
    });
    assert!(oversized.len() > DEFAULT_BODY_LIMIT);
    for protocol in [Protocol::Http1, Protocol::Http2] {
        let mut connection = server.connect(protocol).await;
        let response = connection
            .post("/validate", JSON, oversized.clone())
            .await
            .unwrap_or_else(|e| panic!("oversized body over {protocol:?}: {e}"));
        assert_eq!(
            response.status,
            StatusCode::PAYLOAD_TOO_LARGE,
            "{}",
            response.text()
        );
        assert!(
            response.text().contains(&DEFAULT_BODY_LIMIT.to_string()),
            "{}",
            response.text()
        );
        // An HTTP/1.1 server may close a connection whose body it did not
        // read, so the next review goes on a new connection.
        let mut next = server.connect(protocol).await;
        assert_still_serving(&mut next, "the oversized body").await;
    }
}
