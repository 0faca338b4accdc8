//! The cluster lookup source against a loopback stand-in API server,
//! through the real kube client: TLS, the watcher's list-then-watch, the
//! reflector store and live reads.

#[path = "support/apiserver.rs"]
mod apiserver;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use apiserver::{fixture_events, fixture_json, ApiServer, KindInfo, RequestKind};
use genesis_gate::lookup::cluster::{ClusterMetrics, ClusterOptions, ClusterSource};
use genesis_gate::lookup::config::{find_cluster, ConfigSearch};
use genesis_gate::lookup::{
    Freshness, ListRef, LookupError, ObjectRef, ObjectSource, Origin, WatchRequirement,
};
use genesis_gate::metrics::Metrics;
use serde_json::{json, Value};

const CLAIM: &str = "data-pacific-fork-0";
const OTHER_CLAIM: &str = "data-pacific-fork-1";
const BOOTSTRAP_COMPLETE: &str = "sei.io/bootstrap-complete";
const FORK_GENESIS: &str = "sei.io/fork-genesis=true";
/// Upper bound for anything a test waits for; reaching it fails the test.
const WAIT_LIMIT: Duration = Duration::from_secs(20);

fn init_logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter("genesis_gate=debug,kube_runtime=debug,warn")
        .with_test_writer()
        .try_init();
}

/// Starts a stand-in serving the recorded claims, pods and bootstrap Job.
async fn recorded_server() -> ApiServer {
    init_logs();
    let server = ApiServer::start().await;
    server.load_list("list-pvc-fork-genesis.json");
    server.load_list("list-pods.json");
    server.seed_object(fixture_json("get-job.json"));
    server
}

fn claim_watch() -> WatchRequirement {
    WatchRequirement {
        api_version: "v1".to_owned(),
        kind: "PersistentVolumeClaim".to_owned(),
        label_selector: Some(FORK_GENESIS.to_owned()),
        field_selector: None,
    }
}

fn options(server: &ApiServer, budget: Duration) -> ClusterOptions {
    ClusterOptions {
        live_read_budget: budget,
        server_url: server.url(),
        metrics: ClusterMetrics::default(),
    }
}

async fn wait_synced(source: &ClusterSource) {
    tokio::time::timeout(WAIT_LIMIT, source.wait_until_synced())
        .await
        .expect("the watch caches did not sync in time");
}

async fn synced_claim_source(server: &ApiServer) -> ClusterSource {
    let source = ClusterSource::start(
        server.client(),
        vec![claim_watch()],
        options(server, Duration::from_secs(2)),
    );
    wait_synced(&source).await;
    source
}

fn claim(name: &str) -> ObjectRef {
    ObjectRef {
        api_version: "v1".to_owned(),
        kind: "PersistentVolumeClaim".to_owned(),
        namespace: Some("sei".to_owned()),
        name: name.to_owned(),
    }
}

fn claims(label_selector: Option<&str>) -> ListRef {
    ListRef {
        api_version: "v1".to_owned(),
        kind: "PersistentVolumeClaim".to_owned(),
        namespace: Some("sei".to_owned()),
        label_selector: label_selector.map(equality_selector),
    }
}

fn annotation<'a>(object: &'a Value, key: &str) -> Option<&'a str> {
    object["metadata"]["annotations"][key].as_str()
}

fn name_of(object: &Value) -> &str {
    object["metadata"]["name"].as_str().unwrap_or_default()
}

/// Returns the claim from the recorded MODIFIED event that marks it
/// bootstrapped.
fn bootstrap_complete_claim() -> Value {
    let event = fixture_events("watch-pvc.ndjson").remove(0);
    assert_eq!(event["type"], "MODIFIED");
    let object = event["object"].clone();
    assert_eq!(annotation(&object, BOOTSTRAP_COMPLETE), Some("true"));
    object
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

async fn cached_claim(source: &ClusterSource, name: &str) -> Option<Arc<Value>> {
    let fetched = source
        .get(&claim(name), Freshness::Cached)
        .await
        .expect("cached get");
    fetched.value
}

fn assert_no_unexpected_requests(server: &ApiServer) {
    assert_eq!(server.unexpected_requests(), Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cache_fills_and_ready_flips() {
    let server = recorded_server().await;
    server.drop_connections(true);
    let source = ClusterSource::start(
        server.client(),
        vec![claim_watch()],
        options(&server, Duration::from_secs(2)),
    );
    assert!(source.ready().is_err());
    eventually("a dropped list request", || async {
        server.dropped_connections() > 0
    })
    .await;
    let reason = source.ready().expect_err("no list has completed");
    assert!(reason.contains("v1/PersistentVolumeClaim"), "{reason}");

    server.drop_connections(false);
    wait_synced(&source).await;
    assert_eq!(source.ready(), Ok(()));

    let fetched = source.get(&claim(CLAIM), Freshness::Cached).await.unwrap();
    assert_eq!(fetched.origin, Origin::Cache);
    let object = fetched.value.expect("claim in cache");
    assert_eq!(name_of(&object), CLAIM);
    assert_eq!(object["apiVersion"], "v1");
    assert_eq!(object["kind"], "PersistentVolumeClaim");
    assert_eq!(server.requests_of(RequestKind::Get).len(), 0);

    let description = source.describe();
    assert!(
        description.starts_with(&format!("cluster: {}", server.url())),
        "{description}"
    );
    assert!(description.contains("watching v1/PersistentVolumeClaim [sei.io/fork-genesis=true]"));
    assert_no_unexpected_requests(&server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watcher_sends_list_then_watch() {
    let server = recorded_server().await;
    let _source = synced_claim_source(&server).await;
    eventually("a watch request", || async { server.open_watches() > 0 }).await;

    let lists = server.requests_of(RequestKind::List);
    assert_eq!(lists.len(), 1);
    assert_eq!(lists[0].path, "/api/v1/persistentvolumeclaims");
    assert_eq!(lists[0].param("labelSelector"), Some(FORK_GENESIS));
    let watches = server.requests_of(RequestKind::Watch);
    assert_eq!(watches[0].param("resourceVersion"), Some("296"));
    assert_eq!(watches[0].param("allowWatchBookmarks"), Some("true"));
    assert_eq!(watches[0].param("labelSelector"), Some(FORK_GENESIS));
    let streaming = server
        .requests()
        .into_iter()
        .filter(|r| r.param("sendInitialEvents").is_some())
        .count();
    assert_eq!(streaming, 0);
    assert_no_unexpected_requests(&server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn modified_event_reaches_cache() {
    let server = recorded_server().await;
    let source = synced_claim_source(&server).await;
    let before = cached_claim(&source, CLAIM).await.expect("claim cached");
    assert_eq!(annotation(&before, BOOTSTRAP_COMPLETE), None);

    server.push_event("MODIFIED", bootstrap_complete_claim());
    eventually("the annotation in the cache", || async {
        let object = cached_claim(&source, CLAIM).await;
        object.is_some_and(|o| annotation(&o, BOOTSTRAP_COMPLETE).is_some())
    })
    .await;

    let fetched = source.get(&claim(CLAIM), Freshness::Cached).await.unwrap();
    assert_eq!(fetched.origin, Origin::Cache);
    let object = fetched.value.expect("claim cached");
    assert_eq!(annotation(&object, BOOTSTRAP_COMPLETE), Some("true"));
    assert_eq!(server.requests_of(RequestKind::Get).len(), 0);
    assert_no_unexpected_requests(&server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleted_event_leaves_cache() {
    let server = recorded_server().await;
    let source = synced_claim_source(&server).await;
    let deleted = fixture_events("watch-pvc.ndjson")
        .into_iter()
        .find(|event| event["type"] == "DELETED")
        .expect("a recorded DELETED event");
    assert_eq!(name_of(&deleted["object"]), OTHER_CLAIM);

    server.push_event("DELETED", deleted["object"].clone());
    eventually("the claim gone from the cached list", || async {
        let listed = source
            .list(&claims(Some(FORK_GENESIS)), Freshness::Cached)
            .await;
        listed.is_ok_and(|l| l.value.len() == 1)
    })
    .await;

    let fetched = source
        .get(&claim(OTHER_CLAIM), Freshness::Cached)
        .await
        .unwrap();
    assert_eq!(fetched.origin, Origin::Live);
    assert!(fetched.value.is_none());
    assert_no_unexpected_requests(&server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_get_sees_what_a_lagging_watch_withholds() {
    let server = recorded_server().await;
    let source = synced_claim_source(&server).await;
    server.hold_watch_events();
    server.push_event("MODIFIED", bootstrap_complete_claim());

    let cached = source.get(&claim(CLAIM), Freshness::Cached).await.unwrap();
    assert_eq!(cached.origin, Origin::Cache);
    let stale = cached.value.expect("claim cached");
    assert_eq!(annotation(&stale, BOOTSTRAP_COMPLETE), None);

    let live = source.get(&claim(CLAIM), Freshness::Live).await.unwrap();
    assert_eq!(live.origin, Origin::Live);
    let fresh = live.value.expect("claim exists");
    assert_eq!(annotation(&fresh, BOOTSTRAP_COMPLETE), Some("true"));
    assert_eq!(fresh["kind"], "PersistentVolumeClaim");

    server.release_watch_events();
    eventually("the cache catching up", || async {
        let object = cached_claim(&source, CLAIM).await;
        object.is_some_and(|o| annotation(&o, BOOTSTRAP_COMPLETE) == Some("true"))
    })
    .await;
    assert_no_unexpected_requests(&server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_watch_relists() {
    let server = recorded_server().await;
    let source = synced_claim_source(&server).await;
    eventually("a watch request", || async { server.open_watches() > 0 }).await;
    // Changes whose events compaction drops: only a fresh list shows them.
    server.replace_silently(bootstrap_complete_claim());
    server.remove_silently("v1", "PersistentVolumeClaim", "sei", OTHER_CLAIM);
    server.expire_watches();

    eventually("a re-list", || async {
        server.requests_of(RequestKind::List).len() >= 2
    })
    .await;
    eventually("the cache matching the re-list", || async {
        let listed = source
            .list(&claims(Some(FORK_GENESIS)), Freshness::Cached)
            .await;
        listed.is_ok_and(|l| {
            l.value.len() == 1 && annotation(&l.value[0], BOOTSTRAP_COMPLETE) == Some("true")
        })
    })
    .await;

    let listed = source
        .list(&claims(Some(FORK_GENESIS)), Freshness::Cached)
        .await
        .unwrap();
    assert_eq!(listed.origin, Origin::Cache);
    assert_eq!(name_of(&listed.value[0]), CLAIM);
    assert!(source.watch_restarts("v1", "PersistentVolumeClaim") >= 1);
    assert_no_unexpected_requests(&server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gone_on_rewatch_relists() {
    let server = recorded_server().await;
    let source = synced_claim_source(&server).await;
    eventually("a watch request", || async { server.open_watches() > 0 }).await;
    server.answer_next_watches_with_gone(1);
    server.replace_silently(bootstrap_complete_claim());
    server.end_watches();

    eventually("the re-listed claim in the cache", || async {
        let object = cached_claim(&source, CLAIM).await;
        object.is_some_and(|o| annotation(&o, BOOTSTRAP_COMPLETE) == Some("true"))
    })
    .await;
    let watches = server.requests_of(RequestKind::Watch);
    assert_eq!(watches[1].param("resourceVersion"), Some("296"));
    assert_eq!(server.requests_of(RequestKind::List).len(), 2);
    assert!(source.watch_restarts("v1", "PersistentVolumeClaim") >= 1);
    assert_no_unexpected_requests(&server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cut_watch_resumes_from_last_version() {
    let server = recorded_server().await;
    let source = synced_claim_source(&server).await;
    eventually("a watch request", || async { server.open_watches() > 0 }).await;
    server.cut_watches();
    server.push_event("MODIFIED", bootstrap_complete_claim());

    eventually("the claim update after the cut", || async {
        let object = cached_claim(&source, CLAIM).await;
        object.is_some_and(|o| annotation(&o, BOOTSTRAP_COMPLETE) == Some("true"))
    })
    .await;
    let watches = server.requests_of(RequestKind::Watch);
    assert!(watches.len() >= 2, "{watches:?}");
    assert_eq!(watches[1].param("resourceVersion"), Some("296"));
    assert_eq!(server.requests_of(RequestKind::List).len(), 1);
    assert_no_unexpected_requests(&server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vanished_server_fails_live_get() {
    let server = recorded_server().await;
    let source = synced_claim_source(&server).await;
    server.shutdown();

    let error = source
        .get(&claim(CLAIM), Freshness::Live)
        .await
        .expect_err("nothing listens");
    assert!(matches!(error, LookupError::Unreachable(_)), "{error:?}");

    // The cache still serves what it last saw.
    let cached = source.get(&claim(CLAIM), Freshness::Cached).await.unwrap();
    assert_eq!(cached.origin, Origin::Cache);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_connection_fails_cache_miss() {
    let server = recorded_server().await;
    let source = synced_claim_source(&server).await;
    server.drop_connections(true);

    let error = source
        .get(&claim("data-pacific-fork-9"), Freshness::Cached)
        .await
        .expect_err("the server closes every connection");
    assert!(matches!(error, LookupError::Unreachable(_)), "{error:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_server_exceeds_budget() {
    let server = recorded_server().await;
    let budget = Duration::from_millis(300);
    let source = ClusterSource::start(
        server.client(),
        vec![claim_watch()],
        options(&server, budget),
    );
    wait_synced(&source).await;
    server.delay_responses(Some(Duration::from_secs(10)));

    let error = source
        .get(&claim(CLAIM), Freshness::Live)
        .await
        .expect_err("the answer comes after the budget");
    assert!(
        matches!(error, LookupError::Timeout(b) if b == budget),
        "{error:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cache_miss_reads_live() {
    let server = recorded_server().await;
    let metrics = Metrics::new();
    let source = ClusterSource::start(
        server.client(),
        vec![claim_watch()],
        ClusterOptions {
            metrics: ClusterMetrics::register(&metrics),
            ..options(&server, Duration::from_secs(2))
        },
    );
    wait_synced(&source).await;

    let missing = source
        .get(&claim("data-pacific-fork-9"), Freshness::Cached)
        .await
        .unwrap();
    assert_eq!(missing.origin, Origin::Live);
    assert!(missing.value.is_none());
    let gets = server.requests_of(RequestKind::Get);
    assert_eq!(gets.len(), 1);
    assert_eq!(
        gets[0].path,
        "/api/v1/namespaces/sei/persistentvolumeclaims/data-pacific-fork-9"
    );

    let text = metrics.encode();
    assert!(
        text.contains(r#"genesis_gate_lookups_total{outcome="miss"} 1"#),
        "{text}"
    );
    assert!(text.contains(r#"result="not_found"} 1"#), "{text}");
    assert_no_unexpected_requests(&server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claim_outside_watch_selector_reads_live() {
    let server = recorded_server().await;
    let mut scratch = fixture_json("get-pvc.json");
    scratch["metadata"]["name"] = json!("scratch");
    scratch["metadata"]["labels"] = json!({});
    server.seed_object(scratch);
    let source = synced_claim_source(&server).await;

    let fetched = source
        .get(&claim("scratch"), Freshness::Cached)
        .await
        .unwrap();
    assert_eq!(fetched.origin, Origin::Live);
    let object = fetched.value.expect("claim exists");
    assert_eq!(name_of(&object), "scratch");
    assert_no_unexpected_requests(&server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unwatched_kind_reads_live() {
    let server = recorded_server().await;
    let source = synced_claim_source(&server).await;
    let job = ObjectRef {
        api_version: "batch/v1".to_owned(),
        kind: "Job".to_owned(),
        namespace: Some("sei".to_owned()),
        name: "pacific-fork-0-bootstrap".to_owned(),
    };

    let fetched = source.get(&job, Freshness::Cached).await.unwrap();
    assert_eq!(fetched.origin, Origin::Live);
    let object = fetched.value.expect("job exists");
    assert_eq!(
        object["metadata"]["uid"],
        "054eda95-ede5-47fa-aafa-cc87dd5c7ba5"
    );
    assert_eq!(server.requests_of(RequestKind::Discovery).len(), 0);
    assert_no_unexpected_requests(&server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cached_list_only_within_watch_selector() {
    let server = recorded_server().await;
    let source = synced_claim_source(&server).await;

    let narrower = format!("{FORK_GENESIS},sei.io/node=pacific-fork-0");
    let listed = source
        .list(&claims(Some(&narrower)), Freshness::Cached)
        .await
        .unwrap();
    assert_eq!(listed.origin, Origin::Cache);
    assert_eq!(listed.value.len(), 1);
    assert_eq!(name_of(&listed.value[0]), CLAIM);

    let everything = source.list(&claims(None), Freshness::Cached).await.unwrap();
    assert_eq!(everything.origin, Origin::Live);
    assert_eq!(everything.value.len(), 2);
    let lists = server.requests_of(RequestKind::List);
    let live_list = lists.last().expect("a live list");
    assert_eq!(
        live_list.path,
        "/api/v1/namespaces/sei/persistentvolumeclaims"
    );
    assert_eq!(live_list.param("labelSelector"), None);
    assert_no_unexpected_requests(&server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_list_from_cache_by_label() {
    let server = recorded_server().await;
    let pods = WatchRequirement {
        api_version: "v1".to_owned(),
        kind: "Pod".to_owned(),
        label_selector: None,
        field_selector: None,
    };
    let source = ClusterSource::start(
        server.client(),
        vec![pods],
        options(&server, Duration::from_secs(2)),
    );
    wait_synced(&source).await;
    let bootstrap_pods = ListRef {
        api_version: "v1".to_owned(),
        kind: "Pod".to_owned(),
        namespace: Some("sei".to_owned()),
        label_selector: Some(equality_selector(
            "sei.io/component=bootstrap,sei.io/node=pacific-fork-0",
        )),
    };

    let listed = source
        .list(&bootstrap_pods, Freshness::Cached)
        .await
        .unwrap();
    assert_eq!(listed.origin, Origin::Cache);
    let names: Vec<&str> = listed.value.iter().map(|pod| name_of(pod)).collect();
    assert_eq!(names, vec!["pacific-fork-0-bootstrap-qtmwf"]);
    assert_eq!(listed.value[0]["kind"], "Pod");
    assert_no_unexpected_requests(&server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn custom_resource_found_by_discovery() {
    let server = recorded_server().await;
    server.register_kind(KindInfo::new(
        "sei.io/v1alpha1",
        "SeiNode",
        "seinodes",
        true,
    ));
    server.seed_object(json!({
        "apiVersion": "sei.io/v1alpha1",
        "kind": "SeiNode",
        "metadata": {"name": "pacific-fork-0", "namespace": "sei", "resourceVersion": "290"},
        "spec": {"chainId": "pacific-fork-1"}
    }));
    let nodes = WatchRequirement {
        api_version: "sei.io/v1alpha1".to_owned(),
        kind: "SeiNode".to_owned(),
        label_selector: None,
        field_selector: None,
    };
    let source = ClusterSource::start(
        server.client(),
        vec![nodes],
        options(&server, Duration::from_secs(2)),
    );
    wait_synced(&source).await;

    let node = ObjectRef {
        api_version: "sei.io/v1alpha1".to_owned(),
        kind: "SeiNode".to_owned(),
        namespace: Some("sei".to_owned()),
        name: "pacific-fork-0".to_owned(),
    };
    let fetched = source.get(&node, Freshness::Cached).await.unwrap();
    assert_eq!(fetched.origin, Origin::Cache);
    let object = fetched.value.expect("node cached");
    assert_eq!(object["spec"]["chainId"], "pacific-fork-1");
    let discovery = server.requests_of(RequestKind::Discovery);
    assert_eq!(discovery.len(), 1);
    assert_eq!(discovery[0].path, "/apis/sei.io/v1alpha1");
    assert_no_unexpected_requests(&server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_kind_is_reported() {
    let server = recorded_server().await;
    let source = synced_claim_source(&server).await;
    let widget = ObjectRef {
        api_version: "example.com/v1".to_owned(),
        kind: "Widget".to_owned(),
        namespace: Some("sei".to_owned()),
        name: "w".to_owned(),
    };

    let error = source
        .get(&widget, Freshness::Cached)
        .await
        .expect_err("no such kind");
    assert!(
        matches!(error, LookupError::UnknownKind { .. }),
        "{error:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubeconfig_leads_to_stand_in() {
    let server = recorded_server().await;
    let dir = std::env::temp_dir().join(format!("genesis-gate-kubeconfig-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("config");
    std::fs::write(&path, server.kubeconfig_yaml()).unwrap();
    let search = ConfigSearch {
        kubeconfig_env: Some(path.into_os_string()),
        ..ConfigSearch::default()
    };

    let found = find_cluster(&search).await.expect("the written kubeconfig");
    assert!(
        found.server_url.starts_with("https://127.0.0.1:"),
        "{}",
        found.server_url
    );
    let source = ClusterSource::start(
        found.client,
        vec![claim_watch()],
        ClusterOptions {
            server_url: found.server_url.clone(),
            ..ClusterOptions::default()
        },
    );
    wait_synced(&source).await;
    let cached = source.get(&claim(CLAIM), Freshness::Cached).await.unwrap();
    assert_eq!(cached.origin, Origin::Cache);
    assert_no_unexpected_requests(&server);
}

/// Builds a selector from `key=value` terms separated by commas.
fn equality_selector(text: &str) -> kube::core::Selector {
    text.split(',')
        .map(|term| {
            let (key, value) = term.split_once('=').expect("a key=value term");
            (key.to_owned(), value.to_owned())
        })
        .collect()
}
