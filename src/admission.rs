//! AdmissionReview `admission.k8s.io/v1`: parsing the request body at the
//! edge and building the response.

use std::fmt;

use kube::core::admission::{AdmissionRequest, AdmissionResponse, Operation};
use kube::core::{DynamicObject, Status, TypeMeta};
use serde::Deserialize;
use serde_json::Value;

/// The webhook path a review arrived on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Endpoint {
    /// `/validate`: validating policies only; never patches.
    Validate,
    /// `/mutate`: mutating policies only.
    Mutate,
}

impl Endpoint {
    pub fn as_str(self) -> &'static str {
        match self {
            Endpoint::Validate => "validate",
            Endpoint::Mutate => "mutate",
        }
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A request body that is not a usable AdmissionReview. The HTTP layer
/// responds with `status` and `message` as plain text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct RequestError {
    /// HTTP status code, 4xx.
    pub status: u16,
    pub message: String,
}

const API_VERSION: &str = "admission.k8s.io/v1";
const KIND: &str = "AdmissionReview";

/// A parsed AdmissionReview request.
///
/// The typed header comes from kube-core's admission types. `object` and
/// `old_object` stay as parsed JSON, because CEL reads them in place and a
/// mutation patches the raw JSON: a typed round trip would drop fields the
/// types do not know.
#[derive(Debug)]
pub struct Review {
    /// The typed request, without `object` and `oldObject`.
    pub header: AdmissionRequest<DynamicObject>,
    /// The request as JSON, without `object` and `oldObject`: CEL's `request`.
    pub request: Value,
    /// The object being admitted; `Value::Null` on DELETE and CONNECT.
    pub object: Value,
    /// The existing object on UPDATE and DELETE; otherwise `Value::Null`.
    pub old_object: Value,
}

impl RequestError {
    fn bad_request(message: impl Into<String>) -> RequestError {
        RequestError {
            status: 400,
            message: message.into(),
        }
    }
}

impl Review {
    /// Parses an AdmissionReview request body.
    pub fn parse(body: &[u8]) -> Result<Review, RequestError> {
        let mut envelope: Value = serde_json::from_slice(body).map_err(|error| {
            RequestError::bad_request(format!(
                "request body is not valid JSON ({error}); send an AdmissionReview of apiVersion {API_VERSION}"
            ))
        })?;
        let Some(fields) = envelope.as_object_mut() else {
            return Err(RequestError::bad_request(format!(
                "request body is JSON {}, not an object; send an AdmissionReview of apiVersion {API_VERSION}",
                json_type(&envelope)
            )));
        };
        check_type_field(fields.get("apiVersion"), "apiVersion", API_VERSION)?;
        check_type_field(fields.get("kind"), "kind", KIND)?;
        let mut request = match fields.remove("request") {
            Some(request @ Value::Object(_)) => request,
            Some(Value::Null) | None => {
                return Err(RequestError::bad_request(
                    "AdmissionReview has no request; the API server always sends one, so check what posted this body",
                ))
            }
            Some(other) => {
                return Err(RequestError::bad_request(format!(
                    "AdmissionReview request is JSON {}, not an object",
                    json_type(&other)
                )))
            }
        };
        let object = take_object(&mut request, "object")?;
        let old_object = take_object(&mut request, "oldObject")?;
        let mut header =
            AdmissionRequest::<DynamicObject>::deserialize(&request).map_err(|error| {
                RequestError::bad_request(format!("AdmissionReview request is invalid: {error}"))
            })?;
        if header.uid.is_empty() {
            return Err(RequestError::bad_request(
                "AdmissionReview request has an empty uid; the response must echo it",
            ));
        }
        header.types = TypeMeta {
            api_version: API_VERSION.to_owned(),
            kind: KIND.to_owned(),
        };
        Ok(Review {
            header,
            request,
            object,
            old_object,
        })
    }

    pub fn uid(&self) -> &str {
        &self.header.uid
    }

    pub fn kind(&self) -> &str {
        &self.header.kind.kind
    }

    pub fn operation(&self) -> &'static str {
        operation_name(&self.header.operation)
    }

    pub fn namespace(&self) -> Option<&str> {
        self.header.namespace.as_deref()
    }

    /// Returns the object's name, else its `generateName` followed by `*`,
    /// else `-`.
    pub fn display_name(&self) -> String {
        if !self.header.name.is_empty() {
            return self.header.name.clone();
        }
        let generate_name = self
            .object
            .pointer("/metadata/generateName")
            .and_then(Value::as_str);
        match generate_name {
            Some(prefix) => format!("{prefix}*"),
            None => "-".to_owned(),
        }
    }
}

pub fn operation_name(operation: &Operation) -> &'static str {
    match operation {
        Operation::Create => "CREATE",
        Operation::Update => "UPDATE",
        Operation::Delete => "DELETE",
        Operation::Connect => "CONNECT",
    }
}

fn check_type_field(
    found: Option<&Value>,
    field: &str,
    expected: &str,
) -> Result<(), RequestError> {
    match found {
        Some(Value::String(value)) if value == expected => Ok(()),
        Some(Value::String(value)) => Err(RequestError::bad_request(format!(
            "AdmissionReview {field} {value:?} is not supported; expected {expected:?} (register the webhook with admissionReviewVersions: [v1])"
        ))),
        Some(other) => Err(RequestError::bad_request(format!(
            "AdmissionReview {field} is JSON {}; expected the string {expected:?}",
            json_type(other)
        ))),
        None => Err(RequestError::bad_request(format!(
            "AdmissionReview has no {field}; expected {expected:?}"
        ))),
    }
}

fn take_object(request: &mut Value, field: &str) -> Result<Value, RequestError> {
    let taken = request
        .as_object_mut()
        .and_then(|fields| fields.remove(field))
        .unwrap_or(Value::Null);
    match taken {
        Value::Object(_) | Value::Null => Ok(taken),
        other => Err(RequestError::bad_request(format!(
            "AdmissionReview request.{field} is JSON {}, not an object",
            json_type(&other)
        ))),
    }
}

pub(crate) fn json_type(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// The decision on one review, before it is encoded.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Verdict {
    /// `Some(message)` denies with 403 Forbidden.
    pub denial: Option<Denial>,
    pub warnings: Vec<String>,
    pub audit_annotations: Vec<(String, String)>,
    /// JSON Patch operations against the request's object.
    pub patch: Vec<json_patch::PatchOperation>,
}

/// The reason and status of a denial.
#[derive(Debug, Clone, PartialEq)]
pub struct Denial {
    pub message: String,
    /// The Status reason, `Forbidden` unless a policy names another.
    pub reason: String,
    /// HTTP code in the Status, 403 unless a policy's reason maps elsewhere.
    pub code: u16,
}

impl Verdict {
    pub fn allowed(&self) -> bool {
        self.denial.is_none()
    }

    /// Builds the AdmissionResponse for `review`.
    pub fn into_response(self, review: &Review) -> AdmissionResponse {
        let mut response = AdmissionResponse::from(&review.header);
        if let Some(denial) = self.denial {
            response.allowed = false;
            response.result =
                Status::failure(&denial.message, &denial.reason).with_code(denial.code);
        } else if !self.patch.is_empty() {
            match response.clone().with_patch(json_patch::Patch(self.patch)) {
                Ok(patched) => response = patched,
                Err(error) => {
                    // Serialising a patch of JSON values cannot fail, but if it
                    // did, an unpatched allow would skip a required mutation.
                    response.allowed = false;
                    response.result = Status::failure(
                        &format!("genesis-gate could not encode its patch: {error}"),
                        "InternalError",
                    )
                    .with_code(500);
                }
            }
        }
        if !self.warnings.is_empty() {
            response.warnings = Some(self.warnings);
        }
        response.audit_annotations = self.audit_annotations.into_iter().collect();
        response
    }
}

/// Encodes a response as an AdmissionReview body.
pub fn encode(response: AdmissionResponse) -> Vec<u8> {
    // An AdmissionReview of strings, numbers and bytes always serialises.
    serde_json::to_vec(&review_json(response)).unwrap_or_default()
}

/// Builds the AdmissionReview JSON of a response, with `patch` in base64.
///
/// kube-core 5 stores the patch as `Vec<u8>` without a serde attribute, so
/// serde writes it as an array of numbers. The API's `patch` is a Go
/// `[]byte`, which is base64 in JSON, and that is the documented form.
pub fn review_json(mut response: AdmissionResponse) -> Value {
    use base64::Engine as _;
    let patch = response.patch.take();
    let mut review = serde_json::to_value(response.into_review()).unwrap_or_default();
    if let Some(patch) = patch {
        let encoded = base64::engine::general_purpose::STANDARD.encode(patch);
        review["response"]["patch"] = Value::String(encoded);
    }
    review
}

#[cfg(test)]
mod tests {
    use super::*;

    const POD_REVIEW: &str =
        include_str!("../tests/fixtures/admissionreviews/0010-Pod-CREATE.json");

    fn parse_error(body: &str) -> RequestError {
        Review::parse(body.as_bytes()).expect_err("body should be rejected")
    }

    #[test]
    fn recorded_review_parses() {
        let review = Review::parse(POD_REVIEW.as_bytes()).unwrap();
        assert_eq!(review.uid(), "9bf5408f-806d-422f-92c2-f6f655d53320");
        assert_eq!(review.kind(), "Pod");
        assert_eq!(review.operation(), "CREATE");
        assert_eq!(review.object["metadata"]["name"], "pacific-fork-0-0");
        assert!(review.old_object.is_null());
        assert!(
            review.request.get("object").is_none(),
            "object is moved out of request"
        );
    }

    #[test]
    fn invalid_json_names_the_problem() {
        let error = parse_error("{not json");
        assert_eq!(error.status, 400);
        assert!(
            error.message.contains("not valid JSON"),
            "{}",
            error.message
        );
    }

    #[test]
    fn wrong_api_version_names_value_and_fix() {
        let body = POD_REVIEW.replace("admission.k8s.io/v1", "admission.k8s.io/v1beta1");
        let error = parse_error(&body);
        assert!(
            error.message.contains("\"admission.k8s.io/v1beta1\""),
            "{}",
            error.message
        );
        assert!(
            error.message.contains("admissionReviewVersions: [v1]"),
            "{}",
            error.message
        );
    }

    #[test]
    fn wrong_kind_is_rejected() {
        let body = POD_REVIEW.replacen("\"AdmissionReview\"", "\"TokenReview\"", 1);
        let error = parse_error(&body);
        assert!(
            error.message.contains("kind \"TokenReview\""),
            "{}",
            error.message
        );
    }

    #[test]
    fn missing_request_is_rejected() {
        let error = parse_error(r#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview"}"#);
        assert!(
            error.message.contains("has no request"),
            "{}",
            error.message
        );
    }

    #[test]
    fn missing_uid_is_rejected() {
        let mut value: Value = serde_json::from_str(POD_REVIEW).unwrap();
        value["request"].as_object_mut().unwrap().remove("uid");
        let error = parse_error(&value.to_string());
        assert!(error.message.contains("uid"), "{}", error.message);
    }

    #[test]
    fn empty_uid_is_rejected() {
        let mut value: Value = serde_json::from_str(POD_REVIEW).unwrap();
        value["request"]["uid"] = Value::from("");
        let error = parse_error(&value.to_string());
        assert!(error.message.contains("empty uid"), "{}", error.message);
    }

    #[test]
    fn non_object_object_is_rejected() {
        let mut value: Value = serde_json::from_str(POD_REVIEW).unwrap();
        value["request"]["object"] = Value::from("pod");
        let error = parse_error(&value.to_string());
        assert!(
            error.message.contains("request.object is JSON a string"),
            "{}",
            error.message
        );
    }

    #[test]
    fn denial_is_forbidden_with_uid() {
        let review = Review::parse(POD_REVIEW.as_bytes()).unwrap();
        let verdict = Verdict {
            denial: Some(Denial {
                message: "no".to_owned(),
                reason: "Forbidden".to_owned(),
                code: 403,
            }),
            ..Verdict::default()
        };
        let body: Value = serde_json::from_slice(&encode(verdict.into_response(&review))).unwrap();
        assert_eq!(body["apiVersion"], "admission.k8s.io/v1");
        assert_eq!(body["kind"], "AdmissionReview");
        assert_eq!(body["response"]["uid"], review.uid());
        assert_eq!(body["response"]["allowed"], false);
        assert_eq!(body["response"]["status"]["code"], 403);
        assert_eq!(body["response"]["status"]["reason"], "Forbidden");
    }

    #[test]
    fn encoded_patch_is_base64_of_json_patch() {
        let body = serde_json::json!({
            "apiVersion": API_VERSION,
            "kind": KIND,
            "request": {
                "uid": "u-1",
                "kind": {"group": "", "version": "v1", "kind": "Pod"},
                "resource": {"group": "", "version": "v1", "resource": "pods"},
                "operation": "CREATE",
                "userInfo": {},
                "object": {"metadata": {"name": "p"}},
            },
        });
        let review = Review::parse(body.to_string().as_bytes()).expect("valid review");

        let operation: json_patch::PatchOperation =
            serde_json::from_value(serde_json::json!({"op": "add", "path": "/a", "value": 1}))
                .expect("patch operation");
        let verdict = Verdict {
            patch: vec![operation],
            ..Verdict::default()
        };
        let encoded: Value =
            serde_json::from_slice(&encode(verdict.into_response(&review))).expect("JSON");

        let response = &encoded["response"];
        assert_eq!(response["uid"], "u-1");
        assert_eq!(response["patchType"], "JSONPatch");

        use base64::Engine as _;
        let text = response["patch"].as_str().expect("patch is a string");
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(text)
            .expect("patch is base64");
        let patch: Value = serde_json::from_slice(&decoded).expect("patch is JSON");
        assert_eq!(
            patch,
            serde_json::json!([{"op": "add", "path": "/a", "value": 1}])
        );
    }
}
