//! Time per review through `Engine::review_body` (parse, match, lookups,
//! CEL, patch, encode) with the embedded policies and lookups served from
//! `tests/fixtures/context`, plus `Review::parse` alone as the baseline.
//!
//! Run with `cargo bench --bench engine`; BENCHMARKS.md has the figures.

use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use genesis_gate::admission::{Endpoint, Review};
use genesis_gate::engine::Engine;
use genesis_gate::lookup::FileSource;
use genesis_gate::metrics::Metrics;
use genesis_gate::policy;
use serde_json::Value;
use tokio::runtime::Builder;

/// One recorded review, where it is sent, and the answer the shipped
/// policies give with the named context.
struct Case {
    name: &'static str,
    review: &'static str,
    context: &'static str,
    endpoint: Endpoint,
    expected: Expected,
}

#[derive(Debug, PartialEq)]
enum Expected {
    Deny,
    Allow,
    Patch,
}

const CASES: &[Case] = &[
    Case {
        name: "pod_denied_by_claim_gate",
        review: "0010-Pod-CREATE.json",
        context: "created",
        endpoint: Endpoint::Validate,
        expected: Expected::Deny,
    },
    Case {
        name: "pod_allowed_claim_complete",
        review: "0010-Pod-CREATE.json",
        context: "annotated",
        endpoint: Endpoint::Validate,
        expected: Expected::Allow,
    },
    Case {
        name: "job_patched_at_mutate",
        review: "0003-Job-CREATE.json",
        context: "created",
        endpoint: Endpoint::Mutate,
        expected: Expected::Patch,
    },
    Case {
        name: "claim_no_policy_matches",
        review: "0002-PersistentVolumeClaim-CREATE.json",
        context: "created",
        endpoint: Endpoint::Validate,
        expected: Expected::Allow,
    },
];

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn read_review(file: &str) -> Vec<u8> {
    let path = fixtures().join("admissionreviews").join(file);
    std::fs::read(&path).unwrap_or_else(|e| panic!("failed to read {}: {e}", path.display()))
}

fn engine_with_context(context: &str) -> Engine {
    let policies = policy::load_embedded().expect("the embedded policies compile");
    let source = FileSource::load(&[fixtures().join("context").join(context)])
        .unwrap_or_else(|e| panic!("failed to load context {context}: {e}"));
    Engine::new(policies, Arc::new(source), Arc::new(Metrics::new()))
}

/// Classifies an AdmissionReview response body, so that the benchmark
/// stops when a fixture or policy change makes a case measure another path.
fn classify(response: &[u8]) -> Expected {
    let response: Value = serde_json::from_slice(response).expect("the response is JSON");
    let answer = &response["response"];
    if answer["allowed"] != Value::Bool(true) {
        return Expected::Deny;
    }
    if answer.get("patch").is_some() {
        return Expected::Patch;
    }
    Expected::Allow
}

fn review_body(c: &mut Criterion) {
    // A current-thread runtime: the engine does no I/O with file lookups,
    // so `block_on` adds only the cost of polling the future once.
    let runtime = Builder::new_current_thread()
        .build()
        .expect("tokio runtime");
    let mut group = c.benchmark_group("review_body");
    group.throughput(Throughput::Elements(1));
    for case in CASES {
        let engine = engine_with_context(case.context);
        let body = read_review(case.review);
        let response = runtime
            .block_on(engine.review_body(case.endpoint, &body))
            .expect("the recorded review is valid");
        assert_eq!(classify(&response), case.expected, "case {}", case.name);
        group.bench_function(case.name, |b| {
            b.iter(|| {
                runtime
                    .block_on(engine.review_body(case.endpoint, black_box(&body)))
                    .expect("the recorded review is valid")
            })
        });
    }
    group.finish();
}

fn parse_only(c: &mut Criterion) {
    let body = read_review("0010-Pod-CREATE.json");
    let mut group = c.benchmark_group("parse");
    group.throughput(Throughput::Bytes(body.len() as u64));
    group.bench_function("pod_review_0010", |b| {
        b.iter(|| Review::parse(black_box(&body)).expect("the recorded review is valid"))
    });
    group.finish();
}

criterion_group!(benches, review_body, parse_only);
criterion_main!(benches);
