//! Invalid policies stop loading with the file, the policy, the field and
//! the cause.

use std::path::Path;

use genesis_gate::policy::{load_sources, LoadError, PolicySource};

const VALID: &str = r#"
apiVersion: genesis-gate.sei.io/v1alpha1
kind: ValidatingPolicy
metadata:
  name: example
spec:
  matchConstraints:
    resourceRules:
      - {apiGroups: [""], apiVersions: ["v1"], resources: ["pods"], operations: ["CREATE"]}
  variables:
    - name: claims
      expression: "has(object.spec.volumes) ? object.spec.volumes : []"
  validations:
    - expression: "size(variables.claims) < 10"
      message: too many volumes
"#;

fn load(text: &str) -> Result<usize, LoadError> {
    let source = PolicySource {
        file: "example.yaml".to_owned(),
        text: text.to_owned(),
        dir: Some(Path::new(".").to_path_buf()),
    };
    load_sources(&[source]).map(|set| set.len())
}

fn load_error(text: &str) -> String {
    load(text)
        .expect_err("the policy should be rejected")
        .to_string()
}

#[test]
fn valid_policy_loads() {
    assert_eq!(load(VALID).unwrap(), 1);
}

#[test]
fn syntax_error_names_file_policy_field_position() {
    let text = VALID.replace("size(variables.claims) < 10", "size(variables.claims) <");
    let message = load_error(&text);
    assert!(
        message.starts_with("example.yaml: policy example:"),
        "{message}"
    );
    assert!(
        message.contains("spec.validations[0].expression"),
        "{message}"
    );
    assert!(message.contains("line 1, column"), "{message}");
}

#[test]
fn unknown_function_rejected_at_load() {
    let text = VALID.replace("size(variables.claims)", "sizeOf(variables.claims)");
    let message = load_error(&text);
    assert!(message.contains("sizeOf"), "{message}");
}

#[test]
fn variable_read_before_declared_rejected() {
    let text = VALID.replace(
        "\"has(object.spec.volumes) ? object.spec.volumes : []\"",
        "variables.later",
    );
    let message = load_error(&text);
    assert!(message.contains("variables.later"), "{message}");
    assert!(message.contains("not declared before it"), "{message}");
}

#[test]
fn undeclared_lookup_rejected() {
    let text = VALID.replace(
        "\"has(object.spec.volumes) ? object.spec.volumes : []\"",
        "lookups.claims",
    );
    let message = load_error(&text);
    assert!(message.contains("lookups.claims"), "{message}");
}

#[test]
fn match_condition_may_not_read_lookups() {
    let text = VALID.replace(
        "  variables:",
        "  matchConditions:\n    - name: bad\n      expression: \"lookups.x != null\"\n  variables:",
    );
    let message = load_error(&text);
    assert!(message.contains("matchConditions[0] (bad)"), "{message}");
    assert!(message.contains("\"lookups\""), "{message}");
}

#[test]
fn unknown_field_rejected() {
    let text = VALID.replace("  validations:", "  validatons:");
    let message = load_error(&text);
    assert!(message.contains("validatons"), "{message}");
}

#[test]
fn wrong_api_version_rejected() {
    let text = VALID.replace(
        "genesis-gate.sei.io/v1alpha1",
        "admissionregistration.k8s.io/v1",
    );
    let message = load_error(&text);
    assert!(
        message.contains("use \"genesis-gate.sei.io/v1alpha1\""),
        "{message}"
    );
}

#[test]
fn duplicate_policy_names_rejected() {
    let text = format!("{VALID}\n---\n{VALID}");
    let message = load_error(&text);
    assert!(message.contains("defined twice"), "{message}");
}

#[test]
fn mutating_policy_without_mutations_rejected() {
    let text = VALID
        .replace("kind: ValidatingPolicy", "kind: MutatingPolicy")
        .replace(
            "  validations:\n    - expression: \"size(variables.claims) < 10\"\n      message: too many volumes\n",
            "",
        );
    let message = load_error(&text);
    assert!(message.contains("spec.mutations"), "{message}");
}

#[test]
fn unsupported_reason_rejected() {
    let text = VALID.replace(
        "message: too many volumes",
        "message: x\n      reason: Teapot",
    );
    let message = load_error(&text);
    assert!(
        message.contains("\"Teapot\" is not a supported reason"),
        "{message}"
    );
}

#[test]
fn invalid_timeout_rejected() {
    let text = VALID.replace("  variables:", "  timeout: soon\n  variables:");
    let message = load_error(&text);
    assert!(message.contains("\"soon\" is not a duration"), "{message}");
}

#[test]
fn deeply_nested_expression_rejected() {
    // A left-deep chain nests one level per `+`; evaluating 1,500 of them
    // overflowed a worker thread's stack.
    let chain = vec!["1"; 1500].join(" + ");
    let text = VALID.replace("size(variables.claims) < 10", &format!("{chain} > 0"));
    let message = load_error(&text);
    assert!(message.contains("levels deep"), "{message}");
    assert!(message.contains("split it into variables"), "{message}");
}

#[test]
fn moderate_chain_still_loads() {
    let chain = vec!["1"; 150].join(" + ");
    let text = VALID.replace("size(variables.claims) < 10", &format!("{chain} > 0"));
    assert_eq!(load(&text).unwrap(), 1);
}

#[test]
fn empty_policy_file_rejected() {
    let message = load_error("\n# truncated\n");
    assert!(message.contains("contains no policy"), "{message}");
}

#[test]
fn empty_policy_folder_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let message = genesis_gate::policy::load_dir(dir.path())
        .expect_err("an empty folder is rejected")
        .to_string();
    assert!(message.contains("no policy files"), "{message}");
}

#[test]
fn jsonpatch_object_literal_rejected_at_load() {
    let text = VALID
        .replace("kind: ValidatingPolicy", "kind: MutatingPolicy")
        .replace(
            "  validations:\n    - expression: \"size(variables.claims) < 10\"\n      message: too many volumes\n",
            "  mutations:\n    - patchType: JSONPatch\n      jsonPatch:\n        expression: '[JSONPatch{op: \"add\", path: \"/a\", value: 1}]'\n",
        );
    let message = load_error(&text);
    assert!(
        message.contains("write each operation as a map"),
        "{message}"
    );
}
