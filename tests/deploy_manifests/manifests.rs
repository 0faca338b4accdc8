//! Parses rendered documents into typed Kubernetes objects and rejects any
//! field that the type does not know.
//!
//! k8s-openapi ignores unknown fields when it deserialises, so a misspelt
//! or misplaced field would pass unnoticed (and the API server would drop
//! it, or reject it under strict field validation). Serialising the typed
//! object again and comparing it with the input finds every such field.

use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhookConfiguration, ValidatingWebhookConfiguration,
};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, Secret, Service, ServiceAccount};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The objects of one rendered kustomization, by kind.
#[derive(Default)]
pub struct Bundle {
    pub namespaces: Vec<Namespace>,
    pub service_accounts: Vec<ServiceAccount>,
    pub cluster_roles: Vec<ClusterRole>,
    pub cluster_role_bindings: Vec<ClusterRoleBinding>,
    pub deployments: Vec<Deployment>,
    pub disruption_budgets: Vec<PodDisruptionBudget>,
    pub services: Vec<Service>,
    pub secrets: Vec<Secret>,
    pub validating: Vec<ValidatingWebhookConfiguration>,
    pub mutating: Vec<MutatingWebhookConfiguration>,
    pub issuers: Vec<Issuer>,
    pub certificates: Vec<Certificate>,
}

impl Bundle {
    /// Parses every document, or returns the problems of all that fail.
    pub fn parse(documents: &[Value]) -> Result<Self, String> {
        let mut bundle = Bundle::default();
        let problems: Vec<String> = documents
            .iter()
            .filter_map(|document| bundle.add(document).err())
            .collect();
        if problems.is_empty() {
            Ok(bundle)
        } else {
            Err(problems.join("\n"))
        }
    }

    fn add(&mut self, document: &Value) -> Result<(), String> {
        let api_version = document
            .get("apiVersion")
            .and_then(Value::as_str)
            .unwrap_or("");
        let kind = document.get("kind").and_then(Value::as_str).unwrap_or("");
        let id = crate::loader::identity(document);
        let unwrapped = without_base64_line_breaks(document);
        let document = &unwrapped;
        let result = match (api_version, kind) {
            ("v1", "Namespace") => typed(document).map(|o| self.namespaces.push(o)),
            ("v1", "ServiceAccount") => typed(document).map(|o| self.service_accounts.push(o)),
            ("v1", "Service") => typed(document).map(|o| self.services.push(o)),
            ("v1", "Secret") => typed(document).map(|o| self.secrets.push(o)),
            ("apps/v1", "Deployment") => typed(document).map(|o| self.deployments.push(o)),
            ("policy/v1", "PodDisruptionBudget") => {
                typed(document).map(|o| self.disruption_budgets.push(o))
            }
            ("rbac.authorization.k8s.io/v1", "ClusterRole") => {
                typed(document).map(|o| self.cluster_roles.push(o))
            }
            ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding") => {
                typed(document).map(|o| self.cluster_role_bindings.push(o))
            }
            ("admissionregistration.k8s.io/v1", "ValidatingWebhookConfiguration") => {
                typed(document).map(|o| self.validating.push(o))
            }
            ("admissionregistration.k8s.io/v1", "MutatingWebhookConfiguration") => {
                typed(document).map(|o| self.mutating.push(o))
            }
            ("cert-manager.io/v1", "Issuer") => typed(document).map(|o| self.issuers.push(o)),
            ("cert-manager.io/v1", "Certificate") => {
                typed(document).map(|o| self.certificates.push(o))
            }
            _ => Err("no typed model in this test; add one before shipping this kind".to_owned()),
        };
        result.map_err(|problem| format!("{id}: {problem}"))
    }
}

/// Removes the line breaks that kustomize puts into long base64 values
/// (Secret `data` and webhook `caBundle`). The API server's decoder (Go's
/// encoding/base64) skips them; k8s-openapi's rejects them.
fn without_base64_line_breaks(document: &Value) -> Value {
    let mut document = document.clone();
    let unwrap = |value: &mut Value| {
        if let Value::String(text) = value {
            text.retain(|character| character != '\n' && character != '\r');
        }
    };
    if document["kind"] == "Secret" {
        if let Some(Value::Object(data)) = document.get_mut("data") {
            data.values_mut().for_each(unwrap);
        }
    }
    if let Some(Value::Array(webhooks)) = document.get_mut("webhooks") {
        for webhook in webhooks {
            if let Some(bundle) = webhook.pointer_mut("/clientConfig/caBundle") {
                unwrap(bundle);
            }
        }
    }
    document
}

/// Deserialises `document` into `T` and fails on every field that a
/// serialise round trip loses or changes.
pub fn typed<T: DeserializeOwned + Serialize>(document: &Value) -> Result<T, String> {
    let object: T = serde_json::from_value(document.clone()).map_err(|error| error.to_string())?;
    let again = serde_json::to_value(&object).map_err(|error| error.to_string())?;
    let mut lost = Vec::new();
    compare(document, &again, String::new(), &mut lost);
    if lost.is_empty() {
        Ok(object)
    } else {
        Err(format!(
            "fields unknown to the type or changed by it: {}",
            lost.join(", ")
        ))
    }
}

/// Collects the paths of `input` that `output` lacks or has with another value.
/// Fields that only `output` has (defaults of required fields) are fine.
fn compare(input: &Value, output: &Value, path: String, lost: &mut Vec<String>) {
    match (input, output) {
        (Value::Object(input), Value::Object(output)) => {
            for (key, value) in input {
                let child = format!("{path}.{key}");
                match output.get(key) {
                    Some(again) => compare(value, again, child, lost),
                    None => lost.push(child),
                }
            }
        }
        (Value::Array(input), Value::Array(output)) if input.len() == output.len() => {
            for (index, (value, again)) in input.iter().zip(output).enumerate() {
                compare(value, again, format!("{path}[{index}]"), lost);
            }
        }
        _ if input == output => {}
        _ => lost.push(format!("{path} ({input} became {output})")),
    }
}

/// cert-manager's `Issuer` and `Certificate` (API group cert-manager.io,
/// version v1), with the spec fields that `deploy/` uses. A field of the
/// real API that is missing here fails the test until it is added.
#[derive(Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct CertManagerObject<Spec> {
    pub api_version: String,
    pub kind: String,
    pub metadata: ObjectMeta,
    pub spec: Spec,
}

pub type Issuer = CertManagerObject<IssuerSpec>;
pub type Certificate = CertManagerObject<CertificateSpec>;

#[derive(Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct IssuerSpec {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub self_signed: Option<SelfSignedIssuer>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca: Option<CaIssuer>,
}

#[derive(Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SelfSignedIssuer {}

#[derive(Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct CaIssuer {
    pub secret_name: String,
}

#[derive(Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct CertificateSpec {
    pub secret_name: String,
    pub issuer_ref: IssuerRef,
    #[serde(rename = "isCA", skip_serializing_if = "Option::is_none")]
    pub is_ca: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub common_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dns_names: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duration: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub renew_before: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub private_key: Option<PrivateKey>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usages: Option<Vec<String>>,
}

#[derive(Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct IssuerRef {
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
}

#[derive(Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PrivateKey {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub algorithm: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub size: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rotation_policy: Option<String>,
}
