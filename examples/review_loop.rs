//! Runs one recorded AdmissionReview through `Engine::review_body` a given
//! number of times, with the embedded policies, for a profiler such as
//! `valgrind --tool=callgrind`. To count the instructions of one review, run
//! it with a count of 1 and of 51 and divide the difference by 50.
//!
//! Usage: `review_loop REVIEW.json CONTEXT-DIR validate|mutate COUNT`

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{bail, Context as _};
use genesis_gate::admission::Endpoint;
use genesis_gate::engine::Engine;
use genesis_gate::lookup::FileSource;
use genesis_gate::metrics::Metrics;
use genesis_gate::policy;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [review, context, endpoint, count] = args.as_slice() else {
        bail!("usage: review_loop REVIEW.json CONTEXT-DIR validate|mutate COUNT");
    };
    let body = std::fs::read(review).with_context(|| format!("failed to read {review}"))?;
    let endpoint = match endpoint.as_str() {
        "validate" => Endpoint::Validate,
        "mutate" => Endpoint::Mutate,
        other => bail!("invalid endpoint {other:?}: expected validate or mutate"),
    };
    let count: usize = count
        .parse()
        .with_context(|| format!("invalid count {count:?}: expected a whole number"))?;
    let source = FileSource::load(&[PathBuf::from(context)])?;
    let engine = Engine::new(
        policy::load_embedded()?,
        Arc::new(source),
        Arc::new(Metrics::new()),
    );
    // The engine does no I/O with file lookups, so one thread runs it all.
    let runtime = tokio::runtime::Builder::new_current_thread().build()?;
    for _ in 0..count {
        let response = runtime
            .block_on(engine.review_body(endpoint, &body))
            .map_err(|error| anyhow::anyhow!("review rejected: {}", error.message))?;
        std::hint::black_box(response);
    }
    Ok(())
}
