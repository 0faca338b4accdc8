//! The policy engine: runs the loaded policies on a parsed review and
//! decides the response.

mod evaluate;
mod matching;
mod patch;
mod trace;

use std::borrow::Cow;
use std::sync::{Arc, RwLock};
use std::time::Instant;

use bytes::Bytes;
use serde_json::Value;

pub use evaluate::{Effects, Failure, Outcome};
pub use trace::{LookupTrace, NamedResult, PolicyTrace};

use crate::admission::{self, Denial, Endpoint, RequestError, Review, Verdict};
use crate::lookup::{Freshness, ObjectSource};
use crate::metrics::{Metrics, ReviewLabels};
use crate::policy::{CompiledPolicy, FailurePolicy, PolicyKind, PolicySet, ReinvocationPolicy};

/// Runs policies against reviews. The policy set can be swapped while
/// requests are in flight: each request keeps the set it started with.
pub struct Engine {
    policies: RwLock<Arc<PolicySet>>,
    source: Arc<dyn ObjectSource>,
    metrics: Arc<Metrics>,
    rejected_bodies: RejectedBodies,
}

/// Logs rejected request bodies at most once per interval, with the count
/// of those not logged, so a misbehaving client cannot flood the log.
#[derive(Default)]
struct RejectedBodies {
    state: std::sync::Mutex<(Option<Instant>, u64)>,
}

const REJECTED_BODY_LOG_INTERVAL: std::time::Duration = std::time::Duration::from_secs(10);

impl RejectedBodies {
    fn record(&self, endpoint: Endpoint, error: &RequestError) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let (last, suppressed) = &mut *state;
        let due = last.is_none_or(|at| at.elapsed() >= REJECTED_BODY_LOG_INTERVAL);
        if !due {
            *suppressed += 1;
            tracing::debug!(endpoint = %endpoint, status = error.status, error = %error.message, "rejected admission request body");
            return;
        }
        tracing::warn!(
            endpoint = %endpoint,
            status = error.status,
            error = %error.message,
            repeats = *suppressed,
            "rejected admission request body"
        );
        *last = Some(Instant::now());
        *suppressed = 0;
    }
}

/// The decision on a review, with the per-policy traces when requested.
#[derive(Debug)]
pub struct Decision {
    pub verdict: Verdict,
    pub traces: Vec<PolicyTrace>,
    /// The object after the patch, for mutating reviews that patched it.
    pub patched: Option<Value>,
}

impl Engine {
    pub fn new(
        policies: PolicySet,
        source: Arc<dyn ObjectSource>,
        metrics: Arc<Metrics>,
    ) -> Engine {
        metrics.set_policies_loaded(policies.len());
        Engine {
            policies: RwLock::new(Arc::new(policies)),
            source,
            metrics,
            rejected_bodies: RejectedBodies::default(),
        }
    }

    /// Like [`Engine::new`], sharing a policy set that is already loaded.
    pub fn new_shared(
        policies: Arc<PolicySet>,
        source: Arc<dyn ObjectSource>,
        metrics: Arc<Metrics>,
    ) -> Engine {
        metrics.set_policies_loaded(policies.len());
        Engine {
            policies: RwLock::new(policies),
            source,
            metrics,
            rejected_bodies: RejectedBodies::default(),
        }
    }

    pub fn policies(&self) -> Arc<PolicySet> {
        self.policies
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Replaces the policy set; requests already running finish on the old one.
    pub fn replace_policies(&self, policies: PolicySet) {
        self.metrics.set_policies_loaded(policies.len());
        *self.policies.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(policies);
    }

    pub fn source(&self) -> &Arc<dyn ObjectSource> {
        &self.source
    }

    /// Returns `Ok` once the lookup source can serve lookups, else the reason.
    pub fn ready(&self) -> Result<(), String> {
        self.source.ready()
    }

    /// Decides `review` as the webhook at `endpoint` would.
    pub async fn decide(&self, endpoint: Endpoint, review: &Review, explain: bool) -> Decision {
        let policies = self.policies();
        let kind = match endpoint {
            Endpoint::Validate => PolicyKind::ValidatingPolicy,
            Endpoint::Mutate => PolicyKind::MutatingPolicy,
        };
        let selected: Vec<&Arc<CompiledPolicy>> = policies
            .policies()
            .iter()
            .filter(|p| p.kind == kind)
            .collect();
        let mut decision = Decision {
            verdict: Verdict::default(),
            traces: Vec::new(),
            patched: None,
        };
        // Borrowed until a mutation patches it, because most reviews are
        // never patched, and copying the object took about a tenth of the
        // instructions of a pod review (BENCHMARKS.md).
        let mut object = Cow::Borrowed(&review.object);
        // The index of the last policy that patched the object.
        let mut last_change: Option<usize> = None;
        for (index, policy) in selected.iter().enumerate() {
            if self
                .run_policy(policy, review, &mut object, explain, &mut decision)
                .await
            {
                last_change = Some(index);
            }
        }

        // Policies that asked for reinvocation see the changes that policies
        // after them made, once, as MutatingAdmissionPolicy does.
        if let Some(last_change) = last_change.filter(|_| decision.verdict.denial.is_none()) {
            for policy in selected
                .iter()
                .take(last_change)
                .filter(|p| p.reinvocation_policy == ReinvocationPolicy::IfNeeded)
            {
                self.run_policy(policy, review, &mut object, explain, &mut decision)
                    .await;
            }
        }

        if !decision.verdict.patch.is_empty() {
            decision.patched = Some(object.into_owned());
        }
        if decision.verdict.denial.is_some() {
            // A denied request is not patched.
            decision.verdict.patch.clear();
            decision.patched = None;
        }
        decision
    }

    /// Runs one policy and merges its effects; returns whether it patched.
    async fn run_policy(
        &self,
        policy: &CompiledPolicy,
        review: &Review,
        object: &mut Cow<'_, Value>,
        explain: bool,
        decision: &mut Decision,
    ) -> bool {
        let mut trace = explain.then(|| PolicyTrace {
            policy: policy.name.clone(),
            ..PolicyTrace::default()
        });
        let source = self.source.as_ref();
        let (mut outcome, used_cache) = evaluate::evaluate(
            policy,
            review,
            object,
            source,
            Freshness::Cached,
            &mut trace,
        )
        .await;
        let denied = matches!(&outcome, Outcome::Applied(e) if e.denial.is_some())
            || matches!(outcome, Outcome::Failed(Failure::Expression { .. }));
        if denied && used_cache {
            // A deny that rests on cached objects is checked against the
            // API server first, so a cache that lags never keeps a pod out
            // longer than the watch delay, and never lets one in.
            let mut live_trace = explain.then(|| PolicyTrace {
                policy: policy.name.clone(),
                confirmed_live: true,
                ..PolicyTrace::default()
            });
            let (live, _) = evaluate::evaluate(
                policy,
                review,
                object,
                source,
                Freshness::Live,
                &mut live_trace,
            )
            .await;
            if let Outcome::Failed(Failure::Lookup { target, error }) = &live {
                // The cached result already denies. An API server that
                // cannot be reached only leaves it unconfirmed.
                tracing::warn!(
                    uid = review.uid(), policy = %policy.name, %target, %error,
                    "could not confirm a cached denial with a live read; denying"
                );
            } else {
                outcome = live;
                trace = live_trace;
            }
        }
        if let Some(trace) = trace {
            decision.traces.push(trace);
        }
        self.merge(policy, review, outcome, object, &mut decision.verdict)
    }

    fn merge(
        &self,
        policy: &CompiledPolicy,
        review: &Review,
        outcome: Outcome,
        object: &mut Cow<'_, Value>,
        verdict: &mut Verdict,
    ) -> bool {
        match outcome {
            Outcome::NotMatched => false,
            Outcome::Applied(effects) => {
                let label = if effects.denial.is_some() {
                    "deny"
                } else if !effects.patch.is_empty() {
                    "patch"
                } else if !effects.warnings.is_empty() {
                    "warn"
                } else {
                    "allow"
                };
                self.metrics.record_policy(&policy.name, label);
                if verdict.denial.is_none() {
                    verdict.denial = effects.denial;
                }
                verdict.warnings.extend(effects.warnings);
                verdict.audit_annotations.extend(effects.audit_annotations);
                let patched = !effects.patch.is_empty();
                verdict.patch.extend(effects.patch);
                if let Some(patched_object) = effects.patched {
                    *object = Cow::Owned(patched_object);
                }
                patched
            }
            Outcome::Failed(failure) => {
                self.metrics.record_policy(&policy.name, "error");
                tracing::warn!(
                    uid = review.uid(),
                    kind = review.kind(),
                    namespace = review.namespace().unwrap_or(""),
                    name = %review.display_name(),
                    policy = %policy.name,
                    failure_policy = ?policy.failure_policy,
                    error = %failure,
                    "policy evaluation failed"
                );
                if policy.failure_policy == FailurePolicy::Fail && verdict.denial.is_none() {
                    verdict.denial = Some(Denial {
                        message: failure_message(policy, review, &failure),
                        reason: "Forbidden".to_owned(),
                        code: 403,
                    });
                }
                false
            }
        }
    }

    /// Parses, decides and encodes one AdmissionReview body.
    pub async fn review_body(
        &self,
        endpoint: Endpoint,
        body: &[u8],
    ) -> Result<Vec<u8>, RequestError> {
        let started = Instant::now();
        let review = match Review::parse(body) {
            Ok(review) => review,
            Err(error) => {
                self.rejected_bodies.record(endpoint, &error);
                return Err(error);
            }
        };
        let decision = self.decide(endpoint, &review, false).await;
        let verdict = decision.verdict;
        let label = if !verdict.allowed() {
            "deny"
        } else if !verdict.patch.is_empty() {
            "patch"
        } else if !verdict.warnings.is_empty() {
            "warn"
        } else {
            "allow"
        };
        let latency = started.elapsed();
        let message = verdict
            .denial
            .as_ref()
            .map(|d| d.message.as_str())
            .unwrap_or("");
        if verdict.allowed() {
            tracing::debug!(
                uid = review.uid(), endpoint = %endpoint, kind = review.kind(),
                namespace = review.namespace().unwrap_or(""), name = %review.display_name(),
                operation = review.operation(), dry_run = review.header.dry_run,
                decision = label, latency_us = latency.as_micros() as u64,
                "admission decided"
            );
        } else {
            tracing::info!(
                uid = review.uid(), endpoint = %endpoint, kind = review.kind(),
                namespace = review.namespace().unwrap_or(""), name = %review.display_name(),
                operation = review.operation(), dry_run = review.header.dry_run,
                decision = label, latency_us = latency.as_micros() as u64, deny_message = message,
                "admission denied"
            );
        }
        self.metrics.record_review(
            ReviewLabels {
                endpoint: endpoint.as_str().to_owned(),
                kind: review.kind().to_owned(),
                operation: review.operation().to_owned(),
                decision: label.to_owned(),
            },
            latency,
        );
        Ok(admission::encode(verdict.into_response(&review)))
    }
}

/// Builds the deny message for a policy that fails closed and could not be
/// evaluated.
fn failure_message(policy: &CompiledPolicy, review: &Review, failure: &Failure) -> String {
    let subject = format!(
        "{} {}/{}",
        review.kind(),
        review.namespace().unwrap_or(""),
        review.display_name()
    );
    match failure {
        Failure::Lookup { target, error } => format!(
            "{subject} was not admitted because genesis-gate could not read {target} ({error}) and policy {} fails closed; retrying is safe, and the StatefulSet or Job controller retries by itself.",
            policy.name
        ),
        other => format!(
            "{subject} was not admitted because policy {} could not be evaluated and fails closed: {other}. Fix the policy or the object; retrying is safe.",
            policy.name
        ),
    }
}

/// The engine as the HTTP layer calls it.
///
/// Each review runs on Tokio's blocking pool. CEL evaluation is CPU work
/// that no `.await` interrupts, and the `cel` crate has no cost budget. So
/// a slow expression must not stall the threads that accept connections and
/// enforce timeouts. The server's request timeout then still responds while
/// the evaluation finishes on its own thread.
pub struct Gate {
    engine: Arc<Engine>,
}

impl Gate {
    pub fn new(engine: Arc<Engine>) -> Gate {
        Gate { engine }
    }
}

#[async_trait::async_trait]
impl crate::server::Reviewer for Gate {
    async fn review(&self, endpoint: Endpoint, body: Bytes) -> Result<Bytes, RequestError> {
        let engine = self.engine.clone();
        let runtime = tokio::runtime::Handle::current();
        let task = tokio::task::spawn_blocking(move || {
            runtime.block_on(engine.review_body(endpoint, &body))
        });
        match task.await {
            Ok(result) => result.map(Bytes::from),
            Err(error) => {
                // A panic in evaluation is a bug; respond 500 so the API
                // server applies the webhook's failurePolicy.
                tracing::error!(%error, endpoint = %endpoint, "review task failed");
                Err(RequestError {
                    status: 500,
                    message: format!("genesis-gate failed to evaluate the review: {error}"),
                })
            }
        }
    }

    fn ready(&self) -> Result<(), String> {
        self.engine.ready()
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;
    use crate::lookup::{Fetched, FileSource, ListRef, LookupError, ObjectRef};

    /// Serves the recorded objects, but rejects a get of an empty name as
    /// the kube client does, without sending it.
    struct RejectsEmptyNames(FileSource);

    #[async_trait::async_trait]
    impl ObjectSource for RejectsEmptyNames {
        async fn get(
            &self,
            target: &ObjectRef,
            freshness: Freshness,
        ) -> Result<Fetched<Option<Arc<Value>>>, LookupError> {
            if target.name.is_empty() {
                return Err(LookupError::Unreachable(
                    "failed to validate request: A non-empty name is required".to_owned(),
                ));
            }
            self.0.get(target, freshness).await
        }

        async fn list(
            &self,
            target: &ListRef,
            freshness: Freshness,
        ) -> Result<Fetched<Vec<Arc<Value>>>, LookupError> {
            self.0.list(target, freshness).await
        }

        fn ready(&self) -> Result<(), String> {
            Ok(())
        }

        fn describe(&self) -> String {
            "recorded objects".to_owned()
        }
    }

    fn engine_on(state: &str) -> Engine {
        let context = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/context")
            .join(state);
        let files = FileSource::load(&[context]).expect("recorded context loads");
        let policies = crate::policy::load_embedded().expect("shipped policies load");
        Engine::new(
            policies,
            Arc::new(RejectsEmptyNames(files)),
            Arc::new(Metrics::new()),
        )
    }

    const STATEFULSET_POD: &str =
        include_str!("../tests/fixtures/admissionreviews/0010-Pod-CREATE.json");

    #[tokio::test]
    async fn empty_lookup_name_reads_nothing() {
        // The StatefulSet pod has no Job owner, so the claim gate's ownerJob
        // lookup names "".
        let review = Review::parse(STATEFULSET_POD.as_bytes()).unwrap();
        let decision = engine_on("annotated")
            .decide(Endpoint::Validate, &review, true)
            .await;
        assert!(decision.verdict.allowed(), "{:?}", decision.verdict.denial);
        let claim_gate = decision
            .traces
            .iter()
            .find(|t| t.policy == "fork-genesis-claim-gate")
            .expect("claim gate trace");
        let owner_job = claim_gate
            .lookups
            .iter()
            .find(|l| l.name == "ownerJob")
            .expect("ownerJob lookup trace");
        assert_eq!(owner_job.origin, "none");
        assert_eq!(owner_job.found, 0);
    }

    #[tokio::test]
    async fn empty_lookup_name_keeps_claim_gate_message() {
        let review = Review::parse(STATEFULSET_POD.as_bytes()).unwrap();
        let decision = engine_on("created")
            .decide(Endpoint::Validate, &review, false)
            .await;
        let denial = decision.verdict.denial.expect("pending claim denies");
        assert!(
            denial
                .message
                .contains("may not mount claim data-pacific-fork-0 yet"),
            "{}",
            denial.message
        );
    }
}
