//! Recorded AdmissionReviews and cluster dumps under `tests/fixtures/`, and
//! a parsed view of the AdmissionReview responses the server returns.

use std::path::PathBuf;

use base64::Engine as _;
use serde_json::Value;

/// Returns the repository's `tests/fixtures` folder.
pub fn fixtures_dir() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures"))
}

/// Returns the path of a recorded review, such as `0010-Pod-CREATE.json`.
pub fn review_path(file: &str) -> PathBuf {
    fixtures_dir().join("admissionreviews").join(file)
}

/// Returns the folder of a cluster dump: `created`,
/// `created-with-bootstrap-pods` or `annotated`.
pub fn context_dir(name: &str) -> PathBuf {
    fixtures_dir().join("context").join(name)
}

/// Reads a recorded review as JSON.
pub fn review(file: &str) -> Value {
    let path = review_path(file);
    let text = std::fs::read(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    serde_json::from_slice(&text).unwrap_or_else(|e| panic!("parse {}: {e}", path.display()))
}

/// Returns the path, `/mutate` or `/validate`, that the API server posted
/// `file` to, from the second column of `index.tsv`.
pub fn recorded_endpoint(file: &str) -> String {
    let index = fixtures_dir().join("admissionreviews/index.tsv");
    let text = std::fs::read_to_string(&index).expect("index.tsv");
    text.lines()
        .map(|line| line.split('\t').collect::<Vec<_>>())
        .find(|columns| columns.first() == Some(&file))
        .and_then(|columns| columns.get(1).map(|endpoint| (*endpoint).to_owned()))
        .unwrap_or_else(|| panic!("{file} is not listed in index.tsv"))
}

/// The `response` of an AdmissionReview, with the patch decoded.
#[derive(Debug)]
pub struct ReviewResponse {
    pub uid: String,
    pub allowed: bool,
    /// `status.code`, present on denials.
    pub code: Option<u64>,
    /// `status.reason`, present on denials.
    pub reason: Option<String>,
    /// `status.message`, present on denials.
    pub message: Option<String>,
    pub warnings: Vec<String>,
    pub patch_type: Option<String>,
    /// The JSON Patch operations, base64-decoded from `patch`.
    pub patch: Option<json_patch::Patch>,
}

impl ReviewResponse {
    /// Parses an AdmissionReview response body. Panics with the body when
    /// it is not one, since the test then has nothing to check.
    pub fn parse(body: &[u8]) -> ReviewResponse {
        let text = String::from_utf8_lossy(body);
        let review: Value = serde_json::from_slice(body)
            .unwrap_or_else(|e| panic!("response is not JSON ({e}): {text}"));
        assert_eq!(review["apiVersion"], "admission.k8s.io/v1", "{text}");
        assert_eq!(review["kind"], "AdmissionReview", "{text}");
        let response = &review["response"];
        let string = |value: &Value| value.as_str().map(str::to_owned);
        ReviewResponse {
            uid: string(&response["uid"]).unwrap_or_else(|| panic!("no response.uid: {text}")),
            allowed: response["allowed"]
                .as_bool()
                .unwrap_or_else(|| panic!("no response.allowed: {text}")),
            code: response["status"]["code"].as_u64(),
            reason: string(&response["status"]["reason"]),
            message: string(&response["status"]["message"]),
            warnings: response["warnings"]
                .as_array()
                .map(|list| list.iter().filter_map(string).collect())
                .unwrap_or_default(),
            patch_type: string(&response["patchType"]),
            patch: decode_patch(&response["patch"], &text),
        }
    }

    /// Returns the deny message, or an empty string on an allow.
    pub fn message_text(&self) -> &str {
        self.message.as_deref().unwrap_or("")
    }

    /// Applies the patch to `object` and returns the result.
    pub fn patched(&self, object: &Value) -> Value {
        let patch = self.patch.as_ref().expect("response carries a patch");
        let mut patched = object.clone();
        json_patch::patch(&mut patched, patch).expect("patch applies to the request's object");
        patched
    }
}

/// Decodes `response.patch`, which the API server reads as base64 of a JSON
/// Patch document.
fn decode_patch(patch: &Value, text: &str) -> Option<json_patch::Patch> {
    if patch.is_null() {
        return None;
    }
    let encoded = patch
        .as_str()
        .unwrap_or_else(|| panic!("response.patch is not a base64 string: {text}"));
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .unwrap_or_else(|e| panic!("response.patch is not base64 ({e}): {text}"));
    let patch = serde_json::from_slice(&decoded)
        .unwrap_or_else(|e| panic!("response.patch is not a JSON Patch ({e}): {text}"));
    Some(patch)
}

/// Returns the `env` value of `name` in container `container` of a Job or
/// Pod template, if set.
pub fn container_env(object: &Value, container: &str, name: &str) -> Option<String> {
    let containers = object
        .pointer("/spec/template/spec/containers")
        .and_then(Value::as_array)?;
    containers
        .iter()
        .find(|c| c["name"] == container)?
        .get("env")?
        .as_array()?
        .iter()
        .find(|variable| variable["name"] == name)?
        .get("value")?
        .as_str()
        .map(str::to_owned)
}
