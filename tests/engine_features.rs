//! Engine behaviour beyond the shipped policies: params, audit, warnings,
//! explain traces, failure policies, time limits, and the confirmation of
//! cached denials by live reads.

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use genesis_gate::admission::{Endpoint, Review};
use genesis_gate::engine::Engine;
use genesis_gate::lookup::{
    Fetched, FileSource, Freshness, ListRef, LookupError, ObjectRef, ObjectSource, Origin,
};
use genesis_gate::metrics::Metrics;
use genesis_gate::policy::{load_sources, PolicySet, PolicySource};
use serde_json::{json, Value};

const POD_REVIEW: &str = include_str!("fixtures/admissionreviews/0060-Pod-CREATE.json");

fn policies(text: &str, dir: Option<&Path>) -> PolicySet {
    load_sources(&[PolicySource {
        file: "test.yaml".to_owned(),
        text: text.to_owned(),
        dir: dir.map(Path::to_path_buf),
    }])
    .expect("test policy loads")
}

fn engine(text: &str, source: Arc<dyn ObjectSource>) -> Engine {
    Engine::new(policies(text, None), source, Arc::new(Metrics::new()))
}

fn empty_source() -> Arc<dyn ObjectSource> {
    Arc::new(FileSource::default())
}

fn review() -> Review {
    Review::parse(POD_REVIEW.as_bytes()).unwrap()
}

fn policy(kind: &str, spec: &str) -> String {
    format!(
        "apiVersion: genesis-gate.sei.io/v1alpha1\nkind: {kind}\nmetadata:\n  name: test-policy\nspec:\n  matchConstraints:\n    resourceRules:\n      - {{apiGroups: [\"\"], apiVersions: [\"v1\"], resources: [\"pods\"], operations: [\"CREATE\"]}}\n{spec}"
    )
}

#[tokio::test]
async fn inline_params_reach_expressions() {
    let text = policy(
        "ValidatingPolicy",
        "  params: {forbidden: sei-debug}\n  validations:\n    - expression: object.metadata.name != params.forbidden\n      message: forbidden name\n",
    );
    let decision = engine(&text, empty_source())
        .decide(Endpoint::Validate, &review(), false)
        .await;
    assert_eq!(decision.verdict.denial.unwrap().message, "forbidden name");
}

#[tokio::test]
async fn params_file_beside_policy_is_read() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("params.yaml"), "forbidden: sei-debug\n").unwrap();
    let text = policy(
        "ValidatingPolicy",
        "  paramRef: {file: params.yaml}\n  validations:\n    - expression: object.metadata.name != params.forbidden\n      message: forbidden name\n",
    );
    let set = policies(&text, Some(dir.path()));
    let engine = Engine::new(set, empty_source(), Arc::new(Metrics::new()));
    let decision = engine.decide(Endpoint::Validate, &review(), false).await;
    assert!(
        decision.verdict.denial.is_some(),
        "params from the file deny the pod"
    );
}

#[tokio::test]
async fn params_config_map_is_looked_up() {
    let text = policy(
        "ValidatingPolicy",
        "  paramRef: {configMap: {namespace: gate, name: gate-params}}\n  validations:\n    - expression: object.metadata.name != params.forbidden\n      message: forbidden name\n",
    );
    let config_map = json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "gate-params", "namespace": "gate"},
        "data": {"forbidden": "sei-debug"}
    });
    let source = Arc::new(FileSource::from_objects([config_map]).unwrap());
    let decision = engine(&text, source)
        .decide(Endpoint::Validate, &review(), false)
        .await;
    assert!(
        decision.verdict.denial.is_some(),
        "params from the ConfigMap deny the pod"
    );
}

#[tokio::test]
async fn missing_params_config_map_fails_closed() {
    let text = policy(
        "ValidatingPolicy",
        "  paramRef: {configMap: {namespace: gate, name: gate-params}}\n  validations:\n    - expression: \"true\"\n",
    );
    let decision = engine(&text, empty_source())
        .decide(Endpoint::Validate, &review(), false)
        .await;
    let message = decision.verdict.denial.expect("fails closed").message;
    assert!(
        message.contains("params ConfigMap gate/gate-params does not exist"),
        "{message}"
    );
}

#[tokio::test]
async fn warn_action_allows_with_warning() {
    let text = policy(
        "ValidatingPolicy",
        "  validationActions: [Warn]\n  validations:\n    - expression: \"false\"\n      message: look out\n",
    );
    let decision = engine(&text, empty_source())
        .decide(Endpoint::Validate, &review(), false)
        .await;
    assert!(decision.verdict.allowed());
    assert_eq!(decision.verdict.warnings, vec!["look out".to_owned()]);
}

#[tokio::test]
async fn audit_action_adds_annotation() {
    let text = policy(
        "ValidatingPolicy",
        "  validationActions: [Audit]\n  validations:\n    - expression: \"false\"\n      message: noted\n  auditAnnotations:\n    - key: pod\n      valueExpression: object.metadata.name\n",
    );
    let decision = engine(&text, empty_source())
        .decide(Endpoint::Validate, &review(), false)
        .await;
    assert!(decision.verdict.allowed());
    let keys: Vec<&str> = decision
        .verdict
        .audit_annotations
        .iter()
        .map(|(k, _)| k.as_str())
        .collect();
    // The API server prefixes each key with the webhook name and a `/`,
    // so a key must not contain one.
    assert!(keys.iter().all(|k| !k.contains('/')), "{keys:?}");
    assert!(keys.contains(&"test-policy.validation_failure"), "{keys:?}");
    assert!(keys.contains(&"test-policy.pod"), "{keys:?}");
    let pod = decision
        .verdict
        .audit_annotations
        .iter()
        .find(|(k, _)| k == "test-policy.pod")
        .unwrap();
    assert_eq!(pod.1, "sei-debug");
}

#[tokio::test]
async fn failure_policy_fail_denies_on_error() {
    let text = policy(
        "ValidatingPolicy",
        "  failurePolicy: Fail\n  validations:\n    - expression: object.metadata.noSuchField == \"x\"\n",
    );
    let decision = engine(&text, empty_source())
        .decide(Endpoint::Validate, &review(), false)
        .await;
    let denial = decision.verdict.denial.expect("an evaluation error denies");
    assert_eq!(denial.code, 403);
    assert!(
        denial
            .message
            .contains("policy test-policy could not be evaluated"),
        "{}",
        denial.message
    );
    assert!(denial.message.contains("noSuchField"), "{}", denial.message);
}

#[tokio::test]
async fn failure_policy_ignore_allows_on_error() {
    let text = policy(
        "ValidatingPolicy",
        "  failurePolicy: Ignore\n  validations:\n    - expression: object.metadata.noSuchField == \"x\"\n",
    );
    let decision = engine(&text, empty_source())
        .decide(Endpoint::Validate, &review(), false)
        .await;
    assert!(decision.verdict.allowed());
}

#[tokio::test]
async fn explain_traces_conditions_variables_and_lookups() {
    let text = policy(
        "ValidatingPolicy",
        "  matchConditions:\n    - name: named\n      expression: has(object.metadata.name)\n  variables:\n    - name: claimName\n      expression: object.spec.volumes[0].persistentVolumeClaim.claimName\n  lookups:\n    - name: claim\n      apiVersion: v1\n      kind: PersistentVolumeClaim\n      nameExpression: variables.claimName\n  validations:\n    - expression: lookups.claim == null\n",
    );
    let claim = json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
        "metadata": {"name": "data-pacific-fork-0", "namespace": "sei"}});
    let source = Arc::new(FileSource::from_objects([claim]).unwrap());
    let decision = engine(&text, source)
        .decide(Endpoint::Validate, &review(), true)
        .await;
    let trace = &decision.traces[0];
    assert!(trace.matched);
    assert_eq!(trace.match_conditions[0].value, Some(Value::Bool(true)));
    assert_eq!(trace.variables[0].value, Some(json!("data-pacific-fork-0")));
    assert_eq!(
        trace.lookups[0].target,
        "PersistentVolumeClaim sei/data-pacific-fork-0"
    );
    assert_eq!(trace.lookups[0].found, 1);
    assert_eq!(trace.decided_by, "validations[0] is false");
}

#[tokio::test]
async fn explain_names_the_reason_a_policy_skipped() {
    let text = policy(
        "ValidatingPolicy",
        "  matchConditions:\n    - name: never\n      expression: \"false\"\n  validations:\n    - expression: \"false\"\n",
    );
    let decision = engine(&text, empty_source())
        .decide(Endpoint::Validate, &review(), true)
        .await;
    assert!(decision.verdict.allowed());
    assert_eq!(
        decision.traces[0].decided_by,
        "matchCondition never is false"
    );
}

#[tokio::test]
async fn time_limit_fails_the_policy() {
    // Nested comprehensions over a long list run far past 1 ms.
    let text = policy(
        "ValidatingPolicy",
        "  timeout: 1ms\n  failurePolicy: Fail\n  variables:\n    - name: numbers\n      expression: lists.range(3000)\n  validations:\n    - expression: variables.numbers.all(i, variables.numbers.exists(j, j == i))\n",
    );
    let decision = engine(&text, empty_source())
        .decide(Endpoint::Validate, &review(), false)
        .await;
    let message = decision
        .verdict
        .denial
        .expect("a timed-out policy fails closed")
        .message;
    assert!(message.contains("time limit"), "{message}");
}

#[tokio::test]
async fn namespace_selector_uses_metadata_name_label() {
    let text = policy(
        "ValidatingPolicy",
        "  validations:\n    - expression: \"false\"\n      message: denied in sei\n",
    )
    .replace(
        "operations: [\"CREATE\"]}\n",
        "operations: [\"CREATE\"]}\n    namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: other}}\n",
    );
    let decision = engine(&text, empty_source())
        .decide(Endpoint::Validate, &review(), false)
        .await;
    assert!(decision.verdict.allowed(), "the pod is in sei, not other");
}

/// Answers from a "cache" that still has the claim pending, while the
/// "API server" already has it complete; counts the live reads.
struct LaggingSource {
    live_reads: AtomicUsize,
    reachable: bool,
}

fn claim(complete: bool) -> Arc<Value> {
    let mut annotations = json!({});
    if complete {
        annotations["sei.io/bootstrap-complete"] = json!("true");
    }
    Arc::new(json!({
        "apiVersion": "v1", "kind": "PersistentVolumeClaim",
        "metadata": {"name": "data-pacific-fork-0", "namespace": "sei",
            "labels": {"sei.io/fork-genesis": "true"}, "annotations": annotations}
    }))
}

#[async_trait::async_trait]
impl ObjectSource for LaggingSource {
    async fn get(
        &self,
        target: &ObjectRef,
        freshness: Freshness,
    ) -> Result<Fetched<Option<Arc<Value>>>, LookupError> {
        if target.kind != "PersistentVolumeClaim" {
            return Ok(Fetched {
                value: None,
                origin: Origin::Cache,
            });
        }
        match freshness {
            Freshness::Cached => Ok(Fetched {
                value: Some(claim(false)),
                origin: Origin::Cache,
            }),
            Freshness::Live => {
                self.live_reads.fetch_add(1, Ordering::SeqCst);
                if self.reachable {
                    Ok(Fetched {
                        value: Some(claim(true)),
                        origin: Origin::Live,
                    })
                } else {
                    Err(LookupError::Unreachable("connection refused".to_owned()))
                }
            }
        }
    }

    async fn list(
        &self,
        _target: &ListRef,
        _freshness: Freshness,
    ) -> Result<Fetched<Vec<Arc<Value>>>, LookupError> {
        Ok(Fetched {
            value: Vec::new(),
            origin: Origin::Cache,
        })
    }

    fn ready(&self) -> Result<(), String> {
        Ok(())
    }

    fn describe(&self) -> String {
        "lagging test source".to_owned()
    }
}

#[tokio::test]
async fn cached_denial_confirmed_by_live_read() {
    let source = Arc::new(LaggingSource {
        live_reads: AtomicUsize::new(0),
        reachable: true,
    });
    let engine = Engine::new(
        genesis_gate::policy::load_embedded().unwrap(),
        source.clone(),
        Arc::new(Metrics::new()),
    );
    let decision = engine.decide(Endpoint::Validate, &review(), false).await;
    assert!(
        decision.verdict.allowed(),
        "the live read sees the annotation: {:?}",
        decision.verdict.denial
    );
    assert!(
        source.live_reads.load(Ordering::SeqCst) >= 1,
        "the denial was confirmed live"
    );
}

#[tokio::test]
async fn unconfirmable_cached_denial_still_denies() {
    let source = Arc::new(LaggingSource {
        live_reads: AtomicUsize::new(0),
        reachable: false,
    });
    let engine = Engine::new(
        genesis_gate::policy::load_embedded().unwrap(),
        source.clone(),
        Arc::new(Metrics::new()),
    );
    let decision = engine.decide(Endpoint::Validate, &review(), false).await;
    let message = decision
        .verdict
        .denial
        .expect("a pending claim in the cache denies")
        .message;
    assert!(
        message.contains("may not mount claim data-pacific-fork-0"),
        "{message}"
    );
}

/// Fails every read, as an unreachable API server does.
struct UnreachableSource;

#[async_trait::async_trait]
impl ObjectSource for UnreachableSource {
    async fn get(
        &self,
        _target: &ObjectRef,
        _freshness: Freshness,
    ) -> Result<Fetched<Option<Arc<Value>>>, LookupError> {
        Err(LookupError::Unreachable("connection refused".to_owned()))
    }

    async fn list(
        &self,
        _target: &ListRef,
        _freshness: Freshness,
    ) -> Result<Fetched<Vec<Arc<Value>>>, LookupError> {
        Err(LookupError::Unreachable("connection refused".to_owned()))
    }

    fn ready(&self) -> Result<(), String> {
        Err("unreachable".to_owned())
    }

    fn describe(&self) -> String {
        "unreachable test source".to_owned()
    }
}

#[tokio::test]
async fn unreachable_api_server_fails_gate_closed() {
    let engine = Engine::new(
        genesis_gate::policy::load_embedded().unwrap(),
        Arc::new(UnreachableSource),
        Arc::new(Metrics::new()),
    );
    let decision = engine.decide(Endpoint::Validate, &review(), false).await;
    let message = decision
        .verdict
        .denial
        .expect("the gate fails closed")
        .message;
    assert!(
        message.contains("could not read PersistentVolumeClaim sei/data-pacific-fork-0"),
        "{message}"
    );
    assert!(message.contains("retrying is safe"), "{message}");
}

#[tokio::test]
async fn unreachable_api_server_spares_pods_without_claims() {
    let engine = Engine::new(
        genesis_gate::policy::load_embedded().unwrap(),
        Arc::new(UnreachableSource),
        Arc::new(Metrics::new()),
    );
    let mut review = review();
    review.object["spec"]["volumes"] = json!([]);
    let decision = engine.decide(Endpoint::Validate, &review, false).await;
    assert!(decision.verdict.allowed(), "{:?}", decision.verdict.denial);
}
