//! Latency of one `/validate` review of the StatefulSet pod `pacific-fork-0-0`
//! (recorded review 0010) with every shipped policy loaded, in the
//! `annotated` cluster state, so the pod is allowed after its lookups:
//!
//! - `cluster cache`: lookups served by a synced `ClusterSource`, whose
//!   watches ran against the loopback stand-in API server;
//! - `files`: lookups served by a `FileSource` of the same recorded objects.
//!
//! Both engines run on the same Tokio runtime, entered with `block_on` for
//! each review. The `get claim` group measures one cached get of the claim
//! from each source, the step in which the two paths differ.

#[path = "../tests/support/apiserver.rs"]
mod apiserver;

use std::hint::black_box;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use apiserver::{ApiServer, KindInfo, RequestKind};
use criterion::{criterion_group, criterion_main, Criterion};
use genesis_gate::admission::Endpoint;
use genesis_gate::engine::Engine;
use genesis_gate::lookup::cluster::{ClusterMetrics, ClusterOptions, ClusterSource};
use genesis_gate::lookup::{FileSource, Freshness, ObjectRef, ObjectSource};
use genesis_gate::metrics::Metrics;
use serde_json::Value;
use tokio::runtime::Runtime;

const REVIEW: &[u8] = include_bytes!("../tests/fixtures/admissionreviews/0010-Pod-CREATE.json");

fn context_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/context/annotated")
}

fn engine_on(source: Arc<dyn ObjectSource>) -> Engine {
    let policies = genesis_gate::policy::load_embedded().expect("shipped policies load");
    Engine::new(policies, source, Arc::new(Metrics::new()))
}

/// Starts a stand-in holding the `annotated` objects, and a cluster source
/// that has synced its watches against it.
async fn cluster_source() -> (ApiServer, Arc<dyn ObjectSource>) {
    let server = ApiServer::start().await;
    server.register_kind(KindInfo::new(
        "apps/v1",
        "StatefulSet",
        "statefulsets",
        true,
    ));
    let list = std::fs::read_to_string(context_dir().join("cluster.json")).expect("context");
    let list: Value = serde_json::from_str(&list).expect("context is JSON");
    for object in list["items"].as_array().into_iter().flatten() {
        server.seed_object(object.clone());
    }
    let requirements = genesis_gate::policy::load_embedded()
        .expect("shipped policies load")
        .watch_requirements();
    let options = ClusterOptions {
        live_read_budget: Duration::from_secs(1),
        server_url: server.url(),
        metrics: ClusterMetrics::default(),
    };
    let source = Arc::new(ClusterSource::start(server.client(), requirements, options));
    tokio::time::timeout(Duration::from_secs(20), source.wait_until_synced())
        .await
        .expect("the watch caches did not sync in time");
    (server, source)
}

/// Reviews the pod once and checks that the engine allows it.
fn assert_allows(runtime: &Runtime, engine: &Engine, name: &str) {
    let body = runtime
        .block_on(engine.review_body(Endpoint::Validate, REVIEW))
        .expect("the recorded review is valid");
    let response: Value = serde_json::from_slice(&body).expect("response is JSON");
    assert_eq!(
        response["response"]["allowed"], true,
        "{name} must allow the pod: {response}"
    );
}

fn claim() -> ObjectRef {
    ObjectRef {
        api_version: "v1".to_owned(),
        kind: "PersistentVolumeClaim".to_owned(),
        namespace: Some("sei".to_owned()),
        name: "data-pacific-fork-0".to_owned(),
    }
}

/// Checks that both sources serve the same claim, so the two figures
/// measure the same evaluation.
fn assert_same_claim(runtime: &Runtime, cluster: &dyn ObjectSource, files: &dyn ObjectSource) {
    let cached = runtime.block_on(cluster.get(&claim(), Freshness::Cached));
    let from_file = runtime.block_on(files.get(&claim(), Freshness::Cached));
    let cached = cached.expect("cached get").value.expect("claim cached");
    let from_file = from_file.expect("file get").value.expect("claim in file");
    assert_eq!(cached, from_file, "the two sources serve different claims");
}

fn review_latency(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let (server, cluster_source) = runtime.block_on(cluster_source());
    let file_source: Arc<dyn ObjectSource> =
        Arc::new(FileSource::load(&[context_dir()]).expect("context loads"));
    assert_same_claim(&runtime, cluster_source.as_ref(), file_source.as_ref());
    let cluster = engine_on(cluster_source.clone());
    let files = engine_on(file_source.clone());
    assert_allows(&runtime, &cluster, "the cluster cache engine");
    assert_allows(&runtime, &files, "the files engine");
    let lists_after_sync = server.requests_of(RequestKind::List).len();

    let mut group = c.benchmark_group("review 0010 allowed");
    group.bench_function("cluster cache", |b| {
        b.iter(|| runtime.block_on(cluster.review_body(Endpoint::Validate, black_box(REVIEW))))
    });
    group.bench_function("files", |b| {
        b.iter(|| runtime.block_on(files.review_body(Endpoint::Validate, black_box(REVIEW))))
    });
    group.finish();

    // The same split at the level of one lookup: a cached get of the claim.
    let claim = claim();
    let mut group = c.benchmark_group("get claim");
    for (name, source) in [("cluster cache", &cluster_source), ("files", &file_source)] {
        group.bench_function(name, |b| {
            b.iter(|| runtime.block_on(source.get(black_box(&claim), Freshness::Cached)))
        });
    }
    group.finish();

    // The cluster figures measure the cache only if no lookup was read live.
    let gets = server.requests_of(RequestKind::Get).len();
    assert_eq!(gets, 0, "the cluster engine read {gets} objects live");
    let lists = server.requests_of(RequestKind::List).len();
    assert_eq!(lists, lists_after_sync, "the cluster engine listed live");
}

criterion_group!(benches, review_latency);
criterion_main!(benches);
