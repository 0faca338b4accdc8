//! Gate decisions end to end: the shipped policies in the real [`Engine`],
//! with lookups served by a [`ClusterSource`] whose kube client talks to a
//! loopback stand-in API server, on recorded AdmissionReviews.
//!
//! The stand-in starts with the namespace as the recorded cluster had it
//! (`tests/fixtures/context/created`). Both fork-genesis claims are pending,
//! and both bootstrap Jobs carry the uids that the bootstrap pods'
//! ownerReferences name. The only pod is the bootstrap pod of
//! `pacific-fork-1`, which mounts the other node's claim.

#[path = "support/apiserver.rs"]
mod apiserver;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use apiserver::{fixture_events, ApiServer, KindInfo, RequestKind};
use genesis_gate::admission::{Endpoint, Review, Verdict};
use genesis_gate::engine::{Decision, Engine};
use genesis_gate::lookup::cluster::{ClusterMetrics, ClusterOptions, ClusterSource};
use genesis_gate::lookup::{Freshness, ObjectRef, ObjectSource, Origin};
use genesis_gate::metrics::Metrics;
use serde_json::{json, Value};

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");
/// The StatefulSet pod `pacific-fork-0-0`, mounting `data-pacific-fork-0`.
const STATEFULSET_POD: &str = "0010-Pod-CREATE.json";
/// The bootstrap pod that the Job controller created for
/// `pacific-fork-0-bootstrap`.
const BOOTSTRAP_POD: &str = "0008-Pod-CREATE.json";
/// The hand-made pod `sei-debug`, mounting `data-pacific-fork-0`.
const DEBUG_POD: &str = "0060-Pod-CREATE.json";
const CLAIM: &str = "data-pacific-fork-0";
const CLAIM_PATH: &str = "/api/v1/namespaces/sei/persistentvolumeclaims/data-pacific-fork-0";
const BOOTSTRAP_COMPLETE: &str = "sei.io/bootstrap-complete";
/// The live read budget that `serve` uses.
const LIVE_READ_BUDGET: Duration = Duration::from_secs(1);
/// The `timeoutSeconds` of the webhook registration. The API server discards
/// a response that arrives later and applies the webhook's failure policy.
const WEBHOOK_TIMEOUT: Duration = Duration::from_secs(5);
/// Upper bound for anything a test waits for; reaching it fails the test.
const WAIT_LIMIT: Duration = Duration::from_secs(20);

fn init_logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter("genesis_gate=debug,warn")
        .with_test_writer()
        .try_init();
}

fn read_json(path: &str) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read {path}: {e}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path} is not JSON: {e}"))
}

/// Reads a recorded AdmissionReview request body.
fn recorded_review(file: &str) -> Value {
    read_json(&format!("{FIXTURES}/admissionreviews/{file}"))
}

/// Reads the objects of a recorded cluster state, such as `created`.
fn context_objects(state: &str) -> Vec<Value> {
    let list = read_json(&format!("{FIXTURES}/context/{state}/cluster.json"));
    list["items"].as_array().cloned().unwrap_or_default()
}

fn named<'a>(objects: &'a [Value], kind: &str, name: &str) -> &'a Value {
    objects
        .iter()
        .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name} in the recorded objects"))
}

/// Returns the claim from the recorded MODIFIED event that marks it
/// bootstrapped.
fn bootstrap_complete_claim() -> Value {
    let event = fixture_events("watch-pvc.ndjson").remove(0);
    assert_eq!(event["type"], "MODIFIED");
    let claim = event["object"].clone();
    assert_eq!(claim["metadata"]["name"], CLAIM);
    assert_eq!(claim["metadata"]["annotations"][BOOTSTRAP_COMPLETE], "true");
    claim
}

/// Starts a stand-in holding the `created` state and the bootstrap pod of
/// the other node.
async fn created_cluster() -> ApiServer {
    init_logs();
    let server = ApiServer::start().await;
    server.register_kind(KindInfo::new(
        "apps/v1",
        "StatefulSet",
        "statefulsets",
        true,
    ));
    for object in context_objects("created") {
        server.seed_object(object);
    }
    let with_pods = context_objects("created-with-bootstrap-pods");
    server.seed_object(named(&with_pods, "Pod", "pacific-fork-1-bootstrap-9f45c").clone());
    server
}

/// The real engine with the shipped policies, reading through a cluster
/// source that watches what those policies look up.
struct Gate {
    source: Arc<ClusterSource>,
    engine: Engine,
}

impl Gate {
    /// Starts the watches without waiting for them to sync.
    fn start(server: &ApiServer) -> Gate {
        let policies = genesis_gate::policy::load_embedded().expect("shipped policies load");
        let options = ClusterOptions {
            live_read_budget: LIVE_READ_BUDGET,
            server_url: server.url(),
            metrics: ClusterMetrics::default(),
        };
        let requirements = policies.watch_requirements();
        let source = Arc::new(ClusterSource::start(server.client(), requirements, options));
        let lookups: Arc<dyn ObjectSource> = source.clone();
        let engine = Engine::new(policies, lookups, Arc::new(Metrics::new()));
        Gate { source, engine }
    }

    async fn start_synced(server: &ApiServer) -> Gate {
        let gate = Gate::start(server);
        gate.wait_synced().await;
        gate
    }

    async fn wait_synced(&self) {
        tokio::time::timeout(WAIT_LIMIT, self.source.wait_until_synced())
            .await
            .expect("the watch caches did not sync in time");
    }

    /// Decides a review at `/validate`, with traces.
    async fn validate(&self, review: &Value) -> Decision {
        let body = serde_json::to_vec(review).expect("review serializes");
        let review = Review::parse(&body).expect("recorded review parses");
        self.engine.decide(Endpoint::Validate, &review, true).await
    }

    /// Decides a review at `/validate`, failing the test when the response
    /// would arrive after the webhook timeout.
    async fn validate_in_time(&self, review: &Value) -> Decision {
        tokio::time::timeout(WEBHOOK_TIMEOUT, self.validate(review))
            .await
            .expect("the decision took longer than the webhook timeout")
    }
}

fn denial_message(verdict: &Verdict) -> &str {
    match &verdict.denial {
        Some(denial) => &denial.message,
        None => panic!("expected a denial, got an allow: {verdict:?}"),
    }
}

fn assert_allowed(decision: &Decision) {
    assert!(
        decision.verdict.allowed(),
        "denied: {:?}\ntraces: {:#?}",
        decision.verdict.denial,
        decision.traces
    );
}

/// Collects the lookup origins (`cache`, `live` or `none`) from the trace
/// of one policy.
fn lookup_origins(decision: &Decision, policy: &str) -> Vec<String> {
    let trace = decision
        .traces
        .iter()
        .find(|t| t.policy == policy)
        .unwrap_or_else(|| panic!("no trace of policy {policy}"));
    trace.lookups.iter().map(|l| l.origin.clone()).collect()
}

fn claim_gets(server: &ApiServer, path: &str) -> usize {
    server
        .requests_of(RequestKind::Get)
        .iter()
        .filter(|request| request.path == path)
        .count()
}

fn assert_no_unexpected_requests(server: &ApiServer) {
    assert_eq!(server.unexpected_requests(), Vec::<String>::new());
}

/// Polls `check` until it holds, failing the test after [`WAIT_LIMIT`].
async fn eventually<F, Fut>(condition: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + WAIT_LIMIT;
    while tokio::time::Instant::now() < deadline {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("{condition} did not happen within {WAIT_LIMIT:?}");
}

/// Returns the `sei.io/bootstrap-complete` annotation of the cached claim.
async fn cached_completion(source: &ClusterSource) -> Option<String> {
    let claim = ObjectRef {
        api_version: "v1".to_owned(),
        kind: "PersistentVolumeClaim".to_owned(),
        namespace: Some("sei".to_owned()),
        name: CLAIM.to_owned(),
    };
    let fetched = source.get(&claim, Freshness::Cached).await.ok()?;
    assert_eq!(fetched.origin, Origin::Cache, "the claim is not cached");
    let object = fetched.value?;
    let annotation = object["metadata"]["annotations"][BOOTSTRAP_COMPLETE].as_str()?;
    Some(annotation.to_owned())
}

/// Returns a copy of a pod review whose pod mounts `claim` in place of
/// `data-pacific-fork-0`.
fn with_claim(review: &Value, claim: &str) -> Value {
    let mut review = review.clone();
    let volumes = &mut review["request"]["object"]["spec"]["volumes"];
    for volume in volumes.as_array_mut().into_iter().flatten() {
        if volume["persistentVolumeClaim"]["claimName"] == CLAIM {
            volume["persistentVolumeClaim"]["claimName"] = json!(claim);
        }
    }
    review
}

/// Returns a copy of a pod review without its claim volume and the mounts
/// of it.
fn without_claim(review: &Value) -> Value {
    let mut review = review.clone();
    let spec = &mut review["request"]["object"]["spec"];
    let mut removed = Vec::new();
    if let Some(volumes) = spec["volumes"].as_array_mut() {
        volumes.retain(|volume| {
            let mounts_claim = volume.get("persistentVolumeClaim").is_some();
            if mounts_claim {
                removed.push(volume["name"].clone());
            }
            !mounts_claim
        });
    }
    for container in spec["containers"].as_array_mut().into_iter().flatten() {
        if let Some(mounts) = container["volumeMounts"].as_array_mut() {
            mounts.retain(|mount| !removed.contains(&mount["name"]));
        }
    }
    review
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_flips_once_watches_sync() {
    let server = created_cluster().await;
    server.drop_connections(true);
    let gate = Gate::start(&server);
    eventually("a dropped list request", || async {
        server.dropped_connections() > 0
    })
    .await;

    let reason = gate.engine.ready().expect_err("no list has completed");
    for kind in ["v1/PersistentVolumeClaim", "v1/Pod", "batch/v1/Job"] {
        assert!(reason.contains(kind), "{kind} missing from {reason}");
    }

    server.drop_connections(false);
    gate.wait_synced().await;
    assert_eq!(gate.engine.ready(), Ok(()));

    // The bootstrap pod needs a claim, the live Job and the pods, and all
    // three come from the caches without a read.
    let decision = gate.validate(&recorded_review(BOOTSTRAP_POD)).await;
    assert_allowed(&decision);
    let claim_gate = lookup_origins(&decision, "fork-genesis-claim-gate");
    assert_eq!(claim_gate, ["cache", "cache"]);
    assert_eq!(server.requests_of(RequestKind::Get).len(), 0);
    assert_no_unexpected_requests(&server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn annotation_from_watch_admits_statefulset_pod() {
    let server = created_cluster().await;
    let gate = Gate::start_synced(&server).await;
    let pod = recorded_review(STATEFULSET_POD);

    let pending = gate.validate(&pod).await;
    let message = denial_message(&pending.verdict);
    assert!(message.contains("pacific-fork-0-0"), "{message}");
    assert!(message.contains(CLAIM), "{message}");
    assert!(message.contains(BOOTSTRAP_COMPLETE), "{message}");

    server.push_event("MODIFIED", bootstrap_complete_claim());
    eventually("the annotation in the cache", || async {
        cached_completion(&gate.source).await.as_deref() == Some("true")
    })
    .await;

    let gets_before = claim_gets(&server, CLAIM_PATH);
    let admitted = gate.validate(&pod).await;
    assert_allowed(&admitted);
    assert_eq!(claim_gets(&server, CLAIM_PATH), gets_before);
    let claim_gate = lookup_origins(&admitted, "fork-genesis-claim-gate");
    assert_eq!(claim_gate[0], "cache");
    assert_no_unexpected_requests(&server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lagging_watch_denial_overturned_by_live_read() {
    let server = created_cluster().await;
    let gate = Gate::start_synced(&server).await;
    // The API server has the annotation, but no watch is told: a watch
    // that lags. (Holding the MODIFIED event let it through now and then,
    // when the watcher re-watched and the stand-in replayed its log.)
    server.replace_silently(bootstrap_complete_claim());

    let decision = gate.validate(&recorded_review(STATEFULSET_POD)).await;
    assert_allowed(&decision);
    assert!(claim_gets(&server, CLAIM_PATH) >= 1);
    let trace = decision
        .traces
        .iter()
        .find(|t| t.policy == "fork-genesis-claim-gate")
        .expect("claim gate trace");
    assert!(trace.confirmed_live, "{trace:#?}");
    assert_no_unexpected_requests(&server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vanished_server_fails_closed_in_time() {
    let server = created_cluster().await;
    let gate = Gate::start_synced(&server).await;
    server.shutdown();

    let denied = gate
        .validate_in_time(&recorded_review(STATEFULSET_POD))
        .await;
    let message = denial_message(&denied.verdict);
    assert!(message.contains(CLAIM), "{message}");
    assert!(message.contains("retries"), "{message}");
    let code = denied.verdict.denial.as_ref().map(|d| d.code);
    assert_eq!(code, Some(403));

    let no_claim = without_claim(&recorded_review(DEBUG_POD));
    let allowed = gate.validate_in_time(&no_claim).await;
    assert_allowed(&allowed);

    // Everything the bootstrap pod needs is cached, so it is admitted
    // although no read can reach the server.
    let bootstrap = gate.validate_in_time(&recorded_review(BOOTSTRAP_POD)).await;
    assert_allowed(&bootstrap);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hanging_server_fails_closed_in_time() {
    let server = created_cluster().await;
    let gate = Gate::start_synced(&server).await;
    server.delay_responses(Some(WAIT_LIMIT));

    let pending = gate
        .validate_in_time(&recorded_review(STATEFULSET_POD))
        .await;
    let message = denial_message(&pending.verdict);
    assert!(message.contains(CLAIM), "{message}");

    // A claim the cache has never seen cannot be read either, so the pod
    // is denied as unreadable rather than admitted.
    let unknown = with_claim(&recorded_review(STATEFULSET_POD), "data-pacific-fork-2");
    let unreadable = gate.validate_in_time(&unknown).await;
    let message = denial_message(&unreadable.verdict);
    assert!(message.contains("data-pacific-fork-2"), "{message}");
    assert!(message.contains("could not read"), "{message}");
    assert!(message.contains("retrying is safe"), "{message}");

    let bootstrap = gate.validate_in_time(&recorded_review(BOOTSTRAP_POD)).await;
    assert_allowed(&bootstrap);

    // The slowest case: three policies each wait out the read budget for
    // the uncached claim of a bootstrap pod.
    let bootstrap_unknown = with_claim(&recorded_review(BOOTSTRAP_POD), "data-pacific-fork-2");
    let unreadable = gate.validate_in_time(&bootstrap_unknown).await;
    let message = denial_message(&unreadable.verdict);
    assert!(message.contains("could not read"), "{message}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claim_missing_from_cache_read_live() {
    let server = created_cluster().await;
    let gate = Gate::start_synced(&server).await;
    let new_claim_path = "/api/v1/namespaces/sei/persistentvolumeclaims/data-pacific-fork-2";

    // A claim that exists, bootstrap-complete, but that no watch has been
    // told about, so the cache cannot have it. (Holding its ADDED event
    // raced with the watch and let the event through now and then.)
    let mut claim = bootstrap_complete_claim();
    claim["metadata"]["name"] = json!("data-pacific-fork-2");
    claim["metadata"]["labels"]["sei.io/node"] = json!("pacific-fork-2");
    server.replace_silently(claim);
    let pod = with_claim(&recorded_review(STATEFULSET_POD), "data-pacific-fork-2");

    let admitted = gate.validate(&pod).await;
    assert_allowed(&admitted);
    assert!(claim_gets(&server, new_claim_path) >= 1);
    let claim_gate = lookup_origins(&admitted, "fork-genesis-claim-gate");
    assert_eq!(claim_gate[0], "live");

    // A claim that exists nowhere is read live as well, and the pod waits
    // for it.
    let missing_path = "/api/v1/namespaces/sei/persistentvolumeclaims/data-pacific-fork-3";
    let orphan = with_claim(&recorded_review(STATEFULSET_POD), "data-pacific-fork-3");
    let denied = gate.validate(&orphan).await;
    let message = denial_message(&denied.verdict);
    assert!(message.contains("data-pacific-fork-3"), "{message}");
    assert!(message.contains("does not exist yet"), "{message}");
    assert!(claim_gets(&server, missing_path) >= 1);
    assert_no_unexpected_requests(&server);
}
