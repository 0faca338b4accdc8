//! The built binary: `serve` with its embedded policies and a fresh
//! development certificate, up to a clean stop on SIGTERM, and the `review`,
//! `test` and `certs` subcommands.

mod support;

use std::ffi::OsStr;

use base64::Engine as _;
use http::StatusCode;
use serde_json::Value;
use support::binary::{copy_shipped_policies, run, ServeProcess};
use support::client::Protocol;
use support::recorded::{container_env, context_dir, review, review_path, ReviewResponse};
use support::WAIT_LIMIT;

const JSON: &str = "application/json";

fn stdout(output: &std::process::Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &std::process::Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[tokio::test]
async fn serve_denies_pending_claim_and_stops_on_sigterm() {
    let certs = tempfile::tempdir().expect("temporary folder");
    let context = context_dir("created");
    let mut server = ServeProcess::start(
        certs.path(),
        &[OsStr::new("--context"), context.as_os_str()],
    )
    .await;
    // The handshake verifies the served certificate against the ca.pem that
    // serve created, for the name localhost.
    let mut connection = server.connect(Protocol::Http2).await;

    let request = review("0010-Pod-CREATE.json");
    let response = connection
        .post("/validate", JSON, request.to_string())
        .await
        .expect("review of 0010");
    assert_eq!(response.status, StatusCode::OK, "{}", response.text());
    let answer = ReviewResponse::parse(&response.body);
    assert_eq!(answer.uid, request["request"]["uid"]);
    assert!(!answer.allowed, "0010 allowed while its claim is pending");
    assert_eq!(answer.code, Some(403));
    assert_eq!(answer.reason.as_deref(), Some("Forbidden"));
    assert!(
        answer
            .message_text()
            .contains("pod sei/pacific-fork-0-0 may not mount claim data-pacific-fork-0"),
        "{}",
        answer.message_text()
    );

    server.terminate();
    let status = server.exited_within(WAIT_LIMIT).await;
    let log = server.log();
    let status = status.unwrap_or_else(|| panic!("serve still running after SIGTERM\n{log}"));
    assert!(status.success(), "serve exited with {status}\n{log}");
    // stderr is a pipe here, as it is for a container runtime.
    assert!(
        !log.contains('\u{1b}'),
        "colour codes in a piped log:\n{log}"
    );
    assert!(
        log.contains("signal=\"SIGTERM\""),
        "no SIGTERM line in the log:\n{log}"
    );
    assert!(
        log.contains("server stopped"),
        "no stop line in the log:\n{log}"
    );
}

#[test]
fn review_prints_patch_and_patched_object() {
    let file = review_path("0003-Job-CREATE.json");
    let context = context_dir("created");
    let output = run([
        OsStr::new("review"),
        file.as_os_str(),
        OsStr::new("--context"),
        context.as_os_str(),
    ]);
    assert!(
        output.status.success(),
        "review failed: {}",
        stderr(&output)
    );
    let printed: Value = serde_json::from_str(&stdout(&output)).expect("review prints JSON");

    let operations = printed["patch"].as_array().expect("patch is a list");
    assert!(!operations.is_empty(), "empty patch");
    assert_eq!(
        container_env(&printed["patchedObject"], "seid", "SEID_HALT_HEIGHT").as_deref(),
        Some("200000001")
    );
    // The mutate response in the output is the AdmissionReview the webhook
    // would send, so its base64 patch decodes to the printed one.
    let response = ReviewResponse::parse(printed["mutate"].to_string().as_bytes());
    let encoded = serde_json::to_value(response.patch.expect("mutate response has a patch"))
        .expect("patch as JSON");
    assert_eq!(encoded, printed["patch"]);
    assert_eq!(printed["validate"]["response"]["allowed"], true);
}

/// Returns the counts of a `N passed, M failed` line.
fn passed_failed(text: &str) -> Option<(usize, usize)> {
    text.lines().find_map(|line| {
        let (passed, failed) = line.trim().split_once(" passed, ")?;
        let failed = failed.strip_suffix(" failed")?;
        Some((passed.parse().ok()?, failed.parse().ok()?))
    })
}

#[test]
fn test_passes_shipped_suites() {
    let output = run(["test"]);
    let printed = stdout(&output);
    assert!(
        output.status.success(),
        "test failed:\n{printed}{}",
        stderr(&output)
    );
    let (passed, failed) = passed_failed(&printed).expect("a summary line");
    assert!(passed > 0, "no case ran:\n{printed}");
    assert_eq!(failed, 0, "{printed}");
}

#[test]
fn test_fails_on_wrong_expectation() {
    let suites = tempfile::tempdir().expect("temporary folder");
    let suite = format!(
        "name: wrong\ncases:\n  - name: pending claim expected to admit\n    review: {}\n    \
         endpoint: validate\n    context: [{}]\n    expect:\n      allowed: true\n",
        review_path("0010-Pod-CREATE.json").display(),
        context_dir("created").display()
    );
    std::fs::write(suites.path().join("wrong.yaml"), suite).expect("write suite");

    let output = run([OsStr::new("test"), suites.path().as_os_str()]);
    let printed = stdout(&output);
    assert_eq!(
        output.status.code(),
        Some(1),
        "{printed}{}",
        stderr(&output)
    );
    assert!(
        printed.contains("test wrong::pending claim expected to admit ... FAILED"),
        "{printed}"
    );
    assert_eq!(passed_failed(&printed), Some((0, 1)), "{printed}");
}

/// A policy whose only validation is not valid CEL: the expression ends
/// after `==`, at line 1, column 24.
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

#[test]
fn serve_rejects_invalid_policy_folder() {
    let dir = tempfile::tempdir().expect("temporary folder");
    let policies = dir.path().join("policies");
    std::fs::create_dir(&policies).expect("policy folder");
    copy_shipped_policies(&policies);
    let broken = policies.join("broken.yaml");
    std::fs::write(&broken, BROKEN_POLICY).expect("write broken policy");

    let output = run([
        OsStr::new("serve"),
        OsStr::new("--listen"),
        OsStr::new("127.0.0.1:0"),
        OsStr::new("--no-cluster"),
        OsStr::new("--cert-dir"),
        dir.path().join("certs").as_os_str(),
        OsStr::new("--policies"),
        policies.as_os_str(),
    ]);
    let message = stderr(&output);
    assert!(
        !output.status.success(),
        "serve started with a broken policy"
    );
    assert!(message.contains(&broken.display().to_string()), "{message}");
    assert!(message.contains("broken-name-check"), "{message}");
    assert!(
        message.contains("spec.validations[0].expression"),
        "{message}"
    );
    assert!(message.contains("line 1, column 24"), "{message}");
}

#[test]
fn certs_prints_ca_bundle() {
    let dir = tempfile::tempdir().expect("temporary folder");
    let out = dir.path().join("certs");
    let output = run([
        OsStr::new("certs"),
        OsStr::new("--service"),
        OsStr::new("s"),
        OsStr::new("--namespace"),
        OsStr::new("n"),
        OsStr::new("--out"),
        out.as_os_str(),
    ]);
    assert!(output.status.success(), "certs failed: {}", stderr(&output));
    let bundle = stdout(&output);
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(bundle.trim())
        .expect("caBundle is base64");
    let ca = std::fs::read(out.join("ca.pem")).expect("ca.pem written");
    assert_eq!(decoded, ca, "caBundle is not the written ca.pem");
    assert!(String::from_utf8_lossy(&decoded).starts_with("-----BEGIN CERTIFICATE-----"));
}
