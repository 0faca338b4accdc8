//! The object type that the watch cache stores: the JSON the API server
//! sent, parsed once, so a lookup hands out a shared reference to it
//! instead of serialising a typed object on every hit.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::Arc;

use kube::api::ApiResource;
use kube::core::{DynamicResourceScope, ObjectMeta, Resource};
use serde::{Deserialize, Deserializer};
use serde_json::{Map, Value};

/// A Kubernetes object of any kind, kept as JSON.
///
/// `metadata` contains a copy of the name, namespace, uid, resourceVersion
/// and labels, which the reflector keys on and the cache filters on. The
/// object itself is `json`, untouched by a typed round trip.
#[derive(Clone, Debug)]
pub struct RawObject {
    metadata: ObjectMeta,
    json: Arc<Value>,
}

impl RawObject {
    /// Wraps a parsed object, copying the metadata the cache needs.
    pub fn from_json(json: Value) -> RawObject {
        let metadata = json
            .get("metadata")
            .map(metadata_summary)
            .unwrap_or_default();
        RawObject {
            metadata,
            json: Arc::new(json),
        }
    }

    /// Sets `apiVersion` and `kind` when missing: the items of a list
    /// response arrive without them.
    pub fn with_type(mut self, resource: &ApiResource) -> RawObject {
        self.fill_type(resource);
        self
    }

    /// Sets `apiVersion` and `kind` in place when missing.
    pub fn fill_type(&mut self, resource: &ApiResource) {
        let has_type = self.json.get("apiVersion").is_some_and(Value::is_string)
            && self.json.get("kind").is_some_and(Value::is_string);
        if has_type {
            return;
        }
        // The Arc is not shared yet while the object passes through the
        // event stream, so this does not copy the object.
        if let Value::Object(fields) = Arc::make_mut(&mut self.json) {
            fields.insert(
                "apiVersion".to_owned(),
                Value::String(resource.api_version.clone()),
            );
            fields.insert("kind".to_owned(), Value::String(resource.kind.clone()));
        }
    }

    pub fn json(&self) -> &Arc<Value> {
        &self.json
    }

    pub fn into_json(self) -> Arc<Value> {
        self.json
    }
}

fn string_field(fields: &Map<String, Value>, name: &str) -> Option<String> {
    fields.get(name).and_then(Value::as_str).map(str::to_owned)
}

fn metadata_summary(metadata: &Value) -> ObjectMeta {
    let Some(fields) = metadata.as_object() else {
        return ObjectMeta::default();
    };
    let labels = fields
        .get("labels")
        .and_then(Value::as_object)
        .map(|labels| {
            labels
                .iter()
                .filter_map(|(key, value)| Some((key.clone(), value.as_str()?.to_owned())))
                .collect::<BTreeMap<String, String>>()
        });
    ObjectMeta {
        name: string_field(fields, "name"),
        namespace: string_field(fields, "namespace"),
        uid: string_field(fields, "uid"),
        resource_version: string_field(fields, "resourceVersion"),
        labels,
        ..ObjectMeta::default()
    }
}

impl<'de> Deserialize<'de> for RawObject {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Value::deserialize(deserializer).map(RawObject::from_json)
    }
}

impl Resource for RawObject {
    type DynamicType = ApiResource;
    type Scope = DynamicResourceScope;

    fn kind(resource: &ApiResource) -> Cow<'_, str> {
        Cow::Borrowed(&resource.kind)
    }

    fn group(resource: &ApiResource) -> Cow<'_, str> {
        Cow::Borrowed(&resource.group)
    }

    fn version(resource: &ApiResource) -> Cow<'_, str> {
        Cow::Borrowed(&resource.version)
    }

    fn api_version(resource: &ApiResource) -> Cow<'_, str> {
        Cow::Borrowed(&resource.api_version)
    }

    fn plural(resource: &ApiResource) -> Cow<'_, str> {
        Cow::Borrowed(&resource.plural)
    }

    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }

    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

#[cfg(test)]
mod tests {
    use kube::ResourceExt;
    use serde_json::json;

    use super::*;

    fn claim_resource() -> ApiResource {
        ApiResource::erase::<k8s_openapi::api::core::v1::PersistentVolumeClaim>(&())
    }

    #[test]
    fn copies_metadata_the_cache_keys_on() {
        let object = RawObject::from_json(json!({
            "metadata": {
                "name": "data-0",
                "namespace": "sei",
                "resourceVersion": "269",
                "labels": {"sei.io/fork-genesis": "true"}
            }
        }));
        assert_eq!(object.name_any(), "data-0");
        assert_eq!(object.namespace().as_deref(), Some("sei"));
        assert_eq!(object.resource_version().as_deref(), Some("269"));
        assert_eq!(
            object
                .labels()
                .get("sei.io/fork-genesis")
                .map(String::as_str),
            Some("true")
        );
    }

    #[test]
    fn fills_in_missing_type_fields() {
        let object = RawObject::from_json(json!({"metadata": {"name": "data-0"}}))
            .with_type(&claim_resource());
        assert_eq!(object.json()["apiVersion"], "v1");
        assert_eq!(object.json()["kind"], "PersistentVolumeClaim");
    }

    #[test]
    fn keeps_fields_a_typed_object_would_drop() {
        let object = RawObject::from_json(json!({
            "apiVersion": "v1",
            "kind": "PersistentVolumeClaim",
            "metadata": {"name": "data-0", "futureField": 1},
            "spec": {"futureSpecField": "x"}
        }))
        .with_type(&claim_resource());
        assert_eq!(object.json()["metadata"]["futureField"], 1);
        assert_eq!(object.json()["spec"]["futureSpecField"], "x");
    }

    #[test]
    fn deserializes_from_a_watch_event_body() {
        let object: RawObject =
            serde_json::from_str(r#"{"metadata":{"name":"a","namespace":"b"}}"#).unwrap();
        assert_eq!(object.name_any(), "a");
    }
}
