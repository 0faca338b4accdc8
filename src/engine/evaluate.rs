//! Evaluating one policy against one request.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use json_patch::PatchOperation;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::core::Selector;
use serde_json::{Map, Value};

use super::patch;
use super::trace::{LookupTrace, NamedResult, PolicyTrace};
use crate::admission::{Denial, Review};
use crate::expression::{Activation, EvalError, Expression};
use crate::lookup::{Freshness, ListRef, LookupError, ObjectRef, ObjectSource, Origin};
use crate::policy::{CompiledLookup, CompiledPolicy, LookupTarget, Params, ValidationAction};

/// The changes a policy that applied makes to the response.
#[derive(Debug, Clone, Default)]
pub struct Effects {
    pub denial: Option<Denial>,
    pub warnings: Vec<String>,
    pub audit_annotations: Vec<(String, String)>,
    pub patch: Vec<PatchOperation>,
    /// The object after `patch`, when there is one.
    pub patched: Option<Value>,
}

/// The cause of a policy that could not be evaluated.
#[derive(Debug, Clone)]
pub enum Failure {
    /// An expression failed or yielded the wrong type.
    Expression { field: String, message: String },
    /// A looked-up object could not be read.
    Lookup { target: String, error: LookupError },
    /// The policy ran past its time limit.
    Timeout { limit: std::time::Duration },
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Expression { field, message } => write!(f, "{field}: {message}"),
            Failure::Lookup { target, error } => write!(f, "could not read {target}: {error}"),
            Failure::Timeout { limit } => {
                write!(
                    f,
                    "evaluation exceeded the policy's time limit of {limit:?}"
                )
            }
        }
    }
}

#[derive(Debug, Clone)]
pub enum Outcome {
    NotMatched,
    Applied(Effects),
    Failed(Failure),
}

/// The inputs of one evaluation, owned so that CEL can borrow them.
struct Scope<'r> {
    review: &'r Review,
    object: &'r Value,
    params: Arc<Value>,
    namespace_object: Value,
    variables: BTreeMap<String, Result<Value, EvalError>>,
    lookups: Value,
    deadline: Instant,
    limit: std::time::Duration,
}

impl Scope<'_> {
    fn activation(&self) -> Activation<'_> {
        let mut activation = Activation::new();
        activation.bind_json("object", self.object);
        activation.bind_json("oldObject", &self.review.old_object);
        activation.bind_json("request", &self.review.request);
        activation.bind_json("params", &self.params);
        activation.bind_json("namespaceObject", &self.namespace_object);
        activation.bind_json("lookups", &self.lookups);
        activation.bind_results("variables", &self.variables);
        activation.set_deadline(self.deadline);
        activation
    }

    fn check_deadline(&self) -> Result<(), Failure> {
        if Instant::now() > self.deadline {
            return Err(Failure::Timeout { limit: self.limit });
        }
        Ok(())
    }

    fn evaluate(&self, field: &str, expression: &Expression) -> Result<Value, Failure> {
        self.check_deadline()?;
        expression
            .evaluate(&self.activation())
            .map_err(|error| expression_failure(field, expression, error))
    }

    fn evaluate_bool(&self, field: &str, expression: &Expression) -> Result<bool, Failure> {
        self.check_deadline()?;
        expression
            .evaluate_bool(&self.activation())
            .map_err(|error| expression_failure(field, expression, error))
    }
}

fn expression_failure(field: &str, expression: &Expression, error: EvalError) -> Failure {
    Failure::Expression {
        field: field.to_owned(),
        message: format!("{} (expression: {})", error.0, expression.source()),
    }
}

/// Evaluates `policy` against `review`, with `object` standing for the
/// request's object (the patched one, inside a chain of mutations).
///
/// Returns the outcome and whether any lookup was served from a cache.
pub async fn evaluate(
    policy: &CompiledPolicy,
    review: &Review,
    object: &Value,
    source: &dyn ObjectSource,
    freshness: Freshness,
    trace: &mut Option<PolicyTrace>,
) -> (Outcome, bool) {
    let mut used_cache = false;
    let outcome = evaluate_inner(
        policy,
        review,
        object,
        source,
        freshness,
        trace,
        &mut used_cache,
    )
    .await;
    (outcome, used_cache)
}

async fn evaluate_inner(
    policy: &CompiledPolicy,
    review: &Review,
    object: &Value,
    source: &dyn ObjectSource,
    freshness: Freshness,
    trace: &mut Option<PolicyTrace>,
    used_cache: &mut bool,
) -> Outcome {
    let started = Instant::now();
    let namespace_object = match namespace_object(policy, review, source, used_cache).await {
        Ok(value) => value,
        Err(failure) => return Outcome::Failed(failure),
    };
    let namespace_labels = crate::lookup::labels_of(&namespace_object);
    if let Some(reason) = super::matching::mismatch(policy, review, &namespace_labels) {
        note(trace, |t| t.decided_by = reason);
        return Outcome::NotMatched;
    }
    note(trace, |t| t.matched = true);
    let params = match params(policy, source, used_cache).await {
        Ok(params) => params,
        Err(failure) => return Outcome::Failed(failure),
    };
    let mut scope = Scope {
        review,
        object,
        params,
        namespace_object,
        variables: BTreeMap::new(),
        lookups: Value::Object(Map::new()),
        deadline: started + policy.timeout,
        limit: policy.timeout,
    };

    for condition in &policy.match_conditions {
        let field = format!("matchCondition {}", condition.name);
        let result = scope.evaluate_bool(&field, &condition.expression);
        note(trace, |t| {
            let shown = result
                .as_ref()
                .map(|b| Value::Bool(*b))
                .map_err(|f| f.to_string());
            t.match_conditions
                .push(NamedResult::new(&condition.name, &shown));
        });
        match result {
            Ok(true) => {}
            Ok(false) => {
                note(trace, |t| {
                    t.matched = false;
                    t.decided_by = format!("matchCondition {} is false", condition.name);
                });
                return Outcome::NotMatched;
            }
            Err(failure) => return Outcome::Failed(failure),
        }
    }

    evaluate_variables(policy, &mut scope, false, trace);
    let lookups_started = Instant::now();
    if let Err(failure) =
        resolve_lookups(policy, &mut scope, source, freshness, trace, used_cache).await
    {
        return Outcome::Failed(failure);
    }
    // The time limit is for evaluation; reads have their own budget.
    scope.deadline += lookups_started.elapsed();
    evaluate_variables(policy, &mut scope, true, trace);

    match apply_effects(policy, &scope, trace) {
        Ok(effects) => Outcome::Applied(effects),
        Err(failure) => Outcome::Failed(failure),
    }
}

fn note(trace: &mut Option<PolicyTrace>, update: impl FnOnce(&mut PolicyTrace)) {
    if let Some(trace) = trace.as_mut() {
        update(trace);
    }
}

async fn namespace_object(
    policy: &CompiledPolicy,
    review: &Review,
    source: &dyn ObjectSource,
    used_cache: &mut bool,
) -> Result<Value, Failure> {
    let Some(namespace) = review.namespace().filter(|n| !n.is_empty()) else {
        return Ok(Value::Null);
    };
    if policy.namespace_selector.is_none() && !policy.reads_namespace_object {
        return Ok(Value::Null);
    }
    let target = ObjectRef {
        api_version: "v1".to_owned(),
        kind: "Namespace".to_owned(),
        namespace: None,
        name: namespace.to_owned(),
    };
    match source.get(&target, Freshness::Cached).await {
        Ok(fetched) => {
            *used_cache |= fetched.origin == Origin::Cache;
            Ok(fetched.value.map(|v| (*v).clone()).unwrap_or_else(|| {
                // The API server labels every namespace with its name, so a
                // selector on that label works without the object.
                serde_json::json!({
                    "apiVersion": "v1",
                    "kind": "Namespace",
                    "metadata": {"name": namespace, "labels": {"kubernetes.io/metadata.name": namespace}}
                })
            }))
        }
        Err(error) => Err(Failure::Lookup {
            target: format!("Namespace {namespace}"),
            error,
        }),
    }
}

async fn params(
    policy: &CompiledPolicy,
    source: &dyn ObjectSource,
    used_cache: &mut bool,
) -> Result<Arc<Value>, Failure> {
    match &policy.params {
        Params::None => Ok(Arc::new(Value::Null)),
        Params::Value(value) => Ok(value.clone()),
        Params::ConfigMap(reference) => {
            let target = ObjectRef {
                api_version: "v1".to_owned(),
                kind: "ConfigMap".to_owned(),
                namespace: Some(reference.namespace.clone()),
                name: reference.name.clone(),
            };
            let describe = format!(
                "params ConfigMap {}/{}",
                reference.namespace, reference.name
            );
            let fetched = source
                .get(&target, Freshness::Cached)
                .await
                .map_err(|error| Failure::Lookup {
                    target: describe.clone(),
                    error,
                })?;
            *used_cache |= fetched.origin == Origin::Cache;
            match fetched.value {
                Some(config_map) => Ok(Arc::new(
                    config_map.get("data").cloned().unwrap_or(Value::Null),
                )),
                None => Err(Failure::Expression {
                    field: "spec.paramRef.configMap".to_owned(),
                    message: format!("{describe} does not exist; create it or fix the reference"),
                }),
            }
        }
    }
}

fn evaluate_variables(
    policy: &CompiledPolicy,
    scope: &mut Scope<'_>,
    after_lookups: bool,
    trace: &mut Option<PolicyTrace>,
) {
    for variable in policy
        .variables
        .iter()
        .filter(|v| v.needs_lookups == after_lookups)
    {
        let field = format!("variables.{}", variable.name);
        let result = scope
            .evaluate(&field, &variable.expression)
            .map_err(|failure| EvalError(failure.to_string()));
        note(trace, |t| {
            let shown = result.clone().map_err(|e| e.0);
            t.variables.push(NamedResult::new(&variable.name, &shown));
        });
        scope.variables.insert(variable.name.clone(), result);
    }
}

async fn resolve_lookups(
    policy: &CompiledPolicy,
    scope: &mut Scope<'_>,
    source: &dyn ObjectSource,
    freshness: Freshness,
    trace: &mut Option<PolicyTrace>,
    used_cache: &mut bool,
) -> Result<(), Failure> {
    let mut bound = Map::new();
    for lookup in &policy.lookups {
        let (value, described, origins) = resolve_lookup(lookup, scope, source, freshness).await?;
        let from_cache = origins.contains(&Origin::Cache);
        *used_cache |= from_cache;
        note(trace, |t| {
            let found = match &value {
                Value::Null => 0,
                Value::Array(items) => items.len(),
                Value::Object(map) if matches!(lookup.target, LookupTarget::Names(_)) => map.len(),
                _ => 1,
            };
            t.lookups.push(LookupTrace {
                name: lookup.name.clone(),
                target: described,
                origin: if from_cache {
                    "cache"
                } else if origins.is_empty() {
                    "none"
                } else {
                    "live"
                }
                .to_owned(),
                found,
            });
        });
        bound.insert(lookup.name.clone(), value);
    }
    scope.lookups = Value::Object(bound);
    Ok(())
}

fn string_result(field: &str, value: Value) -> Result<String, Failure> {
    match value {
        Value::String(text) => Ok(text),
        other => Err(Failure::Expression {
            field: field.to_owned(),
            message: format!("must yield a string, not {other}"),
        }),
    }
}

/// Reads the objects one lookup names or selects.
///
/// An empty name reads nothing and binds null, or leaves the name out of a
/// `namesExpression` map. No object has an empty name, so policies use `""`
/// for "nothing to look up", and the kube client rejects a GET of an empty
/// name before sending it.
async fn resolve_lookup(
    lookup: &CompiledLookup,
    scope: &Scope<'_>,
    source: &dyn ObjectSource,
    freshness: Freshness,
) -> Result<(Value, String, Vec<Origin>), Failure> {
    let field = format!("lookups.{}", lookup.name);
    let namespace = match &lookup.namespace {
        Some(expression) => {
            let text = string_result(&field, scope.evaluate(&field, expression)?)?;
            Some(text).filter(|n| !n.is_empty())
        }
        None => scope
            .review
            .namespace()
            .map(str::to_owned)
            .filter(|n| !n.is_empty()),
    };
    let qualified = |name: &str| match &namespace {
        Some(namespace) => format!("{} {namespace}/{name}", lookup.kind),
        None => format!("{} {name}", lookup.kind),
    };
    let get = |name: String| {
        let target = ObjectRef {
            api_version: lookup.api_version.clone(),
            kind: lookup.kind.clone(),
            namespace: namespace.clone(),
            name,
        };
        async move {
            let described = match &target.namespace {
                Some(namespace) => format!("{} {namespace}/{}", target.kind, target.name),
                None => format!("{} {}", target.kind, target.name),
            };
            source
                .get(&target, freshness)
                .await
                .map_err(|error| Failure::Lookup {
                    target: described,
                    error,
                })
        }
    };
    match &lookup.target {
        LookupTarget::Name(expression) => {
            let name = string_result(&field, scope.evaluate(&field, expression)?)?;
            let described = qualified(&name);
            if name.is_empty() {
                return Ok((Value::Null, described, Vec::new()));
            }
            let fetched = get(name).await?;
            let value = fetched.value.map(|v| (*v).clone()).unwrap_or(Value::Null);
            Ok((value, described, vec![fetched.origin]))
        }
        LookupTarget::Names(expression) => {
            let names = match scope.evaluate(&field, expression)? {
                Value::Array(items) => items
                    .into_iter()
                    .map(|item| string_result(&field, item))
                    .collect::<Result<Vec<_>, _>>()?,
                other => {
                    return Err(Failure::Expression {
                        field,
                        message: format!(
                            "namesExpression must yield a list of strings, not {other}"
                        ),
                    })
                }
            };
            let described = names
                .iter()
                .map(|n| qualified(n))
                .collect::<Vec<_>>()
                .join(", ");
            let mut found = Map::new();
            let mut origins = Vec::new();
            for name in names {
                if name.is_empty() || found.contains_key(&name) {
                    continue;
                }
                let fetched = get(name.clone()).await?;
                origins.push(fetched.origin);
                if let Some(object) = fetched.value {
                    found.insert(name, (*object).clone());
                }
            }
            Ok((Value::Object(found), described, origins))
        }
        LookupTarget::LabelSelector(expression) => {
            let selector_value = scope.evaluate(&field, expression)?;
            let selector: LabelSelector = serde_json::from_value(selector_value.clone()).map_err(|error| {
                Failure::Expression {
                    field: field.clone(),
                    message: format!(
                        "labelSelectorExpression must yield a map with matchLabels or matchExpressions, not {selector_value}: {error}"
                    ),
                }
            })?;
            let selector = Selector::try_from(selector).map_err(|error| Failure::Expression {
                field: field.clone(),
                message: format!("labelSelectorExpression yielded an invalid selector: {error}"),
            })?;
            let described = format!(
                "{} in {} matching {:?}",
                lookup.kind,
                namespace.as_deref().unwrap_or("all namespaces"),
                selector.to_string()
            );
            let target = ListRef {
                api_version: lookup.api_version.clone(),
                kind: lookup.kind.clone(),
                namespace: namespace.clone(),
                label_selector: Some(selector).filter(|s| !s.selects_all()),
            };
            let fetched =
                source
                    .list(&target, freshness)
                    .await
                    .map_err(|error| Failure::Lookup {
                        target: described.clone(),
                        error,
                    })?;
            let items = fetched.value.iter().map(|v| (**v).clone()).collect();
            Ok((Value::Array(items), described, vec![fetched.origin]))
        }
    }
}

fn apply_effects(
    policy: &CompiledPolicy,
    scope: &Scope<'_>,
    trace: &mut Option<PolicyTrace>,
) -> Result<Effects, Failure> {
    let mut effects = Effects::default();
    for (index, validation) in policy.validations.iter().enumerate() {
        let field = format!("validations[{index}]");
        let passed = scope.evaluate_bool(&field, &validation.expression);
        note(trace, |t| {
            let shown = passed
                .as_ref()
                .map(|b| Value::Bool(*b))
                .map_err(|f| f.to_string());
            t.validations.push(NamedResult::new(&field, &shown));
        });
        if passed? {
            continue;
        }
        let message = failure_message(policy, scope, index)?;
        note(trace, |t| t.decided_by = format!("{field} is false"));
        for action in &policy.validation_actions {
            match action {
                ValidationAction::Deny if effects.denial.is_none() => {
                    effects.denial = Some(Denial {
                        message: message.clone(),
                        reason: validation.reason.clone(),
                        code: validation.code,
                    });
                }
                ValidationAction::Deny => {}
                ValidationAction::Warn => effects.warnings.push(message.clone()),
                ValidationAction::Audit => effects.audit_annotations.push((
                    audit_key(&policy.name, "validation_failure"),
                    serde_json::json!([{
                        "message": message,
                        "policy": policy.name,
                        "expressionIndex": index,
                        "validationActions": ["Audit"],
                    }])
                    .to_string(),
                )),
            }
        }
    }
    for (key, expression) in &policy.audit_annotations {
        let field = format!("auditAnnotations {key}");
        match scope.evaluate(&field, expression)? {
            Value::Null => {}
            Value::String(value) => effects
                .audit_annotations
                .push((audit_key(&policy.name, key), value)),
            other => {
                return Err(Failure::Expression {
                    field,
                    message: format!("valueExpression must yield a string or null, not {other}"),
                })
            }
        }
    }
    if !policy.mutations.is_empty() {
        let mut patched = scope.object.clone();
        for (index, mutation) in policy.mutations.iter().enumerate() {
            let field = format!("mutations[{index}]");
            let result = scope.evaluate(&field, &mutation.expression)?;
            let operations =
                patch::apply(&mut patched, &result).map_err(|message| Failure::Expression {
                    field: field.clone(),
                    message,
                })?;
            effects.patch.extend(operations);
        }
        if !effects.patch.is_empty() {
            note(trace, |t| {
                t.decided_by = format!("mutations yielded {} operations", effects.patch.len())
            });
            effects.patched = Some(patched);
        }
    }
    if trace.as_ref().is_some_and(|t| t.decided_by.is_empty()) {
        note(trace, |t| {
            t.decided_by = "every validation passed".to_owned()
        });
    }
    Ok(effects)
}

/// Builds the message of a failed validation: its messageExpression, else
/// its message, else the expression itself.
fn failure_message(
    policy: &CompiledPolicy,
    scope: &Scope<'_>,
    index: usize,
) -> Result<String, Failure> {
    let validation = &policy.validations[index];
    if let Some(expression) = &validation.message_expression {
        let field = format!("validations[{index}].messageExpression");
        match scope.evaluate(&field, expression) {
            Ok(Value::String(text)) if !text.trim().is_empty() => return Ok(text),
            Ok(other) => tracing::warn!(
                policy = %policy.name,
                field,
                value = %other,
                "messageExpression did not yield a non-empty string; using message"
            ),
            Err(Failure::Timeout { limit }) => return Err(Failure::Timeout { limit }),
            Err(failure) => tracing::warn!(
                policy = %policy.name,
                error = %failure,
                "messageExpression failed; using message"
            ),
        }
    }
    if let Some(message) = &validation.message {
        return Ok(message.clone());
    }
    Ok(format!(
        "{} {} is denied by policy {}: failed expression: {}",
        scope.review.kind(),
        scope.review.display_name(),
        policy.name,
        validation.expression.source()
    ))
}

/// Builds an audit annotation key `<policy>.<key>`. The API server prefixes
/// a webhook's keys with the webhook name and a `/`, and drops a key that
/// is then not a qualified name, so the key itself has no `/` and at most
/// 63 characters of `[A-Za-z0-9._-]`.
fn audit_key(policy: &str, key: &str) -> String {
    let joined: String = format!("{policy}.{key}")
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '_'
            }
        })
        .collect();
    let start = joined.len().saturating_sub(63);
    joined[start..]
        .trim_matches(|c: char| !c.is_ascii_alphanumeric())
        .to_owned()
}
