//! The per-policy traces that `--explain` prints.

use serde::Serialize;
use serde_json::Value;

/// The evaluation of one policy on one request.
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PolicyTrace {
    pub policy: String,
    pub matched: bool,
    /// The reason the policy did not apply, or the step that decided its result.
    pub decided_by: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub match_conditions: Vec<NamedResult>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub variables: Vec<NamedResult>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub lookups: Vec<LookupTrace>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub validations: Vec<NamedResult>,
    /// Set when a deny resting on cached lookups was checked by live reads.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub confirmed_live: bool,
}

/// An expression's name and its value or error.
#[derive(Debug, Clone, Serialize)]
pub struct NamedResult {
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl NamedResult {
    pub fn new(name: impl Into<String>, result: &Result<Value, String>) -> NamedResult {
        match result {
            Ok(value) => NamedResult {
                name: name.into(),
                value: Some(value.clone()),
                error: None,
            },
            Err(error) => NamedResult {
                name: name.into(),
                value: None,
                error: Some(error.clone()),
            },
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct LookupTrace {
    pub name: String,
    /// The object or list read, such as `PersistentVolumeClaim sei/data-a`.
    pub target: String,
    /// `cache`, `live`, or `none` when the lookup named no object to read.
    pub origin: String,
    pub found: usize,
}
