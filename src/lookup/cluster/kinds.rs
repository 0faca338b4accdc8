//! Resolution of an `apiVersion` and `kind` into the API resource that
//! serves them: from a built-in table for the kinds Kubernetes ships, else
//! from API discovery, which custom resources need.

use std::collections::HashMap;
use std::sync::Mutex;

use k8s_openapi::api::{apps, batch, core, policy, storage};
use kube::api::ApiResource;
use kube::core::{GroupVersionKind, Resource};
use kube::discovery::Scope;
use kube::Client;

use crate::lookup::LookupError;

use super::live::map_kube_error;

/// An API resource and whether its objects live in namespaces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedKind {
    pub resource: ApiResource,
    pub namespaced: bool,
}

fn built_in<K: Resource<DynamicType = ()>>(namespaced: bool) -> ResolvedKind {
    ResolvedKind {
        resource: ApiResource::erase::<K>(&()),
        namespaced,
    }
}

/// Looks up a kind that ships with Kubernetes, without a request.
pub fn built_in_kind(api_version: &str, kind: &str) -> Option<ResolvedKind> {
    let resolved = match (api_version, kind) {
        ("v1", "Pod") => built_in::<core::v1::Pod>(true),
        ("v1", "PersistentVolumeClaim") => built_in::<core::v1::PersistentVolumeClaim>(true),
        ("v1", "PersistentVolume") => built_in::<core::v1::PersistentVolume>(false),
        ("v1", "Namespace") => built_in::<core::v1::Namespace>(false),
        ("v1", "Node") => built_in::<core::v1::Node>(false),
        ("v1", "ConfigMap") => built_in::<core::v1::ConfigMap>(true),
        ("v1", "Secret") => built_in::<core::v1::Secret>(true),
        ("v1", "Service") => built_in::<core::v1::Service>(true),
        ("v1", "ServiceAccount") => built_in::<core::v1::ServiceAccount>(true),
        ("apps/v1", "StatefulSet") => built_in::<apps::v1::StatefulSet>(true),
        ("apps/v1", "Deployment") => built_in::<apps::v1::Deployment>(true),
        ("apps/v1", "ReplicaSet") => built_in::<apps::v1::ReplicaSet>(true),
        ("apps/v1", "DaemonSet") => built_in::<apps::v1::DaemonSet>(true),
        ("batch/v1", "Job") => built_in::<batch::v1::Job>(true),
        ("batch/v1", "CronJob") => built_in::<batch::v1::CronJob>(true),
        ("policy/v1", "PodDisruptionBudget") => built_in::<policy::v1::PodDisruptionBudget>(true),
        ("storage.k8s.io/v1", "StorageClass") => built_in::<storage::v1::StorageClass>(false),
        _ => return None,
    };
    Some(resolved)
}

/// Splits `group/version` (or `v1` for the core group) into a
/// [`GroupVersionKind`].
fn group_version_kind(api_version: &str, kind: &str) -> GroupVersionKind {
    match api_version.split_once('/') {
        Some((group, version)) => GroupVersionKind::gvk(group, version, kind),
        None => GroupVersionKind::gvk("", api_version, kind),
    }
}

/// Asks the API server which resource serves a kind.
pub async fn discover_kind(
    client: &Client,
    api_version: &str,
    kind: &str,
) -> Result<ResolvedKind, LookupError> {
    let gvk = group_version_kind(api_version, kind);
    let unknown = || LookupError::UnknownKind {
        api_version: api_version.to_owned(),
        kind: kind.to_owned(),
    };
    match kube::discovery::pinned_kind(client, &gvk).await {
        Ok((resource, capabilities)) => Ok(ResolvedKind {
            resource,
            namespaced: capabilities.scope == Scope::Namespaced,
        }),
        Err(kube::Error::Discovery(_)) => Err(unknown()),
        Err(kube::Error::Api(status)) if status.is_not_found() => Err(unknown()),
        Err(error) => Err(map_kube_error(&error)),
    }
}

/// Resolved kinds, so discovery runs once per kind.
#[derive(Default)]
pub struct KindCache {
    resolved: Mutex<HashMap<(String, String), ResolvedKind>>,
}

impl KindCache {
    /// Resolves a kind from the table, this cache, or discovery, in that order.
    pub async fn resolve(
        &self,
        client: &Client,
        api_version: &str,
        kind: &str,
    ) -> Result<ResolvedKind, LookupError> {
        if let Some(resolved) = built_in_kind(api_version, kind) {
            return Ok(resolved);
        }
        let key = (api_version.to_owned(), kind.to_owned());
        if let Some(resolved) = self.lock().get(&key) {
            return Ok(resolved.clone());
        }
        let resolved = discover_kind(client, api_version, kind).await?;
        self.lock().insert(key, resolved.clone());
        Ok(resolved)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(String, String), ResolvedKind>> {
        self.resolved.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn built_in_table_knows_claims_and_jobs() {
        let claim = built_in_kind("v1", "PersistentVolumeClaim").unwrap();
        assert_eq!(claim.resource.plural, "persistentvolumeclaims");
        assert!(claim.namespaced);
        let job = built_in_kind("batch/v1", "Job").unwrap();
        assert_eq!(job.resource.group, "batch");
        assert_eq!(job.resource.plural, "jobs");
        let namespace = built_in_kind("v1", "Namespace").unwrap();
        assert!(!namespace.namespaced);
    }

    #[test]
    fn built_in_table_leaves_custom_kinds_to_discovery() {
        assert!(built_in_kind("sei.io/v1alpha1", "SeiNode").is_none());
        assert!(built_in_kind("v2", "Pod").is_none());
    }

    #[test]
    fn splits_core_and_grouped_api_versions() {
        assert_eq!(
            group_version_kind("v1", "Pod"),
            GroupVersionKind::gvk("", "v1", "Pod")
        );
        assert_eq!(
            group_version_kind("sei.io/v1alpha1", "SeiNode"),
            GroupVersionKind::gvk("sei.io", "v1alpha1", "SeiNode")
        );
    }
}
