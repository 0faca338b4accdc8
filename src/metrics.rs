//! Prometheus metrics, served at `/metrics`.
//!
//! Labels are bounded: endpoint, kind, operation, decision and policy name
//! come from the loaded policies and the API's fixed vocabulary, never from
//! object names.

use std::sync::Mutex;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReviewLabels {
    pub endpoint: String,
    pub kind: String,
    pub operation: String,
    pub decision: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PolicyLabels {
    pub policy: String,
    pub decision: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub outcome: String,
}

/// Every metric the server exports, registered in one registry.
pub struct Metrics {
    registry: Mutex<Registry>,
    reviews: Family<ReviewLabels, Counter>,
    review_seconds: Family<ReviewLabels, Histogram>,
    policy_decisions: Family<PolicyLabels, Counter>,
    policy_reloads: Family<OutcomeLabels, Counter>,
    policies_loaded: Gauge,
    certificate_expiry: Gauge,
    certificate_reloads: Family<OutcomeLabels, Counter>,
    handshake_failures: Counter,
}

fn latency_histogram() -> Histogram {
    // 50 µs to about 3.3 s, doubling.
    Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
        0.000_05, 2.0, 17,
    ))
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("genesis_gate");
        let reviews = Family::<ReviewLabels, Counter>::default();
        let review_seconds =
            Family::<ReviewLabels, Histogram>::new_with_constructor(latency_histogram as fn() -> _);
        let policy_decisions = Family::<PolicyLabels, Counter>::default();
        let policy_reloads = Family::<OutcomeLabels, Counter>::default();
        let policies_loaded = Gauge::default();
        registry.register("reviews", "AdmissionReviews answered", reviews.clone());
        registry.register(
            "review_duration_seconds",
            "Time from a parsed request to its answer",
            review_seconds.clone(),
        );
        registry.register(
            "policy_decisions",
            "Decisions by policy: allow, deny, warn, patch, error",
            policy_decisions.clone(),
        );
        registry.register(
            "policy_reloads",
            "Reloads of the policy folder by outcome: success or failure",
            policy_reloads.clone(),
        );
        registry.register(
            "policies_loaded",
            "Policies in the active set",
            policies_loaded.clone(),
        );
        let certificate_expiry = Gauge::default();
        let certificate_reloads = Family::<OutcomeLabels, Counter>::default();
        let handshake_failures = Counter::default();
        registry.register(
            "certificate_expiry_timestamp_seconds",
            "End of validity (notAfter) of the serving certificate, in Unix seconds",
            certificate_expiry.clone(),
        );
        registry.register(
            "certificate_reloads",
            "Reloads of the serving certificate by outcome: success or failure",
            certificate_reloads.clone(),
        );
        registry.register(
            "tls_handshake_failures",
            "TLS handshakes that failed or timed out",
            handshake_failures.clone(),
        );
        Metrics {
            registry: Mutex::new(registry),
            reviews,
            review_seconds,
            policy_decisions,
            policy_reloads,
            policies_loaded,
            certificate_expiry,
            certificate_reloads,
            handshake_failures,
        }
    }

    pub fn record_review(&self, labels: ReviewLabels, latency: Duration) {
        self.reviews.get_or_create(&labels).inc();
        self.review_seconds
            .get_or_create(&labels)
            .observe(latency.as_secs_f64());
    }

    pub fn record_policy(&self, policy: &str, decision: &str) {
        let labels = PolicyLabels {
            policy: policy.to_owned(),
            decision: decision.to_owned(),
        };
        self.policy_decisions.get_or_create(&labels).inc();
    }

    pub fn record_reload(&self, success: bool) {
        let outcome = if success { "success" } else { "failure" };
        self.policy_reloads
            .get_or_create(&OutcomeLabels {
                outcome: outcome.to_owned(),
            })
            .inc();
    }

    pub fn set_policies_loaded(&self, count: usize) {
        self.policies_loaded.set(count as i64);
    }

    pub fn set_certificate_expiry(&self, not_after_unix_seconds: i64) {
        self.certificate_expiry.set(not_after_unix_seconds);
    }

    pub fn record_certificate_reload(&self, success: bool) {
        let outcome = if success { "success" } else { "failure" };
        self.certificate_reloads
            .get_or_create(&OutcomeLabels {
                outcome: outcome.to_owned(),
            })
            .inc();
    }

    pub fn record_handshake_failure(&self) {
        self.handshake_failures.inc();
    }

    /// Registers further metrics, for modules that own their own.
    pub fn with_registry<T>(&self, register: impl FnOnce(&mut Registry) -> T) -> T {
        let mut registry = self.registry.lock().unwrap_or_else(|e| e.into_inner());
        register(&mut registry)
    }

    /// Encodes every metric in the OpenMetrics text format.
    pub fn encode(&self) -> String {
        let registry = self.registry.lock().unwrap_or_else(|e| e.into_inner());
        let mut text = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &registry);
        text
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
