//! Lookups served from Kubernetes objects in files (`--context`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use kube::core::{Selector, SelectorExt};
use serde::Deserialize;
use serde_json::Value;

use super::{Fetched, Freshness, ListRef, LookupError, ObjectRef, ObjectSource, Origin};

/// Objects read once from YAML or JSON files: single objects, multi-document
/// YAML, and `List` kinds such as the output of `kubectl get -o json`.
#[derive(Debug, Default)]
pub struct FileSource {
    /// Keyed by apiVersion, kind, namespace (empty when cluster-scoped) and name.
    objects: BTreeMap<(String, String, String, String), Arc<Value>>,
    paths: Vec<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum ContextError {
    #[error("failed to read context {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("context file {path} is not valid YAML or JSON: {message}")]
    Parse { path: String, message: String },
    #[error("context file {path}: {message}")]
    Invalid { path: String, message: String },
}

impl FileSource {
    /// Reads every `*.yaml`, `*.yml` and `*.json` file in the given files
    /// and folders (folders are read recursively).
    pub fn load(paths: &[PathBuf]) -> Result<FileSource, ContextError> {
        let mut source = FileSource {
            objects: BTreeMap::new(),
            paths: paths.to_vec(),
        };
        for path in paths {
            source.load_path(path)?;
        }
        Ok(source)
    }

    /// Builds a source from objects already in memory, as the policy test
    /// runner does.
    pub fn from_objects(
        objects: impl IntoIterator<Item = Value>,
    ) -> Result<FileSource, ContextError> {
        let mut source = FileSource::default();
        for object in objects {
            source.insert(object, Path::new("<inline>"))?;
        }
        Ok(source)
    }

    /// Adds the objects of `other`, replacing those with the same key.
    pub fn merge(&mut self, other: FileSource) {
        self.objects.extend(other.objects);
        self.paths.extend(other.paths);
    }

    pub fn len(&self) -> usize {
        self.objects.len()
    }

    pub fn is_empty(&self) -> bool {
        self.objects.is_empty()
    }

    fn load_path(&mut self, path: &Path) -> Result<(), ContextError> {
        let read_error = |source| ContextError::Read {
            path: path.display().to_string(),
            source,
        };
        if path.is_dir() {
            let mut entries = std::fs::read_dir(path)
                .map_err(read_error)?
                .map(|entry| entry.map(|e| e.path()))
                .collect::<Result<Vec<_>, _>>()
                .map_err(read_error)?;
            entries.sort();
            for entry in entries {
                let is_data = matches!(
                    entry.extension().and_then(|e| e.to_str()),
                    Some("yaml" | "yml" | "json")
                );
                if entry.is_dir() || is_data {
                    self.load_path(&entry)?;
                }
            }
            return Ok(());
        }
        let text = std::fs::read_to_string(path).map_err(read_error)?;
        for document in serde_yaml_ng::Deserializer::from_str(&text) {
            let value = Value::deserialize(document).map_err(|error| ContextError::Parse {
                path: path.display().to_string(),
                message: error.to_string(),
            })?;
            if !value.is_null() {
                self.insert(value, path)?;
            }
        }
        Ok(())
    }

    fn insert(&mut self, value: Value, path: &Path) -> Result<(), ContextError> {
        let invalid = |message: String| ContextError::Invalid {
            path: path.display().to_string(),
            message,
        };
        let kind = value
            .get("kind")
            .and_then(Value::as_str)
            .unwrap_or_default();
        if kind == "List" || kind.ends_with("List") && value.get("items").is_some() {
            let Some(Value::Array(items)) = value.get("items") else {
                return Err(invalid(format!("{kind} has no items array")));
            };
            for item in items.clone() {
                self.insert(item, path)?;
            }
            return Ok(());
        }
        let field = |pointer: &str| {
            value
                .pointer(pointer)
                .and_then(Value::as_str)
                .map(str::to_owned)
        };
        let (Some(api_version), Some(kind), Some(name)) = (
            field("/apiVersion"),
            field("/kind"),
            field("/metadata/name"),
        ) else {
            return Err(invalid(
                "an object lacks apiVersion, kind or metadata.name; give each object all three"
                    .to_owned(),
            ));
        };
        let namespace = field("/metadata/namespace").unwrap_or_default();
        self.objects
            .insert((api_version, kind, namespace, name), Arc::new(value));
        Ok(())
    }
}

fn selects(selector: Option<&Selector>, object: &Value) -> bool {
    selector.is_none_or(|selector| selector.matches(&super::labels_of(object)))
}

#[async_trait::async_trait]
impl ObjectSource for FileSource {
    async fn get(
        &self,
        target: &ObjectRef,
        _freshness: Freshness,
    ) -> Result<Fetched<Option<Arc<Value>>>, LookupError> {
        let key = (
            target.api_version.clone(),
            target.kind.clone(),
            target.namespace.clone().unwrap_or_default(),
            target.name.clone(),
        );
        Ok(Fetched {
            value: self.objects.get(&key).cloned(),
            origin: Origin::Live,
        })
    }

    async fn list(
        &self,
        target: &ListRef,
        _freshness: Freshness,
    ) -> Result<Fetched<Vec<Arc<Value>>>, LookupError> {
        let value = self
            .objects
            .iter()
            .filter(|((api_version, kind, namespace, _), object)| {
                *api_version == target.api_version
                    && *kind == target.kind
                    && target.namespace.as_ref().is_none_or(|n| n == namespace)
                    && selects(target.label_selector.as_ref(), object)
            })
            .map(|(_, object)| object.clone())
            .collect();
        Ok(Fetched {
            value,
            origin: Origin::Live,
        })
    }

    fn ready(&self) -> Result<(), String> {
        Ok(())
    }

    fn describe(&self) -> String {
        if self.paths.is_empty() {
            return format!("{} objects in memory", self.objects.len());
        }
        let paths: Vec<String> = self.paths.iter().map(|p| p.display().to_string()).collect();
        format!("{} objects from {}", self.objects.len(), paths.join(", "))
    }
}
