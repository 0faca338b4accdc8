//! Lookups served from a watch cache of the live cluster, with live reads
//! behind it.
//!
//! [`ClusterSource::start`] runs one kube-runtime reflector per kind that
//! the policies look up. A `Freshness::Cached` lookup is served from the
//! kind's store once its first list has completed. A miss, an unsynced
//! store or a list the store may not contain in full is read live, as is
//! every `Freshness::Live` lookup.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kube::core::SelectorExt;
use kube::runtime::reflector::ObjectRef as StoreKey;
use kube::{Client, ResourceExt};
use serde_json::Value;
use tokio::sync::watch as signal;
use tokio::task::AbortHandle;

use super::{
    Fetched, Freshness, ListRef, LookupError, ObjectRef, ObjectSource, Origin, WatchRequirement,
};

mod kinds;
mod live;
mod metrics;
mod object;
mod selector;
mod watch;

pub use kinds::{built_in_kind, ResolvedKind};
pub use metrics::{ClusterMetrics, KindLabels, LiveReadLabels, LookupOutcome};
pub use selector::{parse as parse_label_selector, SelectorError};

use kinds::KindCache;
use metrics::LookupOutcome as Outcome;
use watch::{WatchContext, WatchedKind};

/// Settings of a [`ClusterSource`].
#[derive(Clone)]
pub struct ClusterOptions {
    /// Time a live read may take, all pages of a list included, before it
    /// fails with [`LookupError::Timeout`].
    pub live_read_budget: Duration,
    /// The API server's URL, shown by `describe()`.
    pub server_url: String,
    pub metrics: ClusterMetrics,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        ClusterOptions {
            live_read_budget: Duration::from_secs(2),
            server_url: "unknown server".to_owned(),
            metrics: ClusterMetrics::default(),
        }
    }
}

/// An [`ObjectSource`] backed by the Kubernetes API.
///
/// Dropping it stops its watches.
pub struct ClusterSource {
    client: Client,
    options: ClusterOptions,
    watched: Vec<Arc<WatchedKind>>,
    kinds: Arc<KindCache>,
    synced_count: signal::Receiver<usize>,
    tasks: Vec<AbortHandle>,
}

impl ClusterSource {
    /// Starts one reflector per required kind and returns at once; the
    /// caches fill in the background. Must be called within a Tokio runtime.
    ///
    /// Requirements for the same kind with different selectors are merged
    /// into one watch of every object of the kind.
    pub fn start(
        client: Client,
        requirements: Vec<WatchRequirement>,
        options: ClusterOptions,
    ) -> ClusterSource {
        let kinds = Arc::new(KindCache::default());
        let (synced_tx, synced_count) = signal::channel(0);
        let watched: Vec<Arc<WatchedKind>> = merge_requirements(requirements)
            .into_iter()
            .map(|requirement| Arc::new(WatchedKind::new(requirement)))
            .collect();
        let tasks = watched
            .iter()
            .map(|kind| {
                let context = WatchContext {
                    client: client.clone(),
                    kinds: kinds.clone(),
                    metrics: options.metrics.clone(),
                    synced_count: synced_tx.clone(),
                };
                tokio::spawn(watch::run(kind.clone(), context)).abort_handle()
            })
            .collect();
        tracing::info!(
            server = %options.server_url,
            kinds = %describe_kinds(&watched),
            "starting lookup watches"
        );
        ClusterSource {
            client,
            options,
            watched,
            kinds,
            synced_count,
            tasks,
        }
    }

    /// Waits until every watched kind has completed its first list.
    pub async fn wait_until_synced(&self) {
        let total = self.watched.len();
        let mut synced_count = self.synced_count.clone();
        // The sender lives as long as the watch tasks, which run until drop.
        let _ = synced_count.wait_for(|count| *count >= total).await;
    }

    /// Watch restarts of a kind since the source started, counted in its
    /// metrics; 0 for a kind that is not watched.
    pub fn watch_restarts(&self, api_version: &str, kind: &str) -> u64 {
        match self.find_watched(api_version, kind) {
            Some(watched) => self.options.metrics.watch_restarts(&watched.labels),
            None => 0,
        }
    }

    /// Returns the watches after merging, one per kind.
    pub fn watched_kinds(&self) -> Vec<WatchRequirement> {
        self.watched.iter().map(|w| w.requirement.clone()).collect()
    }

    fn find_watched(&self, api_version: &str, kind: &str) -> Option<&WatchedKind> {
        self.watched
            .iter()
            .map(Arc::as_ref)
            .find(|w| w.requirement.api_version == api_version && w.requirement.kind == kind)
    }

    async fn resolve(&self, api_version: &str, kind: &str) -> Result<ResolvedKind, LookupError> {
        if let Some(reflected) = self
            .find_watched(api_version, kind)
            .and_then(|w| w.reflected.get())
        {
            return Ok(reflected.kind.clone());
        }
        self.kinds.resolve(&self.client, api_version, kind).await
    }

    fn cached_get(&self, target: &ObjectRef) -> Option<Arc<Value>> {
        let reflected = self
            .find_watched(&target.api_version, &target.kind)?
            .synced_store()?;
        let mut key = StoreKey::new_with(&target.name, reflected.kind.resource.clone());
        if let Some(namespace) = &target.namespace {
            key = key.within(namespace);
        }
        let object = reflected.store.get(&key)?;
        Some(object.json().clone())
    }

    /// Lists from the store when it contains every object the list selects,
    /// that is when the store has synced and the list's selector implies
    /// the watch's.
    fn cached_list(&self, target: &ListRef) -> Option<Vec<Arc<Value>>> {
        let watched = self.find_watched(&target.api_version, &target.kind)?;
        let scope = watched.list_scope.as_ref()?;
        let reflected = watched.synced_store()?;
        let requested = match target.label_selector.as_ref().map(ToString::to_string) {
            Some(text) => selector::parse(&text).ok()?,
            None => Default::default(),
        };
        if !selector::implies(&requested, scope) {
            return None;
        }
        let namespace = target
            .namespace
            .as_deref()
            .filter(|_| reflected.kind.namespaced);
        let objects = reflected.store.state_filter(|object| {
            let in_namespace = namespace.is_none() || object.namespace().as_deref() == namespace;
            in_namespace && requested.matches(object.labels())
        });
        Some(objects.iter().map(|o| o.json().clone()).collect())
    }

    /// Records a live read's latency, result and lookup outcome.
    fn record_live<T>(
        &self,
        target_kind: (&str, &str),
        freshness: Freshness,
        result: &Result<Option<T>, LookupError>,
        started: Instant,
    ) {
        let (api_version, kind) = target_kind;
        let labels = KindLabels {
            api_version: api_version.to_owned(),
            kind: kind.to_owned(),
        };
        let metrics = &self.options.metrics;
        metrics.record_live_read(&labels, result, started.elapsed());
        let outcome = match (result, freshness) {
            (Err(error), _) => {
                tracing::debug!(%api_version, %kind, %error, "live lookup failed");
                Outcome::Failed
            }
            (Ok(_), Freshness::Live) => Outcome::Confirmed,
            (Ok(_), Freshness::Cached) => Outcome::Miss,
        };
        metrics.record_lookup(outcome);
    }
}

impl Drop for ClusterSource {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

#[async_trait::async_trait]
impl ObjectSource for ClusterSource {
    async fn get(
        &self,
        target: &ObjectRef,
        freshness: Freshness,
    ) -> Result<Fetched<Option<Arc<Value>>>, LookupError> {
        if freshness == Freshness::Cached {
            if let Some(value) = self.cached_get(target) {
                self.options.metrics.record_lookup(Outcome::Hit);
                return Ok(Fetched {
                    value: Some(value),
                    origin: Origin::Cache,
                });
            }
        }
        let started = Instant::now();
        let result = match self.resolve(&target.api_version, &target.kind).await {
            Ok(kind) => {
                live::get(
                    &self.client,
                    &kind,
                    target.namespace.as_deref(),
                    &target.name,
                    self.options.live_read_budget,
                )
                .await
            }
            Err(error) => Err(error),
        };
        self.record_live(
            (&target.api_version, &target.kind),
            freshness,
            &result,
            started,
        );
        result.map(|value| Fetched {
            value,
            origin: Origin::Live,
        })
    }

    async fn list(
        &self,
        target: &ListRef,
        freshness: Freshness,
    ) -> Result<Fetched<Vec<Arc<Value>>>, LookupError> {
        if freshness == Freshness::Cached {
            if let Some(value) = self.cached_list(target) {
                self.options.metrics.record_lookup(Outcome::Hit);
                return Ok(Fetched {
                    value,
                    origin: Origin::Cache,
                });
            }
        }
        let started = Instant::now();
        let label_selector = target.label_selector.as_ref().map(ToString::to_string);
        let result = match self.resolve(&target.api_version, &target.kind).await {
            Ok(kind) => {
                live::list(
                    &self.client,
                    &kind,
                    target.namespace.as_deref(),
                    label_selector.as_deref(),
                    self.options.live_read_budget,
                )
                .await
            }
            Err(error) => Err(error),
        };
        // A list always has a value; record it as found.
        let recorded = result.as_ref().map(Some).map_err(Clone::clone);
        self.record_live(
            (&target.api_version, &target.kind),
            freshness,
            &recorded,
            started,
        );
        result.map(|value| Fetched {
            value,
            origin: Origin::Live,
        })
    }

    // NOTE: once a kind has listed, it stays ready while its watch fails
    // and restarts, and the cache serves what it last saw. Callers that
    // must not act on stale data ask for `Freshness::Live`.
    fn ready(&self) -> Result<(), String> {
        let pending: Vec<String> = self
            .watched
            .iter()
            .filter_map(|w| w.pending_reason())
            .collect();
        if pending.is_empty() {
            Ok(())
        } else {
            Err(format!("lookup cache not synced: {}", pending.join("; ")))
        }
    }

    fn describe(&self) -> String {
        format!(
            "cluster: {}, watching {}",
            self.options.server_url,
            describe_kinds(&self.watched)
        )
    }
}

fn describe_kinds(watched: &[Arc<WatchedKind>]) -> String {
    if watched.is_empty() {
        return "no kinds".to_owned();
    }
    let names: Vec<String> = watched.iter().map(|w| w.describe()).collect();
    names.join(", ")
}

/// Merges requirements into one per kind. Identical selectors are kept,
/// different ones are dropped so the single watch covers every lookup.
fn merge_requirements(requirements: Vec<WatchRequirement>) -> Vec<WatchRequirement> {
    let mut by_kind: BTreeMap<(String, String), WatchRequirement> = BTreeMap::new();
    for requirement in requirements {
        let key = (requirement.api_version.clone(), requirement.kind.clone());
        match by_kind.get_mut(&key) {
            None => {
                by_kind.insert(key, requirement);
            }
            Some(kept) if *kept == requirement => {}
            Some(kept) => {
                if kept.label_selector.is_some() || kept.field_selector.is_some() {
                    tracing::info!(
                        api_version = %kept.api_version,
                        kind = %kept.kind,
                        "lookups of this kind declare different selectors; watching every object of the kind"
                    );
                }
                kept.label_selector = None;
                kept.field_selector = None;
            }
        }
    }
    by_kind.into_values().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn requirement(kind: &str, label: Option<&str>) -> WatchRequirement {
        WatchRequirement {
            api_version: "v1".to_owned(),
            kind: kind.to_owned(),
            label_selector: label.map(str::to_owned),
            field_selector: None,
        }
    }

    #[test]
    fn merge_keeps_one_watch_per_kind() {
        let merged = merge_requirements(vec![
            requirement("Pod", None),
            requirement("PersistentVolumeClaim", Some("a=b")),
            requirement("PersistentVolumeClaim", Some("a=b")),
        ]);
        assert_eq!(merged.len(), 2);
        let claim = merged
            .iter()
            .find(|r| r.kind == "PersistentVolumeClaim")
            .unwrap();
        assert_eq!(claim.label_selector.as_deref(), Some("a=b"));
    }

    #[test]
    fn merge_drops_conflicting_selectors() {
        let merged = merge_requirements(vec![
            requirement("PersistentVolumeClaim", Some("a=b")),
            requirement("PersistentVolumeClaim", Some("c=d")),
        ]);
        assert_eq!(merged, vec![requirement("PersistentVolumeClaim", None)]);
    }
}
