//! The policy resource as written in YAML.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use serde::{Deserialize, Serialize};

/// The API group and version of policy resources.
pub const API_VERSION: &str = "genesis-gate.sei.io/v1alpha1";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum PolicyKind {
    /// Validations, served at `/validate`.
    ValidatingPolicy,
    /// JSON Patch mutations, served at `/mutate`.
    MutatingPolicy,
}

/// One policy document.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PolicyDocument {
    pub api_version: String,
    pub kind: PolicyKind,
    pub metadata: PolicyMetadata,
    pub spec: PolicySpec,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PolicyMetadata {
    pub name: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum FailurePolicy {
    /// An evaluation error denies the request.
    #[default]
    Fail,
    /// An evaluation error skips the policy.
    Ignore,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ValidationAction {
    Deny,
    Warn,
    Audit,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum ReinvocationPolicy {
    #[default]
    Never,
    IfNeeded,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PolicySpec {
    #[serde(default)]
    pub failure_policy: FailurePolicy,
    pub match_constraints: MatchResources,
    #[serde(default)]
    pub match_conditions: Vec<NamedExpression>,
    /// Inline params, bound as `params`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub params: Option<serde_json::Value>,
    /// Params from a file beside the policy or an object in the cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub param_ref: Option<ParamRef>,
    #[serde(default)]
    pub variables: Vec<NamedExpression>,
    #[serde(default)]
    pub lookups: Vec<Lookup>,
    #[serde(default)]
    pub validations: Vec<ValidationSpec>,
    #[serde(default = "default_actions")]
    pub validation_actions: Vec<ValidationAction>,
    #[serde(default)]
    pub audit_annotations: Vec<AuditAnnotation>,
    #[serde(default)]
    pub mutations: Vec<MutationSpec>,
    #[serde(default)]
    pub reinvocation_policy: ReinvocationPolicy,
    /// Time limit for evaluating this policy on one request, such as
    /// `250ms` or `1s`; the default is 1 second.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
}

fn default_actions() -> Vec<ValidationAction> {
    vec![ValidationAction::Deny]
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MatchResources {
    #[serde(default)]
    pub resource_rules: Vec<ResourceRule>,
    #[serde(default)]
    pub exclude_resource_rules: Vec<ResourceRule>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace_selector: Option<LabelSelector>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub object_selector: Option<LabelSelector>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ResourceRule {
    #[serde(default)]
    pub api_groups: Vec<String>,
    #[serde(default)]
    pub api_versions: Vec<String>,
    /// `pods`, `pods/ephemeralcontainers`, `*`, `*/scale`, `pods/*`.
    #[serde(default)]
    pub resources: Vec<String>,
    /// `CREATE`, `UPDATE`, `DELETE`, `CONNECT` or `*`.
    #[serde(default)]
    pub operations: Vec<String>,
    #[serde(default)]
    pub resource_names: Vec<String>,
    /// `Namespaced`, `Cluster` or `*` (the default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NamedExpression {
    pub name: String,
    pub expression: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ParamRef {
    /// A YAML or JSON file, relative to the policy file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    /// A ConfigMap whose `data` becomes `params`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_map: Option<ObjectName>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ObjectName {
    pub namespace: String,
    pub name: String,
}

/// A cluster object, or a list of them, that the policy reads, bound as
/// `lookups.<name>`.
///
/// Exactly one of the three target expressions is set:
/// - `nameExpression`: CEL yielding a string; binds the object, or null if
///   it does not exist;
/// - `namesExpression`: CEL yielding a list of strings; binds a map from
///   each name that exists to its object;
/// - `labelSelectorExpression`: CEL yielding a LabelSelector map
///   (`matchLabels`, `matchExpressions`); binds the list of matching objects.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Lookup {
    pub name: String,
    pub api_version: String,
    pub kind: String,
    /// CEL yielding the namespace; defaults to the request's namespace.
    /// `""` means cluster-scoped or, for a list, all namespaces.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace_expression: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name_expression: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub names_expression: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label_selector_expression: Option<String>,
    /// Narrows the cluster watch of this kind, as a label selector string.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub watch_label_selector: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ValidationSpec {
    pub expression: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message_expression: Option<String>,
    /// A Status reason: `Forbidden` (403, the default), `Invalid` (422),
    /// `Unauthorized` (401) or `RequestEntityTooLarge` (413).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AuditAnnotation {
    pub key: String,
    pub value_expression: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MutationSpec {
    pub patch_type: String,
    pub json_patch: JsonPatchSpec,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct JsonPatchSpec {
    /// CEL yielding a list of operations: maps with `op`, `path`, and
    /// `value` or `from`.
    pub expression: String,
}
