//! Cluster objects that policies read through their `lookups` block.
//!
//! An [`ObjectSource`] serves them: from files given with `--context`, or
//! from a watch cache of the live cluster with live reads behind it.

mod files;

use std::sync::Arc;

use serde_json::Value;

pub mod cluster;
pub mod config;

pub use files::{ContextError, FileSource};

/// One object to get.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ObjectRef {
    pub api_version: String,
    pub kind: String,
    /// `None` for a cluster-scoped kind.
    pub namespace: Option<String>,
    pub name: String,
}

/// The objects of a kind to list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListRef {
    pub api_version: String,
    pub kind: String,
    /// `None` lists across all namespaces, or a cluster-scoped kind.
    pub namespace: Option<String>,
    /// Its `Display` form is the API's query string (`a=b,c in (d,e),!f`).
    pub label_selector: Option<kube::core::Selector>,
}

/// Whether a result may come from a cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Freshness {
    /// A cache may serve the result; a cache miss is read live.
    Cached,
    /// Read the source of truth now.
    Live,
}

/// The place a result came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    Cache,
    Live,
}

/// A lookup result and where it came from.
#[derive(Debug, Clone)]
pub struct Fetched<T> {
    pub value: T,
    pub origin: Origin,
}

/// A kind that the loaded policies look up, so a cluster source watches it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct WatchRequirement {
    pub api_version: String,
    pub kind: String,
    /// Narrows the watch when every lookup of the kind declares the same one.
    pub label_selector: Option<String>,
    pub field_selector: Option<String>,
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum LookupError {
    #[error("the Kubernetes API server could not be reached: {0}")]
    Unreachable(String),
    #[error("the Kubernetes API server did not answer within {0:?}")]
    Timeout(std::time::Duration),
    #[error("the Kubernetes API server answered {code}: {message}")]
    Api { code: u16, message: String },
    #[error("kind {kind} of apiVersion {api_version} is not served by this lookup source")]
    UnknownKind { api_version: String, kind: String },
    #[error("the Kubernetes API server sent a response that could not be decoded: {0}")]
    InvalidResponse(String),
    /// The lookup could not be turned into an API request, such as a GET
    /// without a name; nothing was sent.
    #[error("the lookup is not a valid API request: {0}")]
    InvalidRequest(String),
    #[error("kind {kind} is namespaced, so the lookup of {name:?} needs a namespace")]
    MissingNamespace { kind: String, name: String },
}

/// A source of cluster objects for lookups.
#[async_trait::async_trait]
pub trait ObjectSource: Send + Sync + 'static {
    /// Gets one object; `Ok(None)` when it does not exist.
    async fn get(
        &self,
        target: &ObjectRef,
        freshness: Freshness,
    ) -> Result<Fetched<Option<Arc<Value>>>, LookupError>;

    /// Lists objects, in no particular order.
    async fn list(
        &self,
        target: &ListRef,
        freshness: Freshness,
    ) -> Result<Fetched<Vec<Arc<Value>>>, LookupError>;

    /// Returns `Ok` once the source can serve lookups, else the reason.
    fn ready(&self) -> Result<(), String>;

    /// Returns a short description for the startup log, such as `files: ctx/`.
    fn describe(&self) -> String;
}

/// Returns the labels of an object, ignoring values that are not strings.
pub fn labels_of(object: &Value) -> std::collections::BTreeMap<String, String> {
    object
        .pointer("/metadata/labels")
        .and_then(Value::as_object)
        .map(|labels| {
            labels
                .iter()
                .filter_map(|(key, value)| Some((key.clone(), value.as_str()?.to_owned())))
                .collect()
        })
        .unwrap_or_default()
}
