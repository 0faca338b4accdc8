//! Checking a policy document and compiling its CEL once, at load.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::core::Selector;
use serde_json::Value;

use super::load::{LoadError, PolicySource};
use super::model::{
    FailurePolicy, Lookup, MatchResources, ObjectName, PolicyDocument, PolicyKind,
    ReinvocationPolicy, ValidationAction,
};
use crate::expression::Expression;
use crate::lookup::WatchRequirement;

/// The time a policy may take on one request unless it sets `timeout`.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(1);

/// A policy ready to evaluate.
#[derive(Debug)]
pub struct CompiledPolicy {
    pub name: String,
    pub kind: PolicyKind,
    /// The file it came from, for messages.
    pub file: String,
    pub failure_policy: FailurePolicy,
    pub match_resources: MatchResources,
    pub namespace_selector: Option<Selector>,
    pub object_selector: Option<Selector>,
    pub match_conditions: Vec<Variable>,
    pub params: Params,
    /// In declaration order; each reads only variables declared before it.
    pub variables: Vec<Variable>,
    pub lookups: Vec<CompiledLookup>,
    pub validations: Vec<Validation>,
    pub validation_actions: Vec<ValidationAction>,
    pub audit_annotations: Vec<(String, Expression)>,
    pub mutations: Vec<Mutation>,
    pub reinvocation_policy: ReinvocationPolicy,
    pub timeout: Duration,
    /// Whether any expression reads `namespaceObject`, which costs a lookup.
    pub reads_namespace_object: bool,
}

/// The source of a policy's `params`.
#[derive(Debug, Clone)]
pub enum Params {
    None,
    /// Inline, or read from a file at load.
    Value(Arc<Value>),
    /// The `data` of a ConfigMap, read through the lookup source.
    ConfigMap(ObjectName),
}

/// A named expression: a variable or a match condition.
#[derive(Debug)]
pub struct Variable {
    pub name: String,
    pub expression: Expression,
    /// Whether it reads `lookups`, directly or through another variable,
    /// and so must wait until the lookups are resolved.
    pub needs_lookups: bool,
}

#[derive(Debug)]
pub struct CompiledLookup {
    pub name: String,
    pub api_version: String,
    pub kind: String,
    pub namespace: Option<Expression>,
    pub target: LookupTarget,
    pub watch_label_selector: Option<String>,
}

#[derive(Debug)]
pub enum LookupTarget {
    Name(Expression),
    Names(Expression),
    LabelSelector(Expression),
}

#[derive(Debug)]
pub struct Validation {
    pub expression: Expression,
    pub message: Option<String>,
    pub message_expression: Option<Expression>,
    pub reason: String,
    pub code: u16,
}

#[derive(Debug)]
pub struct Mutation {
    pub expression: Expression,
}

/// An invalid expression or field in a policy.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{field}: {message}")]
pub struct CompileError {
    pub field: String,
    pub message: String,
}

/// The loaded policies.
#[derive(Debug, Default)]
pub struct PolicySet {
    policies: Vec<Arc<CompiledPolicy>>,
}

impl PolicySet {
    pub fn new(policies: Vec<CompiledPolicy>) -> PolicySet {
        PolicySet {
            policies: policies.into_iter().map(Arc::new).collect(),
        }
    }

    pub fn policies(&self) -> &[Arc<CompiledPolicy>] {
        &self.policies
    }

    pub fn len(&self) -> usize {
        self.policies.len()
    }

    pub fn is_empty(&self) -> bool {
        self.policies.is_empty()
    }

    /// Returns the kinds the policies look up, for a cluster source to watch. A
    /// kind is narrowed by a label selector only when every lookup of it
    /// declares the same one.
    pub fn watch_requirements(&self) -> Vec<WatchRequirement> {
        let mut by_kind: std::collections::BTreeMap<(String, String), Vec<Option<String>>> =
            Default::default();
        for policy in &self.policies {
            for lookup in &policy.lookups {
                by_kind
                    .entry((lookup.api_version.clone(), lookup.kind.clone()))
                    .or_default()
                    .push(lookup.watch_label_selector.clone());
            }
            if let Params::ConfigMap(_) = policy.params {
                by_kind
                    .entry(("v1".to_owned(), "ConfigMap".to_owned()))
                    .or_default()
                    .push(None);
            }
        }
        by_kind
            .into_iter()
            .map(|((api_version, kind), selectors)| {
                let first = selectors[0].clone();
                let shared = selectors.iter().all(|s| *s == first);
                WatchRequirement {
                    api_version,
                    kind,
                    label_selector: if shared { first } else { None },
                    field_selector: None,
                }
            })
            .collect()
    }
}

pub(crate) fn compile_policy(
    document: PolicyDocument,
    source: &PolicySource,
) -> Result<CompiledPolicy, LoadError> {
    let name = document.metadata.name.clone();
    compile_spec(document, source).map_err(|error| LoadError::Invalid {
        file: source.file.clone(),
        policy: name,
        message: error.to_string(),
    })
}

fn compile_expression(field: String, source: &str) -> Result<Expression, CompileError> {
    Expression::compile(source).map_err(|error| CompileError {
        field,
        message: format!("invalid CEL expression {:?}: {error}", abbreviate(source)),
    })
}

/// Shortens a long expression for an error message.
fn abbreviate(source: &str) -> String {
    const SHOWN: usize = 120;
    match source.char_indices().nth(SHOWN) {
        Some((end, _)) => format!("{}...", &source[..end]),
        None => source.to_owned(),
    }
}

/// The identifiers an expression outside `lookups` and `variables` may read.
const REQUEST_ROOTS: &[&str] = &[
    "object",
    "oldObject",
    "request",
    "params",
    "namespaceObject",
    "authorizer",
];

fn check_roots(field: &str, expression: &Expression, allowed: &[&str]) -> Result<(), CompileError> {
    for root in expression.roots() {
        if !allowed.contains(&root.as_str()) {
            return Err(CompileError {
                field: field.to_owned(),
                message: format!(
                    "reads {root:?}, which is not available here; available: {}",
                    allowed.join(", ")
                ),
            });
        }
    }
    Ok(())
}

fn compile_spec(
    document: PolicyDocument,
    source: &PolicySource,
) -> Result<CompiledPolicy, CompileError> {
    let spec = document.spec;
    let with_variables: Vec<&str> = REQUEST_ROOTS.iter().copied().chain(["variables"]).collect();
    let everything: Vec<&str> = with_variables.iter().copied().chain(["lookups"]).collect();

    if spec.match_constraints.resource_rules.is_empty() {
        return Err(CompileError {
            field: "spec.matchConstraints.resourceRules".to_owned(),
            message: "is empty, so the policy would match nothing; list the resources and operations it applies to".to_owned(),
        });
    }
    let namespace_selector = compile_selector(
        "spec.matchConstraints.namespaceSelector",
        spec.match_constraints.namespace_selector.as_ref(),
    )?;
    let object_selector = compile_selector(
        "spec.matchConstraints.objectSelector",
        spec.match_constraints.object_selector.as_ref(),
    )?;

    let mut match_conditions = Vec::new();
    for (index, condition) in spec.match_conditions.iter().enumerate() {
        let field = format!("spec.matchConditions[{index}] ({})", condition.name);
        let expression = compile_expression(field.clone(), &condition.expression)?;
        check_roots(&field, &expression, REQUEST_ROOTS)?;
        match_conditions.push(Variable {
            name: condition.name.clone(),
            expression,
            needs_lookups: false,
        });
    }

    let mut variables: Vec<Variable> = Vec::new();
    for (index, variable) in spec.variables.iter().enumerate() {
        let field = format!("spec.variables[{index}] ({})", variable.name);
        if variables.iter().any(|v| v.name == variable.name) {
            return Err(CompileError {
                field,
                message: "repeats the name of an earlier variable".to_owned(),
            });
        }
        let expression = compile_expression(field.clone(), &variable.expression)?;
        check_roots(&field, &expression, &everything)?;
        let mut needs_lookups = expression.roots().iter().any(|r| r == "lookups");
        if expression.reads_whole("variables") {
            // `variables[k]` or `size(variables)` may read any earlier one.
            needs_lookups |= variables.iter().any(|v| v.needs_lookups);
        }
        for used in expression.members_of("variables") {
            match variables.iter().find(|v| v.name == used) {
                Some(earlier) => needs_lookups |= earlier.needs_lookups,
                None => {
                    return Err(CompileError {
                        field,
                        message: format!(
                            "reads variables.{used}, which is not declared before it; a variable reads only the ones above it"
                        ),
                    })
                }
            }
        }
        variables.push(Variable {
            name: variable.name.clone(),
            expression,
            needs_lookups,
        });
    }

    let lookup_allowed = with_variables.as_slice();
    let mut lookups = Vec::new();
    for (index, lookup) in spec.lookups.iter().enumerate() {
        lookups.push(compile_lookup(index, lookup, lookup_allowed, &variables)?);
    }
    for used in variables
        .iter()
        .flat_map(|v| v.expression.members_of("lookups"))
        .collect::<BTreeSet<_>>()
    {
        if !lookups.iter().any(|l: &CompiledLookup| l.name == used) {
            return Err(CompileError {
                field: "spec.variables".to_owned(),
                message: format!("reads lookups.{used}, which spec.lookups does not declare"),
            });
        }
    }

    let mut validations = Vec::new();
    for (index, validation) in spec.validations.iter().enumerate() {
        let field = format!("spec.validations[{index}]");
        let expression = compile_expression(format!("{field}.expression"), &validation.expression)?;
        check_roots(&field, &expression, &everything)?;
        let message_expression = match &validation.message_expression {
            Some(text) => {
                let compiled = compile_expression(format!("{field}.messageExpression"), text)?;
                check_roots(&field, &compiled, &everything)?;
                Some(compiled)
            }
            None => None,
        };
        let reason = validation
            .reason
            .clone()
            .unwrap_or_else(|| "Forbidden".to_owned());
        let code = reason_code(&reason).ok_or_else(|| CompileError {
            field: format!("{field}.reason"),
            message: format!(
                "{reason:?} is not a supported reason; use Forbidden, Invalid, Unauthorized or RequestEntityTooLarge"
            ),
        })?;
        validations.push(Validation {
            expression,
            message: validation.message.clone(),
            message_expression,
            reason,
            code,
        });
    }

    let mut audit_annotations = Vec::new();
    for (index, annotation) in spec.audit_annotations.iter().enumerate() {
        let field = format!("spec.auditAnnotations[{index}] ({})", annotation.key);
        let expression = compile_expression(field.clone(), &annotation.value_expression)?;
        check_roots(&field, &expression, &everything)?;
        audit_annotations.push((annotation.key.clone(), expression));
    }

    let mut mutations = Vec::new();
    for (index, mutation) in spec.mutations.iter().enumerate() {
        let field = format!("spec.mutations[{index}]");
        if mutation.patch_type != "JSONPatch" {
            return Err(CompileError {
                field: format!("{field}.patchType"),
                message: format!("{:?} is not supported; use JSONPatch", mutation.patch_type),
            });
        }
        let source_text = &mutation.json_patch.expression;
        if source_text.contains("JSONPatch{") || source_text.contains("JSONPatch {") {
            return Err(CompileError {
                field: format!("{field}.jsonPatch.expression"),
                message: "JSONPatch{...} object literals are not supported; write each operation \
                          as a map, such as {\"op\": \"add\", \"path\": \"/metadata/labels/a\", \
                          \"value\": \"b\"}"
                    .to_owned(),
            });
        }
        let expression = compile_expression(
            format!("{field}.jsonPatch.expression"),
            &mutation.json_patch.expression,
        )?;
        check_roots(&field, &expression, &everything)?;
        mutations.push(Mutation { expression });
    }

    match document.kind {
        PolicyKind::ValidatingPolicy if !mutations.is_empty() => {
            return Err(CompileError {
                field: "spec.mutations".to_owned(),
                message:
                    "a ValidatingPolicy cannot mutate; move the mutations into a MutatingPolicy"
                        .to_owned(),
            })
        }
        PolicyKind::ValidatingPolicy if validations.is_empty() && audit_annotations.is_empty() => {
            return Err(CompileError {
                field: "spec.validations".to_owned(),
                message: "is empty, so the policy checks nothing; add a validation".to_owned(),
            })
        }
        PolicyKind::MutatingPolicy if !validations.is_empty() => {
            return Err(CompileError {
                field: "spec.validations".to_owned(),
                message:
                    "a MutatingPolicy only patches; move the validations into a ValidatingPolicy"
                        .to_owned(),
            })
        }
        PolicyKind::MutatingPolicy if mutations.is_empty() => {
            return Err(CompileError {
                field: "spec.mutations".to_owned(),
                message: "is empty, so the policy changes nothing; add a mutation".to_owned(),
            })
        }
        _ => {}
    }
    if spec.validation_actions.is_empty() {
        return Err(CompileError {
            field: "spec.validationActions".to_owned(),
            message: "is empty; use one or more of Deny, Warn and Audit".to_owned(),
        });
    }
    if spec.validation_actions.contains(&ValidationAction::Deny)
        && spec.validation_actions.contains(&ValidationAction::Warn)
    {
        return Err(CompileError {
            field: "spec.validationActions".to_owned(),
            message: "has both Deny and Warn; a denied request already shows the message"
                .to_owned(),
        });
    }

    let params = match (&spec.params, &spec.param_ref) {
        (Some(_), Some(_)) => {
            return Err(CompileError {
                field: "spec.paramRef".to_owned(),
                message: "is set beside spec.params; keep one".to_owned(),
            })
        }
        (Some(value), None) => Params::Value(Arc::new(value.clone())),
        (None, Some(reference)) => compile_param_ref(reference, source)?,
        (None, None) => Params::None,
    };

    let timeout = match &spec.timeout {
        Some(text) => parse_duration(text).ok_or_else(|| CompileError {
            field: "spec.timeout".to_owned(),
            message: format!("{text:?} is not a duration; write it like 250ms or 2s"),
        })?,
        None => DEFAULT_TIMEOUT,
    };

    let reads_namespace_object = match_conditions
        .iter()
        .chain(&variables)
        .map(|v| &v.expression)
        .chain(validations.iter().map(|v| &v.expression))
        .chain(
            validations
                .iter()
                .filter_map(|v| v.message_expression.as_ref()),
        )
        .chain(audit_annotations.iter().map(|(_, e)| e))
        .chain(mutations.iter().map(|m| &m.expression))
        .any(|e| e.roots().iter().any(|r| r == "namespaceObject"));

    Ok(CompiledPolicy {
        name: document.metadata.name,
        kind: document.kind,
        file: source.file.clone(),
        failure_policy: spec.failure_policy,
        match_resources: spec.match_constraints,
        namespace_selector,
        object_selector,
        match_conditions,
        params,
        variables,
        lookups,
        validations,
        validation_actions: spec.validation_actions,
        audit_annotations,
        mutations,
        reinvocation_policy: spec.reinvocation_policy,
        timeout,
        reads_namespace_object,
    })
}

fn compile_lookup(
    index: usize,
    lookup: &Lookup,
    allowed: &[&str],
    variables: &[Variable],
) -> Result<CompiledLookup, CompileError> {
    let field = format!("spec.lookups[{index}] ({})", lookup.name);
    let compile = |part: &str, text: &str| -> Result<Expression, CompileError> {
        let part_field = format!("{field}.{part}");
        let expression = compile_expression(part_field.clone(), text)?;
        check_roots(&part_field, &expression, allowed)?;
        if expression.reads_whole("variables") {
            return Err(CompileError {
                field: part_field,
                message: "reads variables other than by name; a lookup names each variable it reads, as in variables.claimNames".to_owned(),
            });
        }
        for used in expression.members_of("variables") {
            match variables.iter().find(|v| v.name == used) {
                Some(variable) if !variable.needs_lookups => {}
                Some(_) => {
                    return Err(CompileError {
                        field: part_field,
                        message: format!(
                            "reads variables.{used}, which itself reads lookups; a lookup may read only variables that do not"
                        ),
                    })
                }
                None => {
                    return Err(CompileError {
                        field: part_field,
                        message: format!("reads variables.{used}, which is not declared"),
                    })
                }
            }
        }
        Ok(expression)
    };
    let namespace = lookup
        .namespace_expression
        .as_deref()
        .map(|text| compile("namespaceExpression", text))
        .transpose()?;
    let targets = [
        lookup
            .name_expression
            .as_deref()
            .map(|t| ("nameExpression", t)),
        lookup
            .names_expression
            .as_deref()
            .map(|t| ("namesExpression", t)),
        lookup
            .label_selector_expression
            .as_deref()
            .map(|t| ("labelSelectorExpression", t)),
    ];
    let mut set = targets.iter().flatten();
    let target = match (set.next(), set.next()) {
        (Some(&(part, text)), None) => {
            let expression = compile(part, text)?;
            match part {
                "nameExpression" => LookupTarget::Name(expression),
                "namesExpression" => LookupTarget::Names(expression),
                _ => LookupTarget::LabelSelector(expression),
            }
        }
        _ => return Err(CompileError {
            field,
            message:
                "needs exactly one of nameExpression, namesExpression and labelSelectorExpression"
                    .to_owned(),
        }),
    };
    if lookup.api_version.is_empty() || lookup.kind.is_empty() {
        return Err(CompileError {
            field,
            message: "needs apiVersion and kind, such as v1 and PersistentVolumeClaim".to_owned(),
        });
    }
    Ok(CompiledLookup {
        name: lookup.name.clone(),
        api_version: lookup.api_version.clone(),
        kind: lookup.kind.clone(),
        namespace,
        target,
        watch_label_selector: lookup.watch_label_selector.clone(),
    })
}

fn compile_selector(
    field: &str,
    selector: Option<&LabelSelector>,
) -> Result<Option<Selector>, CompileError> {
    let Some(selector) = selector else {
        return Ok(None);
    };
    Selector::try_from(selector.clone())
        .map(Some)
        .map_err(|error| CompileError {
            field: field.to_owned(),
            message: format!("is not a valid label selector: {error}"),
        })
}

fn compile_param_ref(
    reference: &super::model::ParamRef,
    source: &PolicySource,
) -> Result<Params, CompileError> {
    match (&reference.file, &reference.config_map) {
        (Some(file), None) => {
            let Some(dir) = &source.dir else {
                return Err(CompileError {
                    field: "spec.paramRef.file".to_owned(),
                    message: "an embedded policy cannot read a params file; put the params inline"
                        .to_owned(),
                });
            };
            let path = dir.join(file);
            let text = std::fs::read_to_string(&path).map_err(|error| CompileError {
                field: "spec.paramRef.file".to_owned(),
                message: format!("failed to read {}: {error}", path.display()),
            })?;
            let value: Value = serde_yaml_ng::from_str(&text).map_err(|error| CompileError {
                field: "spec.paramRef.file".to_owned(),
                message: format!("{} is not valid YAML or JSON: {error}", path.display()),
            })?;
            Ok(Params::Value(Arc::new(value)))
        }
        (None, Some(config_map)) => Ok(Params::ConfigMap(config_map.clone())),
        _ => Err(CompileError {
            field: "spec.paramRef".to_owned(),
            message: "needs exactly one of file and configMap".to_owned(),
        }),
    }
}

/// Maps a Status reason to its HTTP code, as the API server does.
fn reason_code(reason: &str) -> Option<u16> {
    match reason {
        "Forbidden" => Some(403),
        "Invalid" => Some(422),
        "Unauthorized" => Some(401),
        "RequestEntityTooLarge" => Some(413),
        _ => None,
    }
}

/// Parses `250ms`, `2s` or `1m`.
pub(crate) fn parse_duration(text: &str) -> Option<Duration> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit())?;
    let (number, unit) = text.split_at(split);
    let number: u64 = number.parse().ok()?;
    match unit {
        "ms" => Some(Duration::from_millis(number)),
        "s" => Some(Duration::from_secs(number)),
        "m" => Some(Duration::from_secs(number.checked_mul(60)?)),
        _ => None,
    }
}
