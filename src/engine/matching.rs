//! Whether a request is in a policy's scope: resource rules and selectors,
//! with the semantics of `matchConstraints` in a ValidatingAdmissionPolicy.

use std::collections::BTreeMap;

use kube::core::SelectorExt;

use crate::admission::Review;
use crate::lookup::labels_of;
use crate::policy::{CompiledPolicy, ResourceRule};

/// Returns `None` when the policy applies, else why it does not.
pub fn mismatch(
    policy: &CompiledPolicy,
    review: &Review,
    namespace_labels: &BTreeMap<String, String>,
) -> Option<String> {
    let rules = &policy.match_resources;
    if !rules
        .resource_rules
        .iter()
        .any(|rule| rule_matches(rule, review))
    {
        return Some("no resourceRule matches the request".to_owned());
    }
    if rules
        .exclude_resource_rules
        .iter()
        .any(|rule| rule_matches(rule, review))
    {
        return Some("an excludeResourceRule matches the request".to_owned());
    }
    if let Some(selector) = &policy.namespace_selector {
        // Cluster-scoped objects are not subject to a namespace selector.
        if review.namespace().is_some_and(|n| !n.is_empty()) && !selector.matches(namespace_labels)
        {
            return Some("the namespaceSelector does not select the namespace".to_owned());
        }
    }
    if let Some(selector) = &policy.object_selector {
        let selected = [&review.object, &review.old_object]
            .into_iter()
            .filter(|object| object.is_object())
            .any(|object| selector.matches(&labels_of(object)));
        if !selected {
            return Some("the objectSelector does not select the object".to_owned());
        }
    }
    None
}

fn listed(values: &[String], value: &str) -> bool {
    values.iter().any(|v| v == "*" || v == value)
}

fn rule_matches(rule: &ResourceRule, review: &Review) -> bool {
    let header = &review.header;
    if !listed(&rule.operations, review.operation()) {
        return false;
    }
    if !listed(&rule.api_groups, &header.resource.group) {
        return false;
    }
    if !listed(&rule.api_versions, &header.resource.version) {
        return false;
    }
    let sub_resource = header.sub_resource.as_deref().unwrap_or("");
    if !rule
        .resources
        .iter()
        .any(|pattern| resource_matches(pattern, &header.resource.resource, sub_resource))
    {
        return false;
    }
    if !rule.resource_names.is_empty() && !rule.resource_names.contains(&header.name) {
        return false;
    }
    let namespaced = header.namespace.as_deref().is_some_and(|n| !n.is_empty());
    match rule.scope.as_deref() {
        Some("Namespaced") => namespaced,
        Some("Cluster") => !namespaced,
        _ => true,
    }
}

/// Matches `pods`, `pods/status`, `*`, `*/scale`, `pods/*` and `*/*` as the
/// API server does: `*` alone matches only top-level resources.
fn resource_matches(pattern: &str, resource: &str, sub_resource: &str) -> bool {
    let (pattern_resource, pattern_sub) = match pattern.split_once('/') {
        Some((resource, sub)) => (resource, Some(sub)),
        None => (pattern, None),
    };
    let resource_ok = pattern_resource == "*" || pattern_resource == resource;
    let sub_ok = match pattern_sub {
        None => sub_resource.is_empty(),
        Some("*") => true,
        Some(sub) => sub == sub_resource,
    };
    resource_ok && sub_ok
}

#[cfg(test)]
mod tests {
    use super::resource_matches;

    #[test]
    fn bare_resource_excludes_subresources() {
        assert!(resource_matches("pods", "pods", ""));
        assert!(!resource_matches("pods", "pods", "ephemeralcontainers"));
    }

    #[test]
    fn wildcards_follow_api_server_rules() {
        assert!(resource_matches("*", "jobs", ""));
        assert!(!resource_matches("*", "statefulsets", "scale"));
        assert!(resource_matches("*/scale", "statefulsets", "scale"));
        assert!(resource_matches("pods/*", "pods", "ephemeralcontainers"));
        assert!(!resource_matches("pods/*", "jobs", "status"));
        assert!(resource_matches("*/*", "jobs", "status"));
    }
}
