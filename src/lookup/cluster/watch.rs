//! One reflector per watched kind: a kube-runtime watcher feeding a
//! reflector store of [`RawObject`]s.

use std::pin::pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use futures::{StreamExt, TryStreamExt};
use kube::api::Api;
use kube::core::Selector;
use kube::runtime::reflector::{self, store::Writer, Store};
use kube::runtime::watcher::{self, DefaultBackoff, InitialListStrategy};
use kube::runtime::WatchStreamExt;
use kube::Client;
use tokio::sync::watch as signal;

use crate::lookup::WatchRequirement;

use super::kinds::{KindCache, ResolvedKind};
use super::live::error_chain;
use super::metrics::{ClusterMetrics, KindLabels};
use super::object::RawObject;
use super::selector;

/// A kind the source watches, shared between its watch task and lookups.
pub struct WatchedKind {
    pub requirement: WatchRequirement,
    /// The label selector the cache is complete for. `None` means lists are
    /// read live, because the watch has a field selector (which a `ListRef`
    /// cannot carry) or a label selector this module cannot parse.
    pub list_scope: Option<Selector>,
    pub labels: KindLabels,
    pub reflected: OnceLock<Reflected>,
    synced: AtomicBool,
    last_error: Mutex<Option<String>>,
}

/// The resolved kind and its store, set once discovery succeeded.
pub struct Reflected {
    pub kind: ResolvedKind,
    pub store: Store<RawObject>,
}

impl WatchedKind {
    pub fn new(requirement: WatchRequirement) -> WatchedKind {
        let list_scope = list_scope(&requirement);
        let labels = KindLabels {
            api_version: requirement.api_version.clone(),
            kind: requirement.kind.clone(),
        };
        WatchedKind {
            requirement,
            list_scope,
            labels,
            reflected: OnceLock::new(),
            synced: AtomicBool::new(false),
            last_error: Mutex::new(None),
        }
    }

    /// Returns the store once its first list has completed.
    pub fn synced_store(&self) -> Option<&Reflected> {
        if !self.synced.load(Ordering::Acquire) {
            return None;
        }
        self.reflected.get()
    }

    /// Returns why the kind is not synced yet, or `None` when it is.
    pub fn pending_reason(&self) -> Option<String> {
        if self.synced.load(Ordering::Acquire) {
            return None;
        }
        let name = self.describe();
        let last_error = self.last_error.lock().unwrap_or_else(|e| e.into_inner());
        Some(match last_error.as_deref() {
            Some(error) => format!("{name}: first list not complete, last error: {error}"),
            None => format!("{name}: first list not complete"),
        })
    }

    /// `apiVersion/Kind`, with the selectors in brackets.
    pub fn describe(&self) -> String {
        let WatchRequirement {
            api_version,
            kind,
            label_selector,
            field_selector,
        } = &self.requirement;
        let selectors: Vec<&str> = [label_selector, field_selector]
            .into_iter()
            .flatten()
            .map(String::as_str)
            .collect();
        if selectors.is_empty() {
            format!("{api_version}/{kind}")
        } else {
            format!("{api_version}/{kind} [{}]", selectors.join(", "))
        }
    }

    fn set_last_error(&self, error: String) {
        *self.last_error.lock().unwrap_or_else(|e| e.into_inner()) = Some(error);
    }
}

fn list_scope(requirement: &WatchRequirement) -> Option<Selector> {
    if requirement.field_selector.is_some() {
        return None;
    }
    match requirement.label_selector.as_deref() {
        None => Some(Selector::default()),
        Some(text) => match selector::parse(text) {
            Ok(parsed) => Some(parsed),
            Err(error) => {
                tracing::warn!(
                    api_version = %requirement.api_version,
                    kind = %requirement.kind,
                    %error,
                    "list lookups of this kind will be read live"
                );
                None
            }
        },
    }
}

/// The shared handles a watch task uses besides its kind.
pub struct WatchContext {
    pub client: Client,
    pub kinds: Arc<KindCache>,
    pub metrics: ClusterMetrics,
    /// Counts the kinds whose first list has completed.
    pub synced_count: signal::Sender<usize>,
}

/// Resolves the kind, then runs its reflector until the task is aborted.
pub async fn run(watched: Arc<WatchedKind>, context: WatchContext) {
    let kind = resolve_with_retry(&watched, &context).await;
    let api: Api<RawObject> = Api::all_with(context.client.clone(), &kind.resource);
    let writer = Writer::new(kind.resource.clone());
    let store = writer.as_reader();
    let resource = kind.resource.clone();
    // Only this task sets `reflected`, once, so the set cannot fail.
    let _ = watched.reflected.set(Reflected {
        kind,
        store: store.clone(),
    });

    let events = watcher::watcher(api, watcher_config(&watched.requirement))
        .default_backoff()
        .map_ok(move |event| event.modify(|object| object.fill_type(&resource)));
    let mut events = pin!(reflector::reflector(writer, events));
    while let Some(item) = events.next().await {
        match item {
            Ok(event) => {
                let initial_list_done = matches!(event, watcher::Event::InitDone);
                context
                    .metrics
                    .set_cached_objects(&watched.labels, store.len());
                if initial_list_done {
                    mark_listed(&watched, &context, store.len());
                }
            }
            Err(error) => log_restart(&watched, &context, &error),
        }
    }
}

/// List-then-watch, narrowed by the requirement's selectors.
///
/// Streaming lists (`sendInitialEvents=true`) are not used, because API
/// servers on etcd 3.4 reject them with an ERROR event: the storage feature
/// `RequestWatchProgress` is missing there.
fn watcher_config(requirement: &WatchRequirement) -> watcher::Config {
    watcher::Config {
        initial_list_strategy: InitialListStrategy::ListWatch,
        label_selector: requirement.label_selector.clone(),
        field_selector: requirement.field_selector.clone(),
        ..watcher::Config::default()
    }
}

async fn resolve_with_retry(watched: &WatchedKind, context: &WatchContext) -> ResolvedKind {
    let WatchRequirement {
        api_version, kind, ..
    } = &watched.requirement;
    let mut backoff = DefaultBackoff::default();
    loop {
        match context
            .kinds
            .resolve(&context.client, api_version, kind)
            .await
        {
            Ok(resolved) => return resolved,
            Err(error) => {
                let delay = backoff.next().unwrap_or(std::time::Duration::from_secs(30));
                tracing::warn!(
                    %api_version,
                    %kind,
                    %error,
                    retry_in = ?delay,
                    "cannot resolve looked-up kind; retrying"
                );
                watched.set_last_error(error.to_string());
                tokio::time::sleep(delay).await;
            }
        }
    }
}

fn mark_listed(watched: &WatchedKind, context: &WatchContext, objects: usize) {
    let first = !watched.synced.swap(true, Ordering::AcqRel);
    if first {
        context.synced_count.send_modify(|count| *count += 1);
        tracing::info!(
            api_version = %watched.requirement.api_version,
            kind = %watched.requirement.kind,
            objects,
            "lookup cache synced"
        );
    } else {
        tracing::info!(
            api_version = %watched.requirement.api_version,
            kind = %watched.requirement.kind,
            objects,
            "lookup cache re-listed"
        );
    }
}

/// Logs and counts one failure of the watcher, after which it restarts.
/// A 410 Gone or a failed list leads to a fresh list, other failures to a
/// new watch from the last resourceVersion.
///
/// NOTE: kube-runtime 5 resumes a watch whose stream ended, cleanly or with
/// an unexpected EOF, without yielding an error, so those resumptions are
/// neither logged here nor counted.
fn log_restart(watched: &WatchedKind, context: &WatchContext, error: &watcher::Error) {
    let restarts = context.metrics.record_watch_restart(&watched.labels);
    let relist = match error {
        watcher::Error::WatchError(status) => status.code == 410,
        watcher::Error::InitialListFailed(_) | watcher::Error::NoResourceVersion => true,
        watcher::Error::WatchStartFailed(_) | watcher::Error::WatchFailed(_) => false,
    };
    let error = error_chain(error);
    tracing::warn!(
        api_version = %watched.requirement.api_version,
        kind = %watched.requirement.kind,
        %error,
        relist,
        restarts,
        "watch of looked-up kind failed; restarting after backoff"
    );
    watched.set_last_error(error);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn requirement(label: Option<&str>, field: Option<&str>) -> WatchRequirement {
        WatchRequirement {
            api_version: "v1".to_owned(),
            kind: "PersistentVolumeClaim".to_owned(),
            label_selector: label.map(str::to_owned),
            field_selector: field.map(str::to_owned),
        }
    }

    #[test]
    fn cache_answers_lists_within_the_label_selector() {
        let watched = WatchedKind::new(requirement(Some("sei.io/fork-genesis=true"), None));
        let scope = watched.list_scope.expect("a parsed selector scopes lists");
        assert!(!scope.selects_all());
    }

    #[test]
    fn field_selector_keeps_lists_live() {
        let watched = WatchedKind::new(requirement(None, Some("metadata.name=data-0")));
        assert!(watched.list_scope.is_none());
    }

    #[test]
    fn describes_kind_with_selectors() {
        let watched = WatchedKind::new(requirement(Some("a=b"), Some("metadata.name=c")));
        assert_eq!(
            watched.describe(),
            "v1/PersistentVolumeClaim [a=b, metadata.name=c]"
        );
    }

    #[test]
    fn unsynced_kind_reports_why() {
        let watched = WatchedKind::new(requirement(None, None));
        watched.set_last_error("connection refused".to_owned());
        let reason = watched.pending_reason().expect("not synced yet");
        assert!(reason.contains("connection refused"), "{reason}");
    }

    #[test]
    fn watcher_uses_list_then_watch() {
        let config = watcher_config(&requirement(Some("a=b"), None));
        assert_eq!(config.initial_list_strategy, InitialListStrategy::ListWatch);
        assert_eq!(config.label_selector.as_deref(), Some("a=b"));
    }
}
