//! Time per review through `Engine::review_body` (parse, match, lookups,
//! CEL, patch, encode) with the embedded policies and lookups served from
//! `tests/fixtures/context`, plus `Review::parse` alone as the baseline.
//!
//! Each benchmark runs twice: groups `review_body` and `parse` measure
//! wall-clock time, and groups `review_body_cpu` and `parse_cpu` measure
//! the CPU time of the benchmark thread. On a machine shared with other
//! work, waiting for a core inflates wall-clock time but not CPU time.
//!
//! Run with `cargo bench --bench engine`; BENCHMARKS.md has the figures.

/// The allocator the `genesis-gate` binary uses, so that the figures match it.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use cpu_time::ThreadTime;
use criterion::measurement::{Measurement, ValueFormatter, WallTime};
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

/// CPU time of the calling thread (`CLOCK_THREAD_CPUTIME_ID`). The
/// engine runs on a current-thread runtime, so all its work is on this
/// thread.
struct ThreadCpuTime;

impl Measurement for ThreadCpuTime {
    type Intermediate = ThreadTime;
    type Value = Duration;

    fn start(&self) -> ThreadTime {
        ThreadTime::now()
    }

    fn end(&self, started: ThreadTime) -> Duration {
        started.elapsed()
    }

    fn add(&self, v1: &Duration, v2: &Duration) -> Duration {
        *v1 + *v2
    }

    fn zero(&self) -> Duration {
        Duration::ZERO
    }

    fn to_f64(&self, value: &Duration) -> f64 {
        value.as_nanos() as f64
    }

    fn formatter(&self) -> &dyn ValueFormatter {
        // Both clocks report nanoseconds, so the wall-clock units fit.
        WallTime.formatter()
    }
}

fn review_body<M: Measurement>(c: &mut Criterion<M>, group_name: &str) {
    // A current-thread runtime: the engine does no I/O with file lookups,
    // so `block_on` adds only the cost of polling the future once.
    let runtime = Builder::new_current_thread()
        .build()
        .expect("tokio runtime");
    let mut group = c.benchmark_group(group_name);
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

fn parse_only<M: Measurement>(c: &mut Criterion<M>, group_name: &str) {
    let body = read_review("0010-Pod-CREATE.json");
    let mut group = c.benchmark_group(group_name);
    group.throughput(Throughput::Bytes(body.len() as u64));
    group.bench_function("pod_review_0010", |b| {
        b.iter(|| Review::parse(black_box(&body)).expect("the recorded review is valid"))
    });
    group.finish();
}

fn wall_clock(c: &mut Criterion) {
    review_body(c, "review_body");
    parse_only(c, "parse");
}

fn thread_cpu(c: &mut Criterion<ThreadCpuTime>) {
    review_body(c, "review_body_cpu");
    parse_only(c, "parse_cpu");
}

criterion_group!(wall, wall_clock);
criterion_group! {
    name = cpu;
    config = Criterion::default().with_measurement(ThreadCpuTime);
    targets = thread_cpu
}
criterion_main!(wall, cpu);
