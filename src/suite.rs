//! Policy test suites: recorded AdmissionReviews replayed against the
//! policies, with the cluster objects their lookups see and the expected
//! response. `genesis-gate test` runs them and reads like `cargo test`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;
use serde_json::Value;

use crate::admission::{Endpoint, Review};
use crate::engine::{Decision, Engine};
use crate::lookup::FileSource;
use crate::metrics::Metrics;
use crate::policy::PolicySet;

/// One suite file.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Suite {
    #[serde(default)]
    pub name: Option<String>,
    pub cases: Vec<Case>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Case {
    pub name: String,
    /// An AdmissionReview file, relative to the suite file.
    pub review: String,
    pub endpoint: EndpointName,
    /// Files or folders of cluster objects, relative to the suite file.
    #[serde(default)]
    pub context: Vec<String>,
    /// Cluster objects given inline, added to `context`.
    #[serde(default)]
    pub objects: Vec<Value>,
    /// JSON Patch operations applied to the review before it is evaluated,
    /// to derive an edge case from a recorded review.
    #[serde(default)]
    pub modify: Vec<Value>,
    pub expect: Expect,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EndpointName {
    Validate,
    Mutate,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Expect {
    pub allowed: bool,
    #[serde(default)]
    pub code: Option<u16>,
    /// Substrings the deny message contains.
    #[serde(default)]
    pub message: Vec<String>,
    /// Substrings, one per expected warning, in order; `[]` expects none.
    #[serde(default)]
    pub warnings: Option<Vec<String>>,
    /// The object after the patch; `null` expects no patch.
    #[serde(default, deserialize_with = "some_value")]
    pub patched_object: Option<Value>,
    /// Only these fields of the patched object are compared, as JSON
    /// pointers to their expected values.
    #[serde(default)]
    pub patched_fields: Option<serde_json::Map<String, Value>>,
    /// Keys of audit annotations the response carries.
    #[serde(default)]
    pub audit_annotations: Vec<String>,
}

fn some_value<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<Value>, D::Error> {
    Value::deserialize(deserializer).map(Some)
}

/// The result of one case.
#[derive(Debug)]
pub struct CaseResult {
    pub name: String,
    /// Empty when the case passed.
    pub failures: Vec<String>,
}

/// Runs every `*.yaml` suite in `dir` against `policies`.
pub async fn run_dir(
    dir: &Path,
    policies: &Arc<PolicySet>,
    explain: bool,
) -> anyhow::Result<Vec<CaseResult>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| anyhow::anyhow!("failed to read test folder {}: {e}", dir.display()))?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|path| {
            matches!(
                path.extension().and_then(|e| e.to_str()),
                Some("yaml" | "yml")
            )
        })
        .collect();
    files.sort();
    if files.is_empty() {
        anyhow::bail!(
            "no test suites (*.yaml) in {}; point `test` at a folder of suites",
            dir.display()
        );
    }
    let mut results = Vec::new();
    for file in files {
        results.extend(run_file(&file, policies, explain).await?);
    }
    Ok(results)
}

/// Runs one suite file.
pub async fn run_file(
    file: &Path,
    policies: &Arc<PolicySet>,
    explain: bool,
) -> anyhow::Result<Vec<CaseResult>> {
    let text = std::fs::read_to_string(file)
        .map_err(|e| anyhow::anyhow!("failed to read test suite {}: {e}", file.display()))?;
    let suite: Suite = serde_yaml_ng::from_str(&text)
        .map_err(|e| anyhow::anyhow!("test suite {} is invalid: {e}", file.display()))?;
    let base = file.parent().unwrap_or(Path::new("."));
    let prefix = suite.name.clone().unwrap_or_else(|| {
        file.file_stem()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned()
    });
    let mut results = Vec::new();
    for case in &suite.cases {
        let name = format!("{prefix}::{}", case.name);
        let failures = match run_case(case, base, policies, explain).await {
            Ok(failures) => failures,
            Err(error) => vec![format!("could not run: {error:#}")],
        };
        results.push(CaseResult { name, failures });
    }
    Ok(results)
}

async fn run_case(
    case: &Case,
    base: &Path,
    policies: &Arc<PolicySet>,
    explain: bool,
) -> anyhow::Result<Vec<String>> {
    let review_path = base.join(&case.review);
    let mut body: Value = serde_json::from_slice(
        &std::fs::read(&review_path)
            .map_err(|e| anyhow::anyhow!("failed to read {}: {e}", review_path.display()))?,
    )?;
    if !case.modify.is_empty() {
        let patch: json_patch::Patch = serde_json::from_value(Value::Array(case.modify.clone()))
            .map_err(|e| anyhow::anyhow!("modify is not a JSON Patch: {e}"))?;
        json_patch::patch(&mut body, &patch).map_err(|e| anyhow::anyhow!("modify failed: {e}"))?;
    }
    let mut source = FileSource::load(
        &case
            .context
            .iter()
            .map(|c| base.join(c))
            .collect::<Vec<_>>(),
    )?;
    if !case.objects.is_empty() {
        let inline = FileSource::from_objects(case.objects.clone())?;
        source.merge(inline);
    }
    let engine = Engine::new_shared(policies.clone(), Arc::new(source), Arc::new(Metrics::new()));
    let review =
        Review::parse(&serde_json::to_vec(&body)?).map_err(|e| anyhow::anyhow!("{}", e.message))?;
    let endpoint = match case.endpoint {
        EndpointName::Validate => Endpoint::Validate,
        EndpointName::Mutate => Endpoint::Mutate,
    };
    let decision = engine.decide(endpoint, &review, explain).await;
    if explain {
        println!("---- trace of {} ----", case.name);
        for trace in &decision.traces {
            println!(
                "{}",
                serde_json::to_string_pretty(trace).unwrap_or_default()
            );
        }
    }
    Ok(compare(&case.expect, &decision, &review))
}

/// Compares a decision with a case's expectations; returns one line per
/// difference, empty when the case passed.
fn compare(expect: &Expect, decision: &Decision, review: &Review) -> Vec<String> {
    let mut failures = Vec::new();
    let verdict = &decision.verdict;
    if verdict.allowed() != expect.allowed {
        failures.push(format!(
            "expected allowed: {}, got allowed: {}{}",
            expect.allowed,
            verdict.allowed(),
            verdict
                .denial
                .as_ref()
                .map(|d| format!(" with message: {}", d.message))
                .unwrap_or_default()
        ));
    }
    if let Some(code) = expect.code {
        let got = verdict.denial.as_ref().map(|d| d.code).unwrap_or(200);
        if got != code {
            failures.push(format!("expected code {code}, got {got}"));
        }
    }
    let message = verdict
        .denial
        .as_ref()
        .map(|d| d.message.as_str())
        .unwrap_or("");
    for part in &expect.message {
        if !message.contains(part.as_str()) {
            failures.push(format!(
                "expected the message to contain {part:?}\n  message: {message:?}"
            ));
        }
    }
    if let Some(warnings) = &expect.warnings {
        if warnings.len() != verdict.warnings.len()
            || warnings
                .iter()
                .zip(&verdict.warnings)
                .any(|(e, g)| !g.contains(e.as_str()))
        {
            failures.push(format!(
                "expected warnings containing {warnings:?}\n  got: {:?}",
                verdict.warnings
            ));
        }
    }
    for key in &expect.audit_annotations {
        if !verdict.audit_annotations.iter().any(|(k, _)| k == key) {
            failures.push(format!(
                "expected audit annotation {key:?}, got {:?}",
                verdict.audit_annotations
            ));
        }
    }
    match (&expect.patched_object, &decision.patched) {
        (None, _) => {}
        (Some(Value::Null), None) => {}
        (Some(Value::Null), Some(_)) => failures.push(format!(
            "expected no patch, got {}",
            serde_json::to_string(&verdict.patch).unwrap_or_default()
        )),
        (Some(expected), actual) => {
            let actual = actual.clone().unwrap_or(Value::Null);
            if *expected != actual {
                failures.push(format!(
                    "patched object differs:\n{}",
                    diff(expected, &actual)
                ));
            }
        }
    }
    if let Some(fields) = &expect.patched_fields {
        let actual = decision
            .patched
            .clone()
            .unwrap_or_else(|| review.object.clone());
        for (pointer, expected) in fields {
            let got = actual.pointer(pointer).cloned().unwrap_or(Value::Null);
            if got != *expected {
                failures.push(format!("at {pointer}: expected {expected}, got {got}"));
            }
        }
    }
    failures
}

/// Formats the JSON Patch from `actual` to `expected`, one operation per line.
fn diff(expected: &Value, actual: &Value) -> String {
    json_patch::diff(actual, expected)
        .0
        .iter()
        .map(|op| format!("  - {}", serde_json::to_string(op).unwrap_or_default()))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Prints results as `cargo test` does and returns the number of failures.
pub fn report(results: &[CaseResult]) -> usize {
    println!("\nrunning {} policy tests", results.len());
    for result in results {
        let status = if result.failures.is_empty() {
            "ok"
        } else {
            "FAILED"
        };
        println!("test {} ... {status}", result.name);
    }
    let failed: Vec<&CaseResult> = results.iter().filter(|r| !r.failures.is_empty()).collect();
    if !failed.is_empty() {
        println!("\nfailures:");
        for result in &failed {
            println!("\n---- {} ----", result.name);
            for failure in &result.failures {
                println!("{failure}");
            }
        }
    }
    let passed = results.len() - failed.len();
    println!("\n{passed} passed, {} failed", failed.len());
    failed.len()
}
