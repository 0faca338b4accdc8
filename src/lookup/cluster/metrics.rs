//! Metrics of the cluster lookup source.
//!
//! Labels are bounded: the kinds come from the loaded policies, results and
//! outcomes from fixed lists.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};

use crate::lookup::LookupError;
use crate::metrics::{Metrics, OutcomeLabels};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    pub api_version: String,
    pub kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LiveReadLabels {
    pub api_version: String,
    pub kind: String,
    /// `found`, `not_found`, `timeout`, `unreachable`, `api_error` or
    /// `invalid_response`.
    pub result: String,
}

/// The way a lookup was served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LookupOutcome {
    /// From the watch cache.
    Hit,
    /// Not in the cache, or the cache could not serve it, so read live.
    Miss,
    /// A `Freshness::Live` read that succeeded.
    Confirmed,
    /// A live read that failed.
    Failed,
}

impl LookupOutcome {
    fn label(self) -> &'static str {
        match self {
            LookupOutcome::Hit => "hit",
            LookupOutcome::Miss => "miss",
            LookupOutcome::Confirmed => "confirmed",
            LookupOutcome::Failed => "failed",
        }
    }
}

fn live_read_histogram() -> Histogram {
    // 1 ms to about 4 s, doubling: the live read budget defaults to 2 s.
    Histogram::new(exponential_buckets(0.001, 2.0, 13))
}

/// The metric families of one or more cluster sources.
///
/// Register them once with [`ClusterMetrics::register`] and hand clones to
/// each [`super::ClusterSource`], so that a source started again after a
/// policy reload adds to the same series instead of registering them twice.
#[derive(Clone)]
pub struct ClusterMetrics {
    cached_objects: Family<KindLabels, Gauge>,
    watch_restarts: Family<KindLabels, Counter>,
    live_reads: Family<LiveReadLabels, Counter>,
    live_read_seconds: Family<KindLabels, Histogram, fn() -> Histogram>,
    lookups: Family<OutcomeLabels, Counter>,
}

impl Default for ClusterMetrics {
    /// Families that belong to no registry, for sources that export nothing.
    fn default() -> Self {
        ClusterMetrics {
            cached_objects: Family::default(),
            watch_restarts: Family::default(),
            live_reads: Family::default(),
            live_read_seconds: Family::new_with_constructor(live_read_histogram),
            lookups: Family::default(),
        }
    }
}

impl ClusterMetrics {
    /// Creates the families and registers them in the server's registry.
    pub fn register(metrics: &Metrics) -> ClusterMetrics {
        let families = ClusterMetrics::default();
        metrics.with_registry(|registry| {
            registry.register(
                "lookup_cached_objects",
                "Objects in the lookup watch cache, by kind",
                families.cached_objects.clone(),
            );
            registry.register(
                "lookup_watch_restarts",
                "Watches of a looked-up kind that failed and were restarted",
                families.watch_restarts.clone(),
            );
            registry.register(
                "lookup_live_reads",
                "Reads sent to the Kubernetes API server, by kind and result",
                families.live_reads.clone(),
            );
            registry.register(
                "lookup_live_read_duration_seconds",
                "Time a live read took, including failures and timeouts",
                families.live_read_seconds.clone(),
            );
            registry.register(
                "lookups",
                "Lookups by outcome: hit, miss, confirmed or failed",
                families.lookups.clone(),
            );
        });
        families
    }

    pub(crate) fn set_cached_objects(&self, kind: &KindLabels, count: usize) {
        let count = i64::try_from(count).unwrap_or(i64::MAX);
        self.cached_objects.get_or_create(kind).set(count);
    }

    pub(crate) fn record_watch_restart(&self, kind: &KindLabels) -> u64 {
        self.watch_restarts.get_or_create(kind).inc() + 1
    }

    pub(crate) fn watch_restarts(&self, kind: &KindLabels) -> u64 {
        self.watch_restarts.get_or_create(kind).get()
    }

    pub(crate) fn record_live_read<T>(
        &self,
        kind: &KindLabels,
        result: &Result<Option<T>, LookupError>,
        latency: Duration,
    ) {
        let result = match result {
            Ok(Some(_)) => "found",
            Ok(None) => "not_found",
            Err(LookupError::Timeout(_)) => "timeout",
            Err(LookupError::Unreachable(_)) => "unreachable",
            Err(LookupError::InvalidResponse(_)) => "invalid_response",
            Err(_) => "api_error",
        };
        let labels = LiveReadLabels {
            api_version: kind.api_version.clone(),
            kind: kind.kind.clone(),
            result: result.to_owned(),
        };
        self.live_reads.get_or_create(&labels).inc();
        self.live_read_seconds
            .get_or_create(kind)
            .observe(latency.as_secs_f64());
    }

    pub(crate) fn record_lookup(&self, outcome: LookupOutcome) {
        let labels = OutcomeLabels {
            outcome: outcome.label().to_owned(),
        };
        self.lookups.get_or_create(&labels).inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claim_labels() -> KindLabels {
        KindLabels {
            api_version: "v1".to_owned(),
            kind: "PersistentVolumeClaim".to_owned(),
        }
    }

    #[test]
    fn registered_families_appear_in_the_export() {
        let metrics = Metrics::new();
        let families = ClusterMetrics::register(&metrics);
        families.set_cached_objects(&claim_labels(), 2);
        families.record_watch_restart(&claim_labels());
        families.record_lookup(LookupOutcome::Hit);
        let result: Result<Option<()>, LookupError> = Ok(None);
        families.record_live_read(&claim_labels(), &result, Duration::from_millis(3));

        let text = metrics.encode();
        let claim = r#"api_version="v1",kind="PersistentVolumeClaim""#;
        assert!(text.contains(&format!("genesis_gate_lookup_cached_objects{{{claim}}} 2")));
        assert!(text.contains(&format!(
            "genesis_gate_lookup_watch_restarts_total{{{claim}}} 1"
        )));
        assert!(text.contains(r#"genesis_gate_lookups_total{outcome="hit"} 1"#));
        assert!(text.contains(&format!(
            "genesis_gate_lookup_live_reads_total{{{claim},result=\"not_found\"}} 1"
        )));
        assert!(text.contains("genesis_gate_lookup_live_read_duration_seconds_count"));
    }

    #[test]
    fn restart_count_is_read_back() {
        let families = ClusterMetrics::default();
        assert_eq!(families.record_watch_restart(&claim_labels()), 1);
        assert_eq!(families.record_watch_restart(&claim_labels()), 2);
        assert_eq!(families.watch_restarts(&claim_labels()), 2);
    }
}
