//! Runs the shipped policies' test suites and checks that every mutating
//! policy is idempotent on its own output.

use std::path::Path;
use std::sync::Arc;

use genesis_gate::admission::{Endpoint, Review};
use genesis_gate::engine::Engine;
use genesis_gate::lookup::FileSource;
use genesis_gate::metrics::Metrics;
use genesis_gate::policy;

fn fixtures() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures"))
}

#[tokio::test]
async fn shipped_policy_suites_pass() {
    let policies = Arc::new(policy::load_embedded().expect("embedded policies load"));
    let dir = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/policies/tests"));
    let results = genesis_gate::suite::run_dir(dir, &policies, false)
        .await
        .expect("suites run");
    assert!(
        results.len() >= 40,
        "expected the full suites, found {} cases",
        results.len()
    );
    let failed = genesis_gate::suite::report(&results);
    assert_eq!(failed, 0, "policy suite cases failed; see the output above");
}

#[tokio::test]
async fn every_policy_has_a_suite() {
    let policies = policy::load_embedded().expect("embedded policies load");
    let suites: String = std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/policies/tests"))
        .unwrap()
        .map(|entry| std::fs::read_to_string(entry.unwrap().path()).unwrap())
        .collect();
    for policy in policies.policies() {
        let short = policy.name.trim_start_matches("fork-genesis-");
        let short = short.trim_end_matches("-check");
        assert!(
            suites.contains(&format!("name: {short}")),
            "policy {} has no suite named {short}",
            policy.name
        );
    }
}

/// The API server re-invokes mutating webhooks on the patched object, so
/// the mutating policies must yield nothing the second time.
#[tokio::test]
async fn mutating_policies_are_idempotent() {
    let cases = [
        ("0003-Job-CREATE.json", "created"),
        ("0047-Job-CREATE.json", "annotated"),
        ("0006-Pod-CREATE.json", "created"),
        ("0005-StatefulSet-CREATE.json", "created"),
    ];
    for (file, context) in cases {
        let source = FileSource::load(&[fixtures().join("context").join(context)]).unwrap();
        let engine = Engine::new(
            policy::load_embedded().unwrap(),
            Arc::new(source),
            Arc::new(Metrics::new()),
        );
        let body = std::fs::read(fixtures().join("admissionreviews").join(file)).unwrap();
        let mut review = Review::parse(&body).unwrap();
        let first = engine.decide(Endpoint::Mutate, &review, false).await;
        assert!(
            first.verdict.allowed(),
            "{file}: first pass denied: {:?}",
            first.verdict.denial
        );
        if let Some(patched) = first.patched {
            review.object = patched;
        }
        let second = engine.decide(Endpoint::Mutate, &review, false).await;
        assert!(
            second.verdict.patch.is_empty(),
            "{file}: the patched object was patched again: {:?}",
            second.verdict.patch
        );
    }
}

#[tokio::test]
async fn recorded_job_patch_applies_to_raw_object() {
    let source = FileSource::load(&[fixtures().join("context/created")]).unwrap();
    let engine = Engine::new(
        policy::load_embedded().unwrap(),
        Arc::new(source),
        Arc::new(Metrics::new()),
    );
    let body = std::fs::read(fixtures().join("admissionreviews/0003-Job-CREATE.json")).unwrap();
    let review = Review::parse(&body).unwrap();
    let decision = engine.decide(Endpoint::Mutate, &review, false).await;
    // Apply the patch as the API server does, to its own copy of the object.
    let mut object = review.object.clone();
    json_patch::patch(&mut object, &decision.verdict.patch)
        .expect("patch applies to the raw object");
    assert_eq!(Some(&object), decision.patched.as_ref());
    // Fields the typed Job does not know survive, since the patch is raw JSON.
    assert_eq!(
        object["metadata"]["managedFields"],
        review.object["metadata"]["managedFields"]
    );
}
